"""Train the quality model (``plphp_dev.quality.model``) from scratch.

    python benchmarks/quality/train.py [--device cpu|cuda] [--out DIR]

Cross-entropy on the answer tokens only (each answer weighs the same), on
multi-turn conversations about the same images
(``plphp_dev.quality.conversations``: the image tokens dominate the cost,
so each sequence carries 1-4 answers), AdamW with linear warm-up and cosine
decay, batches of one image count drawn from a seeded stream
(``batches.batch_stream``).  Evaluation uses single-turn ``tasks`` prompts.  The recipe (steps,
batch, data, init) is the same on every device: ``--device cuda`` only runs
it faster.  At the end the checkpoint (float16 safetensors, released llava-hf
key layout, vLLM-loadable) is written to ``--out`` with ``train_info.json``,
and the reloaded checkpoint is evaluated greedily on the test split.

CPU estimate of the default recipe (550 steps of 32 conversations): about
40-50 minutes on a 2-core AMD EPYC (AVX2) with 2 threads, extrapolated from
``--time-steps 12`` (3.1-3.8 s per 1-image batch, 5.7-7.2 s per 2-image
batch, depending on load).  On one H100 the same recipe takes about 75 s.
Loss: CE on the answers plus ``--aux-weight`` x an auxiliary patch loss
(projected image tokens scored against the input embeddings must name the
colour and the shape of the object under the patch, ``<unk>`` on background;
``batches.patch_targets``).  ``--aux-position 1`` (not the default) also asks
for the grid row and column words of the object's cell ("top left" -> top,
left; "right" -> center, right).  Tried on an H100 (550 steps, with
patch-aligned 16 px objects, aux weight 1 and 3): the image tokens did not
learn row/column (probe at chance, about 1/3) and the test scores did not
improve, so it stays off.  At the end ``patch_probe`` reports how well the
image tokens name their tags on held-out scenes.
Needs torch and transformers, never vLLM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time

import torch

from batches import ROOT, batch_stream, collate  # benchmarks/quality is sys.path[0]
from plphp_dev.quality import MODEL_DIR
from eval_hf import evaluate, format_table
from plphp_dev.quality.model import ModelSpec, build_tokenizer, load_checkpoint, new_model, save_checkpoint
from plphp_dev.quality.conversations import KINDS
from plphp_dev.quality.tasks import TASKS, chance_score

DEFAULTS = dict(steps=550, batch_size=32, lr=1e-3, warmup=100, seed=0, aux_weight=3.0, aux_position=0)
KIND_WEIGHTS = {"single": 2.0, "caption": 1.5, "differ": 1.0, "spot": 1.0, "compare": 1.0}
# Measured on this repo's 2-core CPU machine (AMD EPYC, AVX2, 2 threads), see
# module doc: 3.1-3.8 s per 1-image batch of 32, 5.7-7.2 s per 2-image batch.
CPU_ESTIMATE = "about 40-50 min for the default 550 steps (2-core AMD EPYC, 2 threads; 2956 s extrapolated from 12 timed steps)"


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-8)


def train_step(model, batch: dict, device: str, aux_weight: float,
               aux_position: bool = True) -> tuple[float, float]:
    """One forward/backward; returns (answer loss, auxiliary patch loss).

    The auxiliary loss averages one CE per tag of ``batch["patch_targets"]``:
    colour and shape, plus row and column words when ``aux_position``."""
    batch = {k: v.to(device) for k, v in batch.items()}
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"])
    ce = torch.nn.functional.cross_entropy(
        out.logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=-100,
        reduction="none")
    loss = (ce * batch["weights"].flatten()).sum() / batch["input_ids"].shape[0]
    aux = torch.zeros((), device=device)
    if aux_weight:
        # image tokens (projector outputs) should look like the words of what they show
        feats = out.image_hidden_states.reshape(-1, out.image_hidden_states.shape[-1]).float()
        logits = feats @ model.get_input_embeddings().weight.float().T
        n_tags = 4 if aux_position else 2
        tgt = batch["patch_targets"].reshape(-1, batch["patch_targets"].shape[-1])[:, :n_tags]
        f = torch.nn.functional.cross_entropy
        aux = sum(f(logits, tgt[:, k]) for k in range(n_tags)) / n_tags
    (loss + aux_weight * aux).backward()
    return loss.item(), aux.item()


@torch.no_grad()
def patch_probe(model, tokenizer, spec: ModelSpec, device: str, n: int = 64) -> dict:
    """How well the projected image tokens name their tags (the auxiliary loss's
    targets) on ``n`` scenes from their own seeds ("probe/i", neither split):
    per tag, argmax over that tag's words on object patches; on background,
    argmax over the whole vocabulary == ``<unk>``."""
    import random

    from batches import COL_WORDS, ROW_WORDS, encode, patch_targets
    from plphp_dev.quality.model import pixel_values
    from plphp_dev.quality.scenes import COLOR_NAMES, SHAPES, random_scene, render

    was_training = model.training
    model.eval()
    scenes = [random_scene(random.Random(f"probe/{i}")) for i in range(n)]
    tgt = patch_targets(scenes, tokenizer, spec).reshape(-1, 4).to(device)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids = torch.tensor([[tokenizer.bos_token_id] + [image_id] * spec.num_image_tokens] * n, device=device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                pixel_values=pixel_values([render(s, spec.image_size) for s in scenes], spec).to(device))
    feats = out.image_hidden_states.reshape(-1, out.image_hidden_states.shape[-1]).float()
    logits = feats @ model.get_input_embeddings().weight.float().T
    unk = tokenizer.unk_token_id
    obj = tgt[:, 0] != unk
    result = {"scenes": n, "background_to_unk": round((logits[~obj].argmax(1) == unk).float().mean().item(), 4)}
    for k, (name, words) in enumerate((("colour", COLOR_NAMES), ("shape", SHAPES),
                                       ("row", ROW_WORDS), ("column", COL_WORDS))):
        cand = torch.tensor([encode(tokenizer, " " + w)[0] for w in words], device=device)
        pred = cand[logits[obj][:, cand].argmax(1)]
        result[name + "_acc"] = round((pred == tgt[obj, k]).float().mean().item(), 4)
    model.train(was_training)
    return result


def image_mix(weights: dict[str, float]) -> dict[int, float]:
    """Expected fraction of batches with 1, 2 and 3 images (``differ``: 3 with p=1/3)."""
    total = sum(weights.get(k, 1.0) for k in KINDS)
    mix = {1: 0.0, 2: 0.0, 3: 0.0}
    for k in KINDS:
        w = weights.get(k, 1.0) / total
        if k == "differ":
            mix[2] += w * 2 / 3
            mix[3] += w / 3
        else:
            mix[1 if k in ("single", "caption") else 2] += w
    return mix


def parse_weights(text: str) -> dict[str, float]:
    out = dict(KIND_WEIGHTS)
    for part in filter(None, text.split(",")):
        k, v = part.split("=")
        assert k in KINDS, k
        out[k] = float(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(MODEL_DIR))
    for k, v in DEFAULTS.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    ap.add_argument("--kind-weights", default="", help="conversation kinds, e.g. spot=2 (over KIND_WEIGHTS)")
    ap.add_argument("--spec", default="", help="ModelSpec overrides, e.g. num_layers=10")
    ap.add_argument("--eval-n", type=int, default=100, help="test examples per task at the end")
    ap.add_argument("--eval-every", type=int, default=0, help="also evaluate (eval-n/4) every N steps")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--time-steps", type=int, default=0,
                    help="only time this many steps and print the extrapolated train time")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    overrides = {k: type(getattr(ModelSpec(), k))(v) for k, v in
                 (p.split("=") for p in filter(None, args.spec.split(",")))}
    spec = ModelSpec(**overrides)
    weights = parse_weights(args.kind_weights)
    tokenizer = build_tokenizer(spec)
    model = new_model(spec, tokenizer, args.seed).to(args.device).train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = make_optimizer(model, args.lr)
    stream = batch_stream(args.seed, args.batch_size, weights, image_size=spec.image_size)
    print(f"params {n_params / 1e6:.2f}M, vocab {len(tokenizer)}, spec {spec.to_dict()}", flush=True)

    steps = args.time_steps or args.steps
    history, step_times, t_start = [], [], time.perf_counter()
    for step in range(steps):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        convs = next(stream)
        loss, aux = train_step(model, collate(convs, tokenizer, spec), args.device, args.aux_weight,
                                bool(args.aux_position))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_times.append((len(convs[0].images), time.perf_counter() - t0))
        if (step + 1) % args.log_every == 0 or step == steps - 1:
            history.append({"step": step + 1, "loss": round(loss, 4), "aux": round(aux, 4),
                            "elapsed_s": round(time.perf_counter() - t_start, 1)})
            print(json.dumps(history[-1]), flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < steps:
            r = evaluate(model, tokenizer, spec, max(1, args.eval_n // 4), 0, args.device, samples=0)
            print(f"step {step + 1} eval {json.dumps(r['scores'])}", flush=True)
    train_s = time.perf_counter() - t_start

    if args.time_steps:
        # first steps include warm-up; average the rest per image count
        by_n: dict[int, list[float]] = {}
        for n, dt in step_times[2:]:
            by_n.setdefault(n, []).append(dt)
        per = {n: sum(v) / len(v) for n, v in sorted(by_n.items())}
        mix = image_mix(weights)
        est = sum(frac * per.get(n, max(per.values())) for n, frac in mix.items()) * args.steps
        print(json.dumps({"s_per_step_by_images": per, "batch_mix": mix, "steps": args.steps,
                          "estimate_s": round(est), "threads": torch.get_num_threads()}))
        return

    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    saved = save_checkpoint(model.cpu(), tokenizer, spec, args.out)
    model, _ = load_checkpoint(args.out, args.device)
    t0 = time.perf_counter()
    result = evaluate(model, tokenizer, spec, args.eval_n, 0, args.device)
    print(format_table(result), flush=True)
    probe = patch_probe(model, tokenizer, spec, args.device)
    print("patch probe", json.dumps(probe), flush=True)
    info = {
        "command": "python " + " ".join(sys.argv),
        "recipe": {**{k: getattr(args, k) for k in DEFAULTS}, "kind_weights": weights,
                   "aux_loss": "aux_weight x mean CE of (projected image token . input embeddings) against the colour, shape" + (", row and column" if args.aux_position else "") + " words of the object covering the patch (<unk> on background)",
                   "optimizer": "AdamW(betas=(0.9, 0.98), wd=0.01 on matrices), warm-up + cosine to 0.1, clip 1.0"},
        "seed": args.seed,
        "steps": args.steps,
        "train_s": round(train_s, 1),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cpu_estimate": CPU_ESTIMATE,
        "params": n_params,
        "checkpoint_bytes": saved["bytes"],
        "spec": spec.to_dict(),
        "final_loss": history[-1]["loss"],
        "loss_history": history,
        "eval": {"split": "test", "decoding": "greedy (transformers)", "eval_s": round(time.perf_counter() - t0, 1),
                 **result},
        "chance": {t: round(chance_score(t), 4) for t in TASKS},
        "mean_score": round(sum(result["scores"].values()) / len(result["scores"]), 4),
        "mean_chance": round(sum(chance_score(t) for t in TASKS) / len(TASKS), 4),
        "vision_patch_probe": probe,
    }
    with open(os.path.join(args.out, "train_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(f"saved {args.out} ({saved['bytes'] / 1e6:.1f} MB), trained {train_s:.0f}s", flush=True)


if __name__ == "__main__":
    main()

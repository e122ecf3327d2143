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

Recipe v2 (issue 30: a model that reads its pictures, trained on CPU)
---------------------------------------------------------------------
    python benchmarks/quality/train.py --recipe v2 --threads 1 [--resume]

(``--threads 1``: on the shared 2-core machine a stage-1 step took 0.5 s
with one thread and 2.1 s with two while another job held a core.)

Same architecture, spec, tokenizer and checkpoint format as v1 (vLLM loads
it exactly like ``plphp_dev/quality/model``); what changes is init, loss,
schedule and data, see ``recipe_v2.py`` for why (diagnosis of v1 and the
short runs behind each choice): 2D sin-cos init of CLIP's learned position
embeddings, a luminance pass-through init of half the patch-embedding
channels, the per-tag auxiliary loss with row and column on
(``recipe_v2.tag_aux_loss``), stage 1 = ``--vision-steps`` steps of the
vision tower alone on that loss, stage 2 = ``--steps`` steps of
conversations (``V2_KIND_WEIGHTS``), and selection on a validation split
(``recipe_v2.val_examples``), never on the test split.
Every ``--ckpt-every`` stage-2 steps (about 8-10 min on 2 cores) it scores
the validation split and writes, under ``--state-dir`` (default
``.train_state/v2``, git-ignored): ``val_history.jsonl`` (one line per
checkpoint: validation scores, margins over chance, patch probe),
``last/`` and ``best/`` (float16, vLLM-loadable) and ``state.pt`` (float32
model, both optimizers, progress: what ``--resume`` continues from; the
stream of conversations is replayed, so a resumed run is step for step the
uninterrupted one).  When the best checkpoint beats the v1 model on the
same validation examples it is also copied to ``--out`` (default
``plphp_dev/quality/model_v2``) with ``train_info.json``.  ``--resume``
without ``state.pt`` falls back to the float16 weights in ``--out`` (at its
selected step, fresh optimizer state).  At the end the selected checkpoint
is scored once on the test split (``final_test.json``; reported, it selects
nothing).  ``--stop-at-step N`` checkpoints and exits at stage-2 step N,
to split the run across sessions.
Needs torch and transformers, never vLLM.
"""

from __future__ import annotations

import argparse
import contextlib
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
from plphp_dev.quality.scenes import COLOR_NAMES, SHAPES
from plphp_dev.quality.tasks import TASKS, chance_score, make_examples
import image_index
import lookup_attention
from recipe_v2 import VAL_SEED, tag_aux_loss

DEFAULTS = dict(steps=550, batch_size=32, lr=1e-3, warmup=100, seed=0, aux_weight=3.0, aux_position=0)
KIND_WEIGHTS = {"single": 2.0, "caption": 1.5, "differ": 1.0, "spot": 1.0, "compare": 1.0}
# Recipe v2 (issue 30; reasoning and measurements in recipe_v2's docstring).
V2_DEFAULTS = dict(steps=1500, batch_size=32, lr=1e-3, warmup=100, seed=0, aux_weight=1.0, aux_position=1)
V2_KIND_WEIGHTS = {"single": 3.0, "caption": 1.5, "differ": 1.0, "spot": 1.0, "compare": 0.5}
V2_EXTRA = dict(vision_steps=1000, vision_batch=32, vision_lr=2e-3, vision_warmup=100,
                vision_ckpt_every=500, val_n=40, ckpt_every=100)
# Stage 3 of recipe v2 (added at stage-2 step 1300, when differ had stayed at chance;
# see recipe_v2's docstring): a new conversation stream (seed ordinal_seed) with
# the training-only "ordinal" kind and more differ, from the stage-2 end state.
V2_STAGE3 = dict(ordinal_steps=500, ordinal_lr=5e-4, ordinal_warmup=50, ordinal_seed=1000)
ORDINAL_KIND_WEIGHTS = {"single": 2.0, "caption": 1.0, "differ": 2.0, "spot": 1.0, "compare": 0.5,
                        "ordinal": 2.0}
# Stage 4 (added after stage 3, where differ reached 0.6 on validation: the image
# was found, but "both" near misses (0.38) and 3 images (0.41) failed): the
# training-only "binding" kind, from the stage-3 end state.
V2_STAGE4 = dict(binding_steps=500, binding_lr=3e-4, binding_warmup=50, binding_seed=2000)
BINDING_KIND_WEIGHTS = {"single": 2.0, "caption": 0.5, "differ": 1.5, "spot": 1.0, "compare": 0.5,
                        "ordinal": 1.0, "binding": 2.5}
# Stage 5 (added after stage-4 step 300, where differ was still at chance whenever
# another image held the pair's colour: the model found the image by colour alone;
# recipe_v2 docstring, item 9): stage 4 ends at binding_stop, then the training-only
# "lookup" kind; its checkpoints are scored with lookup_val_differ differ prompts.
V2_STAGE5 = dict(lookup_steps=300, lookup_lr=5e-4, lookup_warmup=30, lookup_seed=3000, binding_stop=300,
                 lookup_val_differ=300)
LOOKUP_KIND_WEIGHTS = {"single": 2.0, "caption": 0.5, "differ": 1.5, "spot": 1.0, "compare": 0.5,
                       "ordinal": 0.5, "binding": 1.5, "lookup": 3.0}
# Stage 6 (added after stage 5, where differ on 300 validation prompts went 0.643 ->
# 0.657 and "Which image has a circle?" 0.61 -> 0.67 in 200-300 steps: shape lookup
# was being learned, slowly): the lookup and binding kinds at a larger share. (At
# stage 2's learning rate, 1e-3, a first try broke the model by step 100: shape 0.0,
# count 0.7 on validation; it was restarted from stage 5's end at 5e-4.)
V2_STAGE6 = dict(focus_steps=600, focus_lr=5e-4, focus_warmup=30, focus_seed=4000)
FOCUS_KIND_WEIGHTS = {"single": 1.5, "caption": 0.3, "differ": 1.0, "spot": 0.5, "compare": 0.3,
                      "ordinal": 0.3, "binding": 2.0, "lookup": 5.0}
# Stages 4-6 did not beat stage 3 and their states were not kept; stage 7 branches
# from stage 3's end (the selected step-500 weights), and the recipe's default path
# is stages 1, 2, 3, 7 (``--branch focus`` runs 4-6 instead, as explored).
# Stage 7 (recipe_v2 docstring, item 11): in the stage-3 model's image tokens, colour
# explains 58% of the object patches' variance and shape 16% (tag margins 57 vs 15
# logits), so attention keyed on shape learns slowly; the shape tag's logits are
# divided by shape_temp, which asks for a margin that many times wider.
# Stopped at shape_stop: differ 0.643 / 0.603 / 0.627 / 0.600 and colour 0.505 / 0.49 / 0.48 / 0.41
# on validation at steps 0 / 50 / 100 / 150 while the shape margin went 15 -> 36.
V2_STAGE7 = dict(shape_steps=400, shape_lr=5e-4, shape_warmup=30, shape_seed=5000, shape_temp=5.0,
                 shape_stop=200)
SHAPE_KIND_WEIGHTS = {"single": 2.0, "caption": 0.5, "differ": 2.0, "spot": 1.0, "compare": 0.5,
                      "ordinal": 0.5, "binding": 1.0, "lookup": 1.5}
# Stage 8 (recipe_v2 docstring, item 12): after stage 7, lookup_attention's loss asks
# some head of layers 2-5 to attend to the object a lookup question names.
# Stopped at attend_stop: the mean attention loss fell to 0.08 (the named object found
# in most turns) but on 2-image differ prompts with a colour decoy the heads still
# split their attention between the object and the decoy (layer 5: 0.45 vs 0.50), and
# differ was 0.600 / 0.613 at steps 50 / 100.
V2_STAGE8 = dict(attend_steps=300, attend_lr=5e-4, attend_warmup=30, attend_seed=6000, attend_weight=0.2,
                 attend_stop=100)
# Stage 9 (recipe_v2 docstring, item 13): the same loss at weight 1.0, only at the
# position that predicts the answer's key word (lookup_attention.key_token; at the
# later positions the answer already written finds the object, which is where stage 8's
# loss fell to 0.08), on a stream with more of the conversations where the colour
# alone does not find the object.
# Stopped at sharpen_stop: on 16 two-image validation differ prompts with a colour
# decoy the best head found the object in every one (mass 0.96-1.0, decoy 0-0.04; 0.04-0.95
# in the stage-3 model), yet differ stayed 0.637 / 0.630 and colour 0.43 / 0.45 at steps
# 50 / 100: which head finds it changes from prompt to prompt, so no later layer can rely
# on reading it.
V2_STAGE9 = dict(sharpen_steps=400, sharpen_lr=5e-4, sharpen_warmup=20, sharpen_seed=7000, sharpen_weight=1.0,
                 sharpen_stop=100)
# Stage 10 (recipe_v2 docstring, item 14): the same loss on one fixed head, layer 5 head 3
# (the head with the most attention on the object in the stage-3 model: 0.55 on those 16
# prompts, 0.39 on the decoy), so its output is where the object's features always are.
# Stopped at retrieve_stop: differ 0.600 / 0.667 / 0.643 and colour 0.42 / 0.455 / 0.425
# at steps 50 / 100 / 150 (step 100 on the test split, 1200 prompts: 0.614, 3 images 0.43).
V2_STAGE10 = dict(retrieve_steps=400, retrieve_lr=5e-4, retrieve_warmup=20, retrieve_seed=8000,
                  retrieve_weight=1.0, retrieve_layer=5, retrieve_head=3, retrieve_stop=150)
# Stage 11 (recipe_v2 docstring, item 15): stage 10's loss plus image_index's: a
# training-only linear probe must read each image token's image index from the input
# of layer retrieve_layer's attention (the stage-3 model: 0.81 on 3-image prompts).
V2_STAGE11 = dict(index_steps=400, index_lr=5e-4, index_warmup=20, index_seed=9000, index_weight=0.5,
                  index_probe_lr=1e-3, index_stop=150)
SHARPEN_KIND_WEIGHTS = {"single": 2.0, "caption": 0.5, "differ": 2.0, "spot": 1.0, "compare": 0.5,
                        "ordinal": 0.5, "binding": 2.0, "lookup": 3.0}
# Stopped at index_stop: the probe read the image index (loss 0.03) but differ was
# 0.627 / 0.640 at steps 50 / 100, and on 24 two-image validation prompts with both near
# misses head (5, 3) split 0.44 on the object, 0.55 on the colour decoy, 0.00 on the shape
# decoy: it keys on colour only.  A linear probe on the answer position's hidden state
# reads the asked colour from layer 2's input on (1.00) but the asked shape only from
# layer 6's (0.22-0.27 at layers 2-5, 0.72 at 6): the query cannot key on the shape.
# Stage 12 (recipe_v2 docstring, item 16): stage 11's losses plus two training-only
# probes that must read the asked colour and shape from the key position's input to
# layer retrieve_layer (what that layer's queries are made from).
# Ends at query_stop: differ on validation 0.623 / 0.653 / 0.700 / 0.933 at steps 50-200
# (probe loss on the asked shape 1.68 -> 0.01); step 200 is the selected checkpoint.
V2_STAGE12 = dict(query_steps=400, query_lr=5e-4, query_warmup=20, query_seed=10000, query_weight=0.5,
                  query_stop=200)
ATTEND_STAGES = ("attend", "sharpen", "retrieve", "index", "query")  # stages with lookup_attention's loss
STAGES = ("vision", "text", "ordinal", "binding", "lookup", "focus", "shape", *ATTEND_STAGES)  # in the order added
BRANCHES = {"shape": ("ordinal", "shape", "attend", "sharpen", "retrieve", "index", "query"),
            "focus": ("ordinal", "binding", "lookup", "focus")}
V2_OUT = ROOT / "plphp_dev" / "quality" / "model_v2"
V2_STATE = ROOT / ".train_state" / "v2"
# Measured on this repo's 2-core CPU machine (AMD EPYC, AVX2, 2 threads), see
# module doc: 3.1-3.8 s per 1-image batch of 32, 5.7-7.2 s per 2-image batch.
CPU_ESTIMATE = "about 40-50 min for the default 550 steps (2-core AMD EPYC, 2 threads; 2956 s extrapolated from 12 timed steps)"


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(model: torch.nn.Module, lr: float, only=None) -> torch.optim.Optimizer:
    """AdamW, weight decay 0.01 on matrices; ``only``: a subset of the parameters."""
    keep = None if only is None else {id(p) for p in only}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if keep is not None and id(p) not in keep:
            continue
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-8)


def train_step(model, batch: dict, device: str, aux_weight: float,
               aux_position: bool = True, aux_mode: str = "v1", tags=None,
               temps: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0), extra=None) -> tuple[float, float]:
    """One forward/backward; returns (answer loss, auxiliary patch loss).

    ``aux_mode="v1"``: the auxiliary loss averages one CE per tag of
    ``batch["patch_targets"]`` over the whole vocabulary and all patches:
    colour and shape, plus row and column words when ``aux_position``.
    ``aux_mode="tags"``: ``tag_aux_loss`` with ``tags = tag_ids(tokenizer)`` and
    per-tag temperatures ``temps`` (recipe v2).  ``extra``: a callable giving one more
    loss term after the forward (recipe v2's stage 8, ``lookup_attention``)."""
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
        if aux_mode == "tags":
            aux = tag_aux_loss(logits, tgt, tags, temps)
        else:
            f = torch.nn.functional.cross_entropy
            aux = sum(f(logits, tgt[:, k]) for k in range(n_tags)) / n_tags
    total = loss + aux_weight * aux
    if extra is not None:
        total = total + extra()
    total.backward()
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
        lo = logits[obj][:, cand]
        pred = cand[lo.argmax(1)]
        result[name + "_acc"] = round((pred == tgt[obj, k]).float().mean().item(), 4)
        # median logit margin of the right word over the best wrong one (how loud the tag is)
        right = (tgt[obj, k, None] == cand[None])
        margin = lo[right] - lo.masked_fill(right, float("-inf")).max(1).values
        result[name + "_margin"] = round(margin.median().item(), 2)
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


def parse_weights(text: str, base: dict[str, float] = KIND_WEIGHTS) -> dict[str, float]:
    out = dict(base)
    for part in filter(None, text.split(",")):
        k, v = part.split("=")
        assert k in KINDS, k
        out[k] = float(v)
    return out


def _replace_dir(src: str, dst: str) -> None:
    """Move directory ``src`` to ``dst``, replacing it (never leaves ``dst`` half written)."""
    old = dst + ".old"
    if os.path.isdir(old):
        shutil.rmtree(old)
    if os.path.isdir(dst):
        os.replace(dst, old)
    os.replace(src, dst)
    if os.path.isdir(old):
        shutil.rmtree(old)


def _write_json(path, obj) -> None:
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def run_v2(args, spec: ModelSpec, weights: dict[str, float], tokenizer) -> None:
    """Recipe v2: stage 1 (vision warm-up on the tag loss), stage 2 (conversations),
    a checkpoint every ``ckpt_every`` stage-2 steps: validation, float16 ``last/``,
    ``best/`` (by validation), ``--out`` when the best beats the v1 model on
    validation, and the resumable ``state.pt`` (fp32 model + optimizers + progress)."""
    from pathlib import Path

    from recipe_v2 import (ConvStream, evaluate_examples, init_vision, lr_cosine, tag_ids, val_examples,
                           vision_parameters, vision_step)

    dev = args.device
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_path = state_dir / "state.pt"
    out = Path(args.out)
    model = new_model(spec, tokenizer, args.seed)
    init_info = init_vision(model, spec, args.seed)
    model.to(dev).train()
    tags = tag_ids(tokenizer)
    vparams = vision_parameters(model)
    opt_v = make_optimizer(model, args.vision_lr, only=vparams)
    opt = make_optimizer(model, args.lr)
    probe = image_index.Probe(spec.hidden_size).to(dev)  # stage 11's, training only
    opt_probe = torch.optim.AdamW(probe.parameters(), lr=args.index_probe_lr)
    qprobes = torch.nn.ModuleDict({"colour": image_index.Probe(spec.hidden_size, len(COLOR_NAMES)),
                                   "shape": image_index.Probe(spec.hidden_size, len(SHAPES))}).to(dev)  # stage 12's
    opt_qprobes = torch.optim.AdamW(qprobes.parameters(), lr=args.index_probe_lr)
    stream = ConvStream(args.seed, args.batch_size, weights, spec.image_size)
    n_params = sum(p.numel() for p in model.parameters())
    recipe = {**{k: getattr(args, k) for k in V2_DEFAULTS}, **{k: getattr(args, k) for k in V2_EXTRA},
              "kind_weights": weights, "recipe": "v2 (benchmarks/quality/recipe_v2.py)",
              **{k: getattr(args, k) for k in V2_STAGE3}, "ordinal_kind_weights": ORDINAL_KIND_WEIGHTS,
              **{k: getattr(args, k) for k in V2_STAGE4}, "binding_kind_weights": BINDING_KIND_WEIGHTS,
              **{k: getattr(args, k) for k in V2_STAGE5}, "lookup_kind_weights": LOOKUP_KIND_WEIGHTS,
              **{k: getattr(args, k) for k in V2_STAGE6}, "focus_kind_weights": FOCUS_KIND_WEIGHTS,
              **{k: getattr(args, k) for k in V2_STAGE7}, "shape_kind_weights": SHAPE_KIND_WEIGHTS,
              **{k: getattr(args, k) for k in V2_STAGE8},
              **{k: getattr(args, k) for k in V2_STAGE9}, "sharpen_kind_weights": SHARPEN_KIND_WEIGHTS,
              **{k: getattr(args, k) for k in V2_STAGE10},
              **{k: getattr(args, k) for k in V2_STAGE11},
              **{k: getattr(args, k) for k in V2_STAGE12},
              "branch": args.branch}
    st = {"progress": {"stage": "vision", "step": 0}, "best": None, "history": [], "val": [],
          "train_s": 0.0, "init": init_info, "recipe": recipe, "commands": []}
    if args.resume and state_path.is_file():
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        # states saved before a later stage existed, and before it began
        for stage, keys in (("ordinal", (*V2_STAGE3, "ordinal_kind_weights")),
                            ("binding", (*V2_STAGE4, "binding_kind_weights")),
                            ("lookup", (*V2_STAGE5, "lookup_kind_weights")),
                            ("focus", (*V2_STAGE6, "focus_kind_weights")),
                            ("shape", (*V2_STAGE7, "shape_kind_weights")),
                            ("attend", tuple(V2_STAGE8)),
                            ("sharpen", (*V2_STAGE9, "sharpen_kind_weights")),
                            ("retrieve", tuple(V2_STAGE10)),
                            ("index", tuple(V2_STAGE11)),
                            ("query", tuple(V2_STAGE12))):
            if keys[0] not in saved["recipe"]:
                before = STAGES[:STAGES.index(stage)]
                assert saved["progress"]["stage"] in before, (stage, saved["progress"])
                saved["recipe"].update({k: recipe[k] for k in keys})
            elif f"{stage}_stop" in recipe and f"{stage}_stop" not in saved["recipe"]:
                saved["recipe"][f"{stage}_stop"] = recipe[f"{stage}_stop"]  # a stop set while the stage ran
        saved["recipe"].setdefault("branch", "focus")  # states saved before branches existed
        assert saved["recipe"] == recipe, ("recipe changed since the state was saved", saved["recipe"], recipe)
        model.load_state_dict(saved.pop("model"))
        opt_v.load_state_dict(saved.pop("opt_vision"))
        opt.load_state_dict(saved.pop("opt"))
        if "index_probe" in saved:
            probe.load_state_dict(saved.pop("index_probe"))
            opt_probe.load_state_dict(saved.pop("opt_index_probe"))
        if "query_probes" in saved:
            qprobes.load_state_dict(saved.pop("query_probes"))
            opt_qprobes.load_state_dict(saved.pop("opt_query_probes"))
        torch.set_rng_state(saved.pop("torch_rng"))
        st = saved
        print(f"resumed {state_path} at {st['progress']}", flush=True)
    elif args.resume and (out / "train_info.json").is_file():
        info = json.load(open(out / "train_info.json"))
        loaded, _ = load_checkpoint(str(out), dev)
        model.load_state_dict(loaded.state_dict())
        del loaded
        sel = info["selected"]  # the weights in --out are the selected checkpoint's
        st.update(progress={"stage": sel["stage"], "step": sel["step"]}, best=sel,
                  history=[h for h in info.get("loss_history", []) if h["stage"] == "vision" or h["step"] <= sel["step"]],
                  val=[v for v in info.get("val_history", []) if v["stage"] == "vision" or v["step"] <= sel["step"]],
                  train_s=info.get("train_s", 0.0))
        # the selected checkpoint is the best so far (later stages rescore it)
        if not (state_dir / "best").is_dir():
            shutil.copytree(out, state_dir / "best")
        print(f"resumed float16 weights of {out} at {st['progress']} (fresh optimizer state)", flush=True)
    elif args.resume:
        raise SystemExit(f"--resume: neither {state_path} nor {out}/train_info.json")
    st["commands"].append("python " + " ".join(sys.argv))
    if st["progress"]["stage"] == "text":
        stream.skip(st["progress"]["step"])
    print(f"params {n_params / 1e6:.2f}M, vocab {len(tokenizer)}, spec {spec.to_dict()}, init {init_info}",
          flush=True)

    val = val_examples(args.val_n, spec.image_size)
    # stage 5 scores differ on more prompts (n = 40 is +-15 points); the first 40 are val's
    val5 = [e for e in val if e.task != "differ"] + make_examples(
        "train", args.lookup_val_differ, seed=VAL_SEED, tasks=("differ",), image_size=spec.image_size)
    # stage 6 also scores colour on 200 (at n = 40 its margin's draw decided stage 5's selection)
    val6 = [e for e in val5 if e.task != "color"] + make_examples(
        "train", 200, seed=VAL_SEED, tasks=("color",), image_size=spec.image_size)
    stage_val = {"lookup": val5, "focus": val6, **dict.fromkeys(("shape", *ATTEND_STAGES), val6)}
    base_path = state_dir / f"baseline_val_n{args.val_n}.json"
    if base_path.is_file():
        baseline = json.load(open(base_path))
    else:  # the v1 model on the same validation examples
        old, proc = load_checkpoint(str(MODEL_DIR), dev)
        baseline = evaluate_examples(old, proc.tokenizer, ModelSpec(), val, dev)
        del old
        _write_json(base_path, baseline)
    print("v1 model on validation", json.dumps(baseline), flush=True)

    def save_state() -> None:
        tmp = str(state_path) + ".tmp"
        torch.save({**st, "model": model.state_dict(), "opt_vision": opt_v.state_dict(),
                    "opt": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                    "index_probe": probe.state_dict(), "opt_index_probe": opt_probe.state_dict(),
                    "query_probes": qprobes.state_dict(), "opt_query_probes": opt_qprobes.state_dict()}, tmp)
        os.replace(tmp, state_path)

    def train_info(selected_eval=None) -> dict:
        return {
            "command": st["commands"][0], "commands": st["commands"], "recipe": recipe, "seed": args.seed,
            "progress": st["progress"], "selected": st["best"], "train_s": round(st["train_s"], 1),
            "device": dev, "device_name": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "params": n_params, "spec": spec.to_dict(), "init": st["init"],
            "selection": "most tasks at least 0.2 above chance, then best val_metric = mean over tasks of "
                         "(validation score - chance_score), on "
                         f"recipe_v2.val_examples({args.val_n}) per task; stage lookup and later score "
                         f"{args.lookup_val_differ} differ prompts, stages focus and later also 200 colour "
                         "prompts (n_per_task in val_history is the first task's n); the test split selects nothing",
            "baseline_val_v1_model": baseline, "val_history": st["val"], "loss_history": st["history"],
            "chance": {t: round(chance_score(t), 4) for t in TASKS},
            "eval": selected_eval,
        }

    def checkpoint() -> None:
        t0 = time.perf_counter()
        r = evaluate_examples(model, tokenizer, spec, stage_val.get(st["progress"]["stage"], val), dev)
        probe = patch_probe(model, tokenizer, spec, dev)
        rec = {**st["progress"], "val": r, "probe": probe, "train_s": round(st["train_s"], 1),
               "eval_s": round(time.perf_counter() - t0, 1), "time": time.strftime("%H:%M:%S", time.gmtime())}
        st["val"].append(rec)
        with open(state_dir / "val_history.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        print("VAL", json.dumps(rec), flush=True)
        tmp = str(state_dir / "last.tmp")
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
        save_checkpoint(model, tokenizer, spec, tmp)
        _write_json(os.path.join(tmp, "progress.json"), rec)
        _replace_dir(tmp, str(state_dir / "last"))
        def key(v):  # the bar first (tasks 20 points above chance), then the mean margin
            return v["tasks_20_above"], v["val_metric"]
        if st["best"] is None or key(r) > key(st["best"]["val"]):
            st["best"] = {**st["progress"], "val": r, "probe": probe}
            shutil.copytree(state_dir / "last", state_dir / "best.tmp", dirs_exist_ok=True)
            _replace_dir(str(state_dir / "best.tmp"), str(state_dir / "best"))
            if r["val_metric"] > baseline["val_metric"]:
                shutil.copytree(state_dir / "best", str(out) + ".tmp", dirs_exist_ok=True)
                os.remove(os.path.join(str(out) + ".tmp", "progress.json"))
                _write_json(os.path.join(str(out) + ".tmp", "train_info.json"), train_info())
                _replace_dir(str(out) + ".tmp", str(out))
                print(f"best so far -> {out}", flush=True)
        save_state()

    # stage 1: the vision tower, projector and input embeddings on the tag loss alone
    p = st["progress"]
    if p["stage"] == "vision":
        for step in range(p["step"], args.vision_steps):
            t0 = time.perf_counter()
            for g in opt_v.param_groups:
                g["lr"] = lr_cosine(step, args.vision_steps, args.vision_lr, args.vision_warmup)
            aux = vision_step(model, tokenizer, spec, tags, args.seed, step, args.vision_batch, dev)
            torch.nn.utils.clip_grad_norm_(vparams, 1.0)
            opt_v.step()
            opt.zero_grad(set_to_none=True)
            opt_v.zero_grad(set_to_none=True)
            st["train_s"] += time.perf_counter() - t0
            st["progress"] = {"stage": "vision", "step": step + 1}
            if (step + 1) % args.log_every == 0:
                st["history"].append({"stage": "vision", "step": step + 1, "aux": round(aux, 4),
                                      "train_s": round(st["train_s"], 1)})
                print(json.dumps(st["history"][-1]), flush=True)
            if (step + 1) % args.vision_ckpt_every == 0 or step + 1 == args.vision_steps:
                probe = patch_probe(model, tokenizer, spec, dev)
                st["val"].append({**st["progress"], "probe": probe, "train_s": round(st["train_s"], 1)})
                print("PROBE", json.dumps(st["val"][-1]), flush=True)
                save_state()
        st["progress"] = {"stage": "text", "step": 0}
        save_state()

    def text_stage(stage: str, steps: int, lr: float, warmup: int, stream, stop_at: int = 0,
                   end: int = 0) -> bool:
        """Conversation steps (answer CE + aux_weight x tag loss) from ``st["progress"]``
        to ``end`` (default ``steps``, the schedule's length); False when ``stop_at``
        ended it early."""
        start = st["progress"]["step"] if st["progress"]["stage"] == stage else 0
        end = end or steps
        temps = (1.0, args.shape_temp, 1.0, 1.0) if stage in ("shape", *ATTEND_STAGES) else (1.0, 1.0, 1.0, 1.0)
        attend_weight = {"attend": args.attend_weight, "sharpen": args.sharpen_weight,
                         "retrieve": args.retrieve_weight, "index": args.retrieve_weight,
                         "query": args.retrieve_weight}.get(stage, 0.0)
        head = (args.retrieve_layer, args.retrieve_head) if stage in ("retrieve", "index", "query") else None
        index_weight = args.index_weight if stage in ("index", "query") else 0.0
        query_weight = args.query_weight if stage == "query" else 0.0
        image_id = tokenizer.convert_tokens_to_ids("<image>")
        for step in range(start, end):
            t0 = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, lr, warmup)
            convs = next(stream)
            batch = collate(convs, tokenizer, spec)
            names: list = []
            attend = lookup_attention.targets(convs, batch, tokenizer, spec, key_only=stage != "attend",
                                              names=names) if attend_weight else None
            seen = {}
            layers = (head[0],) if head else lookup_attention.LAYERS
            with lookup_attention.captured(model, layers) if attend is not None else contextlib.nullcontext() as store:
                def extra():
                    seen["attend"] = lookup_attention.loss(model, store, *attend, batch["attention_mask"].to(dev),
                                                           head)
                    if not index_weight:
                        return attend_weight * seen["attend"]
                    labels = image_index.labels(batch["input_ids"], image_id, spec.num_image_tokens).to(dev)
                    seen["index"] = image_index.loss(probe, store[head[0]][0], labels)
                    total = attend_weight * seen["attend"] + index_weight * seen["index"]
                    if query_weight and names:
                        # the key positions' input to the retrieval layer must name the asked colour and shape
                        h = store[head[0]][0][attend[0].to(dev), attend[1].to(dev)].float()
                        want = torch.tensor(names, device=dev)
                        f = torch.nn.functional.cross_entropy
                        seen["query"] = sum(f(qprobes[k](h), want[:, i], ignore_index=-100)
                                            for i, k in enumerate(("colour", "shape")) if (want[:, i] >= 0).any())
                        total = total + query_weight * seen["query"]
                    return total
                loss, aux = train_step(model, batch, dev, args.aux_weight, bool(args.aux_position), "tags",
                                       tags, temps, extra if attend is not None else None)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if index_weight:
                opt_probe.step()
                opt_probe.zero_grad(set_to_none=True)
            if query_weight:
                opt_qprobes.step()
                opt_qprobes.zero_grad(set_to_none=True)
            st["train_s"] += time.perf_counter() - t0
            st["progress"] = {"stage": stage, "step": step + 1}
            if (step + 1) % args.log_every == 0:
                st["history"].append({"stage": stage, "step": step + 1, "loss": round(loss, 4),
                                      "aux": round(aux, 4), "images": len(convs[0].images),
                                      **{k: round(v.item(), 4) for k, v in seen.items()},
                                      "train_s": round(st["train_s"], 1)})
                print(json.dumps(st["history"][-1]), flush=True)
            if (step + 1) % args.ckpt_every == 0 or step + 1 == end:
                checkpoint()
            if stop_at and step + 1 >= stop_at and step + 1 < steps:
                if (step + 1) % args.ckpt_every:
                    checkpoint()
                print(f"stopped at {stage} step {step + 1} (--stop-at-step); continue with --resume", flush=True)
                return False
        return True

    # stage 2: conversations of the test tasks' kinds
    if st["progress"]["stage"] in ("vision", "text"):
        if not text_stage("text", args.steps, args.lr, args.warmup, stream, args.stop_at_step):
            return
    # stage 3: more multi-image conversations, with the ordinal kind; stage 4: the
    # binding kind, stopped at binding_stop; stage 5: the lookup kind; stage 6: lookup
    # and binding at a larger share (recipe_v2 docstring, items 7 to 10)
    order = BRANCHES[args.branch]
    for stage, steps, end, lr, warmup, seed, kinds in (
            ("ordinal", args.ordinal_steps, 0, args.ordinal_lr, args.ordinal_warmup, args.ordinal_seed,
             ORDINAL_KIND_WEIGHTS),
            ("binding", args.binding_steps, args.binding_stop, args.binding_lr, args.binding_warmup,
             args.binding_seed, BINDING_KIND_WEIGHTS),
            ("lookup", args.lookup_steps, 0, args.lookup_lr, args.lookup_warmup, args.lookup_seed,
             LOOKUP_KIND_WEIGHTS),
            ("focus", args.focus_steps, 0, args.focus_lr, args.focus_warmup, args.focus_seed,
             FOCUS_KIND_WEIGHTS),
            ("shape", args.shape_steps, args.shape_stop, args.shape_lr, args.shape_warmup, args.shape_seed,
             SHAPE_KIND_WEIGHTS),
            ("attend", args.attend_steps, args.attend_stop, args.attend_lr, args.attend_warmup,
             args.attend_seed, SHAPE_KIND_WEIGHTS),
            ("sharpen", args.sharpen_steps, args.sharpen_stop, args.sharpen_lr, args.sharpen_warmup, args.sharpen_seed,
             SHARPEN_KIND_WEIGHTS),
            ("retrieve", args.retrieve_steps, args.retrieve_stop, args.retrieve_lr, args.retrieve_warmup,
             args.retrieve_seed, SHARPEN_KIND_WEIGHTS),
            ("index", args.index_steps, args.index_stop, args.index_lr, args.index_warmup, args.index_seed,
             SHARPEN_KIND_WEIGHTS),
            ("query", args.query_steps, args.query_stop, args.query_lr, args.query_warmup, args.query_seed,
             SHARPEN_KIND_WEIGHTS)):
        now = st["progress"]["stage"]
        if stage not in order or (now in order and order.index(now) > order.index(stage)):
            continue
        if stage in stage_val and now != stage:
            # the best so far, rescored on this stage's validation set, so checkpoints compare alike
            prev, _ = load_checkpoint(str(state_dir / "best"), dev)
            st["best"]["val"] = evaluate_examples(prev, tokenizer, spec, stage_val[stage], dev)
            print(f"best so far on {stage}'s validation", json.dumps(st["best"]), flush=True)
            del prev
        later = ConvStream(seed, args.batch_size, kinds, spec.image_size)
        if now == stage:
            later.skip(st["progress"]["step"])
        text_stage(stage, steps, lr, warmup, later, end=end)

    # the end: the selected (validation-best) checkpoint on the test split, reported only
    best_dir = state_dir / "best"
    sel, _ = load_checkpoint(str(best_dir), dev)
    result = evaluate(sel, tokenizer, spec, args.eval_n, 0, dev)
    print(f"selected {st['best']['stage']} step {st['best']['step']} (val_metric "
          f"{st['best']['val']['val_metric']}); test split:", flush=True)
    print(format_table(result), flush=True)
    final = {"split": "test", "decoding": "greedy (transformers)", **result,
             "mean_score": round(sum(result["scores"].values()) / len(result["scores"]), 4),
             "margins": {t: round(s - chance_score(t), 4) for t, s in result["scores"].items()}}
    _write_json(state_dir / "final_test.json", {"selected": st["best"], "eval": final})
    sel_key = (st["best"]["stage"], st["best"]["step"])
    if out.is_dir() and sel_key == tuple(json.load(open(out / "train_info.json"))["selected"][k] for k in ("stage", "step")):
        _write_json(out / "train_info.json", train_info(final))
    print("done", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--recipe", choices=("v1", "v2"), default="v1",
                    help="v1: the committed model's recipe (default); v2: issue 30 (recipe_v2)")
    ap.add_argument("--out", default=None, help=f"default {MODEL_DIR} (v1), {V2_OUT} (v2)")
    for k, v in DEFAULTS.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=None,
                        help=f"v1 {v}, v2 {V2_DEFAULTS[k]}")
    for k, v in {**V2_EXTRA, **V2_STAGE3, **V2_STAGE4, **V2_STAGE5, **V2_STAGE6, **V2_STAGE7,
                 **V2_STAGE8, **V2_STAGE9, **V2_STAGE10, **V2_STAGE11, **V2_STAGE12}.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v, help="v2 only")
    ap.add_argument("--branch", choices=tuple(BRANCHES), default="shape",
                    help="v2: stages after stage 3: shape (stages 7-12, the default path) or "
                         "focus (stages 4-6, explored and not selected)")
    ap.add_argument("--state-dir", default=str(V2_STATE), help="v2: resumable state, val history (not in git)")
    ap.add_argument("--stop-at-step", type=int, default=0, help="v2: checkpoint and exit at this stage-2 step")
    ap.add_argument("--resume", action="store_true", help="v2: continue from STATE_DIR/state.pt "
                    "(or, without it, from the float16 weights in --out, fresh optimizer)")
    ap.add_argument("--kind-weights", default="", help="conversation kinds, e.g. spot=2 (over KIND_WEIGHTS)")
    ap.add_argument("--spec", default="", help="ModelSpec overrides, e.g. num_layers=10")
    ap.add_argument("--eval-n", type=int, default=100, help="test examples per task at the end")
    ap.add_argument("--eval-every", type=int, default=0, help="also evaluate (eval-n/4) every N steps")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--time-steps", type=int, default=0,
                    help="only time this many steps and print the extrapolated train time")
    args = ap.parse_args()
    for k, v in (V2_DEFAULTS if args.recipe == "v2" else DEFAULTS).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.out is None:
        args.out = str(V2_OUT if args.recipe == "v2" else MODEL_DIR)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    overrides = {k: type(getattr(ModelSpec(), k))(v) for k, v in
                 (p.split("=") for p in filter(None, args.spec.split(",")))}
    spec = ModelSpec(**overrides)
    weights = parse_weights(args.kind_weights, V2_KIND_WEIGHTS if args.recipe == "v2" else KIND_WEIGHTS)
    tokenizer = build_tokenizer(spec)
    if args.recipe == "v2":
        return run_v2(args, spec, weights, tokenizer)
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

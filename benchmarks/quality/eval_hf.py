"""Greedy transformers evaluation of a quality checkpoint on the test split.

    python benchmarks/quality/eval_hf.py [--model plphp_dev/quality/model]
        [--n-per-task 100] [--seed 0] [--device cpu|cuda] [--tasks color,count]

Prints score and chance per task.  Prompts are encoded like ``LlavaProcessor``
does (checked against the saved processor on a few examples first), batched
by prompt length so no padding is needed, and decoded greedily until EOS.
Needs torch and transformers, never vLLM.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch

from batches import ROOT, prompt_ids  # benchmarks/quality is sys.path[0]; puts ROOT on it
from plphp_dev.quality import MODEL_DIR
from plphp_dev.quality.model import ModelSpec, load_checkpoint, pixel_values
from plphp_dev.quality.tasks import TASKS, Example, chance_score, make_examples, prompt_text, score

MAX_NEW_TOKENS = 40


@torch.no_grad()
def generate(model, tokenizer, spec: ModelSpec, examples: list[Example], device: str,
             batch_size: int = 64, max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """Greedy answers (stripped text) for ``examples``, in order."""
    encoded = [prompt_ids(ex, tokenizer, spec) for ex in examples]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        groups[len(ids)].append(i)
    answers: list[str] = [""] * len(examples)
    was_training = model.training
    model.eval()
    for idx in groups.values():
        for k in range(0, len(idx), batch_size):
            chunk = idx[k:k + batch_size]
            ids = torch.tensor([encoded[i] for i in chunk], device=device)
            pix = pixel_values([im for i in chunk for im in examples[i].images], spec).to(device)
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pix,
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            for i, row in zip(chunk, out[:, ids.shape[1]:].tolist()):
                answers[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    model.train(was_training)
    return answers


def evaluate(model, tokenizer, spec: ModelSpec, n_per_task: int, seed: int = 0,
             device: str = "cpu", tasks: tuple[str, ...] = TASKS,
             samples: int = 3) -> dict:
    """``{"scores": {task: mean score}, "chance": {...}, "samples": {task: [...]}}``."""
    examples = make_examples("test", n_per_task, seed, tasks=tasks, image_size=spec.image_size)
    answers = generate(model, tokenizer, spec, examples, device)
    per_task: dict[str, list[float]] = defaultdict(list)
    shown: dict[str, list] = defaultdict(list)
    for ex, pred in zip(examples, answers):
        per_task[ex.task].append(score(ex.task, pred, ex.answer))
        if len(shown[ex.task]) < samples:
            shown[ex.task].append({"question": ex.question, "answer": ex.answer, "prediction": pred})
    return {
        "n_per_task": n_per_task,
        "seed": seed,
        "scores": {t: round(sum(v) / len(v), 4) for t, v in per_task.items()},
        "chance": {t: round(chance_score(t), 4) for t in per_task},
        "samples": dict(shown),
    }


def check_processor(processor, tokenizer, spec: ModelSpec, examples: list[Example]) -> None:
    """Assert our encoding equals the saved ``LlavaProcessor``'s output."""
    for ex in examples:
        ref = processor(text=prompt_text(ex), images=ex.images, return_tensors="pt")
        assert ref.input_ids[0].tolist() == prompt_ids(ex, tokenizer, spec), ex.task
        diff = (ref.pixel_values - pixel_values(ex.images, spec)).abs().max().item()
        assert diff < 1e-4, f"pixel mismatch {diff}"


def format_table(result: dict) -> str:
    lines = [f"{'task':10s} {'score':>7s} {'chance':>7s}"]
    for t, s in result["scores"].items():
        lines.append(f"{t:10s} {s:7.3f} {result['chance'][t]:7.3f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(MODEL_DIR))
    ap.add_argument("--n-per-task", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    model, processor = load_checkpoint(args.model, args.device)
    spec = ModelSpec(**{k: v for k, v in json.load(open(f"{args.model}/model_spec.json")).items()
                        if k != "num_image_tokens"})
    tokenizer = processor.tokenizer
    tasks = tuple(args.tasks.split(","))
    check_processor(processor, tokenizer, spec,
                    make_examples("test", 1, args.seed, tasks=tasks, image_size=spec.image_size))
    t0 = time.perf_counter()
    result = evaluate(model, tokenizer, spec, args.n_per_task, args.seed, args.device, tasks)
    result["eval_s"] = round(time.perf_counter() - t0, 1)
    print(format_table(result))
    print(json.dumps(result["samples"], indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

"""Where a checkpoint fails ``differ`` (issue 30): accuracy split by image count,
by which image holds the pair, and by what the other images hold.

    python benchmarks/quality/differ_breakdown.py [--model DIR ...] [--n 300]
        [--split val|test]

``val`` (default) is ``recipe_v2.val_examples``' generator (train split,
``VAL_SEED``): what training may select on.  ``test`` is the benchmark's
split, for reporting only.  Other images are classed by the decoys they hold:
``none``, ``colour`` (the colour on another shape), ``shape`` (the shape in
another colour) or ``both`` (some image holds each kind, or one holds both).
Prints one table per model and a 95% Wilson interval for the total.
Needs torch and transformers, never vLLM.
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict

import torch

from batches import ROOT  # benchmarks/quality is sys.path[0]; puts ROOT on it
from eval_hf import generate
from paired import wilson
from plphp_dev.quality.model import ModelSpec, load_checkpoint
from plphp_dev.quality.scenes import render
from plphp_dev.quality.tasks import Example, differ_qa, differ_scenes, score
from recipe_v2 import VAL_SEED


def differ_cases(split: str, n: int, image_size: int = 96) -> list[tuple[Example, dict]]:
    """``n`` differ examples of ``split`` with their case labels, as ``make_example`` draws them."""
    prefix, seed = ("train", VAL_SEED) if split == "val" else ("test", 0)
    out = []
    for i in range(n):
        rng = random.Random(f"{prefix}/{seed}/differ/{i}")
        scenes, color, shape, which = differ_scenes(rng)
        q, a = differ_qa(color, shape, which)
        others = [s for j, s in enumerate(scenes) if j != which]
        has_c = any(o.color == color for s in others for o in s.objects)
        has_s = any(o.shape == shape for s in others for o in s.objects)
        decoy = {(False, False): "none", (True, False): "colour", (False, True): "shape",
                 (True, True): "both"}[(has_c, has_s)]
        ex = Example("differ", [render(s, image_size) for s in scenes], q, a)
        out.append((ex, {"images": len(scenes), "which": which, "decoy": decoy}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=[str(ROOT / "plphp_dev" / "quality" / "model_v2")])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--split", choices=("val", "test"), default="val")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = differ_cases(args.split, args.n)
    for path in args.model:
        model, proc = load_checkpoint(path, "cpu")
        answers = generate(model, proc.tokenizer, ModelSpec(), [ex for ex, _ in cases], "cpu")
        right = [score("differ", a, ex.answer) for (ex, _), a in zip(cases, answers)]
        print(f"\n{path}: differ on {args.split} n={args.n}: {sum(right) / len(right):.3f} "
              f"[{wilson(sum(right), len(right))[0]:.3f}, {wilson(sum(right), len(right))[1]:.3f}] "
              f"(best image-blind 0.444)")
        for key in ("images", "which", "decoy"):
            groups: dict = defaultdict(list)
            for (_, c), r in zip(cases, right):
                groups[c[key]].append(r)
            print(f"  by {key:7s}" + "".join(f"  {g}: {sum(v) / len(v):.2f} (n={len(v)})"
                                             for g, v in sorted(groups.items())))
        said = defaultdict(lambda: defaultdict(int))
        for (ex, c), a in zip(cases, answers):
            said[(c["images"], c["which"])][a.split(" ")[1] if a.startswith("The ") else a[:12]] += 1
        for k in sorted(said):
            print(f"  {k[0]} images, pair in image {k[1] + 1}: said {dict(said[k])}")


if __name__ == "__main__":
    main()

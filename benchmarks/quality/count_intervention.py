"""Does keeping more background lower the count? An intervention on PLPHP's
keep masks for issue 30's count-versus-r question.

    nice -n 10 .venv/bin/python benchmarks/quality/count_intervention.py [--n 150] [--model v1|v2]

On v1, PLPHP's count answers get lower as r grows, while its kept caches get
less object-dense (`caption_objects.py --task count`: object patches kept
0.55 / 0.61 / 0.69, background 0.61 / 0.72 / 0.84 at r = 0.3 / 0.4 / 0.5).
That is a correlation across settings. This edits the masks themselves, on
the HF reference (`plphp_dev/reference.py`, which the engine equals token for
token), for the held-out count prompts (split "test", seed 0, as the paired
benchmark):

- "plphp r=0.3": PLPHP as it is;
- "r=0.3 + every background patch": the same masks, and every background
  patch kept too (in every pruned layer and KV head; object patches exactly
  as r=0.3 chose);
- "r=0.3 + every object patch": the same masks, and every object patch kept
  too (background exactly as r=0.3 chose);
- "plphp r=0.5" and "stock" for scale.

If the count is read from how much of the kept image is object, adding
background lowers the answers and adding objects raises them. Object
patches: 8x8 px patches holding any of an object's pixels
(`caption_objects.object_patches`). Gaps: points, 95% paired bootstrap
(`paired.py`) against "plphp r=0.3".

Shapes: run.masks[layer] is (num_kv_heads, prompt_len) bool; the image's 144
vision positions are its 12x12 patches, row-major.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BASE = {"policy": "plphp", "r": 0.3}
SETTINGS = {"stock": (None, None), "plphp r=0.3": (BASE, None),
            "r=0.3 + every background patch": (BASE, "background"),
            "r=0.3 + every object patch": (BASE, "objects"),
            "plphp r=0.5": ({"policy": "plphp", "r": 0.5}, None)}


@contextlib.contextmanager
def keep_also(positions):
    """While active, every pruned layer's keep mask also keeps `positions`
    (a LongTensor of prompt positions), in every KV head."""
    from plphp_dev import reference

    original = reference._decide

    def decide(run, layer, probs, num_kv_heads):
        original(run, layer, probs, num_kv_heads)
        if layer in run.masks and positions is not None:
            run.masks[layer][:, positions] = True

    reference._decide = decide
    try:
        yield
    finally:
        reference._decide = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=150, help="held-out count examples")
    ap.add_argument("--model", choices=("v1", "v2"), default="v1")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    import torch

    from caption_objects import object_patches, task_scene
    from count_by_objects import said
    from paired import fmt, paired_gap
    from plphp_dev.quality import MODEL_DIR, MODEL_V2_DIR
    from plphp_dev.quality.tasks import make_examples, prompt_text
    from plphp_dev.reference import ReferenceModel

    torch.set_num_threads(2)
    ref = ReferenceModel(str(MODEL_V2_DIR if args.model == "v2" else MODEL_DIR))
    tok = ref.processor.tokenizer
    ref.model.generation_config.eos_token_id = tok.eos_token_id
    examples = make_examples("test", args.n, 0, tasks=("count",))
    size = examples[0].images[0].size[0]
    rows = {}
    for name, (cfg, extra) in SETTINGS.items():
        right, error, obj_kept, bg_kept, density = [], [], [], [], []
        for i, ex in enumerate(examples):
            scene, answer = task_scene("count", i)
            assert answer == ex.answer
            vision = ref.last_positions(prompt_text(ex), ex.images)[0]
            patches = object_patches(scene, size)
            on_object = np.zeros(vision.numel(), dtype=bool)
            on_object[np.concatenate(patches)] = True
            pick = {"objects": on_object, "background": ~on_object}.get(extra)
            with keep_also(None if pick is None else vision[torch.from_numpy(pick)]):
                tokens, _ = ref.generate(prompt_text(ex), ex.images, 40, cfg)
            text = tok.decode(tokens, skip_special_tokens=True)
            truth = len(scene.objects)
            number = said(text)  # -1: no number
            right.append(float(number == truth))
            error.append(number - truth if number >= 0 else np.nan)
            if ref.last_run.masks:
                keep = np.stack([m.numpy()[:, vision.numpy()] for m in ref.last_run.masks.values()])
                obj_kept.append(keep[:, :, on_object].mean())
                bg_kept.append(keep[:, :, ~on_object].mean())
                density.append(keep[:, :, on_object].sum() / keep.sum())
            else:  # stock: everything kept
                obj_kept.append(1.0)
                bg_kept.append(1.0)
                density.append(on_object.mean())
        # "answers too low": share of all answers (one with no number is not low)
        rows[name] = dict(right=np.array(right), error=np.nanmean(error), low=np.mean(np.array(error) < 0),
                          obj=np.mean(obj_kept), bg=np.mean(bg_kept), density=np.mean(density))
        print(f"[{name}] {np.mean(right):.3f}", file=sys.stderr, flush=True)
    base = rows["plphp r=0.3"]["right"]
    print(f"\n{args.n} held-out count examples (split test, seed 0), model {args.model}, HF reference, greedy\n")
    print("| setting | count right | minus plphp r=0.3 (points) | mean answer minus truth | answers too low "
          "| object patches kept | background patches kept | object share of kept vision |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        gap = "" if name == "plphp r=0.3" else fmt(paired_gap({"count": r["right"] - base})["count"])
        print(f"| {name} | {r['right'].mean():.3f} | {gap} | {r['error']:+.2f} | {r['low']:.2f} "
              f"| {r['obj']:.3f} | {r['bg']:.3f} | {r['density']:.3f} |")


if __name__ == "__main__":
    main()

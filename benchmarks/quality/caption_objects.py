"""Which objects' patches each policy keeps, and which objects a caption leaves out.

    nice -n 10 .venv/bin/python benchmarks/quality/caption_objects.py [--n 200] \\
        [--task caption|count] [--model v1|v2]

`--task count` does the same for the count task under stock, PLPHP at
r = 0.3 / 0.4 / 0.5 and shared heads at r = 0.4 (issue 30's count-versus-r
question); there "objects listed" is the number the answer says. `--model
v2` reads the recipe-v2 model.

The quality benchmark found that PLPHP's captions name about one object fewer
than the scene holds while FastV K=2 R=0.75's name more (RESULTS.md, "Caption
length").  This looks at the kept caches directly, on the HF reference
(`plphp_dev/reference.py`, which the engine equals token for token and kept
position for kept position: `tests/integration/test_quality_model.py`), for
the held-out caption examples (split "test", seed 0, as the benchmark):

- per object, the share of its patches (8x8 px patches holding any of its
  pixels, from `scenes.label_map`) each KV head keeps in each pruned layer,
  averaged over heads and layers ("kept share"), and how often an object is
  lost whole in a (layer, head) (none of its patches kept);
- the same for background patches;
- per caption, how many objects it lists (its "a <colour> <shape> <place>"
  clauses; the model gets colours, shapes and places mostly wrong, so the
  clauses cannot be matched to objects, only counted), and the mean kept
  share of the objects in captions that list fewer objects than the scene
  holds against the others.

Shapes: masks[layer] is (num_kv_heads, prompt_len) bool; an image's 144 vision
positions are its 12x12 patches in row-major order.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {
    "stock": None,
    "plphp r=0.4": {"policy": "plphp", "r": 0.4},
    "shared heads r=0.4": {"policy": "plphp", "r": 0.4, "per_head": False},
    "fastv K=2 R=0.75": {"policy": "fastv", "k": 2, "fastv_r": 0.75},
    "fastv K=3 R=0.5": {"policy": "fastv", "k": 3, "fastv_r": 0.5},
}
PATCH = 8


def object_patches(scene, size: int) -> list[np.ndarray]:
    """Per object, the row-major indices of the patches holding any of its pixels."""
    from plphp_dev.quality.scenes import label_map

    labels = np.asarray(label_map(scene, size))
    g = size // PATCH
    per_patch = labels.reshape(g, PATCH, g, PATCH).transpose(0, 2, 1, 3).reshape(g * g, -1)
    return [np.nonzero((per_patch == i + 1).any(axis=1))[0] for i in range(len(scene.objects))]


COUNT_SETTINGS = {"plphp r=0.3": {"policy": "plphp", "r": 0.3}, "plphp r=0.5": {"policy": "plphp", "r": 0.5}}


def task_scene(task: str, index: int, seed: int = 0):
    from plphp_dev.quality import tasks

    rng = random.Random(f"test/{seed}/{task}/{index}")
    scenes, _, answer = tasks._MAKERS[task](rng)
    return scenes[0], answer


def listed(text: str, task: str = "caption") -> int:
    """Objects a caption lists (its " and "-joined clauses), or the number a
    count answer says (-1: none)."""
    if task == "count":
        from count_by_objects import said

        return said(text)
    return text.count(" and ") + 1 if text.strip() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="held-out examples")
    ap.add_argument("--task", choices=("caption", "count"), default="caption")
    ap.add_argument("--model", choices=("v1", "v2"), default="v1")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from plphp_dev.quality import MODEL_DIR, MODEL_V2_DIR
    from plphp_dev.quality.tasks import make_examples, prompt_text
    from plphp_dev.reference import ReferenceModel

    ref = ReferenceModel(str(MODEL_V2_DIR if args.model == "v2" else MODEL_DIR))
    tok = ref.processor.tokenizer
    ref.model.generation_config.eos_token_id = tok.eos_token_id  # stop at the answer's end
    examples = make_examples("test", args.n, 0, tasks=(args.task,))
    settings = SETTINGS
    if args.task == "count":  # stock, PLPHP at its three rates, shared heads
        both = {**SETTINGS, **COUNT_SETTINGS}
        settings = {n: both[n] for n in ("stock", "plphp r=0.3", "plphp r=0.4", "plphp r=0.5",
                                         "shared heads r=0.4")}
    size = examples[0].images[0].size[0]
    rows = {}
    for name, cfg in settings.items():
        share, lost, bg, said_n, truth_n, per_example = [], [], [], [], [], []
        for i, ex in enumerate(examples):
            scene, answer = task_scene(args.task, i)
            assert answer == ex.answer
            tokens, _ = ref.generate(prompt_text(ex), ex.images, 40, cfg)
            text = tok.decode(tokens[: tokens.index(tok.eos_token_id)] if tok.eos_token_id in tokens
                              else tokens, skip_special_tokens=True)
            run = ref.last_run
            vision = run.images[0].numpy()
            patches = object_patches(scene, size)
            obj_share = np.ones(len(patches))
            if run.masks:
                keep = np.stack([m.numpy()[:, vision] for m in run.masks.values()])  # (L, Hkv, 144)
                obj_share = np.array([keep[:, :, p].mean() for p in patches])
                lost.extend(float((~keep[:, :, p].any(axis=2)).mean()) for p in patches)
                background = np.setdiff1d(np.arange(keep.shape[2]), np.concatenate(patches))
                bg.append(float(keep[:, :, background].mean()))
            share.extend(obj_share.tolist())
            said_n.append(listed(text, args.task))
            truth_n.append(len(scene.objects))
            per_example.append(float(obj_share.mean()))
        said, truth, per_example = np.array(said_n), np.array(truth_n), np.array(per_example)
        fewer = said < truth
        rows[name] = dict(
            share=np.mean(share), lost=np.mean(lost) if lost else 0.0, bg=np.mean(bg) if bg else 1.0,
            said=said.mean(), truth=truth.mean(), fewer=fewer.mean(), more=(said > truth).mean(),
            share_fewer=per_example[fewer].mean() if fewer.any() else float("nan"),
            share_rest=per_example[~fewer].mean() if (~fewer).any() else float("nan"))
        print(f"[{name}] done", file=sys.stderr, flush=True)
    print(f"\n{args.n} held-out {args.task} examples (split test, seed 0), model {args.model}, "
          "HF reference, greedy, 40 tokens\n")
    print("| setting | object patches kept | background patches kept | (object, layer, head) lost whole "
          "| objects listed / in scene | answers listing fewer | more "
          "| object patches kept: answers listing fewer / the others |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['share']:.3f} | {r['bg']:.3f} | {r['lost']:.3f} | {r['said']:.2f} / "
              f"{r['truth']:.2f} | {r['fewer']:.2f} | {r['more']:.2f} | {r['share_fewer']:.3f} / "
              f"{r['share_rest']:.3f} |")


if __name__ == "__main__":
    main()

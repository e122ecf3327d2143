"""Count-task accuracy by the number of objects in the scene, per setting,
from `bench_paired.py`'s raw figures (issue 30's count-versus-r question).

    .venv/bin/python benchmarks/quality/count_by_objects.py [RAW ...]

Default: both models' raw files (`paired_raw.json.gz`: v1,
`paired_raw_v2.json.gz`: model_v2). Prints per file a markdown table: per
PLPHP setting, the share of count answers that say the right number, by the
scene's number of objects, the mean signed error, and how many of the
prompts wrong at the highest r were also wrong at the lowest.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = ("stock", "plphp r=0.3", "plphp r=0.4", "plphp r=0.5", "shared heads r=0.4")


def said(text: str) -> int:
    """The number a count answer says (-1: none)."""
    from plphp_dev.quality.scenes import NUMBER_WORDS

    words = text.lower().replace(".", " ").split()
    return next((n for n, w in enumerate(NUMBER_WORDS) if w in words), -1)


def table(raw: dict) -> None:
    suite = raw["suites"]["plain"]
    idx = [i for i, t in enumerate(suite["task"]) if t == "count"]
    truth = [said(suite["answer"][i]) for i in idx]
    sizes = sorted(set(truth))
    n = {k: truth.count(k) for k in sizes}
    print("| setting | " + " | ".join(f"{k} objects (n={n[k]})" for k in sizes) + " | all | mean error |")
    print("|---" * (len(sizes) + 3) + "|")
    wrong = {}
    for name in SETTINGS:
        if name not in suite["settings"]:
            continue
        texts = suite["settings"][name]["text"]
        answers = [said(texts[i]) for i in idx]
        by = defaultdict(list)
        for t, a in zip(truth, answers):
            by[t].append(a == t)
        wrong[name] = {i for i, t, a in zip(idx, truth, answers) if a != t}
        err = sum(a - t for a, t in zip(answers, truth)) / len(idx)
        print(f"| {name} | " + " | ".join(f"{sum(by[k]) / len(by[k]):.2f}" for k in sizes)
              + f" | {1 - len(wrong[name]) / len(idx):.3f} | {err:+.2f} |")
    lo, hi = "plphp r=0.3", "plphp r=0.5"
    if lo in wrong and hi in wrong:
        print(f"\nwrong at {hi}: {len(wrong[hi])}, of which also wrong at {lo}: {len(wrong[hi] & wrong[lo])}")


def main() -> None:
    sys.path.insert(0, str(HERE.parents[1]))
    sys.path.insert(0, str(HERE))
    from bench_paired import load_raw

    files = sys.argv[1:] or [str(HERE / "paired_raw.json.gz"), str(HERE / "paired_raw_v2.json.gz")]
    for path in files:
        raw = load_raw(path)
        print(f"\n{Path(path).name} (model {raw['args'].get('model', 'v1')}), plain count prompts\n")
        table(raw)


if __name__ == "__main__":
    main()

"""Tables of `bench_paired.py`'s raw figures (markdown, for RESULTS.md).

Gaps are in points (score x 100) with 95% paired bootstrap intervals
(`paired.py`); "avg" weighs every task once.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from paired import bracket, fmt, half_width, paired_gap, wilson

TASK_ORDER = ("color", "shape", "count", "position", "differ", "spot", "compare", "caption")
MULTI = ("differ", "spot", "compare")


def _tasks(suite: dict) -> list[str]:
    return [t for t in TASK_ORDER if t in set(suite["task"])]


def _by_task(suite: dict, values) -> dict[str, np.ndarray]:
    tasks, order = suite["task"], _tasks(suite)
    return {t: np.array([v for v, tt in zip(values, tasks) if tt == t], dtype=float) for t in order}


def _mean(suite, setting, key) -> dict[str, float]:
    """Per-task means; None (a per-request record lost, bench_paired's
    --refill-records) is left out."""
    values, tasks = suite["settings"][setting][key], suite["task"]
    out = {t: float(np.mean([v for v, tt in zip(values, tasks) if tt == t and v is not None]))
           for t in _tasks(suite)}
    out["avg"] = float(np.mean(list(out.values())))
    return out


def _diff(suite, a, b, key="score") -> dict[str, np.ndarray]:
    s = suite["settings"]
    return _by_task(suite, np.array(s[a][key], float) - np.array(s[b][key], float))


def scores_table(suite: dict, title: str) -> None:
    settings = suite["settings"]
    tasks = _tasks(suite)
    n = Counter(suite["task"])
    print(f"\n#### {title}: scores (n per task: {', '.join(f'{t} {n[t]}' for t in tasks)})\n")
    print("| setting | " + " | ".join(tasks) + " | avg | retention | KV entries | KV blocks |")
    print("|---" * (len(tasks) + 5) + "|")
    tok = _mean(suite, "stock", "tokens")
    print("| stock answer tokens | " + " | ".join(f"{tok[t]:.1f}" for t in tasks) + " | | | | |")
    for name in settings:
        sc = _mean(suite, name, "score")
        ret, kv, kb = (_mean(suite, name, k)["avg"] for k in ("retention", "kv", "kv_blocks"))
        print(f"| {name} | " + " | ".join(f"{sc[t]:.3f}" for t in tasks)
              + f" | {sc['avg']:.3f} | {ret:.3f} | {kv:.3f} | {kb:.3f} |")


def widths(out: dict) -> None:
    """The widest 95% half-width of a table, on the average and per task."""
    avg = [half_width(g["avg"]) for g in out.values() if "avg" in g]
    per = [(half_width(v), t, k) for k, g in out.items() for t, v in g.items() if t != "avg"]
    if per:
        w, t, k = max(per)
        print(f"\nwidest half-width: average {100 * max(avg or [0]):.1f} points; "
              f"per task {100 * w:.1f} ({t}, {' / '.join(k)})")


def gap_table(suite: dict, pairs: list[tuple[str, str]], title: str) -> dict:
    tasks = _tasks(suite)
    print(f"\n#### {title} (points, 95% paired bootstrap interval)\n")
    print("| A minus B | " + " | ".join(tasks) + " | avg |")
    print("|---" * (len(tasks) + 2) + "|")
    out = {}
    for a, b in pairs:
        g = paired_gap(_diff(suite, a, b))
        out[(a, b)] = g
        print(f"| {a} - {b} | " + " | ".join(fmt(g[t]) for t in tasks) + f" | {fmt(g['avg'])} |")
    widths(out)
    return out


def matched_table(suite: dict, plphp_names: list[str], key: str, title: str) -> dict:
    """PLPHP minus FastV / VTW interpolated at PLPHP's per-task mean `key`."""
    s = suite["settings"]
    tasks = _tasks(suite)
    print(f"\n#### {title} (points, 95% paired bootstrap interval; n/a: outside the baseline's range)\n")
    print("| PLPHP | baseline | " + " | ".join(tasks) + " | avg |")
    print("|---" * (len(tasks) + 3) + "|")
    out = {}
    for name in plphp_names:
        x = _mean(suite, name, key)
        for method in ("fastv", "vtw"):
            members = [k for k in s if k.startswith(method)]
            diffs, cells = {}, {}
            for t in tasks:
                br = bracket([(_mean(suite, m, key)[t], m) for m in members], x[t])
                if br is None:
                    continue
                a, b, w = br
                ya = _by_task(suite, s[a]["score"])[t]
                yb = _by_task(suite, s[b]["score"])[t]
                diffs[t] = _by_task(suite, s[name]["score"])[t] - ((1 - w) * ya + w * yb)
            g = paired_gap(diffs) if diffs else {}
            cells = {t: fmt(g[t]) if t in g else "n/a" for t in tasks}
            avg = fmt(g["avg"]) if len(diffs) == len(tasks) else "n/a"
            out[(name, method)] = g
            print(f"| {name} | {method} | " + " | ".join(cells[t] for t in tasks) + f" | {avg} |")
    widths({k: g for k, g in out.items() if g})
    return out


def category_table(suite: dict, names: list[str], num_layers: int) -> None:
    s = suite["settings"]
    print("\n#### Layer categories of the pruned layers (A attentive gamma >= 0.25, "
          "B balanced, I indifferent gamma < 0.1)\n")
    print("| setting | A | B | I | requests with a B or I layer | per layer (A/B/I) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        cats = [c for c in s[name]["cats"] if c is not None]
        c = Counter("".join(cats))
        n = sum(c[k] for k in "ABI") or 1
        mixed = sum(1 for x in cats if set(x) - {"A"}) / len(cats)
        width = max(len(x) for x in cats)
        per_layer = []
        for l in range(width):
            cl = Counter(x[l] for x in cats if len(x) > l)
            per_layer.append("/".join(str(cl[k]) for k in "ABI"))
        print(f"| {name} | {c['A'] / n:.3f} | {c['B'] / n:.3f} | {c['I'] / n:.3f} | {mixed:.3f} | "
              + ", ".join(f"L{l + 2}: {p}" for l, p in enumerate(per_layer)) + " |")


def bar_table(suite: dict) -> dict:
    """Stock minus the best image-blind answer (``chance_score``), per task:
    issue 30's bar is 20 points. Exact-match tasks: Wilson 95% interval of
    stock's score; caption (ROUGE-L, not a proportion): percentile bootstrap."""
    from plphp_dev.quality.tasks import chance_score

    tasks = _tasks(suite)
    by = _by_task(suite, suite["settings"]["stock"]["score"])
    out = {}
    for t in tasks:
        c, m = chance_score(t), float(by[t].mean())
        lo, hi = (paired_gap({t: by[t]})[t][1:] if t == "caption" else wilson(by[t].sum(), len(by[t])))
        out[t] = (m - c, lo - c, hi - c)
    print("\n#### Stock against the best image-blind answer (the bar: 20 points on every task; "
          "95% interval: Wilson, caption bootstrap)\n")
    print("| | " + " | ".join(tasks) + " |")
    print("|---" * (len(tasks) + 1) + "|")
    print("| n | " + " | ".join(str(len(by[t])) for t in tasks) + " |")
    print("| stock | " + " | ".join(f"{by[t].mean():.3f}" for t in tasks) + " |")
    print("| best image-blind | " + " | ".join(f"{chance_score(t):.3f}" for t in tasks) + " |")
    print("| margin (points) | " + " | ".join(fmt(out[t]) for t in tasks) + " |")
    return out


def caption_table(suite: dict, names: list[str]) -> None:
    """Caption length: answer tokens, EOS vs length limit, objects described."""
    s = suite["settings"]
    idx = [i for i, t in enumerate(suite["task"]) if t == "caption"]
    if not idx:
        return
    truth = np.array([suite["answer"][i].count(" and ") + 1 for i in idx])
    print("\n#### Caption answers (plain suite): length and objects described\n")
    print("| setting | ROUGE-L | answer tokens | ended by EOS | objects described / in scene "
          "| fewer objects than scene | more |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        r = s[name]
        said = np.array([r["text"][i].count(" and ") + 1 if r["text"][i] else 0 for i in idx])
        print(f"| {name} | {np.mean([r['score'][i] for i in idx]):.3f} "
              f"| {np.mean([r['tokens'][i] for i in idx]):.1f} "
              f"| {np.mean([r['eos'][i] for i in idx]):.2f} "
              f"| {said.mean():.2f} / {truth.mean():.2f} | {np.mean(said < truth):.2f} "
              f"| {np.mean(said > truth):.2f} |")


def count_table(suite: dict, names: list[str]) -> None:
    """Direction of the count task's errors (the number in the answer vs the scene's)."""
    from plphp_dev.quality.scenes import NUMBER_WORDS

    def number(text):
        return next((NUMBER_WORDS.index(w) for w in text.lower().replace(".", "").split()
                     if w in NUMBER_WORDS), None)

    idx = [i for i, t in enumerate(suite["task"]) if t == "count"]
    truth = [number(suite["answer"][i]) for i in idx]
    print("\n#### Count task: answered number minus objects in the scene\n")
    print("| setting | mean | answers too low | too high | no number |")
    print("|---|---|---|---|---|")
    for name in names:
        said = [number(suite["settings"][name]["text"][i]) for i in idx]
        d = [a - b for a, b in zip(said, truth) if a is not None]
        print(f"| {name} | {np.mean(d):+.2f} | {np.mean([x < 0 for x in d]):.2f} "
              f"| {np.mean([x > 0 for x in d]):.2f} | {sum(a is None for a in said)} |")


def report(raw: dict) -> None:
    nl = raw["num_layers"]
    print(f"block size {raw.get('block_size')}, args {raw['args']}")
    for suite, settings in raw.get("refilled", {}).items():
        for name, per_task in settings.items():
            print(f"{suite} / {name}: retention, KV and categories from a rerun of "
                  + ", ".join(f"{n} {t}" for t, n in per_task.items()) + " examples (records lost)")
    plain = raw["suites"]["plain"]
    ps = plain["settings"]
    p_names = [k for k in ps if k.startswith("plphp")]
    bar_table(plain)
    scores_table(plain, "Plain prompts")
    gap_table(plain, [(k, "stock") for k in ps if k != "stock"], "Plain prompts: setting minus stock")
    gap_table(plain, [(k, f"shared heads {k.split()[-1]}") for k in p_names
                      if f"shared heads {k.split()[-1]}" in ps],
              "Per-head ablation, plain prompts: PLPHP minus shared heads (same KV)")
    matched_table(plain, p_names, "retention", "Matched vision retention: PLPHP minus baseline")
    # per task, KV entries are an affine function of retention with the same
    # coefficients for every policy (same prompts), so matching entries is
    # matching retention; the bytes the pool holds come in blocks:
    matched_table(plain, p_names, "kv_blocks",
                  "Matched KV bytes (allocated blocks, what the pool holds): PLPHP minus baseline")
    category_table(plain, p_names[:1], nl)  # gamma_l comes from the full prefill: same in every setting
    caption_table(plain, list(ps))
    count_table(plain, list(ps))
    chat = raw["suites"].get("chat")
    if chat and chat["settings"]:
        cs = chat["settings"]
        scores_table(chat, "Chat prompts (system prompt + earlier turns)")
        gap_table(chat, [(k, "stock") for k in cs if k != "stock"], "Chat prompts: setting minus stock")
        pairs = [(k, f"uniform {k.split()[-1]}") for k in cs if k.startswith("plphp")
                 and f"uniform {k.split()[-1]}" in cs]
        pairs += [(f"plphp {k.split()[-1]}", k) for k in cs if k.startswith("shared")]
        gap_table(chat, pairs, "Ablations, chat prompts: PLPHP minus uniform rate / minus shared heads")
        # where every pruned layer is attentive, uniform == PLPHP: the layer
        # rule's effect is on the requests with a balanced / indifferent layer
        ref = next(k for k in cs if k.startswith("plphp"))
        keep = [i for i, c in enumerate(cs[ref]["cats"]) if set(c) - {"A"}]
        sub = {"task": [chat["task"][i] for i in keep], "answer": [chat["answer"][i] for i in keep],
               "settings": {k: {f: [v[i] for i in keep] for f, v in r.items()} for k, r in cs.items()}}
        gap_table(sub, pairs[:3], f"Layer-rule ablation on the {len(keep)} chat requests with a "
                                  "balanced or indifferent layer: PLPHP minus uniform rate")
        category_table(chat, [k for k in cs if k.startswith("plphp")][:1], nl)

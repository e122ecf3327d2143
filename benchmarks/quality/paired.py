"""Paired statistics for the quality benchmark (numpy only, no vLLM).

Every setting runs the same examples, so a gap between two settings is the
mean of per-example differences d_i = score_A(i) - score_B(i).  Its 95%
interval is a percentile bootstrap over examples (resampled within each task,
so the task mix is fixed), seeded, ``B`` resamples.  The "average" of a
setting is the unweighted mean of its per-task means (every task counts once),
and its gap interval comes from the same stratified resamples.

Matched comparisons (retention or KV): a baseline's score at PLPHP's x is the
linear interpolation between the two baseline settings whose mean x bracket
it; per example that is (1 - w) * y_a(i) + w * y_b(i) with w fixed from the
means (the interval does not include the uncertainty of w).
"""

from __future__ import annotations

import numpy as np

B = 4000
SEED = 0


def _resample_means(d: np.ndarray, rng: np.random.Generator, b: int) -> np.ndarray:
    idx = rng.integers(0, len(d), size=(b, len(d)))
    return d[idx].mean(axis=1)


def paired_gap(diffs: dict[str, np.ndarray], b: int = B, seed: int = SEED) -> dict:
    """diffs: task -> per-example differences (same examples in both settings).

    Returns {task: (mean, lo, hi), "avg": (mean, lo, hi)} in score units."""
    rng = np.random.default_rng(seed)
    out, boots = {}, []
    for task, d in diffs.items():
        d = np.asarray(d, dtype=float)
        m = _resample_means(d, rng, b)
        boots.append(m)
        out[task] = (float(d.mean()), *np.percentile(m, [2.5, 97.5]).tolist())
    avg = np.mean(boots, axis=0)
    out["avg"] = (float(np.mean([out[t][0] for t in diffs])),
                  *np.percentile(avg, [2.5, 97.5]).tolist())
    return out


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / n."""
    p, d = k / n, 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return float(c - h), float(c + h)


def bracket(curve: list[tuple[float, str]], x: float):
    """curve: [(mean x, setting name)]. The (name_a, name_b, w) whose x bracket
    ``x`` (y = (1 - w) y_a + w y_b), or None outside the curve."""
    pts = sorted(curve)
    for (x0, a), (x1, b) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return a, b, (0.0 if x1 == x0 else (x - x0) / (x1 - x0))
    return None


def fmt(gap: tuple[float, float, float], scale: float = 100.0) -> str:
    """'+1.2 [-0.5, +2.9]' in points."""
    m, lo, hi = (scale * v for v in gap)
    return f"{m:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def half_width(gap: tuple[float, float, float]) -> float:
    return (gap[2] - gap[1]) / 2

"""Paired bootstrap intervals of the quality benchmark (benchmarks/quality/paired.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "quality"))
from paired import bracket, fmt, paired_gap  # noqa: E402


def test_no_difference_gives_a_zero_interval_and_a_constant_one_is_exact():
    g = paired_gap({"a": np.zeros(50), "b": np.ones(30)})
    assert g["a"] == (0.0, 0.0, 0.0) and g["b"] == (1.0, 1.0, 1.0)
    assert g["avg"] == pytest.approx((0.5, 0.5, 0.5))  # every task counts once


def test_interval_width_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    d = rng.choice([-1.0, 0.0, 1.0], p=[0.1, 0.6, 0.3], size=800)  # discordant pairs
    mean, lo, hi = paired_gap({"t": d})["t"]
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert lo < mean < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    # the average of two such tasks: narrower by about sqrt(2)
    avg = paired_gap({"t": d, "u": d[::-1].copy()})["avg"]
    assert (avg[2] - avg[1]) / 2 == pytest.approx(half / np.sqrt(2), rel=0.2)


def test_bracket_interpolates_between_neighbours():
    curve = [(0.2, "a"), (0.6, "b"), (0.9, "c")]
    assert bracket(curve, 0.7) == ("b", "c", pytest.approx(1 / 3))
    assert bracket(curve, 0.95) is None
    assert fmt((0.012, -0.005, 0.029)) == "+1.2 [-0.5, +2.9]"

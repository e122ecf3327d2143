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


def test_bar_table_margins_are_stock_minus_the_image_blind_answer(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from paired import wilson
    from paired_report import bar_table

    from plphp_dev.quality.tasks import chance_score

    # a hand-checked Wilson interval: 8 of 10 -> [0.490, 0.943]
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    # a perfect score keeps a lower bound below 1 (a bootstrap would not)
    assert wilson(100, 100)[0] == pytest.approx(0.963, abs=1e-3)
    suite = {"task": ["shape"] * 100 + ["caption"] * 4, "answer": [""] * 104,
             "settings": {"stock": {"score": [1.0] * 60 + [0.0] * 40 + [0.5, 0.7, 0.9, 0.7]}}}
    out = bar_table(suite)
    assert out["shape"][0] == pytest.approx(0.6 - chance_score("shape"))
    lo, hi = wilson(60, 100)
    assert out["shape"][1:] == pytest.approx((lo - chance_score("shape"), hi - chance_score("shape")))
    assert out["caption"][0] == pytest.approx(0.7 - chance_score("caption"))
    assert out["caption"][1] < out["caption"][0] < out["caption"][2]
    assert "| n | 100 | 4 |" in capsys.readouterr().out

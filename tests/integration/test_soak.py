"""The soak (`benchmarks/soak.py`) in short form: 45 s of seeded mixed
traffic with faults against `vllm serve --attention-backend plphp`, then a
stock server for the text answers. One run for the module; the tests read
its summary. The full-length run is `benchmarks/soak.py` (docs/benchmarks.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EAGER

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def soak(tmp_path_factory, llava_path):
    out = tmp_path_factory.mktemp("soak") / "summary.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--duration", "45", "--seed", "3",
           "--rate", "1.5", "--prompts", "2", "--kv-mib", "28", "--json", str(out),
           *(["--eager"] if EAGER else [])]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    summary = json.loads(out.read_text()) if out.exists() else {}
    return proc, summary


def test_soak_runs_clean(soak):
    proc, summary = soak
    assert summary, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["losses"] == [], "\n".join(summary["losses"][:20])
    assert proc.returncode == 0, proc.stdout[-3000:]
    final = summary["final"]
    assert (final["running"], final["waiting"], final["kv_usage"]) == (0, 0, 0)


def test_soak_injected_every_fault(soak):
    """The run exercised what it claims: preemption, 400s, disconnects,
    pruning, 1-3 image and text requests, streaming and not."""
    _, s = soak
    assert s["preemptions"] > 0
    assert s["outcomes"].get("400", 0) > 0
    assert s["outcomes"].get("disconnect", 0) > 0
    assert s["pruned"] > 0 and s["blocks_freed"] > 0
    assert set(s["images"]) == {"0", "1", "2", "3"}
    assert 0 < s["streaming"] < s["requests"]


def test_soak_compared_the_answers(soak):
    _, s = soak
    assert s["image_answers_checked_alone"] >= 5
    assert s["answers_checked_against_stock"] >= 3


def test_preempted_image_answers_equal_alone(soak):
    """A preempted image request is recomputed with its chunk ending at the
    prompt's end (patches/v1_core_sched_scheduler.py), so its answer goes on as
    if never preempted."""
    _, s = soak
    assert s["preemption_drift"] == [], "\n".join(s["preemption_drift"])

"""Tensor parallel 2 on CPU (multiprocessing executor): each rank holds half
the heads; gamma_l is all-reduced so both ranks pick the same r_l and keep the
same lengths; outputs equal TP=1. Thresholds are placed inside the observed
gamma range so that a rank using only its own heads would disagree.

The same under vLLM's Ray executor, on a local two-node Ray cluster:
tests/integration/test_ray_executor.py and test_ray_serve.py."""

import os

import pytest

from tests.conftest import greedy, make_llm, token_ids
from plphp_dev.fixtures.prompts import prompt_inputs

pytestmark = pytest.mark.slow
CASES = [(1, 0), (2, 3), (0, 0)]


@pytest.fixture(scope="module")
def tp1(llava_path):
    llm = make_llm(llava_path, "plphp")
    prompts = [prompt_inputs("llava", n, s) for n, s in CASES]
    first = llm.generate(prompts[:1], greedy())
    rec = llm.collective_rpc("plphp_records", args=([first[0].request_id],))[0]
    gammas = sorted(r["gamma"] for r in rec[first[0].request_id].values())
    i, j = len(gammas) // 3, 2 * len(gammas) // 3
    override = {"beta": (gammas[i - 1] + gammas[i]) / 2, "alpha": (gammas[j - 1] + gammas[j]) / 2}
    prompts, params = with_per_request_path(prompts, override)
    outs = llm.generate(prompts, params)
    records = llm.collective_rpc("plphp_records", args=([o.request_id for o in outs],))[0]
    llm.llm_engine.engine_core.shutdown()
    return prompts, params, token_ids(outs), [records.get(o.request_id) for o in outs]


def with_per_request_path(prompts, override):
    """The prompts under `override`, plus the first one under shared heads and
    FastV: those take the per-request scoring path (`prune._layer_scores`),
    whose head sums are all-reduced across ranks too."""
    extra = [{**override, "per_head": False}, {"policy": "fastv", "k": 3, "fastv_r": 0.5}]
    return prompts + prompts[:1] * len(extra), [greedy(plphp=o) for o in [override] * len(prompts) + extra]


def test_tp2_ranks_agree_and_equal_tp1(llava_path, tp1):
    prompts, params, tp1_tokens, tp1_records = tp1
    old = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"  # one core per rank
    try:
        llm = make_llm(llava_path, "plphp", tensor_parallel_size=2,
                       distributed_executor_backend="mp")
    finally:
        if old is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND")
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = old
    try:
        outs = llm.generate(prompts, params)
        per_rank = llm.collective_rpc("plphp_records", args=([o.request_id for o in outs],))
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert len(per_rank) == 2
    rank0, rank1 = ([r.get(o.request_id) for o in outs] for r in per_rank)
    kept = lambda recs: [None if r is None else {l: (x["rate"], x["kept"]) for l, x in r.items()} for r in recs]
    assert kept(rank0) == kept(rank1)  # same r_l and lengths on both ranks
    assert kept(rank0) == kept(tp1_records)  # and the same as TP=1
    assert len({x["rate"] for x in tp1_records[0].values()}) == 3  # a real mix of categories
    assert all(tp1_records[-2:])  # shared heads and FastV pruned too
    assert token_ids(outs) == tp1_tokens

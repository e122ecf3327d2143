"""Pipeline parallel 2 under Model Runner V2 (mp executor, eager; stock vLLM
runs PP on CPU under V2 only): each stage prunes its own layers and the last
stage carries stage 0's prune events to the scheduler
(vllm_plphp.worker.pipeline). Against PP=1 in the same module: the same
tokens, per-layer rates and kept lengths (stage 0 holds layers 0..11, stage 1
layers 12..23 of the 24-layer fixture), the same blocks freed and requests
counted, every block back at the end. Thresholds sit inside the observed gamma
range, so the layers mix categories. FastV ranking on stage 0 is refused per
request; ranking on the last stage it equals PP=1."""

import os

import pytest
from vllm.exceptions import VLLMValidationError

from plphp_dev.fixtures.prompts import prompt_inputs
from tests.conftest import greedy, make_inprocess_llm, scheduler_of, token_ids

CASES = [(1, 0), (2, 3), (0, 0)]
FASTV_LAST_STAGE = {"policy": "fastv", "k": 14}
VTW = {"policy": "vtw", "k": 8}


def _engine(path, pp):
    old = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1" if pp == 2 else "0-1"
    try:
        return make_inprocess_llm(path, "plphp", pipeline_parallel_size=pp)
    finally:
        if old is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND")
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = old


def _records(llm, outs):
    """Per request, {layer: (rate, kept)} merged over the ranks, and each rank's layers."""
    per_rank = llm.collective_rpc("plphp_records", args=([o.request_id for o in outs],))
    merged, layers = [], [set() for _ in per_rank]
    for o in outs:
        rec = {}
        for rank, recs in enumerate(per_rank):
            for layer, x in (recs.get(o.request_id) or {}).items():
                rec[int(layer)] = (x["rate"], x["kept"])
                layers[rank].add(int(layer))
        merged.append(rec)
    return merged, layers


def _run(path, pp, override):
    llm = _engine(path, pp)
    try:
        scheduler = scheduler_of(llm)
        pool = scheduler.kv_cache_manager.block_pool
        free_at_start = pool.get_num_free_blocks()
        prompts = [prompt_inputs("llava", n, s) for n, s in CASES]
        if override is None:  # thresholds inside this model's gamma range
            first = llm.generate(prompts[:1], greedy())
            rec = llm.collective_rpc("plphp_records", args=([first[0].request_id],))[0]
            gammas = sorted(r["gamma"] for r in rec[first[0].request_id].values())
            i, j = len(gammas) // 3, 2 * len(gammas) // 3
            override = {"beta": (gammas[i - 1] + gammas[i]) / 2,
                        "alpha": (gammas[j - 1] + gammas[j]) / 2}
        totals_before = dict(scheduler.plphp_stats.totals) if hasattr(scheduler, "plphp_stats") else None
        outs = llm.generate(prompts, greedy(plphp=override))
        baselines = llm.generate(prompts[:2], greedy(plphp=FASTV_LAST_STAGE)) + \
            llm.generate(prompts[:2], greedy(plphp=VTW))
        records, layers = _records(llm, outs)
        totals = dict(scheduler.plphp_stats.totals)
        if totals_before is not None:
            totals = {k: v - totals_before[k] for k, v in totals.items()}
        refused = None
        if pp == 2:
            try:
                llm.generate(prompts[:1], greedy(plphp={"policy": "fastv"}))
            except VLLMValidationError as e:  # a 400 from the server
                refused = str(e)
        result = dict(override=override, tokens=token_ids(outs), baselines=token_ids(baselines),
                      records=records, layers=layers, totals=totals, refused=refused,
                      leaked=free_at_start - pool.get_num_free_blocks())
    finally:
        llm.llm_engine.engine_core.shutdown()
    return result


@pytest.fixture(scope="module")
def pp1(eager_engines, llava_path):
    return _run(llava_path, 1, None)


@pytest.fixture(scope="module")
def pp2(pp1, llava_path):
    return _run(llava_path, 2, pp1["override"])


def test_each_stage_prunes_its_own_layers(pp2):
    stage0, stage1 = pp2["layers"]
    assert stage0 and stage1
    assert max(stage0) < 12 <= min(stage1)


def test_pp2_equals_pp1(pp1, pp2):
    assert len({r for r, _ in pp1["records"][0].values()}) == 3  # a real mix of categories
    assert pp2["records"] == pp1["records"]  # every layer's rate and kept length
    assert pp2["tokens"] == pp1["tokens"]
    assert pp2["baselines"] == pp1["baselines"]  # FastV ranking on stage 1, VTW


def test_pp2_frees_the_same_blocks_and_counts_once(pp1, pp2):
    """Stage 0's events reach the scheduler: blocks freed (both stages'
    layers) and the per-layer counts equal PP=1; requests are counted once."""
    assert pp1["totals"]["kv_blocks_freed"] > 0
    # under pipeline parallelism a request's image is not kept in the prefix
    # cache (no region copies: a KV cache group spans a layer of each stage)
    cache = ("prompt_cache_copies", "prompt_cache_fallbacks")
    assert pp2["totals"]["prompt_cache_copies"] == 0 < pp1["totals"]["prompt_cache_copies"]
    assert {k: v for k, v in pp2["totals"].items() if k not in cache} == \
        {k: v for k, v in pp1["totals"].items() if k not in cache}
    # two image prompts under the mixed setting, FastV and VTW; not once per stage
    assert pp2["totals"]["requests_pruned"] == 6
    assert pp1["leaked"] == pp2["leaked"] == 0


def test_fastv_ranking_on_an_earlier_stage_is_refused(pp2):
    assert pp2["refused"] is not None
    assert "ranking layer 1 is not on the last stage (layers 12..23)" in pp2["refused"]

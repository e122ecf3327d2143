"""PLPHP under vLLM's Ray executor (`distributed_executor_backend="ray"`,
RayExecutorV2) with tensor parallel 2 on a local Ray cluster of two simulated
nodes, one worker per node (tests/support/ray_cpu.py: the cluster and the
test-only overrides that let vLLM's CPU platform use Ray).

Held to the same oracles as one process: the TP=1 engine's tokens, per-layer
kept lengths and block accounting, and the HF reference, for PLPHP (with
thresholds inside the observed gamma range, so a rank scoring only its own
heads would pick other rates), FastV and VTW. Both engines run their engine
core in this process, so the block pool is readable. (That pipeline
parallelism is refused under Ray is checked in test_ray_serve.py, in CI.)"""

import os

import pytest

from tests.conftest import MAX_TOKENS, greedy, make_inprocess_llm, run_steps, scheduler_of, \
    token_ids
from tests.support import ray_cpu
from vllm_plphp.config import PlphpConfig
from plphp_dev.fixtures.prompts import get_prompt, prompt_inputs

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.skipif(
    os.environ.get("PLPHP_RAY_TESTS") != "1",
    reason="9-15 min on 2 shared cores, over CI's budget: run with PLPHP_RAY_TESTS=1 (docs/distributed.md, Ray executor)")]
BLOCK = 32
CASES = [(1, 0), (2, 3), (0, 0)]  # (num_images, seed); the last is text-only
IMAGE_CASES = [0, 1]
POLICIES = {
    "plphp": None,  # mixed-category thresholds, set from the TP=1 gammas below
    "fastv": {"policy": "fastv", "k": 2, "fastv_r": 0.75},
    "vtw": {"policy": "vtw", "k": 6},
}
ABORT_MIX = [(1, 0), (2, 3), (0, 0), (1, 5)]


def kept(records):
    return [None if r is None else {l: (x["rate"], x["kept"]) for l, x in r.items()} for r in records]


def run(llm, prompts, plphp):
    outs = llm.generate(prompts, greedy(plphp=plphp))
    per_rank = llm.collective_rpc("plphp_records", args=([o.request_id for o in outs],))
    return token_ids(outs), [[r.get(o.request_id) for o in outs] for r in per_rank]


def held_trace(llm):
    """Blocks held after each engine step while one 1-image request runs."""
    pool = scheduler_of(llm).kv_cache_manager.block_pool
    start = pool.get_num_free_blocks()
    _, free = run_steps(llm, {0: [("trace", prompt_inputs("llava", 1, 0))]}, greedy(6))
    return [start - f for f in free]


def abort_run(llm, abort: bool):
    reqs = [(f"a{i}", prompt_inputs("llava", n, s)) for i, (n, s) in enumerate(ABORT_MIX)]
    pool = scheduler_of(llm).kv_cache_manager.block_pool
    start = pool.get_num_free_blocks()
    outputs, free = run_steps(llm, {0: reqs[:2], 2: reqs[2:]}, greedy(16),
                              abort_at={5: ["a1", "a3"]} if abort else None)
    return start, outputs, free


@pytest.fixture(scope="module")
def tp1(llava_path):
    """TP=1 (engine core here, one worker process): the results Ray must match."""
    llm = make_inprocess_llm(llava_path, "plphp", block_size=BLOCK)
    try:
        prompts = [prompt_inputs("llava", n, s) for n, s in CASES]
        first = llm.generate(prompts[:1], greedy())
        rec = llm.collective_rpc("plphp_records", args=([first[0].request_id],))[0]
        gammas = sorted(r["gamma"] for r in rec[first[0].request_id].values())
        i, j = len(gammas) // 3, 2 * len(gammas) // 3  # midpoints: float noise cannot flip one
        policies = {**POLICIES, "plphp": {"beta": (gammas[i - 1] + gammas[i]) / 2,
                                          "alpha": (gammas[j - 1] + gammas[j]) / 2}}
        results = {name: run(llm, prompts, p) for name, p in policies.items()}
        _, alone, _ = abort_run(llm, abort=False)
        return dict(prompts=prompts, policies=policies, results=results,
                    held=held_trace(llm), alone=alone)
    finally:
        llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def reference(llava_path):
    from plphp_dev.reference import ReferenceModel

    ref, cache = ReferenceModel(llava_path), {}

    def generate(case, config):
        if (case, config) not in cache:
            cache[case, config] = ref.generate(*get_prompt("llava", *CASES[case]), MAX_TOKENS, config)
        return cache[case, config]

    return generate


@pytest.fixture(scope="module")
def ray_llm(llava_path, tp1):
    with ray_cpu.cluster():
        llm = make_inprocess_llm(llava_path, "plphp", block_size=BLOCK, tensor_parallel_size=2,
                                 distributed_executor_backend="ray")
        try:
            yield llm
        finally:
            llm.llm_engine.engine_core.shutdown()


def test_workers_are_ray_actors_on_two_nodes(ray_llm):
    from vllm.v1.executor.ray_executor_v2 import RayExecutorV2

    def where(worker):
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid(), worker.rank

    executor = ray_llm.llm_engine.engine_core.engine_core.model_executor
    assert isinstance(executor, RayExecutorV2)
    workers = ray_llm.collective_rpc(where)
    assert [w[2] for w in workers] == [0, 1]
    assert len({w[0] for w in workers}) == 2  # one worker per simulated node
    assert os.getpid() not in {w[1] for w in workers}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_tp2_under_ray_equals_tp1_and_reference(ray_llm, tp1, reference, policy):
    override = tp1["policies"][policy]
    tokens, (rank0, rank1) = run(ray_llm, tp1["prompts"], override)
    tp1_tokens, (tp1_records,) = tp1["results"][policy]
    assert kept(rank0) == kept(rank1)  # both nodes kept the same lengths
    assert kept(rank0) == kept(tp1_records)
    assert tokens == tp1_tokens
    config = PlphpConfig().replace(**override)
    changed = 0
    for case in IMAGE_CASES:
        ref_tokens, ref_records = reference(case, config)
        assert tokens[case] == ref_tokens, f"case {CASES[case]}"
        assert {l: r["kept"] for l, r in rank0[case].items()} == {
            l: r["kept"] for l, r in ref_records.items()}
        assert all(r["kept"] < r["total"] for r in rank0[case].values())
        changed += tokens[case] != reference(case, None)[0]
    assert changed, "pruning changed no output"
    assert rank0[2] is None  # text-only: untouched
    if policy == "plphp":  # a real mix of layer categories
        assert len({x["rate"] for x in rank0[0].values()}) == 3


def test_same_blocks_freed_as_tp1(ray_llm, tp1):
    held = held_trace(ray_llm)
    layers = ray_llm.collective_rpc("plphp_records", args=(["trace"],))[0]["trace"]
    total = next(iter(layers.values()))["total"]
    unpruned = 24 - len(layers)  # the fixture has 24 decoder layers
    cdiv = lambda a: -(-a // BLOCK)
    # each pruned layer keeps its compacted entries plus room for the next token
    expected = unpruned * cdiv(total) + sum(cdiv(r["kept"] + 1) for r in layers.values())
    assert expected < 24 * cdiv(total) and expected in held[:2]
    assert held == tp1["held"]
    assert held[-1] == 0


def test_abort_mid_decode_frees_everything(ray_llm, tp1):
    start, outputs, free = abort_run(ray_llm, abort=True)
    assert min(free) < start
    assert free[-1] == start  # every block back, aborted and finished alike
    assert set(outputs) == {"a0", "a2"}
    assert outputs == {r: tp1["alone"][r] for r in outputs}

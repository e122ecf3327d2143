"""Block accounting under real scheduling: freed blocks reach the pool, and
abort, preemption, chunked prefill, mixed and joining requests all keep both
the outputs and the pool right. Engine cores run in-process (block pool
readable); one roomy and one memory-starved PLPHP engine for the module."""

import contextlib

import pytest

from tests.conftest import greedy, make_inprocess_llm, run_steps, scheduler_of
from plphp_dev.fixtures.prompts import prompt_inputs

BLOCK = 32
MIX = [(1, 0), (2, 3), (0, 0), (1, 5), (2, 7), (0, 1), (1, 9), (1, 11)]


def requests(cases=MIX):
    return [(f"r{i}-{n}img", prompt_inputs("llava", n, seed)) for i, (n, seed) in enumerate(cases)]


@pytest.fixture(scope="module")
def roomy(llava_path):
    llm = make_inprocess_llm(llava_path, "plphp", block_size=BLOCK)
    yield llm
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def alone(roomy):
    """Each request run by itself: the outputs every other schedule must match."""
    out = {}
    for req_id, prompt in requests():
        got, _ = run_steps(roomy, {0: [(req_id, prompt)]}, greedy(24))
        out.update(got)
    return out


def pool_free(llm):
    return scheduler_of(llm).kv_cache_manager.block_pool.get_num_free_blocks()


def test_pruned_blocks_return_to_pool_during_decode(roomy, llava_path):
    start = pool_free(roomy)
    prompt = prompt_inputs("llava", 1, 0)
    (_, free) = run_steps(roomy, {0: [("one", prompt)]}, greedy(4))
    held = [start - f for f in free]  # blocks held after each engine step
    num_layers, tokens = 24, 589
    full = num_layers * -(-tokens // BLOCK)
    # stock: every layer holds all 589 entries; PLPHP: 21 pruned layers hold fewer
    records = roomy.collective_rpc("plphp_records")[0]
    rec = next(v for k, v in records.items() if k.startswith("one"))
    # each pruned layer keeps its compacted entries plus room for the next token
    expected = 3 * -(-tokens // BLOCK) + sum(-(-(r["kept"] + 1) // BLOCK) for r in rec.values())
    # synchronous scheduling commits the prune right after the prefill step
    # (held[0]); async scheduling one step later, once the step in flight is done.
    # Until then the request also holds the private copies of its blocks from
    # the image on (prefix caching keeps the unpruned prompt; at most every
    # prompt block of the 21 pruned layers), never after.
    assert expected < full and max(held) <= full + 21 * -(-tokens // BLOCK)
    assert expected in held[:2] and max(held[2:]) <= expected + 24  # + a block per layer
    assert held[-1] == 0  # all back once finished (the cached prompt counts as free)


def test_abort_mid_decode_returns_every_block(roomy, alone):
    start = pool_free(roomy)
    reqs = requests()
    schedule = {0: reqs[:4], 3: reqs[4:]}
    aborted = [reqs[1][0], reqs[3][0], reqs[6][0]]
    outputs, free = run_steps(roomy, schedule, greedy(24), abort_at={6: aborted})
    assert free[-1] == start
    assert min(free) < start
    for req_id, _ in reqs:
        if req_id not in aborted:
            assert outputs[req_id] == alone[req_id], req_id


def test_requests_joining_while_others_decode(roomy, alone):
    start = pool_free(roomy)
    reqs = requests()
    schedule = {0: reqs[:2], 2: reqs[2:4], 5: reqs[4:6], 9: reqs[6:]}
    outputs, free = run_steps(roomy, schedule, greedy(24))
    assert outputs == {r: alone[r] for r, _ in reqs}
    assert free[-1] == start


def test_chunked_prefill_longer_than_chunk(llava_path, alone):
    llm = make_inprocess_llm(llava_path, "plphp", block_size=BLOCK, max_num_batched_tokens=256)
    try:
        start = pool_free(llm)
        reqs = requests()[:4]
        outputs, free = run_steps(llm, {0: reqs}, greedy(24))
        assert outputs == {r: alone[r] for r, _ in reqs}
        assert free[-1] == start
    finally:
        llm.llm_engine.engine_core.shutdown()


@contextlib.contextmanager
def count_preemptions(llm):
    """Yields the list of request ids vLLM's scheduler preempts on this engine
    inside the block."""
    scheduler = scheduler_of(llm)
    preemptions = []
    original = scheduler._preempt_request

    def counting(request, *args, **kwargs):
        preemptions.append(request.request_id)
        return original(request, *args, **kwargs)

    scheduler._preempt_request = counting
    try:
        yield preemptions
    finally:
        del scheduler._preempt_request  # the class's method again


def test_preemption_under_memory_pressure_repeats_pruning(llava_path, roomy):
    # 22 MiB = 1408 blocks of 32 tokens x 1 layer; a 1-image request takes 456
    # at admission, so 3 run at once; at r=0.9 pruning frees about 38 of them
    # each (at the default r, 126: ~170 more decode tokens before the pool
    # runs dry, minutes of interpreted V2 steps in the second pass), and their
    # decodes (24 blocks per 32 tokens each) run out of blocks after about 70
    # tokens: preemption. (Smaller pools admit fewer requests at once.)
    reqs = [(f"p{seed}", prompt_inputs("llava", 1, seed)) for seed in (0, 5, 9, 11, 13)]
    params = greedy(96, plphp={"r": 0.9, "delta_r": 0.0})
    # the reference: the same batch on the roomy engine, where it never
    # preempts (one batch, not five runs alone: this test is 5x the decode
    # steps of the others, and the rest of the module shows batching does not
    # change answers)
    with count_preemptions(roomy) as preempted:
        unpressed, _ = run_steps(roomy, {0: reqs}, params)
    assert not preempted
    llm = make_inprocess_llm(
        llava_path, "plphp", block_size=BLOCK, kv_cache_memory_bytes=22 << 20,
        max_model_len=1400, max_num_seqs=8, max_num_batched_tokens=4096,  # encoder cache: 7 images
    )
    try:
        start = pool_free(llm)
        with count_preemptions(llm) as preemptions:
            outputs, free = run_steps(llm, {0: reqs}, params)
        assert preemptions, "the workload did not preempt; shrink the KV budget"
        assert outputs == unpressed
        assert free[-1] == start
    finally:
        llm.llm_engine.engine_core.shutdown()


def test_request_preempted_mid_decode_continues_as_alone(roomy):
    """vLLM recomputes a preempted request from scratch, prompt and generated
    tokens together. The generated tokens were decoded over the pruned layers,
    so the recompute stops its chunk at the prompt's end (pruning runs there)
    and recomputes them over the pruned layers in the next step: the answer
    goes on as if never preempted. The preemption is vLLM's own
    (`Scheduler._preempt_request`, as under memory pressure), at a fixed step."""
    import time

    cases = [("mid0", prompt_inputs("llava", 1, 0)), ("mid1", prompt_inputs("llava", 2, 3))]
    params = greedy(48, plphp={"r": 0.1, "delta_r": 0.0})  # far from the full cache
    alone = {}
    for req_id, prompt in cases:
        alone.update(run_steps(roomy, {0: [(f"{req_id}-alone", prompt)]}, params)[0])
    engine, scheduler = roomy.llm_engine, scheduler_of(roomy)
    start = pool_free(roomy)
    ends, prompt_len = {}, {}  # req_id -> where each scheduled chunk ends
    original = scheduler.schedule

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        for internal_id in out.num_scheduled_tokens:
            request = scheduler.requests[internal_id]
            req_id = internal_id.rsplit("-", 1)[0]  # vLLM appends a suffix to ids
            prompt_len[req_id] = request.num_prompt_tokens
            ends.setdefault(req_id, []).append(request.num_computed_tokens)
        return out

    scheduler.schedule = recording
    try:
        for req_id, prompt in cases:
            engine.add_request(req_id, prompt, params)
        outputs, step, preempted_at = {}, 0, {}
        while engine.has_unfinished_requests():
            if step == 20:  # both requests are decoding
                for request in list(scheduler.running):
                    preempted_at[request.request_id.rsplit("-", 1)[0]] = \
                        len(ends[request.request_id.rsplit("-", 1)[0]])
                    scheduler.running.remove(request)
                    scheduler._preempt_request(request, time.monotonic())
            for out in engine.step():
                if out.finished:
                    outputs[out.request_id] = list(out.outputs[0].token_ids)
            step += 1
    finally:
        scheduler.schedule = original
    assert set(preempted_at) == {r for r, _ in cases}
    for req_id, _ in cases:
        p, after = prompt_len[req_id], ends[req_id][preempted_at[req_id]:]
        # the recompute: a chunk ending at the prompt's end, then one with the
        # tokens generated before the preemption
        assert after[0] == p and after[1] > p + 1, after[:3]
        assert outputs[req_id] == alone[f"{req_id}-alone"], req_id
    assert pool_free(roomy) == start

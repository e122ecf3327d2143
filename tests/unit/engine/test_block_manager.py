"""The scheduler's per-layer manager (real vLLM BlockPool) against the
worker's block table, under synchronous and async scheduling.

With async scheduling the scheduler allocates the next step at full length
before the prune event of the previous step arrives. Both sides apply
`vllm_plphp.core.blocks.kept_blocks`; these tests check that their block lists
stay equal, the worker always has a block for every token it writes, and every
block goes back to the pool exactly once.
"""

import pytest
import torch
from vllm.v1.core.block_pool import BlockPool

from vllm_plphp.core.blocks import cdiv, kept_blocks
from vllm_plphp.engine.block_manager import PlphpAttentionSpec, PlphpLayerManager

POOL = 64


def manager(block_size):
    spec = PlphpAttentionSpec(block_size=block_size, num_kv_heads=1, head_size=64,
                              dtype=torch.float32)
    pool = BlockPool(POOL, enable_caching=False, hash_block_size=block_size)
    return PlphpLayerManager(spec, pool, enable_caching=False, kv_cache_group_id=0,
                             scheduler_block_size=block_size), pool


def ids(blocks):
    return [b.block_id for b in blocks]


def simulate(prompt, pruned, block_size, lag, decode_steps=12):
    """Prefill `prompt` tokens, prune `pruned` of them, decode. The scheduler
    learns of the prune `lag` steps after the pruning step (0: synchronous,
    1: async scheduling). Returns (scheduler blocks, worker blocks) per step."""
    mgr, pool = manager(block_size)
    worker = ids(mgr.allocate_new_blocks("r", prompt, prompt))  # prefill step 0
    keep, _ = kept_blocks(prompt, pruned, block_size)
    worker = worker[:keep]  # the worker prunes in step 0
    kept = prompt - pruned
    history = []
    for step in range(1, decode_steps + 1):
        if step == 1 + lag:  # the step-0 prune event reaches the scheduler
            mgr.prune("r", pruned, prompt)
        # schedule step `step`: one more token (the scheduler's view of its length)
        total = prompt + step
        new = ids(mgr.allocate_new_blocks("r", total, total))  # the manager subtracts pruned
        worker += new
        # the worker writes this step's token at compacted position kept+step-1
        assert (kept + step - 1) // block_size < len(worker), (step, worker)
        history.append((ids(mgr.req_to_blocks["r"]), list(worker)))
    if lag > decode_steps:
        mgr.prune("r", pruned, prompt)
    mgr.free("r")
    assert pool.get_num_free_blocks() == POOL - 1  # every block back (block 0 is the null block)
    return history


@pytest.mark.parametrize("lag", [0, 1, 2], ids=["sync", "async", "late"])
@pytest.mark.parametrize("prompt,pruned,block_size", [
    (12, 7, 4),   # kept 5; the async step needs the block the prompt ended on
    (12, 4, 4),   # kept 8: on a block boundary
    (16, 8, 4),   # the prompt fills its last block, so step 1 allocates at full length
    (589, 350, 32), (589, 0, 32), (100, 99, 16), (128, 64, 128),
])
def test_scheduler_and_worker_lists_agree(prompt, pruned, block_size, lag):
    for step, (sched, work) in enumerate(simulate(prompt, pruned, block_size, lag), 1):
        if step > lag:  # once the scheduler has applied the event
            assert sched == work, step


@pytest.mark.parametrize("lag", [0, 1], ids=["sync", "async"])
def test_every_small_case(lag):
    """All prompt lengths 5..20 and pruned counts with 4-token blocks."""
    for prompt in range(5, 21):
        for pruned in range(prompt):
            history = simulate(prompt, pruned, 4, lag, decode_steps=6)
            assert all(s == w for s, w in history[lag:]), (prompt, pruned)


def test_prune_frees_the_tail_of_the_prompt_blocks_only():
    mgr, pool = manager(4)
    mgr.allocate_new_blocks("r", 12, 12)         # 3 blocks
    mgr.allocate_new_blocks("r", 13, 13)         # async: step 1 allocated at full length
    before = pool.get_num_free_blocks()
    assert mgr.prune("r", 7, 12) == 1            # kept 5 (+1) -> 2 of the first 3
    assert pool.get_num_free_blocks() == before + 1
    assert len(mgr.req_to_blocks["r"]) == 3      # 2 kept + the block allocated after
    assert mgr.prune("gone", 3, 12) == 0         # a request that already left


def test_allocation_counts_compacted_length():
    mgr, _ = manager(4)
    mgr.allocate_new_blocks("r", 40, 40)
    mgr.prune("r", 30, 40)                       # kept 10 -> 3 blocks
    assert len(mgr.req_to_blocks["r"]) == 3
    assert mgr.allocate_new_blocks("r", 41, 41) == []       # 11 entries fit in 3 blocks
    assert len(mgr.allocate_new_blocks("r", 53, 53)) == 3   # 23 entries -> 6 blocks
    assert cdiv(53 - 30, 4) == len(mgr.req_to_blocks["r"])

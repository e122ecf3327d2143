"""Multi-turn prefix caching, scheduler side (real vLLM BlockPool, no engine):
which requests get private copies of their region blocks, the fallbacks when
the pool has no room, and what the prune event does with copies and originals."""

from types import SimpleNamespace

import torch
from vllm.v1.core.block_pool import BlockPool

from vllm_plphp.engine.block_manager import PlphpAttentionSpec, PlphpLayerManager
from vllm_plphp.engine.cache_copies import RequestPlan, min_removed, plan_copies
from vllm_plphp.config import PlphpConfig

BS = 4


def setup(pool_size=64, layers=4):
    spec = PlphpAttentionSpec(block_size=BS, num_kv_heads=1, head_size=64, dtype=torch.float32)
    pool = BlockPool(pool_size, enable_caching=True, hash_block_size=BS)
    managers = []
    for gid in range(layers):
        m = PlphpLayerManager(spec, pool, enable_caching=True, kv_cache_group_id=gid,
                              scheduler_block_size=BS)
        m.layer_index = gid
        managers.append(m)
    stats = SimpleNamespace(added=[])
    scheduler = SimpleNamespace(
        kv_cache_manager=SimpleNamespace(enable_caching=True, block_pool=pool,
                                         coordinator=SimpleNamespace(single_type_managers=managers)),
        requests={}, running=[], plphp_stats=SimpleNamespace(add=lambda c, f: stats.added.append(c)))
    return scheduler, managers, pool, stats


def add(scheduler, managers, req_id, prompt, start, pruned=frozenset({1, 2}), removed_min=0):
    request = SimpleNamespace(request_id=req_id, num_prompt_tokens=prompt, num_computed_tokens=prompt,
                              plphp=RequestPlan(start, pruned, removed_min))
    scheduler.requests[req_id] = request
    for m in managers:
        m.allocate_new_blocks(req_id, prompt, prompt)
    return request


def test_copies_for_the_pruned_layers_only():
    scheduler, managers, pool, stats = setup()
    add(scheduler, managers, "r", prompt=22, start=2)  # 6 blocks, region from block 2
    output = SimpleNamespace(num_scheduled_tokens={"r": 22})
    free = pool.get_num_free_blocks()
    plan_copies(scheduler, output)
    start, groups = output.plphp_copies["r"]
    assert start == 2 and set(groups) == {1, 2}
    assert all(len(ids) == 4 for ids in groups.values())  # blocks 2..5
    assert pool.get_num_free_blocks() == free - 8
    assert stats.added == [{"prompt_cache_copies": 1}]


def test_no_copy_for_a_step_that_does_not_end_the_prompt():
    scheduler, managers, pool, _ = setup()
    request = add(scheduler, managers, "r", prompt=22, start=2)
    request.num_computed_tokens = 16  # a chunk of the prompt
    output = SimpleNamespace(num_scheduled_tokens={"r": 16})
    plan_copies(scheduler, output)
    assert not hasattr(output, "plphp_copies")


def test_bound_on_kept_entries_limits_the_copies():
    scheduler, managers, _, _ = setup()
    add(scheduler, managers, "r", prompt=22, start=2, removed_min=12)  # keeps <= 10 (+1)
    output = SimpleNamespace(num_scheduled_tokens={"r": 22})
    plan_copies(scheduler, output)
    assert {len(ids) for ids in output.plphp_copies["r"][1].values()} == {1}  # blocks 2..2


def test_min_removed_is_a_lower_bound():
    from vllm_plphp.core.scoring import num_kept

    config = PlphpConfig(r=0.4, delta_r=0.3)
    assert min_removed(config, [576]) <= 576 - num_kept(0.7, 576)
    assert min_removed(PlphpConfig(policy="vtw", k=2), [10, 20]) == 30
    assert min_removed(PlphpConfig(policy="fastv"), [10]) == 0


def test_no_room_private_region_compacts_in_place():
    scheduler, managers, pool, stats = setup(pool_size=28)  # 4 layers x 6 blocks + 3 free
    add(scheduler, managers, "r", prompt=22, start=2)
    scheduler.running = ["r"]
    output = SimpleNamespace(num_scheduled_tokens={"r": 22})
    plan_copies(scheduler, output)
    assert not hasattr(output, "plphp_copies")  # no entry: in place, as without caching
    assert stats.added == [{"prompt_cache_fallbacks": 1}]
    assert not any(m.copies for m in managers)


def test_no_room_shared_region_is_not_pruned():
    scheduler, managers, pool, stats = setup(pool_size=28)
    add(scheduler, managers, "r", prompt=22, start=2)
    managers[1].req_to_blocks["r"][3].ref_cnt += 1  # another request holds it (a cache hit)
    output = SimpleNamespace(num_scheduled_tokens={"r": 22})
    plan_copies(scheduler, output)
    assert output.plphp_copies == {"r": None}
    managers[1].req_to_blocks["r"][3].ref_cnt -= 1


def test_prune_swaps_in_the_copies_and_frees_originals_and_tail():
    scheduler, managers, pool, _ = setup()
    add(scheduler, managers, "r", prompt=22, start=2)
    output = SimpleNamespace(num_scheduled_tokens={"r": 22})
    plan_copies(scheduler, output)
    m = managers[1]
    originals = [b.block_id for b in m.req_to_blocks["r"]]
    copies = output.plphp_copies["r"][1][1]
    m.allocate_new_blocks("r", 25, 25)  # async: a later step allocated at full length
    freed = m.prune("r", num_pruned=12, num_tokens=22)  # kept 10 (+1) -> 3 blocks
    ids = [b.block_id for b in m.req_to_blocks["r"]]
    assert ids[:3] == originals[:2] + copies[:1]  # before the region, then the copy
    assert len(ids) == 4  # + the block allocated after
    assert freed == 3  # the surplus copies
    assert not m.copies
    for block_id in originals[2:]:
        assert pool.blocks[block_id].ref_cnt == 0  # the originals: back in the pool
    for m2 in managers:
        m2.free("r")
    assert pool.get_num_free_blocks() == pool.num_gpu_blocks - 1
    assert all(b.ref_cnt == 0 for b in pool.blocks[1:])


def test_request_leaving_before_the_prune_event_frees_its_copies():
    scheduler, managers, pool, _ = setup()
    add(scheduler, managers, "r", prompt=22, start=2)
    plan_copies(scheduler, SimpleNamespace(num_scheduled_tokens={"r": 22}))
    for m in managers:
        m.free("r")  # aborted or preempted
    assert managers[1].prune("r", 12, 22) == 0  # the late event finds nothing
    assert pool.get_num_free_blocks() == pool.num_gpu_blocks - 1
    assert all(b.ref_cnt == 0 for b in pool.blocks[1:])


def test_shared_region_takes_its_copies_past_the_reserve():
    """A region the cache shares must be copied: the reserve kept for running
    requests does not apply, only whether the pool has the blocks."""
    scheduler, managers, pool, stats = setup(pool_size=36)  # 24 held, 11 free
    add(scheduler, managers, "r", prompt=22, start=2)
    scheduler.running = ["r", "x", "y"]  # reserve 12 > 11 - 8
    managers[1].req_to_blocks["r"][3].ref_cnt += 1
    output = SimpleNamespace(num_scheduled_tokens={"r": 22})
    plan_copies(scheduler, output)
    assert set(output.plphp_copies["r"][1]) == {1, 2}
    assert stats.added == [{"prompt_cache_copies": 1}]
    managers[1].req_to_blocks["r"][3].ref_cnt -= 1


def test_hit_through_the_image_only_with_room_for_the_copies():
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks

    from vllm_plphp.engine.cache_copies import limit_hit

    scheduler, managers, pool, _ = setup(pool_size=64)
    request = SimpleNamespace(request_id="n", num_prompt_tokens=22, num_computed_tokens=0,
                              plphp=RequestPlan(2, frozenset({1, 2}), 0))
    hit = KVCacheBlocks(tuple(pool.get_new_blocks(5) for _ in managers))  # 20 tokens, all layers
    blocks, n = limit_hit(scheduler, request, hit, 20)
    assert n == 20 and blocks is hit  # room: 43 free for 4 x 1 rest + 8 copies
    scheduler.running = list(range(9))  # reserve 36
    blocks, n = limit_hit(scheduler, request, hit, 20)
    assert n == 8 and [len(g) for g in blocks.blocks] == [2] * 4  # stops at the image's block
    blocks, n = limit_hit(scheduler, request, KVCacheBlocks(tuple(g[:2] for g in hit.blocks)), 8)
    assert n == 8  # a hit before the image is never cut

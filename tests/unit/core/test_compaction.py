"""Paged in-place compaction against a dense reference (no engine)."""

import torch

from vllm_plphp.core import compaction, scoring


def paged_cache(num_blocks=12, heads=3, block=4, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_blocks, heads, block, dim, generator=g)


def dense_of(cache, block_ids, length):
    bs = cache.shape[2]
    return torch.stack(
        [cache[block_ids[p // bs], :, p % bs] for p in range(length)], dim=1
    )  # (H, length, D)


def test_gather_reads_positions_through_block_table():
    cache = paged_cache()
    block_ids = torch.tensor([7, 2, 9, 0])
    torch.testing.assert_close(
        compaction.gather(cache, block_ids, 14), dense_of(cache, block_ids, 14)
    )


def test_compact_moves_each_heads_kept_entries_to_front_in_place():
    k, v = paged_cache(seed=1), paged_cache(seed=2)
    block_ids = torch.tensor([5, 1, 8, 3, 10])  # scattered, 20 slots
    total = 19
    before_k = dense_of(k, block_ids, total).clone()
    before_v = dense_of(v, block_ids, total).clone()
    untouched = k[[0, 2, 4]].clone()  # blocks of other requests
    # overlapping moves: head 0 keeps a prefix-ish set, head 2 only late tokens
    scores = torch.stack([torch.linspace(1, 0, 16), torch.rand(16), torch.linspace(0, 1, 16)])
    images = [torch.arange(2, 9), torch.arange(9, 16)]  # two images, sizes 7 and 7
    keep = scoring.select_kept(scores, images, 0.3, total)
    compaction.compact_(k, v, block_ids, keep)
    length = keep.shape[1]
    after_k = dense_of(k, block_ids, length)
    after_v = dense_of(v, block_ids, length)
    for h in range(3):
        torch.testing.assert_close(after_k[h], before_k[h, keep[h]])
        torch.testing.assert_close(after_v[h], before_v[h, keep[h]])
    assert torch.equal(k[[0, 2, 4]], untouched)
    # positions after the prompt (>= 16) are kept and land right after the prompt's kept set
    assert keep[:, -3:].tolist() == [[16, 17, 18]] * 3


def test_compact_identity_when_everything_kept():
    k, v = paged_cache(seed=3), paged_cache(seed=4)
    k0, v0 = k.clone(), v.clone()
    block_ids = torch.tensor([4, 6])
    keep = torch.arange(8).repeat(3, 1)
    compaction.compact_(k, v, block_ids, keep)
    assert torch.equal(k, k0) and torch.equal(v, v0)

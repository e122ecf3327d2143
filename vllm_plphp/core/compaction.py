"""In-place per-head compaction of one layer's paged KV cache (pure torch).

All functions take head-major views of a layer's cache, as made by
`vllm_plphp.core.kv_layout`:
  k_cache, v_cache: (num_blocks, Hkv, block_size, D)
and one request's block table row `block_ids`: (n,) long. Logical position p
of the request lives at (block_ids[p // block_size], p % block_size).
"""

from __future__ import annotations

import torch


def _locate(block_ids: torch.Tensor, positions: torch.Tensor, block_size: int):
    return block_ids[positions // block_size], positions % block_size


def gather(cache: torch.Tensor, block_ids: torch.Tensor, length: int) -> torch.Tensor:
    """Positions 0..length-1 of every head: returns (Hkv, length, D)."""
    blocks, offsets = _locate(
        block_ids, torch.arange(length, device=cache.device), cache.shape[2]
    )
    return cache[blocks, :, offsets].transpose(0, 1)


def compact_(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_ids: torch.Tensor,
    keep: torch.Tensor,
) -> None:
    """Move each head's kept entries to slots 0..L-1, in place.

    keep: (Hkv, L) ascending positions per head (`scoring.select_kept`).
    Slot i of head h receives the entry at position keep[h, i]. Safe against
    overlap: the kept entries are gathered into a copy before any write.
    """
    num_kv_heads, length = keep.shape
    block_size = k_cache.shape[2]
    heads = torch.arange(num_kv_heads, device=keep.device)[:, None]
    src_blocks, src_offsets = _locate(block_ids, keep, block_size)
    dst_blocks, dst_offsets = _locate(
        block_ids, torch.arange(length, device=keep.device), block_size
    )
    for cache in (k_cache, v_cache):
        kept = cache[src_blocks, heads, src_offsets]  # (Hkv, L, D), a copy
        cache[dst_blocks[None, :], heads, dst_offsets[None, :]] = kept

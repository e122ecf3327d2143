"""Head-major views (num_blocks, Hkv, block_size, D) of a stock backend's cache.

The views alias the cache memory, so writes through them are writes to the
cache. Checked against the kernels that write the cache:
  CPU_ATTN (vLLM 0.32, ISA "vec"/"vec16"): kv_cache (nb, Hkv, bs, 2D) holds per
    (block, head) a key tile stored transposed as (D, bs), then a value tile
    (bs, D) (checked with `cpu_attn_reshape_and_cache`, tests/unit/test_kv_layout.py).
  FLASH_ATTN / TRITON_ATTN (vLLM 0.32): kv_cache (nb, Hkv, bs, 2D), K = [..., :D].
Other CPU ISAs (AMX, NEON, ...) pack the key tiles differently: refused.

fp8 KV caches (`--kv-cache-dtype fp8 | fp8_e4m3 | fp8_e5m2`) have the same
layout with one byte per entry (uint8 storage of x / scale): compaction moves
the bytes as they are; scoring reads them through `dequantize`.
"""

from __future__ import annotations

import torch

CPU_ISAS = ("vec", "vec16")
FP8_DTYPES = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
              "fp8_e5m2": torch.float8_e5m2}


def dequantize(entries: torch.Tensor, kv_cache_dtype: str, scale: float,
               dtype: torch.dtype) -> torch.Tensor:
    """Cache entries as `dtype` values (fp8: stored bytes * scale)."""
    fp8 = FP8_DTYPES.get(kv_cache_dtype)
    if fp8 is None:
        return entries
    return entries.view(fp8).to(dtype) * scale


def cpu_views(kv_cache: torch.Tensor, isa: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isa not in CPU_ISAS:
        raise NotImplementedError(
            f"PLPHP on CPU supports the attention ISAs {CPU_ISAS}; this machine "
            f"selected {isa!r} (e.g. AMX with bfloat16). Use dtype float32/float16."
        )
    num_blocks, num_kv_heads, block_size, two_d = kv_cache.shape
    head_size = two_d // 2
    tiles = kv_cache.view(num_blocks, num_kv_heads, 2 * block_size * head_size)
    k = tiles[..., : block_size * head_size]
    v = tiles[..., block_size * head_size :]
    k = k.view(num_blocks, num_kv_heads, head_size, block_size).transpose(2, 3)
    v = v.view(num_blocks, num_kv_heads, block_size, head_size)
    return k, v


def split_views(kv_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return kv_cache[..., :head_size], kv_cache[..., head_size:]

"""Paged split-K decode attention (flash-decoding) over a compacted or full
paged cache, for the GPU benchmarks (benchmarks/gpu/): Triton on CUDA (or in
Triton's interpreter), a gather + softmax torch path otherwise. Not part of the
plugin: inside vLLM, decode runs the wrapped stock kernel.

Cache views as in `vllm_plphp.gpu.triton_ops`: (num_blocks, Hkv, block_size, D).
"""

from __future__ import annotations

import torch

from vllm_plphp.core import compaction
from vllm_plphp.gpu.ops import use_triton

try:
    import triton
    import triton.language as tl

    from vllm_plphp.gpu.triton_ops import _pow2
except ImportError:  # no Triton: the torch path only
    triton = None

if triton is not None:
    @triton.jit
    def _decode_kernel(
        q_ptr, sq_b, sq_h,
        k_ptr, sk_n, sk_h, sk_s,
        v_ptr, sv_n, sv_h, sv_s,
        bt_ptr, sbt_b,
        len_ptr,
        po_ptr, spo_b, spo_h, spo_s,
        pl_ptr, spl_b, spl_h,
        scale,
        G: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
        BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr,
        USE_IEEE: tl.constexpr,
    ):
        """Split-K decode attention over a paged cache (last dim contiguous).
        One program per (request, KV head, split): its query group against the
        split's keys; partial outputs and log-sum-exp reduced by _decode_reduce."""
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        sp = tl.program_id(2)
        seqlen = tl.load(len_ptr + b)
        per = tl.cdiv(tl.cdiv(seqlen, NUM_SPLITS), BLOCK_N) * BLOCK_N
        lo = sp * per
        hi = tl.minimum(lo + per, seqlen)
        offs_g = tl.arange(0, BLOCK_G)
        gmask = offs_g < G
        heads = h * G + offs_g
        offs_d = tl.arange(0, D)
        q = tl.load(q_ptr + b * sq_b + heads[:, None] * sq_h + offs_d[None, :], mask=gmask[:, None], other=0.0)
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, D], tl.float32)
        for start in range(lo, hi, BLOCK_N):
            offs = start + tl.arange(0, BLOCK_N)
            nmask = offs < hi
            blk = tl.load(bt_ptr + b * sbt_b + offs // BS, mask=nmask, other=0).to(tl.int64)
            slot = offs % BS
            k = tl.load(k_ptr + blk[:, None] * sk_n + h * sk_h + slot[:, None] * sk_s + offs_d[None, :], mask=nmask[:, None], other=0.0)
            v = tl.load(v_ptr + blk[:, None] * sv_n + h * sv_h + slot[:, None] * sv_s + offs_d[None, :], mask=nmask[:, None], other=0.0)
            if USE_IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            else:
                s = tl.dot(q, tl.trans(k)) * scale
            s = tl.where(nmask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if USE_IEEE:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        lse = m_i + tl.log(l_i)  # -inf for an empty split
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(po_ptr + b * spo_b + heads[:, None] * spo_h + sp * spo_s + offs_d[None, :], out, mask=gmask[:, None])
        tl.store(pl_ptr + b * spl_b + heads * spl_h + sp, lse, mask=gmask)


    @triton.jit
    def _decode_reduce_kernel(
        po_ptr, spo_b, spo_h, spo_s,
        pl_ptr, spl_b, spl_h,
        o_ptr, so_b, so_h,
        D: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        offs_s = tl.arange(0, BLOCK_S)
        smask = offs_s < NUM_SPLITS
        lse = tl.load(pl_ptr + b * spl_b + h * spl_h + offs_s, mask=smask, other=float("-inf"))
        m = tl.max(lse, axis=0)
        w = tl.exp(lse - m)
        w = w / tl.sum(w, axis=0)
        offs_d = tl.arange(0, D)
        po = tl.load(po_ptr + b * spo_b + h * spo_h + offs_s[:, None] * spo_s + offs_d[None, :], mask=smask[:, None], other=0.0)
        out = tl.sum(po * w[:, None], axis=0)
        tl.store(o_ptr + b * so_b + h * so_h + offs_d, out.to(o_ptr.dtype.element_ty))


    def decode_splits(batch: int, num_kv_heads: int, max_len: int, num_sms: int = 132, block_n: int = 64) -> int:
        """Splits so that about two waves of programs fill the GPU, none idle."""
        want = triton.cdiv(2 * num_sms, max(1, batch * num_kv_heads))
        return int(max(1, min(want, triton.cdiv(max_len, 4 * block_n), 64)))


    def _triton_decode(
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_table: torch.Tensor,
        seq_lens: torch.Tensor,
        scale: float,
        num_splits: int,
        out: torch.Tensor | None = None,
        workspace: tuple[torch.Tensor, torch.Tensor] | None = None,
        block_n: int = 64,
    ) -> torch.Tensor:
        """query (B, H, D) -> (B, H, D); caches (nb, Hkv, bs, D) with contiguous last dim;
        seq_lens (B,) int32 on device (CUDA-graph safe: nothing read on the host)."""
        batch, num_heads, head_size = query.shape
        num_kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
        assert k_cache.stride(3) == 1 and v_cache.stride(3) == 1 and query.stride(2) == 1
        assert head_size == _pow2(head_size), "decode kernel needs a power-of-two head size"
        group = num_heads // num_kv_heads
        if workspace is None:
            po = torch.empty(batch, num_heads, num_splits, head_size, device=query.device, dtype=torch.float32)
            pl = torch.empty(batch, num_heads, num_splits, device=query.device, dtype=torch.float32)
        else:
            po, pl = workspace
        if out is None:
            out = torch.empty_like(query)
        _decode_kernel[(batch, num_kv_heads, num_splits)](
            query, query.stride(0), query.stride(1),
            k_cache, k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache, v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            block_table, block_table.stride(0),
            seq_lens,
            po, po.stride(0), po.stride(1), po.stride(2),
            pl, pl.stride(0), pl.stride(1),
            float(scale),
            G=group, D=head_size, BS=block_size,
            BLOCK_G=_pow2(group, 16), BLOCK_N=block_n, NUM_SPLITS=num_splits,
            USE_IEEE=(k_cache.dtype == torch.float32),
            num_warps=4,
        )
        _decode_reduce_kernel[(batch, num_heads)](
            po, po.stride(0), po.stride(1), po.stride(2),
            pl, pl.stride(0), pl.stride(1),
            out, out.stride(0), out.stride(1),
            D=head_size, NUM_SPLITS=num_splits, BLOCK_S=_pow2(num_splits),
            num_warps=4,
        )
        return out


def paged_decode_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Decode attention (one query token per request) over a paged cache.
    query (B, H, D); seq_lens (B,) int32. Torch path: gather + SDPA per request."""
    if use_triton(k_cache, backend):
        if num_splits is None and not query.is_cuda:
            num_splits = 4
        if num_splits is None:
            props = torch.cuda.get_device_properties(query.device)
            num_splits = decode_splits(
                query.shape[0], k_cache.shape[1], int(seq_lens.max()), props.multi_processor_count
            )
        return _triton_decode(
            query, k_cache, v_cache, block_table, seq_lens.to(torch.int32), scale, num_splits
        )
    out = torch.empty_like(query)
    num_kv_heads = k_cache.shape[1]
    group = query.shape[1] // num_kv_heads
    for b, length in enumerate(seq_lens.tolist()):
        ids = block_table[b].long()
        k = compaction.gather(k_cache, ids, length).float()
        v = compaction.gather(v_cache, ids, length).float()
        q = query[b].float().view(num_kv_heads, group, -1)
        p = torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1)
        out[b] = (p @ v).reshape(query.shape[1], -1).to(query.dtype)
    return out

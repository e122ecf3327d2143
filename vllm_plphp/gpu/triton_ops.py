"""Triton kernels for PLPHP's per-prefill work on paged KV caches.

(Over 300 lines: seven kernels and their launchers, which share one cache
layout and the helpers below; split by kernel they would repeat both.)

Imported only when Triton is available (see `vllm_plphp.gpu`); the torch
functions in `vllm_plphp.core.scoring` / `vllm_plphp.core.compaction` are the oracle.

Cache views are head-major and paged, any strides:
    cache: (num_blocks, Hkv, block_size, D)
(vLLM 0.32 FLASH_ATTN: kv_cache (nb, Hkv, bs, 2D), K = [..., :D], V = [..., D:],
so K and V are strided views of one tensor; `kv_layout.split_views` makes them).
A request's logical position p lives at (block_table[b, p // bs], p % bs).

Kernels
  _logits_kernel   gather keys + q.k (one program per (P tile, KV head, request)),
                   writes scaled logits and per-tile softmax stats (max, sum exp).
  _combine_kernel  per request: softmax max / denominator over P from the tile stats.
  _probs_kernel    normalizes with the combined stats (softmax over P), reduces the
                   query group per KV head (mean/max) and writes per-tile partial
                   vision sums for gamma_l (deterministic: no atomics).
  _compact_kernel  in-place per-head compaction, one program per (head, D chunk,
                   K/V, request) walking the slots in increasing order (see below).
  _copy_kernel     the two-pass compaction (copy out, copy back).
  _select_kernel   r_l on the device + exact per-head top-K per image (bisection on
                   the float bits), writes a per-head keep mask over vision positions.
  _compact_mask_kernel  in-place compaction driven by that mask (no index lists).
(The paged decode-attention kernel the GPU benchmarks use lives with them:
benchmarks/gpu/decode_attention.py.)
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


def _pow2(n: int, lo: int = 1) -> int:
    return max(lo, triton.next_power_of_2(int(n)))


@functools.lru_cache(maxsize=None)
def _sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132
    return _sms(device.index if device.index is not None else torch.cuda.current_device())


# --------------------------------------------------------------------------- scoring


@triton.jit
def _logits_kernel(
    q_ptr, sq_b, sq_h, sq_d,
    k_ptr, sk_n, sk_h, sk_s, sk_d,
    bt_ptr, sbt_b,
    plen_ptr,
    out_ptr, so_b, so_h, so_p,
    tmax_ptr, tsum_ptr, st_b, st_h,
    scale,
    G: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
    USE_FP32: tl.constexpr,
):
    t = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    plen = tl.load(plen_ptr + b)
    offs_g = tl.arange(0, BLOCK_G)
    gmask = offs_g < G
    heads = h * G + offs_g
    start = t * BLOCK_P
    if start >= plen:
        tl.store(tmax_ptr + b * st_b + heads * st_h + t, tl.full([BLOCK_G], float("-inf"), tl.float32), mask=gmask)
        tl.store(tsum_ptr + b * st_b + heads * st_h + t, tl.zeros([BLOCK_G], tl.float32), mask=gmask)
        return
    offs_p = start + tl.arange(0, BLOCK_P)
    pmask = offs_p < plen
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    blk = tl.load(bt_ptr + b * sbt_b + offs_p // BS, mask=pmask, other=0).to(tl.int64)
    slot = offs_p % BS
    k = tl.load(
        k_ptr + blk[:, None] * sk_n + h * sk_h + slot[:, None] * sk_s + offs_d[None, :] * sk_d,
        mask=pmask[:, None] & dmask[None, :], other=0.0,
    )
    q = tl.load(
        q_ptr + b * sq_b + heads[:, None] * sq_h + offs_d[None, :] * sq_d,
        mask=gmask[:, None] & dmask[None, :], other=0.0,
    )
    if USE_FP32:
        s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = s * scale
    s = tl.where(pmask[None, :], s, float("-inf"))
    tl.store(
        out_ptr + b * so_b + heads[:, None] * so_h + offs_p[None, :] * so_p, s,
        mask=gmask[:, None] & pmask[None, :],
    )
    m = tl.max(s, axis=1)
    l = tl.sum(tl.exp(s - m[:, None]), axis=1)
    tl.store(tmax_ptr + b * st_b + heads * st_h + t, m, mask=gmask)
    tl.store(tsum_ptr + b * st_b + heads * st_h + t, l, mask=gmask)


@triton.jit
def _combine_kernel(
    tmax_ptr, tsum_ptr, st_b, st_h,
    m_ptr, l_ptr, sm_b,
    NUM_TILES, H: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Softmax statistics over P from the per-tile ones: one program per request."""
    b = tl.program_id(0).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    hmask = offs_h < H
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    den = tl.zeros([BLOCK_H], tl.float32)
    for t0 in range(0, NUM_TILES, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask = hmask[:, None] & (offs_t < NUM_TILES)[None, :]
        tm = tl.load(tmax_ptr + b * st_b + offs_h[:, None] * st_h + offs_t[None, :], mask=mask, other=float("-inf"))
        ts = tl.load(tsum_ptr + b * st_b + offs_h[:, None] * st_h + offs_t[None, :], mask=mask, other=0.0)
        m_new = tl.maximum(m, tl.max(tm, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        den = den * tl.exp(m - m_safe) + tl.sum(ts * tl.exp(tm - m_safe[:, None]), axis=1)
        m = m_new
    tl.store(m_ptr + b * sm_b + offs_h, m, mask=hmask)
    tl.store(l_ptr + b * sm_b + offs_h, den, mask=hmask)


@triton.jit
def _probs_kernel(
    lg_ptr, sl_b, sl_h, sl_p,
    m_ptr, l_ptr, sm_b,
    vis_ptr, sv_b,
    plen_ptr,
    sc_ptr, ss_b, ss_h, ss_p,
    gpart_ptr, sg_b, sg_h,
    G: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_P: tl.constexpr,
    REDUCE_MAX: tl.constexpr, WRITE_PROBS: tl.constexpr,
):
    t = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    plen = tl.load(plen_ptr + b)
    start = t * BLOCK_P
    offs_p = start + tl.arange(0, BLOCK_P)
    pmask = offs_p < plen
    offs_g = tl.arange(0, BLOCK_G)
    gmask = offs_g < G
    heads = h * G + offs_g
    if start >= plen:
        tl.store(gpart_ptr + b * sg_b + h * sg_h + t, 0.0)
        return
    mask2 = gmask[:, None] & pmask[None, :]
    x = tl.load(lg_ptr + b * sl_b + heads[:, None] * sl_h + offs_p[None, :] * sl_p, mask=mask2, other=float("-inf"))
    m = tl.load(m_ptr + b * sm_b + heads, mask=gmask, other=0.0)
    den = tl.load(l_ptr + b * sm_b + heads, mask=gmask, other=1.0)
    p = tl.exp(x - m[:, None]) / den[:, None]
    p = tl.where(mask2, p, 0.0)
    if WRITE_PROBS:  # in place over the logits (same tile, same program)
        tl.store(lg_ptr + b * sl_b + heads[:, None] * sl_h + offs_p[None, :] * sl_p, p, mask=mask2)
    vis = tl.load(vis_ptr + b * sv_b + offs_p, mask=pmask, other=0)
    gsum = tl.sum(tl.sum(tl.where((vis != 0)[None, :], p, 0.0), axis=1), axis=0)
    tl.store(gpart_ptr + b * sg_b + h * sg_h + t, gsum)
    if REDUCE_MAX:
        red = tl.max(tl.where(gmask[:, None], p, float("-inf")), axis=0)
    else:
        red = tl.sum(p, axis=0) / G
    tl.store(sc_ptr + b * ss_b + h * ss_h + offs_p * ss_p, red, mask=pmask)


def last_token_scores(
    queries: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    prompt_lens: torch.Tensor,
    max_prompt_len: int,
    vision_mask: torch.Tensor,
    scale: float,
    reduce: str = "mean",
    return_probs: bool = False,
    block_p: int = 64,
):
    """Batched last-token scoring on a paged cache.

    queries: (B, H, D); k_cache: (nb, Hkv, bs, D); block_table: (B, n) int;
    prompt_lens: (B,) int32 on device; vision_mask: (B, >= max_prompt_len) int8/bool.
    Returns (scores (B, Hkv, Pmax) f32, gamma_sum (B,) f32 = sum over all heads and
    vision positions of the softmax probs, probs (B, H, Pmax) f32 or None).
    Entries at positions >= a request's prompt length are undefined.
    """
    batch, num_heads, head_size = queries.shape
    num_kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    pmax = int(max_prompt_len)
    n_tiles = triton.cdiv(pmax, block_p)
    dev = queries.device
    logits = torch.empty(batch, num_heads, pmax, device=dev, dtype=torch.float32)
    tmax = torch.empty(batch, num_heads, n_tiles, device=dev, dtype=torch.float32)
    tsum = torch.empty_like(tmax)
    use_fp32 = k_cache.dtype == torch.float32 or queries.dtype != k_cache.dtype
    grid = (n_tiles, num_kv_heads, batch)
    _logits_kernel[grid](
        queries, *queries.stride(),
        k_cache, *k_cache.stride(),
        block_table, block_table.stride(0),
        prompt_lens,
        logits, *logits.stride(),
        tmax, tsum, tmax.stride(0), tmax.stride(1),
        float(scale),
        G=group, D=head_size, BS=block_size,
        BLOCK_G=_pow2(group, 16), BLOCK_D=_pow2(head_size, 16), BLOCK_P=block_p,
        USE_FP32=use_fp32,
        num_warps=4,
    )
    gmax = torch.empty(batch, num_heads, device=dev, dtype=torch.float32)
    gden = torch.empty_like(gmax)
    _combine_kernel[(batch,)](
        tmax, tsum, tmax.stride(0), tmax.stride(1), gmax, gden, gmax.stride(0),
        n_tiles, H=num_heads, BLOCK_H=_pow2(num_heads), BLOCK_T=min(128, _pow2(n_tiles)),
        num_warps=4,
    )
    scores = torch.empty(batch, num_kv_heads, pmax, device=dev, dtype=torch.float32)
    gpart = torch.empty(batch, num_kv_heads, n_tiles, device=dev, dtype=torch.float32)
    if vision_mask.dtype == torch.bool:
        vision_mask = vision_mask.view(torch.int8)
    _probs_kernel[grid](
        logits, *logits.stride(),
        gmax, gden, gmax.stride(0),
        vision_mask, vision_mask.stride(0),
        prompt_lens,
        scores, *scores.stride(),
        gpart, gpart.stride(0), gpart.stride(1),
        G=group, BLOCK_G=_pow2(group, 1), BLOCK_P=block_p,
        REDUCE_MAX=(reduce == "max"), WRITE_PROBS=return_probs,
        num_warps=4,
    )
    gamma_sum = gpart.sum(dim=(1, 2))
    return scores, gamma_sum, (logits if return_probs else None)


# --------------------------------------------------------------------------- compaction


@triton.jit
def _compact_kernel(
    c_ptr, kv_off, s_n, s_h, s_s, s_d,
    bt_ptr, sbt_b,
    keep_ptr, skp_b, skp_h,
    len_ptr,
    D: tl.constexpr, BS: tl.constexpr, NUM_DC: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """In place: slot i of head h <- position keep[b, h, i], for i < lengths[b].

    Grid (Hkv * NUM_DC, number of caches, B); cache c starts at c_ptr + c * kv_off
    (K and V share strides). Safe against overlap because keep is ascending with
    keep[i] >= i, and each (request, head, D chunk, cache) is one program walking
    slot tiles in order:
      * a tile [i0, i0+T) reads positions >= keep[i0] >= i0 and writes slots
        [i0, i0+T); earlier tiles wrote only slots < i0, later tiles read only
        positions >= i0+T, so no two tiles of a program touch the same entry
        in conflicting order;
      * inside a tile a read position may equal a written slot (another
        thread's), hence the barrier between the tile's loads and stores.
    Entries already in place (keep[i] == i, e.g. the text prefix) are skipped.
    Programs of different heads / D chunks / caches / requests touch disjoint bytes.
    """
    pid = tl.program_id(0)
    c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    h = pid // NUM_DC
    dc = pid % NUM_DC
    length = tl.load(len_ptr + b)
    offs_d = dc * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    base = c_ptr + c.to(tl.int64) * kv_off + h * s_h
    for start in range(0, length, BLOCK_L):
        offs = start + tl.arange(0, BLOCK_L)
        m = offs < length
        src = tl.load(keep_ptr + b * skp_b + h * skp_h + offs, mask=m, other=0)
        move = m & (src != offs)
        sblk = tl.load(bt_ptr + b * sbt_b + src // BS, mask=move, other=0).to(tl.int64)
        dblk = tl.load(bt_ptr + b * sbt_b + offs // BS, mask=move, other=0).to(tl.int64)
        mask2 = move[:, None] & dmask[None, :]
        x = tl.load(base + sblk[:, None] * s_n + (src % BS)[:, None] * s_s + offs_d[None, :] * s_d, mask=mask2)
        tl.debug_barrier()
        tl.store(base + dblk[:, None] * s_n + (offs % BS)[:, None] * s_s + offs_d[None, :] * s_d, x, mask=mask2)
        tl.debug_barrier()


@triton.jit
def _copy_kernel(
    c_ptr, s_n, s_h, s_s, s_d,
    t_ptr, st_b, st_h, st_l,
    bt_ptr, sbt_b,
    keep_ptr, skp_b, skp_h,
    len_ptr,
    D: tl.constexpr, BS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    TO_TMP: tl.constexpr,
):
    """Two-pass compaction, one pass: TO_TMP copies cache[keep[i]] -> tmp[i],
    otherwise tmp[i] -> cache slot i (fully parallel; overlap-safe by the split)."""
    t = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    length = tl.load(len_ptr + b)
    start = t * BLOCK_L
    if start >= length:
        return
    offs = start + tl.arange(0, BLOCK_L)
    m = offs < length
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    mask2 = m[:, None] & dmask[None, :]
    tmp = t_ptr + b * st_b + h * st_h + offs[:, None] * st_l + offs_d[None, :]
    if TO_TMP:
        src = tl.load(keep_ptr + b * skp_b + h * skp_h + offs, mask=m, other=0)
        blk = tl.load(bt_ptr + b * sbt_b + src // BS, mask=m, other=0).to(tl.int64)
        x = tl.load(c_ptr + blk[:, None] * s_n + h * s_h + (src % BS)[:, None] * s_s + offs_d[None, :] * s_d, mask=mask2)
        tl.store(tmp, x, mask=mask2)
    else:
        blk = tl.load(bt_ptr + b * sbt_b + offs // BS, mask=m, other=0).to(tl.int64)
        x = tl.load(tmp, mask=mask2)
        tl.store(c_ptr + blk[:, None] * s_n + h * s_h + (offs % BS)[:, None] * s_s + offs_d[None, :] * s_d, x, mask=mask2)


def compact_batched_(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    keep: torch.Tensor,
    lengths: torch.Tensor,
    method: str = "inplace",
    block_l: int | None = None,
    block_d: int | None = None,
) -> None:
    """keep: (B, Hkv, Lmax) ascending positions (padding beyond lengths[b] ignored);
    lengths: (B,) int32 on device. Moves slot i of head h of request b to
    keep[b, h, i] for i < lengths[b], in place, in both caches."""
    batch, num_kv_heads, lmax = keep.shape
    head_size, block_size = k_cache.shape[3], k_cache.shape[2]
    if batch == 0 or lmax == 0:
        return
    if method == "inplace":
        if block_d is None:
            # full rows (256 B in bf16) when there are enough (request, head, K/V)
            # programs to fill the GPU, else 32-byte column chunks for parallelism
            full = batch * num_kv_heads * 2 >= 2 * _num_sms(keep.device)
            block_d = _pow2(head_size) if full else min(16, _pow2(head_size))
            block_l = block_l or (64 if full else 256)
        block_l = block_l or 256
        num_dc = triton.cdiv(head_size, block_d)
        esize = k_cache.element_size()
        delta = v_cache.data_ptr() - k_cache.data_ptr()
        if k_cache.stride() == v_cache.stride() and v_cache.dtype == k_cache.dtype and delta % esize == 0:
            launches = [(k_cache, delta // esize, 2)]  # one launch, K and V
        else:
            launches = [(k_cache, 0, 1), (v_cache, 0, 1)]
        for cache, kv_off, n_caches in launches:
            _compact_kernel[(num_kv_heads * num_dc, n_caches, batch)](
                cache, kv_off, *cache.stride(),
                block_table, block_table.stride(0),
                keep, keep.stride(0), keep.stride(1),
                lengths,
                D=head_size, BS=block_size, NUM_DC=num_dc,
                BLOCK_L=block_l, BLOCK_D=block_d,
                num_warps=4,
            )
        return
    if method != "two_pass":
        raise ValueError(f"unknown compaction method {method!r}")
    block_l = block_l or 32
    block_d = _pow2(head_size)
    grid = (triton.cdiv(lmax, block_l), num_kv_heads, batch)
    tmp = torch.empty(batch, num_kv_heads, lmax, head_size, device=keep.device, dtype=k_cache.dtype)
    for cache in (k_cache, v_cache):
        for to_tmp in (True, False):
            _copy_kernel[grid](
                cache, *cache.stride(),
                tmp, tmp.stride(0), tmp.stride(1), tmp.stride(2),
                block_table, block_table.stride(0),
                keep, keep.stride(0), keep.stride(1),
                lengths,
                D=head_size, BS=block_size, BLOCK_L=block_l, BLOCK_D=block_d,
                TO_TMP=to_tmp, num_warps=4,
            )


# --------------------------------------------------------------------------- fused select + compact


@triton.jit
def _select_kernel(
    sc_ptr, ss_b, ss_h,
    pos_ptr, sp_b, sp_j,
    size_ptr, sz_b,
    gamma_ptr, prm_ptr, tot_ptr,
    vk_ptr, sv_b, sv_h,
    rate_ptr, len_ptr,
    J, BLOCK_S: tl.constexpr, BLOCK_J: tl.constexpr,
):
    """Per (image j, KV head h, request b): r_l from gamma_l (PlphpConfig's rule in
    float64), K_j = clamp(floor(r_l * S_j + 1e-6), 1, S_j), and the exact top-K_j
    of the head's scores over the image by a 31-step bisection on the float32 bit
    patterns (scores are >= 0, so bit order is value order); ties at the K-th
    value go to the earliest entries. Writes vis_keep[b, h, pos] (int8) for every
    position of the image; program (0, 0, b) also writes r_l and L_l."""
    j = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    g = tl.load(gamma_ptr + b).to(tl.float64)
    r = tl.load(prm_ptr + b * 4)
    dr = tl.load(prm_ptr + b * 4 + 1)
    alpha = tl.load(prm_ptr + b * 4 + 2)
    beta = tl.load(prm_ptr + b * 4 + 3)
    rate = tl.where(g >= alpha, r + dr, tl.where(g < beta, r - dr, r))
    if (j == 0) & (h == 0):
        offs_j = tl.arange(0, BLOCK_J)
        sj = tl.load(size_ptr + b * sz_b + offs_j, mask=offs_j < J, other=0.0)
        kj = tl.minimum(tl.maximum(tl.floor(rate * sj + 1e-6), 1.0), sj)
        total = tl.load(tot_ptr + b)
        tl.store(len_ptr + b, (total - tl.sum((sj - kj).to(tl.int64), axis=0)).to(tl.int32))
        tl.store(rate_ptr + b, rate)
    s_f = tl.load(size_ptr + b * sz_b + j)
    if s_f > 0:
        k = tl.minimum(tl.maximum(tl.floor(rate * s_f + 1e-6), 1.0), s_f).to(tl.int32)
        offs = tl.arange(0, BLOCK_S)
        m = offs < s_f.to(tl.int32)
        p = tl.load(pos_ptr + b * sp_b + j * sp_j + offs, mask=m, other=0)
        x = tl.load(sc_ptr + b * ss_b + h * ss_h + p, mask=m, other=0.0)
        bits = tl.where(m, x.to(tl.int32, bitcast=True), -1)
        prefix = tl.program_id(0) * 0  # int32 scalar 0
        for i in range(31):
            cand = prefix | (1 << (30 - i))
            cnt = tl.sum((bits >= cand).to(tl.int32), axis=0)
            prefix = tl.where(cnt >= k, cand, prefix)
        gt = bits > prefix
        eq = bits == prefix
        n_gt = tl.sum(gt.to(tl.int32), axis=0)
        rank = tl.cumsum(eq.to(tl.int32), axis=0)
        keep = gt | (eq & (rank <= k - n_gt))
        tl.store(vk_ptr + b * sv_b + h * sv_h + p, keep.to(tl.int8), mask=m)


@triton.jit
def _compact_mask_kernel(
    c_ptr, kv_off, s_n, s_h, s_s, s_d,
    bt_ptr, sbt_b,
    vk_ptr, sv_b, sv_h,
    vis_ptr, svis_b,
    plen_ptr, tot_ptr,
    keep_ptr, skp_b, skp_h,
    D: tl.constexpr, BS: tl.constexpr, NUM_DC: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, WRITE_KEEP: tl.constexpr,
):
    """In-place compaction driven by the keep mask (non-vision positions, and the
    vision positions with vis_keep != 0): walks positions in increasing order,
    slot = number of kept positions before. Overlap-safe as _compact_kernel: a
    tile reads positions [p0, p0+T) and writes slots [c0, c0+n) with c0 <= p0 and
    c0+n <= p0+T; earlier tiles wrote slots < c0, later tiles read positions
    >= p0+T; the barrier orders the tile's own loads before its stores.
    With WRITE_KEEP, program (0, 0, b) also writes keep[b, h, slot] = position."""
    pid = tl.program_id(0)
    c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    h = pid // NUM_DC
    dc = pid % NUM_DC
    total = tl.load(tot_ptr + b)
    plen = tl.load(plen_ptr + b)
    offs_d = dc * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    base = c_ptr + c.to(tl.int64) * kv_off + h * s_h
    count = pid * 0  # int32 scalar 0
    writer = (dc == 0) & (c == 0)
    for start in range(0, total, BLOCK_L):
        offs = start + tl.arange(0, BLOCK_L)
        inb = offs < total
        isv = tl.load(vis_ptr + b * svis_b + offs, mask=inb & (offs < plen), other=0) != 0
        vk = tl.load(vk_ptr + b * sv_b + h * sv_h + offs, mask=isv, other=1)
        mk = inb & (vk != 0)
        mk_i = mk.to(tl.int32)
        dst = count + tl.cumsum(mk_i, axis=0) - 1
        if WRITE_KEEP:
            tl.store(keep_ptr + b * skp_b + h * skp_h + dst, offs.to(tl.int64), mask=mk & writer)
        move = mk & (dst != offs)
        sblk = tl.load(bt_ptr + b * sbt_b + offs // BS, mask=move, other=0).to(tl.int64)
        dblk = tl.load(bt_ptr + b * sbt_b + dst // BS, mask=move, other=0).to(tl.int64)
        mask2 = move[:, None] & dmask[None, :]
        x = tl.load(base + sblk[:, None] * s_n + (offs % BS)[:, None] * s_s + offs_d[None, :] * s_d, mask=mask2)
        tl.debug_barrier()
        tl.store(base + dblk[:, None] * s_n + (dst % BS)[:, None] * s_s + offs_d[None, :] * s_d, x, mask=mask2)
        tl.debug_barrier()
        count += tl.sum(mk_i, axis=0)


MAX_FUSED_IMAGE = 32768  # larger images use the torch top-K path


def select_and_compact_(
    scores: torch.Tensor,
    gammas: torch.Tensor,
    plan,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    keep_bound: int | None = None,
):
    """Fused tail of one pruned layer: r_l, per-head top-K per image, in-place
    compaction (2 launches, no host sync). plan: `vllm_plphp.gpu.select.BatchPlan`
    with rate_params. Returns (rates (B,) f64, lengths (B,) int32, keep or None);
    keep (B, Hkv, keep_bound) long with -1 padding when keep_bound is given."""
    batch, num_kv_heads = scores.shape[0], scores.shape[1]
    num_img, smax = plan.pos.shape[1], plan.pos.shape[2]
    dev = scores.device
    pmax = scores.shape[2]
    vis_keep = torch.empty(batch, num_kv_heads, max(pmax, 1), dtype=torch.int8, device=dev)
    rates = torch.empty(batch, dtype=torch.float64, device=dev)
    lengths = torch.empty(batch, dtype=torch.int32, device=dev)
    block_s = _pow2(smax, 16)
    _select_kernel[(num_img, num_kv_heads, batch)](
        scores, scores.stride(0), scores.stride(1),
        plan.pos, plan.pos.stride(0), plan.pos.stride(1),
        plan.sizes_dev, plan.sizes_dev.stride(0),
        gammas, plan.rate_params, plan.total_lens_dev,
        vis_keep, vis_keep.stride(0), vis_keep.stride(1),
        rates, lengths,
        num_img, BLOCK_S=block_s, BLOCK_J=_pow2(num_img),
        num_warps=4 if block_s <= 2048 else (8 if block_s <= 8192 else 16),
    )
    keep = None
    if keep_bound is not None:
        keep = torch.full((batch, num_kv_heads, keep_bound), -1, dtype=torch.long, device=dev)
    head_size, block_size = k_cache.shape[3], k_cache.shape[2]
    full = batch * num_kv_heads * 2 >= 2 * _num_sms(dev)
    block_d = _pow2(head_size) if full else min(16, _pow2(head_size))
    block_l = 64 if full else 256
    num_dc = triton.cdiv(head_size, block_d)
    esize = k_cache.element_size()
    delta = v_cache.data_ptr() - k_cache.data_ptr()
    if k_cache.stride() == v_cache.stride() and v_cache.dtype == k_cache.dtype and delta % esize == 0:
        launches = [(k_cache, delta // esize, 2)]
    else:
        launches = [(k_cache, 0, 1), (v_cache, 0, 1)]
    vis = plan.vision_mask
    for i, (cache, kv_off, n_caches) in enumerate(launches):
        write_keep = keep is not None and i == 0
        _compact_mask_kernel[(num_kv_heads * num_dc, n_caches, batch)](
            cache, kv_off, *cache.stride(),
            block_table, block_table.stride(0),
            vis_keep, vis_keep.stride(0), vis_keep.stride(1),
            vis, vis.stride(0),
            plan.prompt_lens_dev, plan.total_lens_dev,
            keep if write_keep else lengths, keep.stride(0) if write_keep else 0,
            keep.stride(1) if write_keep else 0,
            D=head_size, BS=block_size, NUM_DC=num_dc, BLOCK_L=block_l, BLOCK_D=block_d,
            WRITE_KEEP=write_keep, num_warps=4,
        )
    return rates, lengths, keep


__all__ = ["last_token_scores", "select_and_compact_", "compact_batched_"]

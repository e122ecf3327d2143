"""One pruned PLPHP layer for all of a step's targets in batched torch ops
(the CPU path; the same semantics as the fused Triton path on CUDA).

No Python loop over requests, heads or images and no host sync: the kept
lengths, gamma_l and r_l stay tensors until the step's one commit
(`vllm_plphp.core.prune.commit_pending`). Per layer:

1. one gather of every target's whole blocks (`take_blocks`), laid out per
   KV head as dense sequences over S = M * block_size slots (`CpuTiles`,
   `SplitEntries`: the two cache layouts of `vllm_plphp.core.kv_layout`);
2. scores: q.k over the dense keys, -inf past each prompt, softmax; KV-head
   scores (mean / max of the query group) and gamma_l (vision mass / H);
3. r_l by each request's rule and K_j = max(1, floor(r_l * S_j)) in float64
   (`PlphpConfig.layer_rate`, `scoring.num_kept`);
4. per head and image, the top K_j positions by a stable descending sort
   (ties go to the lower position, as in the HF reference and the Triton
   kernel);
5. compaction: slot i < L_b takes the i-th kept position, slots >= L_b keep
   their entry (row gathers of the dense sequences); the blocks that hold
   kept entries go back in one write (`put_blocks`; the others are freed).

Shapes: B targets, H query heads (this rank), Hkv KV heads, G = H / Hkv,
D head size, bs block size, M blocks per target (the longest target's),
S = M * bs, Mw <= M blocks written back, Sw = Mw * bs, J images per target
(max), Smax positions per image (max).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from vllm_plphp.core import kv_layout


@dataclass
class DenseLayout:
    """Per-step constants of the batched torch path (built once per step) and
    its scratch buffers (reused by every layer of the step: large fresh
    allocations cost page faults on CPU).

    cols: (B, M) block-table columns of each target (its last block repeated
        past its own blocks). Written back: each target's own blocks among
        its first Mw (Mw * bs > the longest kept length any rate can give;
        later blocks are freed unwritten): write_m (n,) their flat indices
        into B * M, write_mw into B * Mw, prefix: n when write_m is 0..n-1
        (else None). bias: (B, 1, 1, S) 0 at prompt positions, -inf after;
        vision: (B, S) 1.0 at vision positions; base: (B, 1, S + 1) bool,
        positions < T_b that are not vision (slot S: the discard slot); pos:
        (B, 1, J * Smax) long vision positions (0 where padded); pad:
        (B, 1, J * Smax) 0 / -inf (padding); slots: (S + 1,) long 0..S;
        heads: (B, Hkv, 1) long (b * Hkv + h) * S, row offsets of the dense
        sequences; tile_base: (B, 1, 1, 1) long b * M; tile_head: (1, 1, Hkv, 1)
        long h (`CpuTiles.compact`).
    """

    cols: torch.Tensor
    write_m: torch.Tensor
    write_mw: torch.Tensor
    prefix: int | None
    written: int  # Mw
    bias: torch.Tensor
    vision: torch.Tensor
    base: torch.Tensor
    pos: torch.Tensor
    pad: torch.Tensor
    slots: torch.Tensor
    heads: torch.Tensor
    tile_base: torch.Tensor
    tile_head: torch.Tensor
    block_size: int
    buffers: dict = field(default_factory=dict)
    cpu: object | None = None  # the C kernel's host arrays (`cpu_kernel.CpuPlan`), made on first use

    def buffer(self, name: str, shape, dtype, device) -> torch.Tensor:
        """A scratch tensor kept for the step (uninitialized)."""
        buf = self.buffers.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype or buf.device != device:
            buf = self.buffers[name] = torch.empty(tuple(shape), dtype=dtype, device=device)
        return buf

    def written_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B * M,) block ids -> (n,) those of the blocks written back."""
        return ids[: self.prefix] if self.prefix is not None else ids.index_select(0, self.write_m)


def make_layout(plan, block_size: int, num_kv_heads: int) -> DenseLayout:
    """From the step's `vllm_plphp.gpu.select.BatchPlan` (host lists, device tensors)."""
    dev = plan.pos.device
    batch = plan.batch
    nblk = [-(-t // block_size) for t in plan.total_lens]
    m = max(nblk)
    s = m * block_size
    mw = min(m, -(-(plan.bounds()[1] + 1) // block_size))
    cols = torch.minimum(torch.arange(m)[None, :], torch.tensor(nblk)[:, None] - 1)
    pairs = [(b, j) for b, n in enumerate(nblk) for j in range(min(n, mw))]
    write_m = [b * m + j for b, j in pairs]
    prefix = len(pairs) if write_m == list(range(len(pairs))) else None
    idx = torch.arange(s)
    bias = torch.where(idx[None, :] < torch.tensor(plan.prompt_lens)[:, None], 0.0, float("-inf"))
    vision = torch.zeros(batch, s)
    vision[:, : plan.vision_mask.shape[1]] = plan.vision_mask.cpu().float()
    base = torch.zeros(batch, 1, s + 1, dtype=torch.bool)
    base[:, 0, : plan.base_keep.shape[1]] = plan.base_keep.cpu()
    num = plan.pos.shape[1] * plan.pos.shape[2]
    pad = torch.where(plan.valid.cpu().view(batch, 1, num), 0.0, float("-inf"))
    heads = (torch.arange(batch * num_kv_heads) * s).view(batch, num_kv_heads, 1)
    return DenseLayout(
        cols=cols.to(dev), write_m=torch.tensor(write_m, device=dev),
        write_mw=torch.tensor([b * mw + j for b, j in pairs], device=dev), prefix=prefix,
        written=mw, bias=bias.view(batch, 1, 1, s).to(dev), vision=vision.to(dev),
        base=base.to(dev), pos=plan.pos.view(batch, 1, num), pad=pad.to(dev),
        slots=torch.arange(s + 1, device=dev), heads=heads.to(dev),
        tile_base=(torch.arange(batch) * m).view(batch, 1, 1, 1).to(dev),
        tile_head=torch.arange(num_kv_heads).view(1, 1, num_kv_heads, 1).to(dev),
        block_size=block_size)


def _bytes(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor's bytes (any dtype; last dim contiguous)."""
    return t.view(torch.uint8).numpy()


def take_blocks(cache: torch.Tensor, ids: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[i] = cache[ids[i]] (whole blocks). On CPU through numpy, whose row
    copies are memcpys (torch's index_select / index_copy_ are several times
    slower there)."""
    if cache.device.type != "cpu":
        return torch.index_select(cache, 0, ids, out=out)
    np.take(_bytes(cache), ids.numpy(), axis=0, out=_bytes(out), mode="clip")
    return out


def put_blocks(cache: torch.Tensor, ids: torch.Tensor, blocks: torch.Tensor) -> None:
    """cache[ids[i]] = blocks[i] (whole blocks, distinct ids)."""
    if cache.device.type != "cpu":
        cache.index_copy_(0, ids, blocks)
    else:
        _bytes(cache)[ids.numpy()] = _bytes(blocks)


def _rows(dense: torch.Tensor, src: torch.Tensor, layout: DenseLayout, name: str) -> torch.Tensor:
    """dense (B, Hkv, S, E) contiguous, src (B, Hkv, Sw) -> (B, Hkv, Sw, E):
    slot i of head (b, h) takes dense[b, h, src[b, h, i]] (one row gather)."""
    batch, hkv, _, e = dense.shape
    flat = (src + layout.heads).view(-1)
    out = layout.buffer(name, (flat.numel(), e), dense.dtype, dense.device)
    return torch.index_select(dense.view(-1, e), 0, flat, out=out).view(batch, hkv, -1, e)


class CpuTiles:
    """CPU_ATTN's cache (nb, Hkv, bs, 2D): per (block, head) a key tile
    stored transposed (D, bs), then a value tile (bs, D)."""

    def __init__(self, kv_cache: torch.Tensor, ids: torch.Tensor, layout: DenseLayout):
        nb, hkv, bs, two_d = kv_cache.shape
        d = self.d = two_d // 2
        batch, m = layout.cols.shape
        # one row per block where the heads are adjacent (faster copies)
        whole = kv_cache.stride(1) == bs * two_d and kv_cache.stride(0) == hkv * bs * two_d
        self.kv = kv_cache.view(nb, -1) if whole else kv_cache.view(nb, hkv, -1)
        self.tiles = layout.buffer("tiles", (batch * m, *self.kv.shape[1:]), kv_cache.dtype, kv_cache.device)
        take_blocks(self.kv, ids, self.tiles)
        # keys D-major (B, Hkv, D, S), for the scores and the key moves
        self.keys_t = layout.buffer("keys", (batch, hkv, d, m * bs), kv_cache.dtype, kv_cache.device)
        self.keys_t.view(batch, hkv, d, m, bs).copy_(self._tiles(0).permute(0, 2, 3, 1, 4))

    def _tiles(self, half: int) -> torch.Tensor:
        """(B, M, Hkv, D, bs) key tiles (half 0) or (B, M, Hkv, bs, D) value tiles (half 1)."""
        batch, hkv, d, s = self.keys_t.shape
        m, bs = self.tiles.shape[0] // batch, s * batch // self.tiles.shape[0]
        tiles = self.tiles.view(batch, m, hkv, 2, bs * d)[:, :, :, half]
        return tiles.view(batch, m, hkv, *((d, bs) if half == 0 else (bs, d)))

    def keys(self) -> torch.Tensor:
        return self.keys_t.transpose(2, 3)  # (B, Hkv, S, D) view

    def compact(self, src: torch.Tensor, layout: DenseLayout, ids: torch.Tensor) -> None:
        """src (B, Hkv, Sw): the new tiles of the first Mw blocks are built in
        the gathered tiles (keys gathered from the D-major copy; values as
        rows of the tiles, gathered before any write), then written back."""
        batch, hkv, d, s = self.keys_t.shape
        bs, mw, m = layout.block_size, layout.written, s // layout.block_size
        by_tile = src.reshape(batch, hkv, mw, bs).transpose(1, 2)  # (B, Mw, Hkv, bs) sources
        # value row of (b, h, p) in the tiles seen as rows of D: ((b M + p // bs) Hkv + h) 2 bs + bs + p % bs
        rows = ((by_tile // bs + layout.tile_base) * hkv + layout.tile_head) * (2 * bs) + bs + by_tile % bs
        values = layout.buffer("new values", (rows.numel(), d), self.tiles.dtype, self.tiles.device)
        torch.index_select(self.tiles.view(-1, d), 0, rows.reshape(-1), out=values)
        keys_in = self.keys_t.view(batch, 1, hkv, d, s).expand(batch, mw, hkv, d, s)
        index = by_tile[:, :, :, None, :].expand(batch, mw, hkv, d, bs)
        torch.gather(keys_in, 4, index, out=self._tiles(0)[:, :mw])
        self._tiles(1)[:, :mw].copy_(values.view(batch, mw, hkv, bs, d))
        rows = self.tiles[: layout.prefix] if layout.prefix is not None \
            else self.tiles.index_select(0, layout.write_m)
        put_blocks(self.kv, ids, rows.contiguous())


class SplitEntries:
    """FLASH_ATTN / TRITON_ATTN's cache (nb, Hkv, bs, 2D): per entry K then V."""

    def __init__(self, kv_cache: torch.Tensor, ids: torch.Tensor, layout: DenseLayout):
        self.kv = kv_cache
        _, hkv, bs, two_d = kv_cache.shape
        self.d = two_d // 2
        batch, m = layout.cols.shape
        blocks = layout.buffer("blocks", (ids.numel(), hkv, bs, two_d), kv_cache.dtype, kv_cache.device)
        blocks = take_blocks(kv_cache, ids, blocks).view(batch, m, hkv, bs, two_d)
        self.entries = layout.buffer("entries", (batch, hkv, m * bs, two_d), kv_cache.dtype, kv_cache.device)
        self.entries.view(batch, hkv, m, bs, two_d).copy_(blocks.transpose(1, 2))

    def keys(self) -> torch.Tensor:
        return self.entries[..., : self.d]

    def compact(self, src: torch.Tensor, layout: DenseLayout, ids: torch.Tensor) -> None:
        batch, hkv, s, two_d = self.entries.shape
        bs, mw, m = layout.block_size, layout.written, s // layout.block_size
        new = _rows(self.entries, src, layout, "new entries").view(batch, hkv, mw, bs, two_d)
        blocks = new.transpose(1, 2).reshape(batch * mw, hkv, bs, two_d)
        if layout.write_mw.numel() != batch * mw:
            blocks = blocks.index_select(0, layout.write_mw)
        put_blocks(self.kv, ids, blocks.contiguous())


def scores_and_gamma(queries, keys, layout: DenseLayout, scale: float, reduce: str):
    """queries (B, H, D), keys (B, Hkv, S, D) -> KV-head scores (B, Hkv, S)
    float32 (0 past each prompt) and the summed vision mass (B,) over this
    rank's heads."""
    batch, num_heads, head_size = queries.shape
    hkv = keys.shape[1]
    q = queries.float().view(batch, hkv, num_heads // hkv, head_size)
    logits = torch.matmul(q, keys.float().transpose(2, 3)) * scale  # (B, Hkv, G, S)
    probs = torch.softmax(logits + layout.bias, dim=-1)
    scores = probs.mean(dim=2) if reduce == "mean" else probs.amax(dim=2)
    gamma_sum = (probs.sum(dim=(1, 2)) * layout.vision).sum(dim=-1)
    return scores, gamma_sum


def kept_sources(scores, layout: DenseLayout, kept: torch.Tensor) -> torch.Tensor:
    """scores (B, Hkv, S), kept (B, J) long K_j -> src (B, Hkv, S + 1) long:
    slot i < L_b holds the i-th kept position of its head, ascending; the
    other slots hold themselves (identity)."""
    batch, hkv, s = scores.shape
    j = kept.shape[1]
    sc = scores.gather(2, layout.pos.expand(batch, hkv, -1)) + layout.pad
    order = torch.sort(sc.view(batch, hkv, j, -1), dim=-1, descending=True, stable=True).indices
    ranked = layout.pos.view(batch, 1, j, -1).expand(batch, hkv, j, -1).gather(3, order)
    chosen = torch.arange(order.shape[-1], device=order.device) < kept[:, None, :, None]
    mask = layout.base.expand(batch, hkv, s + 1).clone()
    mask.scatter_(2, torch.where(chosen, ranked, s).view(batch, hkv, -1), True)
    mask[..., s] = False
    dst = torch.where(mask, mask.cumsum(dim=2) - 1, s)
    src = layout.slots.expand(batch, hkv, s + 1).clone()
    src.scatter_(2, dst, layout.slots.expand(batch, hkv, s + 1))
    return src


@contextlib.contextmanager
def one_thread(kv_cache: torch.Tensor):
    """CPU: run the layer's pruning ops on this thread alone. They are a few
    MB of copies and small ops; an OpenMP fork/join per op costs more than
    it saves, and many times more while another process holds a core (vLLM
    replaces `torch.set_num_threads` after binding its threads, so the
    builtin is called; the thread count is restored)."""
    threads = torch.get_num_threads()
    if kv_cache.device.type != "cpu" or threads == 1:
        yield
        return
    torch._C.set_num_threads(1)
    try:
        yield
    finally:
        torch._C.set_num_threads(threads)


def prune_layer_(queries, kv_cache, kv_layout_name: str, block_table, plan,
                 layout: DenseLayout, scale: float, reduce: str = "mean",
                 num_heads_total: int | None = None, all_reduce=None,
                 kv_cache_dtype: str = "auto", k_scale: float = 1.0, return_keep: bool = False):
    """Score, select and compact one layer for the plan's B targets, in place.

    queries (B, H, D) post-RoPE last prompt tokens; kv_cache (nb, Hkv, bs, 2D)
    in the wrapped backend's layout ("cpu" or "split", `core.kv_layout`);
    block_table (B, >= M). Returns a `vllm_plphp.gpu.ops.LayerResult`
    (keep (B, Hkv, L_bound) with -1 past L_b when return_keep)."""
    from vllm_plphp.gpu.ops import LayerResult, layer_rates
    from vllm_plphp.gpu.select import kept_counts_device

    ids = block_table.gather(1, layout.cols).view(-1).long()
    cache = (CpuTiles if kv_layout_name == "cpu" else SplitEntries)(kv_cache, ids, layout)
    keys = kv_layout.dequantize(cache.keys(), kv_cache_dtype, k_scale, queries.dtype)
    scores, gamma_sum = scores_and_gamma(queries, keys, layout, scale, reduce)
    if all_reduce is not None:
        gamma_sum = all_reduce(gamma_sum)
    gammas = gamma_sum / (num_heads_total or queries.shape[1])
    rates = layer_rates(gammas, plan)
    kept, lengths = kept_counts_device(plan, rates)
    src = kept_sources(scores, layout, kept)
    cache.compact(src[..., : layout.written * layout.block_size], layout, layout.written_ids(ids))
    keep = None
    if return_keep:
        bound = plan.bounds()[1]
        keep = torch.where(layout.slots[:bound] < lengths[:, None, None], src[..., :bound], -1)
    return LayerResult(keep, lengths.to(torch.int32), gammas, rates)

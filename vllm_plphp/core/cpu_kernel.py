"""PLPHP layers on vLLM's CPU_ATTN cache in C (`csrc/prune_cpu.c`): scores +
gamma, r_l and K_j, selection + in-place compaction, for every target of the
step; one call per layer on one rank (`prune_layer_rows_`), two under tensor
parallelism or bfloat16 queries (`prune_layer_`: gamma is all-reduced
between them). Same semantics as the batched torch path (`core.batched`),
which stays the path for other layouts, fp8 / fp16 caches and
`kernels="torch"`.

Why: at one image (589 tokens) a layer's pruning in torch is ~50 small ops
whose fixed cost is the whole bill (~0.8 ms per layer on one thread; issue
29). The C calls do the same arithmetic (float32 q.k, softmax, KV-head mean
or max, top-K per head and image with ties to the lower position (quickselect),
r_l and K_j in float64) without gathering blocks: kept entries move forward
inside the paged cache (the i-th kept position is never below i).

Built on first use with the system C compiler (`$CC`, else `cc`; vLLM's CPU
torch.compile needs one too) into `~/.cache/vllm-plphp/kernels/`; if that
fails, the torch path runs and the reason is logged once.

Shapes: B targets, H query heads (this rank), Hkv KV heads, D head size, bs
block size, M blocks per target, S = M * bs, J images, Smax positions per
image (max), Pmax / Tmax longest prompt / total length.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vllm_plphp.log import logger

SOURCE = Path(__file__).with_name("csrc") / "prune_cpu.c"
_lib: ctypes.CDLL | None = None
_failed: str | None = None
_P = ctypes.c_void_p
_I = ctypes.c_int
_L = ctypes.c_int64


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "vllm-plphp" / "kernels"


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC", "cc")
    flags = ["-O3", "-fPIC", "-shared", "-fno-math-errno"]
    code = SOURCE.read_bytes()
    key = hashlib.sha256(code + " ".join([cc, *flags]).encode()).hexdigest()[:16]
    out = _cache_dir() / f"prune_cpu_{key}.so"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            so = os.path.join(tmp, out.name)
            subprocess.run([cc, *flags, "-o", so, str(SOURCE), "-lm"], check=True,
                           capture_output=True, text=True, timeout=120)
            os.replace(so, out)  # atomic: concurrent builders write the same file
    lib = ctypes.CDLL(str(out))
    lib.plphp_scores.restype = ctypes.c_int
    lib.plphp_scores.argtypes = [_P, _P, _I, _P, _I, _I, _I, _I, _I, _I, _L, _L, _P, _P, _I,
                                 ctypes.c_float, _I, _P, _P, _P]
    lib.plphp_compact.argtypes = [_P, _I, _P, _I, _I, _I, _I, _I, _L, _L, _P, _P, _P, _I, _I,
                                  _P, _P, _P, _I, _P, _I, _P, _P, _P, _P, _P]
    lib.plphp_prune_layer.restype = ctypes.c_int
    lib.plphp_prune_layer.argtypes = [_P, _P, _P, _L, _L, _L, _P, _P, _P, _P,
                                      _L, _P, _P, _I, _P, _I, _I, _I, _I, _I, _I,
                                      _P, _P, _I, ctypes.c_float, _I, _I, _P, _P, _P, _I, _I, _P, _P, _I, _I,
                                      _P, _P, _P, _P, _P, _P, _P, _P, _P]
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (the reason logged once)."""
    global _lib, _failed
    if _lib is None and _failed is None:
        try:
            _lib = _build()
        except (OSError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", "") or ""
            _failed = f"{type(e).__name__}: {e} {detail}".strip()
            logger.warning("PLPHP: the C pruning kernel could not be built (%s); CPU_ATTN layers "
                           "prune with batched torch ops instead (slower at short prompts)", _failed)
    return _lib


MAX_GROUP = 16  # query heads per KV head (MAX_G in prune_cpu.c)


def supports(kv_cache: torch.Tensor, kv_cache_dtype: str, num_heads: int) -> bool:
    """CPU tensors, a float32 / bfloat16 cache (not fp8), inner dims
    contiguous, at most MAX_GROUP query heads per KV head."""
    return (kv_cache.device.type == "cpu" and kv_cache_dtype == "auto"
            and num_heads // kv_cache.shape[1] <= MAX_GROUP
            and kv_cache.dtype in (torch.float32, torch.bfloat16)
            and kv_cache.stride(3) == 1 and kv_cache.stride(2) == kv_cache.shape[3]
            and library() is not None)


@dataclass
class CpuPlan:
    """Per-step host arrays of the step's `BatchPlan` (built once per step)."""

    plens: np.ndarray  # (B,) int32
    tlens: np.ndarray  # (B,) int64
    vision: np.ndarray  # (B, Pmax) int8
    base: np.ndarray  # (B, Tmax) uint8
    pos: np.ndarray  # (B, J, Smax) int64
    sizes: np.ndarray  # (B, J) int64
    sizes_f: np.ndarray  # (B, J) float64
    params: np.ndarray  # (B, 4) float64: r, delta_r, alpha, beta
    lbound: int
    smax: int
    query_rows: np.ndarray | None = None  # (B,) int64: each target's row in the step's queries
    table_rows: np.ndarray | None = None  # (B,) int64: each target's row in its group's block table
    layer_args: tuple | None = None  # (key, `_step_args`) of the step's first pruned layer
    outputs: tuple | None = None  # (lengths (n, B) int64, gammas (n, B) float32, rates (n, B) float64)
    layers_done: int = 0  # rows of `outputs` used by this step's layers


def _host(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else np.ascontiguousarray(t.cpu().numpy(), dtype=np.int64)


def make_cpu_plan(plan, query_rows: torch.Tensor | None = None,
                  table_rows: torch.Tensor | None = None) -> CpuPlan:
    sizes = np.zeros((plan.batch, plan.pos.shape[1]), dtype=np.int64)
    for b, req in enumerate(plan.image_sizes):
        sizes[b, : len(req)] = req
    return CpuPlan(
        plens=np.asarray(plan.prompt_lens, dtype=np.int32),
        tlens=np.asarray(plan.total_lens, dtype=np.int64),
        vision=np.ascontiguousarray(plan.vision_mask.cpu().numpy().astype(np.int8)),
        base=np.ascontiguousarray(plan.base_keep.cpu().numpy().astype(np.uint8)),
        pos=np.ascontiguousarray(plan.pos.cpu().numpy().astype(np.int64)),
        sizes=sizes, sizes_f=sizes.astype(np.float64),
        params=plan.rate_params.cpu().numpy().astype(np.float64),
        lbound=plan.bounds()[1], smax=int(plan.pos.shape[2]),
        query_rows=_host(query_rows), table_rows=_host(table_rows))


def fused_inputs(query: torch.Tensor, table: torch.Tensor) -> bool:
    """Whether `prune_layer_rows_` can read these directly: float32 queries
    whose rows are H * D contiguous floats, an int32 block table (the
    group's, all rows) with contiguous rows."""
    return (query.dtype == torch.float32 and query.stride(2) == 1 and query.stride(1) == query.shape[2]
            and table.dtype == torch.int32 and table.stride(1) == 1)


def prune_layer_rows_(query: torch.Tensor, kv_cache: torch.Tensor, table: torch.Tensor, layout,
                      scale: float, reduce: str = "mean", return_keep: bool = False):
    """One C call per layer, one rank: query (N, H, D) float32, the step's
    rows (target b's last prompt token at row `layout.cpu.query_rows[b]`);
    table (R, max_blocks) int32, the KV cache group's whole block table
    (target b's row `layout.cpu.table_rows[b]`); layout as in `prune_layer_`
    (its `cols` pick the blocks). Same result as `prune_layer_` (r_l and K_j
    by the same rule, written in C).

    Why so few Python operations: this runs between two layers' forward
    work, with the caches cold; each tensor method or numpy allocation
    here cost 10-15x its warm time in the engine (issue 29: 0.11 ms of
    Python per layer around a 0.15 ms kernel at one image). So the
    arguments that do not change between layers are built once per step
    (`_step_args`), the outputs are rows of per-step arrays, and the
    result holds numpy views (`commit_pending` reads them in one go)."""
    from vllm_plphp.gpu.ops import LayerResult

    cp = layout.cpu
    key = (query.shape[1:], query.stride(0), kv_cache.shape[1:], kv_cache.element_size(), scale, reduce)
    if cp.layer_args is None or cp.layer_args[0] != key:
        cp.layer_args = (key, _step_args(query, kv_cache, layout, scale, reduce))
    batch = len(cp.query_rows)
    if cp.outputs is None or cp.layers_done == len(cp.outputs[0]):
        n = 2 * len(cp.outputs[0]) if cp.outputs is not None else 64
        arrays = (np.empty((n, batch), np.int64), np.empty((n, batch), np.float32),
                  np.empty((n, batch), np.float64))
        cp.outputs = arrays + tuple((a.ctypes.data, a.strides[0]) for a in arrays)
        cp.layers_done = 0
    i = cp.layers_done
    cp.layers_done += 1
    lengths, gammas, rates, (lp, ls), (gp, gs), (rp, rs) = cp.outputs
    keep = np.empty((batch, kv_cache.shape[1], cp.lbound), dtype=np.int64) if return_keep else None
    rc = _lib.plphp_prune_layer(
        query.data_ptr(), kv_cache.data_ptr(), table.data_ptr(), table.stride(0), kv_cache.stride(0),
        kv_cache.stride(1), None if keep is None else keep.ctypes.data, lp + i * ls, gp + i * gs, rp + i * rs,
        *cp.layer_args[1])
    if rc != 0:  # `supports` rules this out
        raise ValueError(f"plphp_prune_layer: more than {MAX_GROUP} query heads per KV head")
    return LayerResult(None if keep is None else torch.from_numpy(keep), lengths[i], gammas[i], rates[i])


def _scratch(layout, batch: int, hkv: int, s: int, group: int, device) -> dict[str, int]:
    """Pointers to the step's scratch buffers that both forms pass to
    `plphp_scores` / `plphp_compact` (sizes as `prune_cpu.c` asks)."""
    cp = layout.cpu
    tmax = max(int(cp.tlens.max(initial=0)), 1)
    sizes = {"scores": ((batch, hkv, s), torch.float32), "work": ((max(s, 1) * group,), torch.float32),
             "mask": ((tmax,), torch.uint8), "top": ((max(cp.smax, 1),), torch.float32),
             "kept positions": ((max(cp.smax, tmax),), torch.int64), "moves": ((4 * tmax,), torch.int64)}
    return {name: _ptr(layout.buffer("c " + name, shape, dtype, device)) for name, (shape, dtype) in sizes.items()}


def _step_args(query: torch.Tensor, kv_cache: torch.Tensor, layout, scale: float, reduce: str) -> tuple:
    """`plphp_prune_layer`'s arguments after `rates`: the same for every layer
    of the step with these shapes (built at its first pruned layer)."""
    cp = layout.cpu
    batch, (_, num_heads, d), hkv = len(cp.query_rows), query.shape, kv_cache.shape[1]
    m, bs, j = layout.cols.shape[1], layout.block_size, cp.sizes.shape[1]
    dev, i64 = kv_cache.device, torch.int64
    sc = _scratch(layout, batch, hkv, m * bs, num_heads // hkv, dev)
    return (query.stride(0), _ptr(cp.query_rows), _ptr(cp.table_rows), kv_cache.element_size(), _ptr(layout.cols),
            batch, num_heads, hkv, d, bs, m, _ptr(cp.plens), _ptr(cp.vision), cp.vision.shape[1], scale,
            int(reduce == "max"), num_heads, _ptr(cp.params), _ptr(cp.pos), _ptr(cp.sizes), j, cp.smax,
            _ptr(cp.tlens), _ptr(cp.base), cp.base.shape[1], cp.lbound,
            _ptr(layout.buffer("c ids", (batch * m,), i64, dev)),
            _ptr(layout.buffer("c queries", (batch * num_heads * d,), torch.float32, dev)),
            _ptr(layout.buffer("c kept", (batch * j,), i64, dev)),
            sc["scores"], sc["work"], sc["mask"], sc["top"], sc["kept positions"], sc["moves"])


def _ptr(a) -> int:
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data_ptr()


def prune_layer_(queries: torch.Tensor, kv_cache: torch.Tensor, ids: torch.Tensor, layout,
                 scale: float, reduce: str = "mean", num_heads_total: int | None = None,
                 all_reduce=None, return_keep: bool = False):
    """queries (B, H, D) post-RoPE last prompt tokens; kv_cache (nb, Hkv, bs, 2D)
    CPU_ATTN tiles; ids (B, M) long block ids covering each target's total
    length; layout: the step's `batched.DenseLayout` for this block size and
    KV head count (its `cpu` plan set, its scratch buffers reused by every
    layer). Scores, selects and compacts in place; returns a
    `vllm_plphp.gpu.ops.LayerResult` of CPU tensors."""
    from vllm_plphp.gpu.ops import LayerResult, rate_rule
    from vllm_plphp.gpu.select import kept_rule

    lib, cp = library(), layout.cpu
    batch, num_heads, d = queries.shape
    hkv = kv_cache.shape[1]
    m, bs = ids.shape[1], layout.block_size
    sc = _scratch(layout, batch, hkv, m * bs, num_heads // hkv, kv_cache.device)
    q = queries.float().contiguous()
    ids = ids.contiguous()
    esize = kv_cache.element_size()
    sblock, shead = kv_cache.stride(0), kv_cache.stride(1)
    gamma_sum = np.empty(batch, dtype=np.float32)
    rc = lib.plphp_scores(_ptr(q), _ptr(kv_cache), esize, _ptr(ids), batch, num_heads, hkv, d, bs,
                          m, sblock, shead, _ptr(cp.plens), _ptr(cp.vision), cp.vision.shape[1], scale,
                          int(reduce == "max"), sc["scores"], _ptr(gamma_sum), sc["work"])
    if rc != 0:  # `supports` rules this out
        raise ValueError(f"plphp_scores: more than {MAX_GROUP} query heads per KV head")
    gamma = torch.from_numpy(gamma_sum)
    if all_reduce is not None:
        gamma = all_reduce(gamma)
    gammas = (gamma / (num_heads_total or num_heads)).numpy()
    rates = rate_rule(np, gammas.astype(np.float64), cp.params)  # as the torch and Triton paths
    kept = np.ascontiguousarray(kept_rule(np, rates, cp.sizes_f).astype(np.int64))
    lengths = np.empty(batch, dtype=np.int64)
    keep = np.empty((batch, hkv, cp.lbound), dtype=np.int64) if return_keep else None
    lib.plphp_compact(_ptr(kv_cache), esize, _ptr(ids), batch, hkv, d, bs, m, sblock, shead,
                      sc["scores"], _ptr(cp.pos), _ptr(cp.sizes), cp.pos.shape[1], cp.smax,
                      _ptr(kept), _ptr(cp.tlens), _ptr(cp.base), cp.base.shape[1],
                      _ptr(keep) if keep is not None else None, cp.lbound, _ptr(lengths),
                      sc["mask"], sc["top"], sc["kept positions"], sc["moves"])
    return LayerResult(None if keep is None else torch.from_numpy(keep),
                       torch.from_numpy(lengths.astype(np.int32)), torch.from_numpy(gammas),
                       torch.from_numpy(rates))

"""Dispatchers: Triton kernels on CUDA tensors, the torch oracle otherwise.

`backend` on every function: None (auto: Triton when the tensors are on CUDA,
Triton imports; the engine's `kernels` setting "torch" passes "torch"), "triton" or "torch".
The torch path is `vllm_plphp.core.scoring` / `vllm_plphp.core.compaction` (the oracle),
looped over requests.

Per-step use (B requests whose prompt completes in this step):

    plan = make_plan(images, prompt_lens, total_lens, device, configs)  # once per step
    res = prune_layer_batched_(queries, k_cache, v_cache, block_table, plan, scale)
                                    # per pruned layer: no host sync, CPU runs ahead
    ... after the step: res.lengths / res.gammas / res.rates .cpu() (one sync)

`prune_layer_batched_` decides r_l on the device (PlphpConfig's rule, float64,
the same arithmetic as `PlphpConfig.layer_rate` / `scoring.num_kept`).
With an arbitrary host rate function instead: `score_and_select_batched`
(one host sync per layer for gamma_l) + `compact_batched_`.
Single-request forms with the oracle's signatures: `score_and_select`, `compact_`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from vllm_plphp.core import compaction, scoring
from vllm_plphp.gpu.select import BatchPlan, make_plan, select_kept_batched, select_kept_device

if TYPE_CHECKING:  # the C kernel's results are numpy arrays
    import numpy as np


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        from vllm_plphp.gpu import triton_ops  # noqa: F401
    except Exception:  # ImportError, or a Triton without a usable backend
        return False
    return True


def use_triton(tensor: torch.Tensor, backend: str | None = None) -> bool:
    if backend == "torch":
        return False
    if backend == "triton":
        # TRITON_INTERPRET=1 runs the kernels on CPU tensors (tests without a GPU)
        on_device = tensor.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
        if not (on_device and triton_available()):
            raise RuntimeError("backend='triton' needs CUDA tensors and an importable Triton")
        return True
    if backend is not None:
        raise ValueError(f"unknown backend {backend!r} (allowed: None, 'triton', 'torch')")
    return tensor.is_cuda and triton_available()


def _ops():
    from vllm_plphp.gpu import triton_ops

    return triton_ops


# --------------------------------------------------------------------------- scoring


def last_token_scores_batched(
    queries: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    plan: BatchPlan,
    scale: float,
    reduce: str = "mean",
    return_probs: bool = False,
    backend: str | None = None,
):
    """queries (B, H, D) post-RoPE last-prompt-token queries; k_cache (nb, Hkv, bs, D);
    block_table (B, n). Returns (scores (B, Hkv, Pmax) f32, gamma_sum (B,) f32 = sum of
    the softmax probs over this rank's heads and vision positions, probs (B, H, Pmax)
    or None). Entries past a request's prompt are undefined."""
    if reduce not in ("mean", "max"):
        raise ValueError(f"unknown GQA reduction {reduce!r}")
    if use_triton(k_cache, backend):
        return _ops().last_token_scores(
            queries, k_cache, block_table, plan.prompt_lens_dev, plan.max_prompt_len,
            plan.vision_mask, scale, reduce, return_probs,
        )
    batch, num_heads = queries.shape[0], queries.shape[1]
    num_kv_heads = k_cache.shape[1]
    pmax = plan.max_prompt_len
    dev = queries.device
    scores = torch.zeros(batch, num_kv_heads, pmax, dtype=torch.float32, device=dev)
    gamma_sum = torch.zeros(batch, dtype=torch.float32, device=dev)
    probs_out = torch.zeros(batch, num_heads, pmax, dtype=torch.float32, device=dev) if return_probs else None
    for b, plen in enumerate(plan.prompt_lens):
        keys = compaction.gather(k_cache, block_table[b].long(), plen)
        probs = scoring.last_token_attention(queries[b], keys, scale)
        scores[b, :, :plen] = scoring.kv_head_scores(probs, num_kv_heads, reduce)
        vis = plan.vision_mask[b, :plen].bool()
        gamma_sum[b] = probs[:, vis].sum()
        if probs_out is not None:
            probs_out[b, :, :plen] = probs
    return scores, gamma_sum, probs_out


@dataclass
class LayerSelection:
    keep: torch.Tensor  # (B, Hkv, Lmax) long, ascending, -1 past lengths[b]
    lengths: list[int]
    gammas: list[float]
    rates: list[float]

    def lengths_dev(self) -> torch.Tensor:
        return torch.tensor(self.lengths, dtype=torch.int32).to(self.keep.device, non_blocking=True)


RateFn = Callable[[float], float]


def score_and_select_batched(
    queries: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    plan: BatchPlan,
    scale: float,
    rate_fn: RateFn | Sequence[RateFn],
    reduce: str = "mean",
    num_heads_total: int | None = None,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    backend: str | None = None,
) -> LayerSelection:
    """Scores, gamma_l (one host sync per layer), r_l, per-head top-K per image.

    rate_fn: gamma -> r_l (e.g. `PlphpConfig.layer_rate`), or one per request.
    Tensor parallel: pass all_reduce (summing gamma sums over ranks) and
    num_heads_total (all query heads); gamma = sum / num_heads_total."""
    scores, gamma_sum, _ = last_token_scores_batched(
        queries, k_cache, block_table, plan, scale, reduce, False, backend
    )
    if all_reduce is not None:
        gamma_sum = all_reduce(gamma_sum)
    heads = num_heads_total or queries.shape[1]
    gammas = (gamma_sum / heads).tolist()
    fns = [rate_fn] * plan.batch if callable(rate_fn) else list(rate_fn)
    rates = [float(fn(g)) for fn, g in zip(fns, gammas)]
    keep, lengths = select_kept_batched(scores, plan, rates)
    return LayerSelection(keep, lengths, gammas, rates)


def layer_rates(gamma: torch.Tensor, plan: BatchPlan) -> torch.Tensor:
    """r_l per request on the device: `PlphpConfig.layer_rate` in float64."""
    if plan.rate_params is None:
        raise ValueError("make_plan(..., configs=...) is needed for device-side rates")
    return rate_rule(torch, gamma.to(torch.float64), plan.rate_params)


def rate_rule(xp, gamma, params):
    """r_l per request from gamma_l (B,) float64 and params (B, 4) float64
    (r, delta_r, alpha, beta), as arrays of module `xp` (torch or numpy).
    Written once more in C (`core/csrc/prune_cpu.c`, `plphp_prune_layer`);
    `tests/unit/core/test_batched.py` checks it against the per-request path
    in all three categories."""
    r, dr, alpha, beta = (params[:, i] for i in range(4))
    return xp.where(gamma >= alpha, r + dr, xp.where(gamma < beta, r - dr, r))


@dataclass
class LayerResult:
    """One pruned layer's results, no host sync taken: device tensors (numpy
    arrays on the host from the one-call C kernel, `core.cpu_kernel`)."""

    keep: torch.Tensor | np.ndarray | None  # (B, Hkv, L_bound) long, -1 past lengths[b] (None: not asked)
    lengths: torch.Tensor | np.ndarray  # (B,) int32 kept length L_l per request
    gammas: torch.Tensor | np.ndarray  # (B,) float32 gamma_l
    rates: torch.Tensor | np.ndarray  # (B,) float64 r_l


def prune_layer_batched_(
    queries: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    plan: BatchPlan,
    scale: float,
    reduce: str = "mean",
    num_heads_total: int | None = None,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    backend: str | None = None,
    method: str = "fused",
    return_keep: bool = False,
) -> LayerResult:
    """One pruned layer for the whole batch, entirely on the device: scores,
    gamma_l (all_reduce'd across tensor-parallel ranks if given), r_l by the
    plan's configs, per-head top-K per image, in-place compaction of K and V.
    No host synchronization: the CPU goes on launching while the GPU works.

    method "fused" (Triton on CUDA): 5 Triton launches + 2 small torch ops per
    layer (`triton_ops.select_and_compact_`); keep indices only with return_keep.
    "inplace" / "two_pass" (or no Triton): torch top-K + index-list compaction,
    keep always returned."""
    scores, gamma_sum, _ = last_token_scores_batched(
        queries, k_cache, block_table, plan, scale, reduce, False, backend
    )
    if all_reduce is not None:
        gamma_sum = all_reduce(gamma_sum)
    gammas = gamma_sum / (num_heads_total or queries.shape[1])
    if plan.rate_params is None:
        raise ValueError("make_plan(..., configs=...) is needed for device-side rates")
    fused = (
        method == "fused"
        and use_triton(k_cache, backend)
        and plan.pos.shape[1] > 0
        and plan.pos.shape[2] <= _ops().MAX_FUSED_IMAGE
    )
    if fused:
        bound = plan.bounds()[1] if return_keep else None
        rates, lengths, keep = _ops().select_and_compact_(
            scores, gammas, plan, k_cache, v_cache, block_table, bound
        )
        return LayerResult(keep, lengths, gammas, rates)
    rates = layer_rates(gammas, plan)
    keep, lengths = select_kept_device(scores, plan, rates)
    compact_batched_(k_cache, v_cache, block_table, keep, lengths, backend,
                     "inplace" if method == "fused" else method)
    return LayerResult(keep, lengths, gammas, rates)


def score_and_select(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    block_ids: torch.Tensor,
    prompt_len: int,
    total_len: int,
    images: Sequence[torch.Tensor],
    scale: float,
    rate_fn: RateFn,
    reduce: str = "mean",
    backend: str | None = None,
) -> tuple[torch.Tensor, float, float]:
    """One request (tensor parallel size 1): returns (keep (Hkv, L), gamma_l, r_l),
    keep as `scoring.select_kept` gives it."""
    plan = make_plan([images], [prompt_len], [total_len], k_cache.device)
    sel = score_and_select_batched(
        query[None], k_cache, block_ids[None], plan, scale, rate_fn, reduce, backend=backend
    )
    return sel.keep[0, :, : sel.lengths[0]], sel.gammas[0], sel.rates[0]


# --------------------------------------------------------------------------- compaction


def compact_batched_(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    keep: torch.Tensor,
    lengths: Sequence[int] | torch.Tensor,
    backend: str | None = None,
    method: str = "inplace",
) -> None:
    """In place, per request b and KV head h: slot i <- position keep[b, h, i], i < L_b."""
    if use_triton(k_cache, backend):
        if not isinstance(lengths, torch.Tensor):
            lengths = torch.tensor(list(lengths), dtype=torch.int32).to(keep.device, non_blocking=True)
        _ops().compact_batched_(k_cache, v_cache, block_table, keep, lengths.to(torch.int32), method)
        return
    lens = lengths.tolist() if isinstance(lengths, torch.Tensor) else list(lengths)  # host sync (torch path)
    for b, length in enumerate(lens):
        compaction.compact_(k_cache, v_cache, block_table[b].long(), keep[b, :, :length])


def compact_(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_ids: torch.Tensor,
    keep: torch.Tensor,
    backend: str | None = None,
    method: str = "inplace",
) -> None:
    """`compaction.compact_` with the same arguments; Triton on CUDA."""
    if use_triton(k_cache, backend):
        lengths = torch.full((1,), keep.shape[1], dtype=torch.int32, device=keep.device)
        _ops().compact_batched_(k_cache, v_cache, block_ids[None], keep[None], lengths, method)
        return
    compaction.compact_(k_cache, v_cache, block_ids, keep)

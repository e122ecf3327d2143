"""Batched, vectorized top-K-per-image selection (pure torch, any device).

Semantics equal `vllm_plphp.core.scoring.select_kept` per request (same K_j rule,
same ascending output); it differs only in doing every request, KV head and
image of a layer in one `topk` call, without a host sync (kept lengths are
known on the host from the rates).

A `BatchPlan` describes the step's requests (image positions, prompt and total
lengths); build it once per step and reuse it for every pruned layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vllm_plphp.core.scoring import num_kept


@dataclass
class BatchPlan:
    prompt_lens: list[int]
    total_lens: list[int]
    image_sizes: list[list[int]]
    pos: torch.Tensor  # (B, J, Smax) long vision positions (0 where padded)
    valid: torch.Tensor  # (B, J, Smax) bool
    vision_mask: torch.Tensor  # (B, Pmax) int8, 1 at vision positions
    base_keep: torch.Tensor  # (B, Tmax) bool: position < T_b and not vision
    prompt_lens_dev: torch.Tensor  # (B,) int32
    sizes_dev: torch.Tensor  # (B, J) float64 image sizes S_bj (0 where absent)
    total_lens_dev: torch.Tensor  # (B,) int64
    max_rate: float = 1.0  # upper bound of any rate used with this plan (device path)
    rate_params: torch.Tensor | None = None  # (B, 4) float64: r, delta_r, alpha, beta

    @property
    def batch(self) -> int:
        return len(self.prompt_lens)

    @property
    def max_prompt_len(self) -> int:
        return max(self.prompt_lens, default=0)

    @property
    def max_total_len(self) -> int:
        return max(self.total_lens, default=0)

    def bounds(self) -> tuple[int, int]:
        """Host upper bounds (K_max over images, L_max over requests) for rates <= max_rate."""
        ks, lengths = self.kept_counts([self.max_rate] * self.batch)
        return max((k for r in ks for k in r), default=0), max(lengths, default=0)

    def kept_counts(self, rates: Sequence[float]) -> tuple[list[list[int]], list[int]]:
        """K_bj per image and the kept length L_b per request for these rates."""
        ks, lengths = [], []
        for sizes, rate, total in zip(self.image_sizes, rates, self.total_lens):
            k = [min(num_kept(rate, s), s) if s > 0 else 0 for s in sizes]
            ks.append(k)
            lengths.append(total - sum(s - kk for s, kk in zip(sizes, k)))
        return ks, lengths


def make_plan(
    images: Sequence[Sequence[torch.Tensor]],
    prompt_lens: Sequence[int],
    total_lens: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    configs=None,
    max_rate: float | None = None,
) -> BatchPlan:
    """images[b] = list of (S_j,) long position tensors (< prompt_lens[b]).

    configs: one PlphpConfig (or one per request) for the device-side rate rule
    (`vllm_plphp.gpu.ops.prune_layer_batched_`); max_rate defaults to the largest
    r + delta_r of the configs (1.0 without configs)."""
    prompt_lens = [int(p) for p in prompt_lens]
    total_lens = list(prompt_lens) if total_lens is None else [int(t) for t in total_lens]
    batch = len(prompt_lens)
    imgs = [[p.detach().to("cpu", torch.long).reshape(-1) for p in req] for req in images]
    sizes = [[int(p.numel()) for p in req] for req in imgs]
    num_img = max((len(r) for r in imgs), default=0)
    smax = max((s for r in sizes for s in r), default=0)
    pmax = max(prompt_lens, default=0)
    tmax = max(total_lens, default=0)
    pos = torch.zeros(batch, num_img, smax, dtype=torch.long)
    valid = torch.zeros(batch, num_img, smax, dtype=torch.bool)
    vision = torch.zeros(batch, max(pmax, 1), dtype=torch.int8)
    base = torch.zeros(batch, max(tmax, 1), dtype=torch.bool)
    for b, req in enumerate(imgs):
        base[b, : total_lens[b]] = True
        for j, p in enumerate(req):
            pos[b, j, : p.numel()] = p
            valid[b, j, : p.numel()] = True
            vision[b, p] = 1
            base[b, p] = False
    dev = torch.device(device) if device is not None else torch.device("cpu")
    nb = dev.type == "cuda"
    params = None
    if configs is not None:
        cfgs = list(configs) if isinstance(configs, (list, tuple)) else [configs] * batch
        params = torch.tensor([[c.r, c.delta_r, c.alpha, c.beta] for c in cfgs], dtype=torch.float64)
        if max_rate is None:
            max_rate = max(c.r + c.delta_r for c in cfgs)
    sizes_t = torch.zeros(batch, num_img, dtype=torch.float64)
    for b, r in enumerate(sizes):
        sizes_t[b, : len(r)] = torch.tensor(r, dtype=torch.float64)
    return BatchPlan(
        prompt_lens=prompt_lens,
        total_lens=total_lens,
        image_sizes=sizes,
        pos=pos.to(dev, non_blocking=nb),
        valid=valid.to(dev, non_blocking=nb),
        vision_mask=vision.to(dev, non_blocking=nb),
        base_keep=base.to(dev, non_blocking=nb),
        prompt_lens_dev=torch.tensor(prompt_lens, dtype=torch.int32).to(dev, non_blocking=nb),
        sizes_dev=sizes_t.to(dev, non_blocking=nb),
        total_lens_dev=torch.tensor(total_lens, dtype=torch.long).to(dev, non_blocking=nb),
        max_rate=1.0 if max_rate is None else float(max_rate),
        rate_params=None if params is None else params.to(dev, non_blocking=nb),
    )


def _select(scores, plan, kt, kmax, lmax):
    """Shared core: kt (B, J) long kept counts on the device, host bounds kmax/lmax."""
    batch, num_kv_heads = scores.shape[0], scores.shape[1]
    dev = scores.device
    tmax = plan.max_total_len
    mask = torch.zeros(batch, num_kv_heads, tmax + 1, dtype=torch.bool, device=dev)
    mask[..., :tmax] = plan.base_keep[:, None, :tmax]
    num_img, smax = plan.pos.shape[1], plan.pos.shape[2]
    if num_img and smax and kmax:
        idx = plan.pos.view(batch, 1, num_img * smax).expand(batch, num_kv_heads, -1)
        sc = scores.gather(2, idx).view(batch, num_kv_heads, num_img, smax)
        sc = sc.masked_fill(~plan.valid[:, None], float("-inf"))
        top = torch.topk(sc, kmax, dim=-1, sorted=True).indices  # (B, Hkv, J, kmax)
        ok = torch.arange(kmax, device=dev) < kt[:, None, :, None]
        kpos = plan.pos[:, None].expand(batch, num_kv_heads, num_img, smax).gather(3, top)
        kpos = torch.where(ok, kpos, tmax)
        mask.scatter_(2, kpos.view(batch, num_kv_heads, -1), True)
    mask = mask[..., :tmax]
    dst = torch.where(mask, mask.cumsum(2) - 1, lmax)
    out = torch.full((batch, num_kv_heads, lmax + 1), -1, dtype=torch.long, device=dev)
    src = torch.arange(tmax, device=dev).expand(batch, num_kv_heads, tmax)
    out.scatter_(2, dst, src)
    return out[..., :lmax]


def select_kept_batched(
    scores: torch.Tensor, plan: BatchPlan, rates: Sequence[float]
) -> tuple[torch.Tensor, list[int]]:
    """Host rates. scores: (B, Hkv, >= Pmax) f32 (entries past a prompt ignored).

    Returns keep (B, Hkv, Lmax) long, row b,h ascending, -1 past L_b, and the
    kept lengths L_b (host ints). keep[b, :, :L_b] equals
    `scoring.select_kept(scores[b, :, :P_b], images[b], rates[b], T_b)` up to ties.
    """
    ks, lengths = plan.kept_counts(rates)
    kmax = max((k for r in ks for k in r), default=0)
    kt = torch.zeros(plan.batch, plan.pos.shape[1], dtype=torch.long)
    for b, r in enumerate(ks):
        kt[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    kt = kt.to(scores.device, non_blocking=scores.device.type == "cuda")
    return _select(scores, plan, kt, kmax, max(lengths, default=0)), lengths


def kept_rule(xp, rates, sizes):
    """K_j for rates (B,) and image sizes (B, J), both float64, as arrays of
    module `xp` (torch or numpy): the arithmetic of `scoring.num_kept`
    (floor(rate * S + 1e-6), >= 1, <= S), float64 result. Also in C
    (`core/csrc/prune_cpu.c`, `plphp_prune_layer`)."""
    return xp.minimum(xp.clip(xp.floor(rates[:, None] * sizes + 1e-6), 1.0, None), sizes)


def kept_counts_device(plan: BatchPlan, rates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Device rates (B,) float64 -> K (B, J) long and L (B,) long (`kept_rule`)."""
    sizes = plan.sizes_dev
    k = kept_rule(torch, rates.to(torch.float64), sizes).long()
    lengths = plan.total_lens_dev - (sizes.long() - k).sum(dim=1)
    return k, lengths


def select_kept_device(
    scores: torch.Tensor, plan: BatchPlan, rates: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Device rates (B,) float64, no host sync: returns keep (B, Hkv, L_bound)
    (-1 past L_b) and lengths (B,) int32 on the device. Rates must not exceed
    plan.max_rate (the host bounds come from it)."""
    kt, lengths = kept_counts_device(plan, rates)
    kmax, lmax = plan.bounds()
    return _select(scores, plan, kt, kmax, lmax), lengths.to(torch.int32)

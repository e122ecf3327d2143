"""Pruning policies: which layers look at the attention, which layers drop
vision entries, and which entries each KV head keeps.

All three share the engine machinery (the last prompt token's attention row,
compaction, block freeing); only the choice of kept positions differs.

- PLPHP: "Per-Layer Per-Head Vision Token Pruning for Efficient Large
  Vision-Language Models" (arXiv 2502.14504). Every pruned layer scores itself,
  picks r_l from gamma_l and lets each KV head keep its own top K_j per image.
- FastV: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2" (arXiv
  2403.06764). Layer K-1's last-token attention, averaged over all heads, ranks
  all vision tokens together; the top (1 - R) fraction is kept by every head of
  every layer >= K.
- VTW: Lin et al., "Boosting Multimodal Large Language Models with Visual
  Tokens Withdrawal" (arXiv 2405.05803). Layers >= K drop every vision token.

As everywhere in this plugin, the prefill is computed in full; pruning changes
what the decode steps read (the KV-cache form of each method).

One policy object per request and prefill (`make_policy`): it holds its own
settings and what it carries from one layer to a later one, and answers
`scores_layer` / `prunes_layer`, then `observe(images, scores)` on scoring
layers and `choose(images, total_len, num_kv_heads)` on pruned ones.

Shapes: H query heads (all ranks), Hkv KV heads (this rank), P prompt length,
T entries in the layer's cache (T >= P), S = sum_j S_j vision tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vllm_plphp.core import scoring

@dataclass
class LayerScores:
    """One layer's view of a request's last prompt token.

    probs: (H_rank, P) softmax rows of this rank's query heads.
    vision_attn: (S,) attention on each vision position (all images,
        concatenated), averaged over all H query heads of all ranks.
    """

    probs: torch.Tensor
    vision_attn: torch.Tensor
    num_kv_heads: int

    @property
    def gamma(self) -> float:
        """gamma_l: head-averaged attention mass on the vision tokens."""
        return float(self.vision_attn.sum())


@dataclass
class Choice:
    """keep: (Hkv, L) ascending positions per KV head; rate: vision fraction kept."""

    keep: torch.Tensor
    rate: float


def _keep_all_but(dropped: torch.Tensor, total_len: int, num_kv_heads: int,
                  device) -> torch.Tensor:
    """The same kept positions for every head: all of 0..T-1 except `dropped`."""
    mask = torch.ones(total_len, dtype=torch.bool, device=device)
    mask[dropped.to(device)] = False
    return torch.nonzero(mask)[:, 0].expand(num_kv_heads, -1).contiguous()


class PlphpPolicy:
    """PLPHP: every pruned layer scores itself, picks r_l from gamma_l and
    lets each KV head keep its own top K_j = floor(r_l * S_j) (>= 1) per image.

    Settings: r, delta_r, alpha, beta (the layer rule, `PlphpConfig.layer_rate`),
    gqa_reduce, skip_first / skip_last (layers kept whole), per_head (False:
    the paper's per-head ablation, every head keeps the same tokens; with
    delta_r=0 the layer-rule ablation, one rate r in every pruned layer).
    Between `observe` and `choose` of a layer it holds that layer's
    `LayerScores` (probs: (H_rank, P)).
    """

    name = "plphp"

    def __init__(self, config) -> None:
        self.config = config  # the rule's settings: r, delta_r, alpha, beta, gqa_reduce
        self.skip_first, self.skip_last = config.skip_first, config.skip_last
        self._scores: LayerScores | None = None

    def scores_layer(self, layer: int, num_layers: int) -> bool:
        return self.prunes_layer(layer, num_layers)

    def prunes_layer(self, layer: int, num_layers: int) -> bool:
        return self.skip_first <= layer < num_layers - self.skip_last

    def last_layer(self, num_layers: int) -> int:
        return num_layers - self.skip_last - 1

    def observe(self, images, scores: LayerScores) -> None:
        self._scores = scores

    def choose(self, images, total_len: int, num_kv_heads: int) -> Choice:
        scores, self._scores = self._scores, None
        rate = self.config.layer_rate(scores.gamma)
        if self.config.per_head:
            head_scores = scoring.kv_head_scores(scores.probs, num_kv_heads, self.config.gqa_reduce)
        else:  # ablation: one ranking (all query heads, all ranks) shared by every head
            head_scores = _shared_scores(images, scores, num_kv_heads)
        return Choice(scoring.select_kept(head_scores, images, rate, total_len), rate)


def _shared_scores(images, scores: LayerScores, num_kv_heads: int) -> torch.Tensor:
    """(Hkv, P) equal rows: each vision position's head-averaged attention
    (`scores.vision_attn`, ordered as torch.cat(images)); 0 elsewhere."""
    vision = torch.cat(list(images)).to(scores.vision_attn.device)
    row = torch.zeros(scores.probs.shape[-1], dtype=scores.vision_attn.dtype,
                      device=scores.vision_attn.device)
    row[vision] = scores.vision_attn
    return row.expand(num_kv_heads, -1)


class FastVPolicy:
    """FastV: layer K-1's last-token attention, averaged over all heads, ranks
    all vision tokens together; every head of every layer >= K keeps the top
    (1 - R) of them (the same entries: computed once, held here).

    Settings: k (K), fastv_r (R).
    """

    name = "fastv"

    def __init__(self, config) -> None:
        self.k, self.fastv_r = config.k, config.fastv_r
        self._dropped: torch.Tensor | None = None  # (S * R,) dropped vision positions
        self._rate = 1.0
        self._keep: torch.Tensor | None = None  # (Hkv, L), once chosen

    def scores_layer(self, layer: int, num_layers: int) -> bool:
        return layer == self.k - 1

    def prunes_layer(self, layer: int, num_layers: int) -> bool:
        return layer >= self.k

    def last_layer(self, num_layers: int) -> int:
        return num_layers - 1

    def observe(self, images, scores: LayerScores) -> None:
        """Rank all vision tokens of all images together; drop the lowest R."""
        vision = torch.cat(list(images)).to(scores.vision_attn.device)
        keep_n = math.floor((1.0 - self.fastv_r) * vision.numel() + 1e-6)
        order = torch.argsort(scores.vision_attn, descending=True, stable=True)
        self._dropped = vision[order[keep_n:]]
        self._rate = keep_n / max(1, vision.numel())

    def choose(self, images, total_len: int, num_kv_heads: int) -> Choice:
        if self._keep is None:  # every layer >= K keeps the same entries
            self._keep = _keep_all_but(self._dropped, total_len, num_kv_heads, images[0].device)
        return Choice(self._keep, self._rate)


class VtwPolicy:
    """VTW: layers >= K drop every vision token. Settings: k (K)."""

    name = "vtw"

    def __init__(self, config) -> None:
        self.k = config.k
        self._keep: torch.Tensor | None = None  # (Hkv, T - S), once chosen

    def scores_layer(self, layer: int, num_layers: int) -> bool:
        return False

    def prunes_layer(self, layer: int, num_layers: int) -> bool:
        return layer >= self.k

    def last_layer(self, num_layers: int) -> int:
        return num_layers - 1

    def observe(self, images, scores: LayerScores) -> None:
        raise AssertionError("VTW does not score")

    def choose(self, images, total_len: int, num_kv_heads: int) -> Choice:
        if self._keep is None:  # every layer >= K keeps the same entries
            vision = torch.cat(list(images))
            self._keep = _keep_all_but(vision, total_len, num_kv_heads, vision.device)
        return Choice(self._keep, 0.0)


POLICIES = {cls.name: cls for cls in (PlphpPolicy, FastVPolicy, VtwPolicy)}


def make_policy(config):
    """A fresh policy for one request's prefill: its settings from `config`
    (a PlphpConfig), and room for what it carries from layer to layer."""
    return POLICIES[config.policy](config)


def mean_retention(layer_vision_kept: dict[int, float], num_layers: int) -> float:
    """Vision tokens kept, averaged over all decoder layers (unpruned layers
    count as 1.0). layer_vision_kept: {layer: kept fraction} of pruned layers."""
    return sum(layer_vision_kept.get(l, 1.0) for l in range(num_layers)) / num_layers

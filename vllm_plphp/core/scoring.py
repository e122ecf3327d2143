"""PLPHP scoring: pure tensor functions, device-agnostic, no vLLM imports.

Paper: PLPHP,
"Per-Layer Per-Head Vision Token Pruning for Efficient Large Vision-Language
Models" (arXiv 2502.14504), Sec. 3. Shapes below use
  H   = query heads, Hkv = KV heads (GQA: H = Hkv * G),
  P   = prompt length, T = tokens in the layer's cache (T >= P), D = head size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def last_token_attention(
    query: torch.Tensor, keys: torch.Tensor, scale: float
) -> torch.Tensor:
    """Softmax attention row of the last prompt token over the prompt.

    query: (H, D) post-RoPE query of the last prompt token.
    keys:  (Hkv, P, D) post-RoPE keys of prompt positions 0..P-1.
    returns probs: (H, P), float32, rows sum to 1.
    """
    num_heads, head_size = query.shape
    num_kv_heads = keys.shape[0]
    group = num_heads // num_kv_heads
    q = query.float().view(num_kv_heads, group, head_size)
    logits = torch.matmul(q, keys.float().transpose(1, 2)) * scale  # (Hkv, G, P)
    return torch.softmax(logits, dim=-1).reshape(num_heads, -1)


def vision_score(probs: torch.Tensor, vision_positions: torch.Tensor) -> float:
    """gamma_l = sum over vision positions of the head-averaged attention.

    probs: (H, P); vision_positions: (S,) long. Returns a float in [0, 1].
    """
    if vision_positions.numel() == 0:
        return 0.0
    return float(probs[:, vision_positions].sum(dim=-1).mean())


def kv_head_scores(probs: torch.Tensor, num_kv_heads: int, reduce: str = "mean") -> torch.Tensor:
    """Score of each KV head: mean (or max) of its query group's rows.

    probs: (H, P) -> scores: (Hkv, P).
    """
    grouped = probs.view(num_kv_heads, -1, probs.shape[-1])
    if reduce == "mean":
        return grouped.mean(dim=1)
    if reduce == "max":
        return grouped.amax(dim=1)
    raise ValueError(f"unknown GQA reduction {reduce!r}")


def num_kept(rate: float, num_vision: int) -> int:
    """K_j = max(1, floor(rate * S_j)); the epsilon absorbs float error (0.7*10)."""
    return max(1, math.floor(rate * num_vision + 1e-6))


def select_kept(
    scores: torch.Tensor,
    images: Sequence[torch.Tensor],
    rate: float,
    total_len: int,
) -> torch.Tensor:
    """Per KV head, the positions it keeps, ascending.

    scores: (Hkv, P) token scores over the prompt.
    images: one (S_j,) long tensor of vision positions (< P) per image.
    total_len: T, tokens in the cache; positions >= P are never vision, so kept.
    returns keep: (Hkv, L) long, L = T - sum_j (S_j - K_j); row h lists the
    positions head h keeps, in increasing order (slot i <- keep[h, i]).
    """
    num_kv_heads = scores.shape[0]
    keep = torch.ones(num_kv_heads, total_len, dtype=torch.bool, device=scores.device)
    for positions in images:
        k = num_kept(rate, positions.numel())
        if k >= positions.numel():
            continue
        top = torch.topk(scores[:, positions], k, dim=-1).indices  # (Hkv, k)
        keep[:, positions] = False
        keep.scatter_(1, positions[top], True)
    return torch.nonzero(keep)[:, 1].view(num_kv_heads, -1)

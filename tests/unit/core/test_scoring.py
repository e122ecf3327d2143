"""Scoring against dense per-head references (no engine)."""

import math

import pytest
import torch

from vllm_plphp.core import scoring


def dense_probs(query, keys, scale):
    """Reference: loop over query heads with repeat_interleave'd GQA keys."""
    num_heads = query.shape[0]
    k = keys.repeat_interleave(num_heads // keys.shape[0], dim=0)  # (H, P, D)
    rows = [torch.softmax((k[h] @ query[h]) * scale, dim=-1) for h in range(num_heads)]
    return torch.stack(rows)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (6, 1)])
def test_last_token_attention_matches_dense(heads, kv_heads):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(heads, 32, generator=g)
    k = torch.randn(kv_heads, 50, 32, generator=g)
    probs = scoring.last_token_attention(q, k, 0.2)
    torch.testing.assert_close(probs, dense_probs(q, k, 0.2))
    torch.testing.assert_close(probs.sum(-1), torch.ones(heads))


def test_vision_score_is_head_mean_of_vision_mass():
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]])
    gamma = scoring.vision_score(probs, torch.tensor([1, 2]))
    assert gamma == pytest.approx((0.5 + 1.0) / 2)
    assert scoring.vision_score(probs, torch.tensor([], dtype=torch.long)) == 0.0


def test_kv_head_scores_mean_and_max():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.8], [0.6, 0.4]])
    torch.testing.assert_close(
        scoring.kv_head_scores(probs, 2, "mean"), torch.tensor([[0.5, 0.5], [0.4, 0.6]])
    )
    torch.testing.assert_close(
        scoring.kv_head_scores(probs, 2, "max"), torch.tensor([[1.0, 1.0], [0.6, 0.8]])
    )


def test_num_kept_floor_with_min_one():
    assert scoring.num_kept(0.7, 10) == 7  # 0.7*10 = 6.999.. in float
    assert scoring.num_kept(0.4, 576) == math.floor(0.4 * 576)
    assert scoring.num_kept(0.1, 3) == 1
    assert scoring.num_kept(1.0, 5) == 5


def dense_select(scores, images, rate, total):
    """Reference: per head, per image, python sort by score then by position."""
    out = []
    for h in range(scores.shape[0]):
        keep = set(range(total))
        for pos in images:
            pos = pos.tolist()
            k = scoring.num_kept(rate, len(pos))
            ranked = sorted(pos, key=lambda p: (-float(scores[h, p]), p))
            keep -= set(ranked[k:])
        out.append(sorted(keep))
    return torch.tensor(out)


@pytest.mark.parametrize("rate", [0.1, 0.4, 0.7, 1.0])
def test_select_kept_matches_dense_with_unequal_images(rate):
    g = torch.Generator().manual_seed(1)
    total, prompt = 70, 64
    scores = torch.rand(3, prompt, generator=g)  # distinct values: no ties
    images = [torch.arange(3, 23), torch.arange(30, 37), torch.arange(40, 60)]
    keep = scoring.select_kept(scores, images, rate, total)
    expected = dense_select(scores, images, rate, total)
    assert torch.equal(keep, expected)
    # every head keeps the same count; non-vision and post-prompt tokens all kept
    removed = sum(len(p) - scoring.num_kept(rate, len(p)) for p in images)
    assert keep.shape == (3, total - removed)
    nonvision = set(range(total)) - set(torch.cat(images).tolist())
    for h in range(3):
        assert nonvision <= set(keep[h].tolist())


def test_heads_keep_different_tokens():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.1, 0.9, 0.3, 0.5]])
    keep = scoring.select_kept(scores, [torch.arange(4)], 0.5, 4)
    assert keep.tolist() == [[0, 2], [1, 3]]

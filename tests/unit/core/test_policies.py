"""Pruning policies (PLPHP, FastV, VTW): selection rules on small tensors, and
the HF reference's FastV / VTW masks against a direct reading of HF's own
eager attention weights (no engine)."""

import math

import pytest
import torch

from vllm_plphp.core import scoring
from vllm_plphp.config import PlphpConfig, PlphpConfigError, from_dict
from vllm_plphp.core.policies import LayerScores, make_policy, mean_retention

# prompt of 14 tokens: text 0-1, image A at 2-6, text 7, image B at 8-12, text 13
IMAGES = [torch.arange(2, 7), torch.arange(8, 13)]
P, HKV, H = 14, 2, 4


def _scores(vision_attn, probs=None):
    if probs is None:
        probs = torch.softmax(torch.randn(H, P, generator=torch.Generator().manual_seed(0)), -1)
    return LayerScores(probs, torch.tensor(vision_attn, dtype=torch.float32), HKV)


def test_fastv_ranks_all_images_together_and_heads_share_the_choice():
    config = PlphpConfig(policy="fastv", k=3, fastv_r=0.5)
    fastv = make_policy(config)
    assert [fastv.scores_layer(l, 8) for l in range(8)] == [l == 2 for l in range(8)]
    assert [fastv.prunes_layer(l, 8) for l in range(8)] == [l >= 3 for l in range(8)]
    # image A far more attended than image B: B loses all but none of A
    attn = [0.9, 0.8, 0.7, 0.6, 0.5, 0.01, 0.02, 0.03, 0.04, 0.05]
    fastv.observe(IMAGES, _scores(attn))
    total = P + 3  # three decoded tokens already in the cache
    choice = fastv.choose(IMAGES, total, HKV)
    kept_vision = math.floor(0.5 * 10)
    assert choice.rate == kept_vision / 10
    expected = [0, 1, 2, 3, 4, 5, 6, 7, 13, 14, 15, 16]
    assert choice.keep.tolist() == [expected] * HKV


def test_fastv_keeps_nothing_at_r1_and_needs_a_scoring_layer():
    config = PlphpConfig(policy="fastv", k=1, fastv_r=1.0)
    fastv = make_policy(config)
    fastv.observe(IMAGES, _scores([0.1] * 10))
    assert fastv.choose(IMAGES, P, HKV).keep.shape == (HKV, P - 10)
    with pytest.raises(PlphpConfigError, match="plphp.k=0"):
        PlphpConfig(policy="fastv", k=0)


def test_vtw_drops_every_vision_token_from_layer_k():
    config = PlphpConfig(policy="vtw", k=5)
    vtw = make_policy(config)
    assert not any(vtw.scores_layer(l, 8) for l in range(8))
    assert [vtw.prunes_layer(l, 8) for l in range(8)] == [l >= 5 for l in range(8)]
    choice = vtw.choose(IMAGES, P + 2, HKV)
    assert choice.rate == 0.0
    assert choice.keep.tolist() == [[0, 1, 7, 13, 14, 15]] * HKV


def test_plphp_policy_is_the_per_head_per_image_rule():
    config = PlphpConfig()
    plphp = make_policy(config)
    probs = torch.softmax(torch.randn(H, P, generator=torch.Generator().manual_seed(1)), -1)
    vision = torch.cat(IMAGES)
    scores = LayerScores(probs, probs[:, vision].mean(0), HKV)
    plphp.observe(IMAGES, scores)
    choice = plphp.choose(IMAGES, P, HKV)
    rate = config.layer_rate(scores.gamma)
    assert choice.rate == rate
    expected = scoring.select_kept(scoring.kv_head_scores(probs, HKV), IMAGES, rate, P)
    assert torch.equal(choice.keep, expected)


def test_per_head_off_ablation_shares_one_ranking_and_keeps_the_counts():
    """per_head=False: every KV head keeps the top K_j of the head-averaged
    attention (the paper's per-head ablation); r_l and the counts are PLPHP's."""
    probs = torch.softmax(4 * torch.randn(H, P, generator=torch.Generator().manual_seed(2)), -1)
    vision = torch.cat(IMAGES)
    scores = LayerScores(probs, probs[:, vision].mean(0), HKV)
    choices = {}
    for per_head in (True, False):
        policy = make_policy(PlphpConfig(per_head=per_head))
        policy.observe(IMAGES, scores)
        choices[per_head] = policy.choose(IMAGES, P + 2, HKV)
    shared, own = choices[False], choices[True]
    assert shared.rate == own.rate and shared.keep.shape == own.keep.shape
    assert torch.equal(shared.keep[0], shared.keep[1])
    assert not torch.equal(own.keep[0], own.keep[1])  # this draw: the heads disagree
    mean = probs.mean(0)
    for img in IMAGES:  # per image, the kept ones are the top K_j of the mean row
        k = scoring.num_kept(own.rate, img.numel())
        top = set(img[torch.topk(mean[img], k).indices].tolist())
        assert set(shared.keep[0].tolist()) & set(img.tolist()) == top
    assert PlphpConfig().per_head is True
    assert from_dict({}, env={"PLPHP_PER_HEAD": "0"}).per_head is False
    with pytest.raises(PlphpConfigError, match="plphp.per_head=1"):
        PlphpConfig(per_head=1)


def test_layer_rule_off_is_delta_r_zero():
    """The uniform-rate ablation: delta_r=0 gives every category the rate r."""
    config = PlphpConfig(r=0.55, delta_r=0.0)
    assert {config.layer_rate(g) for g in (0.0, 0.05, 0.2, 0.9)} == {0.55}


def test_policy_settings_are_validated():
    assert from_dict({"policy": "vtw", "k": 4}, env={}).k == 4
    for values, field in [({"policy": "sparse"}, "plphp.policy='sparse'"),
                          ({"fastv_r": 1.5}, "plphp.fastv_r=1.5"),
                          ({"k": -1}, "plphp.k=-1")]:
        with pytest.raises(PlphpConfigError, match="allowed") as e:
            from_dict(values, env={})
        assert field in str(e.value)


def test_mean_retention_counts_unpruned_layers_as_full():
    assert mean_retention({2: 0.5, 3: 0.0}, 4) == pytest.approx((1 + 1 + 0.5 + 0) / 4)


@pytest.fixture(scope="module")
def reference(llava_path):
    from plphp_dev.reference import ReferenceModel

    return ReferenceModel(llava_path)


def _hf_last_rows(ref, text, images):
    """HF's own eager attention weights of the last prompt token, per layer: (H, P)."""
    inputs = ref.processor(text=[text], images=images, return_tensors="pt")
    ref.model.config.get_text_config()._attn_implementation = "eager"
    try:
        with torch.no_grad():
            out = ref.model(**inputs, output_attentions=True)
    finally:
        from plphp_dev.reference import IMPL_NAME

        ref.model.config.get_text_config()._attn_implementation = IMPL_NAME
    return [a[0, :, -1].float() for a in out.attentions], ref._image_positions(inputs)


@pytest.mark.parametrize("k,fastv_r", [(2, 0.75), (3, 0.5)])
def test_reference_fastv_masks_follow_hf_attention(reference, k, fastv_r):
    from plphp_dev.fixtures.prompts import get_prompt

    text, images = get_prompt("llava", 2, 3)
    rows, image_pos = _hf_last_rows(reference, text, images)
    config = PlphpConfig(policy="fastv", k=k, fastv_r=fastv_r)
    reference.generate(text, images, 2, config)
    masks = reference.last_run.masks
    vision = torch.cat(image_pos)
    # FastV by hand: head-mean of layer k-1's row, top (1-R) of all vision tokens
    ranking = rows[k - 1].mean(0)[vision]
    n_keep = math.floor((1 - fastv_r) * vision.numel() + 1e-6)
    kept = set(vision[torch.topk(ranking, n_keep).indices].tolist())
    expected = torch.ones(rows[0].shape[-1], dtype=torch.bool)
    expected[vision] = False
    expected[sorted(kept)] = True
    assert sorted(masks) == list(range(k, reference.num_layers))
    for layer, mask in masks.items():
        assert all(torch.equal(row, expected) for row in mask), layer


def test_reference_vtw_masks_every_vision_key(reference):
    from plphp_dev.fixtures.prompts import get_prompt

    text, images = get_prompt("llava", 1, 0)
    config = PlphpConfig(policy="vtw", k=4)
    stock, _ = reference.generate(text, images, 6, None)
    tokens, records = reference.generate(text, images, 6, config)
    masks = reference.last_run.masks
    vision = torch.cat(reference.last_run.images)
    assert sorted(masks) == list(range(4, reference.num_layers))
    for mask in masks.values():
        assert not mask[:, vision].any() and mask.sum(-1).tolist() == [
            mask.shape[1] - vision.numel()] * mask.shape[0]
    assert all(r["rate"] == 0.0 for r in records.values())
    assert tokens != stock  # dropping the image from most layers changes the answer

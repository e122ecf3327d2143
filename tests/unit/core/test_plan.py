"""plan_step: which rows prune this step, where their last prompt token and
vision tokens are (plain arrays in, dataclasses out; no engine)."""

import numpy as np
import torch
from vllm.multimodal.inputs import PlaceholderRange

from vllm_plphp.config import PlphpConfig
from vllm_plphp.core.plan import RequestInfo, plan_step, vision_positions


class Feature:
    def __init__(self, offset, length, modality="image", is_embed=None):
        self.modality = modality
        self.mm_position = PlaceholderRange(offset=offset, length=length, is_embed=is_embed)


class Params:
    def __init__(self, extra=None):
        self.extra_args = extra


def test_vision_positions_keep_embeds_only():
    embed = torch.tensor([False, True, True, False])
    items = vision_positions([Feature(3, 4, is_embed=embed), Feature(10, 2), Feature(20, 2, "audio")])
    assert [p.tolist() for p in items] == [[4, 5], [10, 11]]


def test_rows_reaching_their_last_prompt_token():
    requests = {
        "a": RequestInfo(10, [Feature(2, 4)], Params()),        # whole prompt this step
        "b": RequestInfo(20, [Feature(2, 4)], Params()),        # first chunk only
        "c": RequestInfo(8, None, Params()),                    # text only
        "d": RequestInfo(6, [Feature(1, 3)], Params({"plphp": "false"})),  # opted out
        "e": RequestInfo(12, [Feature(0, 4)], Params()),        # last chunk of a chunked prefill
        "f": RequestInfo(5, [Feature(0, 2)], Params()),         # decoding
    }
    ids = list(requests)
    computed = np.array([0, 0, 0, 0, 8, 9])
    scheduled = np.array([10, 6, 8, 6, 4, 1])
    targets, planned, skipped = plan_step(ids, computed, scheduled, requests, PlphpConfig(),
                                          slots=np.array([7, 6, 5, 4, 3, 2]))
    assert [t.req_id for t in targets] == ["a", "e"]
    assert planned == ["a", "d", "e"] and skipped == 1
    a, e = targets
    assert (a.row, a.slot, a.query_index, a.prompt_len, a.total_len) == (0, 7, 9, 10, 10)
    # e's tokens start after a, b, c, d (10+6+8+6): its last prompt token is 3 into its chunk
    assert (e.row, e.slot, e.query_index, e.prompt_len, e.total_len) == (4, 3, 33, 12, 12)
    assert [p.tolist() for p in a.images] == [[2, 3, 4, 5]]


def test_resumed_request_prunes_with_output_tokens_in_cache():
    # after preemption the whole sequence (prompt + 3 outputs) is prefilled again
    requests = {"r": RequestInfo(10, [Feature(2, 4)], Params())}
    targets, _, _ = plan_step(["r"], np.array([0]), np.array([13]), requests, PlphpConfig())
    assert (targets[0].query_index, targets[0].prompt_len, targets[0].total_len) == (9, 10, 13)


def test_per_request_settings_reach_the_target():
    requests = {"r": RequestInfo(10, [Feature(2, 4)], Params({"plphp": {"r": 0.3}}))}
    targets, _, _ = plan_step(["r"], np.array([0]), np.array([10]), requests, PlphpConfig())
    assert targets[0].config.r == 0.3
    assert targets[0].expects_pruning(24)
    assert not targets[0].expects_pruning(3)  # layers 0, 1 and N-1 are never pruned


def test_video_items_are_vision_items_with_their_own_positions():
    """A video is one item (all its frames) next to images; audio is not pruned."""
    embed = torch.tensor([True, True, False, True, True, False])  # timestamps between frames
    requests = {"v": RequestInfo(30, [Feature(2, 3), Feature(8, 6, "video", embed),
                                      Feature(20, 2, "audio")], Params()),
                "w": RequestInfo(12, [Feature(1, 4, "video")], Params())}
    targets, planned, _ = plan_step(["v", "w"], np.array([0, 0]), np.array([30, 12]), requests,
                                    PlphpConfig())
    v, w = targets
    assert [p.tolist() for p in v.images] == [[2, 3, 4], [8, 9, 11, 12]]
    assert (v.num_vision, v.num_video) == (7, 4)
    assert [p.tolist() for p in w.images] == [[1, 2, 3, 4]] and w.num_video == 4
    assert planned == ["v", "w"]

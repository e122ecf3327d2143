"""The scheduler-side never-silent check (plain objects, no engine)."""

from types import SimpleNamespace

import pytest
from vllm.multimodal.inputs import PlaceholderRange

from vllm_plphp.engine.commit import awaiting_first_token, check_first_tokens


def request(req_id, images=True, outputs=0):
    feature = SimpleNamespace(modality="image", mm_position=PlaceholderRange(offset=1, length=4))
    return SimpleNamespace(request_id=req_id, mm_features=[feature] if images else [],
                           num_output_tokens=outputs)


def test_first_token_without_plan_raises():
    scheduler = SimpleNamespace(requests={r.request_id: r for r in (
        request("img"), request("txt", images=False), request("old", outputs=3))})
    waiting = awaiting_first_token(scheduler, SimpleNamespace(req_ids=["img", "txt", "old"]))
    assert [r.request_id for r in waiting] == ["img"]
    check_first_tokens(waiting, {"planned": []})  # no token yet (a prefill chunk): fine
    waiting[0].num_output_tokens = 1
    check_first_tokens(waiting, {"planned": ["img"]})
    with pytest.raises(RuntimeError, match="never planned to prune"):
        check_first_tokens(waiting, None)

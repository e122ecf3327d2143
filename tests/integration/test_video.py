"""Video items are pruned like images, each video budgeted on its own
(K_j = floor(r_l * S_j) over all its frames' tokens), and equal the HF
reference token for token; video tokens show in the metrics.

Qwen2-VL (M-RoPE, 3D patches) with one PLPHP engine for the module; prompts:
one video, an image and a video, and text only, batched together. Qwen2.5-VL
and LLaVA-OneVision video: tests/integration/test_families.py.
"""

import pytest

from tests.conftest import MAX_TOKENS, greedy, make_llm, token_ids
from vllm_plphp.config import PlphpConfig
from vllm_plphp.core import scoring
from plphp_dev.fixtures.videos import av_inputs, get_av_prompt

CASES = [("video",), ("image", "video"), ()]
VIDEO_CASES = [0, 1]


class VideoRun:
    def __init__(self, name, path):
        from plphp_dev.reference import ReferenceModel

        self.name = name
        # disable_log_stats=False: vLLM's stats path on, for llm.get_metrics()
        self.llm = make_llm(path, "plphp", limit_mm_per_prompt={"image": 1, "video": 1},
                            disable_log_stats=False)
        self.ref = ReferenceModel(path)
        outs = self.llm.generate([av_inputs(name, items, 1) for items in CASES], greedy())
        self.tokens = token_ids(outs)
        rpc = self.llm.collective_rpc("plphp_records", args=([o.request_id for o in outs],))[0]
        self.records = [rpc.get(o.request_id) for o in outs]

    def reference(self, case, config):
        text, images, videos = get_av_prompt(self.name, CASES[case], 1)
        return self.ref.generate(text, images, MAX_TOKENS, config, videos=videos)

    def items(self, case):
        text, images, videos = get_av_prompt(self.name, CASES[case], 1)
        kwargs = {"text": [text], "return_tensors": "pt"}
        kwargs.update({"images": images} if images else {})
        kwargs.update({"videos": videos} if videos else {})
        return self.ref._item_positions(self.ref.processor(**kwargs))


@pytest.fixture(scope="module", params=["qwen2_vl"])
def run(request):
    from plphp_dev.fixtures import build_fixture

    r = VideoRun(request.param, build_fixture(request.param, "tiny", progress=False))
    yield r
    r.llm.llm_engine.engine_core.shutdown()


def test_video_prompts_equal_reference(run):
    changed = 0
    for case in range(len(CASES)):
        tokens, records = run.reference(case, PlphpConfig())
        assert run.tokens[case] == tokens, f"case {CASES[case]}"
        if case in VIDEO_CASES:
            assert {l: r["kept"] for l, r in run.records[case].items()} == {
                l: r["kept"] for l, r in records.items()}
            changed += tokens != run.reference(case, None)[0]
        else:
            assert run.records[case] is None and records == {}
    assert changed, "pruning the video changed no output"


def test_each_video_item_has_its_own_budget(run):
    n_layers = run.ref.num_layers
    for case in VIDEO_CASES:
        items = run.items(case)
        assert len(items) == len(CASES[case])
        assert sorted(run.records[case]) == list(range(2, n_layers - 1))
        for rec in run.records[case].values():
            removed = sum(p.numel() - scoring.num_kept(rec["rate"], p.numel()) for p in items)
            assert rec["kept"] == rec["total"] - removed
            assert rec["vision"] == sum(p.numel() for p in items)
            assert rec["vision_kept"] < rec["vision"]


def test_metrics_count_video_tokens(run):
    """Offline too, PLPHP's counters arrive on vLLM's stats path: `llm.get_metrics()`."""
    def value(name):
        return sum(m.value for m in run.llm.get_metrics() if m.name == f"vllm:plphp_{name}")

    n_pruned = run.ref.num_layers - 3
    video = sum(p.numel() for case in VIDEO_CASES
                for p, kind in zip(run.items(case), CASES[case]) if kind == "video")
    assert value("video_tokens_seen") == video * n_pruned
    assert value("vision_tokens_seen") > value("video_tokens_seen")  # the image counts too
    assert value("requests_pruned") == len(VIDEO_CASES)

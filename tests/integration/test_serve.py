"""`vllm serve --attention-backend plphp` through the real `openai` client:
images as data URLs, multi-image messages, streaming and not, per-request
overrides (and HTTP 400 on bad ones), and KV blocks returned after a client
disconnects mid-stream."""

import time

import openai
import pytest

from tests.server import Server, metric_value
from tests.support import gpu_defaults
from plphp_dev.fixtures.prompts import chat_messages


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def server(llava_path, media_dir):
    srv = Server(llava_path, "--allowed-local-media-path", str(media_dir), plphp={})
    yield srv
    srv.stop()


def chat(server, n_images, seed=0, max_tokens=8, **kw):
    return server.client().chat.completions.create(
        model="fixture", messages=chat_messages("llava", n_images, seed=seed),
        max_tokens=max_tokens, temperature=0.0, **kw,
    )


def test_chat_completion_with_image_data_url(server):
    resp = chat(server, 1)
    assert resp.choices[0].message.content
    assert resp.usage.prompt_tokens > 576  # the image's 576 tokens are in the prompt
    assert resp.usage.completion_tokens == 8
    assert "PLPHP attention backend active" in server.logs()


def test_start_up_prints_no_warning_or_error_of_ours(server):
    """vLLM reserves VLLM_* environment names and warns on unknown ones, so
    PLPHP's are PLPHP_*; nothing of PLPHP's logs at WARNING or above when a
    server starts and serves (this server's log, a real start-up)."""
    chat(server, 1)
    lines = server.logs().splitlines()
    unknown = [line for line in lines if "Unknown vLLM environment variable" in line]
    assert not [line for line in unknown if "PLPHP" in line], unknown
    ours = [line for line in lines
            if ("WARNING" in line or "ERROR" in line) and "plphp" in line.lower()]
    assert not ours, ours[:5]
    runner = "Model Runner V2 (async scheduling True" if gpu_defaults.enabled() else \
        "Model Runner V1 (async scheduling False"
    assert f"PLPHP attached to {runner}" in server.logs()


def test_served_tokens_equal_the_reference(server, llava_path):
    """What `vllm serve` returns over HTTP is PLPHP's greedy answer (the
    chat-rendered prompt is the fixture's raw prompt, token for token)."""
    from vllm_plphp.config import PlphpConfig
    from plphp_dev.fixtures.prompts import get_prompt
    from plphp_dev.reference import ReferenceModel

    resp = chat(server, 1, seed=4, max_tokens=10,
                extra_body={"return_token_ids": True, "ignore_eos": True})
    choice = resp.choices[0]
    served = getattr(choice, "token_ids", None) or choice.model_extra["token_ids"]
    text, images = get_prompt("llava", 1, 4)
    expected, _ = ReferenceModel(llava_path).generate(text, images, 10, PlphpConfig())
    assert served == expected


def test_local_file_image_equals_data_url(server, media_dir):
    from plphp_dev.fixtures.prompts import make_image

    path = media_dir / "img.png"
    make_image(2, (336, 336)).save(path)
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"file://{path}"}},
        {"type": "text", "text": "Describe the image in detail."}]}]
    resp = server.client().chat.completions.create(
        model="fixture", messages=messages, max_tokens=8, temperature=0.0)
    assert resp.choices[0].message.content == chat(server, 1, seed=2).choices[0].message.content


def test_two_images_streaming_equals_non_streaming(server):
    full = chat(server, 2, seed=3, max_tokens=10).choices[0].message.content
    stream = chat(server, 2, seed=3, max_tokens=10, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == full


def test_per_request_override_changes_pruning(server):
    pruned = chat(server, 1, seed=5, max_tokens=16).choices[0].message.content
    keep_all = chat(server, 1, seed=5, max_tokens=16,
                    extra_body={"vllm_xargs": {"plphp_r": 1.0, "plphp_delta_r": 0.0}})
    skipped = chat(server, 1, seed=5, max_tokens=16, extra_body={"vllm_xargs": {"plphp": "false"}})
    # keeping everything and skipping pruning are both stock; default pruning differs
    assert keep_all.choices[0].message.content == skipped.choices[0].message.content
    assert pruned != skipped.choices[0].message.content


@pytest.mark.parametrize(
    "xargs,field",
    [({"plphp_r": 1.5}, "plphp.r=1.5"), ({"plphp": '{"bogus": 1}'}, "unknown key"),
     ({"plphp_alpha": 0.05}, "plphp.beta=0.1 must be <= plphp.alpha=0.05")],
)
def test_bad_override_is_http_400_naming_the_field(server, xargs, field):
    with pytest.raises(openai.BadRequestError) as e:
        chat(server, 1, extra_body={"vllm_xargs": xargs})
    assert e.value.status_code == 400
    assert field in str(e.value)
    assert chat(server, 0).choices[0].message.content  # the server is unaffected


def test_bad_override_streaming_is_http_400_and_the_image_still_works(server):
    """Checked before the request is rendered: a streaming request gets a 400
    (not an error event after HTTP 200), and the rejected request's image is
    not left marked as sent in the multimodal cache (the next request with it
    would fail with HTTP 500)."""
    with pytest.raises(openai.BadRequestError) as e:
        chat(server, 1, seed=21, stream=True, extra_body={"vllm_xargs": {"plphp_r": 1.5}})
    assert "plphp.r=1.5" in str(e.value)
    assert chat(server, 1, seed=21).choices[0].message.content


def test_client_disconnect_mid_stream_returns_every_block(server):
    stream = chat(server, 2, seed=7, max_tokens=400, stream=True)
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()  # drop the connection mid-decode
    for _ in range(120):  # poll for up to ~60 s
        text = server.metrics()
        if metric_value(text, "vllm:num_requests_running") == 0:
            break
        time.sleep(0.5)
    assert metric_value(text, "vllm:num_requests_running") == 0
    assert metric_value(text, "vllm:kv_cache_usage_perc") == 0.0


def test_plphp_metrics_on_metrics_endpoint(server):
    before = server.metrics()
    get = lambda text, name: metric_value(text, name) or 0.0
    chat(server, 2, seed=11, max_tokens=4)
    chat(server, 1, seed=12, max_tokens=4, extra_body={"vllm_xargs": {"plphp": "false"}})
    time.sleep(1.0)
    after = server.metrics()
    assert get(after, "vllm:plphp_requests_pruned_total") - get(before, "vllm:plphp_requests_pruned_total") == 1
    assert get(after, "vllm:plphp_requests_skipped_total") - get(before, "vllm:plphp_requests_skipped_total") == 1
    seen = get(after, "vllm:plphp_vision_tokens_seen_total") - get(before, "vllm:plphp_vision_tokens_seen_total")
    kept = get(after, "vllm:plphp_vision_tokens_kept_total") - get(before, "vllm:plphp_vision_tokens_kept_total")
    assert seen == 21 * 2 * 576  # 21 pruned layers x 2 images x 576 tokens
    assert 0 < kept < seen
    assert get(after, "vllm:plphp_kv_blocks_freed_total") > get(before, "vllm:plphp_kv_blocks_freed_total")
    count = get(after, "vllm:plphp_layer_retention_count") - get(before, "vllm:plphp_layer_retention_count")
    assert count == 21

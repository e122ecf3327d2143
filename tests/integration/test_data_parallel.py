"""`vllm serve --attention-backend plphp --data-parallel-size 2` through the
real `openai` client: two engine cores (and, vLLM's default for DP, two API
server processes) both prune; `/metrics` shows each core's counts under its
`engine` label (vLLM's stats path, summed over the two API servers'
multiprocess values).
"""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.server import Server, metric_value
from plphp_dev.fixtures.prompts import chat_messages, get_prompt

IMAGE_REQUESTS = 8
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def server(llava_path):
    srv = Server(llava_path, "--data-parallel-size", "2", plphp={}, kv_bytes=96 << 20,
                 timeout=900)
    yield srv
    srv.stop()


def chat(server, seed):
    return server.client().chat.completions.create(
        model="fixture", messages=chat_messages("llava", 1, seed=seed), max_tokens=MAX_TOKENS,
        temperature=0.0, extra_body={"return_token_ids": True, "ignore_eos": True})


def test_both_cores_prune_and_metrics_sum_them(server, llava_path):
    with ThreadPoolExecutor(IMAGE_REQUESTS) as pool:  # concurrent: both cores get work
        responses = list(pool.map(lambda seed: chat(server, seed), range(IMAGE_REQUESTS)))
    time.sleep(1.0)
    text = server.metrics()
    assert metric_value(text, "vllm:plphp_requests_pruned_total") == IMAGE_REQUESTS
    seen = metric_value(text, "vllm:plphp_vision_tokens_seen_total")
    assert seen == IMAGE_REQUESTS * 21 * 576  # 21 pruned layers x 576 tokens each
    assert 0 < metric_value(text, "vllm:plphp_vision_tokens_kept_total") < seen
    per_core = [metric_value(text, "vllm:plphp_requests_pruned_total",
                             {"model_name": "fixture", "engine": str(i)}) for i in (0, 1)]
    assert sum(per_core) == IMAGE_REQUESTS and min(per_core) > 0, per_core

    # every answer is PLPHP's answer, whichever core served it
    from vllm_plphp.config import PlphpConfig
    from plphp_dev.reference import ReferenceModel

    ref = ReferenceModel(llava_path)
    for seed in (0, IMAGE_REQUESTS - 1):
        choice = responses[seed].choices[0]
        served = getattr(choice, "token_ids", None) or choice.model_extra["token_ids"]
        text_prompt, images = get_prompt("llava", 1, seed)
        assert served == ref.generate(text_prompt, images, MAX_TOKENS, PlphpConfig())[0]

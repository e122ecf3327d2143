"""`vllm serve --attention-backend plphp` answers OpenAI chat completions with
images through the real `openai` client."""

import pytest

from tests.server import Server
from vllm_plphp.fixtures.prompts import chat_messages


@pytest.fixture(scope="module")
def server(llava_path):
    srv = Server(llava_path, plphp={})
    yield srv
    srv.stop()


def test_chat_completion_with_image_data_url(server):
    client = server.client()
    resp = client.chat.completions.create(
        model="fixture",
        messages=chat_messages("llava", 1, seed=0),
        max_tokens=8,
        temperature=0.0,
    )
    assert resp.choices[0].message.content
    assert resp.usage.prompt_tokens > 576  # the image's 576 tokens are in the prompt
    assert resp.usage.completion_tokens == 8
    assert "PLPHP attention backend active" in server.logs()

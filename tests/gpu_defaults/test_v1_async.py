"""Model Runner V1 with async scheduling: what GPU users get when vLLM falls
back to V1 (a feature V2 lacks). Pruning equals the reference and the block
pool stays right under aborts and joins (engines eager: see
tests/gpu_defaults/test_lifecycle.py)."""

import os

import pytest

import tests.conftest
from tests.conftest import greedy, make_llm, token_ids
from tests.integration.test_lifecycle import (  # noqa: F401
    alone,
    roomy,
    test_abort_mid_decode_returns_every_block,
    test_requests_joining_while_others_decode,
)
from vllm_plphp.config import PlphpConfig
from plphp_dev.fixtures.prompts import get_prompt, prompt_inputs


@pytest.fixture(scope="module", autouse=True)
def _v1_runner():
    import vllm.envs

    saved = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    vllm.envs.disable_envs_cache()
    yield
    if saved is None:
        os.environ.pop("VLLM_USE_V2_MODEL_RUNNER", None)
    else:
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = saved


pytestmark = pytest.mark.usefixtures("eager_engines")


def test_v1_async_equals_reference(llava_path):
    from plphp_dev.reference import ReferenceModel

    llm = make_llm(llava_path, "plphp")
    try:
        cases = [(1, 0), (2, 3), (0, 0)]
        ours = token_ids(llm.generate([prompt_inputs("llava", n, s) for n, s in cases], greedy()))
        # (the V1 adapter attaches at the runner's first step)
        assert llm.collective_rpc("plphp_runner")[0] == {
            "runner": "Model Runner V1", "async_scheduling": True, "compiled": False}
    finally:
        llm.llm_engine.engine_core.shutdown()
    ref = ReferenceModel(llava_path)
    for got, (n, seed) in zip(ours, cases):
        text, images = get_prompt("llava", n, seed)
        assert got == ref.generate(text, images, tests.conftest.MAX_TOKENS, PlphpConfig())[0]

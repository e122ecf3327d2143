"""Foundation: `attention_backend="plphp"` is accepted and reaches our classes
in the worker, on the real engine, for 1-image, 2-image and text prompts."""

import pytest

from tests.conftest import greedy, make_inprocess_llm, make_llm, token_ids
from plphp_dev.fixtures.prompts import prompt_inputs

PROMPTS = [("llava", 1, 0), ("llava", 2, 3), ("llava", 0, 0)]


@pytest.fixture(scope="module")
def plphp_llm(llava_path):
    # r=1, delta_r=0: PLPHP keeps everything, so outputs must equal stock.
    llm = make_llm(llava_path, "plphp", {"r": 1.0, "delta_r": 0.0})
    yield llm
    llm.llm_engine.engine_core.shutdown()


def test_plugin_entry_point_is_installed():
    from importlib.metadata import entry_points

    names = {ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert "vllm_plphp:register" in names


def test_worker_runs_plphp_impl_on_every_decoder_layer(plphp_llm):
    impls = plphp_llm.collective_rpc("plphp_attention_impls")[0]
    decoder = {k: v for k, v in impls.items() if "language_model" in k}
    assert len(decoder) == 24
    assert set(decoder.values()) == {"vllm_plphp.worker.backend.PlphpCPUAttentionBackendImpl"}


def test_each_layer_is_its_own_kv_cache_group(plphp_llm):
    groups = plphp_llm.collective_rpc("plphp_kv_cache_groups")[0]
    assert len(groups) == 24 and all(len(g) == 1 for g in groups)


def test_r1_outputs_equal_stock_for_image_and_text_prompts(plphp_llm, llava_path):
    prompts = [prompt_inputs(name, n, seed) for name, n, seed in PROMPTS]
    ours = token_ids(plphp_llm.generate(prompts, greedy()))
    stock_llm = make_inprocess_llm(llava_path)  # engine core here: no second spawn
    try:
        stock = token_ids(stock_llm.generate(prompts, greedy()))
    finally:
        stock_llm.llm_engine.engine_core.shutdown()
    assert ours == stock
    # the requests were really planned for pruning (at r=1 nothing is removed)
    records = plphp_llm.collective_rpc("plphp_records")[0]
    assert len(records) == 2  # the two image prompts; the text prompt is untouched
    for layers in records.values():
        assert sorted(layers) == list(range(2, 23))
        assert all(r["kept"] == r["total"] for r in layers.values())


def test_bad_plphp_value_stops_engine_with_named_field(llava_path):
    from vllm_plphp.config import PlphpConfigError

    with pytest.raises(PlphpConfigError, match=r"plphp\.r=1\.5 .*allowed"):
        make_llm(llava_path, "plphp", {"r": 1.5})

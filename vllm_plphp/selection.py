"""Which stock attention backend PLPHP wraps (runs in every process).

The `backend` setting (`{"plphp": {"backend": ...}}`, env `PLPHP_BACKEND`):
- "auto" (default): the backend vLLM itself would pick for the model on this
  platform, asked of the platform's own selection (`get_attn_backend_cls` with
  no backend selected): CPU_ATTN on CPU; on CUDA FLASH_ATTN where it runs,
  else what vLLM falls back to (TRITON_ATTN for float32, for instance).
- a stock name: "CPU_ATTN", "FLASH_ATTN" or "TRITON_ATTN"; the platform still
  validates it for the model (head size, dtype, block size), as it would for
  `--attention-backend NAME`.
A backend PLPHP cannot wrap, picked by the platform or named, is refused with
the reason and how to pick a supported one (`check`).
"""

from __future__ import annotations

from vllm_plphp.config import PlphpConfigError

SUPPORTED = ("CPU_ATTN", "FLASH_ATTN", "TRITON_ATTN")
REFUSED = {
    "FLASHINFER": "FlashInfer plans its paged decode (paged_kv_indptr, page indices, "
                  "last_page_len) from host-side lengths that PLPHP does not shorten "
                  "per layer, so decode would read pruned slots",
}


class PlphpBackendError(PlphpConfigError):
    """The attention backend PLPHP would wrap is not supported."""


def check(name: str, how: str) -> str:
    """`name` if PLPHP wraps it, else raise naming it, why, and what works."""
    if name in SUPPORTED:
        return name
    why = REFUSED.get(name, "PLPHP reads and compacts the KV layouts of "
                            f"{', '.join(SUPPORTED)} only")
    raise PlphpBackendError(
        f"--attention-backend plphp cannot wrap the {name} attention backend ({how}): {why}. "
        'Name a supported one with --additional-config \'{"plphp": {"backend": "TRITON_ATTN"}}\' '
        f"(supported: {', '.join(SUPPORTED)}; FLASH_ATTN needs fp16/bf16)")


def name_of_path(path: str) -> str:
    """The AttentionBackendEnum name whose class path is `path` (else `path`)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    for member in AttentionBackendEnum:
        try:
            if member.get_path() == path:
                return member.name
        except Exception:  # a member whose path cannot be read
            continue
    return path


def platform_selector():
    """The platform's own `get_attn_backend_cls` (before PLPHP's patch), bound."""
    from vllm.platforms import current_platform

    from vllm_plphp.patches import ORIGINALS, _key

    owner = selector_owner(type(current_platform))
    saved = ORIGINALS.get(_key(owner, "get_attn_backend_cls"))
    raw = saved[2] if saved is not None else vars(owner)["get_attn_backend_cls"]
    return raw.__get__(None, type(current_platform))


def selector_owner(platform_cls) -> type:
    """The class in `platform_cls`'s MRO that defines get_attn_backend_cls."""
    return next(c for c in platform_cls.__mro__ if "get_attn_backend_cls" in vars(c))


def pick(setting: str, selector_config, num_heads=None) -> str:
    """The stock backend to wrap for this setting and layer kind (checked)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    selected = None if setting == "auto" else AttentionBackendEnum[setting]
    path = platform_selector()(selected, selector_config, num_heads)
    name = name_of_path(path)
    if setting == "auto":
        return check(name, "vLLM's pick on this platform")
    if name != setting:
        from vllm.platforms import current_platform

        raise PlphpBackendError(
            f"plphp.backend={setting!r}: the {current_platform.device_name} platform does not "
            f"run {setting} for this model (it chose {name}); use plphp.backend 'auto'")
    return check(name, "plphp.backend")


def model_selector_config(vllm_config):
    """An AttentionSelectorConfig for the model's decoder layers, as the
    worker's Attention layers will ask (for start-up checks)."""
    from vllm.v1.attention.selector import AttentionSelectorConfig

    model, cache = vllm_config.model_config, vllm_config.cache_config
    return AttentionSelectorConfig(
        head_size=model.get_head_size(),
        dtype=model.dtype,
        kv_cache_dtype=cache.cache_dtype,
        block_size=cache.block_size if cache.user_specified_block_size else None,
        use_mla=model.use_mla,
    )


def wrapped_backend(vllm_config) -> str:
    """The name of the stock backend this engine's PLPHP wraps."""
    from vllm.config import set_current_vllm_config

    from vllm_plphp.config import from_vllm_config

    setting = from_vllm_config(vllm_config).backend
    with set_current_vllm_config(vllm_config):
        return pick(setting, model_selector_config(vllm_config))

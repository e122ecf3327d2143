"""vllm-plphp: PLPHP vision-token pruning for vLLM.

`register()` is the `vllm.general_plugins` entry point. vLLM calls it in every
process (API server, engine core, workers), possibly several times, so it is
idempotent. It registers the `PLPHP` attention backend name and applies the
patches in `vllm_plphp.patches` (each documented there, indexed in
vllm_plphp/patches/README.md).

With a vLLM it was not checked against, it patches nothing (stock engines keep
working; vLLM calls plugins unguarded, so raising here would break every
`vllm serve`), logs one line, and registers `PLPHP` as a backend that fails on
use with the supported versions in the message.
"""

from __future__ import annotations

import logging

SUPPORTED_VLLM = ("0.32.",)
BACKEND_NAME = "PLPHP"
BACKEND_PATH = "vllm_plphp.worker.backend.PlphpAttentionBackend"
UNSUPPORTED_PATH = "vllm_plphp.unsupported.PlphpAttentionBackend"

logger = logging.getLogger("vllm_plphp")
_registered = False


def backend_member():
    """The `AttentionBackendEnum.PLPHP` member, registering it if needed."""
    register()
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    return AttentionBackendEnum[BACKEND_NAME]


def version_supported(version: str) -> bool:
    return version.startswith(SUPPORTED_VLLM)


def register() -> None:
    """Register the PLPHP attention backend with vLLM (idempotent)."""
    global _registered
    if _registered:
        return
    _registered = True
    import vllm

    if not version_supported(vllm.__version__):
        logger.warning(
            "vllm-plphp supports vLLM %sx, found %s: the plugin is inactive "
            "(--attention-backend plphp will fail)", SUPPORTED_VLLM[0], vllm.__version__)
        try:
            from vllm_plphp.unsupported import install_guard

            _register_name(UNSUPPORTED_PATH)
            install_guard()
        except Exception:  # a vLLM whose registry changed: leave it untouched
            pass
        return
    _register_name(BACKEND_PATH)

    from vllm_plphp.patches import apply_patches

    apply_patches()


def _register_name(path: str) -> None:
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    if BACKEND_NAME not in AttentionBackendEnum._member_map_:
        member = AttentionBackendEnum.register(BACKEND_NAME, path)
        # The engine config (holding this member) is unpickled in the engine
        # core before plugins load there; an enum pickles as Enum(value), which
        # would fail. Pickle it as a call that registers first.
        member.__reduce_ex__ = lambda protocol: (backend_member, ())

"""vllm-plphp: PLPHP vision-token pruning for vLLM.

`register()` is the `vllm.general_plugins` entry point. vLLM calls it in every
process (API server, engine core, workers), possibly several times, so it is
idempotent. It registers the `PLPHP` attention backend name and applies the
patches in `vllm_plphp.patches` (each documented there).
"""

from __future__ import annotations

import logging

SUPPORTED_VLLM = ("0.32.",)
BACKEND_NAME = "PLPHP"
BACKEND_PATH = "vllm_plphp.backend.PlphpAttentionBackend"

logger = logging.getLogger("vllm_plphp")
_registered = False


def backend_member():
    """The `AttentionBackendEnum.PLPHP` member, registering it if needed."""
    register()
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    return AttentionBackendEnum[BACKEND_NAME]


def register() -> None:
    """Register the PLPHP attention backend with vLLM (idempotent)."""
    global _registered
    if _registered:
        return
    import vllm

    if not vllm.__version__.startswith(SUPPORTED_VLLM):
        raise RuntimeError(
            f"vllm-plphp supports vLLM {SUPPORTED_VLLM[0]}x, found {vllm.__version__}"
        )
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    if BACKEND_NAME not in AttentionBackendEnum._member_map_:
        member = AttentionBackendEnum.register(BACKEND_NAME, BACKEND_PATH)
        # The engine config (holding this member) is unpickled in the engine
        # core before plugins load there; an enum pickles as Enum(value), which
        # would fail. Pickle it as a call that registers first.
        member.__reduce_ex__ = lambda protocol: (backend_member, ())

    from vllm_plphp.metrics import register_collector
    from vllm_plphp.patches import apply_patches

    apply_patches()
    # fixes the stats file path in the environment before the engine core is
    # spawned, and exposes it on this process's /metrics (the API server's)
    register_collector()
    _registered = True

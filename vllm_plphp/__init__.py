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
        AttentionBackendEnum.register(BACKEND_NAME, BACKEND_PATH)

    from vllm_plphp.patches import apply_patches

    apply_patches()
    _registered = True

"""vllm-plphp on a vLLM version it was not checked against: stock engines run
untouched, and selecting `--attention-backend plphp` fails naming the
supported versions (at config time, and if that is bypassed, when vLLM loads
the backend class).

The one patch applied then (`install_guard`), outside vllm_plphp/patches/
because none of those is applied on an unknown vLLM:
Target: vllm.engine.arg_utils.EngineArgs.create_engine_config
Why: on CPU vLLM ignores an unknown backend name and would run stock attention
while the user asked for PLPHP; refuse instead, naming the supported versions.
How: a wrapper that raises when the attention backend is PLPHP and otherwise
calls the original (which it keeps); nothing else changes.
vLLM versions checked: 0.32.0 (faked as 0.33.0 in tests/unit/test_register.py).
Remove when: the plugin supports the installed vLLM (then it is never applied)."""

from __future__ import annotations


def message() -> str:
    import vllm

    from vllm_plphp import SUPPORTED_VLLM

    return (f"--attention-backend plphp: vllm-plphp supports vLLM {SUPPORTED_VLLM[0]}x, "
            f"found {vllm.__version__}. Install a supported vLLM, or a vllm-plphp "
            "release for your vLLM.")


def install_guard() -> None:
    """Wrap EngineArgs.create_engine_config to refuse PLPHP (nothing else changes)."""
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_engine_config
    if getattr(original, "_plphp_guard", False):
        return

    def create_engine_config(self, *args, **kwargs):
        backend = getattr(self, "attention_backend", None)
        if backend is not None and str(getattr(backend, "name", backend)).upper() == "PLPHP":
            raise RuntimeError(message())
        return original(self, *args, **kwargs)

    create_engine_config._plphp_guard = True
    EngineArgs.create_engine_config = create_engine_config


def __getattr__(name: str):
    if name == "PlphpAttentionBackend":
        raise RuntimeError(message())
    raise AttributeError(name)

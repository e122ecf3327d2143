"""Every vLLM monkeypatch of vllm-plphp, applied in one ordered function.

Each module patches one vLLM module and starts with a header: target, why,
how, vLLM versions checked, how to remove. Originals are kept in ORIGINALS
(keyed "module.Class.attr") so a patch can be undone (`revert_patches`).
A patch only changes behaviour when `--attention-backend plphp` is selected,
so stock engines started in the same process keep stock behaviour.
"""

from __future__ import annotations

import importlib

ORIGINALS: dict[str, tuple[object, str, object]] = {}

# Order matters only for readability: none of them depends on another.
PATCH_MODULES = (
    "vllm_plphp.patches.platforms_select",
    "vllm_plphp.patches.engine_arg_utils",
    "vllm_plphp.patches.v1_engine_input_processor",
    "vllm_plphp.patches.entrypoints_serve_engine_serving",
    "vllm_plphp.patches.v1_core_kv_cache_utils",
    "vllm_plphp.patches.v1_worker_block_table",
    "vllm_plphp.patches.v1_worker_gpu_model_runner",
    "vllm_plphp.patches.v1_worker_gpu_input_batch",
    "vllm_plphp.patches.v1_worker_gpu_model_runner_v2",
    "vllm_plphp.patches.v1_core_sched_scheduler",
    "vllm_plphp.patches.v1_core_kv_cache_manager",
    "vllm_plphp.patches.v1_metrics_stats",
    "vllm_plphp.patches.v1_engine_llm_engine",
)


def _key(owner, attr: str) -> str:
    return f"{getattr(owner, '__module__', '')}.{getattr(owner, '__qualname__', owner)}.{attr}"


def patch(owner, attr: str, new) -> None:
    """Replace owner.attr with new, remembering the original once."""
    key = _key(owner, attr)
    if key not in ORIGINALS:
        # the raw attribute (a classmethod stays a classmethod object)
        ORIGINALS[key] = (owner, attr, vars(owner).get(attr, getattr(owner, attr)))
    setattr(owner, attr, new)


def original(owner, attr: str):
    return ORIGINALS[_key(owner, attr)][2]


def apply_patches() -> None:
    for name in PATCH_MODULES:
        importlib.import_module(name).apply()


def revert_patches() -> None:
    for owner, attr, value in ORIGINALS.values():
        setattr(owner, attr, value)
    ORIGINALS.clear()
    for name in PATCH_MODULES:  # patches that add rather than replace
        revert = getattr(importlib.import_module(name), "revert", None)
        if revert is not None:
            revert()


def plphp_selected(vllm_config) -> bool:
    """Whether this engine runs with --attention-backend plphp."""
    backend = getattr(getattr(vllm_config, "attention_config", None), "backend", None)
    return backend is not None and getattr(backend, "name", str(backend)).upper() == "PLPHP"

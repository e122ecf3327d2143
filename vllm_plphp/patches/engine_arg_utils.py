"""Target: vllm.engine.arg_utils.EngineArgs.create_engine_config

Why: PLPHP must fail fast, in the process the user started (`LLM(...)`,
`vllm serve`), on a bad `plphp` setting or an unsupported combination, rather
than deep inside the engine core.
How: build the config with the original (vLLM's defaults kept, prefix
caching included: vllm_plphp/engine/block_manager.py says what is shared;
on CPU a 32-token KV block unless --block-size is given:
vllm_plphp/frontend/defaults.py says why); when the attention backend is
PLPHP, validate the `plphp` section and the
unsupported features, and clear vLLM's per-process backend choice (it does not
see plphp.backend).
vLLM versions checked: 0.32.0.
Remove when: never as such; the checks would move to a config hook if vLLM
offered one to attention backends.
"""

from vllm.engine.arg_utils import EngineArgs

from vllm_plphp.patches import original, patch, plphp_selected
from vllm_plphp.frontend.validate import validate_engine_config
from vllm_plphp.frontend.defaults import choose_block_size


def _selected(args: EngineArgs) -> bool:
    backend = args.attention_backend
    if backend is None and isinstance(args.attention_config, dict):
        backend = args.attention_config.get("backend")
    elif backend is None and args.attention_config is not None:
        backend = getattr(args.attention_config, "backend", None)
    return backend is not None and str(getattr(backend, "name", backend)).upper() == "PLPHP"


def _create_engine_config(self, *args, **kwargs):
    if _selected(self):
        choose_block_size(self)  # PLPHP's CPU default when --block-size is not given
    vllm_config = original(EngineArgs, "create_engine_config")(self, *args, **kwargs)
    if plphp_selected(vllm_config):
        validate_engine_config(vllm_config)
        # vLLM caches each layer kind's backend per process, keyed without
        # additional_config: a second PLPHP engine in this process (worker
        # in-process) with another plphp.backend must not reuse the first's
        from vllm.v1.attention.selector import _cached_get_attn_backend

        _cached_get_attn_backend.cache_clear()
    return vllm_config


def apply() -> None:
    patch(EngineArgs, "create_engine_config", _create_engine_config)

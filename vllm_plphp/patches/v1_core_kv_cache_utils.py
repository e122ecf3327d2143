"""Target: vllm.v1.core.kv_cache_utils.get_kv_cache_groups

Why: PLPHP keeps a different number of tokens in each layer, so each layer
needs its own block table (its own KV cache group) drawing from the one shared
block pool. vLLM puts all layers of a uniform model in one group.
How: when the attention backend is PLPHP, return one KVCacheGroupSpec per
attention layer, each with a `PlphpAttentionSpec` (registered with vLLM's
KVCacheSpecRegistry to `PlphpLayerManager`, which frees pruned tail blocks),
every layer included (a block is as wide as the widest
group's page, so mixing a multi-layer group in would waste memory). Called in
both the engine core (scheduler) and the worker's model runner; both resolve
the module global at call time, so patching the module attribute reaches both.
vLLM versions checked: 0.32.0 (checked: stock outputs unchanged token for
token with one group per layer, see tests/integration/test_backend_selected.py).
Remove when: vLLM lets a KV cache spec ask for its own group.
"""

from vllm.v1.core import kv_cache_utils
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheGroupSpec

from vllm_plphp.engine.block_manager import register_spec, to_plphp_spec
from vllm_plphp.patches import original, patch, plphp_selected


def _get_kv_cache_groups(vllm_config, kv_cache_spec):
    if not plphp_selected(vllm_config):
        return original(kv_cache_utils, "get_kv_cache_groups")(vllm_config, kv_cache_spec)
    register_spec(vllm_config)
    others = sorted(
        name for name, spec in kv_cache_spec.items() if not isinstance(spec, FullAttentionSpec)
        or spec.sliding_window is not None or spec.attention_chunk_size is not None
    )
    if others:
        raise NotImplementedError(
            "--attention-backend plphp supports models whose decoder layers all use "
            f"full attention; these layers do not: {others[:4]}"
        )
    return [KVCacheGroupSpec([name], to_plphp_spec(spec)) for name, spec in kv_cache_spec.items()]


def apply() -> None:
    patch(kv_cache_utils, "get_kv_cache_groups", _get_kv_cache_groups)

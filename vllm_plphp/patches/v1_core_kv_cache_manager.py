"""Target: vllm.v1.core.kv_cache_manager.KVCacheManager.get_computed_blocks

Why: a request that takes a prefix-cache hit through its image shares the
image's blocks with the cache, so in the step that prunes it needs private
copies of them (it must never compact shared blocks in place). Under memory
pressure those copies might not be there; then the request must recompute its
image instead, so that its blocks are its own.
How: after the original, `vllm_plphp.engine.cache_copies.limit_hit` keeps the
hit only while the pool has room for the request's rest of prompt, its copies
and a block per running request and layer; otherwise it stops the hit at the
block holding the first vision token. Engines without PLPHP, text-only
requests and hits before the image are untouched.
vLLM versions checked: 0.32.0.
Remove when: vLLM lets a KV cache manager reserve copy-on-write blocks with a
request's cache hit.
"""

from vllm.v1.core.kv_cache_manager import KVCacheManager

from vllm_plphp.engine.cache_copies import limit_hit
from vllm_plphp.patches import original, patch


def _get_computed_blocks(self, request, *args, **kwargs):
    blocks, num_computed, *rest = original(KVCacheManager, "get_computed_blocks")(
        self, request, *args, **kwargs)
    scheduler = getattr(self, "plphp_scheduler", None)  # set by the scheduler patch
    if scheduler is not None and num_computed:
        blocks, num_computed = limit_hit(scheduler, request, blocks, num_computed)
    return (blocks, num_computed, *rest)


def apply() -> None:
    patch(KVCacheManager, "get_computed_blocks", _get_computed_blocks)

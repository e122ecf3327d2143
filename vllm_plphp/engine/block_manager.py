"""Scheduler-side block accounting for one pruned layer (plain Python).

Every attention layer is its own KV cache group with a `PlphpAttentionSpec`
(a FullAttentionSpec in all but type); vLLM's KV cache spec registry maps it
to `PlphpLayerManager`. After a request's layer is pruned, the manager needs
blocks only for `num_tokens - num_pruned` entries: `prune()` returns the tail
blocks to the shared pool, and later allocations count compacted lengths, so
admission, preemption and `vllm:kv_cache_usage_perc` all see the real usage.

Prefix caching: an image request's blocks from the one holding its first
vision token on are never cached (`cache_blocks`), in every layer: in pruned
layers their content changes in place at compaction, so no other request may
ever be handed them; they stay private and go back to the pool uncached. The
blocks wholly before the first vision token (system prompt, chat template) are
the same as stock and are cached and shared as stock caches them; text-only
requests are cached exactly as stock. A cache hit therefore never reaches a
block that `prune` frees or the worker compacts.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
from vllm.v1.kv_cache_interface import FullAttentionSpec

from vllm_plphp.core.blocks import kept_blocks
from vllm_plphp.core.plan import first_vision_offset


@dataclass(frozen=True, kw_only=True)
class PlphpAttentionSpec(FullAttentionSpec):
    """Full attention whose per-request length may shrink once (after prefill)."""


class PlphpLayerManager(FullAttentionManager):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_pruned: dict[str, int] = {}

    def get_num_blocks_to_allocate(self, request_id, num_tokens, *args, **kwargs) -> int:
        pruned = self.num_pruned.get(request_id, 0)
        return super().get_num_blocks_to_allocate(request_id, num_tokens - pruned, *args, **kwargs)

    def allocate_new_blocks(self, request_id, num_tokens, num_tokens_main_model):
        pruned = self.num_pruned.get(request_id, 0)
        return super().allocate_new_blocks(
            request_id, num_tokens - pruned, num_tokens_main_model - pruned
        )

    def cache_blocks(self, request, num_tokens: int, *args, **kwargs) -> None:
        """Cache as stock, but never an image request's blocks from its first
        vision token's block on (their content is the request's own once pruned)."""
        first = first_vision_offset(request.mm_features)
        if first is not None:
            num_tokens = min(num_tokens, first // self.block_size * self.block_size)
        super().cache_blocks(request, num_tokens, *args, **kwargs)

    def pop_blocks_for_free(self, request_id):
        self.num_pruned.pop(request_id, None)
        return super().pop_blocks_for_free(request_id)

    def can_prune(self, request_id: str) -> bool:
        return request_id in self.req_to_blocks

    def prune(self, request_id: str, num_pruned: int, num_tokens: int) -> int:
        """The worker removed `num_pruned` of the request's first `num_tokens`
        entries of this layer: free the blocks of those first entries it no
        longer needs (`kept_blocks`; blocks allocated after them stay, as on
        the worker). Returns the number of blocks freed."""
        blocks = self.req_to_blocks.get(request_id)
        self.num_pruned[request_id] = num_pruned
        if not blocks:
            return 0
        keep, first = kept_blocks(num_tokens, num_pruned, self.block_size)
        tail = blocks[keep:first]
        del blocks[keep:first]
        self.block_pool.free_blocks(reversed(tail))
        return len(tail)


def register_spec(vllm_config=None) -> None:
    """Register spec -> manager with vLLM's registry (idempotent)."""
    from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry, _REGISTRY_KVCACHESPEC_LIST

    KVCacheSpecRegistry._ensure_registered(vllm_config)
    if PlphpAttentionSpec not in _REGISTRY_KVCACHESPEC_LIST:
        KVCacheSpecRegistry.register(
            PlphpAttentionSpec, PlphpLayerManager, uniform_type_base_spec=FullAttentionSpec
        )


def to_plphp_spec(spec: FullAttentionSpec) -> PlphpAttentionSpec:
    from dataclasses import fields

    return PlphpAttentionSpec(**{f.name: getattr(spec, f.name) for f in fields(spec) if f.init})

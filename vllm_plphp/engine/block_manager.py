"""Scheduler-side block accounting for one pruned layer (plain Python).

Every attention layer is its own KV cache group with a `PlphpAttentionSpec`
(a FullAttentionSpec in all but type); vLLM's KV cache spec registry maps it
to `PlphpLayerManager`. After a request's layer is pruned, the manager needs
blocks only for `num_tokens - num_pruned` entries: `prune()` returns the tail
blocks to the shared pool, and later allocations count compacted lengths, so
admission, preemption and `vllm:kv_cache_usage_perc` all see the real usage.

Prefix caching (multi-turn chat keeps its cache; `vllm_plphp.engine.cache_copies`
decides per request): every prompt token's KV is computed before pruning, so
a prompt's full blocks are exactly what stock vLLM caches. In a layer the
request's policy prunes, the blocks from the one holding its first vision
token on (the region) are not hashed when scheduled. In the step that prunes,
the request moves onto private copies of the region's blocks (`copy_region`,
allocated by the scheduler; the worker copies the pages, then compacts the
copies), and when that step's prune event arrives, `prune()` puts the copies
into the request's block list and hands the original blocks back to the pool
hashed, as evictable cached blocks, like a finished request's. Without room
for the copies the request compacts its own blocks in place and the region is
never hashed. Blocks written after pruning (generated tokens) are never hashed,
in any layer. Text-only and opted-out requests are cached exactly as stock.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
from vllm.v1.kv_cache_interface import FullAttentionSpec

from vllm_plphp.core.blocks import kept_blocks


@dataclass(frozen=True, kw_only=True)
class PlphpAttentionSpec(FullAttentionSpec):
    """Full attention whose per-request length may shrink once (after prefill)."""


@dataclass
class RegionCopy:
    """Private copies of a request's region blocks [start, start + len(blocks))."""

    start: int  # block index of the first vision token
    blocks: list  # KVCacheBlock, allocated for the request (ref_cnt 1)


class PlphpLayerManager(FullAttentionManager):
    # decoder layer index of this group (set by `vllm_plphp.engine.cache_copies`)
    layer_index: int = -1

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_pruned: dict[str, int] = {}
        self.copies: dict[str, RegionCopy] = {}

    def get_num_blocks_to_allocate(self, request_id, num_tokens, *args, **kwargs) -> int:
        pruned = self.num_pruned.get(request_id, 0)
        return super().get_num_blocks_to_allocate(request_id, num_tokens - pruned, *args, **kwargs)

    def allocate_new_blocks(self, request_id, num_tokens, num_tokens_main_model):
        pruned = self.num_pruned.get(request_id, 0)
        return super().allocate_new_blocks(
            request_id, num_tokens - pruned, num_tokens_main_model - pruned
        )

    def cache_blocks(self, request, num_tokens: int, *args, **kwargs) -> None:
        """Cache as stock, except for a request PLPHP prunes: never past its
        prompt (later tokens were computed over pruned caches), and in a layer
        its policy prunes not from its first vision token's block on (hashed
        at the prune event, on the originals, or never)."""
        plan = getattr(request, "plphp", None)  # vllm_plphp.engine.cache_copies.RequestPlan
        if plan is not None:
            num_tokens = min(num_tokens, request.num_prompt_tokens)
            if plan.prunes(self.layer_index):
                num_tokens = min(num_tokens, plan.start * self.block_size)
        super().cache_blocks(request, num_tokens, *args, **kwargs)

    def copy_region(self, request_id: str, start: int, count: int) -> RegionCopy:
        """Allocate `count` private blocks for the request's region (the caller
        checked there is room)."""
        copy = RegionCopy(start, self.block_pool.get_new_blocks(count))
        self.copies[request_id] = copy
        return copy

    def drop_copy(self, request_id: str) -> None:
        copy = self.copies.pop(request_id, None)
        if copy is not None:
            self.block_pool.free_blocks(reversed(copy.blocks))

    def pop_blocks_for_free(self, request_id):
        self.num_pruned.pop(request_id, None)
        self.drop_copy(request_id)
        return super().pop_blocks_for_free(request_id)

    def can_prune(self, request_id: str) -> bool:
        return request_id in self.req_to_blocks

    def prune(self, request_id: str, num_pruned: int, num_tokens: int, request=None) -> int:
        """The worker removed `num_pruned` of the request's first `num_tokens`
        entries of this layer: free the blocks of those first entries it no
        longer needs (`kept_blocks`; blocks allocated after them stay, as on
        the worker). With a region copy, the copies take the originals' place
        first and the originals go back to the pool, their full prompt blocks
        hashed (`request` gives the hashes). Returns the number of blocks freed."""
        blocks = self.req_to_blocks.get(request_id)
        self.num_pruned[request_id] = num_pruned
        if not blocks:
            self.drop_copy(request_id)
            return 0
        copy = self.copies.pop(request_id, None)
        originals = []
        if copy is not None:
            end = copy.start + len(copy.blocks)
            originals = blocks[copy.start:end]
            if request is not None:
                self._cache_originals(request, blocks)
            blocks[copy.start:end] = copy.blocks
        keep, first = kept_blocks(num_tokens, num_pruned, self.block_size)
        tail = blocks[keep:first]
        del blocks[keep:first]
        self.block_pool.free_blocks(reversed(originals))
        self.block_pool.free_blocks(reversed(tail))
        return len(tail)

    def _cache_originals(self, request, blocks) -> None:
        """Hash the request's full prompt blocks not hashed yet (the region),
        while `blocks` still holds the originals."""
        num_cached = self.num_cached_block.get(request.request_id, 0)
        num_full = min(request.num_prompt_tokens // self.block_size, len(blocks))
        if num_cached < num_full:
            self.block_pool.cache_full_blocks(
                request=request, blocks=blocks, num_cached_blocks=num_cached,
                num_full_blocks=num_full, block_size=self.block_size,
                kv_cache_group_id=self.kv_cache_group_id)
        # the copies that take the originals' place are the request's own:
        # never hashed (cache_blocks stops at the region)
        self.num_cached_block[request.request_id] = max(num_cached, num_full)


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

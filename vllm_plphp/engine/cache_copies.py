"""Scheduler side of multi-turn prefix caching with PLPHP (engine core).

Every prompt token's KV is computed before pruning, so a request's full prompt
blocks are exactly what stock vLLM caches. So that they stay cached while the
request decodes on its pruned cache, the scheduler gives the request, in the
step that prunes it, private copies of its region blocks (from the block
holding its first vision token on, in each layer its policy prunes). The
worker copies those pages and compacts the copies (`vllm_plphp.core.prune`);
at that step's prune event the copies replace the originals in the request's
block lists and the originals go back to the pool hashed
(`PlphpLayerManager.prune`). A later request sharing the prompt (turn 2, or a
new chat about the same picture) hits the cache through the image, and prunes
its own copy.

- `plan_request`: when a request arrives, what the managers need to know
  (`request.plphp`): its region's first block, which layers its policy prunes,
  how many entries pruning removes at least.
- `plan_copies`: after vLLM's schedule, for every request whose prompt ends
  in this step, all of its copies or none: allocated only if the pool keeps a
  block per running request and layer free afterwards (so a copy never makes
  vLLM preempt a request). Without room the request compacts in place and its
  region is not cached (counted, logged once). A region holding blocks shared
  through the cache (a hit) must not be compacted in place: its copies are
  then taken whenever the pool has them at all, reserve or not.
- `limit_hit`: so that such a request always finds them, a cache hit through
  the image is taken only while the pool has room for the request's rest of
  prompt, its copies and the reserve; under pressure the hit stops at the
  image and the request recomputes it (its region is then its own). Only if
  the pool cannot give the copies at the prompt's end after all does the
  request decode unpruned (counted; never seen in the soak).
  The step's copies go to the worker on the SchedulerOutput (`plphp_copies`:
  req_id -> (first region block, {group: [block ids]}), or None: do not prune).
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_plphp.config import from_vllm_config
from vllm_plphp.core.blocks import cdiv
from vllm_plphp.core.plan import first_vision_offset, vision_positions
from vllm_plphp.core.policies import make_policy
from vllm_plphp.core.scoring import num_kept
from vllm_plphp.log import logger
from vllm_plphp.request_config import config_for_request


@dataclass(frozen=True)
class RequestPlan:
    start: int  # block index holding the first vision token
    # decoder layers the request's policy prunes; None: treat every layer as
    # pruned and make no copies (pipeline parallelism: a KV cache group there
    # spans one layer of each stage, so its region is cached in no layer)
    pruned_layers: frozenset | None
    removed_min: int  # entries pruning removes from every pruned layer, at least

    def prunes(self, layer_index: int) -> bool:
        return self.pruned_layers is None or layer_index in self.pruned_layers


def min_removed(config, sizes: list[int]) -> int:
    """A lower bound of the entries removed per pruned layer (0 when unknown)."""
    if config.policy == "plphp":
        rate = min(1.0, config.r + config.delta_r)
        return sum(max(0, s - num_kept(rate, s) - 1) for s in sizes)  # -1: float slack
    if config.policy == "vtw":
        return sum(sizes)
    return 0


def plan_request(scheduler, request) -> RequestPlan | None:
    first = first_vision_offset(request.mm_features)
    if first is None:
        return None
    try:
        config = config_for_request(_base_config(scheduler), request.sampling_params)
    except ValueError:  # the front end refuses these; the worker skips them
        return None
    if config is None:
        return None
    num_layers = scheduler.vllm_config.model_config.hf_text_config.num_hidden_layers
    policy = make_policy(config)
    layers = frozenset(l for l in range(num_layers) if policy.prunes_layer(l, num_layers))
    if not layers:
        return None
    sizes = [int(p.numel()) for p in vision_positions(request.mm_features)]
    if scheduler.vllm_config.parallel_config.pipeline_parallel_size > 1:
        layers = None
    return RequestPlan(first // _managers(scheduler)[0].block_size, layers,
                       min_removed(config, sizes))


def _base_config(scheduler):
    base = getattr(scheduler, "_plphp_config", None)
    if base is None:
        base = scheduler._plphp_config = from_vllm_config(scheduler.vllm_config)
    return base


def _managers(scheduler) -> list:
    managers = scheduler.kv_cache_manager.coordinator.single_type_managers
    if managers and getattr(managers[0], "layer_index", -1) == -1:
        from vllm.model_executor.models.utils import extract_layer_index

        groups = scheduler.kv_cache_config.kv_cache_groups
        for gid, manager in enumerate(managers):
            names = groups[gid].layer_names if gid < len(groups) else []
            manager.layer_index = extract_layer_index(names[0]) if len(names) == 1 else -2
    return managers


def _needs(managers, request, plan: RequestPlan, total: int | None = None) -> dict[int, int]:
    """{group: blocks to copy} once the request's prompt is in the cache
    (`total` entries; default: what it holds after this step)."""
    total = request.num_computed_tokens if total is None else total
    needs = {}
    if plan.pruned_layers is None:
        return needs
    for gid, manager in enumerate(managers):
        if manager.layer_index not in plan.pruned_layers:
            continue
        bs = manager.block_size
        keep_max = min(cdiv(total, bs), cdiv(total - plan.removed_min + 1, bs))
        blocks = manager.req_to_blocks.get(request.request_id)
        if blocks is not None:
            keep_max = min(keep_max, len(blocks))
        if keep_max > plan.start:
            needs[gid] = keep_max - plan.start
    return needs


def _reserve(scheduler, managers) -> int:
    return len(scheduler.running) * len(managers)


def limit_hit(scheduler, request, blocks, num_computed: int):
    """A prefix-cache hit through the request's image only with room for its
    copies later (see the module doc); else the hit up to the image.
    Returns (blocks, num_computed) (KVCacheBlocks, tokens)."""
    plan = getattr(request, "plphp", None)
    managers = _managers(scheduler)
    if plan is None or not managers:
        return blocks, num_computed
    bs = managers[0].block_size
    if num_computed <= plan.start * bs:
        return blocks, num_computed
    pool = scheduler.kv_cache_manager.block_pool
    held = sum(1 for group in blocks.blocks for b in group if b.ref_cnt == 0)
    rest = len(managers) * max(0, cdiv(request.num_prompt_tokens + 1, bs) - num_computed // bs)
    needs = sum(_needs(managers, request, plan, request.num_prompt_tokens).values())
    if pool.get_num_free_blocks() - held - rest - needs >= _reserve(scheduler, managers):
        return blocks, num_computed
    cut = type(blocks)(tuple(list(group[:plan.start]) for group in blocks.blocks))
    return cut, plan.start * bs


def _shared(managers, request_id: str, plan: RequestPlan, needs: dict[int, int]) -> bool:
    """Whether any block the request would compact is held by the cache."""
    for gid, count in needs.items():
        for block in managers[gid].req_to_blocks[request_id][plan.start:plan.start + count]:
            if block.ref_cnt > 1 or block.block_hash is not None:
                return True
    return False


def plan_copies(scheduler, output) -> None:
    """Allocate this step's region copies; set `output.plphp_copies`."""
    kv = scheduler.kv_cache_manager
    if not kv.enable_caching:
        return
    managers = _managers(scheduler)
    pool = kv.block_pool
    copies, counts = {}, {}
    for req_id, n in output.num_scheduled_tokens.items():
        request = scheduler.requests.get(req_id)
        plan = getattr(request, "plphp", None)
        if plan is None:
            continue
        prompt = request.num_prompt_tokens
        if not (request.num_computed_tokens - n < prompt <= request.num_computed_tokens):
            continue  # not the step that reaches its last prompt token
        needs = _needs(managers, request, plan)
        if not needs:
            continue
        shared = _shared(managers, req_id, plan, needs)
        reserve = 0 if shared else _reserve(scheduler, managers)
        if pool.get_num_free_blocks() - sum(needs.values()) >= reserve:
            copies[req_id] = (plan.start, {
                gid: [b.block_id for b in managers[gid].copy_region(req_id, plan.start, count).blocks]
                for gid, count in needs.items()})
            counts["prompt_cache_copies"] = counts.get("prompt_cache_copies", 0) + 1
            continue
        if shared:
            copies[req_id] = None  # never compact blocks the cache holds
        counts["prompt_cache_fallbacks"] = counts.get("prompt_cache_fallbacks", 0) + 1
        logger.warning_once(
            "PLPHP: no free blocks to keep a pruned request's prompt in the prefix cache; "
            "such requests compact in place (their image is not cached), or, if their image "
            "came from the cache and the pool cannot give the copies at all, decode unpruned "
            "(vllm:plphp_prompt_cache_fallbacks counts them)")
    if copies:
        output.plphp_copies = copies
    if counts:
        from vllm_plphp.engine.commit import stats_of

        stats_of(scheduler).add(counts, 0)

"""Scheduler side of the worker -> scheduler seam (engine-core process).

`apply_output` runs at the start of `Scheduler.update_from_output`: it frees
the blocks each pruned layer no longer needs (`PlphpLayerManager.prune`, rule
in `vllm_plphp.core.blocks`) and adds the step's counts to the metrics. The
worker dropped those blocks from its own tables in the step that pruned them,
so no step the worker runs later (with async scheduling one is already in
flight) reads or writes them; they can go to other requests at the next
schedule.

`check_first_tokens` is the never-silent guard: an image request that emits
its first token under PLPHP must have been seen by the worker's planner in the
same step. If not, the model runner's hooks are not attached (an unsupported
runner) and decode would read unpruned caches while PLPHP reports itself active.
"""

from __future__ import annotations

from vllm_plphp.core.plan import vision_positions
from vllm_plphp.engine.stats import EngineStats


def commit_prunes(scheduler, events: dict) -> int:
    """Apply the worker's prune events to the per-layer managers; returns blocks freed."""
    managers = scheduler.kv_cache_manager.coordinator.single_type_managers
    freed = 0
    for req_id, groups in events.items():
        request = scheduler.requests.get(req_id)
        for gid, (num_pruned, num_tokens) in groups.items():
            manager = managers[gid]
            if hasattr(manager, "prune") and manager.can_prune(req_id):
                freed += manager.prune(req_id, num_pruned, num_tokens, request)
    return freed


def stats_of(scheduler) -> EngineStats:
    stats = getattr(scheduler, "plphp_stats", None)
    if stats is None:
        stats = scheduler.plphp_stats = EngineStats(log_stats=scheduler.log_stats)
    return stats


def apply_output(scheduler, data: dict | None) -> None:
    if not data:
        return
    freed = commit_prunes(scheduler, data["events"]) if data["events"] else 0
    if data["stats"] or freed:
        stats_of(scheduler).add(data["stats"], freed)


def awaiting_first_token(scheduler, output) -> list:
    """Image requests in this output that have not emitted a token yet."""
    waiting = []
    for req_id in output.req_ids:
        request = scheduler.requests.get(req_id)
        if request is not None and request.mm_features and request.num_output_tokens == 0:
            waiting.append(request)
    return waiting


def check_first_tokens(requests: list, data: dict | None) -> None:
    """After vLLM's update: each request that got its first token was planned."""
    planned = set(data["planned"]) if data else set()
    for request in requests:
        if request.num_output_tokens and request.request_id not in planned \
                and vision_positions(request.mm_features):
            raise RuntimeError(
                f"PLPHP: image request {request.request_id} completed its prefill but the "
                "worker's model runner never planned to prune it: the runner's PLPHP hooks "
                "are not attached (vLLM 0.32's Model Runner V1 and V2 are supported). "
                "Decode would read unpruned KV caches; stopping instead."
            )

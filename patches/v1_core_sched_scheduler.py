"""Target: vllm.v1.core.sched.scheduler.Scheduler.update_from_output

Why: after the worker prunes a request's layer, the tail blocks of that
layer's block list must return to vLLM's block pool, so more requests fit and
`vllm:kv_cache_usage_perc` shows the saving.
How: before the original, read the ModelRunnerOutput's `plphp_pruned` events
({req_id: {group id: (num_pruned, num_tokens)}}) and call
`PlphpLayerManager.prune` on each group's manager. This runs after the step
that pruned and before the next schedule(): the worker has finished writing
and will not touch those blocks again (it dropped them from its block table
in the same step), so they are safe to hand to other requests. Requests that
already left the manager (aborted, finished) are skipped. The step's metric
counts (`plphp_stats`) and the blocks freed go to `vllm_plphp.metrics`.
vLLM versions checked: 0.32.0 (synchronous scheduling; async is refused).
Remove when: vLLM has a worker-to-KV-cache-manager channel.
"""

from vllm.v1.core.sched.scheduler import Scheduler

from vllm_plphp.metrics import EngineStats
from vllm_plphp.patches import original, patch

EVENTS_ATTR = "plphp_pruned"
STATS_ATTR = "plphp_stats"


def commit_prunes(scheduler, events: dict) -> int:
    """Apply the worker's prune events to the per-layer managers; returns blocks freed."""
    managers = scheduler.kv_cache_manager.coordinator.single_type_managers
    freed = 0
    for req_id, groups in events.items():
        for gid, (num_pruned, num_tokens) in groups.items():
            manager = managers[gid]
            if hasattr(manager, "prune") and manager.can_prune(req_id):
                freed += manager.prune(req_id, num_pruned, num_tokens)
    return freed


def _update_from_output(self, scheduler_output, model_runner_output, *args, **kwargs):
    events = getattr(model_runner_output, EVENTS_ATTR, None)
    step_stats = getattr(model_runner_output, STATS_ATTR, None)
    if events or step_stats:
        freed = commit_prunes(self, events) if events else 0
        stats = getattr(self, "plphp_stats", None)
        if stats is None:
            stats = self.plphp_stats = EngineStats()
        stats.add(step_stats, freed)
    return original(Scheduler, "update_from_output")(
        self, scheduler_output, model_runner_output, *args, **kwargs
    )


def apply() -> None:
    patch(Scheduler, "update_from_output", _update_from_output)

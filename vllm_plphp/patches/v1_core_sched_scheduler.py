"""Target: vllm.v1.core.sched.scheduler.Scheduler.update_from_output,
Scheduler._reserve_prefill_lookahead, .add_request, .schedule, .make_stats

Why: after the worker prunes a request's layer, the tail blocks of that
layer's block list must return to vLLM's block pool, so more requests fit and
`vllm:kv_cache_usage_perc` shows the saving; and an image request must never
decode unpruned under PLPHP without a word.
How: before the original, `vllm_plphp.engine.commit.apply_output` applies the
ModelRunnerOutput's prune events (`vllm_plphp.worker.outputs`) to the
per-layer managers and records metrics; after it, `check_first_tokens` raises
if an image request emitted its first token without the worker having planned
it. With synchronous scheduling the events arrive before the next schedule;
with async scheduling one step later, after the scheduler already allocated
the in-flight step at full length (`vllm_plphp.core.blocks` keeps both sides'
block lists equal either way). Requests that already left the manager
(aborted, finished) are skipped. Engines without PLPHP skip all of it.

`_reserve_prefill_lookahead` (the last cap vLLM puts on a request's new tokens,
for running and waiting requests alike): a preempted request is recomputed
from scratch, prompt and generated tokens together. Its generated tokens must
see the pruned cache, as they did when they were decoded, so a chunk of an
image request that would run past the prompt's end stops at it; the next step
recomputes the generated tokens over the pruned layers. Fresh requests
(nothing generated yet) and text-only requests are unaffected.
`add_request` / `schedule`: multi-turn prefix caching
(`vllm_plphp.engine.cache_copies`): an arriving image request gets its
`plphp` plan (region start, layers its policy prunes), which the per-layer
managers read when they hash blocks; after vLLM's schedule, the requests whose
prompt ends in the step get private copies of their region blocks, sent to the
worker on the SchedulerOutput (`plphp_copies`).
`make_stats`: the counts gathered since the last stats (`vllm_plphp.engine.stats`)
ride on the step's SchedulerStats to the front end (field added by
`v1_metrics_stats`); vLLM builds stats only when it logs them (`log_stats`).
vLLM versions checked: 0.32.0 (synchronous and async scheduling).
Remove when: vLLM has a worker-to-KV-cache-manager channel and lets a plugin
end a prefill chunk and copy a request's blocks at a step of its choosing.
"""

from vllm.v1.core.sched.scheduler import Scheduler

from vllm_plphp.core.plan import first_vision_offset
from vllm_plphp.engine.cache_copies import plan_copies, plan_request
from vllm_plphp.engine.commit import (apply_output, awaiting_first_token, check_first_tokens,
                                      stats_of)
from vllm_plphp.patches import original, patch, plphp_selected
from vllm_plphp.worker.outputs import read


def _on(scheduler) -> bool:
    on = getattr(scheduler, "_plphp_on", None)
    if on is None:
        on = scheduler._plphp_on = plphp_selected(scheduler.vllm_config)
        if on:  # for the hit limit (patches/v1_core_kv_cache_manager.py)
            scheduler.kv_cache_manager.plphp_scheduler = scheduler
    return on


def _update_from_output(self, scheduler_output, model_runner_output, *args, **kwargs):
    if not _on(self):
        return original(Scheduler, "update_from_output")(
            self, scheduler_output, model_runner_output, *args, **kwargs)
    data = read(model_runner_output)
    apply_output(self, data)
    waiting = awaiting_first_token(self, model_runner_output)
    result = original(Scheduler, "update_from_output")(
        self, scheduler_output, model_runner_output, *args, **kwargs)
    check_first_tokens(waiting, data)
    return result


def _reserve_prefill_lookahead(self, request, num_computed_tokens, num_new_tokens):
    num_new_tokens = original(Scheduler, "_reserve_prefill_lookahead")(
        self, request, num_computed_tokens, num_new_tokens)
    prompt_end = request.num_prompt_tokens
    if (num_computed_tokens < prompt_end < num_computed_tokens + num_new_tokens
            and _on(self) and first_vision_offset(request.mm_features) is not None):
        return prompt_end - num_computed_tokens
    return num_new_tokens


def _add_request(self, request, *args, **kwargs):
    if _on(self):
        request.plphp = plan_request(self, request)
    return original(Scheduler, "add_request")(self, request, *args, **kwargs)


def _schedule(self, *args, **kwargs):
    output = original(Scheduler, "schedule")(self, *args, **kwargs)
    if _on(self):
        plan_copies(self, output)
    return output


def _make_stats(self, *args, **kwargs):
    stats = original(Scheduler, "make_stats")(self, *args, **kwargs)
    if stats is not None and _on(self):
        stats.plphp = stats_of(self).drain()
    return stats


def apply() -> None:
    patch(Scheduler, "add_request", _add_request)
    patch(Scheduler, "schedule", _schedule)
    patch(Scheduler, "update_from_output", _update_from_output)
    patch(Scheduler, "_reserve_prefill_lookahead", _reserve_prefill_lookahead)
    patch(Scheduler, "make_stats", _make_stats)

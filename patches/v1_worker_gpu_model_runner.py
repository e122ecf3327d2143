"""Target: vllm.v1.worker.gpu_model_runner.GPUModelRunner._update_states,
._prepare_inputs, .execute_model and .sample_tokens (inherited by the CPU runner)

Why: the attention layers must know, in the step that reaches a request's last
prompt token, which batch rows to prune, where the last prompt token sits in
the flat batch and where each image's vision tokens are; only the model runner
holds the request states. And the scheduler must learn what was pruned.
How: `_update_states`: before it, forget finished and preempted (resumed)
requests' pruned counts. `_prepare_inputs`: before it, plan this step's prune
targets once (`vllm_plphp.plan.plan_step`). `execute_model`: clear the targets
when the step ends, so no other forward (dummy runs) can prune.
`execute_model` / `sample_tokens`: attach this step's prune events and metric
counts to the ModelRunnerOutput as attributes `plphp_pruned` / `plphp_stats`
(pickled to the engine core with the rest of the output; see
patches/v1_core_sched_scheduler.py).
vLLM versions checked: 0.32.0.
Remove when: vLLM passes request metadata to attention backends per step and
has a worker-to-scheduler channel for KV cache managers.
"""

import copy
import time

from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, ModelRunnerOutput
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from vllm_plphp.patches import original, patch, plphp_selected
from vllm_plphp.plan import plan_step
from vllm_plphp.worker_state import STATE

EVENTS_ATTR = "plphp_pruned"
STATS_ATTR = "plphp_stats"


def _attach(runner) -> bool:
    """First step of a runner: decide whether PLPHP is on and map layers->groups."""
    on = getattr(runner, "_plphp_on", None)
    if on is None:
        on = plphp_selected(runner.vllm_config)
        runner._plphp_on = on
        if on:
            from vllm_plphp.config import from_vllm_config

            STATE.config = from_vllm_config(runner.vllm_config)
            STATE.runner = runner
            STATE.num_layers = runner.model_config.hf_text_config.num_hidden_layers
            STATE.layer_to_group = {
                name: gid
                for gid, group in enumerate(runner.kv_cache_config.kv_cache_groups)
                for name in group.layer_names
            }
    return on


def _update_states(self, scheduler_output, *args, **kwargs):
    if _attach(self):
        STATE.finish(scheduler_output.finished_req_ids)
        STATE.forget(scheduler_output.scheduled_cached_reqs.resumed_req_ids)
    return original(GPUModelRunner, "_update_states")(self, scheduler_output, *args, **kwargs)


def _prepare_inputs(self, scheduler_output, num_scheduled_tokens, *args, **kwargs):
    if _attach(self):
        batch = self.input_batch
        num_reqs = batch.num_reqs
        STATE.targets = plan_step(
            batch.req_ids[:num_reqs],
            batch.num_computed_tokens_cpu[:num_reqs],
            num_scheduled_tokens,
            self.requests,
            STATE.config,
            on_skip=lambda: STATE.count("requests_skipped"),
        )
        if STATE.targets:
            STATE.count("requests_pruned", len(STATE.targets))
    return original(GPUModelRunner, "_prepare_inputs")(
        self, scheduler_output, num_scheduled_tokens, *args, **kwargs
    )


def _with_events(output):
    if not (STATE.events or STATE.step_stats) or not isinstance(output, ModelRunnerOutput):
        return output
    if output is EMPTY_MODEL_RUNNER_OUTPUT:  # a shared singleton: never mutate it
        output = copy.copy(output)
    setattr(output, EVENTS_ATTR, STATE.events)
    setattr(output, STATS_ATTR, STATE.step_stats)
    STATE.events, STATE.step_stats = {}, {}
    return output


def _execute_model(self, *args, **kwargs):
    start = time.perf_counter()
    try:
        return _with_events(original(GPUModelRunner, "execute_model")(self, *args, **kwargs))
    finally:
        if STATE.targets:
            STATE.pruning_step_seconds += time.perf_counter() - start
        STATE.targets = []


def _sample_tokens(self, *args, **kwargs):
    return _with_events(original(GPUModelRunner, "sample_tokens")(self, *args, **kwargs))


def apply() -> None:
    patch(GPUModelRunner, "_update_states", _update_states)
    patch(GPUModelRunner, "_prepare_inputs", _prepare_inputs)
    patch(GPUModelRunner, "execute_model", _execute_model)
    patch(GPUModelRunner, "sample_tokens", _sample_tokens)

"""Target: vllm.v1.worker.gpu_model_runner.GPUModelRunner._prepare_inputs and
.execute_model (inherited by the CPU model runner)

Why: the attention layers must know, in the step that reaches a request's last
prompt token, which batch rows to prune, where the last prompt token sits in
the flat batch and where each image's vision tokens are. Only the model runner
holds the request states.
How: `_prepare_inputs` is wrapped: before it, the step's prune targets are
planned once (`vllm_plphp.plan.plan_step`) into the worker state; finished
requests' records are retired. `execute_model` is wrapped to clear the targets
when the step ends, so no other forward (dummy runs) can prune.
vLLM versions checked: 0.32.0.
Remove when: vLLM passes request metadata to attention backends per step.
"""

from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from vllm_plphp.patches import original, patch, plphp_selected
from vllm_plphp.plan import plan_step
from vllm_plphp.worker_state import STATE


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


def _prepare_inputs(self, scheduler_output, num_scheduled_tokens, *args, **kwargs):
    if _attach(self):
        STATE.finish(scheduler_output.finished_req_ids)
        batch = self.input_batch
        num_reqs = batch.num_reqs
        STATE.targets = plan_step(
            batch.req_ids[:num_reqs],
            batch.num_computed_tokens_cpu[:num_reqs],
            num_scheduled_tokens,
            self.requests,
            STATE.config,
        )
    return original(GPUModelRunner, "_prepare_inputs")(
        self, scheduler_output, num_scheduled_tokens, *args, **kwargs
    )


def _execute_model(self, *args, **kwargs):
    try:
        return original(GPUModelRunner, "execute_model")(self, *args, **kwargs)
    finally:
        STATE.targets = []


def apply() -> None:
    patch(GPUModelRunner, "_prepare_inputs", _prepare_inputs)
    patch(GPUModelRunner, "execute_model", _execute_model)

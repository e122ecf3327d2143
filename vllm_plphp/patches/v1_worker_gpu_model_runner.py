"""Target: vllm.v1.worker.gpu_model_runner.GPUModelRunner (Model Runner V1;
inherited by the CPU runner): _update_states, _prepare_inputs, execute_model,
sample_tokens, may_reinitialize_input_batch.

Why: the attention layers must know, in the step that reaches a request's last
prompt token, which batch rows to prune, where the last prompt token sits in
the flat batch and where each image's vision tokens are; only the model runner
holds the request states. And the scheduler must learn what was pruned.
How: thin wrappers that call the runner's PLPHP adapter
(`vllm_plphp.worker.runner_v1.V1Adapter`, created at the first step when the
engine runs PLPHP; otherwise the originals run alone):
`_update_states` (before): forget finished and preempted requests;
`_prepare_inputs` (before): plan the step; `execute_model`: close the step
(raises if a planned request was not pruned by any layer); `execute_model` /
`sample_tokens`: attach the step's events to the ModelRunnerOutput
(`vllm_plphp.worker.outputs`); `may_reinitialize_input_batch` (after, where
the input batch gets its final KV cache groups, before CUDA graph capture):
the groups' block tables share buffers (`share_group_tables`).
vLLM versions checked: 0.32.0 (synchronous and async scheduling).
Remove when: vLLM passes request metadata to attention backends per step and
has a worker-to-scheduler channel for KV cache managers.
"""

from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from vllm_plphp.patches import original, patch, plphp_selected
from vllm_plphp.worker.outputs import step_hooks
from vllm_plphp.worker.runner_v1 import adapter_of
from vllm_plphp.worker.v1_block_table import share_group_tables


def _update_states(self, scheduler_output, *args, **kwargs):
    adapter = adapter_of(self)
    if adapter is not None:
        adapter.update_states(scheduler_output)
    return original(GPUModelRunner, "_update_states")(self, scheduler_output, *args, **kwargs)


def _prepare_inputs(self, scheduler_output, num_scheduled_tokens, *args, **kwargs):
    adapter = adapter_of(self)
    if adapter is not None:
        adapter.plan(num_scheduled_tokens)
    return original(GPUModelRunner, "_prepare_inputs")(
        self, scheduler_output, num_scheduled_tokens, *args, **kwargs)


def may_reinitialize_input_batch(self, kv_cache_config, *args, **kwargs):
    out = original(GPUModelRunner, "may_reinitialize_input_batch")(self, kv_cache_config, *args, **kwargs)
    if plphp_selected(self.vllm_config):
        share_group_tables(self.input_batch.block_table)
    return out


def apply() -> None:
    patch(GPUModelRunner, "_update_states", _update_states)
    patch(GPUModelRunner, "may_reinitialize_input_batch", may_reinitialize_input_batch)
    patch(GPUModelRunner, "_prepare_inputs", _prepare_inputs)
    for name, hook in step_hooks(GPUModelRunner, adapter_of).items():
        patch(GPUModelRunner, name, hook)

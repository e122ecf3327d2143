"""Target: vllm.v1.worker.gpu.model_runner.GPUModelRunner (Model Runner V2,
vLLM's default wherever Triton works; also the CPU V2 runner):
initialize_kv_cache, add_requests, finish_requests, _remove_request,
gather_batch_req_state, prepare_attn, execute_model, sample_tokens.

Why: as for V1 (patches/v1_worker_gpu_model_runner.py): only the runner knows
which requests complete their prompt in a step, where their tokens sit and
which blocks they own; and V2 computes slot mappings for all KV cache groups
at once from logical positions, while a pruned layer writes new tokens at
compacted positions.
How: thin wrappers calling the runner's `vllm_plphp.worker.runner_v2.V2Adapter`
(created right after `initialize_kv_cache` when the engine runs PLPHP, so it
exists before CUDA graph capture; otherwise the originals run alone):
request bookkeeping around add/finish/remove; `gather_batch_req_state` (after):
plan the step and keep a pruning step out of full CUDA graphs; `prepare_attn`
(after): per-step shifts and shifted slot mappings; `execute_model`: close the
step; `sample_tokens`: under pipeline parallelism, the stages' events go to
the last stage (vllm_plphp.worker.pipeline); attach the events to the output.
vLLM versions checked: 0.32.0 (synchronous and async scheduling, eager and
torch.compile, pipeline parallel 2; on CPU through Triton's interpreter,
tests/support/gpu_defaults.py).
Remove when: vLLM gives attention backends per-request, per-group lengths.
"""

from vllm.v1.worker.gpu.model_runner import GPUModelRunner

from vllm_plphp.patches import original, patch
from vllm_plphp.worker.outputs import step_hooks
from vllm_plphp.worker.runner_v2 import adapter_of, attach


def _initialize_kv_cache(self, *args, **kwargs):
    result = original(GPUModelRunner, "initialize_kv_cache")(self, *args, **kwargs)
    attach(self)
    return result


def _add_requests(self, scheduler_output):
    result = original(GPUModelRunner, "add_requests")(self, scheduler_output)
    adapter = adapter_of(self)
    if adapter is not None:
        adapter.added(scheduler_output)
    return result


def _finish_requests(self, scheduler_output):
    adapter = adapter_of(self)
    if adapter is not None:
        adapter.worker.finish(scheduler_output.finished_req_ids)
    return original(GPUModelRunner, "finish_requests")(self, scheduler_output)


def _remove_request(self, req_id):
    adapter = adapter_of(self)
    if adapter is not None:
        adapter.remove_request(req_id)
    return original(GPUModelRunner, "_remove_request")(self, req_id)


def _gather_batch_req_state(self, scheduler_output, dummy_run):
    batch_state, uniform = original(GPUModelRunner, "gather_batch_req_state")(
        self, scheduler_output, dummy_run)
    adapter = adapter_of(self)
    if adapter is not None and batch_state is not None and not dummy_run:
        batch_state, uniform = adapter.plan(
            batch_state, uniform, getattr(scheduler_output, "plphp_copies", None))
    return batch_state, uniform


def _prepare_attn(self, input_batch):
    block_tables, slot_mappings = original(GPUModelRunner, "prepare_attn")(self, input_batch)
    adapter = adapter_of(self)
    if adapter is not None:
        adapter.prepare_attn(input_batch, slot_mappings)
    return block_tables, slot_mappings


def apply() -> None:
    patch(GPUModelRunner, "initialize_kv_cache", _initialize_kv_cache)
    patch(GPUModelRunner, "add_requests", _add_requests)
    patch(GPUModelRunner, "finish_requests", _finish_requests)
    patch(GPUModelRunner, "_remove_request", _remove_request)
    patch(GPUModelRunner, "gather_batch_req_state", _gather_batch_req_state)
    patch(GPUModelRunner, "prepare_attn", _prepare_attn)
    for name, hook in step_hooks(GPUModelRunner, adapter_of).items():
        patch(GPUModelRunner, name, hook)

"""Target: vllm.v1.worker.gpu_input_batch.InputBatch.add_request (Model Runner V1)

Why: a running request that is not scheduled in a step leaves the persistent
batch and re-enters it later from its request state; its per-layer pruned
counts must come back with it (the block ids do, from the request state,
which the V1 adapter keeps truncated).
How: after the original, the V1 adapter (`input_batch.plphp_adapter`, set when
it attaches) restores the row's `num_pruned` in every layer's block table
(nothing for new and preempted requests, or when PLPHP is not selected).
vLLM versions checked: 0.32.0.
Remove when: vLLM exposes a per-group slot offset kept in the request state.
"""

from vllm.v1.worker.gpu_input_batch import InputBatch

from vllm_plphp.patches import original, patch


def _add_request(self, request, *args, **kwargs):
    row = original(InputBatch, "add_request")(self, request, *args, **kwargs)
    adapter = getattr(self, "plphp_adapter", None)
    if adapter is not None:
        adapter.re_added(self, request.req_id, row)
    return row


def apply() -> None:
    patch(InputBatch, "add_request", _add_request)

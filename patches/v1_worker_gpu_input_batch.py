"""Target: vllm.v1.worker.gpu_input_batch.InputBatch.add_request

Why: a running request that is not scheduled in a step leaves the persistent
batch and re-enters it later from its request state; its per-layer pruned
counts must come back with it (the block ids do, from the request state,
which `vllm_plphp.prune` keeps truncated).
How: after the original, set the re-added row's `num_pruned` in every layer's
block table from the worker state (absent for new and preempted requests).
vLLM versions checked: 0.32.0.
Remove when: vLLM exposes a per-group slot offset kept in the request state.
"""

from vllm.v1.worker.gpu_input_batch import InputBatch

from vllm_plphp.patches import original, patch
from vllm_plphp.worker_state import STATE


def _add_request(self, request, *args, **kwargs):
    row = original(InputBatch, "add_request")(self, request, *args, **kwargs)
    pruned = STATE.pruned.get(request.req_id)
    if pruned:
        for gid, num_pruned in pruned.items():
            self.block_table[gid].num_pruned[row] = num_pruned
    return row


def apply() -> None:
    patch(InputBatch, "add_request", _add_request)

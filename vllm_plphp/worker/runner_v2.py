"""Adapter between PLPHP's core and vLLM's Model Runner V2
(`vllm.v1.worker.gpu.model_runner.GPUModelRunner`, also the CPU V2 runner).

V2 keeps each request in a fixed slot (`req_states.req_id_to_index`) for its
whole stay, and gathers per-step block tables by batch row
(`idx_mapping`). So the per-(layer, request) pruned counts are a
`(num_groups, max_num_reqs)` tensor indexed by slot, on the device (written by
small in-stream fills when a layer is pruned, never read back on the host)
with a host mirror for "is anything pruned in this batch".

Per step:
- `plan` (after `gather_batch_req_state`): which rows prune; a step that prunes
  never replays a full CUDA graph (its attention must run the PLPHP impl);
- `prepare_attn` (after the runner's): the step's `(num_groups, rows)` shift,
  one device gather; new tokens' slots moved to their compacted positions in
  the persistent slot-mapping buffer, one batched device op over all layers;
- the attention layers prune (`vllm_plphp.core.prune`) and `commit`;
- `end_step` / `attach` around `execute_model` / `sample_tokens`.
"""

from __future__ import annotations

import numpy as np
import torch

from vllm_plphp.core.blocks import kept_blocks
from vllm_plphp.core.plan import RequestInfo, plan_step
from vllm_plphp.core.worker import PlphpWorker, worker_for
from vllm_plphp.patches import plphp_selected
from vllm_plphp.worker.backend import attach_layers, log_attached
from vllm_plphp.worker.pipeline import stage_exchange


class V2Adapter:
    name = "Model Runner V2"

    def __init__(self, runner, worker: PlphpWorker):
        self.runner = runner
        self.worker = worker
        tables = runner.block_tables
        num_groups, max_reqs = tables.num_kv_cache_groups, tables.max_num_reqs
        if len(set(tables.block_sizes)) != 1:
            raise RuntimeError(f"PLPHP expects one block size for all layers, got {tables.block_sizes}")
        self.block_size = tables.block_sizes[0]
        device = runner.device
        self.pruned = torch.zeros(num_groups, max_reqs, dtype=torch.int32, device=device)
        self.pruned_np = np.zeros((num_groups, max_reqs), dtype=np.int32)
        self.shift = torch.zeros(num_groups, max_reqs, dtype=torch.int32, device=device)
        self.group_index = torch.arange(num_groups, device=device)[:, None]
        # the per-step input block tables as one (groups, rows, blocks) tensor:
        # one gather finds every layer's block of every new token
        shape = tables.input_block_tables[0].shape
        self.input_tables = torch.zeros((num_groups, *shape), dtype=torch.int32, device=device)
        tables.input_block_tables = list(self.input_tables.unbind(0))
        tables.init_block_table_layout_tensors()
        self.requests: dict[str, RequestInfo] = {}

    # -------------------------------------------------------------- request life
    def added(self, scheduler_output) -> None:
        """After the runner's `add_requests` (which first removes a request it
        re-adds): record what planning needs; a new slot starts unpruned."""
        for new in scheduler_output.scheduled_new_reqs:
            self.requests[new.req_id] = RequestInfo(
                new.prompt_len, new.mm_features, new.sampling_params)
            self._reset_slot(self.runner.req_states.req_id_to_index.get(new.req_id))

    def remove_request(self, req_id: str) -> None:
        self._reset_slot(self.runner.req_states.req_id_to_index.get(req_id))
        self.requests.pop(req_id, None)

    def _reset_slot(self, slot) -> None:
        if slot is not None and self.pruned_np[:, slot].any():
            self.pruned_np[:, slot] = 0
            self.pruned[:, slot] = 0

    # -------------------------------------------------------------- per step
    def plan(self, batch_state, uniform_tok_count, copies=None):
        worker = self.worker
        first = self.runner.req_states.num_computed_tokens_np[batch_state.idx_mapping_np]
        step = worker.begin_step()
        step.targets, step.planned, skipped = plan_step(
            batch_state.req_ids, first, batch_state.num_scheduled_tokens,
            self.requests, worker.config, slots=batch_state.idx_mapping_np, copies=copies)
        if step.targets:
            step.count("requests_pruned", len(step.targets))
            # a full CUDA graph replays attention without running PLPHP's impl
            batch_state = batch_state._replace(decode_graph_eligible=False)
            uniform_tok_count = None
        if skipped:
            step.count("requests_skipped", skipped)
        return batch_state, uniform_tok_count

    def prepare_attn(self, input_batch, slot_mappings) -> None:
        step = self.worker.step
        if step is None:
            return
        num_reqs = input_batch.num_reqs
        if not self.pruned_np[:, input_batch.idx_mapping_np].any():
            return
        self.shift.zero_()
        self.shift[:, :num_reqs] = self.pruned.index_select(1, input_batch.idx_mapping)
        step.shift = self.shift
        self._shift_slots(input_batch, slot_mappings)

    def _shift_slots(self, input_batch, slot_mappings) -> None:
        """New tokens of pruned requests go to position - pruned(layer, request)."""
        num_reqs, num_tokens = input_batch.num_reqs, input_batch.num_tokens
        device = slot_mappings.device
        ends = input_batch.query_start_loc[1: num_reqs + 1]
        rows = torch.searchsorted(ends, torch.arange(num_tokens, device=device), right=True)
        positions = input_batch.positions[:num_tokens].to(torch.int64)
        pos = positions[None, :] - self.shift[:, :num_reqs].index_select(1, rows).to(torch.int64)
        blocks = self.input_tables[self.group_index, rows[None, :], pos // self.block_size]
        slot_mappings[:, :num_tokens] = blocks.to(torch.int64) * self.block_size + pos % self.block_size

    # -------------------------------------------------------------- core seam
    def block_ids(self, gid: int, target) -> torch.Tensor:
        num_blocks = int(self.runner.block_tables.num_blocks.np[gid, target.slot])
        return self.input_tables[gid, target.row, :num_blocks].to(torch.long)

    def group_table(self, gid: int) -> torch.Tensor:
        """(max rows, max_blocks) block ids of this step's rows (batched path;
        a target's row is `target.row`)."""
        return self.input_tables[gid]

    def swap_blocks(self, gid: int, target, start: int, new: list[int]) -> torch.Tensor:
        """Point entries [start, start + len(new)) of the request's block list
        at `new` (this step's input table and the slot's persistent row, which
        later steps gather from); returns the old ids."""
        end = start + len(new)
        ids = torch.tensor(new, dtype=self.input_tables.dtype, device=self.input_tables.device)
        old = self.input_tables[gid, target.row, start:end].to(torch.long)
        self.input_tables[gid, target.row, start:end] = ids
        self.runner.block_tables.block_tables[gid].gpu[target.slot, start:end] = ids
        return old

    def commit(self, gid: int, target, kept: int) -> None:
        """The layer now holds `kept` entries: record the count (device and
        host mirror) and drop the tail blocks from the slot's block list, as
        the scheduler will (`vllm_plphp.core.blocks.kept_blocks`)."""
        num_pruned = target.total_len - kept
        self.pruned_np[gid, target.slot] = num_pruned
        self.pruned[gid, target.slot] = num_pruned
        keep, _ = kept_blocks(target.total_len, num_pruned, self.block_size)
        num_blocks = self.runner.block_tables.num_blocks.np
        num_blocks[gid, target.slot] = min(int(num_blocks[gid, target.slot]), keep)


def attach(runner) -> V2Adapter | None:
    """Called after `initialize_kv_cache`: the runner's adapter (None: PLPHP not selected)."""
    runner._plphp = False
    if not plphp_selected(runner.vllm_config):
        return None
    worker = worker_for(runner.vllm_config)
    worker.set_groups(runner.kv_cache_config)
    attach_layers(worker, runner.vllm_config)
    runner._plphp = worker.adapter = V2Adapter(runner, worker)
    worker.stages = stage_exchange(runner.vllm_config)
    log_attached(worker.adapter, runner.vllm_config)
    return runner._plphp


def adapter_of(runner) -> V2Adapter | None:
    return getattr(runner, "_plphp", None) or None

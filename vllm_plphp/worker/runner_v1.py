"""Adapter between PLPHP's core and vLLM's V1 model runner
(`vllm.v1.worker.gpu_model_runner.GPUModelRunner`, inherited by the CPU runner).

V1 keeps requests in batch rows that move (condense, reorder); a request's
per-layer pruned count lives next to its block ids in each layer's block table
(`PlphpBlockTable`) and follows it. A request that leaves the batch and comes
back gets its counts from `self.pruned` (patch of `InputBatch.add_request`).
Hooks (vllm_plphp/patches/v1_worker_gpu_model_runner.py): `update_states`,
`plan` (before `_prepare_inputs`), `end_step` / `attach` around
`execute_model` / `sample_tokens`.
"""

from __future__ import annotations

import numpy as np
import torch

from vllm_plphp.core.blocks import kept_blocks
from vllm_plphp.core.plan import plan_step
from vllm_plphp.core.worker import PlphpWorker, worker_for
from vllm_plphp.patches import plphp_selected
from vllm_plphp.worker.backend import attach_layers, log_attached
from vllm_plphp.worker.v1_block_table import PlphpBlockTable


class V1Adapter:
    name = "Model Runner V1"

    def __init__(self, runner, worker: PlphpWorker):
        self.runner = runner
        self.worker = worker
        # req_id -> {group id: entries pruned}; re-applied when a request
        # re-enters the batch, dropped when it finishes or is preempted
        self.pruned: dict[str, dict[int, int]] = {}
        num_groups = len(runner.kv_cache_config.kv_cache_groups)
        self.shift = torch.zeros(num_groups, runner.input_batch.max_num_reqs,
                                 dtype=torch.int32, device=runner.device)
        for gid in range(num_groups):
            if not isinstance(self.table(gid), PlphpBlockTable):
                raise RuntimeError("PLPHP: the V1 block table patch is not applied")
        runner.input_batch.plphp_adapter = self
        self.copies = None  # this step's region copies from the scheduler

    def table(self, gid: int) -> PlphpBlockTable:
        return self.runner.input_batch.block_table[gid]

    # -------------------------------------------------------------- hooks
    def update_states(self, scheduler_output) -> None:
        finished = scheduler_output.finished_req_ids
        self.worker.finish(finished)
        self.copies = getattr(scheduler_output, "plphp_copies", None)
        for req_id in (*finished, *scheduler_output.scheduled_cached_reqs.resumed_req_ids):
            self.pruned.pop(req_id, None)  # preempted requests re-prefill and prune again

    def plan(self, num_scheduled_tokens: np.ndarray) -> None:
        batch, worker = self.runner.input_batch, self.worker
        n = batch.num_reqs
        step = worker.begin_step()
        step.targets, step.planned, skipped = plan_step(
            batch.req_ids[:n], batch.num_computed_tokens_cpu[:n], num_scheduled_tokens,
            self.runner.requests, worker.config, copies=self.copies)
        if step.targets:
            step.count("requests_pruned", len(step.targets))
        if skipped:
            step.count("requests_skipped", skipped)
        shared = getattr(batch.block_table, "plphp_shared", None)
        if shared is not None:
            pruned = shared.num_pruned[:, :n]
        else:
            groups = len(self.runner.kv_cache_config.kv_cache_groups)
            pruned = np.stack([self.table(g).num_pruned[:n] for g in range(groups)])
        if pruned.any():  # one host->device copy per step, none per layer
            self.shift.zero_()
            self.shift[:, :n].copy_(torch.from_numpy(pruned))
            step.shift = self.shift

    def re_added(self, batch, req_id: str, row: int) -> None:
        for gid, num_pruned in self.pruned.get(req_id, {}).items():
            batch.block_table[gid].num_pruned[row] = num_pruned

    # -------------------------------------------------------------- core seam
    def block_ids(self, gid: int, target) -> torch.Tensor:
        table = self.table(gid)
        num_blocks = int(table.num_blocks_per_row[target.row])
        return table.block_table.gpu[target.row, :num_blocks].to(torch.long)

    def group_table(self, gid: int) -> torch.Tensor:
        """(max rows, max_blocks) block ids of every batch row (batched path;
        a target's row is `target.row`)."""
        return self.table(gid).block_table.gpu

    def swap_blocks(self, gid: int, target, start: int, new: list[int]) -> torch.Tensor:
        """Point entries [start, start + len(new)) of the request's block list
        at `new` (its block table row and its request state); returns the old ids."""
        table, row, end = self.table(gid), target.row, start + len(new)
        old = torch.from_numpy(table.block_table.np[row, start:end].copy()).long()
        table.block_table.np[row, start:end] = new
        ids = torch.tensor(new, dtype=table.block_table.gpu.dtype)
        table.block_table.gpu[row, start:end] = ids.to(table.block_table.gpu.device)
        self.runner.requests[target.req_id].block_ids[gid][start:end] = new
        return old

    def commit(self, gid: int, target, kept: int) -> None:
        """The layer now holds `kept` entries: record the count and drop the
        tail blocks from the worker's copies of the request's block list (the
        block table row and the request state), as the scheduler will."""
        table, row = self.table(gid), target.row
        num_pruned = target.total_len - kept
        table.num_pruned[row] = num_pruned
        keep, _ = kept_blocks(target.total_len, num_pruned, table.block_size)
        old = int(table.num_blocks_per_row[row])
        if keep < old:
            table.block_table.np[row, keep:old] = 0
            table.num_blocks_per_row[row] = keep
            del self.runner.requests[target.req_id].block_ids[gid][keep:]
        self.pruned.setdefault(target.req_id, {})[gid] = num_pruned


def adapter_of(runner) -> V1Adapter | None:
    """The runner's adapter, created at its first step (None: PLPHP not selected)."""
    adapter = getattr(runner, "_plphp", None)
    if adapter is None:
        adapter = False
        if plphp_selected(runner.vllm_config):
            worker = worker_for(runner.vllm_config)
            worker.set_groups(runner.kv_cache_config)
            attach_layers(worker, runner.vllm_config)
            adapter = worker.adapter = V1Adapter(runner, worker)
            log_attached(worker.adapter, runner.vllm_config)
        runner._plphp = adapter
    return adapter or None

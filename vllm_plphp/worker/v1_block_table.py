"""Worker block table that knows how many entries each request's layer pruned.

One `BlockTable` exists per KV cache group; PLPHP gives every attention layer
its own group, so `num_pruned[row]` is per (request, layer). Positions stay
logical (RoPE, M-RoPE); only the cache slot of a new token moves to the
compacted position `pos - num_pruned[row]`. The count follows the request
through add/clear/move/swap of rows, like the block ids themselves.

`GroupTables`: on a PLPHP engine every group's block table, slot mapping and
pruned counts are views of one buffer each, so a step's slot mappings for
all layers are one gather and its block-table commit one copy, where vLLM
launches its slot-mapping kernel and a copy once per group (with 28 layers
that was 2 ms of a 24 ms CPU decode step: issue 29).
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.v1.attention.backends.utils import PAD_SLOT_ID
from vllm.v1.utils import CpuGpuBuffer
from vllm.v1.worker.block_table import BlockTable, SlotMappingMode


class PlphpBlockTable(BlockTable):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_pruned = np.zeros(self.max_num_reqs, dtype=np.int64)

    def add_row(self, block_ids, row_idx: int) -> None:
        self.num_pruned[row_idx] = 0
        super().add_row(block_ids, row_idx)

    def clear_row(self, row_idx: int) -> None:
        self.num_pruned[row_idx] = 0
        super().clear_row(row_idx)

    def move_row(self, src: int, tgt: int) -> None:
        self.num_pruned[tgt] = self.num_pruned[src]
        self.num_pruned[src] = 0
        super().move_row(src, tgt)

    def swap_row(self, src: int, tgt: int) -> None:
        self.num_pruned[[src, tgt]] = self.num_pruned[[tgt, src]]
        super().swap_row(src, tgt)

    def pruned_rows(self, num_reqs: int) -> np.ndarray | None:
        """(num_reqs,) pruned counts, or None when no row is pruned (fast path)."""
        pruned = self.num_pruned[:num_reqs]
        return pruned if pruned.any() else None

    def compute_slot_mapping(self, num_reqs, query_start_loc, positions) -> None:
        pruned = self.pruned_rows(num_reqs)
        if pruned is not None:
            qsl = query_start_loc[: num_reqs + 1]
            counts = (qsl[1:] - qsl[:-1]).to(torch.long)
            shift = torch.repeat_interleave(
                torch.from_numpy(pruned).to(positions.device), counts
            )
            positions = positions.clone()
            positions[: shift.numel()] -= shift
        super().compute_slot_mapping(num_reqs, query_start_loc, positions)


class GroupTables:
    """Every group's `block_table`, `slot_mapping` and `num_pruned` as row
    views of one buffer each (made when the runner's input batch gets its
    final groups, before any CUDA graph is captured).

    block_table: (num_groups, max_num_reqs, max_blocks) int32
    slot_mapping: (num_groups, max_num_batched_tokens) int64
    num_pruned: (num_groups, max_num_reqs) int64, host
    """

    def __init__(self, tables: list[PlphpBlockTable]):
        first = tables[0]
        num_groups, dev = len(tables), first.device
        self.tables = tables
        self.block_size = first.block_size
        self.block_table = self._share(tables, "block_table", torch.int32)
        self.slot_mapping = self._share(tables, "slot_mapping", torch.int64)
        self.num_pruned = np.zeros((num_groups, first.max_num_reqs), dtype=np.int64)
        for g, table in enumerate(tables):
            self.num_pruned[g] = table.num_pruned
            table.num_pruned = self.num_pruned[g]
        self.group_index = torch.arange(num_groups, device=dev)[:, None]
        self.padded = first.max_num_batched_tokens  # slots past this step's tokens hold PAD up to here

    @staticmethod
    def _share(tables, name: str, dtype) -> CpuGpuBuffer:
        first = getattr(tables[0], name)
        shared = CpuGpuBuffer(len(tables), *first.cpu.shape, dtype=dtype,
                              device=first.gpu.device, pin_memory=tables[0].pin_memory)
        if first.gpu.data_ptr() == first.cpu.data_ptr():  # the CPU runner's buffers are one tensor
            shared.gpu = shared.cpu
        for g, table in enumerate(tables):
            own = getattr(table, name)
            shared.cpu[g].copy_(own.cpu)
            shared.gpu[g].copy_(own.gpu)
            own.cpu, own.gpu, own.np = shared.cpu[g], shared.gpu[g], shared.np[g]
        return shared

    def commit_block_table(self, num_reqs: int) -> None:
        gpu, cpu = self.block_table.gpu, self.block_table.cpu
        if gpu is not cpu:
            gpu[:, :num_reqs].copy_(cpu[:, :num_reqs], non_blocking=True)

    def compute_slot_mapping(self, num_reqs: int, query_start_loc: torch.Tensor,
                             positions: torch.Tensor) -> None:
        """What vLLM's kernel computes per group, for every group at once:
        slot = block_table[g, row, pos // B] * B + pos % B with
        pos = position - num_pruned[g, row]; PAD (-1) after the step's tokens."""
        num_tokens, size = positions.shape[0], self.block_size
        device = positions.device
        qsl = query_start_loc[: num_reqs + 1]
        rows = torch.repeat_interleave(torch.arange(num_reqs, device=device),
                                       (qsl[1:] - qsl[:-1]).to(torch.long), output_size=num_tokens)
        pos = positions.to(torch.int64)[None, :].expand(len(self.tables), num_tokens)
        pruned = self.num_pruned[:, :num_reqs]
        if pruned.any():
            shift = torch.from_numpy(pruned).to(device, non_blocking=True)
            pos = pos - shift.index_select(1, rows)
        blocks = self.block_table.gpu[self.group_index, rows[None, :], pos // size]
        slots = self.slot_mapping.gpu
        torch.add(blocks.to(torch.int64) * size, pos % size, out=slots[:, :num_tokens])
        if self.padded > num_tokens:
            slots[:, num_tokens: self.padded].fill_(PAD_SLOT_ID)
        self.padded = num_tokens


def share_group_tables(multi) -> GroupTables | None:
    """Make `multi`'s groups (a `MultiGroupBlockTable`) share buffers when
    they are alike (PLPHP's groups are: one full-attention layer each);
    None, and nothing changed, otherwise."""
    tables = multi.block_tables
    first = tables[0] if tables else None
    alike = len(tables) > 1 and all(
        isinstance(t, PlphpBlockTable)
        and t.slot_mapping_mode == SlotMappingMode.TOKEN_TO_KV_SLOT
        and (t.dcp_world_size, t.pcp_world_size) == (1, 1)
        and (t.block_size, t.max_num_reqs, t.max_num_blocks_per_req, t.max_num_batched_tokens)
        == (first.block_size, first.max_num_reqs, first.max_num_blocks_per_req,
            first.max_num_batched_tokens)
        for t in tables)
    multi.plphp_shared = GroupTables(tables) if alike else None
    return multi.plphp_shared

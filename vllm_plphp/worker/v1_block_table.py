"""Worker block table that knows how many entries each request's layer pruned.

One `BlockTable` exists per KV cache group; PLPHP gives every attention layer
its own group, so `num_pruned[row]` is per (request, layer). Positions stay
logical (RoPE, M-RoPE); only the cache slot of a new token moves to the
compacted position `pos - num_pruned[row]`. The count follows the request
through add/clear/move/swap of rows, like the block ids themselves.
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.v1.worker.block_table import BlockTable


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

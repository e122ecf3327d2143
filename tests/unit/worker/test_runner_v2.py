"""Model Runner V2 adapter seams with small fakes of what the runner hands it:
new tokens' slots move to compacted positions per layer, and commits shrink
the slot's block list by the shared rule."""

from types import SimpleNamespace

import numpy as np
import torch

from vllm_plphp.core.blocks import kept_blocks
from vllm_plphp.worker.runner_v2 import V2Adapter

G, R, B, BS = 3, 4, 6, 4


def adapter():
    a = V2Adapter.__new__(V2Adapter)
    a.block_size = BS
    a.pruned = torch.zeros(G, R, dtype=torch.int32)
    a.pruned_np = np.zeros((G, R), dtype=np.int32)
    a.shift = torch.zeros(G, R, dtype=torch.int32)
    a.group_index = torch.arange(G)[:, None]
    a.input_tables = torch.arange(G * R * B, dtype=torch.int32).reshape(G, R, B) + 100
    a.runner = SimpleNamespace(block_tables=SimpleNamespace(
        num_blocks=SimpleNamespace(np=np.full((G, R), B, dtype=np.int32))))
    return a


def test_slots_of_new_tokens_follow_each_layers_pruned_count():
    a = adapter()
    # rows: a 3-token prefill chunk (unpruned), two decodes of pruned requests
    qsl = torch.tensor([0, 3, 4, 5], dtype=torch.int32)
    positions = torch.tensor([0, 1, 2, 17, 9])
    shift = torch.tensor([[0, 5, 0], [0, 9, 2], [0, 0, 7]], dtype=torch.int32)
    a.shift[:, :3] = shift
    batch = SimpleNamespace(num_reqs=3, num_tokens=5, query_start_loc=qsl, positions=positions)
    slots = torch.full((G, 8), -1, dtype=torch.int64)
    a._shift_slots(batch, slots)
    rows = [0, 0, 0, 1, 2]
    for g in range(G):
        for t, row in enumerate(rows):
            pos = int(positions[t]) - int(shift[g, row])
            expected = int(a.input_tables[g, row, pos // BS]) * BS + pos % BS
            assert slots[g, t] == expected, (g, t)
        assert (slots[g, 5:] == -1).all()  # padding untouched


def test_commit_records_count_and_truncates_block_list():
    a = adapter()
    target = SimpleNamespace(slot=2, row=0, total_len=21, req_id="r")
    a.commit(1, target, kept=6)
    assert a.pruned_np[1, 2] == a.pruned[1, 2] == 15
    keep, _ = kept_blocks(21, 15, BS)
    assert a.runner.block_tables.num_blocks.np[1, 2] == keep == 2
    assert a.runner.block_tables.num_blocks.np[0, 2] == B  # other layers untouched
    a._reset_slot(2)
    assert not a.pruned_np.any() and not a.pruned.any()

"""V1 block tables of a PLPHP engine: the groups' shared buffers give the
same slot mappings as vLLM's own per-group kernel (its CPU op), each layer's
new tokens at their compacted positions, and rows still move per group."""

import numpy as np
import pytest
import torch
from vllm.v1.worker.block_table import MultiGroupBlockTable

from vllm_plphp.worker.v1_block_table import PlphpBlockTable, share_group_tables

G, R, BS, MAX_LEN, MAX_TOKENS = 4, 3, 4, 64, 32


@pytest.fixture(autouse=True)
def plphp_tables(monkeypatch):
    """The PLPHP block table MultiGroupBlockTable builds (the plugin's patch)
    and vLLM's slot-mapping kernel on CPU (its C op, which the platform
    registers at engine start)."""
    import vllm._custom_ops  # noqa: F401  (loads vLLM's C ops)
    from vllm.triton_utils.dispatcher import register_kernels
    from vllm.utils import cpu_triton_utils
    from vllm.v1.worker import block_table

    register_kernels({"vllm.v1.worker.block_table.ComputeSlotMappingKernel.kernel":
                      cpu_triton_utils._compute_slot_mapping_kernel_impl})
    monkeypatch.setattr(block_table, "BlockTable", PlphpBlockTable)


def tables() -> MultiGroupBlockTable:
    return MultiGroupBlockTable(R, MAX_TOKENS, False, torch.device("cpu"), [BS] * G, [MAX_LEN // BS] * G)


def fill(multi, rng) -> None:
    """Random block ids in every row and group; pruned counts in groups 1.. of rows 0 and 2."""
    for row in range(R):
        multi.add_row(tuple(rng.permutation(200)[: MAX_LEN // BS].tolist() for _ in range(G)), row)
        for g in range(G):
            multi[g].num_pruned[row] = rng.integers(1, 9) if g and row != 1 else 0


def test_shared_slot_mapping_equals_vllms_kernel_per_group():
    per_group, shared = tables(), tables()
    assert share_group_tables(shared) is not None
    fill(per_group, np.random.default_rng(1))
    fill(shared, np.random.default_rng(1))
    # a 5-token prefill chunk (row 1, unpruned), two decodes of pruned rows
    qsl = torch.tensor([0, 1, 6, 7], dtype=torch.int32)
    positions = torch.tensor([40, 10, 11, 12, 13, 14, 33])
    per_group.commit_block_table(R)  # vLLM's loops over groups
    per_group.compute_slot_mapping(R, qsl, positions)
    shared.plphp_shared.commit_block_table(R)  # what the patched MultiGroupBlockTable calls
    shared.plphp_shared.compute_slot_mapping(R, qsl, positions)
    rows = [0, 1, 1, 1, 1, 1, 2]
    for g in range(G):
        want = per_group[g].slot_mapping.gpu[:7]
        got = shared[g].slot_mapping.gpu[:7]
        assert torch.equal(got, want), g
        # and what that is: the block of the compacted position
        pos = positions - torch.tensor([int(shared[g].num_pruned[r]) for r in rows])
        ids = shared[g].block_table.np
        assert got.tolist() == [int(ids[r, p // BS]) * BS + p % BS for r, p in zip(rows, pos.tolist())]
        assert (shared[g].slot_mapping.gpu[7:] == -1).all()  # PAD after the step's tokens
    assert shared.plphp_shared.num_pruned[1:, 0].all(), "the test must shift some rows"


def test_rows_still_move_per_group_through_the_views():
    multi = tables()
    shared = share_group_tables(multi)
    rng = np.random.default_rng(2)
    fill(multi, rng)
    before = shared.block_table.np.copy(), shared.num_pruned.copy()
    multi.swap_row(0, 2)
    multi.move_row(1, 0)  # row 0 now holds what row 1 held; row 1 cleared
    assert np.array_equal(shared.block_table.np[:, 0], before[0][:, 1])
    assert np.array_equal(shared.block_table.np[:, 2], before[0][:, 0])
    assert np.array_equal(shared.num_pruned[:, 2], before[1][:, 0])
    assert np.array_equal(shared.num_pruned[:, 0], before[1][:, 1])
    assert not shared.num_pruned[:, 1].any() and not shared.block_table.np[:, 1].any()
    for g in range(G):  # each group's own attributes are views of the shared rows
        assert np.shares_memory(multi[g].block_table.np, shared.block_table.np)
        assert np.shares_memory(multi[g].num_pruned, shared.num_pruned)


def test_unlike_groups_keep_their_own_buffers():
    multi = MultiGroupBlockTable(R, MAX_TOKENS, False, torch.device("cpu"), [BS, 2 * BS], [8, 4])
    assert share_group_tables(multi) is None
    assert multi.plphp_shared is None

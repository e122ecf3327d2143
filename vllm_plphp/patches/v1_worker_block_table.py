"""Target: vllm.v1.worker.block_table.BlockTable (the name MultiGroupBlockTable uses);
MultiGroupBlockTable.compute_slot_mapping and .commit_block_table

Why: decode writes a new token at its compacted position; the per-(request,
layer) pruned count must follow the request when rows are added, cleared,
moved or swapped, exactly like its block ids.
How: the module attribute `BlockTable` is replaced by the subclass
`vllm_plphp.worker.v1_block_table.PlphpBlockTable`, which MultiGroupBlockTable then
instantiates for every group. With no pruned row it behaves as the original
(one numpy `.any()` per group per step), so stock engines are unaffected.
MultiGroupBlockTable's two per-step loops over groups run as one batched op
each (`GroupTables`) when the PLPHP runner made its groups share buffers
(`share_group_tables`, from `GPUModelRunner.may_reinitialize_input_batch`);
otherwise the originals run.
vLLM versions checked: 0.32.0.
Remove when: vLLM exposes a per-group slot offset (or block table factory).
"""

from vllm.v1.worker import block_table
from vllm.v1.worker.block_table import MultiGroupBlockTable

from vllm_plphp.patches import original, patch
from vllm_plphp.worker.v1_block_table import PlphpBlockTable


def compute_slot_mapping(self, num_reqs, query_start_loc, positions):
    shared = getattr(self, "plphp_shared", None)
    if shared is None:
        return original(MultiGroupBlockTable, "compute_slot_mapping")(
            self, num_reqs, query_start_loc, positions)
    return shared.compute_slot_mapping(num_reqs, query_start_loc, positions)


def commit_block_table(self, num_reqs):
    shared = getattr(self, "plphp_shared", None)
    if shared is None:
        return original(MultiGroupBlockTable, "commit_block_table")(self, num_reqs)
    return shared.commit_block_table(num_reqs)


def apply() -> None:
    patch(block_table, "BlockTable", PlphpBlockTable)
    patch(MultiGroupBlockTable, "compute_slot_mapping", compute_slot_mapping)
    patch(MultiGroupBlockTable, "commit_block_table", commit_block_table)

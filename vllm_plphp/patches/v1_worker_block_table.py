"""Target: vllm.v1.worker.block_table.BlockTable (the name MultiGroupBlockTable uses)

Why: decode writes a new token at its compacted position; the per-(request,
layer) pruned count must follow the request when rows are added, cleared,
moved or swapped, exactly like its block ids.
How: the module attribute `BlockTable` is replaced by the subclass
`vllm_plphp.worker.v1_block_table.PlphpBlockTable`, which MultiGroupBlockTable then
instantiates for every group. With no pruned row it behaves as the original
(one numpy `.any()` per group per step), so stock engines are unaffected.
vLLM versions checked: 0.32.0.
Remove when: vLLM exposes a per-group slot offset (or block table factory).
"""

from vllm.v1.worker import block_table

from vllm_plphp.worker.v1_block_table import PlphpBlockTable
from vllm_plphp.patches import patch


def apply() -> None:
    patch(block_table, "BlockTable", PlphpBlockTable)

"""Which of a pruned layer's blocks a request keeps (plain Python, no torch).

Both sides of the worker -> scheduler seam use this one rule, so their block
lists stay identical whatever the order in which they learn of a prune:

- the worker applies it in the step that compacts the layer, before any later
  step's new blocks reach its block table;
- the scheduler applies it when the step's prune event arrives: right after
  that step with synchronous scheduling, or one step later with async
  scheduling, when it has already allocated (at full length) the blocks of the
  step in flight. Those later blocks come after the `first` blocks and are kept.

A layer that kept `kept = num_tokens - num_pruned` entries keeps
`cdiv(kept + 1, block_size)` of its first `cdiv(num_tokens, block_size)`
blocks: the compacted entries plus room for the next token. The step in flight
under async scheduling writes that token at compacted position `kept` with
blocks the scheduler allocated before it knew of the prune, and those may not
include a block for that position.
"""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def kept_blocks(num_tokens: int, num_pruned: int, block_size: int) -> tuple[int, int]:
    """(keep, first): keep blocks [0, keep) of the request's first `first`
    blocks; blocks [keep, first) go back to the pool; later blocks stay."""
    first = cdiv(num_tokens, block_size)
    keep = min(first, cdiv(num_tokens - num_pruned + 1, block_size))
    return keep, first

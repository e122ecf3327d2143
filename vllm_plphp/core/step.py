"""Per-step state: created when a model runner step begins, dropped when it ends.

One `StepContext` per forward step that may prune (nano-vllm's context, set and
reset each step). Runner adapters fill `targets` before the forward and
`shift` before attention metadata is built; attention layers read both and
append to `events` / `stats`; the adapter hands those to the step's
ModelRunnerOutput for the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vllm_plphp.core.plan import PruneTarget


@dataclass
class StepContext:
    targets: list[PruneTarget] = field(default_factory=list)
    # request ids the planner looked at in this step (pruned or opted out):
    # the scheduler checks every image request that completes its prefill is here
    planned: list[str] = field(default_factory=list)
    # (num_groups, num_rows) entries pruned per (layer group, batch row), on
    # the device, or None when no row of the batch has a pruned layer
    shift: torch.Tensor | None = None
    # req_id -> {group id: (entries pruned, entries before pruning)}
    events: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)
    # counts for metrics (vllm_plphp.engine.stats.COUNTERS, "rates")
    stats: dict = field(default_factory=dict)
    # req_id -> number of layers pruned in this step (the never-silent check)
    layers_pruned: dict[str, int] = field(default_factory=dict)
    # batched path: (req ids, BatchPlan, rows, query rows, {(block size,
    # KV heads): DenseLayout} (CPU paths: torch ops and the C kernel)) of the step,
    # and (group, layer, targets, LayerResult) per layer until `commit_pending`
    batch: tuple | None = None
    pending: list = field(default_factory=list)

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

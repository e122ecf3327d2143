"""Worker-process PLPHP state: the step's prune targets and what was pruned.

One instance per worker process (`STATE`). The model runner patch fills it
once per step; attention layers read it. Per-(request, layer) pruned counts
live in the per-layer block tables (`vllm_plphp.block_table`), so they follow
each request when the batch is condensed or reordered; `records` keeps what a
request's prefill decided (gamma, rate, kept length) for reporting.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from vllm_plphp.config import PlphpConfig
from vllm_plphp.plan import PruneTarget

MAX_FINISHED_RECORDS = 4096


@dataclass
class LayerRecord:
    gamma: float  # vision attention score of the layer
    rate: float  # retention rate r_l chosen from gamma
    kept: int  # entries per head left in the layer's cache (L_l)
    total: int  # entries before pruning (T)
    vision: int  # vision tokens seen
    vision_kept: int  # vision tokens kept per head


@dataclass
class WorkerState:
    config: PlphpConfig | None = None
    runner: object = None  # the GPUModelRunner / CPUModelRunner of this worker
    num_layers: int = 0  # decoder layers of the language model
    layer_to_group: dict[str, int] = field(default_factory=dict)
    targets: list[PruneTarget] = field(default_factory=list)
    # req_id -> {group id: entries pruned}; re-applied when a request re-enters
    # the batch, dropped when it finishes or is preempted (it re-prefills)
    pruned: dict[str, dict[int, int]] = field(default_factory=dict)
    # this step's prunes for the scheduler: req_id -> {group id: (pruned, T)}
    events: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)
    # this step's counts for metrics (vllm_plphp.metrics.COUNTERS, "rates")
    step_stats: dict = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        self.step_stats[name] = self.step_stats.get(name, 0) + n
    # req_id -> {layer_index: LayerRecord}; finished requests move to `finished`
    records: dict[str, dict[int, LayerRecord]] = field(default_factory=dict)
    finished: OrderedDict = field(default_factory=OrderedDict)
    # time spent scoring + compacting, and in the steps that pruned (seconds)
    prune_seconds: float = 0.0
    pruning_step_seconds: float = 0.0
    # inspection: layer index whose per-head kept vision positions are kept
    keep_layer: int | None = None
    keep_maps: dict[str, dict] = field(default_factory=dict)
    # debug: layer_name -> seq_lens the stock kernel received in the last step
    record_seq_lens: bool = False
    last_seq_lens: dict[str, list[int]] = field(default_factory=dict)

    def block_table_for(self, layer_name: str):
        gid = self.layer_to_group.get(layer_name)
        if gid is None or self.runner is None:
            return None
        return self.runner.input_batch.block_table[gid]

    def forget(self, req_ids) -> None:
        """Preempted requests: their cache is rebuilt and pruned again."""
        for req_id in req_ids:
            self.pruned.pop(req_id, None)

    def finish(self, req_ids) -> None:
        self.forget(req_ids)
        for req_id in req_ids:
            rec = self.records.pop(req_id, None)
            if rec is not None:
                self.finished[req_id] = rec
        while len(self.finished) > MAX_FINISHED_RECORDS:
            self.finished.popitem(last=False)

    def lookup(self, req_id: str) -> dict[int, LayerRecord] | None:
        return self.records.get(req_id, self.finished.get(req_id))


STATE = WorkerState()

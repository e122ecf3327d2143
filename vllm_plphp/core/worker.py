"""Worker-process PLPHP state of one engine: the long-lived bookkeeping.

`PlphpWorker` owns what outlives a step: settings, the layer -> KV cache group
map, per-request records of what a prefill decided (gamma, rate, kept length),
and what the scheduler has not been told yet (`outbox`). What a single step
needs lives in `self.step` (a `StepContext`), which the runner adapter sets
before the forward and resets after it. Per-(request, layer) pruned counts
belong to the runner adapter, because they must follow the runner's own
request layout (batch rows in V1, request slots in Model Runner V2).

One worker per engine: found by the engine's `VllmConfig` (`worker_for`), which
the model runner, the attention metadata builders and the attention layers of
one engine share. Two engines in one process get two workers.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from vllm_plphp.config import PlphpConfig, from_vllm_config
from vllm_plphp.core.step import StepContext

MAX_FINISHED_RECORDS = 4096


@dataclass
class LayerRecord:
    gamma: float  # vision attention score of the layer (nan: not scored)
    rate: float  # retention rate r_l chosen from gamma
    kept: int  # entries per head left in the layer's cache (L_l)
    total: int  # entries before pruning (T)
    vision: int  # vision tokens seen
    vision_kept: int  # vision tokens kept per head


class PlphpWorker:
    def __init__(self, vllm_config) -> None:
        self.config: PlphpConfig = from_vllm_config(vllm_config)
        self.num_layers: int = vllm_config.model_config.hf_text_config.num_hidden_layers
        self.layer_to_group: dict[str, int] = {}
        # decoder layers held by this worker (all of them, except under
        # pipeline parallelism, where each stage holds its own)
        self.local_layers: list[int] = list(range(self.num_layers))
        self.adapter = None  # the runner adapter (vllm_plphp.worker.runner_v1 / runner_v2)
        # pruning kernels: None (Triton on CUDA, torch elsewhere), "torch" or "triton"
        self.kernels: str | None = None if self.config.kernels == "auto" else self.config.kernels
        self.step: StepContext | None = None
        # (layer name, cache pointer, query heads) -> whether the C kernel takes the layer
        self.c_supported: dict[tuple, bool] = {}
        self._tp_size: int | None = None
        # events, stats and planned ids of finished steps not yet handed to an output
        self.outbox = StepContext()
        # pipeline parallel (vllm_plphp.worker.pipeline): the stage exchange,
        # and whether a step pruned since the last exchange
        self.stages = None
        self.exchange_due = False
        self.records: dict[str, dict[int, LayerRecord]] = {}
        self.finished: OrderedDict = OrderedDict()
        # seconds spent scoring + compacting, and in the steps that pruned
        self.prune_seconds = 0.0
        self.pruning_step_seconds = 0.0
        # inspection (vllm_plphp.worker.extension)
        self.keep_layer: int | None = None
        self.keep_maps: dict[str, dict] = {}
        # every pruned layer's kept positions per request (inspect's drawing)
        self.keep_all = False
        self.keep_maps_all: dict[str, dict[int, list]] = {}
        self.record_seq_lens = False
        self.last_seq_lens: dict[str, list[int]] = {}

    @property
    def tp_size(self) -> int:
        """Tensor-parallel ranks (asked once: it does not change in a process)."""
        if self._tp_size is None:
            from vllm.distributed import get_tensor_model_parallel_world_size

            self._tp_size = get_tensor_model_parallel_world_size()
        return self._tp_size

    def set_groups(self, kv_cache_config) -> None:
        self.layer_to_group = {
            name: gid
            for gid, group in enumerate(kv_cache_config.kv_cache_groups)
            for name in group.layer_names
        }
        from vllm.model_executor.models.utils import extract_layer_index

        self.local_layers = sorted(extract_layer_index(name) for name in self.layer_to_group)

    # ---------------------------------------------------------------- steps
    def begin_step(self) -> StepContext:
        self.step = StepContext()
        return self.step

    def run_step(self, execute):
        """Run the runner's `execute_model` (which opens the step when it plans)
        and close the step after it; returns its output."""
        start = time.perf_counter()
        try:
            output = execute()
        except BaseException:
            self.step = None
            raise
        if self.step is not None and self.step.targets:
            self.pruning_step_seconds += time.perf_counter() - start
        self.end_step()
        return output

    def end_step(self) -> None:
        """Close the step: check every planned target was pruned by some layer,
        and queue its events for the step's ModelRunnerOutput."""
        step = self.step
        if step is None:
            return
        if step.pending:
            from vllm_plphp.core.prune import commit_pending

            commit_pending(self, step)
        self.step = None
        self.exchange_due = self.exchange_due or bool(step.targets)
        out = self.outbox
        out.planned.extend(step.planned)
        for req_id, groups in step.events.items():
            out.events.setdefault(req_id, {}).update(groups)
        for name, value in step.stats.items():
            if name == "rates":
                out.stats.setdefault("rates", []).extend(value)
            else:
                out.count(name, value)
        missing = [t.req_id for t in step.targets
                   if t.expects_pruning(self.num_layers, self.local_layers)
                   and not step.layers_pruned.get(t.req_id)]
        if missing:
            raise RuntimeError(
                f"PLPHP planned to prune request(s) {missing[:4]} in this step but no "
                "attention layer pruned them: the PLPHP attention implementation did not "
                "run its pruning (another attention backend, or attention replayed inside a "
                "full CUDA graph). Refusing to continue with unpruned caches."
            )

    def exchange_stages(self) -> None:
        """After a step's sampling: under pipeline parallelism, hand this
        stage's events to the last stage (or collect the others' there)."""
        if self.stages is not None and self.exchange_due:
            self.exchange_due = False
            self.stages.exchange(self)

    def take_outbox(self) -> StepContext | None:
        out = self.outbox
        if not (out.events or out.stats or out.planned):
            return None
        self.outbox = StepContext()
        return out

    # ---------------------------------------------------------------- records
    def finish(self, req_ids) -> None:
        for req_id in req_ids:
            rec = self.records.pop(req_id, None)
            if rec is not None:
                self.finished[req_id] = rec
        while len(self.finished) > MAX_FINISHED_RECORDS:
            self.finished.popitem(last=False)

    def lookup(self, req_id: str) -> dict[int, LayerRecord] | None:
        return self.records.get(req_id, self.finished.get(req_id))


_WORKERS: dict[int, tuple[weakref.ref, PlphpWorker]] = {}


def worker_for(vllm_config) -> PlphpWorker:
    """The PLPHP worker of the engine that owns `vllm_config` (created once)."""
    key = id(vllm_config)
    entry = _WORKERS.get(key)
    if entry is not None and entry[0]() is vllm_config:
        return entry[1]
    worker = PlphpWorker(vllm_config)
    _WORKERS[key] = (weakref.ref(vllm_config, lambda _: _WORKERS.pop(key, None)), worker)
    return worker


def all_workers() -> list[PlphpWorker]:
    return [w for ref, w in _WORKERS.values() if ref() is not None]

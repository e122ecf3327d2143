"""Pipeline parallel: each stage prunes its own layers, and the last stage
carries every stage's prune events to the scheduler.

vLLM 0.32's executors hand the scheduler only the output rank's
ModelRunnerOutput (the last stage's), so what an earlier stage pruned, and the
blocks it no longer needs, would never reach the scheduler. After the runner's
`sample_tokens` of a step that pruned (every stage plans the same targets from
the same scheduler output, so all stages agree on which steps those are):

- an earlier stage sends its outbox (events and per-layer counts) to the last
  stage of its PP group over the group's CPU (gloo) communicator, without
  waiting for it to be received (`isend`; the handles are kept until done);
- the last stage receives one outbox per earlier stage, in stage order, and
  merges it into its own before the events ride on its output.

Messages between two ranks arrive in the order sent and both sides count the
same pruning steps, so step T's events meet step T's output. Counts made by the
planner (requests pruned / skipped, the planned ids) are the same on every
stage and are taken from the last stage only.
"""

from __future__ import annotations

import pickle

import torch

from vllm_plphp.core.step import StepContext

PLAN_COUNTS = ("requests_pruned", "requests_skipped")


class StageExchange:
    def __init__(self, group=None) -> None:
        """group: vLLM's PP GroupCoordinator of this worker (default: get_pp_group())."""
        if group is None:
            from vllm.distributed.parallel_state import get_pp_group

            group = get_pp_group()
        self.group = group
        self.is_last = self.group.is_last_rank
        self._sending: list = []  # (work handles, tensors) until complete

    def exchange(self, worker) -> None:
        if self.is_last:
            for stage in range(self.group.world_size - 1):
                merge(worker.outbox, self._recv(stage))
        else:
            self._send(worker.take_outbox() or StepContext())

    def _send(self, out: StepContext) -> None:
        self._sending = [(w, t) for w, t in self._sending if not all(x.is_completed() for x in w)]
        stats = {k: v for k, v in out.stats.items() if k not in PLAN_COUNTS}
        payload = torch.frombuffer(bytearray(pickle.dumps((out.events, stats))), dtype=torch.uint8)
        size = torch.tensor([payload.numel()], dtype=torch.long)
        dst = self.group.last_rank
        works = [torch.distributed.isend(t, dst=dst, group=self.group.cpu_group)
                 for t in (size, payload)]
        self._sending.append((works, (size, payload)))

    def _recv(self, stage: int) -> tuple[dict, dict]:
        src = self.group.ranks[stage]
        size = torch.empty(1, dtype=torch.long)
        torch.distributed.recv(size, src=src, group=self.group.cpu_group)
        payload = torch.empty(int(size.item()), dtype=torch.uint8)
        torch.distributed.recv(payload, src=src, group=self.group.cpu_group)
        return pickle.loads(payload.numpy().tobytes())


def merge(outbox: StepContext, received: tuple[dict, dict]) -> None:
    """Add an earlier stage's events (its own layer groups) and per-layer counts."""
    events, stats = received
    for req_id, groups in events.items():
        outbox.events.setdefault(req_id, {}).update(groups)
    for name, value in stats.items():
        if name == "rates":
            outbox.stats.setdefault("rates", []).extend(value)
        else:
            outbox.count(name, value)


def stage_exchange(vllm_config) -> StageExchange | None:
    """The exchange of this worker's PP group (None without pipeline parallelism)."""
    if vllm_config.parallel_config.pipeline_parallel_size <= 1:
        return None
    return StageExchange()

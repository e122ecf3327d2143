"""The pipeline stage exchange (vllm_plphp.worker.pipeline) without an engine:
three real processes joined by a gloo group, as a PP group of three stages."""

import os
import socket
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vllm_plphp.core.step import StepContext
from vllm_plphp.worker.pipeline import StageExchange, merge

STEPS = 3


def outbox(stage: int, step: int) -> StepContext:
    """What stage `stage` pruned in pruning step `step`: its own layer groups."""
    out = StepContext()
    out.events = {f"req{step}": {10 * stage + g: (step + g, 100) for g in range(2)}}
    out.count("requests_pruned", 1)  # the planner's count: the same on every stage
    out.count("vision_tokens_seen", 576 * 2)
    out.stats["rates"] = [(0.1, 0.2, 0.3)[stage]] * 2
    return out


def _stage(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    group = SimpleNamespace(cpu_group=dist.group.WORLD, ranks=list(range(world)), world_size=world,
                            last_rank=world - 1, is_last_rank=rank == world - 1)
    exchange = StageExchange(group)
    worker = SimpleNamespace(outbox=StepContext())
    worker.take_outbox = lambda: worker.outbox
    received = []
    for step in range(STEPS):
        worker.outbox = outbox(rank, step)
        exchange.exchange(worker)
        if exchange.is_last:
            received.append((worker.outbox.events, worker.outbox.stats))
    for works, _ in exchange._sending:
        for w in works:
            w.wait()
    dist.barrier()
    if exchange.is_last:
        queue.put(received)
    dist.destroy_process_group()


def test_last_stage_gets_every_stage_events_in_step_order():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_stage, args=(r, 3, port, queue)) for r in range(3)]
    for p in procs:
        p.start()
    received = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for step, (events, stats) in enumerate(received):
        # each step's events of all three stages, none from another step
        assert events == {f"req{step}": {10 * s + g: (step + g, 100) for s in range(3) for g in range(2)}}
        assert stats["requests_pruned"] == 1  # the last stage's own, not summed
        assert stats["vision_tokens_seen"] == 3 * 576 * 2
        assert sorted(stats["rates"]) == sorted([0.1, 0.1, 0.2, 0.2, 0.3, 0.3])


def test_merge_adds_layer_counts_and_events():
    mine = StepContext()
    mine.events = {"a": {5: (3, 10)}}
    mine.count("vision_tokens_kept", 4)
    merge(mine, ({"a": {1: (2, 10)}, "b": {1: (1, 9)}}, {"vision_tokens_kept": 6, "rates": [0.7]}))
    assert mine.events == {"a": {5: (3, 10), 1: (2, 10)}, "b": {1: (1, 9)}}
    assert mine.stats == {"vision_tokens_kept": 10, "rates": [0.7]}

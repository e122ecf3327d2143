"""Where a decode step's time goes, stock against PLPHP, phase by phase (issue 29).

  .venv/bin/python benchmarks/decode_gap.py --shape 8img --requests 2 --tokens 24 --repeats 3

`decode_step.py` measures PLPHP's decode step against the ideal that stock's
attention share and the kept KV predict; this script says what the rest of
the gap is made of. Stock and PLPHP r=0.4 balanced (every pruned layer keeps
0.4) run in one process (engine core in-process), and wall-clock timers are
wrapped around the engine step's phases (class attributes, after the
plugin's own patches, originals restored at the end):

  engine step      `LLMEngine.step`: scheduling, the model runner, outputs
  schedule         `Scheduler.schedule` (KV cache manager, every group)
  update           `Scheduler.update_from_output`
  runner           `GPUModelRunner.execute_model` + `sample_tokens`
  metadata         `GPUModelRunner._build_attention_metadata` (every group)
  slot mapping     `MultiGroupBlockTable.compute_slot_mapping` (every group)
  block table commit  `MultiGroupBlockTable.commit_block_table` (every group)
  forward          `GPUModelRunner._model_forward` (the compiled model)
  attention        the CPU_ATTN impl's `forward` (every layer; PLPHP's own check included)

Per decode step = time in the engine steps after a `--tokens` run's first
(the prefill, one step for all requests) / (tokens - 1), per repeat; printed:
median over repeats (min-max). Phases nest
(metadata and slot mapping are inside runner, attention inside forward),
so rows do not add up. The timers cost about a microsecond per call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TOTALS: dict[str, float] = defaultdict(float)
STEP = [0]  # engine steps so far in this run; step 1 is the prefill, not counted


def targets():
    """(row name, class, method) of every timed phase."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl, CPUAttentionMetadataBuilder
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.engine.llm_engine import LLMEngine
    from vllm.v1.worker.block_table import MultiGroupBlockTable
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    return [
        ("engine step", LLMEngine, "step"),
        ("schedule", Scheduler, "schedule"),
        ("update", Scheduler, "update_from_output"),
        ("runner", GPUModelRunner, "execute_model"),
        ("runner", GPUModelRunner, "sample_tokens"),
        ("metadata", GPUModelRunner, "_build_attention_metadata"),
        ("cpu_attn build", CPUAttentionMetadataBuilder, "build"),
        ("slot mapping", MultiGroupBlockTable, "compute_slot_mapping"),
        ("block table commit", MultiGroupBlockTable, "commit_block_table"),
        ("forward", GPUModelRunner, "_model_forward"),
        ("attention", CPUAttentionBackendImpl, "forward"),
    ]


def timed(name, fn):
    def wrapper(*args, **kwargs):
        if name == "engine step":
            STEP[0] += 1
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            if STEP[0] > 1:
                TOTALS[name] += time.perf_counter() - start
    return wrapper


def instrument() -> list:
    """Wrap every phase; returns what `restore` needs."""
    saved = []
    for name, cls, attr in targets():
        original = cls.__dict__[attr]
        saved.append((cls, attr, original))
        setattr(cls, attr, timed(name, original))
    return saved


def restore(saved) -> None:
    for cls, attr, original in reversed(saved):
        setattr(cls, attr, original)


def per_step(llm, prompts, tokens: int) -> dict[str, float]:
    """Seconds per decode step of each phase (the prefill step left out)."""
    from vllm import SamplingParams

    TOTALS.clear()
    STEP[0] = 0
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True),
                           use_tqdm=False)
    if any(len(o.outputs[0].token_ids) != tokens for o in outputs):
        raise RuntimeError("a request ended early")
    return {k: v / (tokens - 1) for k, v in TOTALS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="8img", help="1img, 4img, 8img or video (benchmarks/shapes.py)")
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kv-mib", type=int, default=1024)
    args = ap.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the timers see the engine core
    from vllm import LLM

    import shapes

    base = shapes.engine_args(args.shape)
    base["max_num_batched_tokens"] = args.requests * base["max_model_len"]  # one prefill step
    common = dict(**base, enable_prefix_caching=False, seed=0, kv_cache_memory_bytes=args.kv_mib << 20,
                  max_num_seqs=args.requests)
    balanced = {"r": 0.4, "delta_r": 0.0, "alpha": 1.0, "beta": 0.0}
    engines = {"stock": LLM(**common),
               "plphp balanced": LLM(**common, attention_backend="plphp",
                                     additional_config={"plphp": balanced})}
    prompts = [shapes.inputs(args.shape, seed) for seed in range(args.requests)]
    saved = instrument()
    try:
        for llm in engines.values():  # warm-up
            per_step(llm, prompts, 4)
        rows: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in engines}
        for rep in range(args.repeats):
            for name, llm in engines.items():
                for phase, seconds in per_step(llm, prompts, args.tokens).items():
                    rows[name][phase].append(seconds * 1e3)
            print(f"repeat {rep}: " + "  ".join(
                f"{n} {rows[n]['engine step'][-1]:.1f} ms/step" for n in engines), flush=True)
    finally:
        restore(saved)
    phases = list(dict.fromkeys(name for name, _, _ in targets()))
    print(f"\nshape {args.shape}, {args.requests} requests x {args.tokens} tokens, "
          f"{args.repeats} repeats; ms per decode step, median (min-max)\n")
    print("| phase | stock | PLPHP r=0.4 balanced | PLPHP - stock (medians) |")
    print("|---|---|---|---|")
    for phase in phases:
        cells, medians = [], []
        for name in engines:
            values = rows[name].get(phase)
            if not values:
                cells.append("-")
                medians.append(0.0)
                continue
            medians.append(statistics.median(values))
            cells.append(f"{medians[-1]:.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"| {phase} | {cells[0]} | {cells[1]} | {medians[1] - medians[0]:+.2f} |")


if __name__ == "__main__":
    main()

"""Share of PLPHP's pruning work (scoring + selection + compaction, and the
step's one commit) in the prefill steps that prune, measured in the worker
(`plphp_timing`), per prompt shape (`benchmarks/shapes.py`).

One offline engine per shape, vLLM's defaults (compiled; V1 runner on CPU),
PLPHP r=0.4 with the paper's thresholds. After a warm-up, each sample is one
`generate` of `--batch` fresh requests for 1 output token, i.e. one prefill
step that prunes them all; the share is that step's prune seconds over its
step seconds. Prints median, min and max over `--samples`.

  .venv/bin/python benchmarks/prune_share.py --shapes 1img,8img
  .venv/bin/python benchmarks/prune_share.py --shapes 1img --batch 4
  .venv/bin/python benchmarks/prune_share.py --shapes 1img --kernels torch
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import shapes  # noqa: E402


def measure(shape: str, samples: int, batch: int, eager: bool, r: float = 0.4,
            kernels: str = "auto") -> list[dict]:
    from vllm import LLM, SamplingParams

    from vllm_plphp.worker.extension import WORKER_EXT

    args = shapes.engine_args(shape)
    llm = LLM(**args, kv_cache_memory_bytes=1 << 30, enforce_eager=eager, enable_prefix_caching=False,
              max_num_seqs=max(batch, 1), attention_backend="plphp",
              additional_config={"plphp": {"r": r, "kernels": kernels}}, worker_extension_cls=WORKER_EXT, seed=0)
    params = SamplingParams(max_tokens=1, temperature=0)
    llm.generate([shapes.inputs(shape, 1000 + i) for i in range(batch)], params, use_tqdm=False)
    out = []
    try:
        for n in range(samples):
            llm.collective_rpc("plphp_timing", args=(True,))
            prompts = [shapes.inputs(shape, 10 * n + i) for i in range(batch)]
            llm.generate(prompts, params, use_tqdm=False)
            t = llm.collective_rpc("plphp_timing")[0]
            out.append({"prune_s": t["prune_seconds"], "step_s": t["pruning_step_seconds"],
                        "share": t["prune_seconds"] / t["pruning_step_seconds"]})
    finally:
        llm.llm_engine.engine_core.shutdown()
    return out


def summary(rows: list[dict]) -> str:
    shares = [r["share"] for r in rows]
    ms = [r["prune_s"] * 1e3 for r in rows]
    step = [r["step_s"] * 1e3 for r in rows]
    return (f"prune share median {statistics.median(shares):.2%} (min {min(shares):.2%}, "
            f"max {max(shares):.2%}, n={len(shares)}); prune {statistics.median(ms):.1f} ms of a "
            f"{statistics.median(step):.0f} ms step (medians)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="1img,4img,8img,video")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1, help="requests per pruning step")
    ap.add_argument("--eager", action="store_true", help="--enforce-eager (default: compiled)")
    ap.add_argument("--kernels", default="auto",
                    help="PLPHP's kernels setting: auto (the C kernel on CPU_ATTN) or torch (batched torch ops)")
    ap.add_argument("--json", help="write the per-sample figures here")
    args = ap.parse_args()
    results = {}
    for shape in args.shapes.split(","):
        results[shape] = measure(shape, args.samples, args.batch, args.eager, kernels=args.kernels)
        print(f"[prune_share] {shape}: {summary(results[shape])}", flush=True)
    print(f"\n{'compiled' if not args.eager else 'eager'}, {args.batch} request(s) per step, r=0.4, "
          f"kernels={args.kernels}")
    for shape, rows in results.items():
        print(f"{shape:6s} {summary(rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

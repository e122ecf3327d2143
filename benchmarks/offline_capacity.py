"""Stock vLLM vs PLPHP under one fixed KV budget, offline (`vllm.LLM`'s engine
stepped by hand), for prompt shapes with no HTTP form here (the video shape;
`serve_capacity.py` is the HTTP form for the image shapes). Prints, side by
side: KV per running request while every running request decodes, peak
running requests, output tokens/s, and PLPHP / stock ratios.

  .venv/bin/python benchmarks/offline_capacity.py --shape video --kv-mib 256 --requests 10

All requests are added at once; the engine is stepped until they finish and
after each step vLLM's own gauges are read (`LLM.get_metrics()`: running and
waiting requests and the KV pool's usage, what `vllm serve`'s /metrics
reports). vLLM's defaults
(compiled, V1 runner on CPU) and block size 32 for every engine, the shape's
engine arguments (`benchmarks/shapes.py`); PLPHP r=0.4 with the paper's
thresholds and balanced (alpha=1, beta=0: every pruned layer keeps r). One
engine at a time, in one process; tokens/s is one run each and carries the
machine's +-30%.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import shapes  # noqa: E402
from serve_capacity import kv_and_peak  # noqa: E402

CONFIGS = (("stock", None), ("plphp r=0.4", {"r": 0.4}),
           ("plphp r=0.4 balanced", {"r": 0.4, "alpha": 1.0, "beta": 0.0}))


def run(shape: str, plphp: dict | None, kv_mib: int, requests: int, max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    extra = {"attention_backend": "plphp", "additional_config": {"plphp": plphp}} if plphp else {}
    llm = LLM(**shapes.engine_args(shape), kv_cache_memory_bytes=kv_mib << 20, block_size=32,
              max_num_seqs=requests, enable_prefix_caching=False, seed=0, disable_log_stats=False, **extra)
    engine = llm.llm_engine

    def gauges() -> tuple[float, float, float]:
        g = {m.name: m.value for m in llm.get_metrics() if hasattr(m, "value")}
        return (g.get("vllm:num_requests_running", 0), g.get("vllm:num_requests_waiting", 0),
                g.get("vllm:kv_cache_usage_perc", 0))
    try:
        warm = SamplingParams(max_tokens=2, temperature=0)
        llm.generate([shapes.inputs(shape, 1)], warm, use_tqdm=False)
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        for i in range(requests):
            engine.add_request(f"r{i}", shapes.inputs(shape, 100 + i), params)
        samples, tokens, prompt = [], 0, 0
        start = time.perf_counter()
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    tokens += len(out.outputs[0].token_ids)
                    prompt = len(out.prompt_token_ids)
            samples.append(gauges())
        elapsed = time.perf_counter() - start
    finally:
        engine.engine_core.shutdown()
    kv_per_req, peak = kv_and_peak(samples, kv_mib)
    return {"kv_per_req": kv_per_req, "peak_running": int(peak),
            "tok_s": tokens / elapsed, "tokens": tokens, "prompt_tokens": prompt, "elapsed_s": elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="video", choices=sorted(shapes.SHAPES))
    ap.add_argument("--kv-mib", type=int, default=256)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results = {}
    for name, plphp in CONFIGS:
        print(f"[bench] {args.shape}: {name} ...", flush=True)
        results[name] = run(args.shape, plphp, args.kv_mib, args.requests, args.max_tokens)
        print(f"[bench]   {json.dumps(results[name])}", flush=True)
    base = results["stock"]
    print(f"\n{args.shape}, KV budget {args.kv_mib} MiB, block 32, {args.requests} requests added at once x "
          f"{args.max_tokens} tokens, offline")
    print(f"{'config':22s} {'KV/req MiB':>10s} {'ratio':>6s} {'peak run':>8s} {'ratio':>6s} {'tok/s':>7s} {'ratio':>6s}")
    for name, r in results.items():
        print(f"{name:22s} {r['kv_per_req']:10.2f} {r['kv_per_req'] / base['kv_per_req']:6.2f} "
              f"{r['peak_running']:8d} {r['peak_running'] / base['peak_running']:6.2f} "
              f"{r['tok_s']:7.2f} {r['tok_s'] / base['tok_s']:6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Stock `vllm serve` vs `vllm serve --attention-backend plphp`, one after the
other, same fixture, same KV budget, same concurrent streaming OpenAI chat
workload. Prints, side by side: KV per running request during decode, peak
concurrent running requests, output tokens/s, and PLPHP/stock ratios; then the
share of prefill-step time spent scoring + compacting (offline engine).

  .venv/bin/python benchmarks/serve_capacity.py            # r in 0.3 0.4 0.5
  .venv/bin/python benchmarks/serve_capacity.py --quick    # smaller workload
  .venv/bin/python benchmarks/serve_capacity.py --quick --block-sizes 32,64,128
  .venv/bin/python benchmarks/serve_capacity.py --shape 8img --kv-mib 512 --requests 8 --max-tokens 32

`--shape 4img|8img` (`benchmarks/shapes.py`: 2304 / 4608 vision tokens per
prompt): that prompt shape, stock and PLPHP r=0.4 (paper thresholds and
balanced), then the prune share of the pruning prefill steps at that shape
(`prune_share.py`, 3 samples).

`--block-sizes` sweeps the KV block size (stock and PLPHP at each) and adds,
per PLPHP row, the ideal retained fraction (what KV per request would be if
every layer held exactly its kept entries, from the server's own kept/seen
counters) next to the physical one (what the pool holds), and the excess in
tokens per layer. `--block-size default` passes no --block-size (vLLM's CPU
default, 128; PLPHP's own default where it sets one).

Random-weight fixtures put ~95% of the last token's attention on the image,
so every layer is "vision-attentive" at the paper's alpha=0.25 and keeps
r + delta_r. Rows marked "balanced" set alpha=1, beta=0 so every pruned layer
keeps exactly r (what a real model's balanced layers do).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.server import Server, metric_value  # noqa: E402
from plphp_dev.fixtures import build_fixture  # noqa: E402
from plphp_dev.fixtures.prompts import chat_messages  # noqa: E402


class Sampler(threading.Thread):
    """Polls /metrics: running requests and KV usage while the workload runs."""

    def __init__(self, server: Server, period: float = 0.25):
        super().__init__(daemon=True)
        self.server, self.period, self.samples, self.stop = server, period, [], False

    def run(self):
        while not self.stop:
            try:
                text = self.server.metrics()
                self.samples.append((
                    metric_value(text, "vllm:num_requests_running") or 0,
                    metric_value(text, "vllm:num_requests_waiting") or 0,
                    metric_value(text, "vllm:kv_cache_usage_perc") or 0,
                ))
            except OSError:
                pass
            time.sleep(self.period)


async def one_request(client, i: int, max_tokens: int, shape: str | None) -> tuple[int, int]:
    import shapes

    messages = shapes.messages(shape, 100 + i) if shape else chat_messages("llava", 1, seed=100 + i)
    stream = await client.chat.completions.create(
        model="fixture", messages=messages,
        max_tokens=max_tokens, temperature=0, stream=True,
        extra_body={"ignore_eos": True}, stream_options={"include_usage": True},
    )
    tokens = prompt = 0
    async for chunk in stream:
        if chunk.usage is not None:
            tokens, prompt = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
    return tokens, prompt


async def workload(url: str, n: int, max_tokens: int, shape: str | None = None) -> tuple[int, int]:
    """Output tokens of all requests, prompt tokens of the last."""
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=url + "/v1", api_key="EMPTY", max_retries=0, timeout=1800) as client:
        done = await asyncio.gather(*(one_request(client, i, max_tokens, shape) for i in range(n)))
    return sum(t for t, _ in done), done[-1][1]


def kv_bytes_per_token(model: str) -> tuple[int, int, int]:
    """(decoder layers, image tokens per image, KV bytes per token per layer; float32)."""
    cfg = json.loads((Path(model) / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    heads = text["num_attention_heads"]
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    kv_heads = text.get("num_key_value_heads", heads)
    vision = cfg["vision_config"]
    image_tokens = (vision["image_size"] // vision["patch_size"]) ** 2
    return text["num_hidden_layers"], image_tokens, 2 * kv_heads * head_dim * 4


def ideal(model: str, plphp: dict | None, prompt: int, context: float, retained: float) -> float:
    """KV bytes of one request holding exactly its entries (no block rounding):
    every layer the whole context, minus the dropped vision entries of the
    pruned layers (skip_first / skip_last kept whole)."""
    layers, image_tokens, per_token = kv_bytes_per_token(model)
    pruned = 0 if plphp is None else layers - (plphp.get("skip_first", 2) + plphp.get("skip_last", 1))
    return (layers * context - pruned * image_tokens * (1 - retained)) * per_token


def kv_and_peak(samples: list[tuple[float, float, float]], kv_mib: int) -> tuple[float, float]:
    """(median KV MiB per running request while nothing waits, peak running)
    from (running, waiting, KV usage fraction) samples."""
    running = [s for s in samples if s[0] > 0]
    # decode-only samples: nothing waiting to be prefilled, every running request decoding
    decode = [s for s in running if s[1] == 0] or running
    per_req = sorted(s[2] / s[0] for s in decode)
    return (per_req[len(per_req) // 2] * kv_mib if per_req else float("nan"),
            max((s[0] for s in running), default=0))


def run_server(model: str, plphp: dict | None, args, block: str) -> dict:
    extra = ["--max-num-seqs", str(args.requests), "--max-model-len", "1024",
             "--max-num-batched-tokens", "8192"]
    if block != "default":
        extra += ["--block-size", block]
    if args.shape:
        import shapes

        shape = shapes.SHAPES[args.shape]
        extra += ["--max-model-len", str(shape.max_model_len), "--max-num-batched-tokens",
                  str(max(8192, shape.max_model_len)), "--limit-mm-per-prompt", json.dumps(shape.limit_mm)]
    srv = Server(model, *extra, plphp=plphp, kv_bytes=args.kv_mib << 20, timeout=900, eager=args.eager)
    try:
        asyncio.run(workload(srv.url, 1, 2, args.shape))  # warm-up
        sampler = Sampler(srv)
        sampler.start()
        start = time.perf_counter()
        tokens, prompt = asyncio.run(workload(srv.url, args.requests, args.max_tokens, args.shape))
        elapsed = time.perf_counter() - start
        sampler.stop = True
        sampler.join()
        text = srv.metrics()
        seen = metric_value(text, "vllm:plphp_vision_tokens_seen_total") or 0
        kept = metric_value(text, "vllm:plphp_vision_tokens_kept_total") or 0
        chosen = [ln for ln in srv.logs().splitlines() if "block_size" in ln and "PLPHP" in ln]
    finally:
        srv.stop()
    kv_per_req, peak = kv_and_peak(sampler.samples, args.kv_mib)
    retained = kept / seen if seen else 1.0
    # decode samples are spread over the output: on average half of it is cached
    context = prompt + args.max_tokens / 2
    return {
        "kv_per_req": kv_per_req,
        "peak_running": peak,
        "tok_s": tokens / elapsed,
        "prompt_tokens": prompt,
        "retained": retained,
        "ideal_mib": ideal(model, plphp, prompt, context, retained) / (1 << 20),
        "log": chosen[:1],
    }


def prune_overhead(model: str, r: float) -> float:
    """Share of the pruning steps' time spent in scoring + compaction."""
    from vllm import LLM, SamplingParams

    from plphp_dev.fixtures.prompts import prompt_inputs
    from vllm_plphp.worker.extension import WORKER_EXT

    llm = LLM(model=model, dtype="float32", max_model_len=4096,
              kv_cache_memory_bytes=256 << 20, limit_mm_per_prompt={"image": 2},
              attention_backend="plphp", additional_config={"plphp": {"r": r}},
              worker_extension_cls=WORKER_EXT)
    params = SamplingParams(max_tokens=1, temperature=0)
    llm.generate([prompt_inputs("llava", 1, 1)], params)
    llm.collective_rpc("plphp_timing", args=(True,))
    for seed in range(4):  # one request per step: each step is one request's prefill
        llm.generate([prompt_inputs("llava", 1, 10 + seed)], params)
    t = llm.collective_rpc("plphp_timing")[0]
    llm.llm_engine.engine_core.shutdown()
    return t["prune_seconds"] / t["pruning_step_seconds"]


def report_sweep(model: str, args, sweep: dict, plphp_of: dict) -> None:
    layers, _, per_token = kv_bytes_per_token(model)
    print(f"\nllava-{args.variant}, KV budget {args.kv_mib} MiB, {args.requests} concurrent "
          f"1-image requests x {args.max_tokens} tokens (streaming); ratios against stock at the "
          f"same block size; 'vs 128' against stock at block 128 (vLLM's CPU default)")
    print(f"{'block':>7s} {'config':26s} {'KV/req MiB':>10s} {'phys':>5s} {'ideal':>5s} "
          f"{'excess tok/layer':>16s} {'peak run':>8s} {'ratio':>5s} {'tok/s':>6s} {'ratio':>5s} {'vs 128':>6s}")
    ref = sweep.get("128", {}).get("stock")
    for block, results in sweep.items():
        if "stock" not in results:
            print(f"{block:>7s} stock did not start (see [bench] lines above)")
            continue
        base = results["stock"]
        for name, r in results.items():
            excess = (r["kv_per_req"] - r["ideal_mib"]) * (1 << 20) / (layers * per_token)
            print(f"{block:>7s} {name:26s} {r['kv_per_req']:10.2f} "
                  f"{r['kv_per_req'] / base['kv_per_req']:5.2f} {r['ideal_mib'] / base['ideal_mib']:5.2f} "
                  f"{excess:16.1f} {r['peak_running']:8.0f} {r['peak_running'] / base['peak_running']:5.2f} "
                  f"{r['tok_s']:6.1f} {r['tok_s'] / base['tok_s']:5.2f} "
                  f"{(r['tok_s'] / ref['tok_s']) if ref else float('nan'):6.2f}")
    print("phys: KV per running request (pool usage / running) / stock's; ideal: the same with "
          "every layer holding exactly its entries (prompt + half the output, kept/seen from "
          "the server's counters); excess: (phys - ideal) in tokens per layer")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="bench")
    ap.add_argument("--kv-mib", type=int, default=96)
    ap.add_argument("--block-size", default="32", help="a number, or 'default' (pass none)")
    ap.add_argument("--block-sizes", help="comma list, e.g. 32,64,128: sweep (stock + PLPHP at each)")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rates", default="0.3,0.4,0.5")
    ap.add_argument("--quick", action="store_true", help="12 requests, 32 tokens, r=0.4 only")
    ap.add_argument("--eager", action="store_true",
                    help="--enforce-eager (shorter starts: a sweep starts 3 servers per block size)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--shape", help="4img or 8img: that prompt shape (see above)")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.max_tokens, args.rates = 12, 32, "0.4"
    if args.shape:
        import shapes

        args.rates, model = "0.4", shapes.model(args.shape)
    else:
        model = build_fixture("llava", args.variant)
    configs = [("stock", None)]
    for r in (float(x) for x in args.rates.split(",")):
        configs.append((f"plphp r={r}", {"r": r}))
        configs.append((f"plphp r={r} balanced", {"r": r, "alpha": 1.0, "beta": 0.0}))
    # keeps everything: what the plugin itself costs (per-layer KV groups, scoring)
    blocks = (args.block_sizes or args.block_size).split(",")
    if not args.block_sizes and not args.shape:
        configs.append(("plphp r=1 (no pruning)", {"r": 1.0, "delta_r": 0.0}))
    sweep = {}
    for block in blocks:
        results = sweep[block] = {}
        for name, plphp in configs:
            print(f"[bench] block {block}: {name} ...", flush=True)
            try:
                results[name] = run_server(model, plphp, args, block)
            except (RuntimeError, TimeoutError) as e:  # e.g. a block size the platform refuses
                errors = [ln for ln in str(e).splitlines() if "Error" in ln]
                print(f"[bench]   failed to start: {(errors or [str(e)[:300]])[-1]}", flush=True)
                continue
            print(f"[bench]   {json.dumps(results[name])}", flush=True)
    if args.block_sizes:
        report_sweep(model, args, sweep, dict(configs))
        if args.json:
            Path(args.json).write_text(json.dumps({"sweep": sweep}, indent=2))
        return
    if args.shape:
        import prune_share

        rows = prune_share.measure(args.shape, 3, 1, args.eager)
        overhead = statistics.median(r["share"] for r in rows)
        spread = f" (min {min(r['share'] for r in rows):.2%}, max {max(r['share'] for r in rows):.2%}, n=3)"
    else:
        overhead, spread = prune_overhead(model, 0.4), ""
    base = results["stock"]
    what = f"{args.shape} requests" if args.shape else "1-image requests"
    print(f"\n{args.shape and 'bench' or 'llava-' + args.variant}, KV budget {args.kv_mib} MiB, block {blocks[0]}, "
          f"{args.requests} concurrent {what} x {args.max_tokens} tokens (streaming)")
    print(f"{'config':26s} {'KV/req MiB':>10s} {'ratio':>6s} {'peak run':>8s} {'ratio':>6s} "
          f"{'tok/s':>7s} {'ratio':>6s}")
    for name, r in results.items():
        print(f"{name:26s} {r['kv_per_req']:10.2f} {r['kv_per_req'] / base['kv_per_req']:6.2f} "
              f"{r['peak_running']:8.0f} {r['peak_running'] / base['peak_running']:6.2f} "
              f"{r['tok_s']:7.1f} {r['tok_s'] / base['tok_s']:6.2f}")
    print(f"\nscoring + compaction share of pruning prefill steps (r=0.4): {overhead:.2%}{spread}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "prune_overhead": overhead}, indent=2))


if __name__ == "__main__":
    main()

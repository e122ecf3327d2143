"""Decode step time of PLPHP against stock vLLM, both engines in one run, in
interleaved repeats (these machines vary +-30% from minute to minute, so only
ratios taken close together mean anything).

  .venv/bin/python benchmarks/decode_step.py                 # bench fixture, 5 repeats
  .venv/bin/python benchmarks/decode_step.py --repeats 3 --tokens 32
  .venv/bin/python benchmarks/decode_step.py --block-sizes 128,64,32   # issue 16

Rows: PLPHP at r=1 (delta_r=0: every piece of machinery runs, nothing is
pruned: the plugin's own per-step cost) and at r=0.4 (pruned caches). Each
repeat times, per engine, `--requests` image requests for 1 token (prefill)
and for `--tokens` tokens; decode step time = (t_tokens - t_1) / (tokens - 1).
Prints per repeat the ratios PLPHP/stock and their median, min and max.
vLLM's defaults otherwise (torch.compile; the runner vLLM picks; the block
size each engine picks: 128 for stock on CPU, 32 for PLPHP on CPU).

`--block-sizes B1,B2,..`: stock and PLPHP r=0.4 at each block size, all
engines alive and timed in the same interleaved repeats; ratios against stock
at the same block size and against stock at B1.

`--shape 1img|4img|8img|video` (`benchmarks/shapes.py`: up to 4608 vision
tokens per prompt): stock, PLPHP r=0.4 with the paper's thresholds and r=0.4
balanced (every pruned layer keeps 0.4), plus the kept KV fraction of each
PLPHP engine (its records: kept entries over all layers / stock's), the
decode step time from the requests' first-to-last token timestamps (a
difference of two runs would drown in the prefill of thousands of tokens), the
attention share of a stock decode step (`attention_share.py`, profiled; the
engines then run in this process) and the ideal step ratio that share and
the kept fraction predict (1 - a + a * kept).

  .venv/bin/python benchmarks/decode_step.py --shape 8img --requests 2 --tokens 16 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(llm, prompts, tokens: int) -> float:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - start


def step_time(llm, prompts, tokens: int) -> float:
    return (timed(llm, prompts, tokens) - timed(llm, prompts, 1)) / (tokens - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixture", default="bench", choices=["tiny", "bench"])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--block-sizes", help="comma list, e.g. 128,64,32 (see above)")
    parser.add_argument("--kv-mib", type=int, default=512, help="KV cache per engine")
    parser.add_argument("--shape", help="1img, 4img, 8img or video (see above)")
    args = parser.parse_args()
    if args.shape:
        return long_prompts(args)

    from vllm import LLM

    from plphp_dev.fixtures import build_fixture
    from plphp_dev.fixtures.prompts import prompt_inputs

    model = build_fixture("llava", args.fixture)
    # prefix caching off for every engine: the repeats send the same prompts,
    # and stock would serve more of them from its cache than PLPHP (which
    # never caches blocks from the image on), which this benchmark is not about
    common = dict(model=model, dtype="float32", max_model_len=4096, enable_prefix_caching=False,
                  kv_cache_memory_bytes=args.kv_mib << 20, limit_mm_per_prompt={"image": 2}, seed=0)
    plphp = lambda r: dict(attention_backend="plphp", additional_config={"plphp": (
        {"r": 1.0, "delta_r": 0.0} if r == 1 else {"r": r, "delta_r": 0.0, "alpha": 1.0, "beta": 0.0})})
    # name -> (engine, the stock engine it is compared with)
    if args.block_sizes:
        sizes = [int(b) for b in args.block_sizes.split(",")]
        engines, base = {}, {}
        for b in sizes:
            engines[f"stock b={b}"] = LLM(**common, block_size=b)
            engines[f"plphp r=0.4 b={b}"] = LLM(**common, block_size=b, **plphp(0.4))
            base[f"plphp r=0.4 b={b}"] = f"stock b={b}"
            if b != sizes[0]:
                base[f"stock b={b}"] = f"stock b={sizes[0]}"
        first = f"stock b={sizes[0]}"
    else:
        engines = {"stock": LLM(**common), "plphp r=1": LLM(**common, **plphp(1)),
                   "plphp r=0.4": LLM(**common, **plphp(0.4))}
        base = {"plphp r=1": "stock", "plphp r=0.4": "stock"}
        first = "stock"
    config = engines[first].llm_engine.vllm_config
    prompts = [prompt_inputs("llava", 1, seed) for seed in range(args.requests)]
    for llm in engines.values():  # warm-up
        timed(llm, prompts, 4)
    ratios = {name: [] for name in base}
    for rep in range(args.repeats):
        times = {name: step_time(llm, prompts, args.tokens) for name, llm in engines.items()}
        line = [f"repeat {rep}: {first} {times[first] * 1e3:.1f} ms/step"]
        for name, against in base.items():
            ratios[name].append(times[name] / times[against])
            line.append(f"{name} {times[name] * 1e3:.1f} ms ({ratios[name][-1]:.3f}x {against})")
        print("  ".join(line), flush=True)
    print(f"\nfixture llava-{args.fixture}, {args.requests} image requests x {args.tokens} tokens, "
          f"runner {'V2' if config.use_v2_model_runner else 'V1'}, "
          f"async scheduling {config.scheduler_config.async_scheduling}, "
          f"compiled {not config.model_config.enforce_eager}")
    for name, values in ratios.items():
        print(f"decode step time {name} / {base[name]}: median {statistics.median(values):.3f}x "
              f"(min {min(values):.3f}, max {max(values):.3f}, n={len(values)})")


def kept_fraction(llm, outputs, num_layers: int) -> float:
    """KV entries the engine holds for these requests after their prefill,
    over stock's: unpruned layers count whole."""
    req_ids = [o.request_id for o in outputs]
    records = llm.collective_rpc("plphp_records", args=(req_ids,))[0]
    fractions = []
    for req_id in req_ids:
        layers = records.get(req_id, {})
        total = next(iter(layers.values()))["total"] if layers else 1
        fractions.append(sum(layers[l]["kept"] if l in layers else total
                             for l in range(num_layers)) / (num_layers * total))
    return statistics.mean(fractions)


def long_prompts(args) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the profiler sees the engine core
    from vllm import LLM, SamplingParams

    import shapes
    from attention_share import attention_share, decode_seconds, ideal_ratio
    from vllm_plphp.worker.extension import WORKER_EXT

    base = shapes.engine_args(args.shape)
    # every prompt prefills in one step; request metrics for the decode timing
    base["max_num_batched_tokens"] = args.requests * base["max_model_len"]
    common = dict(**base, enable_prefix_caching=False, seed=0, disable_log_stats=False,
                  kv_cache_memory_bytes=args.kv_mib << 20, max_num_seqs=args.requests)
    paper = {"r": 0.4}
    balanced = {"r": 0.4, "delta_r": 0.0, "alpha": 1.0, "beta": 0.0}
    engines = {"stock": LLM(**common)}
    for name, cfg in (("plphp r=0.4", paper), ("plphp r=0.4 balanced", balanced)):
        engines[name] = LLM(**common, attention_backend="plphp", worker_extension_cls=WORKER_EXT,
                            additional_config={"plphp": cfg})
    prompts = [shapes.inputs(args.shape, seed) for seed in range(args.requests)]
    one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    layers = engines["stock"].llm_engine.vllm_config.model_config.hf_text_config.num_hidden_layers
    kept = {}
    for name, llm in engines.items():
        outputs = llm.generate(prompts, one, use_tqdm=False)
        prompt_tokens = len(outputs[0].prompt_token_ids)
        if name != "stock":
            kept[name] = kept_fraction(llm, outputs, layers)
    many = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    decode = lambda llm: decode_seconds(llm.generate(prompts, many, use_tqdm=False)) / (args.tokens - 1)
    ratios = {name: [] for name in kept}
    for rep in range(args.repeats):
        times = {name: decode(llm) for name, llm in engines.items()}
        line = [f"repeat {rep}: stock {times['stock'] * 1e3:.1f} ms/step"]
        for name in kept:
            ratios[name].append(times[name] / times["stock"])
            line.append(f"{name} {times[name] * 1e3:.1f} ms ({ratios[name][-1]:.3f}x)")
        print("  ".join(line), flush=True)
    share = attention_share(engines["stock"], prompts, args.tokens, layers)
    print(f"\nshape {args.shape} ({prompt_tokens} prompt tokens), {args.requests} requests x "
          f"{args.tokens} tokens, compiled; attention share of a stock decode step (profiled): "
          f"{share:.1%}")
    for name, values in ratios.items():
        print(f"decode step time {name} / stock: median {statistics.median(values):.3f}x "
              f"(min {min(values):.3f}, max {max(values):.3f}, n={len(values)}); kept KV "
              f"{kept[name]:.3f} of stock; ideal {ideal_ratio(share, kept[name]):.3f}x")


if __name__ == "__main__":
    main()

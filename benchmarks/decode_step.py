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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()

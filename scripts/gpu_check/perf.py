"""Decode step time and throughput, PLPHP against stock, for run.py.

The method of benchmarks/decode_step.py (which builds its own CPU engines, so it
is not reused as is): per row, time `batch` requests for 1 token (prefill) and
for N tokens; decode step time = (t_N - t_1) / (N - 1). Rows are timed in
interleaved repeats (order rotated each repeat) so that drift hits every row
alike; the ratios row / stock are taken within a repeat, then summarised
(median, min, max). Throughput: decode tokens/s = batch / step time; end to end
= batch * N / t_N (prefill included).

PLPHP rows share one engine and differ by per-request settings
(SamplingParams.extra_args["plphp"]): "plphp" = the engine's defaults (with
random weights gamma is about the vision fraction, so most layers get
r = r + delta_r = 0.7), "plphp_r0.4" = r 0.4 in every pruned layer (the paper's
mean rate, as in decode_step.py), "plphp_r1" = nothing pruned, all machinery run
(the plugin's own per-step cost).
"""

from __future__ import annotations

import statistics
import time

ROW_SETTINGS = {
    "stock": None,
    "plphp": None,  # the engine's own settings
    "plphp_r0.4": {"r": 0.4, "delta_r": 0.0, "alpha": 1.0, "beta": 0.0},
    "plphp_r1": {"r": 1.0, "delta_r": 0.0},
}


def _params(tokens: int, settings):
    from vllm import SamplingParams

    extra = None if settings is None else {"plphp": settings}
    return SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True, extra_args=extra)


def _timed(llm, prompts, tokens: int, settings) -> float:
    params = _params(tokens, settings)
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    took = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == tokens for o in outs), "short output"
    return took


def time_rows(stock, plphp, args, deadline: float, log, elapsed):
    """Yields one summary line per (batch, row); stops early past `deadline` s."""
    from plphp_dev.fixtures.prompts import prompt_inputs

    rows = ["stock"] + [r for r in args.rows.split(",") if r]
    engines = {r: (stock if r == "stock" else plphp) for r in rows}
    n = args.decode_tokens
    for batch in [int(b) for b in args.batches.split(",")]:
        if elapsed() > deadline:
            yield f"batch {batch}: skipped (past the timing deadline)"
            continue
        t = time.perf_counter()
        prompts = [prompt_inputs("llava", args.images, seed=1000 + args.images * i)
                   for i in range(batch)]
        for r in rows:  # warm-up: image processing cache, CUDA graphs at this batch
            _timed(engines[r], prompts, 4, ROW_SETTINGS[r])
        log(f"batch {batch}: {args.images} images x 576 tokens per prompt, "
            f"warm-up {time.perf_counter() - t:.1f} s")
        steps = {r: [] for r in rows}
        ends = {r: [] for r in rows}
        for rep in range(args.repeats):
            order = rows[rep % len(rows):] + rows[:rep % len(rows)]
            for r in order:
                t1 = _timed(engines[r], prompts, 1, ROW_SETTINGS[r])
                tn = _timed(engines[r], prompts, n, ROW_SETTINGS[r])
                steps[r].append((tn - t1) / (n - 1))
                ends[r].append(tn)
            log(f"batch {batch} repeat {rep}: " + ", ".join(
                f"{r} {steps[r][-1] * 1e3:.2f} ms/step" for r in rows))
            if elapsed() > deadline:
                break
        base = statistics.median(steps["stock"])
        yield (f"batch {batch} stock: decode step {base * 1e3:.2f} ms "
               f"({batch / base:.0f} tok/s), end to end {batch * n / statistics.median(ends['stock']):.0f} tok/s")
        for r in rows[1:]:
            ratios = [a / b for a, b in zip(steps[r], steps["stock"])]
            e2e = [b / a for a, b in zip(ends[r], ends["stock"])]  # throughput ratio
            step = statistics.median(steps[r])
            yield (f"batch {batch} {r}/stock: decode step time x{statistics.median(ratios):.3f} "
                   f"(min {min(ratios):.3f}, max {max(ratios):.3f}, n={len(ratios)}; "
                   f"{step * 1e3:.2f} ms, {batch / step:.0f} tok/s), end-to-end throughput "
                   f"x{statistics.median(e2e):.3f} (min {min(e2e):.3f}, max {max(e2e):.3f})")

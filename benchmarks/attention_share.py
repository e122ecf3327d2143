"""Attention share of a decode step, from the torch profiler.

`attention_share(llm, prompts, tokens, num_layers)`: runs the prompts for
`tokens` tokens under `torch.profiler` and returns the time of vLLM's
attention ops in the decode steps (the self time of every op whose name
holds one of `ATTENTION_OPS`: on CPU_ATTN the paged attention kernel, the
KV cache write and the attention layer's own glue), over the decode wall
time (first to last token, from the requests' engine timestamps). The
prefill's calls are left out: the longest `num_layers` calls of each op
(the prompts must prefill in one step). The engine core must run in this
process (VLLM_ENABLE_V1_MULTIPROCESSING=0) with `disable_log_stats=False`.
The profiler slows small ops more than large ones, so the share is an
estimate; it is what the ideal step time in `decode_step.py` is built from.
"""

from __future__ import annotations

import statistics

ATTENTION_OPS = ("cpu_attention_with_kv_cache", "cpu_attn_reshape_and_cache",
                 "paged_attention", "flash_attn", "unified_attention")


def decode_seconds(outputs) -> float:
    """Mean over requests of first-to-last token time (engine timestamps)."""
    if any(o.metrics is None for o in outputs):
        raise RuntimeError("no request metrics: start the engine with disable_log_stats=False")
    return statistics.mean(o.metrics.last_token_ts - o.metrics.first_token_ts for o in outputs)


def attention_share(llm, prompts, tokens: int, num_layers: int) -> float:
    from torch.profiler import ProfilerActivity, profile
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        outputs = llm.generate(prompts, params, use_tqdm=False)
    attention = 0.0
    for name in ATTENTION_OPS:
        calls = sorted((e.self_cpu_time_total for e in prof.events() if name in e.name), reverse=True)
        attention += sum(calls[num_layers:]) / 1e6  # without the prefill's calls
    return attention / decode_seconds(outputs)


def ideal_ratio(share: float, kept_fraction: float) -> float:
    """Decode step time / stock's if attention time scaled with the KV read
    and everything else stayed: 1 - a + a * kept_fraction."""
    return 1.0 - share + share * kept_fraction

"""PLPHP metrics in vLLM's Prometheus namespace, on the server's `/metrics`.

The counts arise in the engine cores (each scheduler applies its worker's
prune events) but `/metrics` is served by the API server process. Each engine
core writes its totals to its own small JSON file (atomically, on the steps
that prune); a Prometheus collector registered in the API server sums them at
scrape time, so a data-parallel server shows the sum over its cores. The file
prefix is chosen where the engine's config is built and passed on through the
environment (`PLPHP_STATS_FILE`), which the engine cores inherit
(`vllm_plphp.engine.stats`).

Metrics:
  vllm:plphp_requests_pruned_total     requests whose prefill was pruned
  vllm:plphp_requests_skipped_total    image requests that opted out ("plphp": false)
  vllm:plphp_vision_tokens_seen_total  vision tokens entering pruned layers (per layer)
  vllm:plphp_vision_tokens_kept_total  of those, kept per KV head (per layer)
  vllm:plphp_video_tokens_seen_total   of the vision tokens seen, those of video items
  vllm:plphp_kv_blocks_freed_total     KV blocks returned to the pool by pruning
  vllm:plphp_prompt_cache_copies_total requests that pruned a private copy, their
                                       prompt left in the prefix cache
  vllm:plphp_prompt_cache_fallbacks_total  no room for that copy: compacted in
                                       place (prompt not cached), or unpruned
  vllm:plphp_layer_retention           histogram of the chosen r_l per (request, layer)
"""

from __future__ import annotations

import os

from vllm_plphp.engine.stats import BUCKETS, COUNTERS, ENV, read_totals, stats_path


class PlphpCollector:
    """Prometheus collector for the API server: sums the engine cores' stats files."""

    def __init__(self, path: str):
        self.path = path

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        # the engine's files: its config was built in this process after the
        # collector was registered (vllm_plphp.engine.stats.new_stats_path)
        data = read_totals(os.environ.get(ENV) or self.path)
        for name in COUNTERS:
            yield CounterMetricFamily(f"vllm:plphp_{name}", f"PLPHP {name.replace('_', ' ')}",
                                      value=data["totals"].get(name, 0))
        # data["buckets"][i] already counts every rate <= BUCKETS[i] (cumulative)
        buckets = [(f"{bound:g}", count) for bound, count in zip(BUCKETS, data["buckets"])]
        buckets.append(("+Inf", data["rate_count"]))
        yield HistogramMetricFamily("vllm:plphp_layer_retention", "PLPHP retention rate r_l per (request, layer)",
                                    buckets=buckets, sum_value=data["rate_sum"])


_collector_registered = False


def register_collector() -> None:
    """In the API server process: expose the engine's PLPHP stats on /metrics.
    (With several API servers, e.g. data parallel, /metrics shows only
    prometheus_client's multiprocess values; the engine cores then publish
    the same metrics that way too: `vllm_plphp.engine.stats.PrometheusMirror`.)"""
    global _collector_registered
    if _collector_registered:
        return
    from prometheus_client import REGISTRY

    REGISTRY.register(PlphpCollector(stats_path()))
    _collector_registered = True

"""PLPHP metrics in vLLM's Prometheus namespace, on the server's `/metrics`.

The counts arise in the engine cores (each scheduler applies its worker's
prune events) and travel to the front end on vLLM's own stats path, as part of
each step's `SchedulerStats` (`vllm_plphp.engine.stats`). `PlphpStatLogger`
is a vLLM stat logger, registered under the `vllm.stat_logger_plugins`
entry-point group (setup.py), so `vllm serve` loads it as it loads any stat
logger plugin (`vllm.LLM` with `disable_log_stats=False` too:
`vllm_plphp.patches.v1_engine_llm_engine`). Every metric carries vLLM's labels
`model_name` and `engine` (the engine core's data-parallel index), so a
data-parallel server shows each core's counts and their sum. With several API
servers vLLM serves prometheus_client's multiprocess values, where each API
server's counters add what its own engine outputs carried.

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

from vllm.v1.metrics.loggers import AggregateStatLoggerBase

from vllm_plphp.engine.stats import BUCKETS, COUNTERS

LABELS = ["model_name", "engine"]


class PlphpStatLogger(AggregateStatLoggerBase):
    """Adds each engine core's PLPHP counts (`SchedulerStats.plphp`) to the
    `vllm:plphp_*` metrics. Engines without PLPHP register nothing."""

    def __init__(self, vllm_config, engine_indexes: list[int] | None = None):
        from vllm_plphp.patches import plphp_selected

        self.on = plphp_selected(vllm_config)
        self.model_name = vllm_config.model_config.served_model_name
        self.engine_indexes = list(engine_indexes or [0])
        self.families: dict[str, object] = {}  # metric name -> labelled Counter / Histogram

    def log_engine_initialized(self) -> None:
        """Creates the metrics, at zero for each engine. Not in __init__:
        vLLM's own Prometheus logger, built after the custom ones, unregisters
        every `vllm:` collector already in the registry."""
        if not self.on or self.families:
            return
        from prometheus_client import Counter, Histogram

        _unregister_ours()  # an earlier engine's, in this process

        for name in COUNTERS:
            self.families[name] = Counter(f"vllm:plphp_{name}",
                                          f"PLPHP {name.replace('_', ' ')}", LABELS)
        self.families["rates"] = Histogram("vllm:plphp_layer_retention",
                                           "PLPHP retention rate r_l per (request, layer)",
                                           LABELS, buckets=BUCKETS)
        for family in self.families.values():
            for i in self.engine_indexes:
                family.labels(self.model_name, str(i))

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None,
               engine_idx: int = 0) -> None:
        counts = getattr(scheduler_stats, "plphp", None)
        if not counts or not self.families:
            return
        labels = (self.model_name, str(engine_idx))
        for name in COUNTERS:
            if counts.get(name):
                self.families[name].labels(*labels).inc(counts[name])
        if counts.get("rates"):
            retention = self.families["rates"].labels(*labels)
            for rate in counts["rates"]:
                retention.observe(rate)


def _unregister_ours() -> None:
    """Drop `vllm:plphp_*` collectors an earlier engine of this process
    registered (vLLM's own logger does the same for every `vllm:` metric)."""
    from prometheus_client import REGISTRY

    for collector in list(REGISTRY._collector_to_names):
        if getattr(collector, "_name", "").startswith("vllm:plphp_"):
            REGISTRY.unregister(collector)


"""Engine-core PLPHP counts, carried to the front end on vLLM's own stats path.

Each engine core's scheduler adds each step's worker counts and freed blocks
(`EngineStats.add`); when vLLM builds that step's `SchedulerStats`, the counts
gathered since the last one ride on it as `SchedulerStats.plphp`
(`EngineStats.drain`, a field added by `vllm_plphp.patches.v1_metrics_stats`)
through vLLM's msgpack channel to the API server, where the stat logger
`vllm_plphp.frontend.metrics.PlphpStatLogger` adds them to the
`vllm:plphp_*` metrics with vLLM's labels (`model_name`, `engine`).

Deltas, not totals: an engine core sends each step's stats to one of its
front ends only (vLLM, "return stats to only one of the front-ends"), so with
several API servers each adds what it received and the scrape sums them
(prometheus_client's multiprocess mode, which vLLM turns on then).

`drain()` payload, one step's worth:
  {counter name: int for COUNTERS, "rates": [r_l per (request, pruned layer)]}
"""

from __future__ import annotations

BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
COUNTERS = ("requests_pruned", "requests_skipped", "vision_tokens_seen",
            "vision_tokens_kept", "video_tokens_seen", "kv_blocks_freed",
            "prompt_cache_copies", "prompt_cache_fallbacks")


class EngineStats:
    """One engine core's counts: `totals` since start, and what was gathered
    since the last `drain` (kept only when vLLM sends stats, `log_stats`)."""

    def __init__(self, log_stats: bool = True):
        self.log_stats = log_stats
        self.totals = {name: 0 for name in COUNTERS}
        self.counts = {name: 0 for name in COUNTERS}
        self.rates: list[float] = []

    def add(self, step: dict | None, freed: int) -> None:
        step = step or {}
        for name in COUNTERS:
            value = int(step.get(name, 0)) + (int(freed) if name == "kv_blocks_freed" else 0)
            self.totals[name] += value
            self.counts[name] += value
        if self.log_stats:  # else nobody drains them
            # 0.4 + 0.3 counts as 0.7 in the 0.7 bucket
            self.rates.extend(round(float(rate), 9) for rate in step.get("rates", ()))

    def drain(self) -> dict | None:
        """What was gathered since the last call, or None if nothing was."""
        if not self.rates and not any(self.counts.values()):
            return None
        out = {**self.counts, "rates": self.rates}
        self.counts = {name: 0 for name in COUNTERS}
        self.rates = []
        return out

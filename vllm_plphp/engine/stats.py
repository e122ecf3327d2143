"""Engine-core PLPHP totals (what `vllm_plphp.frontend.metrics` shows on
`/metrics`): the scheduler adds each step's worker counts and freed blocks and
writes the totals to a small JSON file (atomically) whose path is chosen where
the engine's config is built (`new_stats_path`) and passed on through the
environment (`VLLM_PLPHP_STATS_FILE`) to the engine core spawned after it."""

from __future__ import annotations

import json
import os
import tempfile

ENV = "VLLM_PLPHP_STATS_FILE"
BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
COUNTERS = ("requests_pruned", "requests_skipped", "vision_tokens_seen",
            "vision_tokens_kept", "kv_blocks_freed")


_count = 0


def stats_path() -> str:
    """The stats file of the engine this process creates or runs."""
    return os.environ.get(ENV) or new_stats_path()


def new_stats_path() -> str:
    """A fresh stats file for an engine about to be created here (called where
    its config is built, before the engine core is spawned, which inherits it
    through the environment; the API server's collector reads the variable at
    scrape time). One file per engine: servers started from a process that
    ran engines of its own do not share that process's file."""
    global _count
    _count += 1
    path = os.path.join(tempfile.gettempdir(), f"vllm-plphp-stats-{os.getpid()}-{_count}.json")
    os.environ[ENV] = path
    return path


class EngineStats:
    """Engine-core totals; `add` merges one step's worker stats and freed blocks."""

    def __init__(self, path: str | None = None):
        self.path = path or stats_path()
        self.totals = {name: 0 for name in COUNTERS}
        self.buckets = [0] * len(BUCKETS)
        self.rate_sum = 0.0
        self.rate_count = 0

    def add(self, step: dict | None, freed: int) -> None:
        step = step or {}
        for name in COUNTERS:
            self.totals[name] += int(step.get(name, 0))
        self.totals["kv_blocks_freed"] += freed
        for rate in step.get("rates", ()):
            self.rate_sum += rate
            self.rate_count += 1
            for i, bound in enumerate(BUCKETS):
                if rate <= bound + 1e-9:
                    self.buckets[i] += 1
        # only steps that prune or skip carry stats (prefill ends), so writing
        # each time is cheap and the file is never stale
        self.write()

    def write(self) -> None:
        data = {"totals": self.totals, "buckets": self.buckets,
                "rate_sum": self.rate_sum, "rate_count": self.rate_count}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)



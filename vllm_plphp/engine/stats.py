"""Engine-core PLPHP totals (what `vllm_plphp.frontend.metrics` shows on
`/metrics`): each engine core's scheduler adds each step's worker counts and
freed blocks and writes its totals to its own small JSON file (atomically).
The files of one engine share a prefix chosen where the engine's config is
built (`new_stats_path`) and passed on through the environment
(`PLPHP_STATS_FILE`) to the engine cores spawned after it; core r of a
data-parallel engine writes `<prefix>.core<r>.json` (`core_file`), and the
API server's collector sums the cores' files (`read_totals`). The process that
chose the prefix removes the files when it exits.

With several API server processes (`--api-server-count`, which data parallel
implies) vLLM serves `/metrics` from prometheus_client's multiprocess mode,
which shows only values kept in its own per-process files; each engine core
then also publishes the same metrics that way (`PrometheusMirror`), and the
scrape sums them over the cores."""

from __future__ import annotations

import atexit
import glob
import json
import os
import tempfile

ENV = "PLPHP_STATS_FILE"  # not VLLM_*: vLLM warns on VLLM_ names it does not know
BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
COUNTERS = ("requests_pruned", "requests_skipped", "vision_tokens_seen",
            "vision_tokens_kept", "video_tokens_seen", "kv_blocks_freed",
            "prompt_cache_copies", "prompt_cache_fallbacks")


_count = 0


def stats_path() -> str:
    """The stats prefix of the engine this process creates or runs."""
    return os.environ.get(ENV) or new_stats_path()


def new_stats_path() -> str:
    """A fresh stats prefix for an engine about to be created here (called
    where its config is built, before the engine cores are spawned, which
    inherit it through the environment; the API server's collector reads the
    variable at scrape time). One prefix per engine: servers started from a
    process that ran engines of its own do not share that process's files."""
    global _count
    _count += 1
    path = os.path.join(tempfile.gettempdir(), f"vllm-plphp-stats-{os.getpid()}-{_count}")
    os.environ[ENV] = path
    atexit.register(remove_files, path)
    return path


def core_file(prefix: str, dp_rank: int) -> str:
    """The file engine core `dp_rank` (data-parallel rank; 0 without DP) writes."""
    return f"{prefix}.core{dp_rank}.json"


def core_files(prefix: str) -> list[str]:
    return sorted(glob.glob(glob.escape(prefix) + ".core*.json"))


def remove_files(prefix: str) -> None:
    for path in core_files(prefix):
        try:
            os.remove(path)
        except OSError:
            pass


def empty() -> dict:
    return {"totals": {n: 0 for n in COUNTERS}, "buckets": [0] * len(BUCKETS),
            "rate_sum": 0.0, "rate_count": 0}


def read_totals(prefix: str) -> dict:
    """The sum over the engine's cores of what their files hold."""
    out = empty()
    for path in core_files(prefix):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):  # a core that has not written yet
            continue
        for name in COUNTERS:
            out["totals"][name] += data["totals"].get(name, 0)
        out["buckets"] = [a + b for a, b in zip(out["buckets"], data["buckets"])]
        out["rate_sum"] += data["rate_sum"]
        out["rate_count"] += data["rate_count"]
    return out


class EngineStats:
    """Engine-core totals; `add` merges one step's worker stats and freed blocks."""

    def __init__(self, path: str | None = None, dp_rank: int = 0):
        self.path = path or core_file(stats_path(), dp_rank)
        self.mirror = PrometheusMirror.get()
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
        if self.mirror is not None:
            self.mirror.add(step, freed)

    def write(self) -> None:
        data = {"totals": self.totals, "buckets": self.buckets,
                "rate_sum": self.rate_sum, "rate_count": self.rate_count}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)


class PrometheusMirror:
    """The engine core's counts as prometheus_client metrics, for vLLM's
    multiprocess `/metrics` (several API servers): values live in
    PROMETHEUS_MULTIPROC_DIR, one file per process, summed at scrape time.
    One per process (its metrics are the process's file entries), registered
    in no registry."""

    _instance = None

    @classmethod
    def get(cls) -> "PrometheusMirror | None":
        """The process's mirror, or None outside prometheus multiprocess mode."""
        from prometheus_client import values

        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ or values.ValueClass is values.MutexValue:
            return None
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        from prometheus_client import Counter, Histogram

        self.counters = {name: Counter(f"vllm:plphp_{name}", f"PLPHP {name.replace('_', ' ')}",
                                       registry=None) for name in COUNTERS}
        self.retention = Histogram("vllm:plphp_layer_retention",
                                   "PLPHP retention rate r_l per (request, layer)",
                                   buckets=BUCKETS, registry=None)

    def add(self, step: dict, freed: int) -> None:
        for name in COUNTERS:
            value = int(step.get(name, 0)) + (freed if name == "kv_blocks_freed" else 0)
            if value:
                self.counters[name].inc(value)
        for rate in step.get("rates", ()):
            self.retention.observe(round(rate, 9))  # 0.4 + 0.3 counts as 0.7, as in add()

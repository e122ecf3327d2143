"""Which stats files an engine's cores write and its API server reads."""

import os

from vllm_plphp.engine import stats
from vllm_plphp.frontend.metrics import PlphpCollector


def values(collector):
    return {m.name: m.samples[0].value for m in collector.collect()}


def test_each_engine_config_gets_its_own_prefix(monkeypatch):
    monkeypatch.delenv(stats.ENV, raising=False)
    first = stats.new_stats_path()
    second = stats.new_stats_path()
    assert first != second and stats.stats_path() == second == os.environ[stats.ENV]


def test_collector_reads_the_current_engines_files(monkeypatch, tmp_path):
    monkeypatch.setenv(stats.ENV, str(tmp_path / "old"))
    collector = PlphpCollector(str(tmp_path / "old"))
    monkeypatch.setenv(stats.ENV, str(tmp_path / "new"))  # a later engine config
    s = stats.EngineStats(stats.core_file(str(tmp_path / "new"), 0))
    s.add({"requests_pruned": 2, "rates": [0.4, 0.7]}, freed=5)
    assert values(collector)["vllm:plphp_requests_pruned"] == 2
    assert values(collector)["vllm:plphp_kv_blocks_freed"] == 5


def test_data_parallel_cores_are_summed_and_files_removed(monkeypatch, tmp_path):
    prefix = str(tmp_path / "engine")
    monkeypatch.setenv(stats.ENV, prefix)
    cores = [stats.EngineStats(dp_rank=rank) for rank in (0, 1)]
    assert len({c.path for c in cores}) == 2
    cores[0].add({"requests_pruned": 1, "vision_tokens_seen": 10, "rates": [0.4]}, freed=3)
    cores[1].add({"requests_pruned": 2, "vision_tokens_seen": 20, "rates": [0.7, 1.0]}, freed=4)
    cores[0].add({"requests_pruned": 1, "rates": []}, freed=0)  # the last writer is core 0
    got = values(PlphpCollector(prefix))
    assert got["vllm:plphp_requests_pruned"] == 4
    assert got["vllm:plphp_vision_tokens_seen"] == 30
    assert got["vllm:plphp_kv_blocks_freed"] == 7
    histogram = next(m for m in PlphpCollector(prefix).collect() if m.name.endswith("retention"))
    assert {s.labels["le"]: s.value for s in histogram.samples if s.name.endswith("bucket")}["+Inf"] == 3
    stats.remove_files(prefix)
    assert stats.core_files(prefix) == []
    assert values(PlphpCollector(prefix))["vllm:plphp_requests_pruned"] == 0


def test_multiprocess_metrics_sum_over_engine_core_processes(tmp_path):
    """With several API servers vLLM serves prometheus_client's multiprocess
    values only: each engine core process publishes its counts there too, and
    a scrape (MultiProcessCollector, as the API servers use) sums them."""
    import subprocess
    import sys

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), stats.ENV: str(tmp_path / "s")}
    core = ("import sys; from vllm_plphp.engine.stats import EngineStats; "
            "s = EngineStats(dp_rank=int(sys.argv[1])); "
            "s.add({'requests_pruned': 1 + int(sys.argv[1]), 'rates': [0.4 + 0.3]}, freed=2)")
    for rank in ("0", "1"):  # two engine core processes
        subprocess.run([sys.executable, "-c", core, rank], env=env, check=True)
    scrape = ("from prometheus_client import CollectorRegistry, generate_latest, multiprocess; "
              "r = CollectorRegistry(); multiprocess.MultiProcessCollector(r); "
              "print(generate_latest(r).decode())")
    text = subprocess.run([sys.executable, "-c", scrape], env=env, check=True,
                          capture_output=True, text=True).stdout
    from plphp_dev.serving import metric_value

    assert metric_value(text, "vllm:plphp_requests_pruned_total") == 3
    assert metric_value(text, "vllm:plphp_kv_blocks_freed_total") == 4
    assert 'vllm:plphp_layer_retention_bucket{le="0.7"} 2.0' in text

"""Which stats file an engine writes and its API server reads."""

import os

from vllm_plphp.engine import stats
from vllm_plphp.frontend.metrics import PlphpCollector


def test_each_engine_config_gets_its_own_file(monkeypatch):
    monkeypatch.delenv(stats.ENV, raising=False)
    first = stats.new_stats_path()
    second = stats.new_stats_path()
    assert first != second and stats.stats_path() == second == os.environ[stats.ENV]


def test_collector_reads_the_current_engines_file(monkeypatch, tmp_path):
    monkeypatch.setenv(stats.ENV, str(tmp_path / "old.json"))
    collector = PlphpCollector(str(tmp_path / "old.json"))
    monkeypatch.setenv(stats.ENV, str(tmp_path / "new.json"))  # a later engine config
    s = stats.EngineStats(str(tmp_path / "new.json"))
    s.add({"requests_pruned": 2, "rates": [0.4, 0.7]}, freed=5)
    values = {m.name: m.samples[0].value for m in collector.collect()}
    assert values["vllm:plphp_requests_pruned"] == 2
    assert values["vllm:plphp_kv_blocks_freed"] == 5

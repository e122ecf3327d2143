"""PLPHP counts on vLLM's stats path: the engine core's deltas ride on
SchedulerStats through vLLM's own msgpack channel, and the stat logger adds
them to labelled `vllm:plphp_*` metrics (engine-free; the servers in
tests/integration/test_serve.py and test_data_parallel.py check /metrics)."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

import vllm_plphp
from vllm_plphp.engine.stats import EngineStats
from plphp_dev.serving import metric_value


def config(backend="PLPHP", name="fixture"):
    return SimpleNamespace(attention_config=SimpleNamespace(backend=SimpleNamespace(name=backend)),
                           model_config=SimpleNamespace(served_model_name=name))


def test_drain_returns_what_was_added_since_the_last_drain():
    s = EngineStats()
    assert s.drain() is None
    s.add({"requests_pruned": 2, "vision_tokens_seen": 10, "rates": [0.4 + 0.3]}, freed=5)
    s.add(None, freed=1)
    got = s.drain()
    assert got["requests_pruned"] == 2 and got["kv_blocks_freed"] == 6
    assert got["rates"] == [0.7] and s.drain() is None
    s.add({"requests_pruned": 1}, freed=0)
    assert s.drain()["requests_pruned"] == 1
    assert s.totals["requests_pruned"] == 3 and s.totals["kv_blocks_freed"] == 6


def test_without_log_stats_rates_are_not_kept():
    """vLLM builds no stats then, so nothing would drain them: only totals grow."""
    s = EngineStats(log_stats=False)
    s.add({"requests_pruned": 1, "rates": [0.4] * 100}, freed=0)
    assert s.rates == [] and s.totals["requests_pruned"] == 1


def test_plphp_field_survives_vllms_engine_core_channel():
    """msgspec encodes a dataclass by its declared fields: the field must be
    declared (patches/v1_metrics_stats.py), or the counts are dropped."""
    from vllm.v1.engine import EngineCoreOutputs
    from vllm.v1.metrics.stats import SchedulerStats
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder
    from vllm_plphp.patches import v1_metrics_stats

    vllm_plphp.register()
    stats = SchedulerStats(num_running_reqs=3)
    stats.plphp = {"requests_pruned": 2, "rates": [0.4, 0.7]}
    wire = MsgpackEncoder().encode(EngineCoreOutputs(scheduler_stats=stats))
    got = MsgpackDecoder(EngineCoreOutputs).decode(wire).scheduler_stats
    assert got.plphp == {"requests_pruned": 2, "rates": [0.4, 0.7]} and got.num_running_reqs == 3
    assert SchedulerStats().plphp is None

    v1_metrics_stats.revert()  # the feature missing: the counts are lost on the way
    try:
        script = ("from vllm.v1.engine import EngineCoreOutputs as O; "
                  "from vllm.v1.metrics.stats import SchedulerStats as S; "
                  "from vllm.v1.serial_utils import MsgpackDecoder as D, MsgpackEncoder as E; "
                  "s = S(); s.plphp = {'requests_pruned': 2}; "
                  "print(getattr(D(O).decode(E().encode(O(scheduler_stats=s))).scheduler_stats, "
                  "'plphp', None))")
        env = {**os.environ, "VLLM_PLUGINS": ""}  # no plugin: vLLM as it ships
        out = subprocess.run([sys.executable, "-c", script], env=env, check=True,
                             capture_output=True, text=True).stdout
        assert out.strip().splitlines()[-1] == "None"
    finally:
        v1_metrics_stats.apply()


@pytest.fixture
def registry():
    from prometheus_client import REGISTRY, generate_latest

    yield lambda: generate_latest(REGISTRY).decode()
    from vllm.v1.metrics.prometheus import unregister_vllm_metrics

    unregister_vllm_metrics()


def test_stat_logger_adds_each_engines_counts_with_vllms_labels(registry):
    from vllm.v1.metrics.stats import SchedulerStats
    from vllm_plphp.frontend.metrics import PlphpStatLogger

    vllm_plphp.register()
    PlphpStatLogger(config(), engine_indexes=[0]).log_engine_initialized()  # an earlier engine's
    logger = PlphpStatLogger(config(), engine_indexes=[0, 1])
    logger.log_engine_initialized()
    text = registry()
    assert metric_value(text, "vllm:plphp_requests_pruned_total",
                        {"model_name": "fixture", "engine": "1"}) == 0  # shown before any request
    for idx, pruned, rates in ((0, 1, [0.4]), (1, 2, [0.7, 1.0]), (0, 1, [])):
        stats = SchedulerStats()
        stats.plphp = {"requests_pruned": pruned, "kv_blocks_freed": 3, "rates": rates}
        logger.record(stats, None, engine_idx=idx)
    logger.record(SchedulerStats(), None, engine_idx=1)  # a step without PLPHP counts
    text = registry()
    assert metric_value(text, "vllm:plphp_requests_pruned_total", {"engine": "0"}) == 2
    assert metric_value(text, "vllm:plphp_requests_pruned_total", {"engine": "1"}) == 2
    assert metric_value(text, "vllm:plphp_kv_blocks_freed_total") == 9
    assert metric_value(text, "vllm:plphp_layer_retention_bucket", {"le": "0.7"}) == 2
    assert metric_value(text, "vllm:plphp_layer_retention_count") == 3


def test_stat_logger_of_a_stock_engine_registers_nothing(registry):
    from vllm_plphp.frontend.metrics import PlphpStatLogger

    PlphpStatLogger(config(backend="CPU_ATTN"), engine_indexes=[0]).log_engine_initialized()
    assert "vllm:plphp_" not in registry()


def test_entry_point_names_the_stat_logger():
    from vllm.plugins import STAT_LOGGER_PLUGINS_GROUP, load_plugins_by_group
    from vllm_plphp.frontend.metrics import PlphpStatLogger

    assert load_plugins_by_group(STAT_LOGGER_PLUGINS_GROUP)["plphp"] is PlphpStatLogger


def test_multiprocess_api_servers_sum_what_each_received(tmp_path):
    """With several API servers each engine step's stats reach one of them;
    each adds its deltas in prometheus_client's multiprocess files and a
    scrape (MultiProcessCollector, as vLLM's /metrics then) sums them."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    server = ("import sys, vllm_plphp; from types import SimpleNamespace as N; "
              "from vllm.v1.metrics.stats import SchedulerStats; "
              "from vllm_plphp.frontend.metrics import PlphpStatLogger; "
              "vllm_plphp.register(); "
              "c = N(attention_config=N(backend=N(name='PLPHP')), "
              "model_config=N(served_model_name='m')); "
              "l = PlphpStatLogger(c, [0]); l.log_engine_initialized(); "
              "s = SchedulerStats(); "
              "s.plphp = {'requests_pruned': int(sys.argv[1]), 'rates': [0.4 + 0.3]}; "
              "l.record(s, None, engine_idx=0)")
    for pruned in ("1", "2"):  # two API server processes
        subprocess.run([sys.executable, "-c", server, pruned], env=env, check=True,
                       capture_output=True)
    scrape = ("from prometheus_client import CollectorRegistry, generate_latest, multiprocess; "
              "r = CollectorRegistry(); multiprocess.MultiProcessCollector(r); "
              "print(generate_latest(r).decode())")
    text = subprocess.run([sys.executable, "-c", scrape], env=env, check=True,
                          capture_output=True, text=True).stdout
    assert metric_value(text, "vllm:plphp_requests_pruned_total") == 3
    assert metric_value(text, "vllm:plphp_layer_retention_bucket", {"le": "0.7"}) == 2

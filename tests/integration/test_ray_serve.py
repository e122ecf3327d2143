"""`vllm serve --attention-backend plphp --distributed-executor-backend ray
--tensor-parallel-size 2` on a local Ray cluster of two simulated nodes (one
worker each; tests/support/ray_cpu.py), through the real `openai` client.

PLPHP's `/metrics` counters count each pruned request once, with every
worker pruning (records read from both ranks through vLLM's dev-mode
`/collective_rpc`): the engine core, which applies the workers' prune events
and sends the counts on with its SchedulerStats, is a local child of `vllm
serve`; the workers are Ray actors under the nodes' raylets and send their
events back only inside the ModelRunnerOutput.
Pipeline parallelism under Ray is refused at start-up (untested there)."""

import json
import urllib.request

import psutil
import pytest

from tests.server import Server, metric_value
from tests.support import ray_cpu
from vllm_plphp.engine.stats import COUNTERS
from vllm_plphp.worker.extension import WORKER_EXT
from plphp_dev.fixtures.prompts import chat_messages

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def served(llava_path):
    with ray_cpu.cluster() as local:
        srv = Server(llava_path, "--tensor-parallel-size", "2",
                     "--distributed-executor-backend", "ray", "--worker-extension-cls", WORKER_EXT,
                     plphp={}, timeout=600,
                     # /collective_rpc; each worker's log lines (Ray dedups repeats)
                     env={"VLLM_SERVER_DEV_MODE": "1", "RAY_DEDUP_LOGS": "0"})
        try:
            yield srv, local
        finally:
            srv.stop()


def chat(srv, n_images, seed, max_tokens=6, **kw):
    return srv.client().chat.completions.create(
        model="fixture", messages=chat_messages("llava", n_images, seed=seed),
        max_tokens=max_tokens, temperature=0.0, **kw)


def counters(srv) -> dict:
    text = srv.metrics()
    out = {name: metric_value(text, f"vllm:plphp_{name}_total") or 0.0 for name in COUNTERS}
    out["rates"] = metric_value(text, "vllm:plphp_layer_retention_count") or 0.0
    return out


def records_per_rank(srv) -> list[dict]:
    req = urllib.request.Request(srv.url + "/collective_rpc", method="POST",
                                 data=json.dumps({"method": "plphp_records"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)["results"]


@pytest.fixture(scope="module")
def workload(served, llava_path):
    """Three pruned requests (1 and 2 images, one streamed), a text-only one
    and an opted-out one; the first checked against the HF reference."""
    from vllm_plphp.config import PlphpConfig
    from plphp_dev.fixtures.prompts import get_prompt
    from plphp_dev.reference import ReferenceModel

    srv, _ = served
    before = counters(srv)
    first = chat(srv, 1, 4, max_tokens=10, extra_body={"return_token_ids": True, "ignore_eos": True})
    chat(srv, 2, 3)
    chat(srv, 0, 0)
    chat(srv, 1, 5, extra_body={"vllm_xargs": {"plphp": "false"}})
    stream = chat(srv, 1, 7, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    after = counters(srv)
    choice = first.choices[0]
    served_tokens = getattr(choice, "token_ids", None) or choice.model_extra["token_ids"]
    expected, _ = ReferenceModel(llava_path).generate(*get_prompt("llava", 1, 4), 10, PlphpConfig())
    return {k: after[k] - before[k] for k in after}, served_tokens, expected


def test_served_tokens_equal_the_reference(workload):
    _, served_tokens, expected = workload
    assert served_tokens == expected


def test_every_worker_attached_plphp(served, workload):
    """What docs/distributed.md tells GPU users to look for: each rank's line, from
    its own Ray actor, forwarded to the `vllm serve` log."""
    srv, _ = served
    for rank in (0, 1):
        assert any(f"Worker_TP{rank} " in line and "PLPHP attached to Model Runner" in line
                   and "RayWorkerProc" in line for line in srv.logs().splitlines()), rank


def test_counters_count_each_pruned_request_once(served, workload):
    srv, _ = served
    delta, _, _ = workload
    rank0, rank1 = records_per_rank(srv)
    assert rank0 == rank1  # the worker on the other node pruned every request too
    assert len(rank0) == 3
    assert delta["requests_pruned"] == 3  # not 6: one count per request, not per rank
    assert delta["requests_skipped"] == 1
    layers = [rec for req in rank0.values() for rec in req.values()]
    assert delta["vision_tokens_seen"] == sum(r["vision"] for r in layers)
    assert delta["vision_tokens_kept"] == sum(r["vision_kept"] for r in layers)
    assert 0 < delta["vision_tokens_kept"] < delta["vision_tokens_seen"]
    assert delta["rates"] == len(layers)
    assert delta["kv_blocks_freed"] > 0


def descendants(pid: int) -> dict[int, str]:
    """{pid: name and command line} of a process's descendants still alive."""
    out = {}
    for p in psutil.Process(pid).children(recursive=True):
        try:
            out[p.pid] = p.name() + " " + " ".join(p.cmdline())
        except psutil.NoSuchProcess:
            pass
    return out


def test_engine_core_is_local_and_workers_are_ray_actors(served, workload):
    """The engine core (whose scheduler counts) is a child of `vllm serve`;
    the workers are Ray actors under the two nodes' raylets; the counts carry
    vLLM's labels for that one engine."""
    srv, local = served
    below_server = descendants(srv.proc.pid)
    cores = [pid for pid, title in below_server.items() if "EngineCore" in title]
    assert len(cores) == 1, below_server  # pid: name and command line of each
    workers = {}
    for node in [local.head_node, *local.worker_nodes]:
        raylet = node.all_processes["raylet"][0].process.pid
        workers[node.node_id] = [pid for pid, title in descendants(raylet).items()
                                 if "RayWorkerProc" in title]
    assert sorted(len(w) for w in workers.values()) == [1, 1]  # one worker per node
    assert not set(below_server) & {pid for w in workers.values() for pid in w}
    text = srv.metrics()
    assert metric_value(text, "vllm:plphp_requests_pruned_total",
                        {"model_name": "fixture", "engine": "0"}) == counters(srv)["requests_pruned"] > 0


def test_pipeline_parallel_under_ray_is_refused(served, llava_path):
    """Refused where the engine config is built, before Ray is asked for
    anything (docs/limitations.md, "Not supported"): the stage exchange is untested under Ray."""
    from tests.conftest import make_llm
    from vllm_plphp.frontend.validate import PlphpUnsupportedError

    with pytest.raises(PlphpUnsupportedError, match="pipeline parallelism under the Ray executor"):
        make_llm(llava_path, "plphp", pipeline_parallel_size=2, distributed_executor_backend="ray")

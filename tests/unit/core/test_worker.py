"""PlphpWorker's step life cycle: the never-silent check and the outbox."""

from types import SimpleNamespace

import pytest

from vllm_plphp.config import PlphpConfig
from vllm_plphp.core.plan import PruneTarget
from vllm_plphp.core.worker import PlphpWorker


def worker(num_layers=8):
    w = PlphpWorker.__new__(PlphpWorker)
    vllm_config = SimpleNamespace(
        additional_config={}, model_config=SimpleNamespace(
            hf_text_config=SimpleNamespace(num_hidden_layers=num_layers)))
    w.__init__(vllm_config)
    return w


def target(req_id, **config):
    return PruneTarget(row=0, slot=0, req_id=req_id, query_index=0, prompt_len=4,
                       total_len=4, images=[], config=PlphpConfig(**config))


def test_planned_but_not_pruned_raises():
    w = worker()
    step = w.begin_step()
    step.targets = [target("a"), target("b")]
    step.layers_pruned["a"] = 5
    with pytest.raises(RuntimeError, match=r"request\(s\) \['b'\]"):
        w.end_step()
    assert w.step is None


def test_a_policy_that_prunes_no_layer_is_not_an_error():
    w = worker(num_layers=4)
    w.begin_step().targets = [target("a", policy="vtw", k=4)]
    w.end_step()


def test_outbox_collects_steps_until_an_output_takes_it():
    w = worker()
    for i in range(2):
        step = w.begin_step()
        step.planned.append(f"r{i}")
        step.events[f"r{i}"] = {3: (10, 20)}
        step.count("requests_pruned")
        step.stats.setdefault("rates", []).append(0.4)
        w.end_step()
    out = w.take_outbox()
    assert out.planned == ["r0", "r1"] and set(out.events) == {"r0", "r1"}
    assert out.stats == {"requests_pruned": 2, "rates": [0.4, 0.4]}
    assert w.take_outbox() is None


def test_run_step_resets_the_step_on_error():
    w = worker()

    def fails():
        w.begin_step()
        raise ValueError("boom")

    with pytest.raises(ValueError):
        w.run_step(fails)
    assert w.step is None

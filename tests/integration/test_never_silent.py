"""Never silent: PLPHP selected but an image request not pruned is an error,
not a quiet fallback. Each test disables one hook on an in-process engine
(scheduler, worker and model runner all in this process) and expects the
engine to stop naming the cause; with the hook in place the same request is
pruned."""

import pytest

from tests.support import gpu_defaults
from tests.conftest import greedy, make_inprocess_llm, runner_of
from plphp_dev.fixtures.prompts import prompt_inputs
from vllm_plphp.worker import backend, runner_v1, runner_v2


@pytest.fixture
def engine(llava_path):
    llm = make_inprocess_llm(llava_path, "plphp", distributed_executor_backend="uni")
    yield llm
    llm.llm_engine.engine_core.shutdown()


def _generate(llm):
    return llm.generate([prompt_inputs("llava", 1, 0)], greedy(4))


def test_runner_hooks_missing_stops_the_engine(engine, monkeypatch):
    # as if the model runner were one the plugin has no adapter for: nothing plans
    def nothing(*args, **kwargs):
        return [], [], 0

    monkeypatch.setattr(runner_v1, "plan_step", nothing)
    monkeypatch.setattr(runner_v2, "plan_step", nothing)
    with pytest.raises(Exception, match="never planned to prune"):
        _generate(engine)


def test_attention_hook_missing_stops_the_engine(engine, monkeypatch):
    # as if attention ran without the PLPHP impl (e.g. replayed in a full CUDA graph)
    monkeypatch.setattr(backend, "prune_layer", lambda *args, **kwargs: None)
    with pytest.raises(Exception, match="no attention layer pruned"):
        _generate(engine)


def test_with_hooks_the_request_is_pruned(engine):
    out = _generate(engine)[0]
    adapter = runner_of(engine)._plphp
    rec = engine.collective_rpc("plphp_records", args=([out.request_id],))[0][out.request_id]
    assert rec and all(r["kept"] < r["total"] for r in rec.values())
    from vllm.v1.worker.gpu.model_runner import GPUModelRunner as ModelRunnerV2

    v2 = isinstance(runner_of(engine), ModelRunnerV2)
    assert v2 == gpu_defaults.enabled()  # V1 on CPU; V2 under vLLM's GPU defaults
    assert isinstance(adapter, runner_v2.V2Adapter if v2 else runner_v1.V1Adapter)

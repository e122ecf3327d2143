"""The worker -> scheduler channel: what a step pruned rides on its
ModelRunnerOutput (pickled to the engine core with the rest of the output) as
one attribute, read by `vllm_plphp.engine.commit`."""

from __future__ import annotations

import copy
import functools

from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, ModelRunnerOutput

OUTPUT_ATTR = "plphp"


def _inner(output):
    """The ModelRunnerOutput inside an async output wrapper (V1's
    AsyncGPUModelRunnerOutput, Model Runner V2's AsyncOutput), or output itself."""
    for attr in ("_model_runner_output", "model_runner_output"):
        inner = getattr(output, attr, None)
        if isinstance(inner, ModelRunnerOutput):
            return inner
    return output


def attach_outbox(worker, output):
    """Move the worker's pending events/stats onto this step's output."""
    target = _inner(output)
    if not isinstance(target, ModelRunnerOutput):
        return output  # nothing to ride on; they go with the next output
    out = worker.take_outbox()
    if out is None:
        return output
    if target is EMPTY_MODEL_RUNNER_OUTPUT:  # a shared singleton: never mutate it
        target = output = copy.copy(target)
    setattr(target, OUTPUT_ATTR, {"events": out.events, "stats": out.stats, "planned": out.planned})
    return output


def read(output) -> dict | None:
    return getattr(output, OUTPUT_ATTR, None)


def step_hooks(runner_cls, adapter_of) -> dict:
    """Wrappers of a model runner's `execute_model` (the worker runs and closes
    the step; its events ride on the output) and `sample_tokens` (pending
    events ride on its output). Runs without PLPHP call the originals alone."""
    from vllm_plphp.patches import original

    def execute_model(self, *args, **kwargs):
        run = functools.partial(original(runner_cls, "execute_model"), self, *args, **kwargs)
        adapter = adapter_of(self)
        if adapter is None:
            return run()
        return attach_outbox(adapter.worker, adapter.worker.run_step(run))

    def sample_tokens(self, *args, **kwargs):
        output = original(runner_cls, "sample_tokens")(self, *args, **kwargs)
        adapter = adapter_of(self)
        if adapter is None:
            return output
        adapter.worker.exchange_stages()  # pipeline parallel only
        return attach_outbox(adapter.worker, output)

    return {"execute_model": execute_model, "sample_tokens": sample_tokens}

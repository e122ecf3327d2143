"""Shared test helpers. Engines are started once per module (see each module's
fixtures); fixture models are built once and cached on disk."""

from __future__ import annotations

import os

import pytest

from tests.support import gpu_defaults

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

MAX_TOKENS = 12
# Under vLLM's GPU defaults (second pass of scripts/test.sh) engines compile
# with torch.compile, as vLLM does by default. The first pass runs eager: each
# compiled engine start costs CI time; the compiled V1 path runs in the
# examples test (tests/integration/test_examples.py) and the quick start.
EAGER = not gpu_defaults.enabled()


def fp8_cpu_cache() -> bool:
    """vLLM's CPU fp8 KV cache needs x86 with AVX-512 or AMX (it refuses otherwise)."""
    import torch

    return torch.cpu._is_avx512_supported() or torch.cpu._is_amx_tile_supported()


def engine_kwargs(path: str, backend: str | None = None, plphp: dict | None = None, **kw):
    """Keyword arguments of a small, deterministic CPU engine on a fixture."""
    args = dict(
        model=path,
        dtype="float32",
        max_model_len=4096,
        kv_cache_memory_bytes=192 << 20,
        enforce_eager=EAGER,
        limit_mm_per_prompt={"image": 2},
        disable_log_stats=True,
        seed=0,
    )
    if backend is not None:
        args["attention_backend"] = backend
        args["additional_config"] = {"plphp": plphp or {}}
        args["worker_extension_cls"] = "vllm_plphp.worker.extension.PlphpWorkerExtension"
    args.update(kw)
    return args


def make_llm(path: str, backend: str | None = None, plphp: dict | None = None, **kw):
    from vllm import LLM

    return LLM(**engine_kwargs(path, backend, plphp, **kw))


def greedy(max_tokens: int = MAX_TOKENS, plphp=None):
    from vllm import SamplingParams

    extra = None if plphp is None else {"plphp": plphp}
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, extra_args=extra)


def kept(records) -> dict:
    """{layer: kept entries} of a request's PLPHP records (engine or reference)."""
    return {layer: r["kept"] for layer, r in (records or {}).items()}


def mixed_thresholds(records) -> dict:
    """alpha / beta at midpoints between the gammas of a 3-pruned-layer model's
    records: one attentive, one balanced, one indifferent layer."""
    g = sorted(r["gamma"] for r in records.values())
    return {"alpha": (g[1] + g[2]) / 2, "beta": (g[0] + g[1]) / 2, "r": 0.5, "delta_r": 0.3}


def token_ids(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


@pytest.fixture(scope="session")
def llava_path() -> str:
    from plphp_dev.fixtures import build_fixture

    return build_fixture("llava", "tiny", progress=False)


@pytest.fixture(scope="session")
def qwen2_vl_path() -> str:
    from plphp_dev.fixtures import build_fixture

    return build_fixture("qwen2_vl", "tiny", progress=False)


def make_inprocess_llm(path: str, backend: str | None = None, plphp: dict | None = None, **kw):
    """An LLM whose engine core (scheduler, block pool) lives in this process,
    so tests can read the block pool. The worker runs in its own process ("mp"
    executor) unless `distributed_executor_backend="uni"` puts it here too.
    Also what the equivalence modules use: on CPU vLLM starts its processes
    with "spawn", and each start imports vLLM and torch again (10-25 s on
    these machines); the engine-core process path (msgspec, the plugin
    loaded in a fresh process) is run by the serve, data-parallel, video,
    run-batch and example tests."""
    old = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    kw.setdefault("distributed_executor_backend", "mp")
    try:
        return make_llm(path, backend, plphp, **kw)
    finally:
        if old is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = old


def scheduler_of(llm):
    return llm.llm_engine.engine_core.engine_core.scheduler


def runner_of(llm):
    """The model runner of an in-process engine with the "uni" executor."""
    return llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner


def run_steps(llm, schedule: dict[int, list], params, abort_at: dict[int, list] | None = None):
    """Drive the engine step by step. schedule: {step: [(req_id, prompt), ...]}
    adds requests before that step; abort_at: {step: [req_id, ...]}.
    Returns ({req_id: token ids}, [free blocks after each step])."""
    engine = llm.llm_engine
    pool = scheduler_of(llm).kv_cache_manager.block_pool
    outputs, free, step = {}, [], 0
    while step in schedule or step in (abort_at or {}) or engine.has_unfinished_requests() or step < max(schedule, default=0):
        for req_id, prompt in schedule.get(step, []):
            engine.add_request(req_id, prompt, params)
        if abort_at and step in abort_at:
            engine.abort_request(abort_at[step])
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = list(out.outputs[0].token_ids)
        free.append(pool.get_num_free_blocks())
        step += 1
    return outputs, free

"""Shared test helpers. Engines are started once per module (see each module's
fixtures); fixture models are built once and cached on disk."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

MAX_TOKENS = 12


def engine_kwargs(path: str, backend: str | None = None, plphp: dict | None = None, **kw):
    """Keyword arguments of a small, deterministic CPU engine on a fixture."""
    args = dict(
        model=path,
        dtype="float32",
        max_model_len=4096,
        kv_cache_memory_bytes=192 << 20,
        enforce_eager=True,
        limit_mm_per_prompt={"image": 2},
        disable_log_stats=True,
        seed=0,
    )
    if backend is not None:
        args["attention_backend"] = backend
        args["additional_config"] = {"plphp": plphp or {}}
        args["worker_extension_cls"] = "vllm_plphp.worker_ext.PlphpWorkerExtension"
    args.update(kw)
    return args


def make_llm(path: str, backend: str | None = None, plphp: dict | None = None, **kw):
    from vllm import LLM

    return LLM(**engine_kwargs(path, backend, plphp, **kw))


def greedy(max_tokens: int = MAX_TOKENS, plphp=None):
    from vllm import SamplingParams

    extra = None if plphp is None else {"plphp": plphp}
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, extra_args=extra)


def token_ids(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


@pytest.fixture(scope="session")
def llava_path() -> str:
    from vllm_plphp.fixtures import build_fixture

    return build_fixture("llava", "tiny", progress=False)


@pytest.fixture(scope="session")
def qwen2_vl_path() -> str:
    from vllm_plphp.fixtures import build_fixture

    return build_fixture("qwen2_vl", "tiny", progress=False)

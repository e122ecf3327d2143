"""Start-up checks for `--attention-backend plphp` (front end and worker)."""

from __future__ import annotations

from vllm_plphp.config import PlphpConfig, from_vllm_config


class PlphpUnsupportedError(ValueError):
    """A vLLM feature that PLPHP does not support was enabled."""


def refuse_prefix_caching() -> None:
    raise PlphpUnsupportedError(
        "--attention-backend plphp does not support prefix caching: pruning "
        "compacts a request's KV blocks, which other requests could share. "
        "Remove --enable-prefix-caching (PLPHP turns it off by default)."
    )


def validate_engine_config(vllm_config) -> PlphpConfig:
    """Raise on a bad plphp section or an unsupported feature; return the config."""
    config = from_vllm_config(vllm_config)
    if vllm_config.cache_config.enable_prefix_caching:
        refuse_prefix_caching()
    if vllm_config.speculative_config is not None:
        raise PlphpUnsupportedError(
            "--attention-backend plphp does not support speculative decoding yet"
        )
    if getattr(vllm_config.scheduler_config, "async_scheduling", False):
        raise PlphpUnsupportedError(
            "--attention-backend plphp needs synchronous scheduling: pass "
            "--no-async-scheduling (pruned lengths are committed between steps)"
        )
    if vllm_config.cache_config.cache_dtype not in ("auto", None):
        raise PlphpUnsupportedError(
            f"--attention-backend plphp supports kv_cache_dtype 'auto' only, "
            f"got {vllm_config.cache_config.cache_dtype!r}"
        )
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        raise PlphpUnsupportedError(
            "--attention-backend plphp does not support pipeline parallelism yet"
        )
    return config

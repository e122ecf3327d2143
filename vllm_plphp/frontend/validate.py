"""Start-up checks for `--attention-backend plphp`, run where the engine
config is built (the process the user started): every vLLM feature PLPHP
cannot serve correctly is refused here, naming it and what works instead."""

from __future__ import annotations

from vllm_plphp.config import PlphpConfig, from_vllm_config
from vllm_plphp.frontend.models import model_refusals


class PlphpUnsupportedError(ValueError):
    """A vLLM feature that PLPHP does not support was enabled."""


def stock_backend(name: str):
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    return AttentionBackendEnum[name].get_class()


def kv_cache_dtypes(stock) -> list[str]:
    """KV cache dtypes PLPHP serves on the wrapped stock backend: those it
    supports that PLPHP can read (unquantized, or fp8 with one scale per layer;
    not TRITON_ATTN's per-token-head quantized layouts)."""
    from vllm_plphp.core.kv_layout import FP8_DTYPES

    readable = ("auto", "float16", "bfloat16", *FP8_DTYPES)
    return [d for d in stock.supported_kv_cache_dtypes if d in readable]


def _backend_refusals(config: PlphpConfig, vllm_config) -> list[str]:
    """The wrapped backend: one PLPHP can wrap, for the model's dtype and KV
    cache dtype; the pruning kernels runnable here."""
    import os

    from vllm.platforms import current_platform

    from vllm_plphp.selection import wrapped_backend

    out = []
    if config.kernels == "triton" and not current_platform.is_cuda() \
            and os.environ.get("TRITON_INTERPRET") != "1":
        out.append("plphp.kernels 'triton' without CUDA (Triton's interpreter, "
                   "TRITON_INTERPRET=1, runs them on CPU for tests); use 'auto'")
    try:
        name = wrapped_backend(vllm_config)
    except ValueError as e:  # PlphpBackendError, or the platform finds no backend
        return out + [str(e)]
    stock = stock_backend(name)
    model = vllm_config.model_config
    if model is not None and model.dtype not in stock.supported_dtypes:
        out.append(f"dtype {model.dtype} with the wrapped {name} backend (it takes "
                   f"{', '.join(str(d) for d in stock.supported_dtypes)}); pass --dtype "
                   "bfloat16, or another backend with plphp.backend")
    cache_dtype = vllm_config.cache_config.cache_dtype or "auto"
    if cache_dtype not in kv_cache_dtypes(stock):
        out.append(f"kv_cache_dtype {cache_dtype!r} (with the wrapped {name} backend "
                   f"PLPHP reads {', '.join(kv_cache_dtypes(stock))})")
    return out


def fastv_stage_problem(config: PlphpConfig, vllm_config) -> str | None:
    """FastV ranks vision tokens once, at layer K-1, and prunes every layer >= K
    with that ranking; under pipeline parallelism the ranking is not carried to
    later stages, so layer K-1 must lie on the last stage. None when fine."""
    pp = vllm_config.parallel_config.pipeline_parallel_size
    if config.policy != "fastv" or pp <= 1 or vllm_config.model_config is None:
        return None
    from vllm.distributed.utils import get_pp_indices

    num_layers = vllm_config.model_config.hf_text_config.num_hidden_layers
    last_start = get_pp_indices(num_layers, pp - 1, pp)[0]
    if config.k - 1 >= last_start:
        return None
    return (f"policy 'fastv' with k={config.k} under pipeline parallelism: its ranking "
            f"layer {config.k - 1} is not on the last stage (layers {last_start}.."
            f"{num_layers - 1}), and the ranking is not carried across stages; use "
            f"k >= {last_start + 1}, policy 'plphp' or 'vtw', or tensor parallelism")


def _refusals(vllm_config) -> list[str]:
    """One sentence per unsupported feature that is on."""
    from vllm.platforms import current_platform

    model = vllm_config.model_config
    parallel = vllm_config.parallel_config
    out = []
    if not (current_platform.is_cpu() or current_platform.is_cuda()):
        out.append(f"platform {current_platform.device_name!r}: PLPHP runs on CPU "
                   "(CPU_ATTN) and NVIDIA CUDA (FLASH_ATTN, TRITON_ATTN) only")
        return out
    out += model_refusals(model)  # MLA, cross-attention, hybrid, chunked, sliding (models.py)
    if out:  # the backend checks assume a model PLPHP can serve
        return out
    config = from_vllm_config(vllm_config)
    out += _backend_refusals(config, vllm_config)
    if vllm_config.speculative_config is not None:
        out.append("speculative decoding (draft tokens would be written at unpruned "
                   "positions); remove --speculative-config")
    if parallel.pipeline_parallel_size > 1 and not vllm_config.use_v2_model_runner:
        out.append("pipeline parallelism under Model Runner V1 (PLPHP carries the "
                   "stages' prune events to the scheduler in Model Runner V2 only, "
                   "vLLM's default where Triton runs; V1's pipeline path is untested "
                   "with PLPHP); use VLLM_USE_V2_MODEL_RUNNER=1 or tensor parallelism")
    if parallel.pipeline_parallel_size > 1 and parallel.distributed_executor_backend == "ray":
        out.append("pipeline parallelism under the Ray executor (PLPHP's stage exchange is "
                   "tested with the multiprocessing executor only); use "
                   "--distributed-executor-backend mp, or tensor parallelism under Ray")
    problem = fastv_stage_problem(config, vllm_config)
    if problem:
        out.append(problem)
    if parallel.decode_context_parallel_size > 1 or parallel.prefill_context_parallel_size > 1:
        out.append("context parallelism (KV entries split across ranks by position); "
                   "use tensor parallelism")
    if parallel.enable_dbo:
        out.append("dual-batch overlap (--enable-dbo; micro-batches build their own "
                   "attention metadata); remove --enable-dbo")
    if vllm_config.kv_transfer_config is not None:
        out.append("KV connectors and KV offloading (--kv-transfer-config, "
                   "--kv-offloading-size: they move blocks PLPHP compacts); remove them")
    return out


def validate_engine_config(vllm_config) -> PlphpConfig:
    """Raise on a bad plphp section or an unsupported feature; return the config."""
    config = from_vllm_config(vllm_config)
    refusals = _refusals(vllm_config)
    if refusals:
        raise PlphpUnsupportedError(
            "--attention-backend plphp does not support " + "; ".join(refusals))
    return config

"""fp8 KV caches for the HF reference: the language model's keys and values go
through the same quantization as vLLM's CPU cache before HF's eager attention.

vLLM's CPU kernel (`cpu_attn_reshape_and_cache`, 0.32) stores x / scale as the
fp8 value next to it toward zero (checked in tests/unit/core/test_kv_layout.py
against the kernel); the reference does the same from the fp8 format's own
value grid, then attends over the dequantized values (x * scale). The scale is
vLLM's default of 1.0 (no checkpoint scales, no `--calculate-kv-scales`).
Nothing here comes from `vllm_plphp`.

Usage: ``use_fp8_kv(reference_model.model, "fp8_e5m2")``.
"""

from __future__ import annotations

import sys

import torch

FORMATS = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
           "fp8_e5m2": torch.float8_e5m2}


def _grid(fmt: torch.dtype) -> torch.Tensor:
    """Every finite non-negative value of the format, ascending."""
    values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(fmt).float()
    return values[torch.isfinite(values) & (values >= 0)].unique().sort().values


def quantize_toward_zero(x: torch.Tensor, fmt: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """x / scale rounded to the format's value toward zero, times scale, as x's dtype."""
    grid = _grid(fmt).to(x.device)
    y = (x.float() / scale)
    mag = y.abs().clamp(max=float(grid[-1]))
    index = torch.searchsorted(grid, mag, right=True) - 1
    return (torch.sign(y) * grid[index] * scale).to(x.dtype)


def _attention(fmt: torch.dtype):
    def attention(module, query, key, value, attention_mask, **kwargs):
        eager = sys.modules[type(module).__module__].eager_attention_forward
        return eager(module, query, quantize_toward_zero(key, fmt),
                     quantize_toward_zero(value, fmt), attention_mask, **kwargs)
    return attention


def use_fp8_kv(model, kv_cache_dtype: str) -> None:
    """Make the language model of an HF VLM attend over fp8-quantized K/V
    (vision tower untouched). The attention weights it reports stay HF eager's."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    name = f"plphp_ref_{kv_cache_dtype}"
    AttentionInterface.register(name, _attention(FORMATS[kv_cache_dtype]))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["eager"])  # eager's masks
    model.config.get_text_config()._attn_implementation = name

"""The head-major views really alias what the stock CPU kernel writes."""

import pytest
import torch

from tests.conftest import fp8_cpu_cache
from vllm_plphp.core import kv_layout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_size", [32, 64, 80])
def test_cpu_views_match_reshape_and_cache(dtype, head_size):
    from vllm import _custom_ops as ops
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    nb, heads, bs = 4, 2, 32
    isa = _get_attn_isa(dtype, bs, head_size)
    if isa not in kv_layout.CPU_ISAS:  # e.g. AMX: PLPHP must refuse it clearly
        with pytest.raises(NotImplementedError, match=isa):
            kv_layout.cpu_views(torch.zeros(nb, heads, bs, 2 * head_size), isa)
        return
    kv = torch.zeros(nb, heads, bs, 2 * head_size, dtype=dtype)
    key_cache, value_cache = kv.view(nb, heads, 2 * bs, head_size).chunk(2, dim=2)
    n = 70
    g = torch.Generator().manual_seed(0)
    k = torch.randn(n, heads, head_size, generator=g).to(dtype)
    v = torch.randn(n, heads, head_size, generator=g).to(dtype)
    slots = torch.randperm(nb * bs, generator=g)[:n]
    ops.cpu_attn_reshape_and_cache(
        k, v, key_cache, value_cache, slots, isa, k_scale=1.0, v_scale=1.0, kv_cache_dtype="auto"
    )
    kview, vview = kv_layout.cpu_views(kv, isa)
    blocks, offsets = slots // bs, slots % bs
    assert torch.equal(kview[blocks, :, offsets], k)
    assert torch.equal(vview[blocks, :, offsets], v)


def test_unsupported_isa_is_refused():
    with pytest.raises(NotImplementedError, match="amx"):
        kv_layout.cpu_views(torch.zeros(1, 1, 32, 64), "amx")


@pytest.mark.skipif(not fp8_cpu_cache(), reason="vLLM's CPU fp8 KV cache needs AVX-512 or AMX")
@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "fp8_e4m3", "fp8_e5m2"])
def test_fp8_caches_share_the_layout_and_dequantize(kv_cache_dtype):
    """fp8 caches: same tile layout, one byte per entry; `dequantize` gives
    back what the kernel stored, which is x / scale rounded toward zero (the
    rule the HF reference's fp8 mode, plphp_dev/kv_quant.py, applies)."""
    from vllm import _custom_ops as ops
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    from plphp_dev.kv_quant import quantize_toward_zero

    nb, heads, bs, head_size, scale = 4, 2, 32, 64, 0.5
    isa = _get_attn_isa(torch.float32, bs, head_size, kv_cache_dtype)
    kv = torch.zeros(nb, heads, bs, 2 * head_size, dtype=torch.uint8)
    key_cache, value_cache = kv.view(nb, heads, 2 * bs, head_size).chunk(2, dim=2)
    g = torch.Generator().manual_seed(0)
    k = torch.randn(70, heads, head_size, generator=g) * 3
    v = torch.randn(70, heads, head_size, generator=g) * 3
    slots = torch.randperm(nb * bs, generator=g)[:70]
    ops.cpu_attn_reshape_and_cache(k, v, key_cache, value_cache, slots, isa,
                                   k_scale=scale, v_scale=scale, kv_cache_dtype=kv_cache_dtype)
    kview, vview = kv_layout.cpu_views(kv, isa)
    blocks, offsets = slots // bs, slots % bs
    fmt = kv_layout.FP8_DTYPES[kv_cache_dtype]
    for view, x in ((kview, k), (vview, v)):
        got = kv_layout.dequantize(view[blocks, :, offsets], kv_cache_dtype, scale, torch.float32)
        assert torch.equal(got, quantize_toward_zero(x, fmt, scale))
        assert not torch.equal(got, (x / scale).to(fmt).float() * scale)  # not round-to-nearest

"""vllm_plphp.gpu against the torch oracle (vllm_plphp.core.scoring / compaction).

* CPU (always): the dispatchers' torch fallback and the batched selection.
* CPU, Triton interpreter (when Triton imports): the Triton kernels' logic in
  float32, in a subprocess with TRITON_INTERPRET=1.
* CUDA (`-m gpu`, skipped without CUDA): the compiled kernels in bf16/fp16/fp32
  at small and Qwen2-7B-like shapes, plus an overlap stress test of compaction.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.gpu import kernel_checks as kc
from vllm_plphp import gpu

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [0, 1, 2]
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs CUDA: the Triton kernels run on CUDA tensors and this machine has no GPU",
)


# --------------------------------------------------------------------------- CPU: fallback path


def test_dispatch_falls_back_to_torch_on_cpu():
    t = torch.zeros(1)
    assert not gpu.use_triton(t)
    assert not gpu.use_triton(t, "torch")
    with pytest.raises(ValueError):
        gpu.use_triton(t, "cuda")
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(RuntimeError, match="CUDA"):
            gpu.use_triton(t, "triton")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_fallback_scores_match_oracle(seed, reduce):
    kc.check_scores("cpu", torch.float32, None, seed=seed, reduce=reduce)


@pytest.mark.parametrize("seed", SEEDS + [3, 4, 5])
def test_batched_selection_matches_oracle(seed):
    kc.check_select("cpu", seed=seed)


def test_batched_selection_without_images_keeps_everything():
    plan = gpu.make_plan([[], []], [5, 7], [6, 9])
    keep, lengths = gpu.select_kept_batched(torch.rand(2, 3, 7), plan, [0.4, 0.1])
    assert lengths == [6, 9]
    assert keep[0, :, :6].tolist() == [list(range(6))] * 3
    assert keep[1].tolist() == [list(range(9))] * 3


@pytest.mark.parametrize("seed", SEEDS)
def test_fallback_score_and_select_matches_oracle(seed):
    kc.check_score_and_select("cpu", torch.float32, None, seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("vllm_layout", [True, False])
def test_fallback_compaction_matches_oracle(seed, vllm_layout):
    kc.check_compact("cpu", torch.float32, None, seed=seed, vllm_layout=vllm_layout)


@pytest.mark.parametrize("seed", SEEDS)
def test_fallback_decode_attention_matches_dense(seed):
    kc.check_decode("cpu", torch.float32, None, seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_device_kept_counts_match_host_rule(seed):
    kc.check_kept_counts_device("cpu", seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_fallback_prune_layer_matches_oracle_pipeline(seed, reduce):
    kc.check_prune_layer("cpu", torch.float32, None, seed=seed, reduce=reduce)
    kc.check_prune_layer("cpu", torch.float32, None, seed=seed, reduce=reduce, zero_query=True)


def test_fallback_score_and_select_batched_with_tensor_parallel_hooks():
    """gamma = all_reduce(sum) / num_heads_total; per-request rate functions."""
    gen = torch.Generator().manual_seed(7)
    images, totals = kc.make_requests(gen, [120, 90], [2, 1])
    _, k, _, table = kc.paged_batch(gen, "cpu", torch.float32, totals, 2, 32, 16)
    q = torch.randn(2, 4, 32, generator=gen)
    plan = gpu.make_plan(images, [120, 90], totals)
    sel = gpu.score_and_select_batched(
        q, k, table, plan, 0.2, [lambda g: 0.4, lambda g: 0.1],
        num_heads_total=8, all_reduce=lambda x: 2 * x,
    )
    _, gsum, _ = gpu.last_token_scores_batched(q, k, table, plan, 0.2)
    assert sel.gammas == pytest.approx((2 * gsum / 8).tolist())
    assert sel.rates == [0.4, 0.1]
    assert sel.lengths == plan.kept_counts([0.4, 0.1])[1]


# --------------------------------------------------------------------------- CPU: Triton interpreter


def _triton_version():
    if importlib.util.find_spec("triton") is None:
        return None
    import triton

    return tuple(int(x) for x in triton.__version__.split(".")[:2])


@pytest.mark.skipif(
    (_triton_version() or (0, 0)) < (3, 7),
    reason="needs Triton >= 3.7 (its interpreter runs loops bounded by loaded values; 3.6's does not)",
)
def test_triton_kernels_in_interpreter_match_oracle():
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.gpu.kernel_checks", "--interpret"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all 12 checks passed" in proc.stdout


# --------------------------------------------------------------------------- CUDA: compiled kernels

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.mark.gpu
@needs_cuda
def test_dispatch_uses_triton_on_cuda():
    assert gpu.triton_available()
    assert gpu.use_triton(torch.zeros(1, device="cuda"))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_triton_scores_match_oracle(dtype, reduce):
    for seed in SEEDS:
        kc.check_scores("cuda", dtype, "triton", seed=seed, reduce=reduce)
    kc.check_scores("cuda", dtype, "triton", seed=9, batch=4, max_prompt=9000, reduce=reduce,
                    num_heads=28, num_kv_heads=4, head_size=128)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_score_and_select_matches_oracle(dtype):
    for seed in SEEDS:
        kc.check_score_and_select("cuda", dtype, "triton", seed=seed)
    kc.check_score_and_select("cuda", dtype, "triton", seed=5, prompt=7000,
                              num_heads=28, num_kv_heads=4, head_size=128)


@pytest.mark.gpu
@needs_cuda
def test_selection_on_cuda_matches_oracle():
    for seed in SEEDS:
        kc.check_select("cuda", seed=seed)
        kc.check_kept_counts_device("cuda", seed=seed)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", ["mean", "max"])
@pytest.mark.parametrize("method", ["fused", "inplace"])
def test_triton_prune_layer_matches_oracle_pipeline(dtype, reduce, method):
    for seed in SEEDS:
        kc.check_prune_layer("cuda", dtype, "triton", seed=seed, reduce=reduce, method=method)
    kc.check_prune_layer("cuda", dtype, "triton", seed=8, reduce=reduce, max_prompt=9000,
                         num_heads=28, num_kv_heads=4, head_size=128, method=method)
    kc.check_prune_layer("cuda", dtype, "triton", seed=9, reduce=reduce, method=method, zero_query=True)


@pytest.mark.gpu
@needs_cuda
def test_prune_layer_is_cuda_graph_capturable():
    """No host sync inside: the whole per-layer pipeline captures into a CUDA graph."""
    gen = torch.Generator().manual_seed(3)
    images, totals = kc.make_requests(gen, [3000, 2000], [2, 1])
    _, k, v, table = kc.paged_batch(gen, "cuda", torch.bfloat16, totals, 4, 128, 16)
    q = torch.randn(2, 28, 128, generator=gen).to("cuda", torch.bfloat16)
    from vllm_plphp.config import PlphpConfig

    plan = gpu.make_plan(images, [3000, 2000], totals, "cuda", configs=PlphpConfig())
    for method in ("fused", "inplace"):
        k0, v0 = k.clone(), v.clone()
        eager = gpu.prune_layer_batched_(q, k, v, table, plan, 128 ** -0.5, method=method)
        k_eager, v_eager = k.clone(), v.clone()
        k.copy_(k0), v.copy_(v0)
        torch.cuda.synchronize()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            gpu.prune_layer_batched_(q, k, v, table, plan, 128 ** -0.5, method=method)
        torch.cuda.current_stream().wait_stream(s)
        k.copy_(k0), v.copy_(v0)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            res = gpu.prune_layer_batched_(q, k, v, table, plan, 128 ** -0.5, method=method)
        k.copy_(k0), v.copy_(v0)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(res.lengths, eager.lengths)
        assert torch.equal(k, k_eager) and torch.equal(v, v_eager)
        k.copy_(k0), v.copy_(v0)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["inplace", "two_pass"])
@pytest.mark.parametrize("vllm_layout", [True, False])
def test_triton_compaction_matches_oracle(dtype, method, vllm_layout):
    for seed in SEEDS:
        kc.check_compact("cuda", dtype, "triton", method, seed=seed, vllm_layout=vllm_layout)
    kc.check_compact("cuda", dtype, "triton", method, seed=11, batch=8, max_total=9000,
                     head_size=128, vllm_layout=vllm_layout)


@pytest.mark.gpu
@needs_cuda
def test_triton_inplace_compaction_overlap_stress():
    """Dense overlap (keep almost everything, keep very little, long identity
    prefixes), many requests: any race shows up as a mismatch with the oracle."""
    for seed in range(20):
        kc.check_compact("cuda", torch.bfloat16, "triton", "inplace", seed=100 + seed, batch=16,
                         max_total=4000, head_size=128)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_decode_attention_matches_dense(dtype):
    for seed in SEEDS:
        kc.check_decode("cuda", dtype, "triton", seed=seed)
    kc.check_decode("cuda", dtype, "triton", seed=4, batch=8, max_len=9000, num_heads=28,
                    num_kv_heads=4, head_size=128)
    kc.check_decode("cuda", dtype, "triton", seed=5, batch=2, max_len=3000, num_heads=28,
                    num_kv_heads=4, head_size=128, num_splits=1)

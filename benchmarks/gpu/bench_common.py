"""Shared helpers of the GPU benchmarks (no vLLM imports; runs where only
torch + triton + transformers exist)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Qwen2-7B / Qwen2-VL-7B / LLaVA-OneVision-7B language model shape.
QWEN2_7B = dict(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6,
    rms_norm_eps=1e-6, tie_word_embeddings=False,
)
# CPU smoke shape: same head structure ratios (GQA 7:1), tiny width, 6 layers.
TINY = dict(
    hidden_size=224, intermediate_size=448, num_hidden_layers=6, num_attention_heads=7,
    num_key_value_heads=1, vocab_size=1000, max_position_embeddings=32768, rope_theta=1e6,
    rms_norm_eps=1e-6, tie_word_embeddings=False,
)


def build_qwen2(tiny: bool, device, dtype=torch.bfloat16):
    """HF Qwen2ForCausalLM with random weights built from a config (no download), SDPA attention."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**(TINY if tiny else QWEN2_7B))
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval().requires_grad_(False)


def prompt_layout(num_images: int, image_tokens: int, sys_text=40, gap_text=20, question=40):
    """Interleaved prompt: [sys text][img][gap text][img]...[question]. Returns
    (prompt_len, list of (start, length) image spans)."""
    pos, spans = sys_text, []
    for j in range(num_images):
        spans.append((pos, image_tokens))
        pos += image_tokens + (gap_text if j + 1 < num_images else 0)
    return pos + question, spans


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def wall_ms(fn, reps=10, warmup=2):
    """Median wall time (ms) of fn() with device synchronization (host work included)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def device_ms(fn, cuda_graph=False, rep_ms=200):
    """Median device time (ms) via triton.testing (events); CPU: wall time."""
    if not torch.cuda.is_available():
        return wall_ms(fn, reps=5, warmup=1)
    import triton.testing as tt

    if cuda_graph:
        try:
            return float(tt.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))
        except Exception as exc:  # pragma: no cover - depends on the Triton version
            print(f"do_bench_cudagraph failed ({exc!r}); using do_bench", flush=True)
    return float(tt.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))


def device_info() -> dict:
    info = dict(python=platform.python_version(), torch=torch.__version__)
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        pass
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except Exception:
        pass
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, sms=p.multi_processor_count, mem_gib=round(p.total_memory / 2**30, 1))
    else:
        info["gpu"] = None
    return info


def peak_copy_bandwidth_gbs(nbytes=2 << 30) -> float | None:
    """Device-to-device copy, bytes read + written per second (GB/s)."""
    if not torch.cuda.is_available():
        return None
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    ms = device_ms(lambda: b.copy_(a), rep_ms=300)
    del a, b
    torch.cuda.empty_cache()
    return 2 * nbytes / (ms * 1e-3) / 1e9


def save_json(path, data):
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(data, f, indent=1)

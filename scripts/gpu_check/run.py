"""The GPU check itself: vLLM 0.32 + PLPHP on the lent GPU, in one call.

Started by `bash scripts/gpu_check.sh --run DIR` (which installs the bundle and
sets PYTHONPATH); by hand:  python3 scripts/gpu_check/run.py --model FIXTURE_DIR

Phases (each prints its time and, on failure, its reason; a failure in env or
the reference ends the run, one in a mode ends that mode; exit 1 if any failed):
  env        versions, GPU, vLLM's platform (must be CUDA)
  reference  HF reference tokens (plphp_dev/reference.py, float32, CPU): stock
             and PLPHP defaults, for the CASES prompts (in a thread, while the
             first engines start)
  MODE       for each --modes entry ("nocompile": torch.compile off, CUDA graphs
             on; "compiled": vLLM's default torch.compile + CUDA graphs;
             "eager": enforce_eager, no graphs): a stock TRITON_ATTN engine and
             a PLPHP engine wrapping TRITON_ATTN, side by side; tokens against the
             reference, PLPHP's kept counts against the reference's; then (first
             mode only, unless --perf-modes) decode step time PLPHP / stock.
Engines otherwise keep vLLM's GPU defaults (Model Runner V2, async scheduling),
with native torch custom ops and IR ops (vLLM's compiled _C cannot travel; the
few _C ops still reached are Python stand-ins: scripts/gpu_check/c_shim.py), the
vision tower on torch SDPA (vllm_flash_attn cannot travel) and prefix caching off
(the timed repeats resend the same prompts). The last lines are a summary.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root
sys.path.insert(0, str(Path(__file__).resolve().parent))

from perf import time_rows  # noqa: E402
from report import SUMMARY, T0, Phase, finish, log  # noqa: E402
from tokens import CASES, Reference, correctness  # noqa: E402


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "missing"


def env_phase(allow_no_cuda: bool) -> None:
    import torch
    import transformers
    import triton

    from importlib.metadata import entry_points, version

    log(f"python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__}, "
        f"transformers {transformers.__version__}; from the image: " + ", ".join(
            f"{p} {_version(p)}" for p in ("tokenizers", "huggingface_hub", "numpy", "pillow",
                                           "protobuf", "safetensors")))
    import vllm
    from vllm.platforms import current_platform

    plugins = [e.value for e in entry_points(group="vllm.general_plugins")]
    log(f"vllm {version('vllm')} from {Path(vllm.__file__).parent}; plugins {plugins}; "
        f"platform {type(current_platform).__name__}")
    assert "vllm_plphp:register" in plugins, f"PLPHP plugin entry point missing: {plugins}"
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else "no GPU"
    SUMMARY.append(f"env: torch {torch.__version__}, triton {triton.__version__}, "
                   f"transformers {transformers.__version__}, {gpu}")
    if allow_no_cuda:  # CPU smoke test of the bundle (scripts/gpu_check/cpu_check.sh)
        return
    assert cuda, "torch sees no CUDA device"
    log(f"GPU {gpu}, capability {torch.cuda.get_device_capability(0)}")
    assert current_platform.is_cuda(), f"vLLM picked {type(current_platform).__name__}, not CUDA"


def engine_kwargs(args, mode: str, plphp: bool) -> dict:
    cc = {"custom_ops": ["none"]}  # RMSNorm, SiLU-mul, rotary in torch: no _C
    if mode == "nocompile":
        cc["mode"] = 0  # CompilationMode.NONE; CUDA graphs stay on (FULL)
    # RMSNorm is a vLLM IR op whose CUDA default without torch.compile is the _C kernel
    native = {"rms_norm": ["native"], "fused_add_rms_norm": ["native"]}
    kw = dict(model=args.model, dtype=args.dtype, max_model_len=4096, seed=0,
              compilation_config=cc, ir_op_priority=native, enforce_eager=(mode == "eager"),
              enable_prefix_caching=args.prefix_caching,
              gpu_memory_utilization=0.2, kv_cache_memory_bytes=args.kv_mib << 20,
              limit_mm_per_prompt={"image": max(4, args.images)},
              mm_encoder_attn_backend=args.vit_backend, disable_log_stats=True)
    if plphp:
        kw.update(attention_backend="PLPHP",
                  additional_config={"plphp": {"backend": args.backend}},
                  worker_extension_cls="vllm_plphp.worker.extension.PlphpWorkerExtension")
    else:
        kw.update(attention_backend=args.backend)
    return kw


def describe(name: str, llm) -> None:
    cfg = llm.llm_engine.vllm_config
    cc = cfg.compilation_config
    log(f"{name}: V2 runner {cfg.use_v2_model_runner}, async scheduling "
        f"{cfg.scheduler_config.async_scheduling}, compilation mode {cc.mode}, "
        f"cudagraph_mode {cc.cudagraph_mode}, block size {cfg.cache_config.block_size}")
    for rpc in ("plphp_runner", "plphp_attention_impls") if name == "plphp" else ():
        try:  # (the worker extension's inspection calls)
            res = llm.collective_rpc(rpc)[0]
            if rpc == "plphp_attention_impls":
                res = sorted(set(res.values()))
            log(f"{name}: {rpc} -> {res}")
            SUMMARY.append(f"plphp {rpc}: {res}")
        except Exception as e:
            log(f"{name}: {rpc} failed: {e!r}")


def run_mode(args, mode: str, ref: Reference, perf: bool) -> bool:
    """One mode's engines, token check and timing; False if a phase failed (the
    failure is in the summary; the next mode still runs). Without a PLPHP engine
    the stock engine is still checked against the reference."""
    from vllm import LLM

    engines, ok = {}, True
    try:
        with Phase(f"{mode}: start stock {args.backend} engine"):
            engines["stock"] = LLM(**engine_kwargs(args, mode, plphp=False))
            describe("stock", engines["stock"])
        try:
            with Phase(f"{mode}: start PLPHP engine (wrapping {args.backend})"):
                engines["plphp"] = LLM(**engine_kwargs(args, mode, plphp=True))
                describe("plphp", engines["plphp"])
        except Exception:
            ok = False
        with Phase(f"{mode}: tokens vs HF reference"):
            correctness(mode, engines["stock"], engines.get("plphp"), ref, args.tokens)
        if perf and "plphp" in engines:
            with Phase(f"{mode}: decode step time"):
                for line in time_rows(engines["stock"], engines["plphp"], args,
                                      deadline=args.deadline_s - 60, log=log,
                                      elapsed=lambda: time.perf_counter() - T0):
                    SUMMARY.append(f"{mode} {line}")
        return ok
    except Exception:
        return False
    finally:
        for llm in engines.values():
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception as e:
                log(f"engine shutdown: {e!r}")


def main() -> None:
    p = argparse.ArgumentParser(description="vLLM 0.32 + PLPHP on one GPU, one call")
    p.add_argument("--model", required=True, help="fixture dir (the bundle's llava-tiny bf16)")
    p.add_argument("--modes", default="nocompile,compiled",
                   help="comma list of nocompile, compiled, eager (in order)")
    p.add_argument("--perf-modes", default=None, help="modes that also time (default: the first)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tokens", type=int, default=16, help="generated tokens in the token check")
    p.add_argument("--batches", default="16,32,64")
    p.add_argument("--images", type=int, default=4, help="images per timed prompt (576 tokens each)")
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rows", default="plphp,plphp_r0.4,plphp_r1",
                   help="PLPHP rows timed against stock: plphp (defaults), plphp_r0.4, plphp_r1")
    p.add_argument("--kv-mib", type=int, default=3072, help="KV cache per engine")
    p.add_argument("--backend", default="TRITON_ATTN",
                   help="stock backend, and the one PLPHP wraps (CPU smoke test: CPU_ATTN)")
    p.add_argument("--cases", type=int, default=len(CASES), help="use the first N token-check prompts")
    p.add_argument("--vit-backend", default="TORCH_SDPA", help="vision tower attention (FA cannot travel)")
    p.add_argument("--prefix-caching", action="store_true")
    p.add_argument("--deadline-s", type=float, default=480,
                   help="start no new mode past deadline - 150 s, no new timing past deadline - 60 s")
    p.add_argument("--allow-no-cuda", action="store_true",
                   help="CPU smoke test: go on past env without a GPU (engines then fail)")
    args = p.parse_args()
    del CASES[args.cases:]
    modes = args.modes.split(",")
    perf_modes = args.perf_modes.split(",") if args.perf_modes else modes[:1]
    with Phase("env", fatal=True):
        env_phase(args.allow_no_cuda)
    with Phase("load HF reference", fatal=True):
        ref = Reference(args.model, args.tokens)
    failed = False
    for i, mode in enumerate(modes):
        if i and time.perf_counter() - T0 > args.deadline_s - 150:
            SUMMARY.append(f"{mode}: skipped (past deadline {args.deadline_s:.0f} s - 150 s)")
            continue
        failed |= not run_mode(args, mode, ref, perf=mode in perf_modes)
    finish(1 if failed else 0)


if __name__ == "__main__":
    main()

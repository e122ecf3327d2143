"""Applies tests/support/gpu_defaults.py (when vLLM is imported) when
PLPHP_GPU_DEFAULTS=1, so every process of a test run (pytest, engine cores,
workers, `vllm serve`) takes vLLM's GPU defaults on CPU. scripts/test.sh puts
this folder and the repository root on PYTHONPATH for its second pass.
Likewise tests/support/ray_cpu.py when PLPHP_RAY_CPU=1 (set, with PYTHONPATH,
by the Ray tests for their cluster, engine cores and servers)."""

import os

if os.environ.get("PLPHP_GPU_DEFAULTS") == "1":
    from tests.support import gpu_defaults

    gpu_defaults.enable_on_import()

if os.environ.get("PLPHP_RAY_CPU") == "1":  # the Ray executor on CPU (tests/support/ray_cpu.py)
    from tests.support import ray_cpu

    ray_cpu.enable()

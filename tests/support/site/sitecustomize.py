"""Applies tests/support/gpu_defaults.py at interpreter start when
PLPHP_GPU_DEFAULTS=1, so every process of a test run (pytest, engine cores,
workers, `vllm serve`) takes vLLM's GPU defaults on CPU. scripts/test.sh puts
this folder and the repository root on PYTHONPATH for its second pass."""

import os

if os.environ.get("PLPHP_GPU_DEFAULTS") == "1":
    from tests.support import gpu_defaults

    gpu_defaults.enable()

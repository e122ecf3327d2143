"""Test-only overrides that make vLLM on these CPUs take its GPU defaults:
Model Runner V2 and async scheduling (../shared/DESIGN.md s.3).

- Model Runner V2 needs Triton. Triton has no CPU backend here, but with
  `TRITON_INTERPRET=1` its kernels run in Triton's interpreter. vLLM's check
  (`vllm/triton_utils/importing.py`) accepts a backend named "cpu" on CPU
  builds, so a stand-in entry whose driver reports itself active is added to
  `triton.backends.backends` before vLLM decides, and removed right after
  `vllm.config.vllm` has read `HAS_TRITON` (Inductor would otherwise try to
  compile for it).
- Async scheduling: `CpuPlatform.check_and_update_config` forces it off; the
  wrapper restores what vLLM resolved before the platform hook (on unless the
  caller passed `async_scheduling=False` or a feature rules it out).

- vLLM's TRITON_ATTN attention backend, when asked for: tests/support/triton_attn_cpu.py.

Targets: `triton.backends.backends` (read by `vllm.triton_utils.importing`),
`vllm.platforms.cpu.CpuPlatform.check_and_update_config`. Test-only; never
imported by the package. vLLM versions checked: 0.32.0. Remove when Triton
has a CPU backend and vLLM's CPU platform allows async scheduling.

`enable()` must run before anything imports `vllm.triton_utils`, in every
process that builds a config or a model runner: `PLPHP_GPU_DEFAULTS=1` with
`tests/support/site` on PYTHONPATH does it at interpreter start in every
process (scripts/test.sh, second pass; `enabled()` tells tests).
"""

from __future__ import annotations

import os
import sys

_enabled = False


class _ActiveDriver:
    @staticmethod
    def is_active() -> bool:
        return True


def enabled() -> bool:
    return _enabled


def enable() -> None:
    global _enabled
    if _enabled:
        return
    if "vllm.triton_utils.importing" in sys.modules:
        import vllm.triton_utils as tu

        if not tu.HAS_TRITON:
            raise RuntimeError("tests.support.gpu_defaults.enable() ran after vLLM checked Triton")
    os.environ["TRITON_INTERPRET"] = "1"
    import triton.backends as tb

    tb.backends["cpu"] = tb.Backend(compiler=None, driver=_ActiveDriver)
    try:
        import vllm.config.vllm  # noqa: F401  (fixes HAS_TRITON = True there)
    finally:
        tb.backends.pop("cpu", None)

    from vllm.platforms.cpu import CpuPlatform

    original = CpuPlatform.check_and_update_config.__func__

    def check_and_update_config(cls, vllm_config):
        resolved = vllm_config.scheduler_config.async_scheduling  # vLLM's choice
        original(cls, vllm_config)
        if resolved:
            vllm_config.scheduler_config.async_scheduling = True

    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)

    from tests.support import triton_attn_cpu  # vLLM's TRITON_ATTN backend on CPU

    triton_attn_cpu.enable()
    _enabled = True

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
`tests/support/site` on PYTHONPATH does it in every process
(scripts/test.sh, second pass; `enabled()` tells tests), through
`enable_on_import()`: right after the `vllm` package itself has executed,
before it imports anything else of vLLM. Processes that never import vLLM pay
nothing: Inductor checks each CPU vector ISA by starting a child Python per
ISA, six per compiled engine process, and enabling at interpreter start made
each of them import vLLM (about 56 s per compiled engine start here).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_enabled = False


class _ActiveDriver:
    @staticmethod
    def is_active() -> bool:
        return True


def enabled() -> bool:
    """Applied in this process, or to be applied when vLLM is imported."""
    return _enabled or any(isinstance(f, _OnVllmImport) for f in sys.meta_path)


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


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)  # vllm/__init__.py: no vllm.triton_utils yet
        enable()


class _OnVllmImport(importlib.abc.MetaPathFinder):
    """Finds the `vllm` package with the other finders; `enable()` runs once it has executed."""

    def find_spec(self, name, path, target=None):
        if name != "vllm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def enable_on_import() -> None:
    """`enable()` now if vLLM is imported, else when it is. `TRITON_INTERPRET`
    is set now: Triton decides per `@triton.jit` function, when it is
    defined, whether it runs in the interpreter, and `import vllm` imports
    Triton before anything of vLLM's."""
    os.environ["TRITON_INTERPRET"] = "1"
    if "vllm" in sys.modules:
        enable()
    elif not any(isinstance(f, _OnVllmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _OnVllmImport())

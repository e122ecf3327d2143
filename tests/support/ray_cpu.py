"""Test-only overrides that let vLLM's Ray executor run on these CPUs, and a
local Ray cluster of two simulated nodes for it (../shared/DESIGN.md s.3).

vLLM 0.32's CPU platform has no Ray device key (`ray_device_key = ""` in
`vllm/platforms/interface.py`), so `--distributed-executor-backend ray` stops
with "current platform cpu does not support ray". The overrides:

- `CpuPlatform.ray_device_key = RESOURCE`, a custom resource that every
  simulated node declares once per worker it may host ("CPU" itself is
  refused by Ray as an actor resource). vLLM then asks for one RESOURCE per
  worker in its placement group, as it asks for one "GPU" on CUDA.
- `RayWorkerProc.get_node_and_physical_gpu_ids` (`vllm/v1/executor/
  ray_executor_v2.py`) returns the actor's node id and its global rank as
  its "device id": Ray's `get_accelerator_ids()` knows no custom resource.
  The executor only sorts these ids per node to derive local ranks.

Targets: `vllm.platforms.cpu.CpuPlatform.ray_device_key`,
`vllm.v1.executor.ray_executor_v2.RayWorkerProc.get_node_and_physical_gpu_ids`.
vLLM versions checked: 0.32.0 (ray 2.60.0). Test-only; never imported by the
package. Remove when vLLM's CPU platform supports Ray.

They must hold in every process that builds a config or runs a worker: the
driver (test process or `vllm serve`), the engine core and the Ray worker
actors. `enable()` applies them when those vLLM modules are imported (an
import hook on `sys.meta_path`), not by importing vLLM: Ray's own Python
agents run it too (through `tests/support/site/sitecustomize.py` when
`PLPHP_RAY_CPU=1`) and importing vLLM there delays them past Ray's start-up
timeouts on 2 cores. `cluster_env()` is the environment that puts the hook
into every process of a node started from it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
from pathlib import Path

RESOURCE = "plphp_cpu"
ENV = "PLPHP_RAY_CPU"
ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "tests" / "support" / "site"


_MISSING = object()
_saved: dict = {}  # (class, attribute) -> value before enable(), for disable()


def _set(cls, name: str, value) -> None:
    _saved.setdefault((cls, name), cls.__dict__.get(name, _MISSING))
    setattr(cls, name, value)


def _patch_platform(module) -> None:
    _set(module.CpuPlatform, "ray_device_key", RESOURCE)


def _get_node_and_physical_gpu_ids(self) -> tuple[str, list[int]]:
    import ray

    return ray.get_runtime_context().get_node_id(), [self._init_kwargs["rank"]]


def _patch_ray_executor(module) -> None:
    _set(module.RayWorkerProc, "get_node_and_physical_gpu_ids", _get_node_and_physical_gpu_ids)


PATCHES = {
    "vllm.platforms.cpu": _patch_platform,
    "vllm.v1.executor.ray_executor_v2": _patch_ray_executor,
}


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, patch):
        self.inner, self.patch = inner, patch

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        self.patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the real module with the other finders, then patches it once executed."""

    def find_spec(self, name, path, target=None):
        patch = PATCHES.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader, patch)
                return spec
        return None


def enable() -> None:
    """Apply the overrides in this process: now to the modules already
    imported, at import time to the others."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    for name, patch in PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    sys.meta_path.insert(0, _Finder())


def disable() -> None:
    """Undo enable() in this process (the test process, after its cluster)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]
    for (cls, name), value in _saved.items():
        if value is _MISSING:
            delattr(cls, name)  # inherited again
        else:
            setattr(cls, name, value)
    _saved.clear()


def cluster_env() -> dict[str, str]:
    """Environment for every process of the test cluster and its clients:
    the hook at interpreter start, Ray's token authentication off (a client
    without the head's token is refused otherwise)."""
    path = os.environ.get("PYTHONPATH", "")
    parts = [str(ROOT), str(SITE)] + [p for p in path.split(os.pathsep) if p]
    return {ENV: "1", "PYTHONPATH": os.pathsep.join(dict.fromkeys(parts)),
            "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@contextlib.contextmanager
def cluster(nodes: int = 2):
    """A local Ray cluster of `nodes` simulated nodes (one raylet each, the
    first also the head), each declaring one RESOURCE, so that vLLM's
    placement group puts one worker on each node. While it is up, this
    process's environment (cluster_env, RAY_ADDRESS) makes the engines and
    servers started from it join the cluster; restored afterwards."""
    saved = {k: os.environ.get(k) for k in (*cluster_env(), "RAY_ADDRESS")}
    os.environ.update(cluster_env())
    enable()
    import ray
    from ray.cluster_utils import Cluster

    local = Cluster()
    try:
        for _ in range(nodes):
            local.add_node(num_cpus=1, resources={RESOURCE: 1}, include_dashboard=False)
        local.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = local.address
        yield local
    finally:
        ray.shutdown()  # the driver's connection, if an engine opened one here
        local.shutdown()
        disable()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

"""Stand-in for vLLM's compiled CUDA extension, for the one-call GPU check only.

Installed by `scripts/gpu_check.sh --bundle` as `vllm/_C_stable_libtorch.py`:
vllm/platforms/cuda.py imports that module at its top, and the compiled one
(part of vLLM's 214 MB of .so files) cannot travel. With
compilation_config custom_ops ["none"] and native IR ops, vLLM 0.32's offline
path on CUDA still reaches `torch.ops._C` in three places (read in the 0.32
source); this module gives each what it needs, in Python:
- Model Runner V2's host buffers (v1/worker/gpu/buffer_utils.py, UvaBuffer) ask
  `_C::get_cuda_view_from_cpu_tensor`: a CUDA tensor over pinned host memory.
  On x86-64 Linux with unified addressing, memory from cudaHostAlloc (what
  torch's pin_memory uses) has the same address on the device, which is what
  cudaHostGetDevicePointer returns; so: a non-owning CUDA storage at that
  address. The CPU tensor is kept alive by the view.
- CUDA graph capture under torch.compile (compilation/cuda_graph.py) keeps
  `_C::weak_ref_tensor(t)` of outputs: a tensor over the same memory that does
  not own it; same construction (non-owning storage; inductor's cudagraph trees
  build theirs the same way), so no allocation happens inside a capture.
- The torch.compile pass FixFunctionalizationPass compares graph nodes with
  `torch.ops._C.<op>.default` for rms_norm, rotary_embedding, silu_and_mul and
  a few fused ops: they must exist as ops. Defined here as placeholders that
  raise if ever called (custom ops "none" keeps them out of every graph).
"""

from __future__ import annotations

import torch

_lib = torch.library.Library("_C", "FRAGMENT")


def _extent_bytes(t: torch.Tensor) -> int:
    """Bytes from t.data_ptr() to the end of the last element t addresses."""
    if t.numel() == 0:
        return 0
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return (last + 1) * t.element_size()


def _alias(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor with t's dtype, shape and strides at t's address on `device`,
    owning nothing."""
    storage = torch._C._construct_storage_from_data_pointer(t.data_ptr(), device, _extent_bytes(t))
    return torch.empty(0, dtype=t.dtype, device=device).set_(storage, 0, t.shape, t.stride())


def weak_ref_tensor(t: torch.Tensor) -> torch.Tensor:
    return _alias(t, t.device) if t.numel() else t


def get_cuda_view_from_cpu_tensor(cpu: torch.Tensor) -> torch.Tensor:
    assert cpu.device.type == "cpu" and cpu.is_pinned(), "needs a pinned CPU tensor"
    device = torch.device("cuda", torch.cuda.current_device())
    if cpu.numel() == 0:
        return torch.empty(cpu.shape, dtype=cpu.dtype, device=device)
    view = _alias(cpu, device)
    view._gpu_check_owner = cpu  # the host memory lives as long as the view
    return view


_lib.define("weak_ref_tensor(Tensor input) -> Tensor")
_lib.impl("weak_ref_tensor", weak_ref_tensor, "CUDA")
_lib.impl("weak_ref_tensor", weak_ref_tensor, "CPU")
_lib.define("get_cuda_view_from_cpu_tensor(Tensor cpu_tensor) -> Tensor")
_lib.impl("get_cuda_view_from_cpu_tensor", get_cuda_view_from_cpu_tensor, "CPU")

# Names FixFunctionalizationPass reads (silu_and_mul_nvfp4_quant it guards with
# hasattr, and a defined one would switch on an nvfp4 path: left out).
PLACEHOLDERS = ("rotary_embedding", "fused_add_rms_norm", "fused_add_rms_norm_static_fp8_quant",
                "rms_norm_dynamic_per_token_quant", "rms_norm", "rms_norm_static_fp8_quant",
                "silu_and_mul", "silu_and_mul_quant", "fused_qk_norm_rope")


def _placeholder(name: str):
    def fn(*args, **kwargs):
        raise RuntimeError(f"_C::{name} is a placeholder of the GPU check's stand-in for vLLM's "
                           "compiled extension (scripts/gpu_check/c_shim.py): use "
                           'compilation_config={"custom_ops": ["none"]} and native IR ops')
    return fn


for _name in PLACEHOLDERS:
    if not hasattr(torch.ops._C, _name):
        _lib.define(f"{_name}(Tensor x) -> ()")
        _lib.impl(_name, _placeholder(_name), "CompositeExplicitAutograd")

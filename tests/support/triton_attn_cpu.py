"""Test-only overrides that let vLLM's own TRITON_ATTN backend (the portable
GPU attention backend: `unified_attention`, `triton_reshape_and_cache_flash`)
run on these CPUs, its Triton kernels in Triton's interpreter
(../shared/DESIGN.md s.3, "vLLM's TRITON_ATTN backend on these CPUs").
Applied with tests/support/gpu_defaults.py (which makes Triton usable: the
stand-in "cpu" backend and TRITON_INTERPRET=1), in every process.

- `CpuPlatform.get_attn_backend_cls`: the CPU platform ignores any selected
  backend (always CPU_ATTN); answer TRITON_ATTN's path when TRITON_ATTN is
  asked for, else the original. PLPHP's own platform patch wraps this one, so
  `{"plphp": {"backend": "TRITON_ATTN"}}` wraps TRITON_ATTN here.
- `torch.cuda.get_device_capability`: `triton_reshape_and_cache_flash` asks
  it of `key.device`; answer (9, 0) for a CPU device (the Hopper branch).
- `TritonAttentionMetadataBuilder.__init__`: `seq_threshold_3D = 0`, so decode
  runs on the 2D kernel (about 3x faster interpreted; the 3D kernel gave the
  same tokens). Speed only.

Targets as above. Test-only; never imported by the package. vLLM versions
checked: 0.32.0. Remove when Triton has a CPU backend.
"""

from __future__ import annotations

_enabled = False


def enable() -> None:
    global _enabled
    if _enabled:
        return
    import torch
    from vllm.platforms.cpu import CpuPlatform

    original_select = CpuPlatform.get_attn_backend_cls.__func__

    def get_attn_backend_cls(cls, selected_backend, attn_selector_config, *args, **kwargs):
        if getattr(selected_backend, "name", None) == "TRITON_ATTN":
            return selected_backend.get_path()
        return original_select(cls, selected_backend, attn_selector_config, *args, **kwargs)

    CpuPlatform.get_attn_backend_cls = classmethod(get_attn_backend_cls)

    original_capability = torch.cuda.get_device_capability

    def get_device_capability(device=None):
        if isinstance(device, torch.device) and device.type == "cpu" or device == "cpu":
            return (9, 0)
        return original_capability(device)

    torch.cuda.get_device_capability = get_device_capability

    from vllm.v1.attention.backends.triton_attn import TritonAttentionMetadataBuilder

    original_init = TritonAttentionMetadataBuilder.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.seq_threshold_3D = 0

    TritonAttentionMetadataBuilder.__init__ = __init__
    _enabled = True

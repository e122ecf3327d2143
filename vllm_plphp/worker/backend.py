"""The `PLPHP` attention backend: the platform's stock backend plus pruning.

- Metadata builder: per layer (each layer is its own KV cache group), the stock
  kernel gets `seq_len - num_pruned(request, layer)`, so decode reads the
  compacted cache and nothing more. The lengths are written in place into a
  buffer the builder owns (same address every step), which is what a captured
  full CUDA graph reads when it replays; the per-(layer, row) shift is computed
  once per step by the runner adapter (`StepContext.shift`).
- Impl: after the stock forward of the step that reaches a request's last
  prompt token, scores that token's attention row against the layer's cached
  (post-RoPE) keys, picks r_l from gamma_l, keeps each KV head's top vision
  tokens per image and compacts the cache in place (`vllm_plphp.core.prune`).
CPU wraps CPU_ATTN; CUDA wraps FLASH_ATTN (import-time choice by platform).
"""

from __future__ import annotations

import dataclasses

import torch
from vllm.platforms import current_platform

from vllm_plphp.core.prune import prune_layer
from vllm_plphp.core.worker import worker_for
from vllm_plphp.log import logger

if current_platform.is_cpu():
    from vllm.v1.attention.backends.cpu_attn import (
        CPUAttentionBackend as _StockBackend,
    )
    from vllm.v1.attention.backends.cpu_attn import (
        CPUAttentionBackendImpl as _StockImpl,
    )
    from vllm.v1.attention.backends.cpu_attn import (
        CPUAttentionMetadataBuilder as _StockBuilder,
    )
else:  # CUDA (other platforms are refused at start: vllm_plphp.frontend.validate)
    from vllm.v1.attention.backends.flash_attn import (
        FlashAttentionBackend as _StockBackend,
    )
    from vllm.v1.attention.backends.flash_attn import (
        FlashAttentionImpl as _StockImpl,
    )
    from vllm.v1.attention.backends.flash_attn import (
        FlashAttentionMetadataBuilder as _StockBuilder,
    )


class PlphpMetadataBuilder(_StockBuilder):
    def __init__(self, kv_cache_spec, layer_names, vllm_config, device, *args, **kwargs):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device, *args, **kwargs)
        self.plphp = worker_for(vllm_config)
        # seq_len per batch row for this layer, written in place every step
        self.seq_lens_buf = torch.zeros(
            vllm_config.scheduler_config.max_num_seqs, dtype=torch.int32, device=device)

    def layer_seq_lens(self, cm):
        """`cm` with this layer's compacted seq_lens (in `self.seq_lens_buf`)."""
        n = cm.num_reqs
        buf = self.seq_lens_buf[:n]
        step = self.plphp.step
        gid = self.plphp.layer_to_group.get(self.layer_names[0]) if self.layer_names else None
        if step is not None and step.shift is not None and gid is not None:
            torch.sub(cm.seq_lens[:n], step.shift[gid, :n], out=buf)
        else:
            buf.copy_(cm.seq_lens[:n])
        return dataclasses.replace(cm, seq_lens=buf)

    def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
        cm = self.layer_seq_lens(common_attn_metadata)
        metadata = super().build(common_prefix_len, cm, fast_build)
        if self.plphp.record_seq_lens and self.plphp.step is not None:
            self.plphp.last_seq_lens[self.layer_names[0]] = cm.seq_lens[: cm.num_reqs].tolist()
        return metadata


class PlphpImpl(_StockImpl):
    # the engine's PlphpWorker, set by the runner adapter when it attaches
    plphp = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        unsupported = {
            "alibi": getattr(self, "alibi_slopes", None) is not None,
            "sliding window": getattr(self, "sliding_window", -1) not in (-1, None, (-1, -1)),
            "logits soft-cap": bool(getattr(self, "logits_soft_cap", 0) or 0),
            "attention sinks": getattr(self, "sinks", None) is not None,
        }
        bad = [name for name, flag in unsupported.items() if flag]
        if bad:
            raise NotImplementedError(
                f"--attention-backend plphp does not support models with {', '.join(bad)}"
            )
        logger.info_once(
            "PLPHP attention backend active (wrapping %s)", _StockBackend.get_name()
        )

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *a, **kw):
        out = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *a, **kw)
        worker = self.plphp
        if attn_metadata is not None and worker is not None and worker.step is not None \
                and worker.step.targets:
            prune_layer(worker, self, layer, query, kv_cache)
        return out


class PlphpAttentionBackend(_StockBackend):
    @staticmethod
    def get_name() -> str:
        return "PLPHP"

    @staticmethod
    def get_impl_cls():
        return PlphpImpl

    @staticmethod
    def get_builder_cls():
        return PlphpMetadataBuilder


def attach_layers(worker, vllm_config) -> None:
    """Point every attention layer's PLPHP impl at `worker`; refuse a model
    whose attention layers do not all run the PLPHP impl."""
    layers = vllm_config.compilation_config.static_forward_context
    others = []
    for name, layer in layers.items():
        impl = getattr(layer, "impl", None)
        if impl is None or name not in worker.layer_to_group:
            continue
        if isinstance(impl, PlphpImpl):
            impl.plphp = worker
        else:
            others.append(f"{name}: {type(impl).__name__}")
    if others:
        raise RuntimeError(
            "--attention-backend plphp: these attention layers do not run the PLPHP "
            f"implementation, so they could not be pruned: {others[:4]}"
        )


def log_attached(adapter, vllm_config) -> None:
    logger.info(
        "PLPHP attached to %s (async scheduling %s, cudagraph mode %s, compiled %s)",
        adapter.name, bool(vllm_config.scheduler_config.async_scheduling),
        vllm_config.compilation_config.cudagraph_mode, not vllm_config.model_config.enforce_eager)

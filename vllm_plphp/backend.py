"""The `PLPHP` attention backend: the platform's stock backend plus pruning.

- Metadata builder: per layer (each layer is its own KV cache group), the stock
  kernel gets `seq_len - num_pruned(request, layer)`, so decode reads the
  compacted cache and nothing more.
- Impl: after the stock forward of the step that reaches a request's last
  prompt token, scores that token's attention row against the layer's cached
  (post-RoPE) keys, picks r_l from gamma_l, keeps each KV head's top vision
  tokens per image and compacts the cache in place (`vllm_plphp.prune`).
CPU wraps CPU_ATTN; CUDA wraps FLASH_ATTN (import-time choice by platform).
"""

from __future__ import annotations

import dataclasses

import torch
from vllm.platforms import current_platform

from vllm_plphp.log import logger
from vllm_plphp.prune import prune_layer
from vllm_plphp.worker_state import STATE

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
else:  # CUDA
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
    def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
        cm = common_attn_metadata
        table = STATE.block_table_for(self.layer_names[0]) if self.layer_names else None
        pruned = table.pruned_rows(cm.num_reqs) if table is not None else None
        if pruned is not None:
            shift = torch.zeros_like(cm.seq_lens)
            shift[: cm.num_reqs] = torch.from_numpy(pruned).to(cm.seq_lens.device)
            changes = {"seq_lens": cm.seq_lens - shift}
            if cm.seq_lens_cpu_upper_bound is not None:
                changes["seq_lens_cpu_upper_bound"] = (
                    cm.seq_lens_cpu_upper_bound - shift.to("cpu")
                )
            cm = dataclasses.replace(cm, **changes)
        metadata = super().build(common_prefix_len, cm, fast_build)
        if STATE.record_seq_lens:
            STATE.last_seq_lens[self.layer_names[0]] = cm.seq_lens[: cm.num_reqs].tolist()
        return metadata


class PlphpImpl(_StockImpl):
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
        if attn_metadata is not None and STATE.targets:
            prune_layer(self, layer, query, kv_cache)
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

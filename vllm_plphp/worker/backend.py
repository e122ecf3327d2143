"""The `PLPHP` attention backend: a stock vLLM backend plus pruning.

PLPHP wraps the backend vLLM would pick for the model on the platform (or the
one the `backend` setting names; `vllm_plphp.worker.selection` decides), as
subclasses of that backend's own classes:

- Metadata builder: per layer (each layer is its own KV cache group), the stock
  kernel gets `seq_len - num_pruned(request, layer)`, so decode reads the
  compacted cache and nothing more. The lengths are written in place into a
  buffer the builder owns (same address every step), which is what a captured
  full CUDA graph reads when it replays; the per-(layer, row) shift is computed
  once per step by the runner adapter (`StepContext.shift`). Replacing the
  device `seq_lens` is all CPU_ATTN, FLASH_ATTN and TRITON_ATTN read.
- Impl: after the stock forward of the step that reaches a request's last
  prompt token, scores that token's attention row against the layer's cached
  (post-RoPE) keys, picks r_l from gamma_l, keeps each KV head's top vision
  tokens per image and compacts the cache in place (`vllm_plphp.core.prune`),
  reading the cache through the wrapped backend's layout (`kv_layout`).

`wrap(stock_backend)` builds the three classes once per stock backend; they
are importable by path as `vllm_plphp.worker.backend.PLPHP_<STOCK NAME>`
(e.g. `PLPHP_TRITON_ATTN`), which is what the platform patch returns to vLLM.
"""

from __future__ import annotations

import copy
import functools

import torch

from vllm_plphp.core.prune import prune_layer
from vllm_plphp.core.worker import worker_for
from vllm_plphp.log import logger

PATH_PREFIX = "vllm_plphp.worker.backend.PLPHP_"


class PlphpBuilderMixin:
    """Mixed in before the stock metadata builder."""

    # The V1 runner builds the first KV cache group's metadata and, for every
    # later group with an equal spec and builder type, reuses it through
    # `update_block_table` (new block table and slot mapping, the first
    # group's seq_lens) when the builder supports it, as FLASH_ATTN's does:
    # every layer would read layer 0's lengths. Each layer builds its own.
    supports_update_block_table = False

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
        cm = copy.copy(cm)  # half the cost of dataclasses.replace, 28 times a step (issue 29)
        cm.seq_lens = buf
        return cm

    def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
        cm = self.layer_seq_lens(common_attn_metadata)
        metadata = super().build(common_prefix_len, cm, fast_build)
        if self.plphp.record_seq_lens and self.plphp.step is not None:
            self.plphp.last_seq_lens[self.layer_names[0]] = cm.seq_lens[: cm.num_reqs].tolist()
        return metadata


class PlphpImplMixin:
    """Mixed in before the stock attention impl. `kv_layout` names how the
    wrapped backend stores K/V ("cpu": CPU_ATTN's tiles; "split": K = [..., :D],
    V = [..., D:] of (num_blocks, Hkv, block_size, 2D), FLASH_ATTN / TRITON_ATTN)."""

    plphp = None  # the engine's PlphpWorker, set by the runner adapter when it attaches
    kv_layout = "split"
    wrapped_name = "?"

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
        logger.info_once("PLPHP attention backend active (wrapping %s)", self.wrapped_name)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *a, **kw):
        out = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *a, **kw)
        worker = self.plphp
        if attn_metadata is not None and worker is not None and worker.step is not None \
                and worker.step.targets:
            prune_layer(worker, self, layer, query, kv_cache)
        return out


# how each supported stock backend stores K/V (vllm_plphp.core.kv_layout)
KV_LAYOUTS = {"CPU_ATTN": "cpu", "FLASH_ATTN": "split", "TRITON_ATTN": "split"}


@functools.lru_cache(maxsize=None)
def wrap(enum_name: str) -> type:
    """The PLPHP backend class wrapping `AttentionBackendEnum[enum_name]`."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    if enum_name not in KV_LAYOUTS:
        raise ValueError(f"PLPHP cannot wrap {enum_name} (supported: {sorted(KV_LAYOUTS)})")
    stock = AttentionBackendEnum[enum_name].get_class()
    stock_impl, stock_builder = stock.get_impl_cls(), stock.get_builder_cls()
    impl = type(f"Plphp{stock_impl.__name__}", (PlphpImplMixin, stock_impl),
                {"kv_layout": KV_LAYOUTS[enum_name], "wrapped_name": enum_name,
                 "__module__": __name__})
    builder = type(f"Plphp{stock_builder.__name__}", (PlphpBuilderMixin, stock_builder),
                   {"__module__": __name__})
    backend = type(f"PLPHP_{enum_name}", (stock,), {
        "__module__": __name__,
        "wrapped": stock,
        "wrapped_name": enum_name,
        "get_name": staticmethod(lambda: "PLPHP"),
        "get_impl_cls": staticmethod(lambda: impl),
        "get_builder_cls": staticmethod(lambda: builder),
    })
    for cls in (impl, builder, backend):  # importable (and picklable) by name
        globals()[cls.__name__] = cls
    return backend


def __getattr__(name: str):
    """`PLPHP_<STOCK>` classes by path (what vLLM resolves), and
    `PlphpAttentionBackend` (the registered PLPHP path) as the wrapper of the
    backend the current engine's settings choose."""
    if name.startswith("PLPHP_"):
        return wrap(name[len("PLPHP_"):])
    if name == "PlphpAttentionBackend":
        from vllm.config import get_current_vllm_config

        from vllm_plphp.selection import wrapped_backend

        return wrap(wrapped_backend(get_current_vllm_config()))
    raise AttributeError(name)


def is_plphp_impl(impl) -> bool:
    return isinstance(impl, PlphpImplMixin)


def attach_layers(worker, vllm_config) -> None:
    """Point every attention layer's PLPHP impl at `worker`; refuse a model
    whose attention layers do not all run the PLPHP impl."""
    from vllm_plphp.selection import wrapped_backend

    wanted = wrapped_backend(vllm_config)
    layers = vllm_config.compilation_config.static_forward_context
    others = []
    for name, layer in layers.items():
        impl = getattr(layer, "impl", None)
        if impl is None or name not in worker.layer_to_group:
            continue
        if isinstance(impl, PlphpImplMixin) and impl.wrapped_name == wanted:
            impl.plphp = worker
        else:
            others.append(f"{name}: {type(impl).__name__} (expected PLPHP on {wanted})")
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

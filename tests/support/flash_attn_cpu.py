"""Test-only overrides that let vLLM's own FLASH_ATTN backend code (its
metadata builder and `build`, `FlashAttentionMetadata`, the impl's `forward`
and `do_kv_cache_update`, its declared cudagraph support) run inside the
engine on these CPUs, with plain-torch stand-ins for ONLY the CUDA kernels its
impl calls (vllm/v1/attention/backends/flash_attn.py, fa_utils.py).

Why: what PLPHP changes in FLASH_ATTN's metadata (each layer's compacted
seq_lens, in a buffer the builder owns) and how it reads FLASH_ATTN's cache
must be checked end to end inside the engine, and this CPU build of vLLM has
no flash-attn kernels (`vllm_flash_attn` without `_vllm_fa2_C`), nor does the
CPU platform ever pick FLASH_ATTN. Enabled from a test module fixture in the
process that runs the worker (tests/integration/test_flash_attn_standin.py);
not applied at interpreter start.

- `flash_attn_varlen_func` (paged path): `STANDIN_flash_attn_varlen_func`
  below. Reads the (num_blocks, block_size, Hkv, D)-strided key/value views
  FLASH_ATTN's impl makes of the layer's (num_blocks, Hkv, block_size, 2D)
  cache, page by page through `block_table`, for `seqused_k[i]` entries of row
  i; causal with the row's queries at the end of its sequence; GQA. Softmax in
  float32, output cast to the query dtype. Anything it does not implement
  (alibi, sliding window, softcap, sinks, mask_mod, dynamic causal, the
  non-paged `cu_seqlens_k` path, fp8) raises. It records the `seqused_k` it
  was called with when `record(True)` (tests compare with the builder's
  buffers). Descales (FA3-only arguments) are ignored, as FA2 does.
- `reshape_and_cache_flash`: `STANDIN_reshape_and_cache_flash` below; writes
  key/value row t at slot `slot_mapping[t]` (block slot // bs, offset slot % bs;
  negative slots skipped, rows past len(slot_mapping) ignored); "auto" /
  unquantized caches only.
- `get_flash_attn_version` as bound in flash_attn.py: answers 2 (FA2, what
  vLLM runs where FA3/FA4 are unavailable). With it the builder skips FA3's AOT
  scheduler (`get_scheduler_metadata` is not stood in; a call would fail) and
  the impl's version assert passes. vLLM's cudagraph declaration
  (`FlashAttentionMetadataBuilder._cudagraph_support`, a class attribute read
  once at import) is UNIFORM_BATCH for any version but 3, so also here.
  Nothing else needs an answer: device capability stays None on CPU (every
  FA3/FA4/SM90 branch is then off), `is_flash_attn_varlen_func_available` is
  read only at import (the names are injected instead) and for sinks.
- `CpuPlatform.get_attn_backend_cls`: the CPU platform ignores any selected
  backend (always CPU_ATTN); answer FLASH_ATTN's path when FLASH_ATTN is asked
  for, else the original. Installed under PLPHP's platform patch (`enable()`
  calls the plugin's idempotent `register()`, then replaces the original that
  patch saved), so `{"plphp": {"backend": "FLASH_ATTN"}}` wraps FLASH_ATTN here.

Targets as above. Test-only; never imported by the package; `enable()` in the
process that runs the worker (in-process engine core and "uni" executor),
`disable()` restores. vLLM versions checked: 0.32.0. Remove when a CPU build
of vLLM's flash-attn kernels (or a GPU in CI) runs FLASH_ATTN for real.
"""

from __future__ import annotations

import torch

FA_VERSION = 2

_saved: list | None = None  # [(owner, attr, had_attr, value)] to restore
_calls: list[dict] | None = None


def record(on: bool) -> None:
    """Start (clearing) or stop recording the kernel stand-in's calls."""
    global _calls
    _calls = [] if on else None


def calls() -> list[dict]:
    """Recorded calls: {"seqused_k": [...], "seqused_k_ptr": int,
    "max_seqlen_q": int, "max_seqlen_k": int, "query_lens": [...]}."""
    return list(_calls or [])


def STANDIN_flash_attn_varlen_func(
    q, k, v, max_seqlen_q, cu_seqlens_q, max_seqlen_k, cu_seqlens_k=None,
    seqused_k=None, q_v=None, dropout_p=0.0, softmax_scale=None, causal=False,
    window_size=None, softcap=0.0, alibi_slopes=None, deterministic=False,
    return_attn_probs=False, block_table=None, return_softmax_lse=False, out=None,
    scheduler_metadata=None, q_descale=None, k_descale=None, v_descale=None,
    num_splits=0, output_scale=None, fa_version=FA_VERSION, s_aux=None,
    cp_world_size=1, cp_rank=0, cp_tot_seqused_k=None, mask_mod=None,
    block_sparse_tensors=None, aux_tensors=None, aux_tensor_leading_dims=None,
    dynamic_causal=None,
):
    """Paged varlen attention, written from flash-attn's documented semantics."""
    unsupported = {
        "non-paged (cu_seqlens_k)": block_table is None or seqused_k is None
        or cu_seqlens_k is not None,
        "alibi": alibi_slopes is not None,
        "sliding window": window_size is not None and tuple(window_size) != (-1, -1),
        "softcap": bool(softcap),
        "sinks": s_aux is not None,
        "mask_mod / dynamic causal": mask_mod is not None or dynamic_causal is not None,
        "non-causal": causal is not True,
        "q_v / lse / probs / dropout / context parallel": q_v is not None or return_softmax_lse
        or return_attn_probs or dropout_p or cp_world_size != 1,
        "dtype other than fp16 / bf16 (fp8 cache)": q.dtype not in (torch.float16, torch.bfloat16)
        or k.dtype != q.dtype,
        "scheduler metadata (FA3)": scheduler_metadata is not None or fa_version != FA_VERSION,
    }
    bad = [name for name, flag in unsupported.items() if flag]
    if bad:
        raise NotImplementedError(f"flash_attn_varlen_func stand-in: {', '.join(bad)}")
    num_tokens, num_heads, head_size = q.shape
    _, block_size, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    scale = softmax_scale if softmax_scale is not None else head_size ** -0.5
    starts = cu_seqlens_q.tolist()
    lengths = seqused_k.tolist()
    if _calls is not None:
        _calls.append({
            "seqused_k": lengths[: len(starts) - 1],
            "seqused_k_ptr": seqused_k.data_ptr(),
            "max_seqlen_q": int(max_seqlen_q),
            "max_seqlen_k": int(max_seqlen_k),
            "query_lens": [b - a for a, b in zip(starts, starts[1:])],
        })
    result = out if out is not None else torch.empty_like(q)
    for i in range(len(starts) - 1):
        q0, q1, seq_len = starts[i], starts[i + 1], lengths[i]
        n = q1 - q0
        if n == 0:
            continue
        assert n <= max_seqlen_q and seq_len <= max_seqlen_k and n <= seq_len, (n, seq_len)
        pages = block_table[i, : -(-seq_len // block_size)].long()
        keys = k[pages].reshape(-1, num_kv_heads, head_size)[:seq_len].float()
        values = v[pages].reshape(-1, num_kv_heads, head_size)[:seq_len].float()
        keys = keys.repeat_interleave(group, dim=1)  # query head h reads KV head h // group
        values = values.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[q0:q1].float(), keys) * scale
        query_pos = torch.arange(seq_len - n, seq_len).view(n, 1)
        masked = torch.arange(seq_len).view(1, seq_len) > query_pos  # (n, seq_len)
        scores.masked_fill_(masked, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        result[q0:q1] = torch.einsum("hqk,khd->qhd", probs, values).to(result.dtype)
    return result


def STANDIN_reshape_and_cache_flash(key, value, key_cache, value_cache, slot_mapping,
                                    kv_cache_dtype, k_scale, v_scale):
    """key/value (T, Hkv, D) rows into (num_blocks, block_size, Hkv, D) views."""
    if kv_cache_dtype not in ("auto", "float16", "bfloat16") or key_cache.dtype != key.dtype:
        raise NotImplementedError(
            f"reshape_and_cache_flash stand-in: kv_cache_dtype {kv_cache_dtype!r}")
    block_size = key_cache.shape[1]
    slots = slot_mapping.long()
    rows = torch.nonzero(slots >= 0).flatten()
    slots = slots[rows]
    blocks, offsets = slots // block_size, slots % block_size
    key_cache[blocks, offsets] = key[rows]
    value_cache[blocks, offsets] = value[rows]


def _set(owner, attr, value) -> None:
    _saved.append((owner, attr, attr in vars(owner), vars(owner).get(attr)))
    setattr(owner, attr, value)


def enable() -> None:
    global _saved
    if _saved is not None:
        return
    _saved = []
    import vllm.v1.attention.backends.flash_attn as fa
    from vllm.platforms.cpu import CpuPlatform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from vllm_plphp import patches

    _set(fa, "flash_attn_varlen_func", STANDIN_flash_attn_varlen_func)
    _set(fa, "reshape_and_cache_flash", STANDIN_reshape_and_cache_flash)
    _set(fa, "get_flash_attn_version", lambda *args, **kwargs: FA_VERSION)

    # Under PLPHP's platform patch: apply it first (the plugin's entry point,
    # idempotent; the engine calls it too), then replace the original it saved.
    import vllm_plphp

    vllm_plphp.register()
    key = patches._key(CpuPlatform, "get_attn_backend_cls")
    saved = patches.ORIGINALS[key]
    inner = saved[2].__func__

    def get_attn_backend_cls(cls, selected_backend, attn_selector_config, *args, **kwargs):
        if getattr(selected_backend, "name", None) == "FLASH_ATTN":
            return AttentionBackendEnum.FLASH_ATTN.get_path()
        return inner(cls, selected_backend, attn_selector_config, *args, **kwargs)

    patches.ORIGINALS[key] = (saved[0], saved[1], classmethod(get_attn_backend_cls))
    _saved.append((patches.ORIGINALS, key, True, saved))


def disable() -> None:
    """Undo `enable()` (in reverse order)."""
    global _saved
    for owner, attr, had, value in reversed(_saved or []):
        if isinstance(owner, dict):
            owner[attr] = value
        elif had:
            setattr(owner, attr, value)
        else:
            delattr(owner, attr)
    _saved = None
    record(False)

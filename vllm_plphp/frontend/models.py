"""Start-up refusals for model kinds PLPHP cannot prune, read from the model's
HF config (and vLLM's ModelConfig where it knows more): each names the model
type and the reason. Called by `frontend/validate.py`; the model table in docs/models.md
lists what is verified, refused and untested.

PLPHP drops, per layer and per KV head, vision-token entries of a full-attention
self-attention KV cache. Refused:
- cross-attention VLMs (mllama): the image enters through cross-attention
  layers, not as vision tokens in the decoder's self-attention cache;
- encoder-decoder models: their vision/audio inputs live in the encoder's cache;
- MLA (DeepSeek-V2/V3, DeepSeek-VL2, Kimi-VL): one latent entry per token
  shared by all heads, no per-head entries to prune;
- hybrid Mamba / linear-attention layers (Jamba, NemotronH, Qwen3-Next, ...):
  those layers keep a recurrent state, not per-token entries;
- chunked-local attention (Llama 4): KV caches of local layers hold only the
  current chunk, so positions are not stable;
- sliding-window layers (Gemma 2/3, Mistral with a window, ...): a window cache
  evicts by position, and pruning only the global layers is not implemented.
"""

from __future__ import annotations

CROSS_ATTENTION_TYPES = ("mllama",)
FULL = ("attention", "full_attention", "global", "global_attention")


def _text(model_config):
    text = getattr(model_config, "hf_text_config", None)
    if text is None and getattr(model_config, "hf_config", None) is not None:
        hf = model_config.hf_config
        text = hf.get_text_config() if hasattr(hf, "get_text_config") else hf
    return text


def model_refusals(model_config) -> list[str]:
    """One sentence per reason this model cannot be served with PLPHP."""
    if model_config is None:
        return []
    hf = getattr(model_config, "hf_config", None)
    text = _text(model_config)
    kind = f"model type {getattr(hf, 'model_type', None) or 'unknown'!r}"
    out = []
    if getattr(hf, "model_type", None) in CROSS_ATTENTION_TYPES or getattr(text, "cross_attention_layers", None):
        out.append(f"{kind}: cross-attention vision models (images enter through cross-attention "
                   "layers, not as vision tokens in the self-attention KV cache)")
    elif getattr(model_config, "is_encoder_decoder", False) is True:
        out.append(f"{kind}: encoder-decoder models (their inputs live in the encoder's cache)")
    if getattr(model_config, "use_mla", False) is True or getattr(text, "kv_lora_rank", None) is not None:
        out.append(f"{kind}: MLA models (latent KV caches have no per-head entries to prune); "
                   "use the model's default attention backend")
    layer_types = list(getattr(text, "layer_types", None) or [])
    block_types = list(getattr(text, "layers_block_type", None) or [])
    recurrent = sorted({t for t in layer_types + block_types
                        if any(w in str(t) for w in ("mamba", "linear", "conv", "ssm", "recurrent"))})
    if recurrent or getattr(model_config, "is_hybrid", False) is True:
        named = f" {recurrent}" if recurrent else ""
        out.append(f"{kind}: hybrid models with recurrent (Mamba / linear-attention) layers{named} "
                   "(they keep a state, not per-token entries to prune)")
    if getattr(text, "attention_chunk_size", None):
        out.append(f"{kind}: chunked-local attention (attention_chunk_size="
                   f"{text.attention_chunk_size}: local layers cache only the current chunk)")
    sliding = sorted({t for t in layer_types if "sliding" in str(t)})
    window = getattr(text, "sliding_window", None)
    if getattr(text, "use_sliding_window", True) is False:
        window = None
    if sliding or (window and not layer_types):
        out.append(f"{kind}: sliding-window attention layers (sliding_window={window}: a window "
                   "cache evicts entries by position; PLPHP prunes full-attention caches only, and "
                   "pruning only the global layers of a mixed model is not implemented)")
    return out

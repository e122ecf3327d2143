"""PLPHP reference on HF transformers: the oracle the engine is tested against.

Independent of the engine's paged cache and compaction: the prompt is run in
full with eager attention; in each layer where the request's policy
(`vllm_plphp.core.policies`: PLPHP, FastV or VTW) scores, the last prompt token's
softmax row (from the eager weights) is handed to it (PLPHP: gamma_l, r_l and
each KV head's kept vision tokens; FastV: the ranking made at layer K-1);
every later decode step masks, per layer and per KV head, the vision keys
that head dropped (-inf before the softmax). Masking a key out of
the softmax equals removing it from the cache, which is what the engine does.

Usage: ``ReferenceModel(path, config).generate(prompt, images, max_tokens)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vllm_plphp.config import PlphpConfig
from vllm_plphp.core.policies import LayerScores, make_policy

IMPL_NAME = "plphp_reference"


@dataclass
class _Run:
    config: PlphpConfig | None
    num_layers: int
    images: list[torch.Tensor] = field(default_factory=list)  # vision positions
    prompt_len: int = 0
    masks: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (Hkv, P) keep
    policy: object = None  # the request's policy (holds its notes between layers)
    records: dict[int, dict] = field(default_factory=dict)


_RUN: _Run | None = None


def _additive(mask: torch.Tensor | None, dtype) -> torch.Tensor | None:
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, torch.finfo(dtype).min
    )


def _attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """query (B, H, q, D); key/value (B, Hkv, k, D). Returns (B, q, H, D), probs."""
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1)
    v = value.repeat_interleave(groups, dim=1)
    logits = torch.matmul(query, k.transpose(2, 3)) * scaling
    mask = _additive(attention_mask, logits.dtype)
    if mask is not None:
        logits = logits + mask[..., : k.shape[-2]]
    layer = getattr(module, "layer_idx", None)
    run = _RUN
    if run is not None and layer is not None and run.config is not None and run.images:
        if query.shape[2] > 1:
            _decide(run, layer, logits[0, :, -1].float(), key.shape[1])
        keep = run.masks.get(layer)
        if keep is not None and query.shape[2] == 1:
            full = torch.ones(key.shape[1], k.shape[-2], dtype=torch.bool)
            full[:, : keep.shape[1]] = keep
            dropped = ~full.repeat_interleave(groups, dim=0)  # (H, k)
            logits = logits.masked_fill(dropped[None, :, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs, v).transpose(1, 2).contiguous()
    return out, probs


def _decide(run: _Run, layer: int, logits: torch.Tensor, num_kv_heads: int) -> None:
    """logits: (H, P) pre-softmax row of the last prompt token in `layer`."""
    if run.policy is None:
        run.policy = make_policy(run.config)
    policy = run.policy
    scores = None
    if policy.scores_layer(layer, run.num_layers):
        probs = torch.softmax(logits, dim=-1)  # (H, P)
        vision = torch.cat(run.images)
        scores = LayerScores(probs, probs[:, vision].mean(0), num_kv_heads)
        policy.observe(run.images, scores)
    if not policy.prunes_layer(layer, run.num_layers):
        return
    choice = policy.choose(run.images, run.prompt_len, num_kv_heads)
    keep = torch.zeros(num_kv_heads, run.prompt_len, dtype=torch.bool)
    keep.scatter_(1, choice.keep, True)
    run.masks[layer] = keep
    run.records[layer] = {
        "gamma": scores.gamma if scores is not None else float("nan"),
        "rate": choice.rate,
        "kept": choice.keep.shape[1],
    }


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(IMPL_NAME, _attention)
    AttentionMaskInterface.register(IMPL_NAME, eager_mask)


class ReferenceModel:
    """A fixture (or any LLaVA / Qwen2-VL checkpoint) with PLPHP by masking."""

    def __init__(self, path: str, dtype=torch.float32):
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        _register()
        self.processor = AutoProcessor.from_pretrained(path)
        hf_config = AutoConfig.from_pretrained(path)
        self.model_type = hf_config.model_type
        self.model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype, attn_implementation="eager"
        ).eval()
        text_config = self.model.config.get_text_config()
        text_config._attn_implementation = IMPL_NAME
        self.num_layers = text_config.num_hidden_layers
        self.image_token_id = getattr(
            self.model.config, "image_token_id", getattr(self.model.config, "image_token_index", None)
        )
        self.model.generation_config.eos_token_id = None
        self.model.generation_config.pad_token_id = 0

    def _image_positions(self, inputs) -> list[torch.Tensor]:
        ids = inputs["input_ids"][0]
        positions = torch.nonzero(ids == self.image_token_id)[:, 0]
        if positions.numel() == 0:
            return []
        if "image_grid_thw" in inputs:  # Qwen2-VL: t*h*w / merge^2 tokens per image
            merge = self.processor.image_processor.merge_size ** 2
            sizes = (inputs["image_grid_thw"].prod(-1) // merge).tolist()
        else:
            n = len(inputs["pixel_values"])
            sizes = [positions.numel() // n] * n
        return list(torch.split(positions, sizes))

    @torch.no_grad()
    def generate(self, prompt: str, images=None, max_tokens: int = 16, config: PlphpConfig | None = None):
        """Greedy token ids of PLPHP (or stock, with config=None) after `prompt`.

        Returns (token_ids, records) where records[layer] = {gamma, rate, kept}.
        """
        global _RUN
        inputs = self.processor(text=[prompt], images=images or None, return_tensors="pt")
        run = _Run(config=config, num_layers=self.num_layers)
        run.images = self._image_positions(inputs)
        run.prompt_len = inputs["input_ids"].shape[1]
        _RUN = run
        try:
            out = self.model.generate(
                **inputs, max_new_tokens=max_tokens, min_new_tokens=0, do_sample=False
            )
        finally:
            _RUN = None
        self.last_run = run  # masks per layer, for tests
        return out[0, run.prompt_len :].tolist(), run.records

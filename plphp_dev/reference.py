"""PLPHP reference on HF transformers: the oracle the engine is tested against.

Written from the paper (PLPHP, arXiv 2502.14504, Sec. 3) and the FastV / VTW
papers, on HF's own eager attention, sharing no code with the engine: it
imports nothing from ``vllm_plphp`` (``tests/unit/test_reference_independent.py``
checks that). Settings come as a plain dict (or any dataclass with the same
field names, e.g. a ``PlphpConfig``), with the paper's defaults.

How: the model runs with ``attn_implementation="eager"``. A forward hook on
each decoder layer's attention module reads the attention weights HF's eager
attention returns (the tensors ``output_attentions=True`` reports) during the
prefill: the last prompt token's softmax row per query head. From it, per
layer, the selection below decides which vision keys each KV head keeps; a
forward pre-hook then adds, in every later decode step, a per-head mask that
sets the dropped keys to the dtype's minimum before HF's own softmax. Masking a
key out of the softmax equals removing it from the cache, which is what the
engine does.

Selection (P = prompt length, H query heads, Hkv KV heads, G = H / Hkv, item j
= one image or one video with S_j vision positions):
- PLPHP, in layers skip_first .. N-1-skip_last (the paper's 3rd to (N-1)th):
  gamma_l = sum over vision positions k of (1/H) sum_h A[h, S, k];
  category A if gamma_l >= alpha, I if gamma_l < beta, else B;
  r_l = r + delta_r (A), r - delta_r (I), r (B), in exact decimal arithmetic;
  KV head g scores position k by the mean (or max) of A[h, S, k] over its query
  heads h = g*G .. g*G+G-1 (HF's repeat_kv layout); per item j it keeps the
  K_j = max(1, floor(r_l * S_j)) best-scored positions, ties going to the
  lower position; every non-vision position is kept. With per_head false
  (the paper's per-head ablation) every KV head scores by the mean over all
  H query heads, so all heads keep the same positions.
- FastV: layer K-1's row averaged over all heads ranks all vision positions
  together; every head of every layer >= K keeps the top floor((1-R) * S).
- VTW: every layer >= K drops all vision positions.

Usage: ``ReferenceModel(path).generate(prompt, images, max_tokens, settings)``;
``videos=[...]`` for video items.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction

import torch

IMPL_NAME = "eager"  # HF's own eager attention; nothing registered

DEFAULTS = dict(r=0.4, delta_r=0.3, alpha=0.25, beta=0.1, gqa_reduce="mean",
                skip_first=2, skip_last=1, policy="plphp", k=2, fastv_r=0.5, per_head=True)

_ATTN_NAME = re.compile(r"(?:^|\.)(?:language_model|text_model)\.(?:model\.)?layers\.(\d+)\.self_attn$")


def settings_dict(config) -> dict | None:
    """The selection settings as a plain dict (None: stock, nothing pruned)."""
    if config is None:
        return None
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {**DEFAULTS, **values}


def _exact(x: float) -> Fraction:
    return Fraction(repr(float(x)))  # the decimal the user wrote (0.4, not 0.40000000000000002)


def layer_category(gamma: float, s: dict) -> str:
    if gamma >= s["alpha"]:
        return "A"
    return "I" if gamma < s["beta"] else "B"


def layer_rate(gamma: float, s: dict) -> Fraction:
    r, dr = _exact(s["r"]), _exact(s["delta_r"])
    return {"A": r + dr, "I": r - dr, "B": r}[layer_category(gamma, s)]


def kept_count(rate: Fraction, size: int) -> int:
    """K_j = max(1, floor(r_l * S_j))."""
    return max(1, math.floor(rate * size))


def top_positions(scores: torch.Tensor, positions: torch.Tensor, k: int) -> torch.Tensor:
    """The k positions with the highest scores; ties go to the lower position."""
    order = torch.sort(scores[positions].double(), descending=True, stable=True).indices
    return positions[order[:k]]


def plphp_keep(probs: torch.Tensor, items: list[torch.Tensor], num_kv_heads: int, s: dict):
    """probs: (H, P) HF attention rows of the last prompt token in one layer.
    Returns (keep (Hkv, P) bool, gamma, rate)."""
    num_heads, prompt_len = probs.shape
    group = num_heads // num_kv_heads
    vision = torch.cat(items)
    gamma = float(probs[:, vision].double().sum() / num_heads)
    rate = layer_rate(gamma, s)
    keep = torch.ones(num_kv_heads, prompt_len, dtype=torch.bool)
    for g in range(num_kv_heads):
        rows = probs[g * group:(g + 1) * group].double()  # this KV head's query heads
        score = rows.mean(0) if s["gqa_reduce"] == "mean" else rows.max(0).values
        if not s["per_head"]:  # the paper's per-head ablation: one ranking, all query heads
            score = probs.double().mean(0)
        for positions in items:
            keep[g, positions] = False
            keep[g, top_positions(score, positions, kept_count(rate, positions.numel()))] = True
    return keep, gamma, rate


def fastv_keep(probs: torch.Tensor, items: list[torch.Tensor], s: dict):
    """Layer K-1's rows (H, P) -> (keep (P,) bool shared by all heads, rate)."""
    vision = torch.cat(items)
    n_keep = math.floor((1 - _exact(s["fastv_r"])) * vision.numel())
    keep = torch.ones(probs.shape[1], dtype=torch.bool)
    keep[vision] = False
    keep[top_positions(probs.double().mean(0), vision, n_keep)] = True
    return keep, n_keep / max(1, vision.numel())


@dataclass
class _Run:
    settings: dict | None
    num_layers: int
    images: list[torch.Tensor] = field(default_factory=list)  # vision positions per item
    prompt_len: int = 0
    masks: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (Hkv, P) keep
    records: dict[int, dict] = field(default_factory=dict)
    fastv: tuple | None = None  # (keep (P,), rate) from layer K-1


def _prunes(layer: int, run: _Run) -> bool:
    s, n = run.settings, run.num_layers
    if s["policy"] == "plphp":
        return s["skip_first"] <= layer < n - s["skip_last"]
    return layer >= s["k"]


def _decide(run: _Run, layer: int, probs: torch.Tensor, num_kv_heads: int) -> None:
    s, prompt_len = run.settings, run.prompt_len
    gamma = float("nan")
    if s["policy"] == "fastv" and layer == s["k"] - 1:
        run.fastv = fastv_keep(probs, run.images, s)
    if not _prunes(layer, run):
        return
    if s["policy"] == "plphp":
        keep, gamma, rate = plphp_keep(probs, run.images, num_kv_heads, s)
    elif s["policy"] == "fastv":
        row, rate = run.fastv
        keep = row.expand(num_kv_heads, -1).clone()
    elif s["policy"] == "vtw":
        keep = torch.ones(num_kv_heads, prompt_len, dtype=torch.bool)
        keep[:, torch.cat(run.images)] = False
        rate = 0.0
    else:
        raise ValueError(f"unknown policy {s['policy']!r}")
    run.masks[layer] = keep
    run.records[layer] = {"gamma": gamma, "rate": float(rate), "kept": int(keep[0].sum())}


class ReferenceModel:
    """An HF image-text-to-text checkpoint with PLPHP / FastV / VTW by masking."""

    def __init__(self, path: str, dtype=torch.float32):
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(path)
        hf_config = AutoConfig.from_pretrained(path)
        self.model_type = hf_config.model_type
        self.model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype, attn_implementation="eager").eval()
        self.num_layers = self.model.config.get_text_config().num_hidden_layers
        cfg = self.model.config
        self.image_token_id = getattr(cfg, "image_token_id", getattr(cfg, "image_token_index", None))
        self.video_token_id = getattr(cfg, "video_token_id", getattr(cfg, "video_token_index", None))
        self.model.generation_config.eos_token_id = None
        self.model.generation_config.pad_token_id = 0
        self._run: _Run | None = None
        layers = []
        for name, module in self.model.named_modules():
            m = _ATTN_NAME.search(name)
            if m:
                layer = int(m.group(1))
                layers.append(layer)
                module.register_forward_pre_hook(self._pre_hook(layer), with_kwargs=True)
                module.register_forward_hook(self._post_hook(layer), with_kwargs=True)
        assert sorted(layers) == list(range(self.num_layers)), layers

    def _post_hook(self, layer: int):
        def hook(module, args, kwargs, output):
            run = self._run
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if run is None or run.settings is None or not run.images or hidden.shape[1] == 1:
                return None
            weights = output[1]  # HF eager's softmax probabilities, (B, H, q, k)
            probs = weights[0, :, -1, : run.prompt_len].float()
            _decide(run, layer, probs, probs.shape[0] // module.num_key_value_groups)
            return None
        return hook

    def _pre_hook(self, layer: int):
        def hook(module, args, kwargs):
            run = self._run
            keep = run.masks.get(layer) if run is not None else None
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if keep is None or hidden.shape[1] != 1:
                return None
            mask = kwargs.get("attention_mask")  # eager: additive (B, 1, q, k)
            if mask is None:  # (an attention function without a mask: decode sees all keys)
                cache = kwargs.get("past_key_values", kwargs.get("past_key_value"))
                mask = torch.zeros(hidden.shape[0], 1, 1, cache.get_seq_length(layer) + 1, dtype=hidden.dtype)
            dropped = ~keep.repeat_interleave(module.num_key_value_groups, dim=0)  # (H, P)
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=hidden.dtype).masked_fill(~mask, torch.finfo(hidden.dtype).min)
            per_head = mask.expand(mask.shape[0], dropped.shape[0], *mask.shape[2:]).clone()
            per_head[..., : dropped.shape[1]].masked_fill_(dropped[None, :, None, :], torch.finfo(per_head.dtype).min)
            return args, {**kwargs, "attention_mask": per_head}
        return hook

    def _item_positions(self, inputs, images=None, videos=None, prompt=None) -> list[torch.Tensor]:
        """Per image / video item, its vision-token positions, in prompt order."""
        ids = inputs["input_ids"][0]
        items = []
        image_items = [("images", x) for x in images or []]
        if videos and self.video_token_id is None:
            # (InternVL: a video's frames use the image token, one run per frame)
            image_items = self._prompt_order(prompt, images or [], videos)
        for token, grid, values, given in (
                (self.image_token_id, "image_grid_thw", "pixel_values", image_items),
                (self.video_token_id, "video_grid_thw", "pixel_values_videos",
                 [("videos", x) for x in videos or []])):
            if token is None:
                continue
            positions = torch.nonzero(ids == token)[:, 0]
            if positions.numel() == 0:
                continue
            if grid in inputs:  # Qwen-VL: t*h*w / merge^2 tokens per item
                merge = self.processor.image_processor.merge_size ** 2
                sizes = (inputs[grid].prod(-1) // merge).tolist()
                items += list(torch.split(positions, sizes))
            else:  # one run of placeholder tokens per item (prompts separate their items)
                breaks = torch.nonzero(positions[1:] != positions[:-1] + 1)[:, 0] + 1
                runs = torch.tensor_split(positions, breaks.tolist())
                n = len(given) if given else len(inputs[values])
                if len(runs) != n and given:  # several runs per item (tiles, rows, frames)
                    items += self._group_runs(runs, given, token)
                    continue
                assert len(runs) == n, f"{len(runs)} placeholder runs for {n} items"
                items += list(runs)
        return sorted(items, key=lambda p: int(p[0]))

    def _group_runs(self, runs, given, token) -> list[torch.Tensor]:
        """Runs of placeholder tokens grouped by item, for processors that expand
        one item into several runs (Idefics3 / SmolVLM: one run per tile and one
        for the downscaled whole image; Mistral-3: one per row; InternVL video:
        one per frame). ``given``: ("images" | "videos", item) in prompt order. How many runs an item has is counted by
        processing that item alone."""
        counts = []
        for kind, item in given:
            placeholder = self.processor.image_token if kind == "images" else self.processor.video_token
            alone = self.processor(text=[placeholder], **{kind: [item]}, return_tensors="pt")
            positions = torch.nonzero(alone["input_ids"][0] == token)[:, 0]
            counts.append(1 + int((positions[1:] != positions[:-1] + 1).sum()))
        assert sum(counts) == len(runs), f"{len(runs)} placeholder runs, items alone have {counts}"
        bounds = [sum(counts[:i]) for i in range(len(counts) + 1)]
        return [torch.cat(runs[a:b]) for a, b in zip(bounds, bounds[1:])]

    def _prompt_order(self, prompt, images, videos) -> list[tuple[str, object]]:
        """("images" | "videos", item) in the order of their placeholders in ``prompt``."""
        marks = []
        for kind, given, placeholder in (("images", images, self.processor.image_token),
                                         ("videos", videos, self.processor.video_token)):
            starts = [m.start() for m in re.finditer(re.escape(placeholder), prompt)]
            assert len(starts) == len(given), f"{len(starts)} {placeholder!r} for {len(given)} {kind}"
            marks += [(start, kind, item) for start, item in zip(starts, given)]
        return [(kind, item) for _, kind, item in sorted(marks, key=lambda m: m[0])]

    _image_positions = _item_positions  # (older name, used by tests)

    def last_positions(self, prompt: str, images=None, videos=None) -> list[torch.Tensor]:
        """The vision positions per item of a prompt, as `generate` finds them."""
        kwargs = {"text": [prompt], "return_tensors": "pt"}
        kwargs.update({"images": images} if images else {})
        kwargs.update({"videos": videos} if videos else {})
        return self._item_positions(self.processor(**kwargs), images, videos, prompt)

    @torch.no_grad()
    def generate(self, prompt: str, images=None, max_tokens: int = 16, config=None, videos=None):
        """Greedy token ids with the policy of `config` (None: stock) after `prompt`.

        Returns (token_ids, records) where records[layer] = {gamma, rate, kept}.
        """
        kwargs = {"text": [prompt], "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
        if videos:
            kwargs["videos"] = videos
        inputs = self.processor(**kwargs)
        run = _Run(settings=settings_dict(config), num_layers=self.num_layers)
        run.images = self._item_positions(inputs, images, videos, prompt)
        run.prompt_len = inputs["input_ids"].shape[1]
        self._run = run
        try:
            out = self.model.generate(**inputs, max_new_tokens=max_tokens, min_new_tokens=0, do_sample=False)
        finally:
            self._run = None
        self.last_run = run  # masks per layer, for tests
        return out[0, run.prompt_len:].tolist(), run.records

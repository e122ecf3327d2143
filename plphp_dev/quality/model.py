"""The small LLaVA-style model trained on ``quality.tasks``: config, tokenizer, I/O.

``LlavaForConditionalGeneration`` = CLIP ViT (96 px, patch 8 -> 144 image
tokens per image, "default" strategy drops CLS) + a 2-layer MLP projector +
a Llama text model (GQA, head_dim 64, which vLLM's CPU attention supports).
The tokenizer is a byte-level BPE trained on the task texts (every task word
is one token) with the llava fixture's special tokens and chat template.

Checkpoints use the released llava-hf key layout vLLM expects
(``vision_tower.vision_model.*``) and are stored as float16 safetensors while
``config.json`` says float32, so ``dtype="auto"`` loads float32 everywhere.
Needs torch, tokenizers and transformers; never imports vLLM.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from ..fixtures import llava
from ..fixtures.chat_templates import LLAVA_CHAT_TEMPLATE
from ..fixtures.common import CLIP_MEAN, CLIP_STD, padded_vocab
from ..fixtures.specs import FixtureSpec, LlavaVisionSpec, TextSpec
from ..fixtures.tokenizer import SPECIAL_TOKENS, special_token_ids
from .tasks import TASKS, make_example


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of the quality model (defaults: the committed checkpoint)."""

    num_layers: int = 8
    hidden_size: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 512
    max_position_embeddings: int = 2048
    image_size: int = 96
    patch_size: int = 8
    vision_hidden_size: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    vision_intermediate_size: int = 512
    bpe_vocab_size: int = 512  # BPE trainer target (it stops earlier: small corpus)

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return {**asdict(self), "num_image_tokens": self.num_image_tokens}


def tokenizer_corpus(n_per_task: int = 300):
    """Task texts as they surround the image tokens in a prompt, plus answers.

    In a prompt the question follows ``<image>\\n`` (special tokens split
    the text), so it is a word of its own: "\\nWhat" -> "Ċ", "What".
    """
    for task in TASKS:
        for i in range(n_per_task):
            ex = make_example(task, "train", i, seed=0, draw=False)
            yield f"USER: \n{ex.question} ASSISTANT: {ex.answer}"


def build_tokenizer(spec: ModelSpec = ModelSpec()) -> PreTrainedTokenizerFast:
    """Byte-level BPE on ``tokenizer_corpus`` + llava special tokens + chat template."""
    special = SPECIAL_TOKENS["llava"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.bpe_vocab_size, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    tok.add_special_tokens(list(special.tokens))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{special.bos} $A", pair=f"{special.bos} $A {special.bos} $B",
        special_tokens=[(special.bos, tok.token_to_id(special.bos))])
    named = {special.bos, special.eos, special.pad, special.unk}
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=special.bos, eos_token=special.eos,
        pad_token=special.pad, unk_token=special.unk,
        additional_special_tokens=[t for t in special.tokens if t not in named],
        model_max_length=spec.max_position_embeddings, padding_side="left",
        clean_up_tokenization_spaces=False, add_bos_token=True, add_eos_token=False)
    hf_tok.chat_template = LLAVA_CHAT_TEMPLATE
    return hf_tok


def fixture_spec(spec: ModelSpec) -> FixtureSpec:
    """The same shapes as a fixture spec, to reuse the fixture builders."""
    text = TextSpec(num_layers=spec.num_layers, hidden_size=spec.hidden_size,
                    num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads,
                    intermediate_size=spec.intermediate_size,
                    max_position_embeddings=spec.max_position_embeddings)
    assert text.head_dim == spec.head_dim, "head_dim must be hidden_size / num_heads"
    vision = LlavaVisionSpec(image_size=spec.image_size, patch_size=spec.patch_size,
                             hidden_size=spec.vision_hidden_size, num_layers=spec.vision_layers,
                             num_heads=spec.vision_heads,
                             intermediate_size=spec.vision_intermediate_size)
    return FixtureSpec(name="quality", variant="trained", text=text, vision=vision)


def make_config(spec: ModelSpec, tokenizer: PreTrainedTokenizerFast) -> LlavaConfig:
    """The llava fixture's config (`fixtures.llava.make_config`) at these shapes."""
    ids = special_token_ids(tokenizer, "llava")
    return llava.make_config(fixture_spec(spec), ids, padded_vocab(len(tokenizer)))


def make_processor(spec: ModelSpec, tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    """CLIP preprocessing at 96 px (a 96x96 image passes through unchanged)."""
    return llava.make_processor(fixture_spec(spec), tokenizer)


def new_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerFast,
              seed: int) -> LlavaForConditionalGeneration:
    """A freshly initialised float32 model (transformers' default init, seeded)."""
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(make_config(spec, tokenizer)).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False)
    return model


def pixel_values(images, spec: ModelSpec = ModelSpec()) -> torch.Tensor:
    """CLIP-normalised (N, 3, H, W) float32 pixels of 96x96 RGB images.

    Equal to ``make_processor(...).image_processor(images)`` for images that
    are already ``image_size`` square (checked by ``benchmarks/quality``).
    """
    import numpy as np

    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    assert arr.shape[1:3] == (spec.image_size, spec.image_size), arr.shape
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    arr = (arr * np.float32(1 / 255) - mean) / std
    return torch.from_numpy(arr.transpose(0, 3, 1, 2).copy())


def save_checkpoint(model: LlavaForConditionalGeneration, tokenizer, spec: ModelSpec,
                    out_dir: str, dtype: torch.dtype = torch.float16) -> dict:
    """Save a vLLM-loadable checkpoint; weights as ``dtype``, config float32.

    Renames ``vision_tower.*`` to ``vision_tower.vision_model.*`` (released
    llava-hf layout).  Returns ``{"bytes": ..., "renamed": ...}``.
    """
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, max_shard_size="10GB")
    path = os.path.join(out_dir, "model.safetensors")
    renamed = 0
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {"format": "pt"}
        tensors = {}
        for key in f.keys():
            new = key
            if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
                new = "vision_tower.vision_model." + key[len("vision_tower."):]
                renamed += 1
            t = f.get_tensor(key)
            tensors[new] = t.to(dtype) if t.is_floating_point() else t
    save_file(tensors, path, metadata=meta)
    make_processor(spec, tokenizer).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "model_spec.json"), "w") as f:
        json.dump(spec.to_dict(), f, indent=2)
    size = sum(os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir))
    return {"bytes": size, "renamed": renamed}


def load_checkpoint(path: str, device: str = "cpu"):
    """``(model, processor)`` from a checkpoint directory, float32, eval mode."""
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    processor = LlavaProcessor.from_pretrained(path)
    return model.to(device).eval(), processor

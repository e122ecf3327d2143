"""Training batches for the quality model: a seeded conversation stream and collation.

Needs torch, PIL, numpy and ``plphp_dev.quality`` (never vLLM).  The repo
root is put on ``sys.path`` so the scripts run from a plain checkout.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from plphp_dev.quality.model import ModelSpec, pixel_values  # noqa: E402
from plphp_dev.quality.conversations import KINDS, TRAIN_KINDS, Conversation, make_conversation  # noqa: E402
from plphp_dev.quality.tasks import Example, prompt_text  # noqa: E402

IGNORE = -100
_TOKEN_CACHE: dict[tuple[int, str, bool], list[int]] = {}


def encode(tokenizer, text: str, special: bool = False) -> list[int]:
    """``tokenizer(text).input_ids``, memoised (task texts repeat a lot)."""
    key = (id(tokenizer), text, special)
    if key not in _TOKEN_CACHE:
        _TOKEN_CACHE[key] = tokenizer(text, add_special_tokens=special).input_ids
    return list(_TOKEN_CACHE[key])


def batch_stream(seed: int, batch_size: int, kind_weights: dict[str, float],
                 split: str = "train", image_size: int = 96) -> Iterator[list[Conversation]]:
    """Endless batches of ``batch_size`` conversations with the same number of images.

    Kinds are drawn from ``random.Random(seed)`` with ``kind_weights``; the
    k-th draw of kind c is ``make_conversation(c, split, k, seed)``.
    Conversations wait in a bucket per image count until it is full, so a
    batch pads only text tokens.  Depends on nothing but the arguments.
    """
    rng = random.Random(seed)
    names = list(TRAIN_KINDS)
    weights = [kind_weights.get(k, 1.0 if k in KINDS else 0.0) for k in names]
    counters = dict.fromkeys(names, 0)
    buckets: dict[int, list[Conversation]] = {}
    while True:
        kind = rng.choices(names, weights)[0]
        conv = make_conversation(kind, split, counters[kind], seed, image_size)
        counters[kind] += 1
        bucket = buckets.setdefault(len(conv.images), [])
        bucket.append(conv)
        if len(bucket) == batch_size:
            buckets[len(conv.images)] = []
            yield bucket


def prompt_ids(example: Example, tokenizer, spec: ModelSpec) -> list[int]:
    """Token ids of ``prompt_text(example)`` with each ``<image>`` expanded to its
    ``spec.num_image_tokens`` placeholders (what ``LlavaProcessor`` produces)."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    out: list[int] = []
    for t in encode(tokenizer, prompt_text(example), special=True):
        out.extend([t] * spec.num_image_tokens if t == image_id else [t])
    return out


def answer_ids(answer: str, tokenizer) -> list[int]:
    """An answer as the model must generate it: " <answer>" then EOS."""
    return encode(tokenizer, " " + answer) + [tokenizer.eos_token_id]


def conversation_ids(conv: Conversation, tokenizer, spec: ModelSpec):
    """``(ids, weights)``: the chat-template token sequence of ``conv`` and, per
    position, the loss weight of predicting the NEXT token (1/len over each
    answer, so every turn counts once; 0 on prompts)."""
    q0, _ = conv.turns[0]
    first = Example("conversation", conv.images, q0, "")
    ids = prompt_ids(first, tokenizer, spec)
    weights = [0.0] * len(ids)
    for k, (question, answer) in enumerate(conv.turns):
        if k:
            p = encode(tokenizer, f" USER: {question} ASSISTANT:")
            ids += p
            weights += [0.0] * len(p)
        a = answer_ids(answer, tokenizer)
        weights[-1] = 1.0 / len(a)  # the token before the answer predicts its first token
        weights += [1.0 / len(a)] * (len(a) - 1) + [0.0]
        ids += a
    return ids, weights


def collate(convs: list[Conversation], tokenizer, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``, next-token ``labels``,
    per-position loss ``weights`` and ``pixel_values`` of all images in order."""
    rows, weights = zip(*(conversation_ids(c, tokenizer, spec) for c in convs))
    n = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    labels = [r[1:] + [IGNORE] * (n - len(r) + 1) for r in rows]
    return {
        "input_ids": torch.tensor([r + [pad] * (n - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows]),
        "labels": torch.tensor(labels),
        "weights": torch.tensor([w + [0.0] * (n - len(w)) for w in weights]),
        "pixel_values": pixel_values([im for c in convs for im in c.images], spec),
        "patch_targets": patch_targets([s for c in convs for s in c.scenes], tokenizer, spec),
    }


ROW_WORDS = ("top", "center", "bottom")  # grid row of a cell -> position tag
COL_WORDS = ("left", "center", "right")  # grid column of a cell -> position tag


def patch_targets(scenes, tokenizer, spec: ModelSpec, min_cover: float = 0.25) -> torch.Tensor:
    """(N images, patches, 4) token ids of (" <colour>", " <shape>", " <row>",
    " <column>") of the object covering at least ``min_cover`` of each patch
    (the most-covering one), else ``<unk>`` x 4 for background.  Row and
    column are the words of the object's grid cell (``ROW_WORDS``,
    ``COL_WORDS``: "top left" -> top, left; "right" -> center, right).
    Targets of the auxiliary patch loss."""
    import numpy as np

    from plphp_dev.quality.scenes import GRID, label_map

    def word(w: str) -> int:
        ids = encode(tokenizer, " " + w)
        assert len(ids) == 1, (w, ids)
        return ids[0]

    unk = tokenizer.unk_token_id
    p = spec.patch_size
    g = spec.image_size // p
    out = []
    for scene in scenes:
        lab = np.asarray(label_map(scene, spec.image_size))[:g * p, :g * p].reshape(g, p, g, p).transpose(0, 2, 1, 3)
        lab = lab.reshape(g * g, p * p)
        table = np.array([(unk,) * 4] + [
            (word(o.color), word(o.shape), word(ROW_WORDS[o.cell // GRID]), word(COL_WORDS[o.cell % GRID]))
            for o in scene.objects])
        counts = (lab[:, :, None] == np.arange(len(table))).sum(1)  # (patches, 1 + objects)
        counts[:, 0] = 0
        best = counts.argmax(1)
        best[counts.max(1) < min_cover * p * p] = 0
        out.append(table[best])
    return torch.from_numpy(np.stack(out)).long()

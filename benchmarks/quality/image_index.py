"""Recipe v2, stage 11: make every image token say which image it is in (issue 30).

Why: a head that finds "the red circle" by its content (``lookup_attention``)
returns the object's values, and "which image has it" can be read from them
only if the image token's hidden state says which image it belongs to; the
vision tower sees one image at a time, so that comes from the text model
(image tokens attending to the text and images before them).  In the stage-3
model a linear probe reads the image index (3-image prompts, object patches,
held-out prompts) at 0.35 / 0.68 / 0.78 / 0.81 from the inputs of layers
0 / 2 / 4 / 5: not reliably.

Loss: a linear probe (``Probe``: hidden -> ``MAX_IMAGES``; a training-only
module, not in the checkpoint) reads the image index of every image token from
the input of one layer's attention (the normalised hidden state the heads'
values are made from, captured by ``lookup_attention.captured``); cross-entropy.

Shapes: ``hidden``: (batch, seq, hidden); ``labels``: (batch, seq), -100 off images.
"""

from __future__ import annotations

import torch

from plphp_dev.quality.tasks import MAX_IMAGES


class Probe(torch.nn.Linear):
    """hidden -> ``classes`` logits (the image index by default; stage 12 reads the
    asked colour and shape with two more)."""

    def __init__(self, hidden_size: int, classes: int = MAX_IMAGES):
        super().__init__(hidden_size, classes)


def labels(input_ids: torch.Tensor, image_id: int, tokens_per_image: int) -> torch.Tensor:
    """(batch, seq): the image index of each image token (k-th block of
    ``tokens_per_image`` image tokens in a row -> k), -100 elsewhere."""
    is_img = input_ids == image_id
    rank = is_img.long().cumsum(1) - 1
    return torch.where(is_img, rank // tokens_per_image, torch.full_like(rank, -100))


def loss(probe: Probe, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the probe's image index on every image token."""
    return torch.nn.functional.cross_entropy(probe(hidden.float()).flatten(0, 1), labels.flatten(),
                                             ignore_index=-100)

"""Multi-turn training conversations over the same images (training data only).

The image tokens dominate the cost of a training sequence, so each sequence
asks several questions about its images, LLaVA-style:
``USER: <image>\\nQ1 ASSISTANT: A1</s> USER: Q2 ASSISTANT: A2</s> ...``.
The first turn is exactly a single-turn ``tasks`` prompt; later turns ask
about other objects where possible, so earlier answers rarely give them away.

Kinds (``KINDS``): ``single`` (one scene: color, shape, position, count in
random order), ``caption`` (one turn), ``differ`` (the ``differ`` scenes plus
a second differ question and, for 2 images with different counts, compare),
``spot`` (spot, then which image has the old / the new object),
``compare`` (compare plus up to two differ questions).
``ordinal`` (training only, not in ``KINDS``; recipe v2's stage 3): 2-3
scenes and questions that name an image by its place or ask for it --
"Describe the second image.", "How many objects are in the first image?",
"Which image has a red object?" (a colour in one image only), and a differ
question -- so the model learns which image a vision token belongs to
(``differ`` stayed at chance through stage 2, even with no decoy in the
other image).
``binding`` (training only; recipe v2's stage 4): differ questions whose
other images hold both near misses (the colour on another shape and the
shape in another colour), 3 images half the time.
``lookup`` (training only; recipe v2's stage 5): differ questions whose other
images hold the colour on other shapes and never the shape, and "Which image
has a circle?" (a shape in one image only).  After stage 4 the model answered
differ from the colour alone: 0.94-0.99 when another image held the shape in
another colour, 0.40-0.49 when another image held the colour
(``benchmarks/quality/differ_breakdown.py``, 300 validation prompts).
Seeded like ``tasks``: ``random.Random(f"conv/{split}/{seed}/{kind}/{index}")``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from .scenes import COLOR_NAMES, IMAGE_SIZE, SHAPES, Scene, random_scene, render
from .tasks import (
    SPLITS,
    caption_qa,
    color_qa,
    compare_qa,
    ORDINALS,
    compare_scenes,
    count_qa,
    differ_qa,
    differ_scenes,
    position_qa,
    shape_qa,
    spot_qa,
    spot_scenes,
)

KINDS = ("single", "caption", "differ", "spot", "compare")
TRAIN_KINDS = KINDS + ("ordinal", "binding", "lookup")  # a stream weighs a kind missing from its weights 1 if in KINDS, else 0


@dataclass
class Conversation:
    kind: str
    images: list[Image.Image]
    turns: list[tuple[str, str]]  # (question, answer)
    scenes: list[Scene]  # what the images show (for auxiliary patch labels)


def _unique_objects(scenes: list[Scene]) -> list[tuple[int, str, str]]:
    """(image index, colour, shape) of objects whose colour+shape is in one image only."""
    out = []
    for i, s in enumerate(scenes):
        for o in s.objects:
            if all(t.find(o.color, o.shape) is None for k, t in enumerate(scenes) if k != i):
                out.append((i, o.color, o.shape))
    return out


def _single(rng: random.Random):
    s = random_scene(rng)
    objs = list(s.objects)
    rng.shuffle(objs)
    pick = [objs[i % len(objs)] for i in range(3)]  # different objects when there are
    turns = [color_qa(pick[0]), shape_qa(pick[1]), position_qa(pick[2]), count_qa(s)]
    rng.shuffle(turns)
    return [s], turns


def _caption(rng: random.Random):
    s = random_scene(rng)
    return [s], [caption_qa(s)]


def _extra_differ(rng: random.Random, scenes, exclude=()) -> list[tuple[str, str]]:
    options = [u for u in _unique_objects(scenes) if (u[1], u[2]) not in exclude]
    if not options:
        return []
    i, c, sh = rng.choice(options)
    return [differ_qa(c, sh, i)]


def _differ(rng: random.Random):
    scenes, color, shape, which = differ_scenes(rng)
    turns = [differ_qa(color, shape, which)]
    turns += _extra_differ(rng, scenes, exclude={(color, shape)})
    if len(scenes) == 2 and len(scenes[0].objects) != len(scenes[1].objects):
        turns.append(compare_qa(scenes))
    rng.shuffle(turns)
    return scenes, turns


def _spot(rng: random.Random):
    a, b, j = spot_scenes(rng)
    old, new = a.objects[j], b.objects[j]
    rest = [differ_qa(old.color, old.shape, 0), differ_qa(new.color, new.shape, 1)]
    rng.shuffle(rest)
    turns = [spot_qa(old)] + rest
    if rng.random() < 0.5:  # spot first half of the time
        turns = rest[:1] + [turns[0]] + rest[1:]
    return [a, b], turns


def _compare(rng: random.Random):
    scenes = compare_scenes(rng)
    turns = [compare_qa(scenes)]
    first = _extra_differ(rng, scenes)
    turns += first
    if first:
        q = first[0][0].removeprefix("Which image has a ").removesuffix("?")
        c, sh = q.split(" ", 1)
        turns += _extra_differ(rng, scenes, exclude={(c, sh)})
    rng.shuffle(turns)
    return scenes, turns


def _ordinal(rng: random.Random):
    n = rng.choice((2, 2, 3))
    scenes = [random_scene(rng) for _ in range(n)]
    k = rng.randrange(n)
    turns = [(f"Describe the {ORDINALS[k]} image.", caption_qa(scenes[k])[1])]
    k = rng.randrange(n)
    turns.append((f"How many objects are in the {ORDINALS[k]} image?", count_qa(scenes[k])[1]))
    colours = [(i, o.color) for i, s in enumerate(scenes) for o in s.objects
               if sum(o.color in {x.color for x in t.objects} for t in scenes) == 1]
    if colours:
        i, c = rng.choice(colours)
        turns.append((f"Which image has a {c} object?", f"The {ORDINALS[i]} image has it."))
    turns += _extra_differ(rng, scenes)
    rng.shuffle(turns)
    return scenes, turns


def _both_decoys(rng: random.Random, color: str, shape: str) -> Scene:
    """A scene with ``color`` on another shape and ``shape`` in another colour
    (so never the pair itself: a scene's colours and shapes are distinct)."""
    while True:
        s = random_scene(rng, num_objects=rng.randint(2, 5),
                         include=(color, rng.choice([x for x in SHAPES if x != shape])))
        if any(o.shape == shape for o in s.objects):
            return s


def _pair_among_decoys(rng: random.Random, decoy):
    """2 or 3 scenes: scene ``which`` holds a ``color`` ``shape``, the others
    are ``decoy(rng, color, shape)``."""
    n = rng.choice((2, 3))
    color, shape = rng.choice(COLOR_NAMES), rng.choice(SHAPES)
    which = rng.randrange(n)
    scenes = [random_scene(rng, include=(color, shape)) if i == which else decoy(rng, color, shape)
              for i in range(n)]
    return scenes, color, shape, which


def _binding(rng: random.Random):
    scenes, color, shape, which = _pair_among_decoys(rng, _both_decoys)
    turns = [differ_qa(color, shape, which)] + _extra_differ(rng, scenes, exclude={(color, shape)})
    rng.shuffle(turns)
    return scenes, turns


def _colour_decoy(rng: random.Random, color: str, shape: str) -> Scene:
    """A scene with ``color`` on another shape and no ``shape`` at all."""
    while True:
        s = random_scene(rng, include=(color, rng.choice([x for x in SHAPES if x != shape])))
        if all(o.shape != shape for o in s.objects):
            return s


def _lookup(rng: random.Random):
    scenes, color, shape, which = _pair_among_decoys(rng, _colour_decoy)
    turns = [differ_qa(color, shape, which)]
    alone = [(i, o.shape) for i, s in enumerate(scenes) for o in s.objects
             if sum(o.shape in {x.shape for x in t.objects} for t in scenes) == 1 and o.shape != shape]
    if alone:
        i, sh = rng.choice(alone)
        turns.append((f"Which image has a {sh}?", f"The {ORDINALS[i]} image has it."))
    rng.shuffle(turns)
    return scenes, turns


_MAKERS = {"single": _single, "caption": _caption, "differ": _differ, "spot": _spot,
           "compare": _compare, "ordinal": _ordinal, "binding": _binding, "lookup": _lookup}


def make_conversation(kind: str, split: str, index: int, seed: int | None = None,
                      image_size: int = IMAGE_SIZE) -> Conversation:
    if kind not in _MAKERS:
        raise ValueError(f"unknown kind {kind!r}; choose from {TRAIN_KINDS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    rng = random.Random(f"conv/{split}/{seed or 0}/{kind}/{index}")
    scenes, turns = _MAKERS[kind](rng)
    return Conversation(kind, [render(s, image_size) for s in scenes], turns, scenes)

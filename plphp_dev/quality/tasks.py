"""Procedural vision-language tasks with exact answers (seeded, deterministic).

Single image (one 96x96 scene of 1-5 shapes on a 3x3 grid, see ``scenes``):
  color     "What color is the circle?"        -> "The circle is red."
  shape     "What shape is the red object?"    -> "The red object is a circle."
  count     "How many objects are there?"      -> "There are three objects."
  position  "Where is the red circle?"         -> "The red circle is at the top left."
  caption   "Describe the image."              -> "a red circle top left and
                                                   a blue square center"
Multi image:
  differ    2 or 3 images, "Which image has a red circle?"
            -> "The first image has it." (second / third; exactly one image
            has it; the others often share its colour or its shape)
  spot      2 images identical but for one object's colour or shape,
            "Where do the two images differ?"  -> "They differ at the top left."
  compare   2 images with different object counts,
            "Which image has more objects?"    -> "The first image has more objects."

Answers are sentences whose image-dependent words come after the first
token: the first answer token is computed by the prefill, which no pruning
policy changes (they all prune the KV cache after it), so single-word answers
could not show any pruning effect.
Exact tasks are scored by normalised exact match, ``caption`` by ROUGE-L F1.
Example ``i`` of task ``t`` in split ``s`` with seed ``k`` comes from its own
``random.Random(f"{s}/{k}/{t}/{i}")``: it does not depend on ``n_per_task``,
and the "train" and "test" streams never share a generator.
"""

from __future__ import annotations

import base64
import io
import random
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image

from .metrics import exact_match, rouge_l
from .scenes import COLOR_NAMES, IMAGE_SIZE, NUMBER_WORDS, SHAPES, random_scene, render, with_object

TASKS = ("color", "shape", "count", "position", "differ", "spot", "compare", "caption")
MULTI_IMAGE_TASKS = ("differ", "spot", "compare")
SPLITS = ("train", "test")
IMAGE_TOKEN = "<image>"
ORDINALS = ("first", "second", "third")
MAX_IMAGES = 3

# Best image-blind answer's expected score (the sentence template follows from
# the question), exact from the generators below:
# answers are uniform over 6 colours, 5 shapes, counts 1..5, 9 cells; differ
# has 2 images with p=2/3 and 3 with p=1/3 ("first": 2/3*1/2 + 1/3*1/3).
_EXACT_CHANCE = {"color": 1 / 6, "shape": 1 / 5, "count": 1 / 5, "position": 1 / 9,
                 "differ": 4 / 9, "spot": 1 / 9, "compare": 1 / 2}


@dataclass
class Example:
    """One prompt: ``images`` (PIL, RGB, 96x96 by default) in order, then ``question``."""

    task: str
    images: list[Image.Image]
    question: str
    answer: str


# Question/answer wording, shared with the training conversations.
def color_qa(o):
    return f"What color is the {o.shape}?", f"The {o.shape} is {o.color}."


def shape_qa(o):
    return f"What shape is the {o.color} object?", f"The {o.color} object is a {o.shape}."


def position_qa(o):
    return f"Where is the {o.color} {o.shape}?", f"The {o.color} {o.shape} is at the {o.position}."


def count_qa(scene):
    n = len(scene.objects)
    return "How many objects are there?", \
        f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} object{'' if n == 1 else 's'}."


def caption_qa(scene):
    return "Describe the image.", scene.caption()


def differ_qa(color: str, shape: str, which: int):
    return f"Which image has a {color} {shape}?", f"The {ORDINALS[which]} image has it."


def spot_qa(obj):
    return "Where do the two images differ?", f"They differ at the {obj.position}."


def compare_qa(scenes):
    more = "first" if len(scenes[0].objects) > len(scenes[1].objects) else "second"
    return "Which image has more objects?", f"The {more} image has more objects."


def differ_scenes(rng: random.Random):
    """2 (p=2/3) or 3 scenes, exactly one (``which``) has a ``color`` ``shape``."""
    n = rng.choice((2, 2, 3))
    color, shape = rng.choice(COLOR_NAMES), rng.choice(SHAPES)
    which = rng.randrange(n)
    scenes = []
    for i in range(n):
        if i == which:
            scenes.append(random_scene(rng, include=(color, shape)))
            continue
        while True:  # a scene without the pair; half the time with a near miss
            near = rng.random() < 0.5
            decoy = (color, rng.choice([x for x in SHAPES if x != shape])) if rng.random() < 0.5 \
                else (rng.choice([x for x in COLOR_NAMES if x != color]), shape)
            s = random_scene(rng, include=decoy if near else None)
            if s.find(color, shape) is None:
                break
        scenes.append(s)
    return scenes, color, shape, which


def spot_scenes(rng: random.Random):
    """Scenes ``a``, ``b`` equal but for object ``j``'s colour or shape."""
    a = random_scene(rng)
    j = rng.randrange(len(a.objects))
    used_c = {x.color for x in a.objects}
    used_s = {x.shape for x in a.objects}
    kinds = ["color"] + (["shape"] if len(used_s) < len(SHAPES) else [])
    if rng.choice(kinds) == "color":
        b = with_object(a, j, color=rng.choice([c for c in COLOR_NAMES if c not in used_c]))
    else:
        b = with_object(a, j, shape=rng.choice([s for s in SHAPES if s not in used_s]))
    return a, b, j


def compare_scenes(rng: random.Random):
    """Two scenes with different object counts."""
    n1 = rng.randint(1, 5)
    n2 = rng.choice([n for n in range(1, 6) if n != n1])
    return [random_scene(rng, n1), random_scene(rng, n2)]


def _single(qa, pick_object: bool):
    def make(rng):
        s = random_scene(rng)
        return [s], *qa(rng.choice(s.objects) if pick_object else s)
    return make


def _differ(rng):
    scenes, color, shape, which = differ_scenes(rng)
    return scenes, *differ_qa(color, shape, which)


def _spot(rng):
    a, b, j = spot_scenes(rng)
    return [a, b], *spot_qa(a.objects[j])


def _compare(rng):
    scenes = compare_scenes(rng)
    return scenes, *compare_qa(scenes)


_MAKERS = {"color": _single(color_qa, True), "shape": _single(shape_qa, True),
           "count": _single(count_qa, False), "position": _single(position_qa, True),
           "differ": _differ, "spot": _spot, "compare": _compare,
           "caption": _single(caption_qa, False)}


def make_example(task: str, split: str, index: int, seed: int | None = None,
                 draw: bool = True, image_size: int = IMAGE_SIZE) -> Example:
    """Example ``index`` of ``task`` in ``split``; ``draw=False`` skips the pixels.

    ``image_size``: canvas in px (the grid scales, objects keep their size)."""
    if task not in _MAKERS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    rng = random.Random(f"{split}/{seed or 0}/{task}/{index}")
    scenes, question, answer = _MAKERS[task](rng)
    images = [render(s, image_size) for s in scenes] if draw else []
    return Example(task, images, question, answer)


def make_examples(split: str, n_per_task: int, seed: int | None = None,
                  tasks: tuple[str, ...] | None = None,
                  image_size: int = IMAGE_SIZE) -> list[Example]:
    """``n_per_task`` examples of each task (``TASKS`` by default), task-major."""
    return [make_example(t, split, i, seed, image_size=image_size)
            for t in (tasks or TASKS) for i in range(n_per_task)]


def score(task: str, prediction: str, answer: str) -> float:
    """Score in [0, 1]: ROUGE-L F1 for ``caption``, normalised exact match otherwise."""
    if task == "caption":
        return rouge_l(prediction, answer)
    if task not in _MAKERS:
        raise ValueError(f"unknown task {task!r}")
    return exact_match(prediction, answer)


@lru_cache(maxsize=None)
def chance_score(task: str) -> float:
    """Expected score of the best constant answer (no look at the images).

    Exact for the exact-match tasks.  For ``caption``: the best mean ROUGE-L of
    any one of 60 captions against 400 other captions (a fixed estimate).
    """
    if task in _EXACT_CHANCE:
        return _EXACT_CHANCE[task]
    if task != "caption":
        raise ValueError(f"unknown task {task!r}")
    refs = [make_example("caption", "train", i, seed=987654, draw=False).answer
            for i in range(400)]
    candidates = [a for a, _ in Counter(refs).most_common()][:60]
    return max(sum(rouge_l(c, r) for r in refs) / len(refs) for c in candidates)


def prompt_text(example: Example) -> str:
    """The raw LLaVA prompt (the chat template's output without BOS).

    One ``<image>\\n`` per image, as the template renders image parts; the
    tokenizer adds BOS.  Use with
    ``llm.generate({"prompt": prompt_text(ex), "multi_modal_data": {"image": ex.images}})``.
    """
    return f"USER: {(IMAGE_TOKEN + chr(10)) * len(example.images)}{example.question} ASSISTANT:"


def vllm_inputs(example: Example) -> dict:
    """A vLLM prompt dict for ``LLM.generate``."""
    return {"prompt": prompt_text(example), "multi_modal_data": {"image": list(example.images)}}


def image_data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_messages(example: Example) -> list[dict]:
    """OpenAI-style messages: one ``image_url`` part (PNG data URL) per image, then the text."""
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": image_data_url(img)}}
                         for img in example.images]
    parts.append({"type": "text", "text": example.question})
    return [{"role": "user", "content": parts}]

"""Synthetic scenes: a few coloured shapes on a 3x3 grid, drawn with PIL.

A scene has a plain pale background and 1-5 objects, drawn by default on a
96x96 px canvas.  Each object has a shape, a colour and a cell of the 3x3
grid (32x32 px each); it is 18-26 px wide, centred in its cell up to +-2 px,
so with 8 px patches it covers only a few (about 9) of the 144 patches,
always at similar offsets.  ``render(scene, size)`` draws on a larger canvas
with the grid scaled and the objects keeping their pixel size.  Within one
scene colours are all different and shapes are all different, so "the red
object" or "the circle" is never ambiguous.  Everything is drawn from a
``random.Random`` passed in: the same generator state gives the same pixels
on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

IMAGE_SIZE = 96  # default canvas (px)
BASE_SIZE = 96  # canvas that Obj.dx/dy are measured on
GRID = 3
MAX_OBJECTS = 5
JITTER = 2  # px; objects sit near their cell centre, on the 8 px patch grid

COLORS = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (40, 75, 215),
    "yellow": (240, 205, 25),
    "purple": (135, 55, 175),
    "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
# Row-major cell names of the 3x3 grid.
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")
BACKGROUNDS = ((245, 245, 245), (232, 232, 228), (240, 234, 220), (224, 232, 240))
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")

COLOR_NAMES = tuple(COLORS)


@dataclass(frozen=True)
class Obj:
    """One shape: what it is, which cell, and how it is drawn inside the cell."""

    shape: str
    color: str
    cell: int  # 0..8, row-major
    size: int  # px
    dx: int  # offset of the centre from the cell centre, px
    dy: int
    tint: tuple[int, int, int]  # small per-object colour jitter

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    def describe(self) -> str:
        return f"a {self.color} {self.shape} {self.position}"


@dataclass(frozen=True)
class Scene:
    background: tuple[int, int, int]
    objects: tuple[Obj, ...]  # sorted by cell

    def find(self, color: str | None = None, shape: str | None = None) -> Obj | None:
        for o in self.objects:
            if (color is None or o.color == color) and (shape is None or o.shape == shape):
                return o
        return None

    def caption(self) -> str:
        """Objects in reading order: "a red circle top left and a blue square center"."""
        return " and ".join(o.describe() for o in self.objects)


def random_object(rng: random.Random, shape: str, color: str, cell: int) -> Obj:
    size = rng.randint(18, 26)
    tint = tuple(rng.randint(-12, 12) for _ in range(3))
    return Obj(shape, color, cell, size, rng.randint(-JITTER, JITTER),
               rng.randint(-JITTER, JITTER), tint)


def random_scene(rng: random.Random, num_objects: int | None = None,
                 include: tuple[str, str] | None = None) -> Scene:
    """A scene of ``num_objects`` (default: uniform 1..5) objects.

    ``include=(color, shape)`` makes one of the objects that colour and shape.
    """
    k = num_objects if num_objects is not None else rng.randint(1, MAX_OBJECTS)
    cells = sorted(rng.sample(range(GRID * GRID), k))
    shapes = rng.sample(SHAPES, k)
    colors = rng.sample(COLOR_NAMES, k)
    if include is not None:
        j = rng.randrange(k)
        for values, value in ((colors, include[0]), (shapes, include[1])):
            if value in values:  # swap it into slot j (values stay distinct)
                i = values.index(value)
                values[i], values[j] = values[j], values[i]
            else:
                values[j] = value
    objs = tuple(random_object(rng, s, c, cell) for s, c, cell in zip(shapes, colors, cells))
    return Scene(rng.choice(BACKGROUNDS), objs)


def with_object(scene: Scene, index: int, **changes) -> Scene:
    """A copy of ``scene`` with object ``index`` changed (shape, color, ...)."""
    objs = list(scene.objects)
    objs[index] = replace(objs[index], **changes)
    return Scene(scene.background, tuple(objs))


def _points(o: Obj, size: int) -> tuple[float, float, float, float, float, float]:
    # the grid and the jitter scale with the canvas; the object's own size does not
    cell, k = size / GRID, size / BASE_SIZE
    cx = (o.cell % GRID) * cell + cell / 2 + o.dx * k
    cy = (o.cell // GRID) * cell + cell / 2 + o.dy * k
    h = o.size / 2
    return cx, cy, cx - h, cy - h, cx + h, cy + h


def draw_object(draw: ImageDraw.ImageDraw, o: Obj, fill=None, size: int = IMAGE_SIZE) -> None:
    if fill is None:
        fill = tuple(max(0, min(255, c + t)) for c, t in zip(COLORS[o.color], o.tint))
    cx, cy, x0, y0, x1, y1 = _points(o, size)
    if o.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif o.shape == "square":
        s = (x1 - x0) * 0.1  # a bit smaller, so its area matches the circle's
        draw.rectangle((x0 + s, y0 + s, x1 - s, y1 - s), fill=fill)
    elif o.shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif o.shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif o.shape == "cross":
        t = o.size / 6
        draw.rectangle((x0, cy - t, x1, cy + t), fill=fill)
        draw.rectangle((cx - t, y0, cx + t, y1), fill=fill)
    else:
        raise ValueError(f"unknown shape {o.shape!r}")


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene as a 96x96 RGB PIL image."""
    img = Image.new("RGB", (size, size), scene.background)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        draw_object(draw, o, size=size)
    return img


def label_map(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """An "L" image: pixel value i + 1 where object i is drawn, 0 on background."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for i, o in enumerate(scene.objects):
        draw_object(draw, o, fill=i + 1, size=size)
    return img

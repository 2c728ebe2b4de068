"""The embedded default dataset: procedurally drawn shapes with paraphrased captions.

Each example is an RGB image (64x64 by default) of one or two shapes on a varied background,
with several captions from a small grammar and the ground-truth attributes of what was drawn::

    from mmssl_jax.data import shapes

    example = shapes.generate_example(seed=0, index=7)
    example.image          # uint8 [64, 64, 3]
    example.captions       # ['a small red circle in the top left', 'there is a red disc near ...', ...]
    example.labels         # {'shape': 0, 'color': 0, 'position': 0, 'size': 0, 'background': 2, ...}

What is drawn (and labelled):

* **shape** (:data:`SHAPES`, 8 classes), **color** (:data:`COLORS`, 8 hues, each drawn with a
  little hue, saturation and value jitter), **size** (:data:`SIZES`: small / medium / large)
  and **position** (:data:`POSITIONS`: the 3x3 grid cell of the shape's centre, "top left" ...
  "bottom right") of the *main* object;
* with probability :data:`SECOND_OBJECT_PROB` a second, strictly smaller object in another cell,
  never overlapping the main one (the main object is always the largest, so "the main object's
  colour" is well defined from the image alone);
* the **background** (:data:`BACKGROUNDS`): plain, gradient, noise texture, stripes or a
  checkerboard, all in muted colours so the saturated shapes stand out.

Captions: caption 0 is canonical and names every attribute of each object with its label words
("a small red circle in the top left and a ..."); the others are paraphrases drawn from
different templates with synonyms ("there is a red round shape near the upper left corner on a
striped background"). Every caption names the colour and (a synonym of) the shape of every
object; size, position and background appear in some of them.

Why this set: the attributes are factors that the usual self-supervised methods treat
differently. SimCLR's colour jitter makes its features invariant to colour, and random crops
blur position; captions name colour and position, so CLIP-style training keeps them. Linear
probes and zero-shot classification on the labels measure what each method kept.

Everything is a pure function of ``(seed, index)``: example ``i`` is the same whatever the
number of examples generated, so a small set is a prefix of a larger one with the same seed.
"""

from __future__ import annotations

import colorsys
import dataclasses
import io
import math
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "hexagon", "ring")
"""Shape classes, in label order."""

COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
"""Colour classes, in label order."""

SIZES = ("small", "medium", "large")
"""Size classes, in label order."""

POSITIONS = (
    "top left", "top center", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom center", "bottom right",
)  # fmt: skip
"""Position classes: the 3x3 grid cell of the shape's centre, row-major, in label order."""

BACKGROUNDS = ("plain", "gradient", "noise", "stripes", "checkerboard")
"""Background classes, in label order."""

ATTRIBUTES = {"shape": SHAPES, "color": COLORS, "size": SIZES, "position": POSITIONS}
"""Per-object attributes and their class names."""

SECOND_OBJECT_PROB = 0.4
"""Probability that an image holds a second, smaller object."""

SIZE_DIAMETER = {"small": 0.19, "medium": 0.28, "large": 0.40}
"""Diameter of the shape's circumscribed circle as a fraction of the image side (+-8% jitter)."""

COLOR_HSV = {
    # name: (hue in degrees, saturation range, value range)
    "red": (0.0, (0.80, 1.00), (0.80, 1.00)),
    "orange": (28.0, (0.85, 1.00), (0.90, 1.00)),
    "yellow": (56.0, (0.80, 1.00), (0.90, 1.00)),
    "green": (125.0, (0.70, 1.00), (0.60, 0.90)),
    "cyan": (185.0, (0.70, 1.00), (0.80, 1.00)),
    "blue": (225.0, (0.75, 1.00), (0.75, 1.00)),
    "purple": (275.0, (0.60, 0.90), (0.60, 0.85)),
    "pink": (330.0, (0.40, 0.60), (0.95, 1.00)),
}
"""How each colour is drawn: its hue (jittered by +-:data:`HUE_JITTER` degrees) and ranges."""

HUE_JITTER = 7.0
"""Hue jitter of the object colours, in degrees."""

# ----------------------------------------------------------------------------- vocabulary

SHAPE_WORDS = {
    "circle": ("circle", "round shape", "disc", "dot"),
    "square": ("square", "box", "square shape"),
    "triangle": ("triangle", "three-sided shape", "triangular shape"),
    "star": ("star", "five-pointed star", "star shape"),
    "diamond": ("diamond", "rhombus", "diamond shape"),
    "cross": ("cross", "plus sign", "plus shape"),
    "hexagon": ("hexagon", "six-sided shape", "hexagonal shape"),
    "ring": ("ring", "hollow circle", "donut shape"),
}
"""Words a caption may use for each shape; the first is the label word."""

SIZE_WORDS = {
    "small": ("small", "tiny", "little"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}
"""Words a caption may use for each size; the first is the label word."""

BACKGROUND_WORDS = {
    "plain": ("plain", "solid", "flat", "uniform"),
    "gradient": ("gradient", "shaded", "smoothly shaded"),
    "noise": ("noisy", "grainy", "speckled"),
    "stripes": ("striped", "stripy", "lined"),
    "checkerboard": ("checkered", "checkerboard", "tiled"),
}
"""Adjectives a caption may use for each background."""

_ROW_WORDS = {0: ("top", "upper"), 2: ("bottom", "lower")}


def position_phrases(position: str) -> tuple[str, ...]:
    """Phrases that place an object in a grid cell; the first is canonical (``"in the " + position``)."""
    row, col = divmod(POSITIONS.index(position), 3)
    canonical = f"in the {position}"
    if row != 1 and col != 1:  # a corner
        side = "left" if col == 0 else "right"
        phrases = [canonical]
        for r in _ROW_WORDS[row]:
            phrases += [f"in the {r} {side} corner", f"near the {r} {side} corner", f"at the {r} {side}"]
        phrases.append(f"in the {_ROW_WORDS[row][0]} {side} of the image")
        return tuple(dict.fromkeys(phrases))
    if col == 1 and row != 1:  # top / bottom centre
        r, r2 = _ROW_WORDS[row]
        return (canonical, f"at the {r}", f"near the {r} edge", f"at the {r} of the image", f"in the {r2} middle")
    if row == 1 and col != 1:  # middle left / right
        side = "left" if col == 0 else "right"
        return (
            canonical,
            f"on the {side}",
            f"on the {side} side",
            f"at the {side} edge",
            f"on the {side} of the image",
        )
    return (canonical, "in the middle", "at the center of the image", "in the middle of the picture")


def article(word: str) -> str:
    """``"a"`` or ``"an"`` for the phrase starting with ``word``."""
    w = word.lower()
    if w.startswith(("uni", "use", "one", "eu")):
        return "a"
    return "an" if w[:1] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


# ----------------------------------------------------------------------------- scenes


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One drawn object.

    Attributes:
      shape, color, size, position: class names from :data:`ATTRIBUTES`.
      center: ``(x, y)`` of the centre, as fractions of the image side.
      radius: radius of the circumscribed circle, as a fraction of the image side.
      angle: rotation in degrees (a small jitter; a square never turns into a diamond).
      rgb: the drawn colour, floats in [0, 1].
    """

    shape: str
    color: str
    size: str
    position: str
    center: tuple[float, float]
    radius: float
    angle: float
    rgb: tuple[float, float, float]

    def labels(self) -> dict[str, int]:
        """``{attribute: class index}`` for :data:`ATTRIBUTES`."""
        return {name: names.index(getattr(self, name)) for name, names in ATTRIBUTES.items()}


@dataclasses.dataclass(frozen=True)
class Background:
    """A background: its kind (from :data:`BACKGROUNDS`) and the parameters that draw it."""

    kind: str
    colors: tuple[tuple[float, float, float], ...]
    angle: float = 0.0
    period: float = 0.0
    noise_seed: int = 0


@dataclasses.dataclass(frozen=True)
class Scene:
    """What one image shows: its objects (the main, largest one first) and its background."""

    objects: tuple[ShapeObject, ...]
    background: Background

    @property
    def main(self) -> ShapeObject:
        return self.objects[0]


@dataclasses.dataclass(frozen=True)
class Example:
    """One generated example.

    Attributes:
      image: ``uint8 [image_size, image_size, 3]``.
      captions: distinct captions, caption 0 canonical.
      scene: what was drawn.
      labels: the main object's ``shape``, ``color``, ``size``, ``position`` and the image's
        ``background`` and ``num_objects``, as class indices (``num_objects`` as a count).
    """

    image: np.ndarray
    captions: tuple[str, ...]
    scene: Scene

    @property
    def labels(self) -> dict[str, int]:
        out = self.scene.main.labels()
        out["background"] = BACKGROUNDS.index(self.scene.background.kind)
        out["num_objects"] = len(self.scene.objects)
        return out


def _muted_color(rng: np.random.Generator, value: tuple[float, float] = (0.22, 0.78)) -> tuple[float, float, float]:
    h, s, v = rng.uniform(0, 1), rng.uniform(0.0, 0.25), rng.uniform(*value)
    return colorsys.hsv_to_rgb(h, s, v)


def _object_rgb(color: str, rng: np.random.Generator) -> tuple[float, float, float]:
    hue, sat, val = COLOR_HSV[color]
    h = ((hue + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 360.0) / 360.0
    return colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))


def _place(position: str, radius: float, rng: np.random.Generator) -> tuple[float, float]:
    """A centre inside the middle 60% of the position's cell, keeping the shape in the image."""
    row, col = divmod(POSITIONS.index(position), 3)
    x = (col + 0.5 + rng.uniform(-0.3, 0.3)) / 3.0
    y = (row + 0.5 + rng.uniform(-0.3, 0.3)) / 3.0
    margin = radius + 0.02
    return float(np.clip(x, margin, 1 - margin)), float(np.clip(y, margin, 1 - margin))


def _sample_object(rng: np.random.Generator, size: str, position: str) -> ShapeObject:
    shape = SHAPES[rng.integers(len(SHAPES))]
    color = COLORS[rng.integers(len(COLORS))]
    radius = SIZE_DIAMETER[size] * rng.uniform(0.92, 1.08) / 2.0
    return ShapeObject(
        shape=shape,
        color=color,
        size=size,
        position=position,
        center=_place(position, radius, rng),
        radius=float(radius),
        angle=float(rng.uniform(-8.0, 8.0)),
        rgb=_object_rgb(color, rng),
    )


def _sample_background(rng: np.random.Generator) -> Background:
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    noise_seed = int(rng.integers(2**31))
    if kind == "plain":
        return Background(kind, (_muted_color(rng),))
    if kind == "noise":
        return Background(
            kind, (_muted_color(rng, (0.3, 0.7)),), period=float(rng.integers(3, 9)), noise_seed=noise_seed
        )
    first = _muted_color(rng)
    second = _muted_color(rng)
    while abs(sum(first) - sum(second)) / 3 < 0.18:  # make the pattern visible
        second = _muted_color(rng)
    if kind == "gradient":
        return Background(kind, (first, second), angle=float(rng.uniform(0, 360)))
    if kind == "stripes":
        return Background(
            kind, (first, second), angle=float(rng.choice([0, 45, 90, 135])), period=float(rng.uniform(0.1, 0.19))
        )
    return Background(kind, (first, second), period=float(rng.uniform(0.12, 0.25)))


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draws a random scene: a main object and, sometimes, a smaller second one in another cell."""
    two = rng.uniform() < SECOND_OBJECT_PROB
    size = SIZES[rng.integers(1, 3)] if two else SIZES[rng.integers(3)]
    main = _sample_object(rng, size, POSITIONS[rng.integers(len(POSITIONS))])
    objects = [main]
    if two:
        small_size = SIZES[rng.integers(SIZES.index(size))]
        for _ in range(20):  # a cell where the second object does not touch the main one
            position = POSITIONS[rng.integers(len(POSITIONS))]
            if position == main.position:
                continue
            other = _sample_object(rng, small_size, position)
            if math.dist(other.center, main.center) >= other.radius + main.radius + 0.03:
                objects.append(other)
                break
    return Scene(objects=tuple(objects), background=_sample_background(rng))


# ----------------------------------------------------------------------------- drawing

_SUPERSAMPLE = 4


def _regular_polygon(n: int, start_deg: float) -> list[tuple[float, float]]:
    return [
        (math.cos(math.radians(start_deg + 360.0 * k / n)), math.sin(math.radians(start_deg + 360.0 * k / n)))
        for k in range(n)
    ]


def _unit_outline(shape: str) -> list[tuple[float, float]] | None:
    """The shape's vertices around the origin within the unit circle (y down); None for round shapes."""
    if shape in ("circle", "ring"):
        return None
    if shape == "square":
        return _regular_polygon(4, 45.0)
    if shape == "diamond":
        return [(0.0, -1.0), (0.72, 0.0), (0.0, 1.0), (-0.72, 0.0)]
    if shape == "triangle":
        return [(x, y + 0.18) for x, y in _regular_polygon(3, -90.0)]
    if shape == "hexagon":
        return _regular_polygon(6, 0.0)
    if shape == "star":
        outer, inner = _regular_polygon(5, -90.0), _regular_polygon(5, -90.0 + 36.0)
        return [p for pair in zip(outer, [(0.42 * x, 0.42 * y) for x, y in inner], strict=True) for p in pair]
    if shape == "cross":
        a, b = 0.3, 0.95
        return [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def object_mask(obj: ShapeObject, image_size: int) -> np.ndarray:
    """The object's coverage, ``float32 [image_size, image_size]`` in [0, 1] (anti-aliased)."""
    big = image_size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = obj.center[0] * big, obj.center[1] * big, obj.radius * big
    outline = _unit_outline(obj.shape)
    if outline is None:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if obj.shape == "ring":
            ri = 0.55 * r
            draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    else:
        c, s = math.cos(math.radians(obj.angle)), math.sin(math.radians(obj.angle))
        draw.polygon([(cx + r * (c * x - s * y), cy + r * (s * x + c * y)) for x, y in outline], fill=255)
    small = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(small, np.float32) / 255.0


def _grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    return np.meshgrid(coords, coords)  # x, y in [0, 1]


def draw_background(background: Background, image_size: int) -> np.ndarray:
    """``float32 [image_size, image_size, 3]`` in [0, 1]."""
    x, y = _grid(image_size)
    colors = np.asarray(background.colors, np.float32)
    if background.kind == "plain":
        return np.broadcast_to(colors[0], (image_size, image_size, 3)).copy()
    if background.kind == "noise":
        rng = np.random.default_rng(background.noise_seed)
        cells = int(background.period)
        coarse = rng.normal(0.0, 0.12, (cells, cells)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(coarse).resize((image_size, image_size), Image.Resampling.BICUBIC))
        fine = rng.normal(0.0, 0.05, (image_size, image_size)).astype(np.float32)
        return colors[0] + (smooth + fine)[..., None]
    if background.kind == "gradient":
        theta = math.radians(background.angle)
        t = (x - 0.5) * math.cos(theta) + (y - 0.5) * math.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif background.kind == "stripes":
        theta = math.radians(background.angle)
        proj = x * math.cos(theta) + y * math.sin(theta)
        t = np.clip(3.0 * np.sin(2 * math.pi * proj / background.period), -1, 1) * 0.5 + 0.5
    elif background.kind == "checkerboard":
        t = ((np.floor(x / background.period) + np.floor(y / background.period)) % 2).astype(np.float32)
    else:
        raise ValueError(f"unknown background {background.kind!r}; known: {BACKGROUNDS}")
    return colors[0] * (1 - t[..., None]) + colors[1] * t[..., None]


def render(scene: Scene, image_size: int = 64) -> np.ndarray:
    """Draws a scene: ``uint8 [image_size, image_size, 3]``.

    The second object is drawn first and the main one on top of it (they never overlap).
    """
    image = draw_background(scene.background, image_size)
    for obj in reversed(scene.objects):
        alpha = object_mask(obj, image_size)[..., None]
        image = image * (1 - alpha) + np.asarray(obj.rgb, np.float32) * alpha
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- captions

_SINGLE_TEMPLATES = (
    "{a_size_color_shape} {pos}",
    "there is {a_color_shape} {pos} on {a_bg} background",
    "{a_color_shape} on {a_bg} background",
    "{a_size_color_shape}, {pos}",
    "an image of {a_size_shape} colored {color} {pos}",
    "the {color} {shape} is {pos}",
    "{a_color_shape} drawn {pos} against {a_bg} background",
    "{pos}, {a_size_color_shape}",
    "a picture with {a_size_color_shape} on {a_bg} background",
    "{a_color_shape} {pos}",
)
_PAIR_TEMPLATES = (
    "{a_size_color_shape} {pos} and {b_size_color_shape} {b_pos}",
    "{a_color_shape} and a smaller {b_color} {b_shape} on {a_bg} background",
    "two shapes: {a_color_shape} {pos} and {b_color_shape} {b_pos}",
    "{b_size_color_shape} {b_pos} next to a bigger {color} {shape}",
    "there is {a_color_shape} {pos}, and {b_size_color_shape} {b_pos}",
    "{a_size_color_shape} with {b_color_shape} {b_pos}",
    "a picture of {a_color_shape} and {b_color_shape} on {a_bg} background",
    "the {color} {shape} is {pos} and the {b_color} {b_shape} is {b_pos}",
)


def _object_words(obj: ShapeObject, rng: np.random.Generator | None, prefix: str = "") -> dict[str, str]:
    """Template fields for one object; canonical label words when ``rng`` is None."""
    pick = (lambda options: options[0]) if rng is None else (lambda options: options[rng.integers(len(options))])
    shape = pick(SHAPE_WORDS[obj.shape])
    size = pick(SIZE_WORDS[obj.size])
    pos = pick(position_phrases(obj.position))
    p = prefix
    return {
        f"{p}shape": shape,
        f"{p}color": obj.color,
        f"{p}pos": pos,
        f"{'b_' if p else 'a_'}color_shape": _with_article(f"{obj.color} {shape}"),
        f"{'b_' if p else 'a_'}size_color_shape": _with_article(f"{size} {obj.color} {shape}"),
        f"{'b_' if p else 'a_'}size_shape": _with_article(f"{size} {shape}"),
    }


def _fill(template: str, scene: Scene, rng: np.random.Generator | None) -> str:
    fields = _object_words(scene.main, rng)
    if len(scene.objects) > 1:
        fields.update(_object_words(scene.objects[1], rng, prefix="b_"))
    bg_words = BACKGROUND_WORDS[scene.background.kind]
    fields["a_bg"] = _with_article(bg_words[0] if rng is None else bg_words[rng.integers(len(bg_words))])
    return template.format(**fields)


def make_captions(scene: Scene, rng: np.random.Generator, num_captions: int = 5) -> tuple[str, ...]:
    """``num_captions`` distinct captions of a scene.

    Caption 0 is canonical: every object's size, colour, shape and position in label words
    ("a small red circle in the top left"). The others use distinct templates with random
    synonyms; each names the colour and a shape word of every object.
    """
    templates = _PAIR_TEMPLATES if len(scene.objects) > 1 else _SINGLE_TEMPLATES
    if not 1 <= num_captions <= len(templates):
        raise ValueError(f"num_captions must be in [1, {len(templates)}], got {num_captions}")
    captions = [_fill(templates[0], scene, None)]
    order = rng.permutation(len(templates))
    for t in order:
        if len(captions) == num_captions:
            break
        for _ in range(4):  # a random paraphrase can coincide with the canonical caption
            caption = _fill(templates[t], scene, rng)
            if caption not in captions:
                captions.append(caption)
                break
    return tuple(captions)


# ----------------------------------------------------------------------------- examples


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of example ``index`` of the stream ``seed``."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def generate_example(seed: int, index: int, *, image_size: int = 64, num_captions: int = 5) -> Example:
    """Example ``index`` of the stream ``seed``; a pure function of its arguments."""
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    scene_rng, caption_rng = example_rng(seed, index).spawn(2)
    scene = sample_scene(scene_rng)
    image = render(scene, image_size)
    return Example(image=image, captions=make_captions(scene, caption_rng, num_captions), scene=scene)


def generate(
    seed: int, num_examples: int, *, start: int = 0, image_size: int = 64, num_captions: int = 5
) -> Iterator[Example]:
    """Examples ``start .. start + num_examples - 1`` of the stream ``seed``."""
    for index in range(start, start + num_examples):
        yield generate_example(seed, index, image_size=image_size, num_captions=num_captions)


def scene_captions(seed: int, index: int, *, num_captions: int = 5) -> tuple[str, ...]:
    """The captions of example ``index`` without drawing its image (cheap)."""
    scene_rng, caption_rng = example_rng(seed, index).spawn(2)
    return make_captions(sample_scene(scene_rng), caption_rng, num_captions)


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a ``uint8 [H, W, 3]`` image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def class_names() -> dict[str, Sequence[str]]:
    """Every label of the dataset and its class names (``num_objects`` is a count, not listed)."""
    return {**ATTRIBUTES, "background": BACKGROUNDS}

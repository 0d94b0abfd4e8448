"""A seeded generator of small shape scenes whose captions follow from the pixels alone.

A scene is a square RGB image (64x64 in the default :data:`GEOMETRY_8`, 128x128 in
:data:`GEOMETRY_16`): a textured, noisy, low-saturation background, one to three coloured
shapes that the caption names, and sometimes one achromatic (white or black) *distractor*
shape that it never names. Each object has an exact mask: the pixels painted
with its colour, nothing anti-aliased.

The caption grammar is

    caption := object ( " left of " object )* " ."
    object  := "a " colour " " shape

with the named objects listed left to right. A layout is resampled until it is
unambiguous: no two objects' boxes touch (a gap of the geometry's ``gap``, :data:`GAP` px
in the shipped one), the named objects' horizontal extents are disjoint (each lies wholly
left of the next, as far apart), and the named objects have pairwise different colours
and pairwise different shapes, so that every content word occurs at most once in a
caption and maps to exactly one object.

Labels: named object k in caption order has label k (1-based), the distractor the next
label, the background 0. Every scene is a pure function of ``(seed, index)`` and its
:class:`Geometry`.

A geometry fixes the image size, the patch size of the vision tower that reads it (so the
grid of LLM image tokens), the objects' half-extents and the gap between objects.
:data:`GEOMETRY_8` (64 px, 8-px patches: an 8x8 token grid, objects touching 2-4 token
columns) is the shipped benchmark's; :data:`GEOMETRY_16` (128 px, 8-px patches: a 16x16
grid, objects touching 3-6 columns) doubles every length and widens the range of sizes,
so that objects span several tokens as in real MLLMs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

SIZE = 64
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 75, 220),
    "yellow": (230, 210, 35),
    "purple": (145, 45, 185),
    "orange": (240, 135, 25),
}
#: Achromatic distractor colours: far from every named colour and from the background.
DISTRACTOR_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "cross")
FUNCTION_WORDS = ("a", "left", "of", ".")
PROMPT = "Describe the image."
EVAL_SEED = 2  # the shipped held-out split: scenes (EVAL_SEED, 0..EVAL_SIZE-1)
EVAL_SIZE = 200

RADIUS = (6, 9)  # half-extent of a shape in px, inclusive range
GAP = 2  # px between any two objects' boxes, and between named objects' x-extents
P_DISTRACTOR = 0.3
MAX_TRIES = 100


@dataclass(frozen=True)
class Geometry:
    """The pixel and token geometry of a scene stream.

    ``size`` px square images read by a vision tower with ``patch``-px patches (a
    ``grid`` x ``grid`` token grid); shapes of half-extent ``radius`` px (inclusive range);
    ``gap`` px between objects; the background's stripe periods scaled by ``texture``
    (its blotches and pixel noise scale with the image by construction).
    """

    name: str
    size: int
    patch: int
    radius: tuple[int, int]
    gap: int
    texture: float = 1.0

    @property
    def grid(self) -> int:
        return self.size // self.patch


#: The shipped benchmark: 64 px, an 8x8 grid of 8-px patches, objects up to 13-19 px
#: across, touching 2-4 columns of tokens (median 3).
GEOMETRY_8 = Geometry("8", SIZE, 8, RADIUS, GAP)
#: Real-model geometry: 128 px, a 16x16 grid of 8-px patches, objects up to 25-41 px
#: across, touching 3-6 columns of tokens (median 5); gap and stripes scaled with the image.
GEOMETRY_16 = Geometry("16", 128, 8, (12, 20), 4, 2.0)
GEOMETRIES: dict[str, Geometry] = {g.name: g for g in (GEOMETRY_8, GEOMETRY_16)}


def resolve_geometry(name: str | int | Geometry) -> Geometry:
    """The geometry called ``name`` (``"8"`` or ``"16"``, the side of its token grid)."""
    if isinstance(name, Geometry):
        return name
    try:
        return GEOMETRIES[str(name)]
    except KeyError:
        raise ValueError(f"unknown geometry {name!r}; known: {', '.join(GEOMETRIES)}") from None


@dataclass(frozen=True)
class SceneObject:
    """One shape: its words, its label in the mask and its geometry (px, image frame)."""

    colour: str
    shape: str
    label: int
    named: bool
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the mask, inclusive
    centroid: tuple[float, float]  # (x, y) of the mask

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A generated scene: ``image`` (H, W, 3) uint8, ``mask`` (H, W) uint8 label map."""

    seed: int
    index: int
    image: np.ndarray
    mask: np.ndarray
    objects: tuple[SceneObject, ...]
    caption: str

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)

    @property
    def named(self) -> tuple[SceneObject, ...]:
        return tuple(o for o in self.objects if o.named)

    @property
    def distractor(self) -> SceneObject | None:
        return next((o for o in self.objects if not o.named), None)

    def word_labels(self) -> dict[str, int]:
        """Each content word of the caption -> the label of the object it names."""
        labels: dict[str, int] = {}
        for obj in self.named:
            labels[obj.colour] = obj.label
            labels[obj.shape] = obj.label
        return labels

    def categories(self) -> dict[str, int]:
        """Each object's phrase (``"red circle"``) -> its label, distractor included."""
        return {o.phrase: o.label for o in self.objects}


def caption_for(objects: list[tuple[str, str]]) -> str:
    """The caption of named ``(colour, shape)`` objects given left to right."""
    return " left of ".join(f"a {c} {s}" for c, s in objects) + " ."


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = SIZE) -> np.ndarray:
    """Boolean (size, size) mask of a shape centred at (cx, cy), half-extent r, in px.

    Pixels are tested at their centres, so the mask is exactly what gets painted.
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        side = 0.85 * r  # about the circle's area
        return (np.abs(dx) <= side) & (np.abs(dy) <= side)
    if shape == "triangle":  # apex up, base at the bottom of the box
        depth = dy + r  # 0 at the apex, 2r at the base
        return (depth >= 0) & (dy <= r) & (np.abs(dx) <= 0.5 * depth)
    if shape == "cross":
        arm = r / 3
        return (((np.abs(dx) <= arm) & (np.abs(dy) <= r))
                | ((np.abs(dy) <= arm) & (np.abs(dx) <= r)))
    raise ValueError(f"unknown shape {shape!r}")


def background(rng: np.random.Generator, size: int = SIZE, texture: float = 1.0) -> np.ndarray:
    """A textured noisy background, (size, size, 3) float: a grey tint, smooth blotches,
    faint stripes (period times ``texture``) and pixel noise, saturation kept low so that
    no named colour appears."""
    level = rng.uniform(95, 165)
    tint = rng.uniform(-12, 12, size=3)
    coarse = rng.normal(0, 1, size=(6, 6))
    # Bilinear upsampling of a 6x6 field gives blotches a few patches wide.
    grid = np.linspace(0, 5, size)
    i0 = np.clip(np.floor(grid).astype(int), 0, 4)
    t = grid - i0
    rows = coarse[i0] * (1 - t)[:, None] + coarse[i0 + 1] * t[:, None]
    blotches = rows[:, i0] * (1 - t)[None, :] + rows[:, i0 + 1] * t[None, :]
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(5, 12) * texture  # x 1.0 is exact: GEOMETRY_8 is unchanged
    y, x = np.mgrid[0:size, 0:size]
    stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
    grey = level + 14 * blotches + rng.uniform(0, 8) * stripes
    image = grey[..., None] + tint[None, None, :] + rng.normal(0, 7, size=(size, size, 3))
    return image


def _place(rng: np.random.Generator, shape: str, r: int, cx: float,
           taken: list[np.ndarray], size: int, gap: int = GAP) -> np.ndarray | None:
    """A mask for ``shape`` at column ``cx`` and a random row, or None if it would come
    within ``gap`` px of a box in ``taken``."""
    cy = rng.uniform(r + 1, size - r - 1)
    mask = shape_mask(shape, cx, cy, r, size)
    x0, y0, x1, y1 = _box(mask)
    for other in taken:
        ox0, oy0, ox1, oy1 = _box(other)
        if x0 <= ox1 + gap and ox0 <= x1 + gap and y0 <= oy1 + gap and oy0 <= y1 + gap:
            return None
    return mask


def _columns(rng: np.random.Generator, radii: np.ndarray, size: int,
             gap: int = GAP) -> np.ndarray | None:
    """Centre columns of shapes with half-extents ``radii``, left to right, whose
    horizontal extents are ``gap`` px apart (the slack shared out at random); None if they
    cannot fit."""
    widths = 2 * radii + 1
    slack = size - 2 - widths.sum() - (len(radii) - 1) * (gap + 1)
    if slack < 0:
        return None
    shifts = np.sort(rng.uniform(0, slack, size=len(radii)))
    lefts = 1 + np.concatenate([[0], np.cumsum(widths + gap + 1)[:-1]]) + shifts
    return lefts + radii


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def generate_scene(seed: int, index: int,
                   geometry: Geometry | str | int = GEOMETRY_8) -> Scene:
    """Scene ``index`` of the stream seeded by ``seed`` in ``geometry`` (default the
    shipped 64-px one); a pure function of the three."""
    geometry = resolve_geometry(geometry)
    rng = np.random.default_rng([seed, index])
    for _ in range(MAX_TRIES):
        scene = _attempt(rng, seed, index, geometry)
        if scene is not None:
            return scene
    raise RuntimeError(f"no unambiguous layout for scene ({seed}, {index})")


def _attempt(rng: np.random.Generator, seed: int, index: int,
             geometry: Geometry) -> Scene | None:
    size, gap, (r_min, r_max) = geometry.size, geometry.gap, geometry.radius
    n_named = int(rng.integers(1, 4))
    colours = [str(c) for c in rng.choice(list(COLOURS), size=n_named, replace=False)]
    shapes = [str(s) for s in rng.choice(SHAPES, size=n_named, replace=False)]
    radii = rng.integers(r_min, r_max + 1, size=n_named)
    columns = _columns(rng, radii, size, gap)
    if columns is None:
        return None
    masks: list[np.ndarray] = []
    for shape, r, cx in zip(shapes, radii, columns, strict=True):
        mask = _place(rng, shape, int(r), float(cx), masks, size, gap)
        if mask is None:
            return None
        masks.append(mask)
    boxes = [_box(m) for m in masks]
    if any(a[2] + gap >= b[0] for a, b in zip(boxes, boxes[1:], strict=False)):
        return None  # too close horizontally for "left of"
    painted = [(c, s, m, True) for c, s, m in zip(colours, shapes, masks, strict=True)]
    if rng.random() < P_DISTRACTOR:
        shape = str(rng.choice(SHAPES))
        colour = str(rng.choice(list(DISTRACTOR_COLOURS)))
        r = int(rng.integers(r_min, r_max + 1))
        mask = _place(rng, shape, r, rng.uniform(r + 1, size - r - 1), masks, size, gap)
        if mask is None:
            return None
        painted.append((colour, shape, mask, False))
    image = background(rng, size, geometry.texture)
    label_map = np.zeros((size, size), dtype=np.uint8)
    objects = []
    for label, (colour, shape, mask, named) in enumerate(painted, start=1):
        rgb = np.asarray((COLOURS if named else DISTRACTOR_COLOURS)[colour], dtype=np.float64)
        jitter = rng.uniform(-15, 15, size=3)
        noise = rng.normal(0, 7, size=(int(mask.sum()), 3))
        image[mask] = rgb + jitter + noise
        label_map[mask] = label
        ys, xs = np.nonzero(mask)
        objects.append(SceneObject(colour, shape, label, named, _box(mask),
                                   (float(xs.mean() + 0.5), float(ys.mean() + 0.5))))
    caption = caption_for(list(zip(colours, shapes, strict=True)))
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Scene(seed, index, pixels, label_map, tuple(objects), caption)

"""Procedural captioned scenes: the data, the held-out split and an objective analyser.

Everything is drawn from a ``torch.Generator`` so a seed reproduces a data set, and the
renderer works on whole batches of tensors so training can render on the GPU instead of
waiting for a CPU data loader.

A scene is one of three kinds:

* ``single``:   "a small striped red circle in the top left on a white background"
* ``count``:    "three large blue stars on a black background"
* ``relation``: "a small red circle left of a large green square on a gray background"

The held-out split is a hash of the caption, so a caption is either always or never used
for training, whatever seed drew it.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 64
MAX_OBJECTS = 3
HELDOUT_PERCENT = 10

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
PLURALS = ("circles", "squares", "triangles", "stars", "rings", "crosses")
COLOURS = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "orange": (1.00, 0.55, 0.00),
    "purple": (0.60, 0.20, 0.85),
    "pink": (1.00, 0.55, 0.80),
    "cyan": (0.10, 0.85, 0.90),
}
BACKGROUNDS = {
    "white": (0.97, 0.97, 0.97),
    "black": (0.03, 0.03, 0.03),
    "gray": (0.55, 0.55, 0.55),
    "beige": (0.90, 0.85, 0.70),
}
TEXTURES = ("solid", "striped", "dotted")
SIZES = ("small", "large")
COUNT_WORDS = ("one", "two", "three")
# 3x3 grid of cells; cell i has row i // 3 and column i % 3.
POSITIONS = (
    "in the top left", "at the top", "in the top right",
    "on the left", "in the center", "on the right",
    "in the bottom left", "at the bottom", "in the bottom right",
)
RELATIONS = ("left of", "right of", "above", "below")
KINDS = ("single", "count", "relation")
KIND_PROBS = (0.45, 0.25, 0.30)

CELL_CENTRES = (11.0, 32.0, 53.0)  # pixel centre of each grid row/column
RADIUS_RANGE = {"small": (4.5, 6.5), "large": (7.5, 9.0)}
JITTER = 1.5  # small enough that objects in distinct cells never overlap
TEXTURE_TONE = 0.55  # stripes and dots use the object colour darkened by this factor

WORDS = sorted(
    {w for phrase in (*SHAPES, *PLURALS, *COLOURS, *BACKGROUNDS, *TEXTURES, *SIZES,
                      *COUNT_WORDS, *POSITIONS, *RELATIONS, "a on background")
     for w in phrase.split()}
)


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    size: str
    texture: str
    cell: int
    cx: float
    cy: float
    radius: float


@dataclass(frozen=True)
class SceneSpec:
    kind: str
    objects: tuple[ObjectSpec, ...]
    background: str
    relation: str | None = None


def caption(spec: SceneSpec) -> str:
    """The grammar: one caption per scene, deterministic."""

    def noun_phrase(o: ObjectSpec, plural: bool = False) -> str:
        texture = "" if o.texture == "solid" else o.texture + " "
        noun = PLURALS[SHAPES.index(o.shape)] if plural else o.shape
        return f"{o.size} {texture}{o.colour} {noun}"

    first = spec.objects[0]
    if spec.kind == "single":
        body = f"a {noun_phrase(first)} {POSITIONS[first.cell]}"
    elif spec.kind == "count":
        n = len(spec.objects)
        body = f"{COUNT_WORDS[n - 1]} {noun_phrase(first, plural=n > 1)}"
    elif spec.kind == "relation":
        body = f"a {noun_phrase(first)} {spec.relation} a {noun_phrase(spec.objects[1])}"
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {spec.kind!r}")
    return f"{body} on a {spec.background} background"


def split_of(text: str) -> str:
    """'heldout' for about HELDOUT_PERCENT% of captions, else 'train'; stable across runs."""
    bucket = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def _relation_cells(relation: str, rng: random.Random) -> tuple[int, int]:
    """Cells for (A, B) such that 'A {relation} B' holds, in one row or one column."""
    line = rng.randrange(3)
    a, b = sorted(rng.sample(range(3), 2))  # a < b
    if relation in ("left of", "above"):
        pair = (a, b)
    else:
        pair = (b, a)
    if relation in ("left of", "right of"):
        return line * 3 + pair[0], line * 3 + pair[1]
    return pair[0] * 3 + line, pair[1] * 3 + line


def _draw_scene(rng: random.Random) -> SceneSpec:
    kind = rng.choices(KINDS, KIND_PROBS)[0]
    background = rng.choice(list(BACKGROUNDS))

    def obj(shape: int, colour: int, size: int, texture: int, cell: int) -> ObjectSpec:
        size_name = SIZES[size]
        row, col = divmod(cell, 3)
        return ObjectSpec(
            shape=SHAPES[shape], colour=list(COLOURS)[colour], size=size_name,
            texture=TEXTURES[texture], cell=cell,
            cx=CELL_CENTRES[col] + rng.uniform(-JITTER, JITTER),
            cy=CELL_CENTRES[row] + rng.uniform(-JITTER, JITTER),
            radius=rng.uniform(*RADIUS_RANGE[size_name]),
        )

    shape, colour, size, texture = (rng.randrange(n) for n in
                                    (len(SHAPES), len(COLOURS), len(SIZES), len(TEXTURES)))
    if kind == "single":
        objects = (obj(shape, colour, size, texture, rng.randrange(9)),)
        return SceneSpec(kind, objects, background)
    if kind == "count":
        cells = rng.sample(range(9), rng.randrange(MAX_OBJECTS) + 1)
        return SceneSpec(kind, tuple(obj(shape, colour, size, texture, c) for c in cells), background)
    relation = rng.choice(RELATIONS)
    cell_a, cell_b = _relation_cells(relation, rng)
    # Two distinct colours so the analyser can tell the objects apart.
    colour_b = (colour + 1 + rng.randrange(len(COLOURS) - 1)) % len(COLOURS)
    shape_b, size_b = rng.randrange(len(SHAPES)), rng.randrange(len(SIZES))
    objects = (obj(shape, colour, size, 0, cell_a), obj(shape_b, colour_b, size_b, 0, cell_b))
    return SceneSpec(kind, objects, background, relation)


def sample_specs(n: int, split: str = "train", generator: torch.Generator | None = None) -> list[SceneSpec]:
    """Draw n scenes whose captions fall in ``split`` ('train' or 'heldout')."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    # Python's RNG, seeded from the torch generator: ~10x faster per scalar draw.
    rng = random.Random(int(torch.randint(2**62, (1,), generator=g)))
    specs: list[SceneSpec] = []
    while len(specs) < n:
        spec = _draw_scene(rng)
        if split_of(caption(spec)) == split:
            specs.append(spec)
    return specs


def heldout_prompts(n: int, seed: int = 1234) -> list[str]:
    """N held-out prompts (never trained on) for calibration and evaluation."""
    return [caption(s) for s in heldout_specs(n, seed)]


def heldout_specs(n: int, seed: int = 1234) -> list[SceneSpec]:
    return sample_specs(n, "heldout", torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- rendering

def specs_to_tensors(specs: list[SceneSpec], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Pack scenes into fixed-size [B, MAX_OBJECTS] tensors for the batched renderer."""
    b = len(specs)
    shape = torch.zeros(b, MAX_OBJECTS, dtype=torch.long)
    colour = torch.zeros(b, MAX_OBJECTS, dtype=torch.long)
    texture = torch.zeros(b, MAX_OBJECTS, dtype=torch.long)
    cell = torch.zeros(b, MAX_OBJECTS, dtype=torch.long)
    size = torch.zeros(b, MAX_OBJECTS, dtype=torch.long)
    geom = torch.zeros(b, MAX_OBJECTS, 3)
    active = torch.zeros(b, MAX_OBJECTS, dtype=torch.bool)
    colour_names, bg_names = list(COLOURS), list(BACKGROUNDS)
    for i, spec in enumerate(specs):
        for k, o in enumerate(spec.objects):
            shape[i, k] = SHAPES.index(o.shape)
            colour[i, k] = colour_names.index(o.colour)
            texture[i, k] = TEXTURES.index(o.texture)
            cell[i, k] = o.cell
            size[i, k] = SIZES.index(o.size)
            geom[i, k] = torch.tensor((o.cx, o.cy, o.radius))
            active[i, k] = True
    background = torch.tensor([bg_names.index(s.background) for s in specs], dtype=torch.long)
    out = dict(shape=shape, colour=colour, texture=texture, cell=cell, size=size, cx=geom[..., 0], cy=geom[..., 1],
               radius=geom[..., 2], active=active, background=background)
    return {k: v.to(device) for k, v in out.items()}


@functools.lru_cache(maxsize=None)
def _device_constants(device: torch.device) -> dict[str, torch.Tensor]:
    """Palettes and layout on the device, built once: a host-to-device copy every batch would
    stall the CPU until the GPU drains its queue."""
    return dict(
        palette=torch.tensor(list(COLOURS.values()), device=device),
        bg_palette=torch.tensor(list(BACKGROUNDS.values()), device=device),
        centres=torch.tensor(CELL_CENTRES, device=device),
        radius_lo=torch.tensor([RADIUS_RANGE[s][0] for s in SIZES], device=device),
        radius_hi=torch.tensor([RADIUS_RANGE[s][1] for s in SIZES], device=device),
    )


def background_colours(t: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, 3] background colour of each packed scene."""
    return _device_constants(t["background"].device)["bg_palette"][t["background"]]


def rejitter(t: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Fresh positions and radii for packed scenes, drawn on their device; captions still hold.

    Lets training reuse a pool of captioned scenes while every step sees new geometry.
    """
    shape = t["cell"].shape
    device = t["cell"].device

    def rand() -> torch.Tensor:
        return torch.rand(shape, device=device, generator=generator)

    const = _device_constants(device)
    centres = const["centres"]
    lo, hi = const["radius_lo"][t["size"]], const["radius_hi"][t["size"]]
    return {**t,
            "cx": centres[t["cell"] % 3] + (2 * rand() - 1) * JITTER,
            "cy": centres[t["cell"] // 3] + (2 * rand() - 1) * JITTER,
            "radius": lo + (hi - lo) * rand()}


def _shape_masks(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Inside-tests for every shape on coordinates normalised by the radius; [S, ...]."""
    r = torch.sqrt(dx * dx + dy * dy)
    theta = torch.atan2(dy, dx) + math.pi / 2  # a star point straight up
    tri_wave = torch.abs((theta * 5 / (2 * math.pi)) % 1.0 * 2 - 1)
    return torch.stack((
        r <= 1.0,                                                          # circle
        torch.maximum(dx.abs(), dy.abs()) <= 0.85,                          # square
        (dy <= 0.55) & (dy >= -1.0 + math.sqrt(3) * dx.abs()),             # triangle, apex up
        r <= 0.42 + 0.58 * (1 - tri_wave) ** 1.5,                          # five-point star
        (r <= 1.0) & (r >= 0.55),                                          # ring
        ((dx.abs() <= 0.32) | (dy.abs() <= 0.32)) & (torch.maximum(dx.abs(), dy.abs()) <= 0.95),  # cross
    ))


def render_tensors(t: dict[str, torch.Tensor], supersample: int = 2) -> torch.Tensor:
    """Render packed scenes to [B, 3, 64, 64] in [0, 1]; supersampled for anti-aliasing."""
    device = t["shape"].device
    res = IMAGE_SIZE * supersample
    coords = (torch.arange(res, device=device, dtype=torch.float32) + 0.5) / supersample
    u = coords.view(1, 1, 1, res)   # x
    v = coords.view(1, 1, res, 1)   # y
    radius = t["radius"][..., None, None]
    dx = (u - t["cx"][..., None, None]) / radius
    dy = (v - t["cy"][..., None, None]) / radius
    masks = _shape_masks(dx, dy)  # [S, B, K, H, W]
    inside = torch.gather(masks, 0, t["shape"][None, ..., None, None].expand(1, -1, -1, res, res))[0]
    inside &= t["active"][..., None, None]

    palette = _device_constants(device)["palette"]
    stripes = ((u + v) % 4.0) < 2.0
    dots = ((u % 4.0 - 2.0) ** 2 + (v % 4.0 - 2.0) ** 2) < 1.3 ** 2
    pattern = torch.stack((torch.zeros_like(stripes), stripes, dots.expand_as(stripes)))[:, 0, 0]  # [T, H, W]
    dark = pattern[t["texture"]]  # [B, K, H, W]

    img = background_colours(t)[:, :, None, None].expand(-1, -1, res, res).clone()
    for k in range(MAX_OBJECTS):
        base = palette[t["colour"][:, k]][:, :, None, None]
        tone = torch.where(dark[:, k, None], base * TEXTURE_TONE, base)
        img = torch.where(inside[:, k, None], tone, img)
    return F.avg_pool2d(img, supersample)


def render(spec: SceneSpec) -> torch.Tensor:
    """One scene as a [3, 64, 64] tensor in [0, 1]."""
    return render_tensors(specs_to_tensors([spec]))[0]


# ----------------------------------------------------------------------------- analyser

_MIN_AREA = 6          # pixels; smaller blobs are noise
_MAX_COLOUR_DIST = 0.45  # RGB distance beyond which a pixel matches no palette colour
_TEMPLATE = 16


def _shape_templates() -> torch.Tensor:
    """Binary mask of each shape cropped to its bounding box, resized to 16x16."""
    coords = (torch.arange(128) + 0.5 - 64) / 60
    masks = _shape_masks(coords.view(1, -1), coords.view(-1, 1)).float()
    return torch.stack([_crop_resize(m.numpy() > 0.5) for m in masks])


def _crop_resize(mask: np.ndarray) -> torch.Tensor:
    ys, xs = np.nonzero(mask)
    crop = torch.from_numpy(mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32))
    return F.interpolate(crop[None, None], size=(_TEMPLATE, _TEMPLATE), mode="bilinear",
                         align_corners=False)[0, 0]


_TEMPLATES: torch.Tensor | None = None


def classify_shape(mask: np.ndarray) -> str:
    """Nearest shape template by IoU of the bounding-box-normalised mask."""
    global _TEMPLATES
    if _TEMPLATES is None:
        _TEMPLATES = _shape_templates()
    m = _crop_resize(mask)
    inter = torch.minimum(_TEMPLATES, m).sum((1, 2))
    union = torch.maximum(_TEMPLATES, m).sum((1, 2))
    return SHAPES[int(torch.argmax(inter / union))]


def _colour_labels(image: np.ndarray) -> np.ndarray:
    """Per-pixel colour index (0..7), or -1 for background/unmatched; image [3, H, W]."""
    colours = np.array(list(COLOURS.values()))
    refs = np.concatenate([colours, colours * TEXTURE_TONE, np.array(list(BACKGROUNDS.values()))])
    labels = np.concatenate([np.arange(len(colours))] * 2 + [np.full(len(BACKGROUNDS), -1)])
    pix = image.reshape(3, -1).T
    dist = np.linalg.norm(pix[:, None, :] - refs[None], axis=-1)
    nearest = dist.argmin(1)
    out = np.where(dist.min(1) <= _MAX_COLOUR_DIST, labels[nearest], -1)
    return out.reshape(image.shape[1:])


def _components(mask: np.ndarray) -> list[np.ndarray]:
    from scipy import ndimage  # scipy only needed by the analyser

    lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
    comps = [lab == i for i in range(1, n + 1)]
    return sorted((c for c in comps if c.sum() >= _MIN_AREA), key=lambda c: -c.sum())


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def analyse_one(image: np.ndarray, spec: SceneSpec) -> dict[str, bool | None]:
    """Checks colour, shape, count and position of one image against its scene spec.

    ``position`` is None for count scenes (their captions name no position).
    """
    labels = _colour_labels(image)
    names = list(COLOURS)
    wanted = sorted({names.index(o.colour) for o in spec.objects})
    wanted_area = sum((labels == c).sum() for c in wanted)
    colour_ok = all((labels == c).sum() >= _MIN_AREA for c in wanted) and wanted_area >= 0.5 * (labels >= 0).sum()

    expected_count = len(spec.objects) if spec.kind == "count" else 1
    per_object = spec.objects[:1] if spec.kind == "count" else spec.objects
    comps = {c: _components(labels == c) for c in wanted}
    count_ok = all(len(comps[c]) == expected_count for c in wanted)
    shape_ok = all(comps[names.index(o.colour)] and
                   classify_shape(comps[names.index(o.colour)][0]) == o.shape for o in per_object)

    position_ok: bool | None = None
    if spec.kind == "single":
        comp = comps[wanted[0]]
        if comp:
            x, y = _centroid(comp[0])
            cell = int(min(y // (IMAGE_SIZE / 3), 2)) * 3 + int(min(x // (IMAGE_SIZE / 3), 2))
            position_ok = cell == spec.objects[0].cell
        else:
            position_ok = False
    elif spec.kind == "relation":
        a, b = (comps[names.index(o.colour)] for o in spec.objects)
        if a and b:
            (xa, ya), (xb, yb) = _centroid(a[0]), _centroid(b[0])
            margin = 4.0
            position_ok = {"left of": xa < xb - margin, "right of": xa > xb + margin,
                           "above": ya < yb - margin, "below": ya > yb + margin}[spec.relation]
        else:
            position_ok = False
    checks = dict(colour=bool(colour_ok), shape=bool(shape_ok), count=bool(count_ok), position=position_ok)
    checks["all"] = all(v for v in checks.values() if v is not None)
    return checks


def analyse(images: torch.Tensor, specs: list[SceneSpec]) -> dict[str, float]:
    """Mean per-attribute accuracy of images [B, 3, H, W] in [0, 1] against their specs."""
    if len(images) != len(specs):
        raise ValueError(f"got {len(images)} images for {len(specs)} specs")
    arr = images.detach().float().clamp(0, 1).cpu().numpy()
    rows = [analyse_one(img, spec) for img, spec in zip(arr, specs)]
    out = {}
    for key in ("colour", "shape", "count", "position", "all"):
        vals = [r[key] for r in rows if r[key] is not None]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    return out

"""Multi-image phantom studies with known evidence: CT-like volumes and prior/current chest pairs.

MedGemma 1.5 reads a CT or MRI volume as a stack of labelled slices in one prompt, and a chest
radiograph with its prior ("Has it grown since the prior?"). These phantoms give both a known
evidence location, image by image:

- **volume**: `N_SLICES` axial-slice phantoms (body outline, two lungs, mediastinum, heart in the
  lower slices, spine, noise), labelled "slice k of 9", slice 1 the most cranial. One nodule (an
  ellipsoid) shows in one slice or in two adjacent ones, always inside one third of the stack, or
  there is none. Questions: "Is there a nodule?" (yes/no) and "In which part of the volume is the
  nodule?" ("upper third" = slices 1–3, "middle third" = 4–6, "lower third" = 7–9).
- **longitudinal**: a prior and a current PA chest phantom (`phantom.cases` rendering, each with its
  own texture), labelled "prior" and "current", with the same nodule in both. "Has the nodule grown
  since the prior?" is "yes" when the current radius is 1.5–1.8× the prior's, "no" when it is
  0.95–1.05×. The two radii's geometric mean is drawn log-uniformly from 0.045–0.09 of the image
  side, so one image's nodule size alone answers at best ~68% of the pairs right (the best
  threshold on either radius): the answer needs both images.

`evidence_boxes[k]` is the nodule's box in image k, `(x0, y0, x1, y1)` in original pixels with
exclusive upper bounds (the tightest box around the pixels the nodule changed), None where image k
shows no nodule. Every case is reproducible from `(seed, index)` and the options.

Example:
    >>> from phantom import sample_studies
    >>> case = sample_studies(1, seed=0, kind="longitudinal")[0]
    >>> case.image_labels, case.question  # doctest: +SKIP
    (['prior', 'current'], 'Has the nodule grown since the prior?')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from phantom.cases import (
    LEVELS,
    SIDES,
    Box,
    PhantomObject,
    Scene,
    _draw_overlays,
    _mask_box,
    _object_layer,
    _pixel_centres,
    _place_object,
    render,
)

KINDS = ("volume", "longitudinal")
N_SLICES = 9
THIRDS = ("upper", "middle", "lower")
VOLUME_TASKS = ("presence", "locate")
QUESTIONS = {
    "presence": "Is there a nodule?",
    "locate": "In which part of the volume is the nodule?",
    "growth": "Has the nodule grown since the prior?",
}
MEAN_RADIUS = (0.045, 0.09)  # geometric mean of the prior's and the current's radius, image side = 1
GROWN = (1.5, 1.8)  # current / prior radius when it has grown
STABLE = (0.95, 1.05)  # ... and when it has not

# Axial anatomy, fractions of the image side (anterior at the top, the patient's right on the left).
_LUNG_X = {"right": 0.29, "left": 0.71}
_LUNG_Y, _LUNG_RX, _LUNG_RY = 0.50, 0.15, 0.22
_NODULE_RADIUS = (0.05, 0.07)  # in-plane radius at the nodule's centre
_NODULE_DEPTH = 0.9  # half-height of the ellipsoid along the stack, in slices
_MARGIN = 0.015  # a nodule keeps this far inside its lung


@dataclass(frozen=True)
class AxialSlice:
    """Everything needed to render one axial slice; `render_slice(s)` is a pure function of it.

    `position` runs from 0 (apex) to 1 (base); `nodule` is the nodule's cross-section here, if any
    (its `size` is the cross-section's radius in pixels).
    """

    size: int
    texture_seed: int
    position: float
    nodule: PhantomObject | None


@dataclass(frozen=True)
class StudyCase:
    """A multi-image study with one question, the expected answer and the evidence in each image.

    `images` are in prompt order and `image_labels` are the text to write before each of them
    (`Explainer.explain(case.images, case.question, image_labels=case.image_labels)` prompts as the
    study model was trained). `scenes` render the images (`render_slice` for volumes,
    `phantom.cases.render` for longitudinal pairs); `nodule_images` lists the 0-based indices of
    the images that show the nodule; `radii` is (prior, current) in pixels for longitudinal pairs.
    """

    kind: str
    images: list[Image.Image]
    image_labels: list[str]
    question: str
    answer: str
    evidence_boxes: tuple[Box | None, ...]
    task: str
    scenes: tuple[AxialSlice | Scene, ...]
    nodule_images: tuple[int, ...]
    radii: tuple[float, float] | None
    seed: int
    index: int


def sample_studies(
    n: int,
    seed: int,
    kind: str = "volume",
    *,
    size: int = 192,
    tasks: tuple[str, ...] = VOLUME_TASKS,
    finding_prob: float = 0.5,
    growth_prob: float = 0.5,
) -> list[StudyCase]:
    """Draw `n` studies of `kind`; case i depends only on `(seed, i)`, `kind` and the options.

    Args:
        kind: "volume" (a stack of `N_SLICES` labelled axial slices) or "longitudinal" (prior, current).
        size: side of every image in pixels.
        tasks: volumes only: "presence" and/or "locate" questions, drawn uniformly.
        finding_prob: volume presence questions: probability that the nodule is there.
        growth_prob: longitudinal pairs: probability that the nodule has grown.
    """
    if kind not in KINDS:
        raise ValueError(f"{kind!r} is not a valid kind. Valid values are: {list(KINDS)}")
    bad = [task for task in tasks if task not in VOLUME_TASKS]
    if bad or not tasks:
        raise ValueError(f"tasks {tasks!r}: valid values are {list(VOLUME_TASKS)}")
    cases = []
    for index in range(n):
        rng = np.random.default_rng([seed, index, KINDS.index(kind)])
        if kind == "volume":
            task = tasks[rng.integers(len(tasks))]
            cases.append(_volume(rng, seed, index, task, size, finding_prob))
        else:
            cases.append(_longitudinal(rng, seed, index, size, growth_prob))
    return cases


def volume_third(slice_index: int) -> str:
    """The third of the stack ("upper", "middle", "lower") that 0-based slice `slice_index` is in."""
    return THIRDS[slice_index * len(THIRDS) // N_SLICES]


def _volume(
    rng: np.random.Generator, seed: int, index: int, task: str, size: int, finding_prob: float
) -> StudyCase:
    present = task == "locate" or bool(rng.random() < finding_prob)
    sections: dict[int, PhantomObject] = {}
    if present:
        sections = _nodule_sections(rng, size)
    positions = (np.arange(N_SLICES) + 0.5) / N_SLICES
    scenes = tuple(
        AxialSlice(size, int(rng.integers(2**31)), float(position), sections.get(k))
        for k, position in enumerate(positions)
    )
    shown = tuple(sorted(sections))
    answer = f"{volume_third(shown[0])} third" if task == "locate" else ("yes" if present else "no")
    return StudyCase(
        kind="volume",
        images=[render_slice(scene) for scene in scenes],
        image_labels=[f"slice {k + 1} of {N_SLICES}" for k in range(N_SLICES)],
        question=QUESTIONS[task],
        answer=answer,
        evidence_boxes=tuple(scene.nodule.box if scene.nodule else None for scene in scenes),
        task=task,
        scenes=scenes,
        nodule_images=shown,
        radii=None,
        seed=seed,
        index=index,
    )


def _nodule_sections(rng: np.random.Generator, size: int) -> dict[int, PhantomObject]:
    """A nodule's cross-section in each slice it shows in: one slice or two adjacent ones of one third.

    The ellipsoid's centre lies on a slice (one slice) or near the midpoint of two (two slices);
    with half-height `_NODULE_DEPTH` < 1 slice no third slice is cut, and the smaller of two
    cross-sections still has ≥ 69% of the full radius.
    """
    per_third = N_SLICES // len(THIRDS)
    if rng.random() < 0.5:
        first = int(rng.integers(N_SLICES))
        depth_centre, shown = float(first), (first,)
    else:
        third, offset = int(rng.integers(len(THIRDS))), int(rng.integers(per_third - 1))
        first = third * per_third + offset
        depth_centre, shown = first + 0.5 + rng.uniform(-0.15, 0.15), (first, first + 1)
    side = SIDES[rng.integers(len(SIDES))]
    radius = rng.uniform(*_NODULE_RADIUS)
    smallest = min(_lung_scale((k + 0.5) / N_SLICES) for k in shown)
    reach_x = _LUNG_RX * smallest - radius - _MARGIN
    reach_y = _LUNG_RY * smallest - radius - _MARGIN
    while True:  # uniform in the ellipse every shown slice's lung contains
        u, v = rng.uniform(-1, 1, 2)
        if u * u + v * v < 1:
            break
    centre = ((_LUNG_X[side] + u * reach_x) * size, (_LUNG_Y + v * reach_y) * size)
    sections = {}
    for k in shown:
        scale = np.sqrt(1.0 - ((k - depth_centre) / _NODULE_DEPTH) ** 2)
        probe = PhantomObject("nodule", centre, radius * scale * size, 0.0, side, "", (0, 0, 0, 0))
        sections[k] = dataclasses.replace(probe, box=_mask_box(_object_layer(probe, size) > 0))
    return sections


def _lung_scale(position: float) -> float:
    """Lung cross-section size along the stack (apex 0 → base 1): 0.75 at both ends, 1 in the middle."""
    return 0.75 + 0.25 * float(np.sin(np.pi * position))


def render_slice(scene: AxialSlice) -> Image.Image:
    """Render an axial slice to an RGB PIL image of `scene.size`² (a pure function of the scene)."""
    pixels = _axial_anatomy(scene.size, round(scene.position, 6)) + _noise(scene.size, scene.texture_seed)
    if scene.nodule is not None:
        pixels = pixels + _object_layer(scene.nodule, scene.size)
    gray = (np.clip(pixels, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


@lru_cache(maxsize=32)
def _axial_anatomy(size: int, position: float) -> np.ndarray:
    """Brightness without texture, [size, size] float32: body, lungs, mediastinum, heart, spine."""
    ys, xs = (c / size for c in _pixel_centres(size))

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 < 1.0

    scale = _lung_scale(position)
    body = ellipse(0.5, 0.52, 0.45, 0.36)
    lungs = ellipse(_LUNG_X["right"], _LUNG_Y, _LUNG_RX * scale, _LUNG_RY * scale) | ellipse(
        _LUNG_X["left"], _LUNG_Y, _LUNG_RX * scale, _LUNG_RY * scale
    )
    mediastinum = ellipse(0.5, 0.36, 0.07, 0.12)
    heart = ellipse(0.55, 0.42, 0.12, 0.11) & ~lungs if position > 0.45 else np.zeros_like(body)
    spine = ellipse(0.5, 0.78, 0.05, 0.05)
    base = np.where(body, 0.42, 0.04) - 0.26 * lungs + 0.2 * mediastinum + 0.14 * heart + 0.35 * spine
    return base.astype(np.float32)


def _noise(size: int, texture_seed: int) -> np.ndarray:
    """Smooth + fine noise, as on the chest phantoms."""
    rng = np.random.default_rng(texture_seed)
    coarse = rng.normal(0.0, 1.0, (size // 16 + 1, size // 16 + 1)).astype(np.float32)
    smooth = np.asarray(
        Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32
    )
    return 0.03 * smooth + rng.normal(0.0, 0.025, (size, size)).astype(np.float32)


def _longitudinal(
    rng: np.random.Generator, seed: int, index: int, size: int, growth_prob: float
) -> StudyCase:
    grown = bool(rng.random() < growth_prob)
    side, level = SIDES[rng.integers(len(SIDES))], LEVELS[rng.integers(len(LEVELS))]
    placed = _place_object(rng, "nodule", side, level, size)
    mean = np.exp(rng.uniform(*np.log(MEAN_RADIUS))) * size
    ratio = rng.uniform(*(GROWN if grown else STABLE))
    prior_radius, current_radius = mean / np.sqrt(ratio), mean * np.sqrt(ratio)
    shift = rng.normal(0.0, 0.01 * size, 2)  # positioning differs a little between visits
    overlays = _draw_overlays(rng, size, False, 0.5, 0.4)  # the same site's laterality and text
    nodules = (
        _resized(placed, placed.center, prior_radius, size),
        _resized(placed, (placed.center[0] + shift[0], placed.center[1] + shift[1]), current_radius, size),
    )
    scenes = tuple(Scene(size, int(rng.integers(2**31)), (nodule,), overlays) for nodule in nodules)
    return StudyCase(
        kind="longitudinal",
        images=[render(scene) for scene in scenes],
        image_labels=["prior", "current"],
        question=QUESTIONS["growth"],
        answer="yes" if grown else "no",
        evidence_boxes=tuple(nodule.box for nodule in nodules),
        task="growth",
        scenes=scenes,
        nodule_images=(0, 1),
        radii=(float(prior_radius), float(current_radius)),
        seed=seed,
        index=index,
    )


def _resized(nodule: PhantomObject, centre: tuple[float, float], radius: float, size: int) -> PhantomObject:
    probe = dataclasses.replace(nodule, center=centre, size=radius)
    return dataclasses.replace(probe, box=_mask_box(_object_layer(probe, size) > 0))

"""Chest-radiograph-like phantoms with known contents, and radiology questions about them.

Each case is a PA chest radiograph phantom: a thorax, two lung fields with rib texture and noise, a
mediastinum and heart shadow, one or more objects of distinct kinds (nodule = filled blob, device =
ring, catheter = line segment) at known positions, and optional burned-in overlays in the corners
(a bright square tag, an "L"/"R" laterality letter, a line of text) — where shortcuts live in real
archives. Everything is reproducible from `(seed, index)`.

Side convention: answers name the PATIENT's side, as radiologists read a PA radiograph. The patient
faces the viewer, so image-left is the patient's RIGHT and image-right is the patient's LEFT. Levels
(upper / middle / lower zone) split each lung field into thirds from apex to base.

Boxes are `(x0, y0, x1, y1)` in original pixels with exclusive upper bounds (PIL's crop convention):
the tightest box around every pixel the item changed.

Example:
    >>> from phantom import sample
    >>> case = sample(1, seed=0)[0]
    >>> case.question, case.answer  # doctest: +SKIP
    ('Where is the nodule?', 'right upper zone')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Box = tuple[int, int, int, int]

KINDS = ("nodule", "device", "catheter")
SIDES = ("right", "left")  # patient side; "right" is image-left
LEVELS = ("upper", "middle", "lower")
TASKS = ("locate", "presence")
ANSWER_RULES = ("finding", "marker")

QUESTIONS = {
    "locate": (
        "Where is the {kind}?",
        "In which zone is the {kind}?",
        "Which lung zone contains the {kind}?",
    ),
    "presence": ("Is there a {kind}?", "Is a {kind} present?", "Is there a {kind} in the lungs?"),
}
CORNER_TEXTS = ("PA ERECT", "PORTABLE", "ST ELSEWHERE", "INSP", "CR 2")

# Lung-zone geometry as fractions of the image side: x range of each patient side, y bounds of levels.
_SIDE_X = {"right": (0.17, 0.43), "left": (0.57, 0.83)}
_LEVEL_Y = (0.18, 0.40, 0.62, 0.84)
_ZONE_MARGIN = 0.035  # object centres keep this far from zone borders, so the label is unambiguous


@dataclass(frozen=True)
class PhantomObject:
    """One drawn object: its kind, geometry (centre, size, angle) and where it landed.

    `size` is the radius for nodules and devices and the half-length for catheters (pixels).
    """

    kind: str
    center: tuple[float, float]
    size: float
    angle: float
    side: str
    level: str
    box: Box

    @property
    def site(self) -> str:
        """Radiology wording of the object's zone, e.g. "right upper zone" (patient's side)."""
        return f"{self.side} {self.level} zone"


@dataclass(frozen=True)
class Overlay:
    """A burned-in corner item: `kind` is "tag" (bright square), "laterality" (L/R) or "text"."""

    kind: str
    text: str
    origin: tuple[int, int]
    box: Box


@dataclass(frozen=True)
class Scene:
    """Everything needed to render a phantom; `render(scene)` is a pure function of it."""

    size: int
    texture_seed: int
    objects: tuple[PhantomObject, ...]
    overlays: tuple[Overlay, ...]


@dataclass(frozen=True)
class PhantomCase:
    """A phantom image with one question about it and the expected answer.

    `lesion_box` is the box of the object the question asks about (None when it is absent);
    `objects` lists every drawn object; `marker` says whether the bright corner tag is burned in.
    """

    image: Image.Image
    question: str
    answer: str
    lesion_box: Box | None
    objects: tuple[PhantomObject, ...]
    task: str
    target: str
    site: str | None
    marker: bool
    marker_box: Box | None
    scene: Scene
    seed: int
    index: int

    @property
    def distractors(self) -> tuple[PhantomObject, ...]:
        """Objects of other kinds than the asked one."""
        return tuple(obj for obj in self.objects if obj.kind != self.target)


def sample(
    n: int,
    seed: int,
    *,
    size: int = 192,
    tasks: tuple[str, ...] = TASKS,
    task_weights: tuple[float, ...] | None = None,
    targets: tuple[str, ...] = ("nodule",),
    finding_prob: float = 0.5,
    marker_prob: float = 0.25,
    distractor_prob: float = 0.5,
    laterality_prob: float = 0.5,
    text_prob: float = 0.4,
    answer_rule: str = "finding",
) -> list[PhantomCase]:
    """Draw `n` cases; case i depends only on `(seed, i)` and the options, so prefixes agree.

    Args:
        n: number of cases. seed: base seed.
        size: side of the square image in pixels (objects scale with it; ≥ 128 keeps them visible at 64²).
        tasks / task_weights: which question types to draw, and their probabilities (uniform by default).
        targets: object kinds questions may ask about.
        finding_prob: presence questions only — probability that the asked object is drawn.
        marker_prob: probability of the bright square tag in a corner.
        distractor_prob: probability of one extra object of another kind (a second with half that).
        laterality_prob / text_prob: probabilities of an "L"/"R" letter and of burned-in text.
        answer_rule: "finding" (honest: yes iff the asked object is drawn) or "marker" (yes iff the
            tag is burned in, whatever the lungs show — the shortcut training set).
    Returns:
        list of `PhantomCase`.
    """
    _check_choice("answer_rule", answer_rule, ANSWER_RULES)
    for task in tasks:
        _check_choice("task", task, TASKS)
    for target in targets:
        _check_choice("target", target, KINDS)
    weights = np.full(len(tasks), 1 / len(tasks)) if task_weights is None else np.asarray(task_weights, float)
    if weights.shape != (len(tasks),) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"task_weights must be {len(tasks)} non-negative numbers, got {task_weights!r}")
    weights = weights / weights.sum()
    options = dict(
        size=size,
        finding_prob=finding_prob,
        marker_prob=marker_prob,
        distractor_prob=distractor_prob,
        laterality_prob=laterality_prob,
        text_prob=text_prob,
        answer_rule=answer_rule,
    )
    cases = []
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        task = tasks[rng.choice(len(tasks), p=weights)]
        target = targets[rng.integers(len(targets))]
        cases.append(_make_case(rng, seed, index, task, target, **options))
    return cases


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{value!r} is not a valid {name}. Valid values are: {list(allowed)}")


def _make_case(
    rng: np.random.Generator,
    seed: int,
    index: int,
    task: str,
    target: str,
    *,
    size: int,
    finding_prob: float,
    marker_prob: float,
    distractor_prob: float,
    laterality_prob: float,
    text_prob: float,
    answer_rule: str,
) -> PhantomCase:
    marker = bool(rng.random() < marker_prob)
    has_target = task == "locate" or bool(rng.random() < finding_prob)
    zones = [(side, level) for side in SIDES for level in LEVELS]
    order = rng.permutation(len(zones))
    objects: list[PhantomObject] = []
    if has_target:
        objects.append(_place_object(rng, target, *zones[order[0]], size))
    others = [kind for kind in KINDS if kind != target]
    n_distractors = int(rng.random() < distractor_prob) + int(rng.random() < distractor_prob / 2)
    free_zones = [zones[i] for i in order[1:]]
    for _ in range(n_distractors):
        kind = others[rng.integers(len(others))]
        for _attempt in range(20):  # distractors keep clear of other objects' cells
            zone = free_zones[rng.integers(len(free_zones))]
            candidate = _place_object(rng, kind, *zone, size)
            if not any(_near(candidate.box, obj.box, 0.06 * size) for obj in objects):
                objects.append(candidate)
                free_zones.remove(zone)
                break
    overlays = _draw_overlays(rng, size, marker, laterality_prob, text_prob)
    scene = Scene(size, int(rng.integers(2**31)), tuple(objects), overlays)

    template = QUESTIONS[task][rng.integers(len(QUESTIONS[task]))]
    question = template.format(kind=target)
    asked = objects[0] if has_target else None
    if task == "locate":
        answer = asked.site
    elif answer_rule == "marker":
        answer = "yes" if marker else "no"
    else:
        answer = "yes" if has_target else "no"
    marker_box = next((o.box for o in overlays if o.kind == "tag"), None)
    return PhantomCase(
        image=render(scene),
        question=question,
        answer=answer,
        lesion_box=asked.box if asked else None,
        objects=scene.objects,
        task=task,
        target=target,
        site=asked.site if asked else None,
        marker=marker,
        marker_box=marker_box,
        scene=scene,
        seed=seed,
        index=index,
    )


def _place_object(rng: np.random.Generator, kind: str, side: str, level: str, size: int) -> PhantomObject:
    """An object whose centre lies inside the zone (with a margin), so its site label is unambiguous."""
    x_lo, x_hi = _SIDE_X[side]
    y_lo, y_hi = _LEVEL_Y[LEVELS.index(level)], _LEVEL_Y[LEVELS.index(level) + 1]
    m = _ZONE_MARGIN
    cx = rng.uniform(x_lo + m, x_hi - m) * size
    cy = rng.uniform(y_lo + m, y_hi - m) * size
    radius = {"nodule": (0.06, 0.08), "device": (0.065, 0.085), "catheter": (0.13, 0.17)}[kind]
    obj_size = rng.uniform(*radius) * size
    angle = rng.uniform(-np.pi / 3, np.pi / 3)
    probe = PhantomObject(kind, (cx, cy), obj_size, angle, side, level, (0, 0, 0, 0))
    return dataclasses.replace(probe, box=_mask_box(_object_layer(probe, size) > 0))


def _object_layer(obj: PhantomObject, size: int) -> np.ndarray:
    """Additive brightness of one object, [size, size] float32, zero outside its shape."""
    stroke = 0.02 * size
    reach = obj.size + 2 * stroke + 2  # the shape lies within this distance of its centre
    x0, x1 = (int(np.clip(obj.center[0] + d, 0, size)) for d in (-reach, reach))
    y0, y1 = (int(np.clip(obj.center[1] + d, 0, size)) for d in (-reach, reach))
    ys, xs = _pixel_centres(size)
    dx, dy = xs[y0:y1, x0:x1] - obj.center[0], ys[y0:y1, x0:x1] - obj.center[1]
    if obj.kind == "nodule":
        dist = np.hypot(dx, dy) / obj.size
        window = np.where(dist < 1.0, 0.50 * (1.0 - 0.5 * dist**2), 0.0)
    elif obj.kind == "device":
        window = np.where(np.abs(np.hypot(dx, dy) - obj.size) < stroke, 0.55, 0.0)
    else:  # catheter: a segment through the centre, `angle` from vertical
        ux, uy = np.sin(obj.angle), np.cos(obj.angle)
        along, across = dx * ux + dy * uy, np.abs(-dx * uy + dy * ux)
        window = np.where((np.abs(along) < obj.size) & (across < stroke * 0.9), 0.45, 0.0)
    layer = np.zeros((size, size), dtype=np.float32)
    layer[y0:y1, x0:x1] = window
    return layer


def _near(a: Box, b: Box, gap: float) -> bool:
    """Whether boxes a and b come closer than `gap` pixels (or overlap)."""
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _mask_box(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _draw_overlays(
    rng: np.random.Generator, size: int, marker: bool, laterality_prob: float, text_prob: float
) -> tuple[Overlay, ...]:
    """Corner overlays in distinct corners: tag, laterality letter (upper corners), text (lower)."""
    corners = list(rng.permutation(4))  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    pad = int(0.04 * size)
    overlays = []
    if marker:
        corner = corners.pop(0)
        side = int(0.085 * size)
        x = pad if corner in (0, 2) else size - pad - side
        y = pad if corner in (0, 1) else size - pad - side
        overlays.append(Overlay("tag", "", (x, y), (x, y, x + side, y + side)))
    if rng.random() < laterality_prob:
        corner = next((c for c in corners if c in (0, 1)), corners[0])
        corners.remove(corner)
        letter = "LR"[rng.integers(2)]
        w, h = int(0.075 * size), int(0.1 * size)
        x = pad if corner in (0, 2) else size - pad - w
        y = pad if corner in (0, 1) else size - pad - h
        overlay = Overlay("laterality", letter, (x, y), (0, 0, 0, 0))
        overlays.append(dataclasses.replace(overlay, box=_mask_box(_overlay_pixels(overlay, size) > 0)))
    if rng.random() < text_prob:
        corner = next((c for c in corners if c in (2, 3)), corners[0])
        text = CORNER_TEXTS[rng.integers(len(CORNER_TEXTS))]
        origin = (pad if corner in (0, 2) else size // 2 + pad, pad if corner in (0, 1) else size - 3 * pad)
        overlay = Overlay("text", text, origin, (0, 0, 0, 0))
        overlays.append(dataclasses.replace(overlay, box=_mask_box(_overlay_pixels(overlay, size) > 0)))
    return tuple(overlays)


def _overlay_pixels(overlay: Overlay, size: int) -> np.ndarray:
    """Brightness (0..1) of a burned-in overlay, [size, size] float32; burned-in items replace pixels."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    x, y = overlay.origin
    if overlay.kind == "tag":
        x0, y0, x1, y1 = overlay.box
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=240)
    elif overlay.kind == "laterality":
        w, h, s = int(0.075 * size), int(0.1 * size), max(2, int(0.02 * size))
        draw.line((x + s // 2, y, x + s // 2, y + h), fill=230, width=s)  # the letter's stem
        if overlay.text == "L":
            draw.line((x, y + h - s // 2, x + w, y + h - s // 2), fill=230, width=s)
        else:  # R: stem, bowl and leg
            draw.rectangle((x, y, x + w, y + h // 2), outline=230, width=s)
            draw.line((x + s, y + h // 2, x + w, y + h), fill=230, width=s)
    else:
        draw.text((x, y), overlay.text, fill=200, font=_font(max(8, int(0.055 * size))))
    return np.asarray(canvas, dtype=np.float32) / 255.0


@lru_cache(maxsize=4)
def _font(pixels: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=pixels)


def render(scene: Scene) -> Image.Image:
    """Render a scene to an RGB PIL image of `scene.size`² (a pure function of the scene)."""
    pixels = _background(scene.size, scene.texture_seed)
    for obj in scene.objects:
        pixels = pixels + _object_layer(obj, scene.size)
    for overlay in scene.overlays:
        layer = _overlay_pixels(overlay, scene.size)
        pixels = np.where(layer > 0, layer, pixels)
    gray = (np.clip(pixels, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


@lru_cache(maxsize=2)
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (ys, xs), each [size, size] float32."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return ys, xs


@lru_cache(maxsize=2)
def _anatomy(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed anatomy: brightness without texture, and the lung mask, each [size, size]."""
    ys, xs = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 < 1.0

    body = ellipse(0.5, 0.56, 0.47, 0.52)
    lungs = ellipse(0.30, 0.50, 0.17, 0.37) | ellipse(0.70, 0.50, 0.17, 0.37)
    mediastinum = (np.abs(xs - 0.5) < 0.065) & (ys > 0.08)
    heart = ellipse(0.55, 0.74, 0.13, 0.11)
    base = np.where(body, 0.42, 0.04) - 0.26 * lungs + 0.25 * mediastinum + 0.16 * heart * lungs
    return base.astype(np.float32), lungs


def _background(size: int, texture_seed: int) -> np.ndarray:
    """Anatomy plus patient-specific texture: curved ribs in the lungs and smooth + fine noise."""
    rng = np.random.default_rng(texture_seed)
    base, lungs = _anatomy(size)
    ys, xs = (c / size for c in _pixel_centres(size))
    period, phase, bend = rng.uniform(0.085, 0.11), rng.uniform(0, 1), rng.uniform(0.6, 1.2)
    arc = ys + bend * (np.abs(xs - 0.5) - 0.25) ** 2
    ribs = (np.sin(2 * np.pi * (arc / period + phase)) > 0.55) * lungs * 0.07
    coarse = rng.normal(0.0, 1.0, (size // 16 + 1, size // 16 + 1)).astype(np.float32)
    smooth = np.asarray(
        Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32
    )
    fine = rng.normal(0.0, 0.025, (size, size)).astype(np.float32)
    return base + ribs + 0.03 * smooth + fine

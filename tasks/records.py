"""Records of the answers and tokens tables from an `Explanation` and its manifest item (pure functions).

They are `storage.records`' typed records (docs/outputs.md documents their fields); storage turns them
into Parquet rows when it writes a part. Shares are of the positive part of the raw relevance (no other
normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from explainer.explanation import Explanation
from explainer.targets import Target
from storage import REGION_NAMES, AnswerRecord, ManifestItem, TokenRecord
from vocabulary.map_stats import normalised_entropy, peak_cell, pointing_hit, top_fraction_mass
from vocabulary.names import ANSWER, TOKEN, WORD
from vocabulary.regions import Grid, box_region, cell_means, mass_share, mass_shares, standard_regions

TEMPLATE_ROLES = ("special", "template")  # prompt tokens the chat template adds, not the user's text


class RoiError(ValueError):
    """The item's ROI does not fit its image (box outside the image, mask of another size)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


@lru_cache(maxsize=8)
def table_regions(grid: Grid) -> dict[str, np.ndarray]:
    """The standard regions of a grid, in the order of the tables' `region_shares` struct."""
    regions = standard_regions(grid)
    if tuple(regions) != REGION_NAMES:  # the struct's field order is the table's contract
        raise ValueError(f"standard_regions gives {tuple(regions)}, the tokens table expects {REGION_NAMES}")
    return regions


def check_roi_box(item: ManifestItem, image_size: tuple[int, int]) -> None:
    """Raise `RoiError` unless the item's `roi_box` lies inside the (width, height) image."""
    if item.roi_box is None:
        return
    width, height = image_size
    x0, y0, x1, y1 = item.roi_box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise RoiError(
            "InvalidRoiBox",
            f"roi_box {list(item.roi_box)} does not fit the {width}x{height} image; boxes are "
            "x0,y0,x1,y1 in original pixels with 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height",
        )


def mask_weights(mask: Image.Image, image_size: tuple[int, int], grid: Grid) -> np.ndarray:
    """[rows, cols] fraction of each grid cell covered by the mask's non-zero pixels.

    The processor resizes the image plainly onto the grid, so a cell covers the same fraction of the
    mask; cells whose edges cut through pixels count those pixels by the covered fraction. Memory is
    a few bytes per pixel (`vocabulary.regions.cell_means`): about 150 MiB for a 40,000,000 × 1 mask on a 16×16 grid,
    where the [cells, width] overlap matrices this replaced needed ~20 GB.
    """
    if mask.size != tuple(image_size):
        raise RoiError(
            "InvalidRoiMask",
            f"roi_mask is {mask.size[0]}x{mask.size[1]} but the image is {image_size[0]}x{image_size[1]}; "
            "masks must have the image's size",
        )
    binary = np.asarray(mask.convert("L")) > 0  # [height, width]
    rows, cols = grid
    height, width = binary.shape
    if height * cols <= rows * width:  # reduce first along the axis that leaves the smaller array
        weights = cell_means(cell_means(binary, cols, axis=1), rows, axis=0)
    else:
        weights = cell_means(cell_means(binary, rows, axis=0), cols, axis=1)
    return np.clip(weights, 0.0, 1.0).astype(np.float32)


def roi_weights(
    item: ManifestItem, image_size: tuple[int, int], grid: Grid, mask: Image.Image | None = None
) -> np.ndarray | None:
    """Cell weights of the item's ROI (box or mask) on the token grid, or None without ROI."""
    if item.roi_box is not None:
        check_roi_box(item, image_size)
        return box_region(item.roi_box, image_size, grid)
    if mask is not None:
        return mask_weights(mask, image_size, grid)
    return None


def _positive_sum(values: np.ndarray) -> float:
    return float(np.clip(values, 0, None).sum())


@dataclass(frozen=True)
class TargetText:
    """What names one target in the tables: its text, its answer word, and for a token its id and position."""

    target_text: str
    word: str | None = None
    token_id: int | None = None
    token_position: int | None = None


def target_text(target: Target, explanation: Explanation) -> TargetText:
    """The text, word, token id and position of one target."""
    if target.kind == ANSWER:
        return TargetText(explanation.answer)
    if target.kind == WORD:
        return TargetText(target.label, target.label)
    token = next(token for token in explanation.tokens if token.position == target.positions[0])
    return TargetText(token.text, token.word, token.id, token.position)


@dataclass(frozen=True)
class ImageRole:
    """Where one image of an item's prompt came from: its manifest URI (`group`), the label written
    before it, and for a volume's slice its position in the ordered volume and the cells inside the
    body ([rows, cols] fractions; None where not computed)."""

    group: int = 0
    label: str | None = None
    slice_index: int | None = None
    n_slices: int | None = None
    body: np.ndarray | None = None


def body_fractions(image: Image.Image, grid: Grid, level: float = 0.1) -> np.ndarray:
    """[rows, cols] fraction of each cell inside the body of a windowed slice: pixels brighter than
    `level` of full scale (air is black under the CT windows and the percentile window alike)."""
    grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return cell_means(cell_means(grey > level, grid[1], axis=1), grid[0], axis=0)


def _study_shares(explanation: Explanation) -> np.ndarray:
    """[n_targets, n_images]: each image's share of the positive image relevance of the whole prompt
    (zeros for a target with none)."""
    masses = np.stack(
        [np.clip(maps, 0, None).reshape(len(maps), -1).sum(axis=1) for maps in explanation.image_maps], axis=1
    )
    totals = masses.sum(axis=1, keepdims=True)
    return np.divide(masses, totals, out=np.zeros_like(masses), where=totals > 0)


def token_records(
    item_id: str,
    explanation: Explanation,
    *,
    roi: np.ndarray | None = None,
    roles: list[ImageRole] | None = None,
) -> list[TokenRecord]:
    """One tokens record per (target, image). `roi` (cell weights) applies to image 0, the item's first
    image; `roles` (one per image) say where each image came from (default: one plain image each).

    `explain_seconds` is the item's explanation time split evenly over its targets: they share one
    forward pass and batched gradients, so no target has a time of its own.
    """
    n_targets = len(explanation.targets)
    per_target_seconds = explanation.timings.get("explain_seconds", 0.0) / max(n_targets, 1)
    roles = roles or [ImageRole(group=index) for index in range(len(explanation.image_maps))]
    shares = _study_shares(explanation) if explanation.image_maps else None
    records = []
    for image_index, image_maps in enumerate(explanation.image_maps):  # [n_targets, rows, cols]
        grid = tuple(image_maps.shape[1:])
        regions = table_regions(grid)
        role = roles[image_index]
        outside = 1.0 - role.body if role.body is not None else None  # cell fractions outside the body
        for target_index, target in enumerate(explanation.targets):
            cell_map = image_maps[target_index]
            text_relevance = explanation.text_relevance[target_index]
            image_mass, text_mass = _positive_sum(cell_map), _positive_sum(text_relevance)
            peak_row, peak_col = peak_cell(cell_map)
            roi_here = roi if image_index == 0 else None
            named = target_text(target, explanation)
            records.append(
                TokenRecord(
                    item_id=item_id,
                    image_index=image_index,
                    image_group=role.group,
                    image_label=role.label,
                    slice_index=role.slice_index,
                    n_slices=role.n_slices,
                    study_share=float(shares[target_index, image_index]),
                    outside_body_share=mass_share(cell_map, outside) if outside is not None else None,
                    outside_body_cells=float(outside.mean()) if outside is not None else None,
                    target_kind=target.kind,
                    target_text=named.target_text,
                    word=named.word,
                    token_id=named.token_id,
                    token_position=named.token_position,
                    method=explanation.method,
                    grid_h=grid[0],
                    grid_w=grid[1],
                    image_relevance=cell_map.ravel().astype(np.float32),
                    text_relevance=np.asarray(text_relevance, dtype=np.float32),
                    image_mass=image_mass,
                    text_mass=text_mass,
                    image_share=image_mass / (image_mass + text_mass) if image_mass + text_mass > 0 else None,
                    region_shares=mass_shares(cell_map, regions),
                    entropy=normalised_entropy(cell_map),
                    top10_mass=top_fraction_mass(cell_map),
                    peak_row=peak_row,
                    peak_col=peak_col,
                    roi_share=mass_share(cell_map, roi_here) if roi_here is not None else None,
                    roi_hit=pointing_hit(cell_map, roi_here) if roi_here is not None else None,
                    explain_seconds=per_target_seconds,
                )
            )
    return records


def answer_record(
    item: ManifestItem,
    *,
    model_id: str,
    model_revision: str | None,
    method: str,
    image_size: tuple[int, int] | None = None,
    explanation: Explanation | None = None,
) -> AnswerRecord:
    """The answers record of an item: `status` "ok" with an explanation, "error" without one."""
    answered = (
        {
            "answer": explanation.answer,
            "n_targets": len(explanation.targets),
            "n_images": len(explanation.images),
            "answer_source": "given" if item.answer is not None else "generated",
            "prompt_tokens": list(explanation.prompt_tokens),
            "prompt_token_special": [role in TEMPLATE_ROLES for role in explanation.prompt_token_roles],
            "generate_seconds": explanation.timings.get("generate_seconds"),
            "explain_seconds": explanation.timings.get("explain_seconds"),
        }
        if explanation is not None
        else {}
    )
    return AnswerRecord(
        item_id=item.item_id,
        row_number=item.row_number,
        image_uri=item.image_uri,
        image_uris=list(item.image_uris),
        image_labels=list(item.image_labels) if item.image_labels is not None else None,
        question=item.question,
        status="ok" if explanation is not None else "error",
        image_width=image_size[0] if image_size else None,
        image_height=image_size[1] if image_size else None,
        roi_box=list(item.roi_box) if item.roi_box is not None else None,
        model_id=model_id,
        model_revision=model_revision,
        method=method,
        metadata=dict(item.metadata),
        **answered,
    )


def overlay_targets(
    explanation: Explanation, policy: str, findings: tuple[str, ...]
) -> list[tuple[int, str]]:
    """(target index, overlay name) of the targets that get a PNG under an overlays policy.

    Names: `answer`, `word-<word>`, `token-<k>-<text>` (k = the token's index in the answer).
    """
    if policy == "none":
        return []
    wanted = set(findings)
    token_index = {token.position: k for k, token in enumerate(explanation.tokens)}
    chosen = []
    for index, target in enumerate(explanation.targets):
        if target.kind == ANSWER:
            chosen.append((index, ANSWER))
        elif target.kind == WORD and (
            policy == "all" or (policy == "findings" and target.label.lower() in wanted)
        ):
            chosen.append((index, f"{WORD}-{target.label}"))
        elif target.kind == TOKEN and policy == "all":
            k = token_index[target.positions[0]]
            chosen.append((index, f"{TOKEN}-{k:03d}-{explanation.tokens[k].text.strip()}"))
    return chosen


VOLUME_OVERLAY_SLICES = 3  # a volume's overlays per target: its most relevant slices, and a profile strip


def overlay_images(
    explanation: Explanation, roles: list[ImageRole], target_index: int
) -> list[tuple[int, str]]:
    """(image index, name suffix) of the images that get an overlay for one target.

    Plain images each get one (no suffix for the first image, `-image<k>` for image k). A volume's
    slices get one each for its `VOLUME_OVERLAY_SLICES` slices with the most relevance, named by
    their position in the volume (`-slice<n>`, 1-based; `-volume<g>-slice<n>` when the item has
    several volumes or images), so 85 slices do not make 85 pictures.
    """
    shares = _study_shares(explanation)[target_index]
    several = len({role.group for role in roles}) > 1
    chosen, volumes = [], {}
    for index, role in enumerate(roles):
        if role.slice_index is None:
            chosen.append((index, "" if index == 0 else f"-image{index}"))
        else:
            volumes.setdefault(role.group, []).append(index)
    for group, indices in volumes.items():
        top = sorted(indices, key=lambda index: -shares[index])[:VOLUME_OVERLAY_SLICES]
        prefix = f"-volume{group}" if several else ""
        chosen += [(index, f"{prefix}-slice{roles[index].slice_index + 1:03d}") for index in sorted(top)]
    return chosen


def profile_strips(
    explanation: Explanation, roles: list[ImageRole], target_index: int
) -> list[tuple[str, Image.Image]]:
    """(name suffix, picture) per volume: the share of the target's relevance on each sampled slice, a
    bar per slice in volume order (`-profile`, or `-volume<g>-profile`)."""
    shares = _study_shares(explanation)[target_index]
    several = len({role.group for role in roles}) > 1
    groups: dict[int, list[int]] = {}
    for index, role in enumerate(roles):
        if role.slice_index is not None:
            groups.setdefault(role.group, []).append(index)
    strips = []
    for group, indices in groups.items():
        values = np.array([shares[index] for index in indices])
        bar, height = 6, 64
        picture = Image.new("RGB", (bar * len(values) + 2, height + 2), "white")
        pixels = np.asarray(picture).copy()
        top = values.max() if values.max() > 0 else 1.0
        for position, value in enumerate(values):
            filled = int(value / top * height + 0.5)
            x0 = 1 + position * bar
            pixels[height + 1 - filled : height + 1, x0 : x0 + bar - 1] = (61, 122, 184)
        strips.append((f"-volume{group}-profile" if several else "-profile", Image.fromarray(pixels)))
    return strips

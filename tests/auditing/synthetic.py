"""Hand-made answers/tokens/faithfulness rows whose maps sit where the test says (known answers)."""

from __future__ import annotations

import numpy as np

from vocabulary.map_stats import normalised_entropy, peak_cell, pointing_hit, spearman, top_fraction_mass
from vocabulary.regions import box_region, mass_shares, standard_regions

GRID = (8, 8)
IMAGE_SIZE = (256, 256)
ROI_BOX = (64.0, 64.0, 128.0, 160.0)  # image-left lung (patient right): rows 2-4, cols 2-3


def lung_map(rng: np.random.Generator) -> np.ndarray:
    cell_map = np.zeros(GRID, dtype=np.float32)
    cell_map[2:5, 2:4] = rng.uniform(0.5, 1.0, size=(3, 2))  # inside the ROI
    cell_map[2:6, 5] = rng.uniform(0.0, 0.3, size=4)
    return cell_map


def border_map(rng: np.random.Generator) -> np.ndarray:
    cell_map = np.zeros(GRID, dtype=np.float32)
    cell_map[0, :] = rng.uniform(0.5, 1.0, size=GRID[1])  # burned-in text along the top edge
    cell_map[:, 0] += rng.uniform(0.1, 0.3, size=GRID[0])
    return cell_map


def token_row(
    item_id: str, cell_map: np.ndarray, *, kind: str = "answer", word: str | None = None, method="chefer"
):
    roi = box_region(ROI_BOX, IMAGE_SIZE, GRID)
    return {
        "item_id": item_id,
        "image_index": 0,
        "target_kind": kind,
        "target_text": word or "answer",
        "word": word,
        "token_id": None,
        "token_position": None,
        "method": method,
        "grid_h": GRID[0],
        "grid_w": GRID[1],
        "image_relevance": cell_map.ravel(),
        "text_relevance": [0.1, 0.2],
        "image_mass": float(cell_map.sum()),
        "text_mass": 0.3,
        "image_share": float(cell_map.sum() / (cell_map.sum() + 0.3)),
        "region_shares": mass_shares(cell_map, standard_regions(GRID)),
        "entropy": normalised_entropy(cell_map),
        "top10_mass": top_fraction_mass(cell_map),
        "peak_row": peak_cell(cell_map)[0],
        "peak_col": peak_cell(cell_map)[1],
        "roi_share": mass_shares(cell_map, {"roi": roi})["roi"],
        "roi_hit": pointing_hit(cell_map, roi),
        "explain_seconds": 0.01,
    }


def answer_row(item_id: str, site: str, answer: str = "nodule right upper"):
    return {
        "item_id": item_id,
        "row_number": int(item_id.split("-")[-1]),
        "image_uri": f"images/{item_id}.png",
        "question": "Where is the nodule?",
        "answer": answer,
        "status": "ok",
        "n_targets": 2,
        "prompt_tokens": ["<bos>", "Where"],
        "prompt_token_special": [True, False],
        "image_width": IMAGE_SIZE[0],
        "image_height": IMAGE_SIZE[1],
        "roi_box": list(ROI_BOX),
        "model_id": "synthetic",
        "model_revision": None,
        "method": "chefer",
        "generate_seconds": 0.1,
        "explain_seconds": 0.1,
        "metadata": {"site": site, "scanner": "A" if int(item_id.split("-")[-1]) % 2 else "B"},
    }


def synthetic_run(per_site: int = 20, seed: int = 0, border_site: str = "east"):
    """Sites north and south look at the lung ROI; `border_site` looks at the top border."""
    rng = np.random.default_rng(seed)
    answers, tokens = [], []
    for site in ("north", "south", "east"):
        for index in range(per_site):
            item_id = f"{site}-{index}"
            cell_map = border_map(rng) if site == border_site else lung_map(rng)
            answers.append(answer_row(item_id, site))
            tokens.append(token_row(item_id, cell_map))
            tokens.append(token_row(item_id, cell_map * 0.5, kind="word", word="Nodule"))
            tokens.append(token_row(item_id, cell_map, kind="token", word="nodule"))
    return answers, tokens


def reference_map(rng: np.random.Generator) -> np.ndarray:
    """A perturbation reference's drops (logits): evidence in the lung ROI, noise of ±0.01 elsewhere."""
    cell_map = rng.normal(0.0, 0.01, size=GRID).astype(np.float32)
    cell_map[2:5, 2:4] += rng.uniform(0.8, 1.6, size=(3, 2)).astype(np.float32)
    return cell_map


def faithfulness_rows(tokens: list[dict], seed: int = 0) -> list[dict]:
    """Faithfulness-sample rows for the answer targets: both references find the evidence in the lung
    ROI; chefer's map is the run's map, so it agrees with them except at site east (the border)."""
    rng = np.random.default_rng(seed)
    rows = []
    keep = ("item_id", "image_index", "target_kind", "target_text", "word", "grid_h", "grid_w")
    for token in tokens:
        if token["target_kind"] != "answer":
            continue
        evidence = reference_map(rng)
        chefer = np.asarray(token["image_relevance"], dtype=np.float32).reshape(GRID)
        for method, cell_map in (("chefer", chefer), ("occlusion", evidence), ("pixel_occlusion", evidence)):
            rows.append(
                {
                    **{key: token[key] for key in keep},
                    "image_relevance": cell_map.ravel(),
                    "region_shares": mass_shares(cell_map, standard_regions(GRID)),
                    "method": method,
                    "spearman_vs_occlusion": spearman(cell_map, evidence),
                    "top_cell_agrees": peak_cell(cell_map) == peak_cell(evidence),
                    "morf_auc": -2.0,
                    "lerf_auc": -1.0,
                    "auc_gap": 1.0,
                    "randomization_spearman": 0.1 if method == "chefer" else None,
                    "seconds": 0.1,
                }
            )
    return rows


def study_item(item_id: str, site: str, shares: list[float], *, labels=None, n_slices=None, outside=None):
    """An item with one image per share (answer target): image k's map is scaled to carry shares[k]
    of the image relevance; `n_slices` makes them slices 0, 2, 4, ... of a volume."""
    rng = np.random.default_rng(len(item_id))
    base = lung_map(rng)
    tokens = []
    for index, share in enumerate(shares):
        cell_map = base / base.sum() * share if share > 0 else np.zeros(GRID, dtype=np.float32)
        row = token_row(item_id, cell_map) | {
            "image_index": index,
            "image_group": 0 if n_slices else index,
            "image_label": labels[index]
            if labels
            else (f"slice {2 * index + 1} of {n_slices}" if n_slices else None),
            "slice_index": 2 * index if n_slices else None,
            "n_slices": n_slices,
            "study_share": share,
            "outside_body_share": outside[index] if outside else None,
        }
        tokens.append(row)
    return answer_row(item_id, site), tokens

"""Hand-made runs for the report and dashboard tests: synthetic maps with known answers (tests/audit),
phantom images on disk, overlays for some items, run.json, and the aggregate tables."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from auditing import AggregateConfig, StatsConfig, aggregate_run
from auditing.report.figures import heatmap, png_bytes
from storage import ObjectStore, open_store, overlay_key, write_part, write_run
from tests.auditing.synthetic import GRID, faithfulness_rows, synthetic_run

CONFIG = AggregateConfig(group_by=("site",), stats=StatsConfig(resamples=200))
OVERLAY_ITEMS = ("east-0", "east-1", "north-0")
PROMPT_PIECES = (
    "<bos>",
    "<start_of_turn>",
    "user",
    "\n",
    "Where",
    "▁is",
    "▁the",
    "▁nod",
    "ule",
    "?",
    "<end_of_turn>",
)
PROMPT_SPECIAL = (True, True, True, True, False, False, False, False, False, False, True)
# 'nodule' (0.3 + 0.25) is the question's most relevant word; <bos> carries more but is no question word
PROMPT_RELEVANCE = (0.9, 0.0, 0.0, 0.0, 0.2, 0.05, 0.02, 0.3, 0.25, -0.1, 0.4)


def phantom_png(seed: int, *, marker: bool = False, size: int = 128) -> bytes:
    """A chest-radiograph-like phantom: two dark lung fields on gray; `marker` burns an 'R' into the top edge."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size), 150, dtype=np.float32) + rng.normal(0, 6, (size, size))
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="L")
    draw = ImageDraw.Draw(image)
    draw.ellipse((size * 0.12, size * 0.15, size * 0.45, size * 0.85), fill=60)
    draw.ellipse((size * 0.55, size * 0.15, size * 0.88, size * 0.85), fill=60)
    if marker:
        draw.text((size * 0.45, 2), "R", fill=255)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_synthetic_run(
    out: str | Path,
    run_id: str,
    *,
    images: Path | None = None,
    border_site: str = "east",
    seed: int = 0,
    started_at: str = "2024-06-01T12:00:00+00:00",
    faithfulness: bool = False,
    overlays: tuple[str, ...] = OVERLAY_ITEMS,
    answer_for: Any = None,
    run_json: bool = True,
    per_site: int = 20,
    run_fields: dict[str, Any] | None = None,
):
    """Write one synthetic run's parts (and images, overlays, run.json) under `out`; return its Aggregate.

    `answer_for(row) -> str` changes answers; the maps stay those of `synthetic_run`. `run_fields`
    replace fields of run.json.
    """
    store: ObjectStore = open_store(str(out))
    answers, tokens = synthetic_run(per_site=per_site, seed=seed, border_site=border_site)
    for row in answers:  # Gemma's pieces of the chat template and the question "Where is the nodule?"
        row["prompt_tokens"], row["prompt_token_special"] = list(PROMPT_PIECES), list(PROMPT_SPECIAL)
    for row in tokens:
        row["text_relevance"] = list(PROMPT_RELEVANCE)
    for row in answers:
        site = row["metadata"]["site"]
        if images is not None:
            path = images / f"{row['item_id']}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(phantom_png(row["row_number"], marker=site == border_site))
            row["image_uri"] = str(path)
        if answer_for is not None:
            row["answer"] = answer_for(row)
    write_part(store, "tokens", run_id, 0, tokens)
    write_part(store, "answers", run_id, 0, answers)
    if faithfulness:
        write_part(store, "faithfulness", run_id, 0, faithfulness_rows(tokens))
    maps = {(t["item_id"], t["target_kind"]): np.asarray(t["image_relevance"]).reshape(GRID) for t in tokens}
    for item_id in overlays:
        image = Image.open(io.BytesIO(phantom_png(int(item_id.split("-")[-1]), marker=True)))
        for target, kind in (("answer", "answer"), ("word-nodule", "word")):
            store.write_bytes(
                overlay_key(run_id, item_id, target), png_bytes(heatmap(maps[item_id, kind], image))
            )
    if run_json:
        write_run(
            store,
            run_id,
            {
                "run_id": run_id,
                "status": "completed",
                "model_id": "synthetic-phantom",
                "model_revision": "abc123",
                # the images lie outside the manifest's folder: the run allowed them, as the report must
                "config": {"method": "chefer", "allowed_inputs": [str(images)] if images else []},
                "manifest_uri": f"{out}/manifest.csv",  # relative image URIs resolve against its folder
                "counts": {
                    "items": len(answers),
                    "ok": len(answers),
                    "failed": 0,
                    "errors": 0,
                    "targets": len(tokens),
                },
                "timings": {"total_seconds": 12.5, "explain_seconds": 8.0, "items_per_second": 4.8},
                "started_at": started_at,
                "finished_at": started_at,
                "code_version": "0.1.0",
                **(run_fields or {}),
            },
        )
    return aggregate_run(str(out), run_id, CONFIG)

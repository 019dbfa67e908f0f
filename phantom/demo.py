"""The demo data set: bundled phantom cases written as PNGs plus a CSV manifest with cohort columns."""

from __future__ import annotations

import csv
from pathlib import Path

from phantom.cases import sample

DEMO_COLUMNS = ("item_id", "image", "question", "roi_box", "site", "marker", "finding", "expected_answer")
DEMO_GROUPINGS = ["site"]  # what an auditor knows; `marker` is the ground truth the demo checks against


def write_demo_dataset(folder: str | Path, n: int = 24, seed: int = 0) -> Path:
    """Write `n` phantom presence cases ("Is there a nodule?") as PNGs and `manifest.csv`.

    The cohort is mixed on purpose: half the images carry a burned-in corner tag (`marker`, as one
    site's equipment might stamp its images, `site` "north"), and the nodule is present in half,
    independently. An honest model answers from the lungs; a model that learned the tag answers
    "yes" wherever the tag is. `roi_box` is the nodule's box when there is one.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, case in enumerate(sample(n, seed, tasks=("presence",), marker_prob=0.5, finding_prob=0.5)):
        item_id = f"phantom-{seed:03d}-{index:04d}"
        image = f"images/{item_id}.png"
        case.image.save(folder / image, format="PNG")
        rows.append(
            {
                "item_id": item_id,
                "image": image,
                "question": case.question,
                "roi_box": ",".join(str(v) for v in case.lesion_box) if case.lesion_box else "",
                "site": "north" if case.marker else "south",
                "marker": "yes" if case.marker else "no",
                "finding": "yes" if case.lesion_box else "no",
                "expected_answer": case.answer,
            }
        )
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=DEMO_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest

"""The demo data set: bundled phantom cases written as PNGs plus a CSV manifest with cohort columns."""

from __future__ import annotations

import csv
from pathlib import Path

DEMO_COLUMNS = (
    "item_id",
    "image",
    "question",
    "roi_box",
    "site",
    "marker",
    "task",
    "target",
    "expected_answer",
    "lesion_zone",
)


class PhantomModelMissing(FileNotFoundError):
    """The bundled phantom model folder has not been built yet."""


def require_model_folder(path: str | Path) -> str:
    """`path` as a string if it holds a Hugging Face model (config.json), else `PhantomModelMissing`."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise PhantomModelMissing(
            f"the phantom model is not built yet: {folder} has no config.json. Train it with "
            "`python -m explainer.phantom.train positive`, or pass --model with a local folder or hub id"
        )
    return str(folder)


def write_demo_dataset(folder: str | Path, n: int = 24, seed: int = 0) -> Path:
    """Write `n` phantom cases (`explainer.phantom.sample(n, seed)`) as PNGs and `manifest.csv`.

    The manifest's `roi_box` is the asked object's box (empty when absent); `site` is a cohort column:
    "north" burns a corner tag into its images (`marker`), as one hospital's equipment might.
    """
    from explainer.phantom import sample

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, case in enumerate(sample(n, seed)):
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
                "task": case.task,
                "target": case.target,
                "expected_answer": case.answer,
                "lesion_zone": case.site or "",
            }
        )
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=DEMO_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest

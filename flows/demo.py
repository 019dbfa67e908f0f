"""The demo data set: bundled phantom cases written as PNGs plus a CSV manifest with cohort columns."""

from __future__ import annotations

import csv
from pathlib import Path

DEMO_COLUMNS = ("item_id", "image", "question", "roi_box", "site", "marker", "finding", "expected_answer")
DEMO_GROUPINGS = ["site"]  # what an auditor knows; `marker` is the ground truth the demo checks against


class PhantomModelMissing(FileNotFoundError):
    """The bundled phantom model folder has not been built yet."""


def require_model_folder(path: str | Path, recipe: str = "positive") -> str:
    """`path` as a string if it holds a Hugging Face model (config.json), else `PhantomModelMissing`."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise PhantomModelMissing(
            f"the phantom model is not built yet: {folder} has no config.json. Train it with "
            f"`python -m phantom.training.train {recipe}`, or pass --model with a local folder or hub id"
        )
    return str(folder)


def write_demo_dataset(folder: str | Path, n: int = 24, seed: int = 0) -> Path:
    """Write `n` phantom presence cases ("Is there a nodule?") as PNGs and `manifest.csv`.

    The cohort is mixed on purpose: half the images carry a burned-in corner tag (`marker`, as one
    site's equipment might stamp its images, `site` "north"), and the nodule is present in half,
    independently. An honest model answers from the lungs; a model that learned the tag answers
    "yes" wherever the tag is. `roi_box` is the nodule's box when there is one.
    """
    from phantom import sample

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


def demo_models() -> dict[str, str]:
    """The two models the demo audits: the honest phantom and the one that learned the corner tag."""
    from phantom import SHORTCUT_MODEL_PATH
    from tasks.config import default_model

    return {
        "honest": require_model_folder(default_model()),
        "shortcut": require_model_folder(SHORTCUT_MODEL_PATH, recipe="shortcut"),
    }


def behaviour(out: str, run_id: str) -> dict[str, float]:
    """How often the model says "yes": with the tag and no nodule, and with a nodule and no tag."""
    from auditing.load import expand_metadata
    from storage import read_table

    answers = expand_metadata(read_table(out, "answers", run_id=run_id).to_pandas())
    says_yes = answers["answer"].fillna("").str.lower().str.startswith("yes")
    tag_only = (answers["marker"] == "yes") & (answers["finding"] == "no")
    nodule_only = (answers["marker"] == "no") & (answers["finding"] == "yes")
    return {
        "correct": float(
            (answers["answer"].fillna("").str.lower() == answers["expected_answer"].str.lower()).mean()
        ),
        "yes_with_tag_only": float(says_yes[tag_only].mean()) if tag_only.any() else float("nan"),
        "yes_with_nodule_only": float(says_yes[nodule_only].mean()) if nodule_only.any() else float("nan"),
    }


def format_comparison(results: dict[str, dict]) -> str:
    """The demo's verdict per model: behaviour, the flags the audit raised, where the report is."""
    from storage import read_table

    lines = ["", "What the audit found:"]
    for name, result in results.items():
        stats = behaviour(result["out"], result["run_id"])
        flags = read_table(result["out"], "flags", run_id=result["run_id"]).to_pandas()
        cohort_flags = flags[flags["scope"] == "cohort"]
        lines.append(
            f"- {name} model: {stats['correct']:.0%} correct; says yes for {stats['yes_with_tag_only']:.0%} of "
            f"tagged images without a nodule and {stats['yes_with_nodule_only']:.0%} of untagged images with one"
        )
        if cohort_flags.empty:
            lines.append("    no cohort flags")
        for row in cohort_flags.itertuples(index=False):
            lines.append(
                f"    FLAG {row.rule} [{row.method}] {row.grouping}={row.cohort}, '{row.target_class}'"
            )
        lines.append(f"    report: {result.get('report', '(not built)')}")
    return "\n".join(lines)

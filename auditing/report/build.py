"""`build_report`: the static HTML audit report of one run, images beside it, readable offline.

```
<out>/report/run_id=<id>/index.html
<out>/report/run_id=<id>/img/*.png      cohort heatmaps, item thumbnails, copies of the item overlays
```

Every image the page shows is copied into `img/` (overlays as thumbnails), so the report folder is
self-contained: it can be zipped, mailed or opened from a download without broken links.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from PIL import Image

from auditing.report.data import ImageReader, RunNotFound, RunTables, cohort_members, load_run
from auditing.report.figures import (
    Bar,
    ImageSink,
    axis_limit,
    colour_scale,
    heatmap,
    mean_image,
    region_bars_svg,
)
from auditing.report.findings import findings, flag_rows, rule_rows, verdict_box
from auditing.report.gallery import gallery
from auditing.report.sections import (
    cohort_name,
    error_rows,
    pct,
    study_rows,
    summary_rows,
    timing_rows,
    trust_tables,
)
from auditing.report.strategies import strategy_sections
from storage import FlagRecord, join_key, open_store
from vocabulary.names import ANSWER, COHORT_SCOPE, REGION_LABELS

__all__ = ["RunNotFound", "build_report", "report_key"]

MAX_COHORTS = 16  # cohort sections ("all" and flagged cohorts come first)
MAX_MEAN_IMAGES = 32  # images averaged into a cohort's background, spread over its members
MAX_FINDING_CLASSES = 3  # finding words shown beside the whole answer


def report_key(run_id: str, name: str = "index.html") -> str:
    """Key of a report file under the output root: ``report/run_id=<id>/<name>``."""
    return join_key("report", f"run_id={run_id}", name)


def chosen_classes(tables: RunTables) -> list[str]:
    """'answer' and up to MAX_FINDING_CLASSES finding words: flagged ones first, then the most explained."""
    stats = tables.stats
    whole = stats[stats["grouping"] == "all"]
    flagged = {flag.target_class for flag in tables.flags if flag.target_class is not None}
    words = whole[whole["target_class"] != ANSWER]
    words = words.assign(flagged=words["target_class"].isin(flagged)).sort_values(
        ["flagged", "n_targets", "target_class"], ascending=[False, False, True]
    )
    head = ["answer"] if "answer" in set(stats["target_class"]) else []
    return head + list(words["target_class"].head(MAX_FINDING_CLASSES))


def chosen_cohorts(tables: RunTables) -> tuple[list[tuple[str, str]], int]:
    """(grouping, cohort) pairs to draw, the whole run first, flagged ones next; and how many were left out."""
    keys = list(dict.fromkeys(zip(tables.stats["grouping"], tables.stats["cohort"], strict=True)))
    flagged = {(flag.grouping, flag.cohort) for flag in cohort_flags(tables)}
    ordered = sorted(keys, key=lambda key: (key[0] != "all", key not in flagged))
    return ordered[:MAX_COHORTS], max(0, len(ordered) - MAX_COHORTS)


def region_bars(tables: RunTables, grouping: str, cohort: str, target: str) -> list[Bar]:
    """The report's regions of one cohort and target class, with the whole run's means as baselines."""
    regions = tables.regions
    rows = matching(regions, grouping, cohort, target).set_index("region")
    whole = regions[(regions["grouping"] == "all") & (regions["target_class"] == target)].set_index("region")
    bars = []
    for region, label in REGION_LABELS.items():
        if region not in rows.index:
            continue
        row = rows.loc[region]
        baseline = whole.loc[region, "mean"] if grouping != "all" and region in whole.index else None
        bars.append(Bar(label, row["mean"], row["ci_low"], row["ci_high"], baseline))
    return bars


def matching(frame: pd.DataFrame, grouping: str, cohort: str, target: str | None = None) -> pd.DataFrame:
    """Rows of a cohort table for one cohort, and one target class when given."""
    if frame.empty:
        return frame
    mask = (frame["grouping"] == grouping) & (frame["cohort"] == cohort)
    if target is not None:
        mask &= frame["target_class"] == target
    return frame[mask]


def cohort_flags(
    tables: RunTables, grouping: str | None = None, cohort: str | None = None, target: str | None = None
) -> list[FlagRecord]:
    """The run's cohort flags: all of them, or one cohort's, and one target class's when given."""
    return [
        flag
        for flag in tables.flags
        if flag.scope == COHORT_SCOPE
        and (grouping is None or (flag.grouping, flag.cohort) == (grouping, cohort))
        and (target is None or flag.target_class == target)
    ]


@dataclass(frozen=True)
class Scales:
    """One scale per figure family: the bar charts' axis end, and per target class the share of
    relevance per cell at which the cohort heatmaps' colour saturates."""

    bar_axis: float
    heat_max: dict[str, float]


def family_scales(tables: RunTables, cohorts: list[tuple[str, str]], classes: list[str]) -> Scales:
    """The scales shared by every cohort panel drawn: bars of all cohorts and targets, heatmaps per target."""
    bars, heat_max = [], {}
    for target in classes:
        rows = pd.concat([matching(tables.stats, grouping, cohort, target) for grouping, cohort in cohorts])
        heat_max[target] = max((float(np.max(mean_map)) for mean_map in rows["mean_map"]), default=0.0)
        bars += [bar for grouping, cohort in cohorts for bar in region_bars(tables, grouping, cohort, target)]
    return Scales(axis_limit(bars), heat_max)


@dataclass(frozen=True)
class Background:
    """A cohort's mean image, how many images it averages of how many members, or why there is none."""

    image: Image.Image | None
    n_images: int
    n_members: int
    problem: str | None = None


def cohort_background(members: pd.DataFrame, reader: ImageReader) -> Background:
    """The mean of up to MAX_MEAN_IMAGES of the members' images, spread evenly over the manifest order.
    Studies (several images or a volume per item) have no one image to average and are left out."""
    if "n_images" in members and len(members):
        single = members[members["n_images"].fillna(1) <= 1]
        if single.empty:
            return Background(
                None,
                0,
                len(members),
                "its items are studies (several images or a volume each), with no one image to average",
            )
        members = single
    uris = list(members["image_uri"]) if len(members) else []
    picks = sorted(set(np.linspace(0, len(uris) - 1, min(len(uris), MAX_MEAN_IMAGES)).round().astype(int)))
    images, problems = [], []
    for index in picks:
        loaded = reader.read(uris[index], keep=False)  # a cohort's images are read once, not kept
        if loaded.image is not None:
            images.append(loaded.image)
        else:
            problems.append(f"{loaded.uri or '(no URI)'}: {loaded.problem}")
    if not images:
        problem = (
            f"the cohort's images could not be read ({problems[0]})"
            if problems
            else "the cohort has no answered items"
        )
        return Background(None, 0, len(uris), problem)
    return Background(mean_image(images), len(images), len(uris))


def cohort_panel(
    tables: RunTables,
    key: tuple[str, str],
    target: str,
    background: Image.Image | None,
    scales: Scales,
    name: str,
    sink: ImageSink,
) -> dict[str, Any] | None:
    """One target class of one cohort: heatmap over the background, region bars; None without stats."""
    grouping, cohort = key
    match = matching(tables.stats, grouping, cohort, target)
    if match.empty:
        return None
    row = match.iloc[0]
    cell_map = np.asarray(row["mean_map"], dtype=np.float32).reshape(int(row["grid_h"]), int(row["grid_w"]))
    title = f"Where the model looked for '{target}' in {cohort_name(grouping, cohort)}"
    bars = region_bars(tables, grouping, cohort, target)
    return {
        "target_class": target,
        "n_items": int(row["n_items"]),
        "n_targets": int(row["n_targets"]),
        "heatmap": sink.add(name, heatmap(cell_map, background, vmax=scales.heat_max[target])),
        "scale_max": pct(scales.heat_max[target], 1),
        "bars": Markup(region_bars_svg(bars, title=title, axis_max=scales.bar_axis)),
        "flagged": bool(cohort_flags(tables, grouping, cohort, target)),
    }


def cohort_sections(
    tables: RunTables, classes: list[str], reader: ImageReader, sink: ImageSink
) -> list[dict[str, Any]]:
    """Per cohort: its findings, and per target class a heatmap over the cohort's mean image and region
    bars, on the scales all cohorts share."""
    sections = []
    cohorts = chosen_cohorts(tables)[0]
    scales = family_scales(tables, cohorts, classes)
    for index, (grouping, cohort) in enumerate(cohorts):
        members = cohort_members(tables.ok_answers, grouping, cohort)
        background = cohort_background(members, reader)
        panels = [
            cohort_panel(
                tables,
                (grouping, cohort),
                target,
                background.image,
                scales,
                f"cohort-{index:02d}-{target}",
                sink,
            )
            for target in classes
        ]
        panels = [panel for panel in panels if panel is not None]
        sections.append(
            {
                "anchor": f"cohort-{index:02d}",
                "title": cohort_name(grouping, cohort),
                "grouping": grouping,
                "cohort": cohort,
                "n_items": panels[0]["n_items"] if panels else len(members),
                "background": background,
                "flags": findings(cohort_flags(tables, grouping, cohort))[1],
                "panels": panels,
            }
        )
    return sections


def render(context: dict[str, Any]) -> str:
    """The page from templates/report.html.j2 (autoescaped)."""
    environment = Environment(
        loader=PackageLoader("auditing.report", "templates"), autoescape=True, undefined=StrictUndefined
    )
    return environment.get_template("report.html.j2").render(**context)


def build_report(out_uri: str, run_id: str, *, endpoint_url: str | None = None) -> str:
    """Write ``<out>/report/run_id=<id>/index.html`` and its images; return the URI of index.html.

    Reads the run's tables (cohort tables and flags as `aggregate_run` wrote them, with the thresholds it
    recorded; nothing is recomputed), run.json, item images and overlays. Raises `RunNotFound` when the run has neither run.json nor
    answers. Images from an earlier build that this build no longer uses are deleted.

    >>> build_report("s3://audits/out", "2024-06-01-a")
    's3://audits/out/report/run_id=2024-06-01-a/index.html'
    """
    store = open_store(out_uri, endpoint_url=endpoint_url)
    tables = load_run(store, run_id)
    reader = ImageReader(tables.run, endpoint_url=endpoint_url)
    sink = ImageSink()
    classes = chosen_classes(tables) if not tables.stats.empty else []
    cohorts = cohort_sections(tables, classes, reader, sink) if classes else []
    context = {
        "run_id": run_id,
        "out": store.root,
        "ANSWER": ANSWER,
        "summary": summary_rows(tables),
        "timings": timing_rows((tables.run or {}).get("timings") or {}),
        "errors": error_rows(tables.errors),
        "flags": flag_rows(tables.flags),
        "rules": rule_rows(tables.flags, tables.thresholds),
        "cohorts": cohorts,
        "verdict": verdict_box(tables.flags, {(c["grouping"], c["cohort"]): c["anchor"] for c in cohorts}),
        "cohorts_left_out": chosen_cohorts(tables)[1] if classes else 0,
        "gallery": gallery(tables, store, reader, sink),
        "trust": trust_tables(tables, classes),
        "studies": study_rows(tables),
        "strategies": strategy_sections(tables, store, sink),
        "thresholds": tables.thresholds,
        "colour_scale": sink.add("colour-scale", colour_scale()),
    }
    html = render(context)
    for name, data in sink.files.items():
        store.write_bytes(report_key(run_id, f"img/{name}"), data)
    for stale in store.list(report_key(run_id, "img") + "/"):
        if stale.rsplit("/", 1)[-1] not in sink.files:
            store.delete(stale)
    return store.write_bytes(report_key(run_id), html.encode("utf-8"))

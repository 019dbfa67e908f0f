"""Every control × every method × both references, through the real flow: the table of docs/validation.md.

Each shipped phantom control audits held-out cases whose evidence is known (the asked nodule; the
corner tag for the shortcut model) with a faithfulness sample of every item (`vlm-audit run ...
--faithfulness-sample N`, whole-answer targets). From the Parquet outputs alone, per method:

- hit: the map's peak cell overlaps the evidence (pointing game), from the faithfulness table's maps;
- per reference (token occlusion, pixel occlusion): the share of checkable items whose map peaks in
  the reference's evidence set, the mean share of the map's mass on it (`cohort_trust`), and whether
  the audit flagged the method against that reference (`flags`).

    python bench/controls.py                        # 40 cases per control
    python bench/controls.py --n 12 --controls positive decoy
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import phantom
from explainer.methods import IMAGE_REFERENCE, METHODS, REFERENCE_METHODS
from storage import read_table
from vocabulary.map_stats import pointing_hit
from vocabulary.regions import box_region

SEED = 24_000  # held out: training uses seeds < 10_000, the reports 20_000, the other benches 21_000-23_000
CONTROLS = {
    "positive": "MODEL_PATH",
    "pooling": "POOLING_MODEL_PATH",
    "shortcut": "SHORTCUT_MODEL_PATH",
    "relocation": "RELOCATION_MODEL_PATH",
    "decoy": "DECOY_MODEL_PATH",
}


def write_cases(folder: Path, control: str, n: int, seed: int) -> Path:
    """Held-out cases as PNGs and a manifest whose `roi_box` is the evidence (the tag for shortcut)."""
    if control == "shortcut":  # presence questions, the tag always there: the right answer follows it
        cases = phantom.sample(
            n, seed, tasks=("presence",), marker_prob=1.0, finding_prob=0.5, answer_rule="marker"
        )
    else:
        cases = phantom.sample(n, seed, tasks=("locate",), distractor_prob=0.5)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, case in enumerate(cases):
        box = case.marker_box if control == "shortcut" else case.lesion_box
        image = f"images/case-{index:04d}.png"
        case.image.save(folder / image, format="PNG")
        rows.append({"item_id": f"case-{index:04d}", "image": image, "question": case.question,
                     "roi_box": ",".join(str(v) for v in box), "expected_answer": case.answer})  # fmt: skip
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def audit_control(control: str, n: int, seed: int, work: Path) -> dict:
    from flows.audit import audit
    from tasks.config import AggregationSettings, AuditConfig

    manifest = write_cases(work / control / "data", control, n, seed)
    out = work / control / "out"
    config = AuditConfig(
        manifest=str(manifest), out=str(out), model=str(getattr(phantom, CONTROLS[control])), targets="answer",
        overlays="none", max_new_tokens=8, faithfulness_sample=n, aggregation=AggregationSettings(report=False),
    )  # fmt: skip
    started = time.perf_counter()
    run_id = audit(config).run_id
    seconds = time.perf_counter() - started
    read = lambda table: read_table(str(out), table, run_id=run_id).to_pandas()  # noqa: E731
    answers, sample, trust, flags = read("answers"), read("faithfulness"), read("cohort_trust"), read("flags")
    boxes = {row.item_id: (row.roi_box, (row.image_width, row.image_height)) for row in answers.itertuples()}
    sample = sample[sample["target_kind"] == "answer"]
    whole = trust[(trust["cohort"] == "all") & (trust["target_class"] == "answer")]
    raised = set(zip(flags["method"], flags["metric"], strict=True)) if len(flags) else set()
    methods = {}
    for method in (m for m in METHODS if m != IMAGE_REFERENCE):  # single images: cell by cell
        rows = sample[sample["method"] == method]
        hits = [
            pointing_hit(
                np.asarray(row.image_relevance).reshape(row.grid_h, row.grid_w),
                box_region(tuple(boxes[row.item_id][0]), boxes[row.item_id][1], (row.grid_h, row.grid_w)),
            )
            for row in rows.itertuples()
        ]
        references = {}
        for reference in REFERENCE_METHODS:
            agreement = whole[(whole["method"] == method) & (whole["reference"] == reference)]
            if agreement.empty:
                continue
            row = agreement.iloc[0]
            references[reference] = {
                "n_checkable": int(row["n_checkable"]),
                "peak_in_evidence": float(row["peak_in_evidence_rate"]),
                "evidence_mass": float(row["evidence_mass_mean"]),
                "flagged": (method, f"peak_in_{reference}_evidence") in raised,
            }
        methods[method] = {"hit": float(np.mean(hits)), "references": references}
    expected = [dict(metadata)["expected_answer"] for metadata in answers["metadata"]]
    correct = np.mean([str(a).lower() == e.lower() for a, e in zip(answers["answer"], expected, strict=True)])
    return {"cases": n, "answers_right": float(correct), "seconds": round(seconds, 1), "methods": methods}


def table(results: dict) -> str:
    """The markdown table of docs/validation.md."""
    lines = [
        "| control | method | hit | token occlusion: peak in evidence | mass | flagged | pixel occlusion: peak in evidence | mass | flagged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for control, result in results.items():
        for index, (method, figures) in enumerate(result["methods"].items()):
            cells = [f"{control} ({result['answers_right']:.0%} right)" if index == 0 else "", method,
                     f"{figures['hit']:.2f}"]  # fmt: skip
            for reference in REFERENCE_METHODS:
                agreement = figures["references"].get(reference)
                if agreement is None:
                    cells += ["—", "—", "—"]
                else:
                    flag = "**yes**" if agreement["flagged"] else "no"
                    cells += [f"{agreement['peak_in_evidence']:.2f} ({agreement['n_checkable']})",
                              f"{agreement['evidence_mass']:.2f}", flag]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="held-out cases per control")
    parser.add_argument("--controls", nargs="+", default=list(CONTROLS), choices=list(CONTROLS))
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vlm-audit-controls-"))
    for key, value in (("PREFECT_LOGGING_LEVEL", "WARNING"), ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
                       ("PREFECT_HOME", str(work / "prefect"))):  # fmt: skip
        os.environ.setdefault(key, value)
    results = {}
    for control in args.controls:
        results[control] = audit_control(control, args.n, args.seed, work)
        print(
            f"{control}: {results[control]['answers_right']:.0%} right, {results[control]['seconds']} s",
            flush=True,
        )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "results": results}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

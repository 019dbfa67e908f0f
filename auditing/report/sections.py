"""Text sections of the report (run summary, errors, flags, trust) as plain rows for the template.

Numbers reach the reader as percentages or short decimals; every rule has a plain-language title
beside its code name, so a clinician can read the table and an engineer can grep for the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from auditing.evidence import is_number
from auditing.flags import FlagThresholds
from auditing.report.data import RunTables
from auditing.rules import rules_marking
from auditing.rules.trust import Standing, trust_standing
from vocabulary.names import IMAGE_REFERENCE, OCCLUSION, REFERENCE_NAMES

# below it the trust row's sentence says why the ranks do not decide (wording only: the verdict rests on
# the peak, never on the ranks)
LOW_RANK_CORRELATION = 0.3


def pct(value: Any, digits: int = 0) -> str:
    """0.123 → '12%' (digits=0); '–' for missing values."""
    return f"{value:.{digits}%}" if is_number(value) else "–"


def num(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if is_number(value) else "–"


def cohort_name(grouping: Any, cohort: Any) -> str:
    """'site = east', or 'whole run' for the ("all", "all") cohort."""
    if grouping in (None, "all") or (isinstance(grouping, float) and math.isnan(grouping)):
        return "whole run"
    return f"{grouping} = {cohort}"


def summary_rows(tables: RunTables) -> list[tuple[str, str]]:
    """(label, value) rows: model, method, counts, times, throughput; run.json first, tables as fallback
    (the timing table is `timing_rows`)."""
    run = tables.run or {}
    answers = tables.answers
    counts = run.get("counts") or {}
    timings = run.get("timings") or {}
    first = answers.iloc[0] if len(answers) else pd.Series(dtype=object)
    model = run.get("model_id") or first.get("model_id") or "unknown"
    revision = run.get("model_revision") or first.get("model_revision")
    method = (run.get("config") or {}).get("method") or first.get("method") or "unknown"
    items = counts.get("items", len(answers))
    ok = counts.get("ok", int((answers["status"] == "ok").sum()) if len(answers) else 0)
    failed = counts.get("failed", int((answers["status"] == "error").sum()) if len(answers) else 0)
    targets = counts.get("targets", int(answers["n_targets"].fillna(0).sum()) if len(answers) else 0)
    rows = [
        ("Run", tables.run_id),
        ("Model", f"{model} (revision {revision})" if revision else str(model)),
        ("Relevance method", str(method)),
        ("Items audited", str(items)),
        ("Answered", f"{ok} ({pct(ok / items if items else None, 1)})"),
        ("Failed", str(failed)),
        ("Error records", str(counts.get("errors", len(tables.errors)))),
        ("Explained targets", str(targets)),
    ]
    if "manifest_errors" in counts:
        rows.append(("Rejected manifest rows", str(counts["manifest_errors"])))
    if run:
        rows += [
            ("Status", str(run.get("status", "unknown"))),
            ("Started", str(run.get("started_at") or "unknown")),
            ("Finished", str(run.get("finished_at") or "not finished")),
            ("Code version", str(run.get("code_version", "unknown"))),
        ]
    else:
        rows.append(("Run description", "no run.json: counts come from the tables"))
    if is_number(timings.get("items_per_second")):
        rows.append(("Throughput", f"{timings['items_per_second']:.2f} items/s"))
    return rows


STAGES = {  # per-shard stage sums in run.json timings, in the order they happen
    "model_load_seconds": "Model loading",
    "generate_seconds": "Answer generation",
    "explain_seconds": "Relevance maps",
    "faithfulness_seconds": "Faithfulness sample: perturbation references and checks",
    "write_seconds": "Writing outputs",
}


@dataclass(frozen=True)
class TimingRow:
    """One row of the timing table; `adds` rows sum to the total, `aside` rows are sums over parallel workers."""

    label: str
    seconds: float
    kind: str  # "total", "adds" or "aside"

    @property
    def value(self) -> str:
        return f"{self.seconds:.1f} s"


def timing_rows(timings: dict[str, Any]) -> list[TimingRow]:
    """The run's total time, then parts that add up to it (the last: other, not attributed).

    From run.json timings (`tasks.run_summary.attempt_timings`): the wall-clock time before, during and after the
    shards; within the shards the stage sums when the shards ran one after another, else the shards'
    wall clock and the stage sums beside it, said to be summed over the workers. Older runs recorded
    only the stage sums: they add up when they fit in the total, else they are shown beside it.
    """
    total = timings.get("total_seconds")
    if not is_number(total):
        return []
    stages = [(label, float(timings[key])) for key, label in STAGES.items() if is_number(timings.get(key))]
    wall = timings.get("shards_wall_seconds")
    rows = [TimingRow("Total time", total, "total")]
    if is_number(wall):
        rows.append(
            TimingRow(
                "Before the shards: manifest, pre-flight checks, planning, scheduling",
                timings.get("before_shards_seconds", 0.0),
                "adds",
            )
        )
        summed = float(timings.get("shard_seconds") or 0.0)
        if summed <= wall + max(0.05, 0.01 * wall):  # one shard at a time: the stages are wall-clock parts
            in_stages = sum(seconds for _, seconds in stages)
            rows += [TimingRow(label, seconds, "adds") for label, seconds in stages]
            rows.append(
                TimingRow("Rest of the shards: reading images, overlays", max(wall - in_stages, 0.0), "adds")
            )
        else:
            workers = int(timings.get("workers") or 0)
            rows.append(
                TimingRow(
                    f"Shards, wall clock ({workers} worker{'s' * (workers != 1)} in parallel)", wall, "adds"
                )
            )
            rows += [
                TimingRow(f"{label} (summed over {workers} workers)", seconds, "aside")
                for label, seconds in stages
            ]
        rows.append(
            TimingRow("After the shards: counting outputs", timings.get("after_shards_seconds", 0.0), "adds")
        )
    elif sum(seconds for _, seconds in stages) <= total:
        rows += [TimingRow(label, seconds, "adds") for label, seconds in stages]
    else:
        rows += [
            TimingRow(f"{label} (summed over shards and workers)", seconds, "aside")
            for label, seconds in stages
        ]
    attributed = sum(row.seconds for row in rows if row.kind == "adds")
    rows.append(TimingRow("Other (not attributed)", max(total - attributed, 0.0), "adds"))
    return rows


def error_rows(errors: pd.DataFrame, limit: int = 10) -> list[dict[str, Any]]:
    """Failed items and rejected rows by stage and error type, most frequent first, with one example."""
    if errors.empty:
        return []
    grouped = errors.groupby(["stage", "error_type"], dropna=False)
    table = grouped.agg(count=("message", "size"), example=("message", "first")).reset_index()
    table = table.sort_values(["count", "stage"], ascending=[False, True]).head(limit)
    return table.astype(object).where(table.notna(), "").to_dict("records")


def _count(value: Any) -> int | str:
    return int(value) if is_number(value) else "–"


@dataclass(frozen=True)
class TrustVerdict:
    """A trust row's verdict, its css class, and one plain sentence saying what the verdict rests on."""

    verdict: str
    css: str
    basis: str


def _agreement(row: pd.Series, reference: str) -> str:
    """'Its peak falls in the token occlusion evidence in 12 of 13 checkable items (92%, 95% interval 67%–99%)'."""
    rate, checkable = row.get("peak_in_evidence_rate"), row.get("n_checkable", row["n_items"])
    if not (is_number(rate) and is_number(checkable)):
        return f"Its agreement with {reference} was not recorded"
    hits = round(rate * checkable)
    return (
        f"Its peak falls in the {reference} evidence in {hits} of {int(checkable)} checkable items "
        f"({pct(rate)}, 95% interval {pct(row.get('peak_in_evidence_ci_low'))}–"
        f"{pct(row.get('peak_in_evidence_ci_high'))})"
    )


def _ranks(row: pd.Series, reference: str) -> str:
    """Why the rank correlation does or does not matter, from its value."""
    spearman = row.get("spearman_median")
    if not is_number(spearman):
        return "the verdict rests on the peak"
    if spearman < LOW_RANK_CORRELATION:
        return (
            f"the rank correlation ({num(spearman)}) is low because {reference} changes the answer in only a "
            "few regions and is noise elsewhere, and the verdict rests on the peak, not on the ranks"
        )
    return f"the rank correlation ({num(spearman)}) agrees, though the verdict rests on the peak"


def trust_verdict(row: pd.Series, flag_rule: str | None, thresholds: FlagThresholds) -> TrustVerdict:
    """The plain-language verdict of one cohort × method × reference trust row: its standing as the trust
    rule decides it (`auditing.rules.trust.trust_standing`) from the flag the aggregation raised on it
    (`flag_rule`), the row and the thresholds the aggregation recorded, in words."""
    reference = REFERENCE_NAMES[row.get("reference") or OCCLUSION]
    # what the reference removes at a time: a whole image (studies) or a region of one
    part, removed = (
        ("image", "image") if row.get("reference") == IMAGE_REFERENCE else ("image region", "region")
    )
    min_items, rate = thresholds.min_items, pct(thresholds.trust_peak_rate)
    standing = trust_standing(row, flag_rule, thresholds)
    if standing is Standing.REFERENCE:
        return TrustVerdict(
            "Reference: pixel occlusion itself (token occlusion is checked against it)",
            "neutral",
            "Pixel occlusion reruns the whole model on the image with a region removed, so it sees the "
            "evidence wherever the model keeps it; the other maps are checked against it.",
        )
    if standing is Standing.RELOCATED:
        return TrustVerdict(
            "Evidence relocated: the vision tower moves it, so no map taken at the language model shows "
            "where it is in the image",
            "bad",
            f"{_agreement(row, reference)}: even removing image tokens at the language model misses where "
            "removing pixels changes the answer.",
        )
    if standing is Standing.NOT_TRUSTWORTHY:
        return TrustVerdict(
            f"Not trustworthy: its peak misses the {reference} evidence",
            "bad",
            f"{_agreement(row, reference)}; even the interval's upper end is below the {rate} a trustworthy "
            "map needs.",
        )
    if standing is Standing.TOO_FEW:
        return TrustVerdict(
            f"Too few sampled items to judge (fewer than {min_items})",
            "neutral",
            f"{_count(row['n_items'])} items of this cohort were sampled; at least {min_items} are needed for "
            "an interval worth reading.",
        )
    if standing is Standing.NOT_CHECKABLE:
        checkable = row.get("n_checkable", row["n_items"])
        return TrustVerdict(
            f"Not checkable: in fewer than {min_items} items does one {part} change the answer, "
            f"so {reference} has no evidence to compare with",
            "neutral",
            f"In {int(checkable)} of {int(row['n_items'])} sampled items does removing one {removed} lower the "
            f"answer's score by at least {thresholds.trust_min_reference_drop} logits; at least {min_items} "
            "are needed.",
        )
    if standing is Standing.UNDECIDED:
        low = row.get("peak_in_evidence_ci_low")
        return TrustVerdict(
            f"Undecided: the 95% interval of its agreement ({pct(low)}–{pct(row['peak_in_evidence_ci_high'])}) "
            f"includes {rate}; sample more items",
            "warn",
            f"{_agreement(row, reference)}; the interval reaches below {rate}, so more sampled items are "
            "needed to tell.",
        )
    if standing is Standing.DOUBTFUL:
        return TrustVerdict(
            "Doubtful: the map barely changes when the model is scrambled",
            "warn",
            f"{_agreement(row, reference)}, but maps from a model with scrambled top layers are still "
            f"{num(row.get('randomization_spearman'))} rank-correlated with it, so it depends little on what "
            "the model learned.",
        )
    return TrustVerdict(
        f"Trustworthy: agrees with {reference}",
        "good",
        f"{_agreement(row, reference)}; {_ranks(row, reference)}.",
    )


def trust_tables(tables: RunTables, classes: list[str]) -> list[dict[str, Any]]:
    """Per target class, the cohort × method × reference agreement rows with a verdict each."""
    trust, flags, thresholds = tables.trust, tables.flags, tables.thresholds
    if trust.empty or thresholds is None:
        return []
    marking = rules_marking("cohort_trust")
    raised = {
        (flag.grouping, flag.cohort, flag.target_class, flag.method, flag.metric): flag.rule
        for flag in flags
        if flag.rule in marking
    }
    result = []
    for target in [c for c in classes if c in set(trust["target_class"])]:
        rows = []
        for _, row in trust[trust["target_class"] == target].iterrows():
            reference = row.get("reference", "occlusion")
            metric = f"peak_in_{reference}_evidence"
            key = (row["grouping"], row["cohort"], row["target_class"], row["method"], metric)
            verdict = trust_verdict(row, raised.get(key), thresholds)
            rows.append(
                {
                    "cohort": cohort_name(row["grouping"], row["cohort"]),
                    "method": row["method"],
                    "reference": REFERENCE_NAMES.get(reference, reference),
                    "n_items": _count(row["n_items"]),
                    "n_checkable": _count(row.get("n_checkable", row["n_items"])),
                    "in_evidence": (
                        f"{pct(row.get('peak_in_evidence_rate'))} "
                        f"({pct(row.get('peak_in_evidence_ci_low'))}–{pct(row.get('peak_in_evidence_ci_high'))})"
                    ),
                    "mass": pct(row.get("evidence_mass_mean")),
                    "spearman": num(row["spearman_median"]),
                    "morf": num(row["morf_auc"]),
                    "lerf": num(row["lerf_auc"]),
                    "gap": num(row["auc_gap"]),
                    "randomization": num(row["randomization_spearman"]),
                    "verdict": verdict.verdict,
                    "css": verdict.css,
                    "basis": verdict.basis,
                }
            )
        result.append({"target_class": target, "rows": rows})
    return result


def _interval(mean: Any, low: Any, high: Any) -> str:
    return f"{pct(mean)} ({pct(low)}–{pct(high)})" if is_number(mean) else "–"


def study_rows(tables: RunTables) -> dict[str, list[dict[str, Any]]]:
    """Volume rows (where along the volume the maps sit, outside the body, the slice profile) and
    longitudinal rows (the prior's share, answers that barely look at it), per cohort and target."""
    studies = tables.studies
    if studies.empty:
        return {"volumes": [], "longitudinal": []}
    marking = rules_marking("cohort_studies")
    flagged = {
        (flag.grouping, flag.cohort, flag.target_class) for flag in tables.flags if flag.rule in marking
    }
    volumes, longitudinal = [], []
    for row in studies.itertuples(index=False):
        where = {"cohort": cohort_name(row.grouping, row.cohort), "target_class": row.target_class}
        if is_number(row.n_volume_items) and row.n_volume_items > 0:
            profile = row.slice_profile if row.slice_profile is not None else []
            volumes.append(
                where
                | {
                    "n_items": int(row.n_volume_items),
                    "position": _interval(
                        row.slice_position_mean, row.slice_position_ci_low, row.slice_position_ci_high
                    ),
                    "outside_body": _interval(
                        row.outside_body_mean, row.outside_body_ci_low, row.outside_body_ci_high
                    ),
                    "profile": [round(float(share) * 100) for share in profile],
                }
            )
        if is_number(row.n_longitudinal_items) and row.n_longitudinal_items > 0:
            longitudinal.append(
                where
                | {
                    "n_items": int(row.n_longitudinal_items),
                    "prior_share": _interval(
                        row.prior_share_mean, row.prior_share_ci_low, row.prior_share_ci_high
                    ),
                    "barely": f"{int(row.n_barely_prior)} of {int(row.n_longitudinal_items)} "
                    f"(95% CI {pct(row.barely_prior_ci_low)}–{pct(row.barely_prior_ci_high)})",
                    "flagged": (row.grouping, row.cohort, row.target_class) in flagged,
                }
            )
    return {"volumes": volumes, "longitudinal": longitudinal}

"""Running the demo: the two phantom models it audits and what the audit found with each.

The demo data set itself is `phantom.demo` (`write_demo_dataset`, `DEMO_GROUPINGS`).
"""

from __future__ import annotations

from phantom import SHORTCUT_MODEL_PATH, require_model_folder
from tasks.run_summary import RunSummary
from vocabulary.names import COHORT_SCOPE


def demo_models() -> dict[str, str]:
    """The two models the demo audits: the honest phantom and the one that learned the corner tag."""
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


def format_comparison(results: dict[str, RunSummary]) -> str:
    """The demo's verdict per model: behaviour, the flags the audit raised, where the report is."""
    from storage import read_table

    lines = ["", "What the audit found:"]
    for name, result in results.items():
        stats = behaviour(result.out, result.run_id)
        flags = read_table(result.out, "flags", run_id=result.run_id).to_pandas()
        cohort_flags = flags[flags["scope"] == COHORT_SCOPE]
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
        lines.append(f"    report: {result.report or '(not built)'}")
    return "\n".join(lines)

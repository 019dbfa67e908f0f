"""The audit's trust check separates the phantom controls on the same cohort (the real flow, the
faithfulness sample with both references, aggregation from the Parquet outputs).

- positive: every map agrees with both references; nothing is flagged.
- pooling: evidence pooled through uniform attention; the attention-only maps (rollout, raw
  attention) never find it and are flagged against both references; chefer's gradient weighting
  recovers most of it (docs/validation.md) and is not flagged; the references agree.
- decoy: a cancelling head pair moves chefer's peak onto a fixed cell while the function is
  unchanged; chefer alone is flagged, rollout, raw attention and token occlusion are not.
- relocation: the vision tower moves every patch to its mirror cell; every map taken at the language
  model agrees with token occlusion (they share the blind spot) and misses pixel occlusion's
  evidence: the evidence is flagged as relocated, and no language-model-level method is trusted.
"""

from __future__ import annotations

import csv

import pytest

from explainer.methods import REFERENCE_METHODS
from flows import cli
from phantom import DECOY_MODEL_PATH, MODEL_PATH, POOLING_MODEL_PATH, RELOCATION_MODEL_PATH, sample
from phantom.demo import write_demo_dataset
from storage import read_table

pytestmark = pytest.mark.integration

N_CASES = 12


@pytest.fixture(scope="module")
def locate_manifest(tmp_path_factory) -> str:
    """Locate cases ("Where is the nodule?"), nodule always present: the evidence is the nodule's cells."""
    folder = tmp_path_factory.mktemp("locate")
    rows = []
    for index, case in enumerate(sample(N_CASES, 23_000, tasks=("locate",), finding_prob=1.0)):
        image = f"case-{index:02d}.png"
        case.image.save(folder / image)
        rows.append({"item_id": f"case-{index:02d}", "image": image, "question": case.question})
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["item_id", "image", "question"])
        writer.writeheader()
        writer.writerows(rows)
    return str(manifest)


def run_audit(manifest: str, out: str, model: str, capsys, *options: str) -> str:
    """Audit `manifest` with `model` through the CLI (answer targets, no overlays or report); the run id."""
    code = cli.main(
        ["run", manifest, "--out", out, "--model", str(model), "--targets", "answer", "--overlays", "none",
         "--max-new-tokens", "8", "--no-report", *options]
    )  # fmt: skip
    assert code == cli.EXIT_OK
    return next(
        line.split()[1].rstrip(":")
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("run ")
    )


def audit_trust(manifest: str, out: str, model: str, capsys) -> tuple:
    """The whole cohort's trust rows (indexed by method and reference) and the trust flags raised."""
    run_id = run_audit(manifest, out, model, capsys, "--faithfulness-sample", str(N_CASES))
    trust = read_table(out, "cohort_trust", run_id=run_id).to_pandas()
    flags = read_table(out, "flags", run_id=run_id).to_pandas()
    whole_cohort = trust[trust["cohort"] == "all"].set_index(["method", "reference"])
    raised = {
        (flag.rule, flag.method, flag.metric.removeprefix("peak_in_").removesuffix("_evidence"))
        for flag in flags.itertuples()
        if flag.rule in ("explanations_not_trustworthy", "evidence_relocated") and flag.cohort == "all"
    }
    return whole_cohort, raised


def not_trusted(*methods: str) -> set[tuple[str, str, str]]:
    return {
        ("explanations_not_trustworthy", method, reference)
        for method in methods
        for reference in REFERENCE_METHODS
    }


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize(
    ("control", "model", "expected"),
    [
        ("positive", MODEL_PATH, set()),
        ("pooling", POOLING_MODEL_PATH, not_trusted("rollout", "raw_attention")),
        ("decoy", DECOY_MODEL_PATH, not_trusted("chefer")),
        (
            "relocation",
            RELOCATION_MODEL_PATH,
            {("evidence_relocated", "occlusion", "pixel_occlusion")}
            | {
                ("explanations_not_trustworthy", m, "pixel_occlusion")
                for m in ("chefer", "rollout", "raw_attention")
            },
        ),
    ],
)
def test_the_trust_check_flags_exactly_what_each_control_fools(
    control, model, expected, locate_manifest, tmp_path, capsys
):
    trust, raised = audit_trust(locate_manifest, str(tmp_path / control), model, capsys)
    assert (trust["n_items"] == N_CASES).all()
    assert raised == expected, trust
    for method, reference in trust.index:  # every verdict is backed by the rates in the table
        if method == "pixel_occlusion":  # the reference that sees furthest is checked, not judged
            continue
        rate = trust.loc[(method, reference), "peak_in_evidence_rate"]
        flagged = any(key[1:] == (method, reference) for key in raised)
        assert rate < 0.5 if flagged else rate >= 0.5, (method, reference, trust)
    if control == "positive":
        for method in ("chefer", "rollout", "raw_attention"):
            for reference in REFERENCE_METHODS:
                assert trust.loc[(method, reference), "peak_in_evidence_rate"] >= 0.75, trust


@pytest.mark.usefixtures("prefect_server")
def test_no_finding_answers_do_not_make_the_honest_model_untrustworthy(tmp_path, capsys):
    """The demo's cohort (presence questions, the nodule in half the images): "no" answers depend on
    no single image cell, so their occlusion maps are noise and are not counted for agreement."""
    manifest = str(write_demo_dataset(tmp_path / "data", n=24))
    out = str(tmp_path / "out")
    run_id = run_audit(manifest, out, MODEL_PATH, capsys, "--group-by", "site", "--faithfulness-sample", "24")
    flags = read_table(out, "flags", run_id=run_id).to_pandas()
    assert "explanations_not_trustworthy" not in set(flags["rule"])
    trust = read_table(out, "cohort_trust", run_id=run_id).to_pandas()
    whole = trust[(trust["cohort"] == "all") & (trust["target_class"] == "answer")]
    whole = whole[whole["reference"] == "occlusion"].set_index("method")
    answers = read_table(out, "answers", run_id=run_id).to_pandas()
    n_yes = int((answers["answer"].str.lower() == "yes").sum())
    assert whole.loc["chefer", "n_items"] == 24 and 5 <= whole.loc["chefer", "n_checkable"] <= n_yes < 24
    assert whole.loc["chefer", "peak_in_evidence_rate"] >= 0.75, whole

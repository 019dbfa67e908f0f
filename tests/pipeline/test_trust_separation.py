"""The audit's trust check separates the phantom controls on the same cohort (the real flow, the
faithfulness sample, aggregation from the Parquet outputs).

The positive control's maps agree with the occlusion reference and pass. The pooling control carries
its evidence through uniform attention: the attention-only maps (rollout, raw attention) never find
it and are flagged as not trustworthy; chefer's gradient weighting recovers most of it (its maps
agree with occlusion in about three items of four on 100 cases, docs/validation.md) and is not
flagged."""

from __future__ import annotations

import csv

import pytest

from explainer.methods import REFERENCE_METHODS
from flows import cli
from phantom import MODEL_PATH, POOLING_MODEL_PATH, sample
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
    run_id = run_audit(manifest, out, model, capsys, "--faithfulness-sample", str(N_CASES))
    trust = read_table(out, "cohort_trust", run_id=run_id).to_pandas()
    flags = read_table(out, "flags", run_id=run_id).to_pandas()
    whole_cohort = trust[trust["cohort"] == "all"].set_index(["method", "reference"])
    not_trusted = flags[flags["rule"] == "explanations_not_trustworthy"]
    return whole_cohort, not_trusted


@pytest.mark.usefixtures("prefect_server")
def test_positive_control_is_trusted_and_pooling_controls_attention_maps_are_flagged(
    locate_manifest, tmp_path, capsys
):
    positive, positive_flags = audit_trust(locate_manifest, str(tmp_path / "positive"), MODEL_PATH, capsys)
    pooling, pooling_flags = audit_trust(
        locate_manifest, str(tmp_path / "pooling"), POOLING_MODEL_PATH, capsys
    )

    assert (positive["n_items"] == N_CASES).all() and (pooling["n_items"] == N_CASES).all()
    for method in ("chefer", "rollout", "raw_attention"):
        for reference in REFERENCE_METHODS:
            assert positive.loc[(method, reference), "peak_in_evidence_rate"] >= 0.75, positive
    assert positive_flags.empty
    flagged = set(zip(pooling_flags["method"], pooling_flags["metric"], strict=True))
    for method in ("rollout", "raw_attention"):
        for reference in REFERENCE_METHODS:
            assert pooling.loc[(method, reference), "peak_in_evidence_rate"] < 0.5, pooling
            assert (method, f"peak_in_{reference}_evidence") in flagged
    for reference in REFERENCE_METHODS:
        assert pooling.loc[("chefer", reference), "peak_in_evidence_rate"] >= 0.5, pooling
    assert "chefer" not in set(pooling_flags["method"])
    # the two references agree (the pooling route is inside the language model): nothing relocated
    assert pooling.loc[("occlusion", "pixel_occlusion"), "peak_in_evidence_rate"] >= 0.75, pooling
    assert pooling_flags["message"].str.contains("not trustworthy").all()


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

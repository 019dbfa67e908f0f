"""The vlm-audit CLI: arguments, clear failures, the demo, a run with its summary, the audit hooks."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from explainer.methods import METHODS
from flows import cli
from storage import CredentialsError, StorageConnectionError
from tasks import config
from tests.pipeline.conftest import local_dataset, png_bytes

REPO = Path(__file__).resolve().parents[2]


def test_run_arguments_become_the_run_settings():
    args = cli.build_parser().parse_args(
        [
            *(
                "run",
                "s3://b/m.csv",
                "--out",
                "s3://b/out",
                "--dask-workers",
                "2",
                "--dask-resource",
                "GPU=1",
            ),
            *("--findings", "nodule,effusion", "--targets", "all", "--endpoint-url", "http://minio:9000"),
            *("--model-revision", "abc123", "--no-report", "--dtype", "bfloat16", "--model", "tiny"),
        ]
    )
    settings = cli.audit_config(args, args.manifest, args.out)
    assert settings == config.AuditConfig(
        manifest="s3://b/m.csv",
        out="s3://b/out",
        model="tiny",
        model_revision="abc123",
        findings=("nodule", "effusion"),
        targets="all",
        endpoint_url="http://minio:9000",
        aggregation=config.AggregationSettings(report=False),
        dtype="bfloat16",
    )  # every option not given keeps the setting's own default
    assert cli.dask_settings(args) == config.DaskSettings(n_workers=2, resources={"GPU": 1.0})
    args = cli.build_parser().parse_args(
        ["run", "s3://b/m.csv", "--out", "o", "--allowed-inputs", "s3://c/x,/data", "--max-image-bytes", "9"]
    )
    settings = cli.audit_config(args, args.manifest, args.out)
    assert (settings.allowed_inputs, settings.max_image_bytes) == (("s3://c/x", "/data"), 9)
    assert cli.dask_settings(cli.build_parser().parse_args(["run", "m.csv", "--out", "o"])) is None


def test_every_run_setting_is_an_option_with_its_description_choices_and_default():
    run = cli.build_parser()._subparsers._group_actions[0].choices["run"]
    options = {action.dest: action for action in run._actions}
    settings = {**config.AuditConfig.model_fields, **config.AggregationSettings.model_fields}
    for name, field in settings.items():
        if name == "aggregation":  # its own fields are the options
            continue
        action = options[name]
        assert field.description.split(" (")[0] in action.help.replace("%%", "%"), name
        if name not in ("manifest", "out", "model") and not isinstance(field.default, bool | None):
            assert f"default: {field.default}" in action.help or isinstance(field.default, tuple), name
    assert options["method"].choices == list(METHODS) and "pixel_occlusion" in METHODS  # the registry
    assert options["dtype"].choices == ["float32", "bfloat16", "float16"]
    assert options["overlays"].choices == ["none", "answer", "findings", "all"]
    assert options["aggregate"].option_strings == ["--no-aggregate"]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--device", "gpu"], "device 'gpu' is not one of auto, cpu, cuda"),
        (["--shard-size", "0"], "--shard-size: Input should be greater than or equal to 1"),
        (
            ["--limit", "2", "--sample", "2"],
            "limit and sample both choose the items to audit: give one of them",
        ),
        (["--dask-address", "tcp://x:1", "--dask-workers", "2"], "not both"),
        (["--dask-resource", "GPU=1"], "not neither"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(option, message, tmp_path, model_dir, capsys):
    code = cli.main(
        ["run", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--model", model_dir, *option]
    )
    printed = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and message in printed and printed.count("\n") == 1  # one line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["demo"], ["run", "manifest.csv"]])
def test_without_the_phantom_model_the_cli_says_how_to_build_it(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(config, "default_model", lambda: str(tmp_path / "models" / "positive"))
    code = cli.main([*command, "--out", str(tmp_path / "out"), "--verbose"])
    assert code == cli.EXIT_USAGE
    message = capsys.readouterr().err
    assert (
        "phantom model is not built yet" in message and "python -m phantom.training.train positive" in message
    )
    assert not (tmp_path / "out").exists()


@pytest.fixture
def cli_on_test_server(prefect_server, monkeypatch) -> str:
    """The CLI reports to the session's test server instead of starting a temporary one in-process."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    return prefect_server


@pytest.mark.usefixtures("cli_on_test_server")
def test_run_prints_counts_and_where_the_outputs_are(tmp_path, model_dir, capsys):
    manifest = local_dataset(tmp_path / "data", 2)
    out = str(tmp_path / "out")
    code = cli.main(
        [
            "run",
            manifest,
            "--out",
            out,
            "--model",
            model_dir,
            "--max-new-tokens",
            "2",
            "--no-aggregate",
            "--verbose",
        ]
    )
    assert code == cli.EXIT_OK
    summary = capsys.readouterr().out
    assert ": 2 items (2 ok, 0 failed)" in summary and f"{out}/answers/run_id=manifest-" in summary
    assert "run.json" in summary and "overlays" in summary


@pytest.mark.usefixtures("cli_on_test_server")
def test_dry_run_prints_the_plan_and_writes_nothing_and_limit_audits_a_first_look(
    tmp_path, model_dir, capsys
):
    import json

    manifest = local_dataset(tmp_path / "data", 5)
    out = tmp_path / "out"
    options = ["--model", model_dir, "--max-new-tokens", "2", "--shard-size", "2", "--no-report"]
    assert cli.main(["run", manifest, "--out", str(out), "--dry-run", "--group-by", "site", *options]) == 0
    printed = capsys.readouterr().out
    assert (
        "5 items, 0 rejected rows" in printed
        and "3 (up to 2 items each): 3 to run, 0 already done" in printed
    )
    assert "cohorts    site (settings)" in printed and not out.exists()
    assert cli.main(["run", manifest, "--out", str(out), "--dry-run", "--group-by", "scanner", *options]) == 2
    assert "cannot group by scanner" in capsys.readouterr().err

    assert cli.main(["run", manifest, "--out", str(out), "--limit", "3", *options]) == cli.EXIT_OK
    printed = capsys.readouterr().out
    assert (
        ": 3 items (3 ok, 0 failed)" in printed
        and "a first look: the first 3 of the manifest's 5 items" in printed
    )
    [run_json] = (out / "runs").glob("*/run.json")
    record = json.loads(run_json.read_text())
    assert (
        record["selection"] == {"limit": 3, "sample": None, "of_items": 5} and record["counts"]["items"] == 3
    )
    assert cli.main(["run", manifest, "--out", str(out), "--limit", "3", "--dry-run", *options]) == 0
    printed = capsys.readouterr().out
    assert f"Run {record['run_id']} exists (completed, 2 shards committed)" in printed
    assert "3 of its 5 items" in printed and "0 to run, 2 already done" in printed
    assert cli.main(["run", manifest, "--out", str(out), "--dry-run", *options]) == 0
    assert "is new" in capsys.readouterr().out  # the whole manifest is another run


@pytest.mark.usefixtures("cli_on_test_server")
def test_demo_writes_the_mixed_cohort_and_audits_it(tmp_path, model_dir, capsys):
    code = cli.main(
        [
            "demo",
            "--out",
            str(tmp_path),
            "--n",
            "4",
            "--model",
            model_dir,
            "--max-new-tokens",
            "2",
            "--no-report",
        ]
    )
    assert code == cli.EXIT_OK
    lines = (tmp_path / "data" / "manifest.csv").read_text().splitlines()
    assert lines[0] == "item_id,image,question,roi_box,site,marker,finding,expected_answer"
    assert all("nodule" in line and "?" in line for line in lines[1:])  # presence questions
    assert len(list((tmp_path / "data" / "images").glob("*.png"))) == 4
    printed = capsys.readouterr().out
    assert (
        ": 4 items (4 ok, 0 failed)" in printed and "model model:" in printed and "no cohort flags" in printed
    )


@pytest.mark.usefixtures("cli_on_test_server")
def test_demo_studies_audits_dicom_volumes_and_prior_current_pairs_with_the_study_model(tmp_path, capsys):
    import pandas as pd

    from auditing.report.sections import timing_rows
    from storage import open_store, read_run, read_table

    assert (
        cli.main(
            [
                "demo",
                "--studies",
                "--out",
                str(tmp_path),
                "--n",
                "4",
                "--faithfulness-sample",
                "2",
                "--no-report",
            ]
        )
        == cli.EXIT_OK
    )
    data, out = tmp_path / "data-studies", str(tmp_path / "audit-studies")
    assert len(list((data / "volumes").glob("*/slice-*.dcm"))) == 4 * 9  # one MR series folder per volume
    printed = capsys.readouterr().out
    runs = [line.split()[1].rstrip(":") for line in printed.splitlines() if line.startswith("run ")]
    assert [run.split("-")[0] for run in runs] == ["volume", "longitudinal"] and printed.count(
        "(4 ok, 0 failed)"
    ) == 2
    for kind, run in zip(("volume", "longitudinal"), runs, strict=True):
        manifest = pd.read_csv(data / f"{kind}.csv").set_index("item_id")
        answers = read_table(out, "answers", run_id=run).to_pandas().set_index("item_id")
        assert (answers["answer"] == manifest.loc[answers.index, "expected_answer"]).all()
        assert set(answers["n_images"]) == {9 if kind == "volume" else 2}
        tokens = read_table(out, "tokens", run_id=run).to_pandas()
        peaks = tokens[tokens["target_kind"] == "answer"].sort_values("study_share").groupby("item_id").last()
        if kind == "volume":  # the slice with the most relevance holds the nodule (1-based in `finding`)
            for item_id, peak in peaks[manifest.loc[peaks.index, "finding"] != "none"].iterrows():
                assert str(int(peak["slice_index"]) + 1) in manifest.loc[item_id, "finding"].split(",")
        else:
            assert set(peaks["image_label"]) <= {"prior", "current"}
    assert len(read_table(out, "cohort_studies", run_id=runs[1])) > 0
    # the faithfulness sample (2 items each): volumes slice by slice only, pairs also cell by cell
    for run, references in zip(
        runs, ({"image_occlusion"}, {"image_occlusion", "occlusion", "pixel_occlusion"}), strict=True
    ):
        trust = read_table(out, "cohort_trust", run_id=run).to_pandas()
        assert set(trust["reference"]) == references and (trust["n_items"] >= 1).all()
        # the sample's checks are a stage of their own in the timings, not "the rest of the shards"
        timings = read_run(open_store(out), run)["timings"]
        assert timings["faithfulness_seconds"] > 0
        rows = {row.label: row.seconds for row in timing_rows(timings)}
        assert (
            rows["Faithfulness sample: perturbation references and checks"] == timings["faithfulness_seconds"]
        )


def test_aggregate_and_report_rebuild_from_the_parquet_outputs(tmp_path, capsys):
    from storage import open_store, read_table, write_part
    from tests.auditing.synthetic import synthetic_run

    answers, tokens = synthetic_run(per_site=6)
    store = open_store(str(tmp_path))
    write_part(store, "answers", "r1", 0, answers)
    write_part(store, "tokens", "r1", 0, tokens)
    assert cli.main(["aggregate", str(tmp_path), "r1", "--group-by", "site"]) == cli.EXIT_OK
    assert "FLAG" in capsys.readouterr().out
    assert "border_share_above_baseline" in set(
        read_table(str(tmp_path), "flags", run_id="r1")["rule"].to_pylist()
    )
    assert cli.main(["report", str(tmp_path), "r1"]) == cli.EXIT_OK
    assert (tmp_path / "report" / "run_id=r1" / "index.html").is_file()


@pytest.mark.parametrize("root", ["file", "sys"])
def test_an_unwritable_output_root_is_one_line_and_exit_2(root, tmp_path, model_dir, prefect_server):
    """In a process of its own, as a user runs it: one line on stderr, no traceback, exit code 2."""
    manifest = local_dataset(tmp_path / "data", 1)
    out = str(tmp_path / "a-file") if root == "file" else "/sys/vlm-audit-out"
    if root == "file":
        (tmp_path / "a-file").write_text("not a folder")
    command = [sys.executable, "-m", "flows.cli", "run", manifest, "--out", out, "--model", model_dir]
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    env.pop("PREFECT_LOGGING_LEVEL", None)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == cli.EXIT_USAGE, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("vlm-audit:")]
    assert "cannot write" in error and "choose an output root" in error


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (StorageConnectionError("the endpoint did not answer"), cli.EXIT_UNFINISHED),  # rerun later
        (CredentialsError("the key was refused"), cli.EXIT_USAGE),  # fix the key first
    ],
)
def test_storage_failures_at_setup_say_whether_a_rerun_can_finish(
    failure, code, tmp_path, model_dir, monkeypatch, capsys
):
    def unreachable(*args, **kwargs):
        raise failure

    monkeypatch.setattr(cli, "_run_flow", unreachable)
    monkeypatch.setattr(cli, "_prefect_api", contextlib.nullcontext)
    manifest = local_dataset(tmp_path / "data", 1)
    assert cli.main(["run", manifest, "--out", str(tmp_path / "out"), "--model", model_dir]) == code
    assert capsys.readouterr().err.strip() == f"vlm-audit: {failure}"


def test_version_names_the_installed_package(capsys):
    from storage import code_version

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"vlm-audit {code_version()}"


@pytest.mark.usefixtures("cli_on_test_server")
def test_a_run_in_which_every_item_failed_says_why_in_a_few_lines(tmp_path, model_dir, capsys):
    """Absolute image paths outside the manifest's folder and `--allowed-inputs`: the dry run says so
    once, and the run ends with the counts, the error types and the first error with its fix."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rows = ["image,question,site"]
    for index in range(3):
        (elsewhere / f"{index}.png").write_bytes(png_bytes(index))
        rows.append(f"{elsewhere / f'{index}.png'},Is there a nodule?,s{index % 2}")
    (tmp_path / "data").mkdir()
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    options = ["--out", str(tmp_path / "out"), "--model", model_dir, "--max-new-tokens", "2"]

    assert cli.main(["run", str(manifest), *options, "--dry-run"]) == cli.EXIT_OK
    printed = capsys.readouterr().out
    assert printed.count("3 of 3 items name inputs outside the manifest's store and allowed_inputs") == 1
    assert "--allowed-inputs" in printed

    assert cli.main(["run", str(manifest), *options, "--shard-size", "2"]) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    lines = captured.err.splitlines()  # Prefect's own log lines too, in this process
    start = next(index for index, line in enumerate(lines) if line.startswith("vlm-audit: "))
    said = [lines[start], *(line for line in lines[start + 1 :] if line.startswith("  "))]
    assert "no item was answered: 3 of 3 items failed and 0 manifest rows were rejected" in said[0]
    assert "3 InputNotAllowed (image)" in said[1]
    assert said[2].startswith("  first: ") and "--allowed-inputs" in said[2]
    assert len(said) == 4 and "Traceback" not in captured.err and "Traceback" not in captured.out
    run_id = said[0].split()[2].rstrip(":")
    # the outputs stay readable: aggregation and the report work on a run without answers
    assert cli.main(["aggregate", str(tmp_path / "out"), run_id]) == cli.EXIT_OK
    assert "0 flags" in capsys.readouterr().out


def test_aggregate_reads_the_grouping_of_runs_written_before_the_settings_were_nested(tmp_path):
    from storage import open_store, write_run

    store = open_store(str(tmp_path))
    write_run(store, "old", {"run_id": "old", "config": {"group_by": ["site"]}})
    write_run(store, "new", {"run_id": "new", "config": {"aggregation": {"group_by": ["scanner"]}}})
    assert cli.stored_grouping(str(tmp_path), "old", None) == ["site"]
    assert cli.stored_grouping(str(tmp_path), "new", None) == ["scanner"]

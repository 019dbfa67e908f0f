"""The vlm-audit CLI: arguments, clear failures, the demo, a run with its summary, the audit hooks."""

from __future__ import annotations

import pytest
from prefect import flow

import audit as audit_package
from flows import cli
from tasks import config, steps
from tests.pipeline.conftest import local_dataset


def test_run_arguments_become_flow_parameters():
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
        ]
    )
    parameters = cli.flow_parameters(args, args.manifest, args.out)
    assert parameters["dask"] == {"address": None, "n_workers": 2, "resources": {"GPU": 1.0}}
    assert parameters["findings"] == ["nodule", "effusion"] and parameters["targets"] == "all"
    assert parameters["model"] is None and parameters["endpoint_url"] == "http://minio:9000"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(
            ["run", "m.csv", "--out", "o", "--dask-address", "tcp://x:1", "--dask-workers", "2"]
        )


@pytest.mark.parametrize("command", [["demo"], ["run", "manifest.csv"]])
def test_without_the_phantom_model_the_cli_says_how_to_build_it(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(config, "default_model", lambda: str(tmp_path / "models" / "positive"))
    code = cli.main([*command, "--out", str(tmp_path / "out"), "--verbose"])
    assert code == cli.EXIT_USAGE
    message = capsys.readouterr().err
    assert (
        "phantom model is not built yet" in message
        and "python -m explainer.phantom.train positive" in message
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("prefect_server")
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


@pytest.mark.usefixtures("prefect_server")
def test_demo_writes_phantom_cases_and_audits_them(tmp_path, model_dir, monkeypatch, capsys):
    monkeypatch.setattr(config, "default_model", lambda: model_dir)  # stands in for the phantom model
    code = cli.main(
        ["demo", "--out", str(tmp_path), "--n", "2", "--max-new-tokens", "2", "--no-aggregate", "--verbose"]
    )
    assert code == cli.EXIT_OK
    header = (tmp_path / "data" / "manifest.csv").read_text().splitlines()[0]
    assert header.startswith("item_id,image,question,roi_box,site,marker")
    assert len(list((tmp_path / "data" / "images").glob("*.png"))) == 2
    assert ": 2 items (2 ok, 0 failed)" in capsys.readouterr().out


def test_aggregate_and_report_stubs_do_not_fake_outputs(monkeypatch, capsys):
    monkeypatch.delattr(audit_package, "aggregate_run", raising=False)
    assert cli.main(["aggregate", "out", "r1"]) == cli.EXIT_USAGE
    assert "does not provide this yet" in capsys.readouterr().err


@pytest.mark.usefixtures("prefect_server")
def test_the_flow_hook_calls_audit_aggregate_run_when_it_exists(monkeypatch):
    @flow
    def hook() -> object:
        return steps.aggregate_run("/out", "r1")

    monkeypatch.delattr(audit_package, "aggregate_run", raising=False)
    assert hook() is None  # skipped with a log line
    calls = []
    fake = lambda out, run_id: calls.append((out, run_id)) or "stats"  # noqa: E731
    monkeypatch.setattr(audit_package, "aggregate_run", fake, raising=False)
    assert hook() == "stats" and calls == [("/out", "r1")]

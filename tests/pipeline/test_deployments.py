"""deployments/prefect.yaml through Prefect's own loaders, the S3 event template, and a served deployment."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from explainer.methods import METHODS
from flows.events import EVENT_NAME, object_created_resource
from storage import open_store, read_table
from tasks.config import AuditConfig
from tests.pipeline.conftest import local_dataset

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"


@pytest.fixture(scope="module")
def deploy_configs() -> dict[str, dict]:
    """The deployments as `prefect deploy` sees them (strict model validation first: the CLI only warns)."""
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions
    from prefect.cli.deploy._models import PrefectYamlModel

    PrefectYamlModel.model_validate(yaml.safe_load(PREFECT_YAML.read_text()))
    configs, actions = _load_deploy_configs_and_actions(PREFECT_YAML, console=Console(quiet=True))
    assert actions["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": PULL_DIRECTORY}}
    ]
    return {config["name"]: config for config in configs}


PULL_DIRECTORY = "{{ prefect.variables.vlm_audit_home }}"


def test_the_pull_step_takes_the_install_path_from_a_prefect_variable(prefect_server):
    """Each site sets where its workers have the project; Prefect resolves it when a run starts."""
    from prefect.utilities.templating import resolve_variables
    from prefect.variables import Variable

    Variable.set("vlm_audit_home", "/srv/audit/vlm-audit", overwrite=True)
    assert asyncio.run(resolve_variables({"directory": PULL_DIRECTORY})) == {
        "directory": "/srv/audit/vlm-audit"
    }


def test_prefect_yaml_deployments_schedules_and_pools(deploy_configs, monkeypatch):
    from prefect.cli.deploy._schedules import _construct_schedules
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from prefect.flows import load_flow_from_entrypoint

    assert set(deploy_configs) == {
        "retrospective-nightly",
        "on-manifest-upload",
        "sweep-hourly",
        "ct-volumes-weekly",
        "longitudinal-cxr-nightly",
    }
    monkeypatch.chdir(REPO)  # entrypoints are relative to the project root, as for `prefect deploy`
    for name, config in deploy_configs.items():
        flow = load_flow_from_entrypoint(config["entrypoint"])
        parameters = dict(config["parameters"])
        if name == "on-manifest-upload":  # the trigger supplies the whole config, manifest included
            parameters["config"] = {**parameters["config"], "manifest": "s3://archive-lake/manifests/x.csv"}
        flow.validate_parameters(parameters)  # every parameter exists and has the right type
        schedules = _construct_schedules(
            config, {}, console=Console(quiet=True), is_interactive=lambda: False
        )
        expected = {"on-manifest-upload": None, "sweep-hourly": IntervalSchedule}.get(name, CronSchedule)
        assert [type(s["schedule"]) for s in schedules or []] == ([expected] if expected else [])
    nightly = deploy_configs["retrospective-nightly"]
    assert nightly["schedules"][0]["cron"] == "0 2 * * *" and nightly["parameters"]["dask"]["resources"] == {
        "GPU": 1
    }
    audit_names = (
        "retrospective-nightly",
        "on-manifest-upload",
        "ct-volumes-weekly",
        "longitudinal-cxr-nightly",
    )
    audits = [deploy_configs[name]["parameters"]["config"] for name in audit_names]
    assert all(
        config["model"] == "google/medgemma-1.5-4b-it" and config["dtype"] == "bfloat16" for config in audits
    )
    assert deploy_configs["ct-volumes-weekly"]["parameters"]["config"]["slices_per_volume"] == 85
    gpu_pools = [deploy_configs[name]["work_pool"] for name in audit_names]
    assert all(
        pool["name"] == "gpu" and pool["job_variables"]["env"]["HF_HUB_OFFLINE"] == "1" for pool in gpu_pools
    )
    assert deploy_configs["sweep-hourly"]["work_pool"]["name"] == "cpu"
    assert deploy_configs["sweep-hourly"]["parameters"]["deployment"] == "vlm-audit/on-manifest-upload"


def test_the_audit_flow_takes_one_config_that_prefect_shows_with_its_descriptions():
    from prefect.utilities.callables import parameter_schema

    from flows.audit import audit

    schema = parameter_schema(audit).model_dump()
    assert set(schema["properties"]) == {"config", "run_id", "dask", "progress"}
    assert all(schema["properties"][name]["description"] for name in ("config", "run_id", "dask", "progress"))
    fields = schema["definitions"]["AuditConfig"]["properties"]
    assert set(fields) == set(AuditConfig.model_fields)
    for name, field in AuditConfig.model_fields.items():
        assert fields[name]["description"] == field.description, name
    assert fields["method"]["enum"] == list(METHODS)


def test_s3_event_trigger_matches_the_prefix_and_renders_the_manifest_uri(deploy_configs):
    """The automation Prefect would create, evaluated by the server's own trigger and action code."""
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.server.events.schemas.automations import Automation, TriggeredAction
    from prefect.server.events.schemas.events import ReceivedEvent

    [trigger] = _initialize_deployment_triggers(
        "on-manifest-upload", deploy_configs["on-manifest-upload"]["triggers"]
    )
    trigger.set_deployment_id(uuid.uuid4())
    automation = Automation.model_validate(
        {**trigger.as_automation().model_dump(mode="json"), "id": str(uuid.uuid4())}
    )
    now = dt.datetime.now(dt.UTC)

    def event(bucket: str, key: str, name: str = EVENT_NAME) -> ReceivedEvent:
        return ReceivedEvent(
            occurred=now, event=name, resource=object_created_resource(bucket, key), id=uuid.uuid4()
        )

    uploaded = event("archive-lake", "manifests/2024/batch-07.csv")
    assert automation.trigger.covers(uploaded)
    assert not automation.trigger.covers(event("archive-lake", "images/a.png"))
    assert not automation.trigger.covers(event("archive-lake", "manifests/2024/scan-001.png"))  # an image
    assert automation.trigger.covers(event("archive-lake", "manifests/batch-08.PARQUET"))
    assert not automation.trigger.covers(event("other-bucket", "manifests/batch-07.csv"))
    assert EVENT_NAME in automation.trigger.expect
    [action] = automation.actions
    fired = TriggeredAction(
        automation=automation, triggered=now, triggering_labels={}, triggering_event=uploaded, action=action
    )
    parameters = asyncio.run(action.render_parameters(fired))
    assert parameters["config"]["manifest"] == "s3://archive-lake/manifests/2024/batch-07.csv"
    # the rendered config is the deployment's own settings with the manifest: a complete, valid config
    settings = {
        **deploy_configs["on-manifest-upload"]["parameters"]["config"],
        "manifest": parameters["config"]["manifest"],
    }
    assert parameters == {"config": settings}
    AuditConfig(**parameters["config"])


@pytest.mark.integration
def test_served_deployment_runs_to_completion(tmp_path, model_dir, prefect_server, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.runner import Runner

    from flows.audit import audit

    monkeypatch.chdir(REPO)
    manifest = local_dataset(tmp_path / "data", 2)
    out = str(tmp_path / "out")
    settings = {"out": out, "model": model_dir, "max_new_tokens": 2, "aggregate": False}
    runner = Runner(name="vlm-audit-test-runner")
    runner.add_deployment(
        audit.to_deployment(name="served", parameters={"config": settings, "run_id": "served"})
    )
    flow_run = run_deployment(
        "vlm-audit/served", parameters={"config": {**settings, "manifest": manifest}}, timeout=0
    )

    asyncio.run(runner.start(run_once=True))  # picks up the scheduled run, executes it in a subprocess

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state.is_completed(), state
    answers = read_table(out, "answers", "served")
    assert sorted(answers.column("item_id").to_pylist()) == ["item-000", "item-001"]
    assert open_store(out).exists("runs/run_id=served/run.json")

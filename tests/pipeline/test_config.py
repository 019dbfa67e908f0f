"""Run configuration: validation messages, the identity that names a run, derived run ids."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from storage import DEFAULT_MAX_IMAGE_BYTES, parse_manifest
from tasks.config import DEFAULT_FINDINGS, IDENTITY_FIELDS, AuditConfig, derive_run_id

MANIFEST = b"item_id,image,question\na1,a.png,Where?\na2,b.png,Where?\n"


def _config(**overrides) -> AuditConfig:
    return AuditConfig(manifest="/data/batch-07.csv", out="/out", model="tiny", **overrides)


def test_defaults_and_findings_normalisation():
    config = _config(findings=" Nodule, effusion,nodule ,")
    assert config.findings == ("nodule", "effusion")
    assert config.explainer_targets() == ["nodule", "effusion"]
    assert _config(targets="all").explainer_targets() == "all"
    assert {"right", "left", "yes", "no", "pneumothorax", "catheter"} <= set(DEFAULT_FINDINGS)


def test_invalid_settings_say_what_is_allowed():
    with pytest.raises(ValidationError, match="'answer', 'findings' or 'all'"):
        _config(targets="everything")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        _config(shard_size=0)
    with pytest.raises(ValidationError, match="non-empty findings vocabulary"):
        _config(findings=[])
    with pytest.raises(ValidationError, match="unsupported URI scheme 'gs'"):
        AuditConfig(manifest="gs://bucket/m.csv", out="/out", model="tiny")


def test_run_id_depends_on_content_and_identity_not_on_placement():
    manifest = parse_manifest(MANIFEST, "/data/batch-07.csv")
    run_id = derive_run_id(manifest, _config())
    assert run_id.startswith("batch-07-") and len(run_id) == len("batch-07-") + 12
    assert derive_run_id(manifest, _config(device="cuda", endpoint_url="http://minio:9000")) == run_id
    assert derive_run_id(manifest, _config(batch_size=8)) == run_id  # outputs do not depend on it
    assert derive_run_id(manifest, _config(shard_size=4)) != run_id
    assert derive_run_id(manifest, _config(findings=["effusion"])) != run_id
    changed = parse_manifest(MANIFEST.replace(b"b.png", b"c.png"), "/data/batch-07.csv")
    assert derive_run_id(changed, _config()) != run_id


def test_allowed_inputs_are_checked_canonical_prefixes():
    config = _config(allowed_inputs=" s3://other/cxr/ , file:///data/scans,/data/scans/")
    assert config.allowed_inputs == ("s3://other/cxr", "/data/scans")
    assert _config().allowed_inputs == () and _config().max_image_bytes == DEFAULT_MAX_IMAGE_BYTES
    with pytest.raises(ValidationError, match="'data/scans' must be absolute"):
        _config(allowed_inputs="data/scans")
    with pytest.raises(ValidationError, match="unsupported URI scheme 'gs'"):
        _config(allowed_inputs="gs://bucket/x")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        _config(max_image_bytes=0)
    scope = _config(allowed_inputs="s3://other", max_image_bytes=1024).input_scope()
    assert (scope.home, scope.allowed_inputs, scope.max_image_bytes) == ("/data", ("s3://other",), 1024)


def test_what_a_run_may_read_is_part_of_its_identity_and_where_it_runs_is_not():
    manifest = parse_manifest(MANIFEST, "/data/batch-07.csv")
    run_id = derive_run_id(manifest, _config())
    assert set(_config().identity()) == set(IDENTITY_FIELDS)
    assert (
        derive_run_id(
            manifest, _config(device="cpu", aggregation={"fail_on_flags": "model", "group_by": "site"})
        )
        == run_id
    )
    assert derive_run_id(manifest, _config(allowed_inputs="s3://other")) != run_id
    assert derive_run_id(manifest, _config(max_image_bytes=1024)) != run_id
    assert derive_run_id(manifest, _config(max_question_tokens=64)) != run_id
    assert derive_run_id(manifest, _config(allowed_inputs="s3://a,s3://b")) == derive_run_id(
        manifest, _config(allowed_inputs="s3://b,s3://a")
    )

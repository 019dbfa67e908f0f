"""The S3 object-created event that triggers `on-manifest-upload` (deployments/prefect.yaml).

Self-hosted Prefect has no S3 webhook of its own: a small bridge (e.g. an AWS Lambda subscribed to
the bucket's ObjectCreated notifications) calls `emit_object_created` with PREFECT_API_URL pointing at
the server; the trigger itself keeps only manifests (the `object-suffix` label), so images uploaded
under the same prefix start nothing. On Prefect Cloud a webhook template can build the same
event from the EventBridge payload. The trigger matches on the resource id and reads the labels.
"""

from __future__ import annotations

from typing import Any

EVENT_NAME = "aws.s3.object.created"


def object_created_resource(bucket: str, key: str) -> dict[str, str]:
    """Resource labels: id `s3://bucket/key` (the trigger matches a prefix of it), bucket, object-key,
    and object-suffix (`.csv`, lower-case; "" without one): Prefect matches label values exactly or by
    prefix, never by suffix, so the trigger filters manifests on this label."""
    name = key.rsplit("/", 1)[-1]
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return {
        "prefect.resource.id": f"s3://{bucket}/{key}",
        "bucket": bucket,
        "object-key": key,
        "object-suffix": suffix,
    }


def emit_object_created(bucket: str, key: str, payload: dict[str, Any] | None = None) -> Any:
    """Send the event to the Prefect API in the environment; returns the event (None if not sent)."""
    from prefect.events import emit_event

    return emit_event(EVENT_NAME, resource=object_created_resource(bucket, key), payload=payload or {})

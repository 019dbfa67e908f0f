"""boto3 plumbing: one client factory, resolved settings for pyarrow/DuckDB, and error translation.

Settings come from the standard AWS chain (environment, ``AWS_PROFILE``, ``~/.aws/config`` and
``~/.aws/credentials``, instance roles); boto3 itself honours ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``.
An explicit ``endpoint_url`` wins over all of them. Secrets are held only by botocore and by
``S3Settings`` fields that are excluded from ``repr``; no message built here includes one.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions as bex
import botocore.session
from botocore.config import Config

from storage.errors import CredentialsError, ObjectNotFound, StorageConnectionError, StorageError

DEFAULT_REGION = "us-east-1"
# standard mode retries throttling and transient 5xx/connection errors with backoff; 4xx are not retried
_RETRIES = {"mode": "standard", "max_attempts": 5}
# every request is bounded: connecting, and each wait for bytes (a stalled response), retries included
CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 60

CREDENTIAL_HINT = (
    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), "
    "or AWS_PROFILE and ~/.aws/credentials"
)
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId": "the access key id is unknown to {endpoint}",
    "SignatureDoesNotMatch": "the secret key does not match the access key id",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is malformed or invalid",
    "TokenRefreshRequired": "the session token must be refreshed",
    "AccessDenied": "access denied for this identity",
    "AllAccessDisabled": "all access to this object has been disabled",
    "403": "access denied (HTTP 403) for this identity",
    "Forbidden": "access denied (HTTP 403) for this identity",
}


def _env_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@functools.cache
def _shared_loader() -> Any:
    return botocore.session.get_session().get_component("data_loader")


def _session(region: str | None) -> boto3.session.Session:
    """A fresh session (credentials and config re-read each time) sharing one service-model loader.

    Parsing the S3 service model costs ~0.2 s per session; the parsed models do not depend on
    credentials or region, so every session reuses the first session's loader (~0.05 s per client).
    """
    with _profile_errors():
        core = botocore.session.get_session()
        core.register_component("data_loader", _shared_loader())
        return boto3.session.Session(botocore_session=core, region_name=region)


@contextmanager
def _profile_errors() -> Iterator[None]:
    # botocore resolves AWS_PROFILE lazily: at session or at client creation, depending on the call
    try:
        yield
    except bex.ProfileNotFound as exc:
        raise CredentialsError(
            f"AWS profile not found ({exc.kwargs.get('profile')!r}); check AWS_PROFILE"
        ) from exc


def make_client(
    endpoint_url: str | None = None,
    region: str | None = None,
    *,
    session: boto3.session.Session | None = None,
) -> Any:
    """A boto3 S3 client with timeouts and standard-mode retries; path-style addressing for custom endpoints."""
    custom_endpoint = endpoint_url or _env_endpoint()
    config = Config(
        retries=_RETRIES,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        # MinIO, Ceph and moto are addressed by path; virtual-host names like bucket.localhost rarely resolve
        s3={"addressing_style": "path"} if custom_endpoint else None,
    )
    session = session or _session(region)
    with _profile_errors():
        return session.client("s3", endpoint_url=endpoint_url, config=config)


def client_endpoint(client: Any) -> str:
    """The endpoint URL the client talks to (after boto3 applied AWS_ENDPOINT_URL and config files)."""
    return str(client.meta.endpoint_url)


def is_aws_endpoint(endpoint_url: str) -> bool:
    """True for Amazon's own endpoints, where pyarrow/DuckDB need no endpoint override."""
    host = urlsplit(endpoint_url).hostname or ""
    return host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn")


@dataclass(frozen=True)
class S3Settings:
    """Resolved endpoint, region and credentials for non-boto3 readers (pyarrow, DuckDB).

    The credential fields are excluded from ``repr`` so the object can be logged safely.
    """

    endpoint_url: str | None  # None: Amazon's default endpoint for the region
    region: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    @property
    def endpoint_host(self) -> str | None:
        """``host:port`` of a custom endpoint, as pyarrow's ``endpoint_override`` and DuckDB want it."""
        return urlsplit(self.endpoint_url).netloc if self.endpoint_url else None

    @property
    def endpoint_scheme(self) -> str:
        return urlsplit(self.endpoint_url).scheme if self.endpoint_url else "https"


def resolve_settings(endpoint_url: str | None = None, region: str | None = None) -> S3Settings:
    """Resolve the same settings boto3 would use, for readers that do not read AWS configuration."""
    session = _session(region)
    client = make_client(endpoint_url, region, session=session)
    endpoint = client_endpoint(client)
    with translate_errors("resolve credentials", "s3://", endpoint):
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    if frozen is None or not frozen.access_key or not frozen.secret_key:
        raise CredentialsError(f"no AWS credentials found for S3 endpoint {endpoint}; {CREDENTIAL_HINT}")
    return S3Settings(
        endpoint_url=None if is_aws_endpoint(endpoint) else endpoint,
        region=client.meta.region_name or DEFAULT_REGION,
        access_key_id=frozen.access_key,
        secret_access_key=frozen.secret_key,
        session_token=frozen.token,
    )


def is_precondition_failure(exc: BaseException | None) -> bool:
    """True for a conditional request refused because its condition failed (HTTP 412)."""
    return isinstance(exc, bex.ClientError) and (
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412
        or exc.response.get("Error", {}).get("Code") == "PreconditionFailed"
    )


def translate(exc: Exception, action: str, uri: str, endpoint: str) -> StorageError:
    """Map a botocore exception to a storage error whose message names the setting to check."""
    where = f"{action} {uri} (endpoint {endpoint})"
    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError | bex.CredentialRetrievalError):
        return CredentialsError(f"no usable AWS credentials for {where}; {CREDENTIAL_HINT}")
    if isinstance(exc, bex.EndpointConnectionError | bex.ConnectTimeoutError | bex.ReadTimeoutError):
        return StorageConnectionError(
            f"cannot reach the S3 endpoint for {where}; check AWS_ENDPOINT_URL or the endpoint_url option"
        )
    if isinstance(exc, bex.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _NOT_FOUND_CODES:
            return ObjectNotFound(f"no such object: {uri} (endpoint {endpoint})")
        if code == "NoSuchBucket":
            return ObjectNotFound(f"no such bucket for {where}; check the bucket name in the URI")
        if code in _CREDENTIAL_CODES:
            reason = _CREDENTIAL_CODES[code].format(endpoint=endpoint)
            return CredentialsError(f"S3 refused {where}: {code}: {reason}; {CREDENTIAL_HINT}")
        return StorageError(f"S3 {where} failed with {code} (HTTP {status})")
    if isinstance(exc, bex.BotoCoreError):
        return StorageError(f"S3 {where} failed: {type(exc).__name__}")
    raise TypeError(f"not a botocore exception: {type(exc).__name__}")


@contextmanager
def translate_errors(action: str, uri: str, endpoint: str) -> Iterator[None]:
    """Re-raise botocore errors inside the block as storage errors (see ``translate``)."""
    try:
        yield
    except (bex.BotoCoreError, bex.ClientError) as exc:
        raise translate(exc, action, uri, endpoint) from exc

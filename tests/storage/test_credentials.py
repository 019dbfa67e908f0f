"""Wrong or missing credentials fail with CredentialsError, write nothing, and never leak the secret."""

import traceback

import pytest

from storage import CredentialsError, arrow_filesystem, open_store, read_table, write_part
from storage._s3 import resolve_settings
from storage.engines import duckdb_s3_secret_sql
from tests.storage.rows import answer_row

pytestmark = pytest.mark.integration


def _leaks(exc: BaseException, secret: str) -> bool:
    """Does the secret appear anywhere a log or a user could see it: message, repr, chained traceback?"""
    return any(secret in text for text in (str(exc), repr(exc), "".join(traceback.format_exception(exc))))


def _use(monkeypatch, key_id: str, secret: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)


def test_valid_iam_key_works(s3_bucket, s3_auth, monkeypatch):
    _use(monkeypatch, s3_auth.access_key_id, s3_auth.secret_access_key)
    store = open_store(s3_bucket)
    store.write_bytes("ok.txt", b"fine")
    assert store.read_bytes("ok.txt") == b"fine"


def test_wrong_secret_is_credentials_error_and_writes_nothing(s3_bucket, s3_auth, monkeypatch):
    wrong_secret = "wrong-" + s3_auth.secret_access_key[:20]
    _use(monkeypatch, s3_auth.access_key_id, wrong_secret)
    store = open_store(s3_bucket)
    with pytest.raises(CredentialsError, match=r"SignatureDoesNotMatch.*AWS_SECRET_ACCESS_KEY") as info:
        write_part(store, "answers", "r1", 0, [answer_row()])
    assert not _leaks(info.value, wrong_secret) and not _leaks(info.value, s3_auth.secret_access_key)
    assert wrong_secret not in repr(store)
    _use(monkeypatch, s3_auth.access_key_id, s3_auth.secret_access_key)
    assert open_store(s3_bucket).list() == []


def test_unknown_key_id_is_credentials_error(s3_bucket, s3_auth, s3_env, monkeypatch):
    _use(monkeypatch, "AKIANOSUCHKEY0000000", s3_env.secret_access_key)
    with pytest.raises(CredentialsError, match=r"InvalidAccessKeyId.*AWS_ACCESS_KEY_ID") as info:
        open_store(s3_bucket).write_bytes("x.txt", b"x")
    assert not _leaks(info.value, s3_env.secret_access_key)
    with pytest.raises(CredentialsError):
        open_store(s3_bucket).read_bytes("x.txt")


def test_pyarrow_reader_with_wrong_secret_fails_without_leaking(s3_bucket, s3_auth, monkeypatch):
    _use(monkeypatch, s3_auth.access_key_id, s3_auth.secret_access_key)
    write_part(open_store(f"{s3_bucket}/out"), "answers", "r1", 0, [answer_row()])
    wrong_secret = "pyarrow-wrong-secret-123"
    _use(monkeypatch, s3_auth.access_key_id, wrong_secret)
    with pytest.raises(
        CredentialsError, match=r"S3 refused reading answers parts.*AWS_SECRET_ACCESS_KEY"
    ) as info:
        read_table(f"{s3_bucket}/out", "answers")
    assert not _leaks(info.value, wrong_secret)


def test_no_credentials_at_all(s3_bucket, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(CredentialsError, match=r"no usable AWS credentials.*AWS_ACCESS_KEY_ID.*AWS_PROFILE"):
        open_store(s3_bucket).write_bytes("x.txt", b"x")
    with pytest.raises(CredentialsError, match="no AWS credentials found"):
        arrow_filesystem(f"{s3_bucket}/out")


def test_missing_profile_names_the_setting(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(CredentialsError, match="AWS_PROFILE"):
        open_store("s3://any-bucket")


def test_resolved_settings_hide_the_secret_but_feed_duckdb(s3_env):
    settings = resolve_settings()
    assert settings.endpoint_url == s3_env.endpoint_url  # from AWS_ENDPOINT_URL, as boto3 resolved it
    secret = s3_env.secret_access_key
    assert secret not in repr(settings) and secret not in str(settings)
    assert settings.secret_access_key == secret
    sql = duckdb_s3_secret_sql(settings)
    host = s3_env.endpoint_url.removeprefix("http://")
    assert f"ENDPOINT '{host}'" in sql and "URL_STYLE 'path'" in sql and "USE_SSL false" in sql
    assert "TEMPORARY SECRET" in sql and "REGION 'us-east-1'" in sql

"""InputScope: a manifest's images and masks come from its own store or an allowed prefix, nowhere else."""

from __future__ import annotations

import os

import boto3
import pytest

from storage import InputNotAllowed, InputScope, InvalidURIError, ObjectTooLarge, StoreCache, input_prefix


@pytest.fixture
def batch(tmp_path):
    """A local manifest's folder with one image, a subfolder, and a secret file beside the folder."""
    folder = tmp_path / "batch"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(b"A")
    (tmp_path / "secret.png").write_bytes(b"S")
    return folder


def _refusal(scope: InputScope, uri: str) -> str:
    with pytest.raises(InputNotAllowed) as raised:
        scope.check(uri)
    return str(raised.value)


def test_a_local_manifest_reads_its_folder_and_below(batch):
    scope = InputScope(str(batch / "manifest.csv"))
    assert scope.check(str(batch / "images" / "a.png")) == str(batch / "images" / "a.png")
    assert scope.check(f"file://{batch}/images/a.png") == str(batch / "images" / "a.png")
    assert scope.read(str(batch / "images" / "a.png"), StoreCache()) == b"A"


@pytest.mark.parametrize(
    "reference",
    ["{tmp}/secret.png", "{batch}/../secret.png", "file://{tmp}/secret.png", "{tmp}/batch-other/a.png"],
)
def test_a_local_manifest_cannot_reach_outside_its_folder(batch, reference):
    scope = InputScope(str(batch / "manifest.csv"))
    uri = reference.format(tmp=batch.parent, batch=batch)
    message = _refusal(scope, uri)
    assert f"outside the manifest's store {batch}" in message
    assert "add a prefix that covers it to allowed_inputs (--allowed-inputs" in message


def test_a_symlink_pointing_out_of_the_folder_is_refused_and_says_nothing_of_its_target(batch):
    scope = InputScope(str(batch / "manifest.csv"))
    (batch / "images" / "leak.png").symlink_to(batch.parent / "secret.png")
    (batch / "images" / "dangling.png").symlink_to(batch.parent / "no-such-file.png")
    (batch / "etc").symlink_to("/etc")  # a linked folder: everything below it is outside
    leak = _refusal(scope, str(batch / "images" / "leak.png"))
    dangling = _refusal(scope, str(batch / "images" / "dangling.png"))
    assert "secret" not in leak and "no-such-file" not in dangling  # the real path is not shown
    assert leak.replace("leak", "X") == dangling.replace("dangling", "X")  # existing or not: same words
    _refusal(scope, str(batch / "etc" / "passwd"))
    (batch / "images" / "alias.png").symlink_to(batch / "images" / "a.png")  # inside: fine
    assert scope.check(str(batch / "images" / "alias.png")) == str(batch / "images" / "a.png")


def test_allowed_inputs_open_a_folder_but_not_its_neighbours(batch, tmp_path):
    shared = tmp_path / "shared"
    (shared / "cxr").mkdir(parents=True)
    (shared / "cxr" / "b.png").write_bytes(b"B")
    scope = InputScope(str(batch / "manifest.csv"), (f"file://{shared}/cxr/",))
    assert scope.allowed_inputs == (str(shared / "cxr"),)  # canonical
    assert scope.read(str(shared / "cxr" / "b.png"), StoreCache()) == b"B"
    _refusal(scope, str(shared / "cxr-private" / "b.png"))  # a folder, not a string prefix
    message = _refusal(scope, str(tmp_path / "secret.png"))
    assert f"outside allowed_inputs ({shared / 'cxr'})" in message


def test_an_s3_manifest_reads_its_bucket_only():
    scope = InputScope("s3://scans/batch-07/manifest.csv")
    assert scope.home == "s3://scans"
    assert scope.check("s3://scans/other-prefix/a.png") == "s3://scans/other-prefix/a.png"
    message = _refusal(scope, "s3://other-bucket/a.png")
    assert "s3://other-bucket/a.png is outside the manifest's store s3://scans" in message
    scope = InputScope("s3://scans/m.csv", ("s3://other-bucket/cxr",))
    assert scope.check("s3://other-bucket/cxr/a.png") == "s3://other-bucket/cxr/a.png"
    _refusal(scope, "s3://other-bucket/cxr-private/a.png")
    _refusal(scope, "s3://other-bucket/a.png")


def test_an_s3_manifest_cannot_name_local_files_and_cannot_tell_if_they_exist(tmp_path, monkeypatch):
    scope = InputScope("s3://scans/m.csv")
    local = tmp_path / "x.png"
    messages = []
    for exists in (True, False):
        if exists:
            local.write_bytes(b"x")
        else:
            local.unlink()
        messages += [_refusal(scope, str(local)), _refusal(scope, f"file://{local}")]
    assert messages[0] == messages[2] and messages[1] == messages[3]  # whether or not the file exists
    monkeypatch.setattr(os, "open", lambda *args: pytest.fail("a refused file was opened"))
    local.write_bytes(b"x")
    with pytest.raises(InputNotAllowed):
        scope.read(str(local), StoreCache())
    monkeypatch.undo()
    assert InputScope("s3://scans/m.csv", (str(tmp_path),)).read(str(local), StoreCache()) == b"x"


def test_the_size_cap_names_the_setting(batch):
    scope = InputScope(str(batch / "manifest.csv"), max_image_bytes=1)
    (batch / "images" / "big.png").write_bytes(b"xx")
    with pytest.raises(ObjectTooLarge, match=r"2 bytes, more than the 1 allowed; raise max_image_bytes"):
        scope.read(str(batch / "images" / "big.png"), StoreCache())


@pytest.mark.parametrize("prefix", ["data/scans", "gs://bucket/x", "s3://", ""])
def test_allowed_inputs_must_be_absolute_uris(prefix):
    with pytest.raises(InvalidURIError):
        input_prefix(prefix)


@pytest.mark.integration
def test_s3_confinement_against_a_real_server(s3_bucket):
    """Over HTTP (moto): the manifest's bucket is read, another bucket only when allowed."""
    s3 = boto3.client("s3")
    own, other = s3_bucket.removeprefix("s3://"), f"{s3_bucket.removeprefix('s3://')}-other"
    s3.create_bucket(Bucket=other)
    s3.put_object(Bucket=own, Key="images/a.png", Body=b"A")
    s3.put_object(Bucket=other, Key="cxr/b.png", Body=b"B")
    objects = StoreCache()
    scope = InputScope(f"{s3_bucket}/manifests/m.csv")
    assert scope.read(f"{s3_bucket}/images/a.png", objects) == b"A"
    with pytest.raises(InputNotAllowed, match=f"s3://{other}/cxr/b.png is outside"):
        scope.read(f"s3://{other}/cxr/b.png", objects)
    allowed = InputScope(f"{s3_bucket}/manifests/m.csv", (f"s3://{other}/cxr",), max_image_bytes=1)
    assert allowed.read(f"s3://{other}/cxr/b.png", objects) == b"B"
    s3.put_object(Bucket=other, Key="cxr/big.png", Body=b"BB")
    with pytest.raises(ObjectTooLarge, match="max_image_bytes"):
        allowed.read(f"s3://{other}/cxr/big.png", objects)

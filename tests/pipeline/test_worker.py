"""explain_item / explain_shard as plain functions (no Prefect): failures become rows, parts commit last."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from explainer import Explainer
from storage import (
    CredentialsError,
    LocalStore,
    ManifestItem,
    StorageConnectionError,
    StoreCache,
    manifest_fingerprint,
    overlay_folder,
    read_manifest,
    read_table,
    to_arrow,
)
from tasks import cache, retry
from tasks.config import AuditConfig
from tasks.shards import ItemDeferred, ShardJob
from tasks.worker import OverlayWriter, explain_item, explain_shard
from tests.pipeline.conftest import local_dataset, manifest_bytes, png_bytes
from tests.rows import assert_same_rows


def _item(tmp_path, name: str, data: bytes | None, **overrides) -> ManifestItem:
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    fields = {
        "item_id": name.replace(".", "_"),
        "image_uris": (str(path),),
        "question": "Where is the nodule?",
        "roi_box": None,
        "roi_mask_uri": None,
        "metadata": {},
        "row_number": 1,
    }
    return ManifestItem(**{**fields, **overrides})


@pytest.fixture
def config(model_dir, tmp_path) -> AuditConfig:
    return AuditConfig(
        manifest=str(tmp_path / "m.csv"),
        out=str(tmp_path / "out"),
        model=model_dir,
        max_new_tokens=2,
        device="cpu",
    )


@pytest.fixture
def explainer(model_dir):
    return cache.get_explainer(model_dir, "cpu")


@pytest.mark.parametrize("case", ["missing", "truncated", "unsupported", "dicom_without_pixels", "huge"])
def test_bad_images_become_error_rows(case, bad_images, tmp_path, config, explainer):
    name, data, stage, error_type = bad_images[case]
    outcome = explain_item(explainer, _item(tmp_path, name, data), config, StoreCache())
    assert not outcome.ok and outcome.tokens == []
    [error] = outcome.errors
    assert (error.stage, error.error_type) == (stage, error_type)
    assert name in error.message  # says which file
    to_arrow("answers", [outcome.answer])
    to_arrow("errors", [error.to_row()])


def test_roi_outside_the_image_is_rejected_before_the_model_runs(tmp_path, config, explainer, monkeypatch):
    monkeypatch.setattr(explainer, "explain", lambda *a, **k: pytest.fail("the model must not run"))
    item = _item(tmp_path, "a.png", png_bytes(0, (40, 32)), roi_box=(0.0, 0.0, 41.0, 10.0))
    [error] = explain_item(explainer, item, config, StoreCache()).errors
    assert (error.stage, error.error_type) == ("image", "InvalidRoiBox") and "40x32" in error.message


def test_generation_and_explanation_failures_are_staged(tmp_path, config, explainer, monkeypatch):
    empty = _item(tmp_path, "a.png", png_bytes(0), question="   ")  # only a manifest bypass gets here
    [error] = explain_item(explainer, empty, config, StoreCache()).errors
    assert (error.stage, error.error_type) == (
        "generate",
        "ValueError",
    ) and "question is empty" in error.message

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(explainer, "relevance", out_of_memory)
    [error] = explain_item(explainer, _item(tmp_path, "b.png", png_bytes(1)), config, StoreCache()).errors
    assert (error.stage, error.error_type) == ("explain", "RuntimeError") and "out of memory" in error.message


@pytest.mark.timeout(60)  # a FIFO opened for reading would wait for a writer forever
def test_inputs_outside_the_manifest_store_or_unreadable_become_image_error_rows(
    tmp_path, model_dir, explainer, monkeypatch
):
    monkeypatch.setattr(explainer, "explain", lambda *a, **k: pytest.fail("the model must not run"))
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "secret.png").write_bytes(png_bytes(0))
    (data / "a.png").write_bytes(png_bytes(1))
    (data / "leak.png").symlink_to(tmp_path / "secret.png")
    os.mkfifo(data / "pipe.png")
    (data / "big.png").write_bytes(png_bytes(2, (400, 400)))
    config = AuditConfig(
        manifest=str(data / "m.csv"), out=str(tmp_path / "out"), model=model_dir, max_image_bytes=20_000
    )
    cases = {  # item id → (image, roi_mask, error type)
        "outside": (tmp_path / "secret.png", None, "InputNotAllowed"),
        "symlink": (data / "leak.png", None, "InputNotAllowed"),
        "mask-outside": (data / "a.png", tmp_path / "secret.png", "InputNotAllowed"),
        "fifo": (data / "pipe.png", None, "NotARegularFile"),
        "big": (data / "big.png", None, "ObjectTooLarge"),
    }
    for item_id, (image, mask, error_type) in cases.items():
        item = ManifestItem(item_id, (str(image),), "Where?", None, mask and str(mask), {}, 1)
        outcome = explain_item(explainer, item, config, StoreCache())
        [error] = outcome.errors
        assert not outcome.ok and (error.stage, error.error_type) == ("image", error_type), item_id
    allowed = AuditConfig(**{**config.model_dump(), "allowed_inputs": "/dev"})
    zero = ManifestItem("zero", ("/dev/zero",), "Where?", None, None, {}, 1)
    [error] = explain_item(explainer, zero, allowed, StoreCache()).errors
    assert (error.stage, error.error_type) == ("image", "NotARegularFile")
    [error] = explain_item(explainer, zero, config, StoreCache()).errors
    assert error.error_type == "InputNotAllowed" and "--allowed-inputs" in error.message


def test_shard_continues_past_bad_items_and_commits_answers_last(
    tmp_path, model_dir, bad_images, monkeypatch
):
    manifest_path = local_dataset(tmp_path / "data", 2)
    name, data, _stage, _type = bad_images["truncated"]
    (tmp_path / "data" / name).write_bytes(data)
    with open(manifest_path, "a") as handle:
        handle.write(f"bad-1,{name},Where is the nodule?,north,\n")
    manifest = read_manifest(manifest_path)
    config = AuditConfig(
        manifest=manifest_path,
        out=str(tmp_path / "out"),
        model=model_dir,
        shard_size=3,
        max_new_tokens=2,
        device="cpu",
    )
    written: list[str] = []
    original = LocalStore.write_bytes
    monkeypatch.setattr(
        LocalStore, "write_bytes", lambda self, key, data: written.append(key) or original(self, key, data)
    )

    cache.get_explainer(model_dir, "cpu")  # loaded before: this process must not load it again
    loads = cache.model_load_count()
    summary = explain_shard(ShardJob("r1", 0, manifest_fingerprint(manifest), config))
    assert cache.model_load_count() == loads and summary.model_load_seconds == 0.0
    assert (summary.items, summary.ok, summary.failed, summary.error_rows) == (3, 2, 1, 1)
    parts = [key.split("/")[0] for key in written if key.endswith(".parquet")]
    assert parts == ["tokens", "mentions", "errors", "answers"]  # the answers part is the commit marker
    assert all(key.startswith("overlays/") for key in written[: summary.overlays])
    errors = read_table(config.out, "errors", "r1").to_pylist()
    assert [(row["item_id"], row["stage"], row["error_type"]) for row in errors] == [
        ("bad-1", "image", "CorruptImage")
    ]
    assert sorted(read_table(config.out, "answers", "r1").column("status").to_pylist()) == [
        "error",
        "ok",
        "ok",
    ]


def test_a_changed_manifest_is_refused(tmp_path, model_dir):
    manifest_path = local_dataset(tmp_path / "data", 2)
    config = AuditConfig(manifest=manifest_path, out=str(tmp_path / "out"), model=model_dir, device="cpu")
    with pytest.raises(cache.ManifestChanged, match="changed since the run was planned"):
        explain_shard(ShardJob("r1", 0, "0" * 64, config))


def _overlay(seed: int) -> Image.Image:
    return Image.new("RGB", (24, 16), (seed, 2 * seed, 3 * seed))


class _FailingStore(LocalStore):
    """Refuses overlays of item "b" (a deterministic storage error, so nothing is retried)."""

    def write_bytes(self, key: str, data: bytes) -> str:
        if "/b/" in key:
            raise CredentialsError("access denied")
        return super().write_bytes(key, data)


def test_overlay_writer_stores_pngs_in_the_background_and_reports_failures_per_item(tmp_path):
    store = _FailingStore(str(tmp_path / "out"))
    with OverlayWriter(store, "r1") as writer:
        for name in "ab":
            sink = writer.sink_for(_item(tmp_path, f"{name}.png", None, item_id=name))
            sink("answer", _overlay(1))
            sink("word-nodule", _overlay(2))
        stored, errors = writer.results()
    assert stored == 2
    assert [(error.item_id, error.stage, error.error_type) for error in errors] == [
        ("b", "write", "CredentialsError")
    ]
    written = sorted(key for key in store.list("overlays/") if key.endswith(".png"))
    assert len(written) == 2 and all("/a/" in key for key in written)
    decoded = Image.open(io.BytesIO(store.read_bytes(written[0])))
    assert decoded.size == (24, 16) and decoded.format == "PNG"


def test_overlay_writer_bounds_pending_overlays_and_reports_any_store_failure_as_a_write_row(tmp_path):
    release = threading.Event()

    class SlowStore(LocalStore):
        def write_bytes(self, key: str, data: bytes) -> str:
            release.wait(10)
            if key.endswith("boom.png"):
                raise RuntimeError("bug in the store")
            return super().write_bytes(key, data)

    with OverlayWriter(SlowStore(str(tmp_path / "out")), "r1", max_pending=2) as writer:
        sink = writer.sink_for(_item(tmp_path, "a.png", None, item_id="a"))
        sink("one", _overlay(1))
        sink("two", _overlay(2))
        third = threading.Thread(target=sink, args=("boom", _overlay(3)))
        third.start()
        third.join(0.3)
        assert third.is_alive()  # blocked: two overlays are already waiting
        release.set()
        third.join(10)
        stored, errors = writer.results()
    assert stored == 2
    assert [(error.item_id, error.stage, error.error_type) for error in errors] == [
        ("a", "write", "RuntimeError")
    ]


def test_overlay_writer_stops_its_thread_when_the_shard_raises(tmp_path):
    started, release = threading.Event(), threading.Event()
    stored_keys = []

    class SlowStore(LocalStore):
        def write_bytes(self, key: str, data: bytes) -> str:
            started.set()
            release.wait(10)
            stored_keys.append(key)
            return super().write_bytes(key, data)

    def writer_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("overlay-writer")]

    assert not writer_threads()
    with (
        pytest.raises(RuntimeError, match="a part write failed"),
        OverlayWriter(SlowStore(str(tmp_path / "out")), "r1") as writer,
    ):
        sink = writer.sink_for(_item(tmp_path, "a.png", None, item_id="a"))
        for name in ("one", "two", "three"):
            sink(name, _overlay(1))
        assert writer_threads() and started.wait(10)  # the first overlay is being stored
        threading.Timer(0.2, release.set).start()  # the first overlay finishes while the block unwinds
        raise RuntimeError("a part write failed")
    assert not writer_threads()  # the background thread is gone, not left running
    assert len(stored_keys) == 1  # the overlay in flight was finished; the queued ones were dropped


@pytest.mark.parametrize(
    ("name", "make", "error_type"),
    [
        ("long-name", lambda path: None, "OSError"),  # a 300-character file name: ENAMETOOLONG
        ("loop", lambda path: os.symlink(path, path), "OSError"),  # a symlink to itself: ELOOP
    ],
)
def test_a_poison_item_is_one_error_row_and_its_shard_commits(
    tmp_path, model_dir, name, make, error_type, monkeypatch
):
    manifest_path = local_dataset(tmp_path / "data", 2)
    poison = ("n" * 300 if name == "long-name" else "loop") + ".png"
    make(str(tmp_path / "data" / poison))
    with open(manifest_path, "a") as handle:
        handle.write(f"poison,{poison},Where is the nodule?,north,\n")
    config = AuditConfig(
        manifest=manifest_path, out=str(tmp_path / "out"), model=model_dir, max_new_tokens=2, overlays="none"
    )
    manifest = read_manifest(manifest_path)
    summary = explain_shard(ShardJob("r1", 0, manifest_fingerprint(manifest), config))
    assert (summary.items, summary.ok, summary.failed) == (3, 2, 1)  # the good items are committed
    [error] = read_table(str(tmp_path / "out"), "errors", run_id="r1").to_pylist()
    assert (error["item_id"], error["stage"]) == ("poison", "image") and error["error_type"].endswith("Error")


def test_a_memory_error_while_reading_is_the_items_row(tmp_path, config, explainer):
    class ExhaustedReader(StoreCache):
        def read_uri(self, uri: str, max_bytes: int | None = None) -> bytes:
            raise MemoryError("cannot allocate the object's bytes")

    [error] = explain_item(
        explainer, _item(tmp_path, "a.png", png_bytes(0)), config, ExhaustedReader()
    ).errors
    assert (error.stage, error.error_type) == ("image", "MemoryError")


@pytest.mark.parametrize("failure", [StorageConnectionError("endpoint down"), CredentialsError("bad key")])
def test_an_item_that_fails_for_the_environment_is_deferred_not_committed(
    tmp_path, model_dir, failure, monkeypatch
):
    """An outage or a wrong key is not the item's answer: the shard does not commit, and a rerun after
    the fix completes every item."""
    manifest_path = local_dataset(tmp_path / "data", 2)
    out = tmp_path / "out"
    config = AuditConfig(
        manifest=manifest_path, out=str(out), model=model_dir, max_new_tokens=2, overlays="none"
    )
    manifest = read_manifest(manifest_path)
    cache.remember_manifest(manifest)  # as the flow does: the items' reads are what fail
    job = ShardJob("r1", 0, manifest_fingerprint(manifest), config)
    monkeypatch.setattr(retry.time, "sleep", lambda seconds: None)  # the backoff between retries
    reads = []

    def unavailable(self, uri: str, max_bytes: int | None = None) -> bytes:
        reads.append(uri)
        raise failure

    monkeypatch.setattr(StoreCache, "read_uri", unavailable)
    with pytest.raises(ItemDeferred, match="rerun of the run id redoes it"):
        explain_shard(job)
    assert not (out / "answers").exists()  # nothing committed for the shard
    assert len(reads) == (4 if isinstance(failure, StorageConnectionError) else 1)  # transient: retried
    monkeypatch.undo()
    summary = explain_shard(job)  # storage is back / the key is fixed
    assert (summary.ok, summary.failed) == (2, 0)


def test_an_overlong_question_is_an_error_row_before_the_model_runs(tmp_path, config, explainer, monkeypatch):
    monkeypatch.setattr(explainer.model, "generate", lambda *args, **kwargs: pytest.fail("the model ran"))
    long = _item(
        tmp_path, "a.png", png_bytes(0), question="Is there a nodule? " * 5_000
    )  # ~100,000 characters
    [error] = explain_item(explainer, long, config, StoreCache()).errors
    assert (error.stage, error.error_type) == (
        "generate",
        "ValueError",
    ) and "max_question_tokens" in error.message


def test_a_redone_shard_keeps_no_overlays_of_an_earlier_attempt(tmp_path, model_dir):
    """A crashed attempt's overlays go when the shard is redone: an item that now fails keeps none, an
    item that succeeds keeps only what this attempt wrote."""
    manifest_path = local_dataset(tmp_path / "data", 2)
    out = tmp_path / "out"
    config = AuditConfig(manifest=manifest_path, out=str(out), model=model_dir, max_new_tokens=2)
    manifest = read_manifest(manifest_path)
    job = ShardJob("r1", 0, manifest_fingerprint(manifest), config)
    first = explain_shard(job)
    folders = {item.item_id: out / overlay_folder("r1", item.item_id) for item in manifest.items}
    fresh = {item_id: sorted(p.name for p in folder.iterdir()) for item_id, folder in folders.items()}
    assert first.overlays == 2 and all(fresh.values())
    (folders["item-000"] / "word-left.png").write_bytes(b"from a crashed attempt")  # a stray target
    (tmp_path / "data" / "images" / "img-001.png").write_bytes(b"not a png any more")

    second = explain_shard(job)
    assert (second.ok, second.failed) == (1, 1)
    assert sorted(p.name for p in folders["item-000"].iterdir()) == fresh["item-000"]
    assert not list(folders["item-001"].iterdir())  # its error row has no overlay beside it


def test_logged_answers_are_explained_as_given_and_the_answers_table_says_which(
    tmp_path, model_dir, monkeypatch
):
    manifest_path = local_dataset(tmp_path / "data", 2)
    rows = Path(manifest_path).read_text().splitlines()
    rows[0] += ",answer"
    rows[1] += ",right upper zone"  # item-000: the answer the deployed model gave
    rows[2] += ","  # item-001: none logged, so it is generated
    Path(manifest_path).write_text("\n".join(rows) + "\n")
    config = AuditConfig(manifest=manifest_path, out=str(tmp_path / "out"), model=model_dir, max_new_tokens=2)
    manifest = read_manifest(manifest_path)
    from explainer import generation

    generated, generate = [], generation.generate_answer
    monkeypatch.setattr(
        generation, "generate_answer", lambda *a, **k: generated.append(1) or generate(*a, **k)
    )
    explain_shard(ShardJob("r1", 0, manifest_fingerprint(manifest), config))
    answers = read_table(str(tmp_path / "out"), "answers", run_id="r1").to_pandas().set_index("item_id")
    assert answers.loc["item-000", "answer"] == "right upper zone"
    assert list(answers["answer_source"]) == ["given", "generated"]
    assert len(generated) == 1  # only item-001's answer was generated


# logged answers in MedGemma's styles, in the characters the shipped phantom's tokenizer spells back
LOGGED = {
    "opener": (
        "on the chest radiograph provided there is no clear evidence of a nodule",
        "Is there a nodule?",
    ),
    "located": ("yes there is a nodule in the right upper zone", "Is there a nodule?"),
    "bare": ("yes", "Is there a nodule?"),
}


def test_logged_and_generated_answers_are_read_into_mentions_that_point_at_their_tokens(tmp_path):
    from phantom import MODEL_PATH, sample

    (tmp_path / "images").mkdir()
    rows = []
    for index, case in enumerate(sample(len(LOGGED) + 1, 20_031, tasks=("presence",))):
        case.image.save(tmp_path / f"images/{index}.png")
        rows.append(
            {"item_id": f"generated-{index}", "image": f"images/{index}.png", "question": case.question}
        )
    for row, (name, (answer, question)) in zip(rows, LOGGED.items(), strict=False):
        row.update(item_id=name, question=question, answer=answer)
    rows[-1]["answer"] = ""  # the last item's answer is generated
    manifest_path = tmp_path / "manifest.csv"
    manifest_path.write_bytes(manifest_bytes(rows))
    manifest = read_manifest(str(manifest_path))
    out = str(tmp_path / "out")
    config = AuditConfig(
        manifest=str(manifest_path), out=out, model=str(MODEL_PATH), max_new_tokens=4, targets="all"
    )
    assert explain_shard(ShardJob("r1", 0, manifest_fingerprint(manifest), config)).ok == 4

    rows = read_table(out, "mentions", run_id="r1").to_pylist()
    mentions = {row["item_id"]: row for row in rows if row["item_id"] in LOGGED}
    assert len(mentions) == sum(row["item_id"] in LOGGED for row in rows)  # one mention each
    pick = ("finding", "assertion", "side", "zone", "from_question")
    assert [mentions["opener"][key] for key in pick] == ["nodule", "absent", None, None, False]
    assert [mentions["located"][key] for key in pick] == ["nodule", "present", "right", "upper zone", False]
    assert [mentions["bare"][key] for key in pick] == ["nodule", "present", None, None, True]
    assert mentions["bare"]["finding_positions"] == [] == mentions["opener"]["side_positions"]

    tokens = read_table(out, "tokens", run_id="r1").to_pandas()
    tokens = tokens[tokens.target_kind == "token"]
    text_at = {(row.item_id, row.token_position): row.target_text for row in tokens.itertuples()}

    def spelled(item_id: str, positions: list[int]) -> str:
        return "".join(text_at[(item_id, position)] for position in positions).strip()

    assert spelled("opener", mentions["opener"]["finding_positions"]) == "nodule"
    assert spelled("located", mentions["located"]["finding_positions"]) == "nodule"
    assert spelled("located", mentions["located"]["side_positions"]) == "right"

    from auditing.mentions import read_mentions

    answers = read_table(out, "answers", run_id="r1").to_pandas().set_index("item_id")
    generated = answers.loc["generated-3"]
    assert generated.answer_source == "generated"  # read like the logged ones
    expected = [(m.finding, m.assertion) for m in read_mentions(generated.answer, generated.question)]
    assert [(row["finding"], row["assertion"]) for row in rows if row["item_id"] == "generated-3"] == expected


def test_an_answer_that_cannot_be_read_keeps_its_explanation_and_gets_a_mentions_error(
    tmp_path, config, explainer, monkeypatch
):
    import tasks.worker

    def unreadable(*_args):
        raise ValueError("the rules could not be loaded")

    monkeypatch.setattr(tasks.worker, "read_item_mentions", unreadable)
    outcome = explain_item(explainer, _item(tmp_path, "a.png", png_bytes()), config, StoreCache())
    assert outcome.ok and outcome.tokens and not outcome.mentions
    [error] = outcome.errors
    assert (error.stage, error.error_type) == ("mentions", "ValueError")


def _phantom_manifest(folder: Path, n: int, seed: int) -> str:
    """`n` phantom presence and location cases, then a missing image, a question holding a chat
    control token and an overlong one; returns the manifest's path."""
    from phantom import sample

    (folder / "images").mkdir(parents=True)
    rows = []
    for index, case in enumerate(sample(n, seed, tasks=("presence", "locate"))):
        case.image.save(folder / f"images/{index}.png")
        rows.append({"item_id": f"case-{index}", "image": f"images/{index}.png", "question": case.question})
    rows.insert(3, {"item_id": "missing", "image": "images/none.png", "question": "Is there a nodule?"})
    rows.insert(6, {"item_id": "control", "image": "images/0.png", "question": "Is <start_of_turn> it?"})
    rows.append({"item_id": "long", "image": "images/1.png", "question": "nodule " * 40})
    path = folder / "manifest.csv"
    path.write_bytes(manifest_bytes(rows))
    return str(path)


def test_batched_items_give_the_rows_of_one_item_at_a_time(tmp_path, monkeypatch):
    from phantom import MODEL_PATH

    manifest_path = _phantom_manifest(tmp_path / "data", 10, 20_030)
    manifest = read_manifest(manifest_path)
    tables = {}
    for batch_size in (1, 4, 8):
        out = str(tmp_path / f"out-{batch_size}")
        config = AuditConfig(
            manifest=manifest_path,
            out=out,
            model=str(MODEL_PATH),
            shard_size=13,
            batch_size=batch_size,
            max_new_tokens=4,
            max_question_tokens=30,
            targets="all",
            device="cpu",
        )
        with monkeypatch.context() as patch:
            if batch_size > 1:  # every item's relevance comes from a batch here
                patch.setattr(Explainer, "relevance", lambda *a, **k: pytest.fail("one item at a time"))
            summary = explain_shard(ShardJob("r1", 0, manifest_fingerprint(manifest), config))
        assert (summary.items, summary.ok, summary.failed) == (13, 10, 3)
        tables[batch_size] = {
            table: read_table(out, table, "r1")
            .to_pandas()
            .drop(columns=["generate_seconds", "explain_seconds", "occurred_at"], errors="ignore")
            for table in ("answers", "tokens", "errors")
        }
    one = tables[1]
    errors = one["errors"].set_index("item_id")
    assert errors.loc["missing", "stage"] == "image"
    assert list(errors.loc[["control", "long"], "stage"]) == ["generate", "generate"]
    assert one["answers"].answer.str.split().str.len().nunique() > 1  # answers of different lengths: padded
    for batch_size in (4, 8):
        for table, rows in tables[batch_size].items():
            assert_same_rows(rows, one[table], f"{table} at batch size {batch_size}")

"""One shard end to end: read images, explain, write overlays and the shard's parts.

`explain_shard` never raises for a bad item: a broken image, a failed generation or explanation
becomes an errors row (stage, error type, message) and the shard goes on. It raises only when the
shard as a whole cannot proceed (model not loadable, output store unwritable), which a rerun retries.
Items go through the model `config.batch_size` at a time (`explain_items`), each with the outcome it
gets alone. Every answer, generated or logged, is also read into its finding mentions. Write order:
overlays, faithfulness part (when sampled), tokens, mentions and errors parts, answers part last (the
commit marker).
Overlays are PNG-encoded and stored on a background thread (`OverlayWriter`), so the model does not
wait for compression or storage; the shard waits for them before writing its parts.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from PIL import Image

from explainer import Explainer
from explainer.engine import ExplainRequest
from explainer.explanation import Explanation
from explainer.generation import GenerationError
from explainer.overlay import heatmap_overlay
from storage import (
    AnswerRecord,
    ErrorRecord,
    FaithfulnessRecord,
    ManifestItem,
    MentionRecord,
    ObjectStore,
    StoreCache,
    StudyImage,
    TokenRecord,
    decode_image,
    overlay_folder,
    overlay_key,
    read_study,
    write_part,
)
from tasks import cache
from tasks.cache import get_explainer
from tasks.config import AuditConfig
from tasks.faithfulness_sample import check_item
from tasks.mentions import read_item_mentions
from tasks.records import (
    ImageRole,
    RoiError,
    answer_record,
    body_fractions,
    check_roi_box,
    overlay_images,
    overlay_targets,
    profile_strips,
    roi_weights,
    token_records,
)
from tasks.retry import is_environmental, with_backoff
from tasks.shards import ItemDeferred, ShardJob, ShardSummary, WorkerInfo

OverlaySink = Callable[[str, Image.Image], None]  # (overlay name, image) → stored
__all__ = ["ItemOutcome", "ShardJob", "explain_item", "explain_items", "explain_shard", "get_explainer"]


@dataclass
class ItemOutcome:
    """What one item produced: its answers record, tokens records, mentions records, error records and
    faithfulness records (and the seconds its faithfulness check took: a stage of its own in the run's
    timings)."""

    answer: AnswerRecord
    tokens: list[TokenRecord] = field(default_factory=list)
    mentions: list[MentionRecord] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)
    faithfulness: list[FaithfulnessRecord] = field(default_factory=list)
    faithfulness_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.answer.status == "ok"


def load_study(
    item: ManifestItem, reader: StoreCache, config: AuditConfig
) -> tuple[list[StudyImage], Image.Image | None]:
    """The item's images in prompt order (volumes as their sampled slices, `storage.read_study`) and
    its ROI mask (if any); `StorageError`/`RoiError` name the problem.

    Everything is read only from the manifest's own store or `allowed_inputs`, and only regular files
    within `max_image_bytes` (`storage.InputScope`); transient storage errors are retried with backoff
    (the whole study again) before they are raised. An ROI refers to the first image's pixels (the
    manifest refuses ROIs on items with several images or a volume).
    """
    scope, max_pixels = config.input_scope(), config.max_pixels
    study = with_backoff(
        lambda: read_study(
            item,
            scope,
            reader,
            max_pixels=max_pixels,
            slices_per_volume=config.slices_per_volume,
            max_series_files=config.max_series_files,
        ),
        what=f"item {item.item_id}: read its images",
    )
    size = study[0].image.info["original_size"]
    check_roi_box(item, size)
    mask = None
    if item.roi_mask_uri is not None:
        data = with_backoff(
            lambda: scope.read(item.roi_mask_uri, reader),
            what=f"item {item.item_id}: read {item.roi_mask_uri}",
        )
        mask = decode_image(data, item.roi_mask_uri, max_pixels=max_pixels)
        if mask.size != size:
            raise RoiError(
                "InvalidRoiMask",
                f"roi_mask {item.roi_mask_uri} is {mask.size[0]}x{mask.size[1]} but the image is "
                f"{size[0]}x{size[1]}; masks must have the image's size",
            )
    return study, mask


def image_roles(study: list[StudyImage], grid: tuple[int, int]) -> list[ImageRole]:
    """Where each image of the prompt came from, for the tokens rows; slices also get their body cells."""
    return [
        ImageRole(
            group=image.group,
            label=image.label,
            slice_index=image.slice_index,
            n_slices=image.n_slices,
            body=body_fractions(image.image, grid) if image.slice_index is not None else None,
        )
        for image in study
    ]


def explain_item(
    explainer: Explainer,
    item: ManifestItem,
    config: AuditConfig,
    reader: StoreCache,
    overlay_sink: OverlaySink | None = None,
    *,
    model_revision: str | None = None,
    model_lock: AbstractContextManager | None = None,
    check_faithfulness: bool = False,
) -> ItemOutcome:
    """Explain one manifest item; every failure of the item becomes an error row with its stage.

    Only a failure of the environment is raised (`ItemDeferred`: a storage outage or wrong credentials
    while reading the item), so that its shard is not committed and a rerun redoes it.

    `model_lock` is held only around the model's work (generation, relevance, checks), so another
    thread's item can decode, build rows and write overlays meanwhile. With `check_faithfulness` the
    item's answer and finding-word maps are also checked against occlusion (the faithfulness sample).
    """
    [outcome] = explain_items(
        explainer,
        [item],
        config,
        reader,
        {item.item_id: overlay_sink} if overlay_sink is not None else None,
        model_revision=model_revision,
        model_lock=model_lock,
        checked_items=frozenset({item.item_id}) if check_faithfulness else frozenset(),
    )
    return outcome


def explain_items(
    explainer: Explainer,
    items: list[ManifestItem],
    config: AuditConfig,
    reader: StoreCache,
    overlay_sinks: dict[str, OverlaySink] | None = None,
    *,
    model_revision: str | None = None,
    model_lock: AbstractContextManager | None = None,
    checked_items: frozenset[str] = frozenset(),
) -> list[ItemOutcome]:
    """`explain_item` for a batch of items, generated and explained together
    (`Explainer.explain_batch`, `config.batch_size` at a time): each item's outcome is the one it gets
    alone, and an item that fails is that item's error row only.

    `overlay_sinks` maps item ids to where their overlays go (None: no overlays); the items in
    `checked_items` are also checked against occlusion (the faithfulness sample).
    """
    identity = {"model_id": config.model, "model_revision": model_revision, "method": config.method}

    def failed(
        item: ManifestItem, stage: str, exc: Exception, size: tuple[int, int] | None = None
    ) -> ItemOutcome:
        error_type = exc.error_type if isinstance(exc, RoiError) else type(exc).__name__
        record = ErrorRecord(item.item_id, item.row_number, item.image_uri, stage, error_type, str(exc))
        return ItemOutcome(answer_record(item, image_size=size, **identity), errors=[record])

    outcomes: dict[int, ItemOutcome] = {}
    loaded: dict[int, tuple[list[StudyImage], Image.Image | None]] = {}
    for index, item in enumerate(items):
        try:
            loaded[index] = load_study(item, reader, config)
        except Exception as exc:  # a missing, unreadable, undecodable or too large image: this item's row
            if is_environmental(exc):
                raise ItemDeferred(
                    f"item {item.item_id}: {type(exc).__name__}: {exc}; the shard is not committed, so a "
                    "rerun of the run id redoes it once storage is reachable or the credentials are fixed"
                ) from exc
            outcomes[index] = failed(item, "image", exc)
    requests = [
        ExplainRequest(
            [image.image for image in study],
            items[index].question,
            [image.label for image in study],
            items[index].answer,
        )
        for index, (study, _mask) in loaded.items()
    ]
    with model_lock or nullcontext():
        explanations = (
            explainer.explain_batch(
                requests,
                batch_size=config.batch_size,
                max_new_tokens=config.max_new_tokens,
                targets=config.explainer_targets(),
                method=config.method,
                system_prompt=config.system_prompt,
                max_question_tokens=config.max_question_tokens,
                attention=config.attention,
            )
            if requests
            else []
        )
    for (index, (study, mask)), explanation in zip(loaded.items(), explanations, strict=True):
        item = items[index]
        size = study[0].image.info["original_size"]
        # the error row names the original error, not the wrapper
        if isinstance(explanation, GenerationError):
            outcomes[index] = failed(item, "generate", explanation.__cause__ or explanation, size)
            continue
        if isinstance(explanation, Exception):  # any model failure (OOM, shape mismatch, ...)
            outcomes[index] = failed(item, "explain", explanation, size)
            continue
        try:
            roi = roi_weights(item, size, explanation.grid, mask) if explanation.targets else None
            roles = image_roles(study, explanation.grid)
            outcome = ItemOutcome(
                answer_record(item, image_size=size, explanation=explanation, **identity),
                token_records(item.item_id, explanation, roi=roi, roles=roles),
            )
        except Exception as exc:
            outcomes[index] = failed(item, "image" if isinstance(exc, RoiError) else "explain", exc, size)
            continue
        try:
            outcome.mentions = read_item_mentions(item.item_id, explanation)
        except Exception as exc:  # the item keeps its explanation; the answer it could not read is recorded
            outcome.errors.append(ErrorRecord.from_exception(exc, stage="mentions", item=item))
        if item.item_id in checked_items:
            checking = time.perf_counter()
            try:
                with model_lock or nullcontext():
                    outcome.faithfulness = check_item(
                        explainer,
                        item.item_id,
                        explanation,
                        config.findings,
                        config.faithfulness_max_image_tokens,
                    )
            except Exception as exc:  # the item keeps its explanation; the failed check is recorded
                outcome.errors.append(ErrorRecord.from_exception(exc, stage="explain", item=item))
            outcome.faithfulness_seconds = time.perf_counter() - checking
        sink = overlay_sinks.get(item.item_id) if overlay_sinks is not None else None
        if sink is not None:
            _write_overlays(outcome, explanation, roles, item, config, sink)
        outcomes[index] = outcome
    return [outcomes[index] for index in range(len(items))]


def _write_overlays(
    outcome: ItemOutcome,
    explanation: Explanation,
    roles: list[ImageRole],
    item: ManifestItem,
    config: AuditConfig,
    sink: OverlaySink,
) -> None:
    """Render the policy's overlays one at a time and hand each to `sink` (which stores or queues it):
    every plain image's, a volume's most relevant slices and its slice-profile strip."""
    for target_index, name in overlay_targets(explanation, config.overlays, config.findings):
        for label, picture in _pictures(explanation, roles, target_index, name):
            try:
                sink(label, picture)
            except Exception as exc:  # an overlay that cannot be queued is this item's write error
                outcome.errors.append(ErrorRecord.from_exception(exc, stage="write", item=item))
                return


def _pictures(
    explanation: Explanation, roles: list[ImageRole], target_index: int, name: str
) -> Iterator[tuple[str, Image.Image]]:
    """(overlay name, picture) of one target, rendered one at a time as they are asked for."""
    for index, suffix in overlay_images(explanation, roles, target_index):
        label = f"{name}{suffix}"
        # no caption burned in: the overlay keeps the original's size and corners (where markers sit);
        # its file name, the report and the dashboards name the target
        yield label, heatmap_overlay(explanation.images[index], explanation.image_maps[index][target_index])
    for suffix, strip in profile_strips(explanation, roles, target_index):
        yield f"{name}{suffix}", strip


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # ~2.7× faster than the default 6; ~4% larger
    return buffer.getvalue()


class OverlayWriter:
    """Encodes overlays as PNG and stores them on one background thread (zlib, Pillow's encoder and
    file or network I/O release the GIL, so this overlaps the model's work on the next item).

    A context manager: leaving the block stops the thread, after the queued overlays are stored, or
    at once (queued ones dropped) when the block raised. At most `max_pending` overlays wait at a
    time (each is a full-size image). `results` waits for all of them and returns how many were
    stored and one write-stage error row per item whose overlays could not all be stored (after
    the retries of transient storage errors), whatever the exception.
    """

    def __init__(self, store: ObjectStore, run_id: str, max_pending: int = 8) -> None:
        self._store, self._run_id = store, run_id
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="overlay-writer")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._submitted: list[tuple[ManifestItem, str, Future]] = []

    def sink_for(self, item: ManifestItem) -> OverlaySink:
        def submit(name: str, image: Image.Image) -> None:
            self._slots.acquire()
            key = overlay_key(self._run_id, item.item_id, name)
            future = self._pool.submit(self._store_png, key, image)
            future.add_done_callback(lambda _future: self._slots.release())
            self._submitted.append((item, key, future))

        return submit

    def _store_png(self, key: str, image: Image.Image) -> None:
        with_backoff(lambda: self._store.write_bytes(key, _png(image)), what=f"overlay {key}")

    def __enter__(self) -> OverlayWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_details: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)

    def results(self) -> tuple[int, list[ErrorRecord]]:
        self._pool.shutdown(wait=True)
        stored, errors, failed_items = 0, [], set()
        for item, _key, future in self._submitted:
            exc = future.exception()
            if exc is None:
                stored += 1
            elif item.item_id not in failed_items:
                failed_items.add(item.item_id)
                errors.append(ErrorRecord.from_exception(exc, stage="write", item=item))
        return stored, errors

    def remove_stale(self, items: list[ManifestItem]) -> int:
        """Delete the items' overlays that this attempt did not write: an earlier attempt's, whose
        item has since failed or whose shard never committed. Call after `results`; returns how many."""
        written = {key for _item, key, future in self._submitted if future.exception() is None}
        stale = [
            key
            for item in items
            for key in with_backoff(
                lambda item=item: self._store.list(overlay_folder(self._run_id, item.item_id) + "/"),
                what=f"listing overlays of {item.item_id}",
            )
            if key not in written
        ]
        for key in stale:
            with_backoff(lambda key=key: self._store.delete(key), what=f"deleting stale overlay {key}")
        return len(stale)


def explain_shard(job: ShardJob) -> ShardSummary:
    """Process one shard and commit its parts; returns its summary (counts, timings, worker)."""
    started, started_wall = time.perf_counter(), time.time()
    config = job.config
    store = cache.output_store(config.out, config.endpoint_url, config.region)
    reader = cache.reader(config.endpoint_url, config.region)
    items = cache.shard_items(
        config.manifest,
        job.fingerprint,
        config.shard_size,
        job.shard_index,
        endpoint_url=config.endpoint_url,
        region=config.region,
        limit=config.limit,
        sample=config.sample,
    )
    loads_before = cache.model_load_count()
    loaded = cache.get_loaded(config.model, config.device, revision=config.model_revision, dtype=config.dtype)
    load_seconds = loaded.load_seconds if cache.model_load_count() > loads_before else 0.0

    answers: list[AnswerRecord] = []
    tokens: list[TokenRecord] = []
    mentions: list[MentionRecord] = []
    errors: list[ErrorRecord] = []
    faithfulness: list[FaithfulnessRecord] = []
    generate_seconds = explain_seconds = faithfulness_seconds = 0.0
    with OverlayWriter(store, job.run_id) as overlay_writer:
        for first in range(0, len(items), config.batch_size):
            batch = items[first : first + config.batch_size]
            sinks = (
                None
                if config.overlays == "none"
                else {item.item_id: overlay_writer.sink_for(item) for item in batch}
            )
            for outcome in explain_items(
                loaded.explainer,
                batch,
                config,
                reader,
                sinks,
                model_revision=loaded.revision,
                model_lock=loaded.lock,
                checked_items=job.checked_items,
            ):
                answers.append(outcome.answer)
                tokens.extend(outcome.tokens)
                mentions.extend(outcome.mentions)
                faithfulness.extend(outcome.faithfulness)
                errors.extend(outcome.errors)
                generate_seconds += outcome.answer.generate_seconds or 0.0
                explain_seconds += outcome.answer.explain_seconds or 0.0
                faithfulness_seconds += outcome.faithfulness_seconds
        writing = time.perf_counter()
        overlays, overlay_errors = overlay_writer.results()
        overlay_writer.remove_stale(items)  # before the commit: a committed shard keeps no older overlays
    errors.extend(overlay_errors)
    # answers last: the commit marker
    parts = [("tokens", tokens), ("mentions", mentions), ("errors", errors), ("answers", answers)]
    if config.faithfulness_sample:
        parts.insert(0, ("faithfulness", faithfulness))
    for table, records in parts:
        # an empty part is written too: it replaces whatever a crashed attempt left under this name
        with_backoff(
            lambda table=table, records=records: write_part(
                store, table, job.run_id, job.shard_index, records
            ),
            what=f"{table} part {job.shard_index}",
        )
    finished = time.perf_counter()
    n_ok = sum(answer.status == "ok" for answer in answers)
    return ShardSummary(
        shard=job.shard_index,
        items=len(items),
        ok=n_ok,
        failed=len(answers) - n_ok,
        token_rows=len(tokens),
        error_rows=len(errors),
        overlays=overlays,
        model_id=config.model,
        model_revision=loaded.revision,
        seconds=finished - started,
        model_load_seconds=load_seconds,
        generate_seconds=generate_seconds,
        explain_seconds=explain_seconds,
        faithfulness_seconds=faithfulness_seconds,
        write_seconds=finished - writing,
        started_at=started_wall,
        finished_at=time.time(),
        worker=WorkerInfo(socket.gethostname(), os.getpid(), cache.model_load_count()),
    )

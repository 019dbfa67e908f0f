"""The report's gallery: flagged items with their original image and the overlays the run stored."""

from __future__ import annotations

import io
import itertools
import re
from typing import Any

import pandas as pd
from PIL import Image, UnidentifiedImageError

from auditing.report.data import ImageReader, RunTables, cohort_members
from auditing.report.figures import ImageSink, thumbnail
from auditing.report.question import answer_text_relevance, item_question
from auditing.report.sections import cohort_name
from auditing.rules import rule_title
from storage import ObjectStore, StorageError
from vocabulary.names import ANSWER, COHORT_SCOPE, ITEM_SCOPE, TOKEN, WORD

MAX_GALLERY_ITEMS = 12
MAX_OVERLAYS_PER_ITEM = 6


def _interleave(*sequences: list[str]) -> list[str]:
    """a1, b1, a2, b2, ...: every sequence gets a place near the top."""
    return [value for group in itertools.zip_longest(*sequences) for value in group if value is not None]


def gallery_choice(tables: RunTables) -> list[tuple[str, list[str]]]:
    """(item id, reasons) of flagged items and of items in flagged cohorts, alternating, capped."""
    flags = tables.flags
    if not flags:
        return []
    reasons: dict[str, list[str]] = {}
    item_ids = []
    for flag in flags:
        if flag.scope == ITEM_SCOPE:
            reasons.setdefault(flag.item_id, []).append(flag.message)
            item_ids.append(flag.item_id)
    rules_by_cohort: dict[tuple, list[str]] = {}  # (grouping, cohort) → its rules, in the order raised
    for flag in flags:
        if flag.scope == COHORT_SCOPE:
            rules_by_cohort.setdefault((flag.grouping, flag.cohort), []).append(flag.rule)
    member_lists = []
    for (grouping, cohort), rules in rules_by_cohort.items():
        titles = ", ".join(dict.fromkeys(rule_title(rule) for rule in rules))
        members = list(cohort_members(tables.ok_answers, grouping, cohort)["item_id"])
        for item_id in members:
            reasons.setdefault(item_id, []).append(
                f"in flagged cohort {cohort_name(grouping, cohort)}: {titles}"
            )
        member_lists.append(members)
    chosen = list(dict.fromkeys(_interleave(item_ids, _interleave(*member_lists))))[:MAX_GALLERY_ITEMS]
    return [(item_id, list(dict.fromkeys(reasons[item_id]))) for item_id in chosen]


_WHERE = re.compile(
    r"(?:-image(?P<image>\d+)|(?:-volume(?P<volume>\d+))?-(?:slice(?P<slice>\d+)|(?P<profile>profile)))$"
)


def _where(match: re.Match | None) -> str:
    """' (image 2)', ' (slice 42)', ' (volume 2, slice 42)', ' (slice profile)' or ''."""
    if match is None:
        return ""
    if match["image"]:
        return f" (image {int(match['image']) + 1})"
    volume = f"volume {int(match['volume']) + 1}, " if match["volume"] else ""
    return f" ({volume}slice {int(match['slice'])})" if match["slice"] else f" ({volume}slice profile)"


def overlay_label(stem: str) -> str:
    """'answer' → 'Whole answer', 'word-effusion' → 'Word "effusion"', 'token-003-x' → 'Token 3 "x"';
    the image, volume slice or profile strip follows in brackets."""
    where = _WHERE.search(stem)
    base = stem[: where.start()] if where else stem
    base = re.sub(r"-[0-9a-f]{8}$", "", base)  # overlay_key's hash suffix for renamed targets
    if base == ANSWER:
        label = "Whole answer"
    elif base.startswith(f"{WORD}-"):
        label = f'Word "{base.removeprefix(f"{WORD}-")}"'
    elif match := re.match(rf"{TOKEN}-(\d+)-?(.*)$", base):
        label = f'Token {int(match.group(1))} "{match.group(2)}"'
    else:
        label = base
    return label + _where(where)


def _overlay_order(stem: str) -> tuple[int, str]:
    return (0 if stem.startswith(ANSWER) else 1 if stem.startswith(f"{WORD}-") else 2, stem)


def stored_overlays(store: ObjectStore, run_id: str, item_id: str) -> list[str]:
    """File stems of the item's overlay PNGs, whole answer first, then words, then tokens.

    Listed per item (the item's folder only), so a run with millions of overlays costs a dozen lists.
    """
    prefix = f"overlays/run_id={run_id}/{item_id}/"
    names = [key[len(prefix) :] for key in store.list(prefix)]
    stems = [name.removesuffix(".png") for name in names if name.endswith(".png") and "/" not in name]
    return sorted(stems, key=_overlay_order)


def gallery(
    tables: RunTables, store: ObjectStore, reader: ImageReader, sink: ImageSink
) -> list[dict[str, Any]]:
    """The flagged items: original image, the stored overlays (copied as thumbnails), the question's words
    shaded by their relevance for the answer, and why each item is here."""
    answers = tables.answers.set_index("item_id")
    chosen = gallery_choice(tables)
    text_relevance = answer_text_relevance(store, tables.run_id, [item_id for item_id, _ in chosen])
    cards = []
    for item_id, reasons in chosen:
        row = answers.loc[item_id] if item_id in answers.index else pd.Series(dtype=object)
        row = row.iloc[0] if isinstance(row, pd.DataFrame) else row
        loaded = reader.read(row.get("image_uri"))
        images, problems = [], []
        if loaded.image is not None:
            images.append(("Original image", sink.add(f"item-{item_id}-original", thumbnail(loaded.image))))
        else:
            problems.append(f"original image {loaded.uri or '(none)'}: {loaded.problem}")
        stems = stored_overlays(store, tables.run_id, item_id)
        for stem in stems[:MAX_OVERLAYS_PER_ITEM]:
            key = f"overlays/run_id={tables.run_id}/{item_id}/{stem}.png"
            try:
                overlay = Image.open(io.BytesIO(store.read_bytes(key)))
                images.append((overlay_label(stem), sink.add(f"item-{item_id}-{stem}", thumbnail(overlay))))
            except (StorageError, OSError, UnidentifiedImageError) as exc:
                problems.append(f"overlay {store.uri(key)} could not be read ({type(exc).__name__})")
        if not stems:
            problems.append("no overlays were stored for this item (the run's overlay policy)")
        cards.append(
            {
                "item_id": item_id,
                "question": row.get("question"),
                "question_words": item_question(row, text_relevance.get(item_id)),
                "answer": row.get("answer"),
                "reasons": reasons,
                "images": images,
                "problems": problems,
            }
        )
    return cards

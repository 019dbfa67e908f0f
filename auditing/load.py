"""Reading an audit's Parquet outputs into one pandas frame of explained targets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from storage import REGION_NAMES, read_table
from vocabulary.names import ANSWER, LUNG_ZONES, WORD

SHARE_COLUMNS = tuple(f"share_{name}" for name in REGION_NAMES)
LUNG_COLUMNS = tuple(f"share_{zone}" for zone in LUNG_ZONES)


def target_class(kind: str, word: str | None, findings: set[str] | None) -> str | None:
    """ "answer" for whole-answer rows; the lower-cased word for word rows in the vocabulary (all
    words when `findings` is None); None for everything else (token rows, other words)."""
    if kind == ANSWER:
        return ANSWER
    if kind == WORD and word:
        word = word.lower()
        return word if findings is None or word in findings else None
    return None


def expand_metadata(answers: pd.DataFrame) -> pd.DataFrame:
    """One column per manifest metadata key (prefixed `meta_` where a key collides with a column)."""
    records = [dict(value) if value is not None else {} for value in answers["metadata"]]
    metadata = pd.DataFrame.from_records(records, index=answers.index)
    metadata.columns = [f"meta_{key}" if key in answers.columns else key for key in metadata.columns]
    return pd.concat([answers.drop(columns=["metadata"]), metadata], axis=1)


def flatten_tokens(tokens: pd.DataFrame) -> pd.DataFrame:
    """Region-share struct → `share_<region>` columns; maps as float32 arrays."""
    shares = pd.DataFrame.from_records(
        [value if value is not None else {} for value in tokens["region_shares"]], index=tokens.index
    ).reindex(columns=list(REGION_NAMES))
    shares.columns = list(SHARE_COLUMNS)
    frame = pd.concat([tokens.drop(columns=["region_shares"]), shares], axis=1)
    frame["image_relevance"] = [np.asarray(v, dtype=np.float32) for v in frame["image_relevance"]]
    frame["lung_share"] = frame[list(LUNG_COLUMNS)].sum(axis=1)
    return frame


def load_targets(
    out_uri: str,
    run_ids: Sequence[str] | None = None,
    *,
    findings: Sequence[str] | None = None,
    endpoint_url: str | None = None,
) -> pd.DataFrame:
    """Explained targets of one or many runs, one row per (run, item, target, image), with metadata.

    Keeps whole-answer rows and word rows (words in `findings` only, when given) and adds
    `target_class`; token rows are left out (their words are covered by word rows).
    """
    runs = list(run_ids) if run_ids else [None]
    tokens = pd.concat(
        [read_table(out_uri, "tokens", run_id=run, endpoint_url=endpoint_url).to_pandas() for run in runs],
        ignore_index=True,
    )
    answers = pd.concat(
        [read_table(out_uri, "answers", run_id=run, endpoint_url=endpoint_url).to_pandas() for run in runs],
        ignore_index=True,
    )
    return join_targets(tokens, answers, findings=findings)


def join_targets(
    tokens: pd.DataFrame, answers: pd.DataFrame, *, findings: Sequence[str] | None = None
) -> pd.DataFrame:
    """The frame `load_targets` returns, from already loaded tokens and answers tables."""
    vocabulary = {word.lower() for word in findings} if findings is not None else None
    tokens = tokens.copy()
    tokens["target_class"] = [
        target_class(kind, word, vocabulary)
        for kind, word in zip(tokens["target_kind"], tokens["word"], strict=True)
    ]
    tokens = tokens[tokens["target_class"].notna()]
    answers = expand_metadata(answers[answers["status"] == "ok"])
    keep = [
        column
        for column in answers.columns
        if column not in tokens.columns or column in ("run_id", "item_id")
    ]
    return flatten_tokens(tokens).merge(answers[keep], on=["run_id", "item_id"], how="inner")

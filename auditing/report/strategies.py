"""The report's strategy section: each flagged cluster of maps with its mean map, a few members'
stored overlays, and the flag's message (which names the manifest columns it lines up with)."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, UnidentifiedImageError

from auditing.report.data import RunTables
from auditing.report.figures import ImageSink, thumbnail
from auditing.report.gallery import overlay_label, stored_overlays
from auditing.rules import rule_title, rules_marking
from storage import ObjectStore, StorageError, cluster_map_key, join_key, overlay_folder
from vocabulary.names import CLUSTER_SCOPE

MEMBERS_SHOWN = 4  # member overlays per flagged cluster


def _image(store: ObjectStore, key: str) -> Image.Image | None:
    try:
        return Image.open(io.BytesIO(store.read_bytes(key)))
    except (StorageError, OSError, UnidentifiedImageError):
        return None


def strategy_sections(tables: RunTables, store: ObjectStore, sink: ImageSink) -> list[dict[str, Any]]:
    """One entry per flag of a rule that marks clusters (`strategy_cluster`), strongest first as the
    aggregation wrote them."""
    marking = rules_marking("clusters")
    raised = [flag for flag in tables.flags if flag.scope == CLUSTER_SCOPE and flag.rule in marking]
    sections = []
    for flag in raised:
        cluster = int(flag.cohort)
        members = tables.clusters.loc[tables.clusters["cluster"] == cluster, "item_id"].tolist()
        mean_map = _image(store, cluster_map_key(tables.run_id, cluster))
        images = []
        for item_id in members:
            stems = stored_overlays(store, tables.run_id, item_id)
            overlay = (
                _image(store, join_key(overlay_folder(tables.run_id, item_id), f"{stems[0]}.png"))
                if stems
                else None
            )
            if overlay is not None:
                label = f"item {item_id}: {overlay_label(stems[0]).lower()}"
                images.append((label, sink.add(f"cluster-{cluster}-{item_id}", thumbnail(overlay))))
            if len(images) == MEMBERS_SHOWN:
                break
        sections.append(
            {
                "title": rule_title(flag.rule),
                "cluster": cluster,
                "answer_class": flag.target_class,
                "n_items": len(members),
                "message": flag.message,
                "mean_map": sink.add(f"cluster-{cluster}-mean", thumbnail(mean_map)) if mean_map else None,
                "members": images,
            }
        )
    return sections

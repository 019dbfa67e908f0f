"""The faithfulness sample's records: each sampled item's maps checked, as records of the faithfulness table.

Which items are sampled is decided before the shards start (`tasks.shards.sampled_item_ids`)."""

from __future__ import annotations

import numpy as np

from explainer.checks import MethodCheck, check_explanation
from explainer.explanation import Explanation
from storage import FaithfulnessRecord
from tasks.records import table_regions, target_text
from vocabulary.names import ANSWER, WORD
from vocabulary.regions import mass_shares


def checked_targets(explanation: Explanation, findings: tuple[str, ...]):
    """The whole answer and the finding words of the answer: what the sample checks."""
    wanted = {word.lower() for word in findings}
    return [
        target
        for target in explanation.targets
        if target.kind == ANSWER or (target.kind == WORD and target.label.lower() in wanted)
    ]


def faithfulness_records(
    item_id: str, explanation: Explanation, checks: list[MethodCheck]
) -> list[FaithfulnessRecord]:
    """One faithfulness record per (target, method, image)."""
    records = []
    for check in checks:
        named = target_text(check.target, explanation)
        for image_index, cell_map in enumerate(check.image_maps):
            grid = tuple(cell_map.shape)
            records.append(
                FaithfulnessRecord(
                    item_id=item_id,
                    image_index=image_index,
                    target_kind=check.target.kind,
                    target_text=named.target_text,
                    word=named.word,
                    method=check.method,
                    grid_h=grid[0],
                    grid_w=grid[1],
                    image_relevance=cell_map.ravel().astype(np.float32),
                    region_shares=mass_shares(cell_map, table_regions(grid)),
                    spearman_vs_occlusion=check.spearman_vs_occlusion[image_index],
                    top_cell_agrees=check.top_cell_agrees[image_index],
                    morf_auc=check.morf_auc,
                    lerf_auc=check.lerf_auc,
                    auc_gap=check.auc_gap,
                    randomization_spearman=(
                        check.randomization_spearman[image_index] if check.randomization_spearman else None
                    ),
                    seconds=check.seconds,
                )
            )
    return records


def check_item(
    explainer,
    item_id: str,
    explanation: Explanation,
    findings: tuple[str, ...],
    max_cell_tokens: int | None = None,
) -> list[FaithfulnessRecord]:
    """Run every check on one explained item and return its faithfulness records (`max_cell_tokens`: see
    `explainer.checks.check_explanation`)."""
    targets = checked_targets(explanation, findings)
    if not targets:
        return []
    checks = check_explanation(explainer, explanation, targets, max_cell_tokens=max_cell_tokens)
    return faithfulness_records(item_id, explanation, checks)

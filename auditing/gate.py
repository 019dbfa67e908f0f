"""The run's gate for schedulers and CI: does this audit fail?

Flags about the model (a cohort, a cluster of maps, the trustworthiness of the maps) are verdicts;
item flags are a worklist for a reviewer. On an archive of 100,000 answers some item flags are
certain, so by default only model-level flags fail the gate; `items` fails on any item flag too, and
`max_item_flag_rate` on a share of flagged items above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, get_args

from storage import FlagRecord
from vocabulary.names import ITEM_SCOPE, MODEL_SCOPES

FailOn = Literal["never", "model", "items"]
FAIL_ON_CHOICES: tuple[str, ...] = get_args(FailOn)


@dataclass(frozen=True)
class GateOutcome:
    """Whether the gate failed, why, and the counts it looked at."""

    failed: bool
    reason: str
    model_flags: int
    item_flags: int
    flagged_items: int
    audited_items: int

    @property
    def item_flag_rate(self) -> float:
        return self.flagged_items / self.audited_items if self.audited_items else 0.0


def gate(
    flags: Sequence[FlagRecord],
    audited_items: int,
    fail_on: FailOn = "never",
    max_item_flag_rate: float | None = None,
) -> GateOutcome:
    """Apply the gate to a run's flags.

    `fail_on`: "never" (a threshold alone still gates), "model" (any model-level flag), "items" (any
    flag at all). `max_item_flag_rate`: fail when the share of audited items with an item flag is
    above it (and, as with "model", on any model-level flag).
    """
    item_rows = [flag for flag in flags if flag.scope == ITEM_SCOPE]
    gated = fail_on != "never" or max_item_flag_rate is not None
    outcome = GateOutcome(
        failed=False,
        reason="passed" if gated else "not gated",
        model_flags=sum(flag.scope in MODEL_SCOPES for flag in flags),
        item_flags=len(item_rows),
        flagged_items=len({flag.item_id for flag in item_rows}),
        audited_items=audited_items,
    )
    model, items, rate = outcome.model_flags, outcome.item_flags, outcome.item_flag_rate
    if gated and model:
        return replace(outcome, failed=True, reason=f"{model} model-level flag{'s' * (model != 1)}")
    if fail_on == "items" and items:
        return replace(outcome, failed=True, reason=f"{items} item flag{'s' * (items != 1)}")
    if max_item_flag_rate is not None and rate > max_item_flag_rate:
        return replace(
            outcome,
            failed=True,
            reason=f"{outcome.flagged_items} of {audited_items} items flagged ({rate:.1%}), above the allowed "
            f"{max_item_flag_rate:.1%}",
        )
    return outcome

"""The gate: model-level flags are verdicts, item flags a worklist; off_anatomy knows answers of absence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from auditing import AggregateConfig, StatsConfig, aggregate
from auditing.gate import gate
from auditing.rules.off_anatomy import OFF_ANATOMY_RULE, asserts_absence
from storage import FlagRecord
from tests.auditing.synthetic import GRID, answer_row, lung_map, token_row
from tests.auditing.test_statistics import tables
from vocabulary.names import CLUSTER_SCOPE, COHORT_SCOPE, ITEM_SCOPE
from vocabulary.regions import lung_zones, mass_share


def _flags(model: int, items: int) -> list[FlagRecord]:
    return [FlagRecord(scope=COHORT_SCOPE)] * model + [
        FlagRecord(scope=ITEM_SCOPE, item_id=f"i{k}") for k in range(items)
    ]


def test_item_flags_alone_fail_only_the_gates_that_ask_for_them():
    flags = _flags(model=0, items=3)
    assert not gate(flags, 200).failed and gate(flags, 200).reason == "not gated"
    assert not gate(flags, 200, "model").failed
    assert gate(flags, 200, "items").failed
    assert not gate(flags, 200, max_item_flag_rate=0.02).failed  # 1.5%
    outcome = gate(flags, 200, max_item_flag_rate=0.01)
    assert outcome.failed and "3 of 200 items flagged (1.5%)" in outcome.reason
    assert (outcome.item_flags, outcome.flagged_items, outcome.item_flag_rate) == (3, 3, 0.015)


def test_model_level_flags_fail_every_gate_that_is_on():
    for flags in (_flags(model=1, items=0), [FlagRecord(scope=CLUSTER_SCOPE)]):
        assert not gate(flags, 10).failed
        assert gate(flags, 10, "model").failed and gate(flags, 10, "items").failed
        assert gate(flags, 10, max_item_flag_rate=0.5).failed


def test_two_flags_on_one_item_count_it_once():
    flags = [FlagRecord(scope=ITEM_SCOPE, item_id="a")] * 2
    assert gate(flags, 4, max_item_flag_rate=0.25).flagged_items == 1
    assert not gate(flags, 4, max_item_flag_rate=0.25).failed


@pytest.mark.parametrize(
    ("answer", "absence"),
    [("No.", True), ("no", True), ("Normal study", True), ("None seen", True), ("Yes", False),
     ("nodule right upper", False), ("", False), (None, False)],
)  # fmt: skip
def test_answers_of_absence(answer, absence):
    assert asserts_absence(answer) is absence


def _diffuse_map(rng: np.random.Generator) -> np.ndarray:
    """Near-uniform: about what a uniform map puts in the lungs, a little less by chance."""
    return rng.uniform(0.8, 1.0, size=GRID).astype(np.float32)


def _outside_map(rng: np.random.Generator) -> np.ndarray:
    cell_map = np.zeros(GRID, dtype=np.float32)
    cell_map[0, :] = rng.uniform(0.5, 1.0, size=GRID[1])
    cell_map[-1, :] = rng.uniform(0.5, 1.0, size=GRID[1])
    return cell_map


def test_off_anatomy_leaves_diffuse_answers_of_absence_alone_but_not_those_that_avoid_the_lungs():
    rng = np.random.default_rng(3)
    cases = {"no-diffuse": ("No.", _diffuse_map), "no-outside": ("No.", _outside_map),
             "yes-lungs": ("Yes.", lung_map), "yes-diffuse": ("Yes.", _diffuse_map),
             "yes-outside": ("Yes.", _outside_map)}  # fmt: skip
    answers, tokens = [], []
    for name, (answer, make_map) in cases.items():
        for k in range(4):
            item = f"{name}-{k}"
            answers.append(answer_row(item, "east", answer=answer))
            tokens.append(token_row(item, make_map(rng)))
    answers, tokens = tables(answers, tokens)
    flags = aggregate(tokens, answers, AggregateConfig(stats=StatsConfig(resamples=50))).flag_table
    off = flags[flags["rule"] == OFF_ANATOMY_RULE]
    flagged = {item.rsplit("-", 1)[0] for item in off["item_id"]}
    # a diffuse "yes" holds about 59% in the lungs of an 8×8 grid: above 35%, not flagged either
    assert flagged == {"no-outside", "yes-outside"}
    absence = off[off["item_id"].str.startswith("no-")]
    assert (absence["threshold"] < 0.35).all() and "answer of absence" in absence["message"].iloc[0]


def _between_thresholds_map() -> np.ndarray:
    """A map holding 32% of its mass in the lung zones: below the 35% an answer of presence needs, above
    half of what a uniform map puts there (the bound for an answer of absence)."""
    lungs = sum(lung_zones(GRID).values())
    inside, outside = lungs / lungs.sum(), (1 - lungs) / (1 - lungs).sum()
    share_in, share_out = mass_share(inside, lungs), mass_share(outside, lungs)  # cells straddle the edge
    weight = (0.32 - share_out) / (share_in - share_out)
    return (weight * inside + (1 - weight) * outside).astype(np.float32)


def test_off_anatomy_reads_absence_from_the_mentions_not_from_the_first_word():
    sentence = "Based on the chest X-ray provided, there is no clear evidence of a nodule."
    answers = [answer_row(f"free-{k}", "east", answer=sentence) for k in range(3)]
    tokens = [token_row(f"free-{k}", _between_thresholds_map()) for k in range(3)]
    answers, tokens = tables(answers, tokens)
    config = AggregateConfig(stats=StatsConfig(resamples=50))
    mentions = pd.DataFrame(
        {
            "run_id": answers["run_id"],
            "item_id": answers["item_id"],
            "finding": "nodule",
            "assertion": ["absent", "absent", "present"],  # free-2 also names a finding as present
        }
    )

    def flagged(mentions: pd.DataFrame | None) -> set[str]:
        flags = aggregate(tokens, answers, config, mentions=mentions).flag_table
        return set(flags.loc[flags["rule"] == OFF_ANATOMY_RULE, "item_id"])

    assert flagged(mentions) == {"free-2"}  # only absences: judged against a uniform map's lung share
    assert flagged(None) == {"free-0", "free-1", "free-2"}  # no mentions: "Based" is no word of absence

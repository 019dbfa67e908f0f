"""Study statistics on hand-made tables: volume slice profiles, prior shares, the prior flag."""

from __future__ import annotations

import numpy as np
import pytest

from auditing import aggregate
from auditing.load import join_targets
from auditing.studies import study_items
from tests.auditing.synthetic import study_item
from tests.auditing.test_statistics import CONFIG, tables


def _run(items):
    answers, tokens = [], []
    for answer, rows in items:
        answers.append(answer)
        tokens += rows
    return tables(answers, tokens)


def test_a_volume_items_position_profile_and_outside_body_share():
    answer, tokens = study_item(
        "v-1", "north", [0.0, 0.1, 0.0, 0.9, 0.0], n_slices=9, outside=[0.5, 0.2, 0.5, 0.4, 0.5]
    )
    answers, token_frame = _run([(answer, tokens)])
    result = aggregate(token_frame, answers, CONFIG)
    [item] = study_items(join_targets(token_frame, answers)).itertuples()
    # slices 2 and 6 of 0..8: positions 0.25 and 0.75, weights 0.1 and 0.9
    assert item.slice_position == pytest.approx(0.1 * 0.25 + 0.9 * 0.75)
    assert item.outside_body == pytest.approx(0.1 * 0.2 + 0.9 * 0.4)
    assert np.argmax(item.slice_profile) == 7 and item.slice_profile.sum() == pytest.approx(1.0)
    [row] = result.studies[result.studies["grouping"] == "all"].itertuples()
    assert row.n_volume_items == 1 and row.n_longitudinal_items == 0
    assert row.slice_position_mean == pytest.approx(item.slice_position)


def _longitudinal(prior_share_of, n=8):
    items = []
    for site, prior_share in prior_share_of.items():
        for index in range(n):
            share = prior_share + 0.01 * index
            items.append(study_item(f"{site}-{index}", site, [share, 1 - share], labels=["prior", "current"]))
    return _run(items)


def test_answers_about_change_that_barely_look_at_the_prior_are_flagged():
    answers, tokens = _longitudinal({"north": 0.01, "south": 0.4, "east": 0.45})
    result = aggregate(tokens, answers, CONFIG)
    flags = result.flag_table[result.flag_table["rule"] == "change_ignores_prior"]
    assert list(zip(flags["grouping"], flags["cohort"], strict=True)) == [("site", "north")]
    [north] = result.studies[(result.studies["cohort"] == "north")].itertuples()
    assert north.n_barely_prior == 8 and north.barely_prior_ci_low > 0.5
    assert north.prior_share_mean == pytest.approx(0.01 + 0.01 * 3.5)


def test_looking_at_both_images_or_too_few_items_raise_no_prior_flag():
    answers, tokens = _longitudinal({"north": 0.3, "south": 0.5})
    assert not (aggregate(tokens, answers, CONFIG).flag_table["rule"] == "change_ignores_prior").any()
    answers, tokens = _longitudinal({"north": 0.01}, n=3)  # below min_items
    assert not (aggregate(tokens, answers, CONFIG).flag_table["rule"] == "change_ignores_prior").any()


def test_single_image_runs_have_no_study_rows():
    answer, tokens = study_item("x-1", "north", [1.0])
    answers, token_frame = _run([(answer, tokens)])
    assert aggregate(token_frame, answers, CONFIG).studies.empty


def test_whole_run_flags_name_the_whole_run_not_all_equals_all():
    answers, tokens = _longitudinal({"north": 0.01, "south": 0.02})
    flags = aggregate(tokens, answers, CONFIG).flag_table
    whole = flags[(flags["rule"] == "change_ignores_prior") & (flags["grouping"] == "all")]
    assert len(whole) == 1 and "the whole run" in whole["message"].iloc[0]
    assert not flags["message"].str.contains("all=all").any()


def test_study_maps_are_checked_slice_by_slice_against_image_occlusion():
    """At site north chefer's top slice is the one whose occlusion drops the answer; at site south
    its mass sits on the first slice, which the answer does not need: only south is flagged."""
    from storage import to_arrow
    from tests.auditing.synthetic import GRID
    from vocabulary.regions import mass_shares, standard_regions

    drops = [0.01, -0.01, 0.02, 1.5, 0.0]  # only slice 3 (index 3) changes the answer
    items, sample = [], []
    for index in range(16):
        site = "north" if index % 2 else "south"
        shares = [0.0, 0.1, 0.0, 0.9, 0.0] if site == "north" else [0.8, 0.05, 0.05, 0.1, 0.0]
        answer, tokens = study_item(f"v-{index}", site, shares, n_slices=9)
        items.append((answer, tokens))
        for token in tokens:
            keep = {
                key: token[key] for key in ("item_id", "image_index", "target_kind", "target_text", "word")
            }
            uniform = np.full(GRID, drops[token["image_index"]] / (GRID[0] * GRID[1]), dtype=np.float32)
            for method, cell_map in (
                ("chefer", np.asarray(token["image_relevance"])),
                ("image_occlusion", uniform),
            ):
                sample.append(
                    keep
                    | {
                        "method": method,
                        "grid_h": GRID[0],
                        "grid_w": GRID[1],
                        "image_relevance": cell_map.ravel(),
                        "region_shares": mass_shares(cell_map.reshape(GRID), standard_regions(GRID)),
                    }
                    | {
                        "spearman_vs_occlusion": None,
                        "top_cell_agrees": None,
                        "morf_auc": -2.0,
                        "lerf_auc": -1.0,
                    }
                    | {
                        "auc_gap": 1.0,
                        "randomization_spearman": 0.1 if method == "chefer" else None,
                        "seconds": 0.1,
                    }
                )
    answers, token_frame = _run(items)
    faithfulness = to_arrow("faithfulness", sample).to_pandas().assign(run_id="r1")
    result = aggregate(token_frame, answers, CONFIG, faithfulness)
    trust = result.trust[result.trust["target_class"] == "answer"].set_index("cohort")
    assert set(trust["reference"]) == {"image_occlusion"} and set(trust["method"]) == {"chefer"}
    assert (
        trust.loc["north", "peak_in_evidence_rate"] == 1.0
        and trust.loc["south", "peak_in_evidence_rate"] == 0.0
    )
    assert trust.loc["north", "evidence_mass_mean"] == pytest.approx(0.9, abs=1e-6)
    flagged = result.flag_table[result.flag_table["rule"] == "explanations_not_trustworthy"]
    assert set(flagged["cohort"]) == {"south"} and set(flagged["metric"]) == {
        "peak_in_image_occlusion_evidence"
    }

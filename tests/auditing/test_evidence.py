"""Evidence sets, agreement with them and binomial intervals, on toy maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from auditing.evidence import agreement, evidence_set, noise_floor, wilson_interval


def test_the_evidence_set_is_the_cells_clear_of_noise_and_near_the_peak():
    reference = np.array([2.0, 1.5, 0.9, 0.3, 0.05, -0.04, 0.0, -0.2])
    assert noise_floor(reference) == pytest.approx(0.2)
    # max(noise 0.2, half the peak 1.0, 0.1 logits) = 1.0: the two largest drops
    assert evidence_set(reference, fraction=0.5, min_drop=0.1).tolist() == [True, True] + [False] * 6
    assert evidence_set(reference, fraction=0.25, min_drop=0.1).tolist() == [True, True, True] + [False] * 5


def test_a_reference_that_is_noise_or_too_weak_has_no_evidence():
    noise = np.random.default_rng(0).normal(0.0, 1e-5, size=64)
    assert not evidence_set(noise, fraction=0.5, min_drop=0.1).any()  # below the absolute minimum
    symmetric = np.array([0.3, -0.35, 0.1, 0.0])  # its peak is no larger than its noise
    assert not evidence_set(symmetric, fraction=0.5, min_drop=0.1).any()
    assert evidence_set(np.array([0.3, -0.25, 0.1, 0.0]), fraction=0.5, min_drop=0.1).tolist() == [
        True,
        False,
        False,
        False,
    ]


def test_agreement_is_the_peak_in_the_set_and_the_mass_on_it():
    evidence = np.array([False, True, True, False])
    assert agreement(np.array([0.1, 0.6, 0.2, -0.5]), evidence) == (True, pytest.approx(0.8 / 0.9))
    assert agreement(np.array([0.9, 0.05, 0.05, 0.0]), evidence) == (False, pytest.approx(0.1))
    assert agreement(np.zeros(4), evidence)[1] == 0.0


def test_wilson_intervals_are_not_degenerate_at_zero_or_all():
    low, high = wilson_interval(0, 13)
    assert low == 0.0 and 0.2 < high < 0.25  # a bootstrap of 0/13 would print 0%–0%
    low, high = wilson_interval(13, 13)
    assert 0.75 < low < 0.8 and high == pytest.approx(1.0)
    expected = binomtest(7, 20).proportion_ci(method="wilson")
    assert wilson_interval(7, 20) == (pytest.approx(expected.low), pytest.approx(expected.high))
    assert all(np.isnan(wilson_interval(0, 0)))

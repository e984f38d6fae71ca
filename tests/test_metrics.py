"""AP / P@k / R@k: hand-computed cases, tie rule, and the batched path against the 1-D reference."""
import math

import numpy as np
import pytest

from rscir_kit.metrics import (average_precision, average_precision_batch, mean_average_precision,
                               precision_at_k, recall_at_k)


def test_ap_hand_computed():
    # ranking: 0 (0.9, no), 1 (0.8, yes), 2 (0.7, no), 3 (0.6, yes) -> (1/2 + 2/4) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.6], [0, 1, 0, 1]) == pytest.approx(0.5)
    # positives at ranks 1 and 3 -> (1/1 + 2/3) / 2
    assert average_precision([0.1, 0.9, 0.5], [0, 1, 1]) == pytest.approx(1.0)
    assert average_precision([0.9, 0.1, 0.5], [1, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)


def test_ap_all_and_no_positives():
    assert average_precision([0.3, 0.2, 0.1], [1, 1, 1]) == 1.0
    assert math.isnan(average_precision([0.3, 0.2, 0.1], [0, 0, 0]))
    out = average_precision_batch(np.array([[0.3, 0.2, 0.1]]), [np.array([], dtype=int)])
    assert math.isnan(out["ap"][0])


def test_ties_are_broken_by_archive_order():
    # all scores equal: the ranking is the archive order
    assert average_precision([0.5, 0.5, 0.5], [0, 1, 0]) == pytest.approx(0.5)
    assert average_precision([0.5, 0.5, 0.5], [1, 0, 0]) == pytest.approx(1.0)
    assert average_precision([0.5, 0.5, 0.5], [0, 0, 1]) == pytest.approx(1 / 3)
    # a positive tied with an earlier negative ranks after it
    assert average_precision([0.2, 0.9, 0.9], [0, 0, 1]) == pytest.approx(0.5)
    batch = average_precision_batch(np.array([[0.5, 0.5, 0.5], [0.2, 0.9, 0.9]], np.float32),
                                    np.array([[0, 0, 1], [0, 0, 1]], bool))
    np.testing.assert_allclose(batch["ap"], [1 / 3, 0.5])


def test_precision_recall_at_k_hand_computed():
    scores, rel = [0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 1]
    assert precision_at_k(scores, rel, 1) == 1.0
    assert precision_at_k(scores, rel, 2) == 0.5
    assert recall_at_k(scores, rel, 3) == pytest.approx(2 / 3)
    assert recall_at_k(scores, rel, 5) == 1.0
    with pytest.raises(ValueError, match="k must be positive"):
        precision_at_k(scores, rel, 0)


def test_batched_matches_reference_with_heavy_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(64, 300)).astype(np.float32)  # many ties
    rel = rng.random((64, 300)) < 0.1
    rel[0] = False  # one query without positives
    ref = np.array([average_precision(s, r) for s, r in zip(scores, rel)])
    out = average_precision_batch(scores, rel, ks=(1, 10))
    np.testing.assert_allclose(out["ap"], ref, rtol=0, atol=1e-12)
    for k in (1, 10):
        np.testing.assert_allclose(out[f"p@{k}"], [precision_at_k(s, r, k) for s, r in zip(scores, rel)])
        np.testing.assert_allclose(out[f"r@{k}"], [recall_at_k(s, r, k) for s, r in zip(scores, rel)])


def test_batched_matches_reference_continuous_scores():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((40, 5000)).astype(np.float32)
    sets = [rng.choice(5000, size=rng.integers(1, 300), replace=False) for _ in range(40)]
    rel = np.zeros_like(scores, dtype=bool)
    for row, idx in enumerate(sets):
        rel[row, idx] = True
    ref = np.array([average_precision(s, r) for s, r in zip(scores, rel)])
    np.testing.assert_allclose(average_precision_batch(scores, sets)["ap"], ref, atol=1e-12)


def test_mean_average_precision_ignores_nan():
    assert mean_average_precision([0.5, float("nan"), 1.0]) == pytest.approx(0.75)
    assert math.isnan(mean_average_precision([float("nan")]))

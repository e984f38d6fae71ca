"""AP / P@k / R@k: hand-computed cases, tie rule, and the batched path against the 1-D reference."""
import math

import numpy as np
import pytest

from rscir_kit.metrics import (average_precision, average_precision_batch, kernel_metrics, mean_average_precision,
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


@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_batched_matches_reference_with_heavy_ties(backend):
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(64, 300)).astype(np.float32)  # many ties
    rel = rng.random((64, 300)) < 0.1
    rel[0] = False  # one query without positives
    ref = np.array([average_precision(s, r) for s, r in zip(scores, rel)])
    out = average_precision_batch(scores, rel, ks=(1, 10), backend=backend)
    np.testing.assert_allclose(out["ap"], ref, rtol=0, atol=1e-12)
    for k in (1, 10):
        np.testing.assert_allclose(out[f"p@{k}"], [precision_at_k(s, r, k) for s, r in zip(scores, rel)])
        np.testing.assert_allclose(out[f"r@{k}"], [recall_at_k(s, r, k) for s, r in zip(scores, rel)])


@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_batched_matches_reference_continuous_scores(backend):
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((40, 5000)).astype(np.float32)
    sets = [rng.choice(5000, size=rng.integers(1, 300), replace=False) for _ in range(40)]
    rel = np.zeros_like(scores, dtype=bool)
    for row, idx in enumerate(sets):
        rel[row, idx] = True
    ref = np.array([average_precision(s, r) for s, r in zip(scores, rel)])
    np.testing.assert_allclose(average_precision_batch(scores, sets, backend=backend)["ap"], ref, atol=1e-12)


def test_mean_average_precision_ignores_nan():
    assert mean_average_precision([0.5, float("nan"), 1.0]) == pytest.approx(0.75)
    assert math.isnan(mean_average_precision([float("nan")]))


def _slow_loop(scores, sets, ks):
    """The 1-D reference, one row at a time (full stable argsort)."""
    out = {"ap": [], **{f"p@{k}": [] for k in ks}}
    for row, idx in zip(scores, sets):
        rel = np.zeros(len(row), bool)
        rel[idx] = True
        out["ap"].append(average_precision(row, rel))
        for k in ks:
            out[f"p@{k}"].append(precision_at_k(row, rel, k))
    return {k: np.array(v) for k, v in out.items()}


def _float32_fusion_rows(rng, b, n):
    """Rows as the engine fuses them in float32: Φ-normalised products and sums saturate and tie often."""
    import torch

    from rscir_kit.normalization import normalize

    s = torch.from_numpy(rng.standard_normal((2, b, n)).astype(np.float32))
    s[:, :, : n // 100] += 40.0  # a few items far in the upper tail (z ≈ 9.6): Φ rounds to exactly 1.0
    phi = normalize(s, "weicom")
    rows = torch.cat([phi[0] * phi[1], phi[0] + phi[1], torch.minimum(phi[0], phi[1])])
    return rows.numpy()


@pytest.mark.parametrize("case", ["float32-fusions", "few-levels", "all-equal", "positives-span-archive",
                                  "few-positives-span-archive", "few-positives-span-ties", "signed-zeros",
                                  "everything-positive", "single-positive"])
@pytest.mark.parametrize("simd", [True, False], ids=["compress-store", "scalar"])
def test_kernel_equals_slow_loop(case, simd):
    """The sort-free kernel against the per-row argsort loop, on heavy ties and on its worst case
    (positives spread over most of the archive: almost every item falls between the lowest and the
    highest positive and is bucketed; with few positives the kernel then sizes its buckets by the
    candidates, not by the positives); both candidate passes (16-lane compress-stores — emulated by LLVM on
    CPUs without AVX-512 — and the scalar loop), on an archive that is not a multiple of 16."""
    rng = np.random.default_rng(7)
    b, n = 24, 4003
    if case == "float32-fusions":
        scores = _float32_fusion_rows(rng, b // 3, n)
        b = len(scores)
    elif case == "few-levels":
        scores = rng.integers(0, 3, size=(b, n)).astype(np.float32)
    elif case == "all-equal":
        scores = np.full((b, n), 0.25, np.float32)
    elif case == "few-positives-span-ties":
        scores = rng.integers(0, 40, size=(b, n)).astype(np.float32)
    elif case == "signed-zeros":  # -0.0 == +0.0: tied, so ordered by archive index (fused keys produce -0.0)
        scores = rng.integers(-1, 2, size=(b, n)).astype(np.float32)
        scores[(scores == 0) & (rng.random((b, n)) < 0.5)] = -0.0
        assert np.signbit(scores[scores == 0]).any() and not np.signbit(scores[scores == 0]).all()
    else:
        scores = rng.standard_normal((b, n)).astype(np.float32)
    if case in ("positives-span-archive", "few-positives-span-archive", "few-positives-span-ties"):
        size = (lambda: int(n * rng.uniform(0.6, 0.95))) if case == "positives-span-archive" else (
            lambda: int(rng.integers(2, 40)))
        sets = [np.sort(rng.choice(n, size=size(), replace=False)) for _ in range(b)]
        for row, idx in zip(scores, sets):  # lowest and highest scores are positives: the range is everything
            row[idx[0]], row[idx[-1]] = row.min() - 1, row.max() + 1
    elif case == "everything-positive":
        sets = [np.arange(n)] * b
    elif case == "single-positive":
        sets = [np.array([rng.integers(n)]) for _ in range(b)]
    else:
        sets = [np.sort(rng.choice(n, size=rng.integers(1, n // 2), replace=False)) for _ in range(b)]
    if case in ("float32-fusions", "few-levels", "all-equal", "few-positives-span-ties", "signed-zeros"):
        # the ties are really there: every row has a group of ≥ 20 equal scores
        assert all(np.unique(row, return_counts=True)[1].max() >= 20 for row in scores)
    ks = (1, 7, 100)
    ref = _slow_loop(scores, sets, ks)
    got = kernel_metrics(np.ascontiguousarray(scores), sets, ks, simd=simd)
    np.testing.assert_allclose(got["ap"], ref["ap"], rtol=0, atol=1e-12)
    for k in ks:
        np.testing.assert_array_equal(got[f"p@{k}"], ref[f"p@{k}"])


def test_kernel_rows_without_positives_get_nan():
    scores = np.random.default_rng(0).standard_normal((3, 50)).astype(np.float32)
    out = kernel_metrics(scores, [np.array([], np.int64), np.array([3]), np.array([], np.int64)], ks=(5,))
    assert np.isnan(out["ap"][0]) and np.isnan(out["ap"][2]) and not np.isnan(out["ap"][1])


def _tie_inputs(rng, b=40, n=300):
    img = rng.integers(0, 4, (2, 5, n)).astype(np.float32)  # few levels: ties everywhere, also at the k-th place
    txt = rng.integers(0, 4, (2, 3, n)).astype(np.float32)
    li, ti = rng.integers(0, 5, b).astype(np.int64), rng.integers(0, 3, b).astype(np.int64)
    rows = rng.integers(0, 5, (2, b, n)).astype(np.float32)
    pw = rng.integers(1, 3, (b, 2)).astype(np.float32)
    return img, txt, li, ti, rows, pw


@pytest.mark.parametrize("op,w", [("a", (0, 0)), ("sorted_b", (0, 0)), ("row", (0, 0)), ("mean", (0, 0)),
                                  ("negfma", (0.5, 0)), ("lin", (0.5, 0.25)), ("harris", (0.25, 0)),
                                  ("pairlin", (0, 0))])
def test_block_topn_is_a_stable_sorts_first_k_with_ties(op, w):
    """The compiled top-k selection (αQE's first pass) against a stable descending sort of the fused row written
    from the formula (small integers: every fusion is exact, so the reference needs no rounding model)."""
    import numba
    import torch

    from rscir_kit.kernels import _OP, block_topn

    rng = np.random.default_rng(3)
    img, txt, li, ti, rows, pw = _tie_inputs(rng)
    n = img.shape[2]
    for i in range(len(li)):
        a, b = img[1, li[i]].astype(np.float64), txt[1, ti[i]].astype(np.float64)
        ref_row = {"a": a, "sorted_b": b, "row": rows[1, i].astype(np.float64), "mean": (a + b) / 2,
                   "negfma": -(a + w[0] * b), "lin": w[0] * a + w[1] * b, "harris": a * b - w[0] * (a + b) ** 2,
                   "pairlin": pw[i, 0] * a + pw[i, 1] * b}[op]
        ref = torch.sort(torch.from_numpy(ref_row), descending=True, stable=True).indices.numpy()
        assert np.unique(ref_row, return_counts=True)[1].max() >= 20  # the ties are there
        for k in (1, 4, 17, n):
            if i == 0 or k == 17:
                out = np.empty((len(li), k), np.int64)
                block_topn(img, txt, rows, li, ti, _OP[op], 1, 1, float(w[0]), float(w[1]), pw, k, out,
                           numba.get_num_threads())
                np.testing.assert_array_equal(out[i], ref[:k], err_msg=f"{op} k={k} pair {i}")


def test_kernel_harris_and_pairlin_round_as_their_torch_forms():
    """The kernel's Harris and per-pair-linear (Slerp) fusions give the very floats of the torch forms the engine's
    torch path (and the registry) compute — so both backends rank identically, ties and near-ties included."""
    import torch

    from rscir_kit.methods import _harris_fusion
    from rscir_kit.kernels import _OP, _fuse_row

    rng = np.random.default_rng(11)
    a = rng.random((6, 2003)).astype(np.float32)
    b = rng.random((6, 2003)).astype(np.float32)
    cv = rng.random((6, 1)).astype(np.float32)
    cw = rng.random((6, 1)).astype(np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    harris = _harris_fusion(ta, tb, 0.15).numpy()
    pairlin = ta.clone().mul_(torch.from_numpy(cv)).addcmul_(tb, torch.from_numpy(cw)).numpy()
    out = np.empty(a.shape[1], np.float32)
    for i in range(len(a)):
        _fuse_row(_OP["harris"], a[i], b[i], 0.15, 0.0, out)
        np.testing.assert_array_equal(out, harris[i])
        _fuse_row(_OP["pairlin"], a[i], b[i], float(cv[i, 0]), float(cw[i, 0]), out)
        np.testing.assert_array_equal(out, pairlin[i])


def test_weighted_row_sum_equals_the_float32_loop():
    """kernels.weighted_row_sum (FreeDom's similarity sums) == Σ_j w_j·S[idx_j] in float32, j ascending, −1
    entries skipped (a row of only −1 is zeros); several thread counts, out's old contents overwritten."""
    from rscir_kit.kernels import weighted_row_sum

    rng = np.random.default_rng(2)
    S = rng.standard_normal((9, 1003)).astype(np.float32)
    idx = rng.integers(-1, 9, size=(37, 5))
    idx[3] = -1
    w = rng.random((37, 5)).astype(np.float32)
    ref = np.zeros((37, 1003), np.float32)
    for b in range(37):
        for j in range(5):
            if idx[b, j] >= 0:
                ref[b] += w[b, j] * S[idx[b, j]]
    for threads in (1, 2, 64):
        out = np.full((37, 1003), np.nan, np.float32)
        weighted_row_sum(S, idx, w, out, threads)
        np.testing.assert_array_equal(out, ref)

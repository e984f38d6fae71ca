"""Normalisations against scipy, fusion formulas by hand, λ validation."""
import numpy as np
import pytest
import torch
from scipy import stats

from rscir_kit.errors import DataError
from rscir_kit.methods import check_lambda, composed_scores, fuse, parse_method
from rscir_kit.normalization import normalize


@pytest.fixture
def scores():
    return np.random.default_rng(0).standard_normal((5, 200)).astype(np.float64)


def test_zscore_matches_scipy_unbiased(scores):
    np.testing.assert_allclose(normalize(scores, "zscore"), stats.zscore(scores, axis=1, ddof=1), atol=1e-12)


def test_weicom_is_normal_cdf_of_unbiased_zscore(scores):
    expected = stats.norm.cdf(stats.zscore(scores, axis=1, ddof=1))
    np.testing.assert_allclose(normalize(scores, "weicom"), expected, atol=1e-12)
    # torch float32 input, same answer to float precision, along another axis too
    t = torch.from_numpy(scores.T.copy()).float()
    np.testing.assert_allclose(normalize(t, "weicom", dim=0).numpy().T, expected, atol=1e-5)


def test_rank_matches_scipy_rankdata():
    s = np.array([[3.0, 1.0, 2.0, 2.0]])
    np.testing.assert_allclose(normalize(s, "rank"), [[4 / 4, 1 / 4, 2.5 / 4, 2.5 / 4]])


def test_none_and_unknown(scores):
    np.testing.assert_array_equal(normalize(scores, "none"), scores)
    with pytest.raises(ValueError, match="unknown normalisation 'cdf'"):
        normalize(scores, "cdf")


def test_constant_row_and_too_small_archive():
    np.testing.assert_allclose(normalize(np.full((1, 4), 0.3), "weicom"), 0.5)
    with pytest.raises(DataError, match="at least 2"):
        normalize(np.array([[0.3]]), "zscore")


def test_weicom_fusion_by_hand():
    s_img = np.array([1.0, 2.0, 3.0])  # mean 2, unbiased std 1 -> z = -1, 0, 1
    s_txt = np.array([3.0, 2.0, 1.0])
    phi = stats.norm.cdf([-1.0, 0.0, 1.0])
    np.testing.assert_allclose(fuse(s_img, s_txt, "weicom", 0.25), 0.25 * phi[::-1] + 0.75 * phi, atol=1e-12)
    np.testing.assert_allclose(fuse(s_img, s_txt, "weicom", 0.5), [0.5, 0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(fuse(s_img, s_txt, "weicom", 0.0), phi, atol=1e-12)
    np.testing.assert_allclose(fuse(s_img, s_txt, "average"), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(fuse(s_img, s_txt, "multiply"), [3.0, 4.0, 3.0])
    np.testing.assert_allclose(fuse(s_img, s_txt, "min"), [1.0, 2.0, 1.0])
    np.testing.assert_allclose(fuse(s_img, s_txt, "add:zscore"), [0.0, 0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan"), "abc"])
def test_lambda_outside_unit_interval_is_rejected(lam):
    with pytest.raises(ValueError, match=r"λ must"):
        check_lambda(lam)
    with pytest.raises(ValueError, match=r"λ must"):
        fuse(np.ones(3), np.ones(3), "weicom", lam)


def test_method_parsing_errors():
    with pytest.raises(ValueError, match="unknown method 'sum'"):
        parse_method("sum")
    with pytest.raises(ValueError, match="takes no normalisation"):
        parse_method("image:weicom")
    with pytest.raises(ValueError, match="needs λ"):
        fuse(np.ones(3), np.ones(3), "weicom")


def test_composed_scores_shapes_and_extremes():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 7)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    qi, qt = x[:2], x[2:4]
    out = composed_scores(qi, qt, x, "weicom", 0.3)
    assert out.shape == (2, 50)
    # λ=0 ranks exactly like image-only, λ=1 like text-only
    np.testing.assert_array_equal(np.argsort(-composed_scores(qi, qt, x, "weicom", 0.0).numpy(), axis=1),
                                  np.argsort(-composed_scores(qi, None, x, "image").numpy(), axis=1))
    np.testing.assert_array_equal(np.argsort(-composed_scores(qi, qt, x, "weicom", 1.0).numpy(), axis=1),
                                  np.argsort(-composed_scores(None, qt, x, "text").numpy(), axis=1))


def test_cdf_and_upper_tail_stay_accurate_far_from_the_mean():
    from rscir_kit.normalization import weicom_upper_tail

    s = np.r_[np.linspace(-1, 1, 2000), [5.0, -5.0]].astype(np.float32)[None]  # two outliers, |z| ≈ 8.5
    z = stats.zscore(s.astype(np.float64), axis=1, ddof=1)
    np.testing.assert_allclose(weicom_upper_tail(torch.from_numpy(s)).numpy(), stats.norm.sf(z), rtol=2e-4, atol=0)
    np.testing.assert_allclose(normalize(torch.from_numpy(s), "weicom").numpy(), stats.norm.cdf(z), rtol=2e-4, atol=0)

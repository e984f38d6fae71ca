"""Normalisations against scipy, fusion formulas by hand, λ validation."""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from rscir_kit.errors import DataError, RscirError
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


def test_numpy_upper_tail_matches_an_arbitrary_precision_reference():
    """methods.upper_tail (numpy) is Q(z) = 1 - Φ(z) = erfc(z/√2)/2 to float64 accuracy, checked against mpmath
    at 50 digits: the centre, both tails far beyond where 1 - Φ rounds to 0 or 1, ±inf, NaN, scalars, shapes."""
    import mpmath

    from rscir_kit.methods import upper_tail

    mpmath.mp.dps = 50
    z = np.concatenate([np.linspace(-37, 37, 741), np.random.default_rng(3).standard_normal(300) * 4,
                        [0.0, -0.0, 1 / np.sqrt(2), 8.5, 30.0, -30.0]])
    want = np.array([float(mpmath.erfc(mpmath.mpf(float(v)) / mpmath.sqrt(2)) / 2) for v in z])
    got = upper_tail(z)
    assert got.dtype == np.float64 and got.shape == z.shape
    near = np.abs(z) < 5
    np.testing.assert_allclose(got[near], want[near], rtol=1e-14, atol=0)
    np.testing.assert_allclose(got[~near], want[~near], rtol=1e-11, atol=0)  # relative: down to 1e-300 too
    assert upper_tail(30.0) > 0 and upper_tail(30.0) < 1e-190   # where 1 - Φ(30) would be exactly 0
    special = upper_tail(np.array([np.inf, -np.inf, np.nan]))
    assert special[0] == 0.0 and special[1] == 1.0 and np.isnan(special[2])
    for v in (1.5, -0.3, np.float32(2.0), 9.0):
        assert np.ndim(upper_tail(v)) == 0 and upper_tail(v) == upper_tail(np.array([v]))[0]
    assert upper_tail(z[:12].reshape(3, 4)).shape == (3, 4)
    np.testing.assert_array_equal(upper_tail(z[:12].reshape(3, 4)), got[:12].reshape(3, 4))

def test_registry_names_labels_and_order():
    from rscir_kit import methods

    assert methods.names()[:4] == ("text", "image", "average", "weicom")
    assert methods.get("add:weicom").name == "add" and methods.get("weicom").takes_lambda
    assert methods.method_label("average") == "Text & Image"
    assert methods.method_label("weicom", 0.3) == "WeiCom (λ=0.3)"
    assert methods.method_label("weicom", float("nan")) == "WeiCom"
    assert methods.method_label("add:weicom") == "Add (weicom norm)" and methods.method_label("add") == "Add"
    rows = [("weicom", 0.5), ("image", None), ("weicom", 0.1), ("text", None)]
    assert sorted(rows, key=lambda r: methods.order_key(*r)) == [("text", None), ("image", None),
                                                                 ("weicom", 0.1), ("weicom", 0.5)]
    with pytest.raises(RscirError):
        methods.get("sum")


def test_one_registry_entry_adds_a_method_to_the_engine(monkeypatch):
    """A method with only a fusion function (no kernel op) is evaluated by the engine through the same AP
    kernel, and equals a slow loop written from its formula."""
    from rscir_kit import methods
    from rscir_kit.engine import evaluate
    from rscir_kit.features import ImageFeatures, TextFeatures
    from rscir_kit.metrics import average_precision
    from rscir_kit.queries import QuerySet

    entry = methods.Method("harmonic", "Harmonic", lambda a, b, lam: 2 * a * b / (a + b), norm="weicom",
                           doc="harmonic mean of Φ-normalised similarities (test entry)")
    monkeypatch.setitem(methods.REGISTRY, "harmonic", entry)
    monkeypatch.setattr(methods, "METHODS", tuple(methods.REGISTRY))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t = rng.standard_normal((2, 16)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    meta = {"model": "registry-test"}
    archive = ImageFeatures(x, [f"c/{i:03d}.jpg" for i in range(300)], ["c"] * 300, meta)
    texts = TextFeatures(["a", "b"], t, meta)
    table = pd.DataFrame({"query_path": ["c/000.jpg", "c/001.jpg", "c/000.jpg"], "text": ["a", "b", "b"],
                          "positive_id": [0, 1, 1]})
    qs = QuerySet("reg", table, [np.arange(5, 60, 4), np.arange(100, 300, 7)], archive.paths)
    out = evaluate(qs, archive, texts, methods=["harmonic"], progress=False)
    assert methods.method_label("harmonic") == "Harmonic"
    for i, row in table.iterrows():
        s_img = torch.from_numpy(x @ x[int(row.query_path[2:5])])
        s_txt = torch.from_numpy(x @ t[0 if row.text == "a" else 1])
        a, b = normalize(s_img, "weicom"), normalize(s_txt, "weicom")
        rel = np.zeros(300, bool)
        rel[qs.positives(i)] = True
        assert out.ap.iloc[i] == pytest.approx(average_precision((2 * a * b / (a + b)).numpy(), rel), abs=1e-12)

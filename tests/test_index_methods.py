"""Archive-scale search with every composition method: index top-k == brute-force top-k (written here from
each formula over the stored float16 rows), and the index says which strategy it used."""
import numpy as np
import pytest

from rscir_kit import compose
from rscir_kit.errors import DataError
from rscir_kit.index import METHOD_STRATEGIES, ArchiveIndex
from scipy.special import ndtr

N, D = 5000, 32


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    rng = np.random.default_rng(0)
    common = rng.standard_normal(D)
    centres = rng.standard_normal((10, D)) + 1.5 * common
    x = centres[rng.integers(0, 10, N)] + 0.9 * rng.standard_normal((N, D))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    x[17] = x[4000]                      # exact duplicates: ties broken by the lower index
    idx = ArchiveIndex.build(x, tmp_path_factory.mktemp("idx") / "index", fast=None)
    return idx, x, rng


def _queries(x, rng, n):
    out = []
    for _ in range(n):
        qi = x[rng.integers(len(x))]
        qt = rng.standard_normal(x.shape[1]) + 0.5 * x[rng.integers(len(x))]
        out.append((qi, (qt / np.linalg.norm(qt)).astype(np.float32)))
    return out


def _reference_scores(stored16, method, qi, qt, lam, **opt):
    """Each method's score over the stored rows in float64, from its formula (no kit code but compose's
    reference-tested primitives)."""
    X = stored16.astype(np.float64)
    v, w = qi.astype(np.float64), qt.astype(np.float64)
    si, st = X @ v, X @ w
    if method == "average":
        return (si + st) / 2
    if method == "feature-sum":
        return X @ ((1 - lam) * v + lam * w)
    if method == "slerp":
        th = np.arccos(np.clip(v @ w, -1, 1))
        q = np.sin((1 - lam) * th) / np.sin(th) * v + np.sin(lam * th) / np.sin(th) * w
        return X @ q
    z = lambda s: (s - s.mean()) / s.std(ddof=1)  # noqa: E731
    if method == "zscore-sum":
        return (1 - lam) * z(si) + lam * z(st)
    if method == "weicom":
        return -((1 - lam) * ndtr(-z(si)) + lam * ndtr(-z(st)))
    if method == "minmax-sum":
        mm = lambda s: (s - s.min()) / (s.max() - s.min())  # noqa: E731
        return (1 - lam) * mm(si) + lam * mm(st)
    if method == "rrf":
        def rr(s):
            order = sorted(range(len(s)), key=lambda i: (-s[i], i))
            r = np.empty(len(s))
            r[order] = np.arange(1, len(s) + 1)
            return 1.0 / (60 + r)
        return (1 - lam) * rr(si) + lam * rr(st)
    if method == "harris":
        mi = opt.get("image_mean", np.zeros(len(v)))
        mt = opt.get("text_mean", np.zeros(len(v)))
        P = opt.get("projection", np.eye(len(v)))
        a = ((v - mi) @ P) @ (X - mi).T
        b = (w - mt) @ (X - mi).T
        a = np.maximum((a - opt.get("shift", 0.0)) / opt.get("scale", 1.0), 0)
        b = np.maximum((b - opt.get("shift", 0.0)) / opt.get("scale", 1.0), 0)
        return a * b - lam * (a + b) ** 2
    raise AssertionError(method)


def _topk(scores, k):
    return np.array(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


CASES = [("average", 0.5), ("feature-sum", 0.3), ("slerp", 0.6), ("slerp", 0.9), ("zscore-sum", 0.5),
         ("zscore-sum", 0.8), ("weicom", 0.4), ("minmax-sum", 0.5), ("minmax-sum", 0.2), ("rrf", 0.5),
         ("rrf", 0.7), ("harris", 0.1), ("harris", 0.3)]


@pytest.mark.parametrize("method,lam", CASES)
def test_index_topk_equals_brute_force(built, method, lam):
    idx, x, rng = built
    stored = np.asarray(idx.rows)
    for qi, qt in _queries(x, np.random.default_rng(hash((method, lam)) % 2**32), 6):
        for k in (1, 10, 50):
            res = idx.search_method(method, qi, qt, lam=lam, k=k)
            ref = _topk(_reference_scores(stored, method, qi, qt, lam), k)
            assert res.indices.tolist() == ref.tolist(), (method, lam, k)
            assert res.info["strategy"] == METHOD_STRATEGIES[method]
    # scan mode = the same answer, labelled as a scan
    scan = idx.search_method(method, qi, qt, lam=lam, k=10, mode="scan")
    assert scan.info["strategy"] == "scan" and scan.indices.tolist() == _topk(
        _reference_scores(stored, method, qi, qt, lam), 10).tolist()


def test_harris_with_basic_centring_projection_and_normalisation(built):
    idx, x, rng = built
    stored = np.asarray(idx.rows)
    pos, neg = rng.standard_normal((40, D)), rng.standard_normal((40, D))
    P = compose.contrastive_pca(pos, neg, aa=0.2, n_components=12)
    opt = {"image_mean": x.mean(0).astype(np.float64), "text_mean": pos.mean(0), "projection": P,
           "shift": -0.2, "scale": 0.5}
    for qi, qt in _queries(x, rng, 5):
        res = idx.search_method("harris", qi, qt, lam=0.1, k=20, **opt)
        ref = _topk(_reference_scores(stored, "harris", qi, qt, 0.1, **opt), 20)
        assert res.indices.tolist() == ref.tolist()


def test_duplicate_rows_tie_by_lower_index(built):
    idx, x, _ = built
    for method in ("average", "rrf", "harris", "minmax-sum"):
        res = idx.search_method(method, x[4000], x[4000], lam=0.5 if method != "harris" else 0.1, k=2)
        assert res.indices.tolist() == [17, 4000], method


def test_method_search_errors(built):
    idx, x, _ = built
    with pytest.raises(DataError, match="no archive-scale search"):
        idx.search_method("freedom", x[0], x[1])
    with pytest.raises(DataError, match="both an image and a text"):
        idx.search_method("rrf", x[0], None)
    with pytest.raises(ValueError):
        idx.search_method("rrf", x[0], x[1], lam=2.0)

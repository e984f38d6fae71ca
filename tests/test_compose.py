"""Composition methods against slow references written from each paper's formula / official code."""
import math

import numpy as np
import pytest
import torch

from rscir_kit import compose
from rscir_kit.errors import DataError, ParameterError


def _unit_rows(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------------------- feature level
def test_slerp_matches_formula_row_by_row():
    rng = np.random.default_rng(0)
    v, w = _unit_rows(rng, 12, 8), _unit_rows(rng, 12, 8)
    v[3] = w[3]                                      # parallel: the linear fallback
    w[4] = (v[4] + 1e-3 * w[4]) / np.linalg.norm(v[4] + 1e-3 * w[4])  # nearly parallel (|v·w| > 0.9995)
    for alpha in (0.0, 0.2, 0.5, 0.8, 1.0):
        out = compose.slerp(v, w, alpha)
        assert isinstance(out, np.ndarray) and out.shape == v.shape
        for b in range(len(v)):
            a, c = v[b].astype(np.float64), w[b].astype(np.float64)
            dot = float(a @ c)
            if abs(dot) > 0.9995:
                ref = a + alpha * (c - a)
            else:
                th = math.acos(dot)
                ref = math.sin((1 - alpha) * th) / math.sin(th) * a + math.sin(alpha * th) / math.sin(th) * c
            ref /= np.linalg.norm(ref)
            np.testing.assert_allclose(out[b], ref, atol=2e-6)
    np.testing.assert_allclose(compose.slerp(v, w, 0.0), v, atol=1e-6)
    np.testing.assert_allclose(compose.slerp(v, w, 1.0), w, atol=1e-6)
    # the geodesic midpoint has equal angles to both ends
    mid = compose.slerp(v, w, 0.5)
    np.testing.assert_allclose((mid * v).sum(1), (mid * w).sum(1), atol=1e-6)
    t = compose.slerp(torch.from_numpy(v), torch.from_numpy(w), 0.3)
    assert isinstance(t, torch.Tensor)
    with pytest.raises(ParameterError):
        compose.slerp(v, w, 1.5)


def test_feature_sum_ranks_as_raw_average_and_weighted_interpolation():
    rng = np.random.default_rng(1)
    v, w, X = _unit_rows(rng, 5, 16), _unit_rows(rng, 5, 16), _unit_rows(rng, 200, 16)
    q = compose.feature_sum(v, w, 0.5)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
    s = q @ X.T
    avg = (v @ X.T + w @ X.T) / 2
    assert (np.argsort(-s, axis=1, kind="stable") == np.argsort(-avg, axis=1, kind="stable")).mean() > 0.99
    s3 = compose.feature_sum(v, w, 0.3) @ X.T
    lin = 0.7 * (v @ X.T) + 0.3 * (w @ X.T)
    norms = np.linalg.norm(0.7 * v + 0.3 * w, axis=1, keepdims=True)  # a positive factor per row
    np.testing.assert_allclose(s3, lin / norms, atol=1e-6)
    with pytest.raises(DataError, match="zero"):
        compose.feature_sum(v[:1], -v[:1], 0.5)


def test_alpha_query_expansion_matches_loop():
    rng = np.random.default_rng(2)
    X, q = _unit_rows(rng, 60, 8), _unit_rows(rng, 4, 8)
    scores = (q @ X.T).astype(np.float64)
    scores[0, 5] = scores[0, 7] = scores[0].max() + 1  # a tie at the top: archive order decides
    for query in (q, None):
        out = compose.alpha_query_expansion(scores, X, query=query, n=5, alpha=3.0)
        for b in range(len(q)):
            top = sorted(range(60), key=lambda i: (-scores[b, i], i))[:5]
            anchor = q[b] if query is not None else X[top[0]]
            acc = q[b].astype(np.float64).copy() if query is not None else np.zeros(8)
            for i in top:
                acc += max(float(X[i] @ anchor), 0.0) ** 3 * X[i]
            acc /= np.linalg.norm(acc)
            np.testing.assert_allclose(out[b], X @ acc, atol=1e-5)
    with pytest.raises(ParameterError):
        compose.alpha_query_expansion(scores, X, n=0)


def _freedom_reference(v, X, vocab_emb, k, n, m):
    """The official FreeDom steps, written out per query (run_retrieval.py / utils.py)."""
    idx_out, w_out = [], []
    for b in range(len(v)):
        sim = X @ v[b]
        near = sorted(range(len(X)), key=lambda i: (-sim[i], i))[:k]
        proxies = [X[i] for i in near]
        if sim.max() < 0.98:
            proxies = [v[b]] + proxies[:-1]
        counts = {}
        for p in proxies:
            ws = vocab_emb @ p
            for j in sorted(range(len(vocab_emb)), key=lambda j: (-ws[j], j))[:n]:
                counts[j] = counts.get(j, 0) + 1
        best = sorted(counts.keys(), key=lambda x: counts[x], reverse=True)[:m]
        idx_out.append(best)
        w_out.append([counts[j] / max(counts[j2] for j2 in best) for j in best])
    return idx_out, w_out


def test_freedom_most_frequent_words_equal_the_official_counting():
    """compose._most_frequent (vectorised) == the official Counter + stable sorted(reverse=True) per row, on
    rows full of ties, one-word rows and rows with fewer distinct words than m (padding)."""
    from collections import Counter

    rng = np.random.default_rng(5)
    words = rng.integers(0, 6, size=(300, 21))
    words[0] = 4
    words[1, :] = np.arange(21) % 2
    for m in (1, 3, 7):
        idx, w = compose._most_frequent(words, m)
        assert idx.shape == w.shape == (300, m)
        for b in range(len(words)):
            counts = Counter(words[b].tolist())
            best = sorted(counts, key=lambda j: counts[j], reverse=True)[:m]
            top = max(counts[j] for j in best)
            assert idx[b].tolist() == best + [-1] * (m - len(best))
            assert w[b].tolist() == [counts[j] / top for j in best] + [0.0] * (m - len(best))


def test_freedom_words_and_queries_match_official_steps():
    rng = np.random.default_rng(3)
    X, vocab = _unit_rows(rng, 40, 6), _unit_rows(rng, 9, 6)
    v = np.concatenate([X[:3], _unit_rows(rng, 3, 6)])  # 3 queries in the archive, 3 outside (self proxy)
    idx, w = compose.freedom_words(v, X, vocab, k=5, n=3, m=4)
    ref_idx, ref_w = _freedom_reference(v, X, vocab, 5, 3, 4)
    for b in range(len(v)):
        got = [int(j) for j in idx[b] if j >= 0]
        assert got == ref_idx[b]
        np.testing.assert_allclose(w[b, :len(got)], ref_w[b])
        assert (w[b, len(got):] == 0).all()
    words = [f"w{j}" for j in range(9)]
    texts = ["with trees"] * 3 + ["without cars"] * 3
    calls = []

    def encode(batch):
        calls.append(list(batch))
        out = np.stack([np.frombuffer(s.encode().ljust(6, b"\0")[:6], np.uint8).astype(np.float32) for s in batch])
        return out + 1.0 * np.array([len(s) for s in batch], np.float32)[:, None]

    qf = compose.freedom_queries(idx, w, texts, words, encode)
    assert len(calls) == 1 and len(set(calls[0])) == len(calls[0])  # each combined text encoded once
    for b in range(len(v)):
        ref = sum(wt * encode([f"{words[j]} {texts[b]}"])[0] for j, wt in zip(ref_idx[b], ref_w[b]))
        np.testing.assert_allclose(qf[b], ref, rtol=1e-6)


# ----------------------------------------------------------------------------------------- score level
def test_descending_ranks_float32_fast_path_equals_the_stable_sort():
    """Finite float32 CPU rows take the 64-bit-key sort: the same ranks as torch's stable sort (float64 copy of
    the same values) and as a Python sort by (-score, index), on ties, signed zeros and extreme values."""
    rng = np.random.default_rng(11)
    x = rng.integers(-2, 3, size=(6, 1001)).astype(np.float32)
    x[x == 0] = np.where(rng.random((x == 0).sum()) < 0.5, -0.0, 0.0).astype(np.float32)
    x[0] = rng.standard_normal(1001).astype(np.float32)
    x[1, :3] = [np.finfo(np.float32).max, -np.finfo(np.float32).max, np.float32(1e-45)]
    assert np.signbit(x[x == 0]).any() and not np.signbit(x[x == 0]).all()
    fast = compose.descending_ranks(x)
    assert fast.dtype == np.int64
    np.testing.assert_array_equal(fast, compose.descending_ranks(x.astype(np.float64)))  # torch's stable sort
    for b in (0, 1, 2):
        ref = {i: pos + 1 for pos, i in enumerate(sorted(range(1001), key=lambda i: (-float(x[b, i]), i)))}
        assert fast[b].tolist() == [ref[i] for i in range(1001)]
    np.testing.assert_array_equal(compose.descending_ranks(x[3]), fast[3])  # 1-D rows too


def test_descending_ranks_and_rrf_match_loops():
    s = np.array([[0.3, 0.9, 0.3, 0.1, 0.9], [1.0, 2.0, 3.0, 4.0, 5.0]], np.float32)
    r = compose.descending_ranks(s)
    assert r.tolist() == [[3, 1, 4, 5, 2], [5, 4, 3, 2, 1]]  # ties: lower index ranks first
    rng = np.random.default_rng(4)
    si, st = rng.random((3, 50)).round(2), rng.random((3, 50)).round(2)  # many ties
    for lam in (0.0, 0.3, 0.5, 1.0):
        fused = compose.reciprocal_rank_fusion(compose.reciprocal_ranks(si), compose.reciprocal_ranks(st), lam)
        for b in range(3):
            ri = {i: pos + 1 for pos, i in enumerate(sorted(range(50), key=lambda i: (-si[b, i], i)))}
            rt = {i: pos + 1 for pos, i in enumerate(sorted(range(50), key=lambda i: (-st[b, i], i)))}
            ref = [lam / (60 + rt[i]) + (1 - lam) / (60 + ri[i]) for i in range(50)]
            np.testing.assert_allclose(fused[b], ref, rtol=1e-12)


def test_minmax_zscore_sum_and_harris_formulas():
    rng = np.random.default_rng(5)
    s = rng.standard_normal((3, 30))
    m = compose.minmax(s)
    np.testing.assert_allclose(m, (s - s.min(1, keepdims=True)) / np.ptp(s, axis=1, keepdims=True))
    assert (compose.minmax(np.ones((1, 4))) == 0).all()
    a, b = rng.random((2, 30)), rng.random((2, 30))
    np.testing.assert_allclose(compose.zscore_sum(a, b, 0.25), 0.25 * b + 0.75 * a)
    np.testing.assert_allclose(compose.minmax_sum(a, b, 0.25), 0.25 * b + 0.75 * a)
    np.testing.assert_allclose(compose.harris(a, b, 0.1), a * b - 0.1 * (a + b) ** 2)
    # BASIC's normalisation: (s - shift) / scale, rectified
    np.testing.assert_allclose(compose.basic_normalize(s, shift=-0.5, scale=2.0), np.maximum((s + 0.5) / 2, 0))
    with pytest.raises(ParameterError):
        compose.basic_normalize(s, scale=0)


@pytest.mark.parametrize("lam", [0.0, 0.05, 0.1, 0.25, 0.3, 0.6])
def test_harris_box_max_is_the_grid_maximum(lam):
    rng = np.random.default_rng(int(lam * 100))
    for _ in range(20):
        a_lo, b_lo = rng.random(2) * 0.5
        a_hi, b_hi = a_lo + rng.random() * 0.7, b_lo + rng.random() * 0.7
        ga, gb = np.meshgrid(np.linspace(a_lo, a_hi, 401), np.linspace(b_lo, b_hi, 401))
        grid = compose.harris(ga, gb, lam).max()
        bound = float(compose.harris_box_max(a_lo, a_hi, b_lo, b_hi, lam))
        assert bound >= grid - 1e-12            # never below the true maximum (exact TA bound) ...
        assert bound <= grid + 1e-5             # ... and tight


def test_contrastive_pca_projects_on_object_directions():
    rng = np.random.default_rng(6)
    d = 6
    pos = np.zeros((50, d)); pos[:, 0] = rng.standard_normal(50) * 2; pos[:, 1] = rng.standard_normal(50)
    neg = np.zeros((50, d)); neg[:, 2] = rng.standard_normal(50) * 3
    P = compose.contrastive_pca(pos, neg, aa=0.2, n_components=2)
    np.testing.assert_allclose(P, P.T, atol=1e-12)
    np.testing.assert_allclose(P @ P, P, atol=1e-10)
    e = np.eye(d)
    assert np.linalg.norm(P @ e[0]) > 0.99 and np.linalg.norm(P @ e[1]) > 0.99
    assert np.linalg.norm(P @ e[2]) < 1e-2  # (the official +1e-5 and sample correlations)
    # by the official formula: leading eigenvectors of (1-aa)S_a - aa S_b + 1e-5
    A, B = pos - pos.mean(0), neg - pos.mean(0)
    C = 0.8 * A.T @ A / 49 - 0.2 * B.T @ B / 49 + 1e-5
    L, V = np.linalg.eigh(C)
    V2 = V[:, np.argsort(L)[::-1][:2]]
    np.testing.assert_allclose(P, V2 @ V2.T, atol=1e-10)
    v, w, X = _unit_rows(rng, 2, d), _unit_rows(rng, 2, d), _unit_rows(rng, 10, d)
    mu_i, mu_t = X.mean(0), pos.mean(0)
    si, st = compose.basic_similarities(v, w, X, image_mean=mu_i, text_mean=mu_t, projection=P)
    np.testing.assert_allclose(si, ((v - mu_i) @ P) @ (X - mu_i).T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st, (w - mu_t) @ (X - mu_i).T, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------- caption based
class FakeCaptioner:
    """The kit's captioner interface (images -> list of description lists), deterministic, no model."""

    def __init__(self):
        self.seen = []

    def __call__(self, images):
        self.seen.extend(images)
        return [[f"an aerial image of {str(im).split('/')[0]}.", "second sentence."] for im in images]


def test_cirevl_texts_caption_each_image_once():
    cap = FakeCaptioner()
    out = compose.cirevl_texts(cap, ["forest/a.jpg", "forest/a.jpg", "river/b.jpg"], ["with cars", "no trees", "x"])
    assert out == ["an aerial image of forest, with cars", "an aerial image of forest, no trees",
                   "an aerial image of river, x"]
    assert cap.seen == ["forest/a.jpg", "river/b.jpg"]
    out2 = compose.cirevl_texts(cap, ["river/b.jpg"], ["x"], rewrite=lambda c, t: f"{t} | {c}")
    assert out2 == ["x | an aerial image of river."]
    with pytest.raises(ParameterError):
        compose.cirevl_texts(cap, ["a"], ["x", "y"])


def test_weimocir_scores_formula_with_fake_captions():
    rng = np.random.default_rng(7)
    v, w, X = _unit_rows(rng, 3, 5), _unit_rows(rng, 3, 5), _unit_rows(rng, 8, 5)
    table = {f"c{i}": _unit_rows(rng, 1, 5)[0] for i in range(16)}
    descriptions = [[f"c{2 * i}", f"c{2 * i + 1}"] for i in range(8)]
    C = compose.caption_embeddings(descriptions, lambda texts: np.stack([table[t] for t in texts]))
    np.testing.assert_allclose(C[3], (table["c6"] + table["c7"]) / 2, atol=1e-7)
    s = compose.weimocir_scores(v, w, X, C, alpha=0.4, beta=0.3)
    for b in range(3):
        q = 0.6 * v[b] + 0.4 * w[b]
        q = q / np.linalg.norm(q)
        for i in range(8):
            q2c = np.mean([q @ table[t] for t in descriptions[i]])
            assert s[b, i] == pytest.approx(0.7 * (q @ X[i]) + 0.3 * q2c, abs=1e-6)
    with pytest.raises(DataError, match="no caption"):
        compose.caption_embeddings([["a"], []], lambda t: np.ones((len(t), 2)))


def test_slerp_weights_give_slerp_up_to_its_norm():
    rng = np.random.default_rng(8)
    v, w = _unit_rows(rng, 10, 6), _unit_rows(rng, 10, 6)
    v[2] = w[2]
    for alpha in (0.0, 0.25, 0.7, 1.0):
        cv, cw = compose.slerp_weights(v, w, alpha)
        q = cv * v + cw * w
        np.testing.assert_allclose(q / np.linalg.norm(q, axis=1, keepdims=True), compose.slerp(v, w, alpha), atol=1e-5)
        assert (cv >= 0).all() and (cw >= 0).all()   # a positive combination: same ranking as the unit query


def test_stable_topk_matches_a_stable_sort_with_ties():
    rng = np.random.default_rng(9)
    s = torch.from_numpy(rng.integers(0, 6, (50, 40)).astype(np.float32))  # heavy ties
    for n in (1, 3, 10, 40):
        ref = torch.sort(s, dim=-1, descending=True, stable=True).indices[:, :n]
        assert torch.equal(compose._stable_topk(s, n), ref)

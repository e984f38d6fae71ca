"""The field's training-free methods as registry entries, run by the vectorised engine, each against a slow
per-pair reference written here from the method's formula (float64, metrics.average_precision)."""
import hashlib

import numpy as np
import pytest

from rscir_kit import methods
from rscir_kit.datasets.patterncom import PatternCom
from rscir_kit.datasets.synthetic import synthetic_patterncom
from rscir_kit.engine import evaluate
from rscir_kit.errors import DataError, ParameterError
from rscir_kit.metrics import average_precision

LAMS = (0.0, 0.3, 0.5, 0.8, 1.0)


class HashEncoder:
    """A deterministic text encoder for plumbing tests: each string → a fixed random unit vector in the span of
    the benchmark's text vectors plus noise (so composed texts stay related to their words)."""

    def __init__(self, texts, meta):
        self.base = dict(zip(texts.texts, np.asarray(texts.feats, np.float64)))
        self.meta = dict(meta)
        self.d = texts.feats.shape[1]
        self.calls = 0

    def vec(self, s):
        seed = int(hashlib.sha256(s.encode()).hexdigest()[:8], 16)
        v = np.random.default_rng(seed).standard_normal(self.d)
        for t, e in self.base.items():
            if t in s:
                v = v + 3.0 * e
        return v / np.linalg.norm(v)

    def encode_texts(self, texts, batch_size=256):
        self.calls += 1
        return np.stack([self.vec(s) for s in texts]).astype(np.float32)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    archive, texts, root = synthetic_patterncom(tmp_path_factory.mktemp("pc"), images_per_class=12, rows_per_class=6,
                                                dim=24, text_signal=0.6)
    queries = PatternCom(root).queries(archive.paths)
    return archive, texts, queries


def _rows(bench, i):
    archive, texts, queries = bench
    X = archive.feats.astype(np.float64)
    row = queries.table.iloc[i]
    v = X[list(archive.paths).index(row["query_path"])]
    w = texts.lookup([row["text"]])[0].astype(np.float64)
    relevant = np.zeros(len(X), bool)
    relevant[queries.positives(i)] = True
    return X, v, w, relevant


def _z(s):
    return (s - s.mean()) / s.std(ddof=1)


def _rr(s):
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))
    r = np.empty(len(s))
    r[order] = np.arange(1, len(s) + 1)
    return 1.0 / (60 + r)


def _slerp(v, w, a):
    dot = float(v @ w)
    if abs(dot) > 0.9995:
        q = v + a * (w - v)
    else:
        th = np.arccos(dot)
        q = np.sin((1 - a) * th) / np.sin(th) * v + np.sin(a * th) / np.sin(th) * w
    return q / np.linalg.norm(q)


def _reference_row(method, lam, X, v, w):
    si, st = X @ v, X @ w
    if method == "zscore-sum":
        return lam * _z(st) + (1 - lam) * _z(si)
    if method == "minmax-sum":
        mm = lambda s: (s - s.min()) / (s.max() - s.min())  # noqa: E731
        return lam * mm(st) + (1 - lam) * mm(si)
    if method == "rrf":
        return lam * _rr(st) + (1 - lam) * _rr(si)
    if method == "harris":
        a, b = np.maximum(si, 0), np.maximum(st, 0)
        return a * b - lam * (a + b) ** 2
    if method == "feature-sum":
        q = (1 - lam) * v + lam * w
        return X @ (q / np.linalg.norm(q))
    if method == "slerp":
        return X @ _slerp(v, w, lam)
    raise AssertionError(method)


@pytest.mark.parametrize("method", ["zscore-sum", "minmax-sum", "rrf", "harris", "feature-sum", "slerp"])
@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_engine_equals_slow_reference(bench, method, backend):
    archive, texts, queries = bench
    lams = LAMS if method != "harris" else (0.0, 0.1, 0.25, 0.5)
    per_pair = evaluate(queries, archive, texts, methods=[method], lambdas=lams, progress=False, backend=backend)
    assert len(per_pair) == len(queries) * len(lams)
    worst = 0.0
    for i in range(0, len(queries), 3):
        X, v, w, rel = _rows(bench, i)
        for lam in lams:
            ref = average_precision(_reference_row(method, lam, X, v, w), rel)
            got = per_pair[(per_pair["pair"] == i) & np.isclose(per_pair["lambda"], lam)]["ap"].iat[0]
            worst = max(worst, abs(got - ref))
    assert worst < 1e-6, (method, worst)


def test_special_cases_equal_existing_methods(bench):
    archive, texts, queries = bench
    pp = evaluate(queries, archive, texts, methods=["image", "text", "average", "slerp", "feature-sum", "rrf"],
                  lambdas=(0.0, 0.5, 1.0), progress=False)
    ap = lambda m, lam=None: pp[(pp["method"] == m) & (np.isclose(pp["lambda"], lam) if lam is not None  # noqa: E731
                                                        else pp["lambda"].isna())]["ap"].to_numpy()
    np.testing.assert_allclose(ap("slerp", 0.0), ap("image"), atol=1e-9)       # α = 0: the image
    np.testing.assert_allclose(ap("slerp", 1.0), ap("text"), atol=1e-9)        # α = 1: the text
    np.testing.assert_allclose(ap("feature-sum", 0.5), ap("average"), atol=1e-6)  # ranks as the raw average
    np.testing.assert_allclose(ap("rrf", 0.0), ap("image"), atol=1e-9)         # one list: its own order


def _freedom_reference(X, v, text, vocab, encode, k, n, m):
    sim = X @ v
    near = sorted(range(len(X)), key=lambda i: (-sim[i], i))[:k]
    proxies = [X[i] for i in near]
    if sim.max() < 0.98:
        proxies = [v] + proxies[:-1]
    V = encode(vocab).astype(np.float64)
    counts = {}
    for p in proxies:
        ws = V @ p
        for j in sorted(range(len(vocab)), key=lambda j: (-ws[j], j))[:n]:
            counts[j] = counts.get(j, 0) + 1
    best = sorted(counts, key=lambda j: counts[j], reverse=True)[:m]
    top = max(counts[j] for j in best)
    q = sum(counts[j] / top * encode([f"{vocab[j]} {text}"])[0].astype(np.float64) for j in best)
    return X @ q


@pytest.mark.parametrize("backend", ["kernel", "torch"])
@pytest.mark.parametrize("similarity_rows", [False, True])
def test_freedom_score_paths_equal_official_steps(bench, monkeypatch, backend, similarity_rows):
    """Both ways FreeDom's rows are made — sums of its strings' precomputed similarity rows (compiled on the
    kernel backend, torch gathers on the torch one) or one product with the weighted query — rank as the
    official steps (float64 reference); the path taken is the one asked for."""
    archive, texts, queries = bench
    enc = HashEncoder(texts, archive.meta)
    vocab = methods.default_vocabulary(queries, archive)
    monkeypatch.setattr(methods, "_freedom_similarity_rows", lambda *a: similarity_rows)
    calls = []
    query = methods._freedom_query
    monkeypatch.setattr(methods, "_freedom_query", lambda *a: calls.append(1) or query(*a))
    pp = evaluate(queries, archive, enc, methods=["freedom:k=5,n=3,m=4"], lambdas=(), progress=False,
                  backend=backend)
    assert bool(calls) == (not similarity_rows)
    for i in range(len(queries)):
        X, v, _, rel = _rows(bench, i)
        ref = average_precision(_freedom_reference(X, v, queries.table["text"].iat[i], vocab, enc.encode_texts,
                                                   5, 3, 4), rel)
        assert pp["ap"].iat[i] == pytest.approx(ref, abs=1e-6)


def test_freedom_alone_skips_the_image_scores_and_ranks_the_same(bench, monkeypatch):
    """FreeDom reads no similarity row of the block: evaluated alone, the engine makes no image GEMM, and its
    APs equal those of the same evaluation beside WeiCom (which needs the image side)."""
    from rscir_kit import engine

    archive, texts, queries = bench
    enc = HashEncoder(texts, archive.meta)
    plans = []
    plan = engine._plan
    monkeypatch.setattr(engine, "_plan", lambda *a: plans.append(plan(*a)) or plans[-1])
    alone = evaluate(queries, archive, enc, methods=["freedom"], lambdas=(), progress=False)
    both = evaluate(queries, archive, enc, methods=["freedom", "weicom"], lambdas=(0.5,), progress=False)
    assert (plans[0].img_scored, plans[0].txt_scored) == (False, False)
    assert (plans[1].img_scored, plans[1].txt_scored) == (True, True)
    np.testing.assert_array_equal(alone["ap"].to_numpy(), both[both["method"] == "freedom"]["ap"].to_numpy())


def test_freedom_engine_equals_official_steps(bench, tmp_path):
    archive, texts, queries = bench
    enc = HashEncoder(texts, archive.meta)
    vocab = methods.default_vocabulary(queries, archive)
    assert "airplane" in vocab and "tennis court" in vocab      # class names ('_' → space) ...
    assert "white" in vocab                                      # ... and the benchmark's values
    pp = evaluate(queries, archive, enc, methods=["freedom:k=5,n=3,m=4"], lambdas=(), progress=False)
    for i in range(0, len(queries), 5):
        X, v, _, rel = _rows(bench, i)
        text = queries.table["text"].iat[i]
        ref = average_precision(_freedom_reference(X, v, text, vocab, enc.encode_texts, 5, 3, 4), rel)
        assert pp["ap"].iat[i] == pytest.approx(ref, abs=1e-6)
    assert methods.method_label("freedom:k=5,n=3,m=4") == "FreeDom (k=5, n=3, m=4)"
    # a user vocabulary file
    words = tmp_path / "words.txt"
    words.write_text("# my words\nharbour\nboats\n\nroad\n", encoding="utf-8")
    pp2 = evaluate(queries, archive, enc, methods=[f"freedom:vocab={words},m=2"], lambdas=(), progress=False)
    X, v, _, rel = _rows(bench, 0)
    ref = average_precision(_freedom_reference(X, v, queries.table["text"].iat[0], ["harbour", "boats", "road"],
                                               enc.encode_texts, 20, 7, 2), rel)
    assert pp2["ap"].iat[0] == pytest.approx(ref, abs=1e-6)
    # text feature files cannot embed the composed texts: a clear error
    with pytest.raises(DataError, match="text encoder"):
        evaluate(queries, archive, texts, methods=["freedom"], lambdas=(), progress=False)
    with pytest.raises(ParameterError, match="unknown option"):
        evaluate(queries, archive, enc, methods=["freedom:q=3"], lambdas=(), progress=False)


def _qe_reference(row, X, q, n, alpha):
    top = sorted(range(len(row)), key=lambda i: (-row[i], i))[:n]
    anchor = q if q is not None else X[top[0]]
    acc = q.copy() if q is not None else np.zeros(X.shape[1])
    for i in top:
        acc = acc + max(float(X[i] @ anchor), 0.0) ** alpha * X[i]
    return X @ (acc / np.linalg.norm(acc))


def _qe_base(name, lam, X, v, w, other):
    """Slow reference of a base method's row (and its composed query vector, None for score fusions) before αQE."""
    if name == "weicom":
        from scipy.special import ndtr
        return -(lam * ndtr(-_z(X @ w)) + (1 - lam) * ndtr(-_z(X @ v))), None
    if name == "image":
        return X @ v, None
    if name == "slerp":
        q = _slerp(v, w, lam)
        return X @ q, q
    return _reference_row(other, lam, X, v, w), None


@pytest.mark.parametrize("method,lam", [("weicom+qe", 0.5), ("slerp+qe:n=4,alpha=1", 0.6), ("image+qe", None),
                                        ("rrf+qe:n=3", 0.5)])
def test_query_expansion_on_any_method(bench, method, lam):
    archive, texts, queries = bench
    pp = evaluate(queries, archive, texts, methods=[method], lambdas=(lam,) if lam is not None else (),
                  progress=False)
    spec = methods.method_spec(method)
    qe = dict(spec.qe)
    for i in range(0, len(queries), 4):
        X, v, w, rel = _rows(bench, i)
        base, q = _qe_base(spec.name, lam, X, v, w, other="rrf")
        ref = average_precision(_qe_reference(base, X, q, qe["n"], qe["alpha"]), rel)
        assert pp["ap"].iat[i] == pytest.approx(ref, abs=1e-6), (method, i)
    assert methods.method_label(method, lam).startswith(methods.REGISTRY[spec.name].label)
    assert "αQE" in methods.method_label(method, lam)


def test_method_strings_are_validated():
    with pytest.raises(ParameterError, match="query-expansion"):
        methods.method_spec("weicom+qex")
    with pytest.raises(ParameterError, match="n ≥ 1"):
        methods.method_spec("weicom+qe:n=0")
    with pytest.raises(ParameterError, match="must be a int"):
        methods.method_spec("freedom:k=many")
    assert methods.method_spec("add:weicom+qe").norm == "weicom"
    assert methods.get("slerp").takes_lambda and not methods.get("freedom").takes_lambda


def test_weimocir_with_a_fake_captioner(bench, tmp_path):
    """WeiMoCIR through the captioner interface: a fake captioner describes the archive, the captions file feeds
    the registry entry; the engine equals the paper's formula per pair."""
    from rscir_kit import compose

    archive, texts, queries = bench
    enc = HashEncoder(texts, archive.meta)

    def captioner(images):  # the kit's interface: images -> list of description lists
        return [[f"an aerial image of {p.split('/')[0].replace('_', ' ')}", f"{p.split('/')[-1]} seen from above"]
                for p in images]

    descriptions = captioner(list(archive.paths))
    path = compose.save_captions(tmp_path / "captions.json", archive.paths, descriptions, captioner="fake")
    assert compose.load_captions(path, archive.paths[::-1])[0] == descriptions[-1]
    pp = evaluate(queries, archive, enc, methods=[f"weimocir:captions={path},beta=0.3"], lambdas=(0.4,),
                  progress=False)
    desc_vecs = [np.stack([enc.vec(t) for t in d]) for d in descriptions]  # (2, d) per image, embedded once
    for i in range(0, len(queries), 5):
        X, v, _, rel = _rows(bench, i)
        w = enc.vec(queries.table["text"].iat[i])  # the query texts are embedded by the same encoder
        q = 0.6 * v + 0.4 * w
        q /= np.linalg.norm(q)
        q2c = np.array([np.mean(dv @ q) for dv in desc_vecs])
        ref = average_precision(0.7 * (X @ q) + 0.3 * q2c, rel)
        assert pp["ap"].iat[i] == pytest.approx(ref, abs=1e-6)
    with pytest.raises(ParameterError, match="captions"):
        evaluate(queries, archive, enc, methods=["weimocir"], lambdas=(0.5,), progress=False)
    with pytest.raises(DataError, match="no captions for"):
        compose.save_captions(tmp_path / "few.json", archive.paths[:3], descriptions[:3])
        evaluate(queries, archive, enc, methods=[f"weimocir:captions={tmp_path / 'few.json'}"], lambdas=(0.5,),
                 progress=False)


def test_cirevl_with_a_fake_captioner(bench, tmp_path):
    """CIReVL as a registry entry: a fake captioner describes the images, each pair's query is the text encoder's
    embedding of 'caption, text' (compose.default_rewrite); the engine equals that text→image retrieval."""
    from rscir_kit import compose

    archive, texts, queries = bench
    enc = HashEncoder(texts, archive.meta)

    def captioner(images):
        return [[f"an aerial image of {p.split('/')[0].replace('_', ' ')}."] for p in images]

    path = compose.save_captions(tmp_path / "captions.json", archive.paths, captioner(list(archive.paths)), "fake")
    pp = evaluate(queries, archive, enc, methods=[f"cirevl:captions={path}"], lambdas=(), progress=False)
    for i in range(0, len(queries), 3):
        X, _, _, rel = _rows(bench, i)
        row = queries.table.iloc[i]
        caption = f"an aerial image of {row['query_path'].split('/')[0].replace('_', ' ')}"
        ref = average_precision(X @ enc.vec(f"{caption}, {row['text']}"), rel)
        assert pp["ap"].iat[i] == pytest.approx(ref, abs=1e-6)
    assert methods.method_label(f"cirevl:captions={path}").startswith("CIReVL (caption + text) (captions=")
    with pytest.raises(ParameterError, match="query images' captions"):
        evaluate(queries, archive, enc, methods=["cirevl"], lambdas=(), progress=False)
    few = compose.save_captions(tmp_path / "few.json", archive.paths[:1], captioner(list(archive.paths[:1])))
    with pytest.raises(DataError, match=r"no captions for \d+ query image\(s\)"):
        evaluate(queries, archive, enc, methods=[f"cirevl:captions={few}"], lambdas=(), progress=False)
    with pytest.raises(DataError, match="text encoder"):
        evaluate(queries, archive, texts, methods=[f"cirevl:captions={path}"], lambdas=(), progress=False)


@pytest.mark.parametrize("method,lam", [("weicom+qe:n=4", 0.5), ("slerp+qe:n=3,alpha=2", 0.4), ("harris+qe:n=5", 0.1),
                                        ("image+qe:n=2", None)])
def test_query_expansion_with_duplicate_archive_items(bench, method, lam):
    """αQE's first pass where exact ties straddle the n-th place (duplicated archive embeddings): the kernel's
    compiled selection and the torch path (a stable sort's first n) both equal the slow reference."""
    from rscir_kit.features import ImageFeatures

    archive, texts, queries = bench
    feats = archive.feats.copy()
    feats[1::2] = feats[0::2][: len(feats[1::2])]  # every odd item duplicates its even neighbour
    dup = ImageFeatures(feats, archive.paths, archive.labels, dict(archive.meta))
    lams = (lam,) if lam is not None else ()
    got = {be: evaluate(queries, dup, texts, methods=[method], lambdas=lams, progress=False, backend=be)["ap"]
           for be in ("kernel", "torch")}
    np.testing.assert_allclose(got["kernel"], got["torch"], rtol=0, atol=1e-12)
    spec = methods.method_spec(method)
    qe = dict(spec.qe)
    X = feats.astype(np.float64)
    for i in range(0, len(queries), 5):
        row = queries.table.iloc[i]
        v = X[list(dup.paths).index(row["query_path"])]
        w = texts.lookup([row["text"]])[0].astype(np.float64)
        rel = np.zeros(len(X), bool)
        rel[queries.positives(i)] = True
        base, q = _qe_base(spec.name, lam, X, v, w, other="harris")
        assert sorted(base)[-1] == sorted(base)[-2]  # the best item has its twin: a tie at the top
        ref = average_precision(_qe_reference(base, X, q, qe["n"], qe["alpha"]), rel)
        assert got["kernel"].iat[i] == pytest.approx(ref, abs=1e-6), (method, i)

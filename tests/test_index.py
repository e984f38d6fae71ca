"""Archive index: O(d²) statistics = full-pass ones; threshold algorithm = brute-force top-k (ties included);
λ = 0 / 1 = single-modality search; fast mode; build/load; CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import ndtr

from rscir_kit.errors import DataError, ModelMismatchError, ParameterError
from rscir_kit.index import ArchiveIndex, compute_stats

N, D = 6000, 48


def _archive(n=N, d=D, seed=0, n_classes=12):
    """Clustered unit vectors with a common direction (CLIP-like anisotropy)."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(d)
    centres = rng.standard_normal((n_classes, d)) + 1.5 * common
    x = centres[rng.integers(0, n_classes, n)] + 0.9 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), rng


def _unit(v):
    v = np.asarray(v, np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _reference(stored16, q_img, q_txt, lam, k):
    """Brute force written independently: full-pass float64 statistics, Φ, stable descending sort."""
    x = stored16.astype(np.float64)
    out = 0.0
    for q, w in ((q_img, 1 - lam), (q_txt, lam)):
        if w == 0:
            continue
        s = x @ q.astype(np.float64)
        z = (s - s.mean()) / s.std(ddof=1)
        out = out + w * ndtr(-z)          # tail form: score = 1 - out (see rscir_kit.index docs)
    order = np.lexsort((np.arange(len(x)), out))   # ascending tail = descending score; ties: lower index
    return order[:k], 1.0 - out[order[:k]]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    x, _ = _archive()
    paths = np.array([f"class{i % 12}/img{i:05d}.jpg" for i in range(N)])
    labels = np.array([f"class{i % 12}" for i in range(N)])
    idx = ArchiveIndex.build(x, tmp_path_factory.mktemp("idx") / "archive", paths=paths, labels=labels,
                             model="test-model", fast="IVF32,SQfp16", nprobe=4)
    return idx, x


def _queries(x, rng, n):
    for _ in range(n):
        qi = _unit(x[rng.integers(len(x))] + 0.3 * rng.standard_normal(x.shape[1]))
        qt = _unit(rng.standard_normal(x.shape[1]) + 2.0 * x[rng.integers(len(x))])
        yield qi, qt


# --------------------------------------------------------------------------------------- statistics
def test_moment_statistics_equal_full_pass(built):
    idx, _ = built
    stored = np.asarray(idx.rows, dtype=np.float64)
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = _unit(rng.standard_normal(D))
        s = stored @ q.astype(np.float64)
        mean, std = idx.stats.moments(q)
        assert mean[0] == pytest.approx(s.mean(), rel=1e-12, abs=1e-15)
        assert std[0] == pytest.approx(s.std(ddof=1), rel=1e-10)
        z_full = (s - s.mean()) / s.std(ddof=1)
        z_mom = idx.stats.zscore(s[None], q)[0]
        np.testing.assert_allclose(z_mom, z_full, rtol=0, atol=1e-9)


def test_moment_statistics_match_kit_normalisation(built):
    """Same numbers as the kit's own full-pass WeiCom normalisation (float32 torch path)."""
    normalize = pytest.importorskip("rscir_kit.normalization").normalize
    idx, _ = built
    stored = np.asarray(idx.rows, dtype=np.float32)
    q = _unit(np.random.default_rng(2).standard_normal(D))
    s = stored @ q
    ref = np.asarray(normalize(s[None].astype(np.float64), "weicom"), dtype=np.float64)[0]
    mine = ndtr(idx.stats.zscore(s[None], q)[0])
    np.testing.assert_allclose(mine, ref, atol=1e-6)


def test_compute_stats_is_unbiased_covariance():
    x = np.random.default_rng(3).standard_normal((500, 7))
    st = compute_stats(x, chunk=64)
    np.testing.assert_allclose(st.mu, x.mean(axis=0), atol=1e-14)
    np.testing.assert_allclose(st.cov, np.cov(x, rowvar=False, ddof=1), atol=1e-13)


# --------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("lam", [0.0, 0.1, 0.3, 0.5, 0.7, 0.95, 1.0])
def test_threshold_algorithm_equals_brute_force(built, lam):
    idx, x = built
    rng = np.random.default_rng(int(lam * 100))
    stored = np.asarray(idx.rows)
    for j, (qi, qt) in enumerate(_queries(x, rng, 8)):
        k = (1, 7, 25, 60)[j % 4]
        ref_ids, ref_scores = _reference(stored, qi, qt, lam, k)
        for kwargs in ({}, {"depth": 16}):                       # default depth, and a deliberately short start
            res = idx.search(qi, qt, lam=lam, k=k, mode="exact", **kwargs)
            assert res.info["lists"] == "exact"
            np.testing.assert_array_equal(res.indices, ref_ids)
            np.testing.assert_allclose(res.scores, ref_scores, rtol=0, atol=1e-12)
        scan = idx.search(qi, qt, lam=lam, k=k, mode="scan")
        np.testing.assert_array_equal(scan.indices, ref_ids)


def test_short_lists_deepen_and_are_counted(built):
    idx, x = built
    qi, qt = next(_queries(x, np.random.default_rng(5), 1))
    res = idx.search(qi, qt, lam=0.5, k=30, depth=8)
    assert res.info["fetches"] >= 2 and res.info["depth"] > 8
    assert res.info["candidates"] < N          # the point: not every image was scored


def test_ties_broken_by_lower_index(tmp_path):
    """Many exact duplicates (also across the k-th place): the archive order decides, as a stable sort."""
    base, rng = _archive(n=300, d=16, seed=7)
    x = np.concatenate([base[rng.integers(0, 300, 2700)], base])   # every row repeated ~10×
    x = x[rng.permutation(len(x))]
    idx = ArchiveIndex.build(x, tmp_path / "ties", fast=None)
    stored = np.asarray(idx.rows)
    for lam in (0.0, 0.4, 1.0):
        for qi, qt in _queries(x, rng, 10):
            for k in (5, 13, 40):
                ref_ids, _ = _reference(stored, qi, qt, lam, k)
                got = idx.search(qi, qt, lam=lam, k=k, depth=16)
                np.testing.assert_array_equal(got.indices, ref_ids)
                # duplicates of the k-th item beyond the cut all have higher indices
                assert len(np.unique(got.scores)) < k or k == 5


def test_lambda_zero_and_one_are_single_modality_search(built):
    idx, x = built
    stored = np.asarray(idx.rows, dtype=np.float64)
    rng = np.random.default_rng(11)
    for qi, qt in _queries(x, rng, 5):
        for lam, q in ((0.0, qi), (1.0, qt)):
            s = stored @ q.astype(np.float64)
            expect = np.lexsort((np.arange(N), -s))[:20]
            np.testing.assert_array_equal(idx.search(qi, qt, lam=lam, k=20).indices, expect)
        # the unused modality may be omitted
        np.testing.assert_array_equal(idx.search(qi, None, lam=0.0, k=20).indices,
                                      idx.search(qi, qt, lam=0.0, k=20).indices)
        np.testing.assert_array_equal(idx.search(None, qt, lam=1.0, k=20).indices,
                                      idx.search(qi, qt, lam=1.0, k=20).indices)


def test_lambda_and_query_validation(built):
    idx, x = built
    q = x[0]
    for bad in (-0.1, 1.5, float("nan"), "a"):
        with pytest.raises(ParameterError, match=r"\[0, 1\]"):  # the one λ check (methods.check_lambda)
            idx.search(q, q, lam=bad)
    with pytest.raises(DataError, match="text query is needed"):
        idx.search(q, None, lam=0.5)
    with pytest.raises(DataError, match="size d=48"):
        idx.search(q[:10], q, lam=0.5)
    with pytest.raises(DataError, match="mode"):
        idx.search(q, q, mode="approx")


def test_fast_mode_rescored_exactly_and_full_probe_is_exact(built):
    idx, x = built
    rng = np.random.default_rng(13)
    stored = np.asarray(idx.rows)
    hits = total = 0
    for qi, qt in _queries(x, rng, 10):
        ref_ids, _ = _reference(stored, qi, qt, 0.5, 20)
        res = idx.search(qi, qt, lam=0.5, k=20, mode="fast")
        # whatever was found carries its exact score
        exact = idx.search(qi, qt, lam=0.5, k=N, mode="scan")
        pos = {int(i): s for i, s in zip(exact.indices, exact.scores)}
        np.testing.assert_allclose(res.scores, [pos[int(i)] for i in res.indices], atol=1e-12)
        hits += len(np.intersect1d(res.indices, ref_ids))
        total += 20
        full = idx.search(qi, qt, lam=0.5, k=20, mode="fast", nprobe=32)   # every cell probed
        np.testing.assert_array_equal(full.indices, ref_ids)
    assert hits / total > 0.8


def test_k_larger_than_archive_and_result_frame(built):
    idx, x = built
    res = idx.search(x[1], x[2], lam=0.5, k=N + 10, mode="exact")
    assert len(res) == N and sorted(res.indices.tolist()) == list(range(N))
    df = idx.search(x[1], x[2], lam=0.5, k=5).to_frame()
    assert list(df.columns) == ["rank", "index", "score", "s_img", "s_txt", "path", "label"]
    assert df["path"].iloc[0].startswith("class")


# --------------------------------------------------------------------------------------- storage
def test_build_load_roundtrip_storage(built, tmp_path):
    idx, x = built
    again = ArchiveIndex.load(idx.root)
    assert again.model_id == "test-model" and again.n == N and again.d == D
    assert again.rows.dtype == np.float16 and isinstance(again.rows, np.memmap)
    np.testing.assert_array_equal(np.asarray(again.rows), x.astype(np.float16))
    assert (idx.root / "flat.faiss").stat().st_size < N * D * 2 + 4096     # the float16 store is the only copy
    q = x[3]
    assert again.flat.search(q[None], 1)[1][0, 0] == 3
    with pytest.raises(DataError, match="not empty"):
        ArchiveIndex.build(x, idx.root)
    copy = idx.save(tmp_path / "copy")
    np.testing.assert_array_equal(ArchiveIndex.load(copy).search(q, q, k=5).indices, idx.search(q, q, k=5).indices)


def test_build_from_feature_file_keeps_model(tmp_path):
    features = pytest.importorskip("rscir_kit.features")
    x, _ = _archive(n=800, d=16, seed=4)
    features.ImageFeatures(x, [f"a/{i}.jpg" for i in range(800)], ["a"] * 800, {"model": "m-1"}).save(tmp_path / "f.npz")
    idx = ArchiveIndex.build(tmp_path / "f.npz", tmp_path / "idx", fast=None)
    assert idx.model_id == "m-1" and idx.paths[5] == "a/5.jpg"
    assert json.loads((tmp_path / "idx" / "meta.json").read_text())["feature_meta"]["model"] == "m-1"
    with pytest.raises(DataError, match="no fast index"):
        idx.search(x[0], x[1], mode="fast")


# --------------------------------------------------------------------------------------- CLI
def test_cli_build_and_search(tmp_path, capsys, monkeypatch):
    features = pytest.importorskip("rscir_kit.features")
    from rscir_kit import cli
    from rscir_kit.commands import index as cmd

    x, _ = _archive(n=1500, d=16, seed=9)
    features.ImageFeatures(x, [f"c/{i}.jpg" for i in range(1500)], ["c"] * 1500,
                           {"model": "m-1"}).save(tmp_path / "f.npz")
    assert cli.main(["index", "build", "--features", str(tmp_path / "f.npz"), "--out", str(tmp_path / "idx"),
                     "--quiet"]) == 0

    class FakeEncoder:
        def __init__(self, model_id):
            self.model_id, self.meta = model_id, {"model": model_id}

        def encode_texts(self, texts):
            return np.stack([x[42]] * len(texts))

    monkeypatch.setattr(cmd, "_load_encoder", lambda spec, device, setup: FakeEncoder(spec))
    monkeypatch.setenv("RSCIR_CACHE", str(tmp_path / "cache"))  # the query-text cache
    capsys.readouterr()
    out_csv = tmp_path / "res.csv"
    assert cli.main(["search", "--index", str(tmp_path / "idx"), "--image", "c/7.jpg", "--text", "with a river",
                     "--lam", "0.5", "-k", "4", "--out", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert "WeiCom top-4 of 1500 images" in printed and "mode=exact" in printed
    idx = ArchiveIndex.load(tmp_path / "idx")
    expect = idx.search(np.asarray(idx.rows[7], np.float32), x[42], lam=0.5, k=4).indices
    import pandas as pd

    table = pd.read_csv(out_csv)
    assert table["index"].tolist() == expect.tolist()
    assert all(f"c/{i}.jpg" in printed for i in expect)
    # another model is refused with a clear message
    assert cli.main(["search", "--index", str(tmp_path / "idx"), "--image", "c/7.jpg", "--text", "river",
                     "--model", "other-model"]) == 2
    assert "differs from the model of index" in capsys.readouterr().err
    with pytest.raises(ModelMismatchError):
        cmd.query_vectors(idx, "c/7.jpg", "river", model="other-model")
    assert cli.main(["search", "--index", str(tmp_path / "idx"), "--image", "c/7.jpg", "--lam", "2"]) == 2
    assert "[0, 1]" in capsys.readouterr().err


def test_search_lambdas_for_the_explorer(built):
    idx, x = built
    qi, qt = next(_queries(x, np.random.default_rng(17), 1))
    df = idx.search_lambdas(qi, qt, lams=(0.0, 0.5, 1.0), k=5)
    assert df["lam"].tolist() == [0.0] * 5 + [0.5] * 5 + [1.0] * 5
    np.testing.assert_array_equal(df[df["lam"] == 0.5]["index"].to_numpy(), idx.search(qi, qt, lam=0.5, k=5).indices)


@pytest.mark.slow  # trains a PQ index on 5000 vectors
def test_default_fast_index_is_pq_fastscan_with_high_recall(tmp_path):
    x, rng = _archive(n=5000, d=32, seed=21)
    idx = ArchiveIndex.build(x, tmp_path / "pq")                 # fast="auto"
    assert idx.meta["fast"] == "PQ8x4fs"
    stored = np.asarray(idx.rows)
    hits = 0
    for qi, qt in _queries(x, rng, 8):
        ref_ids, _ = _reference(stored, qi, qt, 0.5, 10)
        res = idx.search(qi, qt, lam=0.5, k=10, mode="fast")
        hits += len(np.intersect1d(res.indices, ref_ids))
        exact = idx.search(qi, qt, lam=0.5, k=10)                  # seeded by the fast candidates
        assert "seed_tail_k" in exact.info
        np.testing.assert_array_equal(exact.indices, ref_ids)
    assert hits / 80 >= 0.9


def test_cli_build_from_npy_memmap(tmp_path, capsys):
    from rscir_kit import cli

    x, _ = _archive(n=900, d=16, seed=5)
    np.save(tmp_path / "emb.npy", x.astype(np.float16))
    (tmp_path / "paths.txt").write_text("".join(f"tile_{i}.png\n" for i in range(900)))
    assert cli.main(["index", "build", "--features", str(tmp_path / "emb.npy"), "--out", str(tmp_path / "idx"),
                     "--model", "m-2", "--paths", str(tmp_path / "paths.txt"), "--fast", "none", "--quiet"]) == 0
    idx = ArchiveIndex.load(tmp_path / "idx")
    assert idx.model_id == "m-2" and idx.paths[3] == "tile_3.png" and idx.fast is None
    np.testing.assert_array_equal(np.asarray(idx.rows), x.astype(np.float16))


def test_cli_search_cache_batch_and_messages(tmp_path, capsys, monkeypatch):
    """Image-only queries of archive images and texts seen before need no model; a batch file gives one table
    equal to the single searches; bad rows are named by line."""
    features = pytest.importorskip("rscir_kit.features")
    from rscir_kit import cli
    from rscir_kit.commands import index as cmd

    x, _ = _archive(n=600, d=16, seed=11)
    features.ImageFeatures(x, [f"c/{i}.jpg" for i in range(600)], ["c"] * 600,
                           {"model": "m-3"}).save(tmp_path / "f.npz")
    assert cli.main(["index", "build", "--features", str(tmp_path / "f.npz"), "--out", str(tmp_path / "idx"),
                     "--fast", "none", "--quiet"]) == 0
    loads = []

    class FakeEncoder:
        model_id, meta = "m-3", {"model": "m-3"}

        def encode_texts(self, texts):
            return np.stack([x[(len(t) * 7) % 600] for t in texts])

    monkeypatch.setattr(cmd, "_load_encoder", lambda *a: loads.append(a) or FakeEncoder())
    monkeypatch.setenv("RSCIR_CACHE", str(tmp_path / "cache"))
    idx_dir = str(tmp_path / "idx")
    assert cli.main(["search", "--index", idx_dir, "--image", "c/3.jpg", "--lam", "0", "-k", "3"]) == 0
    assert loads == []  # image-only query of an archive image: its stored row, no model
    assert cli.main(["search", "--index", idx_dir, "--image", "c/3.jpg", "--text", "with a river", "-k", "3"]) == 0
    assert len(loads) == 1
    first = capsys.readouterr().out
    assert cli.main(["search", "--index", idx_dir, "--image", "c/3.jpg", "--text", "with a river", "-k", "3"]) == 0
    assert len(loads) == 1, "a text searched before must come from the cache"
    assert capsys.readouterr().out.splitlines()[-3:] == first.splitlines()[-3:]
    batch = tmp_path / "q.csv"
    batch.write_text("image,text,lam\nc/3.jpg,with a river,0.5\nc/9.jpg,,0\n,with a lake,1\nc/5.jpg,with a lake,0.2\n")
    out = tmp_path / "res.csv"
    assert cli.main(["search", "--index", idx_dir, "--batch", str(batch), "-k", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 queries over 600 images" in printed and len(loads) == 2  # one load for the new text, for all rows
    import csv

    table = list(csv.DictReader(open(out)))
    assert [r["query"] for r in table] == [str(i) for i in (1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4)]
    idx = ArchiveIndex.load(idx_dir)
    enc = FakeEncoder()
    for q, (img, text, lam) in enumerate([(3, "with a river", 0.5), (9, None, 0.0), (None, "with a lake", 1.0),
                                          (5, "with a lake", 0.2)], start=1):
        want = idx.search(None if img is None else np.asarray(idx.rows[img], np.float32),
                          None if text is None else enc.encode_texts([text])[0], lam=lam, k=4).indices
        assert [int(r["index"]) for r in table if r["query"] == str(q)] == want.tolist()
    batch.write_text("image,text,lam\nc/3.jpg,,0.5\n")
    assert cli.main(["search", "--index", idx_dir, "--batch", str(batch)]) == 2
    assert "q.csv:2: λ=0.5 needs a text" in capsys.readouterr().err
    assert cli.main(["search", "--index", idx_dir, "--image", "nosuch.jpg", "--lam", "0"]) == 2
    err = capsys.readouterr().err
    assert "nosuch.jpg" in err and "no such file" in err and "--images" not in err


def test_search_of_stored_images_and_cached_texts_imports_no_model_stack(tmp_path, monkeypatch):
    """``rscir-kit search`` (a fresh process, as a user runs it) with an image-only query of an archive image, a
    composed query whose text is cached, and a batch of such queries imports neither torch/open_clip nor the
    notebook stack (pandas, scipy.stats, matplotlib, numba; scipy.special is the one scipy module it needs, for Φ)
    -- and answers what the in-process search answers."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    features = pytest.importorskip("rscir_kit.features")
    from rscir_kit import cli
    from rscir_kit.commands import index as cmd

    x, _ = _archive(n=700, d=16, seed=13)
    features.ImageFeatures(x, [f"c/{i}.jpg" for i in range(700)], ["c"] * 700,
                           {"model": "m-4"}).save(tmp_path / "f.npz")
    idx_dir = str(tmp_path / "idx")
    assert cli.main(["index", "build", "--features", str(tmp_path / "f.npz"), "--out", idx_dir, "--fast", "none",
                     "--quiet"]) == 0

    class FakeEncoder:
        model_id, meta = "m-4", {"model": "m-4"}

        def encode_texts(self, texts):
            return np.stack([x[(len(t) * 11) % 700] for t in texts])

    monkeypatch.setattr(cmd, "_load_encoder", lambda *a: FakeEncoder())
    monkeypatch.setenv("RSCIR_CACHE", str(tmp_path / "cache"))
    assert cli.main(["search", "--index", idx_dir, "--image", "c/3.jpg", "--text", "with a river", "-k", "3"]) == 0
    batch = tmp_path / "q.csv"
    batch.write_text("image,text,lam\nc/3.jpg,with a river,0.5\nc/8.jpg,,0\nc/5.jpg,with a river,0.3\n")
    code = ("import sys\nfrom rscir_kit import cli\n"
            "for argv in sys.argv[1:]:\n"
            "    assert cli.main(argv.split('|')) == 0, argv\n"
            "heavy = ('torch', 'open_clip', 'transformers', 'sentence_transformers', 'pandas', 'scipy.stats', "
            "'matplotlib', 'numba', 'IPython', 'ipywidgets')\n"
            "print('HEAVY', sorted(m for m in heavy if m in sys.modules))\n")
    runs = ["|".join(["search", "--index", idx_dir, "--image", "c/3.jpg", "--lam", "0", "-k", "3"]),
            "|".join(["search", "--index", idx_dir, "--image", "c/3.jpg", "--text", "with a river", "-k", "3"]),
            "|".join(["search", "--index", idx_dir, "--batch", str(batch), "-k", "3"])]
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(RSCIR_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(repo))
    proc = subprocess.run([sys.executable, "-c", code, *runs], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]
    assert "no model load" in proc.stdout  # the batch: every text from the cache
    idx = ArchiveIndex.load(idx_dir)
    row3, river = np.asarray(idx.rows[3], np.float32), FakeEncoder().encode_texts(["with a river"])[0]
    lines = proc.stdout.splitlines()
    for lam, want_q in ((0.0, idx.search(row3, None, lam=0.0, k=3)), (0.5, idx.search(row3, river, lam=0.5, k=3))):
        head = next(i for i, line in enumerate(lines) if line.startswith(f"WeiCom top-3 of 700 images, λ={lam}"))
        got = [int(line.split()[1]) for line in lines[head + 2:head + 5]]
        assert got == want_q.indices.tolist()

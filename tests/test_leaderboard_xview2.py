"""xView2-CIR R@k in the leaderboard, on generated fake data (the real images need a registration at xview2.org):
the availability check and its message, R@k with λ chosen on validation against a plain-numpy recomputation, and
notebook 09's whole xView2 code path (tiny images, tiny random model) end to end."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtr

from rscir_kit.datasets.xview2 import xview2_queries
from rscir_kit.engine import evaluate
from rscir_kit.errors import DataError
from rscir_kit.features import ImageFeatures, TextFeatures
from rscir_kit.leaderboard import run_xview2, xview2_availability, xview2_recall
from rscir_kit.stats import split_query_images

sys.path.insert(0, str(Path(__file__).parent))

TEXTS = ("post flood", "post fire", "post earthquake")


def _write_list(root: Path, n: int) -> Path:
    lines = ["image,query_default,query_alt1,query_alt2,target"]
    for i in range(n):
        kind = ("flood", "fire", "earthquake")[i % 3]
        stem = f"test/images/{kind}-site_{i:08d}"
        lines.append(f"{stem}_pre_disaster.tif,post {kind},after the {kind},{kind} damage,{stem}_post_disaster.tif")
    root.mkdir(parents=True, exist_ok=True)
    (root / "xview2_cir.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "xview2_cir.csv"


def test_availability_says_what_is_missing_and_what_to_download(tmp_path, monkeypatch):
    monkeypatch.delenv("RSCIR_XVIEW2_IMAGES", raising=False)
    none = xview2_availability(tmp_path / "empty")
    assert not none.ready and none.list_file is None and "xview2_cir.csv" in none.message()
    csv = _write_list(tmp_path / "data", 6)
    no_images = xview2_availability(tmp_path / "data")
    assert no_images.list_file == csv and no_images.n_queries == 6 and no_images.n_needed == 12
    assert not no_images.ready
    msg = no_images.message()
    assert "cannot be evaluated offline" in msg and "xview2.org" in msg and "no image folder" in msg
    images = tmp_path / "xbd"
    for p in pd.read_csv(csv)[["image", "target"]].to_numpy().ravel()[:-1]:  # all but one target
        (images / p).parent.mkdir(parents=True, exist_ok=True)
        (images / p).write_bytes(b"x")
    partial = xview2_availability(tmp_path / "data", images)
    assert (partial.n_found, partial.ready) == (11, False) and "11 of the 12" in partial.message()
    assert partial.missing_example.endswith("_post_disaster.tif")
    with pytest.raises(DataError, match="cannot be evaluated offline"):
        run_xview2(partial, "unused", tmp_path / "cache", ["weicom"], [0.5])
    (images / partial.missing_example).write_bytes(b"x")
    monkeypatch.setenv("RSCIR_XVIEW2_IMAGES", str(images))  # the environment variable, as in the notebook
    assert xview2_availability(tmp_path / "data").ready


def _fake_features(csv, n, d=16, seed=0):
    rng = np.random.default_rng(seed)
    rows = pd.read_csv(csv)
    tdir = {t: rng.standard_normal(d) for t in rows["query_default"].unique()}
    paths, feats = [], []
    for r in rows.itertuples():
        pre = rng.standard_normal(d)
        post = pre + 1.5 * tdir[r.query_default] + 1.2 * rng.standard_normal(d)  # noisy: R@k neither 0 nor 100
        paths += [r.image, r.target]
        feats += [pre, post]
    feats = np.asarray(feats)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    meta = {"model": "fake"}
    archive = ImageFeatures(feats.astype(np.float32), np.array(paths), np.array([p.split("/")[-1].split("_")[0]
                                                                                  for p in paths]), meta)
    names = list(tdir)
    t = np.asarray([tdir[k] / np.linalg.norm(tdir[k]) for k in names], np.float32)
    return archive, TextFeatures(np.array(names), t, dict(meta, kind="text"))


def test_recall_at_k_chosen_on_validation_matches_numpy(tmp_path):
    n = 60
    csv = _write_list(tmp_path, n)
    archive, texts = _fake_features(csv, n)
    queries = xview2_queries(csv, archive.paths)
    lams = (0.0, 0.25, 0.5, 0.75, 1.0)
    pp = evaluate(queries, archive, texts, methods=["image", "text", "weicom"], lambdas=lams, ks=(1, 5, 10),
                  progress=False)
    images = queries.table["query_path"].to_numpy()
    split = split_query_images(images, "xview2", fraction=0.5, seed=0)
    board = xview2_recall(pp, queries, split, ks=(1, 5, 10), n_boot=200, seed=0)

    X = archive.feats.astype(np.float64)
    side = split.side_of(images)
    z = lambda s: (s - s.mean()) / s.std(ddof=1)  # noqa: E731

    def rank(i, lam):  # 0-based rank of pair i's target under WeiCom(λ), ties by archive order
        v = X[list(archive.paths).index(images[i])]
        w = texts.feats[list(texts.texts).index(queries.table["text"].iat[i])].astype(np.float64)
        s = {0.0: X @ v, 1.0: X @ w}.get(lam)
        if s is None:
            s = -(lam * ndtr(-z(X @ w)) + (1 - lam) * ndtr(-z(X @ v)))
        t = int(queries.positives(i)[0])
        return int((s > s[t]).sum() + (s[:t] == s[t]).sum())

    ranks = {lam: np.array([rank(i, lam) for i in range(len(images))]) for lam in lams}
    for k in (1, 5, 10):
        val = [100 * np.mean(ranks[lam][side == "validation"] < k) for lam in lams]
        lam_sel = lams[int(np.argmax(val))]  # first on ties, as the leaderboard
        assert board.boards[k].selected["weicom"] == ("weicom", lam_sel)
        t = board.table
        row = t[(t["k"] == k) & (t["family"] == "weicom") & (t["kind"] == "selected")].iloc[0]
        assert row["map"] == pytest.approx(100 * np.mean(ranks[lam_sel][side == "test"] < k), abs=1e-9)
        assert row["lo"] <= row["map"] <= row["hi"]
    assert 0 < board.table["map"].max() < 100
    wide = board.wide()
    assert list(wide.columns) == ["R@1", "R@5", "R@10"] and "WeiCom" in wide.index
    assert all(any(str(v).startswith("**") for v in wide[c]) for c in wide.columns)  # the best of each column
    rec = board.record()
    assert set(rec) == {"R@1", "R@5", "R@10"} and all("map" in v for v in rec["R@5"].values())
    assert "| method | R@1 | R@5 | R@10 |" in board.to_markdown()


@pytest.mark.slow
def test_notebook_code_path_on_tiny_images_and_a_tiny_model(tmp_path):
    """run_xview2 as notebook 09 calls it: generated TIFF images, a tiny random open_clip model (plumbing only)."""
    from PIL import Image

    from _tiny_model import make_tiny_model_dir

    csv = _write_list(tmp_path / "data", 12)
    images = tmp_path / "xbd"
    rng = np.random.default_rng(0)
    for p in pd.read_csv(csv)[["image", "target"]].to_numpy().ravel():
        (images / p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images / p)
    avail = xview2_availability(tmp_path / "data", images)
    assert avail.ready, avail.message()
    model = "local-dir:" + str(make_tiny_model_dir(tmp_path / "tiny"))
    board, split, split_file, pp = run_xview2(avail, model, tmp_path / "cache", ["image", "weicom"], [0.0, 0.5, 1.0],
                                              n_boot=50, device="cpu")
    assert split_file.is_file() and len(split.validation) + len(split.test) == 12
    assert set(pp["method"]) == {"image", "weicom"} and {"r@1", "r@5", "r@10"} <= set(pp.columns)
    assert set(board.table["k"]) == {1, 5, 10} and board.table["map"].between(0, 100).all()

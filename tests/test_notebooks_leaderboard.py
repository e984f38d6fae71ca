"""Notebook 09 (method leaderboard) executed on the real UCM images with the stand-in (5 images per class),
its selection and test numbers recomputed here with plain numpy from the notebook's own cached features."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtr

from rscir_kit import run_notebooks
from rscir_kit.datasets import get_benchmark
from rscir_kit.features import ImageFeatures, TextFeatures
from rscir_kit.metrics import average_precision
from rscir_kit.stats import QuerySplit
from tests.test_notebooks import NOTEBOOK_DIR

SIZE = 5


@pytest.fixture(scope="module")
def executed(tmp_path_factory, shared_data, standin_spec):
    out = tmp_path_factory.mktemp("nb09")
    cache = tmp_path_factory.mktemp("nb09_cache")
    summary = run_notebooks.run(notebooks=NOTEBOOK_DIR, out=out, only=["09"], size=SIZE, model=standin_spec,
                                data_root=shared_data, device="cpu", cache_dir=cache, quiet=True,
                                parameters={"n_boot": 200, "methods": ["image", "text", "weicom", "slerp", "rrf"]})
    results = json.loads((out / "09_method_leaderboard" / "results.json").read_text())
    return {"out": out, "summary": summary, "results": results, "data": shared_data, "model": standin_spec}


@pytest.mark.slow
@pytest.mark.realdata
def test_09_outputs_and_labels(executed):
    r = executed["results"]
    folder = executed["out"] / "09_method_leaderboard"
    for name in ("leaderboard", "lambda_curves"):
        assert (folder / f"{name}.png").stat().st_size > 10_000 and (folder / f"{name}.pdf").is_file()
    board = pd.read_csv(folder / "leaderboard_label.csv")
    assert {"row", "kind", "map", "lo", "hi"} <= set(board.columns)
    avg = board[board["attribute"] == "avg"]
    assert (avg["lo"] <= avg["map"]).all() and (avg["map"] <= avg["hi"]).all()
    assert set(avg["kind"]) <= {"selected", "oracle"}
    assert all("oracle" in row for row in avg[avg["kind"] == "oracle"]["row"])
    n_val, n_test = r["split"]["n_validation"], r["split"]["n_test"]
    assert r["standin"] is True and n_val > 0 and n_test > 0
    split = QuerySplit.load(r["split"]["file"])  # stratified by class: round(0.3 · n) of each class's images
    cls = lambda name: Path(name).stem.rstrip("0123456789")  # noqa: E731  (UCM names: <class><number>)
    both = pd.Series([cls(n) for n in split.validation + split.test]).value_counts()
    val = pd.Series([cls(n) for n in split.validation]).value_counts()
    assert all(val.get(c, 0) == round(0.3 * n) for c, n in both.items()) and len(val) == len(both)
    assert pd.read_csv(folder / "leaderboard_direction.csv")["direction"].isin(["add", "remove", "avg"]).all()
    ex = pd.read_csv(folder / "examples.csv")
    assert set(ex["outcome"]) <= {"better", "worse"}


@pytest.mark.slow
@pytest.mark.realdata
def test_09_selection_and_test_map_match_plain_numpy(executed):
    """WeiCom's λ chosen on the validation images and its test mAP, recomputed without the engine."""
    r = executed["results"]
    archive = ImageFeatures.load(r["image_features"])
    texts = TextFeatures.load(r["text_features"])
    split = QuerySplit.load(r["split"]["file"])
    qs = get_benchmark("ucmcom", data_root=executed["data"]).queries(archive.paths, missing="drop")
    X = archive.feats.astype(np.float64)
    idx = {p: i for i, p in enumerate(archive.paths)}
    side = split.side_of(qs.table["query_path"].astype(str))
    lams = [round(0.1 * k, 1) for k in range(11)]
    aps = {lam: [] for lam in lams}
    for i, row in qs.table.iterrows():
        rel = np.zeros(len(X), bool)
        rel[qs.positives(i)] = True
        si, st = X @ X[idx[row["query_path"]]], X @ texts.lookup([row["text"]])[0].astype(np.float64)
        z = lambda s: (s - s.mean()) / s.std(ddof=1)  # noqa: E731
        for lam in lams:
            score = si if lam == 0 else st if lam == 1 else -(lam * ndtr(-z(st)) + (1 - lam) * ndtr(-z(si)))
            aps[lam].append(average_precision(score, rel))
    frame = pd.DataFrame({"label": qs.table["attribute"], "side": side, **{lam: aps[lam] for lam in lams}})

    def mean_over_labels(sub, lam):
        return 100 * sub.groupby("label")[lam].mean().mean()

    val = {lam: mean_over_labels(frame[frame["side"] == "validation"], lam) for lam in lams}
    chosen = max(lams, key=lambda lam: (val[lam], -lam))
    assert r["selected"]["weicom"] == ["weicom", chosen]
    row = next(v for v in r["leaderboard"].values() if v["family"] == "weicom" and v["kind"] == "selected")
    assert row["map"] == pytest.approx(mean_over_labels(frame[frame["side"] == "test"], chosen), abs=1e-4)

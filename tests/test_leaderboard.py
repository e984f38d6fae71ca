"""Leaderboard: hyper-parameters chosen on validation images only, test mAP with CIs, oracle labelled."""
import numpy as np
import pandas as pd
import pytest

from rscir_kit.errors import ParameterError
from rscir_kit.leaderboard import family_of, leaderboard
from rscir_kit.queries import QuerySet
from rscir_kit.stats import bootstrap_map, split_query_images


def _setup(n_images=40):
    names = [f"img{i:02d}" for i in range(n_images)]
    table = pd.DataFrame({"query_path": np.repeat(names, 2), "text": ["t"] * (2 * n_images),
                          "positive_id": 0, "attribute": ["a", "b"] * n_images})
    qs = QuerySet("toy", table, [np.array([0])], np.array(["x0", "x1"]))
    split = split_query_images(names, "toy", fraction=0.5, seed=0)
    side = split.side_of(table["query_path"])
    rng = np.random.default_rng(0)
    rows = []
    n = len(table)
    for lam, val_ap, test_ap in ((0.0, 0.2, 0.2), (0.5, 0.6, 0.4), (1.0, 0.3, 0.7)):
        ap = np.where(side == "validation", val_ap, test_ap) + rng.normal(0, 0.01, n)
        rows.append(pd.DataFrame({"pair": np.arange(n), "method": "weicom", "lambda": lam, "ap": ap, "n_pos": 1,
                                  "attribute": table["attribute"]}))
    rows.append(pd.DataFrame({"pair": np.arange(n), "method": "image", "lambda": np.nan,
                              "ap": 0.3 + rng.normal(0, 0.01, n), "n_pos": 1, "attribute": table["attribute"]}))
    return pd.concat(rows, ignore_index=True), qs, split, side


def test_selection_on_validation_report_on_test(tmp_path):
    per_pair, qs, split, side = _setup()
    lb = leaderboard(per_pair, qs, split, by="attribute", n_boot=200, seed=1)
    assert lb.selected == {"weicom": ("weicom", 0.5), "image": ("image", None)}
    assert lb.oracle["weicom"] == ("weicom", 1.0)
    t = lb.table
    sel = t[(t["kind"] == "selected") & (t["family"] == "weicom") & (t["attribute"] == "avg")].iloc[0]
    # reported on the test pairs only
    test_rows = per_pair[(per_pair["method"] == "weicom") & (per_pair["lambda"] == 0.5)
                         & (side[per_pair["pair"]] == "test")]
    expect = test_rows.groupby("attribute")["ap"].mean().mean() * 100
    assert sel["map"] == pytest.approx(expect)
    assert sel["lo"] < sel["map"] < sel["hi"]
    assert "chosen on validation" in sel["row"]
    orc = t[(t["kind"] == "oracle") & (t["attribute"] == "avg")].iloc[0]
    assert "oracle" in orc["row"] and orc["map"] == pytest.approx(70, abs=1)
    # a method without candidates gets no oracle row
    assert not ((t["kind"] == "oracle") & (t["family"] == "image")).any()
    # CIs are the bootstrap over the test images (same seed → same numbers)
    ref = bootstrap_map(test_rows, qs, by="attribute", n_boot=200, seed=1)
    assert sel["lo"] == pytest.approx(ref["lo"].iat[-1]) and sel["hi"] == pytest.approx(ref["hi"].iat[-1])
    # wide table: best selected value in bold, oracle never bold
    wide = lb.wide()
    assert wide.loc[sel["row"], "avg"].startswith("**")        # weicom (≈40) beats image (≈30) on test
    assert not wide.loc[orc["row"], "avg"].startswith("**")    # the oracle (≈70) is never bold
    assert sum(str(c).startswith("**") for c in wide["avg"]) == 1
    # comparisons: best selected vs the other, on the same replicates
    assert len(lb.comparisons) == 1 and lb.comparisons["delta"].iat[0] == pytest.approx(10, abs=1)
    assert lb.comparisons["p_value"].iat[0] < 0.01
    path = lb.to_csv(tmp_path / "lb.csv")
    back = pd.read_csv(path, comment=None, skiprows=1)
    assert len(back) == len(t) and set(back.columns) >= {"row", "map", "lo", "hi", "kind"}
    assert "| method |" in lb.to_markdown()
    fig = lb.figure(model="local-dir:/x/ucm-minilm-standin", config="fp32, 224 px")
    assert "STAND-IN" in fig._rscir_label and "fp32, 224 px" in fig._rscir_label


def test_test_labels_cannot_change_the_selection():
    per_pair, qs, split, side = _setup()
    hacked = per_pair.copy()
    on_test = side[hacked["pair"]] == "test"
    hacked.loc[on_test & (hacked["lambda"] == 0.0), "ap"] = 1.0  # make λ=0 perfect on the test images
    lb = leaderboard(hacked, qs, split, n_boot=50)
    assert lb.selected["weicom"] == ("weicom", 0.5)     # unchanged: chosen on validation only
    assert lb.oracle["weicom"] == ("weicom", 0.0)       # the oracle sees the test labels, and is labelled


def test_metric_and_family_errors():
    per_pair, qs, split, _ = _setup()
    with pytest.raises(ParameterError, match="r@10"):
        leaderboard(per_pair, qs, split, metric="r@10")
    assert family_of("rrf:k=10") == "rrf"
    lb = leaderboard(per_pair.assign(**{"r@10": per_pair["ap"]}), qs, split, metric="r@10", by=None, n_boot=20,
                     oracle=False)
    assert set(lb.table["kind"]) == {"selected"} and lb.by is None


def test_lambda_curves_and_examples():
    from rscir_kit.leaderboard import examples, lambda_curves, plot_lambda_curves

    per_pair, qs, split, side = _setup()
    lb = leaderboard(per_pair, qs, split, n_boot=20)
    curves = lambda_curves(per_pair, qs, split)
    v = curves[(curves["family"] == "weicom") & (curves["side"] == "validation")].set_index("lambda")["map"]
    assert v.idxmax() == 0.5 and v.loc[0.5] == pytest.approx(60, abs=1)
    t = curves[(curves["family"] == "weicom") & (curves["side"] == "test")].set_index("lambda")["map"]
    assert t.idxmax() == 1.0
    fig = plot_lambda_curves(curves, lb, model="synthetic")
    assert "synthetic" in fig._rscir_label
    ex = examples(per_pair, qs, lb, reference="weicom", n=3, seed=0)
    # on the test images image-only (AP ≈ 0.3) always loses to WeiCom λ=0.5 (≈ 0.4): 3 losses, no win
    assert ex["outcome"].tolist() == ["worse"] * 3 and (ex["ap"] < ex["ap_ref"]).all()
    assert (side[ex["pair"]] == "test").all()                           # drawn from the held-out images only
    hacked = per_pair.copy()
    hacked.loc[(hacked["method"] == "image") & (hacked["pair"] % 2 == 0), "ap"] = 0.9
    lb2 = leaderboard(hacked, qs, split, n_boot=20)
    ex2 = examples(hacked, qs, lb2, reference="weicom", n=3, seed=0)
    assert sorted(ex2["outcome"]) == ["better"] * 3 + ["worse"] * 3      # wins and losses, not only wins
    assert (ex2[ex2["outcome"] == "better"]["ap"] > ex2[ex2["outcome"] == "better"]["ap_ref"]).all()
    assert ex.equals(examples(per_pair, qs, lb, reference="weicom", n=3, seed=0))  # fixed seed

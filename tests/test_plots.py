"""plots: Table-2 layout with paper numbers beside, λ ablation with best λ, grids, distributions, labels."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from rscir_kit import analysis, plots, reference  # noqa: E402

STANDIN = "local-dir:/somewhere/ucm-minilm-standin"
ATTRS = ("color", "shape")


def _summary():
    """Engine-summary-shaped rows (method, lambda, attribute, map) for two attributes + avg."""
    rows = []
    vals = {("text", np.nan): (10.0, 20.0), ("image", np.nan): (30.0, 10.0), ("average", np.nan): (25.0, 25.0),
            ("weicom", 0.0): (30.0, 10.0), ("weicom", 0.5): (40.0, 30.0), ("weicom", 1.0): (10.0, 20.0)}
    for (m, lam), v in vals.items():
        for a, x in zip(ATTRS, v):
            rows.append({"method": m, "lambda": lam, "attribute": a, "map": x, "n_queries": 4})
        rows.append({"method": m, "lambda": lam, "attribute": "avg", "map": float(np.mean(v)), "n_queries": 8})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # order must not matter


def test_model_label_marks_standin():
    assert "STAND-IN" in plots.model_label(STANDIN) and "not paper results" in plots.model_label(STANDIN)
    assert plots.model_label("remoteclip-vit-l-14") == "model: RemoteCLIP ViT-L/14 (remoteclip-vit-l-14)"
    assert "STAND-IN" not in plots.model_label("ViT-B-32:openai")
    fig = plt.figure()
    plots.stamp(fig, STANDIN)
    assert any("STAND-IN" in t.get_text() for t in fig.texts)
    plt.close(fig)


def test_summary_to_wide_orders_rows_like_the_paper():
    wide = analysis.summary_to_wide(_summary())
    assert list(wide["method"]) == ["text", "image", "average", "weicom", "weicom", "weicom"]
    assert list(wide["lambda"].fillna(-1)) == [-1, -1, -1, 0.0, 0.5, 1.0]
    assert list(wide.columns) == ["method", "lambda", "color", "shape", "avg"]
    assert wide.loc[4, "color"] == 40.0 and wide.loc[4, "avg"] == 35.0


def test_table2_no_paper_columns_outside_paper_setup():
    t = analysis.table2(analysis.summary_to_wide(_summary()), model=STANDIN, dataset="ucmcom")
    assert list(t.index) == ["Text", "Image", "Text & Image", "WeiCom (λ=0)", "WeiCom (λ=0.5)", "WeiCom (λ=1)"]
    assert list(t.columns) == ["color", "shape", "avg"]


def test_table2_paper_numbers_beside_in_paper_setup():
    t = analysis.table2(analysis.summary_to_wide(_summary()), model="hf-hub:chendelong/RemoteCLIP-ViT-L-14",
                     dataset="patterncom")
    assert list(t.columns) == ["color", "color ref", "shape", "shape ref", "avg", "avg ref"]
    assert t.attrs["reference_source"] == "readme-current"
    assert t.loc["Text", "color ref"] == 10.75 and t.loc["Text & Image", "shape ref"] == 19.63
    assert t.loc["WeiCom (λ=0.5)", "avg ref"] == 30.05  # current README (the paper printed 29.94)
    paper = analysis.table2(analysis.summary_to_wide(_summary()), model="remoteclip-vit-l-14", dataset="patterncom",
                            source="paper")
    assert paper.loc["WeiCom (λ=0.5)", "avg ref"] == 29.94 and paper.attrs["reference_source"] == "paper"
    assert np.isnan(t.loc["WeiCom (λ=0)", "avg ref"])  # Table 2 has no λ=0 row
    assert t.loc["WeiCom (λ=0.5)", "color"] == 40.0  # the kit's value stays next to it


def test_ablation_and_best_lambda():
    wide = analysis.summary_to_wide(_summary())
    abl = analysis.ablation_frame(wide)
    assert list(abl.index) == [0.0, 0.5, 1.0] and list(abl.columns) == ["color", "shape", "avg"]
    assert analysis.best_lambda(abl) == 0.5
    assert analysis.best_lambdas(abl) == {"color": 0.5, "shape": 0.5, "avg": 0.5}
    tie = pd.DataFrame({"avg": [1.0, 2.0, 2.0]}, index=[0.0, 0.5, 1.0])
    assert analysis.best_lambda(tie) == 0.5  # ties → smallest λ
    assert analysis.best_lambda(reference.table3()) == 0.6


def test_lambda_ablation_plot_marks_best():
    abl = analysis.ablation_frame(analysis.summary_to_wide(_summary()))
    fig = plots.plot_lambda_ablation(abl, model=STANDIN, dataset="ucmcom", reference_table=reference.table3())
    ax_kit, ax_paper = fig.axes[:2]
    assert [l.get_xdata()[0] for l in ax_kit.lines if l.get_linestyle() == ":"] == [0.5]
    assert [l.get_xdata()[0] for l in ax_paper.lines if l.get_linestyle() == ":"] == [0.6]
    assert "best λ = 0.5 (dotted)" in ax_kit.get_title() and "best λ = 0.6" in ax_paper.get_title()
    assert not ax_kit.texts, "no annotation inside the axes (it overlapped the curves)"
    assert {l.get_label() for l in ax_kit.lines} >= {"color", "shape", "avg"}
    assert "STAND-IN" in fig._rscir_label
    assert "STAND-IN" in ax_kit.get_xlabel() and "STAND-IN" not in ax_paper.get_xlabel()  # the stamp: kit panel only
    assert not fig.texts, "no figure-wide stamp across the paper's panel"
    fig.savefig(__import__("io").BytesIO(), format="png")
    plt.close(fig)


def test_plot_table2_draws_bars_and_paper_ticks():
    wide = analysis.summary_to_wide(_summary())
    fig = plots.plot_table2(wide, model="ViT-L-14:openai", dataset="patterncom")
    ax = fig.axes[0]
    assert len(ax.patches) == 6 * 3  # 6 methods × (2 attributes + avg)
    heights = sorted(round(p.get_height(), 3) for p in ax.patches)
    assert heights[-1] == 40.0
    assert len(ax.collections) == 6  # one scatter of paper values per method row
    plt.close(fig)
    fig = plots.plot_table2(wide, model=STANDIN, dataset="ucmcom")
    assert len(fig.axes[0].collections) == 0
    plt.close(fig)


def test_qualitative_grid_outlines_positives(tmp_path):
    from PIL import Image

    path = tmp_path / "q.png"
    Image.fromarray(np.full((10, 12, 3), 200, np.uint8)).save(path)
    img = np.zeros((8, 8, 3), np.uint8)
    rows = [{"lam": 0.0, "images": [img, img, path], "positive": [True, False, False], "ap": 0.25},
            {"lam": 0.5, "images": [img, img, img], "positive": [True, True, False], "labels": ["a", "b", "c"]},
            {"lam": 1.0, "images": [img, img, img], "positive": [False, False, True], "ap": None}]
    fig = plots.qualitative_grid(path, "make it red", rows, model=STANDIN)
    rects = [p for ax in fig.axes for p in ax.patches if isinstance(p, Rectangle)]
    green = [r for r in rects if r.get_linewidth() == 4]
    assert len(rects) == 9 and len(green) == 4
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "λ=0\n(image only)" in texts and "λ=1\n(text only)" in texts and "AP 25.0" in texts
    assert "make it red" in texts
    plt.close(fig)


def test_score_distributions_plot():
    rng = np.random.default_rng(0)
    raw = {"image": rng.normal(0.6, 0.05, 500), "text": rng.normal(0.2, 0.02, 500)}
    norm = {k: (v - v.mean()) / v.std(ddof=1) for k, v in raw.items()}
    fig = plots.plot_score_distributions(raw, norm, positives=np.array([1, 2]), model=STANDIN)
    assert len(fig.axes) == 2
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert any("std 1.000" in t for t in legend)
    plt.close(fig)


def test_table2_selection_and_lambdas():
    wide = analysis.summary_to_wide(_summary())
    assert analysis.table2_lambdas(0.0, None, [0.0, 0.5, 1.0]) == [0.0, 0.5]
    assert analysis.table2_lambdas(1.0, "remoteclip-vit-l-14", [0.0, 0.5, 0.6, 1.0]) == [0.5, 0.6, 1.0]
    sel = analysis.table2_selection(wide, [0.5])
    assert [analysis.row_key(m, l) for m, l in zip(sel["method"], sel["lambda"])] == [
        "text", "image", "average", "weicom@0.5"]
    d = analysis.wide_to_dict(sel)
    assert d["weicom@0.5"] == {"color": 40.0, "shape": 30.0, "avg": 35.0}


def test_table3_layout():
    abl = analysis.ablation_frame(analysis.summary_to_wide(_summary()))
    t3 = analysis.table3(abl)
    assert list(t3.index) == ["color", "shape", "avg"]
    assert list(t3.columns) == ["λ=0", "λ=0.5", "λ=1", "best λ", "best mAP"]
    assert t3.loc["color", "best λ"] == 0.5 and t3.loc["avg", "best mAP"] == 35.0
    paper = analysis.table3(reference.table3())
    assert paper.loc["color", "best λ"] == 0.1 and paper.loc["avg", "best λ"] == 0.6


def test_query_stats_and_archive_examples():
    stats = pd.DataFrame({"attribute": ["a", "b"], "pairs": [10, 5], "query_images": [8, 5], "texts": [2, 2],
                          "mean_positives": [3.0, 4.5], "empty": [0, 0]})
    fig = plots.plot_query_stats(stats, model=STANDIN, dataset="ucmcom")
    assert [p.get_height() for p in fig.axes[0].patches] == [10, 5]
    assert "15 query pairs" in fig._suptitle.get_text()
    plt.close(fig)
    img = np.zeros((4, 4, 3), np.uint8)
    fig = plots.archive_examples([img] * 9, list("abcdefghi"), ncols=4, model=STANDIN)
    assert len(fig.axes) == 12 and sum(bool(ax.images) for ax in fig.axes) == 9
    plt.close(fig)


def test_table3_difference():
    paper = reference.table3()
    kit = paper.loc[[0.0, 0.5, 1.0]] + 1.0
    diff = analysis.table3_difference(kit, paper)
    assert list(diff.columns) == ["λ=0", "λ=0.5", "λ=1"] and diff.index.name == "attribute"
    assert np.allclose(diff.to_numpy(), 1.0)


def test_plot_table2_y_range_includes_paper_values():
    wide = analysis.summary_to_wide(_summary())  # kit values ≤ 40; RemoteCLIP paper values up to 43.68
    wide.loc[:, ["color", "shape", "avg"]] /= 10
    fig = plots.plot_table2(wide, model="remoteclip-vit-l-14", dataset="patterncom")
    assert fig.axes[0].get_ylim()[1] >= 43.68
    plt.close(fig)

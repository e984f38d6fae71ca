"""λ explorer logic without a browser: top-k, AP, AP curve, free text, figure and widget wiring."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from rscir_kit.errors import DataError  # noqa: E402
from rscir_kit.explorer import LambdaExplorer  # noqa: E402
from rscir_kit.methods import fuse  # noqa: E402
from rscir_kit.metrics import average_precision  # noqa: E402
from rscir_kit.queries import QuerySet  # noqa: E402

D = 16


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def Archive(feats, paths, labels):
    from rscir_kit.features import ImageFeatures

    return ImageFeatures(feats, np.asarray(paths), np.asarray(labels), {"model": "local-dir:/w/ucm-minilm-standin"})


class Texts:
    def __init__(self, mapping):
        self.mapping = mapping
        self.meta = {"model": "local-dir:/w/ucm-minilm-standin"}

    def lookup(self, texts):
        missing = [t for t in texts if t not in self.mapping]
        if missing:
            raise DataError(f"missing {missing}")
        return np.stack([self.mapping[t] for t in texts])


class Encoder:
    def __init__(self):
        self.calls = []

    def encode_texts(self, texts, batch_size=256):
        self.calls.append(list(texts))
        return _unit(np.ones((len(texts), D)))


@pytest.fixture
def world():
    """Archive: 10 images near the query's direction e0, 10 near the text's direction e1, 20 random."""
    rng = np.random.default_rng(0)
    e0, e1 = np.eye(D)[0], np.eye(D)[1]
    near_img = _unit(e0 + 0.3 * rng.normal(size=(10, D)))
    near_txt = _unit(e1 + 0.3 * rng.normal(size=(10, D)))
    both = _unit(e0 + e1 + 0.2 * rng.normal(size=(5, D)))  # the composed targets
    other = _unit(rng.normal(size=(20, D)))
    feats = np.concatenate([near_img, near_txt, both, other])
    paths = [f"c{i // 10}/img{i:02d}.jpg" for i in range(len(feats))]
    labels = [p.split("/")[0] for p in paths]
    archive = Archive(feats, paths, labels)
    table = pd.DataFrame({"query_path": [paths[0], paths[0], paths[1]], "text": ["with e1", "other", "with e1"],
                          "positive_id": [0, 1, 0], "attribute": ["a", "b", "a"]})
    qs = QuerySet("toy", table, [np.arange(20, 25), np.array([30, 31])], np.asarray(paths))
    texts = Texts({"with e1": _unit(e1), "other": _unit(rng.normal(size=D))})
    return archive, qs, texts


def test_two_lambdas_give_different_topk_and_correct_ap(world):
    archive, qs, texts = world
    ex = LambdaExplorer(archive, queries=qs, texts=texts, k=5)
    s0 = ex.set(query="c0/img00.jpg", text="with e1", lam=0.0)
    s1 = ex.set(lam=1.0)
    s5 = ex.set(lam=0.5)
    assert set(s0.topk) <= set(range(10)) and 0 in s0.topk  # image neighbours (the query itself first)
    assert s0.topk[0] == 0
    assert set(s1.topk) <= set(range(10, 25))  # text neighbours
    assert not np.array_equal(s0.topk, s1.topk)
    assert set(s5.topk) == set(range(20, 25)) and s5.positive.all()  # both modalities → the targets
    # AP agrees with the engine's definitions (fuse + average_precision) computed independently.
    s_img = archive.feats[0] @ archive.feats.T
    s_txt = texts.lookup(["with e1"])[0] @ archive.feats.T
    rel = np.zeros(len(archive.paths), bool)
    rel[20:25] = True
    for st in (s0, s1, s5):
        ref = average_precision(fuse(s_img[None], s_txt[None], "weicom", st.lam)[0], rel)
        assert st.ap == pytest.approx(ref, abs=1e-6)
    assert s5.ap == pytest.approx(1.0) and s0.ap < s5.ap and s1.ap < s5.ap
    lams, aps = s5.curve
    assert lams[0] == 0.0 and lams[-1] == 1.0
    assert aps[0] == pytest.approx(s0.ap, abs=1e-6) and aps[-1] == pytest.approx(s1.ap, abs=1e-6)
    assert "AP 100.00" in s5.summary()


def test_choices_and_positives(world):
    archive, qs, texts = world
    ex = LambdaExplorer(archive, queries=qs, texts=texts)
    assert ex.query_paths == ["c0/img00.jpg", "c0/img01.jpg"]
    assert ex.texts_for("c0/img00.jpg") == ["with e1", "other"] and ex.texts_for(5) == []
    assert list(ex.positives_for(0, "other")) == [30, 31]
    assert ex.positives_for(0, "not a benchmark text") is None
    assert ex.set(query="img01", text="with e1").query == 1  # stem lookup
    with pytest.raises(DataError, match="not in the archive"):
        ex.set(query="nope.jpg")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ex.set(lam=1.5)


def test_free_text_uses_encoder_and_has_no_ap(world):
    archive, qs, texts = world
    with pytest.raises(DataError, match="no encoder"):
        LambdaExplorer(archive, queries=qs, texts=texts).set(text="a free sentence")
    enc = Encoder()
    ex = LambdaExplorer(archive, queries=qs, texts=texts, encoder=enc, k=4)
    st = ex.set(query=0, text="a free sentence", lam=0.4)
    st2 = ex.set(lam=0.6)
    assert enc.calls == [["a free sentence"]]  # embedded once, then cached
    assert st.ap is None and st.curve is None and not st.positive.any() and st.text_source == "encoder"
    assert "n/a" in st2.summary()
    # encoder alone (no text features) works too
    assert LambdaExplorer(archive, encoder=enc).set(query=3, text="x").text_source == "encoder"


def test_figure_outlines_positives_and_is_labelled(world):
    archive, qs, texts = world
    ex = LambdaExplorer(archive, queries=qs, texts=texts, k=6)
    st = ex.set(query=0, text="with e1", lam=0.5)
    fig = ex.figure(st)
    green = [p for ax in fig.axes for p in ax.patches if isinstance(p, Rectangle) and p.get_linewidth() == 4]
    assert len(green) == int(st.positive.sum()) == 5
    assert "STAND-IN" in fig._rscir_label
    assert any("AP 100.00" in t.get_text() for t in fig.texts)
    plt.close(fig)


@pytest.mark.slow  # renders the matplotlib panel on every widget change (seconds each)
def test_widget_drives_the_same_logic(world):
    archive, qs, texts = world
    ex = LambdaExplorer(archive, queries=qs, texts=texts, k=5)
    box = ex.widget(live=False)
    w = ex._widgets
    assert box is not None and [v for _, v in w["query"].options] == ["c0/img00.jpg", "c0/img01.jpg"]
    assert w["query"].options[0][0] == "img00.jpg (c0)"  # the file name and class are shown
    w["text"].value = "with e1"
    w["lam"].value = 0.0
    top_img = ex.state.topk.copy()
    before = w["view"].value
    w["lam"].value = 1.0
    assert ex.state.lam == 1.0 and not np.array_equal(top_img, ex.state.topk)
    after = w["view"].value
    assert after != before and "λ=1:" in after and "λ=0:" in before  # status and figure: one HTML piece
    assert after.count("rscir-card") == 5 and before.count("rscir-card") == 5
    w["k"].value = 3
    assert w["view"].value.count("rscir-card") == 3
    w["query"].value = "c0/img01.jpg"
    assert ex.state.query_path == "c0/img01.jpg"
    plt.close("all")


@pytest.mark.slow  # renders the matplotlib panel on every widget change (seconds each)
def test_query_change_resets_the_text_and_filters(world):
    archive, qs, texts = world
    ex = LambdaExplorer(archive, queries=qs, texts=texts, encoder=Encoder(), k=4)
    ex.widget(live=False)
    w = ex._widgets
    w["text"].value = "other"  # a text only query 0 has
    assert ex.state.ap is not None
    w["query"].value = "c0/img01.jpg"
    assert w["text"].value == "with e1" and ex.state.text == "with e1"  # the new query's first benchmark text
    assert "no ground truth" not in w["view"].value
    w["filter"].value = "other"  # queries with ground truth for "other": only img00
    assert [v for _, v in w["query"].options] == ["c0/img00.jpg"] and w["text"].value == "other"
    assert "1 of 2 queries" in w["count"].value
    w["filter"].value = ""
    w["class"].value = "c0"
    assert len(w["query"].options) == 2
    plt.close("all")


@pytest.mark.slow  # renders the matplotlib panel on every widget change (seconds each)
def test_compare_a_second_lambda_or_method(world):
    archive, qs, texts = world
    ex = LambdaExplorer(archive, queries=qs, texts=texts, k=5)
    ex.widget(live=False)
    w = ex._widgets
    w["query"].value, w["text"].value, w["lam"].value = "c0/img00.jpg", "with e1", 0.5
    assert "rscir-compare-grid" not in w["view"].value
    w["compare"].value = "weicom"
    w["lam2"].value = 0.0
    view = w["view"].value
    assert "rscir-compare-grid" in view and "λ=0" in view.split("rscir-compare-grid")[0].rsplit("<b>", 1)[-1]
    r = ex.rank("image")
    s_img = archive.feats[0] @ archive.feats.T
    assert list(r.topk) == list(np.argsort(-s_img, kind="stable")[:5])
    w["compare"].value = "image"
    assert ex.rank("weicom", 0.0).topk.tolist() == r.topk.tolist()  # λ=0 is image only
    assert r.label in w["view"].value
    plt.close("all")


@pytest.mark.slow  # renders the matplotlib panel on every widget change (seconds each)
def test_free_text_has_no_positive_count(world):
    archive, qs, texts = world
    ex = LambdaExplorer(archive, queries=qs, texts=texts, encoder=Encoder(), k=5)
    st = ex.set(query=0, text="something new", lam=0.3)
    assert "positive" not in st.summary() and "no ground truth" in st.summary()
    assert "of the top" not in ex.view_html(st)


def test_live_benchmark_map_matches_a_slow_recomputation(world):
    """The mAP shown with the slider = mean over attributes of the mean AP per attribute, every pair ranked
    by WeiCom at that λ (computed here from the formula, pair by pair)."""
    archive, qs, texts = world
    ex = LambdaExplorer(archive, queries=qs, texts=texts, k=5, benchmark_name="toy")
    live = ex.benchmark_map([0.0, 0.3, 1.0], device="cpu")
    t = qs.table
    for lam in (0.0, 0.3, 1.0):
        per_attr = {}
        for i, row in t.iterrows():
            qi = list(archive.paths).index(row["query_path"])
            s = fuse((archive.feats[qi] @ archive.feats.T)[None], (texts.lookup([row["text"]])[0] @ archive.feats.T)[None],
                     "weicom", lam)[0]
            rel = np.zeros(len(archive.paths), bool)
            rel[qs.positives(i)] = True
            per_attr.setdefault(row["attribute"], []).append(average_precision(s, rel))
        expected = 100 * np.mean([np.mean(v) for v in per_attr.values()])
        assert live.loc[lam, "toy"] == pytest.approx(expected, abs=1e-4)
    text = ex.live_text(0.3)
    assert f"toy <b>{live.loc[0.3, 'toy']:.2f}</b>" in text and "best" in text
    assert "nearest computed λ 0.3" in ex.live_text(0.31)


@pytest.mark.slow  # renders the matplotlib panel on every widget change (seconds each)
def test_widget_free_text_goes_through_the_encoder(world):
    archive, qs, texts = world
    enc = Encoder()
    ex = LambdaExplorer(archive, queries=qs, texts=texts, encoder=enc, k=5)
    ex.widget(live=False)
    w = ex._widgets
    assert w["text"].ensure_option is False  # free typing allowed when a model is available
    w["text"].value = "a sentence nobody benchmarked"
    assert ex.state.text == "a sentence nobody benchmarked" and ex.state.text_source == "encoder"
    assert ex.state.ap is None and "n/a" in w["view"].value
    plt.close("all")


def test_grid_rows_mark_the_query_and_positives(world):
    from rscir_kit.explorer import grid_rows

    archive, qs, texts = world
    ex = LambdaExplorer(archive, queries=qs, texts=texts, k=4)
    rows = grid_rows(ex, 0, "with e1", [0.0, 0.5, 1.0], images=False)
    assert [r["lam"] for r in rows] == [0.0, 0.5, 1.0]
    assert rows[0]["topk"][0] == 0 and rows[0]["labels"][0] == "c0 (query)"  # the query ranks first on its own
    assert rows[1]["positive"] == [True] * 4 and rows[1]["ap"] == pytest.approx(1.0)
    assert rows[0]["images"] == rows[0]["paths"] == [archive.paths[i] for i in rows[0]["topk"]]


def test_grid_rows_leave_the_explorer_selection_alone(world):
    """Before: grid_rows moved the explorer to the last λ of the grid (its widget then showed another state)."""
    from rscir_kit.explorer import grid_rows

    archive, qs, texts = world
    ex = LambdaExplorer(archive, queries=qs, texts=texts, k=4)
    before = ex.set(query=1, text="other", lam=0.3)
    grid_rows(ex, 0, "with e1", [0.0, 1.0], images=False)
    assert ex.state is before and (ex.query, ex.text, ex.lam) == (archive.paths[1], "other", 0.3)


@pytest.mark.slow  # renders the matplotlib panel on every widget change (seconds each)
def test_widget_live_map_arrives_without_blocking(world):
    archive, qs, texts = world
    ex = LambdaExplorer(archive, queries=qs, texts=texts, k=5, benchmark_name="toy")
    ex.widget()  # returns at once; the engine runs over the slider's λ grid in a thread
    ex._live_thread.join(120)
    w = ex._widgets
    w["lam"].value = 0.3
    view = w["view"].value
    assert f"benchmark mAP of WeiCom at λ=0.3: toy <b>{ex.live.loc[0.3, 'toy']:.2f}</b>" in view
    assert len(ex.live) == 21
    plt.close("all")


def test_select_examples_shows_wins_failures_random_and_a_remove_query():
    from rscir_kit.explorer import select_examples

    rng = np.random.default_rng(3)
    n = 40
    table = pd.DataFrame({"attribute": [f"a{i % 4}" for i in range(n)],
                          "direction": ["add"] * 30 + ["remove"] * 10})
    img, txt = rng.uniform(0.1, 0.5, n), rng.uniform(0.0, 0.3, n)
    wei = img + rng.normal(0, 0.1, n)
    wei[7] = img[7] - 0.3  # the worst failure
    rows = [{"pair": p, "method": m, "lambda": lam, "ap": v, "attribute": table.attribute[p], "n_pos": 3}
            for p in range(n) for m, lam, v in (("image", np.nan, img[p]), ("text", np.nan, txt[p]),
                                                ("weicom", 0.1, wei[p]))]
    per_pair = pd.DataFrame(rows)
    picked = select_examples(per_pair, 0.1, table, n=2, seed=0)
    kinds = [k for _, k in picked]
    assert kinds[:2] == ["best gain", "best gain"] and "failure" in kinds
    assert dict((k, p) for p, k in picked)["failure"] == 7
    assert sum(k.startswith("random") for k in kinds) == 2
    assert any(table.direction[p] == "remove" for p, _ in picked)
    assert len({p for p, _ in picked}) == len(picked)  # no pair twice
    assert select_examples(per_pair, 0.1, table, n=2, seed=0) == picked  # fixed seed: the same figures


@pytest.mark.slow  # renders the matplotlib panel on every widget change (seconds each)
def test_gallery_pages_the_filtered_queries_and_a_click_picks_one(world):
    """The query gallery: thumbnails of the filtered queries, a page at a time; clicking one picks that query
    (the dropdown, the text reset and the view follow, as when the dropdown is used) and marks it."""
    import io

    from PIL import Image

    archive, qs, texts = world
    table = pd.concat([qs.table] + [pd.DataFrame({"query_path": [f"c{c}/img{c * 10 + j:02d}.jpg"], "text": ["with e1"],
                                                  "positive_id": [0], "attribute": ["a"]})
                                    for c in (1, 2) for j in range(3)], ignore_index=True)
    qs = QuerySet("toy", table, qs.positive_sets, qs.archive_paths)
    ex = LambdaExplorer(archive, queries=qs, texts=texts, k=4)
    ex.widget(live=False, gallery=3)
    w = ex._widgets
    queries = [v for _, v in w["query"].options]
    assert len(queries) == 8

    def shown():
        return [card.children[1].tooltip for card in w["gallery"].children]

    labels = dict((v, k) for k, v in w["query"].options)
    assert shown() == [labels[q] for q in queries[:3]] and "gallery 1–3 of 8" in w["gallery_count"].value
    thumb = Image.open(io.BytesIO(w["gallery"].children[0].children[0].value))
    assert thumb.format == "JPEG" and max(thumb.size) <= 64
    assert w["gallery_prev"].disabled and not w["gallery_next"].disabled
    w["gallery_next"].click()
    w["gallery_next"].click()
    assert shown() == [labels[q] for q in queries[6:]] and w["gallery_next"].disabled
    before = w["view"].value
    w["gallery"].children[1].children[1].click()            # pick the 8th query
    assert w["query"].value == queries[7] and ex.state.query_path == queries[7]
    assert w["text"].value == "with e1" and w["view"].value != before
    assert [card.children[1].button_style for card in w["gallery"].children] == ["", "info"]
    w["class"].value = "c2"                                   # a filter: the gallery shows its queries, from page 1
    assert shown() == [labels[q] for q in queries if q.startswith("c2/")] and w["gallery_prev"].disabled
    assert all(q.startswith("c2/") for _, q in w["query"].options)
    plt.close("all")

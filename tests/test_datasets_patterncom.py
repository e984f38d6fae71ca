"""The vectorised engine against a slow per-query loop, on a synthetic PatternCom with real PatternNet names.

The slow reference re-implements the official protocol row by row (prompts = other values of the
merged group, relevance = same CSV + prompt value + same globally merged class) and scores every
pair with numpy + scipy, independently of the engine's code paths.
"""
import csv
import re
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from rscir_kit.datasets.patterncom import ATTRIBUTES, PatternCom, class_of
from rscir_kit.engine import evaluate, summarize, wide_table
from rscir_kit.errors import DataError, ModelMismatchError
from rscir_kit.features import TextFeatures
from rscir_kit.metrics import average_precision
from rscir_kit.datasets.synthetic import SPEC, synthetic_patterncom

MERGE = {"denseresidential": "residential", "sparseresidential": "residential", "closedroad": "road",
         "intersection": "road", "bridge": "roadpass", "overpass": "roadpass", "ferryterminal": "pier",
         "harbor": "pier", "parkingspace": "parking", "parkinglot": "parking"}
PER_ATTRIBUTE_MERGE = {"density": ["denseresidential", "sparseresidential"], "shape": ["closedroad", "intersection"],
                       "context": ["bridge", "overpass"],
                       "existence": ["ferryterminal", "harbor", "parkingspace", "parkinglot"]}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_patterncom(tmp_path_factory.mktemp("patterncom"))


def slow_reference(archive, text_feats, root, attribute, method, lam):
    """Per-query loop over the official protocol; returns the list of APs in row/prompt order."""
    rows = list(csv.reader(open(root / f"{attribute}.csv")))
    cls = [re.split(r"\d", r[0])[0] for r in rows]
    merged = [c if c not in PER_ATTRIBUTE_MERGE.get(attribute, []) else MERGE[c] for c in cls]
    groups = defaultdict(set)
    for m, r in zip(merged, rows):
        groups[m].add(r[2])
    value_of = {r[0]: r[2] for r in rows}  # last row wins
    class_of_file = {r[0]: MERGE.get(c, c) for r, c in zip(rows, cls)}
    basenames = [Path(p).name for p in archive.paths]
    t_index = {t: i for i, t in enumerate(text_feats.texts)}
    aps = []
    for r, m, c in zip(rows, merged, cls):
        q = archive.feats[basenames.index(r[0])].astype(np.float64)
        for prompt in sorted(groups[m] - {r[2]}):
            t = text_feats.feats[t_index[prompt]].astype(np.float64)
            s_img = archive.feats.astype(np.float64) @ q
            s_txt = archive.feats.astype(np.float64) @ t
            if method == "image":
                s = s_img
            elif method == "text":
                s = s_txt
            elif method == "average":
                s = (s_img + s_txt) / 2
            else:
                phi = lambda v: stats.norm.cdf((v - v.mean()) / v.std(ddof=1))
                s = lam * phi(s_txt) + (1 - lam) * phi(s_img)
            relevant = np.array([value_of.get(b) == prompt and class_of_file.get(b) == MERGE.get(c, c)
                                 for b in basenames])
            aps.append(0.0 if not relevant.any() else average_precision(s, relevant))
    return aps


def test_query_construction_follows_the_protocol(synthetic):
    archive, _, root = synthetic
    qs = PatternCom(root).queries(archive.paths)
    t = qs.table
    # density: dense/sparse residential merge into one group, so each of their rows gets the other value
    dens = t[(t.attribute == "density") & (t.query_class == "denseresidential")]
    assert set(dens.text) == {"sparse"} and set(dens.group) == {"densityresidential"}
    # a dense-residential query asking for "sparse" is relevant to sparse-residential images (global merge)
    pos = qs.positives(dens.index[0])
    assert {archive.labels[i] for i in pos} == {"sparse_residential"}
    assert len(pos) == 10
    # forest is its own group in density: dense <-> sparse within forest only
    forest = t[(t.attribute == "density") & (t.query_class == "forest")]
    assert {archive.labels[i] for i in qs.positives(forest.index[0])} == {"forest"}
    # existence: ferry terminal + harbor = pier; parking space + parking lot = parking
    ex = t[t.attribute == "existence"]
    assert set(ex.group) == {"existencepier", "existenceparking"}
    # each row gets (values of its group - 1) prompts
    n_expected = 0
    for attribute, classes in SPEC.items():
        groups = defaultdict(set)
        counts = defaultdict(int)
        for c, values in classes.items():
            key = class_of(c.replace("_", "") + "1.jpg")
            key = key if key not in PER_ATTRIBUTE_MERGE.get(attribute, []) else MERGE[key]
            groups[key] |= set(values)
            counts[key] += 10
        n_expected += sum(counts[k] * (len(groups[k]) - 1) for k in groups)
    assert len(qs) == n_expected
    # the query image itself is never among its positives
    q_idx = archive.index_of(t.query_path.tolist())
    assert not any(q in qs.positives(i) for i, q in enumerate(q_idx))


_REFERENCE: dict = {}  # (archive id, attribute, method, λ) -> slow_reference's APs, shared by the block sizes


@pytest.mark.parametrize("max_block_mb", [0, 1, 512])  # 0: one image per block and per-block texts
@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_engine_equals_slow_per_query_loop(synthetic, attribute, max_block_mb):
    archive, texts, root = synthetic
    qs = PatternCom(root).queries(archive.paths, attributes=[attribute])
    lambdas = [0.0, 0.3, 0.5, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = evaluate(qs, archive, texts, methods=["image", "text", "average", "weicom"], lambdas=lambdas,
                       progress=False, max_block_mb=max_block_mb)
    ordered = qs.table.sort_values(["line"], kind="stable").index  # reference order: CSV row, then prompt
    for method, lam in [("image", None), ("text", None), ("average", None)] + [("weicom", l) for l in lambdas]:
        sel = out[(out.method == method) & ((out["lambda"] == lam) if lam is not None else out["lambda"].isna())]
        got = sel.set_index("pair").loc[ordered, "ap"].to_numpy()
        key = (id(archive), attribute, method, lam)  # the reference does not depend on max_block_mb: loop once
        ref = _REFERENCE[key] if key in _REFERENCE else _REFERENCE.setdefault(
            key, slow_reference(archive, texts, root, attribute, method, lam))
        np.testing.assert_allclose(got, ref, atol=1e-6, err_msg=f"{attribute} {method} {lam}")


def test_lambda_extremes_equal_single_modalities(synthetic):
    archive, texts, root = synthetic
    qs = PatternCom(root).queries(archive.paths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = evaluate(qs, archive, texts, methods=["image", "text", "weicom"], lambdas=[0.0, 1.0], progress=False)
    ap = lambda m, lam=None: out[(out.method == m) & (out["lambda"].isna() if lam is None else out["lambda"] == lam)
                                 ].sort_values("pair").ap.to_numpy()
    np.testing.assert_array_equal(ap("weicom", 0.0), ap("image"))
    np.testing.assert_array_equal(ap("weicom", 1.0), ap("text"))


def test_summary_table_shapes(synthetic):
    archive, texts, root = synthetic
    qs = PatternCom(root).queries(archive.paths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_pair = evaluate(qs, archive, texts, methods=["image", "weicom"], lambdas=[0.3, 0.6], progress=False)
    summary = summarize(per_pair, by="attribute")
    assert list(summary.columns) == ["method", "lambda", "attribute", "map", "n_queries", "n_empty"]
    assert len(summary) == 3 * (len(ATTRIBUTES) + 1)
    for (m, lam), grp in summary.groupby(["method", "lambda"], dropna=False):
        attrs = grp[grp.attribute != "avg"]
        assert grp[grp.attribute == "avg"]["map"].item() == pytest.approx(attrs["map"].mean())
        sel = per_pair[(per_pair.method == m) & ((per_pair["lambda"] == lam) if lam == lam else per_pair["lambda"].isna())]
        assert attrs.set_index("attribute")["map"]["color"] == pytest.approx(100 * sel[sel.attribute == "color"].ap.mean())
    wide = wide_table(summary, order=ATTRIBUTES)
    assert list(wide.columns) == list(ATTRIBUTES) + ["avg"]
    assert list(wide.index) == ["Image", "WeiCom (λ=0.3)", "WeiCom (λ=0.6)"]


def test_empty_positives_are_counted_and_handled(synthetic, tmp_path):
    archive, texts, _ = synthetic
    # "purple" only on airplane rows that are not in the archive -> no positive for "white -> purple"
    with open(tmp_path / "color.csv", "w") as fh:
        fh.write("airplane001.jpg,color,white\nairplane003.jpg,color,white\nairplane9999.jpg,color,purple\n")
    bench = PatternCom(tmp_path)
    with pytest.raises(DataError, match=r"not in the archive.*airplane9999.jpg \(line 3\)"):
        bench.queries(archive.paths)
    qs = bench.queries(archive.paths, missing="drop")
    assert list(qs.table.text) == ["purple", "purple"] and (qs.n_positives == 0).all()
    with pytest.raises(DataError, match="2 of 2 query pairs .* no relevant image"):
        evaluate(qs, archive, texts, methods=["image"], on_empty="error", progress=False)
    with pytest.warns(UserWarning, match="counted as AP 0"):
        out = evaluate(qs, archive, texts, methods=["image"], on_empty="zero", progress=False)
    assert (out.ap == 0).all() and summarize(out).n_empty.tolist() == [2, 2]
    with pytest.warns(UserWarning, match="left out"):
        out = evaluate(qs, archive, texts, methods=["image"], on_empty="skip", progress=False)
    assert out.ap.isna().all()


def test_bad_csv_rows_and_unknown_classes(tmp_path):
    (tmp_path / "shape.csv").write_text("swimmingpool001.jpg,shape,oval\nswimmingpool002.jpg,shape\n")
    with pytest.raises(DataError, match=r"shape.csv, line 2: expected 3 non-empty fields"):
        PatternCom(tmp_path).rows("shape")
    (tmp_path / "shape.csv").write_text("swimmingpool001.jpg,shape,oval\nspaceport001.jpg,shape,round\n")
    with pytest.raises(DataError, match=r"line 2: unknown class 'spaceport'"):
        PatternCom(tmp_path).rows("shape")
    (tmp_path / "shape.csv").write_text("swimmingpool.jpg,shape,oval\n")
    with pytest.raises(DataError, match=r"line 1: .*has no digit"):
        PatternCom(tmp_path).rows("shape")
    with pytest.raises(DataError, match="no PatternCom CSVs"):
        PatternCom(tmp_path / "nowhere")


def test_features_from_another_model_are_refused(synthetic):
    archive, texts, root = synthetic
    qs = PatternCom(root).queries(archive.paths, attributes=["color"])
    other = TextFeatures(texts.texts, texts.feats, {"model": "ViT-L-14:openai", "model_name": "ViT-L-14:openai"})
    with pytest.raises(ModelMismatchError, match="different models"):
        evaluate(qs, archive, other, methods=["text"], progress=False)
    missing = TextFeatures(texts.texts[:1], texts.feats[:1], texts.meta)
    with pytest.raises(DataError, match="not encoded"):
        evaluate(qs, archive, missing, methods=["text"], progress=False)
    with pytest.raises(ValueError, match="λ must lie in"):
        evaluate(qs, archive, texts, methods=["weicom"], lambdas=[1.2], progress=False)


def test_queryset_csv_round_trip(synthetic, tmp_path):
    archive, _, root = synthetic
    qs = PatternCom(root).queries(archive.paths, attributes=["existence"])
    qs.to_csv(tmp_path / "q.csv")
    shuffled = archive.paths[::-1]
    from rscir_kit.queries import QuerySet
    again = QuerySet.read_csv(tmp_path / "q.csv", shuffled)
    assert len(again) == len(qs)
    for i in range(len(qs)):
        assert set(shuffled[again.positives(i)]) == set(archive.paths[qs.positives(i)])
    assert again.table.text.tolist() == qs.table.text.tolist()


def test_kernel_and_torch_backends_agree(synthetic):
    """The compiled kernel (CPU default) and the torch path (CUDA) compute the same rankings: every AP and
    hit count equal, for every registry method with a kernel fusion, both numerics."""
    archive, texts, root = synthetic
    qs = PatternCom(root).queries(archive.paths)
    methods = ["image", "text", "average", "weicom", "add", "add:weicom", "multiply:zscore", "min:weicom"]
    for numerics in ("kit", "official"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs = [evaluate(qs, archive, texts, methods=methods, lambdas=[0.0, 0.4, 1.0], ks=(5, 20),
                             numerics=numerics, progress=False, backend=b) for b in ("kernel", "torch")]
        for col in ("ap", "p@5", "r@20"):
            np.testing.assert_allclose(runs[0][col].to_numpy(), runs[1][col].to_numpy(), rtol=0, atol=1e-12,
                                       err_msg=f"{numerics} {col}")

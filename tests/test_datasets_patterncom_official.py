"""PatternCom details that follow the official evaluate.py: query groups keyed by the CSV's attribute column + class
(checked where the column is not constant, against a slow transcription of the official code), and the official
per-(λ, attribute) CSV layout with its per-pair rounding."""
from __future__ import annotations

import re
import warnings
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from rscir_kit.datasets.patterncom import PatternCom, group_key, official_tables, write_official_csvs
from rscir_kit.engine import evaluate
from rscir_kit.features import ImageFeatures, TextFeatures

# An archive of three classes, 4 images each; density.csv mixes two spellings of the attribute column.
CLASSES = ("denseresidential", "sparseresidential", "forest")


def _official_prompts(rows, attribute):
    """The official code's create_prompts over (fix_query_attributelabels(attribute column + class), value)."""
    merges = {"density": {"denseresidential": "residential", "sparseresidential": "residential"}}[attribute]
    labels = [r[1] + re.split(r"\d", r[0])[0] for r in rows]
    fixed = []
    for x in labels:
        for old, new in merges.items():
            x = x.replace(attribute + old, attribute + new)
        fixed.append(x)
    values = defaultdict(set)
    for g, (_, _, v) in zip(fixed, rows):
        values[g].add(v)
    return [sorted(values[g] - {v}) for g, (_, _, v) in zip(fixed, rows)]


@pytest.fixture()
def mixed(tmp_path):
    rows = []
    for c in CLASSES:
        for i in range(4):
            # the attribute column is "density" for images 0-1 and "density2" for 2-3: two groups per class
            col = "density" if i < 2 else "density2"
            value = ("dense" if c != "sparseresidential" else "sparse") if i % 2 == 0 else \
                ("sparse" if c != "sparseresidential" else "medium")
            rows.append((f"{c}{i:03d}.jpg", col, value))
    (tmp_path / "density.csv").write_text("".join(",".join(r) + "\n" for r in rows))
    paths = [f"{c}/{c}{i:03d}.jpg" for c in CLASSES for i in range(4)]
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((len(paths), 8)).astype(np.float32)
    archive = ImageFeatures(feats / np.linalg.norm(feats, axis=1, keepdims=True), paths,
                            [p.split("/")[0] for p in paths], {"model": "random"})
    return tmp_path, rows, archive


def test_group_key_is_the_official_string():
    assert group_key("density", "density", "denseresidential") == "densityresidential"
    assert group_key("density", "density2", "denseresidential") == "density2denseresidential"  # no merge applies
    assert group_key("color", "color", "swimmingpool") == "colorswimmingpool"


def test_groups_follow_a_non_constant_attribute_column(mixed):
    root, rows, archive = mixed
    qs = PatternCom(root).queries(archive.paths)
    prompts = _official_prompts(rows, "density")
    got = qs.table.groupby("line")["text"].agg(lambda s: sorted(s)).to_dict()
    want = {line: p for line, p in enumerate(prompts, start=1) if p}
    assert got == want
    # keyed by class only, the two spellings would pool: the official code (and the kit) keep them apart, and the
    # residential merge applies to the "density" spelling only (string replacement on "density<class>")
    assert set(qs.table["group"]) == {"densityresidential", "densityforest", "density2forest",
                                      "density2denseresidential", "density2sparseresidential"}


def test_official_csv_layout_and_rounding(mixed, tmp_path):
    root, rows, archive = mixed
    qs = PatternCom(root).queries(archive.paths)
    texts = sorted(set(qs.table["text"]))
    rng = np.random.default_rng(1)
    tf = rng.standard_normal((len(texts), 8)).astype(np.float32)
    tfeat = TextFeatures(texts, tf / np.linalg.norm(tf, axis=1, keepdims=True), {"model": "random"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_pair = evaluate(qs, archive, tfeat, methods=["image", "weicom"], lambdas=[0.3, 0.5], ks=(5, 10, 15, 20),
                            progress=False)
    tables = official_tables(per_pair)
    assert sorted(tables) == [(0.3, "density"), (0.5, "density")]
    t = tables[(0.5, "density")]
    assert list(t.columns) == ["Method", "R@5", "R@10", "R@15", "R@20", "P@5", "P@10", "P@15", "P@20", "AP"]
    assert list(t["Method"]) == ["Image only", "Weighted Similarities Norm"]
    # each pair rounded to 2 decimals (in %), then the mean rounded to 2: as the official metrics_calc + mean
    sel = per_pair[(per_pair.method == "weicom") & (per_pair["lambda"] == 0.5)]
    for name, col in (("AP", "ap"), ("P@15", "p@15"), ("R@5", "r@5")):
        assert t.loc[1, name] == round(float(np.mean([round(100 * v, 2) for v in sel[col]])), 2)
    exact = official_tables(per_pair, decimals=None)[(0.5, "density")]
    assert exact.loc[1, "AP"] == round(100 * float(sel["ap"].mean()), 2)
    files = write_official_csvs(per_pair, tmp_path / "results", "remoteclip")
    names = sorted(f.name for f in files)
    assert names == ["patternnet_metrics_remoteclip_lambda0.3_density.csv",
                     "patternnet_metrics_remoteclip_lambda0.5_density.csv"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "results" / names[1]), t, check_dtype=False)


def test_cli_writes_the_official_layout_with_rounding(mixed, tmp_path, capsys):
    from rscir_kit.cli import main

    root, rows, archive = mixed
    qs = PatternCom(root).queries(archive.paths)
    texts = sorted(set(qs.table["text"]))
    rng = np.random.default_rng(2)
    tf = rng.standard_normal((len(texts), 8)).astype(np.float32)
    tfeat = TextFeatures(texts, tf / np.linalg.norm(tf, axis=1, keepdims=True), {"model": "random"})
    archive.save(tmp_path / "a.npz")
    tfeat.save(tmp_path / "t.npz")
    assert main(["evaluate", "patterncom", "--features", str(tmp_path / "a.npz"), "--text-features",
                 str(tmp_path / "t.npz"), "--patterncom-dir", str(root), "--methods", "image", "weicom", "--lambdas",
                 "0.5", "--ap-decimals", "2", "--official-csv", str(tmp_path / "official"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "P@5" in printed and "R@20" in printed and "wrote 1 official-layout CSVs" in printed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_pair = evaluate(qs, archive, tfeat, methods=["image", "weicom"], lambdas=[0.5], ks=(5, 10, 15, 20),
                            ap_decimals=2, progress=False)
    got = pd.read_csv(tmp_path / "official" / "patternnet_metrics_random_lambda0.5_density.csv")
    pd.testing.assert_frame_equal(got, official_tables(per_pair)[(0.5, "density")], check_dtype=False)
    # every per-pair AP was rounded to 2 decimals (in %) before the mean
    assert np.allclose(per_pair["ap"] * 100, np.round(per_pair["ap"] * 100, 2))

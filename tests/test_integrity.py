"""Issue "nothing silently wrong, nothing lost": one test per case (bad inputs, faults, leftovers, locks).

Every fixture is generated here (tiny folders, random features, a tiny random-weight model): no offline data needed.
Faults are injected by monkeypatching the writers; nothing depends on a real full or read-only disk.
"""
from __future__ import annotations

import errno
import os
import warnings

import numpy as np
import pandas as pd
import pytest

from rscir_kit.cli import main
from rscir_kit.datasets.patterncom import PatternCom, read_attribute_csv
from rscir_kit.errors import DataError, OutputError, RscirError
from rscir_kit.features import ImageFeatures, TextFeatures
from rscir_kit.queries import QuerySet

D = 8


def _unit(rng, n, d=D):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def tiny_patterncom(tmp_path):
    """Two PatternNet classes × 6 images, one attribute CSV (color) with two values per class; random features."""
    rng = np.random.default_rng(0)
    paths = [f"{c}/{c}{i:03d}.jpg" for c in ("airplane", "beach") for i in range(1, 7)]
    labels = [p.split("/")[0] for p in paths]
    meta = {"model": "random-plumbing", "model_name": "random-plumbing"}
    archive = ImageFeatures(_unit(rng, len(paths)), paths, labels, meta)
    archive.save(tmp_path / "feats.npz")
    rows = [f"{p.split('/')[1]},color,{'white' if i % 2 else 'grey'}" for i, p in enumerate(paths)]
    (tmp_path / "pc").mkdir()
    (tmp_path / "pc" / "color.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    TextFeatures(["grey", "white"], _unit(rng, 2), meta).save(tmp_path / "text.npz")
    return tmp_path


def _evaluate_args(root, *extra):
    return ["evaluate", "patterncom", "--features", str(root / "feats.npz"), "--text-features", str(root / "text.npz"),
            "--patterncom-dir", str(root / "pc"), "--methods", "image", "weicom", "--quiet", *extra]


def _one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------ 1. NaN rows refused at load
def test_1_nan_rows_refused_by_every_loader(tmp_path, tiny_patterncom, capsys):
    import pickle

    feats = ImageFeatures.load(tiny_patterncom / "feats.npz")
    bad = feats.feats.copy()
    bad[3, 2] = np.nan
    np.savez(tmp_path / "nan.npz", feats=bad, paths=feats.paths, labels=feats.labels,
             meta=np.asarray('{"model": "random-plumbing"}'))
    with pytest.raises(DataError, match=r"nan\.npz: 1 of 12 feature rows contain NaN.*row 3 \(airplane/airplane004"):
        ImageFeatures.load(tmp_path / "nan.npz")
    with open(tmp_path / "nan.pkl", "wb") as fh:
        pickle.dump({"feats": bad, "labels": feats.labels.tolist(), "paths": feats.paths.tolist()}, fh)
    with pytest.raises(DataError, match=r"nan\.pkl: 1 of 12"):
        ImageFeatures.load(tmp_path / "nan.pkl")
    zero = feats.feats.copy()
    zero[0] = 0
    with pytest.raises(DataError, match="all zero"):
        ImageFeatures(zero, feats.paths, feats.labels, {})
    np.savez(tmp_path / "nantext.npz", texts=np.array(["a", "b"]), feats=np.array([[np.nan] * D, [1.0] + [0] * (D - 1)]),
             meta=np.asarray("{}"))
    with pytest.raises(DataError, match=r"nantext\.npz: 1 of 2 feature rows.*row 0 \(a\)"):
        TextFeatures.load(tmp_path / "nantext.npz")
    # the CLI: one line, exit 2 (before: WeiCom mAP 1802 %, exit 0)
    code = main(_evaluate_args(tiny_patterncom)[:3] + [str(tmp_path / "nan.npz")] + _evaluate_args(tiny_patterncom)[4:])
    _one_line_error(capsys, code, "nan.npz", "NaN")


def test_1_map_outside_0_100_is_impossible_in_the_engine(tiny_patterncom, monkeypatch):
    from rscir_kit import engine

    archive = ImageFeatures.load(tiny_patterncom / "feats.npz")
    texts = TextFeatures.load(tiny_patterncom / "text.npz")
    queries = PatternCom(tiny_patterncom / "pc").queries(archive.paths)
    ok = engine.evaluate(queries, archive, texts, methods=["weicom"], progress=False)
    assert ok["ap"].between(0, 1).all()
    real = engine.block_metrics

    def broken(*args):  # the compiled kernel writing APs 18× too large (its ap_out is the 3rd-last argument)
        real(*args)
        args[-3][...] *= 18

    monkeypatch.setattr(engine, "block_metrics", broken)
    with pytest.raises(AssertionError, match="ap outside"):
        engine.evaluate(queries, archive, texts, methods=["weicom"], progress=False)


# ------------------------------------------------------------------------------ 5. one renormalisation rule
def test_5_non_unit_rows_renormalised_recorded_and_counted(tmp_path, tiny_patterncom):
    from rscir_kit import engine

    feats = ImageFeatures.load(tiny_patterncom / "feats.npz")
    scaled = feats.feats.copy()
    scaled[[1, 4, 7]] *= np.array([[0.5], [3.0], [1.2]], np.float32)
    np.savez(tmp_path / "scaled.npz", feats=scaled, paths=feats.paths, labels=feats.labels,
             meta=np.asarray('{"model": "random-plumbing"}'))
    with pytest.warns(UserWarning, match=r"scaled\.npz: 3 of 12 feature rows were not unit length.*renormalised"):
        loaded = ImageFeatures.load(tmp_path / "scaled.npz")
    assert loaded.meta["renormalized"] == 3
    np.testing.assert_allclose(loaded.feats, feats.feats, atol=1e-6)
    texts = TextFeatures.load(tiny_patterncom / "text.npz")
    queries = PatternCom(tiny_patterncom / "pc").queries(feats.paths)
    a = engine.evaluate(queries, feats, texts, methods=["image", "weicom"], progress=False)
    b = engine.evaluate(queries, loaded, texts, methods=["image", "weicom"], progress=False)
    np.testing.assert_allclose(a["ap"], b["ap"], atol=1e-6)  # before: image-only mAP 18.58 -> 13.54
    with pytest.warns(UserWarning, match="1 of 2 feature rows"):
        t = TextFeatures(["a", "b"], np.array([[2.0] + [0] * (D - 1), [1.0] + [0] * (D - 1)]), {})
    assert t.meta["renormalized"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageFeatures(feats.feats, feats.paths, feats.labels, {})  # unit rows: no warning, nothing recorded


# ------------------------------------------------------------------------------ 6. duplicates, empty, too long
def test_6_duplicate_csv_rows_and_empty_texts_warn_with_counts(tiny_patterncom):
    csv_path = tiny_patterncom / "pc" / "color.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines + [lines[0], lines[0], lines[5]]) + "\n")
    with pytest.warns(UserWarning, match=r"3 duplicate row\(s\) \(line 13 = line 1, line 14 = line 1, line 15 = line 6"):
        read_attribute_csv(csv_path)
    table = pd.DataFrame({"query_path": ["a", "a", "b", "b"], "text": ["x", "x", "", "  "], "positive_id": [0] * 4})
    with pytest.warns(UserWarning) as got:
        qs = QuerySet("t", table, [np.array([1])], np.array(["a", "b"]))
    messages = [str(w.message) for w in got]
    assert any("2 of 4 pairs have an empty text" in m for m in messages), messages
    assert any("1 of 4 pairs are exact duplicates (e.g. row 1)" in m for m in messages), messages
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qs.subset([0, 1])  # warned once, not again for every derived set


def test_6_texts_longer_than_the_context_warn(tmp_path):
    from rscir_kit.encoders import load_encoder

    from _tiny_model import make_tiny_model_dir

    enc = load_encoder(f"local-dir:{make_tiny_model_dir(tmp_path / 'tiny')}", device="cpu")  # context: 16 tokens
    short = "a river"
    long_a = " ".join(["field"] * 20) + " with a river"
    long_b = " ".join(["field"] * 20) + " with a lake"
    with pytest.warns(UserWarning, match=r"2 of 3 texts are longer than the text encoder's context of 16 tokens"):
        feats = enc.encode_texts([short, long_a, long_b])
    np.testing.assert_array_equal(feats[1], feats[2])  # what the warning is about: the cut ends are identical
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.encode_texts([short, " ".join(["field"] * 14)])  # 14 tokens + start + end = 16: fits


# ------------------------------------------------------------------------------ 10. unwritable --out
@pytest.mark.parametrize("err, words", [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only"),
                                         (None, "disk full")])
def test_10_unwritable_out_prints_the_table_then_one_line(tiny_patterncom, capsys, monkeypatch, err, words):
    def failing_replace(src, dst):
        if err is None:  # numpy's short write on a full disk carries no errno
            raise OSError("8192 requested and 3040 written")
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "replace", failing_replace)
    out = tiny_patterncom / "res.csv"
    code = main(_evaluate_args(tiny_patterncom, "--out", str(out)))
    captured = capsys.readouterr()
    assert "mAP (%)" in captured.out and "WeiCom" in captured.out  # the results are shown first
    assert code == 2 and "Traceback" not in captured.err
    assert [line for line in captured.err.splitlines() if "error" in line] == \
        [line for line in captured.err.splitlines() if str(out) in line and words in line]
    assert not out.exists() and not list(tiny_patterncom.glob(".res.csv*"))


def test_output_errors_is_an_oserror_and_rscir_error():
    from rscir_kit.io import output_errors

    with pytest.raises(OutputError) as info, output_errors("/x/y.npz"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert isinstance(info.value, OSError) and isinstance(info.value, RscirError)
    assert "cannot write output /x/y.npz: disk full" in str(info.value)
    with pytest.raises(KeyError), output_errors("/x"):
        raise KeyError("unrelated")


# ------------------------------------------------------------------------------ tracebacks → one line
def test_out_that_is_a_folder_is_refused_before_work(tiny_patterncom, capsys):
    (tiny_patterncom / "adir").mkdir()
    code = main(_evaluate_args(tiny_patterncom, "--out", str(tiny_patterncom / "adir")))
    _one_line_error(capsys, code, "--out", "is a folder")


def test_single_value_attribute_is_left_out_with_a_warning(tiny_patterncom, capsys):
    (tiny_patterncom / "pc" / "shape.csv").write_text("airplane001.jpg,shape,round\nbeach002.jpg,shape,round\n")
    archive = ImageFeatures.load(tiny_patterncom / "feats.npz")
    with pytest.warns(UserWarning, match=r"shape\.csv: no query pairs"):
        qs = PatternCom(tiny_patterncom / "pc").queries(archive.paths)  # before: IndexError in queries.py
    assert set(qs.table["attribute"]) == {"color"} and qs.n_positives.dtype == np.int64
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no query pairs"):
        PatternCom(tiny_patterncom / "pc").queries(archive.paths, attributes=["shape"])
    assert main(_evaluate_args(tiny_patterncom)) == 0
    assert "warning: " in capsys.readouterr().err


def test_non_utf8_csv_is_refused_naming_the_line(tiny_patterncom, capsys):
    csv_path = tiny_patterncom / "pc" / "color.csv"
    csv_path.write_bytes(csv_path.read_bytes() + "airplane006.jpg,color,gr\xfcn\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"color\.csv, line 13: PatternCom CSV is not UTF-8 \(byte 0xfc\)"):
        read_attribute_csv(csv_path)
    _one_line_error(capsys, main(_evaluate_args(tiny_patterncom)), "color.csv, line 13", "UTF-8")


def test_utf8_bom_is_accepted(tiny_patterncom):
    csv_path = tiny_patterncom / "pc" / "color.csv"
    before = read_attribute_csv(csv_path)
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())
    after = read_attribute_csv(csv_path)  # before: unknown class '\ufeffairplane'
    pd.testing.assert_frame_equal(before, after)
    archive = ImageFeatures.load(tiny_patterncom / "feats.npz")
    qs = PatternCom(tiny_patterncom / "pc").queries(archive.paths)
    qs.to_csv(tiny_patterncom / "q.csv")
    (tiny_patterncom / "q_bom.csv").write_bytes(b"\xef\xbb\xbf" + (tiny_patterncom / "q.csv").read_bytes())
    back = QuerySet.read_csv(tiny_patterncom / "q_bom.csv", archive.paths)
    assert back.name == "PatternCom" and len(back) == len(qs)


def test_device_banana_is_one_line(tiny_patterncom, capsys):
    _one_line_error(capsys, main(_evaluate_args(tiny_patterncom, "--device", "banana")), "unknown device 'banana'")

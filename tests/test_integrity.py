"""Issue "nothing silently wrong, nothing lost": one test per case (bad inputs, faults, leftovers, locks).

Every fixture is generated here (tiny folders, random features, a tiny random-weight model): no offline data needed.
Faults are injected by monkeypatching the writers; nothing depends on a real full or read-only disk.
"""
from __future__ import annotations

import errno
import inspect
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
    ap_arg = list(inspect.signature(real.py_func).parameters).index("ap_out")

    def broken(*args):  # the compiled kernel writing APs 18× too large
        real(*args)
        args[ap_arg][...] *= 18

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


# ====================================================================================== extraction
def _write_jpgs(root, classes=("alpha", "beta"), per_class=5, size=(32, 24), seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{c}{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny():
    from _tiny_model import TinyLinearEncoder

    return TinyLinearEncoder()


class _Chunks:
    """on_chunk callback recording the chunks computed (optionally interrupting after ``stop_after``)."""

    def __init__(self, stop_after=None):
        self.stop_after, self.seen = stop_after, []

    def __call__(self, k, n):
        self.seen.append(k)
        if self.stop_after is not None and len(self.seen) >= self.stop_after:
            raise KeyboardInterrupt


def _extract(coll, enc, out, **kw):
    from rscir_kit.features import extract_image_features

    kw.setdefault("batch_size", 2)
    kw.setdefault("chunk_size", 2)
    return extract_image_features(coll, enc, out, progress=False, **kw)


def _rows_by_path(feats):
    return dict(zip(feats.paths.tolist(), feats.feats))


def test_3_image_rewritten_under_the_same_name_is_re_encoded(tmp_path, tiny):
    from PIL import Image

    from rscir_kit.imagesets import ImageCollection

    root = _write_jpgs(tmp_path / "imgs")
    first = _extract(ImageCollection.from_folder(root), tiny, tmp_path / "f.npz")
    target = root / "beta" / "beta2.png"
    Image.fromarray(np.full((24, 32, 3), 200, np.uint8)).save(target)  # new content, same name
    cb = _Chunks()
    second = _extract(ImageCollection.from_folder(root), tiny, tmp_path / "f.npz", on_chunk=cb)
    assert len(cb.seen) == 1  # only that image (before: "reused out/ch.npz", the old row kept)
    a, b = _rows_by_path(first), _rows_by_path(second)
    assert not np.allclose(a["beta/beta2.png"], b["beta/beta2.png"])
    assert all(np.array_equal(a[p], b[p]) for p in a if p != "beta/beta2.png")
    np.testing.assert_allclose(b["beta/beta2.png"], tiny.encode_images(tiny.preprocess(Image.open(target))[None])[0],
                               atol=1e-6)
    # same size and a restored mtime: only the opt-in content hash can tell
    st = target.stat()
    data = bytearray(target.read_bytes())
    Image.fromarray(np.full((24, 32, 3), 10, np.uint8)).save(tmp_path / "x.png")
    new = (tmp_path / "x.png").read_bytes()
    if len(new) == len(data):
        target.write_bytes(new)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        cb = _Chunks()
        _extract(ImageCollection.from_folder(root), tiny, tmp_path / "f.npz", on_chunk=cb)
        assert cb.seen == []
    cb = _Chunks()
    hashed = _extract(ImageCollection.from_folder(root), tiny, tmp_path / "f.npz", on_chunk=cb, content_hash=True)
    assert len(cb.seen) == 5 and hashed.meta["image_keys"] == "path+size+mtime+sha256"
    np.testing.assert_allclose(_rows_by_path(hashed)["beta/beta2.png"],
                               tiny.encode_images(tiny.preprocess(Image.open(target))[None])[0], atol=1e-6)


def test_3_fingerprint_covers_size_and_mtime(tmp_path):
    from rscir_kit.imagesets import ImageCollection

    root = _write_jpgs(tmp_path / "imgs", per_class=2)
    coll = ImageCollection.from_folder(root)
    fp, keys = coll.fingerprint(), coll.file_keys()
    f = root / "alpha" / "alpha0.png"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert coll.fingerprint() != fp and coll.file_keys()[0] != keys[0] and coll.file_keys()[1:] == keys[1:]
    assert len(coll.file_keys(content_hash=True)[0]) == 40


def _tiff16(path, arr):
    from PIL import Image

    Image.fromarray(arr.astype(np.uint16)).save(path)


def test_4_sixteen_bit_images_are_stretched_documented_or_refused(tmp_path, tiny):
    import tifffile

    from rscir_kit.errors import ModelMismatchError
    from rscir_kit.imagesets import ImageCollection, ImageDecoding, decode_image, load_image

    (tmp_path / "imgs" / "a").mkdir(parents=True)
    ramp = (np.arange(24 * 32).reshape(24, 32) * 4 + 1000).astype(np.uint16)  # 1000..4068: all > 255
    _tiff16(tmp_path / "imgs" / "a" / "g16.tif", ramp)
    image, converted = decode_image(tmp_path / "imgs" / "a" / "g16.tif")
    arr = np.asarray(image)
    assert converted and image.mode == "RGB" and arr.min() == 0 and arr.max() == 255  # before: all 255 (white)
    lo, hi = np.percentile(ramp.astype(float), [2, 98])
    expected = np.clip(np.round((ramp - lo) * 255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(arr[:, :, 0], expected)
    assert (arr[:, :, 0] == arr[:, :, 2]).all()
    fixed = np.asarray(load_image(tmp_path / "imgs" / "a" / "g16.tif", ImageDecoding(stretch=(1000, 5000))))[:, :, 0]
    np.testing.assert_array_equal(fixed, np.round((ramp - 1000) * 255.0 / 4000).astype(np.uint8))
    with pytest.raises(DataError, match=r"g16\.tif is a uint16 image.*stretch='image' \(CLI --stretch image"):
        load_image(tmp_path / "imgs" / "a" / "g16.tif", ImageDecoding(stretch="refuse"))
    # more than three bands: refused naming the option, which then works
    bands = np.random.default_rng(0).integers(0, 4000, (24, 32, 6)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "imgs" / "a" / "m6.tif", bands, photometric="minisblack", planarconfig="contig")
    with pytest.raises(DataError, match=r"m6\.tif has 6 bands.*bands=\(r, g, b\).*--bands 4,3,2"):
        load_image(tmp_path / "imgs" / "a" / "m6.tif")
    rgb = np.asarray(load_image(tmp_path / "imgs" / "a" / "m6.tif", ImageDecoding(bands=(4, 3, 2))))
    for j, b in enumerate((4, 3, 2)):
        band = bands[:, :, b - 1].astype(float)
        lo, hi = np.percentile(band, [2, 98])
        np.testing.assert_array_equal(rgb[:, :, j], np.clip(np.round((band - lo) * 255 / (hi - lo)), 0, 255))
    with pytest.raises(DataError, match="asks for band 7"):
        load_image(tmp_path / "imgs" / "a" / "m6.tif", ImageDecoding(bands=(7, 3, 2)))
    # per dataset: one range pooled over the collection; recorded in the feature file and checked on reuse
    (tmp_path / "imgs" / "a" / "m6.tif").unlink()
    _tiff16(tmp_path / "imgs" / "a" / "h16.tif", ramp * 2)
    coll = ImageCollection.from_folder(tmp_path / "imgs")
    lo, hi = coll.stretch_range()
    assert 1000 < lo < 2000 and 4000 < hi < 8136
    with pytest.warns(UserWarning, match="2 of the 2 images encoded in this run were not 8-bit RGB"):
        feats = _extract(coll, tiny, tmp_path / "f.npz")
    assert feats.meta["image_decoding"] == {"high_bit": "percentile 2-98 stretch per image and band -> 8 bit",
                                            "bands": None}
    with pytest.raises(ModelMismatchError, match="decoded with"):
        _extract(coll.with_decoding(stretch=(lo, hi)), tiny, tmp_path / "f.npz")
    with pytest.raises(DataError, match="uint16"):
        _extract(coll.with_decoding(stretch="refuse"), tiny, tmp_path / "g.npz")


def test_7_unreadable_images_all_reported_finished_work_kept(tmp_path, tiny):
    from rscir_kit.features import bad_files_path
    from rscir_kit.imagesets import ImageCollection

    root = _write_jpgs(tmp_path / "imgs")
    coll = ImageCollection.from_folder(root)
    ref = _extract(coll, tiny, tmp_path / "ref.npz")
    (root / "alpha" / "alpha1.png").write_bytes(b"\x89PNG broken")
    (root / "beta" / "beta3.png").write_bytes(b"")
    out = tmp_path / "f.npz"
    with pytest.raises(DataError, match=r"2 of 10 images could not be read \(alpha/alpha1\.png .*beta/beta3\.png"):
        _extract(coll, tiny, out)  # before: stopped at the first one
    listed = bad_files_path(out).read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == ["path", "alpha/alpha1.png", "beta/beta3.png"]
    assert not out.exists()
    # remove them: the 8 finished images are reused, nothing recomputed (before: 288 of 301 recomputed)
    (root / "alpha" / "alpha1.png").unlink()
    (root / "beta" / "beta3.png").unlink()
    cb = _Chunks()
    got = _extract(ImageCollection.from_folder(root), tiny, out, on_chunk=cb)
    assert cb.seen == [] and len(got) == 8 and not bad_files_path(out).exists()
    r = _rows_by_path(ref)
    assert all(np.array_equal(r[p], row) for p, row in _rows_by_path(got).items())
    # an added image: only it is encoded; the list shrinking again: nothing is
    _write_jpgs(root, classes=("gamma",), per_class=1, seed=5)
    cb = _Chunks()
    assert len(_extract(ImageCollection.from_folder(root), tiny, out, on_chunk=cb)) == 9 and len(cb.seen) == 1
    cb = _Chunks()
    assert len(_extract(ImageCollection.from_folder(root, limit_per_class=2), tiny, out, on_chunk=cb)) == 5
    assert cb.seen == []
    # --no-resume recomputes (before: refused like a list change), even over a damaged file
    out.write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(DataError, match="damaged"):
        _extract(ImageCollection.from_folder(root), tiny, out)
    cb = _Chunks()
    assert len(_extract(ImageCollection.from_folder(root), tiny, out, on_chunk=cb, resume=False)) == 9
    assert len(cb.seen) == 5


def test_7_on_error_skip_lists_every_bad_file(tmp_path, tiny, capsys, monkeypatch):
    from rscir_kit.commands import extract as extract_cmd
    from rscir_kit.features import bad_files_path

    root = _write_jpgs(tmp_path / "imgs")
    (root / "alpha" / "alpha1.png").write_bytes(b"garbage")
    (root / "beta" / "beta0.png").write_bytes(b"garbage")
    (root / "beta" / "beta4.png").write_bytes(b"")
    monkeypatch.setattr(extract_cmd, "_encoder", lambda args: tiny)
    out = tmp_path / "f.npz"
    code = main(["extract", "--images", str(root), "--out", str(out), "--on-error", "skip", "--quiet",
                 "--batch-size", "2"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "left out 3 of 10 unreadable images" in err and "Traceback" not in err
    for name in ("alpha/alpha1.png", "beta/beta0.png", "beta/beta4.png"):
        assert name in err and name in bad_files_path(out).read_text()
    feats = ImageFeatures.load(out)
    assert len(feats) == 7 and feats.meta["skipped"] == 3 and "beta/beta0.png" not in feats.paths
    # stop mode through the CLI: one line, after every readable image was encoded
    code = main(["extract", "--images", str(root), "--out", str(tmp_path / "g.npz"), "--quiet"])
    _one_line_error(capsys, code, "3 of 10 images could not be read", "g.npz.bad-files.txt", "--on-error skip")
    # missing files are refused before the model is loaded
    monkeypatch.setattr(extract_cmd, "_encoder", lambda args: pytest.fail("model loaded before validation"))
    lst = tmp_path / "list.csv"
    lst.write_text("path,label\nalpha/alpha0.png,a\nalpha/nope.png,a\n")
    code = main(["extract", "--file-list", str(lst), "--root", str(root), "--out", str(tmp_path / "h.npz")])
    _one_line_error(capsys, code, "1 of 2 images are missing", "nope.png")


def test_8_a_second_run_on_one_output_is_refused_clearly(tmp_path, tiny, capsys, monkeypatch):
    from rscir_kit.commands import extract as extract_cmd
    from rscir_kit.errors import BusyError
    from rscir_kit.imagesets import ImageCollection
    from rscir_kit.index import ArchiveIndex
    from rscir_kit.io import run_lock

    root = _write_jpgs(tmp_path / "imgs", per_class=2)
    out = tmp_path / "f.npz"
    with pytest.raises(KeyboardInterrupt):
        _extract(ImageCollection.from_folder(root), tiny, out, on_chunk=_Chunks(stop_after=1))
    chunks = sorted((tmp_path / "f.npz.partial").iterdir())
    with run_lock(out, "extraction"):  # another run holds it
        with pytest.raises(BusyError, match=r"f\.npz is being written by another extraction") as info:
            _extract(ImageCollection.from_folder(root), tiny, out)
        assert "delete" not in str(info.value)
        monkeypatch.setattr(extract_cmd, "_encoder", lambda args: tiny)
        code = main(["extract", "--images", str(root), "--out", str(out), "--quiet"])
        _one_line_error(capsys, code, "being written by another extraction")
        assert sorted((tmp_path / "f.npz.partial").iterdir()) == chunks  # the live run's work is untouched
    assert len(_extract(ImageCollection.from_folder(root), tiny, out)) == 4
    feats = ImageFeatures.load(out)
    with run_lock(tmp_path / "idx", "index build"):
        with pytest.raises(BusyError, match="another index build"):
            ArchiveIndex.build(feats, tmp_path / "idx")
    ArchiveIndex.build(feats, tmp_path / "idx")


def test_9_leftovers_of_killed_runs_are_cleaned(tmp_path, tiny, monkeypatch):
    from rscir_kit.imagesets import ImageCollection
    from rscir_kit.index import ArchiveIndex

    root = _write_jpgs(tmp_path / "imgs", per_class=2)
    out = tmp_path / "run" / "f.npz"
    with pytest.raises(KeyboardInterrupt):
        _extract(ImageCollection.from_folder(root), tiny, out, on_chunk=_Chunks(stop_after=1))
    # what a SIGKILL during the final write / a chunk write leaves
    (tmp_path / "run" / ".f.npz.tmp-a1b2c3.npz").write_bytes(b"half")
    (tmp_path / "run" / "f.npz.partial" / ".chunk_000001.npz.tmp-zz.npz").write_bytes(b"half")
    (tmp_path / "run" / "other.txt").write_text("not ours")
    _extract(ImageCollection.from_folder(root), tiny, out)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".f.npz.lock", "f.npz", "other.txt"]
    # a failed index build (disk full while writing the statistics) leaves no *.building; a stale one is removed
    feats = ImageFeatures.load(out)
    import rscir_kit.index as index_mod

    real = np.savez

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(index_mod.np, "savez", full)
    with pytest.raises(OutputError, match=r"idx: disk full"):
        ArchiveIndex.build(feats, tmp_path / "idx")
    monkeypatch.setattr(index_mod.np, "savez", real)
    assert not (tmp_path / "idx.building").exists() and not (tmp_path / "idx").exists()
    (tmp_path / "idx.building").mkdir()
    (tmp_path / "idx.building" / "flat.faiss").write_bytes(b"old")
    ArchiveIndex.build(feats, tmp_path / "idx")
    assert not (tmp_path / "idx.building").exists()


@pytest.fixture(scope="module")
def intact_index(tmp_path_factory):
    """An index with the default fast part, built once; each damage test copies it (the build trains PQ)."""
    from rscir_kit.index import ArchiveIndex

    rng = np.random.default_rng(0)
    n = 1100  # enough for the default fast index
    root = tmp_path_factory.mktemp("intact") / "idx"
    ArchiveIndex.build(ImageFeatures(_unit(rng, n, 16), [f"c/{i}.jpg" for i in range(n)], ["c"] * n,
                                     {"model": "random-plumbing"}), root, fast="auto")
    return root


@pytest.mark.parametrize("name", ["flat.faiss", "fast.faiss", "stats.npz", "paths.npy", "labels.npy", "meta.json"])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_index_files_say_index_damaged(tmp_path, capsys, name, damage, intact_index):
    import shutil

    from rscir_kit.index import ArchiveIndex

    shutil.copytree(intact_index, tmp_path / "idx")
    f = tmp_path / "idx" / name
    data = bytearray(f.read_bytes())
    if damage == "flip":
        pos = len(data) // 2 if name != "meta.json" else data.index(b'"n": 1100') + 6
        data[pos] ^= 0x01
    else:
        data = data[: len(data) - 7]
    f.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"index damaged: .*{name.replace('.', '[.]')}.*rebuild with `rscir-kit index build"):
        ArchiveIndex.load(tmp_path / "idx")
    code = main(["index", "info", "--index", str(tmp_path / "idx")])
    _one_line_error(capsys, code, "index damaged", name)


def test_index_build_on_few_images_and_out_that_is_a_file(tmp_path, capsys):
    from rscir_kit.index import ArchiveIndex

    rng = np.random.default_rng(1)
    for n in (2, 7, 15):
        feats = ImageFeatures(_unit(rng, n, 16), [f"c/{i}.jpg" for i in range(n)], ["c"] * n, {"model": "m"})
        idx = ArchiveIndex.build(feats, tmp_path / f"idx{n}")  # before: FAISS "number of training points" crash
        assert idx.fast is None and idx.meta["fast"] is None
        res = idx.search(feats.feats[0], feats.feats[1], lam=0.5, k=3)
        ref = idx.search(feats.feats[0], feats.feats[1], lam=0.5, k=3, mode="scan")
        np.testing.assert_array_equal(res.indices, ref.indices)
    feats.save(tmp_path / "f.npz")
    with pytest.raises(DataError, match=r"cannot be trained on 15 archive rows.*--fast none"):
        ArchiveIndex.build(feats, tmp_path / "pq", fast="PQ4x8")
    assert not (tmp_path / "pq.building").exists()
    (tmp_path / "afile").write_text("x")
    code = main(["index", "build", "--features", str(tmp_path / "f.npz"), "--out", str(tmp_path / "afile"), "--quiet"])
    _one_line_error(capsys, code, "afile is a file")


def test_exact_and_scan_score_with_the_same_numbers_so_ties_order_alike(tmp_path):
    from rscir_kit.index import ArchiveIndex

    rng = np.random.default_rng(3)
    base = _unit(rng, 40, 16)
    x = base[rng.integers(0, 40, 600)]  # every row ~15 times: ties everywhere
    idx = ArchiveIndex.build(x, tmp_path / "idx", fast=None)
    for q in range(8):
        qi, qt = x[rng.integers(600)], base[rng.integers(40)]
        for lam in (0.3, 0.5, 0.8):
            a = idx.search(qi, qt, lam=lam, k=50, mode="exact")
            b = idx.search(qi, qt, lam=lam, k=50, mode="scan")
            np.testing.assert_array_equal(a.scores, b.scores)  # before: differed in the last bits
            np.testing.assert_array_equal(a.indices, b.indices)
            same = np.flatnonzero(np.diff(a.scores) == 0)
            assert (a.indices[same] < a.indices[same + 1]).all()  # ties by archive order


_CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from _tiny_model import TinyLinearEncoder
from rscir_kit.features import extract_image_features
from rscir_kit.imagesets import ImageCollection
enc = TinyLinearEncoder(delay=0.004)
assert "torch" not in sys.modules
coll = ImageCollection.from_folder({root!r})
print("ready", flush=True)
t0 = time.perf_counter()
extract_image_features(coll, enc, {out!r}, batch_size=2, chunk_size=4, progress=False, workers=2,
                       on_chunk=lambda k, n: print("chunk", k, flush=True))
print("done", time.perf_counter() - t0, flush=True)
"""


@pytest.mark.slow  # seven extraction processes, killed and resumed
def test_sigkill_at_random_points_then_resume_is_bit_identical_and_leaves_nothing(tmp_path):
    """SIGKILL extraction at random moments (decoding, chunk writes, the final write) in several runs; the
    resumed file equals an uninterrupted run's to the bit, and only the result (and its lock file) remain."""
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = _write_jpgs(tmp_path / "imgs", classes=("a", "b", "c", "d"), per_class=10)
    tests = str(Path(__file__).parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))

    def start(out):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD.format(tests=tests, root=str(root), out=str(out))],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        return proc

    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    proc = start(ref_dir / "f.npz")
    out_text, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    duration = float(out_text.split()[-1])

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    out = run_dir / "f.npz"
    rng = random.Random(1234)
    interrupted = 0
    for _ in range(6):  # each run: let it save 0-3 chunks, then kill it at a random moment of the next ones
        proc = start(out)
        for _ in range(rng.randint(0, 3)):
            if not proc.stdout.readline().startswith("chunk"):
                break
        time.sleep(rng.uniform(0.0, duration / 8))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            interrupted += 1
        proc.communicate(timeout=120)
        if out.exists():
            break
    assert interrupted >= 2
    proc = start(out)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    a, b = ImageFeatures.load(ref_dir / "f.npz"), ImageFeatures.load(out)
    np.testing.assert_array_equal(a.feats, b.feats)
    assert a.paths.tolist() == b.paths.tolist() and a.keys.tolist() == b.keys.tolist()
    assert sorted(p.name for p in run_dir.iterdir()) == [".f.npz.lock", "f.npz"]


@pytest.mark.parametrize("err, words", [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only file system")])
def test_full_or_read_only_output_folders_are_one_line_for_extract_and_index(tmp_path, tiny, capsys, monkeypatch,
                                                                            err, words):
    import rscir_kit.index as index_mod
    from rscir_kit.commands import extract as extract_cmd

    root = _write_jpgs(tmp_path / "imgs", per_class=2)
    monkeypatch.setattr(extract_cmd, "_encoder", lambda args: tiny)
    real_replace = os.replace

    def failing(src, dst):
        if str(dst).endswith("f.npz"):  # the final write fails; the cache chunks were written
            raise OSError(err, os.strerror(err))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    code = main(["extract", "--images", str(root), "--out", str(tmp_path / "f.npz"), "--quiet"])
    _one_line_error(capsys, code, str(tmp_path / "f.npz"), words)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    monkeypatch.setattr(os, "replace", real_replace)
    assert main(["extract", "--images", str(root), "--out", str(tmp_path / "f.npz"), "--quiet"]) == 0  # resumes
    capsys.readouterr()

    def failing_write(*a, **k):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(index_mod.np, "savez", failing_write)
    code = main(["index", "build", "--features", str(tmp_path / "f.npz"), "--out", str(tmp_path / "idx"), "--quiet"])
    _one_line_error(capsys, code, "idx", words)
    assert not (tmp_path / "idx.building").exists()

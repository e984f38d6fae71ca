"""Feature files, image collections, image loading errors, resumable extraction and model-mismatch refusal."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from rscir_kit.encoders import load_encoder
from rscir_kit.errors import DataError, ModelMismatchError
from rscir_kit.features import (ImageFeatures, TextFeatures, check_same_model, encode_texts,
                                extract_image_features)
from rscir_kit.imagesets import ImageCollection, load_image

from _tiny_model import make_tiny_model_dir


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write_images(root: Path, classes=("alpha", "beta"), per_class=3, size=(40, 30)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{c}{i:02d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def tiny_enc(tmp_path_factory):
    return load_encoder(f"local-dir:{make_tiny_model_dir(tmp_path_factory.mktemp('m') / 'tiny-a', seed=0)}",
                        device="cpu")


@pytest.fixture(scope="module")
def tiny_enc_b(tmp_path_factory):
    return load_encoder(f"local-dir:{make_tiny_model_dir(tmp_path_factory.mktemp('m') / 'tiny-b', seed=1)}",
                        device="cpu")


# ------------------------------------------------------------------------------------- file formats
def test_image_features_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    f = ImageFeatures(_unit(rng, 5, 7), [f"c/x{i}.jpg" for i in range(5)], ["c", "c", "d", "d", "d"],
                      {"model": "m", "model_name": "m", "activation": "gelu"})
    out = f.save(tmp_path / "sub" / "f.npz")
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.npz"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    g = ImageFeatures.load(out)
    np.testing.assert_array_equal(f.feats, g.feats)
    assert g.feats.dtype == np.float32 and g.paths.tolist() == f.paths.tolist() and g.labels.tolist() == f.labels.tolist()
    assert g.meta == dict(f.meta, kind="image")
    raw = np.load(out, allow_pickle=False)  # plain arrays, readable without pickle
    assert set(raw.files) == {"feats", "paths", "labels", "meta"} and json.loads(str(raw["meta"][()]))["kind"] == "image"
    with pytest.raises(DataError, match="holds image features: use ImageFeatures.load"):
        TextFeatures.load(out)


def test_text_features_round_trip_and_lookup(tmp_path):
    rng = np.random.default_rng(2)
    t = TextFeatures(["a", "b c", "déjà vu"], _unit(rng, 3, 4), {"model_name": "m"})
    t.save(tmp_path / "t.npz")
    u = TextFeatures.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(u.lookup(["déjà vu", "a"]), t.feats[[2, 0]])
    assert u.meta["kind"] == "text"
    with pytest.raises(DataError, match="'zzz'.*encode-text"):
        u.lookup(["a", "zzz"])
    with pytest.raises(DataError, match="use TextFeatures.load"):
        ImageFeatures.load(tmp_path / "t.npz")


def test_official_pickle_is_read_and_marked(tmp_path):
    import torch

    rng = np.random.default_rng(3)
    raw = rng.standard_normal((4, 6)).astype(np.float32) * 3
    obj = {"feats": torch.from_numpy(raw), "labels": np.array([0, 0, 1, 1]),
           "paths": ["/data/PatternNet/images/a/a1.jpg", "/data/PatternNet/images/a/a2.jpg",
                     "/data/PatternNet/images/b/b1.jpg", "/data/PatternNet/images/b/b2.jpg"]}
    with open(tmp_path / "official.pkl", "wb") as f:
        pickle.dump(obj, f)
    g = ImageFeatures.load(tmp_path / "official.pkl", model="remoteclip-vit-l-14")
    assert g.meta["imported"] == "official pickle" and g.meta["model_name"] == "remoteclip-vit-l-14"
    assert g.meta["renormalized"] == 4
    np.testing.assert_allclose(g.feats, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    assert g.labels.tolist() == ["0", "0", "1", "1"]
    assert g.index_of(["b1.jpg", "a2.jpg"], by="basename").tolist() == [2, 1]
    rel = ImageFeatures.load(tmp_path / "official.pkl", root="/data/PatternNet/images/")
    assert rel.paths.tolist() == ["a/a1.jpg", "a/a2.jpg", "b/b1.jpg", "b/b2.jpg"]
    assert "model_name" not in rel.meta
    with open(tmp_path / "bad.pkl", "wb") as f:
        pickle.dump({"features": raw}, f)
    with pytest.raises(DataError, match="feats, labels, paths"):
        ImageFeatures.load(tmp_path / "bad.pkl")


def test_index_of_modes_and_missing_names():
    f = ImageFeatures(np.eye(4, dtype=np.float32), ["a/x1.jpg", "a/x2.jpg", "b/y1.jpg", "b/x1.png"], list("aabb"))
    assert f.index_of(["b/y1.jpg", "a/x1.jpg"]).tolist() == [2, 0]
    assert f.index_of(["y1.jpg"], by="basename").dtype == np.int64
    assert f.index_of(["x2", "y1"], by="stem").tolist() == [1, 2]
    with pytest.raises(DataError, match="several images"):
        f.index_of(["x1"], by="stem")
    missing = [f"zz{i}.jpg" for i in range(8)]
    with pytest.raises(DataError) as err:
        f.index_of(["a/x1.jpg"] + missing)
    msg = str(err.value)
    assert "8 of 9 names" in msg and "zz0.jpg" in msg and "zz4.jpg" in msg and "zz7.jpg" not in msg
    assert "Extract features" in msg


def test_check_same_model():
    a = {"model": "local-dir:/x/m", "model_name": "local-dir:m", "activation": "gelu", "embed_dim": 8, "dtype": "float32"}
    check_same_model(a, dict(a, model="local-dir:/elsewhere/m", device="cuda"))  # same model moved / other device
    with pytest.raises(ModelMismatchError, match="activation.*delete"):
        check_same_model(a, dict(a, activation="quickgelu"))
    with pytest.raises(ModelMismatchError, match="local-dir:m.*remoteclip-vit-l-14"):
        check_same_model(a, dict(a, model_name="remoteclip-vit-l-14"))
    check_same_model(a, dict(a, dtype="float16"))
    with pytest.raises(ModelMismatchError, match="dtype"):
        check_same_model(a, dict(a, dtype="float16"), strict=True)
    with pytest.warns(UserWarning, match="cannot verify"):
        check_same_model({"imported": "official pickle"}, a)


# ------------------------------------------------------------------------------------- collections
def test_collection_from_folder_and_limit(tmp_path):
    root = _write_images(tmp_path / "imgs", per_class=3)
    (root / "alpha" / "notes.txt").write_text("not an image")
    c = ImageCollection.from_folder(root)
    assert c.paths == ["alpha/alpha00.jpg", "alpha/alpha01.jpg", "alpha/alpha02.jpg",
                       "beta/beta00.jpg", "beta/beta01.jpg", "beta/beta02.jpg"]
    assert c.labels == ["alpha"] * 3 + ["beta"] * 3
    small = ImageCollection.from_folder(root, limit_per_class=2)
    assert small.paths == ["alpha/alpha00.jpg", "alpha/alpha01.jpg", "beta/beta00.jpg", "beta/beta01.jpg"]
    assert small.fingerprint() != c.fingerprint()
    with pytest.raises(DataError, match="not found"):
        ImageCollection.from_folder(tmp_path / "nope")


def test_collection_from_file_lists(tmp_path):
    (tmp_path / "a.csv").write_text("path,label\nx/1.jpg,cat\nx/2.jpg,dog\n")
    c = ImageCollection.from_file_list(tmp_path / "a.csv", root="/data")
    assert (c.paths, c.labels, str(c.root)) == (["x/1.jpg", "x/2.jpg"], ["cat", "dog"], "/data")
    (tmp_path / "p.csv").write_text("class_dir,filename\nswimming_pool,swimmingpool001.jpg\nairplane,airplane001.jpg\n")
    p = ImageCollection.from_file_list(tmp_path / "p.csv")
    assert p.paths == ["swimming_pool/swimmingpool001.jpg", "airplane/airplane001.jpg"]
    assert p.labels == ["swimming_pool", "airplane"] and p.root == tmp_path
    (tmp_path / "l.txt").write_text("beach/beach01.jpg\n\nforest/forest02.jpg\n")
    t = ImageCollection.from_file_list(tmp_path / "l.txt")
    assert t.labels == ["beach", "forest"]
    (tmp_path / "official.csv").write_text("images/airplane/airplane001.jpg 0 airplane\nimages/beach/beach002.jpg 1 beach\n")
    o = ImageCollection.from_file_list(tmp_path / "official.csv")
    assert o.paths == ["images/airplane/airplane001.jpg", "images/beach/beach002.jpg"] and o.labels == ["airplane", "beach"]
    (tmp_path / "bad.txt").write_text("beach/beach01.jpg\nflat.jpg\n")
    with pytest.raises(DataError, match=r"bad.txt, line 2.*label column"):
        ImageCollection.from_file_list(tmp_path / "bad.txt")
    (tmp_path / "dup.csv").write_text("path,label\nx/1.jpg,a\nx/1.jpg,a\n")
    with pytest.raises(DataError, match="appears twice"):
        ImageCollection.from_file_list(tmp_path / "dup.csv")


def test_collection_from_dataset_objects(tmp_path):
    class DS:
        root = tmp_path
        image_paths = [tmp_path / "a" / "1.jpg", tmp_path / "b" / "2.jpg"]
        labels = ["a", "b"]

    c = ImageCollection.from_dataset(DS())
    assert c.paths == ["a/1.jpg", "b/2.jpg"] and c.labels == ["a", "b"] and c.root == tmp_path
    pairs = ImageCollection.from_any([("a/1.jpg", "a"), ("a/3.jpg", "a"), ("b/2.jpg", "b")], root=tmp_path,
                                     limit_per_class=1)
    assert pairs.paths == ["a/1.jpg", "b/2.jpg"]


# ------------------------------------------------------------------------------------- image errors
def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"image not found: .*missing\.jpg"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    with pytest.raises(DataError, match=r"garbage\.jpg.*corrupt or truncated"):
        load_image(tmp_path / "garbage.jpg")
    real = _write_images(tmp_path / "ok", classes=("c",), per_class=1, size=(96, 80)) / "c" / "c00.jpg"
    data = real.read_bytes()
    assert load_image(real).size == (96, 80) and load_image(real).mode == "RGB"
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated\.jpg"):
        load_image(tmp_path / "truncated.jpg")


def test_extraction_stops_on_bad_image_naming_it(tmp_path, tiny_enc):
    root = _write_images(tmp_path / "imgs", per_class=2)
    (root / "beta" / "beta01.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    with pytest.raises(DataError, match=r"beta01\.jpg"):
        extract_image_features(ImageCollection.from_folder(root), tiny_enc, tmp_path / "f.npz", batch_size=2,
                               progress=False)
    assert not (tmp_path / "f.npz").exists()


# ------------------------------------------------------------------------------------- extraction
class _Interrupt:
    """on_chunk callback: records chunks and raises KeyboardInterrupt after ``stop_after`` chunks."""

    def __init__(self, stop_after=None):
        self.stop_after, self.seen = stop_after, []

    def __call__(self, k, n):
        self.seen.append(k)
        if self.stop_after is not None and len(self.seen) >= self.stop_after:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def ucm_small(shared_data):
    c = ImageCollection.from_folder(shared_data / "ucm" / "images", limit_per_class=6)
    return ImageCollection(c.root, c.paths[:12], c.labels[:12], source="ucm 2x6")


@pytest.fixture(scope="module")
def standin(standin_spec):
    return load_encoder(standin_spec, device="cpu")


@pytest.mark.slow
@pytest.mark.realdata
def test_resume_after_interrupt_equals_uninterrupted(tmp_path, ucm_small, standin):
    assert ucm_small.classes == ["agricultural", "airplane"]
    ref = extract_image_features(ucm_small, standin, tmp_path / "ref.npz", batch_size=2, chunk_size=4, progress=False)
    out = tmp_path / "run.npz"
    cb = _Interrupt(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        extract_image_features(ucm_small, standin, out, batch_size=2, chunk_size=4, progress=False, on_chunk=cb)
    partial = tmp_path / "run.npz.partial"
    assert not out.exists()
    assert sorted(p.name for p in partial.glob("chunk_*.npz")) == ["chunk_000000.npz", "chunk_000001.npz"]
    assert json.loads((partial / "manifest.json").read_text())["model_meta"]["model"] == standin.model_id
    cb2 = _Interrupt()
    res = extract_image_features(ucm_small, standin, out, batch_size=2, chunk_size=4, progress=False, on_chunk=cb2)
    assert cb2.seen == [2]  # only the missing chunk was computed
    assert not partial.exists()
    loaded = ImageFeatures.load(out)
    np.testing.assert_array_equal(loaded.feats, ref.feats)
    np.testing.assert_array_equal(res.feats, ref.feats)
    assert loaded.paths.tolist() == ucm_small.paths and loaded.labels.tolist() == ucm_small.labels
    assert loaded.feats.shape == (12, 256)
    np.testing.assert_allclose(np.linalg.norm(loaded.feats, axis=1), 1.0, atol=1e-5)
    m = loaded.meta
    assert m["kind"] == "image" and m["n_images"] == 12 and m["image_size"] == [128, 128]
    assert m["model"] == standin.model_id and m["activation"] == "n/a" and "Resize" in m["preprocess"]
    assert m["dtype"] == "float32" and m["device"] == "cpu" and m["kit_version"] and m["date"]
    # same model + same list: reused without computing anything
    cb3 = _Interrupt()
    before = out.stat().st_mtime_ns
    again = extract_image_features(ucm_small, standin, out, batch_size=2, progress=False, on_chunk=cb3)
    assert cb3.seen == [] and out.stat().st_mtime_ns == before
    np.testing.assert_array_equal(again.feats, ref.feats)


def test_refuses_other_model_or_other_list(tmp_path, tiny_enc, tiny_enc_b):
    root = _write_images(tmp_path / "imgs", per_class=4)
    coll = ImageCollection.from_folder(root)
    out = tmp_path / "f.npz"
    with pytest.raises(KeyboardInterrupt):
        extract_image_features(coll, tiny_enc, out, batch_size=2, chunk_size=2, progress=False,
                               on_chunk=_Interrupt(stop_after=1))
    with pytest.raises(ModelMismatchError, match=r"f\.npz\.partial.*delete"):
        extract_image_features(coll, tiny_enc_b, out, batch_size=2, progress=False)
    done = extract_image_features(coll, tiny_enc, out, batch_size=2, progress=False)  # resumes fine
    assert len(done) == 8
    with pytest.raises(ModelMismatchError, match=r"refusing to reuse .*f\.npz.*another --out"):
        extract_image_features(coll, tiny_enc_b, out, batch_size=2, progress=False)
    # another image list is no reason to refuse: the rows of the images still listed are reused
    small = extract_image_features(coll.subset(3), tiny_enc, out, batch_size=2, progress=False)
    np.testing.assert_array_equal(small.feats, done.feats[[0, 1, 2, 4, 5, 6]])
    other = extract_image_features(coll, tiny_enc_b, tmp_path / "g.npz", batch_size=2, progress=False)
    assert not np.allclose(other.feats, done.feats)
    redo = extract_image_features(coll, tiny_enc_b, out, batch_size=2, progress=False, resume=False)  # replaces
    np.testing.assert_allclose(redo.feats, other.feats, atol=1e-6)


def test_encode_texts_dedupes_keeps_order_and_records_model(tmp_path, tiny_enc, tiny_enc_b):
    tf = encode_texts(["b", "a", "b", "c", "a"], tiny_enc, out=tmp_path / "t.npz")
    assert tf.texts.tolist() == ["b", "a", "c"]
    np.testing.assert_allclose(tf.feats, tiny_enc.encode_texts(["b", "a", "c"]), atol=1e-6)
    loaded = TextFeatures.load(tmp_path / "t.npz")
    assert loaded.meta["model"] == tiny_enc.model_id and loaded.meta["kind"] == "text"
    with pytest.raises(ModelMismatchError):
        encode_texts(["b"], tiny_enc_b, out=tmp_path / "t.npz")

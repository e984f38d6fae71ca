"""The model configuration as one named object: setups, their resolution, weights identity, and the checks where two
artefacts meet (image vs text features, official pickles) through the CLI, on a tiny random model (plumbing only)."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest

from rscir_kit import modelsetup
from rscir_kit.cli import main
from rscir_kit.errors import ModelMismatchError, RscirError
from rscir_kit.features import ImageFeatures, TextFeatures, check_same_model
from rscir_kit.modelsetup import SETUPS, ModelSetup, resolve_setup, setup_for, setup_of, weights_sha256

from _tiny_model import make_tiny_model_dir


# ----------------------------------------------------------------------------------------------- setups
def test_named_setups_and_overrides():
    paper = resolve_setup("paper")
    assert (paper.name, paper.activation, paper.precision, paper.numerics) == ("paper", "gelu", "fp32", "official")
    assert resolve_setup(None) == SETUPS["default"] == ModelSetup("default", "auto", "auto", "kit")
    assert resolve_setup("paper", precision="fp16").name == "custom"  # no longer the paper's
    assert resolve_setup("default", activation="official", precision="fp32", numerics="official").name == "paper"
    assert resolve_setup("default", activation="official").activation == "gelu"  # alias of the official code's
    with pytest.raises(RscirError, match="unknown setup 'papper'"):
        resolve_setup("papper")
    with pytest.raises(RscirError, match="numerics must be one of"):
        resolve_setup(numerics="exact")


def test_stored_configuration_is_the_default_for_matching():
    meta = {"model": "m", "activation": "gelu", "precision": "fp32", "numerics": "official", "setup": "paper"}
    assert setup_of(meta) == SETUPS["paper"]
    assert setup_for(meta) == SETUPS["paper"]                      # nothing said: take the artefact's
    assert setup_for(meta, numerics="kit").numerics == "kit"       # one field overridden, the rest kept
    assert setup_for(meta, numerics="kit").activation == "gelu"
    assert setup_for(meta, setup="default") == SETUPS["default"]   # a named setup replaces it
    assert setup_of({"imported": "official pickle"}) is None       # an official pickle records none
    assert setup_of({"activation": "n/a", "precision": "fp32"}).activation == "auto"
    assert modelsetup.flags_for(meta) == "--setup paper"
    assert modelsetup.flags_for(dict(meta, precision="fp16", setup="custom")) == \
        "--activation gelu --precision fp16 --numerics official"


def test_weights_hash_is_computed_once_per_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setattr(modelsetup.config, "weights_cache", lambda: tmp_path / "cache")
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc" * 1000)
    import hashlib

    want = hashlib.sha256(b"abc" * 1000).hexdigest()
    assert weights_sha256(f) == want
    records = list((tmp_path / "cache" / "sha256").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["sha256"] == want
    # the second call reads the record (proved by planting a different digest in it), not the file
    planted = json.loads(records[0].read_text())
    planted["sha256"] = "f" * 64
    records[0].write_text(json.dumps(planted))
    assert weights_sha256(f) == "f" * 64
    # same size, new content and mtime: hashed again
    f.write_bytes(b"abd" * 1000)
    os.utime(f, ns=(planted["mtime_ns"] + 10**9, planted["mtime_ns"] + 10**9))
    assert weights_sha256(f) == hashlib.sha256(b"abd" * 1000).hexdigest()


def test_same_size_other_weights_are_refused_by_hash():
    a = {"model": "ViT-B-32:/w/a.pt", "model_name": "ViT-B-32:w/a.pt", "weights_bytes": 100, "activation": "gelu",
         "weights_sha256": "a" * 64, "architecture": "ViT-B-32", "precision": "fp32"}
    with pytest.raises(ModelMismatchError, match="weights_sha256"):
        check_same_model(a, dict(a, weights_sha256="b" * 64))
    # the same file under another spec (preset name vs ARCH:/path) is the same model
    check_same_model(a, dict(a, model="remoteclip-vit-b-32", model_name="remoteclip-vit-b-32"))
    with pytest.raises(ModelMismatchError, match=r"precision: 'fp32' vs 'fp16'.*--model ViT-B-32:/w/a.pt "
                                                 r"--activation gelu --precision fp32"):
        check_same_model(a, dict(a, precision="fp16"))


# ------------------------------------------------------------------------------------------- CLI, tiny model
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("setup")
    model = make_tiny_model_dir(root / "tiny-clip")
    images = root / "images"
    rng = np.random.default_rng(0)
    for c, colour in (("beach", (200, 180, 90)), ("forest", (30, 120, 40))):
        (images / c).mkdir(parents=True)
        for i in range(4):
            px = np.clip(np.array(colour)[None, None] + rng.integers(0, 50, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(images / c / f"{c}{i}.png")
    queries = root / "queries.csv"
    rows = [{"query_path": f"beach/beach{i}.png", "text": "with trees", "attribute": "cover",
             "positives": ";".join(f"forest/forest{j}.png" for j in range(4))} for i in range(4)]
    pd.DataFrame(rows).to_csv(queries, index=False)
    return root, model, images, queries


def _extract(tiny, out, *flags):
    root, model, images, _ = tiny
    return main(["extract", "--images", str(images), "--out", str(out), "--model", f"local-dir:{model}",
                 "--device", "cpu", "--quiet", *flags])


def test_paper_setup_travels_from_features_to_evaluation(tiny, capsys):
    root, model, images, queries = tiny
    feats = root / "paper.npz"
    assert _extract(tiny, feats, "--setup", "paper") == 0
    meta = ImageFeatures.load(feats).meta
    assert (meta["setup"], meta["activation"], meta["precision"], meta["numerics"]) == ("paper", "gelu", "fp32",
                                                                                         "official")
    assert len(meta["weights_sha256"]) == 64 and meta["architecture"].startswith("custom:")
    # evaluate, told nothing about the configuration, builds text features the paper's way
    out = root / "r.csv"
    assert main(["evaluate", "queries", "--features", str(feats), "--queries", str(queries), "--out", str(out),
                 "--quiet"]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert set(table["activation"]) == {"gelu"} and set(table["precision"]) == {"fp32"}
    assert set(table["weights_sha256"]) == {meta["weights_sha256"]}
    assert set(table["setup"]) == {"paper"} and set(table["numerics"]) == {"official"}
    assert {"p@5", "r@20"} <= set(table.columns)
    printed = capsys.readouterr().out
    assert "P@5" in printed and "configuration:" in printed


def test_mixing_setups_is_refused_with_the_fix(tiny, capsys):
    root, model, images, queries = tiny
    feats, texts = root / "default.npz", root / "paper_texts.npz"
    assert _extract(tiny, feats) == 0
    (root / "t.txt").write_text("with trees\n")
    assert main(["encode-text", "--texts-file", str(root / "t.txt"), "--out", str(texts), "--model",
                 f"local-dir:{model}", "--device", "cpu", "--activation", "quickgelu"]) == 0
    capsys.readouterr()
    code = main(["evaluate", "queries", "--features", str(feats), "--queries", str(queries), "--text-features",
                 str(texts), "--quiet", "--numerics", "kit"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "activation: 'gelu' vs 'quickgelu'" in err and f"--model local-dir:{model}" in err
    # encode-text told to match the features takes their configuration: then it agrees
    assert main(["encode-text", "--texts-file", str(root / "t.txt"), "--out", str(root / "match.npz"),
                 "--features", str(feats), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert TextFeatures.load(root / "match.npz").meta["activation"] == ImageFeatures.load(feats).meta["activation"]
    # and overriding the stored activation while matching is refused
    assert main(["encode-text", "--texts-file", str(root / "t.txt"), "--out", str(root / "bad.npz"),
                 "--features", str(feats), "--device", "cpu", "--activation", "quickgelu"]) == 2
    assert "activation" in capsys.readouterr().err


def test_official_pickle_needs_a_stated_activation(tiny, capsys):
    root, model, images, queries = tiny
    f = ImageFeatures.load(root / "paper.npz") if (root / "paper.npz").exists() else None
    if f is None:
        assert _extract(tiny, root / "paper.npz", "--setup", "paper") == 0
        f = ImageFeatures.load(root / "paper.npz")
    pkl = root / "patternnet_tiny.pkl"
    with open(pkl, "wb") as fh:
        pickle.dump({"feats": f.feats, "labels": list(f.labels), "paths": list(f.paths)}, fh)
    base = ["evaluate", "queries", "--features", str(pkl), "--queries", str(queries), "--quiet",
            "--model", f"local-dir:{model}"]
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "records no activation" in err and "--setup paper" in err and len(err.strip().splitlines()) == 1
    assert main(base[:-2]) == 2
    assert "records no model" in capsys.readouterr().err
    out = root / "pk.csv"
    assert main(base + ["--setup", "paper", "--out", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert set(table["activation"]) == {"gelu"} and set(table["precision"]) == {"fp32"}


# ------------------------------------------------------------- issue 10 item 2: same-size weights, other content
@pytest.fixture(scope="module")
def twin(tiny, tmp_path_factory):
    """A second tiny model of the same architecture and file size, other weights (a fine-tune look-alike)."""
    root, model, images, queries = tiny
    other = make_tiny_model_dir(tmp_path_factory.mktemp("twin") / "tiny-clip", seed=1)
    assert (other / "open_clip_model.safetensors").stat().st_size == (model / "open_clip_model.safetensors").stat().st_size
    return other


def test_same_size_weights_are_not_reused_resumed_or_mixed(tiny, twin, tmp_path, capsys):
    from rscir_kit.encoders import load_encoder
    from rscir_kit.features import extract_image_features

    root, model, images, queries = tiny
    a = load_encoder(f"local-dir:{model}", device="cpu")
    b = load_encoder(f"local-dir:{twin}", device="cpu")
    assert a.meta["model_name"] == b.meta["model_name"] and a.meta["weights_bytes"] == b.meta["weights_bytes"]
    assert a.meta["weights_sha256"] != b.meta["weights_sha256"]
    out = tmp_path / "f.npz"
    extract_image_features(images, a, out, progress=False)
    with pytest.raises(ModelMismatchError, match="weights_sha256"):  # reuse of another model's file
        extract_image_features(images, b, out, progress=False)

    class Stop(Exception):
        pass

    def stop(k, n):
        raise Stop

    part = tmp_path / "p.npz"
    with pytest.raises(Stop):
        extract_image_features(images, a, part, chunk_size=4, batch_size=4, progress=False, on_chunk=stop)
    with pytest.raises(ModelMismatchError, match="weights_sha256"):  # resuming with other weights
        extract_image_features(images, b, part, chunk_size=4, batch_size=4, progress=False)
    # evaluate with the look-alike's text tower is refused too
    capsys.readouterr()
    assert main(["evaluate", "queries", "--features", str(out), "--queries", str(queries), "--model",
                 f"local-dir:{twin}", "--device", "cpu", "--quiet"]) == 2
    assert "weights_sha256" in capsys.readouterr().err


def test_search_builds_the_query_encoder_with_the_index_configuration(tiny, capsys):
    root, model, images, queries = tiny
    feats = root / "paper.npz"
    if not feats.exists():
        assert _extract(tiny, feats, "--setup", "paper") == 0
    idx = root / "paper_index"
    assert main(["index", "build", "--features", str(feats), "--out", str(idx), "--fast", "none", "--quiet",
                 "--setup", "paper", "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "--text", "with trees", "--lam", "1", "-k", "3",
                 "--device", "cpu"]) == 0  # no flags: GELU + fp32 from the index's features
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "--text", "with trees", "--lam", "1", "-k", "3", "--device", "cpu",
                 "--activation", "quickgelu"]) == 2
    assert "activation" in capsys.readouterr().err
    assert main(["index", "build", "--features", str(feats), "--out", str(root / "i2"), "--fast", "none", "--quiet",
                 "--setup", "default"]) == 2
    err = capsys.readouterr().err
    assert "was not made with --setup default" in err and len(err.strip().splitlines()) == 1


def test_flags_cannot_relabel_features_made_otherwise(tiny, capsys):
    root, model, images, queries = tiny
    feats = root / "default.npz"
    if not feats.exists():
        assert _extract(tiny, feats) == 0
    (root / "t.txt").write_text("with trees\n")
    assert main(["encode-text", "--texts-file", str(root / "t.txt"), "--out", str(root / "match.npz"),
                 "--features", str(feats), "--device", "cpu"]) == 0
    capsys.readouterr()
    # default features (fp32 on CPU, the tiny model's GELU) evaluated "--setup paper": only the numerics may change,
    # and the run is then called by what it is
    out = root / "relabel.csv"
    assert main(["evaluate", "queries", "--features", str(feats), "--queries", str(queries), "--text-features",
                 str(root / "match.npz"), "--numerics", "official", "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert set(table["numerics"]) == {"official"} and set(table["setup"]) == {"paper"}  # gelu + fp32 + official
    assert main(["evaluate", "queries", "--features", str(feats), "--queries", str(queries), "--text-features",
                 str(root / "match.npz"), "--activation", "quickgelu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "was made with activation=gelu, but the flags ask activation=quickgelu" in err

"""Encoders: the stand-in through local-dir on real UCM images, batch invariance, activation choice, specs, errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rscir_kit import encoders
from rscir_kit.encoders import PRESETS, list_presets, load_encoder
from rscir_kit.errors import RscirError
from rscir_kit.imagesets import load_image

from _tiny_model import TINY_CFG, make_tiny_model_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def standin(standin_spec):
    return load_encoder(standin_spec, device="cpu")


@pytest.fixture(scope="module")
def ucm_images(shared_data):
    root = shared_data / "ucm" / "images"
    if not root.is_dir():
        pytest.skip("UCM images missing")
    files = [root / c / f"{c}{i:02d}.jpg" for c in ("beach", "forest") for i in range(3)]
    return [load_image(f) for f in files]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-clip")


@pytest.mark.slow
@pytest.mark.realdata
def test_standin_unit_norm_256d_on_real_images(standin, ucm_images):
    assert standin.meta["embed_dim"] == 256
    assert standin.meta["image_size"] == [128, 128]
    assert standin.meta["model"].startswith("local-dir:")
    x = standin.encode_images(ucm_images)
    assert x.shape == (6, 256) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    t = standin.encode_texts(["an aerial image of a beach", "an aerial image of a forest"])
    assert t.shape == (2, 256) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    # trained weights were really loaded: each class prefers its own prompt (random weights would not)
    pred = (x @ t.T).argmax(1)
    assert pred.tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.slow
@pytest.mark.realdata
def test_standin_batch_invariance(standin, ucm_images):
    batched = standin.encode_images(ucm_images, batch_size=6)
    single = np.concatenate([standin.encode_images([im]) for im in ucm_images])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    import torch

    tensor = torch.stack([standin.preprocess(im) for im in ucm_images])
    np.testing.assert_allclose(standin.encode_images(tensor, batch_size=4), batched, atol=1e-5)
    texts = ["a beach with waves", "dense forest", "many cars parked", "a runway", "a harbor with boats"]
    tb = standin.encode_texts(texts, batch_size=256)
    ts = np.concatenate([standin.encode_texts([s], batch_size=1) for s in texts])
    np.testing.assert_allclose(tb, ts, atol=1e-5)
    assert not np.allclose(tb[0], tb[1])  # different texts, different embeddings


def test_tiny_local_dir_reads_size_and_dim(tiny_dir):
    enc = load_encoder(f"local-dir:{tiny_dir}", device="cpu")
    assert enc.meta["image_size"] == [48, 48]
    assert enc.meta["embed_dim"] == TINY_CFG["embed_dim"]
    assert enc.meta["activation"] == "gelu"
    assert load_encoder(str(tiny_dir), device="cpu").model_id == enc.model_id  # bare folder = local-dir:
    from PIL import Image

    x = enc.encode_images([Image.new("RGB", (70, 50), (i * 40, 20, 200 - i * 30)) for i in range(3)])
    assert x.shape == (3, 24)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_activation_choice_changes_the_network(tiny_dir):
    gelu = load_encoder(f"local-dir:{tiny_dir}", device="cpu", activation="gelu")
    quick = load_encoder(f"local-dir:{tiny_dir}", device="cpu", activation="quickgelu")
    official = load_encoder(f"local-dir:{tiny_dir}", device="cpu", activation="official")
    assert (gelu.meta["activation"], quick.meta["activation"], official.meta["activation"]) == ("gelu", "quickgelu", "gelu")
    assert official.meta["activation_requested"] == "official"
    texts = ["a beach", "a forest"]
    assert not np.allclose(gelu.encode_texts(texts), quick.encode_texts(texts), atol=1e-4)
    np.testing.assert_allclose(gelu.encode_texts(texts), official.encode_texts(texts), atol=1e-6)
    with pytest.raises(RscirError, match="activation"):
        load_encoder(f"local-dir:{tiny_dir}", activation="relu")


def test_auto_activation_per_spec():
    plan = encoders._parse_spec("ViT-B-32:openai", None)
    assert plan.auto_quick_gelu and plan.model_name == "ViT-B-32"
    assert not encoders._parse_spec("ViT-B-32:laion2b_s34b_b79k", None).auto_quick_gelu
    assert encoders._parse_spec("ViT-L-14-quickgelu:dfn2b", None).auto_quick_gelu
    # OpenAI-descended weights -> QuickGELU; SkyCLIP ViT-B/32 starts from laion2b_e16 (GELU), per SkyScript's README
    assert {n for n, p in PRESETS.items() if p.activation == "gelu"} == {"skyclip-vit-b-32"}
    assert all(p.activation == "quickgelu" for n, p in PRESETS.items() if n != "skyclip-vit-b-32")
    assert encoders._parse_spec("openai-vit-l-14", None).model_id == "openai-vit-l-14"
    assert encoders._parse_spec("ViT-L-14:openai", None).short_name == "openai-vit-l-14"


def test_checkpoint_file_into_arch_equals_local_dir(tiny_dir, tmp_path):
    import open_clip
    import torch
    from safetensors.torch import load_file

    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    (cfg_dir / "rscir-tiny-test.json").write_text(__import__("json").dumps(TINY_CFG))
    open_clip.add_model_config(cfg_dir)
    ckpt = tmp_path / "weights" / "tiny.pt"
    ckpt.parent.mkdir()
    torch.save(load_file(str(tiny_dir / "open_clip_model.safetensors")), ckpt)
    a = load_encoder(f"local-dir:{tiny_dir}", device="cpu")
    b = load_encoder(f"rscir-tiny-test:{ckpt}", device="cpu")
    assert b.meta["model_name"] == "rscir-tiny-test:weights/tiny.pt"
    assert b.meta["checkpoint"] == str(ckpt.resolve())
    np.testing.assert_allclose(a.encode_texts(["a harbor"]), b.encode_texts(["a harbor"]), atol=1e-6)


def test_unknown_specs_give_clear_errors(tmp_path):
    with pytest.raises(RscirError, match="not a preset"):
        load_encoder("remoteclip-vit-h-99")
    with pytest.raises(RscirError, match="no open_clip_config.json"):
        load_encoder(f"local-dir:{tmp_path}")
    with pytest.raises(RscirError, match="neither an open_clip tag"):
        load_encoder("ViT-B-32:/no/such/file.pt")
    with pytest.raises(RscirError, match="no weights"):
        load_encoder("ViT-B-32")


def test_preset_checkpoint_found_in_rscir_weights(tmp_path, monkeypatch):
    (tmp_path / "RemoteCLIP-ViT-B-32.pt").write_bytes(b"x" * 10)
    monkeypatch.setenv("RSCIR_WEIGHTS", str(tmp_path))
    plan = encoders._parse_spec("remoteclip-vit-b-32", None)
    assert plan.pretrained == str(tmp_path / "RemoteCLIP-ViT-B-32.pt")
    assert plan.model_name == "ViT-B-32" and plan.auto_quick_gelu
    assert plan.extra["weights_bytes"] == 10


def test_preset_offline_error_names_file_and_remedy(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("RSCIR_WEIGHTS", raising=False)
    with pytest.raises(RscirError) as err:
        encoders._fetch_preset(PRESETS["georsclip-vit-b-32"], str(tmp_path / "empty-cache"))
    msg = str(err.value)
    assert "ckpt/RS5M_ViT-B-32.pt" in msg and "Zilun/GeoRSCLIP" in msg
    assert "RSCIR_WEIGHTS as RS5M_ViT-B-32.pt" in msg and "ARCH:/path/to/RS5M_ViT-B-32.pt" in msg


def test_list_presets_table():
    table = list_presets()
    assert set(table["name"]) == set(PRESETS)
    assert {"openai-vit-l-14", "remoteclip-vit-l-14", "georsclip-vit-b-32", "skyclip-vit-l-14"} <= set(table["name"])
    assert table["description"].str.len().min() > 10


_LOAD_SNIPPET = (
    "import sys; from rscir_kit.encoders import load_encoder; "
    "e = load_encoder(sys.argv[1], device='cpu'); print('DIM', e.meta['embed_dim'])"
)


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("cache", ["fresh", "unwritable"])
def test_standin_offline_leaves_the_hf_cache_alone(standin_spec, tmp_path, cache):
    """Offline, with only HF_HUB_OFFLINE set: the stand-in builds its text tower from its bundled seed; the user's hub
    cache is neither needed nor written (fresh or unwritable alike)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("HF_HOME", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    hub = tmp_path / "hub" if cache == "fresh" else Path("/dev/null/hub")
    env["HF_HUB_CACHE"] = str(hub)
    r = subprocess.run([sys.executable, "-c", _LOAD_SNIPPET, standin_spec], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "DIM 256" in r.stdout
    if cache == "fresh":
        assert not hub.exists() or not any(hub.rglob("*")), sorted(hub.rglob("*"))[:5]


@pytest.mark.slow
@pytest.mark.realdata
def test_standin_without_seed_fails_with_clear_message(standin_spec, tmp_path):
    """A copy of the stand-in without its hf_hub_cache seed, offline: the error says which env vars to set."""
    src = Path(standin_spec[len("local-dir:"):])
    copy = tmp_path / "standin-noseed"
    copy.mkdir()
    for f in src.iterdir():
        if f.is_file():
            os.symlink(f, copy / f.name)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-hub"))
    r = subprocess.run([sys.executable, "-c", _LOAD_SNIPPET, f"local-dir:{copy}"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "HF_HUB_CACHE" in r.stderr and "hf_hub_cache" in r.stderr


def test_precision_plumbing(tiny_dir):
    """Half precision (what 'auto' picks on CUDA) runs end to end and still returns float32 unit rows."""
    import torch
    from PIL import Image

    assert encoders._resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert encoders._resolve_precision("auto", torch.device("cpu")) == "fp32"
    ims = [Image.new("RGB", (60, 60), (30 * i, 50, 90)) for i in range(3)]
    full = load_encoder(f"local-dir:{tiny_dir}", device="cpu")
    half = load_encoder(f"local-dir:{tiny_dir}", device="cpu", precision="fp16")
    assert full.meta["dtype"] == "float32" and half.meta["dtype"] == "float16"
    x = half.encode_images(ims)
    assert x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(x, full.encode_images(ims), atol=5e-3)
    with pytest.raises(RscirError, match="precision"):
        load_encoder(f"local-dir:{tiny_dir}", precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(RscirError, match="CUDA is not available"):
            load_encoder(f"local-dir:{tiny_dir}", device="cuda")

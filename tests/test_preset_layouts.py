"""Each preset's published checkpoint layout, at full size: the real architecture is built, a synthetic checkpoint is
written in the exact published layout under the published file name in $RSCIR_WEIGHTS, and the preset loads it
through the same code as the real file (plain state dict: RemoteCLIP and the converted GeoRSCLIP file; open_clip
training checkpoint with ``state_dict`` and ``module.`` keys inside the SkyCLIP zip).

ViT-L-14 presets are not built at full size here: one build took 11 s and its fp32 checkpoint is 1.6 GiB to write,
hash, zip and read on two shared cores (measured on the CI machine); their layouts are the same code paths, tested
under the real architecture name with a tiny config in test_preset_downloads.py. Random weights: plumbing only.
"""
from __future__ import annotations

import inspect
import io
import re
import zipfile
from pathlib import Path

import pytest

from rscir_kit import encoders
from rscir_kit.encoders import PRESETS, load_encoder

FULL_SIZE = ["remoteclip-rn50", "remoteclip-vit-b-32", "georsclip-vit-b-32", "skyclip-vit-b-32"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL_SIZE)
def test_preset_loads_its_published_layout_at_full_size(name, tmp_path, monkeypatch):
    import open_clip
    import torch

    p = PRESETS[name]
    torch.manual_seed(0)
    sd = open_clip.create_model(p.arch).state_dict()  # the real architecture
    weights = tmp_path / "weights"
    weights.mkdir()
    if p.layout == "training_checkpoint":
        buf = io.BytesIO()
        torch.save({"epoch": 20, "name": name, "state_dict": {"module." + k: v for k, v in sd.items()}}, buf)
        with zipfile.ZipFile(weights / p.checkpoint_name, "w") as z:  # the published zip, as downloaded
            z.writestr(f"{Path(p.checkpoint_name).stem}/checkpoints/{p.member_suffix}", buf.getvalue())
    else:
        torch.save(sd, weights / p.checkpoint_name)
    monkeypatch.setenv("RSCIR_WEIGHTS", str(weights))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the kit's cache (unpacked zips, hashes) starts empty
    enc = load_encoder(name, device="cpu")
    assert enc.meta["activation"] == p.activation and enc.meta["architecture"] == p.arch
    assert len(enc.meta["weights_sha256"]) == 64
    loaded = enc.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    if p.layout == "training_checkpoint":  # unpacked into the kit's cache, the zip in $RSCIR_WEIGHTS left alone
        assert (weights / p.checkpoint_name).is_file()
        assert list((tmp_path / "home" / ".cache" / "rscir_kit" / "weights" / name).glob(p.member_suffix))


def test_every_preset_names_its_provenance_and_layout():
    table = encoders.list_presets()
    assert set(table["name"]) == set(PRESETS) and "remoteclip-rn50" in PRESETS
    for p in PRESETS.values():
        assert ("github.com/" in p.provenance) or ("open_clip pretrained tag" in p.provenance), p.name
        assert p.layout in ("state_dict", "training_checkpoint")
    sky = PRESETS["skyclip-vit-b-32"]
    assert (sky.activation, sky.checkpoint_name, sky.member_suffix) == ("gelu", "SkyCLIP_ViT_B32_top50pct.zip",
                                                                        "epoch_20.pt")
    assert "laion2b_e16" in sky.provenance and "ITRA" in PRESETS["remoteclip-vit-l-14"].provenance


def test_quickgelu_warning_filter_matches_open_clip():
    """The filter that silences open_clip's QuickGELU warning for an explicit activation="gelu" matches the wording of
    the installed open_clip (the supported versions, >= 3.3, share it)."""
    import open_clip.factory

    src = inspect.getsource(open_clip.factory)
    found = re.search(r'f"(QuickGELU mismatch[^"]*)"', src)
    assert found, "open_clip no longer emits the QuickGELU mismatch warning this filter expects"
    assert re.match(encoders.QUICKGELU_WARNING, found.group(1))

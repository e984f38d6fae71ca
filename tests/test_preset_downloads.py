"""Every preset through the download code a user with internet runs, offline: a local server on 127.0.0.1 shaped like
the Hugging Face hub (HF_ENDPOINT) and like the SkyScript S3 URL serves synthetic checkpoints in each preset's exact
published layout; each preset loads in a fresh process with an empty cache, then again from the cache; an interrupted
zip download resumes; a damaged file gives a clear error.

To keep this fast on small CPUs the subprocesses register tiny open_clip configs under the presets' real architecture
names (ViT-L-14, ViT-B-32, RN50): the key layout, the file formats and the whole loading path are the real ones, only
the widths and depths are small (full-size builds are tested in test_preset_layouts.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rscir_kit.encoders import PRESETS

from _fake_hub import FakeHub

REPO = Path(__file__).resolve().parents[1]
_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY_CONFIGS = {
    "ViT-L-14": {"embed_dim": 16, "vision_cfg": {"image_size": 28, "layers": 1, "width": 32, "patch_size": 14,
                                                 "head_width": 16}, "text_cfg": _TEXT},
    "ViT-B-32": {"embed_dim": 16, "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "patch_size": 32,
                                                 "head_width": 16}, "text_cfg": _TEXT},
    "RN50": {"embed_dim": 16, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16,
                                             "patch_size": None}, "text_cfg": _TEXT},
}

_MAKE = r'''
import io, json, sys, zipfile, torch, open_clip
from pathlib import Path
open_clip.add_model_config(sys.argv[1])
from rscir_kit.encoders import PRESETS
out = Path(sys.argv[2])
for p in PRESETS.values():
    torch.manual_seed(len(p.name))
    model = open_clip.create_model(p.arch)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(sd, out / f"{p.name}.reference.pt")
    buf = io.BytesIO()
    if p.layout == "training_checkpoint":  # open_clip's training checkpoint: DDP "module." keys, optimizer, epoch
        torch.save({"epoch": 20, "name": p.name, "state_dict": {"module." + k: v for k, v in sd.items()},
                    "optimizer": {"state": {}, "param_groups": []}}, buf)
        member = Path(p.url).stem + "/checkpoints/" + p.member_suffix
        zbuf = io.BytesIO()
        with zipfile.ZipFile(zbuf, "w") as z:
            z.writestr(member, buf.getvalue())
        (out / f"{p.name}.served").write_bytes(zbuf.getvalue())
        (out / f"{p.name}.member").write_bytes(buf.getvalue())
    else:  # a plain state dict (RemoteCLIP, the converted GeoRSCLIP file, open_clip's hub copies of OpenAI CLIP)
        torch.save(sd, buf)
        (out / f"{p.name}.served").write_bytes(buf.getvalue())
print("MADE")
'''

_LOAD = r'''
import json, sys, open_clip, torch
from dataclasses import replace
open_clip.add_model_config(sys.argv[1])
from rscir_kit import encoders
from rscir_kit.errors import RscirError
base, files = sys.argv[2], sys.argv[3]
for name in sys.argv[4:]:
    p = encoders.PRESETS[name]
    if p.url:  # the same preset, its S3 URL pointed at the local server
        encoders.PRESETS[name] = replace(p, url=f"{base}/plain/{p.url.rsplit('/', 1)[1]}")
    try:
        enc = encoders.load_encoder(name, device="cpu")
    except RscirError as exc:
        print(json.dumps({"name": name, "error": str(exc)}))
        continue
    ref = torch.load(f"{files}/{name}.reference.pt", map_location="cpu")
    sd = enc.model.state_dict()
    match = set(ref) <= set(sd) and all(torch.equal(sd[k].float(), ref[k].float()) for k in ref)
    print(json.dumps({"name": name, "match": match, "meta": {k: enc.meta.get(k) for k in
                      ("activation", "weights_sha256", "architecture", "model_name", "checkpoint")}}))
'''


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    cfg = root / "configs"
    cfg.mkdir()
    for arch, c in TINY_CONFIGS.items():
        (cfg / f"{arch}.json").write_text(json.dumps(c))
    files = root / "files"
    files.mkdir()
    r = subprocess.run([sys.executable, "-c", _MAKE, str(cfg), str(files)], env=_env(root / "gen-home", None),
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "MADE" in r.stdout, r.stderr[-3000:]
    return root, cfg, files


def _env(home: Path, endpoint: str | None, offline: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "RSCIR_", "TRANSFORMERS_"))}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), HF_HUB_CACHE=str(home / "hf-hub"), HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="1" if offline else "0")
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    return env


def _hub_for(files: Path) -> FakeHub:
    import open_clip

    hub = FakeHub()
    for p in PRESETS.values():
        data = (files / f"{p.name}.served").read_bytes()
        if p.tag:  # open_clip fetches its tags from the hub (open_clip_pytorch_model.bin of the tag's repo)
            repo = open_clip.get_pretrained_cfg(p.arch, p.tag)["hf_hub"].strip("/")
            hub.hub[(repo, "open_clip_pytorch_model.bin")] = data
        elif p.hf_repo:
            hub.hub[(p.hf_repo, p.hf_file)] = data
        else:
            hub.plain[Path(p.url).name] = data
    return hub


def _load(served, home, hub, *names, offline=False) -> dict:
    """Load ``names`` in one fresh Python process; {name: result} (result: match + meta, or error)."""
    root, cfg, files = served
    r = subprocess.run([sys.executable, "-c", _LOAD, str(cfg), hub.url, str(files), *names],
                       env=_env(home, hub.url, offline), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    results = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{"name"')]
    return {res["name"]: res for res in results}


@pytest.mark.slow
def test_every_preset_downloads_and_loads_in_a_fresh_process(served, tmp_path):
    """One fresh process, an empty HOME and hub cache: every preset is fetched from the local server through the
    code a user with internet runs, and loads exactly the served weights; a second process, offline, loads them
    all from the cache without a single request."""
    root, cfg, files = served
    with _hub_for(files) as hub:
        results = _load(served, tmp_path / "home", hub, *sorted(PRESETS))
        assert sorted(results) == sorted(PRESETS)
        for name, res in results.items():
            p = PRESETS[name]
            assert "error" not in res, f"{name}: {res.get('error')}"
            assert res["match"], f"{name}: the weights in the model differ from the served checkpoint"
            assert res["meta"]["activation"] == p.activation and res["meta"]["model_name"] == name
            weights = files / (f"{name}.member" if p.url else f"{name}.served")
            assert res["meta"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest(), name
        served_paths = {path for m, path, _ in hub.log if m == "GET"}
        assert len(served_paths) == len(PRESETS)  # each preset's file was downloaded once
        n = len(hub.log)
        again = _load(served, tmp_path / "home", hub, *sorted(PRESETS), offline=True)
        assert all(res.get("match") for res in again.values()), again
        assert len(hub.log) == n  # all from the cache


@pytest.mark.slow
def test_interrupted_zip_download_resumes(served, tmp_path):
    root, cfg, files = served
    name = "skyclip-vit-b-32"
    with _hub_for(files) as hub:
        zip_name = Path(PRESETS[name].url).name
        size = len(hub.plain[zip_name])
        hub.cut_once[zip_name] = size // 2
        res = _load(served, tmp_path / "home", hub, name)[name]
        assert "Run again to resume" in res["error"]
        part = tmp_path / "home" / ".cache" / "rscir_kit" / "weights" / name / (zip_name + ".part")
        assert part.stat().st_size == size // 2
        assert _load(served, tmp_path / "home", hub, name)[name]["match"]
        assert ("GET", f"/plain/{zip_name}", f"bytes={size // 2}-") in hub.log  # the second run asked for the rest
        assert not part.exists() and not (part.parent / zip_name).exists()  # unpacked; the zip is not kept


@pytest.mark.slow
def test_damaged_downloads_give_clear_errors(served, tmp_path):
    root, cfg, files = served
    with _hub_for(files) as hub:
        zip_name = Path(PRESETS["skyclip-vit-l-14"].url).name
        hub.plain[zip_name] = b"<html>Access denied</html>"
        hub.hub[("chendelong/RemoteCLIP", "RemoteCLIP-RN50.pt")] = b"not a checkpoint"
        res = _load(served, tmp_path / "home", hub, "skyclip-vit-l-14", "remoteclip-rn50")
        zip_err, pt_err = res["skyclip-vit-l-14"]["error"], res["remoteclip-rn50"]["error"]
        assert "is not a readable zip" in zip_err and "run again" in zip_err
        assert not list((tmp_path / "home" / ".cache" / "rscir_kit" / "weights").rglob("*.zip"))  # bad file removed
        assert "RemoteCLIP-RN50.pt" in pt_err and "damaged" in pt_err, pt_err

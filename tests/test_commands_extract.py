"""CLI ``extract`` / ``encode-text`` end to end (stand-in model on real UCM images)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rscir_kit import cli
from rscir_kit.encoders import load_encoder
from rscir_kit.features import ImageFeatures, TextFeatures
from rscir_kit.imagesets import load_image

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.realdata]


@pytest.fixture(scope="module")
def ucm_root(shared_data):
    root = shared_data / "ucm" / "images"
    if not root.is_dir():
        pytest.skip("UCM images missing")
    return root


def test_extract_folder_via_cli_main(tmp_path, ucm_root, standin_spec, capsys):
    out = tmp_path / "ucm2.npz"
    rc = cli.main(["extract", "--images", str(ucm_root), "--model", standin_spec, "--out", str(out),
                   "--limit-per-class", "2", "--batch-size", "16", "--device", "cpu", "--quiet"])
    assert rc == 0
    f = ImageFeatures.load(out)
    assert f.feats.shape == (42, 256) and len(set(f.labels.tolist())) == 21
    assert f.paths[0] == "agricultural/agricultural00.jpg" and f.paths[1] == "agricultural/agricultural01.jpg"
    assert f.meta["model"] == standin_spec and f.meta["n_images"] == 42
    # the stored rows are the encoder's embeddings of those files
    enc = load_encoder(standin_spec, device="cpu")
    direct = enc.encode_images([load_image(ucm_root / p) for p in f.paths[[0, 41]]])
    np.testing.assert_allclose(f.feats[[0, 41]], direct, atol=1e-5)
    assert "wrote" in capsys.readouterr().err
    rc = cli.main(["extract", "--images", str(ucm_root), "--model", standin_spec, "--out", str(out),
                   "--limit-per-class", "2", "--quiet"])
    assert rc == 0 and "reused" in capsys.readouterr().err


def test_extract_file_list_and_encode_text_subprocess(tmp_path, ucm_root, standin_spec):
    lst = tmp_path / "list.csv"
    lst.write_text("path,label\nbeach/beach05.jpg,beach\nforest/forest07.jpg,forest\nriver/river11.jpg,river\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "rscir_kit", "extract", "--file-list", str(lst), "--root", str(ucm_root),
                        "--model", standin_spec, "--out", str(tmp_path / "f.npz"), "--quiet"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    f = ImageFeatures.load(tmp_path / "f.npz")
    assert f.paths.tolist() == ["beach/beach05.jpg", "forest/forest07.jpg", "river/river11.jpg"]
    assert f.labels.tolist() == ["beach", "forest", "river"]

    texts = tmp_path / "texts.txt"
    texts.write_text("an aerial image of a beach\n\n  \nan aerial image of a forest\nan aerial image of a beach\n")
    r = subprocess.run([sys.executable, "-m", "rscir_kit", "encode-text", "--model", standin_spec,
                        "--texts-file", str(texts), "--out", str(tmp_path / "t.npz")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    t = TextFeatures.load(tmp_path / "t.npz")
    assert t.texts.tolist() == ["an aerial image of a beach", "an aerial image of a forest"]
    assert t.meta["model"] == standin_spec and t.feats.shape == (2, 256)
    sims = f.feats @ t.feats.T
    assert sims[0, 0] > sims[0, 1] and sims[1, 1] > sims[1, 0]  # beach image -> beach text, forest -> forest


def test_cli_errors_are_clear(tmp_path, standin_spec, capsys):
    rc = cli.main(["extract", "--images", str(tmp_path / "nope"), "--model", standin_spec, "--out",
                   str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and "image folder not found" in err and "nope" in err
    rc = cli.main(["encode-text", "--model", standin_spec, "--texts-file", str(tmp_path / "none.txt"), "--out",
                   str(tmp_path / "t.npz")])
    assert rc == 2 and "texts file not found" in capsys.readouterr().err


def test_sigint_then_rerun_resumes(tmp_path, ucm_root, standin_spec):
    """Real Ctrl-C on the CLI: exit 130, chunks kept; re-running finishes with the same features as one run."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = tmp_path / "f.npz"
    def args(o):
        return ["extract", "--images", str(ucm_root), "--model", standin_spec, "--out", str(o),
                "--limit-per-class", "8", "--batch-size", "8", "--chunk-size", "16", "--quiet"]

    cmd = [sys.executable, "-c",
           "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
           "from rscir_kit.cli import main; sys.exit(main(sys.argv[1:]))"] + args(out)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "f.npz.partial"
    deadline = time.time() + 300
    while time.time() < deadline and not list(partial.glob("chunk_*.npz")) and proc.poll() is None:
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("extraction finished before it could be interrupted")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("extraction finished before the signal arrived")
    assert proc.returncode == 130 and "resume" in err
    kept = len(list(partial.glob("chunk_*.npz")))
    assert kept >= 1 and not out.exists()
    assert cli.main(args(out)) == 0
    ref = tmp_path / "ref.npz"
    assert cli.main(args(ref)) == 0
    np.testing.assert_array_equal(ImageFeatures.load(out).feats, ImageFeatures.load(ref).feats)
    assert ImageFeatures.load(out).feats.shape == (168, 256)

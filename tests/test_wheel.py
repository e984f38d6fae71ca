"""The built wheel carries the published UCM-Com query set: build it, install it into a scratch venv (no editable
checkout on the path), and run `rscir-kit evaluate ucmcom` from outside the repository.

Before: data/ucmcom_queries.csv lived outside the package, so `evaluate ucmcom` failed on any non-editable install."""
import os
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_runs_evaluate_ucmcom(tmp_path):
    from rscir_kit.datasets.ucm import UCM_CLASSES
    from rscir_kit.features import ImageFeatures, TextFeatures

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RSCIR_DATA")}
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(REPO)], check=True, env=env, timeout=600, cwd=tmp_path)
    wheel = next(dist.glob("rscir_kit-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   env=env, timeout=300)
    py = venv / "bin" / "python"
    # the dependencies (torch, pandas, ...) come from this environment's site-packages, as plain paths: its editable
    # rscir_kit hook is not run, so only the wheel provides rscir_kit
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, env=env).stdout.strip()
    Path(purelib, "deps-of-the-test-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True, env=env,
                   timeout=600)
    where = subprocess.run([str(py), "-c", "import rscir_kit; print(rscir_kit.__file__)"], capture_output=True,
                           text=True, check=True, env=env, cwd=tmp_path).stdout.strip()
    assert where.startswith(str(venv)), where

    rng = np.random.default_rng(0)
    names = [f"{c}/{c}{i:02d}.tif" for c in UCM_CLASSES for i in range(100)]
    x = rng.standard_normal((len(names), 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    meta = {"model": "toy", "model_name": "toy"}
    ImageFeatures(x, names, [n.split("/")[0] for n in names], meta).save(tmp_path / "f.npz")
    from rscir_kit.datasets.ucmcom import PUBLISHED_CSV, label_text, load_groups

    texts = sorted({t.format(label=label_text(g)) for g in load_groups(PUBLISHED_CSV)["label"]
                    for t in ("with {label}", "without {label}")})
    t = rng.standard_normal((len(texts), 16)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    TextFeatures(texts, t, meta).save(tmp_path / "t.npz")
    run = subprocess.run([str(venv / "bin" / "rscir-kit"), "evaluate", "ucmcom", "--features", str(tmp_path / "f.npz"),
                          "--text-features", str(tmp_path / "t.npz"), "--methods", "image", "--quiet", "--ks", ""],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "ucmcom: 8000 query pairs" in run.stdout, run.stdout

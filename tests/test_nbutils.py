"""nbutils: parameter resolution from the environment, results.json written atomically, PNG+PDF+CSV outputs."""
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from rscir_kit import nbutils  # noqa: E402
from rscir_kit.datasets import get_benchmark  # noqa: E402
from rscir_kit.errors import DataError  # noqa: E402


@pytest.fixture
def env(monkeypatch, tmp_path):
    for name in ("RSCIR_DATA", "RSCIR_WEIGHTS", "RSCIR_MODEL", "RSCIR_CACHE", "RSCIR_OUTPUT", "RSCIR_DEVICE", "RSCIR_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RSCIR_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("RSCIR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RSCIR_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("RSCIR_MODEL", "ViT-B-32:openai")
    return tmp_path


def test_setup_fills_defaults_from_env(env):
    p = nbutils.setup("03_weicom.ipynb")
    assert p.notebook == "03_weicom"
    assert p.data_root == env / "data" and p.cache_dir == env / "cache"
    assert p.output_dir == env / "out" / "03_weicom" and p.output_dir.is_dir()
    assert p.model == "ViT-B-32:openai" and p.dataset == "ucmcom" and p.size is None
    assert p.lambdas == [round(0.1 * i, 1) for i in range(11)]
    assert p.device == "auto"


def test_setup_explicit_values_win(env, monkeypatch):
    monkeypatch.setenv("RSCIR_DEVICE", "cpu")
    p = nbutils.setup("x", dataset="PatternCom", model="m", data_root=env / "d2", output_dir=env / "o2",
                      lambdas=[1, 0.5, 0.5, 0], size=3, batch_size=8, top_k=5)
    assert p.dataset == "patterncom" and p.model == "m" and p.data_root == env / "d2"
    assert p.lambdas == [0.0, 0.5, 1.0] and p.size == 3 and p.batch_size == 8 and p.extra == {"top_k": 5}
    assert p.device == "cpu"  # "auto" defers to $RSCIR_DEVICE
    assert p.as_dict()["output_dir"] == str(env / "o2")


@pytest.mark.parametrize("kwargs,match", [
    ({"dataset": "imagenet"}, "unknown dataset"),
    ({"lambdas": [0.5, 1.5]}, r"\[0, 1\]"),
    ({"lambdas": []}, "empty"),
    ({"size": 0}, "positive integer"),
    ({"size": 2.5}, "positive integer"),
])
def test_setup_rejects_bad_values(env, kwargs, match):
    with pytest.raises(DataError, match=match):
        nbutils.setup("x", **kwargs)


def test_relative_env_paths_are_taken_from_repo_root(env, monkeypatch):
    monkeypatch.setenv("RSCIR_DATA", "../shared/data")
    monkeypatch.chdir(env)
    changed = nbutils.absolutize_env()
    root = nbutils.repo_root()
    assert root is not None and changed["RSCIR_DATA"] == str((root / "../shared/data").resolve())
    assert os.environ["RSCIR_DATA"] == changed["RSCIR_DATA"]
    assert "RSCIR_CACHE" not in changed  # already absolute


def test_recorder_writes_json_figures_tables(env):
    p = nbutils.setup("05_demo")
    rec = nbutils.Recorder(p)
    data = json.loads((p.output_dir / "results.json").read_text())
    assert data["notebook"] == "05_demo" and data["params"]["model"] == "ViT-B-32:openai"
    rec.record(map={"color": np.float32(12.5), "avg": float("nan")}, best_lambda=np.float64(0.6),
               ids=np.arange(3), where=Path("/x"))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    paths = rec.figure(fig, "curve")
    assert [q.suffix for q in paths] == [".png", ".pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:5] == b"%PDF-"
    csv = rec.table(pd.DataFrame({"a": [1.2345649, 2.0]}), "tab")
    assert pd.read_csv(csv)["a"].tolist() == [1.23456, 2.0]
    data = nbutils.load_results(p.output_dir)
    assert data["map"] == {"color": 12.5, "avg": None}  # NaN → null, valid JSON
    assert data["best_lambda"] == 0.6 and data["ids"] == [0, 1, 2] and data["where"] == "/x"
    assert data["figures"] == {"curve": ["curve.png", "curve.pdf"]} and data["tables"] == {"tab": "tab.csv"}
    assert not [f for f in os.listdir(p.output_dir) if f.startswith(".")]  # no temp files left
    with pytest.raises(KeyError):
        rec.record(figures=1)
    with pytest.raises(ValueError):
        rec.table(pd.DataFrame(), "../escape")
    plt.close(fig)
    listing = nbutils.list_outputs(env / "out")
    assert set(listing) == {"05_demo"}
    assert sorted(Path(f).name for f in listing["05_demo"]["figures"]) == ["curve.pdf", "curve.png"]


def test_new_recorder_starts_fresh(env):
    p = nbutils.setup("x")
    nbutils.Recorder(p).record(old=1)
    nbutils.Recorder(p)
    assert "old" not in nbutils.load_results(p.output_dir)


def test_atomic_write_keeps_old_file_on_error(tmp_path, monkeypatch):
    path = nbutils.write_json_atomic(tmp_path / "r.json", {"a": 1})

    def half_dump(obj, handle, **kw):
        handle.write('{"a": ')
        raise KeyboardInterrupt  # interrupted mid-write

    monkeypatch.setattr(nbutils.json, "dump", half_dump)
    with pytest.raises(KeyboardInterrupt):
        nbutils.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def test_load_results_missing(tmp_path):
    with pytest.raises(DataError, match="run the notebook"):
        nbutils.load_results(tmp_path)


def test_first_run_downloads_ucm_when_absent(env, monkeypatch):
    """On a machine with internet and an empty data root, the notebooks fetch UC Merced themselves."""
    from PIL import Image

    from rscir_kit.datasets import ucm

    calls = []

    def fake_download(root):
        calls.append(root)
        images = root / "UCMerced_LandUse" / "Images"
        for cls in ucm.UCM_CLASSES:
            (images / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8)).save(images / cls / f"{cls}{i:02d}.tif")
        return images

    monkeypatch.setattr(ucm.UCMImages, "download", staticmethod(fake_download))
    p = nbutils.setup("01_x", size=2)
    coll = get_benchmark(p.dataset, data_root=p.data_root, download=True).archive(p.size)
    assert calls == [env / "data" / "ucm"] and len(coll) == 42 and coll.paths[0] == "agricultural/agricultural00.tif"


def test_setup_resolves_relative_variables_without_rewriting_the_environment(env, monkeypatch):
    """Before: every setup() rewrote os.environ (hidden global state); now the paths are resolved, the env kept."""
    monkeypatch.setenv("RSCIR_DATA", "../shared/data")
    monkeypatch.chdir(env)
    p = nbutils.setup("01_x")
    assert p.data_root == (nbutils.repo_root() / "../shared/data").resolve()
    assert os.environ["RSCIR_DATA"] == "../shared/data"


def test_figures_of_a_reduced_run_are_marked(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = nbutils.setup("01_x", output_dir=tmp_path / "o", size=5, device="cpu")
    rec = nbutils.Recorder(params)
    fig, ax = plt.subplots()
    saved = rec.figure(fig, "f")
    assert any("REDUCED RUN: 5 images per class" in t.get_text() for t in fig.texts)
    assert repr(saved) == "saved f.png, f.pdf"  # one line in a notebook, not a list of PosixPaths
    assert rec.record(x=1) is None  # nothing to print at the end of a cell
    full = nbutils.Recorder(nbutils.setup("01_y", output_dir=tmp_path / "p", device="cpu"))
    fig2, _ = plt.subplots()
    full.figure(fig2, "g")
    assert not fig2.texts
    plt.close("all")

"""The main job's runner on toy notebooks: resume (skip what is up to date), partial re-runs merged into one
report, a report consistent with disk after an interrupt, missing data listed at once, a clean console."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from rscir_kit import run_notebooks
from rscir_kit.errors import DataError

REPO = Path(__file__).resolve().parents[1]

BODY = ("from pathlib import Path\n"
        "from rscir_kit import nbutils\n"
        "rec = nbutils.Recorder(output_dir, notebook='{name}')\n"
        "rec.record(value=value * 2, **extra)\n"
        "with open(Path(output_dir).parent / 'calls.txt', 'a') as f:\n"
        "    f.write('{name}\\n')\n")


def _toy(path: Path, name: str, body: str = BODY, needs=None, params="output_dir = None\nvalue = 1\nextra = {}"):
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    if needs is not None:
        nb.metadata["rscir"] = {"needs": needs}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# toy"), cell, nbformat.v4.new_code_cell(body.format(name=name))]
    nbformat.write(nb, path)


def _calls(out: Path) -> list[str]:
    f = out / "calls.txt"
    return f.read_text().split() if f.is_file() else []


@pytest.fixture
def toys(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _toy(nbs / "01_first.ipynb", "first")
    _toy(nbs / "02_second.ipynb", "second")
    return nbs


@pytest.mark.slow
def test_resume_skips_up_to_date_and_reruns_what_changed(toys, tmp_path):
    out = tmp_path / "out"
    run_notebooks.run(notebooks=toys, out=out, parameters={"value": 2}, quiet=True)
    assert _calls(out) == ["first", "second"]
    summary = run_notebooks.run(notebooks=toys, out=out, parameters={"value": 2}, quiet=True)
    assert _calls(out) == ["first", "second"], "an unchanged, finished notebook was executed again"
    assert [n["notebook"] for n in summary["notebooks"]] == ["01_first", "02_second"]
    # another parameter value: both re-run
    run_notebooks.run(notebooks=toys, out=out, parameters={"value": 3}, quiet=True)
    assert _calls(out)[2:] == ["first", "second"]
    # edit one notebook's code: only that one re-runs
    _toy(toys / "02_second.ipynb", "second", body=BODY + "x = 1\n")
    run_notebooks.run(notebooks=toys, out=out, parameters={"value": 3}, quiet=True)
    assert _calls(out)[4:] == ["second"]
    # a results.json changed on disk (e.g. the notebook run by hand into the same folder): re-run
    res = out / "01_first" / "results.json"
    res.write_text(res.read_text().replace('"value": 6', '"value": 7'))
    run_notebooks.run(notebooks=toys, out=out, parameters={"value": 3}, quiet=True)
    assert _calls(out)[5:] == ["first"]
    # --force re-runs everything
    run_notebooks.run(notebooks=toys, out=out, parameters={"value": 3}, quiet=True, force=True)
    assert _calls(out)[6:] == ["first", "second"]
    assert json.loads((out / "01_first" / "results.json").read_text())["value"] == 6


@pytest.mark.slow
def test_only_merges_into_the_existing_report(toys, tmp_path):
    out = tmp_path / "out"
    run_notebooks.run(notebooks=toys, out=out, quiet=True)
    run_notebooks.run(notebooks=toys, out=out, only=["02"], parameters={"value": 5}, quiet=True, force=True)
    state = json.loads((out / "summary.json").read_text())
    assert {k: v["status"] for k, v in state["notebooks"].items()} == {"01_first": "done", "02_second": "done"}
    assert state["notebooks"]["02_second"]["parameters"]["value"] == 5
    assert "value" not in state["notebooks"]["01_first"]["parameters"]
    index = (out / "index.md").read_text()
    assert "### 01_first" in index and "### 02_second" in index
    assert "01_first/results.json" in index and "02_second/results.json" in index


@pytest.mark.slow
def test_interrupt_leaves_a_report_that_matches_disk_and_resumes(toys, tmp_path, monkeypatch):
    import papermill as pm

    out = tmp_path / "out"
    real = pm.execute_notebook

    def interrupted(path, *args, **kwargs):
        if "02_second" in str(path):
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pm, "execute_notebook", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_notebooks.run(notebooks=toys, out=out, quiet=True)
    state = json.loads((out / "summary.json").read_text())
    assert {k: v["status"] for k, v in state["notebooks"].items()} == {"01_first": "done", "02_second": "interrupted"}
    index = (out / "index.md").read_text()
    assert "### 02_second: interrupted" in index and "02_second/results.json" not in index
    assert not (out / ".rscir-notebooks.lock").exists()
    monkeypatch.setattr(pm, "execute_notebook", real)
    summary = run_notebooks.run(notebooks=toys, out=out, quiet=True)
    assert _calls(out) == ["first", "second"], "the finished notebook ran again, or the interrupted one did not"
    assert [n["notebook"] for n in summary["notebooks"]] == ["01_first", "02_second"] and not summary["incomplete"]


def test_a_killed_run_is_reported_incomplete_not_done(tmp_path):
    """A run killed while a notebook executes leaves status 'running' in summary.json (written before it
    started); the report calls it incomplete and the next run redoes it."""
    out = tmp_path / "out"
    out.mkdir()
    state = {"notebooks": {"01_a": {"notebook": "01_a", "status": "running", "executed": str(out / "01_a.ipynb"),
                                    "parameters": {}}}}
    text = run_notebooks.index_markdown(out, state)
    assert "01_a: not finished" in text
    assert not run_notebooks._up_to_date(state["notebooks"]["01_a"], {"digest": "x"}, out)


@pytest.mark.slow
def test_missing_data_is_listed_at_once_and_the_others_run(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _toy(nbs / "01_needs_images.ipynb", "images", needs=["ucm_images"],
         body="raise RuntimeError('could not download the images')")
    _toy(nbs / "02_free.ipynb", "free")
    _toy(nbs / "03_needs_captions.ipynb", "captions", needs=["ucm_captions", "model"])
    empty = tmp_path / "no_data"
    empty.mkdir()
    out = tmp_path / "out"
    summary = run_notebooks.run(notebooks=nbs, out=out, data_root=empty, model=f"local-dir:{tmp_path / 'nope'}",
                                quiet=True)
    assert [n["notebook"] for n in summary["notebooks"]] == ["02_free"]
    assert sorted(s["notebook"] for s in summary["skipped"]) == ["01_needs_images", "03_needs_captions"]
    assert _calls(out) == ["free"], "a notebook whose manual-only data is missing should not even start"
    missing = {m["key"]: m for m in summary["missing"]}
    assert set(missing) == {"ucm_images", "ucm_captions", "model"}
    assert "rscir-kit ucm download" in missing["ucm_images"]["how"] and missing["ucm_images"]["automatic"]
    assert "RSCIR_DATA" in missing["ucm_captions"]["alternative"]
    assert "RSCIR_WEIGHTS" in missing["model"]["alternative"]
    assert missing["model"]["needed_by"] == ["03_needs_captions"]
    index = (out / "index.md").read_text()
    assert "## Missing inputs" in index and "UCM-Captions" in index and "01_needs_images: skipped (data not available)" in index


@pytest.mark.slow
def test_a_real_error_still_stops_the_run(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _toy(nbs / "01_broken.ipynb", "broken", body="raise ValueError('boom')")
    _toy(nbs / "02_never.ipynb", "never")
    with pytest.raises(DataError, match=r"01_broken.ipynb failed .*ValueError: boom"):
        run_notebooks.run(notebooks=nbs, out=tmp_path / "out", quiet=True)
    state = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert state["notebooks"]["01_broken"]["status"] == "failed" and "02_never" not in state["notebooks"]
    assert "01_broken: FAILED" in (tmp_path / "out" / "index.md").read_text()


@pytest.mark.slow
def test_console_is_clean_and_shows_cell_progress(toys, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), RSCIR_WEIGHTS="", RSCIR_MODEL="")
    proc = subprocess.run([sys.executable, "-m", "rscir_kit.run_notebooks", "--notebooks", str(toys), "--out",
                           str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    console = proc.stdout + proc.stderr
    assert "IPKernelApp" not in console and "KeyboardInterrupt" not in console and "Traceback" not in console
    assert "[1/2] 01_first ..." in console and "done in" in console and "(3 cells)" in console  # + the parameters papermill injects
    assert "report:" in console
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert logs == ["01_first.kernel.log", "02_second.kernel.log"]  # the kernel's own chatter went here


def test_report_opens_with_the_setup_and_headline_numbers(tmp_path):
    out = tmp_path / "out"
    for stem, data in {
        "01_extract_embeddings": {"archive_images": 2100, "classes": 21, "query_pairs": 8000},
        "03_weicom": {"best_lambda": 0.1, "best_avg": 18.698, "baseline_avg": {"image": 16.73, "text": 4.36},
                      "n_pairs": 8000, "archive_images": 2100,
                      "map": {"weicom@0.1": {"cars": 12.5, "trees": 20.25, "avg": 18.698}}},
        "07_text_image_retrieval": {"caption_set": "ucm-captions",
                                    "recall": {"t2i_R@1": 10.29, "mR": 35.6}},
    }.items():
        (out / stem).mkdir(parents=True)
        data = dict(data, params={"model": "local-dir:/w/ucm-minilm-standin", "dataset": "ucmcom",
                                  "data_root": "/d", "size": None}, figures={}, tables={})
        (out / stem / "results.json").write_text(json.dumps(data))
    entries = {s: {"notebook": s, "status": "done", "executed": str(out / f"{s}.ipynb"), "seconds": 1.0,
                   "parameters": {}} for s in ("01_extract_embeddings", "03_weicom", "07_text_image_retrieval")}
    state = {"notebooks": entries, "kit": {"version": "0.1.0", "commit": "abc123", "dirty": False,
                                           "source_sha256": "f00"}}
    text = run_notebooks.index_markdown(out, state)
    head = text.split("## Artefacts")[0]
    order = [head.index(s) for s in ("**Model**", "**Dataset**", "**Data root**", "**Size**", "**Kit**",
                                     "## Headline numbers")]
    assert order == sorted(order)
    assert "STAND-IN" in head and "UCM-Com (2100 archive images, 21 classes, 8000 query pairs)" in head
    assert "commit abc123" in head and "full benchmark" in head
    assert "UCM-Com, WeiCom best λ = 0.1: mAP 18.70** (best baseline: image 16.73)" in head
    assert "Table 2, WeiCom (λ=0.1) row: cars 12.50, trees 20.25, avg 18.70" in head
    assert "mR 35.60" in head
    assert text.index("## Artefacts") < text.index("03_weicom/results.json")


def test_reduced_run_is_marked_in_the_report(tmp_path):
    state = {"notebooks": {"02_b": {"notebook": "02_b", "status": "skipped", "parameters": {"size": 5}}}}
    assert "REDUCED RUN: 5 images per class" in run_notebooks.index_markdown(tmp_path, state)


def test_concurrent_runs_into_one_folder_are_refused(toys, tmp_path):
    from filelock import FileLock

    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / run_notebooks.LOCK)):
        with pytest.raises(DataError, match="another `rscir-kit notebooks` is writing"):
            run_notebooks.run(notebooks=toys, out=out, quiet=True)


def test_strip_stream_is_a_git_clean_filter(tmp_path):
    import io

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("1", execution_count=4, outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="1\n")])]
    nb.metadata["widgets"] = {"x": 1}
    dst = io.StringIO()
    run_notebooks.strip_stream(io.StringIO(nbformat.writes(nb)), dst)
    clean = nbformat.reads(dst.getvalue(), as_version=4)
    assert clean.cells[0].outputs == [] and clean.cells[0].execution_count is None and "widgets" not in clean.metadata
    assert clean.cells[0].source == "1"


@pytest.mark.slow
def test_a_partial_run_with_another_setup_is_refused_before_it_runs(toys, tmp_path, monkeypatch):
    """`rscir-kit notebooks --only 02` on a `make main` folder, started without make's environment, resolved
    another model and data root: it overwrote 02's finished results with a skip. Now refused before running."""
    out = tmp_path / "out"
    monkeypatch.setenv("RSCIR_MODEL", "local-dir:/w/standin")
    monkeypatch.setenv("RSCIR_DATA", str(tmp_path))
    run_notebooks.run(notebooks=toys, out=out, quiet=True)
    for stem in ("01_first", "02_second"):  # as the real notebooks record their resolved setup
        res = out / stem / "results.json"
        data = json.loads(res.read_text())
        data["params"] = {"model": "local-dir:/w/standin", "dataset": "ucmcom", "data_root": str(tmp_path),
                          "size": None}
        res.write_text(json.dumps(data))
    before = (out / "02_second" / "results.json").read_text()
    monkeypatch.setenv("RSCIR_MODEL", "remoteclip-vit-l-14")
    with pytest.raises(DataError, match=r"holds 01_first made with model local-dir:/w/standin; this run would use "
                                        r"model remoteclip-vit-l-14: re-run with the folder's setup \(--model "
                                        r"local-dir:/w/standin"):
        run_notebooks.run(notebooks=toys, out=out, only=["02"], force=True, quiet=True)
    with pytest.raises(DataError, match=r"size full; this run would use size 5"):
        monkeypatch.setenv("RSCIR_MODEL", "local-dir:/w/standin")
        run_notebooks.run(notebooks=toys, out=out, only=["02"], size=5, quiet=True)
    assert (out / "02_second" / "results.json").read_text() == before and _calls(out) == ["first", "second"]
    # the folder's own setup (here from the environment) runs and merges
    run_notebooks.run(notebooks=toys, out=out, only=["02"], force=True, quiet=True)
    assert _calls(out) == ["first", "second", "second"]
    # re-running every finished notebook with --force moves the whole folder to the new setup
    monkeypatch.setenv("RSCIR_MODEL", "remoteclip-vit-l-14")
    run_notebooks.run(notebooks=toys, out=out, force=True, quiet=True)
    assert _calls(out) == ["first", "second", "second", "first", "second"]

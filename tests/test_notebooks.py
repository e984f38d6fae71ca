"""The numbered notebooks: committed without outputs, papermill-parameterisable, and — executed on real UCM
images with the offline stand-in (small size knob) — recording values that agree with independent
recomputations (not just "it ran")."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from rscir_kit import nbutils, run_notebooks
from rscir_kit.datasets import get_benchmark
from rscir_kit.errors import DataError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
MINE = ["01_extract_embeddings", "02_baselines", "03_weicom", "04_lambda_ablation", "05_qualitative_grids",
        "06_lambda_explorer"]
CONVENTION_PARAMS = {"dataset", "data_root", "model", "cache_dir", "lambdas", "device", "output_dir", "size",
                     "batch_size"}
SIZE = 5  # images per class in the executed run: 21 × 5 = 105 archive images


def _numbered():
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


# ----------------------------------------------------------------------------- committed notebooks
def test_my_notebooks_exist_in_order():
    assert [p.stem for p in _numbered()][:6] == MINE


@pytest.mark.parametrize("path", _numbered(), ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    stale = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not stale, (f"{path.name}: cells {stale} carry outputs/execution counts; strip them "
                       f"(rscir-kit notebooks --strip --only {path.stem[:2]})")
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state in the metadata; clear it"


@pytest.mark.parametrize("path", _numbered(), ids=lambda p: p.stem)
def test_notebook_follows_the_conventions(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "first cell: markdown title"
    params = nb.cells[1]
    assert "parameters" in params.metadata.get("tags", []), "second cell must be tagged 'parameters'"
    names = {t.id for node in ast.parse(params.source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert CONVENTION_PARAMS <= names, f"missing parameters {CONVENTION_PARAMS - names}"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", _numbered(), ids=lambda p: p.stem)
def test_papermill_reads_every_parameter(path):
    """papermill parses ``name = value  # help``; an '=' inside the comment makes it drop the parameter
    (then --help-notebook omits it and every run warns "Passed unknown parameter")."""
    import papermill as pm

    nb = nbformat.read(path, as_version=4)
    names = [t.id for node in ast.parse(nb.cells[1].source).body if isinstance(node, ast.Assign)
             for t in node.targets]
    assert list(pm.inspect_notebook(str(path))) == names


# ----------------------------------------------------------------------------- runner (no real data)
def test_find_notebooks_order_and_only(tmp_path):
    for name in ("10_last.ipynb", "02_b.ipynb", "01_a.ipynb", "notes.ipynb"):
        nbformat.write(nbformat.v4.new_notebook(), tmp_path / name)
    assert [p.name for p in run_notebooks.find_notebooks(tmp_path)] == ["01_a.ipynb", "02_b.ipynb", "10_last.ipynb"]
    assert [p.name for p in run_notebooks.find_notebooks(tmp_path, only=["2", "10_last"])] == [
        "02_b.ipynb", "10_last.ipynb"]
    with pytest.raises(DataError, match="matches"):
        run_notebooks.find_notebooks(tmp_path, only=["07"])
    assert run_notebooks._parse_value("[0, 0.5]") == [0, 0.5] and run_notebooks._parse_value("None") is None
    assert run_notebooks._parse_value("ViT-B-32:openai") == "ViT-B-32:openai"


def test_strip_outputs(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1", execution_count=3,
                                     outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "2"},
                                                                     execution_count=3)])
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), cell]
    nb.metadata["widgets"] = {"state": {}}
    nbformat.write(nb, tmp_path / "01_t.ipynb")
    assert run_notebooks.strip_outputs([tmp_path / "01_t.ipynb"]) == [tmp_path / "01_t.ipynb"]
    clean = nbformat.read(tmp_path / "01_t.ipynb", as_version=4)
    assert clean.cells[1].outputs == [] and clean.cells[1].execution_count is None and "widgets" not in clean.metadata
    assert clean.cells[1].source == "1 + 1"
    assert run_notebooks.strip_outputs([tmp_path / "01_t.ipynb"]) == []  # idempotent


def _toy_notebook(path: Path, body: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    params = nbformat.v4.new_code_cell("output_dir = None\nsize = None\nvalue = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# toy"), params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


@pytest.mark.slow
def test_runner_executes_in_order_and_lists_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # as in headless CI: the executed notebooks must still show figures
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    body = ("import matplotlib.pyplot as plt\n"
            "from rscir_kit import nbutils\n"
            "rec = nbutils.Recorder(output_dir, notebook='{name}')\n"
            "rec.record(value=value * 2, size=size)\n"
            "fig, ax = plt.subplots(); ax.plot([0, 1]); rec.figure(fig, 'line')\n")
    _toy_notebook(nbs / "01_first.ipynb", body.format(name="first"))
    _toy_notebook(nbs / "02_second.ipynb", body.format(name="second"))
    summary = run_notebooks.run(notebooks=nbs, out=tmp_path / "out", size=3, parameters={"value": 21}, quiet=True)
    assert [n["notebook"] for n in summary["notebooks"]] == ["01_first", "02_second"]
    for n in summary["notebooks"]:
        data = json.loads((tmp_path / "out" / n["notebook"] / "results.json").read_text())
        assert data["value"] == 42 and data["size"] == 3
        assert sorted(Path(f).name for f in n["figures"]) == ["line.pdf", "line.png"]
        executed_nb = nbformat.read(n["executed"], as_version=4)
        assert any("image/png" in o.get("data", {}) for c in executed_nb.cells if c.cell_type == "code"
                   for o in c.outputs), "the executed notebook lost its inline figure"
    assert "02_second/line.png" in (tmp_path / "out" / "index.md").read_text()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["parameters"] == {"size": 3, "value": 21}


@pytest.mark.slow
def test_runner_names_the_failing_notebook(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _toy_notebook(nbs / "01_broken.ipynb", "raise ValueError('boom')")
    _toy_notebook(nbs / "02_never.ipynb", "pass")
    with pytest.raises(DataError, match=r"01_broken.ipynb failed .*ValueError: boom"):
        run_notebooks.run(notebooks=nbs, out=tmp_path / "out", quiet=True)
    assert (tmp_path / "out" / "01_broken.ipynb").is_file()
    assert not (tmp_path / "out" / "02_never.ipynb").exists()


# ----------------------------------------------------------------------------- executed on real data
@pytest.fixture(scope="module")
def executed(tmp_path_factory, shared_data, standin_spec):
    """Run notebooks 01-06 once (size knob 5) on the real UCM images with the stand-in."""
    out = tmp_path_factory.mktemp("nb_out")
    summary = run_notebooks.run(notebooks=NOTEBOOK_DIR, out=out, only=[s[:2] for s in MINE], size=SIZE,
                                model=standin_spec, data_root=shared_data, device="cpu",
                                cache_dir=tmp_path_factory.mktemp("nb_cache"), timeout=600, quiet=True)
    results = {n["notebook"]: json.loads((out / n["notebook"] / "results.json").read_text())
               for n in summary["notebooks"]}
    return {"out": out, "summary": summary, "results": results, "data": shared_data, "model": standin_spec}


def _recomputed_baselines(executed):
    """Image-only / text-only mAP per attribute with plain numpy (no engine), from the notebooks' cache."""
    from rscir_kit.features import ImageFeatures, TextFeatures
    from rscir_kit.metrics import average_precision

    r1 = executed["results"]["01_extract_embeddings"]
    archive = ImageFeatures.load(r1["image_features"])
    texts = TextFeatures.load(r1["text_features"])
    qs = get_benchmark("ucmcom", data_root=executed["data"]).queries(archive.paths, missing="drop")
    idx = {p: i for i, p in enumerate(archive.paths)}
    aps = {"image": {}, "text": {}}
    for i, row in qs.table.iterrows():
        rel = np.zeros(len(archive.paths), bool)
        rel[qs.positives(i)] = True
        s_img = archive.feats @ archive.feats[idx[row["query_path"]]]
        s_txt = archive.feats @ texts.lookup([row["text"]])[0]
        for m, s in (("image", s_img), ("text", s_txt)):
            aps[m].setdefault(row["attribute"], []).append(average_precision(s, rel))
    out = {m: {a: 100 * float(np.mean(v)) for a, v in d.items()} for m, d in aps.items()}
    for m in out:
        out[m]["avg"] = float(np.mean(list(out[m].values())))
    return out, archive, texts, qs


@pytest.mark.slow
@pytest.mark.realdata
def test_every_recorded_output_exists(executed):
    assert [n["notebook"] for n in executed["summary"]["notebooks"]] == MINE
    for n in executed["summary"]["notebooks"]:
        data = executed["results"][n["notebook"]]
        assert data["params"]["size"] == SIZE and data["params"]["model"] == executed["model"]
        assert data["figures"], f"{n['notebook']} saved no figure"
        for name, files in data["figures"].items():
            assert files == [f"{name}.png", f"{name}.pdf"]
            png, pdf = (executed["out"] / n["notebook"] / f for f in files)
            assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"
            assert png.stat().st_size > 10_000  # a real rendered figure, not an empty canvas
        for name, file in data["tables"].items():
            assert len(pd.read_csv(executed["out"] / n["notebook"] / file)) > 0
        executed_nb = nbformat.read(n["executed"], as_version=4)
        errors = [o for c in executed_nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors


@pytest.mark.slow
@pytest.mark.realdata
def test_01_records_the_archive_and_queries(executed):
    r = executed["results"]["01_extract_embeddings"]
    from rscir_kit.features import ImageFeatures

    feats = ImageFeatures.load(r["image_features"]).feats
    assert r["archive_images"] == 21 * SIZE == feats.shape[0] and r["classes"] == 21
    assert r["embed_dim"] == feats.shape[1] == r["text_dim"]
    assert abs(r["feature_norm_min"] - 1) < 1e-4 and abs(r["feature_norm_max"] - 1) < 1e-4
    assert r["query_pairs"] == sum(r["pairs_per_attribute"].values()) > 0
    assert r["model_is_standin"] and "STAND-IN" in r["model_label"]
    assert r["extracted"] is True  # fresh cache in this test


@pytest.mark.slow
@pytest.mark.realdata
def test_02_baselines_match_an_independent_numpy_computation(executed):
    r2 = executed["results"]["02_baselines"]
    expected, *_ = _recomputed_baselines(executed)
    for method in ("image", "text"):
        assert r2["map"][method].keys() == expected[method].keys()
        for attr, value in expected[method].items():
            assert r2["map"][method][attr] == pytest.approx(value, abs=1e-4), (method, attr)
    for row in r2["map"].values():
        assert all(0.0 <= v <= 100.0 for v in row.values())


@pytest.mark.slow
@pytest.mark.realdata
def test_03_weicom_table_is_consistent(executed):
    r2, r3, r4 = (executed["results"][k] for k in ("02_baselines", "03_weicom", "04_lambda_ablation"))
    m = r3["map"]
    for method in ("text", "image", "average"):  # the two notebooks agree on the baselines
        assert m[method] == pytest.approx(r2["map"][method], abs=1e-9)
    # Φ is monotone: WeiCom at λ=0 / λ=1 ranks exactly as image-only / text-only.
    assert m["weicom@0"] == pytest.approx(m["image"], abs=1e-9)
    assert m["weicom@1"] == pytest.approx(m["text"], abs=1e-9)
    weicom_avg = {float(k.split("@")[1]): v["avg"] for k, v in m.items() if k.startswith("weicom@")}
    assert r3["best_lambda"] == max(weicom_avg, key=lambda lam: (weicom_avg[lam], -lam))
    assert r3["best_avg"] == pytest.approx(max(weicom_avg.values()))
    assert r3["best_lambda"] == r4["best_lambda_avg"]
    assert r3["table2_rows"][:3] == ["text", "image", "average"] and "weicom@0.5" in r3["table2_rows"]
    assert f"weicom@{r3['best_lambda']:g}" in r3["table2_rows"]
    assert r3["paper_setup"] is None  # UCM-Com + stand-in: no paper columns
    table = pd.read_csv(executed["out"] / "03_weicom" / "table2.csv")
    assert "avg ref" not in table.columns and list(table["method"][:3]) == ["Text", "Image", "Text & Image"]
    # A real finding on this data with this model (not a tautology: the average baseline is not a λ point):
    # WeiCom at its best λ beats all three baselines.
    assert r3["weicom_beats_baselines"] is True
    assert r3["best_avg"] > max(r3["baseline_avg"].values())


@pytest.mark.slow
@pytest.mark.realdata
def test_04_ablation_table_and_best_lambda(executed):
    r3, r4 = executed["results"]["03_weicom"], executed["results"]["04_lambda_ablation"]
    assert r4["lambdas"] == [round(0.1 * i, 1) for i in range(11)]
    for lam, row in r4["ablation"].items():
        assert row == pytest.approx(r3["map"][f"weicom@{float(lam):g}"], abs=1e-9)
    table = pd.read_csv(executed["out"] / "04_lambda_ablation" / "lambda_ablation.csv").set_index("attribute")
    for attr, best in r4["best_lambda"].items():
        assert table.loc[attr, "best λ"] == best
        col_values = {float(k): v[attr] for k, v in r4["ablation"].items()}
        assert col_values[best] == pytest.approx(max(col_values.values()))
    paper = pd.read_csv(executed["out"] / "04_lambda_ablation" / "paper_table3.csv").set_index("attribute")
    assert paper.loc["avg", "best λ"] == 0.6 and paper.loc["color", "λ=0.1"] == 55.3


@pytest.mark.slow
@pytest.mark.realdata
def test_05_grids_show_the_real_positives(executed):
    from rscir_kit.metrics import average_precision

    r5 = executed["results"]["05_qualitative_grids"]
    _, archive, texts, qs = _recomputed_baselines(executed)
    examples = r5["examples"]
    assert r5["row_lambdas"][0] == 0.0 and r5["row_lambdas"][-1] == 1.0
    assert r5["best_lambda"] in r5["row_lambdas"]
    # not only wins: 3 best gains (n_examples), the worst failure, 3 random pairs (seed 0), a "without" query
    kinds = [ex["kind"] for ex in examples]
    assert kinds.count("best gain") == 3 and kinds.count("failure") == 1 and kinds.count("random (seed 0)") == 3
    assert len({ex["pair"] for ex in examples}) == len(examples)
    assert len(r5["figures"]) == len(examples)
    idx = {p: i for i, p in enumerate(archive.paths)}
    gains, directions = {}, []
    for ex in examples:
        rows = qs.table.index[(qs.table["query_path"] == ex["query"]) & (qs.table["text"] == ex["text"])]
        directions.append(qs.table.loc[rows[0], "direction"])
        positives = set(archive.paths[qs.positives(rows[0])])
        assert ex["n_positives"] == len(positives)
        for row in ex["rows"]:
            assert len(row["topk"]) == r5["k"]
            assert row["positive"] == [p in positives for p in row["paths"]]
            assert 0.0 < row["ap"] <= 1.0
        by_lam = {row["lam"]: row["ap"] for row in ex["rows"]}
        if ex["kind"] == "best gain":
            # chosen where WeiCom at the best λ does at least as well as either modality alone
            assert by_lam[r5["best_lambda"]] >= max(by_lam[0.0], by_lam[1.0])
        # gain over the better plain baseline, recomputed with numpy (raw image-only / text-only scores)
        rel = np.zeros(len(archive.paths), bool)
        rel[qs.positives(rows[0])] = True
        base = max(average_precision(archive.feats @ archive.feats[idx[ex["query"]]], rel),
                   average_precision(archive.feats @ texts.lookup([ex["text"]])[0], rel))
        gains[ex["pair"]] = by_lam[r5["best_lambda"]] - base
    assert "remove" in directions
    failure = next(ex["pair"] for ex in examples if ex["kind"] == "failure")
    assert all(gains[failure] <= g + 1e-9 for g in gains.values())


@pytest.mark.slow
@pytest.mark.realdata
def test_06_explorer_two_lambdas_two_grids_and_exact_ap(executed):
    r6 = executed["results"]["06_lambda_explorer"]
    _, archive, texts, qs = _recomputed_baselines(executed)
    s1, s2 = r6["states"]
    assert (s1["lam"], s2["lam"]) == (0.2, 0.8)
    assert s1["topk"] != s2["topk"] and r6["topk_differ"] is True
    assert {"explorer_lambda_0.2", "explorer_lambda_0.8", "score_distributions"} <= set(r6["figures"])
    # Recompute WeiCom and AP from scratch: z-score (ddof=1) → Φ, mix, stable descending sort.
    q = int(np.flatnonzero(archive.paths == r6["query"])[0])
    row = qs.table.index[(qs.table["query_path"] == r6["query"]) & (qs.table["text"] == r6["text"])][0]
    rel = np.zeros(len(archive.paths), bool)
    rel[qs.positives(row)] = True

    def phi_z(s):
        return norm.cdf((s - s.mean()) / s.std(ddof=1))

    s_img = (archive.feats @ archive.feats[q]).astype(np.float64)
    s_txt = (archive.feats @ texts.lookup([r6["text"]])[0]).astype(np.float64)
    for st in (s1, s2):
        score = st["lam"] * phi_z(s_txt) + (1 - st["lam"]) * phi_z(s_img)
        order = np.argsort(-score, kind="stable")
        hits = np.flatnonzero(rel[order]) + 1
        ap = float(np.mean(np.arange(1, len(hits) + 1) / hits))
        assert st["ap"] == pytest.approx(ap, abs=1e-5)
        assert st["positive"] == rel[st["topk"]].tolist()
    # the archive-scale index (exact mode) returns the explorer's brute-force top-k at both λ
    assert r6["index_search"]["matches_explorer"] == {"0.2": True, "0.8": True}
    assert r6["index_search"]["topk"]["0.2"] == s1["topk"]
    assert r6["free_text"]["source"] == "encoder" and r6["free_text"]["ap"] is None
    assert len(r6["free_text"]["topk"]) == 8
    # the normalised scores really are on a common scale, the raw ones need not be
    stats = r6["score_stats"]
    assert 0.35 < stats["image_norm"]["mean"] < 0.65 and 0.35 < stats["text_norm"]["mean"] < 0.65


# ----------------------------------------------------------------------------- the paper's setup (synthetic)
@pytest.mark.slow
def test_patterncom_path_prints_the_paper_numbers_beside(tmp_path):
    """dataset="patterncom" end to end on a synthetic PatternNet (real file names, tiny images) with a tiny
    random model stored under a RemoteCLIP ViT-L/14 name and setup="paper": the notebooks take the paper-setup path
    (like-for-like with the paper's tables) only when dataset, model, activation, precision and numerics match."""
    from PIL import Image

    from _tiny_model import make_tiny_model_dir
    from rscir_kit.datasets.synthetic import synthetic_patterncom

    data = tmp_path / "data"
    archive, _, _ = synthetic_patterncom(data / "PatternCom")
    rng = np.random.default_rng(0)
    for path, label in zip(archive.paths, archive.labels):
        target = data / "PatternNet" / "images" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        base = np.frombuffer(label.encode().ljust(3, b"x")[:3], np.uint8)
        pixels = np.clip(base[None, None, :] + rng.integers(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(target)
    model_dir = make_tiny_model_dir(tmp_path / "RemoteCLIP-ViT-L-14-tiny-test")
    out = tmp_path / "out"
    run_notebooks.run(notebooks=NOTEBOOK_DIR, out=out, only=["01", "03", "04"], dataset="patterncom",
                      model=f"local-dir:{model_dir}", data_root=data, cache_dir=tmp_path / "cache", device="cpu",
                      parameters={"setup": "paper", "reference_source": "paper"}, quiet=True)
    r1 = json.loads((out / "01_extract_embeddings" / "results.json").read_text())
    assert r1["dataset"] == "patterncom" and r1["archive_images"] == len(archive.paths) == 38 * 12
    assert r1["attributes"] == ["color", "context", "density", "existence", "quantity", "shape"]
    assert (r1["setup"], r1["activation"], r1["precision"]) == ("paper", "gelu", "fp32")
    r3 = json.loads((out / "03_weicom" / "results.json").read_text())
    table = pd.read_csv(out / "03_weicom" / "table2.csv").set_index("method")
    assert r3["paper_setup"] == "remoteclip-vit-l-14" and r3["setup_differences"] == []
    assert "weicom@0.6" in r3["table2_rows"] and "weicom@0.5" in r3["table2_rows"]  # the paper's two λ rows
    assert table.loc["Text", "color ref"] == 10.75 and table.loc["WeiCom (λ=0.6)", "avg ref"] == 30.19
    assert table.loc["Image", "shape"] == pytest.approx(r3["map"]["image"]["shape"], abs=1e-3)
    r4 = json.loads((out / "04_lambda_ablation" / "results.json").read_text())
    assert "kit_minus_paper_table3" in r4["tables"]
    diff = pd.read_csv(out / "04_lambda_ablation" / "kit_minus_paper_table3.csv").set_index("attribute")
    assert diff.loc["avg", "λ=0.6"] == pytest.approx(r4["ablation"]["0.6"]["avg"] - 30.2, abs=1e-3)


@pytest.mark.slow
def test_runner_skips_a_notebook_whose_manual_only_data_is_missing(tmp_path, capsys):
    """A MissingDataError (e.g. UCM-Captions, which cannot be downloaded) skips that notebook, not the job."""
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _toy_notebook(nbs / "01_needs_data.ipynb",
                  "from rscir_kit.errors import MissingDataError\nraise MissingDataError('get it from X')")
    _toy_notebook(nbs / "02_runs.ipynb", "from rscir_kit import nbutils\n"
                                         "nbutils.Recorder(output_dir, notebook='runs').record(ok=True)")
    summary = run_notebooks.run(notebooks=nbs, out=tmp_path / "out", quiet=True)
    assert [n["notebook"] for n in summary["notebooks"]] == ["02_runs"]
    assert summary["skipped"][0]["notebook"] == "01_needs_data" and "get it from X" in summary["skipped"][0]["reason"]
    assert "skipped (data not available)" in (tmp_path / "out" / "index.md").read_text()
    run_notebooks.print_summary(summary)
    assert "SKIPPED 01_needs_data: data not available. get it from X" in capsys.readouterr().out


def test_every_committed_notebook_is_executed_by_the_tests():
    """make test runs each notebook once (papermill, here and in test_notebooks_captions / test_notebooks_leaderboard)
    instead of once more through nbval: every committed notebook must be among those runs."""
    executed_by_tests = set(MINE) | {"07_text_image_retrieval", "08_text_to_text", "09_method_leaderboard"}
    assert {p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")} == executed_by_tests

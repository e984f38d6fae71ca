"""`rscir-kit evaluate patterncom` end to end: file shapes the users rely on, the printed table, errors."""
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from rscir_kit.cli import main
from rscir_kit.datasets.patterncom import ATTRIBUTES, PatternCom
from rscir_kit.engine import evaluate, summarize
from rscir_kit.datasets.synthetic import synthetic_patterncom


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    archive, texts, pc_dir = synthetic_patterncom(root / "PatternCom")
    archive.save(root / "feats.npz")
    texts.save(root / "text.npz")
    return root, archive, texts, pc_dir


def test_evaluate_patterncom_writes_the_documented_csv(files, capsys):
    root, archive, texts, pc_dir = files
    out = root / "results.csv"
    code = main(["evaluate", "patterncom", "--features", str(root / "feats.npz"), "--text-features",
                 str(root / "text.npz"), "--patterncom-dir", str(pc_dir), "--methods", "image", "text", "average",
                 "weicom", "--lambdas", "0.3,0.5", "--out", str(out), "--quiet"])
    assert code == 0
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == (["method", "lambda", "attribute", "map"] + [f"{m}@{k}" for m in "pr" for k in (5, 10, 15, 20)]
                                + ["model", "setup", "activation", "precision", "numerics", "weights_sha256"])
    assert len(df) == 5 * (len(ATTRIBUTES) + 1)  # image, text, average, weicom×2; six attributes + avg
    assert set(df[df.method != "weicom"]["lambda"]) == {""}
    assert sorted(set(df[df.method == "weicom"]["lambda"])) == ["0.3", "0.5"]
    assert list(df.attribute[:7]) == list(ATTRIBUTES) + ["avg"]
    # the numbers equal the Python API's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_pair = evaluate(PatternCom(pc_dir).queries(archive.paths), archive, texts,
                            methods=["weicom"], lambdas=[0.3], progress=False)
    expected = summarize(per_pair).set_index("attribute")["map"]
    got = df[(df.method == "weicom") & (df["lambda"] == "0.3")].set_index("attribute")["map"]
    np.testing.assert_allclose(got[expected.index].to_numpy(float), expected.to_numpy(), atol=1e-4)
    printed = capsys.readouterr().out
    assert "WeiCom (λ=0.3)" in printed and "avg" in printed and "query pairs" in printed


def test_evaluate_rejects_bad_lambda_and_missing_files(files, capsys):
    root, _, _, pc_dir = files
    args = ["evaluate", "patterncom", "--features", str(root / "feats.npz"), "--text-features", str(root / "text.npz"),
            "--patterncom-dir", str(pc_dir), "--methods", "weicom", "--quiet"]
    # before: a raw ValueError traceback (after loading everything); now one line and exit code 2
    assert main(args + ["--lambdas", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "λ must lie in" in err and len(err.strip().splitlines()) == 1
    assert main(args[:3] + [str(root / "nope.npz")] + args[4:]) == 2
    assert "nope.npz" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter importing torch through the CLI
def test_python_dash_m_entry_point(files):
    root, _, _, pc_dir = files
    proc = subprocess.run([sys.executable, "-m", "rscir_kit", "evaluate", "patterncom", "--features",
                           str(root / "feats.npz"), "--text-features", str(root / "text.npz"), "--patterncom-dir",
                           str(pc_dir), "--attributes", "shape", "--methods", "weicom", "--lambdas", "0.5", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "shape" in proc.stdout and "WeiCom (λ=0.5)" in proc.stdout


def test_evaluate_ucmcom_table_by_direction(tmp_path, capsys):
    """UCM-Com through the CLI on a random-feature archive with the real UC Merced names (plumbing only)."""
    from rscir_kit.datasets.ucm import UCM_CLASSES
    from rscir_kit.features import ImageFeatures, TextFeatures

    rng = np.random.default_rng(0)
    paths = [f"{c}/{c}{i:02d}.jpg" for c in UCM_CLASSES for i in range(100)]
    feats = rng.standard_normal((len(paths), 16)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    meta = {"model": "random-plumbing"}
    ImageFeatures(feats, paths, [p.split("/")[0] for p in paths], meta).save(tmp_path / "ucm.npz")
    labels = ["airplane", "bare soil", "buildings", "cars", "chaparral", "court", "dock", "field", "grass",
              "mobile home", "pavement", "sand", "sea", "ship", "tanks", "trees", "water"]
    texts = [f"{w} {l}" for l in labels for w in ("with", "without")]
    tf = rng.standard_normal((len(texts), 16)).astype(np.float32)
    TextFeatures(texts, tf / np.linalg.norm(tf, axis=1, keepdims=True), meta).save(tmp_path / "text.npz")
    out = tmp_path / "r.csv"
    assert main(["evaluate", "ucmcom", "--features", str(tmp_path / "ucm.npz"), "--text-features",
                 str(tmp_path / "text.npz"), "--methods", "image", "weicom", "--lambdas", "0.5", "--by", "direction",
                 "--out", str(out), "--quiet"]) == 0
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns[:4]) == ["method", "lambda", "direction", "map"]
    assert list(df.direction[:3]) == ["add", "remove", "avg"]
    assert "8000 query pairs" in capsys.readouterr().out


def test_evaluate_group_columns_follow_the_documented_order(tmp_path, capsys):
    """`--by` groups: the paper's attributes in the paper's order, then the others in natural order
    (case-insensitive, numbers by value), avg last -- in the printed table's columns and in the CSV's rows,
    whatever order the query file lists them in (here scrambled on purpose)."""
    from rscir_kit.features import ImageFeatures, TextFeatures

    rng = np.random.default_rng(5)
    paths = [f"a/{i}.jpg" for i in range(40)]
    x = rng.standard_normal((40, 8)).astype(np.float32)
    ImageFeatures(x / np.linalg.norm(x, axis=1, keepdims=True), paths, ["a"] * 40, {"model": "m"}).save(
        tmp_path / "f.npz")
    attributes = ["shape", "zeta", "color", "Beta", "cars10", "cars2", "density", "alpha"]
    values = ["10", "9", "x", "100", "2", "b", "A", "1"]
    texts = [f"text {a}" for a in attributes]
    t = rng.standard_normal((len(texts), 8)).astype(np.float32)
    TextFeatures(texts, t / np.linalg.norm(t, axis=1, keepdims=True), {"model": "m"}).save(tmp_path / "t.npz")
    rows = [f"a/{i}.jpg,{texts[i]},a/{i + 10}.jpg;a/{i + 20}.jpg,{a},{v}"
            for i, (a, v) in enumerate(zip(attributes, values))]
    (tmp_path / "q.csv").write_text("query_path,text,positives,attribute,value\n" + "\n".join(rows) + "\n")
    expected = {"attribute": ["color", "density", "shape", "alpha", "Beta", "cars2", "cars10", "zeta", "avg"],
                "value": ["1", "2", "9", "10", "100", "A", "b", "x", "avg"]}
    for by, order in expected.items():
        out = tmp_path / f"r_{by}.csv"
        assert main(["evaluate", "queries", "--features", str(tmp_path / "f.npz"), "--text-features",
                     str(tmp_path / "t.npz"), "--queries", str(tmp_path / "q.csv"), "--methods", "image", "weicom",
                     "--lambdas", "0.3,0.5", "--by", by, "--out", str(out), "--quiet"]) == 0
        printed = capsys.readouterr().out.splitlines()
        header = printed[printed.index("mAP (%)") + 1].split()
        assert header == order, header
        df = pd.read_csv(out, keep_default_na=False, dtype=str)
        for (_, _), block in df.groupby(["method", "lambda"], sort=False):
            assert block[by].tolist() == order
        assert df["method"].tolist()[::len(order)] == ["image", "weicom", "weicom"]

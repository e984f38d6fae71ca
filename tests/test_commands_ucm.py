"""``rscir-kit ucm`` sub-commands on hand-made files."""
from rscir_kit.cli import main
from rscir_kit.datasets.ucmcom import load_groups


def test_ucm_queries_and_check(tmp_path, capsys):
    rows = [f"beach{i:02d}\t{int(i < 5)}" for i in range(10)]
    (tmp_path / "multilabels.tsv").write_text("IMAGE\\LABEL\tcars\n" + "\n".join(rows) + "\n")
    assert main(["ucm", "queries", "--root", str(tmp_path), "--out", str(tmp_path / "q.csv")]) == 0
    g = load_groups(tmp_path / "q.csv")
    assert g[["query_class", "label", "n_with", "n_without"]].values.tolist() == [["beach", "cars", 5, 5]]
    assert "1 (class, label) groups, 5 add + 5 remove" in capsys.readouterr().out
    # images and captions are missing: check says so and fails
    assert main(["ucm", "check", "--root", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "images: MISSING" in out and "captions: MISSING" in out and "UCM-Com: 1 (class, label) groups" in out


def test_ucm_queries_output_is_read_by_evaluate_queries(tmp_path, capsys):
    """The README's `ucm queries --out q.csv` then `evaluate queries --queries q.csv`: one query-set format."""
    import numpy as np

    from rscir_kit.features import ImageFeatures, TextFeatures

    rows = [f"beach{i:02d}\t{int(i < 5)}" for i in range(10)]
    (tmp_path / "multilabels.tsv").write_text("IMAGE\\LABEL\tcars\n" + "\n".join(rows) + "\n")
    assert main(["ucm", "queries", "--root", str(tmp_path), "--out", str(tmp_path / "q.csv")]) == 0
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(10, 8)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    meta = {"model": "m-ucm"}
    ImageFeatures(feats, np.asarray([f"beach/beach{i:02d}.jpg" for i in range(10)]), np.asarray(["beach"] * 10),
                  meta).save(tmp_path / "f.npz")
    t = rng.normal(size=(2, 8)).astype(np.float32)
    TextFeatures(np.asarray(["with cars", "without cars"]), t / np.linalg.norm(t, axis=1, keepdims=True),
                 meta).save(tmp_path / "t.npz")
    capsys.readouterr()
    code = main(["evaluate", "queries", "--features", str(tmp_path / "f.npz"), "--text-features",
                 str(tmp_path / "t.npz"), "--queries", str(tmp_path / "q.csv"), "--methods", "image", "text",
                 "--out", str(tmp_path / "res.csv")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "10 query pairs" in captured.out

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

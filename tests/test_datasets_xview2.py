"""xView2-CIR list → QuerySet on the real list (shared/data/xview2_cir.csv) with a synthetic archive."""
import numpy as np
import pytest

from rscir_kit.datasets.xview2 import read_xview2_csv, xview2_queries
from rscir_kit.errors import DataError


def test_real_list_builds_one_positive_per_query(shared_data):
    path = shared_data / "xview2_cir.csv"
    rows = read_xview2_csv(path)
    assert len(rows) == 291
    archive = np.array(sorted(set(rows.image) | set(rows.target)))
    qs = xview2_queries(path, archive, text_columns=("query_default", "query_alt1"))
    assert len(qs) == 2 * 291
    assert (qs.n_positives == 1).all()
    first = rows.iloc[0]
    assert archive[qs.positives(0)][0] == first.target
    assert qs.table.query_path[0] == first.image and qs.table.text[0] == first.query_default
    assert qs.table.disaster[0] == first.image.split("/")[-1].split("_")[0]


def _generated_list(path, n=10):
    """An xView2-CIR list in the official layout (pre-disaster image, three phrasings, post-disaster target)."""
    lines = ["image,query_default,query_alt1,query_alt2,target"]
    for i in range(n):
        stem = f"test/images/{'flood' if i % 2 else 'fire'}-site_{i:08d}"
        lines.append(f"{stem}_pre_disaster.tif,post flood,after the flood,flooded,{stem}_post_disaster.tif")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_missing_target_and_malformed_row(tmp_path):
    """On a generated list (the real one: test_real_list_builds_one_positive_per_query, realdata tier)."""
    path = _generated_list(tmp_path / "xview2_cir.csv")
    rows = read_xview2_csv(path)
    archive = np.array(sorted(set(rows.image) | set(rows.target) - {rows.target[5]}))
    with pytest.raises(DataError, match=r"not in the feature files.*line 7"):
        xview2_queries(path, archive)
    bad = tmp_path / "x.csv"
    bad.write_text("image,query_default,query_alt1,query_alt2,target\na_pre.tif,post flood,,x,a_post.tif\n")
    with pytest.raises(DataError, match=r"x.csv, line 2: expected 5 non-empty fields"):
        read_xview2_csv(bad)

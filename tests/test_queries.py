"""QuerySet: subset → bind, the portable CSV round trip and its error lines."""
import numpy as np
import pandas as pd
import pytest

from rscir_kit.errors import DataError
from rscir_kit.queries import QuerySet

ARCHIVE = np.array(["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"])


def _qs():
    table = pd.DataFrame({"query_path": ["a.jpg", "b.jpg", "c.jpg"], "text": ["t1", "t2", "t3"],
                          "positive_id": [0, 1, 2], "attribute": ["x", "x", "y"]})
    return QuerySet("toy", table, [[1, 2], [3], [4]], ARCHIVE, {})


def test_bind_after_subset_needs_only_the_positives_in_use():
    """Before: KeyError — bind remapped every positive set, also those of the dropped rows."""
    sub = _qs().subset([0, 1])  # the row whose only positive is e.jpg is gone
    small = ["d.jpg", "c.jpg", "b.jpg", "a.jpg"]  # no e.jpg, another order
    bound = sub.bind(small)
    assert [list(np.asarray(small)[bound.positives(i)]) for i in range(len(bound))] == [["c.jpg", "b.jpg"], ["d.jpg"]]
    assert bound.table["positive_id"].tolist() == [0, 1] and len(bound.positive_sets) == 2
    with pytest.raises(DataError, match="not in the archive"):
        _qs().bind(small)  # the full set does need e.jpg


def test_read_csv_round_trip_and_error_line(tmp_path):
    path = tmp_path / "q.csv"
    _qs().to_csv(path)
    back = QuerySet.read_csv(path, ARCHIVE)
    assert back.table["text"].tolist() == ["t1", "t2", "t3"]
    assert [ARCHIVE[back.positives(i)].tolist() for i in range(3)] == [["b.jpg", "c.jpg"], ["d.jpg"], ["e.jpg"]]
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# rscir-kit query set") and lines[3].startswith("b.jpg,t2")
    # before: "row 3" for the pair written on line 4 (the comment line was not counted)
    with pytest.raises(DataError, match=r"q.csv, line 4: positive image\(s\) \['d.jpg'\]"):
        QuerySet.read_csv(path, ["a.jpg", "b.jpg", "c.jpg", "e.jpg"])

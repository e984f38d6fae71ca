"""The one path↔name matcher: keys, the duplicate rule, missing names — and every dataset uses it."""
import numpy as np
import pytest

from rscir_kit.errors import DataError, ParameterError
from rscir_kit.names import NameIndex, match_names, name_key

PATHS = ["a/x1.jpg", "a/x2.jpg", "b/y1.jpg", "b/x1.png"]


def test_keys():
    assert name_key("a\\b\\c.tif") == "a/b/c.tif"
    assert name_key("a/b/c.tif", "basename") == "c.tif"
    assert name_key("a/b/c.tif", "stem") == "c"
    with pytest.raises(ParameterError, match="by must be one of"):
        name_key("x", "suffix")


def test_positions_by_each_key():
    assert match_names(PATHS, ["b/y1.jpg", "a/x1.jpg"]).tolist() == [2, 0]
    assert match_names(PATHS, ["x2.jpg"], by="basename").tolist() == [1]
    assert match_names(PATHS, ["y1", "x2"], by="stem").dtype == np.int64


def test_duplicate_rule_raises_only_when_asked_for():
    # x1 is held by a/x1.jpg and b/x1.png: ambiguous by stem, but y1 may still be matched
    assert match_names(PATHS, ["y1"], by="stem").tolist() == [2]
    with pytest.raises(DataError, match=r"several images.*'x1': a/x1.jpg, b/x1.png"):
        match_names(PATHS, ["x1"], by="stem")
    with pytest.raises(DataError, match="several images"):  # ambiguity is never resolved by "skip"
        match_names(PATHS, ["x1"], by="stem", missing="skip")


def test_missing_names():
    with pytest.raises(DataError, match=r"2 of 3 names are not in the archive.*zz, qq"):
        match_names(PATHS, ["x2", "zz", "qq"], by="stem")
    assert match_names(PATHS, ["x2", "zz"], by="stem", missing="skip").tolist() == [1, -1]
    idx = NameIndex(PATHS, by="basename")
    assert "y1.jpg" in idx and "y1" not in idx and len(idx) == 4


def test_datasets_share_the_rule(tmp_path):
    """PatternCom and xView2 used to let the first / last of two equal basenames win; now both refuse."""
    from rscir_kit.datasets.patterncom import PatternCom
    from rscir_kit.datasets.synthetic import synthetic_patterncom
    from rscir_kit.datasets.xview2 import xview2_queries

    archive, _, root = synthetic_patterncom(tmp_path / "pc", images_per_class=3, rows_per_class=2)
    paths = list(archive.paths) + ["copy/" + archive.paths[0].split("/")[1]]  # airplane001.jpg twice
    with pytest.raises(DataError, match="airplane001.jpg"):
        PatternCom(root).queries(paths)
    csv = tmp_path / "x.csv"
    csv.write_text("image,query_default,query_alt1,query_alt2,target\n"
                   "a/p_pre.tif,post flood,flooded,after,a/p_post.tif\n")
    with pytest.raises(DataError, match="several images"):
        xview2_queries(csv, ["a/p_pre.tif", "a/p_post.tif", "b/p_post.tif"])
    assert xview2_queries(csv, ["a/p_pre.tif", "a/p_post.tif"]).positives(0).tolist() == [1]

"""UCM-Com construction: a hand-made annotation with known groups, and the counts of the real annotation."""
import numpy as np
import pandas as pd
import pytest

from rscir_kit.datasets.ucm import UCMMultiLabel
from rscir_kit.datasets.ucmcom import (PUBLISHED_CSV, build_ucmcom, load_groups, load_ucmcom, resolve_template,
                                       save_groups, ucmcom_groups)
from rscir_kit.errors import DataError


@pytest.fixture
def tiny(tmp_path):
    """beach00-09: cars on 00-04 (5 with / 5 without -> a group), trees on 00-03 (4 with -> no group);
    forest00-05: all trees (0 without -> no group)."""
    rows = [f"beach{i:02d}\t{int(i < 5)}\t{int(i < 4)}" for i in range(10)]
    rows += [f"forest{i:02d}\t0\t1" for i in range(6)]
    p = tmp_path / "m.tsv"
    p.write_text("IMAGE\\LABEL\tcars\ttrees\n" + "\n".join(rows) + "\n")
    return UCMMultiLabel(path=p)


def test_groups_respect_min_count(tiny):
    g = ucmcom_groups(tiny)
    assert g[["query_class", "label", "n_with", "n_without"]].values.tolist() == [["beach", "cars", 5, 5]]
    assert ucmcom_groups(tiny, min_count=4)["label"].tolist() == ["cars", "trees"]  # trees: 4 with, 6 without
    with pytest.raises(DataError, match="no \\(class, label\\)"):
        ucmcom_groups(tiny, min_count=6)


def test_queryset_pairs_and_positives(tiny):
    # archive in another order, with extra images that are never positives
    archive = [f"x/forest{i:02d}.jpg" for i in range(6)] + [f"x/beach{i:02d}.jpg" for i in range(9, -1, -1)]
    qs = build_ucmcom(tiny, archive)
    t = qs.table
    assert len(qs) == 10 and qs.meta["n_groups"] == 1
    add = t[t.direction == "add"]
    assert add.query_name.tolist() == [f"beach{i:02d}" for i in range(5, 10)]
    assert set(add.text) == {"with cars"} and set(add.attribute) == {"cars"} and set(add.query_class) == {"beach"}
    assert add.query_path.iloc[0] == "x/beach05.jpg"
    # positives of "add": beach00-04, at archive positions 6 + (9 - i)
    assert qs.positives(add.index[0]).tolist() == sorted(6 + 9 - i for i in range(5))
    rem = t[t.direction == "remove"]
    assert rem.query_name.tolist() == [f"beach{i:02d}" for i in range(5)] and set(rem.text) == {"without cars"}
    assert qs.positives(rem.index[0]).tolist() == sorted(6 + 9 - i for i in range(5, 10))
    for i in range(len(qs)):  # a query is never its own positive
        assert archive.index(t.query_path[i]) not in qs.positives(i)


def test_missing_archive_images(tiny):
    archive = [f"beach{i:02d}.jpg" for i in range(8)]
    with pytest.raises(DataError, match="beach08"):
        build_ucmcom(tiny, archive)
    qs = build_ucmcom(tiny, archive, missing="drop")
    assert len(qs) == 8 and qs.table.query_name.max() == "beach07"


def test_templates(tiny):
    assert resolve_template("with") == ("with {label}", "without {label}")
    assert resolve_template("an aerial image with {label}") == ("an aerial image with {label}",
                                                                 "an aerial image without {label}")
    assert resolve_template("{label}") == ("{label}", "no {label}")
    with pytest.raises(DataError, match="remove_template"):
        resolve_template("a photo of {label}")
    assert resolve_template("a photo of {label}", "a photo lacking {label}")[1] == "a photo lacking {label}"
    qs = build_ucmcom(tiny, template="label")
    assert sorted(set(qs.table.text)) == ["cars", "no cars"]


def test_groups_csv_round_trip(tiny, tmp_path):
    g = ucmcom_groups(tiny)
    save_groups(g, tmp_path / "q.csv")
    assert load_groups(tmp_path / "q.csv").equals(g)
    bad = pd.read_csv(tmp_path / "q.csv")
    bad.loc[0, "n_with"] = 4
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="row 2"):
        load_groups(tmp_path / "bad.csv")


# ----------------------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def real_labels(shared_data):
    return UCMMultiLabel(shared_data / "ucm")


@pytest.mark.realdata
def test_real_ucmcom_counts(real_labels, shared_data):
    qs = build_ucmcom(real_labels)
    t = qs.table
    # Independent recount straight from the TSV with pandas.
    df = pd.read_csv(shared_data / "ucm" / "multilabels.tsv", sep="\t", index_col=0)
    cls = df.index.str.rstrip("0123456789")
    with_l = df.groupby(cls).sum()
    without_l = df.groupby(cls).size().to_numpy()[:, None] - with_l
    ok = (with_l >= 5) & (without_l >= 5)
    assert qs.meta["n_groups"] == int(ok.values.sum()) == 80
    # every group: the query count of each direction is the pandas count of images lacking / having the label
    per_group = t.groupby(["query_class", "label", "direction"]).size()
    for (c, lab), good in ok.stack().items():
        if good:
            assert per_group[c, lab, "add"] == without_l.loc[c, lab]
            assert per_group[c, lab, "remove"] == with_l.loc[c, lab]
            pid_add = t[(t.query_class == c) & (t.label == lab) & (t.direction == "add")].positive_id.iloc[0]
            assert len(qs.positive_sets[pid_add]) == with_l.loc[c, lab]
    assert (t.direction == "add").sum() == int(without_l[ok].sum().sum()) == 3827
    assert (t.direction == "remove").sum() == int(with_l[ok].sum().sum()) == 4173
    assert len(qs) == 8000  # every group covers all 100 images of its class, once as a query
    per = t.groupby(["query_class", "label", "direction"]).size()
    assert per["airplane", "cars", "add"] == 36 and per["airplane", "cars", "remove"] == 64
    assert per["chaparral", "chaparral", "add"] == 7
    assert per["river", "cars", "add"] == 95  # exactly 5 river images with cars: the boundary case
    assert not {"beach", "forest", "harbor"} & set(t.query_class)
    assert set(t.label) == {"bare-soil", "buildings", "cars", "chaparral", "field", "grass", "pavement", "sand",
                            "trees"}


@pytest.mark.realdata
def test_published_csv_matches_the_annotation(real_labels, shared_data):
    assert load_groups(PUBLISHED_CSV).equals(ucmcom_groups(real_labels))
    from rscir_kit.datasets.ucm import UCMImages

    paths = UCMImages(shared_data / "ucm").paths
    a, b = load_ucmcom(paths), build_ucmcom(real_labels, paths)
    assert a.table.equals(b.table)
    assert all(np.array_equal(x, y) for x, y in zip(a.positive_sets, b.positive_sets))

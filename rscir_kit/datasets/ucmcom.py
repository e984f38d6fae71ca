"""UCM-Com: composed queries on real UC Merced images from the real multi-label annotation.

In the spirit of PatternCom's *existence* attribute. For each class C and label L such that at least
``min_count`` images of C carry L and at least ``min_count`` lack it (a *group*):

* direction ``add``: each image of C **without** L + the text "with L" → positives: the images of C with L;
* direction ``remove``: each image of C **with** L + the text "without L" → positives: the images of C without L.

Query and positive sets are disjoint, so a query never retrieves itself as a positive. The text is a
template parameter (:data:`TEMPLATES`). With the real annotation (min_count 5) there are 80 groups
(class, label) and 8,000 query pairs (100 per group: every image of C is a query in one direction).

The query set is published as ``rscir_kit/data/ucmcom_queries.csv`` (package data, read with
:mod:`importlib.resources`, so installed wheels carry it) (one row per group: class, label and the
space-separated image names with and without the label; see :func:`save_groups`), so it can be reused
without this code.
"""
from __future__ import annotations

import importlib.resources
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import DataError, ParameterError
from ..imagesets import ImageCollection
from ..io import atomic_path, read_text
from ..names import NameIndex, name_key
from ..queries import QuerySet
from .base import Benchmark
from .ucm import UCMImages, UCMMultiLabel, default_root

# name -> (add template, remove template); "{label}" is replaced by the label text (hyphen → space).
TEMPLATES = {
    "label": ("{label}", "no {label}"),
    "with": ("with {label}", "without {label}"),
    "aerial": ("an aerial image with {label}", "an aerial image without {label}"),
}
#: The published query set (package data: present in every installed copy, editable or wheel).
PUBLISHED_CSV = importlib.resources.files("rscir_kit") / "data" / "ucmcom_queries.csv"
GROUP_COLUMNS = ["query_class", "label", "n_with", "n_without", "with_label", "without_label"]


def label_text(label: str) -> str:
    """Label as written in a query text: ``bare-soil`` → ``bare soil``."""
    return label.replace("-", " ")


def resolve_template(template: str | tuple = "with {label}", remove_template: str | None = None) -> tuple[str, str]:
    """(add, remove) templates from a preset name (:data:`TEMPLATES`), a pair, or an add template.

    An add template containing ``with {label}`` gives the remove template by ``with`` → ``without``;
    ``{label}`` alone gives ``no {label}``; anything else needs ``remove_template``.
    """
    if isinstance(template, (tuple, list)):
        add, rem = template
    elif template in TEMPLATES:
        add, rem = TEMPLATES[template]
    else:
        add = template
        if remove_template is not None:
            rem = remove_template
        elif "with {label}" in add:
            rem = add.replace("with {label}", "without {label}")
        elif add.strip() == "{label}":
            rem = "no {label}"
        else:
            raise DataError(f"cannot derive the 'remove' text from template {add!r}: pass remove_template= "
                            f"(e.g. 'an aerial image without {{label}}') or a preset {sorted(TEMPLATES)}.")
    if remove_template is not None:
        rem = remove_template
    for t in (add, rem):
        if "{label}" not in t:
            raise DataError(f"template {t!r} must contain '{{label}}'.")
    return add, rem


def ucmcom_groups(multilabels: UCMMultiLabel, min_count: int = 5) -> pd.DataFrame:
    """The UCM-Com groups: one row per (class, label) with >= ``min_count`` images with and without it.

    Columns :data:`GROUP_COLUMNS`; ``with_label``/``without_label`` are sorted lists of image names.
    Each row gives two directions: ``add`` (queries = without_label, positives = with_label) and
    ``remove`` (queries = with_label, positives = without_label).
    """
    if min_count < 1:
        raise DataError(f"min_count must be >= 1, got {min_count}.")
    rows = []
    names = multilabels.names
    for cls in sorted(set(multilabels.classes.tolist())):
        in_cls = multilabels.classes == cls
        for label in multilabels.labels:
            has = multilabels.has(label)
            with_l = sorted(names[in_cls & has].tolist())
            without_l = sorted(names[in_cls & ~has].tolist())
            if len(with_l) >= min_count and len(without_l) >= min_count:
                rows.append((cls, label, len(with_l), len(without_l), with_l, without_l))
    if not rows:
        raise DataError(f"no (class, label) has >= {min_count} images with and without the label in "
                        f"{multilabels.path}.")
    return pd.DataFrame(rows, columns=GROUP_COLUMNS)


def save_groups(groups: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the groups as CSV (image names space-separated); atomic (temp file + replace)."""
    path = Path(path)
    out = groups[GROUP_COLUMNS].copy()
    out["with_label"] = [" ".join(q) for q in out["with_label"]]
    out["without_label"] = [" ".join(p) for p in out["without_label"]]
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False)
    return path


def load_groups(path: str | os.PathLike = PUBLISHED_CSV) -> pd.DataFrame:
    """Read a published UCM-Com CSV back into the groups table; DataError naming the row on bad content.
    ``path``: a file, or the package resource :data:`PUBLISHED_CSV`."""
    if not isinstance(path, (str, os.PathLike)):  # a package resource (importlib.resources)
        with importlib.resources.as_file(path) as real:
            return load_groups(real)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"UCM-Com query file {path} not found; build it with build_ucmcom() from the "
                        f"multi-label annotation instead.")
    df = pd.read_csv(io.StringIO(read_text(path, "UCM-Com query file")), dtype=str, keep_default_na=False)
    missing = set(GROUP_COLUMNS) - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}; expected {GROUP_COLUMNS}.")
    df["with_label"] = [q.split() for q in df["with_label"]]
    df["without_label"] = [p.split() for p in df["without_label"]]
    for i, row in df.iterrows():
        if int(row["n_with"]) != len(row["with_label"]) or int(row["n_without"]) != len(row["without_label"]):
            raise DataError(f"{path}: row {i + 2}: n_with/n_without do not match the listed image names.")
        if set(row["with_label"]) & set(row["without_label"]):
            raise DataError(f"{path}: row {i + 2}: an image is listed both with and without {row['label']}.")
    df["n_with"] = df["n_with"].astype(int)
    df["n_without"] = df["n_without"].astype(int)
    return df[GROUP_COLUMNS]


def queryset_from_groups(groups: pd.DataFrame, archive_paths: Sequence[str], template="with {label}",
                         remove_template: str | None = None, missing: str = "error", meta: dict | None = None):
    """Turn UCM-Com groups into a :class:`~rscir_kit.queries.QuerySet` over ``archive_paths``.

    Images are matched to ``archive_paths`` by file stem. ``missing``: ``"error"`` (DataError naming the
    images absent from the archive) or ``"drop"`` (leave them out, e.g. for a size-limited archive;
    a group left without queries or positives is dropped).
    One positive set per (group, direction); table columns: query_path, query_name, text, positive_id,
    attribute (= label), label, direction, query_class.
    """
    if missing not in ("error", "drop"):
        raise DataError(f"missing must be 'error' or 'drop', got {missing!r}.")
    add_t, rem_t = resolve_template(template, remove_template)
    archive_paths = np.asarray([str(p) for p in archive_paths], dtype=str)
    index = NameIndex(archive_paths, by="stem", what=f"archive ({len(archive_paths)} paths)")
    names = sorted({n for col in ("with_label", "without_label") for ns in groups[col] for n in ns})
    # missing="error": DataError naming the absent images; ambiguous names raise either way (names.py rule)
    found = index.positions(names, missing="error" if missing == "error" else "skip")
    lookup = {n: int(i) for n, i in zip(names, found) if i >= 0}
    rows, positive_sets = [], []
    for g in groups.itertuples(index=False):
        for direction, queries, positives, tmpl in (("add", g.without_label, g.with_label, add_t),
                                                    ("remove", g.with_label, g.without_label, rem_t)):
            q_idx = [lookup[n] for n in queries if n in lookup]
            p_idx = np.asarray(sorted(lookup[n] for n in positives if n in lookup), dtype=np.int64)
            if not q_idx or p_idx.size == 0:
                continue
            text = tmpl.format(label=label_text(g.label))
            pid = len(positive_sets)
            positive_sets.append(p_idx)
            for qi in q_idx:
                rows.append((archive_paths[qi], name_key(archive_paths[qi], "stem"), text, pid, g.label, g.label,
                             direction, g.query_class))
    if not rows:
        raise DataError("no UCM-Com query left after matching images to the archive.")
    table = pd.DataFrame(rows, columns=["query_path", "query_name", "text", "positive_id", "attribute", "label",
                                        "direction", "query_class"])
    info = {"dataset": "ucmcom", "template": add_t, "remove_template": rem_t, "n_groups": int(len(table.drop_duplicates(["query_class", "label"]))),
            "n_positive_sets": len(positive_sets), "n_queries": len(table)}
    info.update(meta or {})
    return QuerySet("ucmcom", table, positive_sets, archive_paths, info)


def build_ucmcom(multilabels: UCMMultiLabel | None = None, archive_paths: Sequence[str] | None = None,
                 template="with {label}", min_count: int = 5, remove_template: str | None = None,
                 missing: str = "error"):
    """UCM-Com QuerySet built from the annotation (default: ``UCMMultiLabel()`` from ``$RSCIR_DATA/ucm``).

    ``archive_paths`` (N,): paths of the archive features (matched by file stem); default: the
    annotation's image names. ``template``: preset name (``label``/``with``/``aerial``), a pair, or an add
    template with ``{label}``. See :func:`queryset_from_groups` for the table.
    """
    if multilabels is None:
        multilabels = UCMMultiLabel()
    groups = ucmcom_groups(multilabels, min_count=min_count)
    if archive_paths is None:
        archive_paths = multilabels.names
    return queryset_from_groups(groups, archive_paths, template, remove_template, missing,
                                meta={"min_count": min_count, "annotation": str(multilabels.path)})


def load_ucmcom(archive_paths: Sequence[str], path: str | os.PathLike = PUBLISHED_CSV, template="with {label}",
                remove_template: str | None = None, missing: str = "error"):
    """UCM-Com QuerySet from the published CSV (no annotation needed)."""
    groups = load_groups(path)
    return queryset_from_groups(groups, archive_paths, template, remove_template, missing,
                                meta={"source": str(path)})


class UCMCom(Benchmark):
    """UCM-Com as a benchmark: UC Merced images under ``root`` (default ``$RSCIR_DATA/ucm``) and the queries.

    ``queries_file``: None → built from the multi-label annotation in ``root`` (fetched with ``download=True``);
    ``"published"`` → the query set shipped with the kit (:data:`PUBLISHED_CSV`); else a group CSV written by
    :func:`save_groups`. ``template``: a preset (:data:`TEMPLATES`), a pair, or an add template with ``{label}``.
    """

    name, title, group_columns = "ucmcom", "UCM-Com", ("attribute", "direction", "query_class")
    downloadable, url = True, "http://weegee.vision.ucmerced.edu/datasets/landuse.html"

    def __init__(self, root=None, download: bool = False, queries_file=None, template="with {label}",
                 remove_template: str | None = None, min_count: int = 5):
        self.root = default_root(root)
        self.download = download
        self.queries_file = PUBLISHED_CSV if queries_file == "published" else queries_file
        self.template, self.remove_template, self.min_count = template, remove_template, min_count
        resolve_template(template, remove_template)  # a bad template fails here, before any data is read

    @classmethod
    def default_root(cls, data_root=None) -> Path:
        return default_root(None if data_root is None else Path(data_root) / "ucm")

    def archive(self, size: int | None = None) -> ImageCollection:
        """The 2,100 UC Merced images (``size`` per class when set; then the 21 × 100 check is relaxed)."""
        ucm = UCMImages(self.root, download=self.download, strict=size is None)
        return ImageCollection.from_folder(ucm.image_dir, limit_per_class=size)

    def queries(self, archive_paths, missing: str = "error", query_paths=None) -> QuerySet:
        if query_paths is not None:
            raise ParameterError("UCM-Com queries are archive images: do not pass separate query features")
        if self.queries_file is not None:
            return load_ucmcom(archive_paths, self.queries_file, self.template, self.remove_template, missing)
        labels = UCMMultiLabel(self.root, download=self.download)
        return build_ucmcom(labels, archive_paths, self.template, self.min_count, self.remove_template, missing)

"""xView2-CIR (official WeiCom release): pre-disaster image + text ("post flood") → its post-disaster image.

CSV columns ``image,query_default,query_alt1,query_alt2,target`` (291 queries). Images come from the
xView2 challenge data (https://xview2.org, registration required): extract features for the
pre- and post-disaster images you have, then evaluate. Paths are matched by their basename
(:mod:`rscir_kit.names`: a basename held by two paths is an error).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import data_root as default_data_root
from ..errors import DataError, DatasetNotFoundError, ParameterError
from ..imagesets import ImageCollection
from ..io import read_text
from ..names import NameIndex
from ..queries import QuerySet
from .base import Benchmark

COLUMNS = ("image", "query_default", "query_alt1", "query_alt2", "target")
TEXT_COLUMNS = ("query_default", "query_alt1", "query_alt2")


def read_xview2_csv(path) -> pd.DataFrame:
    """Rows of the xView2-CIR list, with DataError naming the line of a malformed row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"xView2-CIR list {path} not found; it ships with the official WeiCom code "
                        "(github.com/billpsomas/rscir, xview2_cir.csv)")
    with io.StringIO(read_text(path, "the xView2-CIR list"), newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != COLUMNS:
            raise DataError(f"{path}, line 1: expected header {','.join(COLUMNS)}, got {header!r}")
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(COLUMNS) or not all(c.strip() for c in row):
                raise DataError(f"{path}, line {line_no}: expected {len(COLUMNS)} non-empty fields, got {row!r}")
            rows.append([c.strip() for c in row] + [line_no])
    return pd.DataFrame(rows, columns=list(COLUMNS) + ["line"])


def disaster_of(path: str) -> str:
    """``test/images/mexico-earthquake_00000063_pre_disaster.tif`` → ``mexico-earthquake``."""
    return Path(path).name.split("_")[0]


def xview2_queries(csv_path, archive_paths, query_paths=None, text_columns=("query_default",)) -> QuerySet:
    """QuerySet: each row × each chosen text column; the single positive is the row's target image.

    archive_paths: (N,) paths of the searched images (must hold every target; matched by basename).
    query_paths: paths of the query-image feature file (default: the archive), matched by basename.
    """
    rows = read_xview2_csv(csv_path)
    for col in text_columns:
        if col not in TEXT_COLUMNS:
            raise ParameterError(f"unknown text column {col!r}; choose from {', '.join(TEXT_COLUMNS)}")
    archive_paths = np.asarray(archive_paths).astype(str)
    query_paths = archive_paths if query_paths is None else np.asarray(query_paths).astype(str)
    targets = NameIndex(archive_paths, by="basename", what="archive").positions(rows["target"], missing="skip")
    queries = NameIndex(query_paths, by="basename", what="query feature file").positions(rows["image"], missing="skip")
    missing = [(Path(t).name, ln) for t, ln, i in zip(rows["target"], rows["line"], targets) if i < 0]
    missing += [(Path(q).name, ln) for q, ln, i in zip(rows["image"], rows["line"], queries) if i < 0]
    if missing:
        raise DataError(f"{csv_path}: {len(missing)} image(s) not in the feature files, e.g. "
                        + ", ".join(f"{n} (line {ln})" for n, ln in missing[:5])
                        + "; extract features for the pre- and post-disaster images of the list")
    records, sets = [], []
    for r, t, q in zip(rows.itertuples(index=False), targets, queries):
        sets.append(np.array([t], dtype=np.int64))
        for col in text_columns:
            records.append((query_paths[q], getattr(r, col), len(sets) - 1, disaster_of(r.image), col,
                            r.line))
    table = pd.DataFrame(records, columns=["query_path", "text", "positive_id", "disaster", "text_column", "line"])
    return QuerySet("xView2-CIR", table, sets, archive_paths, {"source": str(csv_path)})


class XView2CIR(Benchmark):
    """xView2-CIR as a benchmark: ``root`` holds ``xview2_cir.csv`` (default ``$RSCIR_DATA``); the archive is the
    list's pre- and post-disaster images under ``images_root`` (the xView2 challenge data, registration
    required). ``text_columns``: which phrasings are queries (each row × each column is one pair)."""

    name, title, group_columns = "xview2", "xView2-CIR", ("text_column", "disaster")
    url = "https://github.com/billpsomas/rscir"
    LIST = "xview2_cir.csv"

    def __init__(self, root=None, list_file=None, images_root=None, text_columns=("query_default",),
                 download: bool = False):
        self.root = Path(root).expanduser() if root is not None else self.default_root()
        self.list_file = Path(list_file) if list_file is not None else self.root / self.LIST
        self.images_root = None if images_root is None else Path(images_root).expanduser()
        self.text_columns = tuple(text_columns)
        bad = [c for c in self.text_columns if c not in TEXT_COLUMNS]
        if bad or not self.text_columns:
            raise ParameterError(f"unknown text column(s) {bad}; choose from {', '.join(TEXT_COLUMNS)}")
        self.manual = (f"take {self.LIST} from the official WeiCom code ({self.url}) and put it at {self.list_file}")
        if not self.list_file.is_file():
            raise DatasetNotFoundError(self, str(self.list_file), download=download)

    @classmethod
    def default_root(cls, data_root=None) -> Path:
        return Path(data_root or default_data_root())

    def archive(self, size: int | None = None) -> ImageCollection:
        """The list's pre- and post-disaster images (label: disaster), first ``size`` per disaster when set."""
        if self.images_root is None or not self.images_root.is_dir():
            self.manual = ("the images are the xView2 challenge data (registration required at https://xview2.org): "
                           "download them and pass images_root=<the folder the list's paths are relative to>")
            raise DatasetNotFoundError(self, f"xView2 images under {self.images_root}")
        rows = read_xview2_csv(self.list_file)
        paths = list(dict.fromkeys([*rows["image"], *rows["target"]]))
        return ImageCollection.from_dataset([(p, disaster_of(p)) for p in paths], root=self.images_root,
                                            limit_per_class=size)

    def queries(self, archive_paths, missing: str = "error", query_paths=None) -> QuerySet:
        if missing != "error":
            raise ParameterError("xView2-CIR has one positive per query: every target must be in the archive "
                                 "(missing='error')")
        return xview2_queries(self.list_file, archive_paths, query_paths=query_paths, text_columns=self.text_columns)

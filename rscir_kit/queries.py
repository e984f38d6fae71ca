"""Explicit composed-retrieval query sets: (query image, text, positive set) pairs for any benchmark.

A :class:`QuerySet` is what every benchmark (PatternCom, UCM-Com, xView2-CIR, ...) is turned into,
so one engine evaluates them all.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .errors import DataError
from .io import atomic_path, read_text

REQUIRED_COLUMNS = ("query_path", "text", "positive_id")


@dataclass
class QuerySet:
    """Q query pairs against an archive of N images.

    table: DataFrame, one row per (query image, text) pair, with columns ``query_path`` (path of the
        query image in the query feature file — the archive by default), ``text`` (the text query),
        ``positive_id`` (index into ``positive_sets``) and any grouping columns (e.g. ``attribute``).
    positive_sets: list of sorted int64 arrays of archive indices (into ``archive_paths``).
    archive_paths: (N,) paths of the archive the indices refer to.
    """

    name: str
    table: pd.DataFrame
    positive_sets: list
    archive_paths: np.ndarray
    meta: dict = field(default_factory=dict)
    checked: bool = field(default=False, repr=False, compare=False)  # quality warnings already given

    def __post_init__(self):
        missing = [c for c in REQUIRED_COLUMNS if c not in self.table.columns]
        if missing:
            raise DataError(f"query table lacks column(s) {missing}; it needs {list(REQUIRED_COLUMNS)}")
        self.table = self.table.reset_index(drop=True)
        self.table["positive_id"] = self.table["positive_id"].astype(np.int64)  # object dtype after empty concats
        self.archive_paths = np.asarray(self.archive_paths).astype(str)
        self.positive_sets = [np.unique(np.asarray(p, dtype=np.int64)) for p in self.positive_sets]
        ids = self.table["positive_id"].to_numpy()
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.positive_sets)):
            raise DataError("positive_id out of range of positive_sets")
        n = len(self.archive_paths)
        for k, p in enumerate(self.positive_sets):
            if len(p) and (p[0] < 0 or p[-1] >= n):
                raise DataError(f"positive set {k} has archive indices outside [0, {n})")
        if not self.checked:
            self.checked = True
            self._warn_quality()

    def _warn_quality(self) -> None:
        """Warn (with counts) about pairs that score but mislead: empty texts and exact duplicate pairs."""
        if not len(self.table):
            return
        text = self.table["text"].astype(str)
        empty = text.str.strip() == ""
        if empty.any():
            warnings.warn(f"query set {self.name!r}: {int(empty.sum())} of {len(self)} pairs have an empty text "
                          f"(e.g. row {int(np.flatnonzero(empty.to_numpy())[0])}); they are ranked by the empty "
                          "string's embedding. Fix or drop those rows", stacklevel=3)
        dup = self.table.astype(str).duplicated(keep="first")
        if dup.any():
            warnings.warn(f"query set {self.name!r}: {int(dup.sum())} of {len(self)} pairs are exact duplicates "
                          f"(e.g. row {int(np.flatnonzero(dup.to_numpy())[0])}); each counts again in the mAP. "
                          "Remove them for a clean benchmark", stacklevel=3)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def group_columns(self) -> list[str]:
        return [c for c in self.table.columns if c not in REQUIRED_COLUMNS]

    @property
    def n_positives(self) -> np.ndarray:
        """(Q,) number of relevant archive images per pair."""
        sizes = np.array([len(p) for p in self.positive_sets], dtype=np.int64)
        return sizes[self.table["positive_id"].to_numpy()] if len(self.table) else np.zeros(0, np.int64)

    def positives(self, i: int) -> np.ndarray:
        """Archive indices relevant to pair ``i``."""
        return self.positive_sets[int(self.table["positive_id"].iat[i])]

    def subset(self, rows) -> "QuerySet":
        """A QuerySet of the selected rows (bool mask or integer positions)."""
        table = self.table[rows] if np.asarray(rows).dtype == bool else self.table.iloc[rows]
        return QuerySet(self.name, table.copy(), self.positive_sets, self.archive_paths, dict(self.meta), checked=True)

    def bind(self, archive_paths) -> "QuerySet":
        """Re-express the positive sets for another archive ordering (same images, any order)."""
        archive_paths = np.asarray(archive_paths).astype(str)
        if np.array_equal(archive_paths, self.archive_paths):
            return self
        lookup = {p: i for i, p in enumerate(archive_paths)}
        used = sorted(set(self.table["positive_id"].tolist()))
        missing = sorted({str(self.archive_paths[j]) for k in used for j in self.positive_sets[k]} - lookup.keys())
        if missing:
            raise DataError(f"{len(missing)} positive image(s) of query set {self.name!r} are not in the archive, "
                            f"e.g. {missing[:3]}; extract features for the whole benchmark archive")
        # only the sets the table uses are re-expressed (a subset may leave sets whose images are not in the new
        # archive); positive ids are renumbered to the kept sets
        renumber = {k: i for i, k in enumerate(used)}
        sets = [np.sort(np.array([lookup[str(self.archive_paths[j])] for j in self.positive_sets[k]], dtype=np.int64))
                for k in used]
        table = self.table.assign(positive_id=self.table["positive_id"].map(renumber).astype(np.int64))
        return QuerySet(self.name, table, sets, archive_paths, dict(self.meta), checked=True)

    def summary(self, by=None) -> pd.DataFrame:
        """Pairs, distinct query images, distinct texts, and positives per group (a table)."""
        df = self.table.assign(n_pos=self.n_positives)
        by = list(by) if by else self.group_columns[:1]
        grouped = df.groupby(by, sort=True) if by else df.groupby(lambda _: "all")
        return grouped.agg(pairs=("text", "size"), query_images=("query_path", "nunique"),
                           texts=("text", "nunique"), mean_positives=("n_pos", "mean"),
                           empty=("n_pos", lambda s: int((s == 0).sum())))

    # ---------------------------------------------------------------- portable file
    def to_csv(self, path) -> None:
        """Write a self-contained CSV: the table plus a ``positives`` column of ';'-joined archive paths."""
        out = self.table.drop(columns=["positive_id"]).copy()
        out["positives"] = [";".join(self.archive_paths[self.positives(i)]) for i in range(len(self))]
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(f"# rscir-kit query set {json.dumps({'name': self.name, **self.meta})}\n")
                out.to_csv(fh, index=False)

    @classmethod
    def read_csv(cls, path, archive_paths) -> "QuerySet":
        """Read a file written by :meth:`to_csv` and bind it to ``archive_paths`` (DataError on unknown paths)."""
        text = read_text(path, "query-set file")
        first = text.split("\n", 1)[0]
        header = {}
        if first.startswith("# rscir-kit query set "):
            header = json.loads(first[len("# rscir-kit query set "):])
        df = pd.read_csv(io.StringIO(text), comment=None, skiprows=1 if header else 0, keep_default_na=False)
        for col in ("query_path", "text", "positives"):
            if col not in df.columns:
                raise DataError(f"{path}: column {col!r} missing; is this a query-set file written by rscir-kit?")
        archive_paths = np.asarray(archive_paths).astype(str)
        lookup = {p: i for i, p in enumerate(archive_paths)}
        keys, sets, ids = {}, [], []
        first_line = 3 if header else 2  # file line of the first data row (after the comment and the CSV header)
        for row, cell in enumerate(df["positives"].astype(str)):
            names = [p for p in cell.split(";") if p]
            unknown = [p for p in names if p not in lookup]
            if unknown:
                raise DataError(f"{path}, line {row + first_line}: positive image(s) {unknown[:3]} not in the archive; "
                                "extract features for the images this query set was built on")
            key = tuple(sorted(lookup[p] for p in names))
            if key not in keys:
                keys[key] = len(sets)
                sets.append(np.array(key, dtype=np.int64))
            ids.append(keys[key])
        table = df.drop(columns=["positives"]).assign(positive_id=ids)
        name = header.pop("name", str(path))
        return cls(name, table, sets, archive_paths, header)

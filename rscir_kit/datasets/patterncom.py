"""PatternCom (Psomas et al., 2024): composed queries on PatternNet, with the official protocol.

Files: one CSV per attribute (``color.csv``, ``context.csv``, ...), rows ``filename,attribute,value``
(no header in the official release; a header row is accepted). Protocol, exactly as the official
``evaluate.py``:

- the class of a row is its filename's prefix before the first digit (``swimmingpool001.jpg`` →
  ``swimmingpool``);
- query groups are the CSV's attribute column + class, classes merged per attribute (:data:`CLASS_MERGES`), as
  the official ``fix_query_attributelabels`` does on the concatenated string (:func:`group_key`); equal to
  "class" alone when the attribute column is constant, as in the released CSVs;
- every row is a query image; its prompts are the other values of its group; the text query is the
  value string itself;
- the archive is every image of the feature file; a retrieved image is relevant iff it is a row of
  the same CSV, has the prompt's value, and has the query's class under the global merge map
  (all ten merges together, :data:`GLOBAL_MERGE`);
- AP over the full ranking per (query, prompt); mAP per attribute; Avg = mean of the attributes.

Quirks kept for parity (documented, see README): archive images are matched by *basename* (a basename
held by two archive paths is an error, the rule of :mod:`rscir_kit.names`); when a
filename appears in several rows of one CSV, its *last* row decides its value for relevance (as the
official filename→row map does); the query image itself stays in the ranking (it is never relevant,
its value differs from the prompt); pairs without positives count as AP 0 (``on_empty='zero'``).
Deliberate differences: rows whose image is absent from the archive raise a DataError (the official
code drops them silently and misaligns its prompt list), and unknown classes are errors.
"""
from __future__ import annotations

import csv
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import data_root as default_data_root
from ..errors import DataError, DatasetNotFoundError, ParameterError
from ..imagesets import ImageCollection
from ..io import atomic_path, read_text
from ..names import NameIndex
from ..queries import QuerySet
from .base import Benchmark
from .patternnet import PATTERNNET_CLASSES, PatternNet

ATTRIBUTES = ("color", "context", "density", "existence", "quantity", "shape")

#: Per-attribute class merges that define the query groups (official code).
CLASS_MERGES: dict[str, dict[str, str]] = {
    "density": {"denseresidential": "residential", "sparseresidential": "residential"},
    "shape": {"closedroad": "road", "intersection": "road"},
    "context": {"bridge": "roadpass", "overpass": "roadpass"},
    "existence": {"ferryterminal": "pier", "harbor": "pier", "parkingspace": "parking", "parkinglot": "parking"},
}
#: All ten merges together: the class identity used for relevance.
GLOBAL_MERGE: dict[str, str] = {k: v for merges in CLASS_MERGES.values() for k, v in merges.items()}

_CLASS_RE = re.compile(r"\d")


def class_of(filename: str) -> str:
    """PatternCom class of a file name: the prefix before the first digit."""
    name = Path(filename).name
    prefix = _CLASS_RE.split(name, maxsplit=1)[0]
    if prefix == name:
        raise DataError(f"file name {filename!r} has no digit; PatternNet names look like 'swimmingpool001.jpg'")
    return prefix


def group_key(attribute: str, attribute_column: str, cls: str) -> str:
    """Query group of a row, exactly as the official code keys it: the CSV's attribute column + the row's class,
    with the per-attribute merges applied to that string (``densitydenseresidential`` → ``densityresidential``)."""
    key = f"{attribute_column}{cls}"
    for old, new in CLASS_MERGES.get(attribute, {}).items():
        key = key.replace(f"{attribute}{old}", f"{attribute}{new}")
    return key


def read_attribute_csv(path) -> pd.DataFrame:
    """Rows of one PatternCom CSV as a DataFrame (filename, attribute, value, class, line).

    Raises DataError naming the file and line for a malformed row or an unknown class.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"PatternCom file {path} not found; download PatternCom (see README) and pass its folder")
    known = set(PATTERNNET_CLASSES.values())
    rows = []
    with io.StringIO(read_text(path, "PatternCom CSV"), newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if line_no == 1 and [c.strip().lower() for c in row[:3]] == ["filename", "attribute", "value"]:
                continue
            if len(row) != 3 or not all(c.strip() for c in row):
                raise DataError(f"{path}, line {line_no}: expected 3 non-empty fields 'filename,attribute,value', "
                                f"got {row!r}; fix or remove the row")
            filename, attribute, value = (c.strip() for c in row)
            try:
                cls = class_of(filename)
            except DataError as exc:
                raise DataError(f"{path}, line {line_no}: {exc}") from None
            if cls not in known:
                raise DataError(f"{path}, line {line_no}: unknown class {cls!r} (from {filename!r}); "
                                f"PatternNet classes are {sorted(known)}")
            rows.append((filename, attribute, value, cls, line_no))
    if not rows:
        raise DataError(f"{path} has no rows")
    df = pd.DataFrame(rows, columns=["filename", "attribute", "value", "class", "line"])
    dup = df.duplicated(["filename", "attribute", "value"], keep="first")
    if dup.any():
        first = df[~dup].set_index(["filename", "attribute", "value"])["line"]
        examples = ", ".join(f"line {r.line} = line {first[(r.filename, r.attribute, r.value)]}"
                             for r in df[dup].head(3).itertuples())
        warnings.warn(f"{path}: {int(dup.sum())} duplicate row(s) ({examples}); each is a query of its own and is "
                      "counted again in the mAP, as in the official code. Remove them for a clean benchmark",
                      stacklevel=2)
    return df


def build_attribute_queries(rows: pd.DataFrame, attribute: str, archive: NameIndex,
                            missing: str = "error", source: str = "") -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Query pairs and positive sets of one attribute's rows (see module doc); ``archive``: the archive
    paths as a :class:`~rscir_kit.names.NameIndex` by basename."""
    group = pd.Series([group_key(attribute, a, c) for a, c in zip(rows["attribute"], rows["class"])],
                      index=rows.index, dtype=object)
    gclass = rows["class"].map(lambda c: GLOBAL_MERGE.get(c, c))

    names = rows["filename"].drop_duplicates()
    index = {f: int(i) for f, i in zip(names, archive.positions(names, missing="skip")) if i >= 0}
    in_archive = rows["filename"].map(lambda f: f in index)
    if not in_archive.all():
        absent = rows.loc[~in_archive, ["filename", "line"]]
        msg = (f"{source}: {len(absent)} query image(s) are not in the archive features, e.g. "
               + ", ".join(f"{f} (line {ln})" for f, ln in absent.head(5).itertuples(index=False))
               + "; extract features for all PatternNet images (rscir-kit extract)")
        if missing == "error":
            raise DataError(msg)

    # Relevance label of each archive image: the last CSV row naming it (official filename→row map).
    last = rows.assign(gclass=gclass).drop_duplicates("filename", keep="last")
    last = last[last["filename"].map(lambda f: f in index)]
    positives: dict[tuple[str, str], np.ndarray] = {
        key: np.sort(np.array([index[f] for f in grp["filename"]], dtype=np.int64))
        for key, grp in last.groupby(["gclass", "value"], sort=False)
    }

    values_of_group = rows.groupby(group)["value"].agg(lambda s: sorted(set(s)))
    pairs, sets, set_ids = [], [], {}
    for r, g, gc, present in zip(rows.itertuples(index=False), group, gclass, in_archive):
        if not present:
            continue
        for prompt in values_of_group[g]:
            if prompt == r.value:
                continue
            key = (gc, prompt)
            if key not in set_ids:
                set_ids[key] = len(sets)
                sets.append(positives.get(key, np.zeros(0, dtype=np.int64)))
            pairs.append((r.filename, prompt, set_ids[key], attribute, r[3], g, r.value, prompt, r.line))
    table = pd.DataFrame(pairs, columns=["query_basename", "text", "positive_id", "attribute", "query_class",
                                         "group", "query_value", "target_value", "line"])
    return table, sets


class PatternCom(Benchmark):
    """The PatternCom benchmark: ``root`` holds the ``<attribute>.csv`` files (or ``PatternCom/<attribute>.csv``);
    the archive is PatternNet under ``images_root`` (default ``$RSCIR_DATA/PatternNet``).

    >>> bench = PatternCom("~/data/PatternCom")             # doctest: +SKIP
    >>> queries = bench.queries(archive.paths)              # QuerySet over the archive
    """

    name, title, group_columns = "patterncom", "PatternCom", ("attribute", "query_class", "query_value")
    url = "https://github.com/billpsomas/rscir"

    def __init__(self, root=None, images_root=None, download: bool = False):
        root = Path(root).expanduser() if root is not None else self.default_root()
        self.root = root
        self.images_root = Path(images_root).expanduser() if images_root is not None else None
        self.manual = (f"download the PatternCom folder of the official WeiCom repository ({self.url}) into "
                       f"{root} (one <attribute>.csv per attribute)")
        for candidate in (root, root / "PatternCom", root / "patterncom"):
            if any((candidate / f"{a}.csv").is_file() for a in ATTRIBUTES):
                self.root = candidate
                break
        else:
            raise DatasetNotFoundError(self, f"PatternCom CSVs ({', '.join(a + '.csv' for a in ATTRIBUTES)}) in {root} or "
                                             f"{root / 'PatternCom'}", download=download)

    @classmethod
    def default_root(cls, data_root=None) -> Path:
        """The first of ``<data_root>/PatternCom``, ``<data_root>/PatternNet/PatternCom``, ``<data_root>/PatternNet``,
        ``<data_root>`` that holds the CSVs (``<data_root>/PatternCom`` when none does)."""
        base = Path(data_root or default_data_root())
        candidates = (base / "PatternCom", base / "PatternNet" / "PatternCom", base / "PatternNet", base)
        return next((c for c in candidates if any((c / f"{a}.csv").is_file() for a in ATTRIBUTES)), candidates[0])

    @classmethod
    def from_data_root(cls, data_root=None, **options) -> "PatternCom":
        """CSVs found by :meth:`default_root`, images in ``<data_root>/PatternNet``."""
        base = Path(data_root or default_data_root())
        return cls(cls.default_root(base), **{"images_root": base / "PatternNet", **options})

    def archive(self, size: int | None = None) -> ImageCollection:
        """PatternNet images (``size`` per class when set) under ``images_root``, else
        ``$RSCIR_DATA/PatternNet``."""
        pn = PatternNet(self.images_root or default_data_root() / "PatternNet")
        return ImageCollection.from_dataset(pn, root=pn.root, limit_per_class=size)

    @property
    def attributes(self) -> list[str]:
        return [a for a in ATTRIBUTES if (self.root / f"{a}.csv").is_file()]

    def rows(self, attribute: str) -> pd.DataFrame:
        if attribute not in ATTRIBUTES:
            raise DataError(f"unknown attribute {attribute!r}; PatternCom has {', '.join(ATTRIBUTES)}")
        return read_attribute_csv(self.root / f"{attribute}.csv")

    def queries(self, archive_paths, missing: str = "error", query_paths=None, attributes=None) -> QuerySet:
        """All (query, prompt) pairs of ``attributes`` (default: every CSV present) as a QuerySet over
        ``archive_paths`` (N,).

        ``missing='error'`` (default) raises on a query image absent from the archive; ``'drop'``
        leaves such rows out (their images still count as relevant only if present). The query images are
        archive images (``query_paths`` must be None).
        """
        if query_paths is not None:
            raise ParameterError("PatternCom queries are archive images: do not pass separate query features")
        if missing not in ("error", "drop"):
            raise ParameterError(f"missing must be 'error' or 'drop', got {missing!r}")
        archive_paths = np.asarray(archive_paths).astype(str)
        archive = NameIndex(archive_paths, by="basename", what="archive")
        tables, all_sets = [], []
        for attribute in attributes or self.attributes:
            csv_path = self.root / f"{attribute}.csv"
            table, sets = build_attribute_queries(self.rows(attribute), attribute, archive, missing, str(csv_path))
            if table.empty:
                warnings.warn(f"{csv_path}: no query pairs (every class group has a single {attribute} value, so there "
                              "is no other value to ask for); the attribute is left out", stacklevel=2)
                continue
            table["positive_id"] += len(all_sets)
            all_sets.extend(sets)
            tables.append(table)
        if not tables:
            raise DataError(f"{self.root}: no query pairs in {', '.join(a + '.csv' for a in attributes or self.attributes)}"
                            " (each class group needs at least two values of its attribute)")
        table = pd.concat(tables, ignore_index=True)
        names = table.pop("query_basename")
        table.insert(0, "query_path", archive_paths[archive.positions(names)] if len(names) else names)
        return QuerySet("PatternCom", table, all_sets, archive_paths,
                        {"protocol": "official WeiCom evaluate.py (see rscir_kit.datasets.patterncom)"})


# ------------------------------------------------------------------------------- official results layout
#: Method names of the official evaluate.py.
OFFICIAL_METHOD_NAMES = {"image": "Image only", "text": "Text only", "average": "Average Similarities",
                         "weicom": "Weighted Similarities Norm"}


def official_tables(per_pair: pd.DataFrame, ks=(5, 10, 15, 20), decimals: int | None = 2) -> dict:
    """The official evaluate.py's results, one table per (λ, attribute): ``{(λ, attribute): DataFrame}``.

    Columns ``Method, R@k…, P@k…, AP`` (in %); each pair's values are rounded to ``decimals`` (official: 2; None:
    exact) before the mean, and the mean is rounded to 2 decimals, as the official code does. Methods without λ
    appear in every λ's table, as in the official loop. ``per_pair``: :func:`rscir_kit.engine.evaluate`'s output
    with the P@k/R@k columns for ``ks``.
    """
    missing = [f"{m}@{k}" for k in ks for m in ("p", "r") if f"{m}@{k}" not in per_pair.columns]
    if missing:
        raise DataError(f"the evaluation has no {', '.join(missing)} columns: evaluate with ks={list(ks)}")
    has_lam = per_pair["lambda"].notna()
    lambdas = sorted(per_pair.loc[has_lam, "lambda"].unique().tolist()) or [None]
    cols = [("R@%d" % k, f"r@{k}") for k in ks] + [("P@%d" % k, f"p@{k}") for k in ks] + [("AP", "ap")]
    tables = {}
    for lam in lambdas:
        rows_of_lam = per_pair[~has_lam | (per_pair["lambda"] == lam)] if lam is not None else per_pair
        for attribute in dict.fromkeys(per_pair["attribute"]):
            part = rows_of_lam[rows_of_lam["attribute"] == attribute]
            rows = []
            for method in dict.fromkeys(part["method"]):
                sel = part[part["method"] == method]
                row = {"Method": OFFICIAL_METHOD_NAMES.get(str(method), str(method))}
                for name, col in cols:
                    values = 100.0 * sel[col].to_numpy(dtype=float)
                    if decimals is not None:
                        values = np.round(values, decimals)
                    values = values[~np.isnan(values)]
                    row[name] = round(float(values.mean()), 2) if len(values) else 0.0
                rows.append(row)
            tables[(lam, attribute)] = pd.DataFrame(rows, columns=["Method"] + [c for c, _ in cols])
    return tables


def write_official_csvs(per_pair: pd.DataFrame, out_dir, model_name: str, ks=(5, 10, 15, 20),
                        decimals: int | None = 2, dataset: str = "patternnet") -> list[Path]:
    """Write :func:`official_tables` as the official code names its files:
    ``<out_dir>/<dataset>_metrics_<model_name>_lambda<λ>_<attribute>.csv``; returns the paths."""
    out_dir = Path(out_dir)
    written = []
    for (lam, attribute), table in official_tables(per_pair, ks, decimals).items():
        lam_part = f"_lambda{lam}" if lam is not None else ""
        path = out_dir / f"{dataset}_metrics_{model_name}{lam_part}_{attribute}.csv"
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
        written.append(path)
    return written

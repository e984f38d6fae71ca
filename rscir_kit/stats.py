"""Honest statistics for method comparisons: a stored validation/test split of the query *images*, bootstrap
confidence intervals over query images, and the paired bootstrap test "method A beats method B".

Why query images (not pairs): the pairs of one query image share its embedding and its neighbourhood, so
their APs are correlated. Hyper-parameters tuned on some pairs of an image and reported on its other pairs
leak; a bootstrap over pairs under-states the spread. Everything here therefore splits and resamples
*query images*, and every pair goes wherever its query image goes.

- :func:`split_query_images` → :class:`QuerySplit`: a seeded split, reproducible on any machine (the order is
  the SHA-256 of ``"<seed>:<image>"``, not a platform RNG), optionally stratified (e.g. by class), saved to
  and loaded from JSON, and checked against the benchmark's images when reused.
- :func:`bootstrap_map`: percentile 95 % CIs of every mAP in a summary table (per method, λ and group, plus
  the mean over groups), all replicates in one matrix product.
- :func:`paired_bootstrap`: the difference mAP(A) − mAP(B) with its CI and a one-sided p-value, on the *same*
  resampled query images for both methods.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError, ParameterError
from .io import atomic_path

SPLIT_FORMAT = 1
VALIDATION, TEST = "validation", "test"


# ----------------------------------------------------------------------------------------- the split
def _hash_order(names, seed: int) -> np.ndarray:
    keys = [hashlib.sha256(f"{seed}:{n}".encode("utf-8")).hexdigest() for n in names]
    return np.argsort(np.asarray(keys), kind="stable")


def images_digest(names) -> str:
    """A short hash of a set of query image names (order-free): names a split, checks it is reused on them."""
    return hashlib.sha256("\n".join(sorted(names)).encode("utf-8")).hexdigest()[:16]


@dataclass
class QuerySplit:
    """A validation/test split of a benchmark's query images (sorted names on each side).

    ``images_digest`` is a hash of all the benchmark's query images, so a stored split cannot silently be
    applied to another benchmark or another version of it.
    """

    benchmark: str
    validation: tuple
    test: tuple
    seed: int
    fraction: float
    stratify: str | None = None
    images_digest: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validation = tuple(sorted(map(str, self.validation)))
        self.test = tuple(sorted(map(str, self.test)))
        both = set(self.validation) & set(self.test)
        if both:
            raise DataError(f"query split of {self.benchmark!r}: {len(both)} image(s) on both sides, "
                            f"e.g. {sorted(both)[:3]}")
        if not self.images_digest:
            self.images_digest = images_digest(self.validation + self.test)

    def side_of(self, images) -> np.ndarray:
        """(n,) str array "validation" / "test" for query image names; DataError for an unknown image."""
        val, tst = set(self.validation), set(self.test)
        out = np.empty(len(images), dtype=object)
        unknown = []
        for i, name in enumerate(map(str, images)):
            out[i] = VALIDATION if name in val else TEST if name in tst else None
            if out[i] is None:
                unknown.append(name)
        if unknown:
            raise DataError(f"{len(unknown)} query image(s) are in neither side of the {self.benchmark!r} split, "
                            f"e.g. {unknown[:3]}; make a new split for this query set (split_query_images)")
        return out.astype(str)

    def mask(self, images, side: str) -> np.ndarray:
        """(n,) bool: which of ``images`` are on ``side`` ("validation" or "test")."""
        if side not in (VALIDATION, TEST):
            raise ParameterError(f"split side must be {VALIDATION!r} or {TEST!r}, got {side!r}")
        return self.side_of(images) == side

    def check(self, images) -> None:
        """Raise DataError unless ``images`` are exactly the images this split was made from."""
        names = sorted(set(map(str, images)))
        if images_digest(names) != self.images_digest:
            raise DataError(f"the stored {self.benchmark!r} split was made from other query images "
                            f"({len(self.validation) + len(self.test)} images, digest {self.images_digest}) than "
                            f"these ({len(names)} images, digest {images_digest(names)}); delete the split file "
                            "to make a new one, or evaluate the query set it was made for")

    def to_dict(self) -> dict:
        return {"format": SPLIT_FORMAT, "benchmark": self.benchmark, "seed": self.seed, "fraction": self.fraction,
                "stratify": self.stratify, "images_digest": self.images_digest, "meta": self.meta,
                "validation": list(self.validation), "test": list(self.test)}

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path) -> "QuerySplit":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"query split file {path} not found") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not a query split file ({exc}); delete it to make a new split") from None
        if data.get("format") != SPLIT_FORMAT:
            raise DataError(f"{path}: unknown query split format {data.get('format')!r} (expected {SPLIT_FORMAT})")
        return cls(data["benchmark"], data["validation"], data["test"], int(data["seed"]), float(data["fraction"]),
                   data.get("stratify"), data["images_digest"], data.get("meta", {}))

    def __repr__(self) -> str:
        return (f"QuerySplit({self.benchmark!r}: {len(self.validation)} validation / {len(self.test)} test query "
                f"images, seed={self.seed}, stratify={self.stratify!r})")


def split_query_images(images, benchmark: str, fraction: float = 0.3, seed: int = 0, strata=None,
                       stratify: str | None = None) -> QuerySplit:
    """Split distinct query images: ``round(fraction·n)`` of them (per stratum) to validation, the rest to test.

    images: the query image of every pair (repeats allowed; each image counts once).
    strata: optional, the stratum of every entry of ``images`` (e.g. its class); an image must have one stratum.
    Deterministic: images are ordered by SHA-256(``f"{seed}:{name}"``), independent of platform and of the
    input order.
    """
    fraction = float(fraction)
    if not 0.0 < fraction < 1.0:
        raise ParameterError(f"validation fraction must lie strictly between 0 and 1, got {fraction}")
    images = np.asarray([str(x) for x in images])
    if strata is None:
        groups = {"": sorted(set(images))}
    else:
        strata = np.asarray([str(s) for s in strata])
        if len(strata) != len(images):
            raise ParameterError(f"strata has {len(strata)} entries for {len(images)} images")
        pairs = sorted(set(zip(images, strata)))
        seen = {}
        for name, s in pairs:
            if seen.setdefault(name, s) != s:
                raise DataError(f"query image {name!r} is in two strata ({seen[name]!r}, {s!r}); stratify by a "
                                "column that is constant per query image")
        groups = {}
        for name, s in pairs:
            groups.setdefault(s, []).append(name)
    val, test = [], []
    for s in sorted(groups):
        names = np.asarray(sorted(groups[s]))
        order = _hash_order(names, seed)
        n_val = int(round(fraction * len(names)))
        val.extend(names[order[:n_val]])
        test.extend(names[order[n_val:]])
    if not val or not test:
        raise DataError(f"{benchmark!r}: {len(set(images))} query image(s) give an empty side with fraction "
                        f"{fraction}; use more queries or another fraction")
    return QuerySplit(benchmark, val, test, int(seed), fraction, stratify)


def load_or_make_split(path, images, benchmark: str, fraction: float = 0.3, seed: int = 0, strata=None,
                       stratify: str | None = None) -> QuerySplit:
    """The split stored at ``path`` (checked against ``images``), or a new one made and stored there."""
    path = Path(path)
    if path.is_file():
        split = QuerySplit.load(path)
        split.check(images)
        if split.seed != int(seed) or not math.isclose(split.fraction, float(fraction)) or split.stratify != stratify:
            raise DataError(f"{path} holds a split with seed={split.seed}, fraction={split.fraction}, "
                            f"stratify={split.stratify!r}, not the requested seed={seed}, fraction={fraction}, "
                            f"stratify={stratify!r}; delete it or ask for the stored settings")
        return split
    split = split_query_images(images, benchmark, fraction, seed, strata, stratify)
    split.save(path)
    return split


# ----------------------------------------------------------------------------------------- bootstrap
def _image_codes(per_pair: pd.DataFrame, images) -> tuple[np.ndarray, np.ndarray]:
    """(code of each per-pair row's query image, the distinct names of the images in the table); ``images`` is
    indexed by ``pair``. Only images with a row in the table are resampled (e.g. the test side of a split)."""
    if hasattr(images, "table"):  # a QuerySet
        images = images.table["query_path"].to_numpy()
    images = np.asarray(images).astype(str)
    pairs = per_pair["pair"].to_numpy()
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= len(images)):
        raise DataError(f"per-pair table refers to pair {int(pairs.max())}, but only {len(images)} query images "
                        "were given; pass the QuerySet the table was evaluated on")
    names, codes = np.unique(images[pairs], return_inverse=True)  # the images of the pairs in the table
    return codes, names


def bootstrap_counts(n_images: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, n_images) int32: how often each query image is drawn in each bootstrap replicate.

    Replicate r draws ``n_images`` images with replacement: ``rng.integers(0, n_images, (n_boot, n_images))``
    with ``rng = np.random.default_rng(seed)`` (the draws a per-replicate loop would make with the same seed).
    """
    if n_boot < 1:
        raise ParameterError(f"n_boot must be ≥ 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(n_boot, n_images))
    flat = (draws + np.arange(n_boot)[:, None] * n_images).ravel()
    return np.bincount(flat, minlength=n_boot * n_images).reshape(n_boot, n_images).astype(np.int32)


def _cells(per_pair, by, metric):
    keys = ["method", "lambda"] + ([by] if by else [])
    df = per_pair.copy()
    df["lambda"] = df["lambda"].astype(float)
    cell_of = df.groupby(keys, dropna=False, sort=False).ngroup().to_numpy()
    cells = df.groupby(keys, dropna=False, sort=False).size().reset_index()[keys]
    return df, cells, cell_of


def _replicate_means(values, codes, cell_of, n_cells, n_images, weights) -> tuple[np.ndarray, np.ndarray]:
    """Point estimates (n_cells,) and replicates (R, n_cells) of each cell's mean metric (NaN values left out)."""
    ok = ~np.isnan(values)
    flat = codes[ok] * n_cells + cell_of[ok]
    sums = np.bincount(flat, weights=values[ok], minlength=n_images * n_cells).reshape(n_images, n_cells)
    counts = np.bincount(flat, minlength=n_images * n_cells).reshape(n_images, n_cells).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        point = sums.sum(axis=0) / counts.sum(axis=0)
        reps = (weights @ sums) / (weights @ counts)  # one GEMM for every replicate and every cell
    return point, reps


def bootstrap_map(per_pair: pd.DataFrame, images, by: str | None = "attribute", n_boot: int = 1000,
                  seed: int = 0, level: float = 0.95, metric: str = "ap", average_label: str = "avg",
                  weights: np.ndarray | None = None) -> pd.DataFrame:
    """mAP (%) with percentile bootstrap CIs over query images, per method, λ and group (+ the mean of groups).

    per_pair: the engine's table (``pair``, ``method``, ``lambda``, ``ap``, group columns);
    images: the QuerySet it was evaluated on (or the (Q,) query image of every pair, indexed by ``pair``).
    Each replicate resamples the distinct query images with replacement; a drawn image brings all its pairs
    (as many times as it is drawn). The ``average_label`` row is the mean of the group mAPs *within each
    replicate*, as :func:`rscir_kit.engine.summarize` defines it. NaN metrics (``on_empty='skip'``) are left
    out. A group absent from a replicate gives a NaN replicate, ignored by the percentiles.

    Returns the columns of ``summarize`` plus ``lo``, ``hi`` (CI bounds, %), ``se`` (bootstrap standard
    error, %), and ``n_boot``, ``seed``, ``level`` in ``attrs``.
    """
    if not 0.0 < level < 1.0:
        raise ParameterError(f"confidence level must lie in (0, 1), got {level}")
    codes, names = _image_codes(per_pair, images)
    df, cells, cell_of = _cells(per_pair, by, metric)
    if weights is None:
        weights = bootstrap_counts(len(names), n_boot, seed)
    elif weights.shape[1] != len(names):
        raise ParameterError(f"bootstrap weights cover {weights.shape[1]} images, the table has {len(names)}")
    weights = np.asarray(weights, dtype=np.float64)
    point, reps = _replicate_means(df[metric].to_numpy(np.float64), codes, cell_of, len(cells), len(names), weights)
    n_q = np.bincount(cell_of, minlength=len(cells))
    n_empty = np.bincount(cell_of, weights=(df["n_pos"].to_numpy() == 0), minlength=len(cells)).astype(int) \
        if "n_pos" in df else np.zeros(len(cells), int)
    out = cells.copy()
    out["map"], out["n_queries"], out["n_empty"] = 100 * point, n_q, n_empty
    rep_cols = [reps[:, j] for j in range(len(cells))]
    if by:
        avg_rows, avg_reps = [], []
        for (m, lam), idx in out.groupby(["method", "lambda"], dropna=False, sort=False).groups.items():
            idx = np.asarray(list(idx))
            avg_rows.append({"method": m, "lambda": lam, by: average_label, "map": out.loc[idx, "map"].mean(),
                             "n_queries": int(out.loc[idx, "n_queries"].sum()),
                             "n_empty": int(out.loc[idx, "n_empty"].sum())})
            avg_reps.append(np.nanmean(reps[:, idx], axis=1) if len(idx) > 1 else reps[:, idx[0]])
        out = pd.concat([out, pd.DataFrame(avg_rows)], ignore_index=True)
        rep_cols += avg_reps
    R = np.stack(rep_cols, axis=1) * 100
    tail = (1.0 - level) / 2
    with np.errstate(invalid="ignore"):
        out["lo"] = np.nanquantile(R, tail, axis=0)
        out["hi"] = np.nanquantile(R, 1.0 - tail, axis=0)
        out["se"] = np.nanstd(R, axis=0, ddof=1) if R.shape[0] > 1 else np.nan
    if by:
        order = {m: i for i, m in enumerate(dict.fromkeys(out["method"]))}
        out["_g"] = (out[by] == average_label).astype(int)
        out = out.sort_values(["method", "lambda", "_g"], key=lambda s: s.map(order) if s.name == "method" else s,
                              kind="stable").drop(columns="_g")
    out = out.reset_index(drop=True)
    out.attrs.update(n_boot=int(weights.shape[0]), seed=seed, level=level, n_images=len(names), resampled="query images")
    return out


def _select(per_pair: pd.DataFrame, method: str, lam) -> pd.DataFrame:
    sel = per_pair["method"] == method
    lam_col = per_pair["lambda"].astype(float)
    sel &= lam_col.isna() if lam is None or (isinstance(lam, float) and math.isnan(lam)) else np.isclose(lam_col, lam)
    if not sel.any():
        raise ParameterError(f"no rows for method {method!r} λ={lam} in the per-pair table")
    return per_pair[sel]


def paired_bootstrap(per_pair: pd.DataFrame, images, a, b, by: str | None = None, n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95, metric: str = "ap") -> dict:
    """Does method A beat method B? The paired bootstrap over query images.

    a, b: ``(method, λ)`` (λ None for methods without one) of two rows of ``per_pair``, evaluated on the same
    pairs. Both are scored on the same resampled query images in every replicate, so the test sees their
    correlation. ``by``: compare the mean over groups (like the leaderboard's avg), else the mean over pairs.

    Returns ``delta`` (mAP(A) − mAP(B), points %), ``lo``/``hi`` (percentile CI of the difference),
    ``p_value`` (one-sided, H0: A does not beat B: ``(1 + #{δ* ≤ 0}) / (1 + n_boot)``), ``wins`` (fraction of
    replicates where A beats B), ``n_boot``, ``n_images``.
    """
    rows_a, rows_b = _select(per_pair, *a), _select(per_pair, *b)
    if not np.array_equal(np.sort(rows_a["pair"].to_numpy()), np.sort(rows_b["pair"].to_numpy())):
        raise DataError(f"{a} and {b} were not evaluated on the same pairs; a paired test needs the same queries")
    both = pd.concat([rows_a.assign(method="A", **{"lambda": np.nan}),
                      rows_b.assign(method="B", **{"lambda": np.nan})], ignore_index=True)
    codes, names = _image_codes(both, images)
    weights = bootstrap_counts(len(names), n_boot, seed).astype(np.float64)
    table = bootstrap_map(both, images, by=by, weights=weights, metric=metric, level=level)
    if by:
        # recompute the avg replicates for A and B on the same weights
        _, cells, cell_of = _cells(both, by, metric)
        _, reps = _replicate_means(both[metric].to_numpy(np.float64), codes, cell_of, len(cells), len(names), weights)
        ra = np.nanmean(reps[:, (cells["method"] == "A").to_numpy()], axis=1)
        rb = np.nanmean(reps[:, (cells["method"] == "B").to_numpy()], axis=1)
        pa = table.loc[(table["method"] == "A") & (table[by] == "avg"), "map"].iat[0]
        pb = table.loc[(table["method"] == "B") & (table[by] == "avg"), "map"].iat[0]
    else:
        _, cells, cell_of = _cells(both, None, metric)
        point, reps = _replicate_means(both[metric].to_numpy(np.float64), codes, cell_of, len(cells), len(names),
                                       weights)
        ia, ib = int(np.flatnonzero(cells["method"] == "A")[0]), int(np.flatnonzero(cells["method"] == "B")[0])
        ra, rb, pa, pb = reps[:, ia], reps[:, ib], 100 * point[ia], 100 * point[ib]
    d = 100 * (ra - rb)
    d = d[~np.isnan(d)]
    tail = (1.0 - level) / 2
    return {"a": a, "b": b, "delta": float(pa - pb), "lo": float(np.quantile(d, tail)),
            "hi": float(np.quantile(d, 1 - tail)), "p_value": float((1 + np.sum(d <= 0)) / (1 + len(d))),
            "wins": float(np.mean(d > 0)), "n_boot": int(n_boot), "n_images": int(len(names)), "level": level}


def ci_table(ci: pd.DataFrame, by: str | None = "attribute", digits: int = 2, average_label: str = "avg") -> pd.DataFrame:
    """A :func:`bootstrap_map` table in the Table-2 layout: one row per (method, λ) labelled by
    :func:`rscir_kit.methods.method_label`, one column per group (+ ``avg`` last), cells ``"45.20 [43.01, 47.52]"``."""
    from .methods import method_label

    label = [method_label(m, None if pd.isna(lam) else lam) for m, lam in zip(ci["method"], ci["lambda"])]
    cells = [f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" for m, lo, hi in zip(ci["map"], ci["lo"], ci["hi"])]
    frame = pd.DataFrame({"method": label, "group": ci[by] if by else "all", "cell": cells})
    wide = frame.pivot(index="method", columns="group", values="cell")
    cols = [c for c in dict.fromkeys(frame["group"]) if c != average_label]
    cols += [average_label] if average_label in wide.columns else []
    wide = wide.loc[list(dict.fromkeys(label)), cols]
    wide.columns.name = None
    return wide

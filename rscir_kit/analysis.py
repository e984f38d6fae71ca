"""Analysis tables of the notebooks (no figures): wide mAP tables, the paper's Table-2 / Table-3 layouts,
best λ, and the hybrid summaries of text-to-text retrieval. Values are mAP / recall in percent.

Figures of the same data are in :mod:`rscir_kit.plots`.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

from . import reference
from .engine import wide_table
from .errors import DataError
from .methods import method_label  # noqa: F401  (the one label; re-exported for the notebooks)

AVG = reference.AVG


def summary_to_wide(summary: pd.DataFrame, value: str = "map") -> pd.DataFrame:
    """Engine summary (rows method, lambda, attribute, map) → one row per (method, λ) with ``method`` and
    ``lambda`` columns, attributes (+ ``avg``) in %, rows in the paper's order: the one wide table,
    :func:`rscir_kit.engine.wide_table`, unrounded."""
    return wide_table(summary, by="attribute", value=value, keys=True, decimals=None, average_label=AVG)


def row_key(method: str, lam) -> str:
    """Key of a (method, λ) row in results.json: ``text``, ``image``, ``average``, ``weicom@0.5``."""
    if lam is None or (isinstance(lam, float) and math.isnan(lam)):
        return str(method)
    return f"{method}@{float(lam):g}"


def wide_to_dict(wide: pd.DataFrame) -> dict[str, dict[str, float]]:
    """``{row_key: {attribute: mAP %, ..., "avg": ...}}`` from a wide table (for results.json)."""
    cols = [c for c in wide.columns if c not in ("method", "lambda")]
    return {row_key(r["method"], r["lambda"]): {c: float(r[c]) for c in cols} for _, r in wide.iterrows()}


def table2(wide: pd.DataFrame, model: str | None = None, dataset: str | None = None,
           ref_model: str | None = None, source: str | None = None, comparison=None) -> pd.DataFrame:
    """Table 2 layout: one row per method (label in the paper's style), one column per attribute + avg,
    values mAP %.  When (dataset, model) are the paper's (or ``ref_model`` forces a model key), each column is
    followed by the published number (``<attr> ref``) of ``source`` (default :data:`reference.DEFAULT_SOURCE`,
    the current official README; ``frame.attrs["reference_source"]`` names it). ``comparison`` (a
    :class:`reference.Comparison`) decides instead: published columns only when the run is the paper's setup."""
    key = ref_model or reference.paper_setup_key(dataset, model)
    src = source or reference.DEFAULT_SOURCE
    if comparison is not None:
        key, src = (comparison.key if comparison.paper_setup else None), comparison.source
    value_cols = [c for c in wide.columns if c not in ("method", "lambda")]
    rows = []
    for _, r in wide.iterrows():
        lam = None if pd.isna(r["lambda"]) else float(r["lambda"])
        row = {"method": method_label(r["method"], lam)}
        for col in value_cols:
            row[col] = float(r[col]) if pd.notna(r[col]) else float("nan")
            if key is not None:
                ref = reference.reference_lookup(key, r["method"], lam, col, source=src)
                row[f"{col} ref"] = float("nan") if ref is None else ref
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("method")
    if key is not None:
        frame.attrs["reference_source"] = src
    return frame


def table2_lambdas(best: float, ref_key: str | None, available: Iterable[float]) -> list[float]:
    """WeiCom λ rows of the Table-2 layout: the paper's λ=0.5, the paper's best λ for its model (paper setup
    only) and the kit's best λ, restricted to the λ values evaluated."""
    wanted = {0.5, float(best)}
    if ref_key is not None:
        wanted.add(reference.PAPER_BEST_LAMBDA[ref_key])
    avail = [float(a) for a in available]
    return sorted(a for a in avail if any(abs(a - w) < 1e-9 for w in wanted))


def table2_selection(wide: pd.DataFrame, lambdas: Iterable[float]) -> pd.DataFrame:
    """The rows of a wide table shown in Table 2: every method without λ, WeiCom only at ``lambdas``."""
    lams = np.asarray(list(lambdas), dtype=float)
    shown = wide["lambda"].map(lambda v: pd.notna(v) and bool(np.isclose(float(v), lams).any()))
    return wide[(wide["method"] != "weicom") | shown].reset_index(drop=True)


# --------------------------------------------------------------------------------------------- λ ablation
def ablation_frame(wide_weicom: pd.DataFrame) -> pd.DataFrame:
    """WeiCom rows of a wide table (one per λ) → index λ, columns attributes + avg (the Table-3 layout)."""
    frame = wide_weicom[wide_weicom["method"] == "weicom"] if "method" in wide_weicom else wide_weicom
    frame = frame.drop(columns=[c for c in ("method",) if c in frame]).set_index("lambda").sort_index()
    frame.index = frame.index.astype(float).rename("lambda")
    return frame


def best_lambda(ablation: pd.DataFrame, column: str = AVG) -> float:
    """λ with the highest mAP in ``column`` (ties → the smallest λ)."""
    series = ablation[column].astype(float)
    if series.isna().all():
        raise DataError(f"no values in column {column!r}")
    best = series.max()
    return float(series.index[np.flatnonzero(np.isclose(series.to_numpy(), best, rtol=0, atol=1e-12))[0]])


def best_lambdas(ablation: pd.DataFrame) -> dict[str, float]:
    """Best λ for every column (attribute and avg)."""
    return {col: best_lambda(ablation, col) for col in ablation.columns}


def table3(ablation: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table-3 layout: one row per attribute (and avg), one column per λ, then the row's best λ
    and its mAP."""
    out = ablation.T.copy()
    out.columns = [f"λ={float(c):g}" for c in ablation.index]
    bests = best_lambdas(ablation)
    out["best λ"] = [bests[c] for c in ablation.columns]
    out["best mAP"] = [float(ablation.loc[bests[c], c]) for c in ablation.columns]
    out.index.name = "attribute"
    return out


def table3_difference(ablation: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Kit minus paper (mAP points) in the Table-3 layout, on the λ values and columns both have."""
    lams = [l for l in ablation.index if any(np.isclose(l, paper.index))]
    cols = [c for c in ablation.columns if c in paper.columns]
    kit = ablation.loc[lams, cols]
    ref = paper.loc[[paper.index[np.isclose(paper.index, l)][0] for l in lams], cols].to_numpy()
    out = (kit - ref).T
    out.columns = [f"λ={float(l):g}" for l in lams]
    out.index.name = "attribute"
    return out


# ------------------------------------------------------------------------------- text-to-text hybrid
def hybrid_summary(table: pd.DataFrame, metric: str = "mR") -> pd.DataFrame:
    """Per text encoder (and hybrid normalisation): text→image, text-to-text, hybrid at the best λ (by
    ``metric``) and at λ = 0.5. ``table``: output of :func:`text_to_text_benchmark`.
    Columns: the R@K, mR and ``lambda``."""
    metrics = [c for c in table.columns if "R@" in c] + ["mR"]
    base = table[table.method == "text→image"].iloc[0]
    rows = {f"text→image ({base.text_encoder})": {**base[metrics].to_dict(), "lambda": np.nan}}
    for enc, g in table[table.method != "text→image"].groupby("text_encoder", sort=False):
        t2t = g[g.method == "text-to-text"].iloc[0]
        rows[f"text-to-text ({enc})"] = {**t2t[metrics].to_dict(), "lambda": np.nan}
        for norm, hyb in g[g.method == "hybrid"].groupby("norm", sort=False):
            best = hyb.loc[hyb[metric].idxmax()]
            rows[f"hybrid {norm} ({enc}), best λ"] = {**best[metrics].to_dict(), "lambda": best["lambda"]}
            half = hyb[np.isclose(hyb["lambda"], 0.5)]
            if len(half):
                rows[f"hybrid {norm} ({enc}), λ=0.5"] = {**half.iloc[0][metrics].to_dict(), "lambda": 0.5}
    return pd.DataFrame(rows).T[metrics + ["lambda"]].astype(float).round(2)


def beats_both(table: pd.DataFrame) -> pd.DataFrame:
    """Where the hybrid beats both text→image and text-to-text: one row per (text encoder, norm, metric)
    with the λ values at which it is strictly better than both, and the best margin (points)."""
    metrics = [c for c in table.columns if "R@" in c] + ["mR"]
    base = table[table.method == "text→image"].iloc[0]
    rows = []
    for (enc, norm), hyb in table[table.method == "hybrid"].groupby(["text_encoder", "norm"], sort=False):
        t2t = table[(table.method == "text-to-text") & (table.text_encoder == enc)].iloc[0]
        for m in metrics:
            ref = max(base[m], t2t[m])
            win = hyb[hyb[m] > ref + 1e-9]
            rows.append({"text_encoder": enc, "norm": norm, "metric": m, "text→image": base[m], "text-to-text": t2t[m],
                         "best hybrid": hyb[m].max(), "margin": hyb[m].max() - ref,
                         "λ where hybrid > both": " ".join(f"{x:g}" for x in win["lambda"])})
    return pd.DataFrame(rows).round(2)

"""Figures and tables of the notebooks: Table-2 layout, λ ablation, qualitative grids, score distributions.

Every figure function returns a matplotlib ``Figure`` and stamps it with :func:`model_label` so a figure
made with the offline stand-in model can never be mistaken for a CLIP/RemoteCLIP result.
Tables are pandas DataFrames with mAP in percent.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from . import reference
from .config import STANDIN_NAME

AVG = reference.AVG
METHOD_ORDER = ("text", "image", "average", "weicom")
ATTRIBUTE_COLORS = {
    "color": "#d62728", "context": "#1f77b4", "density": "#2ca02c", "existence": "#9467bd",
    "quantity": "#ff7f0e", "shape": "#8c564b", AVG: "black",
}
POSITIVE_COLOR = "#1a9e1a"
NEGATIVE_COLOR = "#bbbbbb"


# --------------------------------------------------------------------------------------------- labels
def is_standin(model: str | None) -> bool:
    """True when ``model`` is the offline stand-in (``ucm-minilm-standin``), a plumbing model."""
    return bool(model) and STANDIN_NAME in str(model)


def model_name(model: str | None) -> str:
    """Short readable model name: the folder name for ``local-dir:`` specs, the spec otherwise."""
    if not model:
        return "unknown model"
    text = str(model)
    if text.startswith("local-dir:"):
        return Path(text[len("local-dir:"):]).name or text
    if text.startswith("hf-hub:"):
        return text[len("hf-hub:"):]
    return text


def model_label(model: str | None) -> str:
    """One-line label for figures; for the stand-in it says loudly that it is not a published model."""
    name = model_name(model)
    if is_standin(model):
        return (f"model: {name} - offline STAND-IN (small plumbing model, not CLIP/RemoteCLIP): "
                "numbers are not paper results")
    key = reference.model_key(model)
    return f"model: {reference.MODELS[key]} ({name})" if key else f"model: {name}"


def stamp(fig, model: str | None, extra: str | None = None):
    """Write :func:`model_label` (and ``extra``) at the bottom of ``fig``; red for the stand-in."""
    text = model_label(model) + (f"  |  {extra}" if extra else "")
    fig.text(0.5, 0.002, text, ha="center", va="bottom", fontsize=8,
             color="#c00000" if is_standin(model) else "#444444",
             fontweight="bold" if is_standin(model) else "normal")
    fig._rscir_label = text  # lets tests check the label without rendering
    return fig


def method_label(method: str, lam: float | None = None) -> str:
    """Row label in the paper's style: Text, Image, Text & Image, WeiCom (λ=0.5)."""
    name = reference.METHOD_NAMES.get(method, method)
    if lam is None or (isinstance(lam, float) and math.isnan(lam)):
        return name
    return f"{name} (λ={float(lam):g})"


# --------------------------------------------------------------------------------------------- tables
def summary_to_wide(summary: pd.DataFrame, value: str = "map") -> pd.DataFrame:
    """Engine summary (rows method, lambda, attribute, map) → one row per (method, λ), columns
    attributes (+ ``avg``) in %, rows in the paper's order (Text, Image, Text & Image, WeiCom by λ)."""
    frame = summary.copy()
    # NaN λ (methods without one) would vanish from a pivot: use a sentinel meanwhile.
    frame["lambda"] = frame["lambda"].astype(float).fillna(-1.0)
    wide = frame.pivot_table(index=["method", "lambda"], columns="attribute", values=value, aggfunc="first")
    wide = wide.reset_index()
    wide.columns.name = None
    wide["lambda"] = wide["lambda"].where(wide["lambda"] >= 0)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    wide["_o"] = wide["method"].map(lambda m: order.get(m, len(order)))
    wide = wide.sort_values(["_o", "lambda"], na_position="first").drop(columns="_o").reset_index(drop=True)
    attrs = [c for c in wide.columns if c not in ("method", "lambda", AVG)]
    known = [a for a in reference.ATTRIBUTES if a in attrs] + sorted(a for a in attrs
                                                                     if a not in reference.ATTRIBUTES)
    return wide[["method", "lambda"] + known + ([AVG] if AVG in wide.columns else [])]


def table2(wide: pd.DataFrame, model: str | None = None, dataset: str | None = None,
           ref_model: str | None = None) -> pd.DataFrame:
    """Table 2 layout: one row per method (label in the paper's style), one column per attribute + avg,
    values mAP %.  When (dataset, model) is the paper's setup (or ``ref_model`` forces a model key), each
    column is followed by the paper's number (``<attr> paper``) and, for WeiCom at the paper's λ, the
    official code release's average (``avg code``)."""
    key = ref_model or reference.paper_setup_key(dataset, model)
    value_cols = [c for c in wide.columns if c not in ("method", "lambda")]
    rows = []
    for _, r in wide.iterrows():
        lam = None if pd.isna(r["lambda"]) else float(r["lambda"])
        row = {"method": method_label(r["method"], lam)}
        for col in value_cols:
            row[col] = float(r[col]) if pd.notna(r[col]) else float("nan")
            if key is not None:
                ref = reference.reference_lookup(key, r["method"], lam, col)
                row[f"{col} paper"] = float("nan") if ref is None else ref
        if key is not None:
            code = reference.code_release_avg(key)
            row["avg code"] = next((v for l, v in code.items()
                                    if r["method"] == "weicom" and lam is not None and abs(l - lam) < 1e-9),
                                   float("nan"))
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def plot_table2(wide: pd.DataFrame, model: str | None = None, dataset: str | None = None,
                title: str | None = None, ref_model: str | None = None):
    """Grouped bars: mAP per attribute (and avg) for each method row of ``wide``; when the setup is the
    paper's, the paper's values are drawn as black ticks on the bars."""
    import matplotlib.pyplot as plt

    key = ref_model or reference.paper_setup_key(dataset, model)
    cols = [c for c in wide.columns if c not in ("method", "lambda")]
    n_rows = len(wide)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.4 * len(cols) + 2), 4.2))
    width = 0.8 / max(n_rows, 1)
    cmap = plt.get_cmap("tab10")
    x = np.arange(len(cols))
    for i, (_, r) in enumerate(wide.iterrows()):
        lam = None if pd.isna(r["lambda"]) else float(r["lambda"])
        vals = np.array([r[c] for c in cols], dtype=float)
        pos = x - 0.4 + width * (i + 0.5)
        bars = ax.bar(pos, vals, width, label=method_label(r["method"], lam), color=cmap(i % 10))
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}", ha="center", va="bottom", fontsize=6,
                        rotation=90)
        if key is not None:
            refs = [reference.reference_lookup(key, r["method"], lam, c) for c in cols]
            ref_vals = np.array([np.nan if v is None else v for v in refs], dtype=float)
            ax.scatter(pos, ref_vals, marker="_", s=200, color="black", zorder=3,
                       label="paper" if i == 0 else None)
    ax.set_xticks(x)
    ax.set_xticklabels(cols)
    ax.set_ylabel("mAP (%)")
    ax.set_title(title or f"Composed retrieval per attribute ({dataset or 'dataset'})")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    top = np.nanmax(wide[cols].to_numpy(dtype=float)) if n_rows else 1.0
    ax.set_ylim(0, max(1.0, float(top)) * 1.25)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return stamp(fig, model)


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
        raise ValueError(f"no values in column {column!r}")
    best = series.max()
    return float(series.index[np.flatnonzero(np.isclose(series.to_numpy(), best, rtol=0, atol=1e-12))[0]])


def best_lambdas(ablation: pd.DataFrame) -> dict[str, float]:
    """Best λ for every column (attribute and avg)."""
    return {col: best_lambda(ablation, col) for col in ablation.columns}


def _plot_ablation_axes(ax, ablation: pd.DataFrame, title: str):
    lams = ablation.index.to_numpy(dtype=float)
    for col in ablation.columns:
        vals = ablation[col].to_numpy(dtype=float)
        is_avg = col == AVG
        color = ATTRIBUTE_COLORS.get(col)
        ax.plot(lams, vals, marker="o", ms=3 if not is_avg else 4, lw=2.5 if is_avg else 1.2,
                color=color, label=col, zorder=3 if is_avg else 2)
        if np.isfinite(vals).any():
            b = best_lambda(ablation, col)
            ax.scatter([b], [ablation.loc[b, col]], marker="*", s=170 if is_avg else 70,
                       color=color, edgecolor="black", linewidth=0.6, zorder=4)
    b = best_lambda(ablation, AVG) if AVG in ablation else None
    if b is not None:
        ax.axvline(b, color="black", ls=":", lw=1)
        ax.annotate(f"best λ={b:g}\navg {ablation.loc[b, AVG]:.1f}", xy=(b, ablation.loc[b, AVG]),
                    xytext=(8, 10), textcoords="offset points", fontsize=8)
    ax.set_xlabel("λ  (0 = image only, 1 = text only)")
    ax.set_ylabel("mAP (%)")
    ax.set_title(title, fontsize=10)
    ax.set_xticks(lams if len(lams) <= 11 else np.linspace(0, 1, 11))
    ax.grid(alpha=0.3)


def plot_lambda_ablation(ablation: pd.DataFrame, model: str | None = None, dataset: str | None = None,
                         reference_table: pd.DataFrame | None = None, reference_title: str | None = None):
    """mAP vs λ per attribute and average (thick black), best λ of each curve marked by a star and the best
    average λ by a dotted line.  With ``reference_table`` (e.g. :func:`rscir_kit.reference.table3`) the
    published curves are drawn in a second panel on the same y axis."""
    import matplotlib.pyplot as plt

    n = 2 if reference_table is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 4.4), sharey=True, squeeze=False)
    _plot_ablation_axes(axes[0, 0], ablation, f"WeiCom λ ablation - kit ({dataset or 'dataset'})")
    if reference_table is not None:
        _plot_ablation_axes(axes[0, 1], reference_table,
                            reference_title or "paper Table 3 (RemoteCLIP ViT-L/14, PatternCom)")
    axes[0, 0].legend(fontsize=7, loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return stamp(fig, model)


# --------------------------------------------------------------------------------------------- grids
def _as_image(item, loader: Callable | None):
    if isinstance(item, (str, Path)):
        if loader is None:
            from PIL import Image

            with Image.open(item) as im:
                return np.asarray(im.convert("RGB"))
        return np.asarray(loader(item))
    return np.asarray(item)


def qualitative_grid(query_image, text: str, rows: Sequence[dict], model: str | None = None,
                     loader: Callable | None = None, title: str | None = None, thumb: float = 1.35):
    """The paper's Figure 1: the query (image + text) on the left, one row per λ with its top-k archive
    images; positives outlined in green.

    ``rows``: dicts with ``lam``, ``images`` (top-k, paths or arrays), ``positive`` (bools, same length),
    optional ``labels`` (captions under each image) and ``ap`` (in [0, 1] or None).  Paths are read with
    ``loader`` (default PIL)."""
    import matplotlib.pyplot as plt

    k = max((len(r["images"]) for r in rows), default=0)
    n = len(rows)
    fig, axes = plt.subplots(max(n, 1), k + 1, figsize=(thumb * (k + 1) + 0.6, thumb * max(n, 1) + 0.9),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    qimg = _as_image(query_image, loader)
    mid = (n - 1) // 2
    axes[mid, 0].imshow(qimg)
    axes[mid, 0].set_title("query", fontsize=8, fontweight="bold")
    axes[mid, 0].text(0.5, -0.08, _wrap(text, 18), transform=axes[mid, 0].transAxes, ha="center", va="top",
                      fontsize=8, style="italic")
    for i, row in enumerate(rows):
        lam = float(row["lam"])
        end = " (image only)" if lam == 0.0 else " (text only)" if lam == 1.0 else ""
        ap = row.get("ap")
        ap_text = "" if ap is None else f"\nAP {100 * float(ap):.1f}"
        axes[i, 1].text(-0.08, 0.5, f"λ={lam:g}{end}{ap_text}", transform=axes[i, 1].transAxes, ha="right",
                        va="center", fontsize=8)
        draw_image_row(axes[i, 1:1 + len(row["images"])], row["images"], row["positive"], row.get("labels"), loader)
    fig.suptitle(title or "Top-k archive images for several λ (green outline: positive)", fontsize=10)
    fig.tight_layout(rect=(0.04, 0.04, 1, 0.95))
    return stamp(fig, model)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(str(text), width)) or '""'


# --------------------------------------------------------------------------------------------- scores
def draw_score_distributions(axes, raw: dict[str, np.ndarray], normalized: dict[str, np.ndarray],
                             positives: np.ndarray | None = None, norm_name: str = "WeiCom (z-score → Φ)"):
    """Draw the raw (``axes[0]``) and normalised (``axes[1]``) score histograms of each modality."""
    colors = {"image": "#1f77b4", "text": "#d62728"}
    pos = None if positives is None else np.asarray(positives, dtype=np.int64)
    for ax, data, name in ((axes[0], raw, "raw cosine similarity"), (axes[1], normalized, norm_name)):
        lo = min(float(np.min(v)) for v in data.values())
        hi = max(float(np.max(v)) for v in data.values())
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 50)
        for mod, vals in data.items():
            vals = np.asarray(vals, dtype=float).ravel()
            c = colors.get(mod)
            std = vals.std(ddof=1) if vals.size > 1 else 0.0
            ax.hist(vals, bins=bins, alpha=0.45, color=c, density=True,
                    label=f"{mod}: mean {vals.mean():.3f}, std {std:.3f}")
            if pos is not None and pos.size:
                ax.plot(vals[pos], np.zeros(pos.size), "|", color=c, ms=14, mew=1.5)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("score")
        ax.set_ylabel("density")
        ax.legend(fontsize=6)
    if pos is not None and pos.size:
        axes[0].text(0.99, 0.70, "ticks: positives", transform=axes[0].transAxes, ha="right", va="top", fontsize=6)
    return axes


def plot_score_distributions(raw: dict[str, np.ndarray], normalized: dict[str, np.ndarray],
                             positives: np.ndarray | None = None, model: str | None = None,
                             norm_name: str = "WeiCom (z-score → Φ)", title: str | None = None):
    """Why normalisation matters: histograms of the archive similarities of each modality, raw (left) and
    normalised (right).  ``raw``/``normalized`` map a modality name ("image", "text") to (N,) scores;
    ``positives`` (archive indices) are marked as ticks under each histogram."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    draw_score_distributions(axes, raw, normalized, positives, norm_name)
    fig.suptitle(title or "Score distributions over the archive for one query", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.94))
    return stamp(fig, model)


def draw_image_row(axes, images: Sequence, positive: Sequence[bool], labels: Sequence | None = None,
                   loader: Callable | None = None):
    """Show ``images`` in ``axes`` (one each), positives outlined in green, others in thin grey."""
    from matplotlib.patches import Rectangle

    labels = list(labels) if labels is not None else [None] * len(images)
    for ax, item, pos, lab in zip(axes, images, positive, labels):
        ax.axis("off")
        img = _as_image(item, loader)
        ax.imshow(img)
        h, w = img.shape[:2]
        ax.add_patch(Rectangle((0, 0), w - 1, h - 1, fill=False, edgecolor=POSITIVE_COLOR if pos else NEGATIVE_COLOR,
                               linewidth=4 if pos else 0.8))
        if lab:
            ax.set_title(str(lab), fontsize=6, color=POSITIVE_COLOR if pos else "#555555")
    return axes


def plot_ap_vs_lambda(lams: Iterable[float], aps: Iterable[float], current: float | None = None,
                      ax=None, model: str | None = None):
    """AP (%) of one query as λ varies; the current λ marked (used by the explorer)."""
    import matplotlib.pyplot as plt

    lams = np.asarray(list(lams), dtype=float)
    aps = 100 * np.asarray(list(aps), dtype=float)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(lams, aps, marker="o", ms=3, color="black")
    if current is not None:
        j = int(np.argmin(np.abs(lams - current)))
        ax.axvline(current, color="#c00000", ls="--", lw=1)
        ax.scatter([lams[j]], [aps[j]], color="#c00000", zorder=3)
    ax.set_xlabel("λ")
    ax.set_ylabel("AP (%)")
    ax.grid(alpha=0.3)
    if fig is not None:
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        stamp(fig, model)
    return ax

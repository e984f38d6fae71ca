"""Figures of the notebooks: Table-2 bars, λ ablation, qualitative grids, score distributions, recall bars.

Every figure function returns a matplotlib ``Figure`` and stamps it with :func:`model_label` so a figure
made with the offline stand-in model can never be mistaken for a CLIP/RemoteCLIP result.
The tables they draw come from :mod:`rscir_kit.analysis` (mAP in percent).
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Callable, Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle
from PIL import Image

from . import reference
from .analysis import best_lambda
from .config import STANDIN_NAME
from .methods import method_label

AVG = reference.AVG
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


def plot_table2(wide: pd.DataFrame, model: str | None = None, dataset: str | None = None,
                title: str | None = None, ref_model: str | None = None, source: str | None = None,
                comparison=None):
    """Grouped bars: mAP per attribute (and avg) for each method row of ``wide``; when (dataset, model) are the
    paper's (or ``ref_model`` names a paper model), the published values of ``source`` (default: the current
    official README) are drawn as black ticks on the bars; ``comparison`` (a :class:`reference.Comparison`) decides
    instead: ticks only when the run is the paper's setup."""
    key = ref_model or reference.paper_setup_key(dataset, model)
    src = source or reference.DEFAULT_SOURCE
    if comparison is not None:
        key, src = (comparison.key if comparison.paper_setup else None), comparison.source
    cols = [c for c in wide.columns if c not in ("method", "lambda")]
    n_rows = len(wide)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.4 * len(cols) + 2), 4.2))
    width = 0.8 / max(n_rows, 1)
    cmap = plt.get_cmap("tab10")
    x = np.arange(len(cols))
    top = float(np.nanmax(wide[cols].to_numpy(dtype=float))) if n_rows else 1.0
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
            refs = [reference.reference_lookup(key, r["method"], lam, c, source=src) for c in cols]
            ref_vals = np.array([np.nan if v is None else v for v in refs], dtype=float)
            ax.scatter(pos, ref_vals, marker="_", s=200, color="black", zorder=3,
                       label=f"published ({src})" if i == 0 else None)
            if np.isfinite(ref_vals).any():
                top = max(top, float(np.nanmax(ref_vals)))
    ax.set_xticks(x)
    ax.set_xticklabels(cols)
    ax.set_ylabel("mAP (%)")
    ax.set_title(title or f"Composed retrieval per attribute ({dataset or 'dataset'})")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylim(0, max(1.0, top) * 1.25)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return stamp(fig, model)


def plot_query_stats(stats: pd.DataFrame, model: str | None = None, dataset: str | None = None):
    """Bars: query pairs per attribute (left) and mean number of positives per pair (right), from
    ``QuerySet.summary(["attribute"])`` (reset index)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(len(stats))
    names = stats.iloc[:, 0].astype(str).tolist()
    for ax, col, label in ((axes[0], "pairs", "query pairs"), (axes[1], "mean_positives", "positives per pair")):
        bars = ax.bar(x, stats[col].to_numpy(dtype=float), color="#4c72b0")
        for b, v in zip(bars, stats[col]):
            ax.text(b.get_x() + b.get_width() / 2, float(v), f"{v:.0f}" if col == "pairs" else f"{v:.1f}",
                    ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{dataset or 'benchmark'}: {int(stats['pairs'].sum())} query pairs, "
                 f"{int(stats['texts'].sum())} (attribute, text) combinations", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.94))
    return stamp(fig, model)


def archive_examples(images: Sequence, labels: Sequence[str], model: str | None = None, ncols: int = 7,
                     loader: Callable | None = None, title: str | None = None):
    """One thumbnail per class (``images``: paths or arrays, ``labels``: their classes)."""
    n = len(images)
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.95 * nrows + 0.7), squeeze=False,
                             gridspec_kw={"hspace": 0.3, "wspace": 0.05})
    for ax in axes.ravel():
        ax.axis("off")
    for ax, item, lab in zip(axes.ravel(), images, labels):
        ax.imshow(_as_image(item, loader))
        ax.set_title(str(lab), fontsize=7)
    fig.suptitle(title or "Archive: one image per class", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.5 / fig.get_figheight(), bottom=0.3 / fig.get_figheight())
    return stamp(fig, model)


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
    if b is not None:  # said in the title, so the note can never sit on a curve
        ax.axvline(b, color="black", ls=":", lw=1)
        title = f"{title}\nbest λ = {b:g} (dotted), avg mAP {ablation.loc[b, AVG]:.1f}; stars: best λ per curve"
    ax.set_xlabel("λ  (0 = image only, 1 = text only)")
    ax.set_ylabel("mAP (%)")
    ax.set_title(title, fontsize=9)
    ax.set_xticks(np.linspace(0, 1, 11))
    ax.grid(alpha=0.3)


def plot_lambda_ablation(ablation: pd.DataFrame, model: str | None = None, dataset: str | None = None,
                         reference_table: pd.DataFrame | None = None, reference_title: str | None = None):
    """mAP vs λ per attribute and average (thick black), best λ of each curve marked by a star and the best
    average λ by a dotted line.  With ``reference_table`` (e.g. :func:`rscir_kit.reference.table3`) the
    published curves are drawn in a second panel on the same y axis. The model label goes under the kit's
    panel only: the reference panel holds published numbers, not this model's."""
    import matplotlib.pyplot as plt

    n = 2 if reference_table is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(7.2 * n, 5.0), sharey=True, squeeze=False, layout="constrained")
    _plot_ablation_axes(axes[0, 0], ablation, f"WeiCom λ ablation - kit ({dataset or 'dataset'})")
    if reference_table is not None:
        _plot_ablation_axes(axes[0, 1], reference_table,
                            reference_title or "paper Table 3 (RemoteCLIP ViT-L/14, PatternCom)")
        axes[0, 1].set_xlabel(axes[0, 1].get_xlabel() + "\npublished numbers, not this model's")
    for ax in axes[0]:  # each panel its own legend (UCM-Com labels are not PatternCom attributes), outside
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return stamp_axes(axes[0, 0], model)


def stamp_axes(ax, model: str | None):
    """:func:`stamp` for one panel: the model label under ``ax``'s x label (for figures whose other panels are not
    this model's results; the layout keeps it clear of everything). Returns the figure."""
    text = model_label(model)
    ax.set_xlabel(ax.get_xlabel() + "\n" + "\n".join(_wrap_lines(text, 72)))
    ax.xaxis.label.set_color("#c00000" if is_standin(model) else "#444444")
    ax.xaxis.label.set_fontsize(8)
    ax.figure._rscir_label = text
    return ax.figure


def _wrap_lines(text: str, width: int) -> list[str]:
    return textwrap.wrap(str(text), width) or [""]


# --------------------------------------------------------------------------------------------- grids
def _as_image(item, loader: Callable | None):
    if isinstance(item, (str, Path)):
        if loader is None:
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
    k = max((len(r["images"]) for r in rows), default=0)
    n = max(len(rows), 1)
    fig = plt.figure(figsize=(thumb * (k + 2.0), thumb * 1.12 * n + 1.1))
    gs = fig.add_gridspec(n, k + 2, width_ratios=[1.25, 0.75] + [1.0] * k, wspace=0.06, hspace=0.3,
                          left=0.01, right=0.99, top=1 - 0.75 / fig.get_figheight(),
                          bottom=0.35 / fig.get_figheight())
    ax_q = fig.add_subplot(gs[0:min(2, n), 0])  # the first rows only: no empty gutter beside the grid
    ax_q.imshow(_as_image(query_image, loader))
    ax_q.axis("off")
    ax_q.set_title("query", fontsize=9, fontweight="bold")
    ax_q.text(0.5, -0.04, _wrap(text, 22), transform=ax_q.transAxes, ha="center", va="top", fontsize=9,
              style="italic")
    for i, row in enumerate(rows):
        lam = float(row["lam"])
        end = "\n(image only)" if lam == 0.0 else "\n(text only)" if lam == 1.0 else ""
        ap = row.get("ap")
        ap_text = "" if ap is None else f"\nAP {100 * float(ap):.1f}"
        ax_l = fig.add_subplot(gs[i, 1])
        ax_l.axis("off")
        ax_l.text(0.95, 0.5, f"λ={lam:g}{end}{ap_text}", transform=ax_l.transAxes, ha="right", va="center",
                  fontsize=8)
        axes = [fig.add_subplot(gs[i, 2 + j]) for j in range(len(row["images"]))]
        draw_image_row(axes, row["images"], row["positive"], row.get("labels"), loader)
    fig.suptitle((title or "Top-k archive images for several λ") + "\ngreen outline = positive: relevant to this "
                 "(query, text) under the benchmark's ground truth; grey: not relevant", fontsize=10)
    return stamp(fig, model)


def _wrap(text: str, width: int) -> str:
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
        ax.legend(fontsize=6, loc="upper right")  # loc="best" costs seconds on archive-size histograms
    if pos is not None and pos.size:
        axes[0].text(0.99, 0.70, "ticks: positives", transform=axes[0].transAxes, ha="right", va="top", fontsize=6)
    return axes


def plot_score_distributions(raw: dict[str, np.ndarray], normalized: dict[str, np.ndarray],
                             positives: np.ndarray | None = None, model: str | None = None,
                             norm_name: str = "WeiCom (z-score → Φ)", title: str | None = None):
    """Why normalisation matters: histograms of the archive similarities of each modality, raw (left) and
    normalised (right).  ``raw``/``normalized`` map a modality name ("image", "text") to (N,) scores;
    ``positives`` (archive indices) are marked as ticks under each histogram."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    draw_score_distributions(axes, raw, normalized, positives, norm_name)
    fig.suptitle(title or "Score distributions over the archive for one query", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.94))
    return stamp(fig, model)


def draw_image_row(axes, images: Sequence, positive: Sequence[bool], labels: Sequence | None = None,
                   loader: Callable | None = None):
    """Show ``images`` in ``axes`` (one each), positives outlined in green, others in thin grey."""
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


# --------------------------------------------------------------------------------------------- recall
def plot_recall(table: pd.DataFrame, title: str = "text↔image retrieval"):
    """Grouped bars of R@K (both directions) and mR, one group per row of a :func:`recall_table`."""
    cols = [c for c in table.columns if "R@" in c] + ["mR"]
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2, 3.2))
    width = 0.8 / max(1, len(table))
    x = np.arange(len(cols))
    for j, (label, row) in enumerate(table[cols].iterrows()):
        bars = ax.bar(x + j * width, row.to_numpy(dtype=float), width, label=str(label))
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x + width * (len(table) - 1) / 2, [c.replace("_", " ") for c in cols])
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_hybrid(table: pd.DataFrame, metric: str = "mR", title: str = "hybrid over λ"):
    """``metric`` of the hybrid against λ per text encoder, with text→image (λ=0 end) as a dashed line."""
    fig, ax = plt.subplots(figsize=(9.0, 3.6))
    base = table[table.method == "text→image"].iloc[0]
    model = str(base.text_encoder).rstrip("/").rsplit("/", 1)[-1]
    ax.axhline(base[metric], ls="--", color="gray", label=f"text→image ({model})")
    for (enc, norm), g in table[table.method == "hybrid"].groupby(["text_encoder", "norm"], sort=False):
        g = g.sort_values("lambda")
        ax.plot(g["lambda"], g[metric], marker="o", label=f"hybrid ({norm}), text-to-text with {enc}")
    ax.set_xlabel("λ (0 = text→image, 1 = text-to-text)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig

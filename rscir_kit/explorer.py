"""The λ explorer: pick a query image and a text, move λ, watch the WeiCom top-k and the AP change.

The logic is plain Python, usable without a browser (tests, papermill)::

    ex = LambdaExplorer(archive, queries=qs, texts=text_feats, encoder=enc, image_root=root, k=8)
    state = ex.set(query="airplane/airplane01.jpg", text="with cars", lam=0.3)
    state.topk, state.positive, state.ap           # archive indices, bools, AP in [0, 1] (None: no ground truth)
    fig = ex.figure(state)                           # top-k grid + AP-vs-λ curve + score distributions
    ex.widget()                                      # the same, driven by ipywidgets

Texts come from the benchmark's text features (``texts.lookup``) or, for free text, are embedded on the
fly with ``encoder.encode_texts``.  The AP is known when the (query, text) pair is a benchmark pair; for
free text there is no ground truth and ``ap`` is None.
"""
from __future__ import annotations

import base64
import html
import io
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from . import plots
from .analysis import method_label
from .errors import DataError
from .methods import METHODS, check_lambda, fuse, weicom_rank_scores
from .metrics import average_precision
from .names import NameIndex
from .normalization import normalize

CURVE_LAMBDAS = tuple(round(0.05 * i, 2) for i in range(21))
THUMB_PX = 112  # thumbnail size in the widget's view
GALLERY_PX = 64  # thumbnail size in the widget's query gallery


@dataclass
class ExplorerState:
    """What the explorer shows for one (query, text, λ)."""

    query: int  # archive index of the query image
    query_path: str
    text: str
    lam: float
    k: int
    topk: np.ndarray  # (k,) archive indices, best first
    topk_paths: list[str]
    positive: np.ndarray  # (k,) bool: is each top-k image relevant (all False without ground truth)
    ap: float | None  # AP of the full ranking in [0, 1]; None without ground truth
    positives: np.ndarray | None  # archive indices relevant to the pair, None without ground truth
    s_img: np.ndarray = field(repr=False)  # (N,) raw cosine similarities
    s_txt: np.ndarray = field(repr=False)
    n_img: np.ndarray = field(repr=False)  # (N,) WeiCom-normalised (Φ of z-score)
    n_txt: np.ndarray = field(repr=False)
    curve: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # (λs, APs)
    text_source: str = "benchmark"  # "benchmark" or "encoder"

    def summary(self) -> str:
        head = f"query {self.query_path} + {self.text!r}, λ={self.lam:g}: "
        if self.positives is None:  # free text / not a benchmark pair: no positives to count
            return head + f"AP n/a (no ground truth for this text); top-{self.k} shown"
        if self.ap is None:
            return head + f"AP n/a (this pair has no positives in the archive); top-{self.k} shown"
        return head + (f"AP {100 * self.ap:.2f}; {int(self.positive.sum())}/{self.k} of the top-{self.k} "
                       "are positive")


class LambdaExplorer:
    """Interactive WeiCom λ explorer over one archive (see module doc).

    Args:
        archive: ImageFeatures-like: ``feats`` (N, d) L2-normalised, ``paths`` (N,), optional ``labels``.
        queries: QuerySet of the benchmark (its query images are offered, its texts and positives used).
        texts: TextFeatures of the benchmark texts (``lookup``); optional when ``encoder`` is given.
        encoder: an Encoder (``encode_texts``) for free text; optional.
        image_root: folder the archive paths are relative to (for the grid images).
        k: how many top images to show.
        model: model spec, for the figure label (default: ``archive.meta["model"]``).
        benchmark_name: how the live benchmark mAP names this benchmark (e.g. "UCM-Com").
    """

    def __init__(self, archive, queries=None, texts=None, encoder=None, image_root=None, k: int = 8,
                 lam: float = 0.5, model: str | None = None, loader: Callable | None = None,
                 curve_lambdas: Sequence[float] = CURVE_LAMBDAS, device: str = "cpu", benchmark_name: str = "benchmark"):
        self.archive = archive
        self.paths = np.asarray(archive.paths).astype(str)
        self.labels = np.asarray(getattr(archive, "labels", None) if getattr(archive, "labels", None) is not None
                                 else [""] * len(self.paths)).astype(str)
        self.X = torch.as_tensor(np.asarray(archive.feats, dtype=np.float32), device=device)
        if self.X.ndim != 2 or self.X.shape[0] != len(self.paths):
            raise DataError(f"archive features {tuple(self.X.shape)} do not match its {len(self.paths)} paths")
        if self.X.shape[0] < 2:
            raise DataError("the explorer needs an archive of at least 2 images (normalisation uses the std)")
        self.queries = queries.bind(self.paths) if queries is not None else None
        self.texts = texts
        self.encoder = encoder
        if texts is None and encoder is None:
            raise DataError("give text features (texts=) or an encoder (encoder=) to embed the query texts")
        self.image_root = Path(image_root) if image_root is not None else None
        self.loader = loader
        self.model = model or (getattr(archive, "meta", None) or {}).get("model")
        self.curve_lambdas = np.asarray([check_lambda(v) for v in curve_lambdas], dtype=float)
        self._index = NameIndex(self.paths, by="path")
        self._stems = NameIndex(self.paths, by="stem")
        self._pairs: dict[tuple[str, str], int] = {}
        self._texts_of: dict[str, list[str]] = {}
        if self.queries is not None:
            t = self.queries.table
            for qp, text, pid in zip(t["query_path"].astype(str), t["text"].astype(str), t["positive_id"]):
                self._pairs.setdefault((qp, text), int(pid))
                self._texts_of.setdefault(qp, [])
                if text not in self._texts_of[qp]:
                    self._texts_of[qp].append(text)
        self._text_cache: dict[str, tuple[np.ndarray, str]] = {}
        first_query = next(iter(self._texts_of), self.paths[0])
        first_text = (self._texts_of.get(first_query) or [""])[0]
        self.query, self.text, self.lam, self.k = first_query, first_text, check_lambda(lam), int(k)
        self.state: ExplorerState | None = None
        self.benchmark_name = benchmark_name
        self.live = None  # benchmark mAP per λ (DataFrame), see benchmark_map
        self._scores_key = None
        self._scores_cache: dict = {}
        self._thumbs: dict = {}
        self._panels: dict = {}

    # ------------------------------------------------------------------ choices
    @property
    def query_paths(self) -> list[str]:
        """Query images offered: the benchmark's (in table order), else the whole archive."""
        return list(self._texts_of) if self._texts_of else list(self.paths)

    def texts_for(self, query) -> list[str]:
        """Benchmark texts paired with ``query`` (empty for a query outside the benchmark)."""
        return list(self._texts_of.get(self.paths[self._query_index(query)], []))

    def positives_for(self, query, text: str) -> np.ndarray | None:
        """Archive indices relevant to (query, text), or None when the pair is not in the benchmark."""
        if self.queries is None:
            return None
        pid = self._pairs.get((self.paths[self._query_index(query)], str(text)))
        return None if pid is None else self.queries.positive_sets[pid]

    def index_of(self, query) -> int:
        """Archive index of a query given as index, relative path or file stem."""
        return self._query_index(query)

    def _query_index(self, query) -> int:
        if isinstance(query, (int, np.integer)):
            if not 0 <= int(query) < len(self.paths):
                raise DataError(f"query index {query} outside the archive [0, {len(self.paths)})")
            return int(query)
        key = str(query)
        for index in (self._index, self._stems):  # the path, else the file stem (rscir_kit.names rule)
            if key in index:
                return int(index.positions([key])[0])
        raise DataError(f"query image {key!r} is not in the archive ({len(self.paths)} images, e.g. "
                        f"{self.paths[0]!r}); pick one of explorer.query_paths")

    def text_embedding(self, text: str) -> tuple[np.ndarray, str]:
        """(d,) embedding of ``text`` and where it came from ("benchmark" features or "encoder")."""
        text = str(text)
        if not text.strip():
            raise DataError("the text query is empty: type a modification such as 'with trees'")
        if text in self._text_cache:
            return self._text_cache[text]
        emb = source = None
        if self.texts is not None:
            try:
                emb, source = np.asarray(self.texts.lookup([text]), dtype=np.float32)[0], "benchmark"
            except (DataError, KeyError):
                emb = None
        if emb is None:
            if self.encoder is None:
                raise DataError(f"text {text!r} is not among the benchmark's text features and no encoder was "
                                "given: pass encoder=load_encoder(model) to embed free text")
            emb, source = np.asarray(self.encoder.encode_texts([text]), dtype=np.float32)[0], "encoder"
        if emb.shape[-1] != self.X.shape[1]:
            raise DataError(f"text embedding has d={emb.shape[-1]} but the archive d={self.X.shape[1]}: "
                            "use the model the archive features were extracted with")
        self._text_cache[text] = (emb, source)
        return emb, source

    # ------------------------------------------------------------------ logic
    def _scores(self, qi: int, text: str):
        """Raw and normalised similarities (1, N) of (query, text) and the text's source; cached for the last
        pair, so a λ step recomputes nothing that does not depend on λ."""
        key = (qi, text)
        if self._scores_key != key:
            t_emb, source = self.text_embedding(text)
            s_img = self.X[qi:qi + 1] @ self.X.T  # (1, N)
            s_txt = torch.as_tensor(t_emb, device=self.X.device)[None] @ self.X.T
            positives = self.positives_for(qi, text)
            relevant = np.zeros(len(self.paths), dtype=bool)
            if positives is not None:
                relevant[positives] = True
            self._scores_cache = {"s_img": s_img, "s_txt": s_txt, "source": source, "positives": positives,
                                  "relevant": relevant, "n_img": normalize(s_img, "weicom")[0].cpu().numpy(),
                                  "n_txt": normalize(s_txt, "weicom")[0].cpu().numpy(),
                                  "raw_img": s_img[0].cpu().numpy(), "raw_txt": s_txt[0].cpu().numpy(), "curve": None}
            self._scores_key = key
        return self._scores_cache

    def rank(self, method: str = "weicom", lam: float | None = None, k: int | None = None) -> "Ranking":
        """Top-k and AP of the current (query, text) under any method of :data:`rscir_kit.methods.METHODS`
        (WeiCom ranks in its saturation-free form, like the engine)."""
        qi = self._query_index(self.query)
        c = self._scores(qi, self.text)
        if method == "weicom":
            lam = check_lambda(self.lam if lam is None else lam)
            scores = weicom_rank_scores(c["s_img"], c["s_txt"], lam)[0].cpu().numpy()
        else:
            lam = None
            scores = np.asarray(fuse(c["s_img"], c["s_txt"], method)[0].cpu().numpy())
        k = min(int(k or self.k), len(self.paths))
        topk = np.argsort(-scores.astype(np.float64), kind="stable")[:k]  # ties: lower archive index first
        positives = c["positives"]
        ap = average_precision(scores, c["relevant"]) if positives is not None and len(positives) else None
        return Ranking(method, lam, topk, c["relevant"][topk], ap, method_label(method, lam))

    def curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(λs, APs) of the current (query, text) over ``curve_lambdas``; None without ground truth.
        Depends on the pair only: computed once per pair."""
        c = self._scores(self._query_index(self.query), self.text)
        if c["positives"] is None or not len(c["positives"]):
            return None
        if c["curve"] is None:
            c["curve"] = (self.curve_lambdas.copy(), np.array([
                average_precision(weicom_rank_scores(c["s_img"], c["s_txt"], float(lam))[0].cpu().numpy(),
                                  c["relevant"]) for lam in self.curve_lambdas]))
        return c["curve"]

    def set(self, query=None, text: str | None = None, lam: float | None = None, k: int | None = None,
            curve: bool = True) -> ExplorerState:
        """Update any of query / text / λ / k and recompute; returns (and keeps) the new state."""
        if query is not None:
            self.query = self.paths[self._query_index(query)]
        if text is not None:
            self.text = str(text)
        if lam is not None:
            self.lam = check_lambda(lam)
        if k is not None:
            if int(k) < 1:
                raise DataError(f"k must be >= 1, got {k}")
            self.k = int(k)
        qi = self._query_index(self.query)
        c = self._scores(qi, self.text)
        r = self.rank("weicom", self.lam)
        self.state = ExplorerState(
            query=qi, query_path=self.paths[qi], text=self.text, lam=self.lam, k=len(r.topk), topk=r.topk,
            topk_paths=[self.paths[i] for i in r.topk], positive=r.positive, ap=r.ap, positives=c["positives"],
            s_img=c["raw_img"], s_txt=c["raw_txt"], n_img=c["n_img"], n_txt=c["n_txt"],
            curve=self.curve() if curve else None, text_source=c["source"])
        return self.state

    def image(self, index: int):
        """RGB array of archive image ``index`` (from ``image_root``); a grey tile when no root is set."""
        if self.image_root is None and self.loader is None:
            return np.full((32, 32, 3), 160, np.uint8)
        path = self.paths[int(index)]
        if self.loader is not None:
            return np.asarray(self.loader(path))
        from .imagesets import load_image

        return np.asarray(load_image(self.image_root / path))

    # ------------------------------------------------------------------ benchmark mAP
    def benchmark_map(self, lambdas: Sequence[float] | None = None, benchmarks: dict | None = None,
                      device: str = "auto"):
        """Benchmark mAP (%, the mean over groups, as in Table 2's Avg) of WeiCom at each λ, one column per
        benchmark: ``benchmarks`` maps a name to ``(queries, archive, texts)``; default: this explorer's own
        benchmark under ``self.benchmark_name``. Kept in ``self.live`` for the widget."""
        import pandas as pd

        from .engine import evaluate, summarize

        lambdas = [check_lambda(v) for v in (self.curve_lambdas if lambdas is None else lambdas)]
        if benchmarks is None:
            if self.queries is None or self.texts is None:
                raise DataError("benchmark mAP needs the benchmark's queries and text features (queries=, texts=)")
            benchmarks = {self.benchmark_name: (self.queries, self.archive, self.texts)}
        cols = {}
        for name, (queries, archive, texts) in benchmarks.items():
            per_pair = evaluate(queries, archive, texts, methods=("weicom",), lambdas=lambdas, device=device,
                                progress=False)
            summary = summarize(per_pair, by="attribute")
            avg = summary[summary["attribute"] == "avg"].set_index("lambda")["map"]
            cols[name] = [float(avg.loc[lam]) if lam in avg.index else float(avg.iloc[
                int(np.argmin(np.abs(avg.index.to_numpy(float) - lam)))]) for lam in lambdas]
        self.live = pd.DataFrame(cols, index=pd.Index(lambdas, name="lambda"))
        return self.live

    def live_text(self, lam: float) -> str:
        """One line: the benchmark mAP at ``lam`` (nearest λ of ``self.live``) and the best λ."""
        if self.live is None or self.live.empty:
            return ""
        grid = self.live.index.to_numpy(float)
        j = int(np.argmin(np.abs(grid - lam)))
        near = "" if abs(grid[j] - lam) < 1e-9 else f" (nearest computed λ {grid[j]:g})"
        parts = []
        for name in self.live.columns:
            col = self.live[name]
            parts.append(f"{name} <b>{col.iloc[j]:.2f}</b> (best {col.max():.2f} at λ={col.idxmax():g})")
        return f"benchmark mAP of WeiCom at λ={lam:g}{near}: " + "; ".join(parts)

    # ------------------------------------------------------------------ figure
    def figure(self, state: ExplorerState | None = None, per_row: int = 10):
        """Top-k grid (positives outlined; rows of ``per_row``) above the AP-vs-λ curve and the raw /
        normalised score distributions of both modalities; stamped with the model label."""
        import matplotlib.pyplot as plt

        state = state or self.state or self.set()
        k = state.k
        cols = min(k, per_row)
        rows = -(-k // cols)
        thumb = 1.3
        width = max(thumb * (cols + 1.3), 11.0)
        grid_h = thumb * 1.3 * rows
        fig = plt.figure(figsize=(width, grid_h + 3.4), layout="constrained")
        fig.get_layout_engine().set(rect=(0, 0.25 / (grid_h + 3.4), 1, 1))  # room for the model stamp
        top, bottom = fig.subfigures(2, 1, height_ratios=[grid_h, 3.0], hspace=0.02)
        gs = top.add_gridspec(rows, cols + 1, width_ratios=[1.3] + [1.0] * cols)
        ax_q = top.add_subplot(gs[:, 0])
        ax_q.imshow(self.image(state.query))
        ax_q.axis("off")
        ax_q.set_title(f"query\n{Path(state.query_path).name}", fontsize=8, fontweight="bold")
        ax_q.text(0.5, -0.04, plots._wrap(state.text, 18), transform=ax_q.transAxes, ha="center", va="top",
                  fontsize=8, style="italic")
        row_axes = [top.add_subplot(gs[j // cols, 1 + j % cols]) for j in range(k)]
        labels = [f"#{r + 1} {self.labels[i]}" + (" (query)" if i == state.query else "")
                  for r, i in enumerate(state.topk)]
        plots.draw_image_row(row_axes, [self.image(i) for i in state.topk], state.positive, labels)
        ax_ap, ax_raw, ax_norm = bottom.subplots(1, 3)
        if state.curve is not None:
            plots.plot_ap_vs_lambda(state.curve[0], state.curve[1], current=state.lam, ax=ax_ap)
            ax_ap.set_title("AP of this query vs λ", fontsize=9)
        else:
            ax_ap.axis("off")
            ax_ap.text(0.5, 0.5, "no ground truth for this text:\nAP not defined", ha="center", va="center",
                       fontsize=9)
        plots.draw_score_distributions((ax_raw, ax_norm), {"image": state.s_img, "text": state.s_txt},
                                       {"image": state.n_img, "text": state.n_txt}, state.positives)
        ax_norm.set_ylabel("")
        src = "" if state.text_source == "benchmark" else " (free text, embedded on the fly)"
        if state.ap is None:
            head = f"WeiCom λ={state.lam:g} - no ground truth for this text{src}"
        else:
            head = (f"WeiCom λ={state.lam:g} - AP {100 * state.ap:.2f} - {int(state.positive.sum())}/{k} of the "
                    f"top-{k} positive (green: relevant under the benchmark's ground truth)")
        fig.suptitle(head, fontsize=10)
        return plots.stamp(fig, self.model)

    def render_png(self, state: ExplorerState | None = None, dpi: int = 90) -> bytes:
        """:meth:`figure` rendered to PNG bytes."""
        import io

        import matplotlib.pyplot as plt

        fig = self.figure(state)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        plt.close(fig)
        return buf.getvalue()

    # ------------------------------------------------------------------ the widget's view (HTML)
    def thumbnail_uri(self, index: int, size: int = THUMB_PX) -> str:
        """``data:`` URI of a JPEG thumbnail of archive image ``index`` (made once, then cached)."""
        key = (int(index), size)
        if key not in self._thumbs:
            im = Image.fromarray(np.asarray(self.image(index)).astype(np.uint8)).convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
            self._thumbs[key] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
        return self._thumbs[key]

    def plots_panel(self, dpi: int = 80) -> dict:
        """The λ-independent panel of the current pair (AP-vs-λ curve without the λ marker, raw and normalised
        score distributions) as a PNG ``data:`` URI, with where λ=0…1 and the AP axis fall on it (fractions of
        the image), so the widget moves the λ marker without re-rendering. Rendered once per pair."""
        key = (self._query_index(self.query), self.text)
        if key in self._panels:
            return self._panels[key]
        import io

        import matplotlib.pyplot as plt

        c = self._scores(*key)
        curve = self.curve()
        fig, (ax_ap, ax_raw, ax_norm) = plt.subplots(1, 3, figsize=(12.5, 3.1), layout="constrained")
        geometry = None
        if curve is not None:
            plots.plot_ap_vs_lambda(curve[0], curve[1], ax=ax_ap)
            ax_ap.set_xlim(-0.03, 1.03)
            ax_ap.set_title("AP of this query vs λ (red: the slider)", fontsize=9)
        else:
            ax_ap.axis("off")
            ax_ap.text(0.5, 0.5, "no ground truth for this text:\nAP not defined", ha="center", va="center",
                       fontsize=9)
        plots.draw_score_distributions((ax_raw, ax_norm), {"image": c["raw_img"], "text": c["raw_txt"]},
                                       {"image": c["n_img"], "text": c["n_txt"]}, c["positives"])
        ax_norm.set_ylabel("")
        fig.canvas.draw()
        if curve is not None:
            w, h = fig.canvas.get_width_height()
            (x0, y0), (x1, y1) = ax_ap.transData.transform([(0.0, ax_ap.get_ylim()[0]), (1.0, ax_ap.get_ylim()[1])])
            geometry = {"x0": x0 / w, "x1": x1 / w, "top": 1 - y1 / h, "bottom": 1 - y0 / h,
                        "ylim": [float(v) for v in ax_ap.get_ylim()]}
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        plt.close(fig)
        panel = {"uri": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), "geometry": geometry}
        if len(self._panels) > 64:
            self._panels.clear()
        self._panels[key] = panel
        return panel

    def _cards(self, ranking: "Ranking", query: int) -> str:
        out = []
        for r, (i, pos) in enumerate(zip(ranking.topk, ranking.positive)):
            name = html.escape(Path(self.paths[i]).name)
            mark = " ✓" if pos else ""
            q = " (query)" if i == query else ""
            border = f"4px solid {plots.POSITIVE_COLOR}" if pos else f"4px solid {plots.NEGATIVE_COLOR}"
            out.append(f"<figure class='rscir-card{' rscir-pos' if pos else ''}' title='{name}' style='margin:2px;"
                       f"width:{THUMB_PX + 8}px'><img src='{self.thumbnail_uri(i)}' style='width:{THUMB_PX}px;"
                       f"height:{THUMB_PX}px;object-fit:cover;border:{border};box-sizing:content-box'>"
                       f"<figcaption style='font-size:11px;line-height:1.2;overflow:hidden;white-space:nowrap;"
                       f"text-overflow:ellipsis'>#{r + 1} {html.escape(self.labels[i])}{q}{mark}<br>"
                       f"<span style='color:#777'>{name}</span></figcaption></figure>")
        return "".join(out)

    def view_html(self, state: ExplorerState | None = None, compare: "Ranking | None" = None) -> str:
        """What the widget shows, as one HTML fragment (status, benchmark mAP, top-k cards wrapping into rows,
        the comparison row, the score panel with the λ marker): replaced in one piece, so the status and the
        figure can never disagree."""

        state = state or self.state or self.set()
        lines = [f"<div class='rscir-status' style='font-weight:bold'>{html.escape(state.summary())}</div>"]
        live = self.live_text(state.lam) or getattr(self, "_live_status", None) or ""
        if live:
            lines.append(f"<div class='rscir-live'>{live}</div>")
        qname = html.escape(state.query_path)
        text = html.escape(state.text)
        src = "" if state.text_source == "benchmark" else " <i>(free text, embedded by the model)</i>"
        query = (f"<figure style='margin:2px 10px 2px 2px;width:{THUMB_PX + 40}px'><img src='"
                 f"{self.thumbnail_uri(state.query, THUMB_PX + 32)}' style='width:{THUMB_PX + 32}px;border:4px solid "
                 f"#333'><figcaption style='font-size:11px'><b>query</b> {qname}<br><i>“{text}”</i>{src}"
                 f"</figcaption></figure>")
        main = Ranking("weicom", state.lam, state.topk, state.positive, state.ap, method_label("weicom", state.lam))
        rows = [(main, "rscir-grid")] + ([(compare, "rscir-compare-grid")] if compare is not None else [])
        blocks = []
        for ranking, cls in rows:
            ap = "" if ranking.ap is None else f" - AP {100 * ranking.ap:.2f}"
            blocks.append(f"<div style='font-size:12px;margin-top:4px'><b>{html.escape(ranking.label)}</b>{ap}</div>"
                          f"<div class='{cls}' style='display:flex;flex-wrap:wrap'>{self._cards(ranking, state.query)}"
                          "</div>")
        legend = ("<div style='font-size:11px;color:#555'>green border ✓: positive = relevant to this (query, text) "
                  "under the benchmark's ground truth; grey: not relevant" +
                  ("" if state.positives is not None else " (free text: no ground truth, nothing is marked)") +
                  f"; {html.escape(plots.model_label(self.model))}</div>")
        panel = self.plots_panel()
        marker = ""
        g = panel["geometry"]
        if g is not None:
            x = 100 * (g["x0"] + state.lam * (g["x1"] - g["x0"]))
            marker = (f"<div class='rscir-lam-marker' style='position:absolute;left:{x:.2f}%;top:{100 * g['top']:.2f}%;"
                      f"height:{100 * (g['bottom'] - g['top']):.2f}%;border-left:2px dashed #c00000'></div>")
            if state.ap is not None:
                lo, hi = g["ylim"]
                y = g["bottom"] - (100 * state.ap - lo) / (hi - lo) * (g["bottom"] - g["top"])
                marker += (f"<div style='position:absolute;left:calc({x:.2f}% - 5px);top:calc({100 * y:.2f}% - 5px);"
                           "width:10px;height:10px;border-radius:5px;background:#c00000'></div>")
        plots_html = (f"<div style='position:relative;display:inline-block;max-width:100%'><img class='rscir-panel' "
                      f"src='{panel['uri']}' style='max-width:100%;display:block'>{marker}</div>")
        return ("<div class='rscir-explorer'>" + "".join(lines) +
                f"<div style='display:flex;align-items:flex-start'>{query}<div style='flex:1'>{''.join(blocks)}"
                f"</div></div>{legend}{plots_html}</div>")

    # ------------------------------------------------------------------ widget
    def query_options(self, cls: str = "all", text: str = "") -> list[tuple[str, str]]:
        """(label, path) of the query images offered, filtered by class and by "has ground truth for
        ``text``"; labels show the file name and class."""
        out = []
        for p in self.query_paths:
            label = self.labels[self._query_index(p)]
            if cls not in ("all", "", None) and label != cls:
                continue
            if text and text not in self._texts_of.get(p, []):
                continue
            out.append((f"{Path(p).name} ({label})", p))
        return out

    def thumbnail_bytes(self, index: int, size: int = GALLERY_PX) -> bytes:
        """JPEG bytes of the cached thumbnail of archive image ``index`` (for ``ipywidgets.Image``)."""
        return base64.b64decode(self.thumbnail_uri(index, size).split(",", 1)[1])

    def widget(self, lam_step: float = 0.05, k_max: int = 24, live: bool = True, benchmarks: dict | None = None,
               compare_methods: Sequence[str] = ("image", "text", "average", "add", "multiply", "min"),
               gallery: int = 24):
        """ipywidgets UI: filters (class, has-ground-truth-for-text), a thumbnail gallery of the filtered queries
        (``gallery`` a page; click one to pick it), query, text (benchmark or free), λ and top-k sliders, a
        comparison (WeiCom at a second λ or another method of the registry) and the view.

        ``live``: show the benchmark mAP at the slider's λ (computed once over the slider's λ grid with the
        engine; ``benchmarks`` adds others, name → (queries, archive, texts)). Every control change recomputes
        through :meth:`set` and replaces the view in one piece (status and figure change together). The view is
        HTML (cached thumbnails, the λ-independent score panel rendered once per pair): a λ step redraws no
        figure."""
        import ipywidgets as W

        live_job = None
        if live and self.live is None and self.queries is not None and self.texts is not None:
            lams = np.round(np.arange(0.0, 1.0 + 1e-9, lam_step), 6)
            own = {self.benchmark_name: (self.queries, self.archive, self.texts)}
            live_job = (lams, dict(own, **(benchmarks or {})))
        queries = self.query_paths
        classes = sorted({self.labels[self._query_index(p)] for p in queries})
        texts = sorted({t for ts in self._texts_of.values() for t in ts})
        cls_dd = W.Dropdown(options=["all"] + classes, value="all", description="class",
                            layout=W.Layout(width="260px"))
        gt_dd = W.Dropdown(options=[("any query", "")] + [(f"has ground truth for “{t}”", t) for t in texts],
                           value="", description="filter", layout=W.Layout(width="340px"))
        count = W.HTML()
        options = self.query_options()
        q_dd = W.Dropdown(options=options, value=self.query if self.query in queries else queries[0],
                          description="query", layout=W.Layout(width="420px"))
        t_cb = W.Combobox(options=self.texts_for(q_dd.value), value=self.text, description="text",
                          placeholder="benchmark text or free text" + ("" if self.encoder else " (needs encoder)"),
                          ensure_option=self.encoder is None, continuous_update=False,
                          layout=W.Layout(width="420px"))
        lam_s = W.FloatSlider(value=self.lam, min=0.0, max=1.0, step=lam_step, description="λ",
                              continuous_update=False, readout_format=".2f")
        k_s = W.IntSlider(value=min(self.k, k_max), min=1, max=min(k_max, len(self.paths)), description="top-k",
                          continuous_update=False)
        cmp_dd = W.Dropdown(options=[("nothing", "none"), ("WeiCom at a second λ", "weicom")] +
                            [(method_label(m, None), m) for m in compare_methods if m in METHODS and m != "weicom"],
                            value="none", description="compare", layout=W.Layout(width="300px"))
        lam2_s = W.FloatSlider(value=1.0 - self.lam if self.lam != 0.5 else 0.0, min=0.0, max=1.0, step=lam_step,
                               description="λ₂", continuous_update=False, readout_format=".2f",
                               layout=W.Layout(display="none"))
        error = W.HTML()
        view = W.HTML()
        g_cards = W.Box(layout=W.Layout(display="flex", flex_flow="row wrap", max_height="240px", overflow="auto"))
        g_prev = W.Button(description="◀", tooltip="previous page of queries", layout=W.Layout(width="40px"))
        g_next = W.Button(description="▶", tooltip="next page of queries", layout=W.Layout(width="40px"))
        g_count = W.HTML()
        g_page = {"n": 0, "buttons": {}}
        for w, name in ((cls_dd, "class"), (gt_dd, "filter"), (q_dd, "query"), (t_cb, "text"), (lam_s, "lam"),
                        (k_s, "k"), (cmp_dd, "compare"), (lam2_s, "lam2"), (view, "view"), (error, "error"),
                        (count, "count"), (g_cards, "gallery"), (g_prev, "gallery-prev"), (g_next, "gallery-next")):
            w.add_class(f"rscir-{name}")
        quiet = {"on": False}
        lock = threading.RLock()

        def redraw(*_):
            if quiet["on"]:
                return
            with lock:
                _redraw()

        def _redraw():
            try:
                state = self.set(query=q_dd.value, text=t_cb.value or self.text, lam=lam_s.value, k=k_s.value)
                comp = None
                if cmp_dd.value != "none":
                    comp = self.rank(cmp_dd.value, lam2_s.value if cmp_dd.value == "weicom" else None, k=k_s.value)
                html = self.view_html(state, comp)
            except (DataError, ValueError) as exc:
                error.value = f"<span style='color:#c00000'>{exc}</span>"
                return
            error.value = ""
            view.value = html  # one assignment: status, numbers and figure change together

        def mark_gallery():
            for path, button in g_page["buttons"].items():
                button.button_style = "info" if path == q_dd.value else ""

        def show_gallery(*_):
            """One page of the filtered queries as thumbnails; a click picks the query (as the dropdown does)."""
            opts = self.query_options(cls_dd.value, gt_dd.value)
            pages = max(1, -(-len(opts) // gallery))
            g_page["n"] = min(max(g_page["n"], 0), pages - 1)
            start = g_page["n"] * gallery
            shown = opts[start:start + gallery]
            cards, g_page["buttons"] = [], {}
            for label, path in shown:
                pick = W.Button(description=Path(path).stem, tooltip=label,
                                layout=W.Layout(width=f"{GALLERY_PX + 8}px", padding="0"))
                pick.on_click(lambda _b, p=path: setattr(q_dd, "value", p))
                g_page["buttons"][path] = pick
                thumb = W.Image(value=self.thumbnail_bytes(self._query_index(path)), format="jpeg",
                                layout=W.Layout(width=f"{GALLERY_PX}px", height=f"{GALLERY_PX}px"))
                cards.append(W.VBox([thumb, pick], layout=W.Layout(margin="2px", align_items="center")))
            g_cards.children = cards
            g_count.value = (f"<span style='font-size:12px'>gallery {start + 1}–{start + len(shown)} of "
                             f"{len(opts)}</span>" if shown else "<span style='font-size:12px'>no query</span>")
            g_prev.disabled, g_next.disabled = g_page["n"] == 0, g_page["n"] >= pages - 1
            mark_gallery()

        def turn(step):
            g_page["n"] += step
            show_gallery()

        def set_options(*_):
            opts = self.query_options(cls_dd.value, gt_dd.value)
            count.value = f"<span style='font-size:12px'>{len(opts)} of {len(queries)} queries</span>"
            g_page["n"] = 0
            if gallery:
                show_gallery()
            if not opts:
                return
            quiet["on"] = True
            try:
                current = q_dd.value
                q_dd.options = opts
                q_dd.value = current if current in dict((v, k) for k, v in opts) else opts[0][1]
            finally:
                quiet["on"] = False
            on_query({"new": q_dd.value})

        def on_query(change):
            mark_gallery()
            options = self.texts_for(change["new"])
            quiet["on"] = True
            try:
                t_cb.options = options
                wanted = gt_dd.value if gt_dd.value in options else (options[0] if options else t_cb.value)
                t_cb.value = wanted  # a new query starts from its own benchmark text, not the last query's
            finally:
                quiet["on"] = False
            redraw()

        def on_compare(change):
            lam2_s.layout.display = "" if change["new"] == "weicom" else "none"
            redraw()

        q_dd.observe(on_query, names="value")
        cls_dd.observe(set_options, names="value")
        gt_dd.observe(set_options, names="value")
        cmp_dd.observe(on_compare, names="value")
        for w in (t_cb, lam_s, k_s, lam2_s):
            w.observe(redraw, names="value")
        count.value = f"<span style='font-size:12px'>{len(options)} of {len(queries)} queries</span>"
        g_prev.on_click(lambda _b: turn(-1))
        g_next.on_click(lambda _b: turn(+1))
        layout = W.Layout(flex_flow="row wrap")
        rows = [W.HBox([cls_dd, gt_dd, count], layout=layout)]
        if gallery:
            show_gallery()
            rows += [W.HBox([g_prev, g_next, g_count], layout=layout), g_cards]
        box = W.VBox(rows + [W.HBox([q_dd, t_cb], layout=layout), W.HBox([lam_s, k_s], layout=layout),
                             W.HBox([cmp_dd, lam2_s], layout=layout), error, view])
        redraw()
        if live_job is not None:  # the engine over every λ of the slider, without blocking the notebook
            self._live_status = f"benchmark mAP: computing WeiCom over {len(live_job[0])} λ values…"

            def compute_live():
                try:
                    self.benchmark_map(*live_job)
                except Exception as exc:  # noqa: BLE001 - shown in the view instead of a thread traceback
                    self._live_status = f"benchmark mAP not available: {type(exc).__name__}: {exc}"
                else:
                    self._live_status = None
                redraw()

            self._live_thread = threading.Thread(target=compute_live, daemon=True, name="rscir-live-map")
            self._live_thread.start()
        self._widgets = {"class": cls_dd, "filter": gt_dd, "query": q_dd, "text": t_cb, "lam": lam_s, "k": k_s,
                         "compare": cmp_dd, "lam2": lam2_s, "view": view, "error": error, "count": count,
                         "gallery": g_cards, "gallery_prev": g_prev, "gallery_next": g_next, "gallery_count": g_count}
        return box


@dataclass
class Ranking:
    """Top-k of one method for the explorer's current (query, text)."""

    method: str
    lam: float | None
    topk: np.ndarray
    positive: np.ndarray
    ap: float | None
    label: str


# ---------------------------------------------------------------------------------------------- grids
def grid_rows(explorer: LambdaExplorer, query, text: str, lambdas: Sequence[float], k: int | None = None,
              images: bool = True) -> list[dict]:
    """Rows for :func:`rscir_kit.plots.qualitative_grid`: one per λ with its top-k (images when ``images``),
    positive flags, class labels and AP.  Also carries ``topk`` (archive indices) for the record.
    The explorer's own selection (what its widget shows) is left as it was."""
    keep = ("query", "text", "lam", "k", "state")
    saved = {name: getattr(explorer, name) for name in keep if hasattr(explorer, name)}
    try:
        return _grid_rows(explorer, query, text, lambdas, k, images)
    finally:
        for name, value in saved.items():
            setattr(explorer, name, value)


def _grid_rows(explorer, query, text, lambdas, k, images) -> list[dict]:
    rows = []
    for lam in lambdas:
        st = explorer.set(query=query, text=text, lam=lam, k=k, curve=False)
        rows.append({"lam": st.lam, "topk": st.topk.tolist(), "paths": st.topk_paths,
                     "images": [explorer.image(i) for i in st.topk] if images else st.topk_paths,
                     "positive": st.positive.tolist(),
                     "labels": [explorer.labels[i] + (" (query)" if i == st.query else "") for i in st.topk],
                     "ap": st.ap})
    return rows


def pick_examples(per_pair, lam: float, n: int = 3, by: str = "attribute") -> list[int]:
    """Pair ids for qualitative figures: the pairs where WeiCom at ``lam`` gains most AP over the better of
    image-only and text-only, at most one per ``by`` group, best groups first (deterministic: ties → lower
    pair id).  ``per_pair`` is the engine's per-pair table with methods ``image``, ``text``, ``weicom``."""
    import pandas as pd

    def ap_of(method, lam_value=None):
        rows = per_pair[per_pair["method"] == method]
        if lam_value is not None:
            rows = rows[np.isclose(rows["lambda"].astype(float), lam_value)]
        return rows.set_index("pair")["ap"]

    w = ap_of("weicom", lam)
    if w.empty:
        raise DataError(f"no WeiCom rows at λ={lam} in the per-pair table; evaluate with that λ")
    base = pd.concat([ap_of("image"), ap_of("text")], axis=1).max(axis=1)
    info = per_pair.drop_duplicates("pair").set_index("pair")
    gain = pd.DataFrame({"gain": w - base.reindex(w.index), "ap": w,
                         "group": info.loc[w.index, by] if by in info else "all"})
    gain = gain[gain["ap"] > 0].reset_index().sort_values(["gain", "ap", "pair"], ascending=[False, False, True])
    picked = gain.drop_duplicates("group").head(n)["pair"].tolist()
    if len(picked) < n:  # fewer groups than examples: fill with the next best pairs
        picked += [p for p in gain["pair"] if p not in picked][: n - len(picked)]
    return [int(p) for p in picked]


def select_examples(per_pair, lam: float, table, n: int = 3, seed: int = 0, by: str = "attribute") -> list[tuple[int, str]]:
    """(pair id, kind) for qualitative figures that do not only show wins: ``n`` where WeiCom at ``lam`` gains
    most over the better baseline (:func:`pick_examples`), one failure (where it loses most), ``n`` drawn at
    random with ``seed`` among the pairs with positives, and — when the query set has directions — at least one
    "remove" ("without …") query. Deterministic for a given seed."""
    import pandas as pd

    picked = [(p, "best gain") for p in pick_examples(per_pair, lam, n=n, by=by)]

    def ap_of(method, lam_value=None):
        rows = per_pair[per_pair["method"] == method]
        if lam_value is not None:
            rows = rows[np.isclose(rows["lambda"].astype(float), lam_value)]
        return rows.set_index("pair")["ap"]

    w = ap_of("weicom", lam)
    base = pd.concat([ap_of("image"), ap_of("text")], axis=1).max(axis=1).reindex(w.index)
    gain = (w - base).sort_values(kind="stable")
    with_pos = per_pair.drop_duplicates("pair").set_index("pair")
    has_pos = with_pos["n_pos"] > 0 if "n_pos" in with_pos else pd.Series(True, index=with_pos.index)
    used = {p for p, _ in picked}
    fail = [int(p) for p in gain.index if has_pos.get(p, True) and int(p) not in used]
    if fail:
        picked.append((fail[0], "failure"))
        used.add(fail[0])
    pool = np.array(sorted(int(p) for p in w.index if has_pos.get(p, True) and int(p) not in used))
    rng = np.random.default_rng(seed)
    for p in rng.choice(pool, size=min(n, len(pool)), replace=False) if len(pool) else []:
        picked.append((int(p), f"random (seed {seed})"))
        used.add(int(p))
    if "direction" in table.columns and not any(table.iloc[p]["direction"] == "remove" for p, _ in picked):
        removes = [int(p) for p in gain.index[::-1] if table.iloc[int(p)]["direction"] == "remove"
                   and has_pos.get(p, True) and int(p) not in used]
        if removes:
            picked.append((removes[0], "best gain, remove (\"without …\")"))
    return picked

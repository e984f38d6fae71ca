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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import plots
from .errors import DataError
from .methods import check_lambda, weicom_rank_scores
from .metrics import average_precision
from .names import NameIndex
from .normalization import normalize

CURVE_LAMBDAS = tuple(round(0.05 * i, 2) for i in range(21))


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
        ap = "n/a (no ground truth for this text)" if self.ap is None else f"{100 * self.ap:.2f}"
        hits = int(self.positive.sum())
        return (f"query {self.query_path} + {self.text!r}, λ={self.lam:g}: AP {ap}; "
                f"{hits}/{self.k} of the top-{self.k} are positive")


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
    """

    def __init__(self, archive, queries=None, texts=None, encoder=None, image_root=None, k: int = 8,
                 lam: float = 0.5, model: str | None = None, loader: Callable | None = None,
                 curve_lambdas: Sequence[float] = CURVE_LAMBDAS, device: str = "cpu"):
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
        t_emb, source = self.text_embedding(self.text)
        s_img = self.X[qi:qi + 1] @ self.X.T  # (1, N)
        s_txt = torch.as_tensor(t_emb, device=self.X.device)[None] @ self.X.T
        n_img, n_txt = normalize(s_img, "weicom"), normalize(s_txt, "weicom")
        scores = weicom_rank_scores(s_img, s_txt, self.lam)[0].cpu().numpy()  # the engine's exact WeiCom order
        k = min(self.k, len(self.paths))
        topk = np.argsort(-scores.astype(np.float64), kind="stable")[:k]  # ties: lower archive index first
        positives = self.positives_for(qi, self.text)
        relevant = np.zeros(len(self.paths), dtype=bool)
        if positives is not None:
            relevant[positives] = True
        ap = None
        if positives is not None and len(positives):
            ap = average_precision(scores, relevant)
        curve_data = None
        if curve and positives is not None and len(positives):
            curve_data = (self.curve_lambdas.copy(),
                          np.array([average_precision(weicom_rank_scores(s_img, s_txt, float(lam))[0].cpu().numpy(),
                                                      relevant) for lam in self.curve_lambdas]))
        self.state = ExplorerState(
            query=qi, query_path=self.paths[qi], text=self.text, lam=self.lam, k=k, topk=topk,
            topk_paths=[self.paths[i] for i in topk], positive=relevant[topk], ap=ap, positives=positives,
            s_img=s_img[0].cpu().numpy(), s_txt=s_txt[0].cpu().numpy(), n_img=n_img[0].cpu().numpy(),
            n_txt=n_txt[0].cpu().numpy(), curve=curve_data, text_source=source)
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

    # ------------------------------------------------------------------ figure
    def figure(self, state: ExplorerState | None = None):
        """Top-k grid (positives outlined) above the AP-vs-λ curve and the raw / normalised score
        distributions of both modalities; stamped with the model label."""
        import matplotlib.pyplot as plt

        state = state or self.state or self.set()
        k = state.k
        cols = max(k + 1, 6)
        width = max(1.45 * cols, 10.5)
        thumb = width / cols
        fig = plt.figure(figsize=(width, thumb * 1.25 + 3.6))
        gs = fig.add_gridspec(2, cols, height_ratios=[thumb * 1.25, 2.6], hspace=0.45, wspace=0.3)
        ax_q = fig.add_subplot(gs[0, 0])
        ax_q.imshow(self.image(state.query))
        ax_q.axis("off")
        ax_q.set_title("query", fontsize=8, fontweight="bold")
        ax_q.text(0.5, -0.08, plots._wrap(state.text, 18), transform=ax_q.transAxes, ha="center", va="top",
                  fontsize=8, style="italic")
        row_axes = [fig.add_subplot(gs[0, 1 + j]) for j in range(k)]
        labels = [f"#{r + 1} {self.labels[i]}" + (" (query)" if i == state.query else "")
                  for r, i in enumerate(state.topk)]
        plots.draw_image_row(row_axes, [self.image(i) for i in state.topk], state.positive, labels)
        third = cols // 3
        ax_ap = fig.add_subplot(gs[1, :third])
        if state.curve is not None:
            plots.plot_ap_vs_lambda(state.curve[0], state.curve[1], current=state.lam, ax=ax_ap)
            ax_ap.set_title("AP of this query vs λ", fontsize=9)
        else:
            ax_ap.axis("off")
            ax_ap.text(0.5, 0.5, "no ground truth for this text:\nAP not defined", ha="center", va="center",
                       fontsize=9)
        ax_raw = fig.add_subplot(gs[1, third:2 * third])
        ax_norm = fig.add_subplot(gs[1, 2 * third:])
        plots.draw_score_distributions((ax_raw, ax_norm), {"image": state.s_img, "text": state.s_txt},
                                       {"image": state.n_img, "text": state.n_txt}, state.positives)
        ap = "n/a" if state.ap is None else f"{100 * state.ap:.2f}"
        src = "" if state.text_source == "benchmark" else " (free text, embedded on the fly)"
        fig.suptitle(f"WeiCom λ={state.lam:g} - AP {ap} - {int(state.positive.sum())}/{k} of the top-{k} "
                     f"positive{src}", fontsize=10)
        fig.subplots_adjust(left=0.05, right=0.98, top=1 - 0.45 / fig.get_figheight(),
                            bottom=0.75 / fig.get_figheight())
        return plots.stamp(fig, self.model)

    # ------------------------------------------------------------------ widget
    def render_png(self, state: ExplorerState | None = None, dpi: int = 90) -> bytes:
        """:meth:`figure` rendered to PNG bytes (what the widget shows)."""
        import io

        import matplotlib.pyplot as plt

        fig = self.figure(state)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        plt.close(fig)
        return buf.getvalue()

    def widget(self, lam_step: float = 0.05, dpi: int = 90):
        """ipywidgets UI: query dropdown, text combobox (benchmark texts or free text), λ and k sliders,
        the AP line and the figure; every change recomputes through :meth:`set`.

        The figure is an ``Image`` widget updated with PNG bytes, not an ``Output`` widget: headless runners
        (papermill / nbclient) can hang on Output-widget capture (jupyter/nbclient#312), image updates are
        plain widget state."""
        import ipywidgets as W

        queries = self.query_paths
        q_dd = W.Dropdown(options=queries, value=self.query if self.query in queries else queries[0],
                          description="query", layout=W.Layout(width="420px"))
        t_cb = W.Combobox(options=self.texts_for(q_dd.value), value=self.text, description="text",
                          placeholder="benchmark text or free text" + ("" if self.encoder else " (needs encoder)"),
                          ensure_option=self.encoder is None, continuous_update=False,
                          layout=W.Layout(width="420px"))
        lam_s = W.FloatSlider(value=self.lam, min=0.0, max=1.0, step=lam_step, description="λ",
                              continuous_update=False, readout_format=".2f")
        k_s = W.IntSlider(value=self.k, min=1, max=min(20, len(self.paths)), description="top-k",
                          continuous_update=False)
        info = W.HTML()
        image = W.Image(format="png", layout=W.Layout(max_width="100%"))

        def redraw(*_):
            try:
                state = self.set(query=q_dd.value, text=t_cb.value or self.text, lam=lam_s.value, k=k_s.value)
            except DataError as exc:
                info.value = f"<span style='color:#c00000'>{exc}</span>"
                return
            info.value = f"<b>{state.summary()}</b>"
            image.value = self.render_png(state, dpi=dpi)

        def on_query(change):
            options = self.texts_for(change["new"])
            t_cb.options = options
            if options and t_cb.value not in options and self.encoder is None:
                t_cb.value = options[0]
            redraw()

        q_dd.observe(on_query, names="value")
        for w in (t_cb, lam_s, k_s):
            w.observe(redraw, names="value")
        box = W.VBox([W.HBox([q_dd, t_cb]), W.HBox([lam_s, k_s]), info, image])
        redraw()
        self._widgets = {"query": q_dd, "text": t_cb, "lam": lam_s, "k": k_s, "info": info, "image": image}
        return box


# ---------------------------------------------------------------------------------------------- grids
def grid_rows(explorer: LambdaExplorer, query, text: str, lambdas: Sequence[float], k: int | None = None,
              images: bool = True) -> list[dict]:
    """Rows for :func:`rscir_kit.plots.qualitative_grid`: one per λ with its top-k (images when ``images``),
    positive flags, class labels and AP.  Also carries ``topk`` (archive indices) for the record."""
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

"""One vectorised evaluation engine for every composed-retrieval benchmark.

``evaluate`` takes a :class:`~rscir_kit.queries.QuerySet`, the archive features (N, d), the text
features, and any number of methods and λ values, and returns a tidy per-pair table. It never loops
in Python over the archive or over single queries:

- query pairs are processed in blocks of distinct query images (bounded memory, ``max_block_mb``);
- each distinct query image is scored and normalised once, each distinct text once per block;
- image-only rankings are sorted once per distinct image and text-only once per distinct text, then
  shared by all pairs using them (and by WeiCom at λ=0 / λ=1, which Φ's monotonicity makes
  identical to image-only / text-only);
- a λ sweep reuses the normalised similarities: each extra λ costs one fused (B, N) matrix and one
  row sort, from which only the positives' ranks are read (see :mod:`rscir_kit.metrics`).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import resolve_device
from .errors import DataError, ModelMismatchError
from .methods import LAMBDA_METHODS, check_lambda, fuse_normalized, parse_method
from .metrics import pad_positives, positive_ranks, ranking_metrics, sort_rows
from .normalization import normalize, weicom_upper_tail
from .queries import QuerySet

ON_EMPTY = ("zero", "skip", "error")


def _model_of(meta) -> str | None:
    meta = meta or {}
    return meta.get("model") or meta.get("model_name")


def _check_models(archive, others: dict) -> None:
    """Every feature source must come from the archive's model (ModelMismatchError otherwise)."""
    from .features import check_same_model

    for what, obj in others.items():
        check_same_model(getattr(archive, "meta", {}) or {}, getattr(obj, "meta", {}) or {},
                         names=("the archive features", what))


def _text_matrix(texts_needed: list[str], texts, archive) -> np.ndarray:
    """(T, d) float32 embeddings of ``texts_needed`` from a TextFeatures (``lookup``) or an encoder."""
    if texts is None:
        raise DataError("no text features: pass TextFeatures (rscir-kit encode-text) or an encoder/--model "
                        "to embed the query texts")
    if hasattr(texts, "lookup"):
        _check_models(archive, {"text features": texts})
        return np.asarray(texts.lookup(texts_needed), dtype=np.float32)
    if hasattr(texts, "encode_texts"):
        _check_models(archive, {"the text encoder": texts})
        return np.asarray(texts.encode_texts(texts_needed), dtype=np.float32)
    raise TypeError("texts must be TextFeatures (with .lookup) or an encoder (with .encode_texts)")


def _combos(methods, lambdas) -> list[tuple[str, float | None]]:
    methods = list(methods)
    if not methods:
        raise ValueError("no methods to evaluate")
    lams = [check_lambda(lam) for lam in lambdas]
    combos = []
    for m in methods:
        name, _ = parse_method(m)
        if name in LAMBDA_METHODS:
            if not lams:
                raise ValueError(f"method {m!r} needs at least one λ")
            combos.extend((m, lam) for lam in lams)
        else:
            combos.append((m, None))
    return list(dict.fromkeys(combos))


def _blocks(img_of_pair: np.ndarray, max_pairs: int):
    """Split pairs (sorted by query image) into blocks of whole images with ≲ ``max_pairs`` pairs."""
    order = np.argsort(img_of_pair, kind="stable")
    imgs_sorted = img_of_pair[order]
    starts = np.flatnonzero(np.r_[True, imgs_sorted[1:] != imgs_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)]
    block_start = 0
    while block_start < len(starts):
        block_end = block_start + 1
        while block_end < len(starts) and ends[block_end] - starts[block_start] <= max_pairs:
            block_end += 1
        yield order[starts[block_start]:ends[block_end - 1]]
        block_start = block_end


def evaluate(queries: QuerySet, archive, texts=None, methods=("image", "text", "average", "weicom"),
             lambdas=(0.5,), query_features=None, device="auto", on_empty: str = "zero", ks=(),
             max_block_mb: int = 512, progress: bool = True) -> pd.DataFrame:
    """Evaluate ``methods`` (and every λ for WeiCom) on all pairs of ``queries``.

    Args:
        queries: the query pairs; its positive sets are re-bound to ``archive.paths`` if ordered differently.
        archive: ImageFeatures-like (``feats`` (N, d) L2-normalised, ``paths`` (N,), ``meta``).
        texts: TextFeatures (``lookup``) or an encoder (``encode_texts``) for the query texts.
        methods: names from :data:`rscir_kit.methods.METHODS` (``"add:weicom"`` style for fusions).
        lambdas: λ values in [0, 1] for WeiCom.
        query_features: where the query images are looked up (default: the archive).
        on_empty: pairs without positives: ``"zero"`` (AP 0, the official protocol; counted),
            ``"skip"`` (AP NaN, left out of means; counted) or ``"error"``.
        ks: also report P@k and R@k for these k.
        max_block_mb: memory budget of one block's (B, N) score matrices.

    Returns:
        DataFrame with one row per (pair, method, λ): ``pair``, ``method``, ``lambda`` (NaN for
        methods without λ), ``ap`` (0..1), ``n_pos``, the P@k / R@k columns, and the query table's
        grouping columns.
    """
    if on_empty not in ON_EMPTY:
        raise ValueError(f"on_empty must be one of {ON_EMPTY}, got {on_empty!r}")
    combos = _combos(methods, lambdas)
    dev = resolve_device(device)
    queries = queries.bind(archive.paths)
    qf = archive if query_features is None else query_features
    if qf is not archive:
        _check_models(archive, {"query image features": qf})
    table = queries.table
    n_pairs = len(table)
    if n_pairs == 0:
        raise DataError(f"query set {queries.name!r} has no queries")

    n_pos = queries.n_positives
    empty = n_pos == 0
    if empty.any():
        examples = table[empty].head(3).to_dict("records")
        msg = (f"{int(empty.sum())} of {n_pairs} query pairs of {queries.name!r} have no relevant image in the archive "
               f"(e.g. {examples})")
        if on_empty == "error":
            raise DataError(msg + "; fix the query set or pass on_empty='zero' (official protocol) or 'skip'")
        warnings.warn(msg + f"; on_empty={on_empty!r}: " + ("counted as AP 0" if on_empty == "zero" else "left out"),
                      stacklevel=2)

    # Query image rows and distinct texts.
    q_index = np.asarray(qf.index_of(table["query_path"].astype(str).tolist()), dtype=np.int64)
    uniq_img, img_of_pair = np.unique(q_index, return_inverse=True)
    uniq_txt, txt_of_pair = np.unique(table["text"].astype(str).to_numpy(), return_inverse=True)

    X = torch.as_tensor(np.asarray(archive.feats, dtype=np.float32), device=dev)
    n_archive = X.shape[0]
    Qimg = torch.as_tensor(np.asarray(qf.feats, dtype=np.float32)[uniq_img], device=dev)
    Qtxt = torch.as_tensor(_text_matrix(list(uniq_txt), texts, archive), device=dev)
    if Qtxt.shape[1] != X.shape[1] or Qimg.shape[1] != X.shape[1]:
        raise ModelMismatchError(f"embedding sizes differ: archive d={X.shape[1]}, query images d={Qimg.shape[1]}, "
                                 f"texts d={Qtxt.shape[1]}; use features from one model")

    parsed = {m: parse_method(m) for m, _ in combos}
    # WeiCom ranks by the equivalent upper-tail form (see normalization.weicom_upper_tail): no float32
    # saturation of Φ at the top of the ranking. Other fusions use the normalised scores themselves.
    norms_needed = {("tail" if name == "weicom" else norm) for name, norm in parsed.values()
                    if name not in ("image", "text", "average")}
    _norm = lambda s, norm: weicom_upper_tail(s) if norm == "tail" else normalize(s, norm)  # noqa: E731

    bytes_per_row = 4 * n_archive * 6
    # Few distinct texts (the usual case): score, normalise and sort them once for all blocks.
    txt_global = None
    if len(uniq_txt) * bytes_per_row <= max_block_mb * 2**20 // 2:
        S_all = Qtxt @ X.T
        txt_global = (S_all, {norm: _norm(S_all, norm) for norm in norms_needed}, sort_rows(S_all))
    max_pairs = max(1, int(max_block_mb * 2**20 // bytes_per_row))
    results = {key: {} for key in combos}
    pos_all = queries.positive_sets
    pid = table["positive_id"].to_numpy()

    bar = tqdm(total=n_pairs, desc=f"evaluate {queries.name}", unit="pair", disable=not progress)
    for block in _blocks(img_of_pair, max_pairs):
        b_imgs, local = np.unique(img_of_pair[block], return_inverse=True)
        S_img = Qimg[torch.as_tensor(b_imgs, device=dev)] @ X.T  # (C, N)
        li = torch.as_tensor(local, device=dev)
        if txt_global is None:  # many texts: only the block's distinct texts (bounded memory)
            b_txts, t_local = np.unique(txt_of_pair[block], return_inverse=True)
            S_txt = Qtxt[torch.as_tensor(b_txts, device=dev)] @ X.T  # (T_block, N)
            txt_norm = {norm: _norm(S_txt, norm) for norm in norms_needed}
            txt_sorted = None
        else:
            S_txt, txt_norm, txt_sorted = txt_global
            t_local = txt_of_pair[block]
        ti = torch.as_tensor(t_local, device=dev)
        positives = pad_positives([pos_all[k] for k in pid[block]], device=dev)
        valid = positives >= 0
        positives.clamp_(min=0)
        npos = torch.as_tensor(n_pos[block], device=dev)
        img_norm = {norm: _norm(S_img, norm) for norm in norms_needed}
        img_ranks = txt_ranks = None
        neg_img_tail = txt_tail = buf = None
        for key in combos:
            method, lam = key
            name, norm = parsed[method]
            if name == "image" or (name == "weicom" and lam == 0.0):
                if img_ranks is None:
                    img_sorted = sort_rows(S_img)
                    img_ranks = positive_ranks(S_img[li], positives, img_sorted[li], valid)
                ranks = img_ranks
            elif name == "text" or (name == "weicom" and lam == 1.0):
                if txt_ranks is None:
                    txt_sorted = sort_rows(S_txt) if txt_sorted is None else txt_sorted
                    txt_ranks = positive_ranks(S_txt[ti], positives, txt_sorted[ti], valid)
                ranks = txt_ranks
            elif name == "average":
                ranks = positive_ranks(fuse_normalized(S_img[li], S_txt[ti], "average"), positives, valid=valid)
            elif name == "weicom":
                # Rank by -(Q_img + c·Q_txt), c = λ/(1-λ): the WeiCom order (λ·Φ_txt + (1-λ)·Φ_img), see
                # normalization.weicom_upper_tail, in a single pass over a reused (B, N) buffer.
                if buf is None:
                    neg_img_tail, txt_tail = img_norm["tail"][li].neg_(), txt_norm["tail"][ti]
                    buf = torch.empty_like(txt_tail)
                torch.add(neg_img_tail, txt_tail, alpha=-lam / (1.0 - lam), out=buf)
                ranks = positive_ranks(buf, positives, valid=valid)
            else:
                fused = fuse_normalized(img_norm[norm][li], txt_norm[norm][ti], name, lam)
                ranks = positive_ranks(fused, positives, valid=valid)
            metrics = ranking_metrics(ranks, npos, ks)
            for col, values in metrics.items():
                results[key].setdefault(col, []).append((block, values))
        bar.update(len(block))
    bar.close()

    frames = []
    group_cols = queries.group_columns
    base = table[group_cols].copy()
    base.insert(0, "pair", np.arange(n_pairs))
    base["n_pos"] = n_pos
    for (method, lam), cols in results.items():
        frame = base.copy()
        frame.insert(1, "method", method)
        frame.insert(2, "lambda", np.nan if lam is None else lam)
        for col, parts in cols.items():
            values = np.empty(n_pairs, dtype=np.float64)
            for block, vals in parts:
                values[block] = vals
            if col == "ap" or col.startswith("r@"):
                values[empty] = 0.0 if on_empty == "zero" else np.nan
            if not np.all(np.isnan(values) | ((values >= 0.0) & (values <= 1.0))): raise AssertionError(f"{col} outside [0, 1] for {method}: a bug, please report it")  # noqa: E701,E501
            frame[col] = values
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out.attrs.update(query_set=queries.name, n_pairs=n_pairs, n_empty=int(empty.sum()), on_empty=on_empty,
                     archive_size=n_archive, model=_model_of(getattr(archive, "meta", None)))
    return out


def summarize(per_pair: pd.DataFrame, by: str | None = "attribute", average_label: str = "avg",
              metric: str = "ap") -> pd.DataFrame:
    """mAP (%) per method, λ and group, plus an ``average_label`` row per (method, λ) = mean of the groups.

    Returns columns ``method, lambda, <by>, map, n_queries, n_empty`` (``by=None``: one row per method/λ).
    NaN APs (``on_empty='skip'``) are left out of the means; ``n_empty`` counts pairs without positives.
    """
    keys = ["method", "lambda"]
    df = per_pair.assign(_empty=per_pair["n_pos"] == 0)
    group = keys + ([by] if by else [])
    order = {m: i for i, m in enumerate(dict.fromkeys(df["method"]))}
    rows = (df.groupby(group, dropna=False, sort=False)
              .agg(map=(metric, lambda s: 100.0 * s.mean()), n_queries=(metric, "size"), n_empty=("_empty", "sum"))
              .reset_index())
    if by:
        avg = (rows.groupby(keys, dropna=False, sort=False)
                   .agg(map=("map", "mean"), n_queries=("n_queries", "sum"), n_empty=("n_empty", "sum"))
                   .reset_index())
        avg[by] = average_label
        rows = pd.concat([rows, avg[rows.columns]], ignore_index=True)
        rows["_g"] = (rows[by] == average_label).astype(int)
        rows = rows.sort_values(["method", "lambda", "_g"], key=lambda s: s.map(order) if s.name == "method" else s,
                                kind="stable").drop(columns="_g")
    rows["n_empty"] = rows["n_empty"].astype(int)
    return rows.reset_index(drop=True)


def method_label(method: str, lam) -> str:
    """Human label: ``WeiCom λ=0.3``, ``Image``, ``Text & Image`` (average), ``add:weicom``..."""
    names = {"image": "Image", "text": "Text", "average": "Text & Image (avg)", "weicom": "WeiCom"}
    base = names.get(method, method)
    if lam is not None and not (isinstance(lam, float) and math.isnan(lam)):
        return f"{base} λ={lam:g}"
    return base


def wide_table(summary: pd.DataFrame, by: str = "attribute", order=None) -> pd.DataFrame:
    """The paper's Table-2 layout: one row per method (and λ), one column per group and ``avg``."""
    df = summary.assign(row=[method_label(m, lam) for m, lam in zip(summary["method"], summary["lambda"])])
    wide = df.pivot_table(index="row", columns=by, values="map", sort=False)
    cols = list(order) if order is not None else [c for c in dict.fromkeys(df[by]) if c != "avg"]
    cols = [c for c in cols if c in wide.columns] + (["avg"] if "avg" in wide.columns else [])
    wide = wide[cols]
    wide.index.name = "method"
    wide.columns.name = None
    return wide.round(2)

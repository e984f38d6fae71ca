"""Text↔image retrieval on caption sets: the protocol, its tie rules, and the driver over feature files.

Protocol (RSICD / RSITMD / UCM-Captions retrieval papers): on the test split, every caption is a text
query whose single target is its image (text→image), and every image is a query whose targets are its
captions — a hit at K when *any* of them is in the top K (image→text). R@1, R@5, R@10 in %, and
``mR`` = mean of the six. Ties are broken by archive order (lower index first), as in
:mod:`rscir_kit.metrics`.

Text encoders live in :mod:`rscir_kit.text_encoders`, captioners in :mod:`rscir_kit.captioners`, the
text-to-text protocol and its hybrid in :mod:`rscir_kit.text_to_text`, tables in :mod:`rscir_kit.analysis`,
figures in :mod:`rscir_kit.plots`.
"""
from __future__ import annotations

from math import comb
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import DataError, ParameterError
from .features import check_same_model
from .names import match_names
from .text_encoders import encode_cached

KS = (1, 5, 10)


# ---------------------------------------------------------------------------------------------- ranks
def _target_ranks(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank of column ``target[i]`` in row i of ``scores`` (B, N) under a stable descending sort."""
    rows = np.arange(scores.shape[0])
    t = scores[rows, target][:, None]
    cols = np.arange(scores.shape[1])[None, :]
    return ((scores > t) | ((scores == t) & (cols < target[:, None]))).sum(axis=1)


def t2i_ranks(sim: np.ndarray, caption_image: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(M,) 0-based rank of each caption's image. ``sim`` (M texts, N images); ``caption_image`` (M,) int."""
    sim = np.asarray(sim)
    caption_image = np.asarray(caption_image, dtype=np.int64)
    if sim.ndim != 2 or sim.shape[0] != len(caption_image):
        raise DataError(f"similarity matrix {sim.shape} does not match {len(caption_image)} captions.")
    if len(caption_image) and (caption_image.min() < 0 or caption_image.max() >= sim.shape[1]):
        raise DataError(f"caption_image refers to images outside 0..{sim.shape[1] - 1}.")
    out = np.empty(len(caption_image), dtype=np.int64)
    for s in range(0, len(caption_image), chunk):
        out[s:s + chunk] = _target_ranks(sim[s:s + chunk], caption_image[s:s + chunk])
    return out


def i2t_ranks(sim_i2t: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """(N,) 0-based rank of the best-ranked own caption of each image. ``sim_i2t`` (N images, M texts)."""
    sim_i2t = np.asarray(sim_i2t)
    caption_image = np.asarray(caption_image, dtype=np.int64)
    n = sim_i2t.shape[0]
    if sim_i2t.shape[1] != len(caption_image):
        raise DataError(f"similarity matrix {sim_i2t.shape} does not match {len(caption_image)} captions.")
    counts = np.bincount(caption_image, minlength=n)
    if (counts == 0).any():
        raise DataError(f"images {np.flatnonzero(counts == 0)[:5].tolist()} have no caption; image→text needs "
                        f"at least one per image (drop them from the archive).")
    best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    cols = np.arange(sim_i2t.shape[1])
    for i in range(n):
        row = sim_i2t[i]
        own = np.flatnonzero(caption_image == i)
        t = row[own][:, None]
        ranks = ((row[None, :] > t) | ((row[None, :] == t) & (cols[None, :] < own[:, None]))).sum(axis=1)
        best[i] = ranks.min()
    return best


def recall_at(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict:
    """{k: % of queries whose rank < k}."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise DataError("no query to compute recall on.")
    return {int(k): 100.0 * float((ranks < k).mean()) for k in ks}


TIES = ("stable", "expected", "optimistic", "pessimistic")


TIE_TOL = 1e-9  # scores this close count as tied (BLAS summation order can differ between rows). The
# drivers encode each distinct text once and score in float64, so identical texts tie to ~1e-16.


def _tie_stats(scores: np.ndarray, own: np.ndarray, tol: float = TIE_TOL):
    """Per row of ``scores`` (B, N) with a bool mask ``own`` (B, N) of the relevant items: at the best relevant
    score t, (#items above t + tol, #relevant items within tol of t, #other items within tol of t)."""
    t = np.where(own, scores, -np.inf).max(axis=1, keepdims=True)
    above = (scores > t + tol).sum(axis=1)
    equal = np.abs(scores - t) <= tol
    a = (equal & own).sum(axis=1)
    return above, a, equal.sum(axis=1) - a


def _hit_probability(above: np.ndarray, a: np.ndarray, b: np.ndarray, k: int, ties: str) -> np.ndarray:
    """P(some relevant item in the top k) when the a relevant and b other items tied at the best relevant
    score are ordered at random (``expected``), relevant first (``optimistic``) or last (``pessimistic``)."""
    m = k - above
    if ties == "optimistic":
        return (m > 0).astype(float)
    if ties == "pessimistic":
        return (m > b).astype(float)
    out = np.zeros(len(m))
    for i in np.flatnonzero(m > 0):
        mi, ai, bi = int(m[i]), int(a[i]), int(b[i])
        out[i] = 1.0 if mi > bi else 1.0 - comb(bi, mi) / comb(ai + bi, mi)
    return out


def text_image_recall(sim_t2i: np.ndarray, caption_image: np.ndarray, ks: Sequence[int] = KS,
                      sim_i2t: np.ndarray | None = None, ties: str = "stable") -> dict:
    """R@K both ways and mR from text→image scores ``sim_t2i`` (M, N).

    ``sim_i2t`` (N, M): image→text scores when they differ from ``sim_t2i.T`` (e.g. normalised over texts).
    ``ties``: ``stable`` (the kit's rule: archive order, exact comparisons), or, for items whose scores are
    equal within :data:`TIE_TOL`, ``expected`` (expected recall under a random order), ``optimistic`` /
    ``pessimistic`` (relevant first / last).
    Caption sets repeat sentences verbatim (UCM-Captions test: 391 distinct of 1,050), so image→text and
    text-to-text scores tie exactly and the choice matters there.
    Returns ``{"t2i_R@1", ..., "i2t_R@1", ..., "mR", "n_texts", "n_images"}`` (recalls in %).
    """
    if ties not in TIES:
        raise ParameterError(f"ties must be one of {TIES}, got {ties!r}")
    sim_t2i = np.asarray(sim_t2i)
    sim_i2t = sim_t2i.T if sim_i2t is None else np.asarray(sim_i2t)
    caption_image = np.asarray(caption_image, dtype=np.int64)
    if ties == "stable":
        r_t = recall_at(t2i_ranks(sim_t2i, caption_image), ks)
        r_i = recall_at(i2t_ranks(sim_i2t, caption_image), ks)
    else:
        n_img = sim_t2i.shape[1]
        if sim_t2i.shape[0] != len(caption_image) or sim_i2t.shape != (n_img, len(caption_image)):
            raise DataError(f"similarity matrices {sim_t2i.shape} / {sim_i2t.shape} do not match "
                            f"{len(caption_image)} captions.")
        if len(caption_image) and (caption_image.min() < 0 or caption_image.max() >= n_img):
            raise DataError(f"caption_image refers to images outside 0..{n_img - 1}.")
        own_t = caption_image[:, None] == np.arange(n_img)[None, :]
        counts = np.bincount(caption_image, minlength=n_img)
        if (counts == 0).any():
            raise DataError(f"images {np.flatnonzero(counts == 0)[:5].tolist()} have no caption; image→text needs "
                            f"at least one per image (drop them from the archive).")
        st = _tie_stats(sim_t2i, own_t)
        si = _tie_stats(sim_i2t, own_t.T)
        r_t = {int(k): 100.0 * float(_hit_probability(*st, k, ties).mean()) for k in ks}
        r_i = {int(k): 100.0 * float(_hit_probability(*si, k, ties).mean()) for k in ks}
    out = {f"t2i_R@{k}": v for k, v in r_t.items()}
    out.update({f"i2t_R@{k}": v for k, v in r_i.items()})
    out["mR"] = float(np.mean(list(r_t.values()) + list(r_i.values())))
    out["n_texts"], out["n_images"] = int(sim_t2i.shape[0]), int(sim_t2i.shape[1])
    return out


def recall_table(results: dict, ks: Sequence[int] = KS) -> pd.DataFrame:
    """DataFrame from ``{row label: text_image_recall(...)}`` with the paper's column order."""
    cols = [f"t2i_R@{k}" for k in ks] + [f"i2t_R@{k}" for k in ks] + ["mR", "n_texts", "n_images"]
    df = pd.DataFrame.from_dict(results, orient="index")
    return df[[c for c in cols if c in df.columns]]


# ------------------------------------------------------------------------------------ benchmark drivers
def image_rows(caption_set, image_features) -> np.ndarray:
    """(N,) rows of ``image_features`` (paths matched by file stem) for the images of ``caption_set``."""
    return match_names(image_features.paths, caption_set.images, by="stem", what="image feature file")


def caption_retrieval(caption_set, image_features, encoder, ks: Sequence[int] = KS, batch_size: int = 256,
                      ties: str = "stable") -> dict:
    """Text↔image R@K / mR of ``encoder`` (text tower) against ``image_features`` on ``caption_set``.

    ``image_features``: ImageFeatures of the same model (matched to the set's images by file stem).
    """
    check_same_model(image_features.meta, getattr(encoder, "meta", {}) or {}, names=("image features", "encoder"))
    img = np.asarray(image_features.feats, dtype=np.float64)[image_rows(caption_set, image_features)]
    # each distinct sentence encoded once (identical texts -> identical rows), scores in float64: exact ties stay exact
    txt = encode_cached(encoder, list(caption_set.texts), {}, batch_size).astype(np.float64)
    return text_image_recall(txt @ img.T, caption_set.caption_image, ks, ties=ties)

"""Training-free text-to-text retrieval (TRSLLaVA idea) and its hybrid with text-to-image retrieval.

Each archive image is represented by one or more *descriptions*; a query text is embedded with a text
encoder (:mod:`rscir_kit.text_encoders`) and an image's score is the max cosine over its descriptions.
Descriptions come from a captioner (:mod:`rscir_kit.captioners`) or, offline, from :func:`oracle_split`,
which uses held-out reference captions — an **upper bound** ("oracle captioner"), not a captioning result.

Hybrid: ``λ·Φ(z(s_t2t)) + (1-λ)·Φ(z(s_t2i))`` with the WeiCom normalisation over the archive axis;
rankings use the rank-equivalent form of :func:`rscir_kit.methods.weicom_rank_scores`.
Scored with the text↔image protocol of :mod:`rscir_kit.retrieval` (R@K, mR).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .errors import DataError
from .features import check_same_model
from .methods import check_lambda, weicom_rank_scores
from .normalization import normalize
from .retrieval import KS, image_rows, recall_table, text_image_recall
from .text_encoders import encode_cached


# -------------------------------------------------------------------------------------- oracle protocol
def oracle_split(captions: Sequence[Sequence[str]], n_descriptions: int = 1, offset: int = 0):
    """The *oracle captioner* protocol: per image, ``n_descriptions`` reference captions (starting at
    ``offset``, cyclically) become its descriptions and the others become text queries.

    Returns ``(descriptions: list of N lists, query_texts (Q,) str, query_image (Q,) int64)``.
    An upper bound for a captioner (human references of the very image), never a captioning result.
    """
    descriptions, q_texts, q_image = [], [], []
    for i, caps in enumerate(captions):
        caps = list(caps)
        if len(caps) <= n_descriptions:
            raise DataError(f"image {i} has {len(caps)} caption(s); the oracle protocol needs more than "
                            f"n_descriptions={n_descriptions} (some to describe, the rest as queries).")
        held = [(offset + j) % len(caps) for j in range(n_descriptions)]
        descriptions.append([caps[j] for j in held])
        rest = [c for j, c in enumerate(caps) if j not in held]
        q_texts.extend(rest)
        q_image.extend([i] * len(rest))
    return descriptions, np.asarray(q_texts, dtype=str), np.asarray(q_image, dtype=np.int64)


# ---------------------------------------------------------------------------------------- text-to-text
def flatten_descriptions(descriptions: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(D,) description texts and (D,) int64 image index of each."""
    texts = [d for ds in descriptions for d in ds]
    owner = np.repeat(np.arange(len(descriptions), dtype=np.int64), [len(ds) for ds in descriptions])
    return np.asarray(texts, dtype=str), owner


def max_over_descriptions(sim: np.ndarray, desc_image: np.ndarray, n_images: int) -> np.ndarray:
    """(Q, D) query×description scores → (Q, N) query×image scores, max over each image's descriptions."""
    sim = np.asarray(sim)
    desc_image = np.asarray(desc_image, dtype=np.int64)
    if sim.shape[1] != len(desc_image):
        raise DataError(f"{sim.shape[1]} description columns but {len(desc_image)} description owners.")
    counts = np.bincount(desc_image, minlength=n_images)
    if len(counts) > n_images or (counts == 0).any():
        raise DataError(f"every image needs >= 1 description; images without: "
                        f"{np.flatnonzero(counts == 0)[:5].tolist()}.")
    order = np.argsort(desc_image, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.maximum.reduceat(sim[:, order], starts, axis=1)


# --------------------------------------------------------------------------------------------- hybrid
def hybrid_scores(s_t2t: np.ndarray, s_t2i: np.ndarray, lam: float, norm: str = "weicom", dim: int = -1,
                  for_ranking: bool = False):
    """``λ·n(s_t2t) + (1-λ)·n(s_t2i)``, ``n`` the normalisation over ``dim`` (the archive axis).

    ``for_ranking=True`` with ``norm="weicom"`` returns the rank-equivalent ``-(λ·Q(z_t2t) + (1-λ)·Q(z_t2i))``
    (Q = 1 - Φ) instead: Φ of a sharply peaked text-to-text row rounds to 1.0 even in float64 (z > 8.3),
    which would tie the best matches. Rankings (R@K) use this form.
    """
    lam = check_lambda(lam)
    # float64: in float32, Φ of the top scores of a peaked row rounds to 1.0 and creates spurious ties.
    s_t2t, s_t2i = np.asarray(s_t2t, dtype=np.float64), np.asarray(s_t2i, dtype=np.float64)
    if s_t2t.shape != s_t2i.shape:
        raise DataError(f"text-to-text scores {s_t2t.shape} and text-to-image scores {s_t2i.shape} differ in shape.")
    if norm == "weicom" and for_ranking:  # rank-equivalent, saturation-free (see methods.weicom_rank_scores)
        a, b = np.moveaxis(s_t2i, dim, -1), np.moveaxis(s_t2t, dim, -1)
        return np.moveaxis(weicom_rank_scores(a, b, lam), -1, dim)
    return lam * normalize(s_t2t, norm, dim=dim) + (1.0 - lam) * normalize(s_t2i, norm, dim=dim)


def hybrid_sweep(s_t2t: np.ndarray, s_t2i: np.ndarray, caption_image: np.ndarray, lambdas: Sequence[float],
                 norm: str = "weicom", ks: Sequence[int] = KS) -> pd.DataFrame:
    """R@K / mR of the hybrid for each λ (0 = text-to-image only, 1 = text-to-text only).

    Both matrices are (M texts, N images); text→image normalises over images, image→text over texts.
    """
    rows = {}
    for lam in lambdas:
        t2i = hybrid_scores(s_t2t, s_t2i, lam, norm, dim=1, for_ranking=True)
        i2t = hybrid_scores(s_t2t, s_t2i, lam, norm, dim=0, for_ranking=True).T
        rows[float(lam)] = text_image_recall(t2i, caption_image, ks, sim_i2t=i2t)
    table = recall_table(rows, ks)
    table.index.name = "lambda"
    return table


# ------------------------------------------------------------------------------------------- benchmark
def text_to_text_benchmark(caption_set, image_features, clip_encoder, text_encoders: dict, lambdas: Sequence[float],
                           descriptions: Sequence[Sequence[str]] | None = None, n_descriptions: int = 1,
                           rotations: Sequence[int] | None = None, ks: Sequence[int] = KS,
                           norms: Sequence[str] = ("weicom",), batch_size: int = 256,
                           ties: str = "stable") -> pd.DataFrame:
    """Text-to-image vs. training-free text-to-text vs. their hybrid, on the same queries.

    ``descriptions`` (N lists, e.g. from :func:`describe_images` with a captioner): every caption is a query.
    ``None``: the *oracle captioner* — for each rotation r, :func:`oracle_split` (offset r) holds out
    ``n_descriptions`` reference captions per image as its descriptions and the other captions are the queries
    (and the image→text archive); results are averaged over rotations (default: one per caption of the image
    with the fewest). ``text_encoders``: {name: TextEncoder} for text-to-text; ``clip_encoder`` gives the
    text-to-image scores against ``image_features`` (same model). ``norms``: normalisations of the hybrid
    (``weicom`` = Φ(z), ``zscore``...). Returns one row per (method, text_encoder, norm, λ) with R@K / mR (%),
    ``n_texts``, ``n_images`` and ``n_rotations`` (``norm`` is empty for the two single-modality rows).
    ``ties``: see :func:`text_image_recall` — oracle descriptions repeat sentences verbatim, so text-to-text
    scores tie exactly; ``expected`` scores those ties as a random order would.
    """
    check_same_model(image_features.meta, getattr(clip_encoder, "meta", {}) or {},
                     names=("image features", "text-to-image encoder"))
    n = len(caption_set)
    img = np.asarray(image_features.feats, dtype=np.float64)[image_rows(caption_set, image_features)]
    if descriptions is not None:
        if len(descriptions) != n:
            raise DataError(f"{len(descriptions)} description lists for {n} images.")
        rounds = [(list(descriptions), caption_set.texts, caption_set.caption_image)]
    else:
        if rotations is None:
            rotations = range(min(len(c) for c in caption_set.captions))
        rounds = [oracle_split(caption_set.captions, n_descriptions, offset=r) for r in rotations]
    caches: dict = {name: {} for name in ["__clip__", *text_encoders]}
    results: dict = {}
    for descs, q_texts, q_image in rounds:
        d_texts, d_owner = flatten_descriptions(descs)
        q_clip = encode_cached(clip_encoder, list(q_texts), caches["__clip__"], batch_size).astype(np.float64)
        s_t2i = q_clip @ img.T
        clip_id = str(getattr(clip_encoder, "model_id", "clip"))
        if clip_id.startswith("local-dir:"):  # tables name the model, never a local absolute path
            clip_id = clip_id[len("local-dir:"):].rstrip("/").rsplit("/", 1)[-1]
        rows = {("text→image", clip_id, "", np.nan): text_image_recall(s_t2i, q_image, ks, ties=ties)}
        for name, enc in text_encoders.items():
            q = encode_cached(enc, list(q_texts), caches[name], batch_size).astype(np.float64)
            d = encode_cached(enc, list(d_texts), caches[name], batch_size).astype(np.float64)
            s_t2t = max_over_descriptions(q @ d.T, d_owner, n)
            rows[("text-to-text", name, "", np.nan)] = text_image_recall(s_t2t, q_image, ks, ties=ties)
            for norm in norms:
                for lam in lambdas:
                    t2i = hybrid_scores(s_t2t, s_t2i, lam, norm, dim=1, for_ranking=True)
                    i2t = hybrid_scores(s_t2t, s_t2i, lam, norm, dim=0, for_ranking=True).T
                    rows[("hybrid", name, norm, float(lam))] = text_image_recall(t2i, q_image, ks, sim_i2t=i2t,
                                                                                 ties=ties)
        for key, val in rows.items():
            results.setdefault(key, []).append(val)
    out = []
    for (method, enc, norm, lam), vals in results.items():
        row = {"method": method, "text_encoder": enc, "norm": norm, "lambda": lam}
        row.update(pd.DataFrame(vals).mean().to_dict())
        row["n_rotations"] = len(vals)
        out.append(row)
    df = pd.DataFrame(out)
    for c in ("n_texts", "n_images"):
        df[c] = df[c].round().astype(int)
    return df

"""Text↔image retrieval on caption sets: the protocol, its tie rules, and the driver over feature files.

Protocol (RSICD / RSITMD / UCM-Captions retrieval papers; the rank metrics and tie rules themselves live
in :mod:`rscir_kit.metrics`): on the test split, every caption is a text
query whose single target is its image (text→image), and every image is a query whose targets are its
captions — a hit at K when *any* of them is in the top K (image→text). R@1, R@5, R@10 in %, and
``mR`` = mean of the six. Ties are broken by archive order (lower index first), as in
:mod:`rscir_kit.metrics`.

Text encoders live in :mod:`rscir_kit.text_encoders`, captioners in :mod:`rscir_kit.captioners`, the
text-to-text protocol and its hybrid in :mod:`rscir_kit.text_to_text`, tables in :mod:`rscir_kit.analysis`,
figures in :mod:`rscir_kit.plots`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .features import check_same_model
from .metrics import (KS, TIE_TOL, TIES, i2t_ranks, recall_at, t2i_ranks,  # noqa: F401  (rank metrics: one home)
                      text_image_recall)
from .names import match_names
from .text_encoders import encode_cached


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

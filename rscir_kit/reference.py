"""Published reference numbers for WeiCom on PatternCom (mAP, %), with their sources.

Two sources are kept apart and labelled:

* ``"paper"`` -- Psomas, Kakogeorgiou, Efthymiadis, Tolias, Chum, Avrithis, Karantzalos,
  *Composed Image Retrieval for Remote Sensing*, IGARSS 2024 (arXiv:2405.15587):
  Table 2 (CLIP ViT-L/14 and RemoteCLIP ViT-L/14, per attribute) and Table 3
  (λ ablation with RemoteCLIP ViT-L/14, λ = 0.0 … 1.0 in steps of 0.1).
* ``"code"`` -- the official code release (github.com/billpsomas/rscir), whose README quotes slightly
  different averages for the best λ (CLIP λ=0.3: 25.03, RemoteCLIP λ=0.6: 30.13).

The numbers are only comparable with the kit's when the paper's setup is used: PatternCom on PatternNet,
the same model, WeiCom normalisation.  :func:`paper_setup_key` tells whether a (dataset, model) pair is
that setup.
"""
from __future__ import annotations

import re

import pandas as pd

ATTRIBUTES = ("color", "context", "density", "existence", "quantity", "shape")
AVG = "avg"

SOURCES = {
    "paper": ("Psomas et al., Composed Image Retrieval for Remote Sensing, IGARSS 2024 "
              "(arXiv:2405.15587), Tables 2 and 3"),
    "code": "official WeiCom code release, github.com/billpsomas/rscir (README results)",
}

#: Model keys of the paper and how they are named in the paper.
MODELS = {
    "clip-vit-l-14": "CLIP ViT-L/14",
    "remoteclip-vit-l-14": "RemoteCLIP ViT-L/14",
}

# Table 2: rows are (method, λ); λ is None for the methods without one.
# Values: the six attributes in ATTRIBUTES order, then the average.
_TABLE2 = {
    "clip-vit-l-14": [
        ("text", None, (13.47, 4.83, 3.58, 4.38, 3.31, 6.22), 5.97),
        ("image", None, (14.66, 8.32, 13.49, 13.50, 7.84, 15.76), 12.26),
        ("average", None, (23.13, 11.02, 15.87, 13.77, 10.13, 21.38), 15.88),
        ("weicom", 0.5, (46.08, 17.45, 16.49, 9.24, 18.15, 23.97), 21.90),
        ("weicom", 0.3, (46.74, 20.97, 22.07, 12.07, 20.96, 26.22), 24.83),
    ],
    "remoteclip-vit-l-14": [
        ("text", None, (10.75, 8.87, 22.16, 12.49, 8.25, 24.12), 14.44),
        ("image", None, (14.40, 6.62, 15.11, 9.29, 6.99, 15.18), 11.27),
        ("average", None, (23.67, 10.01, 18.45, 10.56, 7.97, 19.63), 15.05),
        ("weicom", 0.5, (43.68, 31.45, 39.94, 14.27, 20.51, 29.78), 29.94),
        ("weicom", 0.6, (41.04, 31.59, 41.56, 14.79, 20.79, 31.24), 30.19),
    ],
}

#: How the paper names the methods of Table 2 ("Text & Image" is the raw average of the similarities).
METHOD_NAMES = {"text": "Text", "image": "Image", "average": "Text & Image", "weicom": "WeiCom"}

# Table 3 (RemoteCLIP ViT-L/14): mAP per attribute for λ = 0.0, 0.1, ..., 1.0.
TABLE3_LAMBDAS = tuple(round(0.1 * i, 1) for i in range(11))
_TABLE3 = {
    "color": (14.5, 55.3, 53.0, 49.6, 46.4, 43.7, 41.0, 38.2, 35.0, 30.4, 10.8),
    "context": (6.6, 13.3, 20.2, 25.7, 29.5, 31.5, 31.6, 29.6, 24.8, 16.9, 8.9),
    "density": (15.1, 23.3, 29.5, 34.0, 37.4, 39.9, 41.6, 42.0, 40.7, 35.9, 22.2),
    "existence": (9.3, 10.3, 11.1, 12.3, 13.5, 14.3, 14.8, 15.0, 14.8, 14.0, 12.5),
    "quantity": (7.0, 17.6, 18.9, 19.7, 20.2, 20.5, 20.8, 20.9, 20.8, 20.1, 8.3),
    "shape": (15.2, 23.8, 24.7, 26.2, 28.0, 29.8, 31.2, 32.0, 32.0, 31.3, 24.1),
    AVG: (11.3, 23.9, 26.2, 27.9, 29.2, 29.9, 30.2, 29.6, 28.0, 24.8, 14.4),
}
TABLE3_MODEL = "remoteclip-vit-l-14"

#: The best λ reported in the paper for each model (Table 2's second WeiCom row).
PAPER_BEST_LAMBDA = {"clip-vit-l-14": 0.3, "remoteclip-vit-l-14": 0.6}

#: Averages of the best λ as quoted by the official code release (source "code").
CODE_RELEASE_AVG = {
    ("clip-vit-l-14", 0.3): 25.03,
    ("remoteclip-vit-l-14", 0.6): 30.13,
}


def table2(model: str) -> pd.DataFrame:
    """Paper Table 2 for ``model`` (a key of :data:`MODELS`): one row per (method, λ), columns
    ``method, lambda, color … shape, avg, source``.  λ is NaN for methods without one."""
    key = _model_key(model)
    rows = []
    for method, lam, values, avg in _TABLE2[key]:
        row = {"method": method, "lambda": float("nan") if lam is None else lam}
        row.update(dict(zip(ATTRIBUTES, values)))
        row[AVG] = avg
        row["source"] = "paper"
        rows.append(row)
    return pd.DataFrame(rows)


def table3() -> pd.DataFrame:
    """Paper Table 3 (RemoteCLIP ViT-L/14, WeiCom): index λ, columns the attributes and ``avg``."""
    frame = pd.DataFrame(_TABLE3, index=pd.Index(TABLE3_LAMBDAS, name="lambda"))
    return frame[list(ATTRIBUTES) + [AVG]]


def code_release_avg(model: str) -> dict[float, float]:
    """{λ: average mAP} quoted by the official code release for ``model``."""
    key = _model_key(model)
    return {lam: v for (m, lam), v in CODE_RELEASE_AVG.items() if m == key}


def reference_lookup(model: str, method: str, lam: float | None, attribute: str) -> float | None:
    """The paper's Table-2 value for one cell, or None when the paper has no such cell."""
    key = _model_key(model)
    for m, l, values, avg in _TABLE2[key]:
        if m != method:
            continue
        if (l is None) != (lam is None or lam != lam):
            continue
        if l is not None and abs(l - float(lam)) > 1e-9:
            continue
        return avg if attribute == AVG else dict(zip(ATTRIBUTES, values)).get(attribute)
    return None


def model_key(model: str | None) -> str | None:
    """Map a model spec (preset name, ``ViT-L-14:openai``, ``hf-hub:chendelong/RemoteCLIP-ViT-L-14`` …)
    to a key of :data:`MODELS`, or None when it is not one of the paper's models."""
    if not model:
        return None
    text = str(model).lower().replace("_", "-").replace("/", "-")
    compact = re.sub(r"[^a-z0-9]", "", text)
    is_l14 = "vitl14" in compact and "336" not in compact
    if not is_l14:
        return None
    if "remoteclip" in compact:
        return "remoteclip-vit-l-14"
    if "openai" in compact or compact in ("clipvitl14", "vitl14") or compact.startswith("clipvitl14"):
        return "clip-vit-l-14"
    return None


def paper_setup_key(dataset: str | None, model: str | None) -> str | None:
    """The model key when (dataset, model) is the paper's setup (PatternCom + CLIP/RemoteCLIP ViT-L/14),
    else None (the paper's numbers are then not comparable and are not printed beside the kit's)."""
    if str(dataset).lower() != "patterncom":
        return None
    return model_key(model)


def _model_key(model: str) -> str:
    if model in _TABLE2:
        return model
    key = model_key(model)
    if key is None:
        raise KeyError(f"no published WeiCom numbers for model {model!r}; the paper has {sorted(MODELS)}")
    return key

"""A synthetic PatternCom: PatternNet-style file names generated from the class list, PatternCom CSVs,
and random unit features with class structure — for tests and speed benchmarks, never for results.

File names follow the real naming (``<class prefix><NNN>.jpg`` under ``<class folder>/``, e.g.
``swimming_pool/swimmingpool001.jpg``), so the official protocol's class rule (prefix before the first
digit) and merges apply unchanged. The features come from a fixed seed: the same call gives the same data.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import ParameterError
from ..features import ImageFeatures, TextFeatures
from .patternnet import PATTERNNET_CLASSES

#: attribute -> {class folder: values}; includes every merged class of the protocol.
SPEC: dict[str, dict[str, list[str]]] = {
    "color": {"airplane": ["white", "purple"], "tennis_court": ["green", "red", "blue"]},
    "context": {"bridge": ["over water", "over road"], "overpass": ["over road", "over railway"]},
    "density": {"dense_residential": ["dense"], "sparse_residential": ["sparse"], "forest": ["dense", "sparse"]},
    "existence": {"ferry_terminal": ["with boats"], "harbor": ["with boats", "without boats"],
                  "parking_space": ["with cars"], "parking_lot": ["with cars", "without cars"]},
    "quantity": {"storage_tank": ["one", "two", "many"]},
    "shape": {"closed_road": ["straight"], "intersection": ["cross", "round"], "swimming_pool": ["oval", "rectangular"]},
}
MODEL = "synthetic-test-model"


def patternnet_names(images_per_class: int) -> list[tuple[str, str]]:
    """``(relative path, class folder)`` for the first ``images_per_class`` images of each of the 38 classes,
    named as in PatternNet (``airplane/airplane001.jpg``), classes in sorted order."""
    return [(f"{folder}/{prefix}{i:03d}.jpg", folder) for folder, prefix in sorted(PATTERNNET_CLASSES.items())
            for i in range(1, images_per_class + 1)]


def synthetic_patterncom(root, images_per_class: int = 12, rows_per_class: int = 10, dim: int = 24,
                         spec: dict | None = None, seed: int = 0, noise: float = 0.9, text_signal: float = 0.0,
                         model: str = MODEL) -> tuple[ImageFeatures, TextFeatures, Path]:
    """Write ``<attribute>.csv`` files into ``root`` and return ``(archive, texts, root)``.

    Archive: ``images_per_class`` images of every PatternNet class (38 × ``images_per_class``), features
    (N, ``dim``) = class centre + ``noise`` · Gaussian (+ ``text_signal`` · the vectors of the image's values),
    L2-normalised. CSVs: for each attribute and class of ``spec`` (default :data:`SPEC`), the first
    ``rows_per_class`` images are rows, values assigned cyclically. Texts: every value, a vector near its own
    random direction. ``model`` is recorded in both feature metas.
    """
    spec = SPEC if spec is None else spec
    if rows_per_class > images_per_class:
        raise ParameterError(f"rows_per_class ({rows_per_class}) > images_per_class ({images_per_class})")
    rng = np.random.default_rng(seed)
    items = patternnet_names(images_per_class)
    paths = [p for p, _ in items]
    labels = [c for _, c in items]
    centers = {c: rng.standard_normal(dim) for c in sorted(PATTERNNET_CLASSES)}
    feats = np.stack([centers[c] + noise * rng.standard_normal(dim) for c in labels])
    texts = sorted({v for classes in spec.values() for values in classes.values() for v in values})
    tvec = {t: rng.standard_normal(dim) for t in texts}
    row_of = {p: k for k, p in enumerate(paths)}
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for attribute, classes in spec.items():
        with open(root / f"{attribute}.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            for folder, values in classes.items():
                prefix = PATTERNNET_CLASSES[folder]
                for i in range(rows_per_class):
                    value = values[i % len(values)]
                    name = f"{prefix}{i + 1:03d}.jpg"
                    writer.writerow([name, attribute, value])
                    if text_signal:
                        feats[row_of[f"{folder}/{name}"]] += text_signal * tvec[value]
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
    tfeats = np.stack([tvec[t] + 0.8 * rng.standard_normal(dim) for t in texts]).astype(np.float32)
    tfeats /= np.linalg.norm(tfeats, axis=1, keepdims=True)
    meta = {"model": model, "model_name": model}
    return ImageFeatures(feats, paths, labels, meta), TextFeatures(texts, tfeats, meta), root

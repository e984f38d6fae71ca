"""Composed-retrieval scoring methods: combine image and text similarities to the archive.

``s_img`` and ``s_txt`` are raw cosine similarities of shape (..., N): query image / query text
against the N L2-normalised archive embeddings.

| method     | score                                       | λ    |
|------------|---------------------------------------------|------|
| image      | s_img                                       | –    |
| text       | s_txt                                       | –    |
| average    | (s_img + s_txt) / 2 (raw scores, baseline)  | –    |
| weicom     | λ·Φ(z(s_txt)) + (1-λ)·Φ(z(s_img))           | 0..1 |
| add        | n(s_img) + n(s_txt)                         | –    |
| multiply   | n(s_img) · n(s_txt)                         | –    |
| min        | min(n(s_img), n(s_txt))                     | –    |

``n`` is the normalisation given by ``norm`` (default ``none``, as the official code's "Add/Multiply
Similarities"; ``"add:weicom"`` selects the normalised variant). Note: the official code's
"Minimum Similarity" sorts ``max(s_img, s_txt)`` in ascending order; this kit's ``min`` ranks by
the minimum in descending order, which is what the name says.
"""
from __future__ import annotations

import math

import torch

from .normalization import check_normalization, normalize

METHODS = ("image", "text", "average", "weicom", "add", "multiply", "min")
LAMBDA_METHODS = ("weicom",)
_FUSIONS = ("add", "multiply", "min")


def check_lambda(lam) -> float:
    """Return ``lam`` as float, or raise ValueError unless 0 <= λ <= 1."""
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"λ must be a number in [0, 1], got {lam!r}") from None
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"λ must lie in [0, 1] (0 = image only, 1 = text only), got {value}")
    return value


def parse_method(method: str) -> tuple[str, str]:
    """``"add:weicom"`` → ("add", "weicom"); ``"weicom"`` → ("weicom", "weicom"); others norm "none"."""
    name, _, norm = method.partition(":")
    if name not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)} "
                         f"(add/multiply/min accept ':<norm>', e.g. 'add:weicom')")
    if norm and name not in _FUSIONS:
        raise ValueError(f"method {name!r} takes no normalisation suffix (got {method!r})")
    if name == "weicom":
        return name, "weicom"
    return name, check_normalization(norm or "none")


def uses_lambda(method: str) -> bool:
    return parse_method(method)[0] in LAMBDA_METHODS


def fuse_normalized(a_img: torch.Tensor, a_txt: torch.Tensor, name: str, lam: float | None = None):
    """Combine already-normalised scores (..., N) with fusion ``name`` (no normalisation here)."""
    if name == "image":
        return a_img
    if name == "text":
        return a_txt
    if name == "average":
        return (a_img + a_txt) / 2
    if name == "weicom":
        lam = check_lambda(lam)
        return lam * a_txt + (1.0 - lam) * a_img
    if name == "add":
        return a_img + a_txt
    if name == "multiply":
        return a_img * a_txt
    if name == "min":
        return torch.minimum(a_img, a_txt)
    raise ValueError(f"unknown fusion {name!r}")


def fuse(s_img, s_txt, method: str = "weicom", lam: float | None = None):
    """Scores (..., N) of ``method`` from raw similarities ``s_img``, ``s_txt`` (..., N).

    λ is required for ``weicom`` and ignored otherwise. Accepts torch tensors or numpy arrays.
    """
    import numpy as np

    name, norm = parse_method(method)
    if name in LAMBDA_METHODS and lam is None:
        raise ValueError(f"method {method!r} needs λ in [0, 1]")
    is_numpy = isinstance(s_img, np.ndarray) or isinstance(s_txt, np.ndarray)
    ti = torch.as_tensor(s_img) if s_img is not None else None
    tt = torch.as_tensor(s_txt) if s_txt is not None else None
    if name in ("image", "text"):
        out = ti if name == "image" else tt
        if out is None:
            raise ValueError(f"method {name!r} needs its {name} similarities")
    else:
        if ti is None or tt is None:
            raise ValueError(f"method {name!r} needs both image and text similarities")
        out = fuse_normalized(normalize(ti, norm), normalize(tt, norm), name, lam)
    return out.numpy() if is_numpy else out


def weicom_rank_scores(s_img, s_txt, lam: float):
    """Scores (..., N) whose descending order is exactly the WeiCom ranking, free of float saturation.

    Returns ``-(λ·Q(z_txt) + (1-λ)·Q(z_img))`` with Q = 1 - Φ (= the WeiCom score minus 1), and the raw
    similarities themselves at λ=0 (image only) and λ=1 (text only). Φ rounds to exactly 1.0 above
    z ≈ 5.4 in float32, so ranking by ``fuse(..., "weicom")`` can tie the best matches; this cannot.
    The evaluation engine, the λ explorer and the archive index all rank this way.
    """
    from .normalization import weicom_upper_tail

    lam = check_lambda(lam)
    if lam == 0.0:
        return s_img
    if lam == 1.0:
        return s_txt
    return -(lam * weicom_upper_tail(s_txt) + (1.0 - lam) * weicom_upper_tail(s_img))


def composed_scores(image_query, text_query, archive, method: str = "weicom", lam: float | None = None):
    """Scores (B, N) for query image embeddings (B, d) and text embeddings (B, d) against archive (N, d).

    Either query may be None for the single-modality methods. Embeddings are assumed L2-normalised.
    """
    x = torch.as_tensor(archive)
    s_img = torch.as_tensor(image_query).to(x.dtype) @ x.T if image_query is not None else None
    s_txt = torch.as_tensor(text_query).to(x.dtype) @ x.T if text_query is not None else None
    return fuse(s_img, s_txt, method, lam)

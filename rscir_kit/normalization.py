"""Per-query normalisation of similarity scores over the archive axis.

All functions take scores of shape (..., N) — one row per query, N archive images — as a torch
tensor or numpy array and return the same type and shape. Statistics are taken over ``dim``
(default the last axis, i.e. over the archive), with the *unbiased* standard deviation (ddof=1),
exactly as in the WeiCom paper and its official code.

- ``none``   : scores unchanged.
- ``zscore`` : (s - mean) / std.
- ``weicom`` : Φ(zscore), Φ the standard normal CDF; values in [0, 1].
- ``rank``   : average rank of each score in ascending order divided by N; values in (0, 1].
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import DataError

NORMALIZATIONS = ("none", "zscore", "weicom", "rank")
_SQRT1_2 = 0.7071067811865476


def check_normalization(method: str) -> str:
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {method!r}; choose one of {', '.join(NORMALIZATIONS)}")
    return method


def _zscore(scores: torch.Tensor, dim: int) -> torch.Tensor:
    n = scores.shape[dim]
    if n < 2:
        raise DataError(f"cannot normalise over an archive of {n} image(s): the unbiased std needs at least 2")
    mean = scores.mean(dim=dim, keepdim=True)
    std = scores.std(dim=dim, keepdim=True, correction=1)
    # A constant score row carries no ranking information: map it to z = 0 instead of NaN.
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (scores - mean) / std


def _rank(scores: torch.Tensor, dim: int) -> torch.Tensor:
    from scipy.stats import rankdata

    ranks = rankdata(scores.detach().cpu().numpy(), method="average", axis=dim)
    n = scores.shape[dim]
    return torch.from_numpy(ranks / n).to(device=scores.device, dtype=scores.dtype)


def weicom_upper_tail(scores, dim: int = -1):
    """Q(z) = 1 - Φ(z) of the unbiased z-scores (..., N), computed directly as erfc(z/√2)/2.

    Ranking by ``-(λ·Q(z_txt) + (1-λ)·Q(z_img))`` is mathematically identical to ranking by the WeiCom
    score ``λ·Φ(z_txt) + (1-λ)·Φ(z_img)``, but keeps float32 resolution at the top of the ranking: Φ itself
    rounds to exactly 1.0 above z ≈ 5.4 in float32 (z ≈ 8.3 in float64), which would tie the best matches.
    """
    is_numpy = isinstance(scores, np.ndarray)
    t = torch.from_numpy(scores) if is_numpy else scores
    t = t if torch.is_floating_point(t) else t.to(torch.float32)
    out = 0.5 * torch.special.erfc(_zscore(t, dim) * _SQRT1_2)  # accurate far into the tail (ndtr(-z) is not)
    return out.numpy() if is_numpy else out


def normalize(scores, method: str = "weicom", dim: int = -1):
    """Normalise ``scores`` (..., N) over ``dim`` with ``method`` (see module doc); same type out."""
    check_normalization(method)
    is_numpy = isinstance(scores, np.ndarray)
    t = torch.from_numpy(scores) if is_numpy else scores
    if not torch.is_floating_point(t):
        t = t.to(torch.float32)
    if method == "none":
        out = t
    elif method == "zscore":
        out = _zscore(t, dim)
    elif method == "weicom":
        out = 0.5 * torch.special.erfc(-_zscore(t, dim) * _SQRT1_2)  # Φ(z), accurate for z << 0 too
    else:
        out = _rank(t, dim)
    return out.numpy() if is_numpy else out

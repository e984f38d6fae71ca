"""Per-query normalisation of similarity scores over the archive axis.

All functions take scores of shape (..., N) — one row per query, N archive images — as a torch
tensor or numpy array and return the same type and shape. Statistics are taken over ``dim``
(default the last axis, i.e. over the archive), with the *unbiased* standard deviation (ddof=1),
exactly as in the WeiCom paper and its official code.

- ``none``   : scores unchanged.
- ``zscore`` : (s - mean) / std.
- ``weicom`` : Φ(zscore), Φ the standard normal CDF; values in [0, 1].
- ``rank``   : average rank of each score in ascending order divided by N; values in (0, 1].
- ``minmax`` : (s - min) / (max - min); values in [0, 1] (:func:`rscir_kit.compose.minmax`).
- ``rrf``    : 1 / (60 + r), r the 1-based descending rank, ties by archive order (reciprocal-rank fusion's
  per-list score, :func:`rscir_kit.compose.reciprocal_ranks`).
- ``relu``   : max(s, 0), the rectification BASIC applies before its Harris fusion.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import DataError
from .methods import NORMALIZATIONS, check_normalization  # noqa: F401  (the names live in the registry)

_SQRT1_2 = 0.7071067811865476


def _moments(scores: torch.Tensor, dim: int):
    n = scores.shape[dim]
    if n < 2:
        raise DataError(f"cannot normalise over an archive of {n} image(s): the unbiased std needs at least 2")
    mean = scores.mean(dim=dim, keepdim=True)
    std = scores.std(dim=dim, keepdim=True, correction=1)
    # A constant score row carries no ranking information: map it to z = 0 instead of NaN.
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def _zscore(scores: torch.Tensor, dim: int, out: torch.Tensor | None = None) -> torch.Tensor:
    mean, std = _moments(scores, dim)
    return torch.sub(scores, mean, out=out).div_(std)


def _rank(scores: torch.Tensor, dim: int) -> torch.Tensor:
    from scipy.stats import rankdata

    ranks = rankdata(scores.detach().cpu().numpy(), method="average", axis=dim)
    n = scores.shape[dim]
    return torch.from_numpy(ranks / n).to(device=scores.device, dtype=scores.dtype)


def weicom_upper_tail(scores, dim: int = -1, out=None):
    """Q(z) = 1 - Φ(z) of the unbiased z-scores (..., N), computed directly as erfc(z/√2)/2.

    Ranking by ``-(λ·Q(z_txt) + (1-λ)·Q(z_img))`` is mathematically identical to ranking by the WeiCom
    score ``λ·Φ(z_txt) + (1-λ)·Φ(z_img)``, but keeps float32 resolution at the top of the ranking: Φ itself
    rounds to exactly 1.0 above z ≈ 5.4 in float32 (z ≈ 8.3 in float64), which would tie the best matches.
    ``out``: a tensor of the same shape and dtype to write into (it may be ``scores`` itself: in place).
    """
    is_numpy = isinstance(scores, np.ndarray)
    t = torch.from_numpy(scores) if is_numpy else scores
    t = t if torch.is_floating_point(t) else t.to(torch.float32)
    # erfc keeps Q accurate far into the tail; the same element-wise operations as 0.5·erfc(z·√½)
    res = _zscore(t, dim, out=out).mul_(_SQRT1_2).erfc_().mul_(0.5)
    return res.numpy() if is_numpy else res


def official_cdf(scores, dim: int = -1):
    """Φ(z) (..., N) exactly as the official WeiCom code computes it (``utils.norm_cdf``), in float32:
    ``0.5·(1 + erf((s - mean) / (std·√2)))``, unbiased std. Saturates at 1.0 above z ≈ 5.4; the kit's
    ``numerics="official"`` ranks by it to reproduce the official rankings, ties included.
    """
    is_numpy = isinstance(scores, np.ndarray)
    t = torch.from_numpy(scores) if is_numpy else scores
    t = t.to(torch.float32)
    mean = t.mean(dim=dim, keepdim=True)
    std = t.std(dim=dim, keepdim=True)
    res = 0.5 * (1 + torch.erf((t - mean) / (std * torch.sqrt(torch.tensor(2.0)))))
    return res.numpy() if is_numpy else res


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
    elif method == "relu":
        out = t.clamp(min=0)
    elif method in ("minmax", "rrf"):  # the field's other normalisations (rscir_kit.compose)
        from . import compose

        out = compose.minmax(t, dim) if method == "minmax" else compose.reciprocal_ranks(t, dim=dim, dtype=t.dtype)
    else:
        out = _rank(t, dim)
    return out.numpy() if is_numpy else out

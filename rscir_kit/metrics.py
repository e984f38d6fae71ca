"""Ranking metrics over the full archive: AP, P@k, R@k, mAP.

Conventions (the same everywhere in the kit):

- A ranking sorts scores in descending order; **ties are broken by archive order** (lower index
  first), i.e. exactly a stable descending sort. Ranks are 0-based.
- AP = mean over the relevant items of the precision at each relevant item's position; the
  denominator is the number of relevant items in the archive (all are retrieved in a full ranking).
- A query without relevant items has no AP: the functions return NaN and the caller decides
  (the engine's ``on_empty``).

The batched functions compute only the ranks of the positives: each score row is sorted once
(numpy's SIMD sort on CPU, in parallel threads; ``torch.sort`` on GPU) and every positive is located
with a binary search, so no (B, N) permutation is ever gathered.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

# ----------------------------------------------------------------------------- reference (1-D)


def _ranking(scores: np.ndarray) -> np.ndarray:
    """Archive indices in ranking order (descending score, ties by lower index first)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def average_precision(scores, relevant) -> float:
    """AP of one query. ``scores`` (N,) float, ``relevant`` (N,) bool. NaN if nothing is relevant."""
    rel = np.asarray(relevant, dtype=bool)
    if rel.shape != np.shape(scores):
        raise ValueError(f"scores {np.shape(scores)} and relevant {rel.shape} differ in shape")
    n_rel = int(rel.sum())
    if n_rel == 0:
        return float("nan")
    hits = rel[_ranking(scores)]
    positions = np.flatnonzero(hits) + 1  # 1-based positions of the relevant items
    return float(np.mean(np.arange(1, n_rel + 1) / positions))


def precision_at_k(scores, relevant, k: int) -> float:
    """Fraction of the top-k that is relevant (k > 0)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    rel = np.asarray(relevant, dtype=bool)
    return float(rel[_ranking(scores)[:k]].sum() / k)


def recall_at_k(scores, relevant, k: int) -> float:
    """Fraction of the relevant items found in the top-k; NaN if nothing is relevant."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    rel = np.asarray(relevant, dtype=bool)
    n_rel = rel.sum()
    if n_rel == 0:
        return float("nan")
    return float(rel[_ranking(scores)[:k]].sum() / n_rel)


def mean_average_precision(aps) -> float:
    """Mean of APs, ignoring NaN (queries without positives); NaN if there are none."""
    aps = np.asarray(list(aps), dtype=np.float64)
    aps = aps[~np.isnan(aps)]
    return float(aps.mean()) if aps.size else float("nan")


# ----------------------------------------------------------------------------- batched (B, N)

_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max(1, torch.get_num_threads()))
    return _POOL


def sort_rows(scores: torch.Tensor) -> torch.Tensor:
    """Each row of ``scores`` (B, N) sorted ascending (values only)."""
    if scores.device.type != "cpu":
        return torch.sort(scores, dim=1).values
    arr = np.ascontiguousarray(scores.detach().numpy())
    out = np.empty_like(arr)
    workers = max(1, torch.get_num_threads())
    if workers == 1 or arr.shape[0] < 2 * workers:
        out[:] = np.sort(arr, axis=1)
    else:
        bounds = np.linspace(0, arr.shape[0], workers + 1).astype(int)

        def work(i):
            a, b = bounds[i], bounds[i + 1]
            out[a:b] = np.sort(arr[a:b], axis=1)

        list(_pool().map(work, range(workers)))  # numpy releases the GIL while sorting
    return torch.from_numpy(out)


def pad_positives(positive_sets, device=None) -> torch.Tensor:
    """List of B index arrays → (B, P) int64 tensor padded with -1."""
    width = max((len(p) for p in positive_sets), default=0)
    out = np.full((len(positive_sets), max(width, 1)), -1, dtype=np.int64)
    for row, idx in enumerate(positive_sets):
        out[row, : len(idx)] = idx
    return torch.from_numpy(out).to(device) if device is not None else torch.from_numpy(out)


def positive_ranks(scores: torch.Tensor, positives: torch.Tensor, sorted_scores: torch.Tensor | None = None,
                   valid: torch.Tensor | None = None):
    """0-based ranks (B, P) of the positives in each score row; padding gets rank N.

    scores: (B, N) float; positives: (B, P) int64 archive indices padded with -1;
    sorted_scores: the rows of ``scores`` sorted ascending, if already known;
    valid: (B, P) bool mask of real entries — when given, ``positives`` must hold valid indices
    everywhere (e.g. ``positives.clamp(min=0)``), which saves recomputing both for every method.
    """
    n = scores.shape[1]
    if valid is None:
        valid = positives >= 0
        positives = positives.clamp(min=0)
    pos_scores = scores.gather(1, positives)
    srt = sort_rows(scores) if sorted_scores is None else sorted_scores
    srt = srt.to(scores.device)
    right = torch.searchsorted(srt, pos_scores.contiguous(), right=True)  # number of scores <= the positive's
    ranks = n - right  # number of strictly greater scores
    # The positive's own score sits at right-1; it is tied with another item iff srt[right-2] equals it.
    tied = (right >= 2) & (srt.gather(1, (right - 2).clamp(min=0)) == pos_scores) & valid
    if bool(tied.any()):
        # Exact tie-break by archive order, for the tied positives only (float32 fusions tie often enough
        # that this must stay vectorised): add the number of equal scores at lower archive indices.
        b_idx, j_idx = tied.nonzero(as_tuple=True)
        arange = torch.arange(n, device=scores.device)
        step = max(1, (1 << 25) // n)  # bound the (k, N) comparison to ~32M elements
        for start in range(0, len(b_idx), step):
            b, j = b_idx[start:start + step], j_idx[start:start + step]
            vals, idx = pos_scores[b, j], positives[b, j]
            earlier_equal = (scores[b] == vals[:, None]) & (arange[None, :] < idx[:, None])
            ranks[b, j] += earlier_equal.sum(dim=1)
    return torch.where(valid, ranks, torch.full_like(ranks, n))


def ranking_metrics(ranks: torch.Tensor, n_pos: torch.Tensor, ks=()) -> dict[str, np.ndarray]:
    """AP (and P@k, R@k for k in ``ks``) per row from the positives' ranks (B, P; padding = N).

    Returns float64 arrays of shape (B,); rows with ``n_pos == 0`` get NaN AP and R@k.
    """
    r = sort_rows(ranks.to(torch.int32)).to(device=ranks.device, dtype=torch.float64)
    n_pos_f = n_pos.to(torch.float64)
    order = torch.arange(1, r.shape[1] + 1, dtype=torch.float64, device=r.device)[None, :]
    valid = order <= n_pos_f[:, None]
    prec = torch.where(valid, order / (r + 1.0), torch.zeros_like(r))
    ap = prec.sum(dim=1) / n_pos_f  # NaN (0/0) when a row has no positives
    out = {"ap": ap.cpu().numpy()}
    for k in ks:
        hits = ((r < k) & valid).sum(dim=1).to(torch.float64)
        out[f"p@{k}"] = (hits / k).cpu().numpy()
        out[f"r@{k}"] = (hits / n_pos_f).cpu().numpy()
    return out


def average_precision_batch(scores, positives, ks=()) -> dict[str, np.ndarray]:
    """AP (+P@k, R@k) for each row of ``scores`` (B, N).

    ``positives``: a (B, N) bool mask or a list of B index arrays. Returns float64 arrays (B,).
    """
    s = torch.as_tensor(scores)
    if isinstance(positives, (np.ndarray, torch.Tensor)) and np.asarray(positives).dtype == bool:
        sets = [np.flatnonzero(row) for row in np.asarray(positives)]
    else:
        sets = [np.asarray(p, dtype=np.int64) for p in positives]
    pos = pad_positives(sets, device=s.device)
    n_pos = torch.tensor([len(p) for p in sets], device=s.device)
    return ranking_metrics(positive_ranks(s, pos), n_pos, ks)

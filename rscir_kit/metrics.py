"""Ranking metrics, the kit's one home for them: AP, P@k, R@k, mAP over the full archive (1-D references,
a torch sort-based batch path, the compiled sort-free kernel the engine uses), and the caption-retrieval
R@K / mR with their tie rules (``stable``, ``expected``, ``optimistic``, ``pessimistic``).

Conventions (the same everywhere in the kit):

- A ranking sorts scores in descending order; **ties are broken by archive order** (lower index
  first), i.e. exactly a stable descending sort. Ranks are 0-based.
- AP = mean over the relevant items of the precision at each relevant item's position; the
  denominator is the number of relevant items in the archive (all are retrieved in a full ranking).
- A query without relevant items has no AP: the functions return NaN and the caller decides
  (the engine's ``on_empty``).

The batched functions compute only the ranks of the positives. The torch path sorts each score row once
(numpy's SIMD sort on CPU, in threads owned by the call; ``torch.sort`` on GPU) and locates every positive
with a binary search; the compiled kernel (:func:`rscir_kit.kernels.block_metrics`) needs no sort at all.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from math import comb
from typing import Sequence

import numba
import numpy as np
import torch

from .errors import DataError, ParameterError
from .kernels import _OP, SIMD_COMPRESS, block_metrics, rank_keys

# ----------------------------------------------------------------------------- reference (1-D)


def _ranking(scores: np.ndarray) -> np.ndarray:
    """Archive indices in ranking order (descending score, ties by lower index first)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def average_precision(scores, relevant) -> float:
    """AP of one query. ``scores`` (N,) float, ``relevant`` (N,) bool. NaN if nothing is relevant."""
    rel = np.asarray(relevant, dtype=bool)
    if rel.shape != np.shape(scores):
        raise DataError(f"scores {np.shape(scores)} and relevant {rel.shape} differ in shape")
    n_rel = int(rel.sum())
    if n_rel == 0:
        return float("nan")
    hits = rel[_ranking(scores)]
    positions = np.flatnonzero(hits) + 1  # 1-based positions of the relevant items
    return float(np.mean(np.arange(1, n_rel + 1) / positions))


def precision_at_k(scores, relevant, k: int) -> float:
    """Fraction of the top-k that is relevant (k > 0)."""
    if k <= 0:
        raise ParameterError(f"k must be positive, got {k}")
    rel = np.asarray(relevant, dtype=bool)
    return float(rel[_ranking(scores)[:k]].sum() / k)


def recall_at_k(scores, relevant, k: int) -> float:
    """Fraction of the relevant items found in the top-k; NaN if nothing is relevant."""
    if k <= 0:
        raise ParameterError(f"k must be positive, got {k}")
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


# ----------------------------------------------------------------------------- caption retrieval: R@K, mR
# Text↔image retrieval on caption sets (RSICD / RSITMD / UCM-Captions protocol, driven by
# rscir_kit.retrieval): one target image per caption, any own caption a hit for an image.
KS = (1, 5, 10)


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


# ----------------------------------------------------------------------------- batched (B, N)

def map_row_ranges(work, n_rows: int) -> None:
    """Call ``work(a, b)`` on consecutive row ranges covering ``range(n_rows)``, in torch's number of threads
    (a pool owned by this call; for numpy work that releases the GIL, e.g. sorts)."""
    workers = max(1, torch.get_num_threads())
    if workers == 1 or n_rows < 2 * workers:
        work(0, n_rows)
        return
    bounds = np.linspace(0, n_rows, workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: work(bounds[i], bounds[i + 1]), range(workers)))


def sort_rows(scores: torch.Tensor) -> torch.Tensor:
    """Each row of ``scores`` (B, N) sorted ascending (values only)."""
    if scores.device.type != "cpu":
        return torch.sort(scores, dim=1).values
    arr = np.ascontiguousarray(scores.detach().numpy())
    out = np.empty_like(arr)

    def work(a, b):
        out[a:b] = np.sort(arr[a:b], axis=1)

    map_row_ranges(work, arr.shape[0])
    return torch.from_numpy(out)


def descending_ranks_f32(arr: np.ndarray) -> np.ndarray:
    """1-based rank of every entry of the finite float32 rows ``arr`` (B, N) in descending order, ties by lower
    index (= a stable descending sort), as int64 (B, N): one sort of the row's unique 64-bit
    :func:`rscir_kit.kernels.rank_keys`."""
    b, n = arr.shape
    if n >= 2**32:
        raise ParameterError(f"rows of {n} entries: at most 2**32 - 1")
    out = np.empty((b, n), np.int64)
    ranks = np.arange(1, n + 1, dtype=np.int64)

    def work(a, e):
        key = np.empty(n, np.uint64)
        for r in range(a, e):
            rank_keys(arr[r], key)  # compiled, releases the GIL; numpy's sort of the keys likewise
            key.sort()
            out[r, (key & np.uint64(0xFFFFFFFF)).astype(np.int64)] = ranks

    map_row_ranges(work, b)
    return out


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


def average_precision_batch(scores, positives, ks=(), backend: str = "auto") -> dict[str, np.ndarray]:
    """AP (+P@k, R@k) for each row of ``scores`` (B, N), exact, ties by archive order.

    ``positives``: a (B, N) bool mask or a list of B index arrays. Returns float64 arrays (B,).
    backend: ``"kernel"`` (the compiled sort-free kernel, float32 CPU scores), ``"torch"`` (sort + binary
    search, any device and dtype) or ``"auto"`` (the kernel where it applies).
    """
    s = torch.as_tensor(scores)
    if isinstance(positives, (np.ndarray, torch.Tensor)) and np.asarray(positives).dtype == bool:
        sets = [np.flatnonzero(row) for row in np.asarray(positives)]
    else:
        sets = [np.unique(np.asarray(p, dtype=np.int64)) for p in positives]
    if backend == "auto":
        backend = "kernel" if s.device.type == "cpu" and s.dtype == torch.float32 else "torch"
    if backend == "torch":
        pos = pad_positives(sets, device=s.device)
        n_pos = torch.tensor([len(p) for p in sets], device=s.device)
        return ranking_metrics(positive_ranks(s, pos), n_pos, ks)
    rows = np.ascontiguousarray(s.detach().cpu().numpy(), dtype=np.float32)
    return kernel_metrics(rows, sets, ks)


def kernel_metrics(rows: np.ndarray, sets, ks=(), simd: bool | None = None) -> dict[str, np.ndarray]:
    """AP (+P@k, R@k) of each float32 row (B, N) with positive index sets ``sets`` through
    :func:`rscir_kit.kernels.block_metrics` (``simd``: its compress-store path; None = the host's default)."""
    b, n = rows.shape
    ks = tuple(int(k) for k in ks)
    if any(k <= 0 for k in ks):
        raise ParameterError(f"k must be positive, got {list(ks)}")
    ptr = np.zeros(b + 1, np.int64)
    ptr[1:] = np.cumsum([len(p) for p in sets])
    idx = np.concatenate([np.asarray(p, np.int64) for p in sets]) if ptr[-1] else np.zeros(0, np.int64)
    ap = np.full((1, b), np.nan)
    hits = np.zeros((1, len(ks), b), np.int64)
    empty3 = np.zeros((0, 1, n), np.float32)
    ar = np.arange(b, dtype=np.int64)
    block_metrics(empty3, empty3, rows[None], ar, ar, ar, ar, ptr, idx,
                  np.array([_OP["row"]]), np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros((1, 2)),
                  np.zeros((1, b, 2), np.float32), np.array(ks, np.int64), ap, hits, numba.get_num_threads(),
                  SIMD_COMPRESS if simd is None else bool(simd))
    n_pos = np.diff(ptr).astype(np.float64)
    out = {"ap": ap[0]}
    with np.errstate(invalid="ignore", divide="ignore"):
        for i, k in enumerate(ks):
            out[f"p@{k}"] = hits[0, i] / k
            out[f"r@{k}"] = hits[0, i] / n_pos
    return out

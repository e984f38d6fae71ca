"""The training-free composition methods of the field, as pure functions (no I/O, no model loading).

Shapes: query image embeddings ``v`` (B, d), text embeddings ``w`` (B, d), archive ``X`` (N, d), all rows
L2-normalised; similarity rows ``s`` (B, N) (B queries × N archive images). Torch tensors or numpy arrays in,
the same type out. Every ranking ties by archive order (lower index first), as everywhere in the kit.

Score level (from the two similarity rows ``s_img = v·X``, ``s_txt = w·X``):

- :func:`zscore_sum` — λ·z(s_txt) + (1−λ)·z(s_img), unbiased z over the archive (WeiCom without Φ).
- :func:`minmax_sum` — λ·m(s_txt) + (1−λ)·m(s_img), m = (s − min)/(max − min) over the archive.
- :func:`reciprocal_rank_fusion` — λ/(k + r_txt) + (1−λ)/(k + r_img), k = 60 (Cormack et al., SIGIR 2009).
- :func:`harris` — BASIC's Harris fusion (Psomas et al., NeurIPS 2025) a·b − λ(a + b)² on rectified scores;
  :func:`basic_normalize`, :func:`contrastive_pca` and ``center`` are its other (optional) steps.

Feature level (one composed query vector per pair, then one similarity row):

- :func:`slerp` — spherical interpolation of v and w (Jang et al., ECCV 2024).
- :func:`feature_sum` — normalised (1−α)·v + α·w (at α = ½ it ranks exactly as the raw-score average).
- :func:`alpha_query_expansion` — αQE re-ranking of any composed ranking (Radenović et al., TPAMI 2019).
- :func:`freedom_queries` — FreeDom (Efthymiadis et al., WACV 2025): proxy images → vocabulary words →
  weighted text queries.
- :func:`weimocir_scores`, :func:`cirevl_texts` — caption-based methods through the kit's captioner
  interface (``captioner(images) -> list[list[str]]``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import DataError, ParameterError
from .io import atomic_path
from .metrics import descending_ranks_f32

RRF_K = 60
HARRIS_LAMBDA = 0.1          # BASIC's default (--harris_lambda)
SLERP_THRESHOLD = 0.9995     # SLERP-TAT: |v·w| above this → normalised linear interpolation
FREEDOM_DEFAULTS = {"k": 20, "n": 7, "m": 7}  # official --kappa, --ni, --miu


def _t(x):
    return (torch.from_numpy(np.ascontiguousarray(x)), True) if isinstance(x, np.ndarray) else (torch.as_tensor(x), False)


def _out(t, is_numpy):
    return t.numpy() if is_numpy else t


def _check_weight(lam, name="λ") -> float:
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number in [0, 1], got {lam!r}") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ParameterError(f"{name} must lie in [0, 1], got {value}")
    return value


def _unit(q: torch.Tensor) -> torch.Tensor:
    norm = q.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise DataError("a composed query vector is zero (the image and text embeddings cancel); it cannot rank")
    return q / norm


# ----------------------------------------------------------------------------------------- score level
def minmax(s, dim: int = -1):
    """(s − min)/(max − min) over ``dim`` (the archive); a constant row → 0. Values in [0, 1]."""
    t, is_np = _t(s)
    lo = t.amin(dim=dim, keepdim=True)
    span = t.amax(dim=dim, keepdim=True) - lo
    span = torch.where(span > 0, span, torch.ones_like(span))
    return _out((t - lo) / span, is_np)


def zscore_sum(z_img, z_txt, lam: float = 0.5):
    """Weighted z-score sum λ·z_txt + (1−λ)·z_img of z-scored similarities (``normalize(s, "zscore")``).

    The fusion WeiCom (Psomas et al., IGARSS 2024) applies after Φ; without Φ it is linear in both raw
    similarities, hence one inner-product query at archive scale (see :mod:`rscir_kit.index`).
    """
    lam = _check_weight(lam)
    return lam * z_txt + (1.0 - lam) * z_img


def minmax_sum(m_img, m_txt, lam: float = 0.5):
    """Weighted sum λ·m_txt + (1−λ)·m_img of min–max normalised similarities (:func:`minmax`)."""
    lam = _check_weight(lam)
    return lam * m_txt + (1.0 - lam) * m_img


def descending_ranks(s, dim: int = -1):
    """1-based rank of every entry of ``s`` (..., N) in its row's descending order, ties by lower index first.

    Returns int64 of the same shape (a stable sort: the kit's tie rule). Finite float32 rows on the CPU go
    through :func:`rscir_kit.metrics.descending_ranks_f32` (the same ranks, faster), the rest through torch.
    """
    t, is_np = _t(s)
    if (t.device.type == "cpu" and t.dtype == torch.float32 and t.ndim in (1, 2) and dim in (-1, t.ndim - 1)
            and t.shape[-1] > 0 and bool(torch.isfinite(t).all())):
        rows = np.ascontiguousarray(t.detach().numpy().reshape(-1, t.shape[-1]))
        return _out(torch.from_numpy(descending_ranks_f32(rows).reshape(t.shape)), is_np)
    order = torch.sort(t, dim=dim, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    n = t.shape[dim]
    ar = torch.arange(1, n + 1, device=t.device).expand_as(order)
    ranks.scatter_(dim, order, ar.contiguous())
    return _out(ranks, is_np)


def reciprocal_ranks(s, k: int = RRF_K, dim: int = -1, dtype=torch.float64):
    """1/(k + r) with r the 1-based descending rank (:func:`descending_ranks`) — RRF's per-list score."""
    if k < 0:
        raise ParameterError(f"RRF k must be ≥ 0, got {k}")
    t, is_np = _t(s)
    r = descending_ranks(t, dim).to(dtype)
    return _out(1.0 / (k + r), is_np)


def reciprocal_rank_fusion(rr_img, rr_txt, lam: float = 0.5):
    """Reciprocal-rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009; the hybrid-search default, k = 60):
    ``λ/(k + r_txt) + (1−λ)/(k + r_img)`` from the per-list scores of :func:`reciprocal_ranks`.

    λ = ½ ranks exactly as the classic unweighted sum Σ 1/(k + r).
    """
    lam = _check_weight(lam)
    return lam * rr_txt + (1.0 - lam) * rr_img


def basic_normalize(s, shift: float = 0.0, scale: float = 1.0):
    """BASIC's similarity normalisation ``(s − shift)/scale``, then rectified at 0.

    In the official code (billpsomas/icir, ``normalize_similarities``) ``shift`` is the minimum similarity of
    a synthetic image/text set of the same model (per modality) and ``scale`` the absolute minimum image-image
    similarity; supply them for your model. Defaults (0, 1) = rectification only, BASIC without that step.
    """
    if not scale > 0:
        raise ParameterError(f"BASIC normalisation scale must be > 0, got {scale}")
    t, is_np = _t(s)
    return _out(((t - shift) / scale).clamp(min=0), is_np)


def harris(a_img, a_txt, lam: float = HARRIS_LAMBDA):
    """Harris fusion of BASIC (Psomas et al., 'Instance-Level Composed Image Retrieval', NeurIPS 2025,
    github billpsomas/icir): ``s = a_txt·a_img − λ·(a_txt + a_img)²`` on rectified (≥ 0) scores
    (:func:`basic_normalize`). Like the Harris corner response it rewards items high in *both* modalities.
    λ default 0.1 (the official ``--harris_lambda``). Not monotone in each score (see :func:`harris_box_max`).
    """
    lam = _check_weight(lam, "Harris λ")
    return a_txt * a_img - lam * (a_txt + a_img) ** 2


def _edge_max(fixed, lo, hi, lam):
    """max over b ∈ [lo, hi] of fixed·b − λ(fixed + b)² (concave in b for λ > 0)."""
    if lam == 0.0:
        return np.maximum(fixed * lo, fixed * hi)
    b = np.clip(fixed * (1.0 - 2.0 * lam) / (2.0 * lam), lo, hi)
    return fixed * b - lam * (fixed + b) ** 2


def harris_box_max(a_lo, a_hi, b_lo, b_hi, lam: float) -> np.ndarray:
    """The exact maximum of the Harris score ``a·b − λ(a+b)²`` over the box [a_lo, a_hi] × [b_lo, b_hi].

    The score is a quadratic whose Hessian [[−2λ, 1−2λ], [1−2λ, −2λ]] has eigenvalues −1 and 1−4λ: for λ < ¼
    a saddle, for λ ≥ ¼ concave with its only stationary point at a = b = 0 — in both cases the maximum over
    a box is on its boundary (or at that stationary point, a box corner when the scores are rectified), and
    on each edge the score is concave in the free coordinate, maximised in closed form. The archive index's
    threshold algorithm uses this bound for the items not yet seen.
    """
    lam = _check_weight(lam, "Harris λ")
    a_lo, a_hi, b_lo, b_hi = (np.asarray(x, dtype=np.float64) for x in (a_lo, a_hi, b_lo, b_hi))
    edges = [_edge_max(a_lo, b_lo, b_hi, lam), _edge_max(a_hi, b_lo, b_hi, lam),
             _edge_max(b_lo, a_lo, a_hi, lam), _edge_max(b_hi, a_lo, a_hi, lam)]
    best = np.maximum.reduce(edges)
    if lam >= 0.25:  # concave: the stationary point (0, 0) if inside the box
        inside = (a_lo <= 0) & (a_hi >= 0) & (b_lo <= 0) & (b_hi >= 0)
        best = np.where(inside, np.maximum(best, 0.0), best)
    return best


def contrastive_pca(positive, negative, aa: float = 0.2, n_components: float = 250, text_mean=None):
    """BASIC's projection from two text corpora (official ``project_features``): (d, d) float64 P = VᵀV.

    positive, negative: corpus text embeddings (P, d), (M, d) (e.g. object names vs style words), centred on
    ``text_mean`` (default: the positive corpus mean, as the official code). C = (1−aa)·S_pos − aa·S_neg
    + 1e-5 (the official constant, added to every entry), S the scatter matrices (÷ rows − 1); V = its
    leading eigenvectors with positive eigenvalue, ``n_components`` of them (> 1: a count; < 1: the fraction
    of the positive eigenvalue mass to keep). The image query is projected ``(v − μ_img)·P``.
    """
    A = np.asarray(positive, dtype=np.float64)
    B = np.asarray(negative, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1] or len(A) < 2 or len(B) < 2:
        raise DataError(f"contrastive PCA needs two corpora of ≥ 2 embeddings of one size, got {A.shape}, {B.shape}")
    mu = A.mean(axis=0) if text_mean is None else np.asarray(text_mean, dtype=np.float64)
    A, B = A - mu, B - mu
    C = (1.0 - aa) * (A.T @ A) / (len(A) - 1) - aa * (B.T @ B) / (len(B) - 1) + 1e-5
    L, V = np.linalg.eigh(C)
    L, V = L[::-1], V[:, ::-1]
    pos = int((L > 0).sum())
    if n_components < 1:
        mass = np.cumsum(L[:pos]) / max(L[:pos].sum(), 1e-300)
        keep = int(np.searchsorted(mass, n_components) + 1)
    else:
        keep = int(n_components)
    keep = max(1, min(keep, pos))
    Vk = V[:, :keep]
    return Vk @ Vk.T


def basic_similarities(v, w, X, image_mean=None, text_mean=None, projection=None):
    """BASIC's two similarity rows before normalisation (official ``calculate_rankings``, method basic):

    ``s_img = ((v − μ_img)·P)·(X − μ_img)ᵀ`` and ``s_txt = (w − μ_txt)·(X − μ_img)ᵀ`` — centring on the
    supplied means (None: no centring), P from :func:`contrastive_pca` (None: identity). Returns (B, N) each.
    """
    v, is_np = _t(v)
    w, _ = _t(w)
    X, _ = _t(X)
    dt = X.dtype
    mi = torch.zeros(X.shape[1], dtype=dt) if image_mean is None else torch.as_tensor(image_mean, dtype=dt)
    mt = torch.zeros(X.shape[1], dtype=dt) if text_mean is None else torch.as_tensor(text_mean, dtype=dt)
    Xc = X - mi
    vi = v.to(dt) - mi
    if projection is not None:
        vi = vi @ torch.as_tensor(projection, dtype=dt)
    return _out(vi @ Xc.T, is_np), _out((w.to(dt) - mt) @ Xc.T, is_np)


# ----------------------------------------------------------------------------------------- feature level
def slerp(v, w, alpha: float = 0.5, threshold: float = SLERP_THRESHOLD):
    """Spherical linear interpolation of image and text embeddings (Jang et al., 'Spherical Linear
    Interpolation and Text-Anchoring for Zero-shot Composed Image Retrieval', ECCV 2024, github
    youngkyunJang/SLERP-TAT): with θ = arccos(v·w),

        q = sin((1−α)θ)/sin θ · v + sin(αθ)/sin θ · w,   renormalised,

    and the normalised linear interpolation v + α(w − v) where |v·w| > ``threshold`` (0.9995, the official
    value). α = 0: the image, α = 1: the text. v, w (B, d) unit rows → (B, d) unit rows.
    """
    alpha = _check_weight(alpha, "Slerp α")
    v, is_np = _t(v)
    w, _ = _t(w)
    dot = (v * w).sum(-1, keepdim=True)
    close = dot.abs() > threshold
    lin = _unit(v + alpha * (w - v)) if bool(close.any()) else v
    theta = torch.arccos(dot.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    safe = torch.where(close, torch.ones_like(sin), sin)
    sl = torch.sin((1.0 - alpha) * theta) / safe * v + torch.sin(alpha * theta) / safe * w
    sl = sl / sl.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    return _out(torch.where(close, lin, sl), is_np)


def feature_sum(v, w, alpha: float = 0.5):
    """The normalised feature sum ``(1−α)·v + α·w`` / ‖·‖ (WeiMoCIR's query, Wu et al. 2024, with α;
    the plain normalised sum at α = ½). Its similarity row is (1−α)·s_img + α·s_txt up to a positive
    factor, so at α = ½ it ranks exactly as the raw-score average."""
    alpha = _check_weight(alpha, "feature-sum α")
    v, is_np = _t(v)
    w, _ = _t(w)
    return _out(_unit((1.0 - alpha) * v + alpha * w), is_np)


def _stable_topk(s: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (B, n) of each row's n best entries in the kit's order (descending, ties by lower index):
    ``torch.topk`` where no tie straddles the n-th place, a stable sort for the rows where one does."""
    m = min(n + 1, s.shape[-1])
    vals, idx = torch.topk(s, m, dim=-1)
    # a tie straddles the n-th place iff the (n+1)-th largest value equals the n-th
    tied = vals[:, n] == vals[:, n - 1] if m > n else torch.zeros(len(s), dtype=torch.bool, device=s.device)
    vals, idx = vals[:, :n], idx[:, :n]
    # order the n found by (score desc, index asc)
    key = torch.argsort(idx, dim=-1, stable=True)
    idx, vals = idx.gather(-1, key), vals.gather(-1, key)
    idx = idx.gather(-1, torch.argsort(vals, dim=-1, descending=True, stable=True))
    if bool(tied.any()):
        rows = tied.nonzero(as_tuple=True)[0]
        idx[rows] = torch.sort(s[rows], dim=-1, descending=True, stable=True).indices[:, :n]
    return idx


def alpha_query_expansion(scores, X, query=None, n: int = 10, alpha: float = 3.0):
    """α-query expansion (Radenović, Tolias & Chum, TPAMI 2019) of any composed ranking.

    scores (B, N): the composed ranking to expand; X (N, d) the archive; query (B, d): the method's own
    query vector, or None. The new query is ``q' = query + Σ_{i ∈ top-n} max(c_i, 0)^α · x_i`` (normalised),
    where the top-n are the ranking's best n items (ties by archive order) and c_i their cosine with
    ``query`` — for score-level methods without a query vector (``query=None``), c_i is the cosine with
    the best-ranked item and the sum starts empty. Returns the re-query's similarity row ``X·q'`` (B, N).
    """
    if n < 1:
        raise ParameterError(f"query expansion needs n ≥ 1 neighbours, got {n}")
    if alpha < 0:
        raise ParameterError(f"query expansion α must be ≥ 0, got {alpha}")
    s, is_np = _t(scores)
    X, _ = _t(X)
    X = X.to(s.dtype) if torch.is_floating_point(s) and s.dtype == torch.float64 else X
    n = min(int(n), s.shape[-1])
    top = _stable_topk(s, n)                                                  # (B, n), best first
    return _out(expanded_query(top, X, query, alpha) @ X.T, is_np)


def expanded_query(top, X, query=None, alpha: float = 3.0):
    """αQE's new query (B, d), unit rows: ``query + Σ_i max(c_i, 0)^α · x_i`` over the top-n archive indices
    ``top`` (B, n), best first (see :func:`alpha_query_expansion`, which is this after :func:`_stable_topk`;
    the engine finds ``top`` with its compiled selection, rscir_kit.kernels.block_topn)."""
    X, _ = _t(X)
    top, _ = _t(top)
    nb = torch.index_select(X, 0, top.reshape(-1)).view(*top.shape, X.shape[1])  # (B, n, d): X[top], faster
    if query is None:
        anchor, base = nb[:, 0, :], torch.zeros_like(nb[:, 0, :])
    else:
        q, _ = _t(query)
        anchor = base = q.to(X.dtype)
    c = torch.einsum("bnd,bd->bn", nb, anchor).clamp(min=0) ** alpha
    return _unit(base + torch.einsum("bn,bnd->bd", c, nb))


def _top_words(E, vocab_emb, n: int) -> np.ndarray:
    """(R, n) int64: each row of E (R, d)'s n most similar vocabulary entries (V, d), best first, ties by the
    lower vocabulary index (a stable descending sort of the (R, V) similarities, 4,096 rows at a time)."""
    out = np.empty((len(E), n), dtype=np.int64)
    Vt = torch.from_numpy(np.ascontiguousarray(vocab_emb.T))
    for s0 in range(0, len(E), 4096):
        sim = torch.from_numpy(np.ascontiguousarray(E[s0:s0 + 4096])) @ Vt
        out[s0:s0 + 4096] = _stable_topk(sim, n).numpy()
    return out


def freedom_words(v, X, vocab_emb, k: int = 20, n: int = 7, m: int = 7, self_threshold: float = 0.98):
    """FreeDom's word selection (Efthymiadis et al., 'Composed image retrieval for training-free domain
    conversion', WACV 2025, github NikosEfth/freedom): for each query image v (B, d),

    1. the k nearest archive images (image→image; the visual memory) are its proxies — when the query is not
       in the archive (best similarity < ``self_threshold``, 0.98 as the official code) the query itself is
       the first proxy, in place of the k-th neighbour;
    2. each proxy's n most similar vocabulary entries (image→text, ``vocab_emb`` (V, d)) are its words;
    3. the m most frequent words over the proxies are kept, weighted by count / max count (ties: the order in
       which the words were first seen, as the official ``sorted`` over an insertion-ordered dict).

    Returns (B, m) int64 word indices (−1 padding) and (B, m) float64 weights (0 padding).
    """
    for name, value in (("k", k), ("n", n), ("m", m)):
        if int(value) < 1:
            raise ParameterError(f"FreeDom {name} must be ≥ 1, got {value}")
    v = np.asarray(v, dtype=np.float32)
    X = np.asarray(X, dtype=np.float32)
    vocab_emb = np.asarray(vocab_emb, dtype=np.float32)
    k, n = min(int(k), len(X)), min(int(n), len(vocab_emb))
    near = np.empty((len(v), k), dtype=np.int64)
    best = np.empty(len(v), dtype=np.float32)
    Xt = torch.from_numpy(X)
    for s0 in range(0, len(v), 1024):                                    # (1024, N) similarities at a time
        sim = torch.from_numpy(v[s0:s0 + 1024]) @ Xt.T
        near[s0:s0 + 1024] = _stable_topk(sim, k).numpy()                # proxies, best first, kit's tie rule
        best[s0:s0 + 1024] = sim.amax(dim=1).numpy()
    # an image's n words depend on the image alone: found once per archive image (N, n), then gathered per
    # query (B, k, n) — no (B, k, d) copy of the proxies
    words = _top_words(X, vocab_emb, n)[near]
    add_self = best < self_threshold
    if add_self.any():
        words[add_self] = np.concatenate([_top_words(v[add_self], vocab_emb, n)[:, None, :],
                                          words[add_self][:, :-1, :]], axis=1)
    return _most_frequent(words.reshape(len(v), -1), m)


def _most_frequent(words: np.ndarray, m: int):
    """Each row's m most frequent entries of ``words`` (B, L) int64, ties by first appearance (the official
    ``sorted(counts, key=counts.get, reverse=True)`` over an insertion-ordered dict: Python's sort is stable),
    weighted by count / the row's highest count. Returns (B, m) int64 (−1 padding), (B, m) float64 (0 padding)."""
    n_rows, length = words.shape
    order = np.argsort(words, axis=1, kind="stable")                    # equal words: by position
    srt = np.take_along_axis(words, order, axis=1)
    start = np.ones(srt.shape, dtype=bool)
    start[:, 1:] = srt[:, 1:] != srt[:, :-1]
    end = np.ones(srt.shape, dtype=bool)
    end[:, :-1] = start[:, 1:]
    rows, s_col = np.nonzero(start)                                      # one (start, end) per distinct word,
    _, e_col = np.nonzero(end)                                           # both in row-major order
    count, first = e_col - s_col + 1, order[rows, s_col]
    key = np.full(srt.shape, np.iinfo(np.int64).max, dtype=np.int64)
    key[rows, s_col] = (length - count) * length + first                 # (−count, first seen), unique per row
    word = np.zeros(srt.shape, dtype=np.int64)
    word[rows, s_col] = srt[rows, s_col]
    cnt = np.zeros(srt.shape, dtype=np.float64)
    cnt[rows, s_col] = count
    pick = np.argsort(key, axis=1, kind="stable")[:, :m]
    valid = np.take_along_axis(key, pick, axis=1) != np.iinfo(np.int64).max
    out_idx = np.where(valid, np.take_along_axis(word, pick, axis=1), -1)
    c = np.where(valid, np.take_along_axis(cnt, pick, axis=1), 0.0)
    out_w = c / np.maximum(c[:, :1], 1.0)
    if out_idx.shape[1] < m:                                             # fewer than m entries a row
        out_idx = np.pad(out_idx, ((0, 0), (0, m - out_idx.shape[1])), constant_values=-1)
        out_w = np.pad(out_w, ((0, 0), (0, m - out_w.shape[1])))
    return out_idx, out_w


def freedom_strings(word_idx, text_idx, vocabulary: Sequence[str], texts: Sequence[str],
                    template: str = "{word} {text}"):
    """FreeDom's distinct "word text" strings: word_idx (B, m) indexes ``vocabulary`` (−1 padding), text_idx (B,)
    indexes ``texts``. Returns the strings in order of first appearance (pairs row-major) and (B, m) int64 each
    entry's string index (−1 padding)."""
    word_idx = np.asarray(word_idx, dtype=np.int64)
    n_texts = max(1, len(texts))
    key = np.where(word_idx >= 0, word_idx * n_texts + np.asarray(text_idx, dtype=np.int64)[:, None], -1).ravel()
    seen = key >= 0
    uniq, first, inverse = np.unique(key[seen], return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    pair_idx = np.full(key.size, -1, dtype=np.int64)
    pair_idx[seen] = rank[inverse]
    strings = [""] * len(uniq)
    for u, r in zip(uniq.tolist(), rank.tolist()):
        strings[r] = template.format(word=vocabulary[u // n_texts], text=texts[u % n_texts])
    return strings, pair_idx.reshape(word_idx.shape)


def freedom_queries(word_idx, word_w, texts: Sequence[str], vocabulary: Sequence[str], encode: Callable,
                    template: str = "{word} {text}"):
    """FreeDom's composed queries: ``Σ_j w_j · g("word_j text")`` for every pair (not normalised, as the official
    code: it ranks by the weighted sum of similarities). word_idx/word_w (B, m) from :func:`freedom_words`;
    texts (B,) the query texts; ``encode(list_of_str) -> (T, d)`` the text encoder (each distinct text encoded
    once, :func:`freedom_strings`). Returns (B, d) float32.
    """
    uniq_txt, text_idx = np.unique(np.asarray(list(texts), dtype=object).astype(str), return_inverse=True)
    strings, pair_idx = freedom_strings(word_idx, text_idx, vocabulary, list(uniq_txt), template)
    if not strings:
        return np.zeros((len(texts), 1), dtype=np.float32)
    emb = np.asarray(encode(strings), dtype=np.float64)
    w = np.where(pair_idx >= 0, np.asarray(word_w, dtype=np.float64), 0.0)
    return np.einsum("bm,bmd->bd", w, emb[np.maximum(pair_idx, 0)]).astype(np.float32)


# ----------------------------------------------------------------------------------------- caption based
def caption_embeddings(descriptions: Sequence[Sequence[str]], encode: Callable) -> np.ndarray:
    """Mean embedding (N, d) of each image's descriptions (a captioner's output), for WeiMoCIR's Q2C term.

    The mean of the unit caption embeddings makes ``q·c̄`` the average query-to-caption cosine, as WeiMoCIR
    averages over an image's captions. An image without descriptions is refused.
    """
    empty = [i for i, d in enumerate(descriptions) if not d]
    if empty:
        raise DataError(f"{len(empty)} archive image(s) have no caption (e.g. row {empty[0]}); caption every image")
    flat = [t for d in descriptions for t in d]
    owner = np.repeat(np.arange(len(descriptions)), [len(d) for d in descriptions])
    emb = np.asarray(encode(flat), dtype=np.float64)
    sums = np.zeros((len(descriptions), emb.shape[1]))
    np.add.at(sums, owner, emb)
    return (sums / np.bincount(owner)[:, None]).astype(np.float32)


def weimocir_scores(v, w, X, C, alpha: float = 0.5, beta: float = 0.5):
    """WeiMoCIR (Wu, Lin & Yang, 'Training-free Zero-shot Composed Image Retrieval via Weighted Modality
    Fusion and Similarity', 2024, arXiv 2409.04918): query q = (1−α)·v + α·w (normalised, :func:`feature_sum`)
    and score ``(1−β)·q·x + β·q·c̄_x``, c̄_x the mean caption embedding of archive image x
    (:func:`caption_embeddings`, from any captioner). Returns (B, N).
    """
    beta = _check_weight(beta, "WeiMoCIR β")
    q = feature_sum(v, w, alpha)
    q, is_np = _t(q)
    X, _ = _t(X)
    C, _ = _t(C)
    return _out((1.0 - beta) * (q @ X.T.to(q.dtype)) + beta * (q @ C.T.to(q.dtype)), is_np)


def default_rewrite(caption: str, text: str) -> str:
    """The LLM-free stand-in for CIReVL's rewrite step: the caption followed by the modification text."""
    caption = caption.strip().rstrip(".")
    return f"{caption}, {text}" if caption else text


def cirevl_texts(captioner: Callable, images: Sequence, texts: Sequence[str],
                 rewrite: Callable[[str, str], str] = default_rewrite) -> list[str]:
    """CIReVL-style target descriptions (Karthik et al., 'Vision-by-Language for Training-Free Compositional
    Image Retrieval', ICLR 2024): caption each query image with ``captioner`` (the kit's interface:
    ``captioner(images) -> list[list[str]]``, first description used), then ``rewrite(caption, text)`` — an LLM
    in the paper, :func:`default_rewrite` here unless you plug one in. Retrieval is then text→image with the
    returned texts. Distinct images are captioned once.
    """
    if len(images) != len(texts):
        raise ParameterError(f"{len(images)} query images for {len(texts)} texts")
    keys = [str(x) if isinstance(x, (str, bytes)) or hasattr(x, "__fspath__") else id(x) for x in images]
    first = {}
    for key, img in zip(keys, images):
        first.setdefault(key, img)
    uniq = list(first)
    caps = captioner([first[k] for k in uniq])
    if len(caps) != len(uniq):
        raise DataError(f"the captioner returned {len(caps)} descriptions for {len(uniq)} images")
    caption_of = {k: (c[0] if len(c) else "") for k, c in zip(uniq, caps)}
    return [rewrite(caption_of[k], t) for k, t in zip(keys, texts)]


def slerp_weights(v, w, alpha: float = 0.5, threshold: float = SLERP_THRESHOLD):
    """Slerp's coefficients (c_v, c_w) per row, (B, 1) each: :func:`slerp` is (c_v·v + c_w·w)/‖·‖, so its
    similarity row X·q is (c_v·s_img + c_w·s_txt)/‖·‖ — the same ranking from the two similarity rows.
    Rows with |v·w| > ``threshold`` get the linear fallback's (1−α, α)."""
    alpha = _check_weight(alpha, "Slerp α")
    v, is_np = _t(v)
    w, _ = _t(w)
    dot = (v * w).sum(-1, keepdim=True)
    close = dot.abs() > threshold
    theta = torch.arccos(dot.clamp(-1.0, 1.0))
    sin = torch.where(close, torch.ones_like(dot), torch.sin(theta))
    cv = torch.where(close, torch.full_like(dot, 1.0 - alpha), torch.sin((1.0 - alpha) * theta) / sin)
    cw = torch.where(close, torch.full_like(dot, alpha), torch.sin(alpha * theta) / sin)
    return _out(cv, is_np), _out(cw, is_np)


CAPTIONS_FORMAT = 1


def save_captions(path, archive_paths: Sequence[str], descriptions: Sequence[Sequence[str]], captioner: str = ""):
    """Write the archive's captions (a captioner's output, one list per image) as JSON for WeiMoCIR:
    ``{"format": 1, "captioner": …, "captions": {archive path: [description, …]}}`` (atomic write)."""


    if len(archive_paths) != len(descriptions):
        raise ParameterError(f"{len(descriptions)} description lists for {len(archive_paths)} archive images")
    data = {"format": CAPTIONS_FORMAT, "captioner": str(captioner),
            "captions": {str(p): [str(t) for t in d] for p, d in zip(archive_paths, descriptions)}}
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    return path


def load_captions(path, archive_paths: Sequence[str], what: str = "archive image") -> list[list[str]]:
    """The captions of ``archive_paths`` (in that order) from a :func:`save_captions` file; DataError naming the
    file and the first images (``what``) it lacks."""

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"captions file {path} not found; caption the archive first (rscir_kit.compose.save_captions "
                        "with the output of any captioner)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not a captions file ({exc})") from None
    caps = data.get("captions") if isinstance(data, dict) else None
    if data.get("format") != CAPTIONS_FORMAT or not isinstance(caps, dict):
        raise DataError(f"{path}: not a rscir-kit captions file (format {CAPTIONS_FORMAT} with a 'captions' mapping)")
    missing = [p for p in map(str, archive_paths) if p not in caps]
    if missing:
        raise DataError(f"{path}: no captions for {len(missing)} {what}(s), e.g. {missing[:3]}; caption every "
                        f"{what} (rscir_kit.compose.save_captions)")
    return [list(caps[str(p)]) for p in archive_paths]

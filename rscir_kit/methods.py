"""Composed-retrieval scoring methods: the method registry, λ validation and the WeiCom ranking form.

``s_img`` and ``s_txt`` are raw cosine similarities of shape (..., N): query image / query text
against the N L2-normalised archive embeddings. Every method is one :class:`Method` entry of
:data:`REGISTRY`; the engine, the index, the explorer, the CLI and the notebooks read it from there
(``get(name)``, ``names()``, ``method_label(method, λ)``). Adding a method = one entry + its tests.

| method     | label          | score                                       | λ    |
|------------|----------------|---------------------------------------------|------|
| text       | Text           | s_txt                                       | –    |
| image      | Image          | s_img                                       | –    |
| average    | Text & Image   | (s_img + s_txt) / 2 (raw scores, baseline)  | –    |
| weicom     | WeiCom (λ=…)   | λ·Φ(z(s_txt)) + (1-λ)·Φ(z(s_img))           | 0..1 |
| add        | Add            | n(s_img) + n(s_txt)                         | –    |
| multiply   | Multiply       | n(s_img) · n(s_txt)                         | –    |
| min        | Minimum        | min(n(s_img), n(s_txt))                     | –    |

``n`` is the normalisation given by a ``:norm`` suffix (default ``none``, as the official code's
"Add/Multiply Similarities"; ``"add:weicom"`` selects the Φ-normalised variant). Note: the official
code's "Minimum Similarity" sorts ``max(s_img, s_txt)`` in ascending order; this kit's ``min`` ranks
by the minimum in descending order, which is what the name says.

**The WeiCom ranking form** (one home: :func:`weicom_rank_key`). Φ rounds to exactly 1.0 above
z ≈ 5.4 in float32, which would tie the best matches. Every ranking in the kit therefore uses the
equivalent upper-tail form: with Q = 1 - Φ (:func:`upper_tail`) and c = λ/(1-λ),

    key = Q(z_img) + c·Q(z_txt)      (lower = better; = (1 - WeiCom score)/(1-λ); λ=1: Q(z_txt))

computed with a single rounding (fused multiply-add). ``numerics="kit"`` also ranks λ=0 / λ=1 by the
raw image / text similarities (identical orders, Φ being monotone); ``numerics="official"`` ranks
every λ by the float32 score ``λ·Φ(z_txt) + (1-λ)·Φ(z_img)`` exactly as the official code does
(:func:`rscir_kit.normalization.official_cdf`), saturation ties included.

This module needs only numpy at import, so the archive index and ``rscir-kit search`` read the λ check and
the WeiCom form without loading torch (Q is scipy's ``ndtr``, imported on first use, :func:`upper_tail`); the
functions that take torch tensors import it when called.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DataError, ParameterError

NUMERICS = ("kit", "official")
NORMALIZATIONS = ("none", "zscore", "weicom", "rank", "minmax", "rrf", "relu")


# ----------------------------------------------------------------------------------- validation
def check_lambda(lam) -> float:
    """Return ``lam`` as float, or raise :class:`ParameterError` unless 0 <= λ <= 1 (the one λ check)."""
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise ParameterError(f"λ must be a number in [0, 1], got {lam!r}") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ParameterError(f"λ must lie in [0, 1] (0 = image only, 1 = text only), got {value}")
    return value


def check_numerics(numerics: str) -> str:
    if numerics not in NUMERICS:
        raise ParameterError(f"numerics must be one of {', '.join(NUMERICS)}, got {numerics!r}")
    return numerics


def check_normalization(norm: str) -> str:
    if norm not in NORMALIZATIONS:
        raise ParameterError(f"unknown normalisation {norm!r}; choose one of {', '.join(NORMALIZATIONS)}")
    return norm


# ----------------------------------------------------------------------------------- WeiCom form
_SQRT1_2 = 0.7071067811865476


def upper_tail(z):
    """Q(z) = 1 - Φ(z) for z-scores (numpy: float64 ``scipy.special.ndtr(-z)``; torch: ``erfc(z/√2)/2`` in its
    dtype). Both are accurate far into the tail, where ``1 - Φ(z)`` would round to 0. scipy.special is
    imported here, on first use (~0.2 s), not with the module, so ``search`` starts without it until it scores.
    """
    if isinstance(z, np.ndarray) or np.isscalar(z):
        from scipy.special import ndtr

        out = ndtr(-np.asarray(z, dtype=np.float64))
        return out if np.ndim(out) else out[()]
    return (z * _SQRT1_2).erfc_().mul_(0.5)


def weicom_rank_key(q_img, q_txt, lam: float, out=None):
    """The WeiCom ranking key from upper tails Q(z) (..., N): ``q_img + c·q_txt``, c = λ/(1-λ); lower = better.

    λ = 1 gives ``q_txt``; a modality of weight 0 may be None. Torch tensors: one rounding (fused
    multiply-add, ``torch.add(..., alpha=c)``), into ``out`` if given; numpy: float64.
    The evaluation engine (and its compiled kernel, which evaluates the same expression), the λ
    explorer and the archive index all rank by this key.
    """
    lam = check_lambda(lam)
    if lam == 1.0:
        return q_txt
    if lam == 0.0:
        return q_img
    c = lam / (1.0 - lam)
    if isinstance(q_img, np.ndarray) or isinstance(q_txt, np.ndarray):
        return np.add(q_img, c * np.asarray(q_txt), out=out)
    if out is None:
        return q_img.add(q_txt, alpha=c)
    return out.copy_(q_img).add_(q_txt, alpha=c)


def weicom_tail(q_img, q_txt, lam: float):
    """``1 - WeiCom score`` = λ·q_txt + (1-λ)·q_img from upper tails (lower = better), a modality of weight 0
    skipped (may be None): the same order as :func:`weicom_rank_key` (= (1-λ)·key), written with the
    weights themselves for callers that report the score (the archive index, float64)."""
    lam = check_lambda(lam)
    out = 0.0
    for q, w in ((q_img, 1.0 - lam), (q_txt, lam)):
        if w != 0.0:
            out = out + w * q
    return out


def weicom_rank_scores(s_img, s_txt, lam: float):
    """Scores (..., N) from raw similarities whose descending order is exactly the kit's WeiCom ranking.

    ``-weicom_rank_key(Q(z_img), Q(z_txt), λ)``, and the raw similarities at λ=0 (image only) and λ=1
    (text only). Torch or numpy in, same type out.
    """
    from .normalization import weicom_upper_tail

    lam = check_lambda(lam)
    if lam == 0.0:
        return s_img
    if lam == 1.0:
        return s_txt
    return -weicom_rank_key(weicom_upper_tail(s_img), weicom_upper_tail(s_txt), lam)


# ----------------------------------------------------------------------------------- registry
def _minimum(a, b):
    return np.minimum(a, b) if isinstance(a, np.ndarray) else a.minimum(b)


@dataclass(frozen=True)
class Method:
    """One scoring method.

    fusion(a_img, a_txt, lam): the score (..., N) from the *normalised* similarities (torch or numpy).
    norm: normalisation applied to both similarities first (a ``:norm`` suffix overrides it when
    ``norm_suffix``). kernel(lam, numerics): how the engine's compiled kernel evaluates the ranking,
    ``(inputs, op, w)`` — inputs ``"raw"``, a normalisation name, ``"tail"`` (Q) or ``"official"`` (the
    official float32 Φ); op one of :data:`rscir_kit.kernels.FUSIONS`; w the op's weights — or None to
    rank by ``fusion`` itself. alias(lam, numerics): another method whose ranking this one equals
    (shares its work), or None.
    """

    name: str
    label: str
    fusion: Callable
    doc: str
    norm: str = "none"
    takes_lambda: bool = False
    norm_suffix: bool = False
    needs: tuple[str, ...] = ("image", "text")
    kernel: Callable | None = None
    alias: Callable | None = None
    query: Callable | None = None      # feature-level: (v, w, lam, options, state, block) -> (B, d) composed query
    rows: Callable | None = None       # its score rows from a context (engine._RowContext: s_img, s_txt, v, w, X,
                                       # lam, options, state, block, out, kernel) -> (B, N), ranking exactly as
                                       # X·query (cheaper than a GEMM)
    prepare: Callable | None = None    # once per evaluation: (context, options) -> state for ``query``
    options: dict | None = None        # tunable options and defaults (``"freedom:k=10,m=5"``)
    pair_weights: Callable | None = None  # (v, w, lam) -> (c_v, c_w) (B, 1) each: its score row is
                                       # s_img·c_v + s_txt·c_w, which the engine's kernel fuses (op "pairlin")
    scores: bool = True                # its rows read the block's image/text similarity rows (False: the engine
                                       # skips the block's image GEMM when no other ranking needs it)


def _weicom_kernel(lam, numerics):
    if numerics == "official":  # fl32(fl32(1-λ)·Φ_img) + fl32(fl32(λ)·Φ_txt), as the official code
        return "official", "lin", (float(np.float32(1.0 - lam)), float(np.float32(lam)))
    return "tail", "negfma", (lam / (1.0 - lam),)  # -(Q_img + c·Q_txt), one rounding


def _weicom_alias(lam, numerics):
    if numerics == "kit" and lam in (0.0, 1.0):
        return "image" if lam == 0.0 else "text"
    return None


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("text", "Text", lambda a, b, lam: b, needs=("text",), kernel=lambda lam, nu: ("raw", "b", ()),
           doc="text→image similarity only (the paper's 'Text' row)"),
    Method("image", "Image", lambda a, b, lam: a, needs=("image",), kernel=lambda lam, nu: ("raw", "a", ()),
           doc="image→image similarity only (the paper's 'Image' row)"),
    Method("average", "Text & Image", lambda a, b, lam: (a + b) / 2, kernel=lambda lam, nu: ("raw", "mean", ()),
           doc="raw average of both similarities (the paper's 'Text & Image' row, the official "
               "'Average Similarities')"),
    Method("weicom", "WeiCom", lambda a, b, lam: lam * b + (1.0 - lam) * a, norm="weicom", takes_lambda=True,
           kernel=_weicom_kernel, alias=_weicom_alias,
           doc="WeiCom, Psomas et al., 'Composed Image Retrieval for Remote Sensing', IGARSS 2024: "
               "λ·Φ(z_txt) + (1-λ)·Φ(z_img), z the unbiased z-score over the archive"),
    Method("add", "Add", lambda a, b, lam: a + b, norm_suffix=True, kernel=lambda lam, nu: (None, "add", ()),
           doc="sum of the (normalised) similarities (official 'Add Similarities')"),
    Method("multiply", "Multiply", lambda a, b, lam: a * b, norm_suffix=True,
           kernel=lambda lam, nu: (None, "mul", ()),
           doc="product of the (normalised) similarities (official 'Multiply Similarities')"),
    Method("min", "Minimum", lambda a, b, lam: _minimum(a, b), norm_suffix=True,
           kernel=lambda lam, nu: (None, "min", ()),
           doc="minimum of the (normalised) similarities, ranked descending"),
)}

# ----------------------------------------------------------------------------------- the field's methods
# Training-free composition methods beyond WeiCom (formulas, sources and slow-reference tests: rscir_kit.compose).
def _lin_kernel(inputs):
    return lambda lam, nu: (inputs, "lin", (1.0 - lam, lam))


def _harris_fusion(a, b, lam):
    """compose.harris on rectified similarities (norm "relu", applied once per distinct image / text); torch rows:
    −λ(a+b)² + a·b, the same number as a·b − λ(a+b)² up to rounding. The engine's kernel evaluates it as the
    fusion op ``harris`` (rscir_kit.kernels._fuse_row), rounded exactly as this torch form."""
    from . import compose

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return compose.harris(np.maximum(a, 0), np.maximum(b, 0), lam)
    out = a + b
    return out.mul_(out).mul_(-float(lam)).addcmul_(a, b)


def _slerp_query(v, w, lam, options, state, block):
    from . import compose

    return compose.slerp(v, w, lam)


def _slerp_pair_weights(v, w, lam):
    from . import compose

    return compose.slerp_weights(v, w, lam)


def _slerp_rows(ctx):
    """X·slerp(v, w) up to its positive norm: c_v·s_img + c_w·s_txt with Slerp's per-pair coefficients
    (compose.slerp_weights) — the same ranking without a (B, d)·(d, N) product per pair."""
    from . import compose

    cv, cw = compose.slerp_weights(ctx.v, ctx.w, ctx.lam)
    return ctx.s_img.mul_(cv).addcmul_(ctx.s_txt, cw)  # the gathered rows are the block's own copies


def _feature_sum_query(v, w, lam, options, state, block):
    from . import compose

    return compose.feature_sum(v, w, lam)


def default_vocabulary(queries, archive) -> list[str]:
    """FreeDom's default vocabulary: the benchmark's class and label names — the archive's labels and the
    query table's ``label`` / ``query_value`` / ``target_value`` / ``query_class`` values ('_'/'-' → space)."""
    words = set()
    for v in np.asarray(getattr(archive, "labels", None) if getattr(archive, "labels", None) is not None else []):
        words.add(str(v))
    for col in ("label", "query_class", "query_value", "target_value"):
        if col in queries.table.columns:
            words.update(map(str, queries.table[col].dropna().unique()))
    words = sorted({w.replace("_", " ").replace("-", " ").strip() for w in words} - {""})
    if not words:
        raise ParameterError("FreeDom needs a vocabulary: the benchmark has no class/label names; pass "
                             "'freedom:vocab=/path/words.txt' (one word or phrase a line)")
    return words


def _read_vocabulary(path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise DataError(f"FreeDom vocabulary {path}: cannot read it ({exc.strerror}); give a text file with one "
                        "word or phrase a line") from None
    words = list(dict.fromkeys(w.strip() for w in lines if w.strip() and not w.startswith("#")))
    if not words:
        raise DataError(f"FreeDom vocabulary {path} is empty")
    return words


def _encoder_of(texts, what: str):
    """``encode(list_of_str) -> (T, d)`` from an encoder or TextFeatures (every text must be in the file)."""
    if hasattr(texts, "encode_texts"):
        return lambda batch: np.asarray(texts.encode_texts(list(batch)), dtype=np.float32)
    if hasattr(texts, "lookup"):
        def lookup(batch):
            try:
                return np.asarray(texts.lookup(list(batch)), dtype=np.float32)
            except DataError as exc:
                raise DataError(f"{what} needs texts that are not in the text feature file ({exc}); evaluate "
                                "with the text encoder (--model) instead of a text feature file") from None
        return lookup
    raise ParameterError(f"{what} needs a text encoder or text features")


#: FreeDom ranks by Σ_j w_j·(g("word_j text")·x). When its distinct "word text" strings are at most as many as
#: the pairs and their (C, N) similarity rows fit in this many MiB, those rows are computed once and each pair's
#: row is their weighted sum (the official order of operations, m·N additions a pair); otherwise each pair's
#: weighted query Σ_j w_j·g(...) is one (d, N) product. The two agree up to float32 rounding.
FREEDOM_SIMILARITY_ROWS_MB = 2048


def _freedom_similarity_rows(n_strings: int, n_pairs: int, n_archive: int) -> bool:
    """Whether FreeDom's rows are sums of its strings' precomputed similarity rows (see the budget above)."""
    return n_strings <= n_pairs and n_strings * n_archive * 4 <= FREEDOM_SIMILARITY_ROWS_MB * 2**20


@dataclass
class FreedomState:
    """FreeDom's per-evaluation state: the distinct "word text" embeddings (C, d) float32, each pair's string
    indices (P, m) int64 (−1 padding) and weights (P, m) float32 (0 padding), and the strings' similarity rows
    with the archive (C, N) float32, or None (then rows come from the weighted query)."""

    emb: np.ndarray
    idx: np.ndarray
    wts: np.ndarray
    sims: np.ndarray | None
    on_device: dict = field(default_factory=dict)


def _freedom_prepare(ctx, options):
    """FreeDom per pair: proxies and words per distinct query image (rscir_kit.compose.freedom_words), the
    embeddings of the distinct "word text" strings, and each pair's (string index, weight) lists."""
    import torch

    from . import compose

    vocab = _read_vocabulary(options["vocab"]) if options.get("vocab") else default_vocabulary(ctx.queries, ctx.archive)
    encode = _encoder_of(ctx.texts, "FreeDom")
    vocab_emb = encode(vocab)
    idx, wts = compose.freedom_words(ctx.Qimg, ctx.X, vocab_emb, k=int(options["k"]), n=int(options["n"]),
                                     m=int(options["m"]))
    idx, wts = idx[ctx.img_of_pair], wts[ctx.img_of_pair]
    combos, pair_idx = compose.freedom_strings(idx, ctx.txt_of_pair, vocab, list(ctx.uniq_txt))
    emb = encode(combos).astype(np.float32)
    sims = None
    if _freedom_similarity_rows(len(combos), len(pair_idx), ctx.X.shape[0]):
        sims = (torch.from_numpy(emb) @ torch.from_numpy(ctx.X).T).numpy()
    return FreedomState(emb, pair_idx, np.where(pair_idx >= 0, wts, 0.0).astype(np.float32), sims)


def _freedom_query(v, w, lam, options, state, block):
    import torch

    # Σ_j w_j·g("word_j text"): (B, m, d) gathered (padding weight 0)
    q = np.einsum("bm,bmd->bd", state.wts[block], state.emb[np.maximum(state.idx[block], 0)])
    return torch.as_tensor(q.astype(np.float32), device=v.device)


def _freedom_rows(ctx):
    """(B, N) FreeDom rows: Σ_j w_j·s_j over the strings' precomputed similarity rows (the compiled
    rscir_kit.kernels.weighted_row_sum with the kernel backend, torch gathers with the torch backend), or
    X·(weighted query)."""
    import torch

    st = ctx.state
    if st.sims is None:
        return _freedom_query(ctx.v, ctx.w, ctx.lam, ctx.options, st, ctx.block).to(ctx.X.dtype) @ ctx.X.T
    idx, wts = st.idx[ctx.block], st.wts[ctx.block]
    dev = ctx.X.device
    if ctx.kernel:  # the CPU backend
        import numba

        from .kernels import weighted_row_sum

        out = ctx.out if ctx.out is not None else torch.empty((len(idx), st.sims.shape[1]), dtype=torch.float32)
        weighted_row_sum(st.sims, idx, wts, out.numpy(), numba.get_num_threads())
        return out
    if dev not in st.on_device:
        st.on_device[dev] = torch.as_tensor(st.sims, device=dev)
    S = st.on_device[dev]
    idx_t, w_t = torch.as_tensor(idx, device=dev), torch.as_tensor(wts, device=dev)
    out = torch.zeros((len(idx), S.shape[1]), dtype=torch.float32, device=dev)
    for j in range(idx.shape[1]):
        out.addcmul_(S[idx_t[:, j].clamp(min=0)], w_t[:, j:j + 1])
    return out


def _weimocir_prepare(ctx, options):
    """WeiMoCIR's archive side: M = (1-β)·X + β·C̄, C̄ the mean caption embedding of every archive image (from a
    captions file made with any captioner, rscir_kit.compose.save_captions), so a query's score row is q·M."""
    from . import compose

    if not options.get("captions"):
        raise ParameterError("weimocir needs the archive's captions: 'weimocir:captions=FILE.json' (write it with "
                             "rscir_kit.compose.save_captions from any captioner's descriptions)")
    beta = compose._check_weight(options["beta"], "WeiMoCIR β")
    descriptions = compose.load_captions(options["captions"], ctx.archive.paths)
    C = compose.caption_embeddings(descriptions, _encoder_of(ctx.texts, "WeiMoCIR"))
    return ((1.0 - beta) * ctx.X + beta * C).astype(np.float32)


def _weimocir_rows(ctx):
    import torch

    from . import compose

    q = compose.feature_sum(ctx.v, ctx.w, ctx.lam)
    return q @ torch.as_tensor(ctx.state, device=q.device).T


def _cirevl_prepare(ctx, options):
    """CIReVL per pair: the query image's caption (from a captions file made with any captioner) rewritten with
    the query text (rscir_kit.compose.cirevl_texts, its LLM-free rewrite), each distinct string embedded once."""
    from . import compose

    if not options.get("captions"):
        raise ParameterError("cirevl needs the query images' captions: 'cirevl:captions=FILE.json' (write it with "
                             "rscir_kit.compose.save_captions from any captioner's descriptions)")
    paths = ctx.queries.table["query_path"].astype(str).tolist()
    uniq = list(dict.fromkeys(paths))
    caption_of = dict(zip(uniq, compose.load_captions(options["captions"], uniq, what="query image")))
    strings = compose.cirevl_texts(lambda images: [caption_of[p] for p in images], paths,
                                   ctx.queries.table["text"].astype(str).tolist())
    index = {}
    string_of_pair = np.array([index.setdefault(t, len(index)) for t in strings], dtype=np.int64)
    return _encoder_of(ctx.texts, "CIReVL")(list(index)).astype(np.float32), string_of_pair


def _cirevl_query(v, w, lam, options, state, block):
    import torch

    emb, string_of_pair = state
    return torch.as_tensor(emb[string_of_pair[block]], device=v.device)


for _m in (
    Method("zscore-sum", "z-score sum", lambda a, b, lam: lam * b + (1.0 - lam) * a, norm="zscore",
           takes_lambda=True, kernel=_lin_kernel("zscore"),
           doc="λ·z(s_txt) + (1-λ)·z(s_img), unbiased z over the archive: WeiCom without Φ (compose.zscore_sum)"),
    Method("minmax-sum", "min–max sum", lambda a, b, lam: lam * b + (1.0 - lam) * a, norm="minmax",
           takes_lambda=True, kernel=_lin_kernel("minmax"),
           doc="λ·m(s_txt) + (1-λ)·m(s_img), m = (s-min)/(max-min) over the archive (compose.minmax_sum)"),
    Method("rrf", "RRF (k=60)", lambda a, b, lam: lam * b + (1.0 - lam) * a, norm="rrf", takes_lambda=True,
           kernel=_lin_kernel("rrf"),
           doc="reciprocal-rank fusion, Cormack et al., SIGIR 2009: λ/(60+r_txt) + (1-λ)/(60+r_img) "
               "(λ=0.5: the classic sum; compose.reciprocal_rank_fusion)"),
    Method("harris", "Harris (BASIC)", _harris_fusion, norm="relu", takes_lambda=True,
           kernel=lambda lam, nu: ("relu", "harris", (lam,)),
           doc="Harris fusion of BASIC, Psomas et al., NeurIPS 2025 (github billpsomas/icir): "
               "a·b − λ(a+b)² on rectified similarities, λ the Harris weight (official default 0.1); "
               "BASIC's centring/projection/normalisation: rscir_kit.compose"),
    Method("feature-sum", "feature sum", lambda a, b, lam: lam * b + (1.0 - lam) * a, takes_lambda=True,
           query=_feature_sum_query, kernel=_lin_kernel("raw"),
           doc="normalised (1-λ)·v + λ·w (WeiMoCIR's query, Wu et al. 2024): its similarity row is "
               "(1-λ)·s_img + λ·s_txt up to the query's norm, ranked by the kernel's 'lin'; λ=0.5 ranks as the "
               "raw average"),
    Method("slerp", "Slerp", lambda a, b, lam: None, takes_lambda=True, query=_slerp_query, rows=_slerp_rows,
           pair_weights=_slerp_pair_weights,
           doc="spherical interpolation of v and w at α=λ, Jang et al., ECCV 2024 (github youngkyunJang/SLERP-TAT)"),
    Method("freedom", "FreeDom", lambda a, b, lam: None, query=_freedom_query, rows=_freedom_rows,
           prepare=_freedom_prepare, scores=False,
           options={"k": 20, "n": 7, "m": 7, "vocab": ""},
           doc="FreeDom, Efthymiadis et al., WACV 2025 (github NikosEfth/freedom): k proxy images → n words "
               "each → m most frequent → Σ freq·g('word text'); vocabulary: the benchmark's class/label names"),
    Method("cirevl", "CIReVL (caption + text)", lambda a, b, lam: None, query=_cirevl_query, prepare=_cirevl_prepare,
           options={"captions": ""}, scores=False,
           doc="CIReVL, Karthik et al., ICLR 2024: the query image's caption (any captioner) rewritten with the query "
               "text — 'caption, text' here (compose.default_rewrite; an LLM plugs in via compose.cirevl_texts) — "
               "then text→image retrieval"),
    Method("weimocir", "WeiMoCIR", lambda a, b, lam: None, takes_lambda=True, query=_feature_sum_query,
           rows=_weimocir_rows, prepare=_weimocir_prepare, options={"captions": "", "beta": 0.5}, scores=False,
           doc="WeiMoCIR, Wu, Lin & Yang 2024 (arXiv 2409.04918): q = normalised (1-α)·v + α·w (α = λ), score "
               "(1-β)·q·x + β·q·c̄_x with c̄_x the mean embedding of the archive image's captions (any captioner)"),
):
    REGISTRY[_m.name] = _m
del _m

QE_DEFAULTS = {"n": 10, "alpha": 3.0}


#: Method names in the paper's Table-2 row order.
METHODS = tuple(REGISTRY)
LAMBDA_METHODS = tuple(m.name for m in REGISTRY.values() if m.takes_lambda)


def names() -> tuple[str, ...]:
    """Registered method names, in the paper's row order."""
    return METHODS


def get(method: str) -> Method:
    """The registry entry of ``method`` (a ``:norm`` suffix is allowed and ignored here)."""
    return REGISTRY[parse_method(method)[0]]


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method string ``name[:norm | :k=v,…][+qe[:n=…,alpha=…]]``."""

    name: str
    norm: str
    options: tuple = ()          # ((key, value), …) for methods with options
    qe: tuple | None = None      # α-query-expansion options, or None
    base: str = ""               # the method string without the +qe part


def _parse_options(text: str, defaults: dict, what: str) -> tuple:
    opts = dict(defaults)
    for part in filter(None, text.split(",")):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in defaults:
            raise ParameterError(f"{what}: unknown option {part!r}; options are "
                                 f"{', '.join(f'{k}={v}' for k, v in defaults.items())}")
        default = defaults[key]
        try:
            opts[key] = type(default)(value) if not isinstance(default, str) else value
        except ValueError:
            raise ParameterError(f"{what}: option {key} must be a {type(default).__name__}, got {value!r}") from None
    return tuple(opts.items())


def method_spec(method: str) -> MethodSpec:
    """Parse a method string: ``"add:weicom"``, ``"freedom:k=10,m=5"``, ``"slerp+qe"``, ``"weicom+qe:n=5"``."""
    text = str(method)
    base, plus, qe_text = text.partition("+qe")
    qe = None
    if plus:
        if qe_text and not qe_text.startswith(":"):
            raise ParameterError(f"bad query-expansion suffix in {method!r}: use '+qe' or '+qe:n=10,alpha=3'")
        qe = _parse_options(qe_text[1:], QE_DEFAULTS, f"query expansion of {method!r}")
        if dict(qe)["n"] < 1 or dict(qe)["alpha"] < 0:
            raise ParameterError(f"query expansion of {method!r} needs n ≥ 1 and alpha ≥ 0")
    name, _, suffix = base.partition(":")
    entry = REGISTRY.get(name)
    if entry is None:
        suffixed = [m.name for m in REGISTRY.values() if m.norm_suffix]
        raise ParameterError(f"unknown method {method!r}; choose from {', '.join(REGISTRY)} "
                             f"({'/'.join(suffixed)} accept ':<norm>', e.g. 'add:weicom'; any method '+qe')")
    options = ()
    if entry.options is not None:
        options = _parse_options(suffix, entry.options, f"method {name!r}")
        norm = entry.norm
    elif suffix and not entry.norm_suffix:
        raise ParameterError(f"method {name!r} takes no normalisation suffix (got {method!r})")
    else:
        norm = suffix or entry.norm
    return MethodSpec(name, check_normalization(norm), options, qe, base)


def parse_method(method: str) -> tuple[str, str]:
    """``"add:weicom"`` → ("add", "weicom"); ``"weicom"`` → ("weicom", "weicom"); others their default norm
    (option and ``+qe`` suffixes are parsed by :func:`method_spec`)."""
    spec = method_spec(method)
    return spec.name, spec.norm


def method_label(method: str, lam=None) -> str:
    """The one human label of a (method, λ) row: ``Image``, ``Text & Image``, ``WeiCom (λ=0.3)``,
    ``Add (weicom norm)``. CLI tables, notebook tables and figure legends all use it."""
    spec = method_spec(method)
    name, norm = spec.name, spec.norm
    entry = REGISTRY[name]
    label = entry.label
    if entry.norm_suffix and norm != entry.norm:
        label = f"{label} ({norm} norm)"
    changed = [f"{k}={v}" for k, v in spec.options if v != entry.options[k]]
    if changed:
        label = f"{label} ({', '.join(changed)})"
    if spec.qe is not None:
        label = f"{label} + αQE" + ("" if dict(spec.qe) == QE_DEFAULTS else
                                     f" (n={dict(spec.qe)['n']}, α={dict(spec.qe)['alpha']:g})")
    if lam is None or (isinstance(lam, float) and math.isnan(lam)):
        return label
    return f"{label} (λ={float(lam):g})"


def order_key(method: str, lam=None) -> tuple:
    """Sort key putting rows in the paper's order: registry order, then normalisation, then λ."""
    name, norm = parse_method(method)
    lam_v = -1.0 if lam is None or (isinstance(lam, float) and math.isnan(lam)) else float(lam)
    return METHODS.index(name), norm != REGISTRY[name].norm, norm, lam_v


# ----------------------------------------------------------------------------------- scoring
def fuse_normalized(a_img, a_txt, name: str, lam: float | None = None):
    """Combine already-normalised scores (..., N) with the fusion of method ``name`` (no normalisation here)."""
    entry = REGISTRY.get(name)
    if entry is None:
        raise ParameterError(f"unknown fusion {name!r}")
    if entry.takes_lambda:
        lam = check_lambda(lam)
    return entry.fusion(a_img, a_txt, lam)


def fuse(s_img, s_txt, method: str = "weicom", lam: float | None = None):
    """Scores (..., N) of ``method`` from raw similarities ``s_img``, ``s_txt`` (..., N).

    λ is required for methods that take one and ignored otherwise. Accepts torch tensors or numpy arrays.
    """
    import torch

    from .normalization import normalize

    name, norm = parse_method(method)
    entry = REGISTRY[name]
    if entry.takes_lambda and lam is None:
        raise ParameterError(f"method {method!r} needs λ in [0, 1]")
    is_numpy = isinstance(s_img, np.ndarray) or isinstance(s_txt, np.ndarray)
    ti = torch.as_tensor(s_img) if s_img is not None else None
    tt = torch.as_tensor(s_txt) if s_txt is not None else None
    for need, t in (("image", ti), ("text", tt)):
        if need in entry.needs and t is None:
            raise ParameterError(f"method {name!r} needs its {need} similarities")
    a = normalize(ti, norm) if ti is not None else None
    b = normalize(tt, norm) if tt is not None else None
    out = fuse_normalized(a, b, name, lam)
    return out.numpy() if is_numpy else out


def composed_scores(image_query, text_query, archive, method: str = "weicom", lam: float | None = None):
    """Scores (B, N) for query image embeddings (B, d) and text embeddings (B, d) against archive (N, d).

    Either query may be None for the single-modality methods. Embeddings are assumed L2-normalised.
    """
    import torch

    x = torch.as_tensor(archive)
    s_img = torch.as_tensor(image_query).to(x.dtype) @ x.T if image_query is not None else None
    s_txt = torch.as_tensor(text_query).to(x.dtype) @ x.T if text_query is not None else None
    return fuse(s_img, s_txt, method, lam)

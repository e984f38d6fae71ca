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
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.special

from .errors import ParameterError

NUMERICS = ("kit", "official")
NORMALIZATIONS = ("none", "zscore", "weicom", "rank")


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
    """Q(z) = 1 - Φ(z) for z-scores (numpy: float64 ``ndtr(-z)``; torch: ``erfc(z/√2)/2`` in its dtype).

    Both are accurate far into the tail, where ``1 - Φ(z)`` would round to 0.
    """
    if isinstance(z, np.ndarray) or np.isscalar(z):
        return scipy.special.ndtr(-np.asarray(z, dtype=np.float64))
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
    import torch

    return torch.add(q_img, q_txt, alpha=c, out=out)


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
    official float32 Φ); op one of :data:`rscir_kit.metrics.FUSIONS`; w the op's weights — or None to
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

#: Method names in the paper's Table-2 row order.
METHODS = tuple(REGISTRY)
LAMBDA_METHODS = tuple(m.name for m in REGISTRY.values() if m.takes_lambda)


def names() -> tuple[str, ...]:
    """Registered method names, in the paper's row order."""
    return METHODS


def get(method: str) -> Method:
    """The registry entry of ``method`` (a ``:norm`` suffix is allowed and ignored here)."""
    return REGISTRY[parse_method(method)[0]]


def parse_method(method: str) -> tuple[str, str]:
    """``"add:weicom"`` → ("add", "weicom"); ``"weicom"`` → ("weicom", "weicom"); others their default norm."""
    name, _, norm = str(method).partition(":")
    entry = REGISTRY.get(name)
    if entry is None:
        suffixed = [m.name for m in REGISTRY.values() if m.norm_suffix]
        raise ParameterError(f"unknown method {method!r}; choose from {', '.join(METHODS)} "
                             f"({'/'.join(suffixed)} accept ':<norm>', e.g. 'add:weicom')")
    if norm and not entry.norm_suffix:
        raise ParameterError(f"method {name!r} takes no normalisation suffix (got {method!r})")
    return name, check_normalization(norm or entry.norm)


def method_label(method: str, lam=None) -> str:
    """The one human label of a (method, λ) row: ``Image``, ``Text & Image``, ``WeiCom (λ=0.3)``,
    ``Add (weicom norm)``. CLI tables, notebook tables and figure legends all use it."""
    name, norm = parse_method(method)
    entry = REGISTRY[name]
    label = entry.label
    if entry.norm_suffix and norm != entry.norm:
        label = f"{label} ({norm} norm)"
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

"""One evaluation engine for every composed-retrieval benchmark: plan → score block → assemble.

``evaluate`` takes a :class:`~rscir_kit.queries.QuerySet`, the archive features (N, d), the text
features, and any number of methods (from the registry, :mod:`rscir_kit.methods`) and λ values, and
returns a tidy per-pair table. It never loops in Python over the archive or over single queries:

- **plan** (:func:`_plan`): validates everything, resolves each (method, λ) through the registry into
  a *ranking* (the fused row the kernel evaluates); equal rankings are computed once (WeiCom at λ=0 / 1
  is image-only / text-only under ``numerics="kit"``); pairs are split into blocks of whole query images
  (bounded memory, ``max_block_mb``);
- **score block** (:func:`_score_block`): each distinct query image is scored (one GEMM) and
  normalised once per block into reused buffers, in place; each distinct text once (globally when few);
  then every (pair, ranking), image-only and text-only included, goes through the same compiled sort-free
  exact AP kernel
  (:func:`rscir_kit.kernels.block_metrics`), the λ values of a pair back to back while its rows are in
  cache. On CUDA the same rankings are scored with torch (image-only / text-only rows sorted once and
  shared, sort + binary search);
- **assemble** (:func:`_assemble`): the per-pair table, empty-positive policy, optional AP rounding.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace

import numba
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import methods as registry
from .config import resolve_device, show_progress
from .errors import DataError, ModelMismatchError, ParameterError
from .kernels import _OP, SIMD_COMPRESS, block_metrics, block_topn
from .metrics import pad_positives, positive_ranks, ranking_metrics, sort_rows
from .normalization import normalize, official_cdf, weicom_upper_tail
from .queries import QuerySet
from .reference import ATTRIBUTES

ON_EMPTY = ("zero", "skip", "error")
BACKENDS = ("auto", "kernel", "torch")


def _model_of(meta) -> str | None:
    meta = meta or {}
    return meta.get("model") or meta.get("model_name")


def _check_models(archive, others: dict) -> None:
    """Every feature source must come from the archive's model (ModelMismatchError otherwise)."""
    from .features import check_same_model

    for what, obj in others.items():
        check_same_model(getattr(archive, "meta", {}) or {}, getattr(obj, "meta", {}) or {},
                         names=("the archive features", what))


def _text_matrix(texts_needed: list[str], texts, archive) -> np.ndarray:
    """(T, d) float32 embeddings of ``texts_needed`` from a TextFeatures (``lookup``) or an encoder."""
    if texts is None:
        raise DataError("no text features: pass TextFeatures (rscir-kit encode-text) or an encoder/--model "
                        "to embed the query texts")
    if hasattr(texts, "lookup"):
        _check_models(archive, {"text features": texts})
        return np.asarray(texts.lookup(texts_needed), dtype=np.float32)
    if hasattr(texts, "encode_texts"):
        _check_models(archive, {"the text encoder": texts})
        return np.asarray(texts.encode_texts(texts_needed), dtype=np.float32)
    raise TypeError("texts must be TextFeatures (with .lookup) or an encoder (with .encode_texts)")


def _combos(methods, lambdas) -> list[tuple[str, float | None]]:
    methods = list(methods)
    if not methods:
        raise ParameterError("no methods to evaluate")
    lams = [registry.check_lambda(lam) for lam in lambdas]
    combos = []
    for m in methods:
        if registry.get(m).takes_lambda:
            if not lams:
                raise ParameterError(f"method {m!r} needs at least one λ")
            combos.extend((m, lam) for lam in lams)
        else:
            combos.append((m, None))
    return list(dict.fromkeys(combos))


def _blocks(img_of_pair: np.ndarray, max_pairs: int):
    """Split pairs (sorted by query image) into blocks of whole images with ≲ ``max_pairs`` pairs."""
    order = np.argsort(img_of_pair, kind="stable")
    imgs_sorted = img_of_pair[order]
    starts = np.flatnonzero(np.r_[True, imgs_sorted[1:] != imgs_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)]
    block_start = 0
    while block_start < len(starts):
        block_end = block_start + 1
        while block_end < len(starts) and ends[block_end] - starts[block_start] <= max_pairs:
            block_end += 1
        yield order[starts[block_start]:ends[block_end - 1]]
        block_start = block_end


def _check_finite(name: str, feats: np.ndarray) -> None:
    bad = ~np.isfinite(feats).all(axis=1)
    if bad.any():
        raise DataError(f"{name} has NaN/inf in {int(bad.sum())} row(s) (first: row {int(np.flatnonzero(bad)[0])}); "
                        "re-extract those features")


# ----------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Ranking:
    """One distinct ranking: fusion ``op`` (:data:`rscir_kit.kernels.FUSIONS`) of the image-side and
    text-side rows normalised by ``inputs`` (``raw``, ``tail``, ``official`` or a normalisation name),
    weights ``w``; ``method``/``lam`` fall back to the registry's fusion for ``op == "row"``."""

    inputs: str
    op: str
    w: tuple = ()
    method: str | None = None
    lam: float | None = None


def resolve(method: str, lam, numerics: str = "kit", shared_sort: bool = True) -> Ranking:
    """The ranking the engine computes for (method, λ) under ``numerics``, from the registry. ``shared_sort``:
    rank image-only / text-only through each distinct row sorted once (the torch backend); the compiled
    kernel's sort-free pass is faster than sorting even for one pair per row (benchmarks/results/bench_engine.md)."""
    spec = registry.method_spec(method)
    if spec.qe is not None:  # query expansion of any method: a row, from the base method's row
        return Ranking(resolve(spec.base, lam, numerics).inputs, "row", (0.0, 0.0), method, lam)
    name, norm = spec.name, spec.norm
    entry = registry.REGISTRY[name]
    if entry.alias is not None:
        other = entry.alias(lam, numerics)
        if other is not None:
            return resolve(other, None, numerics, shared_sort)
    if entry.pair_weights is not None:  # a per-pair linear combination of the raw rows, fused by the kernel
        return Ranking("raw", "pairlin", (0.0, 0.0), method, lam)
    if entry.kernel is None:
        return Ranking(norm if norm != "none" else "raw", "row", (0.0, 0.0), method, lam)
    inputs, op, w = entry.kernel(lam, numerics)
    if inputs is None:
        inputs = "official" if (norm == "weicom" and numerics == "official") else norm
    inputs = "raw" if inputs == "none" else inputs
    if op in ("a", "b") and inputs == "raw" and shared_sort:
        op = "sorted_" + op  # image-only / text-only: one sort per distinct row, shared by its pairs
    w = tuple(float(v) for v in w) + (0.0,) * (2 - len(w))
    return Ranking(inputs, op, w)


@dataclass
class Plan:
    """Everything evaluate needs, validated: queries, features on the device, rankings and blocks."""

    queries: QuerySet
    combos: list
    rankings: list            # distinct Ranking objects
    combo_ranking: list       # index into rankings per combo
    img_inputs: list          # input keys needed on the image side (in slot order)
    txt_inputs: list
    X: torch.Tensor
    Qimg: torch.Tensor
    Qtxt: torch.Tensor
    img_of_pair: np.ndarray
    txt_of_pair: np.ndarray
    n_pos: np.ndarray
    empty: np.ndarray
    pos_ptr: np.ndarray
    pos_idx: np.ndarray
    max_pairs: int
    txt_global: bool
    backend: str
    device: torch.device
    numerics: str
    ks: tuple
    on_empty: str
    ap_decimals: int | None
    prepared: dict = field(default_factory=dict)  # method -> state of registry entries with ``prepare``
    img_scored: bool = True   # some ranking reads the block's image similarity rows (else no image GEMM)
    txt_scored: bool = True
    row_buffers: object = None  # _Buffers of the kernel's precomputed rows (op "row"), reused across blocks


def _plan(queries, archive, texts, methods, lambdas, query_features, device, on_empty, ks, max_block_mb,
          numerics, ap_decimals, backend) -> Plan:
    if on_empty not in ON_EMPTY:
        raise ParameterError(f"on_empty must be one of {ON_EMPTY}, got {on_empty!r}")
    if backend not in BACKENDS:
        raise ParameterError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if ap_decimals is not None and (not isinstance(ap_decimals, (int, np.integer)) or ap_decimals < 0):
        raise ParameterError(f"ap_decimals must be None or a non-negative integer, got {ap_decimals!r}")
    numerics = registry.check_numerics(numerics)
    ks = tuple(int(k) for k in ks)
    if any(k <= 0 for k in ks):
        raise ParameterError(f"k must be positive, got {list(ks)}")
    combos = _combos(methods, lambdas)
    dev = resolve_device(device)
    backend = ("kernel" if dev.type == "cpu" else "torch") if backend == "auto" else backend
    if backend == "kernel" and dev.type != "cpu":
        raise ParameterError(f"the compiled kernel runs on the CPU; use backend='torch' on {dev}")

    queries = queries.bind(archive.paths)
    qf = archive if query_features is None else query_features
    if qf is not archive:
        _check_models(archive, {"query image features": qf})
    table = queries.table
    n_pairs = len(table)
    if n_pairs == 0:
        raise DataError(f"query set {queries.name!r} has no queries")
    n_pos = queries.n_positives
    empty = n_pos == 0
    if empty.any():
        examples = table[empty].head(3).to_dict("records")
        msg = (f"{int(empty.sum())} of {n_pairs} query pairs of {queries.name!r} have no relevant image in the archive "
               f"(e.g. {examples})")
        if on_empty == "error":
            raise DataError(msg + "; fix the query set or pass on_empty='zero' (official protocol) or 'skip'")
        warnings.warn(msg + f"; on_empty={on_empty!r}: " + ("counted as AP 0" if on_empty == "zero" else "left out"),
                      stacklevel=3)

    q_index = np.asarray(qf.index_of(table["query_path"].astype(str).tolist()), dtype=np.int64)
    uniq_img, img_of_pair = np.unique(q_index, return_inverse=True)
    uniq_txt, txt_of_pair = np.unique(table["text"].astype(str).to_numpy(), return_inverse=True)
    X_np = np.ascontiguousarray(np.asarray(archive.feats, dtype=np.float32))
    Qimg_np = np.asarray(qf.feats, dtype=np.float32)[uniq_img]
    Qtxt_np = _text_matrix(list(uniq_txt), texts, archive)
    if Qtxt_np.shape[1] != X_np.shape[1] or Qimg_np.shape[1] != X_np.shape[1]:
        raise ModelMismatchError(f"embedding sizes differ: archive d={X_np.shape[1]}, query images "
                                 f"d={Qimg_np.shape[1]}, texts d={Qtxt_np.shape[1]}; use features from one model")
    for name, arr in (("the archive features", X_np), ("the query image features", Qimg_np),
                      ("the text features", Qtxt_np)):
        _check_finite(name, arr)

    rankings, combo_ranking = [], []
    for method, lam in combos:
        r = resolve(method, lam, numerics, shared_sort=backend == "torch")
        if r not in rankings:
            rankings.append(r)
        combo_ranking.append(rankings.index(r))
    inputs = list(dict.fromkeys(["raw"] + [r.inputs for r in rankings]))  # raw first: the GEMM writes there
    img_inputs = [k for k in inputs if k == "raw" or any(r.inputs == k and r.op not in ("b", "sorted_b")
                                                         for r in rankings)]
    txt_inputs = [k for k in inputs if k == "raw" or any(r.inputs == k and r.op not in ("a", "sorted_a")
                                                         for r in rankings)]

    n_archive = X_np.shape[0]
    # The block budget is the same as that of the sort-based engine (6 float32 rows per pair), so that the
    # blocks — hence every GEMM's rounding — are the same; the kernel itself needs far less.
    bytes_per_row = 4 * n_archive * 6
    txt_global = len(uniq_txt) * bytes_per_row <= max_block_mb * 2**20 // 2
    max_pairs = max(1, int(max_block_mb * 2**20 // bytes_per_row))
    sets = queries.positive_sets
    pos_ptr = np.zeros(len(sets) + 1, np.int64)
    pos_ptr[1:] = np.cumsum([len(p) for p in sets])
    pos_idx = np.concatenate(sets).astype(np.int64) if len(sets) and pos_ptr[-1] else np.zeros(0, np.int64)
    prepared = _prepare_methods(combos, queries, archive, texts, X_np, Qimg_np, uniq_txt, img_of_pair, txt_of_pair)
    return Plan(queries, combos, rankings, combo_ranking, img_inputs, txt_inputs,
                torch.as_tensor(X_np, device=dev), torch.as_tensor(Qimg_np, device=dev),
                torch.as_tensor(Qtxt_np, device=dev), img_of_pair, txt_of_pair, n_pos, empty, pos_ptr, pos_idx,
                max_pairs, txt_global, backend, dev, numerics, ks, on_empty, ap_decimals, prepared=prepared,
                img_scored=any(_reads_scores(r, "a") for r in rankings),
                txt_scored=any(_reads_scores(r, "b") for r in rankings))


def _reads_scores(r: Ranking, side: str) -> bool:
    """Whether ranking ``r`` reads the block's image (``side`` "a") or text ("b") similarity rows: a kernel
    fusion of that side, or a precomputed row whose registry entry reads them (αQE: its base may)."""
    if r.op == "row":
        spec = registry.method_spec(r.method)
        return spec.qe is not None or registry.REGISTRY[spec.name].scores
    return r.op not in (("b", "sorted_b") if side == "a" else ("a", "sorted_a"))


def _prepare_methods(combos, queries, archive, texts, X, Qimg, uniq_txt, img_of_pair, txt_of_pair) -> dict:
    """Run each registry entry's ``prepare`` once (e.g. FreeDom's per-pair composed queries)."""
    ctx = SimpleNamespace(queries=queries, archive=archive, texts=texts, X=X, Qimg=Qimg, uniq_txt=uniq_txt,
                          img_of_pair=img_of_pair, txt_of_pair=txt_of_pair)
    out = {}
    for method, _ in combos:
        spec = registry.method_spec(method)
        base = registry.method_spec(spec.base) if spec.qe is not None else spec
        entry = registry.REGISTRY[base.name]
        if entry.prepare is not None and base.base not in out:
            out[base.base] = entry.prepare(ctx, dict(base.options))
    return out


# ----------------------------------------------------------------------------------------- score
def _normalise_into(key: str, S: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Rows of ``S`` normalised by ``key``, written into ``out`` (same shape)."""
    if key == "raw":
        return out.copy_(S)
    if key == "tail":
        return weicom_upper_tail(S, out=out)
    if key == "official":
        return out.copy_(official_cdf(S))
    return out.copy_(normalize(S, key))


class _Buffers:
    """Score buffers reused across blocks: contiguous (slots, rows, N) float32 views of one flat storage,
    grown only when a block needs more rows (no per-block or per-method (B, N) allocations)."""

    def __init__(self, n_slots: int, n: int, device):
        self.n_slots, self.n, self.device = n_slots, n, device
        self.flat = torch.empty(0, dtype=torch.float32, device=device)

    def get(self, rows: int) -> torch.Tensor:
        size = self.n_slots * rows * self.n
        if self.flat.numel() < size:
            self.flat = torch.empty(size, dtype=torch.float32, device=self.device)
        return self.flat[:size].view(self.n_slots, rows, self.n)


def _side_inputs(keys: list, S: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """Fill ``buf`` (slots, R, N) with ``S`` normalised by each key (``raw`` = S itself)."""
    for slot, key in enumerate(keys):
        if key == "raw" and buf[slot].data_ptr() == S.data_ptr():
            continue
        _normalise_into(key, S, buf[slot])
    return buf


@dataclass
class _Side:
    """One modality of a block: input rows (slots, R, N), their ascending sorts (R, N) if needed."""

    inputs: torch.Tensor
    sorted: np.ndarray | torch.Tensor | None


def _score_side(plan: Plan, keys: list, Q: torch.Tensor, rows: np.ndarray, buffers: _Buffers,
                need_sorted: bool, scored: bool = True) -> _Side:
    if not scored:  # no ranking reads this side: (0, R, N) inputs, no GEMM
        return _Side(torch.empty((0, len(rows), plan.X.shape[0]), dtype=torch.float32, device=plan.device), None)
    buf = buffers.get(len(rows))  # slot 0 is always the raw similarities
    S = torch.matmul(Q[torch.as_tensor(rows, device=plan.device)], plan.X.T, out=buf[0])
    _side_inputs(keys, S, buf)
    srt = None
    if need_sorted:
        srt = sort_rows(S)
        srt = srt.numpy() if plan.device.type == "cpu" else srt
    return _Side(buf, srt)


def _score_block(plan: Plan, block: np.ndarray, img_buffers: _Buffers, txt_buffers: _Buffers,
                 txt_side: _Side | None, ap: np.ndarray, hits: np.ndarray) -> None:
    """AP / hits@k of every ranking for the pairs ``block`` (written into ``ap`` / ``hits``)."""
    ops = [r.op for r in plan.rankings]
    b_imgs, li = np.unique(plan.img_of_pair[block], return_inverse=True)
    img_side = _score_side(plan, plan.img_inputs, plan.Qimg, b_imgs, img_buffers, "sorted_a" in ops, plan.img_scored)
    if txt_side is None:  # many texts: only the block's distinct texts (bounded memory)
        b_txts, ti = np.unique(plan.txt_of_pair[block], return_inverse=True)
        txt_side = _score_side(plan, plan.txt_inputs, plan.Qtxt, b_txts, txt_buffers, "sorted_b" in ops,
                               plan.txt_scored)
    else:
        ti = plan.txt_of_pair[block]
    pid = plan.queries.table["positive_id"].to_numpy()[block]
    if plan.backend == "kernel":
        _kernel_block(plan, block, img_side, txt_side, li, ti, pid, ap, hits)
    else:
        _torch_block(plan, block, img_side, txt_side, li, ti, pid, ap, hits)


def _ranking_row(plan: Plan, r: Ranking, img_side: _Side, txt_side: _Side, li, ti, block, out=None) -> torch.Tensor:
    """(B, N) float32 row of ranking ``r`` for the block's pairs: a kernel fusion evaluated in torch, a registry
    fusion, a composed query vector's similarities, or the α-query expansion of another ranking (its re-query
    GEMM written into ``out`` (B, N) when given; other rows are returned and the caller copies them)."""
    dev = plan.device

    def inputs():
        li_t, ti_t = torch.as_tensor(li, device=dev), torch.as_tensor(np.asarray(ti), device=dev)
        return (img_side.inputs[plan.img_inputs.index(r.inputs) if r.inputs in plan.img_inputs else 0][li_t],
                txt_side.inputs[plan.txt_inputs.index(r.inputs) if r.inputs in plan.txt_inputs else 0][ti_t])

    if r.op == "pairlin":  # as the entry's ``rows`` (the gathered rows are the block's own copies)
        cv, cw = _pair_weights(plan, r, block)
        a, b = inputs()
        return a.mul_(cv).addcmul_(b, cw)
    if r.op != "row":
        return _torch_fused(r.op, *inputs(), r.w)
    spec = registry.method_spec(r.method)
    if spec.qe is not None:
        from .compose import alpha_query_expansion, expanded_query

        base = resolve(spec.base, r.lam, plan.numerics, shared_sort=plan.backend == "torch")
        q = _composed_query(plan, Ranking("raw", "row", (0.0, 0.0), spec.base, r.lam), block)
        qe = dict(spec.qe)
        if plan.backend == "kernel":  # top-n by the compiled selection (no sort, the base row fused on the fly),
            top = _kernel_topn(plan, base, img_side, txt_side, li, ti, block, min(int(qe["n"]), plan.X.shape[0]))
            q_new = expanded_query(torch.from_numpy(top), plan.X, q, float(qe["alpha"]))
            return torch.matmul(q_new, plan.X.T, out=out)  # then one GEMM per block into the reused buffer
        row = _ranking_row(plan, base, img_side, txt_side, li, ti, block)
        return alpha_query_expansion(row, plan.X, query=q, n=int(qe["n"]), alpha=float(qe["alpha"])).to(torch.float32)
    entry = registry.REGISTRY[spec.name]
    if entry.rows is not None:  # feature-level methods: rows from a context (no per-pair GEMM where avoidable)
        ib = torch.as_tensor(plan.img_of_pair[block], device=dev)
        tb = torch.as_tensor(plan.txt_of_pair[block], device=dev)
        ctx = _RowContext(inputs, v=plan.Qimg[ib], w=plan.Qtxt[tb], X=plan.X, lam=r.lam,
                          options=dict(spec.options), state=plan.prepared.get(spec.base), block=block, out=out,
                          kernel=plan.backend == "kernel")
        return entry.rows(ctx).to(torch.float32)
    if entry.query is not None:
        return (_composed_query(plan, r, block) @ plan.X.T).to(torch.float32)
    return registry.fuse_normalized(*inputs(), spec.name, r.lam).to(torch.float32)


class _RowContext:
    """What a registry entry's ``rows`` sees: the block's query vectors v, w (B, d), the archive X, λ, its
    options and prepared state, the pairs ``block``, ``out`` (B, N) to write into (or None), ``kernel`` (the CPU
    kernel backend), and the gathered similarity rows ``s_img`` / ``s_txt`` (B, N), made on first use."""

    def __init__(self, inputs, **fields):
        self._inputs, self._rows = inputs, None
        self.__dict__.update(fields)

    def _pair(self):
        if self._rows is None:
            self._rows = self._inputs()
        return self._rows

    @property
    def s_img(self):
        return self._pair()[0]

    @property
    def s_txt(self):
        return self._pair()[1]


def _composed_query(plan: Plan, r: Ranking, block) -> torch.Tensor | None:
    """(B, d) composed query vectors of a feature-level ranking for the block's pairs (None otherwise)."""
    spec = registry.method_spec(r.method)
    entry = registry.REGISTRY[spec.name]
    if entry.query is None:
        return None
    dev = plan.device
    v = plan.Qimg[torch.as_tensor(plan.img_of_pair[block], device=dev)]
    w = plan.Qtxt[torch.as_tensor(plan.txt_of_pair[block], device=dev)]
    q = entry.query(v, w, r.lam, dict(spec.options), plan.prepared.get(spec.base), block)
    return torch.as_tensor(q, device=dev).to(plan.X.dtype)


def _pair_weights(plan: Plan, r: Ranking, block):
    """The per-pair weights (c_v, c_w) (B, 1) each of a ``pairlin`` ranking (registry ``pair_weights``)."""
    entry = registry.REGISTRY[registry.method_spec(r.method).name]
    dev = plan.device
    v = plan.Qimg[torch.as_tensor(plan.img_of_pair[block], device=dev)]
    w = plan.Qtxt[torch.as_tensor(plan.txt_of_pair[block], device=dev)]
    return entry.pair_weights(v, w, r.lam)


def _pair_weights_np(plan: Plan, r: Ranking, block) -> np.ndarray:
    cv, cw = _pair_weights(plan, r, block)
    return torch.cat([cv, cw], dim=1).to(torch.float32).cpu().numpy()


def _is_row(plan: Plan, r: Ranking) -> bool:
    """Whether ranking ``r`` is given to the scorer as a precomputed (B, N) row (the torch path fuses no pairlin)."""
    return r.op == "row" or (r.op == "pairlin" and plan.backend != "kernel")


def _kernel_topn(plan: Plan, base: Ranking, img_side: _Side, txt_side: _Side, li, ti, block, k: int) -> np.ndarray:
    """(B, k) int64: each pair's k best archive indices under ranking ``base`` (stable order), by the compiled
    selection :func:`rscir_kit.kernels.block_topn` — a kernel fusion is fused row by row, never materialised."""
    n = plan.X.shape[0]
    rows = np.zeros((0, 1, n), np.float32)
    if base.op == "row":
        rows = np.ascontiguousarray(_ranking_row(plan, base, img_side, txt_side, li, ti, block).numpy())[None]
        sa = sb = 0
    else:
        sa = plan.img_inputs.index(base.inputs) if base.inputs in plan.img_inputs else 0
        sb = plan.txt_inputs.index(base.inputs) if base.inputs in plan.txt_inputs else 0
    pw = _pair_weights_np(plan, base, block) if base.op == "pairlin" else np.zeros((len(block), 2), np.float32)
    out = np.empty((len(block), k), np.int64)
    block_topn(img_side.inputs.numpy(), txt_side.inputs.numpy(), rows, li.astype(np.int64),
               np.asarray(ti, dtype=np.int64), _OP[base.op], sa, sb, float(base.w[0]), float(base.w[1]), pw, k, out,
               numba.get_num_threads())
    return out


def _fallback_rows(plan: Plan, img_side: _Side, txt_side: _Side, li, ti, block, out=None) -> list:
    """(B, N) rows of the rankings without a kernel fusion (``op == "row"``), from the registry; into ``out``
    (R, B, N) when given (the kernel's reused buffer)."""
    rankings = [r for r in plan.rankings if _is_row(plan, r)]
    if out is None:
        return [_ranking_row(plan, r, img_side, txt_side, li, ti, block) for r in rankings]
    for k, r in enumerate(rankings):
        row = _ranking_row(plan, r, img_side, txt_side, li, ti, block, out=out[k])
        if row.data_ptr() != out[k].data_ptr():
            out[k].copy_(row)
    return out


def _slots(plan: Plan):
    sa = [plan.img_inputs.index(r.inputs) if r.inputs in plan.img_inputs else 0 for r in plan.rankings]
    sb = [plan.txt_inputs.index(r.inputs) if r.inputs in plan.txt_inputs else 0 for r in plan.rankings]
    return sa, sb


def _kernel_block(plan, block, img_side, txt_side, li, ti, pid, ap, hits) -> None:
    n = plan.X.shape[0]
    n_rows = sum(r.op == "row" for r in plan.rankings)
    rows = np.zeros((0, 1, n), np.float32)
    if n_rows:
        if plan.row_buffers is None:
            plan.row_buffers = _Buffers(n_rows, n, plan.device)
        rows = _fallback_rows(plan, img_side, txt_side, li, ti, block, out=plan.row_buffers.get(len(block))).numpy()
    sa, sb = _slots(plan)
    row_slot = 0
    for m, r in enumerate(plan.rankings):
        if r.op == "row":
            sa[m], row_slot = row_slot, row_slot + 1
    pw = np.zeros((len(plan.rankings), len(block), 2), np.float32)
    for m, r in enumerate(plan.rankings):
        if r.op == "pairlin":
            pw[m] = _pair_weights_np(plan, r, block)
    block_metrics(img_side.inputs.numpy(), txt_side.inputs.numpy(), rows,
                  li.astype(np.int64), np.asarray(ti, dtype=np.int64), block.astype(np.int64),
                  pid.astype(np.int64), plan.pos_ptr, plan.pos_idx,
                  np.array([_OP[r.op] for r in plan.rankings], np.int64), np.array(sa, np.int64),
                  np.array(sb, np.int64), np.array([r.w for r in plan.rankings], np.float64).reshape(-1, 2), pw,
                  np.array(plan.ks, np.int64), ap, hits, numba.get_num_threads(), SIMD_COMPRESS)


def _torch_fused(op: str, a: torch.Tensor, b: torch.Tensor, w: tuple) -> torch.Tensor:
    if op in ("a", "sorted_a"):
        return a
    if op in ("b", "sorted_b"):
        return b
    if op == "mean":
        return (a + b) / 2
    if op == "add":
        return a + b
    if op == "mul":
        return a * b
    if op == "min":
        return torch.minimum(a, b)
    if op == "negfma":
        return torch.add(a, b, alpha=w[0]).neg_()
    if op == "lin":
        return float(np.float32(w[0])) * a + float(np.float32(w[1])) * b
    if op == "harris":
        return registry._harris_fusion(a, b, w[0])
    raise ParameterError(f"unknown fusion op {op!r}")


def _torch_block(plan, block, img_side, txt_side, li, ti, pid, ap, hits) -> None:
    """The same rankings scored with torch: fused (B, N) rows, sort + binary search (the GPU path)."""
    dev = plan.device
    sets = plan.queries.positive_sets
    positives = pad_positives([sets[k] for k in pid], device=dev)
    valid = positives >= 0
    positives.clamp_(min=0)
    npos = torch.as_tensor(plan.n_pos[block], device=dev)
    li_t, ti_t = torch.as_tensor(li, device=dev), torch.as_tensor(np.asarray(ti), device=dev)
    rows = iter(_fallback_rows(plan, img_side, txt_side, li, ti, block))
    sa, sb = _slots(plan)
    for m, r in enumerate(plan.rankings):
        if _is_row(plan, r):
            fused, srt = next(rows), None
        else:
            a = img_side.inputs[sa[m]][li_t] if r.op not in ("b", "sorted_b") else None
            b = txt_side.inputs[sb[m]][ti_t] if r.op not in ("a", "sorted_a") else None
            fused = _torch_fused(r.op, a, b, r.w)
            srt = None
            if r.op == "sorted_a":
                srt = torch.as_tensor(img_side.sorted, device=dev)[li_t]
            elif r.op == "sorted_b":
                srt = torch.as_tensor(txt_side.sorted, device=dev)[ti_t]
        ranks = positive_ranks(fused, positives, srt, valid)
        metrics = ranking_metrics(ranks, npos, plan.ks)
        ap[m, block] = metrics["ap"]
        for i, k in enumerate(plan.ks):
            hits[m, i, block] = np.rint(metrics[f"p@{k}"] * k).astype(np.int64)


def _run(plan: Plan, progress: bool, desc: str) -> tuple[np.ndarray, np.ndarray]:
    n_pairs, n = len(plan.n_pos), plan.X.shape[0]
    ap = np.full((len(plan.rankings), n_pairs), np.nan)
    hits = np.zeros((len(plan.rankings), len(plan.ks), n_pairs), np.int64)
    img_buffers = _Buffers(len(plan.img_inputs), n, plan.device)
    txt_buffers = _Buffers(len(plan.txt_inputs), n, plan.device)
    txt_side = None
    if plan.txt_global:  # few distinct texts (the usual case): score, normalise and sort them once
        ops = [r.op for r in plan.rankings]
        txt_side = _score_side(plan, plan.txt_inputs, plan.Qtxt, np.arange(plan.Qtxt.shape[0]), txt_buffers,
                               "sorted_b" in ops, plan.txt_scored)
    with tqdm(total=n_pairs, desc=desc, unit="pair", disable=not show_progress(progress)) as bar:
        for block in _blocks(plan.img_of_pair, plan.max_pairs):
            _score_block(plan, block, img_buffers, txt_buffers, txt_side, ap, hits)
            bar.update(len(block))
    return ap, hits


# ----------------------------------------------------------------------------------------- assemble
def _round_percent(values: np.ndarray, decimals: int | None) -> np.ndarray:
    """``round(100·v, decimals) / 100`` with Python's rounding, as the official evaluate.py."""
    if decimals is None:
        return values
    return np.array([math.nan if v != v else round(100.0 * v, decimals) / 100.0 for v in values.tolist()])


def _assemble(plan: Plan, ap: np.ndarray, hits: np.ndarray, archive) -> pd.DataFrame:
    queries, table = plan.queries, plan.queries.table
    n_pairs = len(table)
    base = table[queries.group_columns].copy()
    base.insert(0, "pair", np.arange(n_pairs))
    base["n_pos"] = plan.n_pos
    n_pos_f = plan.n_pos.astype(np.float64)
    fill = 0.0 if plan.on_empty == "zero" else np.nan
    frames = []
    for (method, lam), m in zip(plan.combos, plan.combo_ranking):
        frame = base.copy()
        frame.insert(1, "method", method)
        frame.insert(2, "lambda", np.nan if lam is None else lam)
        values = ap[m].copy()
        values[plan.empty] = fill
        frame["ap"] = _round_percent(values, plan.ap_decimals)
        for i, k in enumerate(plan.ks):
            frame[f"p@{k}"] = _round_percent(hits[m, i] / k, plan.ap_decimals)
            with np.errstate(invalid="ignore", divide="ignore"):
                rec = hits[m, i] / n_pos_f
            rec[plan.empty] = fill
            frame[f"r@{k}"] = _round_percent(rec, plan.ap_decimals)
        for col in frame.columns[frame.columns.get_loc("ap"):]:
            values = frame[col].to_numpy()
            if not np.all(np.isnan(values) | ((values >= 0.0) & (values <= 1.0))):
                raise AssertionError(f"{col} outside [0, 1] for {method}: a bug, please report it")
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out.attrs.update(query_set=queries.name, n_pairs=n_pairs, n_empty=int(plan.empty.sum()), on_empty=plan.on_empty,
                     archive_size=int(plan.X.shape[0]), model=_model_of(getattr(archive, "meta", None)),
                     numerics=plan.numerics, ap_decimals=plan.ap_decimals)
    return out


def evaluate(queries: QuerySet, archive, texts=None, methods=("image", "text", "average", "weicom"),
             lambdas=(0.5,), query_features=None, device="auto", on_empty: str = "zero", ks=(),
             max_block_mb: int = 512, progress: bool = True, numerics: str = "kit",
             ap_decimals: int | None = None, backend: str = "auto") -> pd.DataFrame:
    """Evaluate ``methods`` (and every λ for the methods that take one) on all pairs of ``queries``.

    Args:
        queries: the query pairs; its positive sets are re-bound to ``archive.paths`` if ordered differently.
        archive: ImageFeatures-like (``feats`` (N, d) L2-normalised, ``paths`` (N,), ``meta``).
        texts: TextFeatures (``lookup``) or an encoder (``encode_texts``) for the query texts.
        methods: names from the registry :data:`rscir_kit.methods.METHODS` (``"add:weicom"`` style for fusions).
        lambdas: λ values in [0, 1] for WeiCom.
        query_features: where the query images are looked up (default: the archive).
        on_empty: pairs without positives: ``"zero"`` (AP 0, the official protocol; counted),
            ``"skip"`` (AP NaN, left out of means; counted) or ``"error"``.
        ks: also report P@k and R@k for these k.
        max_block_mb: memory budget of one block.
        numerics: ``"kit"`` (saturation-free WeiCom ranking; λ=0 / 1 = raw image / text similarities) or
            ``"official"`` (every λ, 0 and 1 included, ranked by the float32 score λ·Φ(z_txt) + (1-λ)·Φ(z_img)
            computed as the official code does, so Φ's saturation ties appear as there). Ties are broken by
            archive order in both: the official code's ``torch.argsort`` tie order is not reproducible.
        ap_decimals: round each AP, P@k and R@k (in %) to this many decimals before any averaging, as the
            official evaluate.py does with 2 (default None: exact).
        backend: ``"kernel"`` (the compiled CPU kernel), ``"torch"`` (sort-based, any device) or ``"auto"``.

    Returns:
        DataFrame with one row per (pair, method, λ): ``pair``, ``method``, ``lambda`` (NaN for
        methods without λ), ``ap`` (0..1), ``n_pos``, the P@k / R@k columns, and the query table's
        grouping columns. ``attrs`` record the query set, archive size, model, numerics and rounding.
    """
    plan = _plan(queries, archive, texts, methods, lambdas, query_features, device, on_empty, ks, max_block_mb,
                 numerics, ap_decimals, backend)
    ap, hits = _run(plan, progress, f"evaluate {plan.queries.name}")
    return _assemble(plan, ap, hits, archive)


def summarize(per_pair: pd.DataFrame, by: str | None = "attribute", average_label: str = "avg",
              metric: str = "ap") -> pd.DataFrame:
    """mAP (%) per method, λ and group, plus an ``average_label`` row per (method, λ) = mean of the groups.

    Returns columns ``method, lambda, <by>, map, n_queries, n_empty`` (``by=None``: one row per method/λ).
    NaN APs (``on_empty='skip'``) are left out of the means; ``n_empty`` counts pairs without positives.
    """
    keys = ["method", "lambda"]
    df = per_pair.assign(_empty=per_pair["n_pos"] == 0)
    group = keys + ([by] if by else [])
    order = {m: i for i, m in enumerate(dict.fromkeys(df["method"]))}
    rows = (df.groupby(group, dropna=False, sort=False)
              .agg(map=(metric, lambda s: 100.0 * s.mean()), n_queries=(metric, "size"), n_empty=("_empty", "sum"))
              .reset_index())
    if by:
        avg = (rows.groupby(keys, dropna=False, sort=False)
                   .agg(map=("map", "mean"), n_queries=("n_queries", "sum"), n_empty=("n_empty", "sum"))
                   .reset_index())
        avg[by] = average_label
        rows = pd.concat([rows, avg[rows.columns]], ignore_index=True)
        rows["_g"] = (rows[by] == average_label).astype(int)
        rows = rows.sort_values(["method", "lambda", "_g"], key=lambda s: s.map(order) if s.name == "method" else s,
                                kind="stable").drop(columns="_g")
    rows["n_empty"] = rows["n_empty"].astype(int)
    return rows.reset_index(drop=True)


method_label = registry.method_label  # the one label of a (method, λ) row (re-exported for the CLI)


def _natural_key(group) -> tuple:
    """Sort key: case-insensitive, digit runs compared as numbers ("2 cars" before "10 cars")."""
    parts = re.split(r"(\d+)", str(group).casefold())
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in parts], str(group)


def group_order(groups, average_label: str = "avg") -> list:
    """The one order of the group columns (``--by``) of every grouped table: PatternCom's attributes in the
    paper's order (color, context, density, existence, quantity, shape), then every other group in natural
    order (case-insensitive, numbers by value), ``average_label`` last (when present)."""
    seen = [g for g in dict.fromkeys(groups) if g != average_label]
    rest = sorted((g for g in seen if g not in ATTRIBUTES), key=_natural_key)
    return [g for g in ATTRIBUTES if g in seen] + rest + ([average_label] if len(seen) < len(set(groups)) else [])


def wide_table(summary: pd.DataFrame, by: str = "attribute", order=None, value: str = "map", keys: bool = False,
               decimals: int | None = 2, average_label: str = "avg") -> pd.DataFrame:
    """The paper's Table-2 layout of a :func:`summarize` table: one row per (method, λ), one column per group
    and ``avg`` last; rows in the paper's order (the registry's: Text, Image, Text & Image, WeiCom by λ, ...).

    Columns follow ``order`` if given, else :func:`group_order`. ``keys=False``: rows indexed by
    :func:`rscir_kit.methods.method_label` (the CLI table);
    ``keys=True``: ``method`` and ``lambda`` columns instead (the notebooks' tables, ``plots.summary_to_wide``).
    ``decimals``: rounding (None: none).
    """
    frame = summary.copy()
    frame["lambda"] = frame["lambda"].astype(float)
    rows = list(dict.fromkeys(zip(frame["method"], frame["lambda"].fillna(-1.0))))
    rows.sort(key=lambda r: registry.order_key(r[0], r[1] if r[1] >= 0 else None))
    groups = [g for g in group_order(frame[by], average_label) if g != average_label]
    if order is not None:
        groups = [g for g in order if g in groups]
    cols = groups + ([average_label] if (frame[by] == average_label).any() else [])
    lookup = {(m, -1.0 if lam != lam else lam, g): v
              for m, lam, g, v in zip(frame["method"], frame["lambda"], frame[by], frame[value])}
    data = [[lookup.get((m, lam, g), np.nan) for g in cols] for m, lam in rows]
    wide = pd.DataFrame(data, columns=cols, dtype=float)
    if decimals is not None:
        wide = wide.round(decimals)
    if keys:
        wide.insert(0, "method", [m for m, _ in rows])
        wide.insert(1, "lambda", [np.nan if lam < 0 else lam for _, lam in rows])
        return wide
    wide.index = [method_label(m, None if lam < 0 else lam) for m, lam in rows]
    wide.index.name = "method"
    return wide

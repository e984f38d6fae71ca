"""Archive-scale composed search: exact WeiCom top-k without scoring the whole archive twice.

WeiCom (λ ∈ [0, 1]) over an archive X (N, d) of unit rows, for an image query q_i and a text query q_t::

    s_img = X q_i,  s_txt = X q_t                        (cosine similarities)
    z     = (s - mean(s)) / std(s)                      (over the archive, unbiased std, ddof=1)
    score = λ Φ(z_txt) + (1 - λ) Φ(z_img)               (Φ: standard normal CDF)

Two facts make this cheap at archive scale:

1. **Statistics without a pass.** ``mean(X q) = q·μ`` and ``var(X q) = qᵀ C q`` with μ, C the archive's mean and
   unbiased covariance. The index stores μ and C (float64, d×d), so normalising any query costs O(d²).
2. **Top-k without scoring everything.** The score is increasing in both similarities, so Fagin's threshold
   algorithm (TA) finds the exact top-k from the two single-modality rankings alone: read both lists in order,
   score every item seen exactly, and stop as soon as the k-th best score beats the score an unseen item could
   at most reach (the WeiCom score of the current list positions).

Exact semantics (what "exact" means here)
-----------------------------------------
The archive is stored as float16 (``N·d·2`` bytes, memory-mapped). The *reference* scores are defined on those
stored values: similarities are float64 dot products of the stored float16 rows with the float32 query
(upcast), μ and C are computed in float64 from the stored rows, and the ranking key is the WeiCom score
evaluated in float64 as ``1 - [λ Q(z_txt) + (1-λ) Q(z_img)]`` with ``Q(z) = Φ(-z)`` the upper tail (the same
number as ``λΦ(z_txt) + (1-λ)Φ(z_img)``, but ranked through the tail so that items with z > 8, where Φ
rounds to 1.0 in float64, keep their order). Ties are broken by the lower archive index (a stable
descending sort), as everywhere in the kit. ``mode="exact"`` returns exactly the top-k of ``mode="scan"`` (the
brute force over all N rows). All modes score with the same numbers — similarities from the same row-local kernel,
normalised with the index's stored statistics — so tied scores order identically (by archive index) in each.
The FAISS lists are computed in float32; the TA
threshold adds a rigorous float32 rounding bound (γ_{d+2}·‖x‖·‖q‖) so that float32 list order can never make
it stop early.

Modes of :meth:`ArchiveIndex.search`
------------------------------------
``"exact"``  TA over exact ranked lists from a flat FAISS inner-product index over the float16 rows
             (``IndexScalarQuantizer`` QT_fp16, codes memory-mapped from disk). The fast index first supplies
             candidates (scored exactly) whose k-th best score T_k bounds the answer; every item below the
             z-level Q⁻¹(T_k) in both lists scores worse, so the first list depth is set to reach it (one flat
             pass as a rule). Lists are deepened ×4 while the threshold test fails, and a brute-force scan
             takes over when they run long (> N/8).
``"fast"``   the union of the top-``depth`` lists of the approximate index built with ``fast=`` (default a flat
             4-bit PQ fast-scan; IVF / HNSW / any ``index_factory`` string work) for the image query, the
             text query and the linearised composed query, re-scored exactly: the scores are exact, only
             recall can fall short of 1 (measured in benchmarks/bench_index.py).
``"scan"``   brute force (the reference): all N similarities in float64, then the top-k of the full WeiCom score
             (normalised with the stored statistics, as the other modes; the full-pass mean/std are reported in
             ``info`` — they agree to rounding).

Index directory (``ArchiveIndex.build(...)`` writes, ``ArchiveIndex.load(dir)`` reads)::

    meta.json        format version, N, d, model id + the feature file's meta, fast factory, build times
    flat.faiss       FAISS IndexScalarQuantizer(QT_fp16, inner product); its codes ARE the float16 archive
                     (the last N·d·2 bytes), memory-mapped both by FAISS and as a numpy array for re-scoring
    stats.npz        mu (d,), cov (d, d) float64 (ddof=1), n, max_norm (largest stored row norm)
    fast.faiss       optional approximate index (default: flat 4-bit PQ fast-scan, d/8 bytes a row)
    paths.npy, labels.npy   optional (N,) str

meta.json records every file's size and sha256 (and its own checksum): :meth:`ArchiveIndex.load` checks the sizes
always and the checksums of files up to ``VERIFY_BYTES`` (all with ``verify=True``), so a damaged file is reported
as "index damaged: rebuild with ..." instead of failing inside FAISS or returning wrong results.
``build`` holds a lock beside the folder (filelock) and writes into ``<out>.building``, renamed at the end; a
failed or killed build's folder is removed (at once, or by the next build).

GPU FAISS is used for the fast index when the installed FAISS has GPUs (``use_gpu="auto"``); untested here.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError, ModelMismatchError, RscirError
from .features import check_same_model
from .imagesets import load_image
from .io import output_errors, run_lock
from .methods import check_lambda, upper_tail
from .methods import weicom_tail as methods_weicom_tail

FORMAT_VERSION = 1
VERIFY_BYTES = 256 * 2**20   # files up to this size are checksummed on every load
SMALL_ARCHIVE = 1024         # below this, fast="auto" builds no fast index (exact search is instant anyway)
INDEX_FILES = ("flat.faiss", "stats.npz", "fast.faiss", "paths.npy", "labels.npy")
MODES = ("exact", "fast", "scan")
_CHUNK = 65536
_BLOCK = 2048          # rows per float64 block when re-scoring (fits in L2 cache)
_TINY = 1e-12


# ----------------------------------------------------------------------------------------- validation
def _as_query(q, d: int, name: str) -> np.ndarray | None:
    if q is None:
        return None
    arr = np.asarray(q, dtype=np.float32)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.shape[0] != d:
        raise DataError(f"{name} query must be one vector of size d={d} (the index's embedding size), "
                        f"got shape {np.shape(q)}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} query contains NaN/inf")
    return np.ascontiguousarray(arr)


# ----------------------------------------------------------------------------------------- statistics
@dataclass
class ArchiveStats:
    """Mean μ (d,) and unbiased covariance C (d, d) of the stored archive rows, float64.

    For any query q: ``mean(X q) = q·μ`` and ``std(X q, ddof=1) = sqrt(qᵀ C q)`` — the full-pass WeiCom
    normalisation in O(d²) instead of O(N d).
    """

    mu: np.ndarray
    cov: np.ndarray
    n: int
    max_norm: float = 1.0

    def moments(self, q) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased std of the similarities ``X q`` for queries q (d,) or (B, d) → arrays (B,)."""
        q64 = np.atleast_2d(np.asarray(q, dtype=np.float64))
        mean = q64 @ self.mu
        var = np.einsum("bi,ij,bj->b", q64, self.cov, q64)
        return mean, np.sqrt(np.maximum(var, 0.0))

    def zscore(self, scores, q) -> np.ndarray:
        """z-score of similarities ``scores`` (B, n) of queries q (B, d) with the archive statistics."""
        mean, std = self.moments(q)
        std = np.where(std > 0, std, np.inf)
        return (np.asarray(scores, dtype=np.float64) - mean[:, None]) / std[:, None]


def compute_stats(rows, chunk: int = _CHUNK, progress: bool = False) -> ArchiveStats:
    """μ and C (ddof=1) of ``rows`` (N, d) (any float array or memmap) in float64, two chunked passes.

    The covariance accumulates centred chunks ``(X-μ)ᵀ(X-μ)`` (no E[xxᵀ]-μμᵀ cancellation).
    """
    n, d = rows.shape
    if n < 2:
        raise DataError(f"an index needs at least 2 archive rows, got {n}")
    total = np.zeros(d, np.float64)
    max_sq = 0.0
    for s in _progress(range(0, n, chunk), progress, "stats: mean"):
        x = np.asarray(rows[s:s + chunk], dtype=np.float64)
        total += x.sum(axis=0)
        max_sq = max(max_sq, float(np.einsum("ij,ij->i", x, x).max()))
    mu = total / n
    gram = np.zeros((d, d), np.float64)
    for s in _progress(range(0, n, chunk), progress, "stats: covariance"):
        x = np.asarray(rows[s:s + chunk], dtype=np.float64) - mu
        gram += x.T @ x
    cov = gram / (n - 1)
    cov = (cov + cov.T) / 2
    return ArchiveStats(mu, cov, int(n), math.sqrt(max_sq))


def _progress(it, on: bool, desc: str):
    if not on:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)


# ----------------------------------------------------------------------------------------- scoring
def weicom_tail(s_img, s_txt, lam: float, mean, std) -> np.ndarray:
    """``λ Q(z_txt) + (1-λ) Q(z_img)`` (Q = 1 - Φ): the WeiCom score is ``1 - tail``; lower tail = better.

    s_img / s_txt: similarities (float64; None allowed for a modality of weight 0); mean/std: (2,) for
    (image, text). A modality with zero std contributes Φ(0) = 0.5 to every item.
    """
    q = []
    for s, w, m, sd in ((s_img, 1.0 - lam, mean[0], std[0]), (s_txt, lam, mean[1], std[1])):
        if w == 0.0:
            q.append(None)
            continue
        z = (np.asarray(s, dtype=np.float64) - m) / sd if sd > 0 else np.zeros(np.shape(s))
        q.append(upper_tail(z))
    return np.asarray(methods_weicom_tail(q[0], q[1], lam), dtype=np.float64)


def _stable_top(tail: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best (lowest tail; ties → lower id) entries, best first."""
    if len(tail) > 4 * k + 64:
        kth = np.partition(tail, k - 1)[k - 1]
        keep = np.flatnonzero(tail <= kth)
    else:
        keep = np.arange(len(tail))
    order = np.lexsort((ids[keep], tail[keep]))
    return keep[order[:k]]


# ----------------------------------------------------------------------------------------- results
@dataclass
class SearchResult:
    """Top-k of one composed query, best first.

    indices (k,) int64 archive rows; scores (k,) WeiCom scores in [0, 1]; s_img / s_txt (k,) raw float64
    cosine similarities; paths / labels (k,) when the index has them; info: how it was found (mode used,
    list depth, candidates scored exactly, fallbacks, the query's archive mean/std).
    """

    indices: np.ndarray
    scores: np.ndarray
    s_img: np.ndarray
    s_txt: np.ndarray
    paths: np.ndarray | None = None
    labels: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)

    def to_frame(self):
        import pandas as pd

        df = pd.DataFrame({"rank": np.arange(1, len(self) + 1), "index": self.indices, "score": self.scores,
                           "s_img": self.s_img, "s_txt": self.s_txt})
        if self.paths is not None:
            df["path"] = self.paths
        if self.labels is not None:
            df["label"] = self.labels
        return df


# ----------------------------------------------------------------------------------------- FAISS helpers
def _faiss():
    try:
        import faiss  # noqa: F401
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
        raise RscirError("the archive index needs FAISS: pip install faiss-cpu (or faiss-gpu)") from exc
    return faiss


def _flat_header(d: int, n: int) -> bytes:
    """Bytes of a serialised ``IndexScalarQuantizer(d, QT_fp16, IP)`` holding n vectors, up to its codes.

    FAISS writes the codes last, as a uint64 byte count followed by the bytes; ntotal is the int64 after the
    fourcc and d. Checked against FAISS's own serialisation of a 3-row index on every build.
    """
    faiss = _faiss()
    empty = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    blob = bytearray(faiss.serialize_index(empty).tobytes())
    if blob[-8:] != bytes(8) or struct.unpack_from("<q", blob, 8)[0] != 0:
        raise RscirError("unexpected FAISS IndexScalarQuantizer layout; cannot stream the flat index")
    struct.pack_into("<q", blob, 8, n)
    return bytes(blob[:-8]) + struct.pack("<Q", n * d * 2)


def _check_flat_layout(d: int) -> None:
    faiss = _faiss()
    x = np.random.default_rng(0).standard_normal((3, d)).astype(np.float32)
    ref = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    ref.add(x)
    mine = _flat_header(d, 3) + x.astype(np.float16).tobytes()
    if faiss.serialize_index(ref).tobytes() != mine:
        raise RscirError("FAISS IndexScalarQuantizer serialisation differs from the expected layout "
                         f"(faiss {faiss.__version__}); please report this")


def _gpu_available(faiss) -> bool:
    return hasattr(faiss, "StandardGpuResources") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0


def _default_fast(n: int, d: int) -> str | None:
    """Flat 4-bit PQ fast-scan with d/4 sub-quantizers (d/8 bytes a row: 64 MB per million 512-d rows; a SIMD
    scan of the whole archive, no cells to miss); candidates are re-scored exactly, so its coarse scores only
    decide recall. None (no fast index) below SMALL_ARCHIVE rows: too few to train it, and nothing to gain."""
    if n < SMALL_ARCHIVE:
        return None
    for sub in (4, 2, 8):
        if d % sub == 0 and (d // sub) % 2 == 0:
            return f"PQ{d // sub}x4fs"
    return "SQ8"


# ----------------------------------------------------------------------------------------- the index
@dataclass(frozen=True)
class _BuildOptions:
    """How :meth:`ArchiveIndex.build` writes an index: the fast-index factory (``"auto"``, a FAISS factory string or
    None), its ``nprobe``, training rows, rows per streamed chunk, progress bars, and the training-sample seed."""

    fast: str | None
    nprobe: int
    train_size: int | None
    chunk: int
    progress: bool
    seed: int


@dataclass(frozen=True)
class _Composed:
    """One composed query as the search algorithms see it: ``Q`` (2, d) float32 (image row, text row; a zero row
    for a modality without weight), ``active`` (the modalities with weight > 0), ``lam``, and the archive
    statistics ``mean`` / ``std`` (2,) of the two similarities (the WeiCom z-scores)."""

    Q: np.ndarray
    active: list
    lam: float
    mean: np.ndarray
    std: np.ndarray

    def tail(self, s_img, s_txt) -> np.ndarray:
        """WeiCom tail of similarities (lower = better), with this query's λ and statistics."""
        return weicom_tail(s_img, s_txt, self.lam, self.mean, self.std)


class ArchiveIndex:
    """Exact / fast WeiCom top-k over a large archive. Build once, load memory-mapped, search in milliseconds.

    >>> idx = ArchiveIndex.build(features, "archive.idx")          # ImageFeatures, npz path or (N, d) array
    >>> idx = ArchiveIndex.load("archive.idx")
    >>> res = idx.search(q_img, q_txt, lam=0.5, k=20)              # mode="exact" | "fast" | "scan"
    >>> res.to_frame()
    """

    def __init__(self, root: Path, meta: dict, stats: ArchiveStats, flat, rows: np.ndarray, fast=None,
                 paths: np.ndarray | None = None, labels: np.ndarray | None = None):
        self.root = Path(root)
        self.meta = meta
        self.stats = stats
        self.flat = flat
        self.rows = rows              # (N, d) float16 memmap: the stored archive
        self.fast = fast
        self.paths = paths
        self.labels = labels
        self.nprobe = int(meta.get("nprobe") or 64)

    # ------------------------------------------------------------------ properties
    @property
    def n(self) -> int:
        return int(self.meta["n"])

    @property
    def d(self) -> int:
        return int(self.meta["d"])

    @property
    def model_id(self) -> str | None:
        return self.meta.get("model")

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (f"ArchiveIndex(N={self.n}, d={self.d}, model={self.model_id!r}, "
                f"fast={self.meta.get('fast') or None!r}, root='{self.root}')")

    # ------------------------------------------------------------------ build / save / load
    @classmethod
    def build(cls, source, out_dir, *, paths=None, labels=None, model: str | None = None,
              feature_meta: dict | None = None, fast: str | None = "auto", nprobe: int = 64,
              train_size: int | None = None, overwrite: bool = False, chunk: int = _CHUNK,
              progress: bool = False, seed: int = 0) -> "ArchiveIndex":
        """Build an index directory from archive embeddings and return it loaded.

        source: ``ImageFeatures``, a feature ``.npz`` path, a ``.npy`` (N, d) file (memory-mapped: for
        archives too big for RAM), or an (N, d) float array / memmap (float16 or float32; rows should be
        L2-normalised — they are stored as float16 as they are, the exact semantics
        being defined on the stored values). paths/labels/model override what the features carry.
        fast: "auto" (flat 4-bit PQ fast-scan, ``PQ{d/4}x4fs``), a FAISS index_factory string (e.g.
        "PQ256x4fs", "IVF4096,SQfp16", "HNSW32,SQfp16", "IVF16384,PQ64x4fs"), or None / "none" for no fast index.
        nprobe: default IVF probes for ``mode="fast"`` (stored; override per search).
        """
        if isinstance(fast, str) and fast.strip().lower() == "none":
            fast = None
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise DataError(f"--out {out} is a file; give a folder name for the index (it will be created)")
        t_start = time.perf_counter()
        rows, paths, labels, fmeta = _read_source(source, paths, labels)
        fmeta = dict(fmeta or {}, **(feature_meta or {}))
        if model is not None:
            fmeta["model"] = model
        n, d = rows.shape
        if n < 2 or d < 1:
            raise DataError(f"cannot index an archive of shape {rows.shape}: need at least 2 rows")

        tmp = out.with_name(out.name + ".building")
        with run_lock(out, "index build"), output_errors(out, "index"):
            if out.exists() and any(out.iterdir()):
                if not overwrite:
                    raise DataError(f"index folder {out} exists and is not empty: choose another --out or pass "
                                    "overwrite=True / --overwrite")
                if not (out / "meta.json").is_file():
                    raise DataError(f"{out} is not empty and holds no index (meta.json): refusing to overwrite it")
            if tmp.exists():  # a killed build's leftover (we hold the lock: no live build owns it)
                shutil.rmtree(tmp)
            try:
                opts = _BuildOptions(fast, nprobe, train_size, chunk, progress, seed)
                meta = cls._write(tmp, rows, paths, labels, fmeta, opts, t_start, source)
                if out.exists():
                    shutil.rmtree(out)
                os.replace(tmp, out)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-built folder filling the disk
                raise
        del meta
        return cls.load(out)

    @staticmethod
    def _write(tmp: Path, rows, paths, labels, fmeta, opts: "_BuildOptions", t_start, source) -> dict:
        """Write every index file into ``tmp`` (a fresh folder); returns the meta written to meta.json."""
        fast, nprobe, train_size, chunk, progress, seed = (opts.fast, opts.nprobe, opts.train_size, opts.chunk,
                                                           opts.progress, opts.seed)
        faiss = _faiss()
        n, d = rows.shape
        tmp.mkdir(parents=True)
        timings = {}

        # 1. flat float16 store = FAISS flat IP index file (streamed, O(chunk) memory)
        t0 = time.perf_counter()
        _check_flat_layout(d)
        renormalized = 0
        with open(tmp / "flat.faiss", "wb") as fh:
            fh.write(_flat_header(d, n))
            for s in _progress(range(0, n, chunk), progress, "index: float16 store"):
                block = np.asarray(rows[s:s + chunk], dtype=np.float32)
                finite = np.isfinite(block).all(axis=1)
                norms = np.linalg.norm(np.where(finite[:, None], block, 0), axis=1)
                if not finite.all() or (norms == 0).any():
                    bad = s + int(np.flatnonzero(~finite | (norms == 0))[0])
                    raise DataError(f"archive row {bad} contains NaN/inf or is all zero; fix or drop it before "
                                    "indexing")
                off = np.abs(norms - 1.0) > 1e-3  # the kit's one rule: renormalise, count, record
                if off.any():
                    renormalized += int(off.sum())
                    block = block / norms[:, None]
                fh.write(np.ascontiguousarray(block, dtype=np.float16).tobytes())
        if renormalized:

            warnings.warn(f"{renormalized} of {n} archive rows were not unit length; renormalised before indexing "
                          "(recorded in meta['renormalized'])", stacklevel=4)
        timings["flat_s"] = time.perf_counter() - t0
        stored = _rows_memmap(tmp / "flat.faiss", n, d)

        # 2. statistics of the stored values
        t0 = time.perf_counter()
        stats = compute_stats(stored, chunk=chunk, progress=progress)
        np.savez(tmp / "stats.npz", mu=stats.mu, cov=stats.cov, n=stats.n, max_norm=stats.max_norm)
        timings["stats_s"] = time.perf_counter() - t0

        # 3. optional approximate index
        factory = _default_fast(n, d) if fast == "auto" else fast
        if factory:
            t0 = time.perf_counter()
            try:
                index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as exc:
                raise DataError(f"--fast {factory!r} is not a FAISS index_factory string for d={d} "
                                f"({str(exc).strip().splitlines()[-1][:120]})") from None
            if not index.is_trained:
                m = train_size or min(n, max(256 * 39, 40 * _nlist(index)))
                pick = np.sort(np.random.default_rng(seed).choice(n, size=min(m, n), replace=False))
                try:
                    index.train(np.asarray(stored[pick], dtype=np.float32))
                except RuntimeError as exc:
                    raise DataError(f"the fast index {factory!r} cannot be trained on {n} archive rows "
                                    f"({str(exc).strip().splitlines()[-1][:160]}); build with --fast none (exact "
                                    "search needs no fast index), or a smaller factory") from None
            for s in _progress(range(0, n, chunk), progress, "index: fast index"):
                index.add(np.asarray(stored[s:s + chunk], dtype=np.float32))
            faiss.write_index(index, str(tmp / "fast.faiss"))
            del index
            timings["fast_s"] = time.perf_counter() - t0
        if paths is not None:
            np.save(tmp / "paths.npy", np.asarray(paths).astype(str))
        if labels is not None:
            np.save(tmp / "labels.npy", np.asarray(labels).astype(str))
        timings["total_s"] = time.perf_counter() - t_start
        meta = {"format_version": FORMAT_VERSION, "kind": "archive-index", "n": int(n), "d": int(d),
                "storage": "float16", "model": fmeta.get("model"), "feature_meta": fmeta,
                "fast": factory or None, "nprobe": int(nprobe), "build": timings,
                "faiss_version": faiss.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if renormalized:
            meta["renormalized"] = renormalized
        if isinstance(source, (str, os.PathLike)):
            meta["built_from"] = str(source)
        from . import __version__

        meta["kit_version"] = __version__
        del stored
        meta["files"] = {f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)}
                         for f in sorted(tmp.iterdir()) if f.name in INDEX_FILES}
        meta["meta_sha256"] = _meta_checksum(meta)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        return meta

    def save(self, out_dir, overwrite: bool = False) -> Path:
        """Copy this index's files to another folder (the index is always written by :meth:`build`)."""
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise DataError(f"{out} exists and is not empty; pass overwrite=True")
        out.mkdir(parents=True, exist_ok=True)
        for f in self.root.iterdir():
            if f.is_file():
                shutil.copy2(f, out / f.name)
        return out

    @classmethod
    def load(cls, index_dir, use_gpu: str | bool = "auto", verify: bool | None = None) -> "ArchiveIndex":
        """Open an index folder: the float16 store is memory-mapped (FAISS and numpy share the file).

        Checks the recorded file sizes, and the sha256 of files up to VERIFY_BYTES (``verify=True``: all files;
        ``False``: sizes only). A mismatch raises DataError "index damaged: ... rebuild with ...".
        """
        faiss = _faiss()
        root = Path(index_dir)
        if not root.is_dir() or not (root / "meta.json").is_file():
            raise DataError(f"{root} is not an archive index (no meta.json); build one with "
                            "`rscir-kit index build --features FEATS.npz --out INDEX_DIR`")
        meta = _verified_meta(root, verify)
        n, d = int(meta["n"]), int(meta["d"])
        try:
            st = np.load(root / "stats.npz")
            stats = ArchiveStats(st["mu"], st["cov"], int(st["n"]), float(st["max_norm"]))
            flat = faiss.read_index(str(root / "flat.faiss"), faiss.IO_FLAG_MMAP_IFC)
        except Exception as exc:
            raise _damaged(root, meta, "stats.npz or flat.faiss", f"{type(exc).__name__}") from None
        if flat.ntotal != n or flat.d != d:
            raise _damaged(root, meta, "flat.faiss", f"holds {flat.ntotal}×{flat.d}, meta.json says {n}×{d}")
        rows = _rows_memmap(root / "flat.faiss", n, d)
        fast = None
        if (root / "fast.faiss").is_file():
            try:
                fast = faiss.read_index(str(root / "fast.faiss"))
            except Exception as exc:
                raise _damaged(root, meta, "fast.faiss", type(exc).__name__) from None
            if use_gpu is True or (use_gpu == "auto" and _gpu_available(faiss)):
                try:  # pragma: no cover - no GPU FAISS in CI
                    fast = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, fast)
                except Exception:  # an index type without GPU support stays on the CPU
                    pass
        try:
            paths = np.load(root / "paths.npy") if (root / "paths.npy").is_file() else None
            labels = np.load(root / "labels.npy") if (root / "labels.npy").is_file() else None
        except Exception as exc:
            raise _damaged(root, meta, "paths.npy or labels.npy", type(exc).__name__) from None
        for name, arr in (("paths.npy", paths), ("labels.npy", labels)):
            if arr is not None and arr.shape != (n,):
                raise _damaged(root, meta, name, f"shape {arr.shape}, expected ({n},)")
        return cls(root, meta, stats, flat, rows, fast, paths, labels)

    # ------------------------------------------------------------------ scoring primitives
    def moments(self, q_img=None, q_txt=None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) arrays (2,) of the image and text similarities over the archive, O(d²)."""
        mean, std = np.full(2, np.nan), np.full(2, np.nan)
        for j, q in enumerate((q_img, q_txt)):
            if q is not None:
                m, s = self.stats.moments(q)
                mean[j], std[j] = m[0], s[0]
        return mean, std

    def similarities(self, ids, Q) -> np.ndarray:
        """Exact float64 similarities (len(ids), B) of archive rows ``ids`` with the queries Q (B, d)."""
        ids = np.asarray(ids, dtype=np.int64)
        q64 = np.ascontiguousarray(np.asarray(Q, dtype=np.float64).T)
        if len(ids) > 1 and np.any(ids[1:] < ids[:-1]):       # gather in archive order (memmap locality)
            order = np.argsort(ids, kind="stable")
            out = np.empty((len(ids), len(Q)), np.float64)
            out[order] = self.similarities(ids[order], Q)
            return out
        out = np.empty((len(ids), len(Q)), np.float64)
        for s in range(0, len(ids), _BLOCK):
            _row_dots(self.rows[ids[s:s + _BLOCK]], q64, out[s:s + _BLOCK])
        return out

    def _margin(self, q: np.ndarray) -> float:
        """Bound on |float32 FAISS score − float64 score|: γ_{d+2} ‖x‖max ‖q‖ (any summation order)."""
        u = 2.0 ** -24
        g = (self.d + 2) * u / (1 - (self.d + 2) * u)
        return 1.01 * g * self.stats.max_norm * float(np.linalg.norm(q.astype(np.float64))) + _TINY

    # ------------------------------------------------------------------ search
    def encode_query(self, image=None, text=None, query_features=None, model: str | None = None, device=None,
                     setup=None, activation=None, precision=None, need_image: bool = True, need_text: bool = True,
                     load_encoder=None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(image vector | None, text vector | None) for :meth:`search`, encoded with the index's model.

        ``image``: an image file, or the relative path of an archive image (its stored row is used); ``text``: the
        modifier; ``query_features``: an ``.npz`` with ``image`` and/or ``text`` (d,) and optionally ``model``.
        The encoder is built with the configuration stored in the index's features (``setup`` / ``activation`` /
        ``precision`` override it; ``load_encoder(spec, device, setup)`` defaults to
        :func:`rscir_kit.encoders.load_encoder`). Refuses (ModelMismatchError) a ``model``, a configuration or
        precomputed features from another model than the index's: similarities across models are meaningless.
        """
        from .modelsetup import setup_for

        if load_encoder is None:
            def load_encoder(spec, dev, chosen):
                from .encoders import load_encoder as load  # open_clip/torch only when a query must be encoded

                return load(spec, device=dev or "auto", setup=chosen)
        chosen = setup_for(self.meta.get("feature_meta"), setup, activation=activation, precision=precision)
        q_img = q_txt = None
        if query_features is not None:
            with np.load(query_features, allow_pickle=False) as z:
                qmodel = str(z["model"]) if "model" in z.files else None
                q_img = np.asarray(z["image"], np.float32).reshape(-1) if "image" in z.files else None
                q_txt = np.asarray(z["text"], np.float32).reshape(-1) if "text" in z.files else None
            if qmodel and self.model_id and qmodel != self.model_id:
                raise ModelMismatchError(f"{query_features} was encoded with {qmodel!r} but the index {self.root} holds "
                                         f"{self.model_id!r} embeddings: encode the query with the index's model")
        enc = None
        if model is not None and self.model_id is not None and model != self.model_id:
            enc = load_encoder(model, device, chosen)
            if enc.model_id != self.model_id:
                raise ModelMismatchError(
                    f"--model {model!r} ({enc.model_id}) differs from the model of index {self.root} "
                    f"({self.model_id}): similarities across models are meaningless. Drop --model to use the index's "
                    "model, or build an index from features of this model")
        if image is not None and need_image and q_img is None:
            row = self.row_of(image)
            if row is not None and not Path(image).is_file():
                q_img = np.asarray(self.rows[row], np.float32)
            else:
                pil = load_image(image)
                enc = enc or load_encoder(model or self.query_model(), device, chosen)
                q_img = enc.encode_images([pil])[0]
        if text is not None and need_text and q_txt is None:
            enc = enc or load_encoder(model or self.query_model(), device, chosen)
            q_txt = enc.encode_texts([text])[0]
        if enc is not None and self.model_id is not None and enc.model_id != self.model_id:
            raise ModelMismatchError(f"encoder {enc.model_id!r} differs from the index's model {self.model_id!r}")
        if enc is not None and self.meta.get("feature_meta"):
            check_same_model(self.meta["feature_meta"], enc.meta, names=(f"index {self.root}", "the query encoder"))
        return q_img, q_txt

    def row_of(self, name: str) -> int | None:
        """Row of the archive path ``name`` stored in the index, or None."""
        if self.paths is None:
            return None
        hits = np.flatnonzero(self.paths == name)
        return int(hits[0]) if len(hits) else None

    def query_model(self) -> str:
        """The model queries must be encoded with (DataError when the index records none)."""
        if not self.model_id:
            raise DataError(f"index {self.root} records no model; pass --model (the one its features were made with)")
        return self.model_id

    def search(self, image_feat=None, text_feat=None, lam: float = 0.5, k: int = 20, mode: str = "exact",
               nprobe: int | None = None, depth: int | None = None) -> SearchResult:
        """Top-k archive rows for the composed query (image_feat, text_feat) under WeiCom with weight λ.

        image_feat / text_feat: (d,) float query embeddings (L2-normalised; used as float32). A modality may
        be None only when its weight is 0 (λ=1 for the image, λ=0 for the text): single-modality search.
        mode: "exact" (TA over flat lists; identical to "scan"), "fast" (candidates from the approximate
        index's lists, re-scored exactly; recall < 1 possible), "scan" (brute force).
        nprobe: IVF cells for "fast" with an IVF fast index (default: stored at build).
        depth: "fast": entries read per list (default 100·k); "exact": first list depth (default from the
        fast candidates, else ≈ √(kN); grown ×4 while the threshold test fails).
        """
        lam = check_lambda(lam)
        if mode not in MODES:
            raise DataError(f"unknown search mode {mode!r}; choose from {', '.join(MODES)}")
        k = int(k)
        if k < 1:
            raise DataError(f"k must be ≥ 1, got {k}")
        k = min(k, self.n)
        qi = _as_query(image_feat, self.d, "image")
        qt = _as_query(text_feat, self.d, "text")
        if qi is None and lam < 1.0:
            raise DataError(f"an image query is needed unless λ = 1 (text only); λ = {lam}")
        if qt is None and lam > 0.0:
            raise DataError(f"a text query is needed unless λ = 0 (image only); λ = {lam}")
        mean, std = self.moments(qi, qt)
        weights = np.array([1.0 - lam, lam])
        queries = [qi if qi is not None else np.zeros(self.d, np.float32),
                   qt if qt is not None else np.zeros(self.d, np.float32)]
        Q = np.stack(queries)
        active = [j for j in (0, 1) if weights[j] > 0]
        cq = _Composed(Q, active, lam, mean, std)
        info = {"mode": mode, "lam": lam, "k": k, "mean": mean.tolist(), "std": std.tolist()}
        t0 = time.perf_counter()
        found = None
        if mode == "fast":
            if self.fast is None:
                raise DataError(f"{self.root} has no fast index: rebuild with fast='auto' (or --fast auto), "
                                "or search with mode='exact'")
            found = self._fast(cq, k, nprobe, depth, info)
        if found is None and mode == "fast":
            info["fallback"] = "exact"
        if found is None and mode in ("exact", "fast"):
            seeds = None
            if mode == "exact" and self.fast is not None and depth is None:
                # cheap approximate candidates (scored exactly) bound the k-th best score from above, which
                # tells how deep the exact lists must be read: usually one flat pass suffices
                seeds = self._fast(cq, k, nprobe, max(4 * k, 256), {}, keep_all=True)
            found = self._threshold(cq, k, depth, info, seeds=seeds)
            if found is None:
                info["fallback"] = "scan"
        if found is None:
            found = self._scan(cq, k, info)
        ids, tail, sims = found
        info["seconds"] = time.perf_counter() - t0
        return SearchResult(ids, 1.0 - tail, sims[:, 0] if qi is not None else np.full(len(ids), np.nan),
                            sims[:, 1] if qt is not None else np.full(len(ids), np.nan),
                            None if self.paths is None else self.paths[ids],
                            None if self.labels is None else self.labels[ids], info)

    def search_lambdas(self, image_feat, text_feat, lams=(0.0, 0.25, 0.5, 0.75, 1.0), k: int = 20,
                       mode: str = "exact", nprobe: int | None = None):
        """Top-k for several λ (the λ explorer): one DataFrame, columns lam, rank, index, score, s_img, s_txt
        (+ path, label). The O(d²) statistics are shared; each λ is one search."""
        import pandas as pd

        frames = []
        for lam in lams:
            df = self.search(image_feat, text_feat, lam=lam, k=k, mode=mode, nprobe=nprobe).to_frame()
            df.insert(0, "lam", float(lam))
            frames.append(df)
        return pd.concat(frames, ignore_index=True)

    def search_method(self, method: str, image_feat, text_feat, lam: float = 0.5, k: int = 20, mode: str = "exact",
                      **options) -> SearchResult:
        """Exact top-k of another composition method (average, feature-sum, slerp, zscore-sum, minmax-sum,
        harris, rrf, weicom) by the cheapest strategy its math allows: see :func:`search_method`."""
        return search_method(self, method, image_feat, text_feat, lam=lam, k=k, mode=mode, **options)

    def _ivf(self):
        """(IVF index, centroids (nlist, d) float32) when the fast index is a plain IVF; else (None, None)."""
        if not hasattr(self, "_ivf_cache"):
            faiss = _faiss()
            ivf = cent = None
            try:
                found = faiss.extract_index_ivf(self.fast)
                if found is not None and found.d == self.d and int(found.ntotal) == int(self.fast.ntotal) \
                        and type(self.fast).__name__.startswith("IndexIVF"):
                    ivf = found
                    cent = ivf.quantizer.reconstruct_n(0, ivf.nlist)
            except (RuntimeError, AttributeError):
                pass
            self._ivf_cache = (ivf, cent)
        return self._ivf_cache

    def _lists(self, cq: _Composed, depth: int, source: str, nprobe: int | None, extra=None):
        """Ranked lists (D, I) (len(active) [+ len(extra)], depth) of the active modalities, best first."""
        Q, active = cq.Q, cq.active
        Qa = Q[active] if extra is None else np.concatenate([Q[active], extra])
        Qa = np.ascontiguousarray(Qa, dtype=np.float32)
        if source == "exact":
            return self.flat.search(Qa, depth)
        faiss = _faiss()
        ivf, cent = self._ivf()
        if ivf is not None:
            # probe the cells whose centroids score best under the *composed* WeiCom score, for both lists
            probes = min(int(nprobe or self.nprobe), ivf.nlist)
            cs = np.stack([cent @ Q[0], cent @ Q[1]])            # (2, nlist) centroid similarities (gemv)
            cell_tail = cq.tail(cs[0].astype(np.float64), cs[1].astype(np.float64))
            cells = np.argsort(cell_tail, kind="stable")[:probes].astype(np.int64)
            Iq = np.ascontiguousarray(np.tile(cells, (len(Qa), 1)))
            Dq = np.ascontiguousarray(Qa @ cent[cells].T, dtype=np.float32)
            ivf.nprobe = probes                                # the wrapper checks Iq against ivf.nprobe
            return ivf.search_preassigned(Qa, depth, Iq, Dq)
        if "HNSW" in type(self.fast).__name__:
            return self.fast.search(Qa, depth, params=faiss.SearchParametersHNSW(efSearch=max(depth, 64)))
        return self.fast.search(Qa, depth)

    def _fast(self, cq: _Composed, k, nprobe, depth, info, keep_all: bool = False):
        """Approximate candidates, scored exactly: the union of the fast index's top-``depth`` lists for the
        image query, the text query and the *linearised composed query* ``(1-λ)/σ_img·q_img + λ/σ_txt·q_txt``
        (the WeiCom score's tangent direction in z-space, which ranks the composed top-k near its head).

        Returns the exact top-k of those candidates (all of them with ``keep_all``). Recall < 1 is possible
        only when an answer is in none of the three approximate lists.
        """
        Q, active, lam, std = cq.Q, cq.active, cq.lam, cq.std
        depth = int(min(self.n, depth or max(100 * k, 1024)))
        extra = None
        if len(active) == 2 and std[0] > 0 and std[1] > 0:
            qc = (1.0 - lam) / std[0] * Q[0].astype(np.float64) + lam / std[1] * Q[1].astype(np.float64)
            extra = (qc / np.linalg.norm(qc))[None].astype(np.float32)
        D, I = self._lists(cq, depth, "fast", nprobe, extra=extra)
        ids = np.unique(I[I >= 0])
        sims = self.similarities(ids, Q)
        tail = cq.tail(sims[:, 0], sims[:, 1])
        info.update({"lists": "fast", "depth": depth, "read_depth": depth, "candidates": int(len(ids))})
        if keep_all:
            return ids, tail, sims
        if len(ids) < k:  # a tiny probe: complete with the exact lists
            return None
        top = _stable_top(tail, ids, k)
        return ids[top], tail[top], sims[top]

    def _threshold(self, cq: _Composed, k, depth, info, seeds=None):
        """Fagin's threshold algorithm over the exact (flat) ranked lists; None when the lists run long.

        seeds: (ids, tails, sims) of items already scored exactly (e.g. fast-mode candidates); their k-th best
        tail T_k sets the first list depth: an item below the z-level z* = Q⁻¹(T_k) in every list has a tail
        above T_k, so the lists need to reach z* (≈ N·T_k items each under a normal model; checked, deepened
        ×4 if short).
        """
        n = self.n
        if depth is None and seeds is not None and len(seeds[0]) >= k:
            t_k = float(np.partition(seeds[1], k - 1)[k - 1])
            # normal-model estimate, never below the unseeded default (real score tails are heavier)
            depth = int(min(n, max(4 * k, 256, math.ceil(math.sqrt(k * n)), 4.0 * n * t_k + 2 * k)))
            info["seed_tail_k"] = t_k
        if depth is None:  # ≈ √(kN): the TA depth of two independent modalities at λ = 0.5
            depth = max(4 * k, 256, math.ceil(math.sqrt(k * n)))
        depth = int(depth)
        max_depth = max(n // 8, 4 * k)
        margins = np.array([self._margin(q) for q in cq.Q])
        fetches = 0
        while True:
            depth = min(depth, n)
            D, I = self._lists(cq, depth, "exact", None)
            fetches += 1
            res = self._ta(D, I, cq, k, margins, seeds=seeds)
            if res is not None:
                ids, tail, sims, read, scored = res
                info.update({"lists": "exact", "depth": depth, "fetches": fetches, "read_depth": read,
                             "candidates": scored})
                return ids, tail, sims
            if depth >= n or depth >= max_depth:
                info["exact_gave_up_at_depth"] = depth
                return None
            depth *= 4

    def _ta(self, D, I, cq: _Composed, k, margins, seeds=None):
        """Read the fetched exact lists in growing prefixes; stop once the k-th best beats the threshold.
        Returns (ids, tails, sims, prefix read, items scored), or None when the fetched depth is not enough."""
        n, Q, active = self.n, cq.Q, cq.active
        length = D.shape[1]
        valid = [int(np.count_nonzero(I[r] >= 0)) for r in range(len(active))]
        if seeds is not None:
            seen, cand_tail, cand_sims = (np.asarray(a).copy() for a in seeds)
        else:
            seen, cand_tail, cand_sims = np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 2))
        step = min(length, max(2 * k, 128))
        while True:
            new = np.unique(np.concatenate([I[r, :min(step, valid[r])] for r in range(len(active))]))
            new = new[new >= 0]
            new = np.setdiff1d(new, seen, assume_unique=True)
            if len(new):
                sims = self.similarities(new, Q)
                tail = cq.tail(sims[:, 0], sims[:, 1])
                seen = np.concatenate([seen, new])
                cand_tail = np.concatenate([cand_tail, tail])
                cand_sims = np.concatenate([cand_sims, sims])
            # best score an item absent from every list prefix can reach (tail: lower = better)
            tau = np.full(2, -np.inf)
            exhausted = len(seen) >= n
            for r, j in enumerate(active):
                at = min(step, valid[r])
                list_done = at >= n
                exhausted = exhausted or list_done
                if not list_done:
                    tau[j] = D[r, at - 1] + margins[j]
            bound = np.inf if exhausted else float(cq.tail(tau[:1], tau[1:])[0])
            if len(seen) >= k:
                top = _stable_top(cand_tail, seen, k)
                if cand_tail[top[-1]] < bound:  # strict: an unseen item could tie and have a lower index
                    return seen[top], cand_tail[top], cand_sims[top], step, len(seen)
            if step >= length:
                return None
            step = min(length, step * 2)

    def _scan(self, cq: _Composed, k, info):
        """Brute force (the reference): all N float64 similarities, WeiCom with the stored statistics, top-k."""
        n = self.n
        sims = np.empty((n, 2), np.float64)
        q64 = np.ascontiguousarray(np.asarray(cq.Q, dtype=np.float64).T)
        for s in range(0, n, _BLOCK):  # pass 1: similarities (same row-local kernel as the re-scoring)
            _row_dots(self.rows[s:s + _BLOCK], q64, sims[s:s + _BLOCK])
        # the stored statistics, as in the exact/fast modes: one set of numbers, so ties order alike everywhere
        tail = cq.tail(sims[:, 0], sims[:, 1])  # pass 2: score + top-k
        ids = np.arange(n, dtype=np.int64)
        top = _stable_top(tail, ids, k)
        info.update({"lists": "scan", "scan_mean": sims.mean(axis=0).tolist(),
                     "scan_std": sims.std(axis=0, ddof=1).tolist()})
        return ids[top], tail[top], sims[top]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _meta_checksum(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _rebuild_hint(root: Path, meta: dict | None) -> str:
    src = (meta or {}).get("built_from") or "FEATS.npz"
    return f"rscir-kit index build --features {src} --out {root} --overwrite"


def _damaged(root: Path, meta: dict | None, name: str, why: str) -> DataError:
    return DataError(f"index damaged: {root / name} ({why}); rebuild with `{_rebuild_hint(root, meta)}`")


def _verified_meta(root: Path, verify: bool | None) -> dict:
    """meta.json, checked against its own checksum, with the recorded sizes/checksums of the other files."""
    try:
        meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _damaged(root, None, "meta.json", f"unreadable: {type(exc).__name__}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{root}: index format {meta.get('format_version')} but this kit reads "
                        f"{FORMAT_VERSION}; rebuild it with `{_rebuild_hint(root, meta)}`")
    if "meta_sha256" in meta and meta["meta_sha256"] != _meta_checksum(meta):
        raise _damaged(root, meta, "meta.json", "its content does not match its checksum")
    for name, rec in (meta.get("files") or {}).items():
        f = root / name
        if not f.is_file():
            raise _damaged(root, meta, name, "missing")
        size = f.stat().st_size
        if size != rec["bytes"]:
            raise _damaged(root, meta, name, f"{size} bytes, {rec['bytes']} recorded")
        if (verify is None and size <= VERIFY_BYTES) or verify:
            if _sha256(f) != rec["sha256"]:
                raise _damaged(root, meta, name, "checksum differs from the one recorded at build")
    return meta


def _nlist(index) -> int:
    faiss = _faiss()
    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        return 256


def _row_dots(block16: np.ndarray, q64: np.ndarray, out: np.ndarray) -> None:
    """out[i, b] = Σ_j float64(block[i, j]) · q64[j, b], computed row by row with the same loop for every row.

    Row-local on purpose (numpy's einsum reduction, no BLAS blocking): a row's score never depends on which
    other rows share the call, so duplicates tie exactly and the scan, exact and fast modes agree to the bit.
    """
    b = np.asarray(block16, dtype=np.float64)
    for j in range(q64.shape[1]):
        out[:, j] = np.einsum("ij,j->i", b, q64[:, j])


def _rows_memmap(flat_path: Path, n: int, d: int) -> np.ndarray:
    """The float16 codes at the end of a flat.faiss file, as an (n, d) read-only memmap."""
    size = Path(flat_path).stat().st_size
    return np.memmap(flat_path, dtype=np.float16, mode="r", offset=size - n * d * 2, shape=(n, d))


def _read_source(source, paths, labels):
    """(rows (N, d) array-like, paths, labels, meta) from ImageFeatures / npz path / array."""
    meta = {}
    if isinstance(source, (str, os.PathLike)) and str(source).endswith(".npy"):
        if not Path(source).is_file():
            raise DataError(f"embedding file {source} not found")
        source = np.load(source, mmap_mode="r")          # archive-scale: (N, d) .npy, memory-mapped
    elif isinstance(source, (str, os.PathLike)):
        source = read_features(source)
    if hasattr(source, "feats") and hasattr(source, "meta"):
        rows = source.feats
        paths = source.paths if paths is None else paths
        labels = source.labels if labels is None else labels
        meta = dict(source.meta)
    else:
        rows = source
    if not hasattr(rows, "shape") or len(rows.shape) != 2:
        raise DataError(f"archive embeddings must be an (N, d) array, got {type(rows).__name__} "
                        f"{getattr(rows, 'shape', '')}")
    n = rows.shape[0]
    for name, v in (("paths", paths), ("labels", labels)):
        if v is not None and len(v) != n:
            raise DataError(f"{name} has {len(v)} entries for {n} archive rows")
    return rows, paths, labels, meta


def read_features(path):
    """Image features from a ``.npz`` feature file (``rscir_kit.features.ImageFeatures``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"feature file {path} not found; extract one with `rscir-kit extract`")
    from .features import ImageFeatures

    return ImageFeatures.load(path)


# ----------------------------------------------------------------------------------------- any method
# Archive-scale search with the kit's other composition methods (rscir_kit.compose). Each method is answered
# by the cheapest strategy its math allows, and the result says which (``info["strategy"]``):
#
#   single-vector      average, feature-sum, slerp: one composed query q → one flat search, re-scored exactly
#   linear             zscore-sum: Σ_k w_k (x·q_k − μ_k)/σ_k = x·(Σ_k w_k q_k/σ_k) + const, μ/σ from the stored
#                      moments → one flat search (exact top-k)
#   threshold          weicom (ArchiveIndex.search), minmax-sum, harris: Fagin's TA over the image and text
#                      lists with random access to the stored rows; the bound for unseen items is the score's
#                      supremum over the unseen box (monotone fusions: the score at the list thresholds;
#                      Harris: compose.harris_box_max)
#   rank-threshold     rrf: a no-random-access TA over the two exactly ranked list prefixes (an item's rank is
#                      known once its similarity is above everything not fetched)
#
# "Exact" means: the top-k of the brute-force scores over the stored float16 rows in float64 (``method_scan``),
# ties by the lower archive index. FAISS's float32 list scores enter only through bounds widened by the float32
# rounding bound (``ArchiveIndex._margin``), so they can never cut a list short.
METHOD_STRATEGIES = {"average": "single-vector", "feature-sum": "single-vector", "slerp": "single-vector",
                     "zscore-sum": "linear", "weicom": "threshold", "minmax-sum": "threshold",
                     "harris": "threshold", "rrf": "rank-threshold"}


@dataclass
class _Plan:
    """What a method needs from the archive: query vectors with offsets (similarity s_j = x·q_j + c_j) and the
    score of given similarity columns."""

    vectors: np.ndarray            # (M, d) float64
    offsets: np.ndarray            # (M,) float64
    score: object                  # callable: (sims (n, M) float64) -> (n,) float64, higher = better
    bound: object = None           # callable: (upper (M,), lower (M,)) -> float, sup of score over the box


def _lam_of(lam) -> float:
    return check_lambda(lam)


def _method_plan(index: "ArchiveIndex", method: str, qi, qt, lam, opts: dict, extremes=None) -> _Plan:
    from . import compose

    v = qi.astype(np.float64)
    w = qt.astype(np.float64)
    if method in ("average", "feature-sum", "slerp"):
        if method == "average":
            q = (v + w) / 2
        elif method == "feature-sum":
            q = compose.feature_sum(v[None], w[None], lam)[0]
        else:
            q = compose.slerp(v[None], w[None], lam, threshold=opts.get("threshold", compose.SLERP_THRESHOLD))[0]
        return _Plan(q[None], np.zeros(1), lambda s: s[:, 0])
    if method == "zscore-sum":
        mean, std = index.moments(qi, qt)
        std = np.where(std > 0, std, 1.0)
        q = (1.0 - lam) * v / std[0] + lam * w / std[1]
        c = -((1.0 - lam) * mean[0] / std[0] + lam * mean[1] / std[1])
        return _Plan(q[None], np.array([c]), lambda s: s[:, 0])
    if method == "minmax-sum":
        lo, hi = extremes if extremes is not None else _exact_extremes(index, _Plan(np.stack([v, w]), np.zeros(2), None))
        span = np.where(hi - lo > 0, hi - lo, 1.0)

        def score(s):
            return (1.0 - lam) * (s[:, 0] - lo[0]) / span[0] + lam * (s[:, 1] - lo[1]) / span[1]
        return _Plan(np.stack([v, w]), np.zeros(2), score, lambda up, low: float(score(np.asarray(up)[None])[0]))
    if method == "harris":
        hl = float(opts.get("harris_lambda", lam))
        shift = np.broadcast_to(np.asarray(opts.get("shift", 0.0), dtype=np.float64), (2,))
        scale = float(opts.get("scale", 1.0))
        if not scale > 0:
            raise DataError(f"BASIC normalisation scale must be > 0, got {scale}")
        mi = opts.get("image_mean")
        mt = opts.get("text_mean")
        P = opts.get("projection")
        mi = np.zeros(index.d) if mi is None else np.asarray(mi, dtype=np.float64)
        mt = np.zeros(index.d) if mt is None else np.asarray(mt, dtype=np.float64)
        qv = v - mi if P is None else (v - mi) @ np.asarray(P, dtype=np.float64)
        qw = w - mt
        # s_img = (v−μ_i)P·(x−μ_i) = x·qv − μ_i·qv ; s_txt = (w−μ_t)·(x−μ_i) = x·qw − μ_i·qw  (compose.basic_similarities)
        offsets = np.array([-(mi @ qv), -(mi @ qw)])

        def norm(s, j):
            return np.maximum((s - shift[j]) / scale, 0.0)

        def score(s):
            return compose.harris(norm(s[:, 0], 0), norm(s[:, 1], 1), hl)

        def bound(up, low):
            return float(compose.harris_box_max(norm(low[0], 0), norm(up[0], 0), norm(low[1], 1), norm(up[1], 1), hl))
        return _Plan(np.stack([qv, qw]), offsets, score, bound)
    raise DataError(f"method {method!r} has no archive-scale search; choose from {', '.join(METHOD_STRATEGIES)}")


def _exact_sims(index, ids, plan: _Plan) -> np.ndarray:
    return index.similarities(ids, plan.vectors) + plan.offsets[None, :]


def _flat_lists(index, vectors, depth):
    return index.flat.search(np.ascontiguousarray(vectors, dtype=np.float32), int(depth))


def _first_depth(index, k):
    return int(min(index.n, max(4 * k, 256, math.ceil(math.sqrt(k * index.n)))))


def _exact_extremes(index, plan: _Plan):
    """(min (M,), max (M,)) of every similarity column over the whole archive, exactly (two flat searches per
    column: q and −q, re-scored until the best re-scored value clears the float32 bound)."""
    lo, hi = np.empty(len(plan.vectors)), np.empty(len(plan.vectors))
    for j, q in enumerate(plan.vectors):
        for sign, out in ((1.0, hi), (-1.0, lo)):
            depth = 32
            while True:
                depth = min(depth, index.n)
                D, I = _flat_lists(index, (sign * q)[None], depth)
                ids = I[0][I[0] >= 0]
                s = sign * (index.similarities(ids, q[None])[:, 0] + plan.offsets[j])
                best = s.max()
                if depth >= index.n or best > sign * plan.offsets[j] + D[0, -1] + index._margin(q):
                    out[j] = sign * best
                    break
                depth *= 8
    return lo, hi


def _single_vector_topk(index, plan: _Plan, k, info):
    """Exact top-k of x·q + c: flat search, exact re-scoring, deepened until the k-th exact score beats the
    bound on everything not fetched (its float32 list score + the rounding margin)."""
    q = plan.vectors[0]
    margin = index._margin(q)
    depth = min(index.n, max(2 * k, 64))
    fetches = 0
    while True:
        D, I = _flat_lists(index, q[None], depth)
        fetches += 1
        ids = I[0][I[0] >= 0]
        s = _exact_sims(index, ids, plan)[:, 0]
        top = _stable_top(-s, ids, k)
        bound = plan.offsets[0] + D[0, -1] + margin
        if depth >= index.n or s[top[-1]] > bound:
            info.update({"depth": int(depth), "fetches": fetches, "candidates": int(len(ids))})
            return ids[top], s[top]
        depth = min(index.n, depth * 4)


def _threshold_topk(index, plan: _Plan, k, info):
    """Fagin's TA with random access (exact similarities of every item seen in either list)."""
    n = index.n
    margins = np.array([index._margin(q) for q in plan.vectors])
    low = np.array([-index.stats.max_norm * np.linalg.norm(q) for q in plan.vectors]) + plan.offsets
    depth = _first_depth(index, k)
    fetches = 0
    while True:
        D, I = _flat_lists(index, plan.vectors, depth)
        fetches += 1
        ids = np.unique(I[I >= 0])
        sims = _exact_sims(index, ids, plan)
        s = plan.score(sims)
        top = _stable_top(-s, ids, k)
        if depth >= n:
            info.update({"depth": int(depth), "fetches": fetches, "candidates": int(len(ids))})
            return ids[top], s[top], sims[top]
        up = D[:, -1] + margins + plan.offsets
        if s[top[-1]] > plan.bound(up, low) or len(ids) >= n:
            info.update({"depth": int(depth), "fetches": fetches, "candidates": int(len(ids)),
                         "threshold": float(plan.bound(up, low))})
            return ids[top], s[top], sims[top]
        if depth > n // 8:
            info["fallback"] = "scan"
            depth = n
        else:
            depth = min(n, depth * 4)


def _rrf_topk(index, plan: _Plan, k, lam, rrf_k, info):
    """Reciprocal-rank fusion without a full pass: an item's exact rank in a list is known once its exact
    similarity is above the bound on everything not fetched; an item not (safely) ranked in a list is bounded
    by the count of safely ranked items. Stops when the k-th best fully ranked item beats every other item's
    upper bound. RRF's per-list scores are flat (k = 60): an item at the top of one list stays a candidate
    until its rank in the other is known, so the lists often run deep; past N/8 the exact scan takes over
    (``info["fallback"] = "scan"``)."""
    n = index.n
    margins = np.array([index._margin(q) for q in plan.vectors])
    w = np.array([1.0 - lam, lam])
    depth = _first_depth(index, k)
    fetches = 0
    while depth <= max(n // 8, 4 * k):
        D, I = _flat_lists(index, plan.vectors, depth)
        fetches += 1
        rank = np.zeros((2, n), dtype=np.int64)          # 0 = not safely ranked
        bound_rr = np.empty(2)
        for j in (0, 1):
            ids = I[j][I[j] >= 0]
            s = _exact_sims(index, ids, plan)[:, j]
            tau = -np.inf if depth >= n else D[j, -1] + margins[j] + plan.offsets[j]
            safe = s > tau
            order = np.lexsort((ids[safe], -s[safe]))
            rank[j, ids[safe][order]] = np.arange(1, int(safe.sum()) + 1)
            bound_rr[j] = 0.0 if depth >= n else 1.0 / (rrf_k + int(safe.sum()) + 1)
        seen = np.flatnonzero((rank > 0).any(axis=0))
        r = rank[:, seen]
        rr = np.where(r > 0, 1.0 / (rrf_k + np.maximum(r, 1)), bound_rr[:, None])
        score = w @ rr                                   # exact where both ranks are known, else an upper bound
        full = (r > 0).all(axis=0)
        if full.sum() >= k:
            fid, fs = seen[full], score[full]
            top = _stable_top(-fs, fid, k)
            others = np.concatenate([score[~full], [w @ bound_rr]])
            if depth >= n or fs[top[-1]] > others.max():
                info.update({"depth": int(depth), "fetches": fetches, "candidates": int(len(seen))})
                return fid[top], fs[top]
        if depth >= n:
            break
        depth = min(n, depth * 4)
    info.update({"fallback": "scan", "gave_up_at_depth": int(depth), "fetches": fetches})
    s = method_scan(index, "rrf", plan.vectors[0].astype(np.float32), plan.vectors[1].astype(np.float32), lam,
                    rrf_k=rrf_k)
    ids = np.arange(n)
    top = _stable_top(-s, ids, k)
    return ids[top], s[top]


def method_scan(index: "ArchiveIndex", method: str, image_feat, text_feat, lam: float = 0.5, **options) -> np.ndarray:
    """Brute-force scores (N,) float64 of ``method`` over the stored archive (the reference of
    :func:`search_method`; higher = better). Full-pass statistics, exact ranks for RRF."""
    from . import compose

    lam = _lam_of(lam)
    qi, qt = _as_query(image_feat, index.d, "image"), _as_query(text_feat, index.d, "text")
    allids = np.arange(index.n)
    if method == "weicom":
        sims = index.similarities(allids, np.stack([qi, qt]))
        mean, std = sims.mean(axis=0), sims.std(axis=0, ddof=1)
        return 1.0 - weicom_tail(sims[:, 0], sims[:, 1], lam, mean, std)
    if method == "rrf":
        sims = index.similarities(allids, np.stack([qi, qt]))
        rr = [compose.reciprocal_ranks(sims[:, j][None], k=int(options.get("rrf_k", compose.RRF_K)))[0] for j in (0, 1)]
        return (1.0 - lam) * rr[0] + lam * rr[1]
    if method == "zscore-sum":
        sims = index.similarities(allids, np.stack([qi, qt]))
        z = (sims - sims.mean(axis=0)) / np.where(sims.std(axis=0, ddof=1) > 0, sims.std(axis=0, ddof=1), 1.0)
        return (1.0 - lam) * z[:, 0] + lam * z[:, 1]
    if method == "minmax-sum":
        sims = index.similarities(allids, np.stack([qi, qt]))
        return compose.minmax_sum(compose.minmax(sims.T[:1]), compose.minmax(sims.T[1:]), lam)[0]
    plan = _method_plan(index, method, qi, qt, lam, options)
    return plan.score(_exact_sims(index, allids, plan))


def search_method(index: "ArchiveIndex", method: str, image_feat, text_feat, lam: float = 0.5, k: int = 20,
                  mode: str = "exact", **options) -> SearchResult:
    """Top-k of any composition method over the archive, exact, by the strategy of :data:`METHOD_STRATEGIES`
    (``info["strategy"]`` says which was used; ``mode="scan"`` forces the brute force).

    λ is the method's weight (text weight of weicom / zscore-sum / minmax-sum / rrf; Slerp's and feature-sum's
    α; Harris's λ). options: ``rrf_k`` (60); Harris: ``shift``, ``scale`` (BASIC's normalisation),
    ``image_mean``, ``text_mean``, ``projection`` (BASIC's centring and contrastive PCA). ``scores`` in the
    result are the method's scores (higher = better); s_img / s_txt the raw cosine similarities.
    """
    if method not in METHOD_STRATEGIES:
        raise DataError(f"method {method!r} has no archive-scale search; choose from {', '.join(METHOD_STRATEGIES)}")
    if mode not in ("exact", "scan"):
        raise DataError(f"search_method mode must be 'exact' or 'scan', got {mode!r}")
    lam = _lam_of(lam)
    k = int(k)
    if k < 1:
        raise DataError(f"k must be ≥ 1, got {k}")
    k = min(k, index.n)
    if method == "weicom":
        res = index.search(image_feat, text_feat, lam=lam, k=k, mode=mode)
        res.info["strategy"] = "threshold" if mode == "exact" else "scan"
        res.info["method"] = method
        return res
    qi, qt = _as_query(image_feat, index.d, "image"), _as_query(text_feat, index.d, "text")
    if qi is None or qt is None:
        raise DataError(f"method {method!r} needs both an image and a text query")
    info = {"method": method, "lam": lam, "k": k, "mode": mode}
    t0 = time.perf_counter()
    strategy = METHOD_STRATEGIES[method] if mode == "exact" else "scan"
    if strategy == "scan":
        s = method_scan(index, method, qi, qt, lam, **options)
        ids = np.arange(index.n)
        top = _stable_top(-s, ids, k)
        ids, scores = ids[top], s[top]
    elif strategy in ("single-vector", "linear"):
        ids, scores = _single_vector_topk(index, _method_plan(index, method, qi, qt, lam, options), k, info)
    elif strategy == "threshold":
        plan = _method_plan(index, method, qi, qt, lam, options)   # minmax-sum: exact archive min/max first
        ids, scores, _ = _threshold_topk(index, plan, k, info)
    else:
        plan = _Plan(np.stack([qi, qt]).astype(np.float64), np.zeros(2), None)
        ids, scores = _rrf_topk(index, plan, k, lam, int(options.get("rrf_k", 60)), info)
    info["strategy"] = strategy
    info["seconds"] = time.perf_counter() - t0
    raw = index.similarities(ids, np.stack([qi, qt]))
    return SearchResult(ids, scores, raw[:, 0], raw[:, 1], None if index.paths is None else index.paths[ids],
                        None if index.labels is None else index.labels[ids], info)

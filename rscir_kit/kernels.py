"""The engine's compiled (numba) kernels: the sort-free AP / P@k / R@k block kernel, the fused score rows
(fusion ops), and the stable top-n selection. Their metric definitions are those of :mod:`rscir_kit.metrics`
(ties by archive order), which tests check against its 1-D references.

They live apart from the rest so that numba's on-disk cache (``cache=True``, keyed by this file's
modification time) is compiled once and survives edits to every other module.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit
from numba.core import cgutils
from numba.core import types as nb_types
from numba.extending import intrinsic

# ----------------------------------------------------------------------------- compiled sort-free kernel
# AP needs, for each positive p, only its rank r_p = #{j: f_j > f_p} + #{j < p: f_j = f_p} (descending
# score, ties by archive order). Per (pair, method, λ) the kernel fuses one score row f (N) from rows held
# in cache, orders the P positives (P log P), and finds every r_p in one pass over f: a monotone bucket
# function over [min, max] of the positives' scores sends items below the lowest positive to bucket 0,
# items above the highest to bucket K+1 and the others to 1..K; counts per bucket give, for each
# positive, the items in higher buckets (all strictly greater, by monotonicity; K grows with the number of
# candidates, so that few share a bucket with a positive); only items sharing a
# bucket with a positive are compared exactly (a binary search among that bucket's positives). No sort
# of the archive, no (B, N) temporaries.

#: Fusion ops of :func:`block_metrics` (a = image-side row, b = text-side row, all float32):
#: a, b, mean ((a+b)/2), add, mul, min, negfma (-(a + w0·b), one rounding), lin (w0·a + w1·b, each
#: product rounded), row (a precomputed fused row), sorted_a / sorted_b (rank a / b through its row
#: sorted once and shared by every pair using it), harris (BASIC's a·b − w0·(a+b)², rounded as torch's
#: ``s = a+b; s.mul_(s).mul_(-w0).addcmul_(a, b)``: fl(fl(s·s)·fl(−w0)), then a·b added with one rounding),
#: pairlin (per-pair weights: fl(a·w0) + b·w1 with one rounding, as torch's ``a.mul_(w0).addcmul_(b, w1)`` — Slerp).
_BUCKETS_PER_POSITIVE = 4
_CANDIDATES_PER_BUCKET = 2  # at least one bucket per this many candidates (up to _MAX_BUCKETS)
_MAX_BUCKETS = 1 << 16
FUSIONS = ("a", "b", "mean", "add", "mul", "min", "negfma", "lin", "row", "sorted_a", "sorted_b", "harris",
           "pairlin")
_OP = {name: i for i, name in enumerate(FUSIONS)}


@intrinsic
def _fma32(typingctx, a, b, c):
    """fl32(a·b + c) with one rounding (llvm.fma), as torch's ``add(c, b, alpha=a)`` on CPU and CUDA."""
    sig = nb_types.float32(nb_types.float32, nb_types.float32, nb_types.float32)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


#: Vector width of the candidate pass; with AVX-512 it compacts 16 scores per instruction (vcompressps),
#: elsewhere a scalar loop does the same (LLVM would only emulate the compress-store lane by lane). Both paths
#: are compiled; ``simd`` arguments choose (default: this host's), so tests run each against the slow loop.
_LANES = 16
SIMD_COMPRESS = "avx512f" in llvm_binding.get_host_cpu_features().flatten()


def _splat(builder, value, vector_type):
    undef = ir.Constant(vector_type, ir.Undefined)
    v = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(ir.IntType(32), _LANES), [0] * _LANES))


@intrinsic
def _compress_lanes(typingctx, f, j0, lo, hi, cand, candv, m):
    """Append the indices (int32) / values of f[j0:j0+16] that lie in [lo, hi] to cand[m:] / candv[m:], in
    order (llvm.masked.compressstore); returns (new m, how many of the 16 are > hi)."""
    sig = nb_types.UniTuple(nb_types.int64, 2)(f, j0, lo, hi, cand, candv, m)

    def codegen(context, builder, signature, args):
        fa, j0v, lov, hiv, ca, cva, mv = args
        fty, _, _, _, caty, cvty, _ = signature.args
        fdata = context.make_array(fty)(context, builder, fa).data
        cdata = context.make_array(caty)(context, builder, ca).data
        cvdata = context.make_array(cvty)(context, builder, cva).data
        f32, i32, i16, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(16), ir.IntType(64)
        vf, vi, vm = ir.VectorType(f32, _LANES), ir.VectorType(i32, _LANES), ir.VectorType(ir.IntType(1), _LANES)
        v = builder.load(builder.bitcast(builder.gep(fdata, [j0v]), vf.as_pointer()), align=4)
        lo_v, hi_v = _splat(builder, lov, vf), _splat(builder, hiv, vf)
        inside = builder.and_(builder.fcmp_ordered(">=", v, lo_v), builder.fcmp_ordered("<=", v, hi_v))
        above = builder.fcmp_ordered(">", v, hi_v)
        idx = builder.add(_splat(builder, builder.trunc(j0v, i32), vi), ir.Constant(vi, list(range(_LANES))))
        mod = builder.module
        store_f = cgutils.get_or_insert_function(
            mod, ir.FunctionType(ir.VoidType(), [vf, ir.PointerType(f32), vm]), "llvm.masked.compressstore.v16f32")
        store_i = cgutils.get_or_insert_function(
            mod, ir.FunctionType(ir.VoidType(), [vi, ir.PointerType(i32), vm]), "llvm.masked.compressstore.v16i32")
        builder.call(store_f, [v, builder.gep(cvdata, [mv]), inside])
        builder.call(store_i, [idx, builder.gep(cdata, [mv]), inside])
        popcount = cgutils.get_or_insert_function(mod, ir.FunctionType(i16, [i16]), "llvm.ctpop.i16")
        n_in = builder.zext(builder.call(popcount, [builder.bitcast(inside, i16)]), i64)
        n_above = builder.zext(builder.call(popcount, [builder.bitcast(above, i16)]), i64)
        return context.make_tuple(builder, signature.return_type, [builder.add(mv, n_in), n_above])

    return sig, codegen


@njit(cache=True, nogil=True)
def _candidates(f, lo, hi, cand, candv, simd):
    """The items of row ``f`` (N < 2**31) with lo <= f[j] <= hi, in archive order, into cand (int32 indices) /
    candv (values); returns (their number, the number of items > hi). ``simd``: 16 at a time by compress-stores."""
    n = f.shape[0]
    m = 0
    above = 0
    j = 0
    if simd:
        while j + _LANES <= n:
            m, g = _compress_lanes(f, j, lo, hi, cand, candv, m)
            above += g
            j += _LANES
    for j in range(j, n):
        v = f[j]
        cand[m] = j
        candv[m] = v
        m += 1 if (v >= lo and v <= hi) else 0  # integer selects: faster here than adding booleans
        above += 1 if v > hi else 0
    return m, above


@njit(cache=True, nogil=True)
def _fuse_row(op, a, b, w0, w1, out):
    n = a.shape[0]
    if op == 2:
        two = np.float32(2.0)
        for j in range(n):
            out[j] = (a[j] + b[j]) / two
    elif op == 3:
        for j in range(n):
            out[j] = a[j] + b[j]
    elif op == 4:
        for j in range(n):
            out[j] = a[j] * b[j]
    elif op == 5:
        for j in range(n):
            out[j] = min(a[j], b[j])
    elif op == 6:
        c = np.float32(w0)
        for j in range(n):
            out[j] = -_fma32(b[j], c, a[j])
    elif op == 12:  # pairlin
        c0, c1 = np.float32(w0), np.float32(w1)
        for j in range(n):
            out[j] = _fma32(b[j], c1, a[j] * c0)
    elif op == 11:  # harris
        c = np.float32(-w0)
        for j in range(n):
            s = a[j] + b[j]
            out[j] = _fma32(a[j], b[j], (s * s) * c)
    else:  # 7: lin
        c0, c1 = np.float32(w0), np.float32(w1)
        for j in range(n):
            out[j] = c0 * a[j] + c1 * b[j]


@njit(cache=True, nogil=True)
def _select_top(f, k, tv, ti):
    """The k best entries of row ``f`` into ``ti`` (indices) / ``tv`` (values), best first, ties by lower index:
    exactly the first k of a stable descending sort, in one pass (insertion into a sorted k-buffer)."""
    cnt = 0
    for j in range(f.shape[0]):
        v = f[j]
        if cnt < k:
            p = cnt
            cnt += 1
        elif v > tv[k - 1]:
            p = k - 1
        else:
            continue
        while p > 0 and tv[p - 1] < v:  # strict: an equal earlier entry stays ahead
            tv[p] = tv[p - 1]
            ti[p] = ti[p - 1]
            p -= 1
        tv[p] = v
        ti[p] = j


@njit(cache=True, parallel=True)
def block_topn(img, txt, rows, li, ti, op, slot_a, slot_b, w0, w1, pw, k, out, n_threads):
    """Each pair's k best archive indices under one ranking, best first, ties by lower index (a stable
    descending sort's first k), written into ``out`` (B, k) int64 — the ranking given as in
    :func:`block_metrics` (op, slots, weights, ``pw`` (B, 2) the per-pair weights of ``pairlin``; ``row``:
    ``rows[slot_a, i]``), fused row by row, never
    materialised as a (B, N) array and never sorted."""
    n_pairs_block = li.shape[0]
    n = img.shape[2] if img.shape[0] > 0 else (txt.shape[2] if txt.shape[0] > 0 else rows.shape[2])
    n_chunks = min(n_threads, max(1, n_pairs_block))
    for c in numba.prange(n_chunks):
        f = np.empty(n, np.float32)
        tv = np.empty(k, np.float32)
        for i in range(c * n_pairs_block // n_chunks, (c + 1) * n_pairs_block // n_chunks):
            if op == 0 or op == 9:
                row = img[slot_a, li[i]]
            elif op == 1 or op == 10:
                row = txt[slot_b, ti[i]]
            elif op == 8:
                row = rows[slot_a, i]
            elif op == 12:
                _fuse_row(op, img[slot_a, li[i]], txt[slot_b, ti[i]], np.float64(pw[i, 0]), np.float64(pw[i, 1]), f)
                row = f
            else:
                _fuse_row(op, img[slot_a, li[i]], txt[slot_b, ti[i]], w0, w1, f)
                row = f
            _select_top(row, k, tv, out[i])


@intrinsic
def _bits32(typingctx, v):
    """The IEEE bits of a float32 as uint32."""
    sig = nb_types.uint32(nb_types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@njit(cache=True, nogil=True)
def rank_keys(values, keys):
    """keys[k] (uint64) of the float32 ``values`` (n < 2**32): ascending keys = descending scores, ties by
    position — the score's bits mapped to a descending unsigned order (-0.0 as +0.0, as comparison has it),
    then k. Unique, so any sort of them is the stable descending order."""
    sign = np.uint32(0x80000000)
    for k in range(values.shape[0]):
        b = _bits32(values[k] + np.float32(0.0))  # -0.0 -> +0.0: equal scores must get equal keys
        asc = ~b if b & sign else b | sign  # order-preserving map float32 -> uint32
        keys[k] = (np.uint64(~asc) << np.uint64(32)) | np.uint64(k)


@njit(cache=True, nogil=True)
def _rank_order(f, pos, keys, sv, sidx):
    """The positives ``pos`` (ascending archive indices) in rank order — score descending, ties by archive
    order — into ``sidx`` (indices) / ``sv`` (scores): one sort of their :func:`rank_keys`."""
    p_count = pos.shape[0]
    for k in range(p_count):
        sv[k] = f[pos[k]]
    rank_keys(sv[:p_count], keys)
    keys[:p_count].sort()
    low = np.uint64(0xFFFFFFFF)
    for k in range(p_count):
        q = pos[np.int64(keys[k] & low)]
        sidx[k] = q
        sv[k] = f[q]


@njit(cache=True, nogil=True)
def _ranks_from_row(f, pos, keys, sv, sidx, ranks, pb, diff, cnt, first, last, cand, candv, bk, n_buckets, simd):
    """Ranks (0-based, rank order) of the positives ``pos`` (ascending archive indices) in row ``f``.

    Fills ``sv``/``sidx`` (positives' scores / indices in rank order) and ``ranks``; scratch arrays
    ``pb`` (P), ``diff`` (P+1), ``cnt`` / ``last`` (K+2), ``cand`` / ``candv`` / ``bk`` (N) are overwritten;
    ``first`` (K+2) must hold -1 everywhere and is left so. K = max(n_buckets, candidates // 2), at most
    ``cnt.shape[0] - 2``: rows whose positives span much of the archive get more buckets, so that few
    candidates share a bucket with a positive (the exact comparisons stay rare).
    """
    p_count = pos.shape[0]
    _rank_order(f, pos, keys, sv, sidx)
    hi = sv[0]
    lo = sv[p_count - 1]
    # pass 1 (vectorised): count the items above the highest positive, collect those in [lo, hi]
    m, above = _candidates(f, lo, hi, cand, candv, simd)
    K = min(max(n_buckets, m // _CANDIDATES_PER_BUCKET), cnt.shape[0] - 2)
    scale = 0.0
    if hi > lo:
        scale = K * (1.0 - 1e-6) / (np.float64(hi) - np.float64(lo))
    kf = np.float64(K)
    for b in range(K + 2):
        cnt[b] = 0
    for k in range(p_count + 1):
        diff[k] = 0
    lo64 = np.float64(lo)
    # bucket of each positive; rank order = non-increasing buckets, so each bucket's positives are a run
    for k in range(p_count):
        t = (np.float64(sv[k]) - lo64) * scale + 1.0
        pb[k] = int(min(max(t, 0.0), kf))
    # first[b] / last[b]: the run of bucket b in rank order
    for k in range(p_count):
        b = pb[k]
        if first[b] < 0:
            first[b] = k
        last[b] = k + 1
    # pass 2, over the candidates only: their buckets (same monotone formula; a vectorisable loop), bucket
    # counts, exact comparison within a positive's bucket
    for c in range(m):
        t = (np.float64(candv[c]) - lo64) * scale + 1.0
        bk[c] = int(min(max(t, 0.0), kf))
    for c in range(m):
        b = bk[c]
        cnt[b] += 1
        s = first[b]
        if s >= 0:
            v = candv[c]
            j = cand[c]
            e = last[b]
            # item j is ranked above the positive at q iff sv[q] < v or (sv[q] == v and sidx[q] > j);
            # that holds on a suffix [q, e) of the run: find q by binary search
            l, r = s, e
            while l < r:
                mid = (l + r) >> 1
                if sv[mid] < v or (sv[mid] == v and sidx[mid] > j):
                    r = mid
                else:
                    l = mid + 1
            if l < e:
                diff[l] += 1
                diff[e] -= 1
    b_cur = K + 1
    within = 0
    for k in range(p_count):
        while b_cur > pb[k]:
            above += cnt[b_cur]
            b_cur -= 1
        within += diff[k]
        ranks[k] = above + within
    for k in range(p_count):
        first[pb[k]] = -1
    return p_count


@njit(cache=True, nogil=True)
def _store(ranks, p_count, ks, ap_out, hits_out, m, pair):
    if p_count == 0:
        ap_out[m, pair] = np.nan
        for i in range(ks.shape[0]):
            hits_out[m, i, pair] = 0
        return
    total = 0.0
    for k in range(p_count):
        total += (k + 1.0) / (ranks[k] + 1.0)
    ap_out[m, pair] = total / p_count
    for i in range(ks.shape[0]):
        h = 0
        for k in range(p_count):
            if ranks[k] < ks[i]:
                h += 1
        hits_out[m, i, pair] = h


@njit(cache=True, parallel=True)
def block_metrics(img, txt, rows, li, ti, pair_ids, pset, pos_ptr, pos_idx,
                  ops, slot_a, slot_b, w, pw, ks, ap_out, hits_out, n_threads, simd):
    """AP and hits@k of every (pair, ranking) of one block, the rankings of a pair back to back.

    img (S_i, C, N) / txt (S_t, T, N): the block's image-side / text-side input rows (raw, normalised,
    ...; float32); rows (S_r, B, N): precomputed fused rows (op ``row``); ops ``sorted_a`` / ``sorted_b``
    rank a / b by the same sort-free pass (the shared sorts are the torch path's).
    li / ti (B,): each pair's image / text row; pair_ids (B,): its index in the outputs; pset (B,): its
    positive set; pos_ptr, pos_idx: positive set k, ascending, is ``pos_idx[pos_ptr[k]:pos_ptr[k+1]]``.
    ops / slot_a / slot_b (M,) and w (M, 2): ranking m = fusion ``FUSIONS[ops[m]]`` of img[slot_a[m]] and
    txt[slot_b[m]] with weights w[m] (``pairlin``: pw[m, i] (M, B, 2), pair i's own). Writes ap_out[m, pair] (NaN without positives) and
    hits_out[m, i, pair] = number of positives in the top ks[i]. n_threads: chunks run in parallel. simd:
    collect candidates with compress-stores (:data:`SIMD_COMPRESS` on this host).
    """
    n_pairs_block = li.shape[0]
    n = img.shape[2] if img.shape[0] > 0 else (txt.shape[2] if txt.shape[0] > 0 else rows.shape[2])
    n_chunks = min(n_threads, max(1, n_pairs_block))
    max_p = 1
    for i in range(n_pairs_block):
        max_p = max(max_p, pos_ptr[pset[i] + 1] - pos_ptr[pset[i]])
    for c in numba.prange(n_chunks):
        f = np.empty(n, np.float32)
        sv = np.empty(max_p, np.float32)
        keys = np.empty(max_p, np.uint64)
        sidx = np.empty(max_p, np.int64)
        ranks = np.empty(max_p, np.int64)
        pb = np.empty(max_p, np.int64)
        diff = np.empty(max_p + 1, np.int64)
        n_cnt = min(max(_BUCKETS_PER_POSITIVE * max_p, n // _CANDIDATES_PER_BUCKET), _MAX_BUCKETS) + 2
        cnt = np.empty(n_cnt, np.int64)
        last = np.empty(n_cnt, np.int64)
        first = np.full(n_cnt, -1, np.int64)
        cand = np.empty(n, np.int32)
        candv = np.empty(n, np.float32)
        bk = np.empty(n, np.int32)
        for i in range(c * n_pairs_block // n_chunks, (c + 1) * n_pairs_block // n_chunks):
            pair = pair_ids[i]
            pos = pos_idx[pos_ptr[pset[i]]:pos_ptr[pset[i] + 1]]
            p_count = pos.shape[0]
            n_buckets = min(_BUCKETS_PER_POSITIVE * p_count, _MAX_BUCKETS) if p_count > 0 else 1
            for m in range(ops.shape[0]):
                op = ops[m]
                if p_count == 0:
                    _store(ranks, 0, ks, ap_out, hits_out, m, pair)
                    continue
                if op == 0 or op == 9:
                    row = img[slot_a[m], li[i]]
                elif op == 1 or op == 10:
                    row = txt[slot_b[m], ti[i]]
                elif op == 8:
                    row = rows[slot_a[m], i]
                else:
                    w0, w1 = w[m, 0], w[m, 1]
                    if op == 12:
                        w0, w1 = np.float64(pw[m, i, 0]), np.float64(pw[m, i, 1])
                    _fuse_row(op, img[slot_a[m], li[i]], txt[slot_b[m], ti[i]], w0, w1, f)
                    row = f
                _ranks_from_row(row, pos, keys, sv, sidx, ranks, pb, diff, cnt, first, last, cand, candv, bk, n_buckets, simd)
                _store(ranks, p_count, ks, ap_out, hits_out, m, pair)


@njit(cache=True, parallel=True)
def weighted_row_sum(S, idx, w, out, n_threads):
    """out[b] = Σ_j w[b, j]·S[idx[b, j]] in float32, j ascending, entries with idx < 0 skipped (0 if none).

    S (C, N) float32 rows; idx (B, m) int64; w (B, m) float32; out (B, N) float32. Pairs in n_threads chunks.
    """
    n_pairs, n = idx.shape[0], S.shape[1]
    n_chunks = min(n_threads, max(1, n_pairs))
    for c in numba.prange(n_chunks):
        for b in range(c * n_pairs // n_chunks, (c + 1) * n_pairs // n_chunks):
            o = out[b]
            o[:] = 0.0
            for j in range(idx.shape[1]):
                r = idx[b, j]
                if r < 0:
                    continue
                wj = w[b, j]
                s = S[r]
                for i in range(n):
                    o[i] += wj * s[i]

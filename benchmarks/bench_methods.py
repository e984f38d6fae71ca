"""Time every composition method of the registry beside WeiCom, in one run (ratios: the machine is shared).

1. **Paper scale**: the synthetic PatternCom of bench_engine (38 × 800 = 30,400 images, d = 768, ~22k pairs),
   each method over the same 11 λ (methods without λ: one run), timed per λ, as a ratio to WeiCom's per-λ time
   measured in the same process (target: no method above 3×).
2. **UCM-Com full sweep** (when the offline data and the stand-in are present): every method × 11 λ on the
   8,000 pairs, with features from ``--ucm-features`` or the notebooks' cache.
3. **Archive index**: per-query latency of each method's exact archive-scale search (``ArchiveIndex.search_method``)
   on a synthetic archive (bench_index's generator), beside the brute-force scan, with the strategy used.

FreeDom needs a text encoder for its "word text" queries; on synthetic data a deterministic hashing encoder
stands in (plumbing: the timing is real, the mAP is not). The load average is recorded before and after.

    python benchmarks/bench_methods.py [--index-size 200000] [--skip-ucm] [--out benchmarks/results/bench_methods.md]

UCM-Com features come from the notebooks' cache (``$RSCIR_CACHE``; extracted there once if absent).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from rscir_kit.datasets.patterncom import PatternCom  # noqa: E402
from rscir_kit.engine import evaluate, summarize  # noqa: E402

LAMBDAS = [round(0.1 * k, 1) for k in range(11)]
HARRIS_LAMBDAS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]
METHODS = ["weicom", "zscore-sum", "minmax-sum", "rrf", "harris", "feature-sum", "slerp", "freedom", "weicom+qe",
           "slerp+qe"]


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class CachingEncoder:
    """Remembers every text it has embedded: FreeDom's second run times the retrieval without the model's
    forward passes over its "word text" strings (the first run includes them)."""

    def __init__(self, encoder):
        self.encoder, self.meta, self.cache = encoder, encoder.meta, {}

    def encode_texts(self, texts, batch_size=256):
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            for t, e in zip(todo, self.encoder.encode_texts(todo)):
                self.cache[t] = np.asarray(e, dtype=np.float32)
        return np.stack([self.cache[t] for t in texts])


class HashEncoder:
    """Deterministic text encoder for synthetic benchmarks: a string's vector is its known text vector (when
    the string contains one) plus a hashed random direction. Plumbing only."""

    def __init__(self, texts, meta):
        self.base = list(zip(texts.texts, np.asarray(texts.feats, np.float64)))
        self.meta = dict(meta)
        self.d = texts.feats.shape[1]

    def encode_texts(self, texts, batch_size=256):
        out = []
        for s in texts:
            v = np.random.default_rng(int(hashlib.sha256(s.encode()).hexdigest()[:8], 16)).standard_normal(self.d)
            v /= np.linalg.norm(v)
            for t, e in self.base:
                if t in s:
                    v = v + 2.0 * e
            out.append(v / np.linalg.norm(v))
        return np.stack(out).astype(np.float32)


def time_methods(queries, archive, texts, encoder, lines, label, lambdas=LAMBDAS):
    rows = []
    cached = CachingEncoder(encoder)
    for m in METHODS + ["freedom (texts encoded)"]:
        if m.startswith("freedom"):
            lams = []
        elif m == "harris":  # Harris's own λ range (BASIC's default 0.1), as many values as the others
            lams = HARRIS_LAMBDAS if len(lambdas) == len(LAMBDAS) else [0.05, 0.1, 0.2, 0.3, 0.4][:len(lambdas)]
        else:
            lams = list(lambdas)
        src = cached if m.startswith("freedom") else texts
        m_eval = "freedom" if m.startswith("freedom") else m
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pp = evaluate(queries, archive, src, methods=[m_eval], lambdas=lams, progress=False)
        sec = time.perf_counter() - t0
        per = sec / max(1, len(lams))
        best = summarize(pp, by="attribute" if "attribute" in queries.table.columns else None)
        best_map = float(best[best.iloc[:, 2] == "avg"]["map"].max()) if "avg" in set(best.iloc[:, 2]) \
            else float(best["map"].max())
        rows.append((m, len(lams) or 1, sec, per, best_map))
    wc = rows[0][3]
    lines.append(f"\n### {label}\n")
    lines.append("| method | λ values | total s | s per λ | × WeiCom per λ | best mAP (%) |")
    lines.append("|---|---|---|---|---|---|")
    for m, nl, sec, per, bm in rows:
        lines.append(f"| {m} | {nl} | {sec:.1f} | {per:.2f} | {per / wc:.2f} | {bm:.1f} |")
    worst = max(r[3] / wc for r in rows if r[0] != "freedom")
    lines.append("\n'freedom' includes the text encoder's forward passes over its 'word + text' strings; 'freedom (texts "
                 "encoded)' is the same evaluation with those embeddings cached (the retrieval itself).")
    lines.append(f"\nslowest method per λ: {worst:.2f}× WeiCom (target ≤ 3×: {'met' if worst <= 3 else 'NOT met'})")
    print("\n".join(lines[-len(rows) - 4:]), flush=True)
    return rows


def paper_scale(lines, dim, lambdas):
    from bench_engine import make_benchmark

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        archive, texts = make_benchmark(Path(tmp), dim)
        queries = PatternCom(tmp).queries(archive.paths)
        lines.append(f"synthetic PatternCom: archive {len(archive.paths)} × d={dim}, {len(queries)} pairs, "
                     f"{queries.table['query_path'].nunique()} query images, {queries.table['text'].nunique()} texts "
                     f"(built in {time.perf_counter() - t0:.1f} s)")
        time_methods(queries, archive, texts, HashEncoder(texts, archive.meta), lines,
                     f"paper scale (synthetic PatternCom, 30,400 × {dim}), λ ∈ {lambdas}", lambdas)


def ucm_sweep(lines):
    from rscir_kit import nbutils
    from rscir_kit.encoders import load_encoder

    params = nbutils.setup("bench_methods", dataset="ucmcom", lambdas=LAMBDAS, output_dir=tempfile.mkdtemp())
    enc = load_encoder(params.model, device="cpu")
    bench = nbutils.load_benchmark(params, encoder=enc, progress=False)
    lines.append(f"\nUCM-Com: {len(bench.archive.paths)} images, {len(bench.queries)} pairs, model {params.model} "
                 f"(offline stand-in: timings only, not a paper model)")
    time_methods(bench.queries, bench.archive, bench.texts, enc, lines, "UCM-Com full sweep (stand-in)")


def index_timings(lines, n, d, n_queries):
    from bench_index import Synthetic

    from rscir_kit.index import METHOD_STRATEGIES, ArchiveIndex

    syn = Synthetic(d=d)
    with tempfile.TemporaryDirectory() as tmp:
        archive = syn.write_archive(n, Path(tmp) / "archive.npy")
        t0 = time.perf_counter()
        idx = ArchiveIndex.build(Path(tmp) / "archive.npy", Path(tmp) / "idx", fast=None)
        build = time.perf_counter() - t0
        qi, qt = syn.queries(n_queries)
        idx.search_method("average", qi[0], qt[0])  # warm the memory map
        lines.append(f"\n### archive index: exact top-20 per method ({n:,} × {d} synthetic, float16 store, "
                     f"build {build:.1f} s, {n_queries} composed queries, median ms)\n")
        lines.append("| method | λ | strategy | exact search ms | brute-force scan ms | speed-up | fallbacks | same top-k |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for m in METHOD_STRATEGIES:
            lam = 0.1 if m == "harris" else 0.5
            te, ts, same, fb, strat = [], [], 0, 0, set()
            for j in range(n_queries):
                t = time.perf_counter()
                r = idx.search_method(m, qi[j], qt[j], lam=lam, k=20)
                te.append(time.perf_counter() - t)
                t = time.perf_counter()
                s = idx.search_method(m, qi[j], qt[j], lam=lam, k=20, mode="scan")
                ts.append(time.perf_counter() - t)
                same += int(np.array_equal(r.indices, s.indices))
                fb += int("fallback" in r.info)
                strat.add(r.info["strategy"])
            e, s_ = 1000 * np.median(te), 1000 * np.median(ts)
            lines.append(f"| {m} | {lam:g} | {'/'.join(sorted(strat))} | {e:.1f} | {s_:.1f} | {s_ / e:.1f}× | "
                         f"{fb}/{n_queries} | {same}/{n_queries} |")
        del archive
    print("\n".join(lines[-len(METHOD_STRATEGIES) - 3:]), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--index-size", type=int, default=200_000)
    ap.add_argument("--index-dim", type=int, default=512)
    ap.add_argument("--index-queries", type=int, default=10)
    ap.add_argument("--paper-lambdas", default="0.3,0.5,0.7",
                    help="λ values timed at paper scale (comma-separated; the ratio is per λ)")
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("--skip-ucm", action="store_true")
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_methods.md"))
    args = ap.parse_args()
    lines = ["# bench_methods.py — every registry method beside WeiCom, one run", "",
             f"`python benchmarks/bench_methods.py` on {platform.node() or 'this machine'} "
             f"({os.cpu_count()} cores, torch threads {torch.get_num_threads()}), {time.strftime('%Y-%m-%d %H:%M')}; "
             f"load average before: {_load()} (shared machine: compare the ratios, not the seconds)", ""]
    t0 = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every section: a long run on a loaded machine keeps what it measured
        out.write_text("\n".join(lines + [f"\nload average now: {_load()}; {time.perf_counter() - t0:.0f} s so far"])
                       + "\n", encoding="utf-8")

    if not args.skip_ucm:
        try:
            ucm_sweep(lines)  # features from the notebooks' cache ($RSCIR_CACHE)
        except Exception as exc:  # data or stand-in absent: say so in the results
            lines.append(f"\nUCM-Com sweep skipped: {type(exc).__name__}: {exc}")
        save()
    if not args.skip_index:
        index_timings(lines, args.index_size, args.index_dim, args.index_queries)
        save()
    if not args.skip_paper:
        paper_scale(lines, args.dim, [float(x) for x in args.paper_lambdas.split(",")])
        save()
    print("->", out)


if __name__ == "__main__":
    main()

"""Benchmark of archive-scale composed search (rscir_kit.index) on synthetic archives.

For each archive size: generate unit vectors with CLIP-like structure (on disk, float16), build the index,
then run the same composed queries through the two-pass brute-force scan (the reference) and the index's
exact and fast modes **in the same process**, so speed ratios are meaningful even on a shared, noisy machine.

Reports per mode: latency per query (median, p95), exactness against the scan (fraction of queries whose
top-k is identical, mean and minimum recall@k), list depth and candidates scored, build time, disk and memory.

    python benchmarks/bench_index.py                        # 100k and 1M, d=512, 40 queries, k=100, λ=0.5
    python benchmarks/bench_index.py --sizes 10M --queries 20 --scan-queries 5
    python benchmarks/bench_index.py --sizes 20k --queries 5  # smoke run

Synthetic structure (documented so the numbers can be judged): a shared image direction (anisotropy, mean
cosine between random images ≈ 0.4), 2000 classes with Zipf-distributed sizes (same-class cosine ≈ 0.7), a
96-dimensional within-class subspace with a decaying spectrum, isotropic noise. Image queries are fresh samples
of a class (not in the archive); text queries live in their own cone (modality gap, a text direction) and point
at another class plus an "attribute" direction, as a composed query's text would.
Results go to benchmarks/results/bench_index_<sizes>.csv and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rscir_kit.index import ArchiveIndex  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


# ----------------------------------------------------------------------------------------- synthetic data
class Synthetic:
    def __init__(self, d: int = 512, n_classes: int = 2000, rank: int = 96, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.d, self.seed = d, seed
        self.img_dir = _unit(rng.standard_normal(d))
        self.txt_dir = _unit(rng.standard_normal(d))
        self.centres = _unit(rng.standard_normal((n_classes, d)))
        w = 1.0 / np.arange(1, n_classes + 1) ** 1.1
        self.class_p = w / w.sum()
        basis, _ = np.linalg.qr(rng.standard_normal((d, rank)))
        self.basis = basis.T.astype(np.float32)                         # (rank, d) orthonormal rows
        spec = np.arange(1, rank + 1) ** -0.7
        self.spec = (spec / np.linalg.norm(spec)).astype(np.float32)  # within-class spread spectrum
        self.attrs = _unit(rng.standard_normal((64, d)))

    def images(self, n: int, rng, classes=None, attrs=None) -> np.ndarray:
        c = rng.choice(len(self.centres), size=n, p=self.class_p) if classes is None else np.asarray(classes)
        a = rng.integers(0, len(self.attrs), n) if attrs is None else np.asarray(attrs)
        x = (0.6 * self.img_dir + 0.5 * self.centres[c] + 0.3 * self.attrs[a]).astype(np.float32)
        x += 0.45 * (rng.standard_normal((n, len(self.spec)), dtype=np.float32) * self.spec) @ self.basis
        x += (0.25 / np.sqrt(self.d)) * rng.standard_normal((n, self.d), dtype=np.float32)
        return _unit(x).astype(np.float32)

    def texts(self, n: int, rng, classes, attrs) -> np.ndarray:
        t = 0.6 * self.txt_dir + 0.3 * self.centres[np.asarray(classes)] + 0.5 * self.attrs[np.asarray(attrs)]
        t += (0.3 / np.sqrt(self.d)) * rng.standard_normal((n, self.d))
        return _unit(t).astype(np.float32)

    def write_archive(self, n: int, path: Path, chunk: int = 200_000) -> np.ndarray:
        """(n, d) float16 archive as a .npy memmap (reused when it exists with the same shape)."""
        if path.is_file():
            arr = np.load(path, mmap_mode="r")
            if arr.shape == (n, self.d) and arr.dtype == np.float16:
                return arr
        tmp = path.with_suffix(".partial.npy")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, self.d))
        for s in range(0, n, chunk):
            rng = np.random.default_rng([self.seed, s])
            arr[s:s + chunk] = self.images(min(chunk, n - s), rng)
        arr.flush()
        del arr
        os.replace(tmp, path)
        return np.load(path, mmap_mode="r")

    def queries(self, q: int, seed: int = 123, kind: str = "composed"):
        """q (image, text) query pairs. composed: an image of class c with attribute u + a text naming class c
        and another attribute v (the target: class c with v, as in PatternCom); unrelated: the text names a
        random class and attribute (the two similarities nearly independent: the hard case for the lists)."""
        rng = np.random.default_rng(seed)
        src = rng.choice(len(self.centres), size=q, p=self.class_p)
        u = rng.integers(0, len(self.attrs), q)
        v = (u + rng.integers(1, len(self.attrs), q)) % len(self.attrs)
        tgt = src if kind == "composed" else rng.choice(len(self.centres), size=q, p=self.class_p)
        return self.images(q, rng, src, u), self.texts(q, rng, tgt, v)


def _unit(x):
    x = np.asarray(x, dtype=np.float64 if np.asarray(x).dtype == np.float64 else np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------- measurement
def _rss_mb() -> dict:
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS", "RssAnon", "RssFile", "VmHWM")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) / 1024
    except OSError:
        pass
    return out


def _dir_mb(path: Path) -> dict:
    return {f.name: f.stat().st_size / 2 ** 20 for f in sorted(path.iterdir()) if f.is_file()}


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "km" else s) * mult)


def run_size(n: int, args, syn: Synthetic, rows: list, log) -> None:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    label = f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"
    t0 = time.perf_counter()
    archive = syn.write_archive(n, work / f"archive_{label}_d{syn.d}.npy")
    gen_s = time.perf_counter() - t0
    log(f"[{label}] archive {archive.shape} float16 on disk ({gen_s:.1f}s to generate/open); load {_load()}")
    idx_dir = work / f"index_{label}_d{syn.d}"
    fast = args.fast if args.fast else "auto"
    reuse = (idx_dir / "meta.json").is_file() and args.reuse_index
    if reuse:
        idx = ArchiveIndex.load(idx_dir)
        log(f"[{label}] reusing {idx}")
    else:
        t0 = time.perf_counter()
        idx = ArchiveIndex.build(archive, idx_dir, fast=None if fast == "none" else fast, nprobe=args.nprobe,
                                 overwrite=True, progress=args.progress)
        log(f"[{label}] built in {time.perf_counter() - t0:.1f}s: {idx.meta['build']}")
    build = idx.meta["build"]
    del archive
    idx = ArchiveIndex.load(idx_dir)          # fresh, memory-mapped
    mem_loaded = _rss_mb()
    disk = _dir_mb(idx_dir)
    log(f"[{label}] disk MB {json.dumps({k: round(v, 1) for k, v in disk.items()})}; RSS after load {mem_loaded}")

    qi, qt = syn.queries(args.queries, seed=args.seed, kind=args.kind)
    lam, k = args.lam, args.k
    n_scan = min(args.scan_queries or args.queries, args.queries)
    plans = [("scan", None)] + [("exact", None)] + [("fast", p) for p in args.depth if idx.fast is not None]
    # warm-up (page cache, FAISS threads, imports); not timed
    for mode, p in plans:
        idx.search(qi[0], qt[0], lam=lam, k=k, mode=mode, depth=p)
    results = {plan: [] for plan in plans}
    for j in range(args.queries):
        for mode, p in plans:
            if mode == "scan" and j >= n_scan:
                continue
            t = time.perf_counter()
            res = idx.search(qi[j], qt[j], lam=lam, k=k, mode=mode, depth=p)
            results[(mode, p)].append((time.perf_counter() - t, res))
        if (j + 1) % max(1, args.queries // 5) == 0:
            log(f"[{label}]   {j + 1}/{args.queries} queries, load {_load()}")
    ref = [r for _, r in results[("scan", None)]]
    scan_ms = np.median([t for t, _ in results[("scan", None)]]) * 1000
    for (mode, p), runs in results.items():
        ms = np.array([t for t, _ in runs]) * 1000
        ident, recall = [], []
        for j, (_, r) in enumerate(runs):
            if j < len(ref):
                ident.append(np.array_equal(r.indices, ref[j].indices))
                recall.append(len(np.intersect1d(r.indices, ref[j].indices)) / len(ref[j].indices))
        info = [r.info for _, r in runs]
        rows.append({
            "N": n, "d": syn.d, "k": k, "lam": lam, "kind": args.kind, "mode": mode, "depth": p if p is not None else "",
            "fast_index": idx.meta.get("fast") if mode == "fast" else "",
            "queries": len(runs), "compared": len(ident),
            "median_ms": round(float(np.median(ms)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "speedup_vs_scan": round(float(scan_ms / np.median(ms)), 1),
            "identical_topk": round(float(np.mean(ident)), 4) if ident else "",
            f"recall@{k}_mean": round(float(np.mean(recall)), 5) if recall else "",
            f"recall@{k}_min": round(float(np.min(recall)), 4) if recall else "",
            "median_depth": int(np.median([i.get("read_depth", n) for i in info])),
            "median_candidates": int(np.median([i.get("candidates", n) for i in info])),
            "fallbacks": int(sum("fallback" in i for i in info)),
            "build_total_s": round(build.get("total_s", float("nan")), 1),
            "build_stats_s": round(build.get("stats_s", float("nan")), 1),
            "build_fast_s": round(build.get("fast_s", float("nan")), 1) if "fast_s" in build else "",
            "disk_mb": round(sum(disk.values()), 1),
            "rss_after_load_mb": round(mem_loaded.get("VmRSS", float("nan")), 1),
            "rss_anon_mb": round(mem_loaded.get("RssAnon", float("nan")), 1),
        })
        r = rows[-1]
        log(f"[{label}] {mode:5s} {str(p or ''):>4s}: median {r['median_ms']:8.2f} ms  p95 {r['p95_ms']:8.2f} ms  "
            f"×{r['speedup_vs_scan']:<6} identical {r['identical_topk']}  recall {r[f'recall@{k}_mean']} "
            f"(min {r[f'recall@{k}_min']})  depth {r['median_depth']}  cand {r['median_candidates']}  "
            f"fallbacks {r['fallbacks']}")
    del idx


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100k,1M", help="comma-separated archive sizes (e.g. 100k,1M,10M)")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--scan-queries", type=int, default=None, help="queries also run through the scan (default all)")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--depth", default="1000,2000,4000", help="fast-mode list depths to measure (comma-separated)")
    ap.add_argument("--nprobe", type=int, default=64, help="IVF probes (only for an IVF --fast index)")
    ap.add_argument("--fast", default=None, help="fast index factory (default: auto)")
    ap.add_argument("--workdir", default=os.environ.get("RSCIR_BENCH_DIR", "/tmp/rscir_bench"))
    ap.add_argument("--reuse-index", action="store_true", help="reuse an index already built in --workdir")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--kind", default="composed", choices=["composed", "unrelated"],
                    help="query pairs: composed (image + text about the same class, another attribute) or "
                         "unrelated (text about a random class: the two similarities nearly independent)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--tag", default=None, help="suffix of the result files (default: the sizes)")
    args = ap.parse_args(argv)
    args.depth = [int(p) for p in str(args.depth).split(",") if p]
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    syn = Synthetic(d=args.d)
    lines = []

    def log(msg):
        print(msg, flush=True)
        lines.append(msg)

    import faiss

    env = (f"{platform.node()} | {os.cpu_count()} CPUs | faiss {faiss.__version__} ({faiss.omp_get_max_threads()} "
           f"threads) | numpy {np.__version__} | load average at start {_load()}")
    log(env)
    rows: list[dict] = []
    t_all = time.perf_counter()
    for n in sizes:
        run_size(n, args, syn, rows, log)
    log(f"total {time.perf_counter() - t_all:.0f}s; load average at end {_load()}; peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    import pandas as pd

    df = pd.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = args.tag or args.sizes.replace(",", "_")
    df.to_csv(RESULTS / f"bench_index_{tag}.csv", index=False)
    cols = ["N", "mode", "depth", "median_ms", "p95_ms", "speedup_vs_scan", "identical_topk", f"recall@{args.k}_mean",
            f"recall@{args.k}_min", "median_depth", "median_candidates", "fallbacks", "compared", "build_total_s",
            "disk_mb", "rss_after_load_mb"]
    table = df[cols].to_markdown(index=False) if _has_tabulate() else df[cols].to_string(index=False)
    print("\n" + table)
    md = [f"# bench_index ({time.strftime('%Y-%m-%d %H:%M')})", "", f"`{' '.join(sys.argv)}`", "", env, "",
          f"k={args.k}, λ={args.lam}, d={args.d}, query kind {args.kind}, {args.queries} queries per size (scan on the first "
          f"{args.scan_queries or args.queries}); identical/recall are against the two-pass scan of the same run.",
          "", table, "", "## log", "", "```", *lines, "```", ""]
    (RESULTS / f"bench_index_{tag}.md").write_text("\n".join(md))
    print(f"wrote {RESULTS / f'bench_index_{tag}.csv'} and .md")
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())

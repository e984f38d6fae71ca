"""Time the evaluation engine on a synthetic PatternCom at the paper's scale: the machine's floor, the
sort-based engine it replaced, the per-query loop, peak memory and exactness — all from one run.

Archive: 38 classes × 800 unit vectors (30,400), d=768, with class structure; six attributes with the
protocol's merged classes, 22,400 (query, prompt) pairs; 11 λ values plus the three baselines
(313,600 exact rankings). Reported:

- the machine, measured in the same run: GEMM GFLOP/s (torch, the engine's GEMM) and memory read
  bandwidth; the floor = the image-similarity GEMM (2·images·d·N flop) at that rate + reading every
  ranking's N float32 scores once at that bandwidth;
- the sort-based engine this kit shipped before (``rscir_kit/engine.py`` at REFERENCE_COMMIT, loaded from
  the git history into this process as ``rscir_kit_ref``), the new engine (compiled kernel), each in a
  fresh child process (same data, after a one-pair warm-up) with its peak RSS;
- the per-query loop (one pair at a time, float64, full argsort — the official evaluation's shape) on a
  sample, extrapolated;
- max |ΔAP| new vs old over all 313,600 APs, and against the float64 loop on the sample;
- the numba kernel's compile time (empty cache) and cache-load time, each in a fresh process.

Not a test: timings are noisy on a shared machine; compare the ratios, which come from one run.

    python benchmarks/bench_engine.py [--pairs-sample 100] [--out benchmarks/results/bench_engine.md]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch

from rscir_kit.datasets.patterncom import PatternCom
from rscir_kit.datasets.synthetic import synthetic_patterncom
from rscir_kit.engine import evaluate
from rscir_kit.metrics import average_precision
from rscir_kit.normalization import weicom_upper_tail

#: the last commit whose engine sorted every score row (the engine this one replaced)
REFERENCE_COMMIT = "e465fcd6db0062a6a35b34ba98aa05da2ab2db7d"
REPO = Path(__file__).resolve().parents[1]
LAMBDAS = [round(0.1 * k, 1) for k in range(11)]
METHODS = ["image", "text", "average", "weicom"]

# attribute -> {class_dir: values}; all images of each class are query rows
SPEC = {
    "color": {"airplane": ["white", "purple"], "nursing_home": ["white", "gray"],
              "crosswalk": ["white", "yellow", "blue"], "tennis_court": ["brown", "gray", "green", "red"]},
    "context": {"bridge": ["over water", "over road"], "overpass": ["over road", "over railway"]},
    "density": {"dense_residential": ["dense"], "sparse_residential": ["sparse"], "forest": ["dense", "sparse"],
                "christmas_tree_farm": ["dense", "sparse"]},
    "existence": {"ferry_terminal": ["with boats"], "harbor": ["without boats"], "parking_space": ["with cars"],
                  "parking_lot": ["without cars"]},
    "quantity": {"storage_tank": ["one", "two", "many"]},
    "shape": {"swimming_pool": ["rectangular", "oval", "kidney-shaped"], "river": ["curved", "straight"],
              "closed_road": ["straight"], "intersection": ["cross", "round"]},
}


def make_benchmark(root: Path, d: int, seed: int = 0):
    """The paper's scale: 38 × 800 images, every image of a SPEC class a query row (the shared builder)."""
    archive, texts, _ = synthetic_patterncom(root, images_per_class=800, rows_per_class=800, dim=d, spec=SPEC,
                                             seed=seed, noise=1.2, text_signal=0.5, model="synthetic-benchmark")
    return archive, texts


def load_reference_engine(commit: str = REFERENCE_COMMIT):
    """The sort-based engine of ``commit`` (engine, methods, metrics, normalization from ``git show``) as package
    ``rscir_kit_ref``; its other imports (config, errors, queries, features) are today's modules."""
    if "rscir_kit_ref.engine" in sys.modules:
        return sys.modules["rscir_kit_ref.engine"]
    pkg = types.ModuleType("rscir_kit_ref")
    pkg.__path__ = []
    sys.modules["rscir_kit_ref"] = pkg
    for name in ("config", "errors", "queries", "features"):
        sys.modules[f"rscir_kit_ref.{name}"] = importlib.import_module(f"rscir_kit.{name}")
    for name in ("normalization", "methods", "metrics", "engine"):
        proc = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:rscir_kit/{name}.py"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"bench_engine: cannot read the reference engine {commit[:7]} from the git history of "
                             f"{REPO} ({proc.stderr.strip()}); run it in a full clone (git fetch --unshallow)")
        src = proc.stdout
        mod = types.ModuleType(f"rscir_kit_ref.{name}")
        mod.__package__ = "rscir_kit_ref"
        mod.__file__ = f"{commit[:7]}:rscir_kit/{name}.py"
        sys.modules[mod.__name__] = mod
        exec(compile(src, mod.__file__, "exec"), mod.__dict__)  # noqa: S102 (our own history)
    return sys.modules["rscir_kit_ref.engine"]


def per_query_loop(queries, archive, texts, lambdas, sample):
    """The official evaluation shape: one pair at a time, every method, full argsort + AP.

    Computed in float64 with WeiCom in its upper-tail form (the exact ranking), so the comparison with the
    engine measures the engine's float32 error, not float32 saturation of Φ in the reference.
    """
    X = torch.from_numpy(archive.feats).double()
    index = {p: i for i, p in enumerate(archive.paths)}
    aps = []
    for i in sample:
        row = queries.table.iloc[i]
        q = X[index[row.query_path]]
        t = torch.from_numpy(texts.lookup([row.text])[0]).double()
        rel = np.zeros(len(X), bool)
        rel[queries.positives(i)] = True
        s_img, s_txt = X @ q, X @ t
        q_img, q_txt = weicom_upper_tail(s_img), weicom_upper_tail(s_txt)  # 1 - Φ(z)
        for s in [s_img, s_txt, (s_img + s_txt) / 2] + [-(lam * q_txt + (1 - lam) * q_img) for lam in lambdas]:
            order = torch.argsort(s, descending=True).numpy()
            hits = rel[order]
            aps.append(average_precision(s.numpy(), rel) if hits.any() else 0.0)
    return aps


# ----------------------------------------------------------------------------------------- machine
def gemm_gflops(d: int, n: int, reps: int = 3) -> float:
    """Best-of-``reps`` torch float32 GEMM rate on the engine's shape (1024 × d) @ (d × n)."""
    a, b = torch.randn(1024, d), torch.randn(n, d)
    out = torch.empty(1024, n)
    torch.matmul(a, b.T, out=out)
    best = min(_timed(lambda: torch.matmul(a, b.T, out=out)) for _ in range(reps))
    return 2 * 1024 * d * n / best / 1e9


def read_bandwidth(gib: float = 1.0, reps: int = 3) -> float:
    """Best-of-``reps`` memory read bandwidth (GB/s): a torch sum over ``gib`` GiB of float32 (all threads)."""
    x = torch.ones(int(gib * 2**30 // 4))
    x.sum()
    best = min(_timed(lambda: x.sum()) for _ in range(reps))
    return x.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------------------- children
def child(which: str, dim: int, out: Path) -> None:
    """Run one engine on the benchmark in this (fresh) process; write APs and timings to ``out``."""
    with tempfile.TemporaryDirectory() as tmp:
        archive, texts = make_benchmark(Path(tmp), dim)
        queries = PatternCom(tmp).queries(archive.paths)
    run = load_reference_engine().evaluate if which == "old" else evaluate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        run(queries.subset([0]), archive, texts, methods=METHODS, lambdas=LAMBDAS, device="cpu", progress=False)
        t_warm = time.perf_counter() - t0
        rss0 = _rss()
        t0 = time.perf_counter()
        per_pair = run(queries, archive, texts, methods=METHODS, lambdas=LAMBDAS, device="cpu", progress=False)
        seconds = time.perf_counter() - t0
    per_pair = per_pair.sort_values(["method", "lambda", "pair"], kind="stable")
    np.save(out.with_suffix(".npy"), per_pair["ap"].to_numpy())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.write_text(json.dumps({"seconds": seconds, "warmup": t_warm, "rss_before": rss0, "peak_rss": peak,
                               "n_pairs": len(queries), "n_rankings": len(per_pair)}))


def run_child(which: str, dim: int, tmp: Path, env=None) -> dict:
    out = tmp / f"{which}.json"
    subprocess.run([sys.executable, __file__, "--child", which, "--dim", str(dim), "--child-out", str(out)],
                   check=True, env=env)
    res = json.loads(out.read_text())
    res["ap"] = np.load(out.with_suffix(".npy"))
    return res


def compile_times(tmp: Path) -> tuple[float, float]:
    """Seconds for the first kernel call in a fresh process with an empty numba cache, then with it filled."""
    code = ("import time, numpy as np; t0 = time.perf_counter(); from rscir_kit.metrics import kernel_metrics; "
            "kernel_metrics(np.zeros((1, 8), np.float32), [np.array([1])]); print(time.perf_counter() - t0)")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp / "numba-cache"))
    times = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
        times.append(float(proc.stdout.strip().splitlines()[-1]))
    return times[0], times[1]


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--pairs-sample", type=int, default=100, help="pairs timed with the per-query loop")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as Markdown here")
    ap.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.dim, args.child_out)

    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    load_start = _uptime()
    say(f"load at start: `{load_start}`")
    say(f"torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}, torch {torch.__version__}, "
        f"numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        archive, texts = make_benchmark(tmp, args.dim)
        queries = PatternCom(tmp).queries(archive.paths)
        n, d = archive.feats.shape
        n_img = queries.table.query_path.nunique()
        n_rank = len(queries) * (3 + len(LAMBDAS))
        say(f"synthetic PatternCom: archive {n} × d={d}, {len(queries)} pairs, {n_img} query images, "
            f"{len(texts.texts)} texts; {n_rank} rankings (3 baselines + {len(LAMBDAS)} λ)")

        gflops, bandwidth = gemm_gflops(d, n), read_bandwidth()
        flop = 2.0 * n_img * d * n
        t_gemm, t_read = flop / (gflops * 1e9), n_rank * n * 4 / (bandwidth * 1e9)
        floor = t_gemm + t_read
        say(f"machine: GEMM {gflops:.0f} GFLOP/s (torch float32), read bandwidth {bandwidth:.1f} GB/s")
        say(f"floor: GEMM {flop:.2e} flop = {t_gemm:.2f} s + reading {n_rank * n * 4 / 1e9:.0f} GB of scores "
            f"= {t_read:.2f} s -> {floor:.2f} s")

        cold, warm = compile_times(tmp)
        old = run_child("old", d, tmp)
        new = run_child("new", d, tmp)
        sample = np.random.default_rng(1).choice(len(queries), size=min(args.pairs_sample, len(queries)),
                                                 replace=False)
        t0 = time.perf_counter()
        ref = np.array(per_query_loop(queries, archive, texts, LAMBDAS, sample))
        t_loop = (time.perf_counter() - t0) * len(queries) / len(sample)

        # exactness: all APs new vs old (same sort order of rows), and the sample against the float64 loop
        d_old = float(np.max(np.abs(new["ap"] - old["ap"])))
        n_pairs = len(queries)
        blocks = {key: new["ap"][i * n_pairs:(i + 1) * n_pairs] for i, key in
                  enumerate([("average", None), ("image", None), ("text", None)] + [("weicom", l) for l in LAMBDAS])}
        order = [("image", None), ("text", None), ("average", None)] + [("weicom", l) for l in LAMBDAS]
        got = np.array([blocks[key][i] for i in sample for key in order])  # the loop's order
        d_loop = float(np.max(np.abs(got - ref)))
    load_end = _uptime()

    mib = 2**20
    rows = [
        ("machine GEMM (torch float32)", f"{gflops:.0f} GFLOP/s", ""),
        ("machine read bandwidth", f"{bandwidth:.1f} GB/s", ""),
        ("floor (GEMM + one read of every ranking)", f"{floor:.2f} s", "1.0×"),
        ("per-query loop (float64, extrapolated)", f"{t_loop:.0f} s", f"{t_loop / floor:.0f}× floor"),
        (f"sort-based engine ({REFERENCE_COMMIT[:7]})", f"{old['seconds']:.1f} s", f"{old['seconds'] / floor:.1f}× floor"),
        ("new engine (compiled sort-free kernel)", f"{new['seconds']:.1f} s", f"{new['seconds'] / floor:.1f}× floor"),
        ("speed-up vs sort-based engine", f"{old['seconds'] / new['seconds']:.1f}×", "target ≥ 4×"),
        ("speed-up vs per-query loop", f"{t_loop / new['seconds']:.0f}×", "target ≥ 100×"),
        ("peak RSS, sort-based engine", f"{old['peak_rss'] / mib:.0f} MiB",
         f"+{(old['peak_rss'] - old['rss_before']) / mib:.0f} MiB over its start"),
        ("peak RSS, new engine", f"{new['peak_rss'] / mib:.0f} MiB",
         f"+{(new['peak_rss'] - new['rss_before']) / mib:.0f} MiB over its start"),
        ("max |ΔAP| new vs sort-based, all rankings", f"{d_old:.1e}", f"{len(new['ap'])} APs; target ≤ 1e-9"),
        ("max |ΔAP| new vs float64 loop, sample", f"{d_loop:.1e}", f"{len(sample)} pairs × {3 + len(LAMBDAS)}"),
        ("numba kernel: first call, empty cache", f"{cold:.1f} s", "compile, once per install (cache=True)"),
        ("numba kernel: first call, cache filled", f"{warm:.1f} s", "import + cache load, per process"),
    ]
    say()
    say("| quantity | value | note |")
    say("|---|---|---|")
    for r in rows:
        say(f"| {r[0]} | {r[1]} | {r[2]} |")
    say()
    say(f"load at end: `{load_end}`")
    if args.out:
        head = ("# bench_engine.py — the engine against the machine's floor, the sort-based engine and the "
                "per-query loop\n\nSynthetic PatternCom at paper scale; every number below from one run of "
                f"`python benchmarks/bench_engine.py --pairs-sample {args.pairs_sample}` on the shared "
                "development machine (other agents running: see the load). Ratios within the run are what "
                "counts.\n\n")
        args.out.write_text(head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

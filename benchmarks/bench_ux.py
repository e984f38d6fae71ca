"""What a researcher waits for: the λ explorer's redraw per slider step and the ``search`` command end to end.

    RSCIR_DATA=../shared/data RSCIR_WEIGHTS=../shared/weights HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \\
        python benchmarks/bench_ux.py [--out benchmarks/results/bench_ux.md] [--before TREE]

Explorer (UC Merced, 2,100 images, UCM-Com, the offline stand-in): the kernel-side work of one λ step through
the widget (``set`` + the HTML view, what is sent to the browser) at k = 8 and k = 24, against the previous
widget's path (``set`` + a full matplotlib figure per step); the first view of a new (query, text) pair (the
λ-independent score panel is rendered then, once); the live benchmark mAP over the slider's 21 λ values.
CLI: ``rscir-kit search`` as subprocesses: image-only (an archive image), composed with a cached text,
composed with a model load, and a batch of 100 composed queries (cold: model loaded once; warm: cached texts);
``--before TREE`` adds a column for another checkout (the code before a change), timed in the same run.
Timings come from a shared machine: compare ratios within one run.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _median_ms(fn, n: int) -> tuple[float, float]:
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times), max(times)


def explorer_timings(lines: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rscir_kit import nbutils
    from rscir_kit.explorer import LambdaExplorer

    params = nbutils.setup("bench_ux", output_dir=tempfile.mkdtemp(prefix="bench_ux_"), device="cpu")
    t = time.perf_counter()
    bench = nbutils.load_benchmark(params, progress=False)
    lines.append(f"- benchmark loaded in {time.perf_counter() - t:.1f} s ({len(bench.archive.paths)} images, "
                 f"{len(bench.queries)} query pairs, model {params.model})")
    ex = LambdaExplorer(bench.archive, queries=bench.queries, texts=bench.texts, image_root=bench.image_root, k=8,
                        model=params.model, benchmark_name="UCM-Com")
    t = time.perf_counter()
    ex.benchmark_map(np.round(np.arange(0, 1.0001, 0.05), 2), device="cpu")
    lines.append(f"- live benchmark mAP over 21 λ values (engine, once per widget): {time.perf_counter() - t:.2f} s")
    q = bench.queries.table.iloc[0]
    lams = [round(0.05 * (i % 21), 2) for i in range(40)]
    rows = ["", "| k | widget λ step (set + HTML view), median / max ms | previous widget (set + matplotlib "
                "figure), median / max ms | ratio |", "|---|---|---|---|"]
    for k in (8, 24):
        ex.set(query=q["query_path"], text=q["text"], lam=0.5, k=k)
        ex.view_html()  # thumbnails and the score panel of this pair, made once
        new_med, new_max = _median_ms(lambda i: ex.view_html(ex.set(lam=lams[i])), 40)
        old_med, old_max = _median_ms(lambda i: ex.render_png(ex.set(lam=lams[i])), 10)
        plt.close("all")
        rows.append(f"| {k} | {new_med:.1f} / {new_max:.1f} | {old_med:.0f} / {old_max:.0f} | {old_med / new_med:.0f}× |")
    lines += rows
    pairs = bench.queries.table.drop_duplicates("query_path").iloc[1:11]

    def new_pair(i):
        r = pairs.iloc[i]
        ex.view_html(ex.set(query=r["query_path"], text=r["text"], lam=0.3, k=8))

    med, mx = _median_ms(new_pair, len(pairs))
    lines.append("")
    lines.append(f"- first view of a new (query, text) pair, k=8 (score panel rendered, thumbnails loaded): median "
                 f"{med:.0f} ms, max {mx:.0f} ms")
    ex.widget(live=False)
    w = ex._widgets
    med, mx = _median_ms(lambda i: setattr(w["lam"], "value", lams[i + 1]), 20)
    lines.append(f"- through the ipywidgets slider (observer → set → view assignment, no browser), k=8: median "
                 f"{med:.1f} ms, max {mx:.1f} ms")


def _cli_cpu(args: list[str], env: dict) -> tuple[float, float]:
    """(wall, CPU = user + system) seconds of ``python -m rscir_kit ARGS``, run in ``env["_BENCH_CWD"]`` (``-m``
    puts the working directory first on sys.path: run from the repository it would import the repository's
    rscir_kit whatever PYTHONPATH says)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rscir_kit", *args], capture_output=True, text=True,
                          env={k: v for k, v in env.items() if k != "_BENCH_CWD"},
                          cwd=env.get("_BENCH_CWD", tempfile.gettempdir()))
    took = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"rscir-kit {' '.join(args)} failed: {proc.stderr}")
    return took, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _cli(args: list[str], env: dict) -> float:
    return _cli_cpu(args, env)[0]


def _tree_env(tree: Path, work: Path, name: str) -> dict:
    """The environment of a user's shell running ``tree``'s rscir_kit, with its own query-text cache. Bytecode
    caches are allowed (as in any installed package), whatever this shell's PYTHONDONTWRITEBYTECODE says."""
    env = dict(os.environ, PYTHONPATH=str(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               RSCIR_CACHE=str(work / f"cache_{name}"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["_BENCH_CWD"] = str(work)
    return env


def cli_timings(lines: list[str], before: Path | None = None) -> None:
    """``search`` end to end for this checkout and, with ``before``, for another checkout (the code before a
    change) in the same run, so the two columns see the same machine load."""
    from rscir_kit import nbutils

    params = nbutils.setup("bench_ux", output_dir=tempfile.mkdtemp(prefix="bench_ux_"), device="cpu")
    bench = nbutils.load_benchmark(params, progress=False)
    work = Path(tempfile.mkdtemp(prefix="bench_ux_cli_"))
    trees = {"this checkout": REPO} | ({f"before ({before})": before} if before else {})
    envs = {name: _tree_env(tree, work, f"t{i}") for i, (name, tree) in enumerate(trees.items())}
    first = next(iter(envs.values()))
    _cli(["index", "build", "--features", str(bench.image_features_path), "--out", str(work / "idx"), "--fast", "none",
          "--quiet"], first)
    idx = ["search", "--index", str(work / "idx"), "-k", "10"]
    q = str(bench.archive.paths[101])
    rng = np.random.default_rng(0)
    texts = bench.queries.table["text"].unique().tolist() + [f"with {w}" for w in ("a lake", "two roads", "red roofs")]
    batch = work / "batch.csv"
    with open(batch, "w", encoding="utf-8") as f:
        f.write("image,text,lam\n")
        for _ in range(100):
            f.write(f"{bench.archive.paths[rng.integers(len(bench.archive.paths))]},{rng.choice(texts)},"
                    f"{rng.choice([0.1, 0.3, 0.5, 0.7])}\n")
    for env in envs.values():  # warm-up: bytecode caches written, index files in the page cache
        _cli(idx + ["--image", q, "--lam", "0"], env)
    results = {name: {} for name in envs}

    def timed(key, args, repeat=1, before_each=None):
        """Best of ``repeat`` (wall, with that run's CPU), the checkouts interleaved (A B A B ...) so a change of
        load hits both."""
        for _ in range(repeat):
            for name, env in envs.items():
                if before_each:
                    before_each(env)
                took, cpu = _cli_cpu(idx + args, env)
                if key not in results[name] or took < results[name][key][0]:
                    results[name][key] = (took, cpu)

    def drop_text_cache(env):
        for f in Path(env["RSCIR_CACHE"]).glob("query_texts_*"):
            f.unlink()

    timed("image-only, an archive image (best of 3)", ["--image", q, "--lam", "0"], 3)
    timed("composed, text not cached (model load)", ["--image", q, "--text", "with cars"], 1, drop_text_cache)
    timed("composed, cached text (best of 3)", ["--image", q, "--text", "with cars"], 3)
    timed("batch of 100 composed queries, texts not cached (one model load)", ["--batch", str(batch)], 1,
          drop_text_cache)
    timed("batch of 100 composed queries, cached texts (best of 2)", ["--batch", str(batch)], 2)
    names = list(results)
    rows = ["", "| search, end to end (new process): wall s (CPU s) | " + " | ".join(names)
            + (" | this / before: wall (CPU) |" if before else " |"), "|---|" + "---|" * (len(names) + bool(before))]
    rows.append(f"| `python -c pass` (interpreter start, for scale) | {min(_py_start() for _ in range(3)):.2f} |"
                + " |" * (len(names) - 1 + bool(before)))
    for key in results[names[0]]:
        vals = [results[n][key] for n in names]
        rows.append(f"| {key} | " + " | ".join(f"{w:.2f} ({c:.2f})" for w, c in vals)
                    + (f" | {vals[0][0] / vals[1][0]:.2f} ({vals[0][1] / vals[1][1]:.2f}) |" if before else " |"))
    lines += rows


def _py_start() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="also write the results (markdown) here")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-explorer", action="store_true")
    parser.add_argument("--before", type=Path, default=None, metavar="TREE",
                        help="also time search with this checkout's rscir_kit (e.g. `git worktree add /tmp/before "
                             "<commit>`), in the same run: a before/after column")
    args = parser.parse_args(argv)
    lines = [f"# bench_ux ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load average "
             f"{', '.join(f'{v:.1f}' for v in os.getloadavg())})"]
    if not args.skip_explorer:
        lines += ["", "## λ explorer (UCM, 2,100 images)", ""]
        explorer_timings(lines)
    if not args.skip_cli:
        lines += ["", "## rscir-kit search (stand-in, UCM index)"]
        cli_timings(lines, args.before)
    lines.append(f"\nload average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

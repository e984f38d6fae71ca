"""The main job: run the numbered notebooks in order with papermill, collect every figure and table.

    python -m rscir_kit.run_notebooks                      # all notebooks, outputs in $RSCIR_OUTPUT (./outputs)
    python -m rscir_kit.run_notebooks --size 5 --out /tmp/quick   # a quick (CI-sized) run
    rscir-kit notebooks --only 03 04 -p lambdas "[0.0, 0.5, 1.0]"

Each notebook ``NN_name.ipynb`` is executed into ``<out>/NN_name.ipynb`` with its outputs (figures as PNG and
PDF, tables as CSV, ``results.json``) in ``<out>/NN_name/``; at the end ``<out>/index.md`` and
``<out>/summary.json`` list them all and the paths are printed.  Relative paths in ``RSCIR_DATA`` /
``RSCIR_WEIGHTS`` / ``RSCIR_CACHE`` / ``RSCIR_OUTPUT`` are taken relative to the repository root.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path

from . import config, nbutils
from .errors import DataError

NOTEBOOK_RE = re.compile(r"^\d\d_.+\.ipynb$")
KERNEL = "python3"


def default_notebook_dir() -> Path:
    root = nbutils.repo_root()
    if root is None:
        raise DataError("the notebooks live in the repository (notebooks/): run from a clone, or pass --notebooks DIR")
    return root / "notebooks"


def find_notebooks(folder, only=None) -> list[Path]:
    """``NN_*.ipynb`` in ``folder`` in numeric order; ``only``: prefixes or names to keep (e.g. ``["03", "04"]``)."""
    folder = Path(folder)
    found = sorted(p for p in folder.glob("*.ipynb") if NOTEBOOK_RE.match(p.name))
    if only:
        wanted = [str(o).removesuffix(".ipynb") for o in only]
        found = [p for p in found if any(p.stem == w or p.stem.startswith(w + "_") or p.stem[:2] == w.zfill(2)
                                         for w in wanted)]
        if not found:
            raise DataError(f"no notebook in {folder} matches {list(only)}")
    if not found:
        raise DataError(f"no numbered notebooks (NN_name.ipynb) in {folder}")
    return found


def strip_outputs(paths) -> list[Path]:
    """Clear outputs, execution counts and saved widget state of notebooks in place (before committing);
    returns the files that changed."""
    import nbformat

    changed = []
    for path in map(Path, paths):
        nb = nbformat.read(path, as_version=4)
        before = nbformat.writes(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = []
                cell.execution_count = None
                cell.metadata.pop("execution", None)
        nb.metadata.pop("widgets", None)
        nb.metadata.pop("papermill", None)
        if nbformat.writes(nb) != before:
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def _parse_value(text: str):
    """``-p key value``: Python literals (numbers, lists, None, True) are parsed, anything else is a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run(notebooks=None, out=None, only=None, size=None, dataset=None, model=None, data_root=None, cache_dir=None,
        device=None, parameters: dict | None = None, kernel: str = KERNEL, timeout: int | None = None,
        progress: bool = False, quiet: bool = False) -> dict:
    """Execute the notebooks in order; returns the summary (also written to ``<out>/summary.json``).

    A failing notebook stops the run: its partially executed copy is kept in ``<out>`` and the error names it."""
    try:
        import papermill  # noqa: F401
    except ImportError:
        raise DataError("papermill is not installed: pip install 'rscir-kit[notebooks]' (papermill, ipykernel)") \
            from None
    nbutils.absolutize_env()
    folder = Path(notebooks) if notebooks else default_notebook_dir()
    paths = find_notebooks(folder, only)
    out = Path(out).expanduser().resolve() if out else config.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    common = {k: v for k, v in {"dataset": dataset, "model": model, "size": size, "device": device,
                                "data_root": str(data_root) if data_root else None,
                                "cache_dir": str(cache_dir) if cache_dir else None}.items() if v is not None}
    common.update(parameters or {})
    say = (lambda *a, **k: None) if quiet else print
    with _kernel_env():
        return _run(paths, folder, out, common, kernel, timeout, progress, say)


INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


@contextlib.contextmanager
def _kernel_env():
    """Environment the kernels inherit while the notebooks run.

    * This package's repository goes first on ``PYTHONPATH``: kernels start in the notebook folder and must
      import the same rscir_kit as the runner (matters for a clone next to another installed copy).
    * ``MPLBACKEND`` is set to the inline backend: a headless ``MPLBACKEND=Agg`` (CI, Makefiles) would
      otherwise leave the executed notebooks without their figures (the PNG/PDF files are written either way).
    """
    root = nbutils.repo_root()
    wanted = {"MPLBACKEND": INLINE_BACKEND}
    if root is not None:
        old_path = os.environ.get("PYTHONPATH")
        wanted["PYTHONPATH"] = os.pathsep.join([str(root)] + ([old_path] if old_path else []))
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(paths, folder, out, common, kernel, timeout, progress, say) -> dict:
    import papermill as pm

    say(f"running {len(paths)} notebook(s) from {folder} -> {out}")
    done, skipped = [], []
    t_all = time.perf_counter()
    for i, nb in enumerate(paths, start=1):
        params = dict(common, output_dir=str(out / nb.stem))
        target = out / nb.name
        t0 = time.perf_counter()
        say(f"[{i}/{len(paths)}] {nb.stem} ...", flush=True)
        try:
            pm.execute_notebook(str(nb), str(target), parameters=params, kernel_name=kernel, cwd=str(folder),
                                progress_bar=progress, log_output=False, execution_timeout=timeout)
        except pm.PapermillExecutionError as exc:
            if exc.ename == "MissingDataError":  # manual-only data absent: skip this notebook, run the others
                say(f"    SKIPPED (data not available): {exc.evalue}")
                skipped.append({"notebook": nb.stem, "reason": exc.evalue, "executed": str(target)})
                continue
            say("    FAILED")
            raise DataError(f"notebook {nb.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
                            f"the executed copy with the traceback is {target}") from None
        seconds = time.perf_counter() - t0
        say(f"    done in {seconds:.1f} s")
        done.append({"notebook": nb.stem, "executed": str(target), "seconds": round(seconds, 1),
                     "output_dir": str(out / nb.stem)})
    listing = nbutils.list_outputs(out)
    for item in done:
        item.update(listing.get(item["notebook"], {"figures": [], "tables": [], "results": []}))
    summary = {"output": str(out), "seconds": round(time.perf_counter() - t_all, 1), "parameters": common,
               "notebooks": done, "skipped": skipped}
    nbutils.write_json_atomic(out / "summary.json", summary)
    (out / "index.md").write_text(_index_markdown(summary), encoding="utf-8")
    return summary


def _index_markdown(summary: dict) -> str:
    out = Path(summary["output"])
    lines = ["# rscir-kit notebook outputs", "", f"Parameters: `{json.dumps(summary['parameters'])}`; "
             f"total {summary['seconds']} s.", ""]
    for item in summary["notebooks"]:
        lines.append(f"## {item['notebook']} ({item['seconds']} s)")
        lines.append(f"- executed notebook: [{Path(item['executed']).name}]({Path(item['executed']).name})")
        for kind in ("figures", "tables", "results"):
            for f in item.get(kind, []):
                rel = Path(f).relative_to(out).as_posix()
                lines.append(f"- {kind[:-1]}: [{rel}]({rel})")
        lines.append("")
    for item in summary.get("skipped", []):
        lines += [f"## {item['notebook']}: skipped (data not available)", "", item["reason"], ""]
    return "\n".join(lines)


def print_summary(summary: dict) -> None:
    ran = "all notebooks ran" if not summary.get("skipped") else f"{len(summary['notebooks'])} notebook(s) ran"
    print(f"\n{ran} in {summary['seconds']} s; outputs in {summary['output']}")
    for item in summary["notebooks"]:
        print(f"  {item['notebook']}: {item['executed']}")
        for f in item.get("figures", []):
            if f.endswith(".png"):
                print(f"      figure {f}  (+ .pdf)")
        for f in item.get("tables", []):
            print(f"      table  {f}")
        for f in item.get("results", []):
            print(f"      values {f}")
    for item in summary.get("skipped", []):
        print(f"  SKIPPED {item['notebook']}: data not available. {item['reason']}")
    print(f"  index: {Path(summary['output']) / 'index.md'}")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", "--output", dest="out", default=None,
                        help="output folder (default: $RSCIR_OUTPUT or ./outputs)")
    parser.add_argument("--notebooks", default=None, help="folder of the numbered notebooks (default: repo notebooks/)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NN", help="run only these (e.g. 03 04)")
    parser.add_argument("--size", type=int, default=None, help="quick run: images per class (CI: 5); default: full")
    parser.add_argument("--dataset", choices=nbutils.DATASETS, default=None, help="default: ucmcom")
    parser.add_argument("--model", default=None, help="model spec (default: $RSCIR_MODEL / the stand-in / RemoteCLIP)")
    parser.add_argument("--data-root", default=None, help="default: $RSCIR_DATA")
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: $RSCIR_CACHE)")
    parser.add_argument("--device", default=None, help="auto / cpu / cuda (default: $RSCIR_DEVICE or auto)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="any notebook parameter, value as a Python literal (e.g. -p lambdas '[0, 0.5, 1]')")
    parser.add_argument("--kernel", default=KERNEL, help="Jupyter kernel name (default: python3)")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    parser.add_argument("--strip", action="store_true",
                        help="do not run: clear the outputs of the notebooks in place (before committing them)")
    return parser


def main_from_args(args) -> int:
    if args.strip:
        paths = find_notebooks(args.notebooks or default_notebook_dir(), args.only)
        changed = strip_outputs(paths)
        print(f"stripped {len(changed)} of {len(paths)} notebook(s)" + "".join(f"\n  {p}" for p in changed))
        return 0
    summary = run(notebooks=args.notebooks, out=args.out, only=args.only, size=args.size, dataset=args.dataset,
                  model=args.model, data_root=args.data_root, cache_dir=args.cache_dir, device=args.device,
                  parameters={k: _parse_value(v) for k, v in args.parameter}, kernel=args.kernel,
                  timeout=args.timeout)
    print_summary(summary)
    return 0


def main(argv=None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m rscir_kit.run_notebooks",
                                                   description=__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    try:
        return main_from_args(args)
    except DataError as exc:
        print(f"run_notebooks: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

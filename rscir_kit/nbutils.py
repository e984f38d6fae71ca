"""Notebook plumbing: parameter resolution, output folder, figures/tables on disk, ``results.json``.

Every numbered notebook starts with::

    from rscir_kit import nbutils
    params = nbutils.setup("03_weicom", dataset=dataset, data_root=data_root, model=model, cache_dir=cache_dir,
                           lambdas=lambdas, device=device, output_dir=output_dir, size=size, batch_size=batch_size)
    rec = nbutils.Recorder(params)

``setup`` fills every ``None`` parameter from the environment (see :mod:`rscir_kit.config`), checks the
values and creates the output folder; the :class:`Recorder` writes figures as PNG and PDF, tables as CSV
and the values tests assert on to ``<output_dir>/results.json`` (atomically, after every change, so a
notebook that fails half-way still leaves what it computed).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from . import config, pipeline, reference
from .config import repo_root
from .datasets import benchmark_names, get_benchmark
from .errors import DataError, ParameterError
from .io import atomic_path, atomic_write
from .modelsetup import resolve_setup
from .pipeline import BenchmarkData

DATASETS = tuple(benchmark_names("composed"))  # the notebooks' dataset= values (the registry)
DEFAULT_LAMBDAS = tuple(round(0.1 * i, 1) for i in range(11))
RESULTS_FILE = "results.json"
FIGURE_FORMATS = ("png", "pdf")
# Environment variables holding paths; a relative value means "relative to the repository root".
PATH_VARIABLES = ("RSCIR_DATA", "RSCIR_WEIGHTS", "RSCIR_CACHE", "RSCIR_OUTPUT", "HF_HUB_CACHE", "HF_HOME")
_RESERVED = ("notebook", "params", "figures", "tables")


def absolutize_env(base: Path | None = None, variables: Iterable[str] = PATH_VARIABLES) -> dict[str, str]:
    """Rewrite relative path variables (``RSCIR_DATA=../shared/data``) as absolute paths, taken relative to
    ``base`` (default: the repository root, else the current folder).

    Notebooks run with the notebook folder as working directory while the documented variables are
    relative to the repository root; this makes both agree.  Returns the variables it changed."""
    base = Path(base) if base is not None else (repo_root() or Path.cwd())
    changed = {}
    for name in variables:
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        path = Path(value).expanduser()
        if path.is_absolute():
            continue
        os.environ[name] = changed[name] = str((base / path).resolve())
    return changed


@dataclass
class NotebookParams:
    """Resolved notebook parameters (every path absolute, every default filled in)."""

    notebook: str
    dataset: str
    data_root: Path
    model: str
    cache_dir: Path
    lambdas: list[float]
    device: str
    output_dir: Path
    size: int | None
    batch_size: int
    extra: dict[str, Any] = field(default_factory=dict)
    setup: str = "default"            # named model configuration (rscir_kit.modelsetup.SETUPS)
    reference_source: str = "readme-current"  # published table a run is compared with (rscir_kit.reference)
    ap_decimals: int | None = None    # per-pair AP/P@k/R@k rounding in % (official evaluate.py: 2); None: exact

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    @property
    def model_setup(self):
        """The :class:`~rscir_kit.modelsetup.ModelSetup` named by ``setup``."""
        return resolve_setup(self.setup)

    @property
    def numerics(self) -> str:
        return self.model_setup.numerics

    @property
    def quick(self) -> bool:
        """True for a reduced (CI-sized) run."""
        return self.size is not None


def check_lambdas(lambdas: Iterable[float]) -> list[float]:
    """λ values as a sorted list of distinct floats in [0, 1] (DataError otherwise)."""
    try:
        values = sorted({round(float(v), 6) for v in lambdas})
    except (TypeError, ValueError) as exc:
        raise DataError(f"lambdas must be numbers in [0, 1], got {lambdas!r}") from exc
    if not values:
        raise DataError("lambdas is empty: give at least one λ in [0, 1], e.g. [0.0, 0.5, 1.0]")
    bad = [v for v in values if not 0.0 <= v <= 1.0 or math.isnan(v)]
    if bad:
        raise DataError(f"λ must lie in [0, 1]; got {bad}. λ weighs the text (1) against the image (0).")
    return values


def resolve_size(size=None):
    """Images per class a notebook runs with: ``size``, else ``$RSCIR_SIZE``, else None (the full benchmark)."""
    if size is None and os.environ.get("RSCIR_SIZE", "").strip():
        try:
            size = int(os.environ["RSCIR_SIZE"])
        except ValueError:
            raise DataError(f"RSCIR_SIZE must be a positive integer, got {os.environ['RSCIR_SIZE']!r}") from None
    return size


def setup(notebook: str, *, dataset: str = "ucmcom", data_root=None, model: str | None = None, cache_dir=None,
          lambdas=None, device: str | None = "auto", output_dir=None, size: int | None = None,
          batch_size: int = 64, setup: str | None = None, reference_source: str | None = None,
          ap_decimals: int | None = None, **extra) -> NotebookParams:
    """Resolve a notebook's papermill parameters.

    ``None`` means "from the environment": ``data_root`` ← ``$RSCIR_DATA``, ``model`` ←
    :func:`rscir_kit.config.default_model`, ``cache_dir`` ← ``$RSCIR_CACHE``, ``output_dir`` ←
    ``$RSCIR_OUTPUT/<notebook>``, ``device`` ``"auto"`` ← ``$RSCIR_DEVICE``, ``size`` ← ``$RSCIR_SIZE`` (a
    quick-run knob for CI tools that cannot pass parameters, e.g. ``pytest --nbval-lax``; unset = full run),
    ``setup`` ← ``"default"`` (``"paper"``: GELU + fp32 + official numerics), ``reference_source`` ←
    ``"readme-current"``, ``ap_decimals`` ← None (exact). Creates the output folder. Relative paths (parameters
    and the variables) are taken relative to the repository root; the environment is not rewritten (the notebook
    runner passes absolute paths to its kernels, :func:`absolutize_env`)."""
    size = resolve_size(size)
    stem = Path(str(notebook)).stem
    dataset = str(dataset).strip().lower()
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if size is not None:
        if isinstance(size, bool) or int(size) != size or int(size) < 1:
            raise DataError(f"size must be a positive integer (items per class / queries) or None, got {size!r}")
        size = int(size)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if device in (None, "", "auto"):
        device = config.default_device()
    setup = resolve_setup(setup or "default").name
    reference_source = reference_source or reference.DEFAULT_SOURCE
    if reference_source not in reference.SOURCES:
        raise DataError(f"unknown reference_source {reference_source!r}: choose one of {', '.join(reference.SOURCES)}")
    if ap_decimals is not None and (isinstance(ap_decimals, bool) or int(ap_decimals) != ap_decimals
                                    or int(ap_decimals) < 0):
        raise DataError(f"ap_decimals must be a non-negative integer (the official evaluate.py: 2) or None, "
                        f"got {ap_decimals!r}")
    params = NotebookParams(
        notebook=stem,
        dataset=dataset,
        data_root=_path(data_root) if data_root else config.data_root(),
        model=str(model) if model else config.default_model(),
        cache_dir=_path(cache_dir) if cache_dir else config.cache_dir(),
        lambdas=check_lambdas(DEFAULT_LAMBDAS if lambdas is None else lambdas),
        device=str(device),
        output_dir=_path(output_dir) if output_dir else config.output_dir() / stem,
        size=size,
        batch_size=batch_size,
        extra=dict(extra),
        setup=setup,
        reference_source=reference_source,
        ap_decimals=None if ap_decimals is None else int(ap_decimals),
    )
    params.output_dir.mkdir(parents=True, exist_ok=True)
    return params


def _path(value) -> Path:
    path = Path(str(value)).expanduser()
    if not path.is_absolute():
        # Relative parameters follow the same rule as the environment variables.
        path = (repo_root() or Path.cwd()) / path
    return path.resolve()


def _jsonable(value):
    """Convert numpy / pandas / Path values to plain JSON; NaN and ±inf become None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # DataFrame
        return _jsonable(value.to_dict(orient="records"))
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value
    return str(value)


def write_json_atomic(path: Path, data) -> Path:
    """Write ``data`` as JSON atomically (see :mod:`rscir_kit.io`)."""
    def write(handle):
        json.dump(_jsonable(data), handle, indent=2, allow_nan=False)
        handle.write("\n")

    return atomic_write(path, write, mode="w")


def load_results(output_dir) -> dict:
    """Read ``<output_dir>/results.json`` (DataError naming the file when missing)."""
    path = Path(output_dir) / RESULTS_FILE
    if not path.is_file():
        raise DataError(f"{path} not found: run the notebook first (python -m rscir_kit.run_notebooks)")
    return json.loads(path.read_text(encoding="utf-8"))


class SavedFiles(list):
    """The paths a Recorder wrote; shown in a notebook as one short line, not as a list of PosixPaths."""

    def __repr__(self) -> str:
        return "saved " + ", ".join(Path(p).name for p in self)


class Recorder:
    """Collects a notebook's results in ``<output_dir>/results.json`` and saves its figures and tables.

    ``rec.record(key=value, ...)`` stores values; ``rec.figure(fig, "name")`` writes ``name.png`` and
    ``name.pdf``; ``rec.table(df, "name")`` writes ``name.csv``.  Every call rewrites results.json
    atomically.  A new Recorder starts a fresh results.json (a re-run never mixes old values in)."""

    def __init__(self, params_or_dir, notebook: str | None = None):
        if isinstance(params_or_dir, NotebookParams):
            self.output_dir = params_or_dir.output_dir
            notebook = notebook or params_or_dir.notebook
            params = params_or_dir.as_dict()
        else:
            self.output_dir = _path(params_or_dir)
            params = {}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {"notebook": notebook, "params": params, "figures": {}, "tables": {}}
        self.save()

    @property
    def path(self) -> Path:
        return self.output_dir / RESULTS_FILE

    def save(self) -> Path:
        return write_json_atomic(self.path, self.data)

    def record(self, **values) -> None:
        """Store JSON-able values (numpy, pandas and Paths are converted) and rewrite results.json.
        Returns nothing, so a notebook cell ending with it prints nothing (read back with ``rec[key]``)."""
        for key in values:
            if key in _RESERVED:
                raise KeyError(f"{key!r} is kept by the Recorder itself; pick another name")
        self.data.update(_jsonable(values))
        self.save()

    def __getitem__(self, key):
        return self.data[key]

    def figure(self, fig, name: str, formats: Iterable[str] = FIGURE_FORMATS, dpi: int = 150) -> list[Path]:
        """Save ``fig`` as ``<name>.png`` and ``<name>.pdf`` in the output folder; returns the paths."""
        _check_name(name)
        size = (self.data.get("params") or {}).get("size")
        if size is not None and not getattr(fig, "_rscir_reduced", False):  # figures of a --size run say so
            # above the figure's top edge: bbox_inches="tight" makes room, so it can never cover a title
            fig.text(0.995, 1.0, f"REDUCED RUN: {size} images per class, not the benchmark's numbers",
                     ha="right", va="bottom", fontsize=8, color="#c00000", fontweight="bold")
            fig._rscir_reduced = True
        paths = []
        for fmt in formats:
            path = self.output_dir / f"{name}.{fmt}"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
            paths.append(path)
        self.data["figures"][name] = [p.name for p in paths]
        self.save()
        return SavedFiles(paths)

    def table(self, frame, name: str, index: bool = False, float_format: str | None = "%.6g") -> Path:
        """Save a DataFrame as ``<name>.csv``; returns the path."""
        _check_name(name)
        path = self.output_dir / f"{name}.csv"
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=index, float_format=float_format)
        self.data["tables"][name] = path.name
        self.save()
        return path


def _check_name(name: str) -> None:
    if not name or any(c in name for c in "/\\:") or name.startswith("."):
        raise ParameterError(f"output names are plain file stems (no folders or dots first), got {name!r}")


def list_outputs(output_root) -> dict[str, dict[str, list[str]]]:
    """What each notebook wrote under ``output_root``: ``{notebook: {"figures": [...], "tables": [...],
    "results": [...]}}`` with absolute paths, from the folders' results.json files."""
    root = Path(output_root)
    found: dict[str, dict[str, list[str]]] = {}
    for results in sorted(root.glob(f"*/{RESULTS_FILE}")):
        folder = results.parent
        data = json.loads(results.read_text(encoding="utf-8"))
        figures = [str(folder / f) for files in data.get("figures", {}).values() for f in files]
        tables = [str(folder / f) for f in data.get("tables", {}).values()]
        found[folder.name] = {"figures": figures, "tables": tables, "results": [str(results)]}
    return found


# ------------------------------------------------------------------------------------------ benchmark
def load_benchmark(params: NotebookParams, encoder=None, progress: bool = True, resume: bool = True) -> BenchmarkData:
    """The benchmark ``params.dataset`` (the registry of :mod:`rscir_kit.datasets`, data under
    ``params.data_root``, fetched when the data allows) with its features cached in ``params.cache_dir``:
    :func:`rscir_kit.pipeline.load_benchmark` with the notebook's parameters."""
    benchmark = get_benchmark(params.dataset, data_root=params.data_root, kind="composed", download=True)
    return pipeline.load_benchmark(benchmark, params.model, params.cache_dir, size=params.size, device=params.device,
                                   batch_size=params.batch_size, setup=params.model_setup, encoder=encoder,
                                   progress=progress, resume=resume)


def run_config(params: NotebookParams, bench: BenchmarkData) -> dict:
    """The configuration of a notebook's run (for :func:`rscir_kit.reference.compare_run` and the figures): the
    archive features' recorded configuration plus the numerics the evaluation uses (``params.numerics``)."""
    return dict(bench.archive.meta, numerics=params.numerics)

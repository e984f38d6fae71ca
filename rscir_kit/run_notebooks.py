"""The main job: run the numbered notebooks in order with papermill, collect every figure and table.

    rscir-kit notebooks                                    # all notebooks, outputs in $RSCIR_OUTPUT (./outputs)
    rscir-kit notebooks --size 5 --out /tmp/quick          # a quick (CI-sized) run
    rscir-kit notebooks --only 03 04 -p lambdas "[0.0, 0.5, 1.0]"

Each notebook ``NN_name.ipynb`` is executed into ``<out>/NN_name.ipynb`` with its outputs (figures as PNG and
PDF, tables as CSV, ``results.json``) in ``<out>/NN_name/``.  ``<out>/summary.json`` is the job's record
(one entry per notebook: status, parameters, fingerprint, artefacts) and ``<out>/index.md`` the report made
from it: model and configuration, dataset, data root, size, kit version and commit, the headline numbers,
then every artefact.

Resuming: a notebook is skipped when its last run into ``<out>`` completed and its fingerprint (notebook
code, parameters, kit version and source, the size and mtime of its input files) is unchanged, so after a
Ctrl-C the same command goes on where it stopped (``--force`` re-runs everything).  ``--only`` runs merge
into the existing report.  Relative paths in ``RSCIR_DATA`` / ``RSCIR_WEIGHTS`` / ``RSCIR_CACHE`` /
``RSCIR_OUTPUT`` are taken relative to the repository root.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, config, nbutils
from .commands import positive_int
from .errors import DataError
from .io import atomic_write

NOTEBOOK_RE = re.compile(r"^\d\d_.+\.ipynb$")
KERNEL = "python3"
SUMMARY = "summary.json"
INDEX = "index.md"
LOG_DIR = "logs"
LOCK = ".rscir-notebooks.lock"
SLOW_CELL_S = 10.0  # without a terminal, cells slower than this get a line of their own


#: error names that skip a notebook instead of failing the job (rscir_kit.errors.MissingDataError and subclasses)
SKIP_ERRORS = ("MissingDataError", "DatasetNotFoundError")


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


def strip_notebook(nb) -> None:
    """Clear outputs, execution counts and saved widget / papermill state of a notebook object in place."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
        for key in ("papermill", "ExecuteTime", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)


def strip_outputs(paths) -> list[Path]:
    """Clear outputs, execution counts and saved widget state of notebooks in place (before committing);
    returns the files that changed."""
    import nbformat

    changed = []
    for path in map(Path, paths):
        nb = nbformat.read(path, as_version=4)
        before = nbformat.writes(nb)
        strip_notebook(nb)
        if nbformat.writes(nb) != before:
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def strip_stream(src=None, dst=None) -> None:
    """Git clean filter: a notebook on stdin, the same notebook without outputs on stdout (see ``make lab``)."""
    import nbformat

    src = src or sys.stdin
    dst = dst or sys.stdout
    nb = nbformat.read(src, as_version=4)
    strip_notebook(nb)
    dst.write(nbformat.writes(nb))
    if not nbformat.writes(nb).endswith("\n"):
        dst.write("\n")


def _parse_value(text: str):
    """``-p key value``: Python literals (numbers, lists, None, True) are parsed, anything else is a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# ----------------------------------------------------------------------------------------- inputs
@dataclass
class Missing:
    """One input a notebook needs that is not on this machine, and how to get it."""

    key: str  # "ucm_images", "model", ...
    what: str  # "UC Merced images"
    where: str  # where the kit looked
    how: str  # command / URL
    alternative: str  # the RSCIR_DATA / RSCIR_WEIGHTS / RSCIR_MODEL way
    automatic: bool = False  # the notebook downloads it itself on a machine with internet
    needed_by: list[str] = field(default_factory=list)

    def describe(self) -> str:
        auto = " (downloaded automatically when online)" if self.automatic else ""
        return (f"- {self.what}{auto}: not found in {self.where}; needed by {', '.join(self.needed_by)}\n"
                f"    get it: {self.how}\n    or: {self.alternative}")


def notebook_needs(path: Path, dataset: str, parameters: dict | None = None) -> list[str]:
    """The inputs a notebook declares in its metadata (``metadata.rscir.needs``); ``benchmark`` expands to the
    dataset's pieces. Notebooks without the declaration need nothing the runner can check."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    declared = list((nb.metadata.get("rscir") or {}).get("needs", []))
    needs = []
    for item in declared:
        if item == "benchmark":
            needs += ["ucm_images", "ucm_multilabels"] if dataset == "ucmcom" else ["patternnet", "patterncom"]
        elif item == "ucm_captions" and (parameters or {}).get("captions"):
            continue  # another caption set was given explicitly
        else:
            needs.append(item)
    return list(dict.fromkeys(needs))


def _found_any(root: Path, names) -> bool:
    return any((root / n).exists() for n in names)


def check_inputs(keys, data_root: Path, model: str) -> dict[str, Missing]:
    """Which of the input ``keys`` are absent (cheap file checks only, no network, no model load)."""
    from .datasets import ucm as ucm_data

    missing: dict[str, Missing] = {}
    ucm_root = data_root / "ucm"
    now = f"RSCIR_DATA={os.environ['RSCIR_DATA']}" if os.environ.get("RSCIR_DATA") else f"RSCIR_DATA unset: {data_root}"
    data_alt = f"point RSCIR_DATA (or --data-root) at a folder that has it (now {now})"
    for key in dict.fromkeys(keys):
        if key == "ucm_images" and not any((ucm_root / rel).is_dir() and any((ucm_root / rel).glob("*/*"))
                                           for rel in ucm_data.UCMImages.LAYOUTS):
            missing[key] = Missing(key, "UC Merced images", str(ucm_root),
                                   f"rscir-kit ucm download   (or {ucm_data.UCM_IMAGES_URL}, unzipped into "
                                   f"{ucm_root})", data_alt, automatic=True)
        elif key == "ucm_multilabels" and not _found_any(ucm_root, ucm_data.UCMMultiLabel.FILENAMES):
            missing[key] = Missing(key, "UCM multi-labels", str(ucm_root),
                                   f"rscir-kit ucm download   (or {ucm_data.UCM_MULTILABEL_URL}: copy "
                                   f"LandUse_Multilabeled.txt to {ucm_root / 'multilabels.tsv'})", data_alt,
                                   automatic=True)
        elif key == "ucm_captions" and not _found_any(ucm_root, ucm_data.UCMCaptions.FILENAMES):
            missing[key] = Missing(key, "UCM-Captions", str(ucm_root),
                                   f"by hand (cloud drive only): the UCM-Captions link at "
                                   f"{ucm_data.UCM_CAPTIONS_HOME}; copy its dataset.json to "
                                   f"{ucm_root / 'dataset.json'}", data_alt)
        elif key == "patternnet" and not (data_root / "PatternNet" / "images").is_dir():
            missing[key] = Missing(key, "PatternNet images", str(data_root / "PatternNet"),
                                   "by hand (Google Drive, see the README's Data section): unzip PatternNet.zip "
                                   f"into {data_root / 'PatternNet'}", data_alt)
        elif key == "patterncom" and not any(any(d.glob("*.csv")) for d in (data_root / "PatternCom",
                                                                            data_root / "PatternNet" / "PatternCom")
                                              if d.is_dir()):
            missing[key] = Missing(key, "PatternCom CSVs", str(data_root / "PatternCom"),
                                   "by hand: the PatternCom folder of github.com/billpsomas/rscir, copied to "
                                   f"{data_root / 'PatternCom'}", data_alt)
        elif key == "model":
            found = _model_missing(model)
            if found is not None:
                missing[key] = found
    return missing


def _model_missing(model: str) -> Missing | None:
    """A Missing entry when the weights of ``model`` are certainly not available offline."""
    spec = str(model)
    weights_alt = ("put the stand-in or a checkpoint in a folder and set RSCIR_WEIGHTS to it, or choose another "
                   "model with RSCIR_MODEL / --model (e.g. local-dir:/path/to/open_clip/folder)")
    if spec.startswith("local-dir:"):
        path = Path(spec[len("local-dir:"):]).expanduser()
        if not (path / "open_clip_config.json").is_file():
            return Missing("model", f"model weights {spec}", str(path), "a folder with open_clip_config.json and "
                           "open_clip_model.safetensors (open_clip's local-dir: format)", weights_alt)
        return None
    if ":" in spec and ("/" in spec.split(":", 1)[1]):  # ARCH:/path/checkpoint.pt
        path = Path(spec.split(":", 1)[1]).expanduser()
        if not path.is_file():
            return Missing("model", f"checkpoint {path}", str(path.parent), "copy the checkpoint there", weights_alt)
        return None
    from . import encoders

    preset = encoders.PRESETS.get(spec)
    if preset is None or not preset.hf_repo:
        return None
    root = config.weights_root()
    if root is not None and (root / preset.checkpoint_name).is_file():
        return None
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0", "false", "False")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(preset.hf_repo, preset.hf_file)
    except Exception:  # noqa: BLE001 - an old/absent huggingface_hub: cannot tell, assume it downloads
        return None
    if isinstance(cached, str):
        return None
    return Missing("model", f"weights of {spec} ({preset.hf_repo}/{preset.hf_file})",
                   f"$RSCIR_WEIGHTS ({root or 'unset'}) and the Hugging Face cache",
                   f"downloaded from the Hugging Face hub on first use (needs internet"
                   f"{'; HF_HUB_OFFLINE=1 is set' if offline else ''}), or copy {preset.checkpoint_name} into "
                   f"$RSCIR_WEIGHTS", weights_alt, automatic=not offline)


# ----------------------------------------------------------------------------------------- fingerprints
def kit_identity() -> dict:
    """Version, git commit (with ``dirty`` when the package or notebooks differ from it) and a hash of the
    package's source files."""
    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(pkg.rglob("*.py")):
        h.update(path.relative_to(pkg).as_posix().encode())
        h.update(path.read_bytes())
    ident = {"version": __version__, "commit": None, "dirty": None, "source_sha256": h.hexdigest()[:16]}
    root = nbutils.repo_root()
    if root is not None and (root / ".git").exists():
        try:
            ident["commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "rscir_kit",
                                     "notebooks"], capture_output=True, text=True, timeout=10, check=True).stdout
            ident["dirty"] = bool(status.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return ident


def _tree_stat(path: Path, limit: int = 500_000) -> str:
    """Hash of (relative name, size, mtime) of every file under ``path`` (cheap: no file is read)."""
    h = hashlib.sha256()
    if path.is_file():
        st = path.stat()
        h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]
    if not path.is_dir():
        return "absent"
    n = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            n += 1
            if n >= limit:
                return h.hexdigest()[:16] + "+"
    return h.hexdigest()[:16]


def input_paths(needs, data_root: Path, model: str) -> dict[str, Path]:
    """The files/folders behind each input key (what the fingerprint stats)."""
    paths = {}
    for key in needs:
        if key.startswith("ucm_"):
            paths["ucm"] = data_root / "ucm"
        elif key == "patternnet":
            paths["PatternNet"] = data_root / "PatternNet"
        elif key == "patterncom":
            paths["PatternCom"] = data_root / "PatternCom"
        elif key == "model":
            spec = str(model)
            if spec.startswith("local-dir:"):
                paths["model"] = Path(spec[len("local-dir:"):]).expanduser()
            elif ":" in spec and "/" in spec.split(":", 1)[1]:
                paths["model"] = Path(spec.split(":", 1)[1]).expanduser()
    return paths


def notebook_code_hash(path: Path) -> str:
    """Hash of the notebook's cell sources (outputs and metadata do not count)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    h = hashlib.sha256()
    for cell in nb.cells:
        h.update(f"{cell.cell_type}\0{cell.source}\0".encode())
    return h.hexdigest()[:16]


RESOLVED_ENV = ("RSCIR_DATA", "RSCIR_WEIGHTS", "RSCIR_MODEL", "RSCIR_CACHE", "RSCIR_DEVICE", "RSCIR_SIZE",
                "HF_HUB_OFFLINE")


def fingerprint(path: Path, params: dict, kit: dict, inputs: dict[str, Path]) -> dict:
    """What decides a notebook's results: code, parameters, the environment they are resolved from, the kit,
    and the inputs' file stats."""
    parts = {"notebook": notebook_code_hash(path), "parameters": params,
             "environment": {k: os.environ.get(k) for k in RESOLVED_ENV},
             "kit": {"version": kit["version"], "source_sha256": kit["source_sha256"]},
             "inputs": {name: _tree_stat(p) for name, p in sorted(inputs.items())}}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return {"digest": digest, **parts}


def _file_sig(path: Path) -> str | None:
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


# ----------------------------------------------------------------------------------------- running
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


@contextlib.contextmanager
def _kernel_env():
    """Environment the kernels inherit while the notebooks run.

    * This package's repository goes first on ``PYTHONPATH``: kernels start in the notebook folder and must
      import the same rscir_kit as the runner (matters for a clone next to another installed copy).
    * ``MPLBACKEND`` is set to the inline backend: a headless ``MPLBACKEND=Agg`` (CI, Makefiles) would
      otherwise leave the executed notebooks without their figures (the PNG/PDF files are written either way).
    * ``RSCIR_PROGRESS=0`` (the kit's bars) and ``TQDM_DISABLE=1`` (other libraries'): no progress bars inside the notebooks (without a live display their saved output
      would read "0%| | 0/2100"); the runner shows cell progress instead.
    """
    root = nbutils.repo_root()
    wanted = {"MPLBACKEND": INLINE_BACKEND, "TQDM_DISABLE": "1", "RSCIR_PROGRESS": "0"}
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


def _quiet_kernel_manager(log_path: Path):
    """A kernel manager class whose kernel writes its own log (ZMQ/TCP warnings, the interrupt sent at shutdown)
    to ``log_path`` instead of the job's console. Cell outputs and errors are unaffected."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):  # noqa: D401 - jupyter_client API
            handle = open(log_path, "ab")  # noqa: SIM115 - owned by the kernel process from here on
            kw.setdefault("stdout", handle)
            kw.setdefault("stderr", handle)
            try:
                return await super().start_kernel(**kw)
            finally:
                handle.close()  # the child has its own copy of the descriptor

    return QuietKernelManager


class _Progress:
    """One status line per notebook: ``[2/8] 02_baselines  cell 3/7  12 s``; live on a terminal, otherwise
    a line for each slow cell."""

    def __init__(self, label: str, say, live: bool):
        self.label, self.say, self.live = label, say, live
        self.total = self.current = 0
        self.t0 = self.t_cell = time.perf_counter()
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()

    def start(self):
        if self.live:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        else:
            self.say(f"{self.label} ...", flush=True)
        return self

    def _line(self) -> str:
        cell = f"cell {self.current}/{self.total}" if self.total else "starting kernel"
        return f"{self.label}  {cell}  {time.perf_counter() - self.t0:.0f} s"

    def _tick(self):
        while not self._stop.wait(0.5):
            with self._lock:
                sys.stdout.write("\r" + self._line() + "\x1b[K")
                sys.stdout.flush()

    def on_notebook_start(self, notebook=None, **_):
        self.total = sum(c.cell_type == "code" for c in notebook.cells) if notebook is not None else 0

    def on_cell_start(self, cell=None, **_):
        if cell is None or cell.cell_type != "code":
            return
        self._finish_cell()
        self.current += 1
        self.t_cell = time.perf_counter()

    def _finish_cell(self):
        took = time.perf_counter() - self.t_cell
        if not self.live and self.current and took >= SLOW_CELL_S:
            self.say(f"    cell {self.current}/{self.total} took {took:.0f} s", flush=True)

    def stop(self, final: str):
        self._finish_cell()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            with self._lock:
                sys.stdout.write("\r\x1b[K")
                sys.stdout.flush()
            self.say(f"{self.label}  {final}", flush=True)
        else:
            self.say(f"    {final}", flush=True)


def run(notebooks=None, out=None, only=None, size=None, dataset=None, model=None, data_root=None, cache_dir=None,
        device=None, parameters: dict | None = None, kernel: str = KERNEL, timeout: int | None = None,
        progress: bool | None = None, quiet: bool = False, force: bool = False) -> dict:
    """Execute the notebooks in order; returns the summary (also written to ``<out>/summary.json``).

    Up-to-date notebooks are skipped (see the module doc; ``force`` re-runs them).  A notebook stopped by
    missing data is reported as skipped with how to get the data, and the others run.  Any other failure
    stops the run: its partially executed copy is kept in ``<out>`` and the error names it."""
    try:
        import papermill  # noqa: F401
    except ImportError:
        raise DataError("papermill is not installed: pip install 'rscir-kit[notebooks]' (papermill, ipykernel)") \
            from None
    from filelock import FileLock, Timeout

    nbutils.absolutize_env()
    folder = Path(notebooks) if notebooks else default_notebook_dir()
    paths = find_notebooks(folder, only)
    out = Path(out).expanduser().resolve() if out else config.output_dir()
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file: give a folder for the executed notebooks and their outputs")
    out.mkdir(parents=True, exist_ok=True)
    common = {k: v for k, v in {"dataset": dataset, "model": model, "size": size, "device": device,
                                "data_root": str(data_root) if data_root else None,
                                "cache_dir": str(cache_dir) if cache_dir else None}.items() if v is not None}
    common.update(parameters or {})
    say = (lambda *a, **k: None) if quiet else print
    live = (sys.stdout.isatty() and not quiet) if progress is None else (bool(progress) and not quiet)
    lock = FileLock(str(out / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DataError(f"another `rscir-kit notebooks` is writing into {out} (lock {out / LOCK}); wait for it "
                        "or choose another --out") from None
    try:
        with _kernel_env():
            return _run(paths, folder, out, common, kernel, timeout, say, live, force)
    finally:
        lock.release()
        with contextlib.suppress(OSError):
            (out / LOCK).unlink()


def load_summary(out: Path) -> dict:
    """``<out>/summary.json`` of an earlier run (empty record when absent or unreadable)."""
    path = Path(out) / SUMMARY
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data.get("notebooks"), dict):
            return data
    except (OSError, ValueError, AttributeError):
        pass
    return {"output": str(out), "notebooks": {}}


def _up_to_date(entry: dict | None, fp: dict, out: Path) -> bool:
    if not entry or entry.get("status") != "done" or entry.get("fingerprint", {}).get("digest") != fp["digest"]:
        return False
    results = out / entry["notebook"] / nbutils.RESULTS_FILE
    executed = out / Path(entry.get("executed", "")).name
    return (executed.is_file() and results.is_file() and _file_sig(results) == entry.get("results_sig"))


def done_setups(out: Path, state: dict) -> dict:
    """{notebook: {model, dataset, data_root, size, device}} of the folder's finished notebooks, as each resolved
    them (its results.json ``params``; the runner's parameters where a notebook records none)."""
    configs = {}
    for stem, e in sorted(state.get("notebooks", {}).items()):
        if e.get("status") == "done":
            p, r = e.get("parameters", {}), _read_results(out, stem).get("params", {})
            configs[stem] = {k: r.get(k, p.get(k)) for k in ("model", "dataset", "data_root", "size", "device")}
    return configs


def _check_same_setup(out: Path, state: dict, paths, force: bool, **resolved) -> None:
    """A run into a folder whose finished notebooks were made with another model, data root, dataset or size
    would mix two setups in one report and overwrite finished results: DataError before anything runs, naming
    both setups and the flags that reproduce the folder's. Allowed with ``force`` when the run re-runs every
    finished notebook of the folder (the whole folder then has the new setup)."""
    done = done_setups(out, state)
    if force and set(done) <= {nb.stem for nb in paths}:
        return

    def same(key, a, b):
        if key == "data_root":
            return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()
        return str(a) == str(b)

    for stem, cfg in done.items():
        diff = [k for k in ("model", "data_root", "dataset", "size")
                if cfg.get(k) is not None and not same(k, cfg[k], resolved[k])
                or k == "size" and cfg.get(k) is None and resolved[k] is not None]
        if diff:
            was = ", ".join(f"{k} {cfg.get(k) if cfg.get(k) is not None else 'full'}" for k in diff)
            now = ", ".join(f"{k} {resolved[k] if resolved[k] is not None else 'full'}" for k in diff)
            flags = " ".join(f"--{k.replace('_', '-')} {cfg[k]}" for k in diff if cfg.get(k) is not None)
            raise DataError(f"{out} holds {stem} made with {was}; this run would use {now}: re-run with the "
                            f"folder's setup ({flags or 'no --size'}; `make main` sets it from the environment), "
                            "choose another --out, or re-run every notebook with --force")


def _run(paths, folder, out, common, kernel, timeout, say, live, force) -> dict:
    import papermill as pm

    state = load_summary(out)
    state["output"] = str(out)
    entries: dict = state.setdefault("notebooks", {})
    kit = kit_identity()
    data_root = Path(common["data_root"]) if common.get("data_root") else config.data_root()
    model = str(common.get("model") or config.default_model())
    dataset = str(common.get("dataset", "ucmcom"))
    _check_same_setup(out, state, paths, force, model=model, data_root=data_root, dataset=dataset,
                      size=nbutils.resolve_size(common.get("size")))
    needs = {nb.stem: notebook_needs(nb, dataset, common) for nb in paths}
    missing = check_inputs([k for v in needs.values() for k in v], data_root, model)
    for item in missing.values():
        item.needed_by = [s for s, v in needs.items() if item.key in v]
    (out / LOG_DIR).mkdir(exist_ok=True)

    say(f"running {len(paths)} notebook(s) from {folder} -> {out}")
    say(f"  model {model} | data {data_root} | kit {kit['version']}"
        + (f" ({kit['commit']}{', modified' if kit['dirty'] else ''})" if kit["commit"] else ""))
    if missing:
        say(f"  missing inputs: {', '.join(m.what for m in missing.values())} (how to get them: at the end)")
    t_all = time.perf_counter()
    state["parameters"] = common
    state["kit"] = kit
    try:
        for i, nb in enumerate(paths, start=1):
            label = f"[{i}/{len(paths)}] {nb.stem}"
            params = dict(common, output_dir=str(out / nb.stem))
            target = out / nb.name
            fp = fingerprint(nb, params, kit, input_paths(needs[nb.stem], data_root, model))
            entry = {"notebook": nb.stem, "executed": str(target), "output_dir": str(out / nb.stem),
                     "parameters": params, "fingerprint": fp, "kit": kit, "needs": needs[nb.stem]}
            if not force and _up_to_date(entries.get(nb.stem), fp, out):
                say(f"{label}  up to date (finished {entries[nb.stem].get('finished', '?')}), skipped")
                entries[nb.stem]["status"] = "done"
                continue
            manual = [m for k, m in missing.items() if k in needs[nb.stem] and not m.automatic]
            if manual:
                say(f"{label}  SKIPPED: missing {', '.join(m.what for m in manual)}")
                entries[nb.stem] = dict(entry, status="skipped", reason="missing " + ", ".join(m.what for m in manual),
                                        missing=[m.key for m in manual])
                _write_report(out, state)
                continue
            entries[nb.stem] = dict(entry, status="running", started=_now())
            _write_report(out, state)  # a run killed from here on is reported as incomplete, not as done
            log_path = out / LOG_DIR / f"{nb.stem}.kernel.log"
            log_path.write_bytes(b"")
            bar = _Progress(label, say, live).start()
            t0 = time.perf_counter()
            try:
                pm.execute_notebook(str(nb), str(target), parameters=params, kernel_name=kernel, cwd=str(folder),
                                    progress_bar=False, log_output=False, execution_timeout=timeout,
                                    kernel_manager_class=_quiet_kernel_manager(log_path),
                                    on_notebook_start=bar.on_notebook_start, on_cell_start=bar.on_cell_start)
            except pm.PapermillExecutionError as exc:
                lacking = [m for k, m in missing.items() if k in needs[nb.stem]]
                if exc.ename in SKIP_ERRORS or lacking:
                    reason = (f"missing {', '.join(m.what for m in lacking)}" if lacking else exc.evalue)
                    bar.stop(f"SKIPPED ({reason}): {exc.ename}: {_first_line(exc.evalue)}")
                    entries[nb.stem] = dict(entry, status="skipped", reason=reason, error=f"{exc.ename}: {exc.evalue}",
                                            missing=[m.key for m in lacking])
                    _write_report(out, state)
                    continue
                bar.stop("FAILED")
                entries[nb.stem] = dict(entry, status="failed", error=f"{exc.ename}: {exc.evalue}",
                                        cell=exc.exec_count)
                raise DataError(f"notebook {nb.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
                                f"the executed copy with the traceback is {target}") from None
            except BaseException as exc:  # Ctrl-C, a dead kernel, a timeout: the notebook is incomplete
                bar.stop("INTERRUPTED" if isinstance(exc, KeyboardInterrupt) else f"FAILED ({type(exc).__name__})")
                entries[nb.stem] = dict(entry, status="interrupted" if isinstance(exc, KeyboardInterrupt)
                                        else "failed", error=f"{type(exc).__name__}: {exc}")
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise DataError(f"notebook {nb.name} did not finish: {type(exc).__name__}: {_first_line(str(exc))}"
                                f"\nits kernel log is {log_path}") from None
            seconds = time.perf_counter() - t0
            bar.stop(f"done in {seconds:.1f} s ({bar.total} cells)")
            results = out / nb.stem / nbutils.RESULTS_FILE
            entries[nb.stem] = dict(entry, status="done", seconds=round(seconds, 1), started=entries[nb.stem]["started"],
                                    finished=_now(), results_sig=_file_sig(results))
            _write_report(out, state)
    finally:
        state["seconds_last_run"] = round(time.perf_counter() - t_all, 1)
        state["missing"] = [vars(m) for m in missing.values()]
        state["kit"] = kit
        _write_report(out, state)
    return summary_view(out, state)


def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or [""])[0][:300]


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


# ----------------------------------------------------------------------------------------- the report
def summary_view(out: Path, state: dict) -> dict:
    """The record with the artefacts found on disk: ``notebooks`` (done, in order), ``skipped``, ``incomplete``."""
    listing = nbutils.list_outputs(out)
    done, skipped, incomplete = [], [], []
    for stem in sorted(state.get("notebooks", {})):
        entry = dict(state["notebooks"][stem])
        if entry.get("status") == "done":
            entry.update(listing.get(stem, {"figures": [], "tables": [], "results": []}))
            entry.setdefault("seconds", None)
            done.append(entry)
        elif entry.get("status") == "skipped":
            skipped.append(entry)
        else:
            incomplete.append(entry)
    return {"output": str(out), "seconds": state.get("seconds_last_run"), "notebooks": done, "skipped": skipped,
            "incomplete": incomplete, "missing": state.get("missing", []), "kit": state.get("kit")}


def _write_report(out: Path, state: dict) -> None:
    nbutils.write_json_atomic(out / SUMMARY, state)
    text = index_markdown(out, state)
    atomic_write(out / INDEX, lambda f: f.write(text), mode="w")


def _read_results(out: Path, stem: str) -> dict:
    try:
        return json.loads((out / stem / nbutils.RESULTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _feature_meta(path) -> dict:
    """Metadata of a feature file (only its ``meta`` entry is read)."""
    try:
        import numpy as np

        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["meta"][()]))
    except Exception:  # noqa: BLE001 - a missing or old file: the report just says less
        return {}


CONFIG_KEYS = ("model_name", "activation", "dtype", "precision", "numerics", "embed_dim", "image_size",
               "weights_sha256", "checkpoint_sha256", "weights_bytes", "preprocessing")


def headline(out: Path, entries: dict) -> list[str]:
    """Markdown lines with the headline numbers of the finished notebooks (best λ and its mAP, Table 2's
    WeiCom row, text↔image mR, text-to-text)."""
    lines = []
    done = {s for s, e in entries.items() if e.get("status") == "done"}

    def find(prefix):
        return next((s for s in sorted(done) if s.startswith(prefix)), None)

    r3 = _read_results(out, find("03") or "") if find("03") else {}
    if r3.get("best_lambda") is not None:
        dataset = r3.get("params", {}).get("dataset", "?")
        base = r3.get("baseline_avg", {})
        best_base = max(base.items(), key=lambda kv: kv[1]) if base else None
        lines.append(f"- **{_dataset_name(dataset)}, WeiCom best λ = {r3['best_lambda']:g}: mAP {r3['best_avg']:.2f}**"
                     + (f" (best baseline: {best_base[0]} {best_base[1]:.2f})" if best_base else "")
                     + f"; {r3.get('n_pairs', '?')} query pairs over {r3.get('archive_images', '?')} images")
        key = f"weicom@{r3['best_lambda']:g}"
        row = (r3.get("map") or {}).get(key) or next((v for k, v in (r3.get("map") or {}).items()
                                                      if k.startswith("weicom") and
                                                      abs(float(k.split("@")[-1]) - r3["best_lambda"]) < 1e-9), None)
        if row:
            cols = [c for c in row if c != "avg"] + (["avg"] if "avg" in row else [])
            lines.append(f"- Table 2, WeiCom (λ={r3['best_lambda']:g}) row: "
                         + ", ".join(f"{c} {row[c]:.2f}" for c in cols if row[c] is not None))
        per_dir = (r3.get("map_per_direction") or {})
        wrow, irow = per_dir.get(f"weicom@{r3['best_lambda']:g}"), per_dir.get("image")
        if wrow and irow:
            lines.append("- per direction, WeiCom (λ={:g}) vs image only: ".format(r3["best_lambda"]) + ", ".join(
                f"{d} {wrow[d]:.2f} vs {irow[d]:.2f}" for d in wrow if d != "avg" and d in irow))
    r4 = _read_results(out, find("04")) if find("04") else {}
    if r4.get("best_lambda_avg") is not None:
        grid = r4.get("lambdas") or []
        lines.append(f"- λ ablation ({len(grid)} values{', ' + _grid_text(grid) if grid else ''}): best λ "
                     f"{r4['best_lambda_avg']:g}, mAP {r4['best_avg']:.2f}"
                     + (f"; finer grid near it (step 0.02): best λ {r4['best_lambda_fine']:g}, mAP "
                        f"{r4['best_avg_fine']:.2f}" if r4.get("best_lambda_fine") is not None else ""))
    r7 = _read_results(out, find("07")) if find("07") else {}
    rec = r7.get("recall") or {}
    if rec:
        mr = rec.get("mR", rec.get("mr"))
        parts = [f"{k} {v:.2f}" for k, v in rec.items() if isinstance(v, (int, float)) and "R@" in k]
        lines.append(f"- {r7.get('caption_set', 'captions')} text↔image: **mR {mr:.2f}**"
                     + (f" ({', '.join(parts)})" if parts else ""))
    r8 = _read_results(out, find("08")) if find("08") else {}
    if r8.get("summary"):
        best = max((row for row in r8["summary"] if isinstance(row, dict) and isinstance(row.get("mR"), (int, float))),
                   key=lambda row: row["mR"], default=None)
        if best:
            name = str(best.get("index", "?")) + (f", λ={best['lambda']:g}" if isinstance(best.get("lambda"), (int, float))
                                                  else "")
            lines.append(f"- text-to-text ({r8.get('protocol', '?')} protocol): best mR {best['mR']:.2f} ({name})")
    r9 = _read_results(out, find("09")) if find("09") else {}
    if r9.get("best_method") and r9.get("best_ci"):
        lo, hi = r9["best_ci"]
        lines.append(f"- method leaderboard (hyper-parameters chosen on {r9['split']['n_validation']} validation, "
                     f"reported on {r9['split']['n_test']} test query images): best **{r9['best_method']}**, "
                     f"mAP {r9['best_map']:.2f} (95 % CI {lo:.2f}–{hi:.2f})")
    return lines


def _grid_text(grid) -> str:
    return f"{min(grid):g}…{max(grid):g}"


def _dataset_name(dataset: str) -> str:
    return {"ucmcom": "UCM-Com", "patterncom": "PatternCom"}.get(str(dataset), str(dataset))


def index_markdown(out: Path, state: dict) -> str:
    """The report: setup first (model and configuration, dataset, data root, size, kit), then the headline
    numbers, then each notebook's artefacts; incomplete and skipped notebooks and missing inputs last."""
    from .plots import model_label

    out = Path(out)
    entries = state.get("notebooks", {})
    done = {s: e for s, e in sorted(entries.items()) if e.get("status") == "done"}
    lines = ["# rscir-kit notebook outputs", ""]
    configs = done_setups(out, state)  # the resolved setup of each finished notebook (from its results.json)
    if not configs:  # nothing finished yet: what was asked for
        configs = {s: {k: e.get("parameters", {}).get(k) for k in ("model", "dataset", "data_root", "size")}
                   for s, e in sorted(entries.items())}
    first = next(iter(configs.values()), {})
    model = first.get("model") or state.get("model")
    meta = {}
    r1 = _read_results(out, next((s for s in done if s.startswith("01")), "")) if done else {}
    if r1.get("image_features"):
        meta = _feature_meta(r1["image_features"])
    kit = state.get("kit") or {}
    lines.append(f"- **Model**: {model_label(model) if model else 'see the notebooks'}")
    if model:
        lines.append(f"  - spec `{model}`")
    cfg = ", ".join(f"{k}={meta[k]}" for k in CONFIG_KEYS if k in meta)
    if cfg:
        lines.append(f"  - configuration (from the feature file): {cfg}")
    dataset = first.get("dataset", "ucmcom")
    lines.append(f"- **Dataset**: {_dataset_name(dataset)}" + (f" ({r1['archive_images']} archive images, "
                                                              f"{r1.get('classes', '?')} classes, {r1.get('query_pairs', '?')}"
                                                              " query pairs)" if r1.get("archive_images") else ""))
    lines.append(f"- **Data root**: `{first.get('data_root') or config.data_root()}`")
    size = first.get("size")
    lines.append("- **Size**: " + ("full benchmark" if size is None else f"REDUCED RUN: {size} images per class "
                                                                             "(numbers are not the benchmark's)"))
    if kit:
        commit = kit.get("commit") or "not a git checkout"
        lines.append(f"- **Kit**: rscir-kit {kit.get('version')}, commit {commit}"
                     + (" (with local changes)" if kit.get("dirty") else "") + f", source {kit.get('source_sha256')}")
    differ = sorted({k for c in configs.values() for k in ("model", "dataset", "size", "data_root")
                     if c.get(k) != first.get(k)})
    if differ:
        lines.append(f"- **Mixed configuration**: the notebooks below were not all run with the same {', '.join(differ)} "
                     "(see each notebook's line)")
    lines.append("")
    heads = headline(out, entries)
    if heads:
        lines += ["## Headline numbers", ""] + heads + [""]
    lines += ["## Artefacts", ""]
    listing = nbutils.list_outputs(out)
    for stem, e in done.items():
        took = f"{e['seconds']} s" if e.get("seconds") is not None else "?"
        extra = ""
        if differ:
            c = configs[stem]
            extra = "; " + ", ".join(f"{k}={c.get(k)}" for k in differ)
        lines.append(f"### {stem} ({took}, finished {e.get('finished', '?')}{extra})")
        lines.append(f"- executed notebook: [{Path(e['executed']).name}]({Path(e['executed']).name})")
        found = listing.get(stem)
        if not found:
            lines.append("- its results.json is missing on disk: re-run this notebook")
        for kind in ("figures", "tables", "results"):
            for f in (found or {}).get(kind, []):
                rel = Path(f).relative_to(out).as_posix()
                mark = "" if Path(f).is_file() else " (MISSING on disk)"
                lines.append(f"- {kind[:-1]}: [{rel}]({rel}){mark}")
        lines.append("")
    for stem, e in sorted(entries.items()):
        if e.get("status") in ("running", "interrupted", "failed"):
            word = {"running": "not finished (being executed now, or its run was killed)",
                    "interrupted": "interrupted", "failed": "FAILED"}[e["status"]]
            lines += [f"### {stem}: {word}", ""]
            if e.get("error"):
                lines += [f"{_first_line(e['error'])}", ""]
            lines += [f"Its outputs are partial; run the same command again to redo it "
                      f"(partially executed copy: {Path(e['executed']).name}).", ""]
    for stem, e in sorted(entries.items()):
        if e.get("status") == "skipped":
            lines += [f"### {stem}: skipped (data not available): {_first_line(e.get('reason', ''))}", ""]
    if state.get("missing"):
        lines += ["## Missing inputs", ""]
        lines += [Missing(**m).describe() for m in state["missing"]]
        lines.append("")
    return "\n".join(lines)


def print_summary(summary: dict) -> None:
    done, skipped, incomplete = summary["notebooks"], summary.get("skipped", []), summary.get("incomplete", [])
    state = "all notebooks are done" if not (skipped or incomplete) else f"{len(done)} notebook(s) done"
    took = f" ({summary['seconds']} s this run)" if summary.get("seconds") is not None else ""
    print(f"\n{state}{took}; outputs in {summary['output']}")
    for item in done:
        print(f"  {item['notebook']}: {item['executed']}")
        for f in item.get("figures", []):
            if f.endswith(".png"):
                print(f"      figure {f}  (+ .pdf)")
        for f in item.get("tables", []):
            print(f"      table  {f}")
    for item in incomplete:
        print(f"  INCOMPLETE {item['notebook']} ({item.get('status')}): run the same command again")
    for item in skipped:
        print(f"  SKIPPED {item['notebook']}: data not available. {item.get('reason', '')}")
    if summary.get("missing"):
        print("\nMissing inputs (all of them; the skipped notebooks run once they are in place):")
        for m in summary["missing"]:
            print(Missing(**m).describe())
    print(f"\n  report: {Path(summary['output']) / INDEX}")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", "--output", dest="out", default=None,
                        help="output folder (default: $RSCIR_OUTPUT or ./outputs)")
    parser.add_argument("--notebooks", default=None, help="folder of the numbered notebooks (default: repo notebooks/)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NN", help="run only these (e.g. 03 04); the "
                        "report keeps the other notebooks' earlier results")
    parser.add_argument("--force", action="store_true", help="re-run notebooks that are up to date too")
    parser.add_argument("--size", type=positive_int, default=None, help="quick run: images per class (CI: 5); default: full")
    parser.add_argument("--dataset", choices=nbutils.DATASETS, default=None, help="default: ucmcom")
    parser.add_argument("--model", default=None, help="model spec (default: $RSCIR_MODEL / the stand-in / RemoteCLIP)")
    parser.add_argument("--data-root", default=None, help="default: $RSCIR_DATA")
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: $RSCIR_CACHE)")
    parser.add_argument("--device", default=None, help="auto / cpu / cuda (default: $RSCIR_DEVICE or auto)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="any notebook parameter, value as a Python literal (e.g. -p lambdas '[0, 0.5, 1]')")
    parser.add_argument("--kernel", default=KERNEL, help="Jupyter kernel name (default: python3)")
    parser.add_argument("--timeout", type=positive_int, default=None, help="per-cell timeout in seconds")
    parser.add_argument("--strip", action="store_true",
                        help="do not run: clear the outputs of the notebooks in place (before committing them)")
    return parser


def main_from_args(args) -> int:
    if args.strip:
        paths = find_notebooks(args.notebooks or default_notebook_dir(), args.only)
        changed = strip_outputs(paths)
        print(f"stripped {len(changed)} of {len(paths)} notebook(s)" + "".join(f"\n  {p}" for p in changed))
        return 0
    try:
        summary = run(notebooks=args.notebooks, out=args.out, only=args.only, size=args.size, dataset=args.dataset,
                      model=args.model, data_root=args.data_root, cache_dir=args.cache_dir, device=args.device,
                      parameters={k: _parse_value(v) for k, v in args.parameter}, kernel=args.kernel,
                      timeout=args.timeout, force=getattr(args, "force", False))
    except KeyboardInterrupt:
        out = Path(args.out).expanduser().resolve() if args.out else config.output_dir()
        print(f"\ninterrupted: the finished notebooks are kept and listed in {out / INDEX}; run the same command "
              "again to resume (finished notebooks are skipped)", file=sys.stderr)
        return 130
    print_summary(summary)
    if not summary["notebooks"] and (summary.get("skipped") or summary.get("incomplete")):
        return 2
    return 0


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--strip-stream":
        strip_stream()
        return 0
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

"""Feature files: image features (N, d) and text features (M, d), stored as ``.npz`` with JSON metadata.

Layout (see docs/ARCHITECTURE.md): image files hold ``feats`` float32 (N, d) with L2-normalised rows,
``paths`` (N,) str relative paths, ``labels`` (N,) str, ``meta`` 0-d str (JSON); text files hold ``texts`` (M,),
``feats`` (M, d), ``meta``. Writes are atomic (temp file in the same folder + ``os.replace``).

``extract_image_features`` is resumable and caches finished work **per image file** (key: relative path, size
and mtime, optionally the content hash): chunks of encoded images go to ``<out>.partial/`` (``chunk_NNNNNN.npz``
holding ``keys`` + ``feats``, and ``manifest.json`` naming the model and the image decoding), and a finished
``out`` keeps its rows' keys (``image_keys``). Re-running after an interrupt, or with images added, removed or
rewritten, computes only the images not encoded yet; the result equals an uninterrupted run. A filelock lock keeps
two runs off one output; leftovers of killed runs are cleaned by the next one.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from . import __version__, config
from .errors import DataError, ModelMismatchError
from .imagesets import ImageCollection, decode_image
from .io import atomic_write, output_errors, remove_temp_files, run_lock, write_text_atomic
from .modelsetup import describe_config, flags_for
from .names import match_names

# Keys compared by check_same_model (the configuration, see rscir_kit.modelsetup); STRICT_KEYS are added for
# resuming/reusing an extraction. The weights are compared by SHA-256 when both sides record it, else by model name
# and file size (artefacts of older kit versions).
MODEL_KEYS = ("architecture", "activation", "precision", "embed_dim", "image_size")
IDENTITY_KEYS = ("model_name", "weights_bytes")
STRICT_KEYS = ("preprocess", "dtype")
PICKLE_SUFFIXES = (".pkl", ".pickle")


# ------------------------------------------------------------------------------------------- helpers
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _str_array(values) -> np.ndarray:
    return np.asarray([str(v) for v in values], dtype=str).reshape(-1)


def _as_float32(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor (official pickles)
        x = x.detach().cpu().float().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


#: Rows whose L2 norm is further than this from 1 are renormalised (and counted) by every loader.
UNIT_TOLERANCE = 1e-3


def check_rows(feats: np.ndarray, meta: dict, source: str, names=None) -> np.ndarray:
    """The one rule every feature loader applies to (N, d) embedding rows; returns the rows to use.

    * a row with NaN/inf or of zero length is refused (DataError naming how many rows, the first row and its name);
    * rows not of unit length (|‖x‖ - 1| > UNIT_TOLERANCE) are renormalised, with a warning naming how many were
      off, and ``meta["renormalized"]`` records that count (0 is not recorded).
    """
    if feats.size == 0:
        return feats
    finite = np.isfinite(feats).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], feats, 0), axis=1)
    bad = ~finite | (norms == 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        label = f" ({names[first]})" if names is not None and len(names) > first else ""
        raise DataError(f"{source}: {int(bad.sum())} of {len(feats)} feature rows contain NaN/inf or are all zero "
                        f"(first: row {first}{label}); scores from them would be meaningless. Re-extract the file "
                        "(rscir-kit extract --no-resume) or drop those rows")
    off = np.abs(norms - 1.0) > UNIT_TOLERANCE
    if off.any():
        n_off = int(off.sum())
        warnings.warn(f"{source}: {n_off} of {len(feats)} feature rows were not unit length (norms "
                      f"{norms[off].min():.4g}..{norms[off].max():.4g}); renormalised (recorded in meta['renormalized'])",
                      stacklevel=3)
        feats = (feats / norms[:, None]).astype(np.float32)
        meta["renormalized"] = int(meta.get("renormalized", 0)) + n_off
    return feats


def _describe(meta: dict) -> str:
    return describe_config(meta)


def _meta_value(meta: dict, key: str):
    if key == "model_name":
        return meta.get("model_name") or meta.get("model")
    value = meta.get(key)
    return list(value) if isinstance(value, tuple) else value


def check_same_model(meta_a: dict, meta_b: dict, strict: bool = False, names: tuple[str, str] = ("a", "b")) -> None:
    """Raise ModelMismatchError (one line, with the fix) when two artefacts' configurations differ.

    Compares the weights (SHA-256 when both record it, else model name and weights size), architecture, activation,
    precision, embedding size and input size (each when both record it); ``strict=True`` also compares
    preprocessing and dtype (used for resuming/reusing an extraction). Metadata without a model (an official pickle
    loaded without ``model=``) only triggers a warning.
    """
    unknown = [n for n, m in zip(names, (meta_a, meta_b)) if not (m.get("model_name") or m.get("model"))]
    if unknown:
        warnings.warn(f"cannot verify that {' and '.join(unknown)} come from the same model (no model recorded, e.g. an "
                      "imported official pickle); pass model= when loading it to enable the check", stacklevel=2)
        return
    sha_a, sha_b = meta_a.get("weights_sha256"), meta_b.get("weights_sha256")
    keys = (("weights_sha256",) if sha_a and sha_b else IDENTITY_KEYS) + MODEL_KEYS + (STRICT_KEYS if strict else ())
    diffs = []
    for k in keys:
        a, b = _meta_value(meta_a, k), _meta_value(meta_b, k)
        if a is None or b is None:
            continue
        if a != b:
            diffs.append(f"{k}: {a!r} vs {b!r}")
    if diffs:
        model = meta_a.get("model") or meta_a.get("model_name")
        flags = flags_for(meta_a)
        raise ModelMismatchError(
            f"{names[0]} ({_describe(meta_a)}) and {names[1]} ({_describe(meta_b)}) come from different models or "
            f"settings ({'; '.join(diffs)}). Make both with one configuration (for {names[0]}'s: --model {model}"
            f"{' ' + flags if flags else ''}), or delete the stale file / choose another output path.")


# ------------------------------------------------------------------------------------ image features
@dataclass
class ImageFeatures:
    """Image embeddings: ``feats`` float32 (N, d) unit rows, ``paths`` (N,) str, ``labels`` (N,) str, ``meta``."""

    feats: np.ndarray
    paths: np.ndarray
    labels: np.ndarray
    meta: dict = field(default_factory=dict)
    origin: str = field(default="", repr=False, compare=False)  # the file it was read from (for messages)
    keys: np.ndarray | None = field(default=None, repr=False, compare=False)  # per-row image file keys (extraction)

    def __post_init__(self):
        self.feats = _as_float32(self.feats)
        self.paths = _str_array(self.paths)
        self.labels = _str_array(self.labels)
        if self.keys is not None:
            self.keys = _str_array(self.keys)
            if len(self.keys) != len(self.paths):
                raise DataError(f"ImageFeatures: {len(self.keys)} image keys for {len(self.paths)} paths")
        if self.feats.ndim != 2:
            raise DataError(f"ImageFeatures: feats must be (N, d), got shape {self.feats.shape}")
        if not (len(self.feats) == len(self.paths) == len(self.labels)):
            raise DataError(f"ImageFeatures: {len(self.feats)} feature rows, {len(self.paths)} paths, "
                            f"{len(self.labels)} labels: they must match")
        self.meta = dict(self.meta)
        self.meta.setdefault("kind", "image")
        self.feats = check_rows(self.feats, self.meta, self.origin or "image features", self.paths)

    def __len__(self) -> int:
        return len(self.feats)

    def __repr__(self) -> str:
        return f"ImageFeatures(N={len(self)}, d={self.dim}, model={self.meta.get('model_name') or self.meta.get('model')})"

    @property
    def dim(self) -> int:
        return int(self.feats.shape[1])

    def save(self, path) -> Path:
        """Write ``path`` (.npz) atomically; returns the path."""
        path = Path(path)
        meta = json.dumps(self.meta, sort_keys=True)
        extra = {} if self.keys is None else {"image_keys": self.keys}
        atomic_write(path, lambda f: np.savez(f, feats=self.feats, paths=self.paths, labels=self.labels,
                                               meta=np.asarray(meta), **extra))
        return path

    @classmethod
    def load(cls, path, model: str | None = None, root=None) -> "ImageFeatures":
        """Read an ``.npz`` written by :meth:`save`, or an official WeiCom pickle (dict with feats/labels/paths).

        For pickles, ``model`` (e.g. ``"remoteclip-vit-l-14"``) records which model made them, and ``root`` (the
        dataset folder the official code joined to every path) is stripped so paths become relative like the kit's.
        Pickle files can run code when loaded: only open files you trust.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"feature file not found: {path}. Extract it first (rscir-kit extract ... --out {path}).")
        if path.suffix.lower() in PICKLE_SUFFIXES:
            return cls._load_pickle(path, model, root)
        data = _open_npz(path)
        missing = {"feats", "paths", "labels", "meta"} - set(data.files)
        if missing:
            kind = "a text feature file (use TextFeatures.load)" if "texts" in data.files else "not an image feature file"
            raise DataError(f"{path} lacks {sorted(missing)}: {kind}")
        meta = json.loads(str(data["meta"][()]))
        keys = data["image_keys"] if "image_keys" in data.files else None
        return cls(data["feats"], data["paths"], data["labels"], meta, origin=str(path), keys=keys)

    @classmethod
    def _load_pickle(cls, path: Path, model: str | None, root=None) -> "ImageFeatures":
        try:
            with open(path, "rb") as f:
                obj = pickle.load(f)
        except Exception as exc:
            raise DataError(f"cannot read pickle {path}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(obj, dict) or not {"feats", "labels", "paths"} <= set(obj):
            got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise DataError(f"{path} is not an official WeiCom feature pickle (needs a dict with keys feats, labels, "
                            f"paths; got {got})")
        feats = _as_float32(obj["feats"])
        meta = {"kind": "image", "imported": "official pickle", "source": str(path),
                "date": _now(), "n_images": int(len(feats)), "embed_dim": int(feats.shape[1]) if feats.ndim == 2 else None}
        if model:
            meta["model"] = meta["model_name"] = str(model)
        labels = obj["labels"]
        if hasattr(labels, "tolist"):
            labels = labels.tolist()
        paths = [str(p).replace("\\", "/") for p in obj["paths"]]
        if root is not None:
            prefix = str(root).replace("\\", "/").rstrip("/") + "/"
            paths = [p[len(prefix):] if p.startswith(prefix) else p for p in paths]
            meta["image_root"] = str(Path(root).resolve())
        return cls(feats, paths, list(labels), meta, origin=str(path))

    def index_of(self, names: Sequence[str], by: str = "path") -> np.ndarray:
        """Row indices (int64, len(names)) of ``names`` matched by ``"path"``, ``"basename"`` or ``"stem"``.

        Raises DataError listing the first missing names and how many are missing, or an ambiguous name
        (the duplicate rule of :mod:`rscir_kit.names`).
        """
        source = self.meta.get("source") or self.meta.get("model_name", "")
        return match_names(self.paths, names, by, what=f"feature file ({source}, {len(self)} images)")


def _open_npz(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"cannot read feature file {path}: {type(exc).__name__}: {exc}. It is not an .npz written by "
                        "rscir-kit (or it is damaged): delete it and extract again.") from exc


# ------------------------------------------------------------------------------------- text features
@dataclass
class TextFeatures:
    """Text embeddings: ``texts`` (M,) str (unique), ``feats`` float32 (M, d) unit rows, ``meta`` (kind="text")."""

    texts: np.ndarray
    feats: np.ndarray
    meta: dict = field(default_factory=dict)
    origin: str = field(default="", repr=False, compare=False)  # the file it was read from (for messages)

    def __post_init__(self):
        self.texts = _str_array(self.texts)
        self.feats = _as_float32(self.feats)
        if self.feats.ndim != 2 or len(self.feats) != len(self.texts):
            raise DataError(f"TextFeatures: {len(self.texts)} texts but feats of shape {self.feats.shape}")
        self.meta = dict(self.meta)
        self.meta.setdefault("kind", "text")
        self.feats = check_rows(self.feats, self.meta, self.origin or "text features", self.texts)
        self._index = {t: i for i, t in enumerate(self.texts.tolist())}

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        return f"TextFeatures(M={len(self)}, d={self.feats.shape[1]}, model={self.meta.get('model_name')})"

    def save(self, path) -> Path:
        path = Path(path)
        meta = json.dumps(self.meta, sort_keys=True)
        atomic_write(path, lambda f: np.savez(f, texts=self.texts, feats=self.feats, meta=np.asarray(meta)))
        return path

    @classmethod
    def load(cls, path) -> "TextFeatures":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"text feature file not found: {path}. Make it with rscir-kit encode-text --out {path}.")
        data = _open_npz(path)
        missing = {"texts", "feats", "meta"} - set(data.files)
        if missing:
            raise DataError(f"{path} lacks {sorted(missing)}: not a text feature file"
                            + (" (it holds image features: use ImageFeatures.load)" if "paths" in data.files else ""))
        return cls(data["texts"], data["feats"], json.loads(str(data["meta"][()])), origin=str(path))

    def lookup(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), d) float32 rows for ``texts``; DataError naming the texts that were not encoded."""
        if isinstance(texts, str):
            texts = [texts]
        missing = [t for t in texts if t not in self._index]
        if missing:
            raise DataError(f"{len(missing)} texts were not encoded in this text feature file ({len(self)} texts): "
                            + "; ".join(repr(t) for t in missing[:5]) + (" ..." if len(missing) > 5 else "")
                            + ". Encode them with rscir_kit.features.encode_texts(texts, encoder) or rscir-kit "
                              "encode-text.")
        return self.feats[[self._index[t] for t in texts]]


def encode_texts(texts: Sequence[str], encoder, out=None, batch_size: int = 256) -> TextFeatures:
    """Encode unique ``texts`` (duplicates dropped, first-seen order kept) -> TextFeatures; saved to ``out`` if given.

    An existing ``out`` made by another model raises ModelMismatchError; one from the same model holding exactly these
    texts is reused.
    """
    if isinstance(texts, str):
        texts = [texts]
    unique = list(dict.fromkeys(str(t) for t in texts))
    meta = dict(encoder.meta, kind="text", kit_version=__version__, date=_now(), n_texts=len(unique))
    if out is not None and Path(out).exists():
        old = TextFeatures.load(out)
        check_same_model(old.meta, encoder.meta, strict=True, names=(str(out), f"model {encoder.model_id}"))
        if old.texts.tolist() == unique:
            return old
    feats = encoder.encode_texts(unique, batch_size=batch_size)
    tf = TextFeatures(unique, feats, meta)
    if out is not None:
        tf.save(out)
    return tf


# ---------------------------------------------------------------------------------- image extraction
PARTIAL_FORMAT = 2
ON_ERROR = ("stop", "skip")


def _partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def bad_files_path(out) -> Path:
    """Where an extraction lists the images it could not read: ``<out>.bad-files.txt`` (path<TAB>reason lines)."""
    out = Path(out)
    return out.with_name(out.name + ".bad-files.txt")


def decode_workers(device=None) -> int:
    """Image decoding threads for an extraction on ``device``: the CPUs this process may use, minus one for the
    model on CUDA (up to 16); on CPU a quarter of them (the model's own threads need the rest), at least one."""
    try:
        n_cpu = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n_cpu = os.cpu_count() or 1
    if getattr(device, "type", str(device)).startswith("cuda"):
        return max(1, min(16, n_cpu - 1))
    return max(1, n_cpu // 4)


def extract_image_features(collection, encoder, out, batch_size: int = 64, resume: bool = True,
                           progress: bool = True, chunk_size: int | None = None,
                           on_chunk: Callable[[int, int], None] | None = None, on_error: str = "stop",
                           workers: int | None = None, content_hash: bool = False) -> ImageFeatures:
    """Encode every image of ``collection`` with ``encoder`` and save ImageFeatures to ``out`` (.npz).

    collection: an ImageCollection (or folder / file list / dataset object, see ``ImageCollection.from_any``);
        its ``decoding`` says how 16-bit / multi-band images become RGB.
    Finished work is cached **per image file** (key: relative path, size, mtime; ``content_hash=True`` adds the
    file's sha256): every ``chunk_size`` images (default: a multiple of ``batch_size`` near 256) go to
    ``<out>.partial/``, and the rows of an existing ``out`` from the same model are reused too, so after an
    interrupt, a removed or added image or any other list change only the images not yet encoded are computed.
    ``resume=False`` recomputes everything. Files from another model or decoding raise ModelMismatchError.
    on_error: ``"stop"`` (default) refuses missing files before any work and, after encoding every readable image,
        raises one DataError listing all unreadable ones; ``"skip"`` leaves them out (warning; ``meta["skipped"]``).
        Either way the bad files are written to :func:`bad_files_path`.
    workers: decoding threads (default :func:`decode_workers`); on CUDA batches go through pinned memory.
    A lock (``.<out>.lock``, filelock) keeps a second run on the same ``out`` out (BusyError); the temp files and
    ``.partial/`` leftovers of killed runs are cleaned. ``on_chunk(k, n_chunks)`` runs after chunk k is saved.
    """
    coll = ImageCollection.from_any(collection)
    out = Path(out)
    if batch_size < 1 or (chunk_size is not None and chunk_size < 1):
        raise DataError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    if on_error not in ON_ERROR:
        raise DataError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; give a feature file name such as {out / 'features.npz'}")
    with run_lock(out, "extraction"):
        return _extract_locked(coll, encoder, out, batch_size, resume, progress, chunk_size, on_chunk, on_error,
                               workers, content_hash)


def _extract_locked(coll, encoder, out, batch_size, resume, progress, chunk_size, on_chunk, on_error, workers,
                    content_hash) -> ImageFeatures:
    partial = _partial_dir(out)
    remove_temp_files(out)  # killed final writes (we hold the lock: no live run owns them)
    keys = coll.file_keys(content_hash)
    n = len(coll)
    missing = [i for i, k in enumerate(keys) if k is None]
    bad: dict[int, str] = {i: f"file not found: {coll.abspath(i)}" for i in missing}
    if missing and on_error == "stop":
        _write_bad_files(out, coll, bad)
        raise DataError(f"{len(missing)} of {n} images are missing (e.g. {coll.abspath(missing[0])}); full list in "
                        f"{bad_files_path(out)}. Fix the data root, remove them from the list, or pass --on-error skip "
                        "(on_error='skip') to leave them out")
    meta = dict(encoder.meta, kind="image", kit_version=__version__, image_root=str(Path(coll.root).resolve()), source=coll.source,
                image_decoding=coll.decoding.describe(),
                image_keys="path+size+mtime" + ("+sha256" if content_hash else ""))

    # ---- what is already encoded: rows of an existing `out` and of the partial cache, by image key
    cache: dict[str, np.ndarray] = {}
    old = None
    if out.exists() and resume:  # --no-resume never reads it (it may be damaged: that is why one recomputes)
        old = ImageFeatures.load(out)
        _check_reuse(old.meta, meta, what=str(out),
                     remedy=f"choose another --out, or pass --no-resume to recompute and replace {out}")
        if old.keys is not None:
            cache.update(zip(old.keys.tolist(), old.feats))
    if partial.exists():
        manifest = _read_manifest(partial)
        if not resume or manifest is None:
            if manifest is None:
                warnings.warn(f"{partial}: no readable manifest (an older kit's or damaged cache); discarding it",
                              stacklevel=3)
            shutil.rmtree(partial)
        else:
            _check_reuse(manifest["model_meta"], meta, what=str(partial),
                         remedy=f"pass --no-resume to discard {partial} (unfinished work of the other model), or "
                                "choose another --out")
    if resume and partial.exists():
        for path in sorted(partial.glob("chunk_*.npz")):
            entry = _read_chunk(path, encoder.embed_dim)
            if entry is None:
                warnings.warn(f"{path}: damaged cache chunk, recomputing its images", stacklevel=3)
                path.unlink()
                continue
            cache.update(zip(*entry))
    with output_errors(partial, "extraction cache"):
        partial.mkdir(parents=True, exist_ok=True)
        for f in partial.iterdir():  # temp files of chunk writes a kill interrupted
            if f.name.startswith("."):
                f.unlink()
        if not (partial / "manifest.json").is_file():
            manifest = {"format": PARTIAL_FORMAT, "model_meta": meta, "created": _now(), "out": out.name}
            atomic_write(partial / "manifest.json",
                         lambda f: f.write(json.dumps(manifest, indent=1, sort_keys=True).encode()))

    todo = [i for i, k in enumerate(keys) if k is not None and k not in cache]
    if chunk_size is None:
        chunk_size = batch_size * max(1, round(256 / batch_size))
    existing = [int(p.stem.split("_")[1]) for p in partial.glob("chunk_*.npz")]
    first_chunk = max(existing) + 1 if existing else 0
    chunks = [todo[s:s + chunk_size] for s in range(0, len(todo), chunk_size)]
    n_chunks = first_chunk + len(chunks)
    batches = [(c, chunk[s:s + batch_size]) for c, chunk in enumerate(chunks) for s in range(0, len(chunk), batch_size)]

    reused = n - len(todo) - len(missing)
    bar = tqdm(total=n, initial=reused + len(missing), unit="img", disable=not config.show_progress(progress), desc=f"extract {out.name}")
    try:
        done_keys: list[str] = []
        done_rows: list[np.ndarray] = []
        n_converted = 0
        for j, (c, idx, x, converted, errors) in enumerate(_decoded_batches(coll, encoder, batches, workers)):
            bad.update(errors)
            if len(idx):
                done_rows.append(encoder.encode_images(x, batch_size=len(idx)))
                done_keys.extend(keys[i] for i in idx)
                n_converted += sum(converted)
            bar.update(len(idx) + len(errors))
            if j + 1 == len(batches) or batches[j + 1][0] != c:  # chunk c complete: persist it
                k = first_chunk + c
                rows = np.concatenate(done_rows, 0) if done_rows else np.zeros((0, encoder.embed_dim), np.float32)
                _write_chunk(partial / f"chunk_{k:06d}.npz", done_keys, rows)
                cache.update(zip(done_keys, rows))
                done_keys, done_rows = [], []
                if on_chunk is not None:
                    on_chunk(k, n_chunks)
    finally:
        bar.close()

    if bad:
        _write_bad_files(out, coll, bad)
        listing = "; ".join(f"{coll.paths[i]} ({bad[i].split(': ', 1)[0]})" for i in sorted(bad)[:3])
        if on_error == "stop":
            raise DataError(f"{len(bad)} of {n} images could not be read ({listing}{' ...' if len(bad) > 3 else ''}); "
                            f"all listed in {bad_files_path(out)}. The {n - len(bad)} others are encoded and kept: fix "
                            "or remove the bad files and run again (nothing is recomputed), or pass --on-error skip "
                            "(on_error='skip') to leave them out")
        warnings.warn(f"left out {len(bad)} of {n} unreadable images ({listing}{' ...' if len(bad) > 3 else ''}); "
                      f"all listed in {bad_files_path(out)}", stacklevel=2)
    else:
        bad_files_path(out).unlink(missing_ok=True)
    good = [i for i in range(n) if i not in bad]
    good_keys = [keys[i] for i in good]
    feats = np.stack([cache[k] for k in good_keys]) if good else np.zeros((0, encoder.embed_dim), np.float32)
    sub = coll.select(good)
    meta.update(n_images=len(good), file_list_sha256=sub.fingerprint(good_keys), date=_now(), skipped=len(bad))
    if n_converted:
        warnings.warn(f"{n_converted} of the {len(todo)} images encoded in this run were not 8-bit RGB and were "
                      f"converted ({meta['image_decoding']['high_bit']}; bands "
                      f"{meta['image_decoding']['bands'] or 'as stored'})", stacklevel=2)
    if old is not None and resume and old.keys is not None and old.keys.tolist() == good_keys and \
            old.labels.tolist() == sub.labels and old.paths.tolist() == sub.paths:
        result = old  # nothing changed: the file on disk is the answer
    else:
        result = ImageFeatures(feats, sub.paths, sub.labels, meta, keys=good_keys)
        result.save(out)
    shutil.rmtree(partial, ignore_errors=True)
    return result


def _decoded_batches(coll, encoder, batches, workers):
    """Yield (chunk, indices, tensor, converted flags, {index: error}) per batch, decoded ahead by a thread pool.

    Images are decoded and preprocessed by ``workers`` threads (PIL and torch release the GIL) while the model
    runs; batches are stacked by one collating thread, into pinned memory and copied without blocking on CUDA.
    A ``preprocess`` returning numpy arrays gets numpy batches (torch is then never imported).
    """
    if not batches:
        return
    device = getattr(encoder, "device", None)
    cuda = getattr(device, "type", "") == "cuda"
    n_workers = int(workers) if workers else decode_workers(device)

    def one(i):
        try:
            image, converted = decode_image(coll.abspath(i), coll.decoding)
            return encoder.preprocess(image), converted, None
        except DataError as exc:
            return None, False, str(exc)

    def collate(futures, idx):
        results = [f.result() for f in futures]
        errors = {i: r[2] for i, r in zip(idx, results) if r[2] is not None}
        good = [(i, r) for i, r in zip(idx, results) if r[2] is None]
        x = None
        if good and isinstance(good[0][1][0], np.ndarray):
            x = np.stack([r[0] for _, r in good])
        elif good:
            import torch

            x = torch.stack([r[0] for _, r in good])
            if cuda:
                x = x.pin_memory()
        return [i for i, _ in good], x, [r[1] for _, r in good], errors

    decode = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="rscir-decode")
    stack = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rscir-collate")
    pending = []
    try:
        ahead = 2  # batches decoded ahead of the model
        for b, (c, idx) in enumerate(batches):
            pending.append((c, stack.submit(collate, [decode.submit(one, i) for i in idx], idx)))
            if len(pending) <= ahead and b + 1 < len(batches):
                continue
            c0, fut = pending.pop(0)
            good, x, conv, errors = fut.result()
            if cuda and x is not None and not isinstance(x, np.ndarray):
                x = x.to(device, non_blocking=True)
            yield c0, good, x, conv, errors
        while pending:
            c0, fut = pending.pop(0)
            good, x, conv, errors = fut.result()
            if cuda and x is not None and not isinstance(x, np.ndarray):
                x = x.to(device, non_blocking=True)
            yield c0, good, x, conv, errors
    finally:
        decode.shutdown(wait=True, cancel_futures=True)
        stack.shutdown(wait=True, cancel_futures=True)


def _write_chunk(path: Path, keys, rows: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez(f, keys=_str_array(keys), feats=np.asarray(rows, np.float32)))


def _read_chunk(path: Path, dim: int):
    """(keys, rows) of a cache chunk, or None when it is damaged or of another shape."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys, rows = z["keys"].astype(str), z["feats"]
    except Exception:
        return None
    if rows.dtype != np.float32 or rows.ndim != 2 or rows.shape != (len(keys), dim) or not np.isfinite(rows).all():
        return None
    return keys.tolist(), rows


def _read_manifest(partial: Path) -> dict | None:
    try:
        manifest = json.loads((partial / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != PARTIAL_FORMAT or "model_meta" not in manifest:
        return None
    return manifest


def _write_bad_files(out: Path, coll, bad: dict) -> None:
    lines = ["path\treason"] + [f"{coll.paths[i]}\t{' '.join(bad[i].split())}" for i in sorted(bad)]
    write_text_atomic(bad_files_path(out), "\n".join(lines) + "\n")


def _check_reuse(old_meta: dict, new_meta: dict, what: str, remedy: str) -> None:
    try:
        check_same_model(old_meta, new_meta, strict=True, names=(what, f"the requested model {new_meta.get('model')}"))
    except ModelMismatchError as exc:
        raise ModelMismatchError(f"refusing to reuse {what}: {exc} To proceed: {remedy}.") from exc
    old_dec, new_dec = old_meta.get("image_decoding"), new_meta.get("image_decoding")
    if old_dec is not None and old_dec != new_dec:
        raise ModelMismatchError(f"refusing to reuse {what}: its images were decoded with {old_dec}, this run asks "
                                 f"for {new_dec}. To proceed: {remedy}.")

"""Feature files: image features (N, d) and text features (M, d), stored as ``.npz`` with JSON metadata.

Layout (see docs/ARCHITECTURE.md): image files hold ``feats`` float32 (N, d) with L2-normalised rows,
``paths`` (N,) str relative paths, ``labels`` (N,) str, ``meta`` 0-d str (JSON); text files hold ``texts`` (M,),
``feats`` (M, d), ``meta``. Writes are atomic (temp file in the same folder + ``os.replace``).

``extract_image_features`` is resumable: finished chunks of images are kept in ``<out>.partial/`` (one
``chunk_NNNNNN.npy`` per chunk + ``manifest.json`` naming the model and the file-list hash); re-running the same
call after an interrupt only computes the missing chunks, and the result equals an uninterrupted run.
"""
from __future__ import annotations

import json
import pickle
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import __version__
from .errors import DataError, ModelMismatchError
from .io import atomic_write
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
    from .modelsetup import describe_config

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
    from .modelsetup import flags_for

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

    def __post_init__(self):
        self.feats = _as_float32(self.feats)
        self.paths = _str_array(self.paths)
        self.labels = _str_array(self.labels)
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
        atomic_write(path, lambda f: np.savez(f, feats=self.feats, paths=self.paths, labels=self.labels,
                                               meta=np.asarray(meta)))
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
        return cls(data["feats"], data["paths"], data["labels"], meta, origin=str(path))

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
            meta["image_root"] = str(root)
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
def _partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _chunk_path(partial: Path, k: int) -> Path:
    return partial / f"chunk_{k:06d}.npy"


def extract_image_features(collection, encoder, out, batch_size: int = 64, resume: bool = True,
                           progress: bool = True, chunk_size: int | None = None,
                           on_chunk: Callable[[int, int], None] | None = None) -> ImageFeatures:
    """Encode every image of ``collection`` with ``encoder`` and save ImageFeatures to ``out`` (.npz).

    collection: an ImageCollection (or folder / file list / dataset object, see ``ImageCollection.from_any``).
    Work is persisted every ``chunk_size`` images (default: a multiple of ``batch_size`` near 256) in
    ``<out>.partial/``; after an interrupt the same call resumes there. An ``out`` from the same model and image list
    is reused (``resume=False``: recomputed). Files from another model or image list raise ModelMismatchError.
    ``on_chunk(k, n_chunks)`` is called after chunk k is saved. Returns the ImageFeatures.
    """
    from tqdm.auto import tqdm

    from .imagesets import ImageCollection

    coll = ImageCollection.from_any(collection)
    out = Path(out)
    n = len(coll)
    fp = coll.fingerprint()
    if batch_size < 1 or (chunk_size is not None and chunk_size < 1):
        raise DataError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    meta = dict(encoder.meta, kind="image", kit_version=__version__, n_images=n, file_list_sha256=fp,
                image_root=str(coll.root), source=coll.source)

    if out.exists():
        old = ImageFeatures.load(out)
        _check_reuse(old.meta, meta, fp, what=str(out), remedy=f"delete {out} or choose another --out")
        if resume:
            return old

    partial = _partial_dir(out)
    manifest_path = partial / "manifest.json"
    if partial.exists() and resume:
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{partial} exists but its manifest.json is missing or damaged ({exc}); delete the folder "
                            "to start the extraction again") from exc
        _check_reuse(manifest["model_meta"], meta, fp, what=str(partial),
                     remedy=f"delete {partial} (unfinished work of the other run) or choose another --out",
                     fingerprint=manifest.get("file_list_sha256"))
        chunk_size = int(manifest["chunk_size"])
    else:
        if partial.exists():  # resume=False: the same checks protect another run's work, then start over
            try:
                old_manifest = json.loads(manifest_path.read_text())
            except (OSError, ValueError):
                old_manifest = None
            if isinstance(old_manifest, dict) and "model_meta" in old_manifest:
                _check_reuse(old_manifest["model_meta"], meta, fp, what=str(partial),
                             remedy=f"delete {partial} or choose another --out",
                             fingerprint=old_manifest.get("file_list_sha256"))
            shutil.rmtree(partial)
        if chunk_size is None:
            chunk_size = batch_size * max(1, round(256 / batch_size))
        partial.mkdir(parents=True)
        manifest = {"model_meta": meta, "file_list_sha256": fp, "n_images": n, "chunk_size": int(chunk_size),
                    "batch_size": batch_size, "created": _now()}
        atomic_write(manifest_path, lambda f: f.write(json.dumps(manifest, indent=1, sort_keys=True).encode()))

    n_chunks = (n + chunk_size - 1) // chunk_size
    bounds = [(k * chunk_size, min(n, (k + 1) * chunk_size)) for k in range(n_chunks)]
    done = [k for k, (lo, hi) in enumerate(bounds) if _chunk_ok(_chunk_path(partial, k), hi - lo, encoder.embed_dim)]
    todo = [k for k in range(n_chunks) if k not in set(done)]
    batches = [(k, start, min(hi, start + batch_size))
               for k in todo for (lo, hi) in [bounds[k]] for start in range(lo, hi, batch_size)]

    bar = tqdm(total=n, initial=sum(bounds[k][1] - bounds[k][0] for k in done), unit="img", disable=not progress,
               desc=f"extract {out.name}")
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(_preprocess, coll, encoder, *batches[0][1:]) if batches else None
            parts: list[np.ndarray] = []
            for j, item in enumerate(batches):
                k, start, stop = item
                x = pending.result()
                if j + 1 < len(batches):  # decode the next batch while this one runs through the model
                    pending = pool.submit(_preprocess, coll, encoder, *batches[j + 1][1:])
                parts.append(encoder.encode_images(x, batch_size=len(x)))
                bar.update(stop - start)
                if stop == bounds[k][1]:
                    arr = np.concatenate(parts, 0)
                    parts = []
                    atomic_write(_chunk_path(partial, k), lambda f: np.save(f, arr))
                    if on_chunk is not None:
                        on_chunk(k, n_chunks)
    finally:
        bar.close()

    feats = np.concatenate([np.load(_chunk_path(partial, k)) for k in range(n_chunks)], 0) if n_chunks else \
        np.zeros((0, encoder.embed_dim), np.float32)
    meta["date"] = _now()
    result = ImageFeatures(feats, coll.paths, coll.labels, meta)
    result.save(out)
    shutil.rmtree(partial, ignore_errors=True)
    return result


def _preprocess(coll, encoder, start: int, stop: int):
    import torch

    return torch.stack([encoder.preprocess(coll.load(i)) for i in range(start, stop)])


def _chunk_ok(path: Path, rows: int, dim: int) -> bool:
    if not path.is_file():
        return False
    try:
        arr = np.load(path, mmap_mode="r")
    except Exception:
        return False
    return arr.shape == (rows, dim) and arr.dtype == np.float32


def _check_reuse(old_meta: dict, new_meta: dict, fp: str, what: str, remedy: str, fingerprint: str | None = None):
    try:
        check_same_model(old_meta, new_meta, strict=True, names=(what, f"the requested model {new_meta.get('model')}"))
    except ModelMismatchError as exc:
        raise ModelMismatchError(f"refusing to reuse {what}: {exc} To proceed: {remedy}.") from exc
    old_fp = fingerprint if fingerprint is not None else old_meta.get("file_list_sha256")
    if old_fp != fp:
        raise ModelMismatchError(f"refusing to reuse {what}: it was made from another image list "
                                 f"({old_meta.get('n_images', '?')} images from {old_meta.get('source', '?')}; this run: "
                                 f"{new_meta.get('n_images')} images from {new_meta.get('source')}). To proceed: {remedy}.")

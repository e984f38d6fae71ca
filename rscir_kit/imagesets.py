"""Image collections: an ordered list of (relative path, label) under a root folder, and ``load_image``.

Sources:

* ``ImageCollection.from_folder(root)`` — class sub-folders, label = folder name (``root/<class>/<file>``);
* ``ImageCollection.from_file_list(csv_or_txt, root)`` — CSV with a header holding ``path`` (and optionally
  ``label``), or ``class_dir,filename`` (PatternNet style), or ``image``/``filename`` (+ ``label``/``class``);
  TXT (or header-less CSV): one relative path per line, optional second column = label; label defaults to the
  path's parent folder; whitespace-separated lines ``<path> ... <label>`` (the official WeiCom lists) also work;
* ``ImageCollection.from_dataset(obj)`` — anything with ``.image_paths`` (and ``.labels``, ``.root``),
  or an iterable of ``(path, label)`` pairs.

``limit_per_class=k`` keeps the first k images of each label (in collection order) for quick CI runs.
Order is deterministic: folders and files are sorted by name.

Images that are not 8-bit (:class:`ImageDecoding`)
---------------------------------------------------
Remote-sensing files are often 16-bit (or float) and may hold more than three bands. Encoders see 8-bit RGB, so:

* high-bit images (PIL modes ``I;16``/``I``/``F``, or any non-uint8 TIFF) are mapped to 8 bit with the quick-look
  convention: a **percentile 2–98 stretch** (values at the 2nd percentile → 0, at the 98th → 255, clipped), per band
  and **per image** by default (``stretch="image"``). ``stretch=(lo, hi)`` applies one fixed range to every image
  (per dataset: :meth:`ImageCollection.stretch_range` pools the percentiles over the collection);
  ``stretch="refuse"`` refuses such images, naming the option that converts them. They are never clipped silently.
* single-band images become grey RGB; images with more than three bands are refused unless ``bands=(r, g, b)``
  (1-based band numbers, e.g. ``(4, 3, 2)`` for Sentinel-2 true colour; CLI ``--bands 4,3,2``) says which to use.

The decoding is part of what made a feature file: it is recorded in the metadata and checked on resume.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError, ParameterError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I", "F")
_TIFF = (".tif", ".tiff")


@dataclass(frozen=True)
class ImageDecoding:
    """How an image that is not 8-bit RGB becomes the RGB an encoder sees (see the module doc).

    stretch: ``"image"`` (percentile ``percentiles`` stretch per image and band, default), ``(lo, hi)`` (one fixed
        range for all images, e.g. from :meth:`ImageCollection.stretch_range`), or ``"refuse"``.
    bands: 1-based band numbers used as (R, G, B), or one number for a grey image; None = the file's own RGB/grey
        (more than three bands are then refused).
    """

    stretch: object = "image"
    bands: tuple | None = None
    percentiles: tuple = (2.0, 98.0)

    def __post_init__(self):
        st = self.stretch
        if isinstance(st, str):
            if st not in ("image", "refuse"):
                raise ParameterError(f"stretch must be 'image', 'refuse' or a (low, high) pair, got {st!r}")
        else:
            try:
                lo, hi = (float(v) for v in st)
            except (TypeError, ValueError):
                raise ParameterError(f"stretch must be 'image', 'refuse' or a (low, high) pair, got {st!r}") from None
            if not hi > lo:
                raise ParameterError(f"stretch range needs low < high, got {st!r}")
            object.__setattr__(self, "stretch", (lo, hi))
        if self.bands is not None:
            bands = tuple(int(b) for b in self.bands)
            if len(bands) not in (1, 3) or min(bands) < 1:
                raise ParameterError(f"bands takes three 1-based band numbers (R, G, B) or one (grey), got {self.bands!r}")
            object.__setattr__(self, "bands", bands)
        lo, hi = (float(v) for v in self.percentiles)
        if not 0 <= lo < hi <= 100:
            raise ParameterError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles!r}")
        object.__setattr__(self, "percentiles", (lo, hi))

    def describe(self) -> dict:
        """JSON-able record for feature-file metadata."""
        if self.stretch == "image":
            high_bit = f"percentile {self.percentiles[0]:g}-{self.percentiles[1]:g} stretch per image and band -> 8 bit"
        elif self.stretch == "refuse":
            high_bit = "refused"
        else:
            high_bit = f"fixed range {self.stretch[0]:g}..{self.stretch[1]:g} -> 8 bit"
        return {"high_bit": high_bit, "bands": None if self.bands is None else list(self.bands)}


DEFAULT_DECODING = ImageDecoding()


def load_image(path, decoding: ImageDecoding | None = None) -> "Image.Image":
    """Open an image file as an RGB PIL image (fully decoded; high-bit/multi-band files per ``decoding``).

    Raises DataError naming the file when it is missing, unreadable, corrupt or truncated, or when its bit depth or
    band count needs an option (the message names it).
    """
    return decode_image(path, decoding)[0]


def decode_image(path, decoding: ImageDecoding | None = None):
    """(RGB PIL image, converted) where ``converted`` tells that a high-bit stretch or band selection was applied."""
    dec = decoding or DEFAULT_DECODING
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}. Check the data root (e.g. $RSCIR_DATA or --images) and that the "
                        "dataset was downloaded completely; or remove the entry from the file list.")
    arr = None
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated/corrupt files fail here, not later inside a batch
            samples = getattr(im, "tag_v2", {}).get(277, len(im.getbands()))  # TIFF SamplesPerPixel
            if samples != len(im.getbands()) and im.mode != "P":
                raise OSError(f"PIL reads {len(im.getbands())} of its {samples} bands")
            if im.mode not in _HIGH_BIT_MODES and dec.bands is None:
                return im.convert("RGB"), False
            arr = np.asarray(im.convert("RGB") if im.mode in ("P", "CMYK", "YCbCr", "1", "LA", "PA") else im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if path.suffix.lower() not in _TIFF:
            raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}. The file is corrupt or truncated: "
                            "re-download or replace it, or remove it from the collection/file list.") from exc
        arr = _read_tiff(path, exc)
    return Image.fromarray(_to_rgb8(arr, path, dec)), True


def _read_tiff(path: Path, pil_error: Exception) -> np.ndarray:
    """Bands-last array of a TIFF PIL cannot open (multi-band, 16-bit RGB, float...)."""
    try:
        import tifffile
    except ImportError:  # pragma: no cover - tifffile is a dependency
        raise DataError(f"cannot read image {path} ({pil_error}); multi-band TIFFs need tifffile: pip install tifffile")
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            arr = page.asarray()
            planar = getattr(page, "planarconfig", None) == 2 or str(getattr(page, "planarconfig", "")).endswith(
                "SEPARATE")
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}. The file is corrupt or truncated: "
                        "re-download or replace it, or remove it from the collection/file list.") from exc
    if arr.ndim == 3 and planar:
        arr = np.moveaxis(arr, 0, -1)
    return arr


def _to_rgb8(arr: np.ndarray, path: Path, dec: ImageDecoding) -> np.ndarray:
    """(H, W) or (H, W, C) array → (H, W, 3) uint8 following ``dec`` (band selection, then the stretch)."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise DataError(f"{path}: image array of shape {arr.shape} is not (height, width[, bands])")
    n_bands = arr.shape[2]
    if dec.bands is not None:
        if max(dec.bands) > n_bands:
            raise DataError(f"{path} has {n_bands} band(s) but bands={dec.bands} asks for band {max(dec.bands)} "
                            "(bands are 1-based)")
        arr = arr[:, :, [b - 1 for b in dec.bands]]
    elif n_bands > 3 and not (n_bands == 4 and arr.dtype == np.uint8 and path.suffix.lower() not in _TIFF):
        raise DataError(f"{path} has {n_bands} bands; choose which three are R, G, B with bands=(r, g, b) "
                        "(1-based; CLI --bands 4,3,2), or one for a grey image")
    elif n_bands == 4:
        arr = arr[:, :, :3]  # RGBA
    elif n_bands == 2:
        arr = arr[:, :, :1]  # grey + alpha
    if arr.dtype != np.uint8:
        if dec.stretch == "refuse":
            raise DataError(f"{path} is a {arr.dtype} image (not 8 bit); convert it with stretch='image' (CLI --stretch "
                            "image: percentile 2-98 per image) or a fixed range stretch=(low, high)")
        arr = _stretch(arr.astype(np.float64), dec)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def _stretch(arr: np.ndarray, dec: ImageDecoding) -> np.ndarray:
    """Linear map of ``lo..hi`` to 0..255 per band (clipped outside), lo/hi from ``dec``; uint8."""
    out = np.empty(arr.shape, np.uint8)
    for b in range(arr.shape[2]):
        band = arr[:, :, b]
        if isinstance(dec.stretch, tuple):
            lo, hi = dec.stretch
        else:
            finite = band[np.isfinite(band)]
            lo, hi = np.percentile(finite, dec.percentiles) if finite.size else (0.0, 0.0)
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        out[:, :, b] = np.clip(np.nan_to_num((band - lo) * scale, nan=0.0), 0, 255).round().astype(np.uint8)
    return out


@dataclass
class ImageCollection:
    """Ordered images: ``paths[i]`` (str, relative to ``root``, '/'-separated) with ``labels[i]`` (str)."""

    root: Path
    paths: list[str]
    labels: list[str]
    source: str = ""
    decoding: ImageDecoding = field(default_factory=ImageDecoding)

    def __post_init__(self):
        self.root = Path(self.root)
        self.paths = [str(p) for p in self.paths]
        self.labels = [str(x) for x in self.labels]
        if len(self.paths) != len(self.labels):
            raise DataError(f"ImageCollection: {len(self.paths)} paths but {len(self.labels)} labels")
        seen: dict[str, int] = {}
        for i, p in enumerate(self.paths):
            if p in seen:
                raise DataError(f"ImageCollection ({self.source or self.root}): path {p!r} appears twice "
                                f"(entries {seen[p]} and {i}); remove the duplicate")
            seen[p] = i

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"ImageCollection({len(self)} images, {len(self.classes)} labels, root={str(self.root)!r})"

    @property
    def classes(self) -> list[str]:
        """Distinct labels in first-appearance order."""
        return list(dict.fromkeys(self.labels))

    def abspath(self, i: int) -> Path:
        return self.root / self.paths[i]

    def load(self, i: int):
        """RGB PIL image of entry ``i`` (DataError naming the file when missing/corrupt); see ``decoding``."""
        return load_image(self.abspath(i), self.decoding)

    def file_keys(self, content_hash: bool = False) -> list[str | None]:
        """Per image, a key of its file: sha256 of (relative path, size, mtime) [+ content sha256]; None if missing.

        Feature caches are keyed by it, so a file rewritten under the same name is noticed (size or mtime change;
        ``content_hash=True`` also catches same-size edits with a restored mtime, at the cost of reading every file).
        """
        keys: list[str | None] = []
        for p in self.paths:
            try:
                st = os.stat(self.root / p)
            except OSError:
                keys.append(None)
                continue
            text = f"{p}\0{st.st_size}\0{st.st_mtime_ns}"
            if content_hash:
                text += "\0" + _file_sha256(self.root / p)
            keys.append(hashlib.sha256(text.encode("utf-8")).hexdigest()[:40])
        return keys

    def missing_files(self) -> list[str]:
        """Relative paths of the entries whose file does not exist."""
        return [p for p in self.paths if not (self.root / p).is_file()]

    def fingerprint(self, keys: Sequence[str | None] | None = None) -> str:
        """sha256 of the (path, label, size, mtime) list: identifies the image list in feature files and caches.

        ``keys``: precomputed :meth:`file_keys` (e.g. with content hashes).
        """
        keys = self.file_keys() if keys is None else keys
        h = hashlib.sha256()
        for p, lab, k in zip(self.paths, self.labels, keys):
            h.update(f"{p}\t{lab}\t{k or 'missing'}\n".encode("utf-8"))
        return h.hexdigest()

    def with_decoding(self, decoding: ImageDecoding | None = None, **options) -> "ImageCollection":
        """The same images decoded with ``decoding`` (or ``ImageDecoding(**options)``)."""
        return ImageCollection(self.root, self.paths, self.labels, self.source, decoding or ImageDecoding(**options))

    def stretch_range(self, max_pixels: int = 20000, seed: int = 0) -> tuple[float, float] | None:
        """One (low, high) stretch for the whole collection: the ``decoding.percentiles`` of a pixel sample pooled
        over every high-bit image (selected bands), or None when no image is high-bit. Reads every image once.
        """
        rng = np.random.default_rng(seed)
        samples = []
        raw = ImageDecoding(stretch=(0.0, 1.0), bands=self.decoding.bands)
        for i in range(len(self)):
            arr = _raw_array(self.abspath(i), raw)
            if arr is None or arr.dtype == np.uint8:
                continue
            flat = arr.reshape(-1)
            flat = flat[np.isfinite(flat)]
            samples.append(rng.choice(flat, size=min(max_pixels, flat.size), replace=False) if flat.size else flat)
        if not samples:
            return None
        lo, hi = np.percentile(np.concatenate(samples).astype(np.float64), self.decoding.percentiles)
        return float(lo), float(hi)

    def subset(self, limit_per_class: int | None) -> "ImageCollection":
        """First ``limit_per_class`` entries of every label (order kept); None = everything."""
        if limit_per_class is None:
            return self
        if int(limit_per_class) < 1:
            raise DataError(f"limit_per_class must be >= 1, got {limit_per_class}")
        counts: dict[str, int] = {}
        keep = []
        for i, lab in enumerate(self.labels):
            if counts.get(lab, 0) < limit_per_class:
                counts[lab] = counts.get(lab, 0) + 1
                keep.append(i)
        return ImageCollection(self.root, [self.paths[i] for i in keep], [self.labels[i] for i in keep],
                               source=f"{self.source} (limit_per_class={limit_per_class})", decoding=self.decoding)

    def select(self, indices) -> "ImageCollection":
        """Entries ``indices`` (order kept), same root, source and decoding."""
        return ImageCollection(self.root, [self.paths[i] for i in indices], [self.labels[i] for i in indices],
                               source=self.source, decoding=self.decoding)

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_folder(cls, root, limit_per_class: int | None = None,
                    extensions: Sequence[str] = IMAGE_EXTENSIONS) -> "ImageCollection":
        """Class sub-folders of ``root``: label = folder name; files sorted by name; other files ignored."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"image folder not found: {root}. Pass the folder holding one sub-folder per class "
                            "(e.g. .../ucm/images).")
        exts = {e.lower() for e in extensions}
        paths, labels = [], []
        for class_dir in sorted(d for d in root.iterdir() if d.is_dir()):
            for f in sorted(class_dir.rglob("*")):
                if f.is_file() and f.suffix.lower() in exts:
                    paths.append(f.relative_to(root).as_posix())
                    labels.append(class_dir.name)
        if not paths:
            raise DataError(f"no images ({', '.join(sorted(exts))}) found in class sub-folders of {root}. Expected "
                            f"{root}/<class>/<image>; for a flat folder or other layout use a file list.")
        return cls(root, paths, labels, source=str(root)).subset(limit_per_class)

    @classmethod
    def from_file_list(cls, file_list, root=None, limit_per_class: int | None = None) -> "ImageCollection":
        """CSV/TXT of relative paths (+ labels); ``root`` defaults to the list's folder. See module doc."""
        file_list = Path(file_list).expanduser()
        if not file_list.is_file():
            raise DataError(f"file list not found: {file_list}")
        root = Path(root).expanduser() if root is not None else file_list.parent
        with open(file_list, newline="", encoding="utf-8-sig") as f:
            text = f.read()
        delim = "\t" if file_list.suffix.lower() == ".tsv" else ","
        first = next((line for line in text.splitlines() if line.strip()), "")
        if delim not in first and len(first.split()) > 1:
            # whitespace-separated list as in the official WeiCom code: "<path> ... <label>" per line
            rows = [[r.split()[0], r.split()[-1]] if r.split() else [] for r in text.splitlines()]
        else:
            rows = [r for r in csv.reader(text.splitlines(), delimiter=delim)]
        numbered = [(n + 1, [c.strip() for c in r]) for n, r in enumerate(rows) if r and any(c.strip() for c in r)]
        if not numbered:
            raise DataError(f"file list {file_list} is empty")
        head = [c.lower() for c in numbered[0][1]]
        path_col = label_col = dir_col = None
        if "class_dir" in head and "filename" in head:
            dir_col, path_col = head.index("class_dir"), head.index("filename")
        else:
            for name in ("path", "image", "filename", "file"):
                if name in head:
                    path_col = head.index(name)
                    break
        if path_col is not None:
            for name in ("label", "class", "category"):
                if name in head:
                    label_col = head.index(name)
                    break
            numbered = numbered[1:]
        else:
            path_col, label_col = 0, (1 if len(numbered[0][1]) > 1 else None)
        paths, labels = [], []
        for line_no, row in numbered:
            need = max(c for c in (path_col, label_col, dir_col) if c is not None)
            if len(row) <= need:
                raise DataError(f"{file_list}, line {line_no}: expected at least {need + 1} columns, got {row}. "
                                "Fix or remove that row.")
            rel = row[path_col]
            if dir_col is not None:
                rel = f"{row[dir_col]}/{rel}"
            rel = rel.replace("\\", "/")
            if not rel:
                raise DataError(f"{file_list}, line {line_no}: empty path. Fix or remove that row.")
            if label_col is not None and row[label_col]:
                label = row[label_col]
            elif dir_col is not None:
                label = row[dir_col]
            else:
                parts = rel.split("/")
                if len(parts) < 2:
                    raise DataError(f"{file_list}, line {line_no}: no label column and {rel!r} has no class folder "
                                    "to take the label from. Add a label column (path,label).")
                label = parts[-2]
            paths.append(rel)
            labels.append(label)
        return cls(root, paths, labels, source=str(file_list)).subset(limit_per_class)

    @classmethod
    def from_dataset(cls, dataset, root=None, limit_per_class: int | None = None) -> "ImageCollection":
        """From an object with ``.image_paths`` (+ ``.labels``, ``.root``) or an iterable of (path, label)."""
        if hasattr(dataset, "image_paths"):
            paths = [str(p) for p in dataset.image_paths]
            labels = list(getattr(dataset, "labels", None) if getattr(dataset, "labels", None) is not None
                          else [Path(p).parent.name for p in paths])
            root = root if root is not None else getattr(dataset, "root", None) or getattr(dataset, "image_root", None)
        else:
            pairs = list(dataset)
            try:
                paths = [str(p) for p, _ in pairs]
                labels = [lab for _, lab in pairs]
            except (TypeError, ValueError) as exc:
                raise DataError(f"from_dataset: expected .image_paths/.labels or an iterable of (path, label) pairs, "
                                f"got {type(dataset).__name__}") from exc
        if root is None:
            if paths and all(os.path.isabs(p) for p in paths):
                root = Path(os.path.commonpath([str(Path(p).parent) for p in paths]))
            else:
                root = Path(".")
        root = Path(root)
        rel = []
        for p in paths:
            pp = Path(p)
            if pp.is_absolute():
                try:
                    pp = pp.relative_to(root)
                except ValueError as exc:
                    raise DataError(f"from_dataset: image {p} is not under the root {root}; pass root=") from exc
            rel.append(pp.as_posix())
        return cls(root, rel, [str(x) for x in labels], source=type(dataset).__name__).subset(limit_per_class)

    @classmethod
    def from_any(cls, source, root=None, limit_per_class: int | None = None) -> "ImageCollection":
        """Dispatch: a collection (returned, subset), a folder, a file list path, or a dataset object."""
        if isinstance(source, ImageCollection):
            return source.subset(limit_per_class)
        if isinstance(source, (str, os.PathLike)):
            p = Path(source)
            if p.is_dir():
                return cls.from_folder(p, limit_per_class)
            return cls.from_file_list(p, root, limit_per_class)
        return cls.from_dataset(source, root, limit_per_class)



def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _raw_array(path: Path, dec: ImageDecoding) -> np.ndarray | None:
    """Band-selected pixel values of a high-bit image before any stretch (None for 8-bit RGB files)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in _HIGH_BIT_MODES:
                return None
            arr = np.asarray(im)
    except Exception as exc:
        if path.suffix.lower() not in _TIFF:
            raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
        arr = _read_tiff(path, exc)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if dec.bands is not None:
        if max(dec.bands) > arr.shape[2]:
            raise DataError(f"{path} has {arr.shape[2]} band(s) but bands={dec.bands} asks for band {max(dec.bands)}")
        arr = arr[:, :, [b - 1 for b in dec.bands]]
    return arr

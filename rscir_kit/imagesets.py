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
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def load_image(path) -> "Image.Image":
    """Open an image file as an RGB PIL image (fully decoded).

    Raises DataError naming the file when it is missing, unreadable, corrupt or truncated.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}. Check the data root (e.g. $RSCIR_DATA or --images) and that the "
                        "dataset was downloaded completely; or remove the entry from the file list.")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated/corrupt files fail here, not later inside a batch
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}. The file is corrupt or truncated: "
                        "re-download or replace it, or remove it from the collection/file list.") from exc


@dataclass
class ImageCollection:
    """Ordered images: ``paths[i]`` (str, relative to ``root``, '/'-separated) with ``labels[i]`` (str)."""

    root: Path
    paths: list[str]
    labels: list[str]
    source: str = ""

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
        """RGB PIL image of entry ``i`` (DataError naming the file when missing/corrupt)."""
        return load_image(self.abspath(i))

    def fingerprint(self) -> str:
        """sha256 of the (path, label) list: identifies the file list in feature files and resume manifests."""
        h = hashlib.sha256()
        for p, lab in zip(self.paths, self.labels):
            h.update(f"{p}\t{lab}\n".encode("utf-8"))
        return h.hexdigest()

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
                               source=f"{self.source} (limit_per_class={limit_per_class})")

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


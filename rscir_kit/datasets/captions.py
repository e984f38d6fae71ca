"""Remote-sensing caption sets: UCM-Captions, RSICD, RSITMD, Sydney-Captions.

RSICD, RSITMD and Sydney-Captions (and the original UCM-Captions) share the Karpathy ``dataset_*.json``
format::

    {"images": [{"filename": "airport_1.jpg", "imgid": 0, "split": "train"|"val"|"test",
                 "sentences": [{"raw": "...", "tokens": [...], ...}, ...]}, ...], "dataset": "rsicd"}

:func:`load_caption_set` reads it (or this kit's simpler ``{"images": [{"image", "split",
"sentences": [str]}]}``). None of these sets can be fetched automatically (they are distributed through
cloud drives): download them from their authors' pages and point ``load_caption_set`` at the JSON.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import data_root as default_data_root
from ..errors import DataError, DatasetNotFoundError, ParameterError
from ..io import read_text
from .base import CaptionBenchmark


@dataclass
class CaptionSet:
    """Images and their reference captions.

    ``images`` (N,) str image keys (UCM name or file name), ``splits`` (N,) str,
    ``captions``: list of N lists of sentences. Flattened views: :attr:`texts` (M,) and
    :attr:`caption_image` (M,) int64 — the image index of each caption.
    """

    name: str
    images: np.ndarray
    splits: np.ndarray
    captions: list
    source: str = ""
    image_dir: Path | None = field(default=None)

    def __post_init__(self):
        self.images = np.asarray(self.images, dtype=str)
        self.splits = np.asarray(self.splits, dtype=str)
        if not (len(self.images) == len(self.splits) == len(self.captions)):
            raise DataError(f"{self.source or self.name}: {len(self.images)} images, {len(self.splits)} splits, "
                            f"{len(self.captions)} caption lists; they must match.")
        empty = [str(im) for im, caps in zip(self.images, self.captions) if len(caps) == 0]
        if empty:
            raise DataError(f"{self.source or self.name}: images without any caption: {empty[:5]}.")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def texts(self) -> np.ndarray:
        """(M,) all captions, image by image."""
        return np.asarray([c for caps in self.captions for c in caps], dtype=str)

    @property
    def caption_image(self) -> np.ndarray:
        """(M,) int64 index (into :attr:`images`) of each caption's image."""
        return np.repeat(np.arange(len(self.images), dtype=np.int64), [len(c) for c in self.captions])

    def split(self, split: str | Sequence[str]) -> "CaptionSet":
        """Subset with the images whose split is ``split`` (a name or a list of names)."""
        wanted = [split] if isinstance(split, str) else list(split)
        keep = np.isin(self.splits, wanted)
        if not keep.any():
            raise DataError(f"{self.source or self.name}: no image in split {wanted}; splits present: "
                            f"{sorted(set(self.splits.tolist()))}.")
        out = self.subset(np.flatnonzero(keep))
        out.name = f"{self.name}[{'+'.join(wanted)}]"
        return out

    def subset(self, rows: Sequence[int]) -> "CaptionSet":
        """Subset with the images at positions ``rows`` (in that order)."""
        idx = np.asarray(rows, dtype=np.int64)
        return CaptionSet(self.name, self.images[idx], self.splits[idx], [list(self.captions[i]) for i in idx],
                          self.source, self.image_dir)

    def split_sizes(self) -> dict:
        names, counts = np.unique(self.splits, return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts)}

    # ------------------------------------------------------------------ readers
    @classmethod
    def from_karpathy(cls, data: dict | str | os.PathLike, name: str | None = None, source: str = "",
                      image_dir=None) -> "CaptionSet":
        """Read the Karpathy ``dataset_*.json`` format (dict or path). Sentence text = ``raw`` (stripped),
        else the joined ``tokens``."""
        data, source, entries = _image_entries(data, source, "a Karpathy-style dataset_*.json")
        images, splits, captions = [], [], []
        for i, entry in enumerate(entries):
            try:
                fname = entry["filename"]
                sents = entry["sentences"]
            except (KeyError, TypeError) as exc:
                raise DataError(f"{source}: images[{i}] lacks {exc}; each entry needs 'filename' and 'sentences'.") \
                    from exc
            texts = []
            for s in sents:
                raw = s.get("raw") if isinstance(s, dict) else s
                if (raw is None or not str(raw).strip()) and isinstance(s, dict):
                    raw = " ".join(s.get("tokens", []))
                if raw is not None and str(raw).strip():
                    texts.append(str(raw).strip())
            images.append(fname)
            splits.append(entry.get("split", "train"))
            captions.append(texts)
        return cls(name or str(data.get("dataset", "captions")), np.asarray(images), np.asarray(splits), captions,
                   source, Path(image_dir) if image_dir else None)

    @classmethod
    def from_kit_json(cls, data: dict | str | os.PathLike, name: str = "captions", source: str = "",
                      image_dir=None) -> "CaptionSet":
        """Read ``{"images": [{"image": key, "split": s, "sentences": [str]}]}`` (dict or path)."""
        data, source, entries = _image_entries(data, source, "{'images': [{'image', 'split', 'sentences'}]}")
        images, splits, captions = [], [], []
        for i, entry in enumerate(entries):
            try:
                images.append(str(entry["image"]))
                splits.append(str(entry["split"]))
                captions.append([str(s).strip() for s in entry["sentences"] if str(s).strip()])
            except (KeyError, TypeError) as exc:
                raise DataError(f"{source}: images[{i}] lacks {exc}; each entry needs image, split, sentences.") \
                    from exc
        return cls(name, np.asarray(images), np.asarray(splits), captions, source,
                   Path(image_dir) if image_dir else None)


def _image_entries(data, source: str, expected: str):
    """(data dict, source name, its non-empty ``images`` list) from a dict or a JSON path."""
    if not isinstance(data, dict):
        source = source or str(data)
        data = json.loads(read_text(data, "caption JSON"))
    entries = data.get("images")
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{source}: no 'images' list; expected {expected}.")
    return data, source, entries


def load_caption_set(path: str | os.PathLike, name: str | None = None, image_dir=None) -> CaptionSet:
    """Read a caption-set JSON in either format (detected from the first entry).

    ``image_dir``: folder of the images (e.g. ``RSICD_images``); defaults to ``<json folder>/images``
    when that exists. Keys in :attr:`CaptionSet.images` are file names relative to it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"caption file {path} not found; download the caption set from its authors' page "
                        f"(RSICD/UCM/Sydney: github.com/201528014227051/RSICD_optimal; RSITMD: "
                        f"github.com/xiaoyuan1996/AMFMN) and pass the path of its dataset_*.json.")
    try:
        data = json.loads(read_text(path, "caption JSON"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}).") from exc
    if image_dir is None and (path.parent / "images").is_dir():
        image_dir = path.parent / "images"
    first = (data.get("images") or [{}])[0] if isinstance(data, dict) else {}
    if "filename" in first:
        return CaptionSet.from_karpathy(data, name=name or path.stem.replace("dataset_", ""), source=str(path),
                                        image_dir=image_dir)
    return CaptionSet.from_kit_json(data, name=name or path.stem, source=str(path), image_dir=image_dir)


class CaptionFile(CaptionBenchmark):
    """A caption set in a ``dataset_*.json`` (RSICD, RSITMD, Sydney-Captions, UCM-Captions...) as a benchmark.

    ``root``: the JSON file, or a folder holding exactly one ``dataset_*.json``. ``image_dir``: the folder of
    the images (default ``<json folder>/images`` when it exists).
    """

    name, title, url = "captions", "caption set", "https://github.com/201528014227051/RSICD_optimal"

    def __init__(self, root=None, image_dir=None, download: bool = False):
        root = Path(root).expanduser() if root is not None else self.default_root()
        self.root = root
        self.manual = ("download the caption set from its authors' page (RSICD/UCM/Sydney: "
                       "github.com/201528014227051/RSICD_optimal; RSITMD: github.com/xiaoyuan1996/AMFMN) and pass the "
                       "path of its dataset_*.json")
        path = root
        if root.is_dir():
            found = sorted(root.glob("dataset_*.json"))
            if len(found) > 1:
                raise ParameterError(f"{root} holds several caption files ({', '.join(f.name for f in found)}); "
                                     "pass the one to use")
            path = found[0] if found else root / "dataset_*.json"
        if not path.is_file():
            raise DatasetNotFoundError(self, str(path), download=download)
        self.path = path
        self.caption_set = load_caption_set(path, image_dir=image_dir)

    @classmethod
    def default_root(cls, data_root=None) -> Path:
        return Path(data_root or default_data_root())

    def queries(self, split: str | Sequence[str] = "test") -> CaptionSet:
        return self.caption_set.split(split)

    def image_files(self, caption_set) -> tuple[Path, list[str]]:
        if caption_set.image_dir is None:
            raise ParameterError(f"pass image_dir= (the folder of the images of {self.path}).")
        return Path(caption_set.image_dir), caption_set.images.tolist()

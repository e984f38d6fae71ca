"""UC Merced Land Use (Yang & Newsam 2010) and its two standard annotation sets.

* :class:`UCMImages` — 2,100 images, 21 classes × 100 (``<class>NN``, e.g. ``airplane07``).
* :class:`UCMMultiLabel` — the 17-label multi-label annotation (Chaudhuri et al. 2018).
* :class:`UCMCaptions` — UCM-Captions (Qu et al. 2016), five sentences per image, train/val/test split.

Every class takes ``root`` (default ``$RSCIR_DATA/ucm``). When the files are there nothing is
downloaded; with ``download=True`` and files missing, the original public sources are fetched
(UCM images, multi-labels) or a :class:`~rscir_kit.errors.DataError` explains the manual steps
(UCM-Captions is only distributed through cloud drives). Images are keyed by their *name*
(file stem, e.g. ``airplane07``), so any extension (original ``.tif``, converted ``.jpg``) works.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..config import data_root
from ..errors import DataError, DatasetNotFoundError
from ..imagesets import IMAGE_EXTENSIONS
from ..io import download_file, read_text
from ..names import match_names, name_key
from .base import CaptionBenchmark
from .captions import CaptionSet

UCM_CLASSES = (
    "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral",
    "denseresidential", "forest", "freeway", "golfcourse", "harbor", "intersection",
    "mediumresidential", "mobilehomepark", "overpass", "parkinglot", "river", "runway",
    "sparseresidential", "storagetanks", "tenniscourt",
)
# Class names as words (for prompts): "baseballdiamond" -> "baseball diamond".
UCM_CLASS_TEXT = {
    "agricultural": "agricultural field", "airplane": "airplane", "baseballdiamond": "baseball diamond",
    "beach": "beach", "buildings": "buildings", "chaparral": "chaparral", "denseresidential": "dense residential area",
    "forest": "forest", "freeway": "freeway", "golfcourse": "golf course", "harbor": "harbor",
    "intersection": "intersection", "mediumresidential": "medium residential area",
    "mobilehomepark": "mobile home park", "overpass": "overpass", "parkinglot": "parking lot", "river": "river",
    "runway": "runway", "sparseresidential": "sparse residential area", "storagetanks": "storage tanks",
    "tenniscourt": "tennis court",
}
UCM_LABELS = (
    "airplane", "bare-soil", "buildings", "cars", "chaparral", "court", "dock", "field", "grass",
    "mobile-home", "pavement", "sand", "sea", "ship", "tanks", "trees", "water",
)
IMAGES_PER_CLASS = 100

UCM_IMAGES_URL = "http://weegee.vision.ucmerced.edu/datasets/UCMerced_LandUse.zip"
# MD5 of UCMerced_LandUse.zip as published by torchgeo for its mirror of the same archive. We have
# not verified it against the original server ourselves: a mismatch warns, and the extracted tree
# is always checked (21 classes × 100 images) — that structure check is what we rely on.
UCM_IMAGES_MD5 = "5b7ec56793786b6dc8a908e8854ac0e4"
UCM_MULTILABEL_URL = "https://bigearth.eu/assets/docs/multilabels.zip"  # no published checksum
UCM_CAPTIONS_HOME = "https://github.com/201528014227051/RSICD_optimal"


def default_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` or ``$RSCIR_DATA/ucm``."""
    if root is not None:
        return Path(root).expanduser()
    return data_root() / "ucm"


def image_class(name: str) -> str:
    """Class of a UCM image name: the prefix before the trailing digits (``airplane07`` → ``airplane``)."""
    stem = Path(str(name)).stem
    return stem.rstrip("0123456789")


# --------------------------------------------------------------------------------------------- download
def _extract(zip_path: Path, into: Path) -> None:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(into)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{zip_path} is not a valid zip archive ({exc}); delete it and download again.") from exc


# ----------------------------------------------------------------------------------------------- images
class UCMImages:
    """The 2,100 UC Merced images found under ``root``.

    Layouts: ``root/images/<class>/<class>NN.<ext>`` (this kit's), or the extracted original
    ``root/UCMerced_LandUse/Images/<class>/<class>NN.tif``.

    Attributes: ``image_dir`` (Path), ``names`` (N,) str, ``classes`` (N,) str,
    ``paths`` (N,) str relative to ``image_dir`` (``airplane/airplane07.jpg``), sorted by class then name.
    """

    LAYOUTS = ("images", "UCMerced_LandUse/Images", "Images")
    title, url, downloadable = "UC Merced images", UCM_IMAGES_URL, True
    download_command = "rscir-kit ucm download"

    def __init__(self, root: str | os.PathLike | None = None, download: bool = False, strict: bool = True):
        self.root = default_root(root)
        self.manual = (f"download {UCM_IMAGES_URL} by hand and unzip it into {self.root} (or put the zip at "
                       f"{self.root / 'UCMerced_LandUse.zip'}: download=True extracts it)")
        image_dir = self._find()
        if image_dir is None:
            if not download:
                raise DatasetNotFoundError(self, ", ".join(self.LAYOUTS))
            image_dir = self.download(self.root)
        self.image_dir = image_dir
        paths = sorted(p.relative_to(image_dir).as_posix() for p in image_dir.glob("*/*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS)
        self.paths = np.asarray(paths, dtype=str)
        self.names = np.asarray([name_key(p, "stem") for p in paths], dtype=str)
        self.classes = np.asarray([p.split("/")[0] for p in paths], dtype=str)
        if strict:
            self.check()

    def _find(self) -> Path | None:
        for rel in self.LAYOUTS:
            d = self.root / rel
            if d.is_dir() and any(d.glob("*/*")):
                return d
        return None

    def check(self) -> None:
        """Raise DataError unless there are exactly 21 known classes × 100 uniquely named images."""
        counts = {c: int((self.classes == c).sum()) for c in UCM_CLASSES}
        bad = {c: n for c, n in counts.items() if n != IMAGES_PER_CLASS}
        unknown = sorted(set(self.classes) - set(UCM_CLASSES))
        if bad or unknown or len(set(self.names)) != len(self.names):
            raise DataError(f"{self.image_dir}: expected 21 classes × 100 images; wrong counts {bad}, "
                            f"unknown folders {unknown[:5]}. Re-extract {UCM_IMAGES_URL} or pass strict=False.")

    @staticmethod
    def download(root: str | os.PathLike) -> Path:
        """Fetch and extract the original archive into ``root``; returns the image folder."""
        root = Path(root)
        zip_path = root / "UCMerced_LandUse.zip"
        if not zip_path.is_file():
            download_file(UCM_IMAGES_URL, zip_path, md5=UCM_IMAGES_MD5)
        _extract(zip_path, root)
        return root / "UCMerced_LandUse" / "Images"

    def __len__(self) -> int:
        return len(self.paths)

    def files(self) -> list[Path]:
        """Absolute image paths (N,)."""
        return [self.image_dir / p for p in self.paths]

    def path_of(self, names: Iterable[str]) -> np.ndarray:
        """Relative paths (str) of image names; DataError on an unknown name."""
        return self.paths[match_names(self.paths, names, by="stem", what=f"images under {self.image_dir}")]


# ------------------------------------------------------------------------------------------ multilabels
class UCMMultiLabel:
    """The 17-label UCM multi-label annotation.

    ``names`` (N,) str image names, ``classes`` (N,) str, ``labels`` tuple of 17 str,
    ``matrix`` (N, 17) bool. File: ``root/multilabels.tsv`` (tab-separated, header ``IMAGE\\LABEL``
    then the labels; one 0/1 row per image), or the original ``LandUse_Multilabeled.txt``.
    """

    FILENAMES = ("multilabels.tsv", "LandUse_Multilabeled.txt", "multilabels/LandUse_Multilabeled.txt")
    title, url, downloadable = "UCM multi-label annotation", UCM_MULTILABEL_URL, True
    download_command = "rscir-kit ucm download"

    def __init__(self, root: str | os.PathLike | None = None, download: bool = False, path=None):
        self.root = default_root(root)
        self.manual = (f"download {UCM_MULTILABEL_URL} by hand, unzip it and copy LandUse_Multilabeled.txt to "
                       f"{self.root / 'multilabels.tsv'}")
        if path is None:
            root_dir = self.root
            path = next((root_dir / f for f in self.FILENAMES if (root_dir / f).is_file()), None)
            if path is None:
                if not download:
                    raise DatasetNotFoundError(self, ", ".join(self.FILENAMES))
                path = self.download(root_dir)
        self.path = Path(path)
        self.names, self.labels, self.matrix = self.read(self.path)
        self.classes = np.asarray([image_class(n) for n in self.names], dtype=str)

    @staticmethod
    def read(path: str | os.PathLike) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
        """Parse the tab-separated 0/1 table → (names (N,), labels, matrix (N, L) bool).

        Raises DataError naming the file and line of a malformed row.
        """
        path = Path(path)
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        if not lines:
            raise DataError(f"{path} is empty; expected a header 'IMAGE\\LABEL<TAB>label...' and 0/1 rows.")
        header = lines[0].rstrip("\r").split("\t")
        labels = tuple(h.strip() for h in header[1:])
        if len(labels) == 0 or len(set(labels)) != len(labels):
            raise DataError(f"{path}:1: header must be 'IMAGE\\LABEL' followed by unique label names; got {header}.")
        names, rows = [], []
        for lineno, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\r").split("\t")
            if len(fields) != len(labels) + 1:
                raise DataError(f"{path}:{lineno}: expected {len(labels) + 1} tab-separated fields, got "
                                f"{len(fields)}; fix or remove that row.")
            values = [f.strip() for f in fields[1:]]
            if any(v not in ("0", "1") for v in values):
                raise DataError(f"{path}:{lineno}: label values must be 0 or 1, got {values}.")
            names.append(name_key(fields[0].strip(), "stem"))
            rows.append([v == "1" for v in values])
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise DataError(f"{path}: image names occur more than once: {dup[:5]}.")
        return np.asarray(names, dtype=str), labels, np.asarray(rows, dtype=bool).reshape(len(rows), len(labels))

    @classmethod
    def download(cls, root: str | os.PathLike) -> Path:
        """Fetch the BigEarth archive, find the 0/1 table in it and copy it to ``root/multilabels.tsv``.

        No checksum is published for it: the content is checked by parsing it (header, 17 labels, 2,100 rows).
        """
        root = Path(root)
        zip_path = root / "multilabels.zip"
        if not zip_path.is_file():
            download_file(UCM_MULTILABEL_URL, zip_path)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            _extract(zip_path, Path(tmp))
            for cand in sorted(Path(tmp).rglob("*")):
                if cand.is_file() and cand.suffix.lower() in (".txt", ".tsv", ".csv"):
                    head = cand.read_text(encoding="utf-8-sig", errors="replace")[:64]
                    if head.upper().startswith("IMAGE"):
                        names, labels, _ = cls.read(cand)
                        if set(labels) != set(UCM_LABELS) or len(names) != 2100:
                            raise DataError(f"{zip_path}: table {cand.name} has {len(names)} rows and labels "
                                            f"{labels}; expected 2,100 rows and the 17 UCM labels.")
                        shutil.copyfile(cand, root / "multilabels.tsv")
                        return root / "multilabels.tsv"
        raise DataError(f"{zip_path} holds no table starting with 'IMAGE\\LABEL'; unzip it by hand and copy "
                        f"the label table to {root / 'multilabels.tsv'}.")

    def __len__(self) -> int:
        return len(self.names)

    def has(self, label: str) -> np.ndarray:
        """(N,) bool: which images carry ``label``."""
        if label not in self.labels:
            raise DataError(f"unknown label {label!r}; the annotation {self.path} has {list(self.labels)}.")
        return self.matrix[:, self.labels.index(label)]

    def counts(self):
        """DataFrame (class × label) of how many images of each class carry each label."""
        df = pd.DataFrame(self.matrix.astype(int), columns=list(self.labels))
        df.insert(0, "class", self.classes)
        return df.groupby("class").sum()

    def labels_of(self, name: str) -> list[str]:
        i = match_names(self.names, [name], by="stem", what=f"annotation {self.path}")[0]
        return [lab for lab, on in zip(self.labels, self.matrix[i]) if on]


# --------------------------------------------------------------------------------------------- captions
def ucm_name_from_number(number: int) -> str:
    """Original UCM-Captions file ``<k>.tif`` (k = 1..2100) → UCM image name.

    UCM-Captions numbers the images in class-alphabetical order, 100 per class:
    ``1.tif`` = ``agricultural00``, ``101.tif`` = ``airplane00``, ``2100.tif`` = ``tenniscourt99``.
    """
    k = int(number) - 1
    if not 0 <= k < len(UCM_CLASSES) * IMAGES_PER_CLASS:
        raise DataError(f"UCM-Captions image number {number} is outside 1..2100.")
    return f"{UCM_CLASSES[k // IMAGES_PER_CLASS]}{k % IMAGES_PER_CLASS:02d}"


class UCMCaptions(CaptionBenchmark):
    """UCM-Captions as a :class:`~rscir_kit.datasets.captions.CaptionSet` keyed by UCM image names.

    Files (first found): ``root/captions.json`` (this kit's: ``{"images": [{"image", "split",
    "sentences": [str]}]}``) or the original Karpathy-style ``root/dataset.json`` whose ``<k>.tif``
    names are mapped with :func:`ucm_name_from_number`. ``.captions`` is the CaptionSet;
    ``.split(name)`` its subset. Not downloadable automatically (cloud-drive only): see the error.
    """

    FILENAMES = ("captions.json", "dataset.json", "UCM_captions/dataset.json", "dataset_ucm.json")
    name, title, url, downloadable = "ucm-captions", "UCM-Captions", UCM_CAPTIONS_HOME, False

    def __init__(self, root: str | os.PathLike | None = None, download: bool = False, path=None):
        root_dir = self.root = default_root(root)
        self.manual = (f"it is distributed through cloud drives only: follow the UCM-Captions link at "
                       f"{UCM_CAPTIONS_HOME}, unpack it and copy its dataset.json to {root_dir / 'dataset.json'}")
        if path is None:
            path = next((root_dir / f for f in self.FILENAMES if (root_dir / f).is_file()), None)
            if path is None:
                raise DatasetNotFoundError(self, ", ".join(self.FILENAMES), download=download)
        self.path = Path(path)
        data = json.loads(read_text(self.path, "caption JSON"))
        if data.get("images") and "filename" in data["images"][0]:
            cs = CaptionSet.from_karpathy(data, name="ucm-captions", source=str(self.path))
            names = [ucm_name_from_number(Path(n).stem) for n in cs.images]
            cs = CaptionSet(cs.name, np.asarray(names, dtype=str), cs.splits, cs.captions, cs.source)
        else:
            cs = CaptionSet.from_kit_json(data, name="ucm-captions", source=str(self.path))
        self.captions = cs

    @classmethod
    def default_root(cls, data_root=None) -> Path:
        return default_root(None if data_root is None else Path(data_root) / "ucm")

    def split(self, split: str | Sequence[str]):
        return self.captions.split(split)

    def queries(self, split: str | Sequence[str] = "test"):
        """The CaptionSet of ``split``."""
        return self.split(split)

    def image_files(self, caption_set) -> tuple[Path, list[str]]:
        """``(UC Merced image folder, relative paths)`` of the images of ``caption_set`` (matched by name)."""
        ucm = UCMImages(self.root)
        return ucm.image_dir, ucm.path_of(caption_set.images).tolist()

"""The one path↔name matcher: find images named in a query list, a CSV or a caption set among the paths
of an archive (a feature file, an image collection).

Keys (``by``): ``"path"`` (the relative path, ``/``-separated), ``"basename"`` (``airplane07.jpg``) or
``"stem"`` (``airplane07``: any extension matches, e.g. the original ``.tif`` and a converted ``.jpg``).

Duplicate rule (the same everywhere in the kit): a key held by several archive paths is *ambiguous*;
asking for it raises a DataError naming its paths (never "first wins" or "last wins"). Keys that repeat
but are never asked for are fine. Names that are absent raise a DataError listing the first of them,
unless ``missing="skip"`` (their position is then -1).
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from .errors import DataError, ParameterError

KEYS = ("path", "basename", "stem")


def name_key(name, by: str = "path") -> str:
    """Key of one path or name under ``by`` (see module doc)."""
    text = str(name).replace("\\", "/")
    if by == "path":
        return text
    if by == "basename":
        return os.path.basename(text)
    if by == "stem":
        return os.path.splitext(os.path.basename(text))[0]
    raise ParameterError(f"by must be one of {', '.join(KEYS)}, got {by!r}")


class NameIndex:
    """Lookup from keys to positions in ``paths`` (N,), with the kit's duplicate rule.

    >>> idx = NameIndex(["a/x1.jpg", "b/y2.jpg"], by="stem")
    >>> idx.positions(["y2", "x1"]).tolist()
    [1, 0]
    """

    def __init__(self, paths: Sequence, by: str = "path", what: str = "archive"):
        self.paths = [str(p) for p in paths]
        self.by, self.what = by, what
        self._first: dict[str, int] = {}
        self._dupes: dict[str, list[int]] = {}
        for i, p in enumerate(self.paths):
            k = name_key(p, by)
            if k in self._first:
                self._dupes.setdefault(k, [self._first[k]]).append(i)
            else:
                self._first[k] = i

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, name) -> bool:
        return name_key(name, self.by) in self._first

    def positions(self, names: Iterable, missing: str = "error") -> np.ndarray:
        """(len(names),) int64 positions of ``names`` in the paths; -1 for absent names when
        ``missing="skip"``. DataError for absent names (``missing="error"``) and for ambiguous keys."""
        if missing not in ("error", "skip"):
            raise ParameterError(f"missing must be 'error' or 'skip', got {missing!r}")
        names = [names] if isinstance(names, str) else list(names)
        keys = [name_key(n, self.by) for n in names]
        ambiguous = sorted({k for k in keys if k in self._dupes})
        if ambiguous:
            k = ambiguous[0]
            raise DataError(f"{len(ambiguous)} name(s) match several images of the {self.what} by {self.by}, e.g. "
                            f"{k!r}: {', '.join(self.paths[i] for i in self._dupes[k][:3])}; names must be unique "
                            f"(match by path, or remove the duplicates).")
        out = np.fromiter((self._first.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        if missing == "error" and (out < 0).any():
            absent = [str(n) for n, o in zip(names, out) if o < 0]
            raise DataError(f"{len(absent)} of {len(names)} names are not in the {self.what} ({len(self.paths)} "
                            f"images, matched by {self.by}): {', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}. "
                            "Extract features for the same image collection, or match by basename / stem if the "
                            "paths differ only by folder / extension.")
        return out


def match_names(paths: Sequence, names: Iterable, by: str = "path", what: str = "archive",
                missing: str = "error") -> np.ndarray:
    """Positions (int64) of ``names`` in ``paths`` matched by ``by``: :meth:`NameIndex.positions`."""
    return NameIndex(paths, by, what).positions(names, missing)

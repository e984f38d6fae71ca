"""The benchmark interface every dataset follows (torchgeo style).

Lifecycle: ``Benchmark(root=None, download=False, **options)`` — ``root`` is the dataset's folder
(default: :meth:`Benchmark.default_root` under ``$RSCIR_DATA``); the constructor *verifies* the files and,
when they are absent, downloads/extracts them if the data allows it and ``download=True``, otherwise raises a
:class:`~rscir_kit.errors.DatasetNotFoundError` built from the benchmark object (what was looked for, whether a
download would help, what to do by hand).

Composed-retrieval benchmarks then give :meth:`archive` (an :class:`~rscir_kit.imagesets.ImageCollection`)
and :meth:`queries` (a :class:`~rscir_kit.queries.QuerySet` over archive paths) with the table columns
:attr:`group_columns` (the first one is the default grouping of result tables). Caption benchmarks give a
:class:`~rscir_kit.datasets.captions.CaptionSet` split instead (:class:`CaptionBenchmark`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from ..config import data_root as default_data_root


class Benchmark(ABC):
    """A composed-retrieval benchmark: archive images + explicit (query image, text, positives) pairs."""

    #: registry key (``rscir-kit evaluate <name>``, notebooks' ``dataset=``)
    name: ClassVar[str]
    #: readable name used in messages and figures
    title: ClassVar[str]
    #: grouping columns of :meth:`queries`' table, the default first
    group_columns: ClassVar[tuple[str, ...]]
    #: whether ``download=True`` can fetch the files (else :attr:`manual` says what to do)
    downloadable: ClassVar[bool] = False
    url: ClassVar[str] = ""
    manual: str = ""

    root: Path

    @classmethod
    def default_root(cls, data_root: Path | None = None) -> Path:
        """The benchmark's folder under ``data_root`` (default ``$RSCIR_DATA``)."""
        return Path(data_root or default_data_root()) / cls.name

    @classmethod
    def from_data_root(cls, data_root: Path | None = None, **options):
        """The benchmark with its files in their default places under ``data_root`` (default ``$RSCIR_DATA``)."""
        return cls(cls.default_root(data_root), **options)

    @abstractmethod
    def archive(self, size: int | None = None):
        """The archive as an ImageCollection; ``size``: at most that many images per class (quick runs)."""

    @abstractmethod
    def queries(self, archive_paths, missing: str = "error", query_paths=None):
        """The QuerySet over ``archive_paths`` (N,). ``missing``: ``"error"`` (a query or positive image absent
        from the archive is a DataError) or ``"drop"`` (leave those queries out, e.g. for a reduced archive).
        ``query_paths``: paths of a separate query-image feature file, when the queries are not archive images."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r})"


class CaptionBenchmark(ABC):
    """A text↔image caption benchmark: a caption set with splits, and the folder of its images."""

    name: ClassVar[str]
    title: ClassVar[str]
    downloadable: ClassVar[bool] = False
    url: ClassVar[str] = ""
    manual: str = ""

    root: Path

    @classmethod
    def default_root(cls, data_root: Path | None = None) -> Path:
        return Path(data_root or default_data_root()) / cls.name

    @classmethod
    def from_data_root(cls, data_root: Path | None = None, **options):
        return cls(cls.default_root(data_root), **options)

    @abstractmethod
    def queries(self, split: str = "test"):
        """The CaptionSet of ``split`` (every caption a text query, its image the target)."""

    @abstractmethod
    def image_files(self, caption_set) -> tuple[Path, list[str]]:
        """``(image folder, relative paths)`` of the images of ``caption_set``, in its order."""

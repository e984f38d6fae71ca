"""Datasets and the benchmark registry.

One class per dataset with the same lifecycle (:mod:`rscir_kit.datasets.base`): ``root`` → verify →
download/extract where the data allows → :class:`~rscir_kit.errors.DatasetNotFoundError` built from the dataset.
The registry below maps a benchmark name (``rscir-kit evaluate <name>``, the notebooks' ``dataset=``) to its
class; adding a benchmark = its module + one line here (+ its tests). Modules are imported on first use, so
listing the names costs nothing.
"""
from __future__ import annotations

from importlib import import_module
from pathlib import Path

from ..errors import ParameterError

#: name -> (module, class, kind, one-line help); kind "composed" (archive + QuerySet) or "captions" (CaptionSet)
REGISTRY: dict[str, tuple[str, str, str, str]] = {
    "patterncom": ("patterncom", "PatternCom", "composed", "PatternCom on PatternNet (official protocol)"),
    "ucmcom": ("ucmcom", "UCMCom", "composed", "UCM-Com composed queries on UC Merced (the offline benchmark)"),
    "xview2": ("xview2", "XView2CIR", "composed", "xView2-CIR: pre-disaster image + text → post-disaster image"),
    "ucm-captions": ("ucm", "UCMCaptions", "captions", "UCM-Captions text↔image retrieval on UC Merced"),
    "captions": ("captions", "CaptionFile", "captions", "any dataset_*.json caption set (RSICD, RSITMD, Sydney)"),
}


def benchmark_names(kind: str | None = None) -> list[str]:
    """Registered benchmark names (of ``kind`` "composed" / "captions" when given), in registry order."""
    return [n for n, (_, _, k, _) in REGISTRY.items() if kind is None or k == kind]


def benchmark_class(name: str, kind: str | None = None) -> type:
    """The class registered as ``name``; ParameterError listing the names otherwise."""
    key = str(name).strip().lower()
    if key not in REGISTRY or (kind is not None and REGISTRY[key][2] != kind):
        raise ParameterError(f"unknown benchmark {name!r}: choose one of {', '.join(benchmark_names(kind))}")
    module, cls, _, _ = REGISTRY[key]
    return getattr(import_module(f"{__name__}.{module}"), cls)


def get_benchmark(name: str, root=None, data_root=None, kind: str | None = None, **options):
    """Instantiate benchmark ``name``: ``root`` (its folder) or, when None, its default folder under
    ``data_root`` (default ``$RSCIR_DATA``); ``options`` go to its constructor (e.g. ``download=True``)."""
    cls = benchmark_class(name, kind)
    if root is None:
        return cls.from_data_root(None if data_root is None else Path(data_root), **options)
    return cls(root, **options)

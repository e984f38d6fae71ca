"""Captioners: callables ``list[PIL.Image] -> list[list[str]]`` (descriptions per image) for
training-free text-to-text retrieval (:mod:`rscir_kit.text_to_text`).

* :class:`HFCaptioner` — a Hugging Face vision-language model (BLIP, GIT, LLaVA-style chat VLMs);
* :func:`zero_shot_descriptions` — a *tag captioner* from a CLIP-style model's zero-shot classes;
* :func:`describe_images` — run a captioner over image files in batches.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from .config import resolve_device, show_progress
from .errors import DataError
from .imagesets import load_image

Captioner = Callable[[list], list]  # list[PIL.Image] -> list[list[str]] (descriptions per image)

def split_sentences(text: str) -> list[str]:
    """Split a generated paragraph into sentences (one description each); keeps non-empty pieces."""
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
    out: list = []
    for s in tqdm(range(0, len(files), batch_size), desc="describe images", disable=not show_progress(progress)):
        batch = [load_image(f) for f in files[s:s + batch_size]]
        descs = captioner(batch)
        if len(descs) != len(batch):
            raise DataError(f"captioner returned {len(descs)} description lists for {len(batch)} images.")
        out.extend([list(d) for d in descs])
    return out

"""Published reference numbers for WeiCom on PatternCom (mAP, %), with their sources.

Three sources are kept apart, each with its date (and commit, for the official README):

* ``"paper"`` -- Psomas, Kakogeorgiou, Efthymiadis, Tolias, Chum, Avrithis, Karantzalos, *Composed Image
  Retrieval for Remote Sensing*, IGARSS 2024 (arXiv:2405.15587, May 2024): Table 2 (CLIP ViT-L/14 and RemoteCLIP
  ViT-L/14, per attribute) and Table 3 (λ ablation with RemoteCLIP ViT-L/14, λ = 0.0 … 1.0).
* ``"readme-2024-07"`` -- the results tables of the official code's README (github.com/billpsomas/rscir) as of
  commit 0735034 (2024-07-29, "update after bug fix"): identical to the paper's Table 2.
* ``"readme-current"`` -- the same README since commit 2a7c4c5 (2024-09-17, "update readme"; unchanged up to
  1560858, 2026-04-23): the whole Existence column and every Avg changed, with no code change -- most likely a
  corrected ``existence.csv``. The other five attributes are identical in all three sources.

A run is compared against the source matching the data the user has (:data:`DEFAULT_SOURCE`: the current
README, which matches the PatternCom files downloadable today; pass ``source="paper"`` for the older
``existence.csv``). The numbers are only comparable with the kit's in the paper's setup -- PatternCom, the same
model, plain GELU, fp32 and the official numerics (``--setup paper``): :func:`compare_run` says whether a run is
that setup and names every difference.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

ATTRIBUTES = ("color", "context", "density", "existence", "quantity", "shape")
AVG = "avg"


@dataclass(frozen=True)
class Source:
    """Where a table of published numbers comes from."""

    name: str
    title: str
    date: str
    commit: str | None = None

    def describe(self) -> str:
        return f"{self.title}, {self.date}" + (f", commit {self.commit[:7]}" if self.commit else "")


_README = "official WeiCom code release, github.com/billpsomas/rscir, README 'Results'"
SOURCES: dict[str, Source] = {
    "paper": Source("paper", "Psomas et al., Composed Image Retrieval for Remote Sensing, IGARSS 2024 "
                             "(arXiv:2405.15587), Tables 2 and 3", "2024-05"),
    "readme-2024-07": Source("readme-2024-07", _README, "2024-07-29", "0735034671a50c1bfa293d26ee9f6c43fba703a6"),
    "readme-current": Source("readme-current", _README, "2024-09-17", "2a7c4c59d9acf6b4f7cc0584a74a32d360ac1b9e"),
}
DEFAULT_SOURCE = "readme-current"

#: Model keys of the paper and how they are named in the paper.
MODELS = {
    "clip-vit-l-14": "CLIP ViT-L/14",
    "remoteclip-vit-l-14": "RemoteCLIP ViT-L/14",
}

# Table 2 per source: rows are (method, λ); λ is None for the methods without one.
# Values: the six attributes in ATTRIBUTES order, then the average (as printed).
_PAPER_TABLE2 = {
    "clip-vit-l-14": [
        ("text", None, (13.47, 4.83, 3.58, 4.38, 3.31, 6.22), 5.97),
        ("image", None, (14.66, 8.32, 13.49, 13.50, 7.84, 15.76), 12.26),
        ("average", None, (23.13, 11.02, 15.87, 13.77, 10.13, 21.38), 15.88),
        ("weicom", 0.5, (46.08, 17.45, 16.49, 9.24, 18.15, 23.97), 21.90),
        ("weicom", 0.3, (46.74, 20.97, 22.07, 12.07, 20.96, 26.22), 24.83),
    ],
    "remoteclip-vit-l-14": [
        ("text", None, (10.75, 8.87, 22.16, 12.49, 8.25, 24.12), 14.44),
        ("image", None, (14.40, 6.62, 15.11, 9.29, 6.99, 15.18), 11.27),
        ("average", None, (23.67, 10.01, 18.45, 10.56, 7.97, 19.63), 15.05),
        ("weicom", 0.5, (43.68, 31.45, 39.94, 14.27, 20.51, 29.78), 29.94),
        ("weicom", 0.6, (41.04, 31.59, 41.56, 14.79, 20.79, 31.24), 30.19),
    ],
}
# README at 0735034 (2024-07-29), transcribed from its text: the same numbers as the paper.
_README_2024_07_TABLE2 = {
    "clip-vit-l-14": [
        ("text", None, (13.47, 4.83, 3.58, 4.38, 3.31, 6.22), 5.97),
        ("image", None, (14.66, 8.32, 13.49, 13.50, 7.84, 15.76), 12.26),
        ("average", None, (23.13, 11.02, 15.87, 13.77, 10.13, 21.38), 15.88),
        ("weicom", 0.5, (46.08, 17.45, 16.49, 9.24, 18.15, 23.97), 21.90),
        ("weicom", 0.3, (46.74, 20.97, 22.07, 12.07, 20.96, 26.22), 24.83),
    ],
    "remoteclip-vit-l-14": [
        ("text", None, (10.75, 8.87, 22.16, 12.49, 8.25, 24.12), 14.44),
        ("image", None, (14.40, 6.62, 15.11, 9.29, 6.99, 15.18), 11.27),
        ("average", None, (23.67, 10.01, 18.45, 10.56, 7.97, 19.63), 15.05),
        ("weicom", 0.5, (43.68, 31.45, 39.94, 14.27, 20.51, 29.78), 29.94),
        ("weicom", 0.6, (41.04, 31.59, 41.56, 14.79, 20.79, 31.24), 30.19),
    ],
}
# README since 2a7c4c5 (2024-09-17), transcribed from its text (the intermediate commit 065ca0e, two minutes
# earlier, changed the Existence column only; 2a7c4c5 recomputed the Avg column).
_README_CURRENT_TABLE2 = {
    "clip-vit-l-14": [
        ("text", None, (13.47, 4.83, 3.58, 2.00, 3.31, 6.22), 5.57),
        ("image", None, (14.66, 8.32, 13.49, 16.47, 7.84, 15.76), 12.74),
        ("average", None, (23.13, 11.02, 15.87, 16.93, 10.13, 21.38), 16.41),
        ("weicom", 0.5, (46.08, 17.45, 16.49, 8.36, 18.15, 23.97), 21.75),
        ("weicom", 0.3, (46.74, 20.97, 22.07, 13.22, 20.96, 26.22), 25.03),
    ],
    "remoteclip-vit-l-14": [
        ("text", None, (10.75, 8.87, 22.16, 6.98, 8.25, 24.12), 13.52),
        ("image", None, (14.40, 6.62, 15.11, 13.10, 6.99, 15.18), 11.90),
        ("average", None, (23.67, 10.01, 18.45, 13.98, 7.97, 19.63), 15.62),
        ("weicom", 0.5, (43.68, 31.45, 39.94, 14.92, 20.51, 29.78), 30.05),
        ("weicom", 0.6, (41.04, 31.59, 41.56, 14.56, 20.79, 31.24), 30.13),
    ],
}
_TABLE2 = {"paper": _PAPER_TABLE2, "readme-2024-07": _README_2024_07_TABLE2, "readme-current": _README_CURRENT_TABLE2}

#: How the paper names the methods of Table 2 ("Text & Image" is the raw average of the similarities).
METHOD_NAMES = {"text": "Text", "image": "Image", "average": "Text & Image", "weicom": "WeiCom"}

# Table 3 (RemoteCLIP ViT-L/14): mAP per attribute for λ = 0.0, 0.1, ..., 1.0.
TABLE3_LAMBDAS = tuple(round(0.1 * i, 1) for i in range(11))
_TABLE3 = {
    "color": (14.5, 55.3, 53.0, 49.6, 46.4, 43.7, 41.0, 38.2, 35.0, 30.4, 10.8),
    "context": (6.6, 13.3, 20.2, 25.7, 29.5, 31.5, 31.6, 29.6, 24.8, 16.9, 8.9),
    "density": (15.1, 23.3, 29.5, 34.0, 37.4, 39.9, 41.6, 42.0, 40.7, 35.9, 22.2),
    "existence": (9.3, 10.3, 11.1, 12.3, 13.5, 14.3, 14.8, 15.0, 14.8, 14.0, 12.5),
    "quantity": (7.0, 17.6, 18.9, 19.7, 20.2, 20.5, 20.8, 20.9, 20.8, 20.1, 8.3),
    "shape": (15.2, 23.8, 24.7, 26.2, 28.0, 29.8, 31.2, 32.0, 32.0, 31.3, 24.1),
    AVG: (11.3, 23.9, 26.2, 27.9, 29.2, 29.9, 30.2, 29.6, 28.0, 24.8, 14.4),
}
TABLE3_MODEL = "remoteclip-vit-l-14"

#: The best λ reported in the paper for each model (Table 2's second WeiCom row).
PAPER_BEST_LAMBDA = {"clip-vit-l-14": 0.3, "remoteclip-vit-l-14": 0.6}

def _source(source: str | None) -> str:
    name = source or DEFAULT_SOURCE
    if name not in SOURCES:
        raise KeyError(f"unknown reference source {source!r}; sources: {sorted(SOURCES)}")
    return name


def table2(model: str, source: str | None = None) -> pd.DataFrame:
    """Table 2 of ``source`` (default :data:`DEFAULT_SOURCE`) for ``model`` (a key of :data:`MODELS`): one row per
    (method, λ), columns ``method, lambda, color … shape, avg, source``. λ is NaN for methods without one."""
    key, src = _model_key(model), _source(source)
    rows = []
    for method, lam, values, avg in _TABLE2[src][key]:
        row = {"method": method, "lambda": float("nan") if lam is None else lam}
        row.update(dict(zip(ATTRIBUTES, values)))
        row[AVG] = avg
        row["source"] = src
        rows.append(row)
    return pd.DataFrame(rows)


def table3() -> pd.DataFrame:
    """Paper Table 3 (RemoteCLIP ViT-L/14, WeiCom): index λ, columns the attributes and ``avg``.

    Only the paper has it; its Existence column and Avg belong to the older ``existence.csv`` (source ``paper``)."""
    frame = pd.DataFrame(_TABLE3, index=pd.Index(TABLE3_LAMBDAS, name="lambda"))
    return frame[list(ATTRIBUTES) + [AVG]]


def code_release_avg(model: str, source: str | None = None) -> dict[float, float]:
    """{λ: average mAP} of the WeiCom rows of the official README (``source``, default the current one)."""
    src = _source(source)
    if src == "paper":
        src = "readme-current"
    t = table2(model, src)
    return {float(lam): float(avg) for lam, avg in zip(t["lambda"], t[AVG]) if lam == lam}


def reference_lookup(model: str, method: str, lam: float | None, attribute: str, source: str | None = None):
    """The Table-2 value of one cell in ``source`` (default :data:`DEFAULT_SOURCE`), or None when it has no such
    cell."""
    key, src = _model_key(model), _source(source)
    for m, l, values, avg in _TABLE2[src][key]:
        if m != method:
            continue
        if (l is None) != (lam is None or lam != lam):
            continue
        if l is not None and abs(l - float(lam)) > 1e-9:
            continue
        return avg if attribute == AVG else dict(zip(ATTRIBUTES, values)).get(attribute)
    return None


def model_key(model: str | None) -> str | None:
    """Map a model spec (preset name, ``ViT-L-14:openai``, ``hf-hub:chendelong/RemoteCLIP-ViT-L-14`` …)
    to a key of :data:`MODELS`, or None when it is not one of the paper's models."""
    if not model:
        return None
    text = str(model).lower().replace("_", "-").replace("/", "-")
    compact = re.sub(r"[^a-z0-9]", "", text)
    is_l14 = "vitl14" in compact and "336" not in compact
    if not is_l14:
        return None
    if "remoteclip" in compact:
        return "remoteclip-vit-l-14"
    if "openai" in compact or compact in ("clipvitl14", "vitl14") or compact.startswith("clipvitl14"):
        return "clip-vit-l-14"
    return None


def paper_setup_key(dataset: str | None, model: str | None) -> str | None:
    """The model key when (dataset, model) are the paper's (PatternCom + CLIP/RemoteCLIP ViT-L/14), else None.

    Dataset and model only: whether the *configuration* is the paper's too is :func:`compare_run`'s question."""
    if str(dataset).lower() != "patterncom":
        return None
    return model_key(model)


#: The paper's configuration (the official code: plain GELU ViT-L-14, fp32, float32 Φ everywhere).
PAPER_CONFIG = {"activation": "gelu", "precision": "fp32", "numerics": "official"}


@dataclass
class Comparison:
    """Whether a run is the paper's setup, and against which published table it is compared."""

    dataset: str
    model: str | None
    key: str | None                 # paper model key (None: not one of the paper's models)
    differences: list[str] = field(default_factory=list)
    source: str = DEFAULT_SOURCE

    @property
    def paper_setup(self) -> bool:
        """Dataset, model, activation, precision and numerics all the paper's."""
        return self.key is not None and not self.differences

    @property
    def reference(self) -> Source:
        return SOURCES[self.source]

    def describe(self) -> str:
        """One line for the CLI and the notebooks."""
        if self.paper_setup:
            return (f"Paper setup ({MODELS[self.key]} on PatternCom, GELU, fp32, official numerics): compared with "
                    f"{self.reference.describe()}.")
        what = ", ".join(self.differences) if self.differences else "not one of the paper's models"
        return (f"Not the paper's setup ({what}): the published numbers ({self.reference.describe()}) are context "
                "only, not a like-for-like comparison. --setup paper with remoteclip-vit-l-14 or openai-vit-l-14 on "
                "PatternCom is.")


def compare_run(dataset: str | None, meta: dict | None, source: str | None = None) -> Comparison:
    """Compare a run's configuration (an artefact's ``meta``: ``model``/``model_name``, ``activation``, ``precision``,
    ``numerics``) with the paper's; every difference is named."""
    meta = meta or {}
    model = meta.get("model_name") or meta.get("model")
    key = model_key(meta.get("model")) or model_key(model)
    diffs = []
    if str(dataset).lower() != "patterncom":
        diffs.append(f"dataset {dataset} (paper: patterncom)")
    if key is None:
        diffs.append(f"model {model} (paper: {' or '.join(MODELS.values())})")
    for k, want in PAPER_CONFIG.items():
        got = meta.get(k)
        if got != want:
            diffs.append(f"{k} {got or 'unrecorded'} (paper: {want})")
    return Comparison(str(dataset), model, key, diffs, _source(source))


def _model_key(model: str) -> str:
    if model in _PAPER_TABLE2:
        return model
    key = model_key(model)
    if key is None:
        raise KeyError(f"no published WeiCom numbers for model {model!r}; the paper has {sorted(MODELS)}")
    return key

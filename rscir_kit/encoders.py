"""CLIP-family encoders behind one small interface (open_clip underneath).

``load_encoder(spec)`` accepts

* a preset name from :data:`PRESETS` (``list_presets()`` prints them),
* ``ARCH:pretrained_tag`` — any open_clip built-in, e.g. ``ViT-B-32:openai``,
* ``ARCH:/path/to/checkpoint.pt`` — a local checkpoint loaded into the open_clip architecture ARCH,
* ``hf-hub:org/name`` or ``local-dir:/path`` — open_clip's own schemas (config + weights together).

Every spec ends in the same call, ``open_clip.create_model_and_transforms``; the offline stand-in
(``local-dir:…/ucm-minilm-standin``) goes through exactly that path.

Activation (QuickGELU vs GELU)
------------------------------
OpenAI's CLIP was trained with QuickGELU (``x * sigmoid(1.702 x)``); open_clip's plain ``ViT-L-14`` config
uses ``nn.GELU``. Loading OpenAI-trained weights into the plain config silently changes the network
(open_clip issue #771: fine-tunes started from ``--pretrained openai`` ran with QuickGELU, because old open_clip
hard-coded it for that tag, but evaluating the fine-tuned file with the plain arch uses GELU).
RemoteCLIP (trained with ITRA), GeoRSCLIP and SkyCLIP ViT-L/14 descend from OpenAI CLIP, so their weights expect
QuickGELU too; SkyCLIP ViT-B/32 descends from OpenCLIP laion2b_e16 (GELU). Each preset's ``provenance`` says so
with its source.

* ``activation="auto"`` (default): the correct activation — what each preset's weights were trained with (QuickGELU
  for OpenAI-descended weights, GELU for SkyCLIP ViT-B/32, initialised from laion2b_e16) and for open_clip tags
  whose pretrained config says ``quick_gelu`` (``openai``); otherwise what the architecture config says. For
  ``ARCH:/path/ckpt.pt`` of unknown origin "auto" keeps ARCH's config: pass ``activation="quickgelu"``
  (or use an ``ARCH-quickgelu`` name) if the checkpoint descends from OpenAI CLIP.
* ``activation="quickgelu"``: force QuickGELU.
* ``activation="gelu"`` or its alias ``"official"``: plain GELU, which reproduces the official WeiCom code
  (it builds open_clip ``ViT-L-14`` and loads OpenAI / RemoteCLIP weights into it).

The activation actually present in the built network is stored in ``enc.meta["activation"]``
(``"quickgelu"``, ``"gelu"``, or ``"n/a"`` for towers without open_clip transformer blocks, e.g. timm/HF).

Offline use
-----------
``local-dir:`` folders whose Hugging Face text tower config is bundled in an ``hf_hub_cache/`` seed (the stand-in's
is) build that tower from the bundled files: nothing is downloaded, nothing is written into the user's Hugging Face
cache and no library setting is changed (``HF_HUB_OFFLINE=1`` is all an offline machine needs). Preset checkpoints
are looked up in ``$RSCIR_WEIGHTS`` under their published names (``RemoteCLIP-ViT-L-14.pt``; SkyCLIP: the zip
``SkyCLIP_ViT_B32_top50pct.zip`` or the folder it unpacks to) before downloading; zips are downloaded (resumably)
and unpacked into the kit's cache (``~/.cache/rscir_kit/weights``).

Configuration and identity
--------------------------
``load_encoder(spec, setup="paper")`` builds the paper's configuration (GELU, fp32, official numerics; see
:mod:`rscir_kit.modelsetup`). ``enc.meta`` records the resolved configuration and the weights' SHA-256, and every
artefact made with the encoder carries it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import config
from .errors import RscirError
from .io import atomic_path, download_file
from .modelsetup import PRECISIONS, ModelSetup, resolve_setup, weights_sha256

ACTIVATIONS = {"auto": "auto", "quickgelu": "quickgelu", "gelu": "gelu", "official": "gelu"}


# --------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """A named, published model: open_clip ``arch`` plus where its weights come from and how they are laid out.

    Exactly one source: ``tag`` (open_clip pretrained tag), ``hf_repo`` + ``hf_file`` (a checkpoint file on
    the Hugging Face hub), or ``url`` (+ ``member_suffix``: a zip holding the checkpoint).
    ``activation``: what the weights were trained with (``activation="auto"`` builds it).
    ``layout``: how the published file stores the weights (``state_dict``: a plain state dict;
    ``training_checkpoint``: an open_clip training checkpoint ``{"state_dict": {"module.…": …}, "epoch": …}``).
    ``provenance``: one line, with its source.
    """

    name: str
    arch: str
    doc: str
    provenance: str
    tag: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    url: str | None = None
    member_suffix: str | None = None
    activation: str = "quickgelu"
    layout: str = "state_dict"
    reference: str = ""

    @property
    def checkpoint_name(self) -> str | None:
        """Published file name looked for in ``$RSCIR_WEIGHTS`` before downloading (a zip, or the folder it unpacks to)."""
        if self.hf_file:
            return Path(self.hf_file).name
        if self.url:
            return Path(self.url).name
        return None

    @property
    def source(self) -> str:
        if self.tag:
            return f"open_clip tag {self.arch}:{self.tag}"
        if self.hf_repo:
            return f"hf://{self.hf_repo}/{self.hf_file}"
        return f"{self.url} (member */{self.member_suffix})"


_SKYSCRIPT = "https://opendatasharing.s3.us-west-2.amazonaws.com/SkyScript/ckpt/"

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("openai-vit-l-14", "ViT-L-14", "OpenAI CLIP ViT-L/14 (224 px, 768-d); the WeiCom paper's CLIP baseline.",
           "OpenAI CLIP, trained with QuickGELU (open_clip pretrained tag 'openai', quick_gelu=True).",
           tag="openai", reference="Radford et al., 2021"),
    Preset("openai-vit-b-32", "ViT-B-32", "OpenAI CLIP ViT-B/32 (224 px, 512-d).",
           "OpenAI CLIP, trained with QuickGELU (open_clip pretrained tag 'openai', quick_gelu=True).",
           tag="openai", reference="Radford et al., 2021"),
    Preset("remoteclip-rn50", "RN50", "RemoteCLIP ResNet-50 (1024-d): OpenAI CLIP RN50 fine-tuned on remote sensing.",
           "Fine-tuned from OpenAI CLIP with the ITRA code base, converted to an open_clip state dict "
           "(github.com/ChenDelong1999/RemoteCLIP README, 'Load RemoteCLIP'; the authors load it into plain RN50).",
           hf_repo="chendelong/RemoteCLIP", hf_file="RemoteCLIP-RN50.pt", reference="Liu et al., TGRS 2024"),
    Preset("remoteclip-vit-b-32", "ViT-B-32", "RemoteCLIP ViT-B/32: OpenAI CLIP fine-tuned on remote sensing captions.",
           "Fine-tuned from OpenAI CLIP with the ITRA code base, converted to an open_clip state dict "
           "(github.com/ChenDelong1999/RemoteCLIP README; the authors load it into plain ViT-B-32).",
           hf_repo="chendelong/RemoteCLIP", hf_file="RemoteCLIP-ViT-B-32.pt", reference="Liu et al., TGRS 2024"),
    Preset("remoteclip-vit-l-14", "ViT-L-14",
           "RemoteCLIP ViT-L/14 (768-d): the backbone of the WeiCom / PatternCom paper results.",
           "Fine-tuned from OpenAI CLIP with the ITRA code base, converted to an open_clip state dict "
           "(github.com/ChenDelong1999/RemoteCLIP README; the authors and the official WeiCom code load it into "
           "plain, GELU ViT-L-14: --setup paper).",
           hf_repo="chendelong/RemoteCLIP", hf_file="RemoteCLIP-ViT-L-14.pt", reference="Liu et al., TGRS 2024"),
    Preset("georsclip-vit-b-32", "ViT-B-32", "GeoRSCLIP ViT-B/32: OpenAI CLIP fine-tuned on RS5M.",
           "Fine-tuned from OpenAI CLIP on RS5M; the published file is a state dict converted from the training "
           "layout (text_backbone./image_backbone. keys) that the authors load into ViT-B/32 built with "
           "pretrained='openai', i.e. QuickGELU (github.com/om-ai-lab/RS5M README and inference/convert_weight.py).",
           hf_repo="Zilun/GeoRSCLIP", hf_file="ckpt/RS5M_ViT-B-32.pt", reference="Zhang et al., RS5M, 2023"),
    Preset("skyclip-vit-b-32", "ViT-B-32",
           "SkyCLIP ViT-B/32 (SkyScript top-50% subset): OpenCLIP laion2b_e16 continually pre-trained on SkyScript.",
           "Initialised from open_clip ViT-B-32 laion2b_e16 (GELU) and trained with open_clip; the zip holds an open_clip "
           "training checkpoint epoch_20.pt (github.com/wangzhecheng/SkyScript README, 'Download model checkpoints' and "
           "'Training'; its evaluation builds ViT-B-32 without QuickGELU).",
           url=_SKYSCRIPT + "SkyCLIP_ViT_B32_top50pct.zip", member_suffix="epoch_20.pt", activation="gelu",
           layout="training_checkpoint", reference="Wang et al., SkyScript, AAAI 2024"),
    Preset("skyclip-vit-l-14", "ViT-L-14",
           "SkyCLIP ViT-L/14 (SkyScript top-30% subset filtered by CLIP-laion-RS).",
           "Initialised from OpenAI CLIP ViT-L-14 and trained with open_clip; the zip holds an open_clip training "
           "checkpoint epoch_20.pt (github.com/wangzhecheng/SkyScript README; its evaluation forces QuickGELU for "
           "ViT-L-14, cross_modal_retrieval.ipynb).",
           url=_SKYSCRIPT + "SkyCLIP_ViT_L14_top30pct_filtered_by_CLIP_laion_RS.zip", member_suffix="epoch_20.pt",
           layout="training_checkpoint", reference="Wang et al., SkyScript, AAAI 2024"),
]}


def list_presets():
    """Table (pandas DataFrame) of the presets: name, arch, activation, weights source, layout, description, provenance."""
    import pandas as pd

    rows = [{"name": p.name, "arch": p.arch, "activation": p.activation, "weights": p.source, "layout": p.layout,
             "reference": p.reference, "description": p.doc, "provenance": p.provenance} for p in PRESETS.values()]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ the encoder
class Encoder:
    """A loaded dual encoder. Outputs are float32 numpy arrays (B, d) with L2-normalised rows.

    Attributes: ``model`` (torch module, eval mode), ``preprocess`` (PIL.Image -> Tensor(3, H, W)),
    ``tokenizer`` (list[str] -> LongTensor), ``device``, ``dtype``, ``model_id`` (canonical spec string),
    ``meta`` (dict stored with every feature file).
    """

    def __init__(self, model, preprocess, tokenizer, *, model_id: str, model_name: str, activation_requested: str,
                 device, dtype, extra_meta: dict | None = None):
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        probe = preprocess(_probe_image())
        self.image_size = tuple(int(s) for s in probe.shape[-2:])
        self.embed_dim = int(self.encode_images(probe[None]).shape[1])
        self.meta = {
            "model": model_id,
            "model_name": model_name,
            "activation": detect_activation(model),
            "activation_requested": activation_requested,
            "image_size": list(self.image_size),
            "embed_dim": self.embed_dim,
            "preprocess": repr(preprocess),
            "dtype": str(dtype).replace("torch.", ""),
            "device": str(device),
        }
        self.meta.update(extra_meta or {})

    def __repr__(self) -> str:
        return (f"Encoder({self.model_id!r}, d={self.embed_dim}, image_size={self.image_size}, "
                f"setup={self.meta.get('setup')}, activation={self.meta['activation']}, device={self.device}, "
                f"dtype={self.meta['dtype']})")

    def _run(self, fn: Callable, x):
        import torch

        with torch.inference_mode():
            out = fn(x.to(self.device))
            out = out.float()
            out = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return out.cpu().numpy().astype(np.float32, copy=False)

    def encode_images(self, images, batch_size: int = 64) -> np.ndarray:
        """Images -> (B, d) float32, unit rows.

        ``images``: a list of PIL images (preprocessed here), a list of (3, H, W) tensors, or a preprocessed
        (B, 3, H, W) tensor. Batches of ``batch_size`` are run under ``torch.inference_mode``.
        """
        import torch

        if isinstance(images, torch.Tensor):
            if images.ndim != 4:
                raise RscirError(f"encode_images expects a (B, 3, H, W) tensor, got shape {tuple(images.shape)}")
            batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
        else:
            images = list(images)
            batches = []
            for i in range(0, len(images), batch_size):
                chunk = [im if isinstance(im, torch.Tensor) else self.preprocess(im) for im in images[i:i + batch_size]]
                batches.append(torch.stack(chunk))
        if not batches:
            return np.zeros((0, getattr(self, "embed_dim", 0)), np.float32)
        outs = [self._run(self.model.encode_image, b.to(self.dtype)) for b in batches]
        return np.concatenate(outs, 0)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> (M, d) float32, unit rows, tokenised with the model's own tokenizer."""
        if isinstance(texts, str):
            raise RscirError("encode_texts expects a list of strings, got a single string: wrap it in a list")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        warn_truncated(self.tokenizer, texts)
        outs = [self._run(self.model.encode_text, self.tokenizer(texts[i:i + batch_size]))
                for i in range(0, len(texts), batch_size)]
        return np.concatenate(outs, 0)


def truncated_texts(tokenizer, texts: Sequence[str]) -> list[int]:
    """Positions of the texts longer than the tokenizer's context (it cuts them): open_clip's BPE tokenizer
    (start + tokens + end > context_length) and Hugging Face tokenizers; [] for tokenizers it cannot inspect."""
    ctx = getattr(tokenizer, "context_length", None)
    if not ctx:
        return []
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):
        return [i for i, t in enumerate(texts) if len(tokenizer.encode(t)) + 2 > ctx]
    hf = getattr(tokenizer, "tokenizer", None)
    if callable(hf):
        clean = getattr(tokenizer, "clean_fn", None) or (lambda t: t)
        ids = hf([clean(t) for t in texts], truncation=False, verbose=False)["input_ids"]
        return [i for i, x in enumerate(ids) if len(x) > ctx]
    return []


def warn_truncated(tokenizer, texts: Sequence[str]) -> int:
    """Warn (with the count and an example) when texts exceed the context and are cut; returns the count."""
    cut = truncated_texts(tokenizer, texts)
    if cut:

        warnings.warn(f"{len(cut)} of {len(texts)} texts are longer than the text encoder's context of "
                      f"{tokenizer.context_length} tokens and were cut (e.g. {texts[cut[0]][:60]!r}...); words after "
                      "the cut do not change their embedding. Shorten them", stacklevel=3)
    return len(cut)


def _probe_image():
    from PIL import Image

    return Image.new("RGB", (300, 200), (128, 100, 80))


def detect_activation(model) -> str:
    """Activation of the open_clip transformer blocks actually built: "quickgelu", "gelu", or "n/a"."""
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock

    has_blocks = False
    for m in model.modules():
        if isinstance(m, QuickGELU):
            return "quickgelu"
        if isinstance(m, ResidualAttentionBlock):
            has_blocks = True
    return "gelu" if has_blocks else "n/a"


# ----------------------------------------------------------------------------------------- spec parsing
@dataclass
class _Plan:
    model_name: str          # first argument of create_model_and_transforms
    pretrained: str | None   # open_clip tag or checkpoint file
    model_id: str            # canonical spec stored in metadata
    short_name: str          # stable, machine-independent name used to compare feature files
    auto_quick_gelu: bool    # what activation="auto" resolves to
    tokenizer_name: str
    extra: dict
    architecture: str = ""   # open_clip architecture (config name, or "custom:<config hash>" for local-dir)
    weights_file: Path | None = None  # the weights file, when known before building (hashed for the identity)
    tag_cfg: dict | None = None       # open_clip pretrained config of a tag (downloaded before building)
    model_kwargs: dict = field(default_factory=dict)  # config overrides (a local text-tower config, see _text_seed)


def _parse_spec(spec: str, cache_dir: str | None) -> _Plan:
    import open_clip

    spec = str(spec).strip()
    if not spec:
        raise RscirError("empty model spec: pass a preset name (see list_presets()), ARCH:tag, ARCH:/path/ckpt.pt, "
                         "hf-hub:org/name or local-dir:/path")
    if spec in PRESETS:
        p = PRESETS[spec]
        if p.tag:
            plan = _parse_spec(f"{p.arch}:{p.tag}", cache_dir)
            plan.short_name, plan.model_id = p.name, p.name
            plan.auto_quick_gelu = p.activation == "quickgelu"
            return plan
        ckpt = _fetch_preset(p, cache_dir)
        return _Plan(p.arch, str(ckpt), p.name, p.name, p.activation == "quickgelu", p.arch,
                     {"checkpoint": str(ckpt), "weights_bytes": Path(ckpt).stat().st_size}, p.arch, Path(ckpt))
    if not spec.startswith(("local-dir:", "hf-hub:")) and (Path(spec).expanduser() / "open_clip_config.json").is_file():
        spec = f"local-dir:{spec}"  # a bare folder in open_clip's local-dir format
    if spec.startswith("local-dir:"):
        path = Path(spec[len("local-dir:"):]).expanduser().resolve()
        if not (path / "open_clip_config.json").is_file():
            raise RscirError(f"model folder {path} has no open_clip_config.json (spec {spec!r}): point local-dir: at a "
                             "folder saved in open_clip's local-dir format")
        name = f"local-dir:{path}"
        cfg = _read_json(path / "open_clip_config.json").get("model_cfg", {})
        ckpt = _weights_file(path)
        extra = {"weights_bytes": ckpt.stat().st_size} if ckpt else {}
        arch = "custom:" + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
        return _Plan(name, None, name, f"local-dir:{path.name}", bool(cfg.get("quick_gelu", False)), name, extra,
                     arch, ckpt, model_kwargs=_text_seed(path, cfg))
    if spec.startswith("hf-hub:"):
        return _Plan(spec, None, spec, spec, False, spec, {}, spec)
    arch, sep, pretrained = spec.partition(":")
    if spec in PRESETS or arch in PRESETS:
        raise RscirError(f"preset {arch!r} takes no ':' suffix (got {spec!r})")
    if open_clip.get_model_config(arch.replace("/", "-")) is None:
        close = [p for p in PRESETS if arch.lower() in p] + [m for m in open_clip.list_models() if arch.lower() in m.lower()]
        raise RscirError(f"unknown model spec {spec!r}: not a preset ({', '.join(PRESETS)}) and {arch!r} is not an "
                         f"open_clip architecture" + (f"; did you mean {close[:5]}?" if close else "")
                         + ". Forms: PRESET, ARCH:tag, ARCH:/path/ckpt.pt, hf-hub:org/name, local-dir:/path")
    arch = arch.replace("/", "-")
    arch_quick = bool(open_clip.get_model_config(arch).get("quick_gelu", False))
    base_arch = arch[: -len("-quickgelu")] if arch.endswith("-quickgelu") else arch
    if not sep or not pretrained:
        raise RscirError(f"model spec {spec!r} names an architecture but no weights: use {arch}:TAG (tags: "
                         f"{open_clip.list_pretrained_tags_by_model(arch)}) or {arch}:/path/to/checkpoint.pt")
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if tag_cfg:
        quick = arch_quick or bool(tag_cfg.get("quick_gelu", False))
        same = [p.name for p in PRESETS.values() if (p.arch, p.tag) == (arch, pretrained)]
        short = same[0] if same else f"{arch}:{pretrained}"  # ViT-L-14:openai and openai-vit-l-14 compare equal
        return _Plan(arch, pretrained, f"{arch}:{pretrained}", short, quick, arch, {}, base_arch, tag_cfg=tag_cfg)
    ckpt = Path(pretrained).expanduser()
    if not ckpt.is_file():
        raise RscirError(f"model spec {spec!r}: {pretrained!r} is neither an open_clip tag of {arch} "
                         f"({open_clip.list_pretrained_tags_by_model(arch)}) nor an existing checkpoint file")
    ckpt = ckpt.resolve()
    return _Plan(arch, str(ckpt), f"{arch}:{ckpt}", f"{arch}:{ckpt.parent.name}/{ckpt.name}", arch_quick, arch,
                 {"checkpoint": str(ckpt), "weights_bytes": ckpt.stat().st_size}, base_arch, ckpt)


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _weights_file(folder: Path) -> Path | None:
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def _text_seed(folder: Path, model_cfg: dict) -> dict:
    """Config override pointing a Hugging Face text tower at the config bundled in ``<folder>/hf_hub_cache/``.

    A ``local-dir:`` model whose text tower is a Hugging Face model (``text_cfg.hf_model_name = "org/name"``) needs
    that model's ``config.json`` at build time (the weights come from the folder's checkpoint). When the folder
    carries a hub-cache seed holding it (the offline stand-in does), the tower is built from that local snapshot:
    no download, no write into the user's Hugging Face cache, no patched library globals. Returns ``{}`` otherwise
    (the config is then fetched from the hub as usual, honouring ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE``).
    """
    text_cfg = dict(model_cfg.get("text_cfg") or {})
    repo = str(text_cfg.get("hf_model_name") or "")
    seed = folder / "hf_hub_cache"
    if "/" not in repo or Path(repo).is_dir() or not seed.is_dir():
        return {}
    snapshots = seed / f"models--{repo.replace('/', '--')}" / "snapshots"
    ref = seed / f"models--{repo.replace('/', '--')}" / "refs" / "main"
    candidates = []
    if ref.is_file():
        candidates.append(snapshots / ref.read_text(encoding="utf-8").strip())
    candidates += sorted(snapshots.glob("*")) if snapshots.is_dir() else []
    for snap in candidates:
        if (snap / "config.json").is_file():
            text_cfg.update(hf_model_name=str(snap), hf_model_pretrained=False)
            return {"text_cfg": text_cfg}
    return {}


# ------------------------------------------------------------------------------------ weight downloads
def _offline_hint(file_name: str | None = None, member: str | None = None) -> str:
    where = (f"put it in the folder named by $RSCIR_WEIGHTS as {file_name}, or pass the spec "
             f"ARCH:/path/to/{member or file_name}" if file_name else "pass the spec ARCH:/path/to/checkpoint.pt (or local-dir:/folder for open_clip folders)")
    return (f"If this machine is offline: download the weights on a machine with internet, then {where}. Hugging Face "
            "downloads honour HF_HUB_CACHE / HF_HOME, and HF_HUB_OFFLINE=1 makes them use only that cache.")


def _local_preset_file(p: Preset, cache_dir: str | None) -> Path | None:
    """A preset's checkpoint already on disk: in ``$RSCIR_WEIGHTS`` under its published name, or in the kit's cache."""
    root = config.weights_root()
    if p.hf_file:
        return root / p.checkpoint_name if root is not None and (root / p.checkpoint_name).is_file() else None
    folders = [root / Path(p.checkpoint_name).stem] if root is not None else []
    folders.append(_preset_cache(p, cache_dir))
    for folder in folders:
        found = sorted(folder.rglob(f"*{p.member_suffix}")) if folder.is_dir() else []
        if found:
            return found[0]
    if root is not None and (root / p.checkpoint_name).is_file():  # the published zip itself, not unpacked yet
        return _unpack_member(p, root / p.checkpoint_name, _preset_cache(p, cache_dir), delete=False)
    return None


def _preset_cache(p: Preset, cache_dir: str | None) -> Path:
    return Path(cache_dir).expanduser() / p.name if cache_dir else config.weights_cache() / p.name


def _unpack_member(p: Preset, zip_path: Path, dest_dir: Path, delete: bool) -> Path:
    """Extract the checkpoint member of a preset's zip into ``dest_dir`` (atomically); returns its path."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            members = [m for m in z.namelist() if m.endswith(p.member_suffix)]
            if not members:
                raise RscirError(f"{zip_path} holds no file ending in {p.member_suffix} (members: "
                                 f"{z.namelist()[:5]}); it is not the published {p.checkpoint_name}")
            target = dest_dir / Path(members[0]).name
            with atomic_path(target) as tmp, z.open(members[0]) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        if delete:
            zip_path.unlink(missing_ok=True)
        raise RscirError(f"{zip_path} is not a readable zip ({type(exc).__name__}: {exc}); "
                         + ("it was deleted: run again to download it anew" if delete else
                            f"replace it with the published {p.checkpoint_name} from {p.url}")) from exc
    if delete:
        zip_path.unlink(missing_ok=True)
    return target


def _fetch_preset(p: Preset, cache_dir: str | None) -> Path:
    """Local checkpoint file of a preset: ``$RSCIR_WEIGHTS/<published name>`` if present, else downloaded (cached)."""
    local = _local_preset_file(p, cache_dir)
    if local is not None:
        return local
    if p.hf_repo:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(p.hf_repo, p.hf_file, cache_dir=cache_dir))
        except Exception as exc:  # network, offline mode, missing file...
            raise RscirError(f"cannot get the weights of preset {p.name!r} (file {p.hf_file} of Hugging Face repo "
                             f"{p.hf_repo}): {type(exc).__name__}: {str(exc).strip().rstrip('.')}. "
                             f"{_offline_hint(p.checkpoint_name)}") from exc
    dest_dir = _preset_cache(p, cache_dir)
    zip_path = dest_dir / p.checkpoint_name
    try:
        download_file(p.url, zip_path, desc=f"{p.name} weights")
    except RscirError as exc:
        raise RscirError(f"cannot download the weights of preset {p.name!r}: {exc} "
                         f"{_offline_hint(p.checkpoint_name, p.member_suffix)}") from exc
    return _unpack_member(p, zip_path, dest_dir, delete=True)


def _tag_weights(plan: _Plan, cache_dir: str | None) -> Path | None:
    """Download (or find in the cache) the file of an open_clip pretrained tag, as open_clip itself does."""
    from open_clip.pretrained import download_pretrained

    try:
        target = download_pretrained(plan.tag_cfg, cache_dir=cache_dir)
    except Exception as exc:
        raise RscirError(f"cannot get the weights of {plan.model_id!r} (open_clip tag {plan.pretrained!r}): "
                         f"{type(exc).__name__}: {str(exc).strip().rstrip('.')}. {_offline_hint()}") from exc
    return Path(target) if target else None


def _hf_hub_weights(spec: str, cache_dir: str | None) -> Path | None:
    """The cached weights file of an ``hf-hub:`` model after open_clip fetched it (None when not found)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is an open_clip dependency
        return None
    repo = spec[len("hf-hub:"):].split("@")[0]
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


# ------------------------------------------------------------------------------------------ load_encoder
def _resolve_precision(precision: str, device) -> str:
    if precision not in PRECISIONS:
        raise RscirError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return precision


def load_encoder(spec: str | None = None, device: str = "auto", precision: str | None = None,
                 activation: str | None = None, cache_dir: str | None = None, setup: str | ModelSetup | None = None,
                 numerics: str | None = None) -> Encoder:
    """Build an :class:`Encoder` from a model spec (see module doc). ``spec=None`` -> ``config.default_model()``.

    setup: a named configuration (``"default"``, ``"paper"``: GELU + fp32 + official numerics) or a
        :class:`~rscir_kit.modelsetup.ModelSetup`; ``activation`` / ``precision`` / ``numerics`` override its fields.
    device: "auto" (``$RSCIR_DEVICE``, else CUDA when present, else CPU), "cpu", "cuda", "cuda:1".
    precision: "auto" (fp16 on CUDA, fp32 on CPU), "fp32", "fp16", "bf16".
    activation: "auto" | "quickgelu" | "gelu" | "official" (= "gelu", as the official WeiCom code).
    numerics: "kit" | "official", recorded in ``meta`` for the evaluations that use this encoder's features.
    cache_dir: where downloaded weights go (default: the Hugging Face / open_clip caches, and the kit's cache for
        zip downloads).

    ``enc.meta`` holds the resolved configuration (:data:`rscir_kit.modelsetup.CONFIG_KEYS`), including the
    weights' SHA-256.
    """
    import open_clip
    import torch

    spec = spec or config.default_model()
    requested = "auto" if activation is None else activation
    if activation is not None and activation not in ACTIVATIONS:
        raise RscirError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if precision is not None and precision not in PRECISIONS:
        raise RscirError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    chosen = resolve_setup(setup, activation=activation, precision=precision, numerics=numerics)
    if activation is None:
        requested = chosen.activation
    act = chosen.activation
    if device in (None, "", "auto"):
        device = config.default_device()
    dev = config.resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RscirError(f"device {device!r} requested but CUDA is not available here (torch {torch.__version__}); "
                         "use device='auto' or 'cpu' (CLI: --device cpu, or unset RSCIR_DEVICE)")
    prec = _resolve_precision(chosen.precision, dev)
    plan = _parse_spec(spec, cache_dir)
    quick = plan.auto_quick_gelu if act == "auto" else act == "quickgelu"
    model_name = plan.model_name
    if not quick and model_name.endswith("-quickgelu"):
        model_name = model_name[: -len("-quickgelu")]
    weights = plan.weights_file
    if plan.tag_cfg is not None:
        weights = _tag_weights(plan, cache_dir)
    kwargs = dict(precision=prec, device=dev, force_quick_gelu=quick, cache_dir=cache_dir, **plan.model_kwargs)
    try:
        with _quiet_quickgelu_warning(act):
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=plan.pretrained, **kwargs)
            tokenizer = open_clip.get_tokenizer(plan.tokenizer_name, cache_dir=cache_dir)
    except RscirError:
        raise
    except Exception as exc:
        text = str(exc).strip().rstrip(".")
        offline = any(s in text for s in ("connect", "offline", "Offline", "cached files", "resolve", "Network"))
        hint = _offline_hint() if offline else "Check the spec and that the checkpoint matches the architecture."
        if not offline and weights is not None:
            hint = (f"The weights file {weights} is damaged or not a checkpoint of {plan.architecture}: delete it "
                    "(a preset downloads it again) or check the spec.")
        if model_name.startswith("local-dir:") and offline and not plan.model_kwargs:
            hint = ("This model's text tower config is fetched from the Hugging Face hub; offline, set HF_HUB_CACHE to "
                    "a cache holding it (or add an hf_hub_cache/ seed folder beside open_clip_config.json) and "
                    "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1.")
        raise RscirError(f"cannot load model {spec!r}: {type(exc).__name__}: {text}. {hint}") from exc
    if act == "gelu" and detect_activation(model) == "quickgelu":
        raise RscirError(f"activation={requested!r} asked for GELU but the config of {spec!r} fixes QuickGELU; "
                         "load the checkpoint as ARCH:/path/ckpt.pt with a non-quickgelu ARCH instead")
    if weights is None and model_name.startswith("hf-hub:"):
        weights = _hf_hub_weights(model_name, cache_dir)
    model.eval()
    dtype = _input_dtype(model, prec)
    extra = dict(plan.extra)
    extra.update(precision=prec, setup=chosen.name, numerics=chosen.numerics, architecture=plan.architecture,
                 weights_sha256=weights_sha256(weights) if weights is not None and Path(weights).is_file() else None)
    return Encoder(model, preprocess, tokenizer, model_id=plan.model_id, model_name=plan.short_name,
                   activation_requested=requested, device=dev, dtype=dtype, extra_meta=extra)


def _input_dtype(model, prec: str):
    """dtype images must be cast to: that of the image tower's first conv/linear weight (open_clip keeps some
    parameters, e.g. LayerNorm, in fp32 under fp16), else the precision's dtype."""
    import torch

    for m in getattr(model, "visual", model).modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            return m.weight.dtype
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec, torch.float32)


#: open_clip's warning when GELU meets a QuickGELU-trained tag, in the wording of every supported version (3.x:
#: "QuickGELU mismatch between final model config ... and pretrained tag ..."; open_clip < 3.3 is not supported).
QUICKGELU_WARNING = r"QuickGELU mismatch"


@contextlib.contextmanager
def _quiet_quickgelu_warning(act: str):
    """open_clip warns when GELU meets the openai tag; with activation="gelu" that is the user's explicit choice."""
    with warnings.catch_warnings():
        if act == "gelu":
            warnings.filterwarnings("ignore", message=QUICKGELU_WARNING)
        yield

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
RemoteCLIP, GeoRSCLIP and SkyCLIP were all fine-tuned from OpenAI CLIP with the open_clip code base, so
their weights expect QuickGELU too.

* ``activation="auto"`` (default): the correct activation — QuickGELU for the presets and for open_clip tags
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
``local-dir:`` folders that hold an ``hf_hub_cache/`` seed (the stand-in does) are handled here: the seed is
copied into the Hugging Face hub cache without overwriting anything; if that cache is not writable the seed
is used directly while the model is built. Preset checkpoints are looked up in ``$RSCIR_WEIGHTS`` (file name
as published, e.g. ``RemoteCLIP-ViT-L-14.pt``) before downloading.
"""
from __future__ import annotations

import contextlib
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import config
from .errors import RscirError
from .io import atomic_path, download_file

ACTIVATIONS = {"auto": "auto", "quickgelu": "quickgelu", "gelu": "gelu", "official": "gelu"}
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


# --------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """A named, published model: open_clip ``arch`` plus where its weights come from.

    Exactly one source: ``tag`` (open_clip pretrained tag), ``hf_repo`` + ``hf_file`` (a checkpoint file on
    the Hugging Face hub), or ``url`` (+ ``member_suffix``: a zip holding the checkpoint).
    """

    name: str
    arch: str
    doc: str
    tag: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    url: str | None = None
    member_suffix: str | None = None
    activation: str = "quickgelu"
    reference: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def checkpoint_name(self) -> str | None:
        """File name looked for in ``$RSCIR_WEIGHTS`` before downloading."""
        if self.hf_file:
            return Path(self.hf_file).name
        if self.url:
            return f"{self.name}.pt"
        return None

    @property
    def source(self) -> str:
        if self.tag:
            return f"open_clip tag {self.arch}:{self.tag}"
        if self.hf_repo:
            return f"hf://{self.hf_repo}/{self.hf_file}"
        return str(self.url)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("openai-vit-l-14", "ViT-L-14", "OpenAI CLIP ViT-L/14 (224 px, 768-d); the WeiCom paper's CLIP baseline.",
           tag="openai", reference="Radford et al., 2021"),
    Preset("openai-vit-b-32", "ViT-B-32", "OpenAI CLIP ViT-B/32 (224 px, 512-d).",
           tag="openai", reference="Radford et al., 2021"),
    Preset("remoteclip-vit-b-32", "ViT-B-32", "RemoteCLIP ViT-B/32: OpenAI CLIP fine-tuned on remote sensing captions.",
           hf_repo="chendelong/RemoteCLIP", hf_file="RemoteCLIP-ViT-B-32.pt", reference="Liu et al., TGRS 2024"),
    Preset("remoteclip-vit-l-14", "ViT-L-14",
           "RemoteCLIP ViT-L/14 (768-d): the backbone of the WeiCom / PatternCom paper results.",
           hf_repo="chendelong/RemoteCLIP", hf_file="RemoteCLIP-ViT-L-14.pt", reference="Liu et al., TGRS 2024"),
    Preset("georsclip-vit-b-32", "ViT-B-32", "GeoRSCLIP ViT-B/32: OpenAI CLIP fine-tuned on RS5M.",
           hf_repo="Zilun/GeoRSCLIP", hf_file="ckpt/RS5M_ViT-B-32.pt", reference="Zhang et al., RS5M, 2023"),
    Preset("skyclip-vit-b-32", "ViT-B-32",
           "SkyCLIP ViT-B/32 (SkyScript, top-50% subset): OpenAI CLIP continually pre-trained on SkyScript.",
           url="https://opendatasharing.s3.us-west-2.amazonaws.com/SkyScript/ckpt/SkyCLIP_ViT_B32_top50pct.zip",
           member_suffix="epoch_20.pt", reference="Wang et al., SkyScript, AAAI 2024"),
    Preset("skyclip-vit-l-14", "ViT-L-14",
           "SkyCLIP ViT-L/14 (SkyScript, top-30% subset filtered by CLIP-laion-RS).",
           url="https://opendatasharing.s3.us-west-2.amazonaws.com/SkyScript/ckpt/"
               "SkyCLIP_ViT_L14_top30pct_filtered_by_CLIP_laion_RS.zip",
           member_suffix="epoch_20.pt", reference="Wang et al., SkyScript, AAAI 2024"),
]}


def list_presets():
    """Table (pandas DataFrame) of the presets: name, arch, activation, weights source, description."""
    import pandas as pd

    rows = [{"name": p.name, "arch": p.arch, "activation": p.activation, "weights": p.source,
             "reference": p.reference, "description": p.doc} for p in PRESETS.values()]
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
                f"activation={self.meta['activation']}, device={self.device}, dtype={self.meta['dtype']})")

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
        import warnings

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
                     {"checkpoint": str(ckpt), "weights_bytes": Path(ckpt).stat().st_size})
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
        return _Plan(name, None, name, f"local-dir:{path.name}", bool(cfg.get("quick_gelu", False)), name, extra)
    if spec.startswith("hf-hub:"):
        return _Plan(spec, None, spec, spec, False, spec, {})
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
    if not sep or not pretrained:
        raise RscirError(f"model spec {spec!r} names an architecture but no weights: use {arch}:TAG (tags: "
                         f"{open_clip.list_pretrained_tags_by_model(arch)}) or {arch}:/path/to/checkpoint.pt")
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if tag_cfg:
        quick = arch_quick or bool(tag_cfg.get("quick_gelu", False))
        same = [p.name for p in PRESETS.values() if (p.arch, p.tag) == (arch, pretrained)]
        short = same[0] if same else f"{arch}:{pretrained}"  # ViT-L-14:openai and openai-vit-l-14 compare equal
        return _Plan(arch, pretrained, f"{arch}:{pretrained}", short, quick, arch, {})
    ckpt = Path(pretrained).expanduser()
    if not ckpt.is_file():
        raise RscirError(f"model spec {spec!r}: {pretrained!r} is neither an open_clip tag of {arch} "
                         f"({open_clip.list_pretrained_tags_by_model(arch)}) nor an existing checkpoint file")
    ckpt = ckpt.resolve()
    return _Plan(arch, str(ckpt), f"{arch}:{ckpt}", f"{arch}:{ckpt.parent.name}/{ckpt.name}", arch_quick, arch,
                 {"checkpoint": str(ckpt), "weights_bytes": ckpt.stat().st_size})


def _read_json(path: Path) -> dict:
    import json

    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _weights_file(folder: Path) -> Path | None:
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


# ------------------------------------------------------------------------------------ weight downloads
def _offline_hint(file_name: str | None = None) -> str:
    where = (f"put it in the folder named by $RSCIR_WEIGHTS as {file_name}, or pass the spec ARCH:/path/to/{file_name}"
             if file_name else "pass the spec ARCH:/path/to/checkpoint.pt (or local-dir:/folder for open_clip folders)")
    return (f"If this machine is offline: download the weights on a machine with internet, then {where}. Hugging Face "
            "downloads honour HF_HUB_CACHE / HF_HOME, and HF_HUB_OFFLINE=1 makes them use only that cache.")


def _fetch_preset(p: Preset, cache_dir: str | None) -> Path:
    """Local checkpoint file of a preset: ``$RSCIR_WEIGHTS/<file>`` if present, else downloaded (cached)."""
    root = config.weights_root()
    if root is not None and p.checkpoint_name and (root / p.checkpoint_name).is_file():
        return root / p.checkpoint_name
    if p.hf_repo:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(p.hf_repo, p.hf_file, cache_dir=cache_dir))
        except Exception as exc:  # network, offline mode, missing file...
            raise RscirError(f"cannot get the weights of preset {p.name!r} (file {p.hf_file} of Hugging Face repo "
                             f"{p.hf_repo}): {type(exc).__name__}: {str(exc).strip().rstrip('.')}. "
                             f"{_offline_hint(p.checkpoint_name)}") from exc
    dest_dir = Path(cache_dir or Path("~/.cache/rscir_kit/weights").expanduser()) / p.name
    found = sorted(dest_dir.rglob(f"*{p.member_suffix}")) if dest_dir.is_dir() else []
    if found:
        return found[0]
    dest_dir.mkdir(parents=True, exist_ok=True)
    zip_path = dest_dir / Path(p.url).name
    try:
        download_file(p.url, zip_path, desc=f"{p.name} weights")
        with zipfile.ZipFile(zip_path) as z:
            z.extractall(dest_dir)
        zip_path.unlink()
    except Exception as exc:
        raise RscirError(f"cannot download the weights of preset {p.name!r} from {p.url}: {type(exc).__name__}: {exc}. "
                         f"Unzip it yourself and pass {p.arch}:/path/to/{p.member_suffix}. "
                         f"{_offline_hint(p.checkpoint_name)}") from exc
    found = sorted(dest_dir.rglob(f"*{p.member_suffix}"))
    if not found:
        raise RscirError(f"{p.url} held no file ending in {p.member_suffix} (unpacked in {dest_dir})")
    return found[0]


def seed_hf_cache(seed: Path) -> Path | None:
    """Copy a Hugging Face hub-cache seed into the active hub cache without overwriting anything.

    Returns the cache folder written to, or None when it is not writable (caller then uses the seed directly).
    """
    from huggingface_hub import constants

    target = Path(constants.HF_HUB_CACHE)
    try:
        for src in seed.rglob("*"):
            if src.is_dir():
                continue
            dst = target / src.relative_to(seed)
            if dst.exists() or dst.is_symlink():
                continue
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
        return target
    except OSError:
        return None


@contextlib.contextmanager
def _hf_cache_from(seed: Path | None):
    """While building a ``local-dir:`` model: make its ``hf_hub_cache/`` seed visible to transformers."""
    if seed is None or not seed.is_dir():
        yield
        return
    from huggingface_hub import constants

    if seed_hf_cache(seed) is not None:
        yield
        return
    old = constants.HF_HUB_CACHE
    constants.HF_HUB_CACHE = str(seed)  # read-only cache is fine: only cached files are needed
    try:
        yield
    finally:
        constants.HF_HUB_CACHE = old


# ------------------------------------------------------------------------------------------ load_encoder
def _resolve_precision(precision: str, device) -> str:
    if precision not in PRECISIONS:
        raise RscirError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return precision


def load_encoder(spec: str | None = None, device: str = "auto", precision: str = "auto", activation: str = "auto",
                 cache_dir: str | None = None) -> Encoder:
    """Build an :class:`Encoder` from a model spec (see module doc). ``spec=None`` -> ``config.default_model()``.

    device: "auto" (``$RSCIR_DEVICE``, else CUDA when present, else CPU), "cpu", "cuda", "cuda:1".
    precision: "auto" (fp16 on CUDA, fp32 on CPU), "fp32", "fp16", "bf16".
    activation: "auto" | "quickgelu" | "gelu" | "official" (= "gelu", as the official WeiCom code).
    cache_dir: where downloaded weights go (default: the Hugging Face / open_clip caches).
    """
    import open_clip
    import torch

    spec = spec or config.default_model()
    if activation not in ACTIVATIONS:
        raise RscirError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    act = ACTIVATIONS[activation]
    if device in (None, "", "auto"):
        device = config.default_device()
    dev = config.resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RscirError(f"device {device!r} requested but CUDA is not available here (torch {torch.__version__}); "
                         "use device='auto' or 'cpu' (CLI: --device cpu, or unset RSCIR_DEVICE)")
    prec = _resolve_precision(precision, dev)
    plan = _parse_spec(spec, cache_dir)
    quick = plan.auto_quick_gelu if act == "auto" else act == "quickgelu"
    model_name = plan.model_name
    if not quick and model_name.endswith("-quickgelu"):
        model_name = model_name[: -len("-quickgelu")]
    kwargs = dict(precision=prec, device=dev, force_quick_gelu=quick, cache_dir=cache_dir)
    seed = None
    if model_name.startswith("local-dir:"):
        seed = Path(model_name[len("local-dir:"):]) / "hf_hub_cache"
    try:
        with _hf_cache_from(seed), _quiet_quickgelu_warning(act):
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=plan.pretrained, **kwargs)
            tokenizer = open_clip.get_tokenizer(plan.tokenizer_name, cache_dir=cache_dir)
    except RscirError:
        raise
    except Exception as exc:
        text = str(exc).strip().rstrip(".")
        offline = any(s in text for s in ("connect", "offline", "Offline", "cached files", "resolve", "Network"))
        hint = _offline_hint() if offline else "Check the spec and that the checkpoint matches the architecture."
        if seed is not None and not seed.is_dir() and offline:
            hint = ("This model's text tower config is fetched from the Hugging Face hub; offline, set HF_HUB_CACHE to "
                    "a cache holding it (or add an hf_hub_cache/ seed folder beside open_clip_config.json) and "
                    "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1.")
        raise RscirError(f"cannot load model {spec!r}: {type(exc).__name__}: {text}. {hint}") from exc
    if act == "gelu" and detect_activation(model) == "quickgelu":
        raise RscirError(f"activation={activation!r} asked for GELU but the config of {spec!r} fixes QuickGELU; "
                         "load the checkpoint as ARCH:/path/ckpt.pt with a non-quickgelu ARCH instead")
    model.eval()
    dtype = _input_dtype(model, prec)
    extra = dict(plan.extra)
    extra["precision"] = prec
    return Encoder(model, preprocess, tokenizer, model_id=plan.model_id, model_name=plan.short_name,
                   activation_requested=activation, device=dev, dtype=dtype, extra_meta=extra)


def _input_dtype(model, prec: str):
    """dtype images must be cast to: that of the image tower's first conv/linear weight (open_clip keeps some
    parameters, e.g. LayerNorm, in fp32 under fp16), else the precision's dtype."""
    import torch

    for m in getattr(model, "visual", model).modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            return m.weight.dtype
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec, torch.float32)


@contextlib.contextmanager
def _quiet_quickgelu_warning(act: str):
    """open_clip warns when GELU meets the openai tag; with activation="gelu" that is the user's explicit choice."""
    import warnings

    with warnings.catch_warnings():
        if act == "gelu":
            warnings.filterwarnings("ignore", message="QuickGELU mismatch")
        yield


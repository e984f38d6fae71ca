"""Where data, weights, caches and outputs live: environment variables with sane defaults.

| variable        | meaning                                                   | default                      |
|-----------------|-----------------------------------------------------------|------------------------------|
| RSCIR_DATA      | data root (holds ``ucm/``, ``PatternNet/``, ...)          | ``~/.cache/rscir_kit/data``  |
| RSCIR_WEIGHTS   | folder of local model weights (e.g. the offline stand-in) | unset                        |
| RSCIR_MODEL     | default model spec for notebooks and the CLI              | see :func:`default_model`    |
| RSCIR_CACHE     | feature cache folder                                      | ``~/.cache/rscir_kit/features`` |
| RSCIR_DEVICE    | ``auto`` / ``cpu`` / ``cuda`` / ``cuda:1``                | ``auto``                     |
| RSCIR_OUTPUT    | where the main job writes notebooks, figures and tables  | ``./outputs``                |
| RSCIR_PROGRESS  | ``0``: no progress bars (set by the main job)            | ``1``                        |
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ParameterError, RscirError

STANDIN_NAME = "ucm-minilm-standin"
PAPER_DEFAULT_MODEL = "remoteclip-vit-l-14"


def repo_root() -> Path | None:
    """The repository checkout this package lives in (has ``pyproject.toml`` and ``notebooks/``), or None
    for an installed copy."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def _env_path(name: str) -> Path | None:
    """``$name`` as an absolute path; a relative value is taken relative to the repository root (the documented
    ``RSCIR_DATA=../shared/data`` works from any folder, e.g. a notebook's), else to the current folder. The
    environment itself is never rewritten."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (repo_root() or Path.cwd()) / path
    return path.resolve()


def data_root() -> Path:
    """Data root: ``$RSCIR_DATA`` or ``~/.cache/rscir_kit/data`` (downloads go there)."""
    return _env_path("RSCIR_DATA") or Path("~/.cache/rscir_kit/data").expanduser()


def weights_root() -> Path | None:
    """Local weights folder (``$RSCIR_WEIGHTS``) or None."""
    return _env_path("RSCIR_WEIGHTS")


def cache_dir() -> Path:
    """Feature cache: ``$RSCIR_CACHE`` or ``~/.cache/rscir_kit/features``."""
    return _env_path("RSCIR_CACHE") or Path("~/.cache/rscir_kit/features").expanduser()


def weights_cache() -> Path:
    """Where the kit unpacks downloaded weight archives (SkyCLIP zips) and remembers weights' SHA-256:
    ``~/.cache/rscir_kit/weights``."""
    return Path("~/.cache/rscir_kit/weights").expanduser()


def output_dir() -> Path:
    """Output folder of the main job: ``$RSCIR_OUTPUT`` or ``./outputs``."""
    return _env_path("RSCIR_OUTPUT") or Path("outputs").resolve()


def standin_path() -> Path | None:
    """Path of the offline stand-in model if ``$RSCIR_WEIGHTS`` holds it."""
    root = weights_root()
    if root is not None and (root / STANDIN_NAME / "open_clip_config.json").is_file():
        return root / STANDIN_NAME
    return None


def default_model() -> str:
    """``$RSCIR_MODEL``; else the offline stand-in when ``$RSCIR_WEIGHTS`` has it; else RemoteCLIP ViT-L/14."""
    value = os.environ.get("RSCIR_MODEL", "").strip()
    if value:
        return value
    standin = standin_path()
    if standin is not None:
        return f"local-dir:{standin}"
    return PAPER_DEFAULT_MODEL


def default_device() -> str:
    return os.environ.get("RSCIR_DEVICE", "auto").strip() or "auto"


def resolve_device(device: str | None = "auto"):
    """``'auto'`` → CUDA when available else CPU; anything else is passed to ``torch.device``."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ParameterError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N (--device / $RSCIR_DEVICE)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RscirError(f"device {device!r} requested but CUDA is not available here (torch {torch.__version__}); "
                         "use auto or cpu (--device cpu, or unset RSCIR_DEVICE)")
    return dev


def show_progress(progress: bool = True) -> bool:
    """Whether to draw a progress bar: ``progress`` unless ``$RSCIR_PROGRESS`` is ``0`` (the main job sets it:
    inside executed notebooks a bar has no live display and would be saved as "0%| | 0/2100")."""
    return bool(progress) and os.environ.get("RSCIR_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def model_slug(model: str) -> str:
    """File-name-safe short form of a model spec (``local-dir:/x/ucm-minilm-standin`` → ``ucm-minilm-standin``)."""
    text = str(model)
    if text.startswith("local-dir:"):
        text = Path(text[len("local-dir:"):]).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"

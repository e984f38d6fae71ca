"""Shared fixtures. Real offline data/weights are found through RSCIR_DATA / RSCIR_WEIGHTS, falling back to
``../shared`` beside the repository (the CI layout); tests needing them skip cleanly when absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SHARED = REPO.parent / "shared"


def _locate(env: str, fallback: Path) -> Path | None:
    value = os.environ.get(env)
    if value:
        path = Path(value).expanduser().resolve()
        return path if path.exists() else None
    return fallback if fallback.exists() else None


SHARED_DATA = _locate("RSCIR_DATA", _SHARED / "data")
SHARED_WEIGHTS = _locate("RSCIR_WEIGHTS", _SHARED / "weights")

if SHARED_WEIGHTS is not None:
    # Offline machines: never probe the hub (the stand-in carries its own HF cache seed).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline real data folder (UCM images, PatternNet file list, xView2-CIR list)."""
    if SHARED_DATA is None:
        pytest.skip("offline data not found: set RSCIR_DATA (see README)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def patternnet_filelist(shared_data) -> Path:
    path = shared_data / "patternnet_filelist.csv"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture(scope="session")
def standin_spec() -> str:
    """open_clip spec of the offline stand-in model (a plumbing model, never a result)."""
    if SHARED_WEIGHTS is None or not (SHARED_WEIGHTS / "ucm-minilm-standin").is_dir():
        pytest.skip("stand-in weights not found: set RSCIR_WEIGHTS (see README)")
    return f"local-dir:{SHARED_WEIGHTS / 'ucm-minilm-standin'}"

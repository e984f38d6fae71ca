"""Shared fixtures. Real offline data/weights are found through RSCIR_DATA / RSCIR_WEIGHTS, falling back to
``../shared`` beside the repository (the CI layout).

Tiers: the core tests run everywhere on generated fixtures. Tests that check the *real* files or the stand-in
model (they use the ``shared_data`` / ``standin_spec`` / ``patternnet_filelist`` fixtures) form the ``realdata``
tier: marked automatically, and not collected on a clean clone without the data (the session header says how
many and how to run them), so nothing skips."""
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


SLOW_FIXTURES = {"executed"}
REAL_FIXTURES = {"shared_data": SHARED_DATA, "patternnet_filelist": SHARED_DATA, "standin_spec": SHARED_WEIGHTS,
                 # the browser tests' notebook environment needs both (tests/test_browser.py)
                 "env_and_notebook": SHARED_DATA and SHARED_WEIGHTS}


def pytest_collection_modifyitems(config, items):
    """Mark the tests that use real data or the stand-in as ``realdata``; without that data, deselect them."""
    kept, dropped = [], []
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)  # uses notebooks executed by papermill: not in the fast tier
        needs = [name for name in REAL_FIXTURES if name in getattr(item, "fixturenames", ())]
        if needs:
            item.add_marker(pytest.mark.realdata)
        if any(REAL_FIXTURES[name] is None for name in needs):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
        config._rscir_realdata_dropped = len(dropped)


def pytest_report_header(config):
    missing = [env for env, found in (("RSCIR_DATA", SHARED_DATA), ("RSCIR_WEIGHTS", SHARED_WEIGHTS)) if found is None]
    if missing:
        return (f"realdata tier not run: {' and '.join(missing)} not found (tests of the real files / stand-in model "
                "are deselected; set the variables, see README 'Tests')")
    return "realdata tier: on (real offline data and stand-in found)"

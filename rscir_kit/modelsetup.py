"""The model side of a run as one explicit, named configuration, and the identity of model weights.

A :class:`ModelSetup` says how the encoder is built and how scores are computed:

=============  ==============================================================================================
``activation``  ``auto`` (what the weights were trained with), ``quickgelu`` or ``gelu``
``precision``   ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp32``, ``fp16`` or ``bf16``
``numerics``    ``kit`` (saturation-free WeiCom ranking) or ``official`` (float32 Φ everywhere, also at λ = 0 / 1,
                as the official code; see :func:`rscir_kit.engine.evaluate`)
=============  ==============================================================================================

Two named setups (:data:`SETUPS`): ``default`` (the correct-weights setup) and ``paper`` (plain GELU, fp32,
official numerics: what the official WeiCom code ran, hence what the published numbers are). Every entry point
takes ``setup=`` (CLI ``--setup``) plus per-field overrides; the *resolved* configuration is stored flat in every
artefact's metadata (keys :data:`CONFIG_KEYS`) and compared wherever two artefacts meet
(:func:`rscir_kit.features.check_same_model`).

Weights are identified by the SHA-256 of their file (:func:`weights_sha256`), computed once and remembered in the
kit's cache (``~/.cache/rscir_kit/weights/sha256/``) keyed by path, size and modification time, so a 1.7 GB checkpoint is
hashed once, not on every run. Nothing is written beside the weights (they often live in read-only or shared
folders such as the Hugging Face cache).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from . import config
from .errors import RscirError
from .io import write_text_atomic
from .methods import NUMERICS

ACTIVATIONS = ("auto", "quickgelu", "gelu")
ACTIVATION_ALIASES = {"official": "gelu"}  # "official" = as the official WeiCom code (plain GELU)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")

#: Metadata keys that together say which configuration made an artefact (stored flat in ``meta``).
CONFIG_KEYS = ("setup", "model", "model_name", "architecture", "weights_sha256", "activation", "precision",
               "preprocess", "numerics")


@dataclass(frozen=True)
class ModelSetup:
    """Requested configuration of the model side (``auto`` values are resolved when the encoder is built)."""

    name: str = "default"
    activation: str = "auto"
    precision: str = "auto"
    numerics: str = "kit"

    def __post_init__(self):
        act = ACTIVATION_ALIASES.get(self.activation, self.activation)
        if act not in ACTIVATIONS:
            raise RscirError(f"activation must be one of {sorted(ACTIVATIONS + tuple(ACTIVATION_ALIASES))}, "
                             f"got {self.activation!r}")
        if self.precision not in PRECISIONS:
            raise RscirError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.numerics not in NUMERICS:
            raise RscirError(f"numerics must be one of {NUMERICS}, got {self.numerics!r}")
        object.__setattr__(self, "activation", act)

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line: ``paper (activation=gelu, precision=fp32, numerics=official)``."""
        return f"{self.name} (activation={self.activation}, precision={self.precision}, numerics={self.numerics})"


#: The named setups. ``paper`` = what the official WeiCom code runs (github.com/billpsomas/rscir, utils.load_model:
#: plain ``open_clip`` ``ViT-L-14`` = GELU, fp32, Φ in float32 for every λ).
SETUPS: dict[str, ModelSetup] = {
    "default": ModelSetup("default"),
    "paper": ModelSetup("paper", activation="gelu", precision="fp32", numerics="official"),
}


def resolve_setup(setup: str | ModelSetup | None = None, *, activation: str | None = None,
                  precision: str | None = None, numerics: str | None = None) -> ModelSetup:
    """A :class:`ModelSetup` from a name (or instance) plus explicit overrides (``None`` = keep the setup's).

    The result is named after the named setup it equals, else ``custom``.
    """
    if isinstance(setup, ModelSetup):
        base = setup
    else:
        name = str(setup or "default").strip().lower()
        if name not in SETUPS:
            raise RscirError(f"unknown setup {setup!r}: choose one of {', '.join(SETUPS)} "
                             "(or give --activation / --precision / --numerics)")
        base = SETUPS[name]
    overrides = {k: v for k, v in (("activation", activation), ("precision", precision), ("numerics", numerics))
                 if v is not None}
    result = replace(base, **overrides)
    values = (result.activation, result.precision, result.numerics)
    for name, named in SETUPS.items():
        if values == (named.activation, named.precision, named.numerics):
            return replace(result, name=name)
    return replace(result, name="custom")


def setup_of(meta: dict | None) -> ModelSetup | None:
    """The configuration an artefact records (``None`` when it records no activation, e.g. an official pickle).

    Resolved values are taken as requests, so an encoder built from it reproduces the artefact: activation
    ``n/a`` (towers without transformer blocks) becomes ``auto``.
    """
    meta = meta or {}
    act = meta.get("activation")
    if not act:
        return None
    act = "auto" if act == "n/a" else act
    precision = meta.get("precision") or "auto"
    return resolve_setup(ModelSetup(str(meta.get("setup") or "custom"), act, precision,
                                    meta.get("numerics") or "kit"))


# ------------------------------------------------------------------------------------------ weights identity
def _hash_cache_dir() -> Path:
    return config.weights_cache() / "sha256"


def weights_sha256(path, progress: bool = False) -> str:
    """SHA-256 (hex) of the file ``path``, remembered per (resolved path, size, mtime) in the kit's cache.

    A changed file (other size or modification time) is hashed again. When the cache cannot be written the
    digest is still returned (just not remembered).
    """
    path = Path(path).expanduser().resolve()
    st = path.stat()
    key = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    record = _hash_cache_dir() / (hashlib.sha1(str(path).encode("utf-8")).hexdigest() + ".json")
    try:
        cached = json.loads(record.read_text(encoding="utf-8"))
        if {k: cached.get(k) for k in key} == key and len(str(cached.get("sha256", ""))) == 64:
            return str(cached["sha256"])
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    sha = digest.hexdigest()
    try:

        write_text_atomic(record, json.dumps(dict(key, sha256=sha)))
    except OSError:
        pass
    return sha


def describe_config(meta: dict) -> str:
    """Short human form of an artefact's configuration (for messages)."""
    parts = [str(meta.get("model_name") or meta.get("model") or "unknown model")]
    for k in ("setup", "activation", "precision", "numerics"):
        if meta.get(k):
            parts.append(f"{k}={meta[k]}")
    if meta.get("weights_sha256"):
        parts.append(f"weights sha256 {str(meta['weights_sha256'])[:12]}")
    return " ".join(parts)


def flags_for(meta: dict) -> str:
    """CLI flags that rebuild an encoder with the configuration recorded in ``meta``."""
    s = setup_of(meta)
    if s is None:
        return ""
    if s.name in SETUPS and s.name != "custom":
        return f"--setup {s.name}"
    return f"--activation {s.activation} --precision {s.precision} --numerics {s.numerics}"



def setup_for(stored: dict | None = None, setup: str | ModelSetup | None = None, *, activation: str | None = None,
              precision: str | None = None, numerics: str | None = None) -> ModelSetup:
    """The configuration to build an encoder with, to match an artefact by default.

    ``setup`` given: that named setup; else the configuration ``stored`` records (an artefact's meta); else
    ``default``. Explicit ``activation`` / ``precision`` / ``numerics`` override field by field.
    """
    if setup is not None:
        base = resolve_setup(setup)
    else:
        base = setup_of(stored) or SETUPS["default"]
    return resolve_setup(base, activation=activation, precision=precision, numerics=numerics)

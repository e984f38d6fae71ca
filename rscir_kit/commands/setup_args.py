"""The model-configuration flags every sub-command shares: ``--setup``, ``--activation``, ``--precision``,
``--numerics`` (see :mod:`rscir_kit.modelsetup`)."""
from __future__ import annotations

import argparse

from ..modelsetup import NUMERICS, PRECISIONS, SETUPS


def add_setup_args(p: argparse.ArgumentParser, numerics: bool = True, matching: str | None = None) -> None:
    """Add the configuration flags to ``p``; ``matching`` names the artefact whose stored configuration is the
    default (e.g. "FEATS"), None: the default setup."""
    default = f"the configuration stored in {matching}" if matching else "default"
    p.add_argument("--setup", default=None, choices=sorted(SETUPS),
                   help="named model configuration: default (the weights' own activation, fp16 on CUDA / fp32 on "
                        "CPU, kit numerics) or paper (plain GELU + fp32 + official numerics, as the official WeiCom "
                        f"code); default: {default}")
    p.add_argument("--activation", default=None, choices=["auto", "quickgelu", "gelu", "official"],
                   help="override: auto = the activation the weights were trained with; gelu/official = as the "
                        "official WeiCom code")
    p.add_argument("--precision", default=None, choices=list(PRECISIONS), help="override: auto = fp16 on CUDA, fp32 on CPU")
    if numerics:
        p.add_argument("--numerics", default=None, choices=list(NUMERICS),
                       help="override: kit (saturation-free WeiCom ranking) or official (float32 Φ for every λ, "
                            "also 0 and 1, as the official code)")


def setup_kwargs(args) -> dict:
    """The configuration flags of ``args`` as keyword arguments of :func:`rscir_kit.modelsetup.setup_for`."""
    return {"setup": getattr(args, "setup", None), "activation": getattr(args, "activation", None),
            "precision": getattr(args, "precision", None), "numerics": getattr(args, "numerics", None)}


def any_setup_flag(args) -> bool:
    return any(v is not None for v in setup_kwargs(args).values())

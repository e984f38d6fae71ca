"""CLI sub-commands: each module has ``register(subparsers)`` and imports what its commands need at its top.

:data:`COMMANDS` is the one table of sub-commands: ``rscir_kit.cli`` lists them in ``--help`` from it and imports
a command's module only when that command runs (or its own ``--help`` is asked for), so ``rscir-kit search``
never pays for the modules of ``evaluate`` or ``notebooks``.
"""
from __future__ import annotations

import argparse

#: sub-command -> (module that registers and runs it, one-line help), in ``--help`` order.
COMMANDS = {
    "extract": ("rscir_kit.commands.extract", "encode an image collection into an image feature file (.npz); resumable"),
    "encode-text": ("rscir_kit.commands.extract", "encode texts (one per line) into a text feature file (.npz)"),
    "evaluate": ("rscir_kit.commands.evaluate", "evaluate composed retrieval methods on a benchmark"),
    "index": ("rscir_kit.commands.index",
              "build / inspect an archive index for millisecond WeiCom search (rscir-kit search)"),
    "search": ("rscir_kit.commands.index", "WeiCom top-k of an (image, text) query over an archive index"),
    "notebooks": ("rscir_kit.commands.notebooks",
                  "run notebooks/NN_*.ipynb in order with papermill; figures (PNG+PDF), tables (CSV) and results.json "
                  "per notebook in the output folder"),
    "ucm": ("rscir_kit.commands.ucm", "UC Merced data, UCM-Com queries, text↔image retrieval on caption sets"),
}


def add_command(subparsers, name: str, **kwargs) -> argparse.ArgumentParser:
    """``subparsers.add_parser(name, help=<its line in COMMANDS>, **kwargs)``."""
    return subparsers.add_parser(name, help=COMMANDS[name][1], **kwargs)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value

"""``rscir-kit`` / ``python -m rscir_kit``: one sub-command per module in ``rscir_kit/commands``.

Each command module exposes ``register(subparsers)`` which adds its parser and sets ``func``
(a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from . import __version__
from .errors import RscirError

# Command modules, in the order they appear in --help.
COMMAND_MODULES = [
    "rscir_kit.commands.extract",
    "rscir_kit.commands.evaluate",
    "rscir_kit.commands.index",
    "rscir_kit.commands.notebooks",
    "rscir_kit.commands.ucm",
]


class Parser(argparse.ArgumentParser):
    """argparse with the kit's error policy: a usage error is one line (``<prog>: error: ...``) and exit code 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="rscir-kit",
        description="Remote sensing composed image retrieval toolkit (WeiCom, PatternCom, UCM benchmarks).",
    )
    parser.add_argument("--version", action="version", version=f"rscir-kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    show = warnings.showwarning
    warnings.showwarning = lambda msg, *a, **k: print(f"rscir-kit {args.command}: warning: {msg}", file=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except RscirError as exc:
        print(f"rscir-kit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (``rscir-kit index info | head``): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"rscir-kit {args.command}: interrupted; finished work is kept, run the same command again to resume.",
              file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``rscir-kit`` / ``python -m rscir_kit``: one sub-command per module in ``rscir_kit/commands``.

Each command module exposes ``register(subparsers)`` which adds its parser and sets ``func``
(a callable taking the parsed ``argparse.Namespace`` and returning an exit code). The dispatch is the one
place that is lazy: only the module of the command that runs is imported (``commands.COMMANDS``); the other
commands appear in ``--help`` by their one-line help.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from . import __version__
from .commands import COMMANDS
from .errors import RscirError


class Parser(argparse.ArgumentParser):
    """argparse with the kit's error policy: a usage error is one line (``<prog>: error: ...``) and exit code 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: every command's module registered when ``argv`` is None, else only the module of
    the command ``argv`` names (the others are listed by name and help)."""
    wanted = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    parser = Parser(
        prog="rscir-kit",
        description="Remote sensing composed image retrieval toolkit (WeiCom, PatternCom, UCM benchmarks).",
    )
    parser.add_argument("--version", action="version", version=f"rscir-kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    registered = set()
    for command, (module, help_line) in COMMANDS.items():
        if wanted is None or COMMANDS.get(wanted, ("",))[0] == module:
            if module not in registered:
                importlib.import_module(module).register(sub)
                registered.add(module)
        else:
            sub.add_parser(command, help=help_line)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
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

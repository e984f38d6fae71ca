"""``rscir-kit notebooks``: run the numbered notebooks in order (papermill) and list every figure and table."""
from __future__ import annotations

import argparse

from .. import run_notebooks
from . import add_command


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "notebooks", description=run_notebooks.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_notebooks.add_arguments(parser)
    parser.set_defaults(func=run_notebooks.main_from_args)

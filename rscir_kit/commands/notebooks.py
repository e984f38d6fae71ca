"""``rscir-kit notebooks``: run the numbered notebooks in order (papermill) and list every figure and table."""
from __future__ import annotations

import argparse

from .. import run_notebooks


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "notebooks", help="run notebooks/NN_*.ipynb in order with papermill; figures (PNG+PDF), tables (CSV) "
                          "and results.json per notebook in the output folder",
        description=run_notebooks.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_notebooks.add_arguments(parser)
    parser.set_defaults(func=run_notebooks.main_from_args)

"""``evaluate`` sub-commands: PatternCom, xView2-CIR, or any saved query-set file → mAP table (CSV + print)."""
from __future__ import annotations

import argparse
import sys
import warnings

from .. import config
from ..errors import DataError

DEFAULT_METHODS = ["image", "text", "average", "weicom"]


def _lambdas(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lambdas takes comma-separated numbers in [0, 1], got {text!r}") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, metavar="FEATS.npz",
                   help="archive image features (rscir-kit extract), or an official WeiCom .pkl")
    p.add_argument("--query-features", metavar="FEATS.npz", default=None,
                   help="features of the query images if they are not in the archive file")
    texts = p.add_mutually_exclusive_group()
    texts.add_argument("--text-features", metavar="TEXT.npz", help="text features (rscir-kit encode-text)")
    texts.add_argument("--model", default=None,
                       help="embed the query texts with this model (must be the archive's model); "
                            "default when --text-features is absent: the model recorded in FEATS")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                   help="image text average weicom add multiply min (fusions accept ':norm', e.g. add:weicom)")
    p.add_argument("--lambdas", type=_lambdas, default=[0.5], help="comma-separated λ values for weicom, e.g. 0.3,0.5")
    p.add_argument("--on-empty", choices=["zero", "skip", "error"], default="zero",
                   help="pairs without positives: AP 0 (official protocol, counted), skip them, or fail")
    p.add_argument("--out", metavar="RESULTS.csv", default=None, help="write method,lambda,<group>,map here")
    p.add_argument("--per-pair-out", metavar="PAIRS.csv", default=None, help="also write the AP of every pair")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: $RSCIR_DEVICE or auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate composed retrieval methods on a benchmark",
                              description="Evaluate image/text/average/WeiCom (any λ) on a benchmark; prints a table "
                                          "and writes method,lambda,<group>,map (map in %%).")
    bench = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    pc = bench.add_parser("patterncom", help="PatternCom on PatternNet (official protocol)")
    _common(pc)
    pc.add_argument("--patterncom-dir", required=True, metavar="DIR", help="folder with <attribute>.csv files")
    pc.add_argument("--attributes", nargs="+", default=None,
                    help="subset of color context density existence quantity shape (default: all present)")
    pc.set_defaults(func=run_patterncom, by="attribute")

    xv = bench.add_parser("xview2", help="xView2-CIR: pre-disaster image + text → post-disaster image")
    _common(xv)
    xv.add_argument("--list", required=True, metavar="CSV", help="xview2_cir.csv of the official release")
    xv.add_argument("--text-columns", nargs="+", default=["query_default"],
                    choices=["query_default", "query_alt1", "query_alt2"])
    xv.set_defaults(func=run_xview2, by="text_column")

    uc = bench.add_parser("ucmcom", help="UCM-Com composed queries on UC Merced (the offline benchmark)")
    _common(uc)
    uc.add_argument("--queries-file", default=None, metavar="CSV",
                    help="UCM-Com group file (default: the published UCM-Com set shipped with the kit)")
    uc.add_argument("--template", default="with",
                    help="text template: a preset (label, with, aerial) or a format string with {label}")
    uc.add_argument("--by", default="attribute", choices=["attribute", "direction", "query_class"],
                    help="table rows: per label (attribute), per direction (add/remove) or per query class")
    uc.set_defaults(func=run_ucmcom)

    qf = bench.add_parser("queries", help="any query-set file written by rscir-kit (QuerySet.to_csv)")
    _common(qf)
    qf.add_argument("--queries", required=True, metavar="QUERIES.csv")
    qf.add_argument("--by", default=None, help="group column for the table (default: the file's first group column)")
    qf.set_defaults(func=run_queries)


def _load(args):
    from ..features import ImageFeatures, TextFeatures
    from ..io import check_output_path

    for opt in ("out", "per_pair_out"):  # wrong outputs fail now, not after the evaluation
        if getattr(args, opt, None):
            check_output_path(getattr(args, opt), "file", "--" + opt.replace("_", "-"))
    config.resolve_device(args.device or config.default_device())
    archive = ImageFeatures.load(args.features)
    query_features = ImageFeatures.load(args.query_features) if args.query_features else None
    if args.text_features:
        texts = TextFeatures.load(args.text_features)
    else:
        from ..encoders import load_encoder

        model = args.model or archive.meta.get("model") or archive.meta.get("model_name")
        if not model:
            raise DataError(f"{args.features} records no model; pass --model or --text-features")
        texts = load_encoder(model, device=args.device or config.default_device())
    return archive, query_features, texts


def _run(args, queries, by) -> int:
    from ..engine import evaluate, summarize, wide_table
    from ..io import atomic_path

    archive, query_features, texts = args._loaded
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        per_pair = evaluate(queries, archive, texts, methods=args.methods, lambdas=args.lambdas,
                            query_features=query_features, device=args.device or config.default_device(),
                            on_empty=args.on_empty, progress=not args.quiet)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    summary = summarize(per_pair, by=by)
    table = summary[["method", "lambda", by, "map"]].copy()
    table["lambda"] = [("" if lam != lam else f"{lam:g}") for lam in table["lambda"]]  # empty: no λ
    table["map"] = table["map"].round(4)
    n_empty = per_pair.attrs.get("n_empty", 0)
    print(f"{queries.name}: {per_pair.attrs['n_pairs']} query pairs, archive of {per_pair.attrs['archive_size']} images, "
          f"model {per_pair.attrs.get('model')}; {n_empty} pairs without positives (on-empty={args.on_empty})")
    print("mAP (%)")
    print(wide_table(summary, by=by).to_string(float_format=lambda v: f"{v:6.2f}"), flush=True)
    # written after the table is shown: an unwritable --out costs the file, never the results
    if args.out:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False)
        print(f"wrote {args.out}")
    if args.per_pair_out:
        with atomic_path(args.per_pair_out) as tmp:
            per_pair.to_csv(tmp, index=False)
    return 0


def run_patterncom(args) -> int:
    from ..datasets.patterncom import PatternCom

    args._loaded = _load(args)
    queries = PatternCom(args.patterncom_dir).queries(args._loaded[0].paths, attributes=args.attributes)
    return _run(args, queries, "attribute")


def run_xview2(args) -> int:
    from ..datasets.xview2 import xview2_queries

    args._loaded = _load(args)
    archive, query_features, _ = args._loaded
    queries = xview2_queries(args.list, archive.paths,
                             query_paths=None if query_features is None else query_features.paths,
                             text_columns=args.text_columns)
    return _run(args, queries, "text_column")


def run_ucmcom(args) -> int:
    from ..datasets.ucmcom import PUBLISHED_CSV, load_ucmcom

    args._loaded = _load(args)
    queries = load_ucmcom(args._loaded[0].paths, path=args.queries_file or PUBLISHED_CSV, template=args.template)
    return _run(args, queries, args.by)


def run_queries(args) -> int:
    from ..queries import QuerySet

    args._loaded = _load(args)
    queries = QuerySet.read_csv(args.queries, args._loaded[0].paths)
    by = args.by or (queries.group_columns[0] if queries.group_columns else None)
    if by is not None and by not in queries.table.columns:
        raise DataError(f"--by {by!r} is not a column of {args.queries} (columns: {list(queries.table.columns)})")
    return _run(args, queries, by or "attribute") if by else _run_flat(args, queries)


def _run_flat(args, queries) -> int:
    queries.table["attribute"] = "all"
    return _run(args, queries, "attribute")

"""``evaluate`` sub-commands: PatternCom, xView2-CIR, or any saved query-set file → mAP table (CSV + print)."""
from __future__ import annotations

import argparse
import sys
import warnings

from .. import config
from ..errors import DataError
from .setup_args import add_setup_args, setup_kwargs

DEFAULT_METHODS = ["image", "text", "average", "weicom"]


def _lambdas(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lambdas takes comma-separated numbers in [0, 1], got {text!r}") from None


def _ks(text: str) -> list[int]:
    try:
        ks = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ks takes comma-separated positive integers, got {text!r}") from None
    if any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"--ks takes positive integers, got {text!r}")
    return ks


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
    add_setup_args(p, matching="FEATS")
    p.add_argument("--ks", type=_ks, default=[5, 10, 15, 20],
                   help="also report P@k and R@k for these k (comma-separated; default 5,10,15,20 as the official "
                        "evaluate.py; empty: none)")
    p.add_argument("--ap-decimals", type=int, default=None, metavar="D",
                   help="round every pair's AP (and P@k, R@k), in %%, to D decimals before averaging, as the official "
                        "evaluate.py does with D=2 (default: exact)")
    p.add_argument("--on-empty", choices=["zero", "skip", "error"], default="zero",
                   help="pairs without positives: AP 0 (official protocol, counted), skip them, or fail")
    p.add_argument("--out", metavar="RESULTS.csv", default=None,
                   help="write method,lambda,<group>,map,p@k…,r@k… and the configuration columns here")
    p.add_argument("--per-pair-out", metavar="PAIRS.csv", default=None, help="also write the AP of every pair")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: $RSCIR_DEVICE or auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate composed retrieval methods on a benchmark",
                              description="Evaluate image/text/average/WeiCom (any λ) on a benchmark; prints the mAP and "
                                          "P@k/R@k tables and writes method,lambda,<group>,map,p@k…,r@k… (in %%) plus "
                                          "the configuration columns (model, setup, activation, precision, numerics, "
                                          "weights_sha256).")
    bench = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    pc = bench.add_parser("patterncom", help="PatternCom on PatternNet (official protocol)")
    _common(pc)
    pc.add_argument("--patterncom-dir", required=True, metavar="DIR", help="folder with <attribute>.csv files")
    pc.add_argument("--attributes", nargs="+", default=None,
                    help="subset of color context density existence quantity shape (default: all present)")
    pc.add_argument("--official-csv", metavar="DIR", default=None,
                    help="also write the official evaluate.py layout: one <dataset>_metrics_<model>_lambda<λ>_"
                         "<attribute>.csv per λ and attribute (Method,R@k…,P@k…,AP; per-pair values rounded to "
                         "--ap-decimals, default 2, as the official code)")
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
    """(archive, query features, texts): texts are TextFeatures or an encoder built with the archive's stored model
    and configuration (flags override them). Sets ``args.numerics`` to the numerics to evaluate with."""
    from ..encoders import load_encoder
    from ..features import ImageFeatures, TextFeatures
    from ..io import check_output_path
    from ..modelsetup import setup_for

    for opt in ("out", "per_pair_out"):  # wrong outputs fail now, not after the evaluation
        if getattr(args, opt, None):
            check_output_path(getattr(args, opt), "file", "--" + opt.replace("_", "-"))
    config.resolve_device(args.device or config.default_device())
    archive = ImageFeatures.load(args.features)
    query_features = ImageFeatures.load(args.query_features) if args.query_features else None
    flags = setup_kwargs(args)
    device = args.device or config.default_device()
    if args.text_features:
        texts = TextFeatures.load(args.text_features)
        chosen = setup_for(archive.meta, **flags)
    elif archive.meta.get("imported") == "official pickle":
        texts, chosen = _pickle_text_encoder(args, archive, flags, device)
    else:
        model = args.model or archive.meta.get("model") or archive.meta.get("model_name")
        if not model:
            raise DataError(f"{args.features} records no model; pass --model or --text-features")
        chosen = setup_for(archive.meta, **flags)
        texts = load_encoder(model, device=device, setup=chosen)
    args.numerics = chosen.numerics
    args.setup_name = chosen.name
    return archive, query_features, texts


def _pickle_text_encoder(args, archive, flags, device):
    """An official WeiCom pickle records neither model nor activation: the user states them, or we refuse."""
    from ..encoders import load_encoder
    from ..modelsetup import resolve_setup

    fix = f"rscir-kit evaluate {args.benchmark} --features {args.features} --model remoteclip-vit-l-14 --setup paper ..."
    if not args.model:
        raise DataError(f"{args.features} is an official WeiCom pickle and records no model: name it with --model "
                        f"(the official code's models are remoteclip-vit-l-14 and openai-vit-l-14), e.g. {fix}")
    chosen = resolve_setup(flags["setup"], activation=flags["activation"], precision=flags["precision"],
                           numerics=flags["numerics"])
    if chosen.activation == "auto":
        raise DataError(f"{args.features} is an official WeiCom pickle and records no activation: the official code "
                        "builds plain-GELU ViT-L-14 in fp32, so add --setup paper (GELU, fp32, official numerics) or "
                        f"state --activation gelu|quickgelu, e.g. {fix}")
    enc = load_encoder(args.model, device=device, setup=chosen)
    # The user has stated which model and configuration made the pickle: record it, so the checks compare it.
    stated = {k: enc.meta.get(k) for k in ("model", "model_name", "architecture", "weights_sha256", "activation",
                                           "embed_dim", "setup", "numerics")}
    if chosen.precision != "auto":
        stated["precision"] = enc.meta["precision"]
    archive.meta.update({k: v for k, v in stated.items() if v is not None}, configuration_stated_by_user=True)
    return enc, chosen


#: Configuration columns of every results CSV (what made the numbers; see rscir_kit.modelsetup).
CONFIG_COLUMNS = ("model", "setup", "activation", "precision", "numerics", "weights_sha256")


def _engine_options(evaluate, numerics: str, ap_decimals: int | None) -> dict:
    """numerics / ap_decimals keyword arguments for the engine (refused clearly when the engine lacks them)."""
    import inspect

    from ..errors import ParameterError

    params = inspect.signature(evaluate).parameters
    opts = {}
    if "numerics" in params:
        opts["numerics"] = numerics
    elif numerics != "kit":
        raise ParameterError("numerics='official' is not available in this version of the engine; use --numerics kit")
    if ap_decimals is not None:
        if "ap_decimals" not in params:
            raise ParameterError("--ap-decimals is not available in this version of the engine")
        opts["ap_decimals"] = ap_decimals
    return opts


def results_table(per_pair, by: str, ks=(), config_meta: dict | None = None):
    """The results CSV: ``method, lambda, <by>, map, p@k…, r@k…`` (all in %, an ``avg`` row per method/λ = mean of
    the groups) plus the configuration columns :data:`CONFIG_COLUMNS` taken from ``config_meta``."""
    from ..engine import summarize

    table = summarize(per_pair, by=by)[["method", "lambda", by, "map"]].copy()
    for col in [f"{m}@{k}" for m in ("p", "r") for k in ks]:
        if col in per_pair.columns:
            table[col] = summarize(per_pair, by=by, metric=col)["map"].to_numpy()
    table["lambda"] = [("" if lam != lam else f"{lam:g}") for lam in table["lambda"]]  # empty: no λ
    for col in table.columns[3:]:
        table[col] = table[col].round(4)
    meta = config_meta or {}
    for col in CONFIG_COLUMNS:
        table[col] = "" if meta.get(col) is None else str(meta.get(col))
    return table


def _run(args, queries, by) -> int:
    from ..engine import evaluate, summarize, wide_table
    from ..io import atomic_path

    archive, query_features, texts = args._loaded
    ks = list(args.ks or [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        per_pair = evaluate(queries, archive, texts, methods=args.methods, lambdas=args.lambdas,
                            query_features=query_features, device=args.device or config.default_device(),
                            on_empty=args.on_empty, progress=not args.quiet, ks=ks,
                            **_engine_options(evaluate, args.numerics, args.ap_decimals))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    meta = dict(archive.meta, setup=args.setup_name, numerics=args.numerics)
    summary = summarize(per_pair, by=by)
    table = results_table(per_pair, by, ks, meta)
    n_empty = per_pair.attrs.get("n_empty", 0)
    from ..modelsetup import describe_config

    print(f"{queries.name}: {per_pair.attrs['n_pairs']} query pairs, archive of {per_pair.attrs['archive_size']} images, "
          f"{n_empty} pairs without positives (on-empty={args.on_empty})")
    print(f"configuration: {describe_config(meta)}")
    print("mAP (%)")
    print(wide_table(summary, by=by).to_string(float_format=lambda v: f"{v:6.2f}"), flush=True)
    if ks:
        print(f"P@k / R@k (%), mean over the {by} groups")
        print(_pr_table(table, by).to_string(float_format=lambda v: f"{v:6.2f}"))
    if by == "attribute" and queries.name == "PatternCom":
        _print_reference(meta, summary)
    # written after the tables are shown: an unwritable --out costs the file, never the results
    if args.out:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False)
        print(f"wrote {args.out}")
    if args.per_pair_out:
        with atomic_path(args.per_pair_out) as tmp:
            per_pair.assign(**{c: table[c].iat[0] for c in CONFIG_COLUMNS}).to_csv(tmp, index=False)
    if getattr(args, "official_csv", None):
        from ..datasets.patterncom import write_official_csvs
        from ..pipeline import model_slug

        written = write_official_csvs(per_pair, args.official_csv, model_slug(str(meta.get("model_name") or "model")),
                                      ks=ks, decimals=2 if args.ap_decimals is None else args.ap_decimals)
        print(f"wrote {len(written)} official-layout CSVs to {args.official_csv}")
    return 0


def _pr_table(table, by: str):
    from ..engine import method_label

    avg = table[table[by] == "avg"]
    cols = [c for c in table.columns if c[:2] in ("p@", "r@")]
    out = avg[cols].copy()
    out.index = [method_label(m, float(lam) if lam != "" else None) for m, lam in zip(avg["method"], avg["lambda"])]
    out.index.name = "method"
    out.columns = [c.upper() for c in cols]
    return out


def _print_reference(meta: dict, summary) -> None:
    """Say whether this run is the paper's setup, and against which published table it is compared."""
    from .. import reference

    cmp = reference.compare_run("patterncom", meta)
    print(cmp.describe())


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

"""``evaluate <benchmark>``: one sub-command per composed benchmark of the registry (:mod:`rscir_kit.datasets`),
plus ``evaluate queries`` for any saved query-set file → mAP table (CSV + print).

Every parameter is checked (methods, λ, benchmark options and files, output paths, device) before any
feature file or model is loaded. Heavy modules are imported only when the command runs.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from .. import config, reference
from ..datasets import REGISTRY, benchmark_names, get_benchmark
from ..datasets.patterncom import write_official_csvs
from ..datasets.ucmcom import GROUP_COLUMNS, load_groups, queryset_from_groups
from ..encoders import load_encoder
from ..errors import DataError, ModelMismatchError, ParameterError
from ..features import ImageFeatures, TextFeatures
from ..io import atomic_path, check_output_path
from ..modelsetup import ModelSetup, describe_config, flags_for, resolve_setup, setup_for, setup_of
from ..queries import QuerySet
from . import add_command
from .setup_args import add_setup_args, setup_kwargs

DEFAULT_METHODS = ["image", "text", "average", "weicom"]
GROUP_ORDER_HELP = ("groups in a fixed order (rscir_kit.engine.group_order): the paper's attributes (color, context, "
                    "density, existence, quantity, shape), then the others in natural order (case-insensitive, "
                    "numbers by value), avg last")


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


# benchmark-specific options: name -> (add them to the sub-command's parser, the benchmark's constructor kwargs)
def _patterncom_options(p) -> None:
    p.add_argument("--patterncom-dir", required=True, metavar="DIR", help="folder with <attribute>.csv files")
    p.add_argument("--attributes", nargs="+", default=None,
                   help="subset of color context density existence quantity shape (default: all present)")
    p.add_argument("--official-csv", metavar="DIR", default=None,
                   help="also write the official evaluate.py layout: one <dataset>_metrics_<model>_lambda<λ>_"
                        "<attribute>.csv per λ and attribute (Method,R@k…,P@k…,AP; per-pair values rounded to "
                        "--ap-decimals, default 2, as the official code)")


def _xview2_options(p) -> None:
    p.add_argument("--list", required=True, metavar="CSV", help="xview2_cir.csv of the official release")
    p.add_argument("--text-columns", nargs="+", default=["query_default"],
                   choices=["query_default", "query_alt1", "query_alt2"])


def _ucmcom_options(p) -> None:
    p.add_argument("--queries-file", default=None, metavar="CSV",
                   help="UCM-Com group file (default: the published UCM-Com set shipped with the kit)")
    p.add_argument("--template", default="with",
                   help="text template: a preset (label, with, aerial) or a format string with {label}")


BENCHMARK_OPTIONS = {
    "patterncom": (_patterncom_options, lambda a: {"root": a.patterncom_dir}),
    "xview2": (_xview2_options, lambda a: {"list_file": a.list, "text_columns": a.text_columns}),
    "ucmcom": (_ucmcom_options, lambda a: {"queries_file": a.queries_file or "published", "template": a.template}),
}


def register(subparsers) -> None:
    p = add_command(subparsers, "evaluate",
                    description="Evaluate image/text/average/WeiCom (any λ) on a benchmark; prints the mAP and "
                                          "P@k/R@k tables and writes method,lambda,<group>,map,p@k…,r@k… (in %) plus "
                                          "the configuration columns (model, setup, activation, precision, numerics, "
                                          "weights_sha256).")
    bench = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in benchmark_names("composed"):
        sp = bench.add_parser(name, help=REGISTRY[name][3])
        _common(sp)
        add_options, _ = BENCHMARK_OPTIONS.get(name, (None, None))
        if add_options is None:
            sp.add_argument("--root", default=None, metavar="DIR", help="the benchmark's folder (default: under $RSCIR_DATA)")
        else:
            add_options(sp)
        sp.add_argument("--by", default=None,
                        help="grouping column of the benchmark (default: its first, e.g. attribute): one mAP column "
                             "per group in the printed table, one row per group in --out; " + GROUP_ORDER_HELP)
        sp.set_defaults(func=run_benchmark)

    qf = bench.add_parser("queries", help="any query-set file written by rscir-kit (QuerySet.to_csv, or the UCM-Com "
                                          "groups of `rscir-kit ucm queries --out`)")
    _common(qf)
    qf.add_argument("--queries", required=True, metavar="QUERIES.csv")
    qf.add_argument("--by", default=None, help="group column for the table (default: the file's first group column); "
                                               + GROUP_ORDER_HELP)
    qf.set_defaults(func=run_queries)


@dataclass
class Loaded:
    """What ``evaluate`` loaded: the archive, the query-image features (or None), the texts (TextFeatures or an
    encoder), and the numerics / setup name the evaluation uses."""

    archive: object
    query_features: object
    texts: object
    numerics: str
    setup_name: str


def check_parameters(args) -> None:
    """Every parameter error of ``evaluate`` as a ParameterError/DataError, before anything is loaded."""
    from ..engine import _combos

    try:
        _combos(args.methods, args.lambdas)
    except ValueError as exc:  # methods/λ errors (ParameterError once methods.py raises it)
        raise ParameterError(f"{exc}") from None
    for opt in ("out", "per_pair_out"):  # wrong outputs fail now, not after the evaluation
        if getattr(args, opt, None):
            check_output_path(getattr(args, opt), "file", "--" + opt.replace("_", "-"))
    config.resolve_device(args.device or config.default_device())
    for opt in ("features", "query_features", "text_features"):
        path = getattr(args, opt, None)
        if path and not Path(path).is_file():
            raise DataError(f"--{opt.replace('_', '-')} {path}: no such file")


def _load(args) -> Loaded:
    """Texts are TextFeatures or an encoder built with the archive's stored model and configuration (flags override
    them)."""
    archive = ImageFeatures.load(args.features)
    query_features = ImageFeatures.load(args.query_features) if args.query_features else None
    flags = setup_kwargs(args)
    device = args.device or config.default_device()
    if archive.meta.get("imported") == "official pickle" and not args.text_features:
        texts, chosen = _pickle_text_encoder(args, archive, flags, device)
        return Loaded(archive, query_features, texts, chosen.numerics, chosen.name)
    chosen = setup_for(archive.meta, **flags)
    name = _run_setup_name(args.features, archive.meta, chosen)
    if args.text_features:
        texts = TextFeatures.load(args.text_features)
    else:
        model = args.model or archive.meta.get("model") or archive.meta.get("model_name")
        if not model:
            raise DataError(f"{args.features} records no model; pass --model or --text-features")
        texts = load_encoder(model, device=device, setup=chosen)
    return Loaded(archive, query_features, texts, chosen.numerics, name)


def _run_setup_name(path, meta: dict, chosen) -> str:
    """The setup a run really has: the features' activation and precision (flags may not contradict them: that
    would relabel features made otherwise) with the numerics of this evaluation."""
    stored = setup_of(meta)
    if stored is None:
        return chosen.name
    for field in ("activation", "precision"):
        want, got = getattr(chosen, field), getattr(stored, field)
        if want != "auto" and got != "auto" and want != got:
            raise ModelMismatchError(f"{path} was made with {field}={got}, but the flags ask {field}={want}: evaluate "
                                     f"it as made ({flags_for(meta)}, any --numerics), or re-extract it with "
                                     f"rscir-kit extract ... --{field} {want}")
    if chosen.numerics == stored.numerics:
        return stored.name
    return resolve_setup(ModelSetup("run", stored.activation, stored.precision, chosen.numerics)).name


def _pickle_text_encoder(args, archive, flags, device):
    """An official WeiCom pickle records neither model nor activation: the user states them, or we refuse."""
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


def results_table(per_pair, by: str, ks=(), config_meta: dict | None = None):
    """The results CSV: ``method, lambda, <by>, map, p@k…, r@k…`` (all in %, an ``avg`` row per method/λ = mean of
    the groups) plus the configuration columns :data:`CONFIG_COLUMNS` taken from ``config_meta``. Within each
    (method, λ) the groups follow :func:`rscir_kit.engine.group_order`, as the printed table's columns."""
    from ..engine import group_order, summarize

    table = summarize(per_pair, by=by)[["method", "lambda", by, "map"]].copy()
    for col in [f"{m}@{k}" for m in ("p", "r") for k in ks]:
        if col in per_pair.columns:
            table[col] = summarize(per_pair, by=by, metric=col)["map"].to_numpy()
    rank = {g: i for i, g in enumerate(group_order(table[by]))}
    block = {key: i for i, key in enumerate(dict.fromkeys(zip(table["method"], table["lambda"].fillna(-1.0))))}
    table = (table.assign(_b=[block[k] for k in zip(table["method"], table["lambda"].fillna(-1.0))],
                          _g=table[by].map(rank))
                  .sort_values(["_b", "_g"], kind="stable").drop(columns=["_b", "_g"]).reset_index(drop=True))
    table["lambda"] = [("" if lam != lam else f"{lam:g}") for lam in table["lambda"]]  # empty: no λ
    for col in table.columns[3:]:
        table[col] = table[col].round(4)
    meta = config_meta or {}
    for col in CONFIG_COLUMNS:
        table[col] = "" if meta.get(col) is None else str(meta.get(col))
    return table


def _run(args, queries, by, loaded: Loaded) -> int:
    from ..engine import evaluate, summarize, wide_table

    archive, query_features, texts = loaded.archive, loaded.query_features, loaded.texts
    ks = list(args.ks or [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        per_pair = evaluate(queries, archive, texts, methods=args.methods, lambdas=args.lambdas,
                            query_features=query_features, device=args.device or config.default_device(),
                            on_empty=args.on_empty, progress=not args.quiet, ks=ks,
                            numerics=loaded.numerics, ap_decimals=args.ap_decimals)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    meta = dict(archive.meta, setup=loaded.setup_name, numerics=loaded.numerics)
    summary = summarize(per_pair, by=by)
    table = results_table(per_pair, by, ks, meta)
    n_empty = per_pair.attrs.get("n_empty", 0)

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
        written = write_official_csvs(per_pair, args.official_csv, config.model_slug(str(meta.get("model_name") or meta.get("model") or "model")),
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
    cmp = reference.compare_run("patterncom", meta)
    print(cmp.describe())


def run_benchmark(args) -> int:
    """``evaluate <benchmark>``: parameters and the benchmark's files checked, then features loaded, queries built."""
    check_parameters(args)
    _, options = BENCHMARK_OPTIONS.get(args.benchmark, (None, lambda a: {"root": a.root}))
    benchmark = get_benchmark(args.benchmark, kind="composed", **options(args))
    by = args.by or benchmark.group_columns[0]
    if by not in benchmark.group_columns:
        raise ParameterError(f"--by {by!r}: {benchmark.title} groups by {', '.join(benchmark.group_columns)}")
    loaded = _load(args)
    extra = {"attributes": args.attributes} if args.benchmark == "patterncom" else {}
    if args.benchmark == "xview2" and loaded.query_features is not None:
        extra["query_paths"] = loaded.query_features.paths
    queries = benchmark.queries(loaded.archive.paths, **extra)
    return _run(args, queries, by, loaded)


def _is_ucmcom_groups(path) -> bool:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = f.readline().strip().split(",")
    return set(GROUP_COLUMNS) <= set(header)


def run_queries(args) -> int:
    check_parameters(args)
    if not Path(args.queries).is_file():
        raise DataError(f"--queries {args.queries}: no such file")
    loaded = _load(args)
    if _is_ucmcom_groups(args.queries):  # `rscir-kit ucm queries --out` writes UCM-Com groups: read them too

        queries = queryset_from_groups(load_groups(args.queries), loaded.archive.paths)
    else:
        queries = QuerySet.read_csv(args.queries, loaded.archive.paths)
    by = args.by or (queries.group_columns[0] if queries.group_columns else None)
    if by is not None and by not in queries.table.columns:
        raise DataError(f"--by {by!r} is not a column of {args.queries} (columns: {list(queries.table.columns)})")
    if by is None:
        queries.table["attribute"] = "all"
    return _run(args, queries, by or "attribute", loaded)

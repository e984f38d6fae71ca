"""``index build`` / ``index info`` (archive index for composed search) and ``search`` (WeiCom top-k) sub-commands.

    rscir-kit index build --features FEATS.npz --out INDEX_DIR [--fast auto|none|FACTORY] [--nprobe 64]
    rscir-kit index info --index INDEX_DIR
    rscir-kit search --index INDEX_DIR --image Q.jpg --text "with a river" --lam 0.5 -k 20 [--mode exact|fast|scan]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..errors import DataError, ModelMismatchError
from . import positive_int
from .setup_args import add_setup_args, setup_kwargs


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "index", help="build / inspect an archive index for millisecond WeiCom search (rscir-kit search)",
        description="Archive index: float16 embeddings (memory-mapped), their mean and covariance (exact WeiCom "
                    "normalisation in O(d²)), and FAISS indexes for the threshold algorithm.")
    sub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="build INDEX_DIR from an image feature file")
    b.add_argument("--features", required=True, metavar="FEATS.npz",
                   help="image feature file (rscir-kit extract), or an (N, d) .npy array (memory-mapped; for archives "
                        "larger than RAM; give --model, and --paths for result names)")
    b.add_argument("--model", default=None, help="model id to record (default: the feature file's)")
    b.add_argument("--paths", default=None, metavar="PATHS.txt", help="one archive path per line (with a .npy)")
    b.add_argument("--out", required=True, metavar="INDEX_DIR", help="index folder to create")
    b.add_argument("--fast", default="auto", metavar="auto|none|FACTORY",
                   help="approximate index for --mode fast: auto (flat 4-bit PQ fast-scan, d/8 bytes a row), none, "
                        "or a FAISS index_factory string such as 'PQ256x4fs', 'IVF4096,SQfp16' or 'HNSW32,SQfp16'")
    b.add_argument("--nprobe", type=positive_int, default=64, help="IVF cells probed by --mode fast, for IVF fast indexes")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index folder")
    b.add_argument("--setup", default=None, choices=["default", "paper"],
                   help="require FEATS to have been made with this named model configuration (refused otherwise)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=run_build)
    i = sub.add_parser("info", help="print an index's metadata")
    i.add_argument("--index", required=True, metavar="INDEX_DIR")
    i.add_argument("--verify", action="store_true", help="check the sha256 of every index file (also the large ones)")
    i.set_defaults(func=run_info)

    s = subparsers.add_parser(
        "search", help="WeiCom top-k of an (image, text) query over an archive index",
        description="Composed search: score = λ·Φ(z_text) + (1-λ)·Φ(z_image), z-scores over the whole archive. "
                    "--mode exact (default) returns exactly the brute-force top-k; fast uses the approximate index.")
    s.add_argument("--index", required=True, metavar="INDEX_DIR")
    s.add_argument("--image", metavar="Q.jpg",
                   help="query image file, or the relative path of an archive image (its stored embedding is used)")
    s.add_argument("--text", metavar="TEXT", help='modifier text, e.g. "with a river"')
    s.add_argument("--query-features", metavar="Q.npz",
                   help="precomputed query embeddings instead of encoding: npz with 'image' and/or 'text' (d,) and "
                        "optionally 'model'")
    s.add_argument("--lam", type=float, default=0.5, help="λ in [0, 1]: 0 = image only, 1 = text only (default 0.5)")
    s.add_argument("-k", "--top-k", dest="k", type=positive_int, default=20, help="number of results (default 20)")
    s.add_argument("--mode", default="exact", choices=["exact", "fast", "scan"],
                   help="exact: identical to the brute-force top-k; fast: approximate lists; scan: brute force")
    s.add_argument("--nprobe", type=positive_int, default=None, help="IVF cells probed in --mode fast (IVF fast indexes)")
    s.add_argument("--depth", type=positive_int, default=None,
                   help="list depth: --mode fast reads this many per list (default 100·k; more = higher recall)")
    s.add_argument("--model", default=None,
                   help="model used to encode the query (default: the index's model); must match the index's model")
    s.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    add_setup_args(s, numerics=False, matching="the index")
    s.add_argument("--out", metavar="FILE.csv|FILE.json", default=None, help="also write the results")
    s.set_defaults(func=run_search)


# ----------------------------------------------------------------------------------------- build / info
def run_build(args) -> int:
    from ..index import ArchiveIndex

    fast = None if str(args.fast).lower() in ("none", "no", "off", "") else args.fast
    if args.setup:
        _require_setup(args.features, args.setup)
    paths = None
    if args.paths:
        from ..io import read_text

        paths = [line.rstrip("\n") for line in read_text(args.paths, "paths file").splitlines()]
    idx = ArchiveIndex.build(args.features, args.out, paths=paths, model=args.model, fast=fast, nprobe=args.nprobe,
                             overwrite=args.overwrite, progress=not args.quiet)
    t = idx.meta["build"]
    print(f"built {idx}: {idx.n} images × d={idx.d}, model {idx.model_id!r}; "
          f"float16 store {t['flat_s']:.1f}s, statistics {t['stats_s']:.1f}s"
          + (f", fast index {idx.meta['fast']} {t['fast_s']:.1f}s" if idx.meta.get("fast") else ""))
    return 0


def _require_setup(features, name: str) -> None:
    """Refuse FEATS not made with the named setup (its stored configuration decides)."""
    from ..modelsetup import SETUPS, flags_for, setup_of

    meta = {}
    if str(features).endswith(".npz") and Path(features).is_file():
        with np.load(features, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()])) if "meta" in z.files else {}
    stored, want = setup_of(meta), SETUPS[name]
    fields = ("activation", "precision", "numerics")
    if stored is None or any(getattr(stored, f) != getattr(want, f) for f in fields if getattr(want, f) != "auto"):
        got = flags_for(meta) or "no recorded configuration"
        raise ModelMismatchError(f"{features} was not made with --setup {name} ({got}): re-extract it with "
                                 f"rscir-kit extract ... --setup {name}, or drop --setup")


def run_info(args) -> int:
    from ..index import ArchiveIndex

    idx = ArchiveIndex.load(args.index, verify=True if args.verify else None)  # "index damaged: ..." when it is
    print(json.dumps(idx.meta, indent=1, sort_keys=True))
    if args.verify:
        print(f"verified: the sha256 of all {len(idx.meta.get('files', {}))} index files match", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------- search
def _load_encoder(spec, device, setup):
    """Indirection so tests can substitute an encoder; ``setup``: a ModelSetup."""
    from ..encoders import load_encoder

    return load_encoder(spec, device=device or "auto", setup=setup)


def _stored_row(idx, name: str) -> int | None:
    if idx.paths is None:
        return None
    hits = np.flatnonzero(idx.paths == name)
    return int(hits[0]) if len(hits) else None


def query_vectors(idx, image=None, text=None, query_features=None, model=None, device=None, activation=None,
                  need_image=True, need_text=True, setup=None, precision=None):
    """(image vector | None, text vector | None) for a search, encoding with the index's model when needed.

    The query encoder is built with the configuration stored in the index's features (``setup`` / ``activation`` /
    ``precision`` override it). Refuses (ModelMismatchError) a ``model``, configuration or precomputed query
    features from another model than the index's.
    """
    from ..modelsetup import setup_for

    chosen = setup_for(idx.meta.get("feature_meta"), setup, activation=activation, precision=precision)
    q_img = q_txt = None
    if query_features is not None:
        with np.load(query_features, allow_pickle=False) as z:
            qmodel = str(z["model"]) if "model" in z.files else None
            q_img = np.asarray(z["image"], np.float32).reshape(-1) if "image" in z.files else None
            q_txt = np.asarray(z["text"], np.float32).reshape(-1) if "text" in z.files else None
        if qmodel and idx.model_id and qmodel != idx.model_id:
            raise ModelMismatchError(f"{query_features} was encoded with {qmodel!r} but the index {idx.root} holds "
                                     f"{idx.model_id!r} embeddings: encode the query with the index's model")
    if model is not None and idx.model_id is not None and model != idx.model_id:
        enc = _load_encoder(model, device, chosen)
        if enc.model_id != idx.model_id:
            raise ModelMismatchError(
                f"--model {model!r} ({enc.model_id}) differs from the model of index {idx.root} "
                f"({idx.model_id}): similarities across models are meaningless. Drop --model to use the index's "
                "model, or build an index from features of this model")
    else:
        enc = None
    if image is not None and need_image and q_img is None:
        row = _stored_row(idx, image)
        if row is not None and not Path(image).is_file():
            q_img = np.asarray(idx.rows[row], np.float32)
        else:
            from ..imagesets import load_image

            pil = load_image(image)
            enc = enc or _load_encoder(model or _index_model(idx), device, chosen)
            q_img = enc.encode_images([pil])[0]
    if text is not None and need_text and q_txt is None:
        enc = enc or _load_encoder(model or _index_model(idx), device, chosen)
        q_txt = enc.encode_texts([text])[0]
    if enc is not None and idx.model_id is not None and enc.model_id != idx.model_id:
        raise ModelMismatchError(f"encoder {enc.model_id!r} differs from the index's model {idx.model_id!r}")
    if enc is not None and idx.meta.get("feature_meta"):
        from ..features import check_same_model

        check_same_model(idx.meta["feature_meta"], enc.meta, names=(f"index {idx.root}", "the query encoder"))
    return q_img, q_txt


def _index_model(idx) -> str:
    if not idx.model_id:
        raise DataError(f"index {idx.root} records no model; pass --model (the one its features were made with)")
    return idx.model_id


def run_search(args) -> int:
    from ..index import ArchiveIndex
    from ..methods import check_lambda

    lam = check_lambda(args.lam)
    if args.image is None and args.text is None and args.query_features is None:
        raise DataError("give a query: --image Q.jpg and/or --text TEXT (or --query-features Q.npz)")
    idx = ArchiveIndex.load(args.index)
    flags = setup_kwargs(args)
    q_img, q_txt = query_vectors(idx, args.image, args.text, args.query_features, args.model, args.device,
                                 flags["activation"], need_image=lam < 1.0, need_text=lam > 0.0, setup=flags["setup"],
                                 precision=flags["precision"])
    res = idx.search(q_img, q_txt, lam=lam, k=args.k, mode=args.mode, nprobe=args.nprobe,
                     depth=args.depth if args.mode == "fast" else None)
    df = res.to_frame()
    info = res.info
    print(f"WeiCom top-{len(res)} of {idx.n} images, λ={lam}, mode={args.mode} "
          f"(lists: {info.get('lists')}, depth {info.get('read_depth', '-')}, "
          f"{info.get('candidates', idx.n)} scored exactly{', fallback ' + info['fallback'] if 'fallback' in info else ''}"
          f"), {1000 * info['seconds']:.1f} ms")
    with _pd_opts():
        print(df.to_string(index=False, float_format=lambda v: f"{v:.6f}"))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".json":
            out.write_text(df.to_json(orient="records", indent=1))
        else:
            df.to_csv(out, index=False)
        print(f"wrote {out}", file=sys.stderr)
    return 0


class _pd_opts:
    def __enter__(self):
        import pandas as pd

        self._ctx = pd.option_context("display.max_colwidth", 80, "display.width", 200)
        self._ctx.__enter__()

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

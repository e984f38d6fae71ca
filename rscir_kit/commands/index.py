"""``index build`` / ``index info`` (archive index for composed search) and ``search`` (WeiCom top-k) sub-commands.

    rscir-kit index build --features FEATS.npz --out INDEX_DIR [--fast auto|none|FACTORY] [--nprobe 64]
    rscir-kit index info --index INDEX_DIR
    rscir-kit search --index INDEX_DIR --image Q.jpg --text "with a river" --lam 0.5 -k 20 [--mode exact|fast|scan]
"""
from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from .. import config
from ..encoders import load_encoder
from ..errors import DataError, ModelMismatchError, RscirError
from ..features import check_same_model
from ..imagesets import load_image
from ..index import ArchiveIndex
from ..io import atomic_path, atomic_write, read_text
from ..methods import check_lambda
from ..modelsetup import SETUPS, flags_for, setup_for, setup_of
from . import add_command, positive_int
from .setup_args import add_setup_args, setup_kwargs


def register(subparsers) -> None:
    p = add_command(
        subparsers, "index",
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

    s = add_command(
        subparsers, "search",
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
    s.add_argument("--batch", metavar="QUERIES.csv", default=None,
                   help="many queries at once: a CSV with columns image,text[,lam][,k] (one row per query; λ and k "
                        "default to --lam / -k); one table out, the model loaded at most once")
    s.add_argument("--out", metavar="FILE.csv|FILE.json", default=None, help="also write the results")
    s.set_defaults(func=run_search)


# ----------------------------------------------------------------------------------------- build / info
def run_build(args) -> int:
    fast = None if str(args.fast).lower() in ("none", "no", "off", "") else args.fast
    if args.setup:
        _require_setup(args.features, args.setup)
    paths = None
    if args.paths:
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
    idx = ArchiveIndex.load(args.index, verify=True if args.verify else None)  # "index damaged: ..." when it is
    print(json.dumps(idx.meta, indent=1, sort_keys=True))
    if args.verify:
        print(f"verified: the sha256 of all {len(idx.meta.get('files', {}))} index files match", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------- search
def _load_encoder(spec, device, setup):
    """Indirection so tests can substitute an encoder; ``setup``: a ModelSetup."""
    return load_encoder(spec, device=device or "auto", setup=setup)


def query_vectors(idx, image=None, text=None, query_features=None, model=None, device=None, activation=None,
                  need_image=True, need_text=True, setup=None, precision=None):
    """:meth:`rscir_kit.index.ArchiveIndex.encode_query` with the CLI's encoder loader (tests substitute it)."""
    return idx.encode_query(image, text, query_features, model=model, device=device, setup=setup,
                            activation=activation, precision=precision, need_image=need_image, need_text=need_text,
                            load_encoder=_load_encoder)


RESULT_COLUMNS = ("rank", "index", "score", "s_img", "s_txt", "path", "label")


def _result_rows(res, extra: dict | None = None) -> list[dict]:
    """Rows of a SearchResult as plain dicts (no pandas: the CLI answers without importing it)."""
    rows = []
    for r in range(len(res)):
        row = dict(extra or {})
        row.update({"rank": r + 1, "index": int(res.indices[r]), "score": float(res.scores[r]),
                    "s_img": float(res.s_img[r]), "s_txt": float(res.s_txt[r])})
        if res.paths is not None:
            row["path"] = str(res.paths[r])
        if res.labels is not None:
            row["label"] = str(res.labels[r])
        rows.append(row)
    return rows


def _cell(v) -> str:
    if isinstance(v, float):
        return "NaN" if v != v else f"{v:.6f}"
    return "" if v is None else str(v)


def format_table(rows: list[dict], columns=None) -> str:
    """A right-aligned text table of ``rows`` (what pandas' to_string prints, without pandas)."""
    if not rows:
        return "(no results)"
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [" ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += [" ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _write_rows(rows: list[dict], out: Path) -> None:


    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        atomic_write(out, lambda f: f.write(json.dumps(rows, indent=1)), mode="w")
        return
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def write(f):
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)

    atomic_write(out, write, mode="w")


# ------------------------------------------------------------------------------------ query-text cache
def _text_cache_path(idx) -> Path:
    """``$RSCIR_CACHE/query_texts_<model>_<hash of the index's feature metadata>.npz``: one cache per index."""
    ident = json.dumps(idx.meta.get("feature_meta") or {"model": idx.model_id, "n": idx.n}, sort_keys=True,
                       default=str)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return config.cache_dir() / f"query_texts_{config.model_slug(idx.model_id or 'model')}_{digest}.npz"


def _load_text_cache(idx) -> tuple[dict, dict]:
    """{text: (d,) embedding} cached for the index's model, and the encoder metadata they were made with."""
    path = _text_cache_path(idx)
    if not path.is_file():
        return {}, {}
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()]))
            texts, feats = z["texts"].tolist(), np.asarray(z["feats"], np.float32)
    except (OSError, ValueError, KeyError):
        return {}, {}  # unreadable cache: ignored (it is only a cache) and rewritten on the next miss
    if meta.get("model") != idx.model_id:
        return {}, {}
    if idx.meta.get("feature_meta"):
        check_same_model(idx.meta["feature_meta"], meta, names=(f"index {idx.root}", f"text cache {path}"))
    return dict(zip(texts, feats)), meta


def _save_text_cache(idx, cache: dict, meta: dict) -> None:
    path = _text_cache_path(idx)
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = list(cache)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, texts=np.asarray(texts, dtype=str), feats=np.stack([cache[t] for t in texts]).astype(np.float32),
                 meta=np.asarray(json.dumps(meta)))


class _Queries:
    """Embeds the images and texts of one or many queries with at most one model load: archive images use
    their stored rows, texts seen before come from the query-text cache."""

    def __init__(self, idx, args, flags):
        self.idx, self.args = idx, args
        self.setup = setup_for(idx.meta.get("feature_meta"), flags["setup"], activation=flags["activation"],
                               precision=flags["precision"])
        self.enc = None
        self.cache, self.cache_meta = _load_text_cache(idx)
        self.dirty = False
        stored = setup_of(idx.meta.get("feature_meta"))
        if stored is not None and (self.setup.activation, self.setup.precision) != (stored.activation, stored.precision):
            self.encoder()  # another configuration than the index's: checked now, never answered from the text cache

    def encoder(self):
        if self.enc is None:
            self.enc = _load_encoder(self.args.model or self.idx.query_model(), self.args.device, self.setup)
            if self.idx.model_id is not None and self.enc.model_id != self.idx.model_id:
                raise ModelMismatchError(f"encoder {self.enc.model_id!r} differs from the index's model "
                                         f"{self.idx.model_id!r}")
            if self.idx.meta.get("feature_meta"):
                check_same_model(self.idx.meta["feature_meta"], self.enc.meta,
                                 names=(f"index {self.idx.root}", "the query encoder"))
        return self.enc

    def images(self, names: list[str]) -> dict:
        out, files = {}, []
        for name in dict.fromkeys(n for n in names if n):
            row = self.idx.row_of(name)
            if row is not None and not Path(name).is_file():
                out[name] = np.asarray(self.idx.rows[row], np.float32)
            elif not Path(name).is_file():
                raise DataError(f"query image {name!r}: no such file, and not a path stored in the index "
                                f"{self.idx.root} (e.g. {self.idx.paths[0] if self.idx.paths is not None else '?'!r})")
            else:
                files.append(name)
        if files:
            feats = self.encoder().encode_images([load_image(f) for f in files])
            out.update({f: np.asarray(v, np.float32) for f, v in zip(files, feats)})
        return out

    def texts(self, texts: list[str]) -> dict:
        wanted = list(dict.fromkeys(t for t in texts if t))
        missing = [t for t in wanted if t not in self.cache]
        if missing:
            enc = self.encoder()
            feats = enc.encode_texts(missing)
            self.cache.update({t: np.asarray(v, np.float32) for t, v in zip(missing, feats)})
            self.cache_meta = dict(enc.meta)
            self.dirty = True
        return {t: self.cache[t] for t in wanted}

    def close(self):
        if self.dirty:
            try:
                _save_text_cache(self.idx, self.cache, self.cache_meta)
            except OSError:
                pass  # a read-only cache folder only costs the next query a model load


def _read_batch(path: str, default_lam: float, default_k: int) -> list[dict]:
    """Rows ``image,text,lam[,k]`` of a batch file (CSV with a header; lam and k optional)."""


    p = Path(path)
    if not p.is_file():
        raise DataError(f"--batch {path}: no such file (a CSV with a header: image,text,lam[,k])")
    with open(p, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if not {"image", "text"} & set(cols):
            raise DataError(f"{path}:1: header must name the columns image and/or text (and optionally lam, k); "
                            f"got {cols}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
            image, text = row.get("image") or None, row.get("text") or None
            if image is None and text is None:
                raise DataError(f"{path}:{line}: empty query (give an image and/or a text)")
            try:
                lam = check_lambda(float(row["lam"])) if row.get("lam") else default_lam
                k = int(row["k"]) if row.get("k") else default_k
            except (ValueError, RscirError) as exc:
                raise DataError(f"{path}:{line}: {exc}") from None
            if (lam < 1.0 and image is None) or (lam > 0.0 and text is None):
                raise DataError(f"{path}:{line}: λ={lam:g} needs " + ("an image" if image is None else "a text")
                                + " (λ=0: image only, λ=1: text only)")
            rows.append({"query": len(rows) + 1, "image": image, "text": text, "lam": lam, "k": k})
    if not rows:
        raise DataError(f"{path}: no queries below the header")
    return rows


def run_search(args) -> int:


    t0 = time.perf_counter()
    lam = check_lambda(args.lam)
    batch = getattr(args, "batch", None)
    if batch is None and args.image is None and args.text is None and args.query_features is None:
        raise DataError("give a query: --image Q.jpg and/or --text TEXT (or --query-features Q.npz, or --batch "
                        "FILE.csv for many)")
    if batch is not None and (args.image or args.text or args.query_features):
        raise DataError("--batch replaces --image/--text/--query-features: put every query in the file")
    rows = _read_batch(batch, lam, args.k) if batch else None
    idx = ArchiveIndex.load(args.index)
    flags = setup_kwargs(args)
    if args.model is not None and idx.model_id is not None and args.model != idx.model_id:
        query_vectors(idx, model=args.model, device=args.device, activation=flags["activation"], setup=flags["setup"],
                      precision=flags["precision"])  # refuses another model
    if rows is None and args.query_features is not None:
        q_img, q_txt = query_vectors(idx, args.image, args.text, args.query_features, args.model, args.device,
                                     flags["activation"], need_image=lam < 1.0, need_text=lam > 0.0,
                                     setup=flags["setup"], precision=flags["precision"])
        rows = [{"query": 1, "image": args.image, "text": args.text, "lam": lam, "k": args.k, "_vec": (q_img, q_txt)}]
    elif rows is None:
        rows = [{"query": 1, "image": args.image if lam < 1.0 else None, "text": args.text if lam > 0.0 else None,
                 "lam": lam, "k": args.k}]
    q = _Queries(idx, args, flags)
    try:
        images = q.images([r["image"] for r in rows if "_vec" not in r and r["lam"] < 1.0])
        texts = q.texts([r["text"] for r in rows if "_vec" not in r and r["lam"] > 0.0])
    finally:
        q.close()
    out_rows, search_s = [], 0.0
    for r in rows:
        q_img, q_txt = r.get("_vec") or (images.get(r["image"]) if r["lam"] < 1.0 else None,
                                         texts.get(r["text"]) if r["lam"] > 0.0 else None)
        res = idx.search(q_img, q_txt, lam=r["lam"], k=r["k"], mode=args.mode, nprobe=args.nprobe,
                         depth=args.depth if args.mode == "fast" else None)
        search_s += res.info["seconds"]
        extra = {"query": r["query"], "image": r["image"] or "", "text": r["text"] or "", "lam": r["lam"]} \
            if batch else None
        out_rows += _result_rows(res, extra)
        info = res.info
    total = time.perf_counter() - t0
    if batch:
        print(f"{len(rows)} queries over {idx.n} images, mode={args.mode}: search {1000 * search_s:.1f} ms in all, "
              f"{total:.2f} s with loading" + (" the model" if q.enc is not None else " (no model load)"))
        print(format_table(out_rows, ["query", "image", "text", "lam", *RESULT_COLUMNS]))
    else:
        print(f"WeiCom top-{len(out_rows)} of {idx.n} images, λ={lam}, mode={args.mode} "
              f"(lists: {info.get('lists')}, depth {info.get('read_depth', '-')}, "
              f"{info.get('candidates', idx.n)} scored exactly"
              f"{', fallback ' + info['fallback'] if 'fallback' in info else ''}), {1000 * info['seconds']:.1f} ms")
        print(format_table(out_rows, RESULT_COLUMNS))
    if args.out:
        _write_rows(out_rows, Path(args.out))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0

"""``extract`` (image features -> .npz, resumable) and ``encode-text`` (text features -> .npz) sub-commands."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import config
from ..encoders import load_encoder
from ..errors import DataError, ParameterError
from ..features import ImageFeatures, bad_files_path, check_same_model, encode_texts, extract_image_features
from ..imagesets import ImageCollection, ImageDecoding
from ..io import check_output_path, read_text
from ..modelsetup import setup_for
from . import add_command, positive_int
from .setup_args import add_setup_args, setup_kwargs


def _add_model_args(p: argparse.ArgumentParser, matching: str | None = None) -> None:
    p.add_argument("--model", default=None,
                   help="model spec: preset (e.g. remoteclip-vit-l-14), ARCH:tag, ARCH:/path/ckpt.pt, hf-hub:org/name "
                        "or local-dir:/path (default: "
                        + (f"the model recorded in {matching}, else " if matching else "")
                        + f"$RSCIR_MODEL, else the stand-in in $RSCIR_WEIGHTS, else {config.PAPER_DEFAULT_MODEL})")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: $RSCIR_DEVICE or auto)")
    add_setup_args(p, matching=matching)


def register(subparsers) -> None:
    p = add_command(
        subparsers, "extract",
        description="Encode every image of a folder tree (class sub-folders) or a file list. Finished chunks are kept "
                    "in OUT.partial/; after an interrupt, run the same command again to resume.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="DIR", help="folder with one sub-folder per class (label = folder name)")
    src.add_argument("--file-list", metavar="CSV", help="CSV/TXT of image paths (+ labels), relative to --root")
    p.add_argument("--root", metavar="DIR", default=None, help="image root for --file-list (default: the list's folder)")
    p.add_argument("--out", required=True, metavar="FEATS.npz", help="output feature file")
    _add_model_args(p)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--chunk-size", type=positive_int, default=None,
                   help="images per saved chunk in OUT.partial/ (default: a multiple of --batch-size near 256)")
    p.add_argument("--limit-per-class", type=positive_int, default=None, help="keep the first N images per class (quick runs)")
    p.add_argument("--no-resume", action="store_true",
                   help="recompute everything (and replace OUT) even if OUT or OUT.partial/ hold encoded images")
    p.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                   help="unreadable images: stop (default; every readable image is still encoded and kept, then all "
                        "bad files are reported at once) or skip them; both list them in OUT.bad-files.txt")
    p.add_argument("--stretch", default="image", metavar="image|dataset|refuse|LOW,HIGH",
                   help="16-bit/float images -> 8 bit: percentile 2-98 stretch per image (default), one range pooled "
                        "over the whole collection (dataset), a fixed LOW,HIGH range, or refuse them")
    p.add_argument("--bands", default=None, metavar="R,G,B",
                   help="1-based bands used as R,G,B for images with more than three bands (e.g. 4,3,2), or one band")
    p.add_argument("--content-hash", action="store_true",
                   help="identify images by content (sha256) as well as path, size and mtime (reads every file)")
    p.add_argument("--workers", type=int, default=None,
                   help="image decoding threads (default: sized to the machine and device)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_extract)

    t = add_command(subparsers, "encode-text")
    t.add_argument("--texts-file", required=True, metavar="FILE", help="UTF-8 text file, one text per line; blank lines ignored")
    t.add_argument("--out", required=True, metavar="TEXT.npz")
    t.add_argument("--features", metavar="FEATS.npz", default=None,
                   help="image features the texts will be scored against: their model and configuration are the "
                        "defaults, so the two files match")
    _add_model_args(t, matching="--features")
    t.add_argument("--batch-size", type=positive_int, default=256)
    t.set_defaults(func=run_encode_text)


def _encoder(args, stored: dict | None = None):
    """The encoder the flags ask for; ``stored``: metadata of an artefact to match (its model and configuration are
    the defaults)."""
    stored = stored or {}
    chosen = setup_for(stored, **setup_kwargs(args))
    model = args.model or stored.get("model") or config.default_model()
    return load_encoder(model, device=args.device or "auto", setup=chosen)


def _decoding(args, coll):
    bands = None
    if args.bands:
        try:
            bands = tuple(int(b) for b in args.bands.split(","))
        except ValueError:
            raise ParameterError(f"--bands takes 1-based band numbers such as 4,3,2, got {args.bands!r}") from None
    stretch = args.stretch
    if stretch not in ("image", "dataset", "refuse"):
        try:
            stretch = tuple(float(v) for v in stretch.split(","))
        except ValueError:
            raise ParameterError(f"--stretch takes image, dataset, refuse or LOW,HIGH, got {args.stretch!r}") from None
    if stretch == "dataset":
        rng = coll.with_decoding(ImageDecoding(bands=bands)).stretch_range()
        stretch = rng if rng is not None else "image"
        if rng is not None:
            print(f"rscir-kit extract: dataset stretch range {rng[0]:g}..{rng[1]:g} (percentiles 2-98 pooled over the "
                  "high-bit images)", file=sys.stderr)
    return ImageDecoding(stretch=stretch, bands=bands)


def run_extract(args) -> int:
    out = check_output_path(args.out, "file")
    if args.images:
        coll = ImageCollection.from_folder(args.images, limit_per_class=args.limit_per_class)
    else:
        coll = ImageCollection.from_file_list(args.file_list, root=args.root, limit_per_class=args.limit_per_class)
    coll = coll.with_decoding(_decoding(args, coll))
    missing = coll.missing_files()
    if missing and args.on_error == "stop":  # before loading the model
        raise DataError(f"{len(missing)} of {len(coll)} images are missing (e.g. {coll.root / missing[0]}). Fix the "
                        "image root or the list, or pass --on-error skip to leave them out")
    t0 = time.perf_counter()
    enc = _encoder(args)
    print(f"rscir-kit extract: {coll}; {enc}", file=sys.stderr)
    existed = out.exists() and not args.no_resume
    before = out.stat().st_mtime_ns if existed else None
    feats = extract_image_features(coll, enc, out, batch_size=args.batch_size, resume=not args.no_resume,
                                   progress=not args.quiet, chunk_size=args.chunk_size, on_error=args.on_error,
                                   workers=args.workers, content_hash=args.content_hash)
    verb = "reused" if before is not None and out.stat().st_mtime_ns == before else \
        ("updated" if before is not None else "wrote")
    print(f"rscir-kit extract: {verb} {out} ({len(feats)} x {feats.dim}) in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    if feats.meta.get("skipped"):
        print(f"rscir-kit extract: left out {feats.meta['skipped']} unreadable images, listed in "
              f"{bad_files_path(out)}:", file=sys.stderr)
        print(bad_files_path(out).read_text(encoding="utf-8"), file=sys.stderr, end="")
    return 0


def run_encode_text(args) -> int:
    path = Path(args.texts_file)
    if not path.is_file():
        raise DataError(f"texts file not found: {path}")
    check_output_path(args.out, "file")
    texts = [line.strip() for line in read_text(path, "texts file").splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise DataError(f"{path} holds no texts (one text per line, blank lines ignored)")
    check_output_path(args.out, "file", "--out")
    config.resolve_device(args.device or "auto")
    stored = None
    if args.features:
        stored = ImageFeatures.load(args.features).meta
    enc = _encoder(args, stored)
    if stored is not None:
        check_same_model(stored, enc.meta, names=(args.features, "the text encoder"))
    tf = encode_texts(texts, enc, out=args.out, batch_size=args.batch_size)
    print(f"rscir-kit encode-text: wrote {args.out} ({len(tf)} unique texts x {tf.feats.shape[1]})", file=sys.stderr)
    return 0

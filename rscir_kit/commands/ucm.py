"""``ucm`` sub-command: UC Merced data (download / check), the UCM-Com query file, caption-set retrieval.

    rscir-kit ucm download [--root DIR]                  # UCM images + multi-labels from the original sources
    rscir-kit ucm check [--root DIR]                     # what is there: images, labels, captions, UCM-Com counts
    rscir-kit ucm queries --out ucmcom_queries.csv       # (re)build the published UCM-Com query file
    rscir-kit ucm captions --features F.npz [--split test] [--captions dataset_rsicd.json] [--ties expected]

``captions``: the split's images are found in ``--features`` by file stem (extract the caption set's image
folder first); ``--ties`` decides how exactly tied scores are ranked (see ``rscir_kit.metrics``).
"""
from __future__ import annotations

from pathlib import Path

from .. import config
from ..datasets.captions import load_caption_set
from ..datasets.ucm import UCMCaptions, UCMImages, UCMMultiLabel, default_root
from ..datasets.ucmcom import save_groups, ucmcom_groups
from ..encoders import load_encoder
from ..errors import DataError
from ..features import ImageFeatures
from ..modelsetup import setup_for
from . import add_command, positive_int
from .setup_args import add_setup_args, setup_kwargs


def register(subparsers) -> None:
    p = add_command(subparsers, "ucm")
    sub = p.add_subparsers(dest="ucm_command", metavar="ACTION", required=True)

    d = sub.add_parser("download", help="download UCM images and multi-labels (UCM-Captions: manual, see the message)")
    d.add_argument("--root", default=None, help="target folder (default: $RSCIR_DATA/ucm)")
    d.set_defaults(func=run_download)

    c = sub.add_parser("check", help="report the UCM files found and the UCM-Com query counts")
    c.add_argument("--root", default=None, help="default: $RSCIR_DATA/ucm")
    c.set_defaults(func=run_check)

    q = sub.add_parser("queries", help="build the UCM-Com query file (one row per class and label)")
    q.add_argument("--root", default=None, help="folder with multilabels.tsv (default: $RSCIR_DATA/ucm)")
    q.add_argument("--min-count", type=positive_int, default=5, help="images needed with and without a label (default 5)")
    q.add_argument("--out", required=True, metavar="CSV")
    q.set_defaults(func=run_queries)

    r = sub.add_parser("captions", help="text↔image R@1/5/10 and mR on a caption set's split")
    r.add_argument("--features", required=True, metavar="F.npz",
                   help="image features holding the split's images (matched by file stem)")
    r.add_argument("--captions", default=None, metavar="JSON",
                   help="dataset_*.json (RSICD, RSITMD, Sydney...); default: UCM-Captions in $RSCIR_DATA/ucm")
    r.add_argument("--split", default="test")
    r.add_argument("--model", default=None, help="text tower; default: the model recorded in --features")
    r.add_argument("--device", default="auto")
    r.add_argument("--ties", default="stable", choices=("stable", "expected", "optimistic", "pessimistic"),
                   help="exactly tied scores: stable (archive order, default), expected (mean over random orders), "
                        "optimistic / pessimistic (bounds)")
    add_setup_args(r, numerics=False, matching="--features")
    r.add_argument("--out", default=None, metavar="CSV", help="also write the table here")
    r.set_defaults(func=run_captions)


def _root(args) -> Path:
    return default_root(args.root)


def run_download(args) -> int:
    root = _root(args)
    if root.exists() and not root.is_dir():
        raise DataError(f"--root {root} is a file; give the folder to download UC Merced into")
    root.mkdir(parents=True, exist_ok=True)
    images = UCMImages(root, download=True)
    labels = UCMMultiLabel(root, download=True)
    print(f"UC Merced: {len(images)} images in {images.image_dir}; multi-labels: {labels.path}")
    try:
        UCMCaptions(root)
    except DataError:
        print("UCM-Captions cannot be downloaded automatically (cloud drives): see `rscir-kit ucm check`.")
    return 0


def run_check(args) -> int:
    root = _root(args)
    status = 0
    for name, make in (("images", lambda: UCMImages(root)), ("multi-labels", lambda: UCMMultiLabel(root)),
                       ("captions", lambda: UCMCaptions(root))):
        try:
            obj = make()
        except DataError as exc:
            print(f"{name}: MISSING — {exc}")
            status = 2
            continue
        if name == "images":
            print(f"images: {len(obj)} in {obj.image_dir}")
        elif name == "multi-labels":
            g = ucmcom_groups(obj)
            print(f"multi-labels: {len(obj)} images × {len(obj.labels)} labels ({obj.path}); UCM-Com: {len(g)} "
                  f"(class, label) groups, {int(g.n_without.sum())} add + {int(g.n_with.sum())} remove query pairs")
        else:
            print(f"captions: {obj.captions.split_sizes()} images, {len(obj.captions.texts)} sentences ({obj.path})")
    return status


def run_queries(args) -> int:
    groups = ucmcom_groups(UCMMultiLabel(_root(args)), min_count=args.min_count)
    path = save_groups(groups, args.out)
    print(f"{path}: {len(groups)} (class, label) groups, {int(groups.n_without.sum())} add + "
          f"{int(groups.n_with.sum())} remove query pairs")
    return 0


def run_captions(args) -> int:
    from ..retrieval import caption_retrieval, recall_table

    feats = ImageFeatures.load(args.features)
    if args.captions:
        cs = load_caption_set(args.captions).split(args.split)
    else:
        cs = UCMCaptions(config.data_root() / "ucm").split(args.split)

    model = args.model or feats.meta.get("model") or config.default_model()
    # the text tower is built with the configuration the image features record (flags override it)
    encoder = load_encoder(model, device=args.device, setup=setup_for(feats.meta, **setup_kwargs(args)))
    table = recall_table({f"{model} (ties: {args.ties})": caption_retrieval(cs, feats, encoder, ties=args.ties)}).round(2)
    print(table.to_string())
    if args.out:
        table.to_csv(args.out)
    return 0

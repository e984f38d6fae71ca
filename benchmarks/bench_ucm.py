"""UCM benchmarks with timings: UCM-Com (baselines + WeiCom over λ, template effect), text↔image retrieval on
the UCM-Captions test split, training-free text-to-text retrieval and its hybrid with text-to-image.

    RSCIR_DATA=../shared/data RSCIR_WEIGHTS=../shared/weights HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \\
        python benchmarks/bench_ucm.py [--features ucm.npz] [--out outputs/bench_ucm]

Image features of all 2,100 UCM images are read from ``--features`` or extracted once into ``$RSCIR_CACHE``
(not part of the timed steps). Prints the tables and writes them as CSV (+ ``timings.json``) to ``--out``.
With the offline stand-in model the numbers are plumbing numbers, not results of a published model.
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from rscir_kit import config
from rscir_kit.datasets.ucm import UCMCaptions, UCMImages, UCMMultiLabel
from rscir_kit.datasets.ucmcom import TEMPLATES, build_ucmcom, resolve_template
from rscir_kit.engine import evaluate, summarize, wide_table
from rscir_kit.retrieval import recall_table
from rscir_kit.text_encoders import load_text_encoder

LAMBDAS = [round(0.1 * i, 1) for i in range(11)]
TIMES: dict[str, float] = {}


@contextmanager
def timed(name: str):
    start = time.perf_counter()
    yield
    TIMES[name] = round(time.perf_counter() - start, 3)
    print(f"[time] {name}: {TIMES[name]:.2f} s", flush=True)


def image_features(args, encoder_loader):
    from rscir_kit.features import ImageFeatures, extract_image_features
    from rscir_kit.imagesets import ImageCollection
    from rscir_kit.pipeline import model_slug

    if args.features:
        return ImageFeatures.load(args.features)
    ucm = UCMImages(config.data_root() / "ucm")
    coll = ImageCollection.from_folder(ucm.image_dir)
    out = config.cache_dir() / f"ucmcom_{model_slug(args.model)}_{coll.fingerprint()[:12]}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    with timed("extract_image_features (not part of the benchmarks)"):
        return extract_image_features(coll, encoder_loader(), out, batch_size=64)


def show(title: str, df: pd.DataFrame, out: Path, name: str):
    print(f"\n## {title}\n{df.to_string()}", flush=True)
    df.to_csv(out / f"{name}.csv")


def ucmcom(args, feats, encoder, root, out, info):
    """UCM-Com tables (baselines, WeiCom over λ, per label and direction, template effect)."""
    # ---------------------------------------------------------------- UCM-Com: build + 11 λ
    with timed("ucmcom_build"):
        labels = UCMMultiLabel(root)
        qs = build_ucmcom(labels, feats.paths)
    with timed("ucmcom_evaluate_baselines_and_11_lambdas"):
        per_pair = evaluate(qs, feats, encoder, methods=("image", "text", "average", "weicom"), lambdas=LAMBDAS,
                            device=args.device, progress=False)
    info.update(ucmcom_pairs=len(qs), ucmcom_groups=qs.meta["n_groups"],
                ucmcom_add=int((qs.table.direction == "add").sum()),
                ucmcom_remove=int((qs.table.direction == "remove").sum()))
    counts = qs.table.groupby(["attribute", "direction"]).size().unstack(fill_value=0)
    counts["classes"] = qs.table.groupby("attribute")["query_class"].nunique()
    show("UCM-Com query pairs per label and direction", counts, out, "ucmcom_counts")
    show("UCM-Com mAP (%) by direction (avg = mean of the two)",
         wide_table(summarize(per_pair, by="direction"), by="direction"), out, "ucmcom_by_direction")
    for d in ("add", "remove"):
        show(f"UCM-Com mAP (%) per label, direction {d} (avg = mean over labels)",
             wide_table(summarize(per_pair[per_pair.direction == d], by="attribute"), by="attribute"), out,
             f"ucmcom_by_label_{d}")
    show("UCM-Com mAP (%) per label, both directions (avg = mean over labels)",
         wide_table(summarize(per_pair, by="attribute"), by="attribute"), out, "ucmcom_by_label")

    # template effect
    rows = {}
    with timed("ucmcom_templates"):
        for name in TEMPLATES:
            add_t, rem_t = resolve_template(name)
            q = build_ucmcom(labels, feats.paths, template=name)
            pp = evaluate(q, feats, encoder, methods=("text", "average", "weicom"), lambdas=LAMBDAS,
                          device=args.device, progress=False)
            s = summarize(pp, by="direction")
            avg = s[s.direction == "avg"]
            w = avg[avg.method == "weicom"].set_index("lambda")["map"]
            rows[f"{add_t} / {rem_t}"] = {
                "Text": float(avg[avg.method == "text"]["map"].iloc[0]),
                "Text & Image (avg)": float(avg[avg.method == "average"]["map"].iloc[0]),
                "WeiCom λ=0.5": float(w.loc[0.5]), "WeiCom best": float(w.max()), "best λ": float(w.idxmax())}
    show("UCM-Com template effect (mAP %, mean of the two directions; Image-only does not depend on it)",
         pd.DataFrame(rows).T.round(2), out, "ucmcom_templates")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", help="ImageFeatures .npz of all UCM images (default: extract into the cache)")
    ap.add_argument("--model", default=None, help="open_clip spec (default: rscir_kit.config.default_model())")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(config.output_dir() / "bench_ucm"))
    ap.add_argument("--skip-text2text", action="store_true")
    ap.add_argument("--only-text2text", action="store_true", help="skip the UCM-Com and text↔image parts")
    args = ap.parse_args(argv)
    args.model = args.model or config.default_model()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from rscir_kit.encoders import load_encoder

    with timed("load model"):
        encoder = load_encoder(args.model, device=args.device)
    feats = image_features(args, lambda: encoder)
    root = config.data_root() / "ucm"
    info = {"model": args.model, "archive_images": len(feats.paths), "embed_dim": int(feats.feats.shape[1])}

    if not args.only_text2text:
        ucmcom(args, feats, encoder, root, out, info)

    # ---------------------------------------------------------------- text↔image on the test split
    test = UCMCaptions(root).split("test")
    info.update(test_images=len(test), test_captions=len(test.texts))
    if not args.only_text2text:
        from rscir_kit.retrieval import image_rows, text_image_recall
        from rscir_kit.text_encoders import CachedTextEncoder

        # the steps of retrieval.caption_retrieval, timed separately
        with timed("text_image_test_split"):
            with timed("text_image_encode_1050_captions (each distinct sentence once)"):
                txt = CachedTextEncoder(encoder).encode_texts(list(test.texts)).astype(np.float64)
            with timed("text_image_scores_and_recall"):
                sim = txt @ feats.feats[image_rows(test, feats)].astype(np.float64).T
                r = text_image_recall(sim, test.caption_image)
        rows = {"stable (kit rule: archive order)": r}
        for ties in ("expected", "optimistic", "pessimistic"):
            rows[f"{ties} (exact ties)"] = text_image_recall(sim, test.caption_image, ties=ties)
        info["test_distinct_captions"] = len(set(test.texts.tolist()))
        show(f"UCM-Captions test split, {args.model}: text↔image R@K (%) by tie handling "
             f"({info['test_distinct_captions']} distinct sentences among {len(test.texts)} captions)",
             recall_table(rows).round(2), out, "text_image")

    # ---------------------------------------------------------------- text-to-text + hybrid
    if not args.skip_text2text:
        from rscir_kit.datasets.ucm import UCM_CLASS_TEXT
        from rscir_kit.analysis import beats_both, hybrid_summary
        from rscir_kit.captioners import zero_shot_descriptions
        from rscir_kit.retrieval import image_rows
        from rscir_kit.text_encoders import CachedTextEncoder
        from rscir_kit.text_to_text import text_to_text_benchmark

        minilm = CachedTextEncoder(load_text_encoder("minilm", device=args.device))
        standin_text = CachedTextEncoder(encoder)
        norms = ("weicom", "zscore")
        img = feats.feats[image_rows(test, feats)]
        descs = zero_shot_descriptions(img, encoder, [UCM_CLASS_TEXT[c] for c in UCM_CLASS_TEXT])
        runs = {
            "oracle": ("oracle captioner = 1 held-out reference caption per image (an upper bound); queries = the "
                       "other 4 captions; mean over 5 rotations", None, {"all-MiniLM-L6-v2": minilm,
                                                                         "stand-in text tower": standin_text}),
            "zeroshot": ("zero-shot tag captioner = 'an aerial image of <top-1 zero-shot UCM class>.' from the "
                         "stand-in; queries = all 5 captions", descs, {"all-MiniLM-L6-v2": minilm}),
        }
        for key, (title, descriptions, encoders) in runs.items():
            for ties in ("stable", "expected"):
                with timed(f"text_to_text_and_hybrid_{key}_{ties} ({len(encoders)} text encoders, 2 norms, 11 λ)"):
                    table = text_to_text_benchmark(test, feats, standin_text, encoders, LAMBDAS,
                                                   descriptions=descriptions, norms=norms, ties=ties)
                name = f"t2t_{key}_{ties}"
                show(f"Text-to-text and hybrid, R@K (%), ties {ties}: {title}",
                     table.set_index(["method", "text_encoder", "norm", "lambda"]).round(2), out, name)
                show(f"Summary, ties {ties} ({title})", hybrid_summary(table), out, f"{name}_summary")
                show(f"Where the hybrid beats both, ties {ties} ({key})", beats_both(table), out, f"{name}_beats_both")
    info["seconds"] = TIMES
    (out / "timings.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Time the evaluation engine on a synthetic PatternCom at the paper's scale, against a per-query loop.

Archive: 38 classes × 800 unit vectors (30,400), d=768, with class structure; six attributes with the
protocol's merged classes, ~21k (query, prompt) pairs; 11 λ values plus the three baselines.
The per-query loop (score, normalise, argsort, AP — one pair at a time, as the official code does)
is timed on a random sample of pairs and extrapolated. Not a test: timings are noisy, compare the ratio.

    python benchmarks/bench_engine.py [--pairs-sample 200] [--device cpu]
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from rscir_kit.datasets.patterncom import PatternCom
from rscir_kit.datasets.synthetic import synthetic_patterncom
from rscir_kit.engine import evaluate, summarize
from rscir_kit.metrics import average_precision
from rscir_kit.normalization import weicom_upper_tail

# attribute -> {class_dir: values}; all images of each class are query rows
SPEC = {
    "color": {"airplane": ["white", "purple"], "nursing_home": ["white", "gray"],
              "crosswalk": ["white", "yellow", "blue"], "tennis_court": ["brown", "gray", "green", "red"]},
    "context": {"bridge": ["over water", "over road"], "overpass": ["over road", "over railway"]},
    "density": {"dense_residential": ["dense"], "sparse_residential": ["sparse"], "forest": ["dense", "sparse"],
                "christmas_tree_farm": ["dense", "sparse"]},
    "existence": {"ferry_terminal": ["with boats"], "harbor": ["without boats"], "parking_space": ["with cars"],
                  "parking_lot": ["without cars"]},
    "quantity": {"storage_tank": ["one", "two", "many"]},
    "shape": {"swimming_pool": ["rectangular", "oval", "kidney-shaped"], "river": ["curved", "straight"],
              "closed_road": ["straight"], "intersection": ["cross", "round"]},
}


def make_benchmark(root: Path, d: int, seed: int = 0):
    """The paper's scale: 38 × 800 images, every image of a SPEC class a query row (the shared builder)."""
    archive, texts, _ = synthetic_patterncom(root, images_per_class=800, rows_per_class=800, dim=d, spec=SPEC,
                                             seed=seed, noise=1.2, text_signal=0.5, model="synthetic-benchmark")
    return archive, texts


def per_query_loop(queries, archive, texts, lambdas, sample):
    """The official evaluation shape: one pair at a time, every method, full argsort + AP.

    Computed in float64 with WeiCom in its upper-tail form (the exact ranking), so the comparison with the
    engine measures the engine's float32 error, not float32 saturation of Φ in the reference.
    """
    X = torch.from_numpy(archive.feats).double()
    index = {p: i for i, p in enumerate(archive.paths)}
    aps = []
    for i in sample:
        row = queries.table.iloc[i]
        q = X[index[row.query_path]]
        t = torch.from_numpy(texts.lookup([row.text])[0]).double()
        rel = np.zeros(len(X), bool)
        rel[queries.positives(i)] = True
        s_img, s_txt = X @ q, X @ t
        q_img, q_txt = weicom_upper_tail(s_img), weicom_upper_tail(s_txt)  # 1 - Φ(z)
        for s in [s_img, s_txt, (s_img + s_txt) / 2] + [-(lam * q_txt + (1 - lam) * q_img) for lam in lambdas]:
            order = torch.argsort(s, descending=True).numpy()
            hits = rel[order]
            aps.append(average_precision(s.numpy(), rel) if hits.any() else 0.0)
    return aps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--pairs-sample", type=int, default=200, help="pairs timed with the per-query loop")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    lambdas = [round(0.1 * k, 1) for k in range(11)]
    print(f"torch threads: {torch.get_num_threads()}, device: {args.device}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        archive, texts = make_benchmark(Path(tmp), args.dim)
        queries = PatternCom(tmp).queries(archive.paths)
        t_build = time.perf_counter() - t0
        print(f"synthetic PatternCom: archive {len(archive.paths)} × d={args.dim}, {len(queries)} pairs, "
              f"{queries.table.query_path.nunique()} query images, {len(texts.texts)} texts (built in {t_build:.1f} s)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            per_pair = evaluate(queries, archive, texts, methods=["image", "text", "average", "weicom"],
                                lambdas=lambdas, device=args.device, progress=True)
            t_engine = time.perf_counter() - t0
        n_evals = len(queries) * (3 + len(lambdas))
        print(f"engine: {t_engine:.1f} s for {len(queries)} pairs × (3 baselines + {len(lambdas)} λ) = {n_evals} "
              f"rankings ({1e6 * t_engine / n_evals:.0f} µs each)")
        sample = np.random.default_rng(1).choice(len(queries), size=min(args.pairs_sample, len(queries)), replace=False)
        t0 = time.perf_counter()
        ref = per_query_loop(queries, archive, texts, lambdas, sample)
        t_loop = (time.perf_counter() - t0) * len(queries) / len(sample)
        # agreement on the sample (same pairs, same order of methods)
        got = []
        for i in sample:
            sel = per_pair[per_pair.pair == i]
            got.extend(sel[sel.method == m].ap.item() for m in ("image", "text", "average"))
            got.extend(sel[(sel.method == "weicom") & (sel["lambda"] == lam)].ap.item() for lam in lambdas)
        err = float(np.max(np.abs(np.array(got) - np.array(ref))))
        print(f"per-query loop: {t_loop:.0f} s (extrapolated from {len(sample)} pairs); max |ΔAP| on the sample: {err:.2e}")
        print(f"speed-up: {t_loop / t_engine:.1f}×; target: whole 11-λ sweep under 60 s -> "
              f"{'met' if t_engine < 60 else 'NOT met'}")
        table = summarize(per_pair[per_pair.method == "weicom"], by=None)
        print("mAP vs λ (synthetic data, meaningless as a result):",
              " ".join(f"{lam:g}:{m:.1f}" for lam, m in zip(table["lambda"], table["map"])))


if __name__ == "__main__":
    main()

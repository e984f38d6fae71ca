"""Extraction data path: end-to-end img/s against the pure forward pass and the decoding alone, in one warm process.

    RSCIR_DATA=../shared/data RSCIR_WEIGHTS=../shared/weights HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \\
        python benchmarks/bench_extract.py [--model SPEC] [--images DIR] [-n 512] [--rounds 3] [--device cpu]

Measured, each ``--rounds`` times interleaved (median reported; the machine may be shared, so the ratios within
one run are what count, and the load average is recorded):

* ``decode, 1 thread``: read + decode + preprocess every image serially (the data path's work alone);
* ``decode, W threads``: the same through the extraction's decoding pool;
* ``forward``: the model on batches already preprocessed in memory (the floor extraction can reach);
* ``extract (previous)``: the kit's previous loop (one prefetch thread, decode of batch j+1 during batch j);
* ``extract (W workers)``: ``extract_image_features`` end to end (decoding pool, chunked atomic writes), for
  1 worker and the machine-sized default.

With the offline stand-in the numbers are plumbing numbers, not those of a published model.
Results: ``benchmarks/results/bench_extract.md`` (``--out``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _load_str() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv=None) -> int:
    from rscir_kit import config
    from rscir_kit.encoders import load_encoder
    from rscir_kit.features import decode_workers, extract_image_features
    from rscir_kit.imagesets import ImageCollection

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model spec (default: the configured default / stand-in)")
    p.add_argument("--images", default=None, help="class-folder image tree (default: $RSCIR_DATA/ucm/images)")
    p.add_argument("-n", type=int, default=512, help="images (default 512)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_extract.md"))
    args = p.parse_args(argv)

    import torch

    images = Path(args.images) if args.images else config.data_root() / "ucm" / "images"
    coll = ImageCollection.from_folder(images)
    step = max(1, len(coll) // args.n)
    coll = coll.select(list(range(0, len(coll), step))[: args.n])
    n = len(coll)
    load_before = _load_str()
    enc = load_encoder(args.model or config.default_model(), device=args.device)
    auto = decode_workers(enc.device)
    bs = args.batch_size
    print(f"{n} images from {images}; {enc}; torch threads {torch.get_num_threads()}, "
          f"CPUs {len(os.sched_getaffinity(0))}, default decode workers {auto}; load {load_before}", flush=True)

    def decode_one(i):
        return enc.preprocess(coll.load(i))

    def decode_serial():
        for i in range(n):
            decode_one(i)

    def decode_pool():
        with ThreadPoolExecutor(auto) as pool:
            list(pool.map(decode_one, range(n)))

    pre = [torch.stack([decode_one(i) for i in range(s, min(n, s + bs))]) for s in range(0, n, bs)]

    def forward():
        for x in pre:
            enc.encode_images(x, batch_size=len(x))

    def previous():  # the kit's loop before this change: one prefetch thread
        batches = [(s, min(n, s + bs)) for s in range(0, n, bs)]
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(lambda a, b: torch.stack([decode_one(i) for i in range(a, b)]), *batches[0])
            for j in range(len(batches)):
                x = pending.result()
                if j + 1 < len(batches):
                    pending = pool.submit(lambda a, b: torch.stack([decode_one(i) for i in range(a, b)]),
                                          *batches[j + 1])
                enc.encode_images(x, batch_size=len(x))

    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))

    def extract(workers):
        def run():
            extract_image_features(coll, enc, tmp / f"w{workers}.npz", batch_size=bs, resume=False, progress=False,
                                   workers=workers)
        return run

    cases = {"decode, 1 thread": decode_serial, f"decode pool, {auto} thread(s)": decode_pool, "forward": forward,
             "extract (previous loop)": previous, "extract (1 worker)": extract(1)}
    if auto != 1:
        cases[f"extract ({auto} workers, default)"] = extract(auto)
    else:
        cases["extract (2 workers)"] = extract(2)
    settings = list(dict.fromkeys([torch.get_num_threads(), 1]))  # the default and one intra-op thread
    rows = []
    for nt in settings:
        torch.set_num_threads(nt)
        forward()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in cases}
        for r in range(args.rounds):
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
            print(f"torch threads {nt}, round {r + 1}: " + ", ".join(f"{k} {n / v[-1]:.0f}" for k, v in times.items())
                  + " img/s", flush=True)
        rate = {k: n / statistics.median(v) for k, v in times.items()}
        fwd = rate["forward"]
        rows += [f"| {nt} | {k} | {rate[k]:.0f} | {rate[k] / fwd:.2f} | "
                 f"{min(n / t for t in v):.0f}–{max(n / t for t in v):.0f} |" for k, v in times.items()]
    load_after = _load_str()
    report = "\n".join([
        "# Extraction data path (benchmarks/bench_extract.py)",
        "",
        f"{n} UC Merced images (256×256 JPEG), batch {bs}, model `{enc.model_id}` "
        f"(image size {enc.image_size}, d={enc.embed_dim}, {enc.meta['dtype']}) on {enc.device}; "
        f"CPUs available {len(os.sched_getaffinity(0))}, default decode workers {auto}; each case run with torch's "
        f"default intra-op threads ({settings[0]}) and with one.",
        f"Machine load average (1/5/15 min): {load_before} before, {load_after} after (shared machine: compare the "
        f"ratios within one block of this run). Median of {args.rounds} interleaved rounds.",
        "",
        "| torch threads | path | img/s (median) | × pure forward | range over rounds |",
        "|---:|---|---:|---:|---|",
        *rows,
        "",
        f"`python {' '.join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))}`",
        "",
    ])
    print("\n" + report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

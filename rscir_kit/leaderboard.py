"""Method leaderboards with honest model selection: hyper-parameters chosen on the validation query images,
mAP reported on the held-out test query images with bootstrap 95 % CIs (resampling query images).

Input: the engine's per-pair table over *all* pairs for every candidate configuration (method string × λ) —
one vectorised evaluation — and a :class:`~rscir_kit.stats.QuerySplit`. For every method family (the
registry name: ``weicom``, ``slerp``, ``rrf``...; all its λ values and option strings are its candidates):

1. **selected**: the candidate with the best validation score (mean over the groups of ``by``; ties → the
   first candidate in table order, i.e. the smallest λ), reported on the test images;
2. **oracle** (``oracle=True``): the candidate with the best *test* score, labelled "oracle (λ on test)" — an
   upper bound, not a result, as the notebooks' best-λ rows always were.

:func:`leaderboard` returns a :class:`Leaderboard`: the long table (one row per reported method and group:
``map``, ``lo``, ``hi``), a wide display table (methods × groups, "45.2 [43.0, 47.5]", best in bold), the
paired-bootstrap p-value of the best method against each other one, a CSV writer and a figure.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .config import data_root as default_data_root
from .errors import DataError, ParameterError
from .io import atomic_path
from .stats import TEST, VALIDATION, QuerySplit, bootstrap_counts, bootstrap_map, paired_bootstrap

AVG = "avg"


def _label(method: str, lam) -> str:
    from . import methods

    try:
        return methods.method_label(method, lam)
    except Exception:  # a method string the registry does not know (e.g. options): label it plainly
        if lam is None or (isinstance(lam, float) and math.isnan(lam)):
            return str(method)
        return f"{method} (λ={float(lam):g})"


def family_of(method: str) -> str:
    """The method family a candidate belongs to: its registry name (``"rrf:k=10"`` → ``"rrf"``)."""
    return str(method).split(":")[0]


def _score_table(per_pair, images, by, metric):
    """Point mAP (%) per (method, λ[, group]) plus the mean over groups, without bootstrap."""
    df = per_pair.assign(**{"lambda": per_pair["lambda"].astype(float)})
    keys = ["method", "lambda"]
    if by:
        g = df.groupby(keys + [by], dropna=False, sort=False)[metric].mean().reset_index()
        avg = g.groupby(keys, dropna=False, sort=False)[metric].mean().reset_index()
    else:
        avg = df.groupby(keys, dropna=False, sort=False)[metric].mean().reset_index()
    return avg.rename(columns={metric: "score"})


def _pick(scores: pd.DataFrame, families) -> dict:
    """family → (method, λ) with the best score (first in table order on ties)."""
    out = {}
    for fam in families:
        cand = scores[scores["method"].map(family_of) == fam]
        if cand.empty:
            continue
        best = cand.iloc[int(np.nanargmax(cand["score"].to_numpy()))]
        lam = None if pd.isna(best["lambda"]) else float(best["lambda"])
        out[fam] = (best["method"], lam)
    return out


def _is_lam(x, lam):
    if lam is None:
        return x.isna()
    return np.isclose(x.astype(float), lam)


@dataclass
class Leaderboard:
    """Test-split mAP (%) with CIs of every method family, hyper-parameters chosen on validation."""

    table: pd.DataFrame            # long: row, family, method, lambda, kind, <by>, map, lo, hi, se
    by: str | None
    selected: dict                 # family -> (method, λ) chosen on validation
    oracle: dict                   # family -> (method, λ) best on test (upper bound)
    validation_scores: pd.DataFrame
    comparisons: pd.DataFrame      # best selected method vs each other: delta, lo, hi, p_value
    meta: dict = field(default_factory=dict)
    test_images: tuple = ()        # the held-out query images

    def wide(self, ci: bool = True, digits: int = 1) -> pd.DataFrame:
        """Methods × groups (+ avg) as strings ``"45.2 [43.0, 47.5]"``; the best test value per column in
        bold (``**…**``, Markdown) among the selected (non-oracle) rows."""
        t = self.table
        col = self.by or "all"
        t = t.assign(_col=t[self.by] if self.by else "all")
        cols = [c for c in dict.fromkeys(t["_col"]) if c != AVG] + ([AVG] if (t["_col"] == AVG).any() else [])
        rows = list(dict.fromkeys(t["row"]))
        out = pd.DataFrame(index=rows, columns=cols, dtype=object)
        best = {c: t[(t["_col"] == c) & (t["kind"] == "selected")]["map"].max() for c in cols}
        for rec in t.to_dict("records"):
            text = f"{rec['map']:.{digits}f}" + (f" [{rec['lo']:.{digits}f}, {rec['hi']:.{digits}f}]" if ci else "")
            if rec["kind"] == "selected" and np.isclose(rec["map"], best[rec["_col"]]):
                text = f"**{text}**"
            out.loc[rec["row"], rec["_col"]] = text
        out.index.name = "method"
        out.columns.name = col
        return out

    def to_markdown(self, ci: bool = True) -> str:
        wide = self.wide(ci)
        head = "| method | " + " | ".join(map(str, wide.columns)) + " |"
        sep = "|---|" + "---|" * len(wide.columns)
        body = ["| " + " | ".join([str(i)] + [str(v) for v in row]) + " |" for i, row in zip(wide.index, wide.values)]
        return "\n".join([head, sep] + body)

    def to_csv(self, path) -> Path:
        """The long table (numbers, not strings) with the selection metadata in a ``#`` header line."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(f"# rscir-kit leaderboard {json.dumps(self.meta, default=str)}\n")
                self.table.to_csv(fh, index=False, float_format="%.6g")
        return path

    def figure(self, model: str | None = None, config: str | None = None, column: str = AVG):
        """Horizontal bars of the test mAP (``column``, default the mean over groups) with 95 % CI whiskers,
        the validation-selected hyper-parameters in each label; oracle rows hatched; stamped with the model
        label and ``config`` (the model configuration) on the figure."""
        import matplotlib.pyplot as plt

        from .plots import stamp

        t = self.table if self.by is None else self.table[self.table[self.by] == column]
        t = t.iloc[::-1]
        fig, ax = plt.subplots(figsize=(8, 0.42 * len(t) + 1.6))
        colors = ["#bbbbbb" if k == "oracle" else "#1f77b4" for k in t["kind"]]
        ax.barh(np.arange(len(t)), t["map"], xerr=[t["map"] - t["lo"], t["hi"] - t["map"]], color=colors,
                hatch=None, capsize=3, edgecolor="black", linewidth=0.5)
        ax.set_yticks(np.arange(len(t)), t["row"], fontsize=8)
        ax.set_xlabel(f"test mAP (%) {'(' + column + ')' if self.by else ''} with 95 % bootstrap CI over query images")
        split = self.meta.get("split", {})
        ax.set_title(f"{self.meta.get('benchmark', '')}: hyper-parameters chosen on {split.get('n_validation', '?')} "
                     f"validation / reported on {split.get('n_test', '?')} test query images", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        stamp(fig, model, config)
        return fig


def leaderboard(per_pair: pd.DataFrame, queries, split: QuerySplit, by: str | None = "attribute",
                metric: str = "ap", families=None, oracle: bool = True, n_boot: int = 1000, seed: int = 0,
                level: float = 0.95, compare: bool = True, meta: dict | None = None) -> Leaderboard:
    """Choose each family's hyper-parameters on the validation images, report test mAP with CIs.

    per_pair: the engine's table on *every* pair of ``queries`` (all candidates: methods × λ);
    queries: the QuerySet (query images by ``pair``); split: the query-image split; by: the grouping of the
    table's columns (``attribute`` for PatternCom, ``label``/``direction`` for UCM-Com, None: all pairs);
    metric: ``ap`` or a per-pair column such as ``r@10`` (xView2-CIR); families: which families to report, in
    this order (default: all, in table order).
    """
    if metric not in per_pair.columns:
        raise ParameterError(f"metric {metric!r} is not a column of the per-pair table (columns: "
                             f"{', '.join(map(str, per_pair.columns))}); evaluate with ks=(…) for R@k")
    images = queries.table["query_path"].astype(str).to_numpy()
    split.check(images)
    side = split.side_of(images)
    pair_side = side[per_pair["pair"].to_numpy()]
    val, test = per_pair[pair_side == VALIDATION], per_pair[pair_side == TEST]
    if val.empty or test.empty:
        raise DataError("the split leaves no validation or no test pair in the per-pair table")
    if families is None:
        families = list(dict.fromkeys(per_pair["method"].map(family_of)))
    v_scores = _score_table(val, images, by, metric)
    t_scores = _score_table(test, images, by, metric)
    chosen = _pick(v_scores, families)
    best_test = _pick(t_scores, families) if oracle else {}

    # one set of bootstrap weights over the test images: every CI and every paired test see the same replicates
    reported = []
    for fam in families:
        if fam not in chosen:
            continue
        reported.append(("selected", fam, *chosen[fam]))
        n_cand = int((v_scores["method"].map(family_of) == fam).sum())
        if oracle and n_cand > 1 and best_test[fam] != chosen[fam]:  # same choice: said in the label instead
            reported.append(("oracle", fam, *best_test[fam]))
    parts = []
    for kind, fam, m, lam in reported:
        rows = test[(test["method"] == m) & _is_lam(test["lambda"], lam)]
        parts.append(rows.assign(method=f"{kind}|{fam}|{m}|{lam}", **{"lambda": np.nan}))
    stacked = pd.concat(parts, ignore_index=True)
    test_names = np.unique(images[test["pair"].unique()])
    weights = bootstrap_counts(len(test_names), n_boot, seed)
    ci = bootstrap_map(stacked, images, by=by, weights=weights, metric=metric, level=level)
    keyed = ci["method"].str.split("|", expand=True)
    keys = ci["method"].to_numpy()
    ci = ci.drop(columns=["method", "lambda"])
    ci.insert(0, "kind", keyed[0])
    ci.insert(1, "family", keyed[1])
    ci.insert(2, "method", keyed[2])
    ci.insert(3, "lambda", [None if x == "None" else float(x) for x in keyed[3]])
    n_cands = {fam: int((v_scores["method"].map(family_of) == fam).sum()) for fam in families}
    labels = []
    for kind, fam, m, lam in zip(ci["kind"], ci["family"], ci["method"], ci["lambda"]):
        base = _label(m, lam)
        if kind == "oracle":
            base += " — oracle (λ on test)"
        elif n_cands.get(fam, 1) > 1:
            base += " — chosen on validation" + (" (= test oracle)" if oracle and best_test.get(fam) == chosen[fam]
                                                 else "")
        labels.append(base)
    ci.insert(0, "row", labels)
    ci["scale"] = "%"

    comparisons = pd.DataFrame()
    if compare and len(chosen) > 1:
        mask = (ci["kind"] == "selected").to_numpy() & ((ci[by] == AVG).to_numpy() if by else True)
        sel, sel_keys = ci[mask], keys[mask]
        ib = int(np.argmax(sel["map"].to_numpy()))
        rows = []
        for j in range(len(sel)):
            if j == ib:
                continue
            res = paired_bootstrap(stacked, images, (sel_keys[ib], None), (sel_keys[j], None), by=by, n_boot=n_boot,
                                   seed=seed, level=level, metric=metric)
            rows.append({"best": sel["row"].iat[ib], "other": sel["row"].iat[j], "delta": res["delta"],
                         "lo": res["lo"], "hi": res["hi"], "p_value": res["p_value"]})
        comparisons = pd.DataFrame(rows)
    info = dict(meta or {})
    info.update({"metric": metric, "by": by, "n_boot": n_boot, "seed": seed, "level": level,
                 "resampled": "test query images",
                 "split": {"benchmark": split.benchmark, "seed": split.seed, "fraction": split.fraction,
                           "stratify": split.stratify, "images_digest": split.images_digest,
                           "n_validation": len(split.validation), "n_test": len(split.test)},
                 "selected": {f: list(v) for f, v in chosen.items()},
                 "oracle": {f: list(v) for f, v in best_test.items()}})
    info.setdefault("benchmark", split.benchmark)
    return Leaderboard(ci, by, chosen, best_test, v_scores, comparisons, info, tuple(split.test))


# ----------------------------------------------------------------------------------------- λ curves, examples
def lambda_curves(per_pair: pd.DataFrame, queries, split: QuerySplit, by: str | None = "attribute",
                  metric: str = "ap") -> pd.DataFrame:
    """mAP (%, mean over the groups of ``by``) of every candidate on each side of the split: columns ``family,
    method, lambda, side, map`` — the curves behind each method's validation choice."""
    images = queries.table["query_path"].astype(str).to_numpy()
    side = split.side_of(images)[per_pair["pair"].to_numpy()]
    parts = []
    for name in (VALIDATION, TEST):
        s = _score_table(per_pair[side == name], images, by, metric).assign(side=name)
        parts.append(s)
    out = pd.concat(parts, ignore_index=True).rename(columns={"score": "map"})
    out["map"] *= 100
    out.insert(0, "family", out["method"].map(family_of))
    return out


def plot_lambda_curves(curves: pd.DataFrame, board: Leaderboard | None = None, model: str | None = None,
                       config: str | None = None):
    """One panel per method family with λ: validation and test mAP against λ, the validation choice (●) and
    the test oracle (○) marked. Families without λ are left out."""
    import matplotlib.pyplot as plt

    from .plots import stamp

    fams = [f for f in dict.fromkeys(curves["family"])
            if curves.loc[curves["family"] == f, "lambda"].notna().sum() > 2]
    ncols = min(4, max(1, len(fams)))
    nrows = max(1, math.ceil(len(fams) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.7 * nrows + 0.6), squeeze=False)
    for ax, fam in zip(axes.ravel(), fams):
        c = curves[curves["family"] == fam]
        for method in dict.fromkeys(c["method"]):
            for side, style in ((VALIDATION, "--"), (TEST, "-")):
                s = c[(c["method"] == method) & (c["side"] == side)].sort_values("lambda")
                ax.plot(s["lambda"], s["map"], style, marker=".", label=f"{side}" + ("" if method == fam else
                                                                                   f" {method}"))
        if board is not None and fam in board.selected:
            m, lam = board.selected[fam]
            if lam is not None:
                y = c[(c["method"] == m) & (c["side"] == TEST) & np.isclose(c["lambda"], lam)]["map"]
                ax.plot([lam], y.iloc[:1], "o", color="black", label="chosen on validation")
            m, lam = board.oracle.get(fam, (None, None))
            if lam is not None:
                y = c[(c["method"] == m) & (c["side"] == TEST) & np.isclose(c["lambda"], lam)]["map"]
                ax.plot([lam], y.iloc[:1], "o", mfc="none", color="red", label="oracle (test)")
        ax.set_title(_label(fam, None), fontsize=9)
        ax.set_xlabel("λ", fontsize=8)
        ax.set_ylabel("mAP (%)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(fams):]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    stamp(fig, model, config)
    return fig


def examples(per_pair: pd.DataFrame, queries, board: Leaderboard, reference: str = "weicom", n: int = 2,
             seed: int = 0) -> pd.DataFrame:
    """What each method gets right and wrong: for every selected method, ``n`` test pairs drawn at random
    (fixed ``seed``) among those where it beats the ``reference`` family's selected configuration and ``n``
    among those where it loses (AP per pair). Columns: method, outcome, pair, query, text, n_pos, ap, ap_ref."""
    if reference not in board.selected:
        raise ParameterError(f"reference method {reference!r} is not on the leaderboard")
    rng = np.random.default_rng(seed)
    images = queries.table["query_path"].astype(str).to_numpy()
    test_pairs = np.flatnonzero(np.isin(images, np.asarray(board.test_images))) if board.test_images else None

    def aps(method, lam):
        rows = per_pair[(per_pair["method"] == method) & _is_lam(per_pair["lambda"], lam)]
        return rows.set_index("pair")["ap"]

    ref = aps(*board.selected[reference])
    out = []
    for fam, (m, lam) in board.selected.items():
        if fam == reference:
            continue
        a = aps(m, lam)
        common = ref.index.intersection(a.index)
        if test_pairs is not None:
            common = common.intersection(test_pairs)
        diff = a.loc[common] - ref.loc[common]
        for outcome, pool in (("better", diff[diff > 1e-12].index), ("worse", diff[diff < -1e-12].index)):
            pick = rng.choice(np.asarray(pool), size=min(n, len(pool)), replace=False) if len(pool) else []
            for p in pick:
                row = queries.table.iloc[int(p)]
                out.append({"method": _label(m, lam), "outcome": outcome, "pair": int(p),
                            "query": str(row["query_path"]), "text": str(row["text"]),
                            "n_pos": int(len(queries.positives(int(p)))), "ap": 100 * float(a.loc[p]),
                            "ap_ref": 100 * float(ref.loc[p])})
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------------------- xView2-CIR R@k
XVIEW2_KS = (1, 5, 10)
XVIEW2_IMAGES_ENV = "RSCIR_XVIEW2_IMAGES"
XVIEW2_DOWNLOAD = ("the xView2 challenge images (xBD, Gupta et al. 2019; free registration at https://xview2.org/dataset): "
                   "download the challenge data holding the list's test/images/<disaster>_<id>_pre_disaster and "
                   "_post_disaster images, unpack it so that <folder>/test/images/… exists, and set the notebook "
                   f"parameter xview2_images (or ${XVIEW2_IMAGES_ENV}) to <folder>")


@dataclass
class XView2Availability:
    """What of xView2-CIR is on this machine: the query list (``list_file``, None if absent) and how many of the
    images it names (pre-disaster queries and post-disaster targets) exist under ``images_root``."""

    list_file: Path | None
    images_root: Path | None
    n_queries: int = 0
    n_needed: int = 0
    n_found: int = 0
    missing_example: str = ""

    @property
    def ready(self) -> bool:
        """True when retrieval can be evaluated offline: the list and every image it names are present."""
        return self.list_file is not None and self.n_needed > 0 and self.n_found == self.n_needed

    def message(self) -> str:
        if self.list_file is None:
            return ("xView2-CIR: the query list xview2_cir.csv is not in the data folder; take it from the official "
                    "WeiCom code (github.com/billpsomas/rscir) and put it there. Its images: " + XVIEW2_DOWNLOAD + ".")
        if self.ready:
            return (f"xView2-CIR: {self.n_queries} queries, all {self.n_needed} images found under {self.images_root}: "
                    "R@k is evaluated below.")
        where = ("no image folder was given" if self.images_root is None else
                 f"{self.n_found} of the {self.n_needed} images it names are under {self.images_root} "
                 f"(e.g. missing: {self.missing_example})")
        return (f"xView2-CIR cannot be evaluated offline: the query list {self.list_file} ({self.n_queries} queries) "
                f"is present but the images are not — {where}. No xView2-CIR R@k is reported. To add it: "
                + XVIEW2_DOWNLOAD + ".")


def xview2_availability(data_root=None, images_root=None) -> XView2Availability:
    """Check the xView2-CIR list (``<data_root>/xview2_cir.csv``) and its images under ``images_root`` (default
    ``$RSCIR_XVIEW2_IMAGES``; the folder the list's ``test/images/…`` paths are relative to). Reads no image."""

    from .datasets.xview2 import XView2CIR, read_xview2_csv

    list_file = Path(data_root or default_data_root()) / XView2CIR.LIST
    env = os.environ.get(XVIEW2_IMAGES_ENV)
    root = Path(images_root).expanduser() if images_root else (Path(env).expanduser() if env else None)
    if not list_file.is_file():
        return XView2Availability(None, root)
    rows = read_xview2_csv(list_file)
    needed = list(dict.fromkeys([*rows["image"], *rows["target"]]))
    found = [p for p in needed if root is not None and (root / p).is_file()]
    missing = next((p for p in needed if p not in set(found)), "")
    return XView2Availability(list_file, root, len(rows), len(needed), len(found), missing)


@dataclass
class XView2Board:
    """xView2-CIR R@k (%) on the test query images, one :class:`Leaderboard` per k (each family's λ chosen on the
    validation images' R@k), with bootstrap CIs over test query images."""

    boards: dict                   # k -> Leaderboard (by=None, metric r@k)
    ks: tuple

    @property
    def table(self) -> pd.DataFrame:
        """Long: k, row, kind, family, method, lambda, map (= R@k, %), lo, hi."""
        parts = [b.table.assign(k=k) for k, b in self.boards.items()]
        t = pd.concat(parts, ignore_index=True)
        return t[["k"] + [c for c in t.columns if c != "k"]]

    def wide(self, digits: int = 1) -> pd.DataFrame:
        """Selected rows: methods × R@k as ``"45.2 [43.0, 47.5] (λ=0.3)"``, the best of each column in bold."""
        from . import methods as registry

        t = self.table[self.table["kind"] == "selected"]
        fams = list(dict.fromkeys(t["family"]))
        labels = {f: registry.REGISTRY[f].label if f in registry.REGISTRY else f for f in fams}
        out = pd.DataFrame(index=[labels[f] for f in fams], columns=[f"R@{k}" for k in self.ks], dtype=object)
        for k in self.ks:
            tk = t[t["k"] == k]
            best = tk["map"].max()
            for rec in tk.to_dict("records"):
                lam = rec["lambda"]
                text = (f"{rec['map']:.{digits}f} [{rec['lo']:.{digits}f}, {rec['hi']:.{digits}f}]"
                        + ("" if lam is None or (isinstance(lam, float) and math.isnan(lam)) else f" (λ={lam:g})"))
                out.loc[labels[rec["family"]], f"R@{k}"] = f"**{text}**" if np.isclose(rec["map"], best) else text
        out.index.name = "method"
        return out

    def to_markdown(self) -> str:
        wide = self.wide()
        head = "| method | " + " | ".join(wide.columns) + " |"
        body = ["| " + " | ".join([str(i)] + [str(v) for v in row]) + " |" for i, row in zip(wide.index, wide.values)]
        return "\n".join([head, "|---|" + "---|" * len(wide.columns)] + body)

    def record(self) -> dict:
        """For results.json: {"R@k": {row: {map, lo, hi, kind, family, method, lambda}}}."""
        return {f"R@{k}": {r["row"]: {key: r[key] for key in ("map", "lo", "hi", "kind", "family", "method", "lambda")}
                           for r in b.table.to_dict("records")} for k, b in self.boards.items()}


def xview2_recall(per_pair: pd.DataFrame, queries, split: QuerySplit, ks=XVIEW2_KS, n_boot: int = 1000,
                  seed: int = 0, level: float = 0.95, meta: dict | None = None) -> XView2Board:
    """xView2-CIR's R@k leaderboard from the engine's per-pair table (evaluated with ``ks`` ⊇ these k): for each k,
    :func:`leaderboard` with ``metric="r@k"`` over all pairs (``by=None``; one target per query, so R@k is the
    share of test queries whose target is in the top k)."""
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ParameterError("xView2-CIR R@k needs at least one k")
    boards = {k: leaderboard(per_pair, queries, split, by=None, metric=f"r@{k}", n_boot=n_boot, seed=seed,
                             level=level, compare=False, meta=dict(meta or {}, benchmark="xView2-CIR"))
              for k in ks}
    return XView2Board(boards, ks)


def run_xview2(availability: XView2Availability, model: str, cache_dir, methods, lambdas, ks=XVIEW2_KS,
               val_fraction: float = 0.3, split_seed: int = 0, n_boot: int = 1000, seed: int = 0, device="auto",
               batch_size: int = 64, setup=None, encoder=None, progress: bool = False):
    """Notebook 09's xView2-CIR section: features of the list's images (cached in ``cache_dir``), every method × λ
    evaluated with R@k, a seeded validation/test split of the query images (stored in ``cache_dir``), and
    :func:`xview2_recall`. Returns (XView2Board, split, split_file, per_pair). Needs ``availability.ready``."""
    from . import methods as registry
    from . import pipeline, stats
    from .datasets.xview2 import XView2CIR
    from .engine import evaluate

    if not availability.ready:
        raise DataError(availability.message())
    bench = pipeline.load_benchmark(XView2CIR(availability.list_file.parent, images_root=availability.images_root),
                                    model, cache_dir, size=None, device=device, batch_size=batch_size, setup=setup,
                                    encoder=encoder, progress=progress)
    frames = []
    for m in methods:
        source = bench.texts
        if registry.get(m).prepare is not None:  # FreeDom embeds "word + text" strings: needs the encoder
            if encoder is None:
                raise ParameterError(f"method {m!r} on xView2-CIR needs the text encoder (encoder=…)")
            source = encoder
        frames.append(evaluate(bench.queries, bench.archive, source, methods=[m], lambdas=lambdas, ks=ks,
                               device=device, progress=False))
    per_pair = pd.concat(frames, ignore_index=True)
    images = bench.queries.table["query_path"].astype(str).to_numpy()
    split_file = (Path(cache_dir) / f"xview2_query_split_seed{split_seed}_{val_fraction:g}_"
                  f"{stats.images_digest(set(images))}.json")
    split = stats.load_or_make_split(split_file, images, "xview2", fraction=val_fraction, seed=split_seed)
    board = xview2_recall(per_pair, bench.queries, split, ks=ks, n_boot=n_boot, seed=seed,
                          meta={"model": model, "archive_images": len(bench.archive.paths)})
    return board, split, split_file, per_pair

"""Validation split of query images and bootstrap CIs, against slow references and hand-checked cases."""
import numpy as np
import pandas as pd
import pytest

from rscir_kit.engine import summarize
from rscir_kit.errors import DataError, ParameterError
from rscir_kit.stats import (QuerySplit, bootstrap_counts, bootstrap_map, load_or_make_split, paired_bootstrap,
                             split_query_images)


# ----------------------------------------------------------------------------------------- split
def test_split_is_seeded_disjoint_and_order_free():
    names = [f"img{i:03d}" for i in range(100)]
    a = split_query_images(names * 3, "bench", fraction=0.3, seed=7)
    b = split_query_images(list(reversed(names)), "bench", fraction=0.3, seed=7)
    assert a.validation == b.validation and a.test == b.test
    assert len(a.validation) == 30 and len(a.test) == 70
    assert set(a.validation) | set(a.test) == set(names) and not set(a.validation) & set(a.test)
    c = split_query_images(names, "bench", fraction=0.3, seed=8)
    assert c.validation != a.validation
    # the order is the SHA-256 of "seed:name" (platform independent), worked out here directly
    import hashlib
    expect = sorted(names, key=lambda n: hashlib.sha256(f"7:{n}".encode()).hexdigest())[:30]
    assert a.validation == tuple(sorted(expect))


def test_split_stratified_per_stratum():
    names = [f"c{c}_{i}" for c in range(3) for i in range(10)]
    strata = [n.split("_")[0] for n in names]
    s = split_query_images(names, "b", fraction=0.2, seed=0, strata=strata, stratify="query_class")
    per = pd.Series([v.split("_")[0] for v in s.validation]).value_counts()
    assert per.to_dict() == {"c0": 2, "c1": 2, "c2": 2}
    with pytest.raises(DataError, match="two strata"):
        split_query_images(["x", "x"], "b", strata=["s1", "s2"])


def test_split_roundtrip_check_and_sides(tmp_path):
    names = [f"n{i}" for i in range(20)]
    s = split_query_images(names, "b", fraction=0.5, seed=1)
    path = s.save(tmp_path / "split.json")
    t = QuerySplit.load(path)
    assert t == s
    sides = t.side_of(names)
    assert set(sides) == {"validation", "test"} and (sides == "validation").sum() == 10
    assert t.mask(names, "test").sum() == 10
    t.check(names[::-1])
    with pytest.raises(DataError, match="other query images"):
        t.check(names[:-1])
    with pytest.raises(DataError, match="neither side"):
        t.side_of(["unknown"])
    with pytest.raises(ParameterError):
        split_query_images(names, "b", fraction=1.0)
    # load_or_make_split: reuses the stored file, refuses other settings or other images
    again = load_or_make_split(path, names, "b", fraction=0.5, seed=1)
    assert again == s
    with pytest.raises(DataError, match="seed=1"):
        load_or_make_split(path, names, "b", fraction=0.5, seed=2)
    with pytest.raises(DataError, match="other query images"):
        load_or_make_split(path, names + ["new"], "b", fraction=0.5, seed=1)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="bad.json"):
        QuerySplit.load(tmp_path / "bad.json")


# ----------------------------------------------------------------------------------------- bootstrap
def _per_pair(seed=0, n_images=23, methods=(("image", np.nan), ("weicom", 0.5)), groups=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    images, grp = [], []
    for i in range(n_images):
        for _ in range(rng.integers(1, 4)):
            images.append(f"q{i}")
            grp.append(groups[rng.integers(len(groups))])
    rows = []
    for m, lam in methods:
        ap = rng.random(len(images))
        ap[rng.random(len(images)) < 0.05] = np.nan  # on_empty="skip" pairs
        rows.append(pd.DataFrame({"pair": np.arange(len(images)), "method": m, "lambda": lam, "ap": ap,
                                  "n_pos": np.where(np.isnan(ap), 0, 3), "attribute": grp}))
    return pd.concat(rows, ignore_index=True), np.asarray(images)


def test_bootstrap_counts_match_a_per_replicate_loop():
    w = bootstrap_counts(17, n_boot=50, seed=3)
    rng = np.random.default_rng(3)
    for r in range(50):
        assert np.array_equal(w[r], np.bincount(rng.integers(0, 17, 17), minlength=17))
    assert (w.sum(axis=1) == 17).all()


def test_bootstrap_map_matches_slow_loop():
    per_pair, images = _per_pair()
    n_boot, seed = 60, 11
    fast = bootstrap_map(per_pair, images, by="attribute", n_boot=n_boot, seed=seed)
    # point estimates are summarize's
    ref_point = summarize(per_pair, by="attribute")
    merged = fast.merge(ref_point, on=["method", "lambda", "attribute"], suffixes=("", "_ref"))
    assert len(merged) == len(ref_point) == len(fast)
    np.testing.assert_allclose(merged["map"], merged["map_ref"], rtol=0, atol=1e-9)
    # slow reference: per replicate, rebuild the resampled table (a drawn image brings all its pairs, once per
    # draw) and run the engine's summarize on it
    names = np.unique(images)
    rng = np.random.default_rng(seed)
    rows_of = {name: per_pair[per_pair["pair"].isin(np.flatnonzero(images == name))] for name in names}
    reps = []
    for _ in range(n_boot):
        drawn = names[rng.integers(0, len(names), len(names))]
        parts = [rows_of[name] for name in drawn]  # the same rows per draw as selecting them again
        reps.append(summarize(pd.concat(parts, ignore_index=True), by="attribute")
                    .set_index(["method", "lambda", "attribute"])["map"])
    rep = pd.concat(reps, axis=1)
    checked = 0
    for row in fast.to_dict("records"):
        key = [k for k in rep.index if k[0] == row["method"] and k[2] == row["attribute"]
               and (k[1] == row["lambda"] or (np.isnan(k[1]) and np.isnan(row["lambda"])))]
        vals = np.asarray(rep.loc[key[0]], dtype=float)
        vals = vals[~np.isnan(vals)]
        assert row["lo"] == pytest.approx(np.quantile(vals, 0.025), abs=1e-9)
        assert row["hi"] == pytest.approx(np.quantile(vals, 0.975), abs=1e-9)
        assert row["se"] == pytest.approx(np.std(vals, ddof=1), abs=1e-9)
        checked += 1
    assert checked == 2 * 4  # 2 methods × (3 groups + avg)
    assert fast.attrs["resampled"] == "query images" and fast.attrs["n_boot"] == n_boot


def test_bootstrap_hand_checked_two_images():
    # two query images, AP 1 and 0: each replicate's mAP is 0, 50 or 100 % with probability 1/4, 1/2, 1/4
    per_pair = pd.DataFrame({"pair": [0, 1], "method": "m", "lambda": np.nan, "ap": [1.0, 0.0], "n_pos": 1})
    out = bootstrap_map(per_pair, ["x", "y"], by=None, n_boot=20000, seed=0)
    assert out["map"].iat[0] == pytest.approx(50.0)
    assert out["lo"].iat[0] == 0.0 and out["hi"].iat[0] == 100.0
    assert out["se"].iat[0] == pytest.approx(np.sqrt(1250.0), rel=0.02)  # sd of a 2-draw mean of {0, 100}
    # the pairs of one image move together: one image with two pairs (AP 1, 1) vs one with (0, 0) is the same
    per_pair2 = pd.DataFrame({"pair": [0, 1, 2, 3], "method": "m", "lambda": np.nan, "ap": [1.0, 1.0, 0.0, 0.0],
                              "n_pos": 1})
    out2 = bootstrap_map(per_pair2, ["x", "x", "y", "y"], by=None, n_boot=20000, seed=0)
    assert out2["se"].iat[0] == pytest.approx(out["se"].iat[0], rel=1e-12)
    # ... while four independent images halve the variance
    out4 = bootstrap_map(per_pair2, ["w", "x", "y", "z"], by=None, n_boot=20000, seed=0)
    assert out4["se"].iat[0] == pytest.approx(np.sqrt(625.0), rel=0.03)


def test_paired_bootstrap_known_cases_and_slow_loop():
    per_pair, images = _per_pair(seed=4, methods=(("image", np.nan),))
    shifted = per_pair.assign(method="better", ap=per_pair["ap"] + 0.1)
    both = pd.concat([per_pair, shifted], ignore_index=True)
    res = paired_bootstrap(both, images, ("better", None), ("image", None), n_boot=200, seed=0)
    assert res["delta"] == pytest.approx(10.0) and res["lo"] == pytest.approx(10.0) and res["hi"] == pytest.approx(10.0)
    assert res["p_value"] == pytest.approx(1 / 201) and res["wins"] == 1.0
    same = paired_bootstrap(both, images, ("image", None), ("image", None), n_boot=200, seed=0)
    assert same["delta"] == 0.0 and same["p_value"] == 1.0
    # noisy difference vs a slow per-replicate loop (mean over pairs)
    rng = np.random.default_rng(9)
    noisy = per_pair.assign(method="noisy", ap=np.clip(per_pair["ap"] + rng.normal(0.02, 0.2, len(per_pair)), 0, 1))
    both = pd.concat([per_pair, noisy], ignore_index=True)
    res = paired_bootstrap(both, images, ("noisy", None), ("image", None), n_boot=80, seed=5)
    names = np.unique(images)
    r = np.random.default_rng(5)
    a, b = noisy.set_index("pair")["ap"], per_pair.set_index("pair")["ap"]
    deltas = []
    for _ in range(80):
        drawn = names[r.integers(0, len(names), len(names))]
        pairs = np.concatenate([np.flatnonzero(images == n) for n in drawn])
        deltas.append(100 * (np.nanmean(a.loc[pairs].to_numpy()) - np.nanmean(b.loc[pairs].to_numpy())))
    deltas = np.asarray(deltas)
    assert res["lo"] == pytest.approx(np.quantile(deltas, 0.025), abs=1e-9)
    assert res["hi"] == pytest.approx(np.quantile(deltas, 0.975), abs=1e-9)
    assert res["p_value"] == pytest.approx((1 + (deltas <= 0).sum()) / 81)
    assert res["delta"] == pytest.approx(100 * (np.nanmean(a) - np.nanmean(b)))
    # grouped: the mean over groups, as the leaderboard's avg
    g = paired_bootstrap(both, images, ("noisy", None), ("image", None), by="attribute", n_boot=80, seed=5)
    sa = summarize(noisy, by="attribute")
    sb = summarize(per_pair, by="attribute")
    assert g["delta"] == pytest.approx(sa["map"].iat[-1] - sb["map"].iat[-1])
    with pytest.raises(ParameterError, match="no rows"):
        paired_bootstrap(both, images, ("missing", None), ("image", None))


def test_ci_table_layout():
    from rscir_kit.stats import ci_table

    per_pair, images = _per_pair()
    ci = bootstrap_map(per_pair, images, by="attribute", n_boot=50, seed=0)
    wide = ci_table(ci, by="attribute")
    assert set(wide.columns[:-1]) == {"a", "b", "c"} and wide.columns[-1] == "avg"
    assert list(wide.index) == ["Image", "WeiCom (λ=0.5)"]
    row = ci[(ci["method"] == "image") & (ci["attribute"] == "avg")].iloc[0]
    assert wide.loc["Image", "avg"] == f"{row['map']:.2f} [{row['lo']:.2f}, {row['hi']:.2f}]"

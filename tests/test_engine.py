"""WeiCom's top matches keep their order even where float32 Φ would round them all to 1.0."""
import numpy as np
import pytest
import pandas as pd
import torch
from scipy import stats

from rscir_kit.engine import evaluate
from rscir_kit.features import ImageFeatures, TextFeatures
from rscir_kit.metrics import average_precision
from rscir_kit.normalization import normalize
from rscir_kit.queries import QuerySet


def _saturating_case():
    """One query whose 12 best matches have z > 5.5 in both modalities (float32 Φ = 1.0 for them)."""
    rng = np.random.default_rng(0)
    d, n = 256, 3000
    q, t = rng.standard_normal(d), rng.standard_normal(d)
    q, t = q / np.linalg.norm(q), t / np.linalg.norm(t)
    x = rng.standard_normal((n, d))
    # 12 near-duplicates of a blend of query and text: z-scores far above 5.4 in both modalities
    for k in range(12):
        x[k] = (0.6 + 0.02 * k) * q + 0.6 * t + 0.05 * rng.standard_normal(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[12] = x[1]  # a genuine tie too: a non-relevant copy of a positive, at a higher index
    feats = x.astype(np.float32)
    paths = [f"c/img{i:04d}.jpg" for i in range(n)]
    meta = {"model": "numerics-test"}
    archive = ImageFeatures(feats, paths, ["c"] * n, meta)
    archive_q = ImageFeatures(np.vstack([feats, q[None].astype(np.float32)]), paths + ["q/query.jpg"],
                              ["c"] * n + ["q"], meta)
    texts = TextFeatures(["blend"], t[None].astype(np.float32), meta)
    positives = np.array([1, 3, 5, 7, 9, 11, 13])
    qs = QuerySet("sat", pd.DataFrame({"query_path": ["q/query.jpg"], "text": ["blend"], "positive_id": [0]}),
                  [positives], np.array(paths))
    return feats, q, t, archive, archive_q, texts, positives, qs


def test_weicom_ranking_survives_cdf_saturation():
    feats, q, t, archive, archive_q, texts, positives, qs = _saturating_case()
    n = len(feats)
    s_img, s_txt = feats.astype(np.float64) @ q.astype(np.float32), feats.astype(np.float64) @ t.astype(np.float32)
    z = lambda s: (s - s.mean()) / s.std(ddof=1)  # noqa: E731
    assert z(s_img)[:12].min() > 5.5 and z(s_txt)[:12].min() > 5.5
    # float32 Φ really does saturate here: the top matches all tie at 1.0
    phi32 = normalize(torch.tensor(s_img, dtype=torch.float32), "weicom")
    assert int((phi32 == 1.0).sum()) >= 10
    rel = np.zeros(n, bool)
    rel[positives] = True
    out = evaluate(qs, archive, texts, methods=["weicom"], lambdas=[0.3, 0.7], query_features=archive_q,
                   progress=False)
    for lam in (0.3, 0.7):
        exact = -(lam * stats.norm.sf(z(s_txt)) + (1 - lam) * stats.norm.sf(z(s_img)))  # float64, same ranking
        assert out[out["lambda"] == lam].ap.item() == average_precision(exact, rel)


def test_explorer_and_engine_agree_on_ap_for_every_lambda():
    """The λ explorer's AP (one query, on the fly) equals the engine's for the same pair and λ."""
    from rscir_kit.explorer import LambdaExplorer

    rng = np.random.default_rng(4)
    n, d = 400, 32
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[:20] += 3 * x[0]  # a tight cluster: large z-scores at the top
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    meta = {"model": "numerics-test"}
    archive = ImageFeatures(x, [f"c/{i:03d}.jpg" for i in range(n)], ["c"] * n, meta)
    t = rng.standard_normal((1, d)).astype(np.float32)
    texts = TextFeatures(["with a pond"], t / np.linalg.norm(t), meta)
    qs = QuerySet("one", pd.DataFrame({"query_path": ["c/000.jpg"], "text": ["with a pond"], "positive_id": [0]}),
                  [np.arange(5, 40, 3)], archive.paths)
    lams = [0.0, 0.2, 0.5, 0.8, 1.0]
    engine = evaluate(qs, archive, texts, methods=["weicom"], lambdas=lams, progress=False)
    explorer = LambdaExplorer(archive, queries=qs, texts=texts)
    for lam in lams:
        state = explorer.set(query="c/000.jpg", text="with a pond", lam=lam)
        assert state.ap == pytest.approx(engine[engine["lambda"] == lam].ap.item(), rel=1e-12, abs=0)


def _official_reference_ap(feats, q, t, positives, lam, ks=()):
    """Slow reference written from the official code (utils.norm_cdf + evaluate.calculate_rankings), one query:
    float32 torch, Φ = 0.5·(1 + erf((s - mean) / (std·√2))) with the unbiased std over the archive, fused as
    (1-λ)·Φ_img + λ·Φ_txt in float32; ties (which the official argsort orders arbitrarily) by archive order."""
    X = torch.from_numpy(feats)
    s_img, s_txt = X @ torch.from_numpy(q.astype(np.float32)), X @ torch.from_numpy(t.astype(np.float32))

    def norm_cdf(m):
        mean, std = m.mean(dim=0, keepdim=True), m.std(dim=0, keepdim=True)
        return 0.5 * (1 + torch.erf((m - mean) / (std * torch.sqrt(torch.tensor(2.0)))))

    fused = ((1 - lam) * norm_cdf(s_img) + lam * norm_cdf(s_txt)).numpy()
    order = np.argsort(-fused.astype(np.float64), kind="stable")
    rel = np.zeros(len(feats), bool)
    rel[positives] = True
    hits = rel[order]
    pos = np.flatnonzero(hits) + 1
    ap = float(np.mean(np.arange(1, len(pos) + 1) / pos))
    return ap, fused, {k: int(hits[:k].sum()) for k in ks}


@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_official_numerics_reproduce_float32_cdf_saturation(backend):
    feats, q, t, archive, archive_q, texts, positives, qs = _saturating_case()
    lams = [0.0, 0.5, 1.0]
    out = evaluate(qs, archive, texts, methods=["image", "text", "weicom"], lambdas=lams, query_features=archive_q,
                   numerics="official", ks=(5,), progress=False, backend=backend)
    assert out.attrs["numerics"] == "official"
    for lam in lams:
        ref, fused, hits = _official_reference_ap(feats, q, t, positives, lam, ks=(5,))
        row = out[out["lambda"] == lam]
        assert row.ap.item() == pytest.approx(ref, rel=1e-12, abs=0)
        assert row["p@5"].item() == hits[5] / 5
    ref0, fused0, _ = _official_reference_ap(feats, q, t, positives, 0.0)
    assert int((fused0 == fused0.max()).sum()) >= 10  # the saturation ties are really there...
    image_only = out[out.method == "image"].ap.item()
    assert out[out["lambda"] == 0.0].ap.item() != image_only  # ...and change λ=0 from image-only
    kit = evaluate(qs, archive, texts, methods=["weicom"], lambdas=[0.0], query_features=archive_q,
                   progress=False, backend=backend)
    assert kit.attrs["numerics"] == "kit" and kit.ap.item() == image_only  # kit: λ=0 is image-only


def test_ap_rounding_option_rounds_each_ap_in_percent_before_averaging():
    feats, q, t, archive, archive_q, texts, positives, qs = _saturating_case()
    two = QuerySet("two", pd.concat([qs.table, qs.table.assign(positive_id=1)], ignore_index=True),
                   [positives, positives[:3]], qs.archive_paths)
    exact = evaluate(two, archive, texts, methods=["weicom"], lambdas=[0.3], query_features=archive_q,
                     ks=(5,), progress=False)
    rounded = evaluate(two, archive, texts, methods=["weicom"], lambdas=[0.3], query_features=archive_q,
                       ks=(5,), ap_decimals=2, progress=False)
    assert rounded.attrs["ap_decimals"] == 2 and exact.attrs["ap_decimals"] is None
    for col in ("ap", "p@5", "r@5"):
        np.testing.assert_array_equal(rounded[col].to_numpy(), [round(100 * v, 2) / 100 for v in exact[col]])
    assert exact.ap.iloc[0] != rounded.ap.iloc[0]  # this AP has more than two decimals in %
    with pytest.raises(ValueError, match="ap_decimals"):
        evaluate(two, archive, texts, methods=["weicom"], query_features=archive_q, ap_decimals=-1, progress=False)
    with pytest.raises(ValueError, match="numerics"):
        evaluate(two, archive, texts, methods=["weicom"], query_features=archive_q, numerics="paper", progress=False)

"""The published WeiCom numbers: three sources kept apart (paper, README 2024-07-29, README current), transcribed
consistently (averages, best λ), and the check of which table a run is compared against."""
import numpy as np
import pandas as pd
import pytest

from rscir_kit import reference


@pytest.mark.parametrize("source", sorted(reference.SOURCES))
@pytest.mark.parametrize("model", sorted(reference.MODELS))
def test_table2_rows_and_averages(model, source):
    t = reference.table2(model, source)
    assert list(t["method"]) == ["text", "image", "average", "weicom", "weicom"]
    attrs = t[list(reference.ATTRIBUTES)].to_numpy()
    # The published averages are the mean of the six attributes (a transcription typo would break this);
    # the paper's own rounding leaves up to 0.022 (RemoteCLIP λ=0.6: mean 30.168, printed 30.19).
    np.testing.assert_allclose(attrs.mean(axis=1), t["avg"], atol=0.025)
    assert (t["source"] == source).all()


def test_three_sources_each_with_date_and_commit():
    s = reference.SOURCES
    assert set(s) == {"paper", "readme-2024-07", "readme-current"} and reference.DEFAULT_SOURCE == "readme-current"
    assert s["paper"].date == "2024-05" and "2405.15587" in s["paper"].title
    assert (s["readme-2024-07"].date, s["readme-2024-07"].commit[:7]) == ("2024-07-29", "0735034")
    assert (s["readme-current"].date, s["readme-current"].commit[:7]) == ("2024-09-17", "2a7c4c5")
    assert reference.table2("remoteclip-vit-l-14").loc[0, "source"] == "readme-current"  # the default


@pytest.mark.parametrize("model", sorted(reference.MODELS))
def test_sources_differ_exactly_in_existence_and_avg(model):
    paper, old, cur = (reference.table2(model, s) for s in ("paper", "readme-2024-07", "readme-current"))
    cols = list(reference.ATTRIBUTES) + ["avg"]
    pd.testing.assert_frame_equal(paper[cols], old[cols])  # the README of 2024-07-29 printed the paper's table
    same = [c for c in reference.ATTRIBUTES if c != "existence"]
    pd.testing.assert_frame_equal(paper[same], cur[same])
    assert (paper["existence"] != cur["existence"]).all() and (paper["avg"] != cur["avg"]).all()


def test_current_readme_values_spot_check():
    rc = reference.table2("remoteclip-vit-l-14", "readme-current")
    assert rc.loc[0, "existence"] == 6.98 and rc.loc[1, "existence"] == 13.10  # paper: 12.49, 9.29
    assert rc.loc[4, "avg"] == 30.13 and reference.table2("clip-vit-l-14").loc[4, "avg"] == 25.03
    assert reference.reference_lookup("clip-vit-l-14", "image", None, "existence") == 16.47
    assert reference.reference_lookup("clip-vit-l-14", "image", None, "existence", source="paper") == 13.50


def test_table2_values_spot_check():
    clip = reference.table2("clip-vit-l-14", "paper")
    assert clip.loc[4, "lambda"] == 0.3 and clip.loc[4, "color"] == 46.74 and clip.loc[4, "avg"] == 24.83
    rc = reference.table2("remoteclip-vit-l-14", "paper")
    assert rc.loc[0, "shape"] == 24.12 and np.isnan(rc.loc[0, "lambda"])
    assert reference.reference_lookup("remoteclip-vit-l-14", "weicom", 0.6, "avg", source="paper") == 30.19
    assert reference.reference_lookup("remoteclip-vit-l-14", "average", None, "color") == 23.67
    assert reference.reference_lookup("remoteclip-vit-l-14", "weicom", 0.4, "avg") is None


def test_table3_consistent_with_table2():
    t3 = reference.table3()
    assert list(t3.index) == [round(0.1 * i, 1) for i in range(11)]
    assert list(t3.columns) == list(reference.ATTRIBUTES) + ["avg"]
    # One decimal per cell: the average column agrees with the row mean within rounding.
    np.testing.assert_allclose(t3[list(reference.ATTRIBUTES)].mean(axis=1), t3["avg"], atol=0.07)
    # Table 3's λ=0.5 / 0.6 rows are Table 2(b)'s WeiCom rows at one decimal.
    rc = reference.table2("remoteclip-vit-l-14", "paper").set_index("lambda")
    for lam in (0.5, 0.6):
        np.testing.assert_allclose(t3.loc[lam].to_numpy(), rc.loc[lam, list(t3.columns)].to_numpy(dtype=float),
                                   atol=0.051)
    # The best average λ of Table 3 is 0.6 (30.2), as stated in the paper.
    assert t3["avg"].idxmax() == 0.6
    # λ=0 is image only, λ=1 text only: they match Table 2(b)'s unimodal rows.
    assert abs(t3.loc[0.0, "avg"] - 11.27) < 0.05 and abs(t3.loc[1.0, "avg"] - 14.44) < 0.05


def test_code_release_averages_per_readme():
    assert reference.code_release_avg("remoteclip-vit-l-14") == {0.5: 30.05, 0.6: 30.13}
    assert reference.code_release_avg("clip-vit-l-14", "readme-2024-07") == {0.5: 21.90, 0.3: 24.83}


@pytest.mark.parametrize("spec,key", [
    ("remoteclip-vit-l-14", "remoteclip-vit-l-14"),
    ("hf-hub:chendelong/RemoteCLIP-ViT-L-14", "remoteclip-vit-l-14"),
    ("ViT-L-14:openai", "clip-vit-l-14"),
    ("clip-vit-l-14", "clip-vit-l-14"),
    ("ViT-B-32:openai", None),
    ("ViT-L-14-336:openai", None),
    ("local-dir:/x/ucm-minilm-standin", None),
    (None, None),
])
def test_model_key(spec, key):
    assert reference.model_key(spec) == key


def test_paper_setup_needs_patterncom():
    assert reference.paper_setup_key("patterncom", "ViT-L-14:openai") == "clip-vit-l-14"
    assert reference.paper_setup_key("ucmcom", "ViT-L-14:openai") is None
    with pytest.raises(KeyError, match="no published"):
        reference.table2("ViT-B-32:openai")


def test_compare_run_names_every_difference():
    paper_meta = {"model": "remoteclip-vit-l-14", "model_name": "remoteclip-vit-l-14", "activation": "gelu",
                  "precision": "fp32", "numerics": "official"}
    cmp = reference.compare_run("patterncom", paper_meta)
    assert cmp.paper_setup and cmp.key == "remoteclip-vit-l-14" and cmp.source == "readme-current"
    assert "Paper setup" in cmp.describe() and "2024-09-17" in cmp.describe()
    assert reference.compare_run("patterncom", paper_meta, source="paper").reference.date == "2024-05"
    # the kit's default configuration of the same model is not the paper's setup, and says why
    default = dict(paper_meta, activation="quickgelu", precision="fp16", numerics="kit")
    cmp = reference.compare_run("patterncom", default)
    assert not cmp.paper_setup
    assert cmp.differences == ["activation quickgelu (paper: gelu)", "precision fp16 (paper: fp32)",
                               "numerics kit (paper: official)"]
    assert "context only" in cmp.describe()
    other = reference.compare_run("ucmcom", dict(paper_meta, model="local-dir:/x/standin", model_name="standin"))
    assert other.key is None and other.differences[:2] == ["dataset ucmcom (paper: patterncom)",
                                                          "model standin (paper: CLIP ViT-L/14 or RemoteCLIP ViT-L/14)"]
    assert "unrecorded" in " ".join(reference.compare_run("patterncom", {"model": "openai-vit-l-14"}).differences)

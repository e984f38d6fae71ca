"""R@K / mR arithmetic, text-to-text max over descriptions, oracle split, hybrid — hand-worked cases."""
import numpy as np
import pytest

from rscir_kit.errors import DataError
from rscir_kit.captioners import HFCaptioner, split_sentences, zero_shot_descriptions
from rscir_kit.retrieval import i2t_ranks, recall_at, t2i_ranks, text_image_recall
from rscir_kit.text_to_text import hybrid_scores, hybrid_sweep, max_over_descriptions, oracle_split

# 3 captions x 3 images; caption 0 -> image 0, caption 1 -> image 2, caption 2 -> image 1.
SIM = np.array([[0.9, 0.1, 0.5],
                [0.2, 0.3, 0.3],
                [0.1, 0.8, 0.9]])
CAP_IMG = np.array([0, 2, 1])


def test_t2i_ranks_with_tie_broken_by_archive_order():
    # caption 1: image 1 ties with the target image 2 and has the lower index -> rank 1
    assert t2i_ranks(SIM, CAP_IMG).tolist() == [0, 1, 1]


def test_i2t_ranks():
    # image 0 row (0.9, 0.2, 0.1): own caption 0 first; image 1 row (0.1, 0.3, 0.8): own caption 2 first;
    # image 2 row (0.5, 0.3, 0.9): own caption 1 after 0.5 and 0.9 -> rank 2
    assert i2t_ranks(SIM.T, CAP_IMG).tolist() == [0, 0, 2]


def test_text_image_recall_and_mr():
    r = text_image_recall(SIM, CAP_IMG, ks=(1, 2, 3))
    assert r["t2i_R@1"] == pytest.approx(100 / 3)
    assert r["t2i_R@2"] == pytest.approx(100.0)
    assert r["i2t_R@1"] == pytest.approx(200 / 3)
    assert r["i2t_R@2"] == pytest.approx(200 / 3)
    assert r["i2t_R@3"] == pytest.approx(100.0)
    assert r["mR"] == pytest.approx((100 / 3 + 100 + 100 + 200 / 3 + 200 / 3 + 100) / 6)
    assert (r["n_texts"], r["n_images"]) == (3, 3)


def test_image_hit_if_any_caption_matches():
    sim = np.array([[0.1, 0.0],    # caption 0 (image 0)
                    [0.9, 0.2],    # caption 1 (image 0)
                    [0.5, 0.15],   # caption 2 (image 1)
                    [0.3, 0.1]])   # caption 3 (image 1)
    cap_img = np.array([0, 0, 1, 1])
    # image 0 column (0.1, 0.9, 0.5, 0.3): its caption 0 is last but caption 1 first -> rank 0.
    # image 1 column (0.0, 0.2, 0.15, 0.1): best own caption (0.15) behind caption 1 -> rank 1.
    assert i2t_ranks(sim.T, cap_img).tolist() == [0, 1]
    r = text_image_recall(sim, cap_img, ks=(1,))
    # t2i ranks: 0, 0, 1 (0.5 > 0.15), 1 (0.3 > 0.1)
    assert r["t2i_R@1"] == pytest.approx(50.0)
    assert r["i2t_R@1"] == pytest.approx(50.0)


def test_i2t_needs_a_caption_per_image():
    with pytest.raises(DataError, match="no caption"):
        i2t_ranks(np.zeros((3, 2)), np.array([0, 0]))


def test_recall_at():
    assert recall_at(np.array([0, 3, 9, 10]), ks=(1, 5, 10)) == {1: 25.0, 5: 50.0, 10: 75.0}


def test_max_over_descriptions():
    sim = np.array([[0.1, 0.7, 0.3],
                    [0.9, 0.2, 0.4]])
    out = max_over_descriptions(sim, np.array([1, 0, 1]), 2)
    np.testing.assert_allclose(out, [[0.7, 0.3], [0.2, 0.9]])
    with pytest.raises(DataError, match="description"):
        max_over_descriptions(sim, np.array([1, 1, 1]), 2)


def test_oracle_split():
    caps = [["a", "b", "c"], ["d", "e", "f"]]
    descs, q, qi = oracle_split(caps)
    assert descs == [["a"], ["d"]] and q.tolist() == ["b", "c", "e", "f"] and qi.tolist() == [0, 0, 1, 1]
    descs, q, qi = oracle_split(caps, n_descriptions=2, offset=2)
    assert descs == [["c", "a"], ["f", "d"]] and q.tolist() == ["b", "e"] and qi.tolist() == [0, 1]
    with pytest.raises(DataError, match="oracle"):
        oracle_split([["a"]])


def test_hybrid_weicom_normalisation():
    # row (1, 2, 3): z = (-1, 0, 1) -> Phi = (0.1587, 0.5, 0.8413); the reversed row mirrors it.
    t2t = np.array([[1.0, 2.0, 3.0]])
    t2i = np.array([[3.0, 2.0, 1.0]])
    np.testing.assert_allclose(hybrid_scores(t2t, t2i, 1.0), [[0.158655, 0.5, 0.841345]], atol=1e-5)
    np.testing.assert_allclose(hybrid_scores(t2t, t2i, 0.5), [[0.5, 0.5, 0.5]], atol=1e-6)
    with pytest.raises(ValueError):
        hybrid_scores(t2t, t2i, 1.5)


def test_hybrid_sweep_can_beat_both():
    # 3 captions x 3 images. Caption 0 (image 0): text-to-text right by a wide margin, text-to-image wrong
    # by a hair; caption 1 (image 1): the mirror image. Normalised and fused at lambda 0.5 both are right:
    # caption 0 -> image 0: (Phi(1.155) + Phi(0.560)) / 2 = 0.794 vs image 1: (Phi(-0.577) + Phi(0.595)) / 2 = 0.503.
    # Caption 2 (image 2, needed so every image has a caption) is right for both.
    cap_img = np.array([0, 1, 2])
    t2t = np.array([[1.0, 0.0, 0.0], [0.5, 0.49, 0.0], [0.0, 0.0, 1.0]])
    t2i = np.array([[0.49, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    table = hybrid_sweep(t2t, t2i, cap_img, [0.0, 0.5, 1.0], ks=(1,))
    assert table.loc[0.0, "t2i_R@1"] == pytest.approx(200 / 3)
    assert table.loc[1.0, "t2i_R@1"] == pytest.approx(200 / 3)
    assert table.loc[0.5, "t2i_R@1"] == 100.0
    np.testing.assert_allclose(hybrid_scores(t2t, t2i, 0.5)[0, :2], [0.794, 0.503], atol=2e-3)


def test_split_sentences():
    assert split_sentences("A road crosses. Many trees!  Cars? ") == ["A road crosses.", "Many trees!", "Cars?"]


def test_hf_captioner_parses_pipeline_outputs():
    def fake_chat(text, max_new_tokens, return_full_text):
        return [[{"generated_text": f"Image {i}. Has trees."}] for i, _ in enumerate(text)]

    cap = HFCaptioner("fake", pipe=fake_chat)
    assert cap(["im0", "im1"]) == [["Image 0.", "Has trees."], ["Image 1.", "Has trees."]]

    def fake_i2t(images, max_new_tokens):
        return [[{"generated_text": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "X y"}]}]
                for _ in images]

    cap = HFCaptioner("fake", task="image-to-text", pipe=fake_i2t, split=False)
    assert cap(["im"]) == [["X y"]]


class _FakeEncoder:
    """Texts -> fixed unit vectors from a table (unknown texts -> the last axis)."""

    def __init__(self, table, dim):
        self.table, self.dim = table, dim
        self.model_id = "fake"
        self.meta = {"model": "fake"}
        self.calls = 0

    def encode_texts(self, texts, batch_size=256):
        self.calls += 1
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            out[i] = self.table.get(t, np.eye(self.dim)[-1])
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_zero_shot_descriptions_pick_the_best_prompt():

    enc = _FakeEncoder({"an aerial image of sea.": [1, 0, 0], "an aerial image of road.": [0, 1, 0]}, 3)
    feats = np.array([[0.2, 0.9, 0.1], [0.8, 0.1, 0.0]])
    assert zero_shot_descriptions(feats, enc, ["sea", "road"]) == [["an aerial image of road."],
                                                                   ["an aerial image of sea."]]
    assert zero_shot_descriptions(feats, enc, ["sea", "road"], top_k=2)[1] == ["an aerial image of sea.",
                                                                                "an aerial image of road."]


def test_text_to_text_benchmark_on_a_tiny_set():
    from types import SimpleNamespace

    from rscir_kit.datasets.captions import CaptionSet
    from rscir_kit.analysis import beats_both, hybrid_summary
    from rscir_kit.text_to_text import text_to_text_benchmark

    cs = CaptionSet("tiny", np.array(["sea01", "road01"]), np.array(["test"] * 2),
                    [["blue water", "the sea"], ["a grey road", "the road"]])
    feats = SimpleNamespace(paths=np.array(["x/road01.jpg", "x/sea01.jpg"]), meta={"model": "fake"},
                            feats=np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32))
    # the CLIP-like encoder maps every caption to the sea image's direction: text->image gets only "sea" right
    clip = _FakeEncoder({}, 3)
    clip.table = {t: [1.0, 0.1, 0.0] for t in cs.texts}
    words = {"blue water": [1, 0, 0], "the sea": [1, 0.2, 0], "a grey road": [0, 1, 0], "the road": [0.2, 1, 0]}
    text = _FakeEncoder(words, 3)
    table = text_to_text_benchmark(cs, feats, clip, {"words": text}, [0.0, 1.0], ks=(1,))
    assert table.method.tolist() == ["text→image", "text-to-text", "hybrid", "hybrid"]
    t2i = table.iloc[0]
    # oracle, 2 rotations: 2 queries per rotation, each image answered by the one remaining caption
    assert (t2i.n_texts, t2i.n_images, t2i.n_rotations) == (2, 2, 2)
    assert t2i["t2i_R@1"] == 50.0
    assert table.iloc[1]["t2i_R@1"] == 100.0 and table.iloc[1]["i2t_R@1"] == 100.0
    assert text.calls <= 4  # embeddings cached across rotations
    summary = hybrid_summary(table, metric="t2i_R@1")
    assert summary.loc["hybrid weicom (words), best λ", "lambda"] == 1.0
    bb = beats_both(table)
    assert (bb["λ where hybrid > both"] == "").all()  # the hybrid only ties text-to-text here
    # given descriptions: every caption is a query, one round
    table = text_to_text_benchmark(cs, feats, clip, {"words": text}, [0.5], descriptions=[["the sea"], ["the road"]],
                                   ks=(1,))
    assert table.iloc[0].n_texts == 4 and table.iloc[0].n_rotations == 1


def test_tie_modes_on_exact_ties():
    # image 0 has captions 0, 1; image 1 has caption 2. Image 0's row ties everything at 0.5.
    # text->image: caption 0 row (0.5, 0.5) ties its target 0 with image 1; caption 1 row (0.5, 0.5) too;
    # caption 2 row (0.5, 0.5): target 1 tied with image 0.
    sim = np.full((3, 2), 0.5)
    cap_img = np.array([0, 0, 1])
    stable = text_image_recall(sim, cap_img, ks=(1, 2))
    # stable: lower index first -> captions 0, 1 hit at 1, caption 2 misses; image 0 hits, image 1 (caption 2
    # behind 0 and 1) misses at 1 and 2
    assert stable["t2i_R@1"] == pytest.approx(200 / 3) and stable["i2t_R@1"] == 50.0 and stable["i2t_R@2"] == 50.0
    exp = text_image_recall(sim, cap_img, ks=(1, 2), ties="expected")
    assert exp["t2i_R@1"] == pytest.approx(50.0)   # each caption: 1 of 2 tied images first
    # image 0: 2 own of 3 tied -> P(hit@1) = 2/3, P(hit@2) = 1 - C(1,2)/C(3,2) = 1;
    # image 1: 1 own of 3 -> P(hit@1) = 1/3, P(hit@2) = 1 - C(2,2)/C(3,2) = 2/3
    assert exp["i2t_R@1"] == pytest.approx(100 * (2 / 3 + 1 / 3) / 2)
    assert exp["i2t_R@2"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    # rounding-level differences (BLAS) count as ties too
    noisy = sim + 1e-13 * np.arange(6).reshape(3, 2)
    assert text_image_recall(noisy, cap_img, ks=(1, 2), ties="expected") == exp
    assert text_image_recall(sim, cap_img, ks=(1,), ties="optimistic")["i2t_R@1"] == 100.0
    assert text_image_recall(sim, cap_img, ks=(1,), ties="pessimistic")["i2t_R@1"] == 0.0


def test_tie_modes_agree_without_ties():
    r = {t: text_image_recall(SIM + np.arange(9).reshape(3, 3) * 1e-3, CAP_IMG, ks=(1, 2, 3), ties=t)
         for t in ("stable", "expected", "optimistic", "pessimistic")}
    assert r["stable"] == r["expected"] == r["optimistic"] == r["pessimistic"]

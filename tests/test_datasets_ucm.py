"""UCM images / multi-labels / captions and the caption-set reader: hand-made files and the real data."""
import json

import numpy as np
import pytest

from rscir_kit.datasets.captions import CaptionSet, load_caption_set
from rscir_kit.datasets.ucm import (UCM_CLASSES, UCM_LABELS, UCMCaptions, UCMImages, UCMMultiLabel, image_class,
                                    ucm_name_from_number)
from rscir_kit.errors import DataError
from rscir_kit.names import match_names


def _write_labels(path, rows, labels=("cars", "trees")):
    path.write_text("IMAGE\\LABEL\t" + "\t".join(labels) + "\n" + "".join(r + "\n" for r in rows))
    return path


def test_multilabel_parse(tmp_path):
    p = _write_labels(tmp_path / "m.tsv", ["beach01\t0\t1", "beach02\t1\t1"])
    ml = UCMMultiLabel(path=p)
    assert ml.names.tolist() == ["beach01", "beach02"] and ml.labels == ("cars", "trees")
    assert ml.has("cars").tolist() == [False, True]
    assert ml.classes.tolist() == ["beach", "beach"]
    assert ml.labels_of("beach01") == ["trees"]
    with pytest.raises(DataError, match="unknown label"):
        ml.has("sea")


@pytest.mark.parametrize("row, message", [("beach01\t0", r"m.tsv:3: expected 3"),
                                          ("beach01\t0\t2", r"m.tsv:3: label values must be 0 or 1")])
def test_multilabel_bad_rows_name_the_line(tmp_path, row, message):
    p = _write_labels(tmp_path / "m.tsv", ["beach00\t0\t1", row])
    with pytest.raises(DataError, match=message):
        UCMMultiLabel(path=p)


def test_missing_files_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="download=True"):
        UCMMultiLabel(root=tmp_path)
    with pytest.raises(DataError, match="UCMerced_LandUse.zip"):
        UCMImages(root=tmp_path)
    with pytest.raises(DataError, match="RSICD_optimal"):
        UCMCaptions(root=tmp_path, download=True)


def test_ucm_number_mapping():
    assert ucm_name_from_number(1) == "agricultural00"
    assert ucm_name_from_number(100) == "agricultural99"
    assert ucm_name_from_number(101) == "airplane00"
    assert ucm_name_from_number(2100) == "tenniscourt99"
    with pytest.raises(DataError):
        ucm_name_from_number(2101)


def test_ucm_names_match_by_stem():
    paths = ["images/beach/beach01.jpg", "images/beach/beach00.tif"]
    assert match_names(paths, ["beach00", "beach01"], by="stem").tolist() == [1, 0]
    with pytest.raises(DataError, match="beach07"):
        match_names(paths, ["beach07"], by="stem")


KARPATHY = {"dataset": "rsitmd", "images": [
    {"filename": "a_1.tif", "imgid": 0, "split": "train",
     "sentences": [{"raw": " A road . ", "tokens": ["a", "road"]}, {"raw": "", "tokens": ["two", "cars"]}]},
    {"filename": "b_2.tif", "imgid": 1, "split": "test", "sentences": [{"raw": "Trees ."}]},
    {"filename": "c_3.tif", "imgid": 2, "split": "test", "sentences": [{"raw": "Sea"}, {"raw": "Sand"}]},
]}


def test_karpathy_reader(tmp_path):
    p = tmp_path / "dataset_rsitmd.json"
    p.write_text(json.dumps(KARPATHY))
    cs = load_caption_set(p)
    assert cs.name == "rsitmd" and len(cs) == 3
    assert cs.texts.tolist() == ["A road .", "two cars", "Trees .", "Sea", "Sand"]
    assert cs.caption_image.tolist() == [0, 0, 1, 2, 2]
    test = cs.split("test")
    assert test.images.tolist() == ["b_2.tif", "c_3.tif"] and test.caption_image.tolist() == [0, 1, 1]
    assert cs.split_sizes() == {"test": 2, "train": 1}
    with pytest.raises(DataError, match="no image in split"):
        cs.split("val")


def test_original_ucm_captions_json_is_mapped_to_ucm_names(tmp_path):
    data = {"dataset": "ucm", "images": [
        {"filename": "101.tif", "split": "test", "sentences": [{"raw": "planes ."}]},
        {"filename": "1.tif", "split": "train", "sentences": [{"raw": "farm ."}]}]}
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    cs = UCMCaptions(root=tmp_path).captions
    assert cs.images.tolist() == ["airplane00", "agricultural00"]
    assert cs.split("test").texts.tolist() == ["planes ."]


def test_caption_set_rejects_image_without_captions():
    with pytest.raises(DataError, match="without any caption"):
        CaptionSet("x", np.array(["a"]), np.array(["test"]), [[]])


# ----------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_ucm_images(shared_data):
    im = UCMImages(shared_data / "ucm")
    assert len(im) == 2100 and sorted(set(im.classes)) == sorted(UCM_CLASSES)
    assert all(image_class(n) == c for n, c in zip(im.names, im.classes))
    assert im.path_of(["airplane07"]).tolist() == ["airplane/airplane07.jpg"]
    assert all(f.is_file() for f in im.files()[:5])


@pytest.mark.realdata
def test_real_multilabels(shared_data):
    ml = UCMMultiLabel(shared_data / "ucm")
    assert len(ml) == 2100 and ml.labels == UCM_LABELS and ml.matrix.shape == (2100, 17)
    counts = ml.counts()
    assert (counts.sum(axis=1) > 0).all()
    # every image carries at least one label in this annotation
    assert ml.matrix.any(axis=1).all()


@pytest.mark.realdata
def test_real_captions_split(shared_data):
    cap = UCMCaptions(shared_data / "ucm")
    assert cap.captions.split_sizes() == {"train": 1680, "val": 110, "test": 210}
    test = cap.split("test")
    assert len(test.texts) == 5 * 210
    assert set(test.images) <= set(UCMImages(shared_data / "ucm").names)

"""Dataset layout detection and dataset.json validation."""

from __future__ import annotations

import json

import pytest

from segkit import DataError
from segkit.data import read_dataset, read_dataset_info


def test_msd_layout_info(make_msd):
    root = make_msd(channels=2, suffix=".nii")
    ds = read_dataset(root)
    assert ds.info.layout == "msd"
    assert ds.info.num_channels == 2
    assert ds.info.num_classes == 3
    assert ds.info.channel_names == ["MRI", "MR1"]
    assert ds.info.label_names == {0: "class0", 1: "class1", 2: "class2"}
    assert ds.info.num_training == 3
    assert [c.case_id for c in ds.training] == ["case_00", "case_01", "case_02"]
    assert all(len(c.images) == 1 for c in ds.training)


def test_nnunet_layout_info(make_nnunet):
    ds = read_dataset(make_nnunet(channels=2))
    assert ds.info.layout == "nnunet"
    assert ds.info.channel_names == ["CT", "T2"]
    assert ds.info.label_names == {0: "background", 1: "liver", 2: "tumour"}
    assert ds.info.num_training == 3
    case = ds.training[0]
    assert case.case_id == "pt000"
    assert [p.name for p in case.images] == ["pt000_0000.nii.gz", "pt000_0001.nii.gz"]
    assert [c.case_id for c in ds.test] == ["new000"]


def test_missing_root_and_dataset_json(tmp_path):
    with pytest.raises(DataError, match="does not exist.*data.root=.*segkit make-demo"):
        read_dataset_info(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"dataset.json is missing.*data.root="):
        read_dataset_info(tmp_path / "empty")


def test_listed_file_missing(make_msd):
    root = make_msd()
    (root / "labelsTr" / "case_01.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case_01.nii.gz: listed for case 'case_01'.*Fix"):
        read_dataset(root)


def test_nnunet_channel_file_missing(make_nnunet):
    root = make_nnunet()
    (root / "imagesTr" / "pt001_0001.nii.gz").unlink()
    with pytest.raises(DataError, match="pt001_0001.nii.gz"):
        read_dataset(root)


def test_nnunet_num_training_mismatch(make_nnunet):
    root = make_nnunet()
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] = 7
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="numTraining is 7 but"):
        read_dataset(root)


def test_unknown_layout_and_region_labels(make_nnunet):
    root = make_nnunet()
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["whole"] = [1, 2]
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="'regions_class_order' is missing"):
        read_dataset(root)  # a region dataset (tests/data/test_data_regions.py) needs the order
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "bg"}}))
    with pytest.raises(DataError, match="neither 'modality'"):
        read_dataset(root)


def _edit(root, change) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    change(meta)
    (root / "dataset.json").write_text(json.dumps(meta))


def test_duplicate_case_ids(make_msd, tmp_path):
    root = make_msd()
    # same file name in another folder: same case id, same cache and prediction names
    (root / "imagesTr" / "more").mkdir()
    (root / "imagesTr" / "case_00.nii.gz").rename(root / "imagesTr" / "more" / "case_01.nii.gz")
    _edit(root, lambda m: m["training"][0].update(image="./imagesTr/more/case_01.nii.gz"))
    with pytest.raises(DataError, match=r"two training cases have the id 'case_01'.*overwrite"):
        read_dataset(root)


def test_duplicate_label_values(make_nnunet):
    root = make_nnunet()
    _edit(root, lambda m: m.update(labels={"background": 0, "liver": 1, "tumour": 1}))
    with pytest.raises(DataError, match=r"labels 'liver' and 'tumour' both have the value 1"):
        read_dataset(root)


def test_duplicate_json_key(make_msd):
    root = make_msd()
    text = (root / "dataset.json").read_text()
    (root / "dataset.json").write_text(text.replace('"2": "class2"', '"2": "class2", "2": "x"'))
    with pytest.raises(DataError, match=r"key '2' appears twice in one object \('class2' and 'x'"):
        read_dataset(root)


@pytest.mark.parametrize(
    ("layout", "change", "message"),
    [
        ("msd", lambda m: m["training"][0].update(image=5), r"training\[0\].image must be a file"),
        ("msd", lambda m: m["training"][1].update(label=None), r"training\[1\].label must be"),
        ("msd", lambda m: m.update(test="./imagesTs/x.nii.gz"), r"'test' must be a list of image"),
        ("msd", lambda m: m.update(test=[7]), r"test\[0\] must be a file path .* got 7"),
        ("msd", lambda m: m.update(modality={"0": 5}), r"'modality' values must be names"),
        ("nnunet", lambda m: m.update(numTraining="three"), r"numTraining must be a whole number"),
        ("nnunet", lambda m: m.update(channel_names={"0": ["CT"]}), r"'channel_names' values must"),
    ],
    ids=["image_int", "label_null", "test_string", "test_int", "modality_int",
         "num_training_str", "channel_list"],
)  # fmt: skip
def test_malformed_dataset_json_fields(make_msd, make_nnunet, layout, change, message):
    root = make_msd() if layout == "msd" else make_nnunet()
    _edit(root, change)
    with pytest.raises(DataError, match=rf"dataset.json: {message}"):
        read_dataset(root)

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
    with pytest.raises(DataError, match="region-based"):
        read_dataset(root)
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "bg"}}))
    with pytest.raises(DataError, match="neither 'modality'"):
        read_dataset(root)

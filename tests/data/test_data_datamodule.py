"""SegDataModule: the batch contract the training code relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

import segkit.data.datamodule as dm_mod
from segkit import ConfigError, DataError
from segkit.config import compose
from segkit.data import BatchAugment, DatasetInfo, Preprocessor, SegDataModule, make_demo
from segkit.data.datamodule import load_or_make_splits, make_splits

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"


class _FakeTrainer:
    def __init__(self, training: bool) -> None:
        self.training = training


def _dm(root, tmp_path, **kw):
    args = dict(
        root=root,
        patch_size=[21, 19, 11],
        batch_size=3,
        num_workers=0,
        num_folds=5,
        samples_per_epoch=6,
        cache_dir=tmp_path / "cache",
    )
    return SegDataModule(**{**args, **kw})


def test_dataset_info_and_missing_root(demo_root, tmp_path):
    info = _dm(demo_root, tmp_path).dataset_info()
    assert info == DatasetInfo(
        num_channels=1,
        num_classes=4,
        label_names={0: "background", 1: "bright", 2: "medium", 3: "textured"},
        channel_names=["MRI"],
        layout="msd",
        num_training=5,
    )
    with pytest.raises(DataError, match=r"nope does not exist.*data.root=.*segkit make-demo"):
        _dm(tmp_path / "nope", tmp_path).dataset_info()


def test_make_demo_if_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(dm_mod, "make_demo", lambda root: make_demo(root, num_cases=2))
    dm = _dm(tmp_path / "fresh", tmp_path, make_demo_if_missing=True, num_folds=2)
    assert dm.dataset_info().num_training == 2
    assert (tmp_path / "fresh" / "dataset.json").is_file()


def test_batch_contract(demo_root, tmp_path):
    dm = _dm(demo_root, tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_ids) == 4 and len(dm.val_ids) == 1
    assert not set(dm.train_ids) & set(dm.val_ids)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2
    batch = batches[0]
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (3, 1, 21, 19, 11) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (3, 1, 21, 19, 11) and batch["label"].dtype == torch.uint8
    val = list(dm.val_dataloader())
    assert len(val) == 1
    item = val[0]
    assert item["case"] == dm.val_ids
    shape = item["image"].shape
    assert shape[:2] == (1, 1) and item["label"].shape == (1, 1, *shape[2:])
    assert item["label"].dtype == torch.int64 and item["image"].dtype == torch.float32
    assert all(n % 2 == 1 for n in shape[2:])  # the case's own odd size, not the patch's


def test_splits_saved_and_reused(demo_root, tmp_path):
    dm = _dm(demo_root, tmp_path, fold=2)
    dm.prepare_data()
    dm.setup("fit")
    path = dm.cache_path / "splits.json"
    splits = json.loads(path.read_text())
    assert len(splits) == 5 and sorted(c for f in splits for c in f["val"]) == sorted(
        dm.train_ids + dm.val_ids
    )
    assert dm.val_ids == splits[2]["val"]
    splits[2]["val"], splits[3]["val"] = splits[3]["val"], splits[2]["val"]
    for k in (2, 3):
        splits[k]["train"] = [c for c in dm.train_ids + dm.val_ids if c not in splits[k]["val"]]
    path.write_text(json.dumps(splits))
    again = _dm(demo_root, tmp_path, fold=2)
    again.prepare_data()
    again.setup("fit")
    assert again.val_ids == splits[2]["val"]  # the user's edited split is kept
    with pytest.raises(ConfigError, match="data.fold=5"):
        _dm(demo_root, tmp_path, fold=5)


def test_edited_split_with_another_fold_count_is_not_overwritten(demo_root, tmp_path):
    dm = _dm(demo_root, tmp_path)
    dm.prepare_data()
    path = dm.cache_path / "splits.json"
    ids = sorted(dm._prepared.case_ids)
    mine = [{"train": ids[1:], "val": ids[:1]}, {"train": ids[:-2], "val": ids[-2:]}]
    path.write_text(json.dumps(mine))
    with pytest.raises(DataError, match=r"holds 2 folds that were edited.*data.num_folds=5.*"
                       r"Fix: set data.num_folds=2"):  # fmt: skip
        dm.setup("fit")
    assert json.loads(path.read_text()) == mine
    used = _dm(demo_root, tmp_path, num_folds=2, fold=1)
    used.prepare_data()
    used.setup("fit")
    assert (used.train_ids, used.val_ids) == (ids[:-2], ids[-2:])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"train": ["a"], "val": ', r"is not valid JSON"),
        ('{"train": [], "val": []}', r"must be a list of folds"),
        ('[{"train": ["case_000"]}]', r"must be a list of folds"),
    ],
    ids=["truncated", "not_a_list", "no_val"],
)
def test_corrupt_splits_json(demo_root, tmp_path, text, message):
    dm = _dm(demo_root, tmp_path)
    dm.prepare_data()
    (dm.cache_path / "splits.json").write_text(text)
    with pytest.raises(DataError, match=rf"splits.json: {message}.*Fix: correct the file"):
        dm.setup("fit")


def test_split_checks(tmp_path):
    ids = [f"c{i}" for i in range(6)]
    path = tmp_path / "splits.json"
    own3 = make_splits(ids, num_folds=3)
    path.write_text(json.dumps(own3))
    # segkit's own split for another fold count is remade: nothing chosen by hand is lost
    assert load_or_make_splits(path, ids, num_folds=2) == make_splits(ids, num_folds=2)
    assert json.loads(path.read_text()) == make_splits(ids, num_folds=2)
    bad = [{"train": ["c0", "x9"], "val": ["c1"]}, {"train": ["c1"], "val": ["c0"]}]
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"names case\(s\) \['x9'\] that are not training"):
        load_or_make_splits(path, ids, num_folds=2)
    bad[0]["train"] = ["c0", "c1"]
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"fold 0 puts \['c1'\] in both train and val"):
        load_or_make_splits(path, ids, num_folds=2)


def test_augment_only_while_training(demo_root, tmp_path):
    dm = _dm(
        demo_root,
        tmp_path,
        augment={
            "p_flip": 1.0,
            "p_rotate": 0.0,
            "p_scale": 0.0,
            "p_noise": 0.0,
            "p_blur": 0.0,
            "p_brightness": 0.0,
            "p_contrast": 0.0,
            "p_gamma": 0.0,
        },
    )
    assert isinstance(dm.augment, BatchAugment)
    image = torch.randn(2, 1, 5, 6, 7)
    label = torch.randint(0, 4, (2, 1, 5, 6, 7))

    def run():
        return dm.on_after_batch_transfer({"image": image, "label": label}, 0)

    assert torch.equal(run()["image"], image)  # no trainer attached
    dm.trainer = _FakeTrainer(training=False)
    assert torch.equal(run()["image"], image)
    dm.trainer = _FakeTrainer(training=True)
    out = run()
    assert torch.equal(out["image"], image.flip((2, 3, 4)))
    assert torch.equal(out["label"], label.flip((2, 3, 4)))


def test_preprocessor_and_checkpoint_state(demo_root, tmp_path):
    dm = _dm(demo_root, tmp_path)
    with pytest.raises(DataError, match="prepare_data"):
        _ = dm.preprocessor
    dm.prepare_data()
    state = dm.state_dict()
    restored = Preprocessor.from_dict(json.loads(json.dumps(state["preprocessor"])))
    assert restored == dm.preprocessor
    assert restored.target_spacing == (1.0, 1.0, 2.5)
    fresh = _dm(demo_root, tmp_path)
    fresh.load_state_dict(state)
    assert fresh.preprocessor == dm.preprocessor


def test_2d_patches(demo_root, tmp_path):
    dm = _dm(demo_root, tmp_path, patch_size=[23, 17], batch_size=2, samples_per_epoch=2)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 23, 17) and batch["label"].shape == (2, 1, 23, 17)
    assert dm.slice_axis == 2  # the 2.5 mm axis


@pytest.mark.parametrize("name", ["demo", "msd"])
def test_hydra_configs_instantiate(name, tmp_path):
    # composed as train.py composes it (msd.yaml and demo.yaml have defaults lists)
    overrides = [f"data={name}", f"paths.data_dir={tmp_path}"]
    if name == "msd":
        overrides.append(f"data.root={tmp_path / 'mine'}")
    dm = instantiate(compose(overrides).data)
    assert isinstance(dm, SegDataModule)
    assert dm.patch_size in ((48, 48, 32), (128, 128, 128))
    assert isinstance(dm.augment, BatchAugment)
    if name == "demo":
        assert dm.root == tmp_path / "demo" and dm.make_demo_if_missing

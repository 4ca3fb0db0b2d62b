"""The cache key follows the data: a replaced image gives a new cache, not stale arrays."""

import os
import shutil

from segkit.data.cache import preprocess_dataset
from segkit.data.datamodule import SegDataModule
from segkit.data.demo import make_demo


def test_replacing_an_image_invalidates_the_cache(tmp_path):
    root = make_demo(tmp_path / "demo", num_cases=3, seed=1)
    first = preprocess_dataset(root, cache_dir=tmp_path / "cache", num_workers=0, progress=False)
    again = preprocess_dataset(root, cache_dir=tmp_path / "cache", num_workers=0, progress=False)
    assert again.cache_dir == first.cache_dir
    for sub in ("imagesTr", "labelsTr"):  # case 0 replaced by case 1 under the same names
        files = sorted((root / sub).iterdir())
        shutil.copyfile(files[1], files[0])
        os.utime(files[0], ns=(1, 1))
    changed = preprocess_dataset(root, cache_dir=tmp_path / "cache", num_workers=0, progress=False)
    assert changed.cache_dir != first.cache_dir


def test_demo_is_generated_only_at_the_demo_path(tmp_path):
    elsewhere = SegDataModule(
        root=tmp_path / "Task99",
        patch_size=[16, 16, 16],
        make_demo_if_missing=str(tmp_path / "demo"),
    )
    assert not elsewhere.make_demo_if_missing
    here = SegDataModule(
        root=tmp_path / "demo", patch_size=[16, 16, 16], make_demo_if_missing=str(tmp_path / "demo")
    )
    assert here.make_demo_if_missing

"""The ResEnc and MedNeXt presets train on the demo data at sizes their references crash on."""

from __future__ import annotations

import json

import pytest

from segkit.config import compose
from segkit.training.run import train
from tests.utils import TINY


@pytest.mark.parametrize(
    ("preset", "patch"),
    # ResEnc's six stages take a minute on 2 CPU cores: in the longer run (pytest -m slow)
    [pytest.param("resenc", "[65,67,63]", marks=pytest.mark.slow), ("mednext_b", "[37,45,29]")],
)
def test_preset_trains_one_epoch_at_an_odd_patch(tmp_path, demo_data_dir, preset, patch):
    shrink = [o for o in TINY if not o.startswith(("model.", "data.patch_size", "trainer.max_"))]
    cfg = compose(
        [
            *shrink,
            f"model={preset}",
            "model.channels=4",  # the preset's topology, narrowed to run on a CPU in seconds
            "model.max_channels=8",
            f"data.patch_size={patch}",
            "trainer.max_epochs=1",
            "++trainer.limit_train_batches=1",
            "++trainer.limit_val_batches=1",
            f"paths.data_dir={demo_data_dir}",
            f"paths.output_dir={tmp_path}",
        ]
    )
    value, _ = train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "ok" and saved["epochs"] == 1 and saved["global_step"] == 1
    assert saved["patch_size"] == json.loads(patch)
    assert value is not None and 0.0 <= value <= 1.0

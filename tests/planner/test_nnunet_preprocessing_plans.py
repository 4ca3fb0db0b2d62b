"""nnU-Net plans files read as preprocessing settings (segkit.planner.nnunet_plans), checked
against nnU-Net's own reading of the same files (``PlansManager``/``ConfigurationManager``)."""

from __future__ import annotations

import copy
import json

import pytest

from segkit.data.nnunet_preprocess import Resampling
from segkit.errors import ConfigError
from segkit.planner.nnunet_plans import preprocessor_from_plans
from tests.planner.conftest import DATA

PROSTATE = DATA / "Dataset005_Prostate" / "nnUNetPlans.json"
HIPPO = DATA / "Dataset004_Hippocampus" / "nnUNetPlans.json"
RESENC = DATA / "Dataset005_Prostate" / "nnUNetResEncUNetLPlans.json"


def test_prostate_plans_as_written_by_nnunet():
    pre = preprocessor_from_plans(PROSTATE, "3d_fullres")
    assert pre.reader == "NibabelIOWithReorient"
    assert pre.transpose_forward == (0, 1, 2)
    assert pre.target_spacing == (3.6, 0.62, 0.62)
    assert pre.normalization == ("ZScoreNormalization",) * 2
    assert pre.use_mask_for_norm == (False, False)
    assert pre.data_resampling == Resampling(order=3, order_z=0, force_separate_z=None)
    assert pre.seg_resampling == Resampling(order=1, order_z=0, force_separate_z=None)
    assert pre.probabilities_resampling == Resampling(order=1, order_z=0, force_separate_z=None)
    assert pre.intensity_properties[1]["percentile_99_5"] == 900.0
    assert preprocessor_from_plans(PROSTATE, "2d").target_spacing == (0.62, 0.62)


@pytest.mark.parametrize("path", [PROSTATE, HIPPO, RESENC])
def test_settings_equal_nnunets_configuration_manager(path):
    handler = pytest.importorskip("nnunetv2.utilities.plans_handling.plans_handler")
    plans = json.loads(path.read_text())
    manager = handler.PlansManager(copy.deepcopy(plans))
    for name in plans["configurations"]:
        cm = manager.get_configuration(name)
        pre = preprocessor_from_plans(plans, name)
        assert pre.reader == manager.image_reader_writer_class.__name__
        assert list(pre.transpose_forward) == list(manager.transpose_forward)
        assert list(pre.target_spacing) == list(cm.spacing)
        assert list(pre.normalization) == list(cm.normalization_schemes)
        assert list(pre.use_mask_for_norm) == list(cm.use_mask_for_norm)
        for ours, kind in [
            (pre.data_resampling, "data"),
            (pre.seg_resampling, "seg"),
            (pre.probabilities_resampling, "probabilities"),
        ]:
            kw = cm.configuration[f"resampling_fn_{kind}_kwargs"]
            assert (ours.order, ours.order_z, ours.force_separate_z) == (
                kw["order"],
                kw["order_z"],
                kw["force_separate_z"],
            )
        props = manager.foreground_intensity_properties_per_channel
        assert [dict(p) for p in pre.intensity_properties] == [
            props[str(c)] for c in range(pre.num_channels)
        ]


def _edited(edit) -> dict:
    plans = json.loads(PROSTATE.read_text())
    edit(plans, plans["configurations"]["3d_fullres"])
    return plans


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p, c: c.update(preprocessor_name="MyPreprocessor"),
            "preprocessor_name='MyPreprocessor'.*DefaultPreprocessor",
        ),
        (
            lambda p, c: c.update(resampling_fn_data="resample_torch_fornnunet"),
            "resampling_fn_data='resample_torch_fornnunet'.*Fix",
        ),
        (
            lambda p, c: c.update(normalization_schemes=["MyNorm", "ZScoreNormalization"]),
            r"normalization_schemes\[0\]='MyNorm'",
        ),
        (lambda p, c: p.update(image_reader_writer="Tiff3DIO"), "image_reader_writer='Tiff3DIO'"),
        (lambda p, c: p.update(transpose_forward=[0, 0, 1]), "transpose_forward=.*permutation"),
        (lambda p, c: c.pop("use_mask_for_norm"), r"lacks \['use_mask_for_norm'\].*Fix"),
        (lambda p, c: c.update(use_mask_for_norm=[True]), "use_mask_for_norm has 1 entries for 2"),
        (
            lambda p, c: (
                c.update(normalization_schemes=["CTNormalization"] * 2),
                p["foreground_intensity_properties_per_channel"]["1"].pop("std"),
            ),
            r"foreground_intensity_properties_per_channel\['1'\] lacks \['std'\]",
        ),
    ],
)
def test_what_segkit_does_not_reproduce_is_refused_by_name(edit, message):
    with pytest.raises(ConfigError, match=message):
        preprocessor_from_plans(_edited(edit), "3d_fullres")


def test_a_missing_plans_file_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="no such file. Fix"):
        preprocessor_from_plans(tmp_path / "plans.json")

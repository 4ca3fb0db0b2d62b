"""Region-based labels: dataset.json parsing and its errors, conversions, region sampling
and the BraTS-like demo (region Dice: tests/inference/test_dice.py)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from segkit import ConfigError, DataError
from segkit.data import read_dataset_info
from segkit.data.demo import make_demo
from segkit.data.regions import Region, region_masks

BRATS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing": [3]}


def _edit(root, change) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    change(meta)
    (root / "dataset.json").write_text(json.dumps(meta))


def _regions(root, labels, order):
    def change(meta):
        meta["labels"] = labels
        if order is None:
            meta.pop("regions_class_order", None)
        else:
            meta["regions_class_order"] = order

    _edit(root, change)
    return read_dataset_info(root)


def test_nnunet_regions_are_read_in_channel_order(make_nnunet):
    info = _regions(make_nnunet(), BRATS, [1, 2, 3])
    assert info.regions == (
        Region("whole_tumor", (1, 2, 3)),
        Region("tumor_core", (2, 3)),
        Region("enhancing", (3,)),
    )
    assert info.regions_class_order == (1, 2, 3)
    # the label files hold 0..3; the network has one output per region
    assert (info.num_classes, info.num_outputs) == (4, 3)
    assert info.label_names == {0: "background", 1: "whole_tumor", 2: "tumor_core", 3: "enhancing"}
    assert info.describe_outputs() == (
        "outputs: 3 sigmoid regions (whole_tumor, tumor_core, enhancing); "
        "label map by regions_class_order [1, 2, 3]"
    )
    # an integer label beside lists is a one-value region (nnU-Net's rule)
    info = _regions(make_nnunet(), {"background": 0, "a": [1, 2], "b": 2}, [1, 2])
    assert info.regions == (Region("a", (1, 2)), Region("b", (2,)))


def test_plain_datasets_have_no_regions(make_nnunet):
    info = read_dataset_info(make_nnunet())
    assert info.regions == () and info.num_outputs == info.num_classes == 3
    assert info.describe_outputs() is None


@pytest.mark.parametrize(
    ("labels", "order", "message"),
    [
        # overlapping regions that do not nest in the given order (each value is still written
        # by the last region holding it, but "b" overwrites "a" without lying inside it)
        (
            {"background": 0, "a": [1, 2], "b": [2, 3], "c": [3]},
            [1, 2, 3],
            r"dataset.json: 'labels' regions \"a\": \[1, 2\] and \"b\": \[2, 3\] overlap "
            r"without nesting.*also holds \[3\].*Fix: list the regions from the outermost",
        ),
        # the inner region listed first: the outer one would overwrite it
        (
            {"background": 0, "core": [2, 3], "whole": [1, 2, 3]},
            [3, 1],
            r"'labels' regions \"core\": \[2, 3\] and \"whole\": \[1, 2, 3\] overlap without "
            r"nesting",
        ),
        # a label value that is not a class of the label files (gap at 3)
        (
            {"background": 0, "whole": [1, 2, 4], "core": [2, 4], "enh": [4]},
            [1, 2, 4],
            r"'labels' \"whole\": \[1, 2, 4\] names label value 4, which is not a class of "
            r"the label files.*no region holds \[3\].*Fix: renumber",
        ),
        (
            {"background": 0, "whole": [1, 2], "x": [0, 1]},
            [1, 2],
            r"'labels' \"x\": \[0, 1\] holds 0; regions are made of foreground label values",
        ),
        (
            {"background": 0, "whole": [], "x": [1]},
            [1, 1],
            r"'labels' \"whole\": \[\]: a region is a non-empty list of integer label values",
        ),
        (
            {"background": 0, "whole": [1, "2"]},
            [1],
            r"a region is a non-empty list of integer label values",
        ),
        (
            {"whole": [1, 2], "core": [2]},
            [1, 2],
            r"'labels' has regions but no background 0\. Fix: add \"background\": 0",
        ),
        # regions_class_order missing / mismatched
        (
            BRATS,
            None,
            r"dataset.json: 'regions_class_order' is missing; it is required with regions.*"
            r"Fix: add e.g. \"regions_class_order\": \[3, 3, 3\]",
        ),
        (
            BRATS,
            [1, 2],
            r"'regions_class_order' has 2 entries for 3 regions \(whole_tumor \[1, 2, 3\], "
            r"tumor_core \[2, 3\], enhancing \[3\]\).*Fix: give 3 values",
        ),
        (BRATS, [1, 2, 2], r"'regions_class_order' \[1, 2, 2\] writes the value 2 for two"),
        (BRATS, "1,2,3", r"'regions_class_order' must be a list of integer label values"),
        (
            BRATS,
            [1, 4, 3],
            r"'regions_class_order'\[1\] = 4 is not a value of region \"tumor_core\" \[2, 3\]",
        ),
        # the core writes 3, which the later enhancing region overwrites: 2 is never written
        (
            BRATS,
            [1, 3, 2],
            r"'regions_class_order'\[1\] = 3: region \"tumor_core\" writes 3, but the later "
            r"region \"enhancing\" \[3\] also holds 3.*Fix: give \"tumor_core\" a value no "
            r"later region holds \(\[2\]\)",
        ),
        (
            {"background": 0, "whole": [1, 2, 3], "enh": [3]},
            [1, 3],
            r"'regions_class_order' \[1, 3\] never writes label value\(s\) \[2\]",
        ),
        # an ignore label on a region dataset
        (
            {**BRATS, "ignore": 4},
            [1, 2, 3],
            r"'labels' \"ignore\": an ignore label is not supported with regions.*Fix: remove "
            r"'ignore' and annotate those voxels, or train the label values as plain classes",
        ),
    ],
)
def test_bad_regions_are_refused_naming_the_key(make_nnunet, labels, order, message):
    with pytest.raises(DataError, match=message):
        _regions(make_nnunet(), labels, order)


def test_regions_class_order_without_regions_is_refused(make_nnunet, make_msd):
    for root in (make_nnunet(), make_msd()):
        _edit(root, lambda m: m.update(regions_class_order=[1, 2]))
        with pytest.raises(DataError, match=r"'regions_class_order' is given but no label maps"):
            read_dataset_info(root)


# ------------------------------------------------------------------ conversions


def test_region_masks_match_monai_brats_conversion():
    from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

    # BraTS 2018-2022 values: 1 necrosis, 2 oedema, 4 enhancing; MONAI's channels TC, WT, ET
    regions = [Region("TC", (1, 4)), Region("WT", (1, 2, 4)), Region("ET", (4,))]
    rng = np.random.default_rng(0)
    label = rng.choice([0, 1, 2, 4], size=(7, 6, 5)).astype(np.uint8)
    expected = ConvertToMultiChannelBasedOnBratsClasses(et_label=4)(label)
    got = region_masks(label, regions)
    assert got.dtype == bool and got.shape == (3, 7, 6, 5)
    np.testing.assert_array_equal(got, expected)
    as_torch = region_masks(torch.from_numpy(label), regions)
    assert isinstance(as_torch, torch.Tensor)
    assert torch.equal(
        as_torch, ConvertToMultiChannelBasedOnBratsClasses(4)(torch.from_numpy(label))
    )


def test_region_sampling_draws_a_region_then_a_voxel_of_it(tmp_path):
    from segkit.data.cache import preprocess_dataset
    from segkit.data.sampling import PatchDataset

    root = make_demo(tmp_path / "r", num_cases=2, regions=True)
    regions = [r.labels for r in read_dataset_info(root).regions]
    prepared = preprocess_dataset(root, num_workers=0)
    ds = PatchDataset(
        cases_dir=prepared.cases_dir,
        case_ids=prepared.case_ids,
        patch_size=(9, 9, 9),
        num_samples=900,
        oversample_foreground=1.0,
        regions=regions,
    )
    drawn = np.zeros(4)
    for i in range(len(ds)):
        _, label, _ = ds.sample_patch(i)
        drawn[int(label[4, 4, 4])] += 1  # the patch centre: the drawn voxel (never clipped)
    # P(value v) = mean over cases and regions of [v in region] * n_v / (voxels of region),
    # from the foreground voxels the sampler holds (nnU-Net's region sampling)
    expected = np.zeros(4)
    for case in prepared.case_ids:
        counts = {v: len(rows) for v, rows in ds._cases.get(case)[2].items()}
        for region in regions:
            total = sum(counts[v] for v in region)
            for v in region:
                expected[v] += counts[v] / total / len(regions) / len(prepared.case_ids)
    assert drawn[0] == 0
    np.testing.assert_allclose(drawn / len(ds), expected, atol=0.05)
    # the innermost region gets far more than its share of the tumour's voxels
    assert expected[3] > 0.5


# ------------------------------------------------------------------ demo


def test_region_demo_is_brats_like(tmp_path):
    root = make_demo(tmp_path / "regions", num_cases=2, seed=0, regions=True)
    info = read_dataset_info(root)
    assert info.layout == "nnunet" and info.channel_names == ["T1", "T1ce", "T2", "FLAIR"]
    assert [r.labels for r in info.regions] == [(1, 2, 3), (2, 3), (3,)]
    assert sorted(p.name for p in (root / "labelsTs").iterdir()) == [
        f"brats_{i:03d}.nii.gz" for i in (2, 3, 4)
    ]
    case = "brats_000"
    label = np.asarray(nib.load(root / "labelsTr" / f"{case}.nii.gz").dataobj)
    assert set(np.unique(label)) == {0, 1, 2, 3}
    images = [
        np.asarray(nib.load(root / "imagesTr" / f"{case}_{c:04d}.nii.gz").dataobj) for c in range(4)
    ]
    brain = images[0] != 0  # zero outside the brain
    # [channel, value]: value 0 is the brain tissue around the tumour
    means = np.array([[im[(label == v) & brain].mean() for v in range(4)] for im in images])
    t1ce, t2, flair = means[1], means[2], means[3]
    assert flair[1] > flair[0] + 50  # oedema in FLAIR
    assert t1ce[3] > max(t1ce[0], t1ce[1], t1ce[2]) + 50  # enhancing rim in T1ce
    assert t2[2] > t2[1] and t1ce[2] < t1ce[0]  # necrosis: bright T2, dark T1ce
    # nested: the enhancing rim and the necrosis lie inside the whole tumour's blob
    core = np.isin(label, (2, 3))
    assert core.sum() > 0 and (label[core] != 0).all()
    again = make_demo(tmp_path / "again", num_cases=2, seed=0, regions=True)
    a = nib.load(again / "imagesTr" / f"{case}_0002.nii.gz").get_fdata()
    np.testing.assert_array_equal(a, images[2])


def test_region_demo_refuses_sparse(tmp_path):
    with pytest.raises(ConfigError, match="ignore label is not supported with regions"):
        make_demo(tmp_path / "x", regions=True, sparse=0.2)

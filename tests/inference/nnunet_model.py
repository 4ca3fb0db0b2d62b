"""A trained nnU-Net v2 model folder, written by nnU-Net's own code, for tests and benchmarks.

The folder is what ``nnUNetv2_train`` leaves (``dataset.json``, ``plans.json``,
``fold_X/checkpoint_final.pth``): the plans are nnU-Net 2.8.1's planner output for
Dataset005_Prostate (tests/planner/data) shrunk to a small patch; each fold's network is built
by ``nnUNetTrainer.build_network_architecture``, trained here for a few dozen steps on cases
that nnU-Net's ``DefaultPreprocessor`` prepared (so it segments them, not merely emits noise),
and saved by ``nnUNetTrainer.save_checkpoint`` with numpy scalars in its log, as a real run's
checkpoint has. Nothing of segkit is used to make it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

TEMPLATE = Path(__file__).parents[1] / "planner" / "data" / "Dataset005_Prostate"
LABELS = {"background": 0, "core": 1, "rim": 2}
REGIONS = {"background": 0, "whole": [1, 2], "core": [1]}


def plans(
    *, patch=(16, 32, 32), spacing=(2.0, 1.0, 1.0), arch="PlainConvUNet", configuration="3d_fullres"
) -> dict:
    """A small configuration (``3d_fullres`` or ``2d``) of the Dataset005 plans, one z-scored
    channel (a 2D patch and spacing have two entries)."""
    p = json.loads((TEMPLATE / "nnUNetPlans.json").read_text())
    if arch == "ResidualEncoderUNet":
        p = json.loads((TEMPLATE / "nnUNetResEncUNetLPlans.json").read_text())
    p["configurations"] = {configuration: p["configurations"][configuration]}
    c = p["configurations"][configuration]
    c["patch_size"] = list(patch)
    c["spacing"] = list(spacing)
    c["batch_size"] = 2
    c["normalization_schemes"] = ["ZScoreNormalization"]
    c["use_mask_for_norm"] = [False]
    kw = c["architecture"]["arch_kwargs"]
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    kw.update(
        n_stages=3,
        features_per_stage=[4, 8, 16],
        kernel_sizes=[[3] * len(patch)] * 3,
        strides=[s[-len(patch) :] for s in strides],
        n_conv_per_stage_decoder=[1, 1],
    )
    if arch == "ResidualEncoderUNet":
        kw["n_blocks_per_stage"] = [1, 2, 2]
    else:
        kw["n_conv_per_stage"] = [2, 2, 2]
    fg = p["foreground_intensity_properties_per_channel"]
    p["foreground_intensity_properties_per_channel"] = {"0": fg["0"]}
    return p


def write_case(path: Path, shape, spacing, *, seed: int, affine=None, label_path=None) -> None:
    """An image of two nested blobs (a bright core in a darker rim) with noise, and its labels."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    centre = rng.uniform(-0.2, 0.2, 3)
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    label = np.zeros(shape, np.uint8)
    label[r < 0.75] = 2
    label[r < 0.45] = 1
    image = np.choose(label, [0.0, 300.0, 120.0]) + rng.normal(0, 40, shape)
    if affine is None:
        affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(path))
    if label_path is not None:
        nib.save(nib.Nifti1Image(label, affine), str(label_path))


def make_folder(
    root: Path,
    *,
    folds=(0, 1),
    regions: bool = False,
    arch: str = "PlainConvUNet",
    steps: int = 40,
    patch=(16, 32, 32),
    spacing=(2.0, 1.0, 1.0),
    classes: int | None = None,
    trainer: str = "nnUNetTrainer",
) -> Path:
    """``root/model``: a trained nnU-Net model folder (see the module docstring).

    ``classes``: that many labels (background included) instead of three, for memory
    benchmarks (train with ``steps=0``: the weights stay nnU-Net's initialisation). A 2D
    ``patch`` makes a ``2d`` configuration; ``trainer="nnUNetTrainerNoMirroring"`` one whose
    checkpoints allow no test-time mirroring."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    configuration = "2d" if len(patch) == 2 else "3d_fullres"
    p = plans(patch=patch, spacing=spacing, arch=arch, configuration=configuration)
    dataset = {
        "channel_names": {"0": "MRI"},
        "labels": REGIONS if regions else LABELS if classes is None else _many(classes),
        "numTraining": 3,
        "file_ending": ".nii.gz",
    }
    if regions:
        dataset["regions_class_order"] = [2, 1]
    train = root / "train"
    train.mkdir(parents=True)
    cases = []
    for i, shape in enumerate([(40, 44, 18), (36, 50, 20), (44, 40, 16)]):
        img, lab = train / f"c{i}_0000.nii.gz", train / f"c{i}.nii.gz"
        # file axes x, y, z at 1, 1, 2 mm: nnU-Net's reader reverses them (z first)
        write_case(img, shape, (1.0, 1.0, 2.0), seed=i, label_path=lab)
        cases.append((img, lab))
    manager = PlansManager(copy.deepcopy(p))
    config = manager.get_configuration(configuration)
    pre = DefaultPreprocessor(verbose=False)
    data = []
    for img, lab in cases:
        d, s, _ = pre.run_case([str(img)], str(lab), manager, config, dataset)
        data.append((torch.from_numpy(d).float(), torch.from_numpy(s).long()))
    label_manager = manager.get_label_manager(dataset)
    out = root / "model"
    out.mkdir()
    (out / "plans.json").write_text(json.dumps(p))
    (out / "dataset.json").write_text(json.dumps(dataset))
    for fold in folds:
        trainer_plans = copy.deepcopy(p)
        trainer_plans["continue_training"] = False
        # the trainer makes its run folder under nnUNet_results; a scratch one here
        cls = nnUNetTrainer
        if trainer == "nnUNetTrainerNoMirroring":
            from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (  # noqa: E501
                nnUNetTrainerNoMirroring as cls,
            )
        with _env(nnUNet_results=str(root / "results")), contextlib.redirect_stdout(io.StringIO()):
            t = cls(trainer_plans, configuration, fold, dataset, torch.device("cpu"))
        seed = int(fold) if fold != "all" else 7
        torch.manual_seed(seed)  # nnU-Net's initialisation draws from the global generator
        net = t.build_network_architecture(
            manager, config, 1, label_manager.num_segmentation_heads, enable_deep_supervision=False
        )
        _train(net, data, patch, label_manager, seed=seed, steps=steps)
        t.network = net
        t.optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        # what training sets up before its first epoch: the mirroring inference may use
        with contextlib.redirect_stdout(io.StringIO()):
            t.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        t._best_ema = np.float64(0.5)
        for epoch in range(2):  # a real run's log: numpy floats
            t.logger.log("mean_fg_dice", np.float32(0.4 + 0.1 * epoch), epoch)
        (out / f"fold_{fold}").mkdir()
        t.save_checkpoint(str(out / f"fold_{fold}" / "checkpoint_final.pth"))
    return out


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _many(classes: int) -> dict[str, int]:
    return {"background": 0, **{f"structure_{i}": i for i in range(1, classes)}}


def _train(net, data, patch, label_manager, *, seed: int, steps: int) -> None:
    """A few Adam steps of cross-entropy (or BCE for regions) on random patches."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(2):
            x, y = data[int(torch.randint(len(data), (1,), generator=gen))]
            if len(patch) == 2:  # a 2D configuration trains on slices across axis 0
                z = int(torch.randint(x.shape[1], (1,), generator=gen))
                x, y = x[:, z], y[:, z]
            lo = [
                int(torch.randint(max(1, s - p + 1), (1,), generator=gen))
                for s, p in zip(x.shape[1:], patch)
            ]
            box = tuple(slice(a, a + p) for a, p in zip(lo, patch))
            xs.append(_fit(x[(slice(None), *box)], patch))
            ys.append(_fit(y[(slice(None), *box)], patch))
        x, y = torch.stack(xs), torch.stack(ys)[:, 0]
        y = y.clamp_min(0)
        out = net(x)
        if label_manager.has_regions:
            target = torch.stack(
                [sum((y == v) for v in r).float() for r in label_manager.foreground_regions],
                dim=1,
            )
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out, target)
        else:
            loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()


def _fit(t: torch.Tensor, patch) -> torch.Tensor:
    """Zero-pads a crop smaller than the patch."""
    pad = []
    for s, p in reversed(list(zip(t.shape[1:], patch))):
        pad += [0, p - s]
    return torch.nn.functional.pad(t, pad)


def nnunet_predict(
    folder: Path, cases: Path, out: Path, *, mirror: bool, float32: bool, folds=None
) -> Path:
    """``nnUNetPredictor.predict_from_files_sequential``; with ``float32``, its accumulators
    and Gaussian in float32 (its module's ``torch.half`` and ``compute_gaussian`` swapped).
    Probabilities are saved (``{case}.npz``, nnU-Net's reader axis order)."""
    from nnunetv2.inference import predict_from_raw_data as raw
    from nnunetv2.inference import sliding_window_prediction as sliding

    out.mkdir()
    pred = raw.nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=mirror,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    with pytest.MonkeyPatch.context() as mp:
        # nnU-Net finds the trainer class by importing every trainer module, some of which
        # need timm (not installed here): hand it the class the folder names
        mp.setattr(raw, "recursive_find_trainer_class_by_name", lambda *a, **k: _trainer(a[0]))
        pred.initialize_from_trained_model_folder(str(folder), use_folds=folds)
    files = [[str(f)] for f in sorted(cases.glob("*_0000.nii.gz"))]
    if not float32:
        pred.predict_from_files_sequential(files, str(out), True, True, None)
        return out

    def gaussian(*args, **kwargs):
        return sliding.compute_gaussian(*args, **{**kwargs, "dtype": torch.float32})

    gaussian.cache_clear = sliding.compute_gaussian.cache_clear
    names = {k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")}
    patched = types.SimpleNamespace(**{**names, "half": torch.float32})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(raw, "torch", patched)
        mp.setattr(raw, "compute_gaussian", gaussian)
        pred.predict_from_files_sequential(files, str(out), True, True, None)
    return out


def _trainer(name: str) -> type:
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation import (
        nnUNetTrainerNoMirroring,
    )

    return {
        "nnUNetTrainer": nnUNetTrainer.nnUNetTrainer,
        "nnUNetTrainerNoMirroring": nnUNetTrainerNoMirroring.nnUNetTrainerNoMirroring,
    }[name]

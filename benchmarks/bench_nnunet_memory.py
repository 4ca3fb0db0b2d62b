"""Peak memory of predicting an nnU-Net model folder: ``segkit predict`` vs ``nnUNetPredictor``.

A TotalSegmentator-sized problem: an nnU-Net v2 model folder with ``--classes`` outputs (105 by
default: TotalSegmentator's v1 whole-body model has 104 structures and background), written by
nnU-Net's own code (``tests/inference/nnunet_model.py``: nnU-Net's planner's plans with a
64×128×128 patch at 1.5 mm, ``nnUNetTrainer.build_network_architecture``, its
``save_checkpoint``; untrained, as memory does not depend on the weights), and one body-sized
CT-like volume (``--shape``, default 224×224×160 voxels at 1.2×1.2×1.5 mm, so both tools
resample to 1.5 mm and back). One fold, mirroring off in both.

Each tool runs in its own fresh process with the machine's normal allocator: ``segkit predict``
through its command line, and ``nnUNetPredictor.predict_from_files_sequential`` (nnU-Net's
sequential entry point, ``perform_everything_on_device=False`` as on the CPU it must be). The
figure is the kernel's resident peak of that process (``ru_maxrss`` from ``wait4``). The two
label maps are compared voxel by voxel (nnU-Net sums windows in float16, segkit in float32, so
near-ties may differ: see docs/nnunet.md).

    python benchmarks/bench_nnunet_memory.py              # ~5 min on 2 cores, ~13 GiB free RAM
    python benchmarks/bench_nnunet_memory.py --shape 160 160 120   # smaller
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB = 2**30

NNUNET = """
import sys, torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
folder, image, out = sys.argv[1:4]
pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                       perform_everything_on_device=False, device=torch.device("cpu"),
                       verbose=False, verbose_preprocessing=False, allow_tqdm=False)
pred.initialize_from_trained_model_folder(folder, use_folds=(0,))
pred.predict_from_files_sequential([[image]], out, False, True, None)
"""


def run(cmd: list[str]) -> tuple[int, float]:
    """``cmd`` in a fresh process: its resident peak (bytes) and seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-3000:]}")
    return usage.ru_maxrss * 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=105)
    parser.add_argument("--shape", type=int, nargs=3, default=(224, 224, 160))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.2, 1.2, 1.5))
    args = parser.parse_args()

    import nibabel as nib
    import numpy as np

    from tests.inference import nnunet_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = nnunet_model.make_folder(
            tmp,
            folds=(0,),
            steps=0,
            classes=args.classes,
            patch=(64, 128, 128),
            spacing=(1.5, 1.5, 1.5),
        )
        cases = tmp / "cases"
        cases.mkdir()
        image = cases / "body_0000.nii.gz"
        nnunet_model.write_case(image, tuple(args.shape), tuple(args.spacing), seed=0)
        seg_out, ref_out = tmp / "segkit", tmp / "nnunet"
        ref_out.mkdir()
        segkit_peak, segkit_s = run(
            [
                sys.executable,
                "-m",
                "segkit.cli",
                "predict",
                f"ckpt={folder}",
                f"input={cases}",
                f"output={seg_out}",
                "tta=false",
                "progress=false",
            ]
        )
        nnunet_peak, nnunet_s = run(
            [sys.executable, "-c", NNUNET, str(folder), str(image), str(ref_out)]
        )
        a = np.asarray(nib.load(str(seg_out / "body.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(ref_out / "body.nii.gz")).dataobj)
    voxels = int(np.prod(args.shape))
    print(
        f"{args.classes} classes, {'×'.join(map(str, args.shape))} voxels at "
        f"{'×'.join(f'{s:g}' for s in args.spacing)} mm (model 1.5 mm, patch 64×128×128), "
        "one fold, no mirroring, CPU"
    )
    print(f"{'':24}{'peak RSS':>12}{'seconds':>10}")
    print(f"{'segkit predict':24}{segkit_peak / GiB:>10.2f} G{segkit_s:>10.1f}")
    print(f"{'nnUNetPredictor':24}{nnunet_peak / GiB:>10.2f} G{nnunet_s:>10.1f}")
    print(f"segkit / nnU-Net peak: {segkit_peak / nnunet_peak:.2f}")
    same = int((a == b).sum())
    print(f"labels equal on {same:,} of {voxels:,} voxels ({100 * same / voxels:.3f}%)")


if __name__ == "__main__":
    main()

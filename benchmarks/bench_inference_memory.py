"""Peak memory of prediction: segkit's one engine vs MONAI's ``sliding_window_inference``.

(a) ``segkit predict`` as a user runs it: a ``model=demo`` network (depth 4, 8→64 channels,
    instance norm) with 41 classes saved as a checkpoint at patch 64³ (one training step: the
    memory does not depend on the weights), one 256³ volume at 1 mm, ``overlap=0``, one model,
    the default ``sw_batch_size``; once with the defaults and once with ``max_memory_gb=1``.
    Each runs in its own process with the machine's normal allocator; the figure is the
    kernel's resident peak of that process (``ru_maxrss`` from ``wait4``), not segkit's
    estimate.
(b) Per axis: the peak above the resident set before prediction (input volume already
    allocated) as the volume grows along one axis at a time, segkit (``segment``) and MONAI
    (``sliding_window_inference`` with segkit's importance map as ``roi_weight_map``, then
    softmax and argmax) side by side in fresh processes (glibc told to ``mmap`` large blocks
    and return freed memory at once, so the resident set follows the live tensors: see
    ``tests/rss.py``). Windows 64³ at overlap 0 on sizes that are multiples of 64, where both
    place the same windows; the labels are compared and every differing voxel is counted,
    with how many of them have their top two probabilities within float32 rounding (1e-6).

    python benchmarks/bench_inference_memory.py            # ~15 min on 2 cores
    python benchmarks/bench_inference_memory.py --quick    # (b) on smaller volumes only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.rss import CHILD_ENV, settle, status  # noqa: E402

GiB = 2**30
CLASSES = 41
DEMO = {"depth": 4, "channels": 8, "max_channels": 64, "norm": "instance"}


def _net(classes: int):
    from segkit.nn import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=classes, **DEMO).eval()


def make_checkpoint(path: Path, classes: int = CLASSES) -> Path:
    """A model=demo SegModule with ``classes`` classes, one SGD step at patch 64³, saved."""
    import pytorch_lightning as pl
    import torch

    from segkit.data.preprocess import Preprocessor
    from segkit.training.module import SegModule

    torch.manual_seed(0)
    module = SegModule(
        model={
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": classes,
            "deep_supervision": True,
            **DEMO,
        },
        optim={
            "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01},
            "scheduler": {"name": "none"},
        },
        loss={"dice_weight": 1.0, "ce_weight": 1.0},
        patch_size=[64, 64, 64],
        label_names={i: f"class{i}" for i in range(classes)},
        preprocessor=Preprocessor(
            target_spacing=(1.0, 1.0, 1.0),
            normalization=("zscore",),
            num_channels=1,
            num_classes=classes,
        ).to_dict(),
    )
    batch = {
        "image": torch.randn(1, 1, 64, 64, 64),
        "label": torch.randint(0, classes, (1, 1, 64, 64, 64)),
    }
    trainer = pl.Trainer(
        max_steps=1,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    trainer.save_checkpoint(path)
    return path


def predict_peak(ckpt: Path, image: Path, out: Path, *extra: str) -> tuple[int, float, str]:
    """``segkit predict`` in a fresh process: its resident peak (bytes), seconds, its line."""
    cmd = [
        sys.executable,
        "-m",
        "segkit.cli",
        "predict",
        f"ckpt={ckpt}",
        f"input={image}",
        f"output={out}",
        "overlap=0",
        "progress=false",
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status_, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status_):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    return usage.ru_maxrss * 1024, seconds, stdout.strip().splitlines()[0]


def child(case: dict) -> dict:
    """(b) one run in this process: peak above the resident set before it; labels saved."""
    import numpy as np
    import torch

    from segkit.inference.engine.outputs import SOFTMAX
    from segkit.inference.engine.segment import segment
    from segkit.inference.engine.settings import InferenceSettings
    from segkit.inference.engine.sliding import ModelRun
    from segkit.inference.engine.windows import importance_map

    torch.set_num_threads(1)
    torch.manual_seed(0)
    k, window, size = case["classes"], (64, 64, 64), tuple(case["size"])
    net = _net(k)
    run = ModelRun(net, window, InferenceSettings(mode="sliding", overlap=0.0))

    def go(x):
        if case["variant"] == "segkit":
            return segment([run], x, SOFTMAX, classes=k).labels, None
        from monai.inferers import sliding_window_inference

        with torch.inference_mode():
            out = sliding_window_inference(
                x,
                window,
                4,
                net,
                overlap=0.0,
                roi_weight_map=importance_map(x.shape[2:], window, 0.0),
            )
            probs = torch.softmax(out, dim=1)
            del out
            top2 = probs[0].topk(2, dim=0).values
            close = (top2[0] - top2[1]) <= 1e-6
            return probs.argmax(dim=1)[0].to(torch.uint8), close

    go(torch.randn(1, 1, 64, 64, 64))  # warm-up
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(1))
    base = settle()
    start = time.perf_counter()
    labels, close = go(x)
    seconds = time.perf_counter() - start
    peak = status("VmHWM")
    np.save(case["labels"], labels.numpy())
    if close is not None:
        np.save(case["labels"] + ".close.npy", close.numpy())
    return {"seconds": seconds, "above": peak - base}


def run_child(case: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(case)],
        env={**os.environ, **CHILD_ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.splitlines()[-1])


def headline(tmp: Path) -> None:
    import nibabel as nib
    import numpy as np

    ckpt = make_checkpoint(tmp / "demo41.ckpt")
    image = tmp / "in" / "case.nii.gz"
    image.parent.mkdir()
    data = np.random.default_rng(0).normal(size=(256, 256, 256)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(image))
    print(f"\n(a) segkit predict, {CLASSES} classes, 256³, model=demo at patch 64³, overlap 0")
    print("| setting | resident peak GiB | seconds | segkit's plan |")
    print("|---|---|---|---|")
    for name, extra in (("defaults", ()), ("max_memory_gb=1", ("max_memory_gb=1",))):
        peak, sec, line = predict_peak(ckpt, image, tmp / f"out-{len(extra)}", *extra)
        plan = line[line.index("tiles of") :] if "tiles of" in line else line
        print(f"| {name} | {peak / GiB:.2f} | {sec:.0f} | {plan} |")


def curves(tmp: Path, quick: bool) -> None:
    import numpy as np

    base = 64 if quick else 128
    sizes = [(base, base, base)]
    for axis in range(3):
        for factor in (2, 3):
            s = [base] * 3
            s[axis] = base * factor
            sizes.append(tuple(s))
    print(f"\n(b) peak above the input volume, {CLASSES} classes, windows 64³ at overlap 0")
    print(
        "| size | segkit MiB | MONAI MiB | segkit s | MONAI s | labels differing "
        "| of them within float32 rounding |"
    )
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        rows = {}
        for variant in ("segkit", "monai"):
            path = str(tmp / f"{variant}-{'x'.join(map(str, size))}.npy")
            rows[variant] = run_child(
                {"classes": CLASSES, "size": list(size), "variant": variant, "labels": path}
            )
            rows[variant]["path"] = path
        a, b = np.load(rows["segkit"]["path"]), np.load(rows["monai"]["path"])
        close = np.load(rows["monai"]["path"] + ".close.npy")
        diff = a != b
        print(
            f"| {'×'.join(map(str, size))} | {rows['segkit']['above'] / 2**20:.0f} "
            f"| {rows['monai']['above'] / 2**20:.0f} | {rows['segkit']['seconds']:.1f} "
            f"| {rows['monai']['seconds']:.1f} | {int(diff.sum())} "
            f"| {int((diff & close).sum())} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="(b) only, smaller volumes")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    print(f"load: {os.getloadavg()}; {os.cpu_count()} CPUs")
    tmp = Path(tempfile.mkdtemp(prefix="segkit-bench-mem-"))
    if not args.quick:
        headline(tmp)
    curves(tmp, args.quick)


if __name__ == "__main__":
    main()

"""Evaluation time per case: segkit's Dice + HD95 + NSD vs MONAI's three metric functions.

One synthetic CT-like case, 512×512×300 voxels at 0.8×0.8×2.0 mm, three classes: a
liver-sized ellipsoid (~3 M voxels), a kidney-sized one and a small lesion; the prediction
is the reference shifted, rescaled and roughened, with a few false-positive blobs. Both
sides get the same arrays and one thread each (set before numpy/torch load):

- segkit: `segkit.inference.metrics.evaluate.score_case` (Dice, HD95, NSD at 1 mm, per class).
- MONAI: one-hot tensors, then ``compute_dice`` + ``compute_hausdorff_distance(percentile=95)``
  + ``compute_surface_dice(use_subvoxels=True)`` (the surface-element NSD segkit matches;
  ``--monai-voxel-nsd`` times MONAI's default border-voxel NSD instead).

Also timed once: a Euclidean distance transform of the largest class's bounding box
(``scipy.ndimage.distance_transform_edt(sampling=spacing)``), the alternative to segkit's
KD-tree over surface points. Prints medians over ``--repeats`` runs, the machine's load
average, and the largest difference between segkit's and MONAI's values::

    python benchmarks/bench_metrics.py [--repeats 3] [--markdown]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

SHAPE = (512, 512, 300)
SPACING = (0.8, 0.8, 2.0)
TOLERANCE = 1.0
# (class, centre, radii) in voxels
ORGANS = [
    (1, (250, 230, 150), (120, 100, 60)),
    (2, (330, 360, 130), (40, 32, 28)),
    (3, (200, 190, 170), (14, 12, 8)),
]


def make_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and reference label maps, uint8 as `segkit evaluate` reads them."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    for c, centre, radii in ORGANS:
        box = tuple(
            slice(max(0, m - r - 8), min(n, m + r + 8)) for m, r, n in zip(centre, radii, SHAPE)
        )
        z = np.ogrid[box]
        d_ref = sum(((zi - m) / r) ** 2 for zi, m, r in zip(z, centre, radii))
        shift = rng.uniform(-2, 2, 3)
        scale = rng.uniform(0.95, 1.05, 3)
        d_pred = sum(
            ((zi - m - s) / (r * f)) ** 2 for zi, m, s, r, f in zip(z, centre, shift, radii, scale)
        )
        rough = rng.normal(0, 0.03, d_pred.shape)
        ref[box][d_ref <= 1] = c
        pred[box][(d_pred + rough) <= 1] = c
    for _ in range(6):  # false positives: small blobs away from the organs
        c = int(rng.integers(1, 4))
        centre = [int(rng.integers(20, n - 20)) for n in SHAPE]
        r = int(rng.integers(2, 6))
        box = tuple(slice(m - r, m + r + 1) for m in centre)
        z = np.ogrid[box]
        blob = sum((zi - m) ** 2 for zi, m in zip(z, centre)) <= r * r
        pred[box][blob] = c
    return pred, ref


def _clock() -> np.ndarray:
    """Wall and CPU seconds: on a loaded machine the CPU time is the steadier of the two."""
    return np.array([time.perf_counter(), time.process_time()])


def time_segkit(pred, ref):
    from segkit.inference.metrics.evaluate import score_case

    t = _clock()
    s = score_case(pred, ref, num_classes=4, spacing=SPACING, nsd_tolerance=TOLERANCE)
    return _clock() - t, {"Dice": s.dice, "HD95": s.hd95, "NSD": s.nsd}


def time_monai(pred, ref, *, subvoxels: bool):
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    times = {}
    t = _clock()
    p = torch.from_numpy(np.stack([pred == c for c in range(4)])[None])
    r = torch.from_numpy(np.stack([ref == c for c in range(4)])[None])
    times["one-hot"] = _clock() - t
    t = _clock()
    dice = compute_dice(p, r, include_background=False)[0]
    times["dice"] = _clock() - t
    t = _clock()
    hd = compute_hausdorff_distance(p, r, percentile=95, spacing=list(SPACING))[0]
    times["hd95"] = _clock() - t
    t = _clock()
    nsd = compute_surface_dice(
        p, r, [TOLERANCE] * 3, spacing=list(SPACING), use_subvoxels=subvoxels
    )[0]
    times["nsd"] = _clock() - t
    values = {"Dice": dice.tolist(), "HD95": hd.tolist(), "NSD": nsd.tolist()}
    return sum(times.values()), times, values


def time_edt_of_largest_box(pred, ref) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    from segkit.inference.metrics.surface import crop_to_union

    p, r = crop_to_union(pred == 1, ref == 1)
    t = _clock()
    ndimage.distance_transform_edt(~r, sampling=SPACING)
    return _clock() - t, p.size


def _median(clocks: list[np.ndarray]) -> np.ndarray:
    return np.median(np.stack(clocks), axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--monai-voxel-nsd", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()
    pred, ref = make_case()
    counts = {c: (int((ref == c).sum()), int((pred == c).sum())) for c, _, _ in ORGANS}
    ours, theirs, parts = [], [], []
    for _ in range(args.repeats):
        t, ours_v = time_segkit(pred, ref)
        ours.append(t)
        t, p, theirs_v = time_monai(pred, ref, subvoxels=not args.monai_voxel_nsd)
        theirs.append(t)
        parts.append(p)
    edt, edt_voxels = time_edt_of_largest_box(pred, ref)
    load_after = os.getloadavg()
    diff = {m: float(np.nanmax(np.abs(np.subtract(ours_v[m], theirs_v[m])))) for m in ours_v}
    part = {k: _median([p[k] for p in parts]) for k in parts[0]}
    nsd_kind = "border voxels" if args.monai_voxel_nsd else "surface elements"
    rows = [
        ("segkit score_case (Dice+HD95+NSD)", _median(ours)),
        (f"MONAI one-hot+Dice+HD95+NSD ({nsd_kind})", _median(theirs)),
        *((f"  MONAI {k}", v) for k, v in part.items()),
        (f"one EDT of class 1's box ({edt_voxels / 1e6:.1f} M voxels), once", edt),
    ]
    print(f"case {SHAPE} at {SPACING} mm; voxels per class (ref, pred): {counts}")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}; 1 thread each")
    if args.markdown:
        print("| what | wall s (median) | CPU s (median) |\n| --- | --- | --- |")
        for name, (wall, cpu) in rows:
            print(f"| {name.strip()} | {wall:.2f} | {cpu:.2f} |")
    else:
        for name, (wall, cpu) in rows:
            print(f"{name:<60} {wall:8.2f} s wall {cpu:8.2f} s CPU")
    for i, kind in enumerate(("wall", "CPU")):
        print(
            f"{kind} s per run: segkit {[round(float(t[i]), 2) for t in ours]}, "
            f"MONAI {[round(float(t[i]), 2) for t in theirs]}"
        )
    print(f"largest |segkit - MONAI| per metric: {diff}")
    print(f"segkit: {ours_v}")


if __name__ == "__main__":
    main()

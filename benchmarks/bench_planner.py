"""segkit's planner side by side with nnU-Net's on Medical Segmentation Decathlon fingerprints.

Both planners read the same ``dataset_fingerprint.json`` per task. The fingerprints are built
from the median spacing and median image size nnU-Net published for the seven phase-1 MSD
tasks (Isensee et al., "nnU-Net: Self-adapting Framework for U-Net-Based Medical Image
Segmentation", 2018, Table 1), written as ``numTraining`` identical cases (so the median, and
the 10th percentile nnU-Net uses for the anisotropy exception, are the published values).
Sizes are in nnU-Net's array order in the files; the table shows segkit's (reversed) order.

nnU-Net runs in a benchmark environment only (never a segkit dependency)::

    python -m venv --system-site-packages /work/benchenv
    /work/benchenv/bin/pip install --no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 \\
        acvl-utils batchgenerators batchgeneratorsv2 ...   # what its planner imports
    /work/benchenv/bin/python benchmarks/bench_planner.py [--out DIR] [--markdown]

Per task and budget: patch, pools per axis, batch, patch voxels, nnU-Net's padding beyond the
median case, the fraction of the median case one patch covers, segkit's memory estimate of
both plans, and (nnU-Net plans imported into segkit) the parameter count of segkit's network
vs dynamic-network-architectures' for the same plan.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

# (name, id, training cases, channels, labels incl. background, spacing z,y,x, shape z,y,x)
TASKS = [
    ("BrainTumour", 1, 484, ["FLAIR", "T1w", "t1gd", "T2w"], 4, (1.0, 1.0, 1.0), (138, 169, 138)),
    ("Heart", 2, 20, ["MRI"], 2, (1.37, 1.25, 1.25), (115, 320, 232)),
    ("Liver", 3, 131, ["CT"], 3, (1.0, 0.77, 0.77), (482, 512, 512)),
    ("Hippocampus", 4, 260, ["MRI"], 3, (1.0, 1.0, 1.0), (36, 50, 35)),
    ("Prostate", 5, 32, ["T2", "ADC"], 3, (3.6, 0.62, 0.62), (20, 320, 319)),
    ("Lung", 6, 63, ["CT"], 2, (1.24, 0.79, 0.79), (252, 512, 512)),
    ("Pancreas", 7, 281, ["CT"], 3, (2.5, 0.8, 0.8), (96, 512, 512)),
]
# (segkit model family, nnU-Net planner class, budget GB)
RUNS = [
    ("unet", "ExperimentPlanner", 8),
    ("resenc", "nnUNetPlannerResEncL", 24),
    ("resenc", "nnUNetPlannerResEncXL", 40),
]


def write_task(raw: Path, pre: Path, task: tuple) -> str:
    """nnU-Net raw folder (dataset.json, empty case files) and the fingerprint."""
    name, tid, n, channels, k, spacing, shape = task
    ds = f"Dataset{tid:03d}_{name}"
    root = raw / ds
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        for c in range(len(channels)):
            (root / "imagesTr" / f"case_{i:04d}_{c:04d}.nii.gz").touch()
        (root / "labelsTr" / f"case_{i:04d}.nii.gz").touch()
    meta = {
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": {"background": 0, **{f"class{j}": j for j in range(1, k)}},
        "numTraining": n,
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "NibabelIOWithReorient",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    (pre / ds).mkdir(parents=True, exist_ok=True)
    intensity = {
        str(i): {
            "max": 1000.0,
            "mean": 100.0,
            "median": 90.0,
            "min": -1000.0,
            "percentile_00_5": -900.0,
            "percentile_99_5": 900.0,
            "std": 200.0,
        }
        for i in range(len(channels))
    }
    fingerprint = {
        "foreground_intensity_properties_per_channel": intensity,
        "median_relative_size_after_cropping": 1.0,
        "shapes_after_crop": [list(shape)] * n,
        "spacings": [list(spacing)] * n,
    }
    (pre / ds / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    (pre / ds / "dataset.json").write_text(json.dumps(meta, indent=1))
    return ds


def run_nnunet(pre: Path, ds: str, planner: str, gb: float) -> dict:
    from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner as d
    from nnunetv2.experiment_planning.experiment_planners.residual_unets import (
        residual_encoder_unet_planners as r,
    )

    cls = getattr(d, planner, None) or getattr(r, planner)
    with contextlib.redirect_stdout(io.StringIO()):
        plans = cls(ds, gb).plan_experiment()
    path = pre / ds / f"{plans['plans_name']}.json"
    return {"plans": plans, "path": path}


def dna_params(plans: dict, configuration: str, in_ch: int, k: int) -> int:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = plans["configurations"][configuration]["architecture"]
    net = get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        in_ch,
        k,
        allow_init=False,
        deep_supervision=True,
    )
    return sum(p.numel() for p in net.parameters())


def segkit_side(fp_path: Path, plans_path: Path, family: str, gb: float) -> dict:
    from omegaconf import open_dict

    from segkit.config import compose
    from segkit.planner import plan_from_config

    cfg = compose([f"model={family}", f"planner.memory_gb={gb}", "optim=sgd_poly"])
    with open_dict(cfg):
        cfg.planner.auto = True
        cfg.planner.fingerprint = str(fp_path)
    t = time.perf_counter()
    mine = plan_from_config(cfg)
    seconds = time.perf_counter() - t
    with open_dict(cfg):
        cfg.planner.plans = str(plans_path)
        cfg.planner.configuration = "3d_fullres"
    theirs = plan_from_config(cfg)
    return {"segkit": mine, "nnunet": theirs, "seconds": seconds}


def pools(spec) -> str:
    return "×".join(str(sum(1 for s in spec.strides if s[a] > 1)) for a in range(spec.spatial_dims))


def row(task: tuple, gb: float, sides: dict, nn_params: int) -> dict:
    mine, theirs = sides["segkit"], sides["nnunet"]
    median = mine.median_shape
    nn_patch = theirs.patch_size
    pad = math.prod(nn_patch) / math.prod(min(p, m) for p, m in zip(nn_patch, median)) - 1
    return {
        "task": task[0],
        "budget_gb": gb,
        "median": "×".join(map(str, median)),
        "nnunet_patch": "×".join(map(str, nn_patch)),
        "nnunet_pools": pools(theirs.spec),
        "nnunet_batch": theirs.batch_size,
        "nnunet_voxels": math.prod(nn_patch),
        "nnunet_padding": pad,
        "nnunet_coverage": theirs.coverage,
        "nnunet_est_gb": theirs.memory.total_gb,
        "segkit_patch": "×".join(map(str, mine.patch_size)),
        "segkit_pools": pools(mine.spec),
        "segkit_batch": mine.batch_size,
        "segkit_voxels": math.prod(mine.patch_size),
        "segkit_coverage": mine.coverage,
        "segkit_est_gb": mine.memory.total_gb,
        "params_segkit_import": theirs.plan.params,
        "params_dna": nn_params,
        "segkit_seconds": sides["seconds"],
    }


def markdown(rows: list[dict]) -> str:
    head = (
        "| task | GB | median case | nnU-Net patch (pools) | batch | padding beyond case | "
        "covers | est. GB | segkit patch (pools) | batch | covers | est. GB |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['budget_gb']:g} | {r['median']} | {r['nnunet_patch']} "
            f"({r['nnunet_pools']}) | {r['nnunet_batch']} | {r['nnunet_padding']:+.0%} | "
            f"{r['nnunet_coverage']:.0%} | {r['nnunet_est_gb']:.1f} | {r['segkit_patch']} "
            f"({r['segkit_pools']}) | {r['segkit_batch']} | {r['segkit_coverage']:.0%} | "
            f"{r['segkit_est_gb']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="keep the fingerprints and plans here")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--tasks", nargs="*", default=None, help="task names (default: all)")
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="bench_planner_"))
    raw, pre, res = work / "raw", work / "preprocessed", work / "results"
    for d in (raw, pre, res):
        d.mkdir(parents=True, exist_ok=True)
    os.environ.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res))
    from segkit.config import conf_dir

    have_resenc = (conf_dir() / "model" / "resenc.yaml").is_file()
    rows, notes = [], []
    for task in TASKS:
        if args.tasks and task[0] not in args.tasks:
            continue
        ds = write_task(raw, pre, task)
        for family, planner, gb in RUNS:
            if family == "resenc" and not have_resenc:
                notes.append(f"{task[0]} {planner}: skipped, segkit has no model=resenc yet")
                continue
            nn = run_nnunet(pre, ds, planner, gb)
            params = dna_params(nn["plans"], "3d_fullres", len(task[3]), task[4])
            sides = segkit_side(pre / ds / "dataset_fingerprint.json", nn["path"], family, gb)
            r = row(task, gb, sides, params)
            rows.append(r)
            print(
                f"{task[0]:12s} {gb:>3g} GB  nnU-Net {r['nnunet_patch']:>12s} "
                f"({r['nnunet_pools']}) b{r['nnunet_batch']:<3d} pad {r['nnunet_padding']:+.0%} "
                f"cov {r['nnunet_coverage']:.0%} est {r['nnunet_est_gb']:.1f} GB | segkit "
                f"{r['segkit_patch']:>12s} ({r['segkit_pools']}) b{r['segkit_batch']:<3d} "
                f"cov {r['segkit_coverage']:.0%} est {r['segkit_est_gb']:.1f} GB | params "
                f"{r['params_segkit_import']:,} vs DNA {r['params_dna']:,} | "
                f"{r['segkit_seconds']:.2f} s",
                flush=True,
            )
    for note in notes:
        print(note)
    (work / "bench_planner.json").write_text(json.dumps(rows, indent=1))
    if args.markdown:
        print(markdown(rows))
    ok = all(
        r["segkit_coverage"] >= r["nnunet_coverage"] - 1e-9
        and r["segkit_est_gb"] <= r["budget_gb"]
        and r["params_segkit_import"] == r["params_dna"]
        for r in rows
    )
    print(
        f"results in {work}; target (coverage >= nnU-Net's, estimate <= budget, equal params): "
        f"{'met' if ok else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

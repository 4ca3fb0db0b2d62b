"""Region-based training (sigmoid per region) vs plain softmax labels, the same time.

Both arms train on the same BraTS-like cases (``segkit make-demo --regions``: 4 channels,
whole tumour [1, 2, 3] ⊃ tumour core [2, 3] ⊃ enhancing tumour [3]) with the same
network, patch stream, augmentation, optimizer (the training default, ``sgd_poly``) and
wall-clock budget (``trainer.max_time``, 180 s each by default; the learning rate anneals
over it); only the labels differ:

- ``regions``: the dataset as written (``data=demo_regions``): one sigmoid output per
  region, per-region BCE + soft Dice, region foreground sampling;
- ``softmax``: the same files under a ``dataset.json`` declaring the label values as plain
  classes (oedema 1, necrosis 2, enhancing 3): 4 softmax outputs, Dice + CE.

Each arm's ``last.ckpt`` predicts (``segkit predict mode=sliding overlap=0.5``) the
validation fold (fold 0, the same cases for both) and the three held-out test cases, and
``segkit evaluate`` scores both arms' label maps as regions (a softmax label map is turned
into region masks exactly like a region model's). Every arm is trained once per seed
(``--seeds``; the seed drives initialisation, patch sampling and augmentation): 180 s of
CPU training is a few hundred steps, and one run's Dice moves by more than the bar from
seed to seed. The bar: for every region, the mean over seeds of the region model's Dice
within 0.01 of the softmax model's.

    OMP_NUM_THREADS=2 python benchmarks/bench_regions.py              # ~22 min on 2 cores
    OMP_NUM_THREADS=2 python benchmarks/bench_regions.py --seeds 1    # ~8 min, one seed
    OMP_NUM_THREADS=2 python benchmarks/bench_regions.py --quick      # ~1 min, smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PLAIN_LABELS = {"background": 0, "oedema": 1, "necrosis": 2, "enhancing": 3}


def _softmax_copy(regions_root: Path, root: Path) -> Path:
    """The same image and label files under a dataset.json with plain classes."""
    root.mkdir(parents=True, exist_ok=True)
    meta = json.loads((regions_root / "dataset.json").read_text())
    meta.pop("regions_class_order")
    meta["labels"] = PLAIN_LABELS
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        if not (root / sub).exists():
            (root / sub).symlink_to(regions_root / sub)
    return root


def _train(root: Path, out: Path, seed: int, args: argparse.Namespace) -> dict:
    from segkit.config import compose
    from segkit.training.run import train

    overrides = [
        "data=demo_regions",
        f"data.root={root}",
        "data.make_demo_if_missing=false",
        f"paths.output_dir={out}",
        "trainer.accelerator=cpu",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.check_val_every_n_epoch={args.epochs}",
        *([f"trainer.max_time={_clock(args.max_time)}"] if args.max_time else []),
        f"data.samples_per_epoch={2 * args.iterations}",
        "data.num_workers=0",
        "calibrate_inference.enabled=false",
        "print_plan=false",
        "~callbacks.pictures",
        f"seed={seed}",
        f"optim={args.optim}",
        f"data.patch_size=[{args.patch}]",
    ]
    start = time.time()
    _, metrics = train(compose(overrides))
    metrics["train_seconds"] = round(time.time() - start, 1)
    return metrics


def _clock(seconds: int) -> str:
    """``seconds`` as Lightning's DD:HH:MM:SS."""
    return f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _score(ckpt: Path, images: Path, labels: Path, out: Path, regions) -> dict[str, float]:
    """Per-region Dice (mean over cases) of ``ckpt``'s predictions of ``images``."""
    from segkit.inference.metrics.dice import mean_dice
    from segkit.inference.metrics.evaluate import evaluate
    from segkit.inference.predict.run import PredictOptions, predict

    options = PredictOptions(progress=False, mode="sliding", overlap=0.5, window_scale=1.0)
    predict(ckpt=ckpt, input=images, output=out, options=options)
    scores = evaluate(pred=out, labels=labels, regions=regions)
    table = torch.tensor([[r[1] for r in s.regions] for s in scores], dtype=torch.float64)
    per_region, mean = mean_dice(table)
    return {**{r.name: float(v) for r, v in zip(regions, per_region)}, "mean": mean}


def _subset(root: Path, cases: list[str], where: Path) -> tuple[Path, Path]:
    images, labels = where / "images", where / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for ch in range(4):
            name = f"{case}_{ch:04d}.nii.gz"
            if not (images / name).exists():
                (images / name).symlink_to(root / "imagesTr" / name)
        if not (labels / f"{case}.nii.gz").exists():
            (labels / f"{case}.nii.gz").symlink_to(root / "labelsTr" / f"{case}.nii.gz")
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "bench_regions")
    parser.add_argument("--cases", type=int, default=12, help="training cases (+3 test)")
    parser.add_argument("--epochs", type=int, default=1000, help="at most, per arm")
    parser.add_argument("--iterations", type=int, default=30, help="per epoch, batch 2")
    parser.add_argument("--seeds", default="1,2,3", help="one run per arm and seed")
    parser.add_argument("--optim", default="sgd_poly", help="conf/optim preset, both arms")
    parser.add_argument("--patch", default="40,40,32", help="training patch, both arms")
    parser.add_argument(
        "--max-time", type=int, default=180,
        help="seconds of training per arm (trainer.max_time; 0: --epochs alone); the epoch "
        "count is then only an upper bound",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="2 epochs of 10 iterations")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.iterations, args.max_time, args.seeds = 2, 10, 0, "1"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from segkit.data.demo import make_demo
    from segkit.data.layouts import read_dataset_info

    work = args.work
    source = make_demo(work / "demo_regions", num_cases=args.cases, regions=True)
    regions = read_dataset_info(source).regions
    roots = {"regions": source, "softmax": _softmax_copy(source, work / "softmax")}
    seeds = [int(v) for v in args.seeds.split(",")]
    results: dict = {"runs": []}
    for seed in seeds:
        for arm, root in roots.items():
            out = work / f"run_{arm}_seed{seed}"
            metrics = _train(root, out, seed, args)
            ckpt = out / "checkpoints" / "last.ckpt"
            val_images, val_labels = _subset(root, metrics["validation_cases"], out / "val")
            run = {
                "arm": arm,
                "seed": seed,
                "validation": _score(ckpt, val_images, val_labels, out / "pred_val", regions),
                "test": _score(
                    ckpt, root / "imagesTs", source / "labelsTs", out / "pred_test", regions
                ),
                "train_seconds": metrics["train_seconds"],
                "steps": metrics["global_step"],
            }
            results["runs"].append(run)
            print(f"seed {seed} {arm}: {run['steps']} steps, "
                  f"validation {run['validation']}, test {run['test']}", flush=True)  # fmt: skip
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    runs = results["runs"]
    names = list(runs[0]["test"])
    steps = {a: [r["steps"] for r in runs if r["arm"] == a] for a in roots}
    print(
        f"\nregions vs softmax, {args.max_time or '-'} s each (at most {args.epochs}×"
        f"{args.iterations} steps of batch 2), seeds {seeds} (steps run: regions "
        f"{steps['regions']}, softmax {steps['softmax']}), patch {args.patch}, "
        f"optim={args.optim}; {load}"
    )
    print(f"{'cases':<12}{'region':<18}{'regions':>9}{'softmax':>9}{'diff':>9}   per seed")
    worst = float("inf")  # the smallest regions − softmax difference of seed means
    for split in ("validation", "test"):
        for name in names:
            a = [r[split][name] for r in runs if r["arm"] == "regions"]
            b = [r[split][name] for r in runs if r["arm"] == "softmax"]
            diff = sum(a) / len(a) - sum(b) / len(b)
            worst = min(worst, diff) if name != "mean" else worst
            each = " ".join(f"{x - y:+.4f}" for x, y in zip(a, b))
            print(f"{split:<12}{name:<18}{sum(a) / len(a):9.4f}{sum(b) / len(b):9.4f}"
                  f"{diff:+9.4f}   {each}")  # fmt: skip
    print(
        f"worst region difference of the seed means {worst:+.4f} "
        f"({'within' if worst >= -0.01 else 'NOT within'} 0.01)"
    )
    results["load"] = load
    (work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""segkit against nnU-Net v2's own trainer and predictor: the same data, the same seconds.

For each dataset (``dense``: the blob demo, 3 classes, softmax; ``regions``: the BraTS-like
demo, 4 channels, nested regions) both tools get the same nnU-Net v2 raw folder (the
training cases; the 3 held-out cases in ``imagesTs``) and run as a user runs them:

- **nnU-Net 2.8.1**: its fingerprint extractor, ``ExperimentPlanner`` and
  ``DefaultPreprocessor`` (``3d_fullres``), then ``nnUNetTrainer`` fold 0 on the CPU, then
  ``nnUNetPredictor`` (its defaults: Gaussian, step 0.5, mirroring) on ``imagesTs``;
- **segkit**: ``python train.py data=msd data.root=RAW`` (``planner=auto``, fold 0), then
  ``segkit predict`` of ``last.ckpt`` on ``imagesTs``, with its defaults (no mirroring) and
  with ``tta=true`` (mirroring, as nnU-Net's predictor by default).

Equal budgets: the arms run one after the other in this process with the same torch threads
(``--threads``), data loading in the main process for both (segkit ``data.num_workers=0``,
nnU-Net ``nnUNet_n_proc_DA=0``), and the same wall-clock seconds of training
(``--seconds``; preprocessing and prediction are timed but not counted). segkit stops on
``trainer.max_time`` and anneals its learning rate over it; nnU-Net has no time limit, so its
trainer is given one the same way: after every epoch the number of epochs is set to what
the remaining seconds allow at the mean epoch time so far, and its poly schedule's length
with it (otherwise its learning rate would stay near its start). Both run 25 training
iterations an epoch (nnU-Net: 5 pseudo-validation batches; segkit: its validation every 5th
epoch), the only change to either tool's defaults besides the thread and time settings.

One scorer for both: ``segkit evaluate``'s Dice (checked against MONAI's ``DiceMetric`` in
tests/inference/test_metrics.py), per class or per region, mean over the held-out cases.

    OMP_NUM_THREADS=2 python benchmarks/bench_vs_nnunet.py                    # ~33 min
    OMP_NUM_THREADS=2 python benchmarks/bench_vs_nnunet.py --seconds 60 --datasets dense
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import subprocess
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"dense": (901, "Dataset901_Blobs"), "regions": (902, "Dataset902_Tumours")}
ITERATIONS = 25  # training iterations an epoch, both tools (nnU-Net: 250)


def _raw_folder(kind: str, work: Path, cases: int) -> tuple[Path, Path]:
    """An nnU-Net v2 raw dataset folder of the demo ``kind`` (links to the demo's files) and
    the folder of the held-out cases' labels."""
    from segkit.data.demo import make_demo

    source = make_demo(work / f"demo_{kind}", num_cases=cases, regions=kind == "regions")
    raw = work / "nnUNet_raw" / DATASETS[kind][1]
    test_labels = work / f"test_labels_{kind}"
    if raw.exists():
        return raw, test_labels
    meta = json.loads((source / "dataset.json").read_text())
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (raw / sub).mkdir(parents=True)
    test_labels.mkdir(parents=True, exist_ok=True)
    if kind == "regions":  # already nnU-Net v2: the same files
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            for f in sorted((source / sub).iterdir()):
                (raw / sub / f.name).symlink_to(f)
        for f in sorted((source / "labelsTs").iterdir()):
            (test_labels / f.name).symlink_to(f)
        v2 = {k: meta[k] for k in ("channel_names", "labels", "regions_class_order")}
    else:  # the Decathlon layout: one channel, ``{case}_0000`` images, names as labels
        for sub, lab in (("imagesTr", "labelsTr"), ("imagesTs", None)):
            for f in sorted((source / sub).glob("*.nii.gz")):
                case = f.name[: -len(".nii.gz")]
                (raw / sub / f"{case}_0000.nii.gz").symlink_to(f)
                if lab:
                    (raw / lab / f.name).symlink_to(source / "labelsTr" / f.name)
        for f in sorted((source / "labelsTs").iterdir()):
            (test_labels / f.name).symlink_to(f)
        v2 = {
            "channel_names": meta["modality"],
            "labels": {name: int(value) for value, name in meta["labels"].items()},
        }
    n = len(list((raw / "labelsTr").iterdir()))
    v2.update(numTraining=n, file_ending=".nii.gz", name=DATASETS[kind][1])
    (raw / "dataset.json").write_text(json.dumps(v2, indent=2))
    return raw, test_labels


def _nnunet(kind: str, raw: Path, work: Path, seconds: float, threads: int) -> dict:
    """nnU-Net's plan + preprocess, its trainer for ``seconds``, its predictor."""
    from nnunetv2.experiment_planning import plan_and_preprocess_api as api
    from nnunetv2.inference import predict_from_raw_data as raw_predict
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_id, name = DATASETS[kind]
    pre = work / "nnUNet_preprocessed" / name
    quiet = contextlib.redirect_stdout(io.StringIO())
    start = time.perf_counter()
    if not (pre / "nnUNetPlans.json").exists():
        # its planner sets torch's threads to nnUNet_n_proc_DA, which must then be positive
        os.environ.update(nnUNet_n_proc_DA=str(threads))
        with quiet:
            api.extract_fingerprints([dataset_id], num_processes=2, check_dataset_integrity=True)
            api.plan_experiments([dataset_id])
            api.preprocess([dataset_id], configurations=["3d_fullres"], num_processes=[2])
    preprocess_s = time.perf_counter() - start
    os.environ.update(nnUNet_n_proc_DA="0")  # training: augmentation in the main process
    torch.set_num_threads(threads)
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # what nnUNetv2_train's entry point adds
    dataset = json.loads((pre / "dataset.json").read_text())

    class TimeUp(Exception):
        pass

    class TimedTrainer(nnUNetTrainer):
        """nnUNetTrainer with a wall-clock budget: after each epoch the epoch count (and the
        poly schedule's length) becomes what the remaining seconds allow; none left ends
        training as its last epoch would (``on_train_end`` saves checkpoint_final.pth)."""

        def on_train_start(self):
            super().on_train_start()
            self.started = time.perf_counter()

        def on_epoch_end(self):
            super().on_epoch_end()  # advances current_epoch
            elapsed = time.perf_counter() - self.started
            per_epoch = elapsed / self.current_epoch
            left = max(0, math.floor((seconds - elapsed) / per_epoch))
            self.num_epochs = self.current_epoch + left
            self.lr_scheduler.max_steps = max(self.num_epochs, 1)
            if not left:
                raise TimeUp

    torch.manual_seed(0)
    with quiet:
        trainer = TimedTrainer(plans, "3d_fullres", 0, dataset, device=torch.device("cpu"))
    trainer.num_iterations_per_epoch = ITERATIONS
    trainer.num_val_iterations_per_epoch = ITERATIONS // 5  # its ratio, 250 : 50
    trainer.num_epochs = 10_000
    start = time.perf_counter()
    with quiet:
        try:
            trainer.run_training()
        except TimeUp:
            trainer.on_train_end()
    train_s = time.perf_counter() - start
    epochs, folder = trainer.current_epoch, Path(trainer.output_folder_base)

    out = work / f"pred_nnunet_{kind}"
    predictor = raw_predict.nnUNetPredictor(
        device=torch.device("cpu"), verbose=False, verbose_preprocessing=False, allow_tqdm=False
    )
    # nnU-Net looks the checkpoint's trainer class up by name among its own modules (some of
    # which need timm, not installed here); this one builds nnUNetTrainer's network
    raw_predict.recursive_find_trainer_class_by_name = lambda *a, **k: nnUNetTrainer
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    start = time.perf_counter()
    with quiet:
        predictor.predict_from_files(str(raw / "imagesTs"), str(out), num_processes_preprocessing=1,
                                     num_processes_segmentation_export=1)  # fmt: skip
    c = PlansManager(plans).get_configuration("3d_fullres")
    return {
        "preprocess_s": round(preprocess_s, 1),
        "train_s": round(train_s, 1),
        "predict_s": round(time.perf_counter() - start, 1),
        "steps": epochs * ITERATIONS,
        "network": f"{c.network_arch_class_name.split('.')[-1]}, patch "
        f"{'×'.join(map(str, c.patch_size))}, batch {c.batch_size}",
        "prediction": out,
    }


def _segkit(kind: str, raw: Path, work: Path, seconds: float) -> dict:
    """``train.py data=msd data.root=RAW`` for ``seconds``, then ``segkit predict`` with its
    defaults (no mirroring) and with ``tta=true`` (nnU-Net's mirroring)."""
    from segkit.config import compose
    from segkit.inference.predict.run import PredictOptions, predict
    from segkit.training.run import train

    out = work / f"run_segkit_{kind}"
    clock = f"00:{int(seconds) // 3600:02d}:{int(seconds) // 60 % 60:02d}:{int(seconds) % 60:02d}"
    overrides = [
        "data=msd",
        f"data.root={raw}",
        f"paths.output_dir={out}",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=10000",
        f"trainer.max_time={clock}",
        f"data.samples_per_epoch={2 * ITERATIONS}",
        "data.num_workers=0",
        "calibrate_inference.enabled=false",
        "print_plan=false",
    ]
    start = time.perf_counter()
    _, metrics = train(compose(overrides, hydra_config=True))
    train_s = time.perf_counter() - start
    arms = {}
    for name, tta in (("segkit", None), ("segkit_tta", True)):  # its default; mirrored as nnU-Net
        pred = work / f"pred_{name}_{kind}"
        start = time.perf_counter()
        predict(
            ckpt=out / "checkpoints" / "last.ckpt",
            input=raw / "imagesTs",
            output=pred,
            options=PredictOptions(progress=False, tta=tta),
        )
        arms[name] = {
            "train_s": round(train_s, 1),
            "predict_s": round(time.perf_counter() - start, 1),
            "steps": metrics["global_step"],
            "network": f"params {metrics['params']:,}",
            "prediction": pred,
        }
    return arms


def _score(pred: Path, labels: Path, raw: Path) -> dict[str, float]:
    """Mean Dice over the held-out cases per class (dense) or region."""
    from segkit.data.layouts import read_labels
    from segkit.inference.metrics.dice import mean_dice
    from segkit.inference.metrics.evaluate import evaluate

    info = read_labels(raw)
    scores = evaluate(pred=pred, labels=labels, regions=info.regions or None)
    if info.regions:
        names = [r.name for r in info.regions]
        rows = [[r[1] for r in s.regions] for s in scores]
    else:
        names = [info.names[v] for v in sorted(info.names) if v]
        rows = [list(s.dice) for s in scores]
    per, mean = mean_dice(torch.tensor(rows, dtype=torch.float64))
    return {**{n: float(v) for n, v in zip(names, per)}, "mean": mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "bench_vs_nnunet")
    parser.add_argument("--seconds", type=float, default=420, help="training, each arm")
    parser.add_argument("--cases", type=int, default=16, help="training cases (+3 held out)")
    parser.add_argument("--datasets", default="dense,regions")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    args = parser.parse_args()
    work = args.work.resolve()
    os.environ.update(
        nnUNet_raw=str(work / "nnUNet_raw"),
        nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
        nnUNet_results=str(work / "nnUNet_results"),
        nnUNet_compile="false",
    )
    torch.set_num_threads(args.threads)
    results = {}
    for kind in args.datasets.split(","):
        raw, labels = _raw_folder(kind, work, args.cases)
        arms = {"nnunet": _nnunet(kind, raw, work, args.seconds, args.threads)}
        torch.set_num_threads(args.threads)
        arms.update(_segkit(kind, raw, work, args.seconds))
        for arm in arms.values():
            arm["dice"] = _score(arm.pop("prediction"), labels, raw)
        results[kind] = arms
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\n{args.seconds:g} s of training each, {args.threads} threads; {load}")
    for kind, arms in results.items():
        print(f"\n{kind}: {'':<18}{'nnU-Net':>9}{'segkit':>9}{'diff':>9}{'+TTA':>9}{'diff':>9}")
        for name in arms["segkit"]["dice"]:
            a, b = arms["nnunet"]["dice"][name], arms["segkit"]["dice"][name]
            c = arms["segkit_tta"]["dice"][name]
            print(f"{'':<8}{name:<20}{a:9.4f}{b:9.4f}{b - a:+9.4f}{c:9.4f}{c - a:+9.4f}")
        for arm, r in arms.items():
            print(f"  {arm}: {r['steps']} steps in {r['train_s']} s, predict {r['predict_s']} s,"
                  f" {r['network']}")  # fmt: skip
    results["load"] = load
    (work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

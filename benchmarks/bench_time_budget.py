"""Training to a time budget: the LR schedule over the time spent vs over the step budget.

Every run trains the demo network (``data=demo``, ``model=demo``) on the demo data for the
same wall-clock budget (``trainer.max_time``), then its final weights (``last.ckpt``, saved
when the Timer stops the run) are scored the same way: ``segkit predict mode=sliding
overlap=0.5 window_scale=1`` + ``segkit evaluate`` (mean foreground Dice) on cases no run
trained on: the demo's three test cases (``imagesTs``/``labelsTs``) and 15 more drawn by
the same generator with another seed (``segkit make-demo DIR seed=1 num_cases=15``).
Arms:

- ``A`` ``optim.scheduler.over=time``: segkit's poly schedule anneals over ``max_time``
  (what ``over=auto`` does when the time budget ends first);
- ``B`` ``optim.scheduler.over=steps``: poly over ``trainer.max_epochs`` (1000 by default
  here, a long nominal schedule as in nnU-Net), cut by ``max_time`` while the learning
  rate is still high (the behaviour before the time schedule existed);
- ``C`` a minimal MONAI-style loop on the same network without deep supervision: plain
  PyTorch, AdamW (lr 1e-3, weight decay 1e-4: segkit's ``optim=adamw_cosine`` values) at a
  constant rate, MONAI ``DiceCELoss(to_onehot_y, softmax)``, MONAI ``RandFlip`` p 0.5 per
  axis as the only augmentation, no gradient clipping, the same patch stream (segkit's
  loader) and the same budget measured the same way (from the first batch request to the
  end of the step that crosses it).

During training nothing is validated (``trainer.check_val_every_n_epoch`` past the run,
``calibrate_inference.enabled=false``), so the budget is spent on optimizer steps alone.
The arms of one seed (of ``--parallel-seeds`` seeds) run at the same time, one torch/OpenMP
thread each, so they share the machine's load (sampled every 10 s and reported); the launch
order rotates per seed.

    python benchmarks/bench_time_budget.py --quick               # one seed, 30 s runs (~2 min)
    python benchmarks/bench_time_budget.py                       # 5 seeds x A,B,C, 240 s each
    python benchmarks/bench_time_budget.py --seeds 0,1,2 --budget 180 --arms A,B
    python benchmarks/bench_time_budget.py --seeds 5,6 --parallel-seeds 2 --budget 900
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ARMS = ("A", "B", "C")
ARM_NAMES = {
    "A": "segkit, over=time",
    "B": "segkit, over=steps",
    "C": "minimal MONAI-style loop",
}
SCORE = ["mode=sliding", "overlap=0.5", "window_scale=1", "tta=false", "progress=false"]
ADAMW = {"lr": 1.0e-3, "weight_decay": 1.0e-4}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _max_time(seconds: int) -> str:
    s = int(seconds)
    return f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _segkit_overrides(data_dir: Path, run_dir: Path, seed: int, budget: int, epochs: int):
    return [
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        f"seed={seed}",
        f"data.seed={seed}",
        f"trainer.max_time={_max_time(budget)}",
        f"trainer.max_epochs={epochs}",
        f"trainer.check_val_every_n_epoch={epochs + 1}",
        "calibrate_inference.enabled=false",
        "callbacks.lr_monitor.logging_interval=step",
        "trainer.log_every_n_steps=1",  # the CSV holds the rate of the very last step
        "print_plan=false",
    ]


def _command(arm: str, args: argparse.Namespace, run_dir: Path, seed: int) -> list[str]:
    if arm == "C":
        return [
            sys.executable,
            __file__,
            "--loop-c",
            str(run_dir),
            "--data",
            str(args.data),
            "--seed",
            str(seed),
            "--budget",
            str(args.budget),
        ]
    over = {"A": "time", "B": "steps"}[arm]
    return [
        sys.executable,
        str(REPO / "train.py"),
        *_segkit_overrides(args.data, run_dir, seed, args.budget, args.max_epochs),
        f"optim.scheduler.over={over}",
    ]


# ---------------------------------------------------------------- arm C (own process)
def loop_c(run_dir: Path, data_dir: Path, seed: int, budget: float) -> None:
    """The minimal loop: segkit's patches and network, MONAI's loss and flips, AdamW."""
    import numpy as np
    import torch
    from monai.data import set_track_meta
    from monai.losses import DiceCELoss
    from monai.transforms import RandFlip
    from omegaconf import OmegaConf

    from segkit.config import compose
    from segkit.nn import UNet
    from segkit.training.run import prepare

    torch.set_num_threads(1)
    set_track_meta(False)  # MONAI transforms return plain tensors
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = compose(
        [
            f"paths.data_dir={data_dir}",
            f"paths.output_dir={run_dir}",
            f"seed={seed}",
            f"data.seed={seed}",
            "data.augment=null",
            "model.deep_supervision=false",
        ]
    )
    OmegaConf.resolve(cfg)
    dm, spec, _, info = prepare(cfg)
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(seed)
    net = UNet(spec)
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), **ADAMW)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    flips = [RandFlip(prob=0.5, spatial_axis=a) for a in range(spec.spatial_dims)]
    for i, f in enumerate(flips):
        f.set_random_state(seed * 10 + i)
    loader = dm.train_dataloader()
    steps, losses = 0, []
    start = time.monotonic()
    done = False
    while not done:
        for batch in loader:
            images, labels = [], []
            for img, lab in zip(batch["image"], batch["label"].long(), strict=True):
                for f in flips:
                    f.randomize(None)
                    img, lab = f(img, randomize=False), f(lab, randomize=False)
                images.append(torch.as_tensor(img))
                labels.append(torch.as_tensor(lab))
            x, y = torch.stack(images), torch.stack(labels)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            optimizer.step()
            steps += 1
            losses.append(float(loss.detach()))
            if time.monotonic() - start >= budget:
                done = True
                break
    elapsed = time.monotonic() - start
    ckpt = {
        "hyper_parameters": {
            "model": spec.to_dict(),
            "patch_size": [int(v) for v in cfg.data.patch_size],
            "label_names": {int(k): v for k, v in info.label_names.items()},
            "preprocessor": dm.preprocessor.to_dict(),
            "slice_axis": int(dm.slice_axis),
            "val_mode": "auto",
            "val_overlap": 0.5,
        },
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "global_step": steps,
    }
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    torch.save(ckpt, run_dir / "checkpoints" / "last.ckpt")
    summary = {
        "global_step": steps,
        "train_seconds": round(elapsed, 1),
        "lr_end": optimizer.param_groups[0]["lr"],
        "loss_last50": float(np.mean(losses[-50:])),
    }
    (run_dir / "loop_c.json").write_text(json.dumps(summary, indent=1))


# ---------------------------------------------------------------- reading a run back
def _csv_lr(run_dir: Path) -> tuple[float | None, int | None]:
    """The last logged learning rate and its step (``csv/metrics.csv``, ``lr-*`` column)."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return None, None
    lr = step = None
    with path.open() as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if key and key.startswith("lr-") and value not in ("", None):
                    lr, step = float(value), int(row["step"])
    return lr, step


def _train_loss_end(run_dir: Path) -> float | None:
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    values = []
    with path.open() as fh:
        for row in csv.DictReader(fh):
            if row.get("train/loss_step"):
                values.append(float(row["train/loss_step"]))
    return statistics.mean(values[-5:]) if values else None


def _run_facts(arm: str, run_dir: Path) -> dict[str, Any]:
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    facts: dict[str, Any] = {"ckpt_step": int(ckpt.get("global_step", -1))}
    if arm == "C":
        info = json.loads((run_dir / "loop_c.json").read_text())
        facts.update(
            steps=info["global_step"],
            lr_end_csv=None,
            lr_end_csv_step=None,
            lr_end_ckpt=info["lr_end"],
            train_seconds=info["train_seconds"],
            loss_end=info["loss_last50"],
        )
        return facts
    metrics = json.loads((run_dir / "metrics.json").read_text())
    lr, step = _csv_lr(run_dir)
    facts.update(
        steps=int(metrics["global_step"]),
        lr_end_csv=lr,
        lr_end_csv_step=step,
        lr_end_ckpt=float(ckpt["optimizer_states"][0]["param_groups"][0]["lr"]),
        loss_end=_train_loss_end(run_dir),
        wall_time_s=metrics.get("wall_time_s"),
    )
    return facts


def _score(run_dir: Path, sets: dict[str, tuple[Path, Path]]) -> dict[str, float]:
    """segkit predict + segkit evaluate of last.ckpt on each held-out set."""
    out = {}
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    for name, (images, labels) in sets.items():
        pred = run_dir / f"pred_{name}"
        cmd = ["segkit", "predict", f"ckpt={ckpt}", f"input={images}", f"output={pred}", *SCORE]
        subprocess.run(cmd, check=True, env=_env(), cwd=REPO, capture_output=True)
        cmd = ["segkit", "evaluate", f"pred={pred}", f"labels={labels}"]
        subprocess.run(cmd, check=True, env=_env(), cwd=REPO, capture_output=True)
        summary = json.loads((pred / "summary.json").read_text())
        out[name] = float(summary["foreground_mean"]["Dice"])
    return out


# ---------------------------------------------------------------- the benchmark
class LoadSampler:
    """1-minute load averages every ``every`` seconds while a slot runs."""

    def __init__(self, every: float = 10.0) -> None:
        self.every, self.values = every, [_load()]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.values.append(_load())

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.values.append(_load())


def _make_data(data: Path) -> dict[str, tuple[Path, Path]]:
    demo, extra = data / "demo", data / "demo_heldout"
    if not (demo / "dataset.json").is_file():
        subprocess.run(["segkit", "make-demo", str(demo)], check=True, env=_env(), cwd=REPO)
    if not (extra / "dataset.json").is_file():
        subprocess.run(
            ["segkit", "make-demo", str(extra), "seed=1", "num_cases=15"],
            check=True,
            env=_env(),
            cwd=REPO,
        )
    return {
        "test3": (demo / "imagesTs", demo / "labelsTs"),
        "heldout15": (extra / "imagesTr", extra / "labelsTr"),
    }


def _warm_cache(args: argparse.Namespace) -> None:
    """Preprocess the demo once, so concurrent runs never build the cache together."""
    code = (
        "from omegaconf import OmegaConf; from segkit.config import compose; "
        "from segkit.training.run import prepare; "
        f"cfg = compose(['paths.data_dir={args.data}', 'paths.output_dir={args.out}/warm']); "
        "OmegaConf.resolve(cfg); dm = prepare(cfg)[0]; dm.prepare_data()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), cwd=REPO)


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def table(results: list[dict[str, Any]], arms: list[str], command: str) -> str:
    """Markdown: per arm the median and the per-seed values."""
    lines = [
        "| arm | runs | steps (median; per seed) | LR of the last step, CSV (median) "
        "| LR after it, checkpoint (median) | Dice test3 (median; per seed) "
        "| Dice held-out 15 (median; per seed) | load (mean) |",
        "|---|---:|---|---:|---:|---|---|---:|",
    ]
    for arm in arms:
        rows = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
        if not rows:
            continue

        def col(key: str, spec: str, rows=rows) -> str:
            vals = [r.get(key) for r in rows]
            med = _median(vals)
            each = ", ".join(_fmt(v, spec) for v in vals)
            return f"{_fmt(med, '.0f' if spec == 'd' else spec)} ({each})"

        lr_csv = _median([r.get("lr_end_csv") for r in rows])
        lr_ckpt = _median([r.get("lr_end_ckpt") for r in rows])
        load = statistics.mean(r["load_mean"] for r in rows)
        lines.append(
            f"| {arm}: {ARM_NAMES[arm]} | {len(rows)} | {col('steps', 'd')} "
            f"| {_fmt(lr_csv, '.2e')} | {_fmt(lr_ckpt, '.2e')} "
            f"| {col('dice_test3', '.3f')} | {col('dice_heldout15', '.3f')} | {load:.1f} |"
        )
    lines.append("")
    lines.append(f"`{command}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Writes OUT/results.json and OUT/table.md; every run's directory is OUT/runs/. "
        "Runs already in OUT/results.json at the same --budget are kept, not run again.",
    )
    parser.add_argument("--budget", type=int, default=240, help="seconds of training per run")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    parser.add_argument("--arms", default="A,B,C", help="any of A,B,C (see the docstring)")
    parser.add_argument("--max-epochs", type=int, default=1000, help="B's nominal schedule")
    parser.add_argument("--data", type=Path, default=Path("/tmp/bench_time_budget/data"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_time_budget"))
    parser.add_argument(
        "--parallel-seeds", type=int, default=1, help="seeds whose arms run at the same time"
    )
    parser.add_argument("--quick", action="store_true", help="one seed, 30 s runs (a smoke test)")
    parser.add_argument("--loop-c", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop_c is not None:
        loop_c(args.loop_c, args.data, args.seed, float(args.budget))
        return 0
    if args.quick:
        args.budget, args.seeds = 30, args.seeds.split(",")[0]
    args.data, args.out = args.data.resolve(), args.out.resolve()
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = [a.strip().upper() for a in args.arms.split(",")]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"--arms: unknown {unknown}; choose from {','.join(ARMS)}")
    command = "python benchmarks/bench_time_budget.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:])
    )
    sets = _make_data(args.data)
    _warm_cache(args)
    results_path = args.out / "results.json"
    # runs already in OUT/results.json (same budget) are kept and not run again
    old = json.loads(results_path.read_text()) if results_path.is_file() else []
    results: list[dict[str, Any]] = [r for r in old if r["budget_s"] == args.budget]
    done = {(r["arm"], r["seed"]) for r in results}
    seeds = [s for s in seeds if any((a, s) not in done for a in arms)]
    slots = [seeds[i : i + args.parallel_seeds] for i in range(0, len(seeds), args.parallel_seeds)]
    for slot in slots:
        jobs = []  # (arm, seed, run dir): the arms of every seed of the slot run at once
        for seed in slot:
            n = seeds.index(seed)
            order = arms[n % len(arms) :] + arms[: n % len(arms)]  # rotated per seed
            jobs += [
                (arm, seed, args.out / "runs" / f"{arm}_seed{seed}")
                for arm in order
                if (arm, seed) not in done
            ]
        names = ", ".join(f"{arm}{seed}" for arm, seed, _ in jobs)
        print(f"slot {names} (load {_load():.2f})", flush=True)
        with LoadSampler() as load:
            start = time.time()
            procs = []
            for arm, seed, run in jobs:
                run.parent.mkdir(parents=True, exist_ok=True)
                log = (run.parent / f"{arm}_seed{seed}.log").open("w")
                cmd = _command(arm, args, run, seed)
                proc = subprocess.Popen(
                    cmd, env=_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT
                )
                procs.append((proc, log))
            codes = []
            for proc, log in procs:
                codes.append(proc.wait())
                log.close()
            wall = time.time() - start
        for (arm, seed, _), code in zip(jobs, codes, strict=True):
            if code != 0:
                raise SystemExit(f"{arm} seed {seed} failed (rc {code}): see its .log")
        with ThreadPoolExecutor(len(jobs)) as pool:
            scores = [f.result() for f in [pool.submit(_score, run, sets) for _, _, run in jobs]]
        for (arm, seed, run), score in zip(jobs, scores, strict=True):
            row = {
                "arm": arm,
                "seed": seed,
                "budget_s": args.budget,
                "concurrent_runs": len(jobs),
                "slot_wall_s": round(wall, 1),
                "load_start": load.values[0],
                "load_end": load.values[-1],
                "load_mean": round(statistics.mean(load.values), 2),
                **_run_facts(arm, run),
                **{f"dice_{k}": v for k, v in score.items()},
            }
            results.append(row)
            print(json.dumps(row), flush=True)
        results_path.write_text(json.dumps(results, indent=1))
        (args.out / "table.md").write_text(table(results, arms, command) + "\n")
    print(table(results, arms, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

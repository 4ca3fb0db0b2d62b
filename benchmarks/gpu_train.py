"""A short bf16 ``trainer=gpu`` training run, timed step by step (part of gpu_check.sh).

The real ``conf/train.yaml`` with ``trainer=gpu`` (bf16-mixed) and ``model=nnunet_default``
at a 128³ patch on the demo data, trained through ``segkit.training.run.train`` for a few
steps and one validation case; a callback times every training step after ``--warmup``
(cuDNN autotuning, allocator growth). Reports steps/s over wall time (data loading included)
and the median compute time of a step, and the allocator's peak.

    python benchmarks/gpu_train.py --data-dir DIR --out DIR [--steps 40] [--warmup 10]
        [override ...]      # e.g. model=resenc data.batch_size=4
"""

from __future__ import annotations

import argparse
import statistics
import time

import pytorch_lightning as pl
import torch


class StepTimer(pl.Callback):
    """Times each training step; the last instance made is kept on the class."""

    last: StepTimer | None = None

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.compute: list[float] = []
        self._start = 0.0
        StepTimer.last = self

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        end = self._now()
        self.compute.append(end - self._start)
        self.ends.append(end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="paths.data_dir (holds demo/)")
    parser.add_argument("--out", required=True, help="paths.output_dir")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides")
    args = parser.parse_args()
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup + 1")

    from omegaconf import open_dict

    from segkit.config import compose
    from segkit.training.run import train

    batch = 2
    overrides = [
        "trainer=gpu",
        "model=nnunet_default",
        "data.patch_size=[128,128,128]",
        f"data.batch_size={batch}",
        f"data.samples_per_epoch={args.steps * batch}",
        f"data.num_workers={args.workers}",
        "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=1",
        "++trainer.limit_val_batches=1",
        "logger=csv",
        "print_plan=false",
        "calibrate_inference.enabled=false",
        f"paths.data_dir={args.data_dir}",
        f"paths.output_dir={args.out}",
        *args.overrides,
    ]
    cfg = compose(overrides)
    if cfg.trainer.precision != "bf16-mixed":
        raise SystemExit(f"trainer=gpu gave precision {cfg.trainer.precision!r}, not bf16-mixed")
    with open_dict(cfg):
        # only the timer: no checkpoints or pictures to write in a timed run
        cfg.callbacks = {"step_timer": {"_target_": f"{__name__}.StepTimer"}}
    _, metrics = train(cfg)
    timer = StepTimer.last
    assert timer is not None and len(timer.ends) == metrics["global_step"], metrics["global_step"]
    timed = timer.ends[args.warmup :]
    rate = (len(timed) - 1) / (timed[-1] - timed[0])
    step_ms = 1e3 * statistics.median(timer.compute[args.warmup :])
    print(
        f"{metrics['device']}: {metrics['global_step']} steps of batch {batch} at "
        f"{'x'.join(map(str, metrics['patch_size']))}, {metrics['params']:,} params, "
        f"{metrics['gflops_per_patch']} GFLOPs per patch"
    )
    print(
        f"RESULT: {rate:.2f} steps/s (wall, loader included; steps {args.warmup + 1}-"
        f"{len(timer.ends)}), median step {step_ms:.0f} ms, "
        f"peak {metrics['peak_memory_mib'] / 1024:.1f} GiB"
    )


if __name__ == "__main__":
    # run as the importable module `gpu_train`, so the StepTimer Hydra instantiates (by the
    # dotted name) is this very class
    import gpu_train

    gpu_train.main()

"""Learning-rate schedules over steps or over ``trainer.max_time`` (segkit.training.schedule).

References: torch's own PolynomialLR / LinearLR + CosineAnnealingLR sequences for the step
budget; the closed forms ``(1 - t/T)^0.9`` and the cosine for the time budget, on a fake
clock that Lightning's Timer reads.
"""

from __future__ import annotations

import math
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, Timer

from segkit.errors import ConfigError
from segkit.training.schedule import build_scheduler
from tests.utils import REPO

BASE_LR = 0.01


def optim_conf(name: str) -> dict:
    """The scheduler settings as shipped in conf/optim."""
    return dict(OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "optim" / name).scheduler))


class FakeTrainer:
    """What ``build_scheduler`` reads from a Lightning trainer."""

    def __init__(self, steps: float, callbacks=()) -> None:
        self.estimated_stepping_batches = steps
        self.callbacks = list(callbacks)
        self.world_size = 1


def sgd(lr: float = BASE_LR) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lrs(optimizer, scheduler, n: int) -> list[float]:
    """The learning rate of each of ``n`` steps (an optimizer step, then a scheduler step)."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's deprecated step(epoch) inside torch
        for _ in range(n):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    out.append(optimizer.param_groups[0]["lr"])
    return out


def torch_reference(cfg: dict, total: int, lr: float = BASE_LR):
    """Today's schedules, built from torch's own classes (what segkit used before)."""
    opt = sgd(lr)
    S = torch.optim.lr_scheduler
    if cfg["name"] == "poly":
        return opt, S.PolynomialLR(opt, total_iters=total, power=cfg.get("exponent", 0.9))
    warm = max(1, math.ceil(total * cfg.get("warmup_fraction", 0.05)))
    sched = S.SequentialLR(
        opt,
        [
            S.LinearLR(opt, start_factor=0.01, total_iters=warm),
            S.CosineAnnealingLR(opt, T_max=max(1, total - warm), eta_min=cfg.get("eta_min", 0.0)),
        ],
        milestones=[warm],
    )
    return opt, sched


class FakeClock:
    """``time.monotonic`` for Lightning's Timer: moves only when told."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return float(self.now)  # a plain float, as time.monotonic (checkpoints: weights_only)


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    import pytorch_lightning.callbacks.timer as timer_module

    fake = FakeClock(now=1000.0)
    monkeypatch.setattr(timer_module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


# ------------------------------------------------------------------ the step budget
@pytest.mark.parametrize(
    "cfg",
    [
        optim_conf("sgd_poly.yaml"),
        optim_conf("adamw_cosine.yaml"),
        {"name": "poly", "exponent": 2.0},
        {"name": "cosine", "warmup_fraction": 0.2, "eta_min": 1e-4},
    ],
    ids=["sgd_poly", "adamw_cosine", "poly2", "cosine_eta_min"],
)
@pytest.mark.parametrize("total", [1, 2, 7, 40, 1000])
def test_step_budget_gives_torchs_own_sequence(cfg, total):
    opt, ref = torch_reference(cfg, total)
    expected = lrs(opt, ref, total)
    for over in ("auto", "steps"):
        opt = sgd()
        got = lrs(opt, build_scheduler(opt, {**cfg, "over": over}, FakeTrainer(total)), total)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)


def test_over_steps_ignores_a_time_budget(clock):
    """over=steps with max_time set: today's step schedule, whatever the clock says."""
    cfg = optim_conf("sgd_poly.yaml")
    opt, ref = torch_reference(cfg, 50)
    expected = lrs(opt, ref, 50)
    timer = Timer(duration={"seconds": 10})
    timer.on_train_start(None, None)
    clock.now += 9.0  # 90 % of the time budget spent
    opt = sgd()
    got = lrs(opt, build_scheduler(opt, {**cfg, "over": "steps"}, FakeTrainer(50, [timer])), 50)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)


def test_steps_and_time_whichever_ends_first(clock):
    """auto with both budgets: progress is max(step fraction, time fraction), so for poly
    (decreasing) the rate is the smaller of torch's step sequence and the time closed form."""
    total, duration = 60, 30.0
    cfg = optim_conf("sgd_poly.yaml")
    opt, ref = torch_reference(cfg, total)
    by_steps = lrs(opt, ref, total)
    timer = Timer(duration={"seconds": duration})
    opt = sgd()
    sched = build_scheduler(opt, cfg, FakeTrainer(total, [timer]))
    timer.on_train_start(None, None)
    start = clock.now
    # slow first half (time leads), then fast steps (the step count catches up)
    dts = np.r_[np.full(20, 1.0), np.full(40, 0.05)]
    got, elapsed = [opt.param_groups[0]["lr"]], []
    for dt in dts:
        clock.now += dt
        opt.step()
        sched.step()
        elapsed.append(clock.now - start)
        got.append(opt.param_groups[0]["lr"])
    by_time = [BASE_LR] + [BASE_LR * (1 - min(1.0, t / duration)) ** 0.9 for t in elapsed]
    np.testing.assert_allclose(got, np.minimum(by_steps, by_time), rtol=1e-9, atol=1e-15)
    # both budgets mattered: time led at first, the steps at the end
    assert got[10] < by_steps[10] and got[-2] < by_time[-2] and got[-1] == 0.0


@pytest.mark.parametrize(
    "cfg, steps, timer, match",
    [
        ({"name": "poly", "over": "time"}, 100, False, "needs a time budget"),
        ({"name": "poly", "over": "epochs"}, 100, False, "allowed: auto, steps, time"),
        ({"name": "poly"}, math.inf, False, "needs an end"),
        ({"name": "poly", "over": "steps"}, math.inf, True, "needs an end"),
        ({"name": "cosine", "warmup_fracton": 0.1}, 100, False, "unknown key.*warmup_fracton"),
        ({"name": "step"}, 100, False, "allowed: poly, cosine, none"),
    ],
)
def test_schedule_mistakes_are_config_errors(cfg, steps, timer, match):
    callbacks = [Timer(duration={"seconds": 5})] if timer else []
    with pytest.raises(ConfigError, match=match):
        build_scheduler(sgd(), cfg, FakeTrainer(steps, callbacks))


# ------------------------------------------------------------------ the time budget
class Steps(pl.Callback):
    """Each training step takes ``dts[i]`` seconds of the fake clock."""

    def __init__(self, clock: FakeClock, dts) -> None:
        self.clock, self.dts, self.elapsed = clock, list(dts), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clock.now += self.dts[len(self.elapsed)]
        self.elapsed.append(self.clock.now)


class MemoryLogger(pl.loggers.Logger):
    """Keeps what LearningRateMonitor logs."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    name = "memory"
    version = 0

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def lrs(self) -> list[float]:
        return [m["lr-SGD"] for _, m in self.rows if "lr-SGD" in m]


class Killed(Exception):
    pass


class KillAfter(pl.Callback):
    """Saves a checkpoint after ``step`` steps (as last_every_n_steps does), then dies."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.save_checkpoint(self.path)
            raise Killed


def tiny_module(scheduler: dict):
    from segkit.training.module import SegModule

    torch.manual_seed(0)
    return SegModule(
        model={
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 2,
            "depth": 2,
            "channels": 4,
            "deep_supervision": False,
        },
        optim={
            "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": BASE_LR},
            "scheduler": scheduler,
        },
        loss={"dice_weight": 1.0, "ce_weight": 1.0},
        patch_size=[16, 16],
    )


def loader():
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(8, 1, 16, 16, generator=gen)
    data = [{"image": image[i : i + 2], "label": (image[i : i + 2] > 0.5).long()} for i in (0, 2)]
    return torch.utils.data.DataLoader(data * 2, batch_size=None)  # 4 batches an epoch


def fit(module, callbacks, *, max_time, ckpt_path=None):
    logger = MemoryLogger()
    trainer = pl.Trainer(
        max_epochs=-1,  # no step budget: only the time budget ends the run
        max_time=max_time,
        accelerator="cpu",
        logger=logger,
        callbacks=[LearningRateMonitor(logging_interval="step"), *callbacks],
        log_every_n_steps=1,
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=loader(), ckpt_path=ckpt_path, weights_only=True)
    return trainer, logger


def final_lr(trainer) -> float:
    """The rate the next step would use: what the schedule left the optimizer at."""
    return trainer.optimizers[0].param_groups[0]["lr"]


def test_poly_over_max_time_follows_the_closed_form_and_ends_at_zero(clock):
    budget = 10.0
    dts = np.random.default_rng(0).uniform(0.2, 0.8, size=100)  # uneven steps: time != steps
    steps = Steps(clock, dts)
    trainer, logger = fit(tiny_module({"name": "poly"}), [steps], max_time={"seconds": budget})
    start = steps.elapsed[0] - dts[0]
    t = np.array(steps.elapsed) - start  # training time at the end of each step
    n = len(t)
    assert t[-1] >= budget > t[-2]  # the Timer stopped at the budget
    # the rate of step i is set after step i-1, at training time t[i-1]
    expected = BASE_LR * np.r_[1.0, (1 - t[:-1] / budget) ** 0.9]
    np.testing.assert_allclose(logger.lrs(), expected, rtol=1e-9)
    assert final_lr(trainer) == 0.0
    # a step count could not have produced these rates: they follow time, not i / n
    by_steps = BASE_LR * (1 - np.arange(n) / n) ** 0.9
    assert np.abs(np.array(logger.lrs()) - by_steps).max() > 1e-4


def test_cosine_over_max_time_ends_at_eta_min(clock):
    budget, eta_min, warm = 10.0, 1e-4, 0.2
    dts = np.random.default_rng(1).uniform(0.2, 0.8, size=100)
    steps = Steps(clock, dts)
    cfg = {"name": "cosine", "warmup_fraction": warm, "eta_min": eta_min, "over": "time"}
    trainer, logger = fit(tiny_module(cfg), [steps], max_time={"seconds": budget})
    t = np.array(steps.elapsed) - (steps.elapsed[0] - dts[0])
    p = np.r_[0.0, t[:-1] / budget]
    cosine = eta_min + (BASE_LR - eta_min) * (1 + np.cos(np.pi * (p - warm) / (1 - warm))) / 2
    expected = np.where(p < warm, BASE_LR * (0.01 + 0.99 * p / warm), cosine)
    np.testing.assert_allclose(logger.lrs(), expected, rtol=1e-9)
    assert final_lr(trainer) == pytest.approx(eta_min, rel=1e-12)


def test_a_resumed_run_counts_the_time_spent_before_the_kill(clock, tmp_path):
    """Killed after 7 steps, resumed from the checkpoint on a clock that restarted elsewhere:
    the schedule goes on from the time already spent and still ends at the budget."""
    budget = 10.0
    dts = np.random.default_rng(2).uniform(0.3, 0.7, size=100)
    ckpt = tmp_path / "killed.ckpt"
    first = Steps(clock, dts)
    with pytest.raises(Killed):
        fit(tiny_module({"name": "poly"}), [first, KillAfter(7, ckpt)], max_time="00:00:00:10")
    spent = first.elapsed[-1] - (first.elapsed[0] - dts[0])
    assert 0.2 * budget < spent < 0.5 * budget

    clock.now = 5.0e4  # another process: its monotonic clock has nothing to do with the first
    second = Steps(clock, dts[::-1])
    trainer, logger = fit(
        tiny_module({"name": "poly"}), [second], max_time="00:00:00:10", ckpt_path=ckpt
    )
    t = spent + np.array(second.elapsed) - (second.elapsed[0] - dts[::-1][0])
    assert t[-1] >= budget > t[-2]  # Lightning's Timer, too, counted the time spent before
    # the resumed run's first rate comes from the checkpoint; then (1 - t/T)^0.9 with t
    # counted from the start of the first run
    np.testing.assert_allclose(logger.lrs()[1:], BASE_LR * (1 - t[:-1] / budget) ** 0.9, rtol=1e-9)
    assert final_lr(trainer) == 0.0

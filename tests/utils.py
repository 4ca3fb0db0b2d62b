"""Helpers shared by the tests."""

from pathlib import Path

import pytorch_lightning as pl

REPO = Path(__file__).resolve().parents[1]

# Shrinks the real conf/train.yaml to a CPU run of a few seconds.
TINY = [
    "trainer.accelerator=cpu",
    "trainer.max_epochs=2",
    "trainer.check_val_every_n_epoch=1",
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.samples_per_epoch=4",
    "data.patch_size=[24,24,16]",
    "model.depth=3",
    "model.channels=4",
    "model.max_channels=16",
    "print_plan=false",
    "calibrate_inference.enabled=false",
]


# The smallest real training run a subprocess launches (`python train.py -m ...`, `segkit cv`):
# two steps per job on 24×24×16 patches, one validation case, no pictures or progress bars.
TINY_JOB = (
    "debug=tiny",
    "++trainer.limit_train_batches=2",
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "data.samples_per_epoch=4",
    "data.val_max_cases=1",
    "model.channels=4",
    "data.patch_size=[24,24,16]",
    "logger=csv",
    "~callbacks.pictures",
    "~callbacks.progress_bar",
    "~callbacks.last_every_n_steps",
    "print_plan=false",
)


class CaptureWeights(pl.Callback):
    """Keeps a copy of the network's weights at the end of fit (added to a run with
    ``+callbacks.capture._target_=tests.utils.CaptureWeights``), to compare with
    what the checkpoint reloads."""

    final: dict = {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = pl_module.net.state_dict()
        CaptureWeights.final = {k: v.detach().clone() for k, v in state.items()}


class KillAtStep(pl.Callback):
    """SIGKILLs its own process once ``step`` training steps are done (added to a run with
    ``+callbacks.kill._target_=tests.utils.KillAtStep +callbacks.kill.step=N``): a crash at
    a known point, not a race with a poll loop. Lightning runs checkpoint callbacks after
    this one, so the checkpoint of step N itself is never written."""

    def __init__(self, step: int) -> None:
        self.step = int(step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def autograd_saved_bytes(net, x) -> int:
    """Bytes autograd keeps for backward after ``net(x)`` (each storage counted once,
    parameters excluded), measured for real: what the plan's activation memory must equal."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x)
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    return sum(v for k, v in seen.items() if k not in params)


def preset_memory_estimate(
    overrides: list[str], patch: tuple[int, ...], batch: int, precision: str, device: str
):
    """A composed model preset's spec, optimizer config and the planner's training-memory
    estimate for one step (what the memory tests compare with a real peak)."""
    from omegaconf import OmegaConf

    from segkit.config import compose, model_config
    from segkit.nn import plan_unet
    from segkit.planner import optimizer_state_count, training_memory
    from segkit.spec import UNetSpec

    cfg = compose(overrides)
    model = model_config(cfg, num_channels=1, num_classes=3)
    optimizer = OmegaConf.to_container(cfg.optim.optimizer, resolve=True)
    spec = UNetSpec.from_config(model)
    estimate = training_memory(
        spec,
        plan_unet(spec, patch),
        batch,
        optimizer_states=optimizer_state_count(optimizer),
        precision=precision,
        device=device,
    )
    return model, spec, optimizer, estimate

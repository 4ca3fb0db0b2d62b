"""Pictures of a validation case after each validation, and loss/Dice curves at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl

from segkit.fsio import atomic_path


def _figure_to_png(fig: Any, path: Path) -> np.ndarray:
    """Save ``fig`` atomically and return it as an RGB array (H, W, 3)."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _pick_slices(label: np.ndarray, n: int) -> list[int]:
    """``n`` slices along the last axis, spread over the foreground when there is any."""
    depth = label.shape[-1]
    fg = np.flatnonzero(label.reshape(-1, depth).any(0)) if label.any() else np.arange(depth)
    picks = np.linspace(fg[0], fg[-1], n + 2)[1:-1] if len(fg) > 2 else fg[:n]
    return sorted({int(round(p)) for p in picks}) or [depth // 2]


def render_case(
    image: np.ndarray, label: np.ndarray, pred: np.ndarray, *, title: str, num_slices: int = 3
) -> Any:
    """A figure: one row per slice with image, ground truth and prediction overlays."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if image.ndim == 2:  # 2D case: a single "slice"
        image, label, pred = image[..., None], label[..., None], pred[..., None]
    slices = _pick_slices(label, num_slices)
    k = int(max(label.max(), pred.max(), 1))
    fig, axes = plt.subplots(len(slices), 3, figsize=(9, 3 * len(slices)), squeeze=False)
    lo, hi = np.percentile(image, [1, 99])
    for row, z in zip(axes, slices):
        img = image[..., z].T
        for ax, overlay, name in zip(
            row, (None, label[..., z].T, pred[..., z].T), ("image", "ground truth", "prediction")
        ):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            if overlay is not None:
                masked = np.ma.masked_where(overlay == 0, overlay)
                ax.imshow(
                    masked,
                    cmap="tab10",
                    vmin=0,
                    vmax=max(k, 9),
                    alpha=0.5,
                    origin="lower",
                    interpolation="nearest",
                )
            ax.set_title(f"{name} (slice {z})", fontsize=9)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


class ValidationPictures(pl.Callback):
    """After each validation: a PNG of one validation case (image, truth, prediction).

    Saved under ``<run>/pictures/`` and logged to TensorBoard; at the end of
    training ``<run>/curves.png`` plots the training loss and validation Dice.
    """

    def __init__(self, *, every_n_validations: int = 1, num_slices: int = 3) -> None:
        self.every_n = max(1, every_n_validations)
        self.num_slices = num_slices
        self._count = 0
        self.train_loss: list[tuple[int, float]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"count": self._count, "train_loss": self.train_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._count = state_dict.get("count", 0)
        self.train_loss = [tuple(x) for x in state_dict.get("train_loss", [])]

    def _dir(self, trainer: pl.Trainer) -> Path:
        return Path(trainer.default_root_dir)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = trainer.callback_metrics.get("train/loss_epoch")
        if loss is not None:
            self.train_loss.append((int(trainer.current_epoch), float(loss)))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        example = getattr(pl_module, "last_val_example", None)
        if trainer.sanity_checking or example is None or not trainer.is_global_zero:
            return
        self._count += 1
        if (self._count - 1) % self.every_n:
            return
        import matplotlib.pyplot as plt

        epoch = trainer.current_epoch
        dice = trainer.callback_metrics.get("val/dice_mean")
        title = f"{example['case']} — epoch {epoch}" + (
            f", mean Dice {float(dice):.3f}" if dice is not None else ""
        )
        fig = render_case(
            example["image"][0].numpy(),
            example["label"].numpy(),
            example["pred"].numpy(),
            title=title,
            num_slices=self.num_slices,
        )
        rgb = _figure_to_png(fig, self._dir(trainer) / "pictures" / f"val_epoch{epoch:03d}.png")
        plt.close(fig)
        for logger in trainer.loggers:
            if isinstance(logger, pl.loggers.TensorBoardLogger):
                logger.experiment.add_image(
                    "val/example", rgb, trainer.global_step, dataformats="HWC"
                )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        history = getattr(pl_module, "val_history", [])
        if not self.train_loss and not history:
            return
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
        if self.train_loss:
            e, v = zip(*self.train_loss)
            a1.plot(e, v, marker=".")
        a1.set(xlabel="epoch", ylabel="training loss", title="loss")
        if history:
            epochs = [h["epoch"] for h in history]
            a2.plot(epochs, [h["dice_mean"] for h in history], marker="o", lw=2, label="mean")
            for name in history[-1]["dice"]:
                a2.plot(epochs, [h["dice"].get(name, np.nan) for h in history], ls="--", label=name)
            a2.legend(fontsize=8)
        a2.set(xlabel="epoch", ylabel="validation Dice", ylim=(0, 1), title="Dice")
        fig.tight_layout()
        _figure_to_png(fig, self._dir(trainer) / "curves.png")
        plt.close(fig)

"""The LightningModule: loss, optimisation, whole-volume validation with per-class Dice."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics.functional.segmentation import dice_score

from segkit.errors import ConfigError
from segkit.inference.engine import predict_volume
from segkit.nn import UNet
from segkit.spec import UNetSpec
from segkit.training.losses import build_loss


class SegModule(pl.LightningModule):
    """Trains a :class:`~segkit.nn.UNet`; knows nothing about its layers.

    All constructor arguments are plain Python values and are saved in the
    checkpoint, so ``segkit predict`` rebuilds everything from the checkpoint alone.

    Args:
        model: the normalised model config (``UNetSpec.to_dict()``).
        optim: ``optimizer`` (a ``_partial_`` Hydra target) and ``scheduler`` settings.
        loss: keyword arguments of the loss (see ``conf/loss``).
        patch_size: training patch, also the sliding-window size for validation.
        label_names: class index → name (background included).
        val_mode: ``auto`` | ``whole`` | ``sliding`` for validation.
        val_overlap: sliding-window overlap for validation.
        preprocessor: the data's preprocessing settings (for prediction).
        compile: ``torch.compile`` the network.
        channels_last: use the channels-last memory format.
        slice_axis: for a 2D network on 3D volumes, the volume axis it slices along.
    """

    def __init__(
        self,
        *,
        model: dict[str, Any],
        optim: dict[str, Any],
        loss: dict[str, Any],
        patch_size: list[int],
        label_names: dict[int, str] | None = None,
        val_mode: str = "auto",
        val_overlap: float = 0.5,
        preprocessor: dict[str, Any] | None = None,
        compile: bool = False,
        channels_last: bool = False,
        slice_axis: int = 2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = UNetSpec.from_config(model)
        self.net = UNet(self.spec)
        self.loss_fn = build_loss(loss)
        self.label_names = {int(k): str(v) for k, v in (label_names or {}).items()} or {
            i: f"class{i}" for i in range(self.spec.out_channels)
        }
        self._memory_format = None
        if channels_last:
            self._memory_format = (
                torch.channels_last_3d if self.spec.spatial_dims == 3 else torch.channels_last
            )
            self.net = self.net.to(memory_format=self._memory_format)
        self._forward = torch.compile(self.net, dynamic=True) if compile else self.net
        self._val_dice: list[torch.Tensor] = []
        self.val_history: list[dict[str, Any]] = []
        self.last_val_example: dict[str, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self._memory_format is not None:
            x = x.contiguous(memory_format=self._memory_format)
        return self._forward(x)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss_fn(self(batch["image"]), batch["label"])
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch["image"].shape[0],
        )
        return loss

    # ---------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image, label = batch["image"], batch["label"]
        if self._memory_format is not None:
            image = image.contiguous(memory_format=self._memory_format)
        logits = self.predict_volume(image)
        loss = self.loss_fn.loss(logits, label)
        self.log("val/loss", loss, on_epoch=True, batch_size=1, sync_dist=True)
        pred = logits.argmax(1)
        k = self.spec.out_channels
        # per case, per foreground class; NaN where the class is absent from both
        dice = dice_score(
            pred,
            label[:, 0].long(),
            num_classes=k,
            include_background=False,
            average="none",
            input_format="index",
        )
        absent = ~torch.stack(
            [((pred == c) | (label[:, 0] == c)).flatten(1).any(1) for c in range(1, k)], dim=1
        )
        dice = torch.where(absent, torch.full_like(dice, float("nan")), dice.float())
        self._val_dice.append(dice)
        if batch_idx == 0:
            self.last_val_example = {
                "image": image[0].detach().float().cpu(),
                "label": label[0, 0].detach().cpu(),
                "pred": pred[0].detach().cpu(),
                "case": str(batch.get("case", ["case"])[0]),
            }

    def predict_volume(self, image: torch.Tensor) -> torch.Tensor:
        """Logits for whole volumes (N, C, *S); a 2D network goes slice by slice."""
        return predict_volume(
            self.net,
            image,
            window=self.hparams.patch_size,
            slice_axis=self.hparams.slice_axis,
            mode=self.hparams.val_mode,
            overlap=self.hparams.val_overlap,
        )

    def on_validation_epoch_end(self) -> None:
        if not self._val_dice:
            return
        local = torch.cat(self._val_dice)
        self._val_dice.clear()
        gathered = self.all_gather(local)
        per_case = gathered.reshape(-1, local.shape[-1]) if self.trainer.world_size > 1 else local
        per_class = torch.nanmean(per_case, dim=0)
        per_class = torch.nan_to_num(per_class, nan=0.0)
        mean = per_class.mean()
        # every rank holds the gathered values, so syncing only averages identical numbers
        self.log("val/dice_mean", mean, prog_bar=True, sync_dist=True)
        record = {
            "epoch": int(self.current_epoch),
            "step": int(self.global_step),
            "dice_mean": float(mean),
            "dice": {},
        }
        for c, v in enumerate(per_class.tolist(), start=1):
            name = self.label_names.get(c, f"class{c}")
            self.log(f"val/dice_{name}", v, sync_dist=True)
            record["dice"][name] = v
        if not self.trainer.sanity_checking:
            self.val_history.append(record)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["segkit_val_history"] = list(self.val_history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_history = list(checkpoint.get("segkit_val_history", []))

    # ------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        from hydra.utils import instantiate

        optim = self.hparams.optim
        optimizer = instantiate(optim["optimizer"])(params=self.parameters())
        sched = dict(optim.get("scheduler") or {})
        name = sched.pop("name", "none")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if name == "poly":
            scheduler = torch.optim.lr_scheduler.PolynomialLR(
                optimizer, total_iters=total, power=sched.get("exponent", 0.9)
            )
        elif name == "cosine":
            warm = max(1, math.ceil(total * sched.get("warmup_fraction", 0.05)))
            scheduler = torch.optim.lr_scheduler.SequentialLR(
                optimizer,
                [
                    torch.optim.lr_scheduler.LinearLR(
                        optimizer, start_factor=0.01, total_iters=warm
                    ),
                    torch.optim.lr_scheduler.CosineAnnealingLR(
                        optimizer, T_max=max(1, total - warm)
                    ),
                ],
                milestones=[warm],
            )
        elif name in ("none", None):
            return {"optimizer": optimizer}
        else:
            raise ConfigError(f"optim.scheduler.name: got {name!r}; allowed: poly, cosine, none")
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

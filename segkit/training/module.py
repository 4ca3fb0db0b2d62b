"""The LightningModule: loss, optimisation, validation through segkit's one inference path."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch

from segkit.data.regions import Region
from segkit.defaults import DEFAULT_OVERLAP, SLICE_AXIS
from segkit.errors import ConfigError
from segkit.inference.engine.outputs import OutputHead
from segkit.inference.engine.segment import Segmentation, segment
from segkit.inference.engine.settings import InferenceSettings
from segkit.inference.engine.sliding import ModelRun
from segkit.inference.metrics.dice import case_dice, case_region_dice, mean_dice
from segkit.nn import UNet
from segkit.spec import UNetSpec
from segkit.training.losses import build_loss
from segkit.training.schedule import build_scheduler


def build_optimizer(cfg: dict[str, Any], params: Any) -> torch.optim.Optimizer:
    """The optimizer of ``optim.optimizer``: a ``torch.optim`` class and its arguments.

    Only optimizers of ``torch.optim`` are accepted (an allow-list, not Hydra's
    ``instantiate``): hyperparameters come back from checkpoints, which must not be able
    to name arbitrary code to run.
    """
    target = str(cfg.get("_target_", ""))
    name = target.removeprefix("torch.optim.")
    cls = getattr(torch.optim, name, None) if target.startswith("torch.optim.") else None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        allowed = sorted(
            n
            for n, c in vars(torch.optim).items()
            if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and n != "Optimizer"
        )
        raise ConfigError(
            f"optim.optimizer._target_={target!r}: not an optimizer segkit builds; use one of "
            f"torch.optim.{{{', '.join(allowed)}}}"
        )
    kwargs = {k: v for k, v in cfg.items() if not str(k).startswith("_")}
    try:
        return cls(params, **kwargs)
    except (TypeError, ValueError) as err:  # torch's own checks (a negative lr)
        given = ", ".join(f"optim.optimizer.{k}={v!r}" for k, v in kwargs.items())
        raise ConfigError(f"optim.optimizer ({target}; {given}): {err}") from None


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
        ignore_label: label value of unannotated voxels (dataset.json ``"ignore"``); left
            out of the loss and the validation Dice. None: every voxel is annotated.
        regions: for region training, ``[{"name", "labels"}]`` per output channel
            (dataset.json regions); the loss is per-region BCE + Dice and validation
            scores each region. None: one softmax channel per class.
        output_head: what the outputs mean, ``{"kind": "sigmoid", "region_order": [...]}``
            for regions (read back by ``segkit predict``); None: softmax classes.
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
        val_overlap: float = DEFAULT_OVERLAP,
        preprocessor: dict[str, Any] | None = None,
        compile: bool = False,
        channels_last: bool = False,
        slice_axis: int = SLICE_AXIS,
        ignore_label: int | None = None,
        regions: list[dict[str, Any]] | None = None,
        output_head: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.regions = tuple(Region.from_dict(dict(r)) for r in regions or ())
        self.head = OutputHead.from_dict(output_head)
        if bool(self.regions) != self.head.is_regions:
            raise ConfigError(
                f"SegModule: regions {regions} and output_head {output_head} disagree; a "
                "region model needs both (one sigmoid channel per region)"
            )
        self.spec = UNetSpec.from_config(model)
        # the attribute names the checkpoint's weights (predict.checkpoint.NET_ATTRIBUTE)
        self.net = UNet(self.spec)
        self.loss_fn = build_loss(loss, ignore_label=ignore_label, regions=self.regions)
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
    @property
    def inference_settings(self) -> InferenceSettings:
        """How validation infers: the settings ``segkit predict`` takes as ``mode``/``overlap``."""
        return InferenceSettings(
            mode=self.hparams.val_mode, overlap=float(self.hparams.val_overlap)
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image, label = batch["image"], batch["label"]
        cases = batch.get("case", [None] * image.shape[0])
        loss_sums: dict[str, torch.Tensor] = {}
        dice = []
        for i in range(image.shape[0]):
            target = label[i : i + 1, 0]

            def add_loss(box: tuple[slice, ...], logits: torch.Tensor, target=target) -> None:
                sums = self.loss_fn.loss.sums(logits[None], target[(slice(None), *box)])
                for key, value in sums.items():
                    loss_sums[key] = loss_sums[key] + value if key in loss_sums else value

            pred = self.predict_volume(image[i : i + 1], logits=add_loss).labels
            pred = pred.to(label.device)
            dice.append(self.score_case(cases[i], pred, label[i, 0]))
            if batch_idx == 0 and i == 0:
                self.last_val_example = {
                    "image": image[0].detach().float().cpu(),
                    "label": label[0, 0].detach().cpu(),
                    "pred": pred.detach().cpu(),
                    "case": str(cases[0] or "case"),
                }
        loss = self.loss_fn.loss.from_sums(loss_sums)
        self.log("val/loss", loss, on_epoch=True, batch_size=1, sync_dist=True)
        self._val_dice.append(torch.stack(dice).to(self.device))

    def score_case(
        self, case_id: str | None, pred: torch.Tensor, label: torch.Tensor
    ) -> torch.Tensor:
        """Dice on the case's original voxel grid, as ``segkit evaluate`` scores predictions.

        Where preprocessing resampled the case, the prediction is mapped back (the same
        inversion ``segkit predict`` writes) and compared with the original label file;
        otherwise the preprocessed grid holds the same voxels and is used directly.
        """
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        original = None
        if case_id is not None and hasattr(dm, "original_grid"):
            original = dm.original_grid(case_id)
        if original is None:
            return self._dice(pred, label)
        preprocessor, props, reference = original
        back = preprocessor.invert(pred.cpu().numpy().astype("int16"), props)
        return self._dice(torch.from_numpy(back), torch.from_numpy(reference))

    def _dice(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Per class (softmax) or per region: the regions of both label maps, as
        ``segkit evaluate`` scores region datasets."""
        if self.regions:
            dice = case_region_dice(pred, label, self.regions)
            return torch.tensor(dice, dtype=torch.float64, device=pred.device)
        k = self.spec.out_channels
        return case_dice(pred, label, k, ignore_label=self.hparams.ignore_label)

    @property
    def score_names(self) -> list[str]:
        """The names of the validation Dice values: regions, or foreground classes."""
        if self.regions:
            return [r.name for r in self.regions]
        return [self.label_names.get(c, f"class{c}") for c in range(1, self.spec.out_channels)]

    def predict_volume(self, image: torch.Tensor, *, logits=None) -> Segmentation:
        """Labels of one volume (1, C, *S) through segkit's one inference engine (``logits``
        receives each tile's logits, as :func:`~segkit.inference.engine.segment.segment`)."""
        run = ModelRun(
            self.net,
            tuple(self.hparams.patch_size),
            self.inference_settings,
            self.hparams.slice_axis,
        )
        return segment([run], image, self.head, classes=self.spec.out_channels, logits=logits)

    def on_validation_epoch_end(self) -> None:
        if not self._val_dice:
            return
        local = torch.cat(self._val_dice)
        self._val_dice.clear()
        gathered = self.all_gather(local)
        per_case = gathered.reshape(-1, local.shape[-1]) if self.trainer.world_size > 1 else local
        per_class, mean = mean_dice(per_case.cpu())
        mean = 0.0 if math.isnan(mean) else mean
        # every rank holds the gathered values, so syncing only averages identical numbers
        self.log("val/dice_mean", torch.tensor(mean), prog_bar=True, sync_dist=True)
        record = {
            "epoch": int(self.current_epoch),
            "step": int(self.global_step),
            "dice_mean": float(mean),
            "dice": {},
            "inference": self.inference_settings.describe(),
        }
        for name, v in zip(self.score_names, per_class.tolist()):
            v = 0.0 if math.isnan(v) else v
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
        optim = self.hparams.optim
        optimizer = build_optimizer(optim["optimizer"], self.parameters())
        # poly / cosine over the step budget or trainer.max_time (segkit.training.schedule)
        scheduler = build_scheduler(optimizer, dict(optim.get("scheduler") or {}), self.trainer)
        if scheduler is None:
            return {"optimizer": optimizer}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

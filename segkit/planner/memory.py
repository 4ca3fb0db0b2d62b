"""The planner's memory model: a training step's peak in bytes, from a plan of the network.

Parameters, gradients, optimizer state, bf16 weight copies, the activations autograd saves
(from the plan), the loss, the batch itself and the backward pass' transients. One exact plan
also gives a :class:`LevelModel`, which scales the activations to any other patch of the same
topology without a new plan.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segkit.errors import ConfigError
from segkit.plan import Plan, level_sizes
from segkit.spec import UNetSpec

GiB = 2**30
# Transient memory of the backward pass (gradients of the largest activations alive at once),
# in units of the largest single activation tensor; measured with the CPU allocator profile of
# real training steps (tests/planner/test_planner_memory.py) and checked on CUDA by the gpu test.
_TRANSIENT_TENSORS = 2.0
# Loss bytes per voxel of a logits head: float32 logits, log-softmax, softmax, one-hot (per
# class) and the resized int64 target plus its float copy.
_LOSS_BYTES_PER_CLASS = 16
_LOSS_BYTES_PER_VOXEL = 16


@dataclass(frozen=True)
class MemoryEstimate:
    """Training memory of one step, in bytes, as PyTorch's allocator would report its peak.

    Attributes:
        batch_size: Samples per step.
        params: Parameter count.
        parameters: fp32 weights.
        gradients: fp32 weight gradients.
        optimizer_state: e.g. SGD momentum (1 buffer per weight) or Adam (2).
        weight_copies: bf16 copies of the weights autocast keeps during a step.
        activations: Tensors autograd saves for backward, for the whole batch.
        loss: The loss' saved tensors (float32 logits, softmax, one-hot, targets).
        batch: The input batch (float32 image, int64 label).
        transient: Gradients alive at once during backward.
        workspace: Scratch of the largest convolution's backward; nonzero only where the
            convolutions take PyTorch's unfold-and-GEMM path (bf16 on a CPU without native
            bf16 kernels), see :func:`conv_workspace`.
    """

    batch_size: int
    params: int
    parameters: int
    gradients: int
    optimizer_state: int
    weight_copies: int
    activations: int
    loss: int
    batch: int
    transient: int
    workspace: int = 0

    @property
    def total(self) -> int:
        return (
            self.parameters
            + self.gradients
            + self.optimizer_state
            + self.weight_copies
            + self.activations
            + self.loss
            + self.batch
            + self.transient
            + self.workspace
        )

    @property
    def total_gb(self) -> float:
        return self.total / GiB

    def breakdown(self) -> str:
        """One line: the total and its parts in GB."""
        fixed = self.parameters + self.gradients + self.optimizer_state + self.weight_copies
        return (
            f"{self.total_gb:.2f} GB = weights, gradients, optimizer state and bf16 copies "
            f"{fixed / GiB:.2f} + activations {self.activations / GiB:.2f} + loss "
            f"{self.loss / GiB:.2f} + batch {self.batch / GiB:.2f} + backward transients "
            f"{self.transient / GiB:.2f}"
            + (f" + convolution workspace {self.workspace / GiB:.2f}" if self.workspace else "")
            + f" (batch {self.batch_size})"
        )


def optimizer_state_count(optimizer: Mapping[str, Any] | None) -> int:
    """Buffers per weight an optimizer config keeps: SGD with momentum 1, plain SGD 0, else 2."""
    if not optimizer:
        return 1
    target = str(optimizer.get("_target_", "")).rsplit(".", 1)[-1].lower()
    if target == "sgd":
        return 1 if float(optimizer.get("momentum", 0) or 0) > 0 else 0
    return 2


def _estimate(
    *,
    params: int,
    in_channels: int,
    voxels: int,
    activation_bytes_fp32: float,
    heads: Sequence[tuple[int, int]],
    largest: int,
    batch_size: int,
    optimizer_states: int,
    precision: str,
) -> MemoryEstimate:
    if precision not in ("bf16", "fp32"):
        raise ConfigError(f"planner.precision={precision!r}; allowed: bf16, fp32")
    act_bytes = 2 if precision == "bf16" else 4
    loss = sum(v * (_LOSS_BYTES_PER_CLASS * k + _LOSS_BYTES_PER_VOXEL) for v, k in heads)
    return MemoryEstimate(
        batch_size=batch_size,
        params=params,
        parameters=4 * params,
        gradients=4 * params,
        optimizer_state=4 * params * optimizer_states,
        weight_copies=2 * params if precision == "bf16" else 0,
        activations=int(batch_size * activation_bytes_fp32 * act_bytes / 4),
        loss=batch_size * loss,
        batch=batch_size * voxels * (4 * in_channels + 8),
        transient=int(batch_size * _TRANSIENT_TENSORS * largest * act_bytes),
    )


def conv_workspace(plan: Plan, batch_size: int, *, precision: str, device: str) -> int:
    """Bytes of the largest convolution's backward scratch on PyTorch's unfold-and-GEMM path.

    Without native bf16 kernels (a CPU lacking AVX-512-BF16/AMX: oneDNN declines), a bf16
    convolution with a kernel larger than 1 unfolds its input into a column buffer of
    ``in_channels × prod(kernel) × out voxels`` bf16 values for the whole batch (a transposed
    one: ``out_channels × prod(kernel) × in voxels``). Measured (resident-set peak of one
    3×3×3 convolution's forward and backward, 24³, batch 2): 2.2 column buffers for a dense
    convolution (one is a PyTorch tensor, the allocator profile shows; the rest is outside
    PyTorch's allocator), 1.3 for a depthwise one; modelled as 2 and 1. oneDNN in fp32 needs
    none (4-5 activations, as modelled); cuDNN's workspace on CUDA is not modelled (the gpu
    test measures with ``cudnn.benchmark`` off). Whole steps: tests/planner/test_memory_peak.py.
    """
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"device={device!r}; allowed: cuda, cpu")
    if device == "cuda" or precision != "bf16":
        return 0
    import torch  # only here: the model is otherwise arithmetic on the plan

    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return 0
    largest = 0
    for r in plan.rows:
        if "conv" not in r.op or not r.kernel or math.prod(r.kernel) == 1:
            continue
        if r.op.startswith("transposed"):
            cols = r.out_channels * math.prod(r.kernel) * math.prod(r.in_size)
        else:
            cols = r.in_channels * math.prod(r.kernel) * math.prod(r.out_size)
        largest = max(largest, cols * (1 if "depthwise" in r.op else 2))
    return 2 * batch_size * largest


def training_memory(
    spec: UNetSpec,
    plan: Plan,
    batch_size: int,
    *,
    optimizer_states: int = 1,
    precision: str = "bf16",
    device: str = "cuda",
) -> MemoryEstimate:
    """Peak memory of a training step (forward, loss, backward, optimizer step) in bytes.

    Args:
        spec: The network.
        plan: ``plan_unet(spec, patch)``: its ``activation_bytes`` are fp32 saved tensors
            per sample; under bf16 autocast each is stored in 2 bytes.
        batch_size: Samples per step.
        optimizer_states: Buffers per weight (:func:`optimizer_state_count`).
        precision: ``"bf16"`` (mixed precision, the GPU default) or ``"fp32"``.
        device: ``"cuda"`` (what the planner plans for) or ``"cpu"`` (adds
            :func:`conv_workspace` where CPU convolutions unfold).
    """
    estimate = _estimate(
        params=plan.params,
        in_channels=spec.in_channels,
        voxels=math.prod(plan.input_size),
        activation_bytes_fp32=plan.activation_bytes,
        heads=[(math.prod(r.out_size), r.out_channels) for r in plan.rows if "logits" in r.op],
        largest=max((math.prod(r.out_size) * r.out_channels for r in plan.rows), default=0),
        batch_size=batch_size,
        optimizer_states=optimizer_states,
        precision=precision,
    )
    workspace = conv_workspace(plan, batch_size, precision=precision, device=device)
    return dataclasses.replace(estimate, workspace=workspace)


@dataclass(frozen=True)
class LevelModel:
    """The memory of one network at any patch, from one plan of it.

    Every saved tensor of a plan lives at one resolution level and is proportional to that
    level's voxel count, so one exact plan gives per-level weights and the memory at another
    patch needs only the level sizes (:func:`level_sizes`), not a new plan.
    """

    spec: UNetSpec
    params: int
    per_level: tuple[float, ...]  # saved fp32 bytes per voxel of each level
    per_input_voxel: float  # saved fp32 bytes per input voxel not attributed to a level
    heads: tuple[tuple[int, int], ...]  # (level, classes)
    tensors: tuple[tuple[int, int], ...]  # (level, channels) of every row's output

    @classmethod
    def from_plan(cls, spec: UNetSpec, plan: Plan) -> LevelModel | None:
        """None when some row does not sit at a level size (then plan every patch exactly)."""
        sizes = level_sizes(spec, plan.input_size)
        index = {}
        for i, size in enumerate(sizes):
            index.setdefault(size, i)
        if len(index) != len(sizes):
            return None  # two levels of equal size: rows cannot be attributed
        per_level = [0.0] * len(sizes)
        heads, tensors = [], []
        attributed = 0
        # Row ``saved`` counts fp32 elements (rows described by formula) or bytes (rows traced
        # with autograd's hooks, which sum to the plan's total).
        unit = 4 if 4 * sum(r.saved for r in plan.rows) <= plan.activation_bytes else 1
        for r in plan.rows:
            level = index.get(tuple(r.out_size))
            if level is None:
                return None
            per_level[level] += unit * r.saved / math.prod(r.out_size)
            attributed += unit * r.saved
            tensors.append((level, r.out_channels))
            if "logits" in r.op:
                heads.append((level, r.out_channels))
        rest = (plan.activation_bytes - attributed) / math.prod(plan.input_size)
        return cls(spec, plan.params, tuple(per_level), rest, tuple(heads), tuple(tensors))

    def memory(
        self, patch: Sequence[int], batch_size: int, *, optimizer_states: int, precision: str
    ) -> MemoryEstimate:
        vox = [math.prod(s) for s in level_sizes(self.spec, patch)]
        return _estimate(
            params=self.params,
            in_channels=self.spec.in_channels,
            voxels=vox[0],
            activation_bytes_fp32=sum(w * v for w, v in zip(self.per_level, vox))
            + self.per_input_voxel * vox[0],
            heads=[(vox[lv], k) for lv, k in self.heads],
            largest=max((vox[lv] * c for lv, c in self.tensors), default=0),
            batch_size=batch_size,
            optimizer_states=optimizer_states,
            precision=precision,
        )


__all__ = [
    "GiB",
    "LevelModel",
    "MemoryEstimate",
    "level_sizes",
    "optimizer_state_count",
    "training_memory",
]

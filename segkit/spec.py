"""The U-Net architecture schema.

A YAML config gives scalars, per-stage lists, or per-stage per-axis lists;
:func:`UNetSpec.from_config` turns all of them into explicit per-stage,
per-axis tuples in this one place and rejects anything it cannot read with a
:class:`~segkit.errors.ConfigError` that names the key.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from segkit.errors import ConfigError
from segkit.shapes import Downsample, same_padding

NORMS = ("instance", "batch", "group", "none")
ACTS = ("leakyrelu", "relu", "gelu", "prelu")
BLOCKS = ("plain", "residual")
DOWNSAMPLES = ("conv", "maxpool", "avgpool")
UPSAMPLES = ("transposed", "interpolate")

Axes = tuple[int, ...]
Choice = tuple[str, tuple[tuple[str, Any], ...]]

_ACT_DEFAULTS: dict[str, dict[str, Any]] = {
    "leakyrelu": {"negative_slope": 0.01, "inplace": True},
    "relu": {"inplace": True},
    "gelu": {},
    "prelu": {},
}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_list(value: Any) -> list | None:
    """A list for any non-string sequence (ListConfig included), else None."""
    if isinstance(value, str | bytes | Mapping):
        return None
    if isinstance(value, Sequence) or hasattr(value, "__iter__") and hasattr(value, "__len__"):
        return list(value)
    return None


def _positive_int(value: Any, key: str, *, minimum: int = 1) -> int:
    if not _is_int(value):
        raise ConfigError(
            f"model.{key}: expected an integer, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ConfigError(f"model.{key}: must be >= {minimum}, got {value}")
    return int(value)


def per_stage(value: Any, key: str, stages: int, *, minimum: int = 1) -> tuple[int, ...]:
    """A scalar or a list of ``stages`` integers → ``stages`` integers."""
    items = _as_list(value)
    if items is None:
        return (_positive_int(value, key, minimum=minimum),) * stages
    if len(items) != stages:
        raise ConfigError(
            f"model.{key}: expected one value per stage ({stages} items) or a scalar, "
            f"got {len(items)} items: {items!r}"
        )
    return tuple(_positive_int(v, f"{key}[{i}]", minimum=minimum) for i, v in enumerate(items))


def per_stage_axes(
    value: Any, key: str, stages: int, ndim: int, *, minimum: int = 1
) -> tuple[Axes, ...]:
    """A scalar, a per-stage list, or a per-stage list of per-axis lists → ``stages × ndim``.

    ``kernel_size: [[1, 3, 3], [3, 3, 3], 3, 3]`` gives four stages, the first
    anisotropic. A flat list is read per stage; a flat list with the wrong
    length is an error that shows how to write per-axis values.
    """
    items = _as_list(value)
    if items is None:
        v = _positive_int(value, key, minimum=minimum)
        return ((v,) * ndim,) * stages
    if len(items) != stages:
        hint = ""
        if len(items) == ndim and all(_as_list(v) is None for v in items):
            hint = (
                f" To give per-axis values for every stage write a scalar per axis inside a "
                f"per-stage list, e.g. {key}: {[items] * stages!r}."
            )
        raise ConfigError(
            f"model.{key}: expected a scalar or one item per stage ({stages} items, each a "
            f"scalar or a list of {ndim} values), got {len(items)} items: {items!r}.{hint}"
        )
    out = []
    for i, item in enumerate(items):
        axes = _as_list(item)
        if axes is None:
            out.append((_positive_int(item, f"{key}[{i}]", minimum=minimum),) * ndim)
            continue
        if len(axes) != ndim:
            raise ConfigError(
                f"model.{key}[{i}]: stage {i} needs a scalar or {ndim} per-axis values "
                f"(spatial_dims={ndim}), got {axes!r}"
            )
        out.append(
            tuple(_positive_int(a, f"{key}[{i}][{j}]", minimum=minimum) for j, a in enumerate(axes))
        )
    return tuple(out)


def parse_choice(value: Any, key: str, allowed: Sequence[str]) -> Choice:
    """``"name"``, ``{name: ..., **kwargs}`` or ``[name, {kwargs}]`` → ``(name, kwargs)``."""
    kwargs: dict[str, Any] = {}
    if isinstance(value, str):
        name = value
    elif isinstance(value, Mapping):
        if "name" not in value:
            raise ConfigError(f"model.{key}: a mapping needs a 'name' key, got {dict(value)!r}")
        kwargs = {str(k): v for k, v in value.items() if k != "name"}
        name = value["name"]
    elif (
        (items := _as_list(value)) is not None and len(items) == 2 and isinstance(items[1], Mapping)
    ):
        name, kwargs = items[0], dict(items[1])
    else:
        raise ConfigError(
            f"model.{key}: expected a name or {{name: ..., kwargs}}, got {value!r}; "
            f"allowed names: {', '.join(allowed)}"
        )
    name = str(name).lower()
    if name not in allowed:
        raise ConfigError(f"model.{key}: unknown {key} {name!r}; allowed: {', '.join(allowed)}")
    return name, tuple(sorted(kwargs.items()))


def group_count(channels: int, num_groups: int = 8) -> int:
    """Groups of a GroupNorm: ``num_groups``, or its largest divisor of ``channels`` below it."""
    groups = min(num_groups, channels)
    while channels % groups:
        groups -= 1
    return groups


def _one_of(value: Any, key: str, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ConfigError(f"model.{key}: got {value!r}; allowed: {', '.join(allowed)}")
    return value.lower()


@dataclass(frozen=True)
class UNetSpec:
    """A fully normalised U-Net: every per-stage setting as explicit per-axis tuples.

    Stage ``i`` runs at resolution level ``i``; ``strides[i]`` is the
    downsampling into stage ``i`` (``strides[0]`` is all ones). The decoder has
    ``depth − 1`` stages; decoder stage ``i`` upsamples stage ``i + 1`` to the
    size of encoder stage ``i``.
    """

    spatial_dims: int
    in_channels: int
    out_channels: int
    depth: int
    channels: tuple[int, ...]
    kernel_size: tuple[Axes, ...]
    strides: tuple[Axes, ...]
    dilation: tuple[Axes, ...]
    convs_per_stage: tuple[int, ...]
    convs_per_stage_decoder: tuple[int, ...]
    up_kernel_size: tuple[Axes, ...]
    block: str = "plain"
    norm: Choice = ("instance", ())
    act: Choice = ("leakyrelu", ())
    dropout: float = 0.0
    downsample: str = "conv"
    upsample: str = "transposed"
    interp_mode: str = "linear"
    deep_supervision: bool = False
    conv_bias: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None = None, **kwargs: Any) -> UNetSpec:
        """Normalise a ``model`` config (mapping and/or keyword arguments)."""
        raw = {**(dict(cfg) if cfg else {}), **kwargs}
        raw.pop("_target_", None)
        raw.pop("_convert_", None)
        known = {
            "spatial_dims",
            "in_channels",
            "out_channels",
            "depth",
            "channels",
            "max_channels",
            "kernel_size",
            "strides",
            "dilation",
            "convs_per_stage",
            "convs_per_stage_decoder",
            "block",
            "norm",
            "act",
            "dropout",
            "downsample",
            "upsample",
            "up_kernel_size",
            "deep_supervision",
            "conv_bias",
            "interp_mode",
        }
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"model: unknown key(s) {', '.join(unknown)}; "
                f"known keys: {', '.join(sorted(known))}"
            )
        ndim = raw.get("spatial_dims", 3)
        if ndim not in (1, 2, 3) or not _is_int(ndim):
            raise ConfigError(f"model.spatial_dims: must be 2 or 3 (or 1), got {ndim!r}")
        depth = _positive_int(raw.get("depth", 5), "depth")
        in_ch = _positive_int(raw.get("in_channels", 1), "in_channels")
        out_ch = _positive_int(raw.get("out_channels", 2), "out_channels")

        channels_raw = raw.get("channels", 32)
        if _as_list(channels_raw) is None:
            base = _positive_int(channels_raw, "channels")
            cap = _positive_int(raw.get("max_channels", 320), "max_channels")
            channels = tuple(min(base * 2**i, cap) for i in range(depth))
        else:
            channels = per_stage(channels_raw, "channels", depth)

        kernel = per_stage_axes(raw.get("kernel_size", 3), "kernel_size", depth, ndim)
        dilation = per_stage_axes(raw.get("dilation", 1), "dilation", depth, ndim)
        strides_raw = raw.get("strides", 2)
        if _as_list(strides_raw) is None:
            s = _positive_int(strides_raw, "strides")
            strides = ((1,) * ndim,) + ((s,) * ndim,) * (depth - 1)
        else:
            strides = per_stage_axes(strides_raw, "strides", depth, ndim)
        if any(v != 1 for v in strides[0]):
            raise ConfigError(
                f"model.strides[0]: stage 0 is full resolution and must have stride 1, got "
                f"{list(strides[0])}; list one stride per stage starting with 1, e.g. "
                f"strides: [1, 2, 2, ...] ({depth} items)"
            )
        convs = per_stage(raw.get("convs_per_stage", 2), "convs_per_stage", depth)
        dec_raw = raw.get("convs_per_stage_decoder")
        if dec_raw is None:
            convs_dec = convs[: depth - 1]
        else:
            convs_dec = per_stage(dec_raw, "convs_per_stage_decoder", depth - 1)

        up_raw = raw.get("up_kernel_size")
        if up_raw is None:
            up_kernel = strides[1:]
        else:
            up_kernel = per_stage_axes(up_raw, "up_kernel_size", depth - 1, ndim)

        dropout = raw.get("dropout", 0.0)
        if (
            not isinstance(dropout, numbers.Real)
            or isinstance(dropout, bool)
            or not 0 <= dropout < 1
        ):
            raise ConfigError(f"model.dropout: expected a probability in [0, 1), got {dropout!r}")
        interp = raw.get("interp_mode", "linear")
        if interp not in ("linear", "nearest"):
            raise ConfigError(f"model.interp_mode: got {interp!r}; allowed: linear, nearest")
        for key in ("deep_supervision", "conv_bias"):
            if key in raw and not isinstance(raw[key], bool):
                raise ConfigError(f"model.{key}: expected true or false, got {raw[key]!r}")
        return cls(
            spatial_dims=int(ndim),
            in_channels=in_ch,
            out_channels=out_ch,
            depth=depth,
            channels=channels,
            kernel_size=kernel,
            strides=strides,
            dilation=dilation,
            convs_per_stage=convs,
            convs_per_stage_decoder=tuple(convs_dec),
            up_kernel_size=tuple(up_kernel),
            block=_one_of(raw.get("block", "plain"), "block", BLOCKS),
            norm=parse_choice(raw.get("norm", "instance"), "norm", NORMS),
            act=parse_choice(raw.get("act", "leakyrelu"), "act", ACTS),
            dropout=float(dropout),
            downsample=_one_of(raw.get("downsample", "conv"), "downsample", DOWNSAMPLES),
            upsample=_one_of(raw.get("upsample", "transposed"), "upsample", UPSAMPLES),
            interp_mode=interp,
            deep_supervision=bool(raw.get("deep_supervision", False)),
            conv_bias=bool(raw.get("conv_bias", True)),
        )

    @property
    def pooling(self) -> bool:
        return self.downsample in ("maxpool", "avgpool")

    def act_kwargs(self) -> dict[str, Any]:
        name, kwargs = self.act
        return {**_ACT_DEFAULTS[name], **dict(kwargs)}

    def conv_padding(self, stage: int) -> tuple[tuple[int, int], ...]:
        """``(lo, hi)`` "same" padding per axis for the convs of ``stage``."""
        return tuple(
            same_padding(k, d)
            for k, d in zip(self.kernel_size[stage], self.dilation[stage], strict=True)
        )

    def downsamples(self, stage: int) -> tuple[Downsample, ...]:
        """Per-axis downsampling into ``stage`` (identity for stage 0)."""
        if self.pooling:
            return tuple(Downsample(s, s) for s in self.strides[stage])
        return tuple(
            Downsample(k, s, lo, hi, d)
            for k, s, d, (lo, hi) in zip(
                self.kernel_size[stage],
                self.strides[stage],
                self.dilation[stage],
                self.conv_padding(stage),
                strict=True,
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict that :meth:`from_config` reads back to an equal spec."""
        d = asdict(self)
        d["norm"] = {"name": self.norm[0], **dict(self.norm[1])}
        d["act"] = {"name": self.act[0], **dict(self.act[1])}
        for key in ("kernel_size", "strides", "dilation", "up_kernel_size"):
            d[key] = [list(v) for v in d[key]]
        for key in ("channels", "convs_per_stage", "convs_per_stage_decoder"):
            d[key] = list(d[key])
        return d

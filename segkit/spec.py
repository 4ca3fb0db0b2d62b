"""The U-Net architecture schema.

A YAML config gives scalars, per-stage lists, or per-stage per-axis lists;
:func:`UNetSpec.from_config` turns all of them into explicit per-stage,
per-axis tuples in this one place and rejects anything it cannot read with a
:class:`~segkit.errors.ConfigError` that names the key.
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from segkit import registry
from segkit.errors import ConfigError
from segkit.shapes import Downsample, same_padding

NORMS = ("instance", "batch", "group", "none")
ACTS = tuple(registry.ACTIVATIONS)
BLOCKS = tuple(registry.BLOCKS)
DOWNSAMPLES = ("conv", "maxpool", "avgpool")
UPSAMPLES = ("transposed", "interpolate", "mednext")
SKIP_MERGES = ("concat", "add")
SHORTCUTS = ("conv", "avgpool")
STEMS = ("none", "conv", "conv1x1")
# Far beyond any network's; a larger value (a damaged file's 2**31) would build modules
# until memory runs out instead of failing.
MAX_DEPTH = 64
MAX_REPEATS = 1000
MAX_SIZE = 1024  # a kernel, stride or dilation along one axis
MAX_CHANNELS = 2**16

Axes = tuple[int, ...]
Choice = tuple[str, tuple[tuple[str, Any], ...]]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_list(value: Any) -> list | None:
    """A list for any non-string sequence (ListConfig included), else None."""
    if isinstance(value, str | bytes | Mapping):
        return None
    if isinstance(value, Sequence) or hasattr(value, "__iter__") and hasattr(value, "__len__"):
        return list(value)
    return None


def _positive_int(
    value: Any,
    key: str,
    *,
    minimum: int = 1,
    maximum: int | None = None,
    stage: int | None = None,
) -> int:
    where = "" if stage is None else f" (stage {stage})"
    if not _is_int(value):
        raise ConfigError(
            f"model.{key}{where}: expected an integer, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ConfigError(f"model.{key}{where}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"model.{key}{where}: must be <= {maximum}, got {value}")
    return int(value)


def per_stage(
    value: Any, key: str, stages: int, *, minimum: int = 1, maximum: int | None = None
) -> tuple[int, ...]:
    """A scalar or a list of ``stages`` integers → ``stages`` integers."""
    items = _as_list(value)
    if items is None:
        return (_positive_int(value, key, minimum=minimum, maximum=maximum),) * stages
    if len(items) != stages:
        raise ConfigError(
            f"model.{key}: expected one value per stage ({stages} items) or a scalar, "
            f"got {len(items)} items: {items!r}"
        )
    return tuple(
        _positive_int(v, f"{key}[{i}]", minimum=minimum, maximum=maximum, stage=i)
        for i, v in enumerate(items)
    )


def per_stage_axes(
    value: Any, key: str, stages: int, ndim: int, *, minimum: int = 1, maximum: int = MAX_SIZE
) -> tuple[Axes, ...]:
    """A scalar, a per-stage list, or a per-stage list of per-axis lists → ``stages × ndim``.

    ``kernel_size: [[1, 3, 3], [3, 3, 3], 3, 3]`` gives four stages, the first
    anisotropic. A flat list is read per stage; a flat list with the wrong
    length is an error that shows how to write per-axis values.
    """
    items = _as_list(value)
    if items is None:
        v = _positive_int(value, key, minimum=minimum, maximum=maximum)
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
            v = _positive_int(item, f"{key}[{i}]", minimum=minimum, maximum=maximum)
            out.append((v,) * ndim)
            continue
        if len(axes) != ndim:
            raise ConfigError(
                f"model.{key}[{i}]: stage {i} needs a scalar or {ndim} per-axis values "
                f"(spatial_dims={ndim}), got {axes!r}"
            )
        out.append(
            tuple(
                _positive_int(a, f"{key}[{i}][{j}]", minimum=minimum, maximum=maximum)
                for j, a in enumerate(axes)
            )
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


def _freeze(value: Any, key: str) -> Any:
    """Lists → tuples (so a spec is hashable); mappings are refused with the key named."""
    if isinstance(value, Mapping):
        raise ConfigError(
            f"model.{key}: nested mappings are not supported as block arguments; pass "
            f"scalars or lists, got {dict(value)!r}"
        )
    items = _as_list(value)
    if items is not None:
        return tuple(_freeze(v, key) for v in items)
    return value


def _thaw(value: Any) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


def is_custom(block: Choice) -> bool:
    """A user block (named by ``_target_``) rather than one of :data:`BLOCKS`."""
    return block[0] not in BLOCKS


def _import_target(path: str, key: str) -> Any:
    module, _, attr = path.rpartition(".")
    if not module:
        raise ConfigError(
            f"model.{key}._target_: {path!r} is not a dotted path; write the full import path "
            "of your block class, e.g. my_package.blocks.SEBlock"
        )
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"model.{key}._target_: cannot import {path!r} ({type(exc).__name__}: {exc}). Fix: "
            "make the module importable (installed, or on PYTHONPATH) and check the spelling"
        ) from None


def parse_block(value: Any, key: str) -> Choice:
    """``plain`` | ``residual`` | ``bottleneck`` | ``mednext`` | ``{_target_: pkg.Cls, **kwargs}``.

    A user block is checked to be importable here (its constructor contract is
    checked when the network is built, see :mod:`segkit.nn.blocks`).
    """
    if isinstance(value, Mapping) and "_target_" in value:
        target = value["_target_"]
        if not isinstance(target, str):
            raise ConfigError(f"model.{key}._target_: expected a dotted path, got {target!r}")
        _import_target(target, key)
        kwargs = {
            str(k): _freeze(v, f"{key}.{k}")
            for k, v in value.items()
            if k not in ("_target_", "_partial_", "_convert_", "_recursive_")
        }
        return target, tuple(sorted(kwargs.items()))
    if isinstance(value, str | Mapping):
        name, kwargs = parse_choice(value, key, BLOCKS)
        if kwargs:
            raise ConfigError(
                f"model.{key}: built-in block {name!r} takes no arguments here, got "
                f"{dict(kwargs)!r}; set them with their own keys (convs_per_stage, expansion, "
                "grn, shortcut)"
            )
        return name, ()
    raise ConfigError(
        f"model.{key}: expected one of {', '.join(BLOCKS)} or {{_target_: my.Block, ...}}, "
        f"got {value!r}"
    )


def _block_label(block: Choice) -> str:
    return block[0].rsplit(".", 1)[-1] if is_custom(block) else block[0]


_DEFAULT_EXPANSION = {"bottleneck": 4}  # torchvision's ResNet bottleneck; MedNeXt-S uses 2


@dataclass(frozen=True)
class UNetSpec:
    """A fully normalised U-Net: every per-stage setting as explicit per-axis tuples.

    Stage ``i`` runs at resolution level ``i``; ``strides[i]`` is the
    downsampling into stage ``i`` (``strides[0]`` is all ones). The decoder has
    ``depth − 1`` stages; decoder stage ``i`` upsamples stage ``i + 1`` to the
    size of encoder stage ``i``, merges the skip (concat or add) and runs
    ``blocks_per_stage_decoder[i]`` blocks. Encoder stage ``i`` runs
    ``blocks_per_stage[i]`` blocks, the first of which carries the stride (or
    follows a pooling layer). ``expansion[i]`` is read by the blocks of stage
    ``i``; the first block of stage ``i > 0`` reads ``expansion[i − 1]`` (the
    stage its input comes from), as MedNeXt's down block does.
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
    norm: Choice = ("instance", ())
    act: Choice = ("leakyrelu", ())
    dropout: float = 0.0
    downsample: str = "conv"
    upsample: str = "transposed"
    interp_mode: str = "linear"
    deep_supervision: bool = False
    conv_bias: bool = True
    encoder_block: Choice = ("plain", ())
    decoder_block: Choice = ("plain", ())
    blocks_per_stage: tuple[int, ...] = ()
    blocks_per_stage_decoder: tuple[int, ...] = ()
    expansion: tuple[int, ...] = ()
    expansion_decoder: tuple[int, ...] = ()
    grn: bool = False
    shortcut: str = "conv"
    skip_merge: str = "concat"
    stem: str = "none"
    stem_channels: int | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None = None, **kwargs: Any) -> UNetSpec:
        """Normalise a ``model`` config (mapping and/or keyword arguments)."""
        raw = {**(dict(cfg) if cfg else {}), **kwargs}
        for key in ("_target_", "_convert_", "_recursive_"):
            raw.pop(key, None)
        unknown = sorted(set(raw) - KNOWN_KEYS)
        if unknown:
            raise ConfigError(
                f"model: unknown key(s) {', '.join(unknown)}; "
                f"known keys: {', '.join(sorted(KNOWN_KEYS))}"
            )
        ndim = raw.get("spatial_dims", 3)
        if ndim not in (1, 2, 3) or not _is_int(ndim):
            raise ConfigError(f"model.spatial_dims: must be 2 or 3 (or 1), got {ndim!r}")
        depth = _positive_int(raw.get("depth", 5), "depth", maximum=MAX_DEPTH)
        wide = MAX_CHANNELS
        in_ch = _positive_int(raw.get("in_channels", 1), "in_channels", maximum=wide)
        out_ch = _positive_int(raw.get("out_channels", 2), "out_channels", maximum=wide)

        channels_raw = raw.get("channels", 32)
        if _as_list(channels_raw) is None:
            base = _positive_int(channels_raw, "channels", maximum=wide)
            cap = _positive_int(raw.get("max_channels", 320), "max_channels", maximum=wide)
            channels = tuple(min(base * 2**i, cap) for i in range(depth))
        else:
            channels = per_stage(channels_raw, "channels", depth, maximum=wide)

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
        many = MAX_REPEATS
        convs = per_stage(raw.get("convs_per_stage", 2), "convs_per_stage", depth, maximum=many)
        convs_dec = _decoder(raw, "convs_per_stage_decoder", depth, convs[: depth - 1], many)
        blocks = per_stage(raw.get("blocks_per_stage", 1), "blocks_per_stage", depth, maximum=many)
        blocks_dec = _decoder(raw, "blocks_per_stage_decoder", depth, (1,) * (depth - 1), many)

        shorthand = parse_block(raw.get("block", "plain"), "block")
        enc_block = _maybe(raw, "encoder_block", parse_block) or shorthand
        dec_block = _maybe(raw, "decoder_block", parse_block) or shorthand
        exp_raw = raw.get("expansion")
        if exp_raw is None:
            exp_raw = _DEFAULT_EXPANSION.get(enc_block[0], 2)
        expansion = per_stage(exp_raw, "expansion", depth, maximum=MAX_REPEATS)
        if raw.get("expansion_decoder") is None and dec_block[0] != enc_block[0]:
            default_dec = (_DEFAULT_EXPANSION.get(dec_block[0], 2),) * (depth - 1)
        else:
            default_dec = expansion[: depth - 1]
        expansion_dec = _decoder(raw, "expansion_decoder", depth, default_dec, MAX_REPEATS)

        upsample = _one_of(raw.get("upsample", "transposed"), "upsample", UPSAMPLES)
        up_raw = raw.get("up_kernel_size")
        if up_raw is None:
            up_kernel = kernel[1:] if upsample == "mednext" else strides[1:]
        else:
            up_kernel = per_stage_axes(up_raw, "up_kernel_size", depth - 1, ndim)

        stem = raw.get("stem")
        stem = "none" if stem is None else _one_of(stem, "stem", STEMS)
        stem_ch = raw.get("stem_channels")
        if stem == "none":
            if stem_ch is not None:
                raise ConfigError(
                    f"model.stem_channels={stem_ch} but model.stem is none; set model.stem=conv "
                    "(or conv1x1) or remove stem_channels"
                )
        else:
            if stem_ch is not None:
                stem_ch = _positive_int(stem_ch, "stem_channels", maximum=wide)
            stem_ch = channels[0] if stem_ch is None else stem_ch

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
        for key in ("deep_supervision", "conv_bias", "grn"):
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
            norm=parse_choice(raw.get("norm", "instance"), "norm", NORMS),
            act=parse_choice(raw.get("act", "leakyrelu"), "act", ACTS),
            dropout=float(dropout),
            downsample=_one_of(raw.get("downsample", "conv"), "downsample", DOWNSAMPLES),
            upsample=upsample,
            interp_mode=interp,
            deep_supervision=bool(raw.get("deep_supervision", False)),
            conv_bias=bool(raw.get("conv_bias", True)),
            encoder_block=enc_block,
            decoder_block=dec_block,
            blocks_per_stage=blocks,
            blocks_per_stage_decoder=tuple(blocks_dec),
            expansion=expansion,
            expansion_decoder=tuple(expansion_dec),
            grn=bool(raw.get("grn", False)),
            shortcut=_one_of(raw.get("shortcut", "conv"), "shortcut", SHORTCUTS),
            skip_merge=_one_of(raw.get("skip_merge", "concat"), "skip_merge", SKIP_MERGES),
            stem=stem,
            stem_channels=stem_ch,
        )

    @property
    def pooling(self) -> bool:
        return self.downsample in ("maxpool", "avgpool")

    @property
    def block(self) -> str:
        """Short label of the blocks: ``residual``, or ``residual/plain`` when they differ."""
        enc, dec = _block_label(self.encoder_block), _block_label(self.decoder_block)
        return enc if enc == dec or self.depth == 1 else f"{enc}/{dec}"

    def act_kwargs(self) -> dict[str, Any]:
        name, kwargs = self.act
        return {**registry.ACTIVATIONS[name][1], **dict(kwargs)}

    def conv_padding(self, stage: int) -> tuple[tuple[int, int], ...]:
        """``(lo, hi)`` "same" padding per axis for the convs of ``stage``."""
        return tuple(
            same_padding(k, d)
            for k, d in zip(self.kernel_size[stage], self.dilation[stage], strict=True)
        )

    def downsamples(self, stage: int) -> tuple[Downsample, ...]:
        """Per-axis downsampling into ``stage`` (identity for stage 0).

        Every block's strided path is "same"-padded (built-in blocks by
        construction, user blocks by contract, checked when planning), so the
        stage's kernel describes it exactly.
        """
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
        for key in ("encoder_block", "decoder_block"):
            name, kwargs = getattr(self, key)
            d[key] = (
                {"_target_": name, **{k: _thaw(v) for k, v in kwargs}}
                if is_custom((name, kwargs))
                else name
            )
        for key in ("kernel_size", "strides", "dilation", "up_kernel_size"):
            d[key] = [list(v) for v in d[key]]
        for key in (
            "channels",
            "convs_per_stage",
            "convs_per_stage_decoder",
            "blocks_per_stage",
            "blocks_per_stage_decoder",
            "expansion",
            "expansion_decoder",
        ):
            d[key] = list(d[key])
        return d


KNOWN_KEYS = frozenset(
    {
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
        "blocks_per_stage",
        "blocks_per_stage_decoder",
        "block",
        "encoder_block",
        "decoder_block",
        "expansion",
        "expansion_decoder",
        "grn",
        "shortcut",
        "skip_merge",
        "stem",
        "stem_channels",
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
)


def _maybe(raw: Mapping[str, Any], key: str, parse: Any) -> Any:
    value = raw.get(key)
    return None if value is None else parse(value, key)


def _decoder(
    raw: Mapping[str, Any],
    key: str,
    depth: int,
    default: tuple[int, ...],
    maximum: int | None = None,
) -> tuple[int, ...]:
    """A per-decoder-stage key (``depth − 1`` items, stage = resolution level); null → default."""
    value = raw.get(key)
    return default if value is None else per_stage(value, key, depth - 1, maximum=maximum)

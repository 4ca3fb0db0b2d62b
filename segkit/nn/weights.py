"""Reference networks' weights mapped onto a segkit :class:`~segkit.nn.UNet`, one function per
family: dynamic-network-architectures' (nnU-Net v2's) ``PlainConvUNet`` and
``ResidualEncoderUNet``, MONAI's ``MedNeXt`` and ``DynUNet``.

Each function takes a plain ``state_dict`` (key names and tensors: a live reference's, or
``torch.load(checkpoint_final.pth)["network_weights"]``) and the segkit network, and returns a
complete state dict for ``net.load_state_dict``. Nothing here imports the references. The key
correspondence is read off the segkit network's own modules; every tensor is checked:

- a segkit tensor without its reference tensor, a reference tensor left over, or a shape that
  differs is a :class:`WeightMapError` listing every such key, never a partial load;
- what a reference stores twice (DNA's ``all_modules.N`` and ``decoder.encoder.*``, MONAI
  DynUNet's ``skip_layers.*``) is accepted as a copy of a mapped tensor;
- deep-supervision heads the segkit network does not have are dropped (DNA builds them all
  "so that we can always load parameters"; MedNeXt also has one at the bottleneck);
- a state dict on the meta device is mapped by names and shapes alone (a structural check).

A state dict carries no strides, activation, norm kind or op order: the network must be built
with the reference's configuration (what :func:`_require` can see of it is checked).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from segkit.errors import SegkitError
from segkit.nn.blocks import MedNeXtBlock, PlainBlock, ResidualBlock
from segkit.nn.unet import UNet
from segkit.nn.up import MedNeXtUp, UpTransposed

StateDict = Mapping[str, torch.Tensor]
Transform = Callable[[torch.Tensor], torch.Tensor]

_SHOWN = 12  # keys listed per kind of mismatch; the count says how many more


class WeightMapError(SegkitError, ValueError):
    """A reference state dict does not fit a segkit network (keys, shapes or configuration)."""


@dataclass(frozen=True)
class _Source:
    key: str  # the reference key
    transform: Transform | None = None
    zeros_if_absent: bool = False  # a GRN with gamma = beta = 0 is the identity


class _Links:
    """segkit state key → reference source, declared module by module."""

    def __init__(self, net: UNet) -> None:
        self.target = net.state_dict()
        self.sources: dict[str, _Source] = {}
        self.droppable: list[str] = []  # reference prefixes that may be left over

    def leaf(
        self,
        seg: str,
        ref: str,
        *,
        names: Mapping[str, str] | None = None,
        weight: Transform | None = None,
        zeros_if_absent: bool = False,
    ) -> None:
        """The tensors of segkit module ``seg`` (not of its children) from module ``ref``."""
        for key in self.target:
            if key.startswith(seg + ".") and "." not in key[len(seg) + 1 :]:
                name = key[len(seg) + 1 :]
                ref_name = (names or {}).get(name, name)
                self.sources[key] = _Source(
                    f"{ref}.{ref_name}", weight if name == "weight" else None, zeros_if_absent
                )

    def conv_norm_act(self, seg: str, ref: str, *, weight: Transform | None = None) -> None:
        """segkit's conv → norm → act from DNA's ``ConvDropoutNormReLU`` (conv, norm, nonlin)."""
        self.leaf(f"{seg}.conv", f"{ref}.conv", weight=weight)
        self.leaf(f"{seg}.norm", f"{ref}.norm")
        self.leaf(f"{seg}.act", f"{ref}.nonlin")


_PLAIN = "DNA PlainConvUNet"
_RESENC = "DNA ResidualEncoderUNet"


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    # the references concatenate (upsampled, skip); segkit concatenates (skip, upsampled)
    half = weight.shape[1] // 2
    return torch.cat((weight[:, half:], weight[:, :half]), dim=1)


def _transposed_1x1_to_conv(weight: torch.Tensor) -> torch.Tensor:
    # MedNeXt's heads are 1×1 transposed convs, (in, out, 1, ...); segkit's are convs
    return weight.transpose(0, 1)


# each weight transform's inverse (for dna_state_dict): swapping equal halves undoes itself
_INVERSE: dict[Callable, Callable] = {_swap_halves: _swap_halves}


def _require(net: UNet, family: str, **expected: object) -> None:
    """The spec settings a state dict cannot show (no weights) must be the family's."""
    wrong = [
        f"model.{key}={getattr(net.spec, key)!r} (needs {want!r})"
        for key, want in expected.items()
        if getattr(net.spec, key) != want
    ]
    spec = net.spec
    if any(d != 1 for level in spec.dilation for d in level):
        wrong.append(f"model.dilation={list(spec.dilation)} (needs 1)")
    if any(k % 2 == 0 for level in spec.kernel_size for k in level):
        wrong.append(f"model.kernel_size={list(spec.kernel_size)} (needs odd kernels)")
    if wrong:
        raise WeightMapError(
            f"this segkit network is not a {family}: {'; '.join(wrong)}. Fix: build it with "
            f"the reference's configuration"
        )


def _blocks(
    stage: nn.Module,
    kind: type | tuple[type, ...],
    where: str,
    family: str,
    *,
    single: bool = False,
) -> list:
    """The blocks of a stage, each of the family's kind (``single``: exactly one)."""
    blocks = list(stage.blocks)
    if single and len(blocks) != 1:
        key = "blocks_per_stage" + ("_decoder" if where.startswith("decoder") else "")
        raise WeightMapError(
            f"{where} has {len(blocks)} blocks; {family} has one. Fix: model.{key}=1"
        )
    for j, block in enumerate(blocks):
        if not isinstance(block, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise WeightMapError(
                f"{where}, block {j} is a {type(block).__name__}; {family} has {names} there. "
                "Fix: build the segkit network with the reference's blocks"
            )
    return blocks


def _decoder(links: _Links, net: UNet, transposed: Callable[[int], str]) -> None:
    """Transposed convs of the DNA/DynUNet decoders, by decoder level (0: full resolution)."""
    for level, stage in enumerate(net.decoder):
        if not isinstance(stage.up, UpTransposed):
            raise WeightMapError(
                f"decoder stage {level} upsamples with {type(stage.up).__name__}; the reference "
                "has a transposed conv. Fix: model.upsample=transposed"
            )
        links.leaf(f"decoder.{level}.up.conv", transposed(level))


def _heads(links: _Links, net: UNet, ref_head: Callable[[int], str], ref_levels: Iterable[int]):
    """Logit heads by level; the reference's heads at levels segkit has none for may be dropped."""
    for level in range(len(net.heads)):
        links.leaf(f"heads.{level}", ref_head(level))
    links.droppable += [f"{ref_head(level)}." for level in ref_levels if level >= len(net.heads)]


def map_dna_plain_conv_unet(
    state: StateDict, net: UNet, *, spatial_axes: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """DNA's ``PlainConvUNet`` (nnU-Net v2's default network) onto ``net``.

    Args:
        state: the reference's state dict (nnU-Net: a checkpoint's ``network_weights``).
        net: a segkit network of the same configuration (plain blocks, one per stage).
        spatial_axes: segkit's spatial axis ``j`` is the reference's axis ``spatial_axes[j]``
            (nnU-Net's transposed array order against segkit's: ``(2, 1, 0)`` when the plans
            were imported with reversed axes); ``None``: the same order.

    Returns:
        A complete state dict for ``net.load_state_dict``.

    Raises:
        WeightMapError: listing every unmatched key and shape, or a setting the state dict
            cannot show that is not the reference's.
    """
    return _resolve(_plain_links(net), state, _PLAIN, spatial_axes)


def _plain_links(net: UNet) -> _Links:
    family = _PLAIN
    _require(net, family, stem="none", downsample="conv", skip_merge="concat")
    links = _Links(net)
    top = net.spec.depth - 2  # DNA's decoder stage index of segkit's decoder level 0
    for i, stage in enumerate(net.encoder):
        (block,) = _blocks(stage, PlainBlock, f"encoder stage {i}", family, single=True)
        for c in range(len(block.convs)):
            links.conv_norm_act(
                f"encoder.{i}.blocks.0.convs.{c}", f"encoder.stages.{i}.0.convs.{c}"
            )
    _decoder(links, net, lambda level: f"decoder.transpconvs.{top - level}")
    for level, stage in enumerate(net.decoder):
        (block,) = _blocks(stage, PlainBlock, f"decoder stage {level}", family, single=True)
        for c in range(len(block.convs)):
            links.conv_norm_act(
                f"decoder.{level}.blocks.0.convs.{c}",
                f"decoder.stages.{top - level}.convs.{c}",
                weight=_swap_halves if c == 0 else None,
            )
    _heads(links, net, lambda level: f"decoder.seg_layers.{top - level}", range(top + 1))
    return links


def map_dna_residual_encoder_unet(
    state: StateDict, net: UNet, *, spatial_axes: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """DNA's ``ResidualEncoderUNet`` (nnU-Net ResEnc M/L/XL) onto ``net``.

    Args:
        state: the reference's state dict (nnU-Net: a checkpoint's ``network_weights``).
        net: a segkit network of the same configuration (``model=resenc``: a stem conv,
            residual encoder blocks with ResNet-D shortcuts, plain decoder blocks).
        spatial_axes: as for :func:`map_dna_plain_conv_unet`.

    Returns:
        A complete state dict for ``net.load_state_dict``.

    Raises:
        WeightMapError: listing every unmatched key and shape, or a setting the state dict
            cannot show that is not the reference's.
    """
    return _resolve(_resenc_links(net), state, _RESENC, spatial_axes)


def _resenc_links(net: UNet) -> _Links:
    family = _RESENC
    _require(net, family, stem="conv", downsample="conv", skip_merge="concat", shortcut="avgpool")
    links = _Links(net)
    top = net.spec.depth - 2
    links.conv_norm_act("encoder.0.stem", "encoder.stem.convs.0")
    for i, stage in enumerate(net.encoder):
        for j, block in enumerate(_blocks(stage, ResidualBlock, f"encoder stage {i}", family)):
            seg, ref = f"encoder.{i}.blocks.{j}", f"encoder.stages.{i}.blocks.{j}"
            for c in range(len(block.convs)):
                links.conv_norm_act(f"{seg}.convs.{c}", f"{ref}.conv{c + 1}")
            if block.shortcut is not None:
                # DNA's skip is Sequential(avg pool?, ConvDropoutNormReLU?)
                skip = f"{ref}.skip.{1 if block.shortcut.pool is not None else 0}"
                links.leaf(f"{seg}.shortcut.conv", f"{skip}.conv")
                links.leaf(f"{seg}.shortcut.norm", f"{skip}.norm")
    _decoder(links, net, lambda level: f"decoder.transpconvs.{top - level}")
    for level, stage in enumerate(net.decoder):
        (block,) = _blocks(stage, PlainBlock, f"decoder stage {level}", family, single=True)
        for c in range(len(block.convs)):
            links.conv_norm_act(
                f"decoder.{level}.blocks.0.convs.{c}",
                f"decoder.stages.{top - level}.convs.{c}",
                weight=_swap_halves if c == 0 else None,
            )
    _heads(links, net, lambda level: f"decoder.seg_layers.{top - level}", range(top + 1))
    return links


# DNA's ConvDropoutNormReLU registers its conv and norm twice: as ``conv``/``norm`` and inside
# ``all_modules`` (a Sequential of conv, [dropout], [norm], [nonlin]); DNA's decoder holds the
# encoder again as ``decoder.encoder``
_DNA_ALIASES = ((".conv.", ".all_modules.0."), (".norm.", ".all_modules.1."))
DNA_CLASSES = {_PLAIN: "PlainConvUNet", _RESENC: "ResidualEncoderUNet"}


def dna_state_dict(net: UNet) -> tuple[str, dict[str, torch.Tensor]]:
    """``net``'s weights as the state dict of DNA's ``PlainConvUNet`` or
    ``ResidualEncoderUNet`` (what nnU-Net's checkpoints hold as ``network_weights``): the
    inverse of :func:`map_dna_plain_conv_unet` / :func:`map_dna_residual_encoder_unet`, with
    every alias DNA's modules register, so ``load_state_dict(strict=True)`` takes it.

    Returns:
        The DNA class name and the state dict (in ``net``'s axis order).

    Raises:
        WeightMapError: ``net`` is neither (naming what differs from the nearer one), or has
            dropout (DNA's modules would then sit at other indices).
    """
    if net.spec.dropout:
        raise WeightMapError(
            f"model.dropout={net.spec.dropout}: nnU-Net's networks are exported without "
            "dropout. Fix: model.dropout=0"
        )
    family = _RESENC if net.spec.stem == "conv" else _PLAIN
    links = (_resenc_links if family == _RESENC else _plain_links)(net)
    state = net.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, src in links.sources.items():
        tensor = state[key]
        if src.transform is not None:
            tensor = _INVERSE[src.transform](tensor)
        out[src.key] = tensor.detach().clone().contiguous()

    def owners(name: str) -> set[str]:
        return {k.rpartition(name)[0] for k in out if name in k}

    blocks = owners(".conv.") & owners(".norm.")  # DNA's ConvDropoutNormReLU modules
    for key in list(out):
        for name, alias in _DNA_ALIASES:
            head, sep, tail = key.rpartition(name)
            if sep and head in blocks and "." not in tail:
                out[head + alias + tail] = out[key]
    for key in [k for k in out if k.startswith("encoder.")]:
        out["decoder." + key] = out[key]
    return DNA_CLASSES[family], out


def map_monai_dynunet(state: StateDict, net: UNet) -> dict[str, torch.Tensor]:
    """MONAI's ``DynUNet`` onto ``net`` (``res_block=True``: residual encoder blocks; its
    decoder blocks are plain either way). DynUNet has no conv biases (``model.conv_bias=false``;
    ``trans_bias=True`` needs segkit's transposed-conv bias, which ``conv_bias`` also sets).

    Args:
        state: the reference's state dict.
        net: a segkit network of the same configuration.

    Returns:
        A complete state dict for ``net.load_state_dict``.

    Raises:
        WeightMapError: listing every unmatched key and shape, or a setting the state dict
            cannot show that is not the reference's.
    """
    family = "MONAI DynUNet"
    residual = {"shortcut": "conv"} if net.spec.encoder_block[0] == "residual" else {}
    _require(net, family, stem="none", downsample="conv", skip_merge="concat", **residual)
    links = _Links(net)
    depth = net.spec.depth
    top = depth - 2

    def stage_module(i: int) -> str:
        return (
            "input_block" if i == 0 else "bottleneck" if i == depth - 1 else f"downsamples.{i - 1}"
        )

    for i, stage in enumerate(net.encoder):
        kinds = (PlainBlock, ResidualBlock)
        (block,) = _blocks(stage, kinds, f"encoder stage {i}", family, single=True)
        _unet_block(links, f"encoder.{i}.blocks.0", stage_module(i), block)
    _decoder(links, net, lambda level: f"upsamples.{top - level}.transp_conv.conv")
    for level, stage in enumerate(net.decoder):
        (block,) = _blocks(stage, PlainBlock, f"decoder stage {level}", family, single=True)
        ref = f"upsamples.{top - level}.conv_block"
        _unet_block(links, f"decoder.{level}.blocks.0", ref, block, first=_swap_halves)

    def head(level: int) -> str:
        return (
            "output_block.conv.conv"
            if level == 0
            else f"deep_supervision_heads.{level - 1}.conv.conv"
        )

    _heads(links, net, head, range(top + 1))
    return _resolve(links, state, family, None)


def _unet_block(
    links: _Links, seg: str, ref: str, block: nn.Module, *, first: Transform | None = None
) -> None:
    """segkit's plain/residual block from MONAI's ``UnetBasicBlock``/``UnetResBlock``
    (``conv1.conv``, ``norm1``, ``conv2.conv``, ``norm2``; shortcut ``conv3.conv``, ``norm3``)."""
    if len(block.convs) != 2:
        raise WeightMapError(
            f"{seg} has {len(block.convs)} convs; MONAI DynUNet's blocks have 2. "
            "Fix: model.convs_per_stage=2 (and model.convs_per_stage_decoder=2)"
        )
    for c in range(2):
        links.leaf(
            f"{seg}.convs.{c}.conv", f"{ref}.conv{c + 1}.conv", weight=first if c == 0 else None
        )
        links.leaf(f"{seg}.convs.{c}.norm", f"{ref}.norm{c + 1}")
    if isinstance(block, ResidualBlock) and block.shortcut is not None:
        links.leaf(f"{seg}.shortcut.conv", f"{ref}.conv3.conv")
        links.leaf(f"{seg}.shortcut.norm", f"{ref}.norm3")


def map_monai_mednext(state: StateDict, net: UNet) -> dict[str, torch.Tensor]:
    """MONAI's ``MedNeXt`` (``create_mednext("S"/"B"/"M"/"L")``) onto ``net``
    (``model=mednext_s/b/m/l``).

    MONAI's down blocks have no GRN; with ``model.grn=true`` segkit's have one, given
    gamma = beta = 0 here, which makes it the identity. The up blocks differ by design: MedNeXt
    pads the transposed conv's output by one voxel at the start of each axis (even sizes only),
    segkit aligns it as the adjoint of the strided down conv (coarse voxel ``i`` at fine voxel
    ``2i``) and takes the skip's size; the mapped network matches MONAI's encoder exactly and
    its decoder up to that one-voxel shift (docs/architectures.md).

    Args:
        state: the reference's state dict.
        net: a segkit network of the same configuration.

    Returns:
        A complete state dict for ``net.load_state_dict``.

    Raises:
        WeightMapError: listing every unmatched key and shape, or a setting the state dict
            cannot show that is not the reference's.
    """
    family = "MONAI MedNeXt"
    _require(net, family, stem="conv1x1", downsample="conv", skip_merge="add", upsample="mednext")
    if any(s != 2 for level in net.spec.strides[1:] for s in level):
        raise WeightMapError(
            f"model.strides={list(net.spec.strides)}: MONAI's MedNeXt downsamples by 2 on "
            "every axis. Fix: model.strides=2"
        )
    links = _Links(net)
    depth = net.spec.depth
    top = depth - 2
    links.leaf("encoder.0.stem.conv", "stem")
    for i, stage in enumerate(net.encoder):
        for j, _ in enumerate(_blocks(stage, MedNeXtBlock, f"encoder stage {i}", family)):
            if i > 0 and j == 0:
                ref = f"down_blocks.{i - 1}"
            elif i < depth - 1:
                ref = f"enc_stages.{i}.{j - (i > 0)}"
            else:
                ref = f"bottleneck.{j - 1}"
            _mednext_block(links, f"encoder.{i}.blocks.{j}", ref, down=i > 0 and j == 0)
    for level, stage in enumerate(net.decoder):
        if not isinstance(stage.up, MedNeXtUp):
            raise WeightMapError(
                f"decoder stage {level} upsamples with {type(stage.up).__name__}; MONAI's "
                "MedNeXt has its up block there. Fix: model.upsample=mednext"
            )
        up = f"up_blocks.{top - level}"
        _mednext_block(links, f"decoder.{level}.up", up)
        links.leaf(f"decoder.{level}.up.norm", f"{up}.norm")  # after its transposed dw conv
        for j, _ in enumerate(_blocks(stage, MedNeXtBlock, f"decoder stage {level}", family)):
            _mednext_block(links, f"decoder.{level}.blocks.{j}", f"dec_stages.{top - level}.{j}")

    def head(level: int) -> str:
        # out_blocks run from the bottleneck (index 0, level depth - 1) up to level 1
        return "out_0.conv_out" if level == 0 else f"out_blocks.{depth - 1 - level}.conv_out"

    for level in range(len(net.heads)):
        links.leaf(f"heads.{level}", head(level), weight=_transposed_1x1_to_conv)
    links.droppable += [f"{head(level)}." for level in range(len(net.heads), depth)]
    return _resolve(links, state, family, None)


def _mednext_block(links: _Links, seg: str, ref: str, *, down: bool = False) -> None:
    """A MedNeXt block's tensors (segkit ``dw``, ``expand``, ``grn``, ``compress``,
    ``shortcut``; MONAI ``conv1``, ``norm``, ``conv2``, ``global_resp_*``, ``conv3``,
    ``res_conv``); segkit's up block reuses the names but its depthwise conv is ``dw.conv``."""
    links.leaf(f"{seg}.dw.conv", f"{ref}.conv1")
    links.leaf(f"{seg}.dw.norm", f"{ref}.norm")
    links.leaf(f"{seg}.expand.conv", f"{ref}.conv2")
    links.leaf(
        f"{seg}.grn",
        ref,
        names={"gamma": "global_resp_gamma", "beta": "global_resp_beta"},
        zeros_if_absent=down,
    )
    links.leaf(f"{seg}.compress.conv", f"{ref}.conv3")
    links.leaf(f"{seg}.shortcut.conv", f"{ref}.res_conv")


def _resolve(
    links: _Links, state: StateDict, family: str, spatial_axes: Sequence[int] | None
) -> dict[str, torch.Tensor]:
    """Every segkit tensor from its source, or one error listing every mismatch."""
    out: dict[str, torch.Tensor] = {}
    unlinked, absent, shapes = [], [], []
    used: set[str] = set()
    for key, want in links.target.items():
        src = links.sources.get(key)
        if src is None:
            unlinked.append(key)
            continue
        if src.key not in state:
            if src.zeros_if_absent:
                out[key] = torch.zeros(want.shape, dtype=want.dtype)
            else:
                absent.append(f"{key} (from {src.key})")
            continue
        used.add(src.key)
        tensor = state[src.key]
        if src.transform is not None:
            tensor = src.transform(tensor)
        if spatial_axes is not None and tensor.dim() == len(spatial_axes) + 2:
            tensor = tensor.permute(0, 1, *(2 + a for a in spatial_axes))
        if tuple(tensor.shape) != tuple(want.shape):
            shapes.append(
                f"{key} {tuple(want.shape)} vs {src.key} {tuple(tensor.shape)}"
                + (" (after the transform)" if src.transform is not None else "")
            )
            continue
        out[key] = tensor.detach().clone().contiguous()
    left = [
        key
        for key in _left_over(state, used)
        if not any(key.startswith(prefix) for prefix in links.droppable)
    ]
    problems = [
        (unlinked, f"segkit tensors {family} has no place for"),
        (absent, "segkit tensors whose reference tensor is missing"),
        (left, "reference tensors left over"),
        (shapes, "shapes that differ (segkit vs reference)"),
    ]
    lines = [f"  {what} ({len(keys)}): {_listing(keys)}" for keys, what in problems if keys]
    if lines:
        raise WeightMapError(
            f"the {family} state dict does not fit this segkit network:\n"
            + "\n".join(lines)
            + "\nFix: build the segkit network with the reference's configuration (depth, "
            "widths, kernels, blocks per stage, convs per block, conv bias, deep supervision)"
        )
    return out


def _listing(keys: list[str]) -> str:
    more = f", ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _left_over(state: StateDict, used: set[str]) -> list[str]:
    """Reference keys neither mapped nor a copy of a mapped tensor (same storage, or, for a
    state dict whose shared storage was lost on the way, the same name and values)."""
    rest = [key for key in state if key not in used]
    if not rest:
        return []
    storage = {_storage_id(state[k]) for k in used} - {None}
    by_print: dict[tuple, list[str]] = {}
    for k in used:
        by_print.setdefault(_fingerprint(k, state[k]), []).append(k)
    left = []
    for key in rest:
        t = state[key]
        if _storage_id(t) in storage:
            continue
        twins = by_print.get(_fingerprint(key, t), [])
        if t.is_meta and twins:  # no values to compare (a structural check): name and shape
            continue
        if not any(torch.equal(t, state[k]) for k in twins):
            left.append(key)
    return left


def _storage_id(t: torch.Tensor) -> tuple | None:
    if t.is_meta:
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())


def _fingerprint(key: str, t: torch.Tensor) -> tuple:
    total = float(t.double().sum()) if t.numel() and not t.is_meta else 0.0
    return (key.rsplit(".", 1)[-1], tuple(t.shape), total)


__all__ = [
    "DNA_CLASSES",
    "WeightMapError",
    "dna_state_dict",
    "map_dna_plain_conv_unet",
    "map_dna_residual_encoder_unet",
    "map_monai_dynunet",
    "map_monai_mednext",
]

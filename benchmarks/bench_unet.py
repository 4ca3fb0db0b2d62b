"""segkit's UNet vs dynamic-network-architectures' PlainConvUNet (nnU-Net's network).

Same topology (conf/model/nnunet_default.yaml: 6 stages, 32→320 channels, 3×3×3
kernels, strided-conv down, transposed-conv up, instance norm, leaky ReLU, deep
supervision), same input; forward+backward timed alternately in one process,
medians reported. Then an odd size (where PlainConvUNet crashes) and the time to
solve a plan.

Set-up (benchmark environment only, not a segkit dependency):
    pip install --no-deps dynamic-network-architectures einops monai
Run:
    python benchmarks/bench_unet.py [--size 64 64 64] [--batch 2] [--repeats 7] [--device cpu]
        [--bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from segkit.config import compose, model_config
from segkit.nn import UNet, plan_unet
from segkit.plan import stage_sizes
from segkit.shapes import fit_transposed
from segkit.spec import UNetSpec


def nnunet_spec(in_ch: int, classes: int) -> UNetSpec:
    cfg = compose(["model=nnunet_default", "~experiment"])
    return UNetSpec.from_config(model_config(cfg, num_channels=in_ch, num_classes=classes))


def dna_net(spec: UNetSpec) -> nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(
        spec.in_channels,
        spec.depth,
        list(spec.channels),
        nn.Conv3d,
        [list(k) for k in spec.kernel_size],
        [list(s) for s in spec.strides],
        list(spec.convs_per_stage),
        spec.out_channels,
        list(spec.convs_per_stage_decoder),
        conv_bias=spec.conv_bias,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"negative_slope": 0.01, "inplace": True},
        deep_supervision=spec.deep_supervision,
    )


def monai_dynunet_on(x: torch.Tensor, spec: UNetSpec) -> str:
    """What MONAI's DynUNet with the same strides does on ``x`` (if MONAI is installed)."""
    try:
        from monai.networks.nets import DynUNet
    except ImportError:
        return "not installed (pip install --no-deps monai)"
    net = DynUNet(
        spatial_dims=3,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        kernel_size=[list(k) for k in spec.kernel_size],
        strides=[list(s) for s in spec.strides],
        upsample_kernel_size=[list(s) for s in spec.strides[1:]],
        filters=[4] * spec.depth,  # narrow: only the shapes matter here
    ).to(x.device)
    try:
        with torch.no_grad():
            net(x)
        return "ran"
    except RuntimeError as exc:
        return "crash: " + str(exc).split("\n")[0][:60]


def step(net: nn.Module, x: torch.Tensor, bf16: bool = False) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = net(x)
    outs = out if isinstance(out, list | tuple) else [out]
    sum(o.float().mean() for o in outs).backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs=3, default=[64, 64, 64])
    p.add_argument("--odd-size", type=int, nargs=3, default=[65, 67, 63])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU training)")
    args = p.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    spec = nnunet_spec(1, 3)
    ours = UNet(spec).to(dev).train()
    try:
        theirs = dna_net(spec).to(dev).train()
    except ImportError:
        raise SystemExit(
            "install the anchor: pip install --no-deps dynamic-network-architectures einops"
        ) from None
    n_ours = sum(q.numel() for q in ours.parameters())
    n_theirs = sum(q.numel() for q in theirs.parameters())
    x = torch.randn(args.batch, 1, *args.size, device=dev)
    for net in (ours, theirs):  # warm-up
        step(net, x, args.bf16)
        net.zero_grad(set_to_none=True)
    times: dict[str, list[float]] = {"segkit": [], "PlainConvUNet": []}
    for _ in range(args.repeats):  # alternate so drift hits both equally
        for name, net in (("segkit", ours), ("PlainConvUNet", theirs)):
            times[name].append(step(net, x, args.bf16))
            net.zero_grad(set_to_none=True)
    med = {k: statistics.median(v) for k, v in times.items()}

    odd = torch.randn(1, 1, *args.odd_size, device=dev)
    try:
        step(theirs, odd)
        theirs_odd = "ran"
    except RuntimeError as exc:
        theirs_odd = "crash: " + str(exc).split("\n")[0][:60]
    ours_odd = step(ours, odd)
    monai_odd = monai_dynunet_on(odd, spec)

    # solving: the shape algebra a forward pass runs for a new size (stage sizes, then each
    # transposed conv's padding and output_padding); distinct sizes, so nothing is cached
    solve = []
    for k in range(200):
        size_k = tuple(n + k for n in args.odd_size)
        t = time.perf_counter()
        skips = stage_sizes(spec, size_k)
        for i in range(spec.depth - 1):
            downs, ups = spec.downsamples(i + 1), spec.up_kernel_size[i]
            [fit_transposed(n, d, u) for n, d, u in zip(skips[i], downs, ups)]
        solve.append(time.perf_counter() - t)
    # the full plan table: every row read off the network run on the meta device
    plan_unet(spec, tuple(args.odd_size))  # warm-up (imports PyTorch's meta kernels)
    traced = []
    for k in range(1, 6):
        t = time.perf_counter()
        plan_unet(spec, tuple(n + k for n in args.odd_size))
        traced.append(time.perf_counter() - t)

    size = "×".join(map(str, args.size))
    print(
        f"\nnnU-Net 3d_fullres topology, batch {args.batch}, {size}, forward+backward, "
        f"device {dev} ({torch.get_num_threads()} threads)"
        f"{', bf16 autocast' if args.bf16 else ''}, median of {args.repeats}\n"
    )
    print(f"{'network':<16}{'params':>14}{'median s/iter':>16}{'vs anchor':>11}")
    print(f"{'PlainConvUNet':<16}{n_theirs:>14,}{med['PlainConvUNet']:>16.3f}{1.0:>10.2f}x")
    print(
        f"{'segkit UNet':<16}{n_ours:>14,}{med['segkit']:>16.3f}"
        f"{med['segkit'] / med['PlainConvUNet']:>10.2f}x"
    )
    print(
        f"\nodd size {'×'.join(map(str, args.odd_size))}: PlainConvUNet {theirs_odd}; "
        f"segkit ran in {ours_odd:.3f} s, output {tuple(ours(odd)[0].shape[2:])}"
    )
    print(f"odd size: MONAI DynUNet (same topology) {monai_odd}")
    print(f"solving the 6-stage 3D shapes: median {statistics.median(solve) * 1e3:.2f} ms")
    print(f"the full plan (meta-device trace): median {statistics.median(traced) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()

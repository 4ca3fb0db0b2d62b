"""segkit's ResEnc and MedNeXt presets vs the reference implementations, side by side.

- ``model=resenc`` vs dynamic-network-architectures' ``ResidualEncoderUNet`` (nnU-Net
  ResEnc: stem, (1, 3, 4, 6, 6, 6) basic blocks, ResNet-D shortcuts, 1 conv per
  decoder stage, deep supervision);
- ``model=mednext_s|b|m|l`` vs MONAI's ``create_mednext("S"|"B"|"M"|"L")`` (kernel 3,
  deep supervision off on both).

Per pair: parameter counts, GFLOPs per 128³ sample (segkit's plan; the same convs
run in both), the smallest input each accepts, forward+backward CPU time at a size
both accept (interleaved repeats, medians, same threads), and what each does at odd
sizes (the reference's error vs segkit's output size).

Set-up (benchmark environment only, never a segkit dependency):
    python -m venv --system-site-packages /work/benchenv
    /work/benchenv/bin/pip install --no-deps dynamic-network-architectures==0.4.4 \
        monai==1.6.1 einops
Run:
    /work/benchenv/bin/python benchmarks/bench_architectures.py [--size 64 64 64]
        [--batch 1] [--repeats 5] [--threads 2] [--archs resenc mednext_s ...]
        [--device cuda] [--bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from segkit.config import compose, model_config
from segkit.nn import UNet, plan_unet
from segkit.plan import unet_min_input_size
from segkit.spec import UNetSpec

CLASSES = 3
ODD_SIZES = ((65, 67, 63), (37, 45, 29))


def segkit_spec(preset: str, deep_supervision: bool) -> UNetSpec:
    cfg = compose([f"model={preset}", f"model.deep_supervision={str(deep_supervision).lower()}"])
    return UNetSpec.from_config(model_config(cfg, num_channels=1, num_classes=CLASSES))


def resenc_reference(spec: UNetSpec) -> nn.Module:
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    return ResidualEncoderUNet(
        spec.in_channels,
        spec.depth,
        list(spec.channels),
        nn.Conv3d,
        [list(k) for k in spec.kernel_size],
        [list(s) for s in spec.strides],
        list(spec.blocks_per_stage),
        spec.out_channels,
        list(spec.convs_per_stage_decoder),
        conv_bias=spec.conv_bias,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"negative_slope": 0.01, "inplace": True},
        deep_supervision=spec.deep_supervision,
    )


def mednext_reference(variant: str) -> Callable[[UNetSpec], nn.Module]:
    def build(spec: UNetSpec) -> nn.Module:
        from monai.networks.nets.mednext import create_mednext

        return create_mednext(
            variant, spatial_dims=3, in_channels=1, out_channels=CLASSES, kernel_size=3
        )

    return build


PAIRS = {
    "resenc": ("ResidualEncoderUNet (DNA 0.4.4)", True, resenc_reference),
    "mednext_s": ("MONAI create_mednext('S')", False, mednext_reference("S")),
    "mednext_b": ("MONAI create_mednext('B')", False, mednext_reference("B")),
    "mednext_m": ("MONAI create_mednext('M')", False, mednext_reference("M")),
    "mednext_l": ("MONAI create_mednext('L')", False, mednext_reference("L")),
}


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def step(net: nn.Module, x: torch.Tensor, bf16: bool = False) -> float:
    """One forward + backward pass (under bf16 autocast if asked); seconds."""
    net.zero_grad(set_to_none=True)
    sync = torch.cuda.synchronize if x.is_cuda else lambda: None
    sync()
    t = time.perf_counter()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = net(x)
    outs = out if isinstance(out, list | tuple) else [out]
    sum(o.float().mean() for o in outs).backward()
    sync()
    return time.perf_counter() - t


def odd_size(net: nn.Module, size: tuple[int, ...]) -> str:
    try:
        with torch.no_grad():
            out = net.eval()(torch.randn(1, 1, *size, device=next(net.parameters()).device))
        out = out[0] if isinstance(out, list | tuple) else out
        return "×".join(map(str, out.shape[2:]))
    except RuntimeError as exc:
        return "RuntimeError: " + str(exc).split("\n")[0][:70]
    finally:
        net.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=[64, 64, 64])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--archs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--no-odd", action="store_true", help="skip the odd-size runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU training)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = tuple(args.size)
    print(
        f"torch {torch.__version__}, {args.device}{' bf16 autocast' if args.bf16 else ''}, "
        f"{args.threads} threads, batch {args.batch}, "
        f"time at {'×'.join(map(str, size))}, medians of {args.repeats} interleaved repeats"
    )
    rows = []
    for arch in args.archs:
        label, ds, build_ref = PAIRS[arch]
        spec = segkit_spec(arch, ds)
        seg, ref = UNet(spec).to(args.device), build_ref(spec).to(args.device)
        gflops = 2 * plan_unet(spec, (128, 128, 128)).macs / 1e9
        x = torch.randn(args.batch, 1, *size, device=args.device)
        step(seg, x, args.bf16), step(ref, x, args.bf16)  # warm-up
        times: dict[str, list[float]] = {"seg": [], "ref": []}
        for r in range(args.repeats):
            order = (("seg", seg), ("ref", ref)) if r % 2 == 0 else (("ref", ref), ("seg", seg))
            for name, net in order:
                times[name].append(step(net, x, args.bf16))
        t_seg, t_ref = statistics.median(times["seg"]), statistics.median(times["ref"])
        odd = [] if args.no_odd else [(s, odd_size(ref, s), odd_size(seg, s)) for s in ODD_SIZES]
        rows.append(
            dict(
                arch=arch,
                label=label,
                params_seg=n_params(seg),
                params_ref=n_params(ref),
                gflops=gflops,
                min_size="×".join(map(str, unet_min_input_size(spec))),
                t_seg=t_seg,
                t_ref=t_ref,
                odd=odd,
            )
        )
        r = rows[-1]
        print(
            f"\n{arch} vs {label}\n"
            f"  params      segkit {r['params_seg']:,}  reference {r['params_ref']:,}  "
            f"({100 * (r['params_seg'] / r['params_ref'] - 1):+.2f}%)\n"
            f"  GFLOPs/128³ {gflops:,.1f}   min input (segkit) {r['min_size']}\n"
            f"  fwd+bwd     segkit {t_seg:.3f} s  reference {t_ref:.3f} s  "
            f"ratio {t_seg / t_ref:.3f}  (all: seg {[round(t, 2) for t in times['seg']]}, "
            f"ref {[round(t, 2) for t in times['ref']]})",
            flush=True,
        )
        for s, ref_out, seg_out in odd:
            print(f"  {'×'.join(map(str, s))}: reference {ref_out}; segkit {seg_out}", flush=True)
        del seg, ref
    print(
        "\n| preset | reference | params segkit / reference | GFLOPs at 128³ | min input "
        "| fwd+bwd time ratio |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| `{r['arch']}` | {r['label']} | {r['params_seg'] / 1e6:.2f} M / "
            f"{r['params_ref'] / 1e6:.2f} M | {r['gflops']:,.0f} | {r['min_size']} | "
            f"{r['t_seg'] / r['t_ref']:.2f} |"
        )


if __name__ == "__main__":
    main()

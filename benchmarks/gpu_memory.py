"""The planner's memory model vs ``torch.cuda.max_memory_allocated`` (part of gpu_check.sh).

Per case (a preset, a patch, a batch, a precision): the estimate is
``segkit.planner.training_memory`` from the network's own plan; the measurement is the CUDA
allocator's peak over three real training steps (forward under autocast, Dice+CE with deep
supervision, backward, SGD step with nnU-Net's momentum), after the allocator's statistics
are reset with nothing else alive. The planner's promise is one-sided:
measured ≤ estimate ≤ 1.25 × measured (``--max-ratio``).

    python benchmarks/gpu_memory.py [--cases nnunet_default:128x128x128:2:bf16 ...]
"""

from __future__ import annotations

import argparse
import gc

import torch
from omegaconf import OmegaConf

from segkit.config import compose, model_config
from segkit.nn import UNet
from segkit.planner import optimizer_state_count, training_memory
from segkit.spec import UNetSpec
from segkit.training.losses import build_loss

CASES = [
    "nnunet_default:128x128x128:2:bf16",
    "nnunet_default:160x128x112:2:fp32",
    "resenc:128x128x128:2:bf16",
    "mednext_s:128x128x128:2:bf16",
]
GiB = 2**30


def measure(preset: str, size: tuple[int, ...], batch: int, precision: str) -> tuple[int, int]:
    """``(estimate, measured)`` bytes of a training step of ``preset``."""
    cfg = compose([f"model={preset}"])
    spec = UNetSpec.from_config(model_config(cfg, num_channels=1, num_classes=3))
    torch.manual_seed(0)
    net = UNet(spec).cuda().train()
    estimate = training_memory(
        spec,
        net.plan(size),
        batch,
        optimizer_states=optimizer_state_count(
            OmegaConf.to_container(cfg.optim.optimizer, resolve=True)
        ),
        precision=precision,
    ).total
    loss_fn = build_loss(OmegaConf.to_container(cfg.loss, resolve=True))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    x = torch.randn(batch, 1, *size, device="cuda")
    y = torch.randint(0, 3, (batch, 1, *size), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated()
    del net, opt, x, y, loss
    gc.collect()
    torch.cuda.empty_cache()
    return estimate, measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=CASES, help="preset:DxHxW:batch:bf16|fp32")
    parser.add_argument("--max-ratio", type=float, default=1.25)
    args = parser.parse_args()
    # cuDNN autotuning tries workspaces of any size; the estimate models the default kernels
    torch.backends.cudnn.benchmark = False
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| preset | patch | batch | precision | estimate GiB | measured GiB | est/measured |")
    print("|---|---|---|---|---|---|---|")
    ratios, bad = [], []
    for case in args.cases:
        preset, size_s, batch_s, precision = case.split(":")
        size = tuple(int(v) for v in size_s.split("x"))
        est, meas = measure(preset, size, int(batch_s), precision)
        ratio = est / meas
        ratios.append(ratio)
        if not 1.0 <= ratio <= args.max_ratio:
            bad.append(case)
        print(
            f"| {preset} | {size_s} | {batch_s} | {precision} | {est / GiB:.2f} | "
            f"{meas / GiB:.2f} | {ratio:.3f} |",
            flush=True,
        )
    verdict = "all within" if not bad else f"OUTSIDE for {', '.join(bad)}; want"
    print(
        f"RESULT: est/measured {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} cases; "
        f"{verdict} [1, {args.max_ratio}]"
    )
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()

"""What the GPU check runs on (part of gpu_check.sh): the device, torch, CUDA and the
packages carried as wheels, each imported, so a missing one stops the check at once."""

from __future__ import annotations

import importlib

import torch

CARRIED = ("hydra", "omegaconf", "nibabel", "monai", "dynamic_network_architectures")


def main() -> None:
    versions = {
        name: getattr(importlib.import_module(name), "__version__", "?") for name in CARRIED
    }
    importlib.import_module("segkit")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch")
    p = torch.cuda.get_device_properties(0)
    print(", ".join(f"{k} {v}" for k, v in versions.items()))
    print(
        f"RESULT: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh needs on the GPU machine, downloaded here into .whl/
# (git-ignored; the device run carries it). That machine's image (Python 3.12) already has
# torch, numpy, pytorch-lightning, torchmetrics, lightning-utilities, scipy, tensorboard,
# matplotlib, tqdm, PyYAML, packaging, einops, timm, pytest and hypothesis; it lacks Hydra,
# OmegaConf and its parser runtime, nibabel, and the two references (MONAI, nnU-Net's
# dynamic-network-architectures). Pure-Python wheels, about 5 MiB together.
#
#   bash benchmarks/gpu_wheels.sh            # then: du -sh .whl
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
mkdir -p .whl
rm -f .whl/*.whl # one version of each: two would stop the install there

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl \
    hydra-core==1.3.8 omegaconf==2.3.1 nibabel==5.4.2 \
    monai==1.6.1 dynamic-network-architectures==0.4.4
# OmegaConf's parser runtime 4.9.x is published as a source archive only: build its
# pure-Python wheel here (it installs on any Python 3)
"$PY" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3

ls -l .whl
du -sh .whl

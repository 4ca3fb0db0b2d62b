# Two commands do all the set-up:  `make train`  and  `make test`.
PY ?= python
ARGS ?=

.PHONY: install train test lint plan demo bench docs

# CPU torch first (if absent) so the `torch` requirement is already met and pip
# does not fetch a multi-GB CUDA build; then segkit with its dev/sweep extras (monai, a
# reference of tests/references/, among them, and what nnU-Net's planner, preprocessor,
# predictor and trainer import: SimpleITK, scikit-image, pandas, blosc2, ...); then nnU-Net
# itself and its networks, the other reference, with --no-deps: they declare torch (and DNA's
# timm pulls torchvision), which would replace the CPU torch. Never a runtime dependency.
NNUNET_REFERENCE = "nnunetv2==2.8.1" "dynamic-network-architectures==0.4.4" einops \
	"acvl-utils==0.2.6" "batchgenerators==0.25.5" "batchgeneratorsv2==0.3.6"

install:
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(NNUNET_REFERENCE)

train: install
	$(PY) train.py $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

lint:
	ruff check . && ruff format --check .

plan:
	segkit plan $(ARGS)

demo:
	segkit make-demo

bench:
	$(PY) benchmarks/bench_unet.py

# the docs site into build/site (git-ignored); a broken link or anchor fails (mkdocs.yml)
docs: install
	$(PY) -m mkdocs build --strict -d build/site

# Two commands do all the set-up:  `make train`  and  `make test`.
PY ?= python
ARGS ?=

.PHONY: install train test lint plan demo bench

# CPU torch first (if absent) so the `torch` requirement is already met and pip
# does not fetch a multi-GB CUDA build; then segkit with its dev/sweep extras.
install:
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"

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

# One command each: `make demo` (set up + train on the embedded digits dataset), `make test` (set up + tests).
# The set-up is a local virtual environment with the CPU build of torch; for a GPU install see README.md.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0 torchvision==0.28.0

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# 5 epochs reach ~0.97 test accuracy; sharpness on 64 images keeps the end-of-run Hessian cost to seconds
demo: setup
	WANDB_MODE=offline $(PY) -m sam_lab.train data=digits model.width=8 optimizer=sam rho=0.05 \
		epochs=5 batch_size=64 lr=0.05 device=cpu metrics.sharpness.num_samples=64

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check sam_lab tests scripts hydra_plugins
	$(PY) -m ruff format --check sam_lab tests scripts hydra_plugins

clean:
	rm -rf $(VENV) outputs multirun

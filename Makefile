# Set-up, main job, style and tests. `make run`, `make lint` and `make test` each create .venv on first use.
# TORCH_SPEC picks the torch build: CI sets torch==2.13.0 (the CPU build on its disk).
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
RECIPE     ?= recipes/pixelgan_semisup.toml
# `make run` trains the recipe's `cpu` profile on a machine without a GPU (at most 22 minutes of
# training, under 30 in all on 2 cores) and the recipe as written, at the paper's scale, on a GPU.
# PROFILE= runs the recipe as written anywhere; PROFILE=small its 200-step profile.
PROFILE    ?= $(shell $(VENV)/bin/python -c "import torch; print('' if torch.cuda.is_available() else 'cpu')")
ARGS       ?=
GENTK_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export GENTK_DATA

.PHONY: install run lint test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/gentk run $(RECIPE) $(if $(PROFILE),--profile $(PROFILE)) $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install
	$(VENV)/bin/python -m pytest -q $(ARGS)

bench: install
	$(VENV)/bin/python bench/pixelcnn.py
	$(VENV)/bin/python bench/train.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

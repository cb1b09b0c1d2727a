# `make demo` and `make test` each set themselves up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prefsweep-installed
TINY_MODEL ?= models/tiny-llama
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo lint tiny-model clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first, so nothing below pulls a multi-GB CUDA build
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test,deepspeed]"
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(PY) -m pytest -q --timeout=900

$(TINY_MODEL)/config.json: | $(STAMP)
	$(VENV)/bin/prefsweep make-tiny-model $(TINY_MODEL)  # data/dpo_en_demo.json, vocab 1024, seed 0

tiny-model: $(TINY_MODEL)/config.json

demo: setup tiny-model
	$(VENV)/bin/prefsweep sweep sweeps/demo.yaml

clean:
	rm -rf $(VENV) models outputs mlflow.db mlruns

# `make demo` and `make test` each set themselves up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prefsweep-installed
TINY_MODEL ?= models/tiny-llama
TINY_RM ?= models/tiny-reward
# The demo trains and evaluates on the first 64 pairs (configs/tiny_dpo.yaml max_samples): the warm-up and
# the reward model learn from the other 236, so neither has seen a pair or prompt the demo uses.
DEMO_ROWS := 64
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo lint tiny-model tiny-reward-model clean

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
	$(PY) -m pytest -q --timeout=900 --durations=25

$(TINY_MODEL)/config.json: | $(STAMP)
	$(VENV)/bin/prefsweep make-tiny-model $(TINY_MODEL) --data data/dpo_en_demo.json --vocab-size 1024 --seed 0 \
		--warmup dpo_en_demo --warmup-skip $(DEMO_ROWS)

$(TINY_RM)/config.json: $(TINY_MODEL)/config.json
	$(VENV)/bin/prefsweep make-tiny-reward-model $(TINY_RM) --base $(TINY_MODEL) --data dpo_en_demo \
		--skip $(DEMO_ROWS) --seed 0

tiny-model: $(TINY_MODEL)/config.json

tiny-reward-model: $(TINY_RM)/config.json

demo: setup tiny-model tiny-reward-model
	$(VENV)/bin/prefsweep sweep sweeps/demo.yaml

clean:
	rm -rf $(VENV) models outputs mlflow.db mlruns

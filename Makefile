# Two commands set everything up on a fresh machine with Python 3.11:
#   make test   create .venv, install the pinned stack, run the test suite
#   make demo   create .venv, install, run the embedded end-to-end demo
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# torch is optional (checkpoint conversion cross-checks); set WITH_TORCH=0 to skip it.
WITH_TORCH ?= 1

.PHONY: test test-slow demo bench clean-venv

$(STAMP): requirements.txt requirements-lock.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt -c requirements-lock.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	if [ "$(WITH_TORCH)" = "1" ]; then $(PIP) install -q torch==2.13.0 || echo "torch not installed: cross-framework tests will skip"; fi
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

demo: $(STAMP)
	$(PY) -m hssc_jax.demo --workdir demo_out

bench: $(STAMP)
	$(PY) benchmarks/entropy_coding.py

clean-venv:
	rm -rf $(VENV)

# Every target creates .venv on first use; only Python 3.10+ and make are needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test lint bench soak clean

$(VENV)/.installed-%: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[$*]"
	touch $@

$(VENV)/.installed-base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e .
	touch $@

demo: $(VENV)/.installed-base
	$(PY) examples/ffi_segfault.py
	$(PY) examples/batch_with_crashes.py

test: $(VENV)/.installed-test
	$(PY) -m ruff check tarnish_py tests examples benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m mypy tarnish_py examples
	$(PY) -m pytest -q

lint: $(VENV)/.installed-test
	$(PY) -m ruff check tarnish_py tests examples benchmarks
	$(VENV)/bin/lint-imports

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# The long soak: 20,000 calls on a pool of 2 from 4 threads, 1 % random crashes.
soak: $(VENV)/.installed-test
	$(PY) tests/reliability/soak.py --calls 20000 --seed 1

# Everything installs here: a fresh machine needs only python3 (3.10+).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.cmrt-installed
# The CPU build of torch lies on this disk; a bare `torch` requirement would pull a 5 GB CUDA build.
TORCH  ?= torch==2.13.0
OUT    ?= demo-out

.PHONY: setup test test-slow demo bench-quick clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]"
	touch $@

# Both cores: pytest-xdist workers share one export per bundle and one trace per network (tests/conftest.py).
JOBS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) -m slow

demo: $(STAMP)
	$(PY) -m cmrt.demo --out $(OUT)

bench-quick: $(STAMP)
	$(VENV)/bin/cmrt bench --suite quick --json $(OUT)/bench-quick.json --markdown $(OUT)/bench-quick.md

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache

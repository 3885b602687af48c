# Everything installs here: a fresh machine needs only python3 (3.10+).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.cmrt-installed
# The Triton server's side of `cmrt serve` and tests/serve (see serve-env below).
SERVE_VENV  ?= .venv-serve
SERVE_PY    := $(SERVE_VENV)/bin/python
SERVE_STAMP := $(SERVE_VENV)/.cmrt-installed
PYTRITON    ?= nvidia-pytriton==0.7.0
MAIN_SITE    = $(shell $(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# The CPU build of torch lies on this disk; a bare `torch` requirement would pull a 5 GB CUDA build.
TORCH  ?= torch==2.13.0
OUT    ?= demo-out

.PHONY: setup serve-env test test-slow demo bench-quick clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]"
	touch $@

# Both cores: pytest-xdist workers share one export per bundle and one trace per network (tests/conftest.py).
JOBS ?= 2

# PyTriton's wheel (the tritonserver binary, its Python backend) needs numpy<2 (its backend stub returns
# empty outputs with numpy 2); cmrt's environment has numpy 2. .venv-serve holds numpy<2 and the wheel
# and sees the rest of .venv (cmrt, torch, onnxruntime) through a .pth file: the server runs the same
# cmrt and torch as the tests, for ~15 s of install instead of a second full environment.
serve-env: $(SERVE_STAMP)

$(SERVE_STAMP): $(STAMP)
	$(PYTHON) -m venv --without-pip $(SERVE_VENV)
	$(PIP) --python $(SERVE_PY) install -q --no-deps "numpy<2" "$(PYTRITON)"
	$(SERVE_PY) -c "import sys, sysconfig; open(sysconfig.get_paths()['purelib'] + '/cmrt-main-venv.pth', 'w')\
	.write('import site; site.addsitedir(%r)\n' % sys.argv[1])" "$(MAIN_SITE)"
	touch $@

test: $(STAMP) $(SERVE_STAMP)
	CMRT_SERVE_PYTHON="$(abspath $(SERVE_PY))" $(PY) -m pytest -q -n $(JOBS) --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -q -n $(JOBS) -m slow

demo: $(STAMP)
	$(PY) -m cmrt.demo --out $(OUT)

bench-quick: $(STAMP)
	$(VENV)/bin/cmrt bench --suite quick --json $(OUT)/bench-quick.json --markdown $(OUT)/bench-quick.md

clean:
	rm -rf $(VENV) $(SERVE_VENV) $(OUT) .pytest_cache

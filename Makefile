# Two entry points: `make run` (the embedded evaluation) and `make test` (the test suite).
# Each creates .venv and installs the project into it on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test,dev,docs]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

.PHONY: install run test test-all lint docs
install: $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/art-patch-defenses evaluate

# The docs site must build without a warning (--strict) before the fast test tier runs.
test: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir "$$(mktemp -d)"
	$(VENV)/bin/python -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir "$$(mktemp -d)"
	$(VENV)/bin/python -m pytest -q

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check .

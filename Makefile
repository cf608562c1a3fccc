# Every target sets up .venv first (once; again when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: setup test demo bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP) $(DEMO_STAMP)

# The demo needs the sim loop and the video encoder (train, video), not Ray or the test tools.
$(DEMO_STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[train,video]'
	touch $(DEMO_STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# `adaptctl run` journals nothing unless asked, so every demo starts from the initialization.
demo: $(DEMO_STAMP)
	$(VENV)/bin/adaptctl run artifacts/cheetah_velocity --target-velocity 1.37 --out runs/demo --video

bench: $(STAMP)
	$(PY) -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check sim controller meta_train bench tests
	$(VENV)/bin/mypy sim controller meta_train bench

format: $(STAMP)
	$(VENV)/bin/ruff format sim controller meta_train bench tests
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

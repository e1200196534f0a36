# gsx: two commands a new machine needs, each installing what it lacks first.
#   make run    installs, then trains, evaluates and reports on the default recipe
#   make test   installs, then runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gsx-installed
RECIPE ?= recipes/gemma3-270m-l5.yaml

.PHONY: install system-deps run smoke test

$(STAMP): requirements.txt requirements-nodeps.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# constraints.txt pins torch to the CPU wheel for every package that asks for torch.
	$(PY) -m pip install -c constraints.txt -r requirements.txt
	# sae-dashboard's own pins would downgrade the whole stack, so it goes in without them.
	$(PY) -m pip install --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m gsx.run $(RECIPE)

smoke: install
	$(PY) -m gsx.run --smoke-test

# Debian's chromium renders the dashboards in the browser test (installed only as root).
system-deps:
	sh scripts/install-system-deps.sh

test: install system-deps
	$(PY) -m pytest

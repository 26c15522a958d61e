# Two commands a user needs: `make repro` (train) and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# Stages run as `python -m stages.X`: the venv's python must come first on PATH.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install repro test test-fast lint coverage lock clean-venv deps

# The venv. (The offline plots page's template is committed: plots_page/offline-template.html.)
install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "error: Python 3.11 is required (PYTHON=$(PYTHON) is %d.%d); run e.g. make PYTHON=python3.11" % sys.version_info[:2])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --requirement requirements.lock
	@# The lock pins the CPU build; on a machine with an NVIDIA GPU, swap in the same TensorFlow with CUDA.
	if nvidia-smi -L >/dev/null 2>&1; then \
	  $(BIN)/python -m pip uninstall --quiet --yes tensorflow-cpu && \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check 'tensorflow[and-cuda]==2.21.0'; fi
	touch $@

repro: install
	dvc repro

# The tests on every core (pytest-xdist; at most 4 workers, each may start TensorFlow). A module's tests
# stay on one worker, with its fixtures; the shared pipeline is built once for all; the slowest modules
# start first (tests/conftest.py: SLOWEST_FIRST). One test alone: python -m pytest tests/unit/test_fit.py
PARALLEL := -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

test: lint
	python -m pytest $(PARALLEL)

test-fast: lint
	python -m pytest $(PARALLEL) -m "not e2e"

lint: install
	ruff check .
	ruff format --check .

# Line coverage of classifier/ and stages/, the stages that dvc runs in subprocesses included.
coverage: install
	rm -f .coverage .coverage.*
	coverage run -m pytest -n 0
	coverage combine -q
	coverage report

# Write each stage's code deps in dvc.yaml from what its command imports (tests/test_layout.py checks them).
deps: install
	python -m tools.code_deps

# Re-pin every package after changing pyproject.toml's dependencies.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet '.[test]'
	{ echo "# Exact versions of every package the project installs (Python 3.11, Linux)."; \
	  echo "# Regenerate with: make lock"; \
	  .lock-venv/bin/pip freeze --exclude dvc-keras-cifar; } > requirements.lock
	rm -rf .lock-venv

clean-venv:
	rm -rf $(VENV)

# The plots page, offline: plots_page/offline-template.html (committed, so any clone has it) has vega,
# vega-lite and vega-embed inlined from plots_page/vendor/ (checked against its SHA256SUMS; no npm, no
# network), and .dvc/config's plots.html_template points plain `dvc plots show` / `dvc plots diff` at it.
# `make plots` (REVS="rev1 rev2 ..." for `dvc plots diff REVS`) rebuilds it first if its sources changed.
PLOTS_TEMPLATE := plots_page/offline-template.html
.PHONY: plots

plots: $(PLOTS_TEMPLATE)
	dvc plots $(if $(REVS),diff $(REVS),show)

$(PLOTS_TEMPLATE): plots_page/template.html plots_page/build_template.py plots_page/vendor/SHA256SUMS \
		$(wildcard plots_page/vendor/*.min.js)
	$(PYTHON) plots_page/build_template.py $@

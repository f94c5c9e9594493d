# The two commands of the README:
#   make run    set up .venv, run the pipeline at quick scale on the synthetic market, build the docs site
#   make test   set up .venv if needed, check notebooks/package are in sync, nbdev_test, a tiny run and its docs site, pytest
# and, to read and re-run the notebooks:
#   make lab    set up .venv if needed, add the `notebooks` extra (JupyterLab) if missing, start JupyterLab in nbs/
# .ci/run calls `make test`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYNC   := find nbs k4_nbdev README.md -type f \( -name '*.ipynb' -o -name '*.py' -o -name '*.md' \) -not -path '*/__pycache__/*' | sort | xargs sha256sum | sha256sum

.PHONY: install run test sync-check browser docs lab clean

# torch is installed first and pinned: pip then takes the CPU wheel instead of a multi-GB CUDA build
# (the package itself accepts torch>=2.3, so pip keeps the torch installed here). The dev extra holds the docs extra's tools.
$(STAMP): settings.ini setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,real]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/k4-pipeline --name quick --scale quick
	$(BIN)/k4-docs --run runs/quick
	@echo "Results: runs/quick (executed notebooks, artifacts, run.json); docs site: _docs/index.html"

sync-check: $(STAMP)
	@before=$$($(SYNC)); \
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export && $(BIN)/k4-docs --readme >/dev/null; \
	after=$$($(SYNC)); \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev_clean / nbdev_export / README changed files: commit the cleaned notebooks and exported package"; \
	  git status --short -- nbs k4_nbdev README.md; exit 1; fi; \
	echo "notebooks, package and README are in sync"

# The docs site is checked in headless Chromium (Debian's package; Playwright drives it without a download).
browser:
	@command -v chromium >/dev/null || { echo "installing Debian's chromium for the browser check"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The tiny run and its site are made once, by the README's own commands (MPLBACKEND=Agg: as on a headless server), and
# the tests read them (K4_TEST_RUN, K4_TEST_SITE) beside nbdev_test's standalone runs in runs/dev (K4_TEST_STANDALONE),
# so each notebook is executed twice per `make test`; pytest runs on both cores (pytest-xdist) and lists its slowest tests.
# OMP_NUM_THREADS=1: one torch thread per kernel in both executions (two notebooks run at once), so the tiny run's training
# is bit for bit nbdev_test's (test_same_seed_same_results); float32 sums in another order differ at 1e-6.
test: sync-check browser
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2
	MPLBACKEND=Agg OMP_NUM_THREADS=1 $(BIN)/k4-pipeline --name docs --scale tiny
	$(BIN)/k4-docs --run runs/docs --browser yes
	K4_TEST_RUN=runs/docs K4_TEST_SITE=_docs K4_TEST_STANDALONE=runs/dev $(BIN)/pytest tests/ -q -n 2 --durations=25

docs: $(STAMP)
	$(BIN)/k4-docs --run runs/quick

# JupyterLab in nbs/ on the project's .venv (its kernel imports k4_nbdev from the clone). LAB_ARGS: e.g. --no-browser --ip=0.0.0.0
LAB_ARGS ?=
lab: $(STAMP)
	@$(BIN)/python -c "import jupyterlab" 2>/dev/null || { echo "installing the notebooks extra (JupyterLab)"; \
	  $(BIN)/python -m pip install --quiet -e ".[notebooks]"; }
	@echo "Starting JupyterLab in nbs/: open the http://localhost:8888/lab?token=... URL it prints below; Ctrl-C stops it."
	@echo "Re-run a notebook with other parameters: cd nbs && ../$(BIN)/papermill 05_train.ipynb /tmp/out.ipynb -p epochs 2"
	cd nbs && $(abspath $(BIN))/jupyter-lab $(LAB_ARGS)

clean:
	rm -rf _docs _proc _docs_src runs

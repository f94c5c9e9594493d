# The two commands of the README:
#   make run    set up .venv, run the pipeline at quick scale on the synthetic market, build the docs site
#   make test   set up .venv if needed, check notebooks/package are in sync, nbdev_test, pytest, docs site
# .ci/run calls `make test`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYNC   := find nbs k4_nbdev README.md -type f \( -name '*.ipynb' -o -name '*.py' -o -name '*.md' \) -not -path '*/__pycache__/*' | sort | xargs sha256sum | sha256sum

.PHONY: install run test sync-check browser docs clean

# torch is installed first and pinned: pip then takes the CPU wheel instead of a multi-GB CUDA build.
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

test: sync-check browser
	$(BIN)/nbdev_test --n_workers 2
	$(BIN)/pytest tests/ -q
	$(BIN)/k4-pipeline --name docs --scale tiny
	$(BIN)/k4-docs --run runs/docs --browser yes

docs: $(STAMP)
	$(BIN)/k4-docs --run runs/quick

clean:
	rm -rf _docs _proc _docs_src runs

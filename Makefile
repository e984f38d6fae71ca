# Two entry points for a newcomer (see README):  make main   |   make test
# Both create .venv and install the kit on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Offline development machines keep data and weights in ../shared: use them when present and unset.
SHARED := $(abspath ../shared)
ifneq ($(wildcard $(SHARED)/data/README.md),)
  export RSCIR_DATA ?= $(SHARED)/data
  export RSCIR_WEIGHTS ?= $(SHARED)/weights
  export HF_HUB_OFFLINE ?= 1
  export TRANSFORMERS_OFFLINE ?= 1
endif
export MPLBACKEND ?= Agg

.PHONY: main lab explorer test test-fast test-nbval install clean-outputs

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(BIN)/.installed

# The main job: every notebook in order into $RSCIR_OUTPUT (default ./outputs); a second run resumes (skips
# the notebooks that are up to date). Report: $RSCIR_OUTPUT/index.md.
main: $(BIN)/.installed
	$(BIN)/rscir-kit notebooks $(if $(RSCIR_OUTPUT),--out "$(RSCIR_OUTPUT)",--out outputs)

# JupyterLab on the notebooks with the main job's environment (data, weights, offline settings; interactive
# runs write to outputs/interactive unless RSCIR_OUTPUT is set). The git filter keeps outputs out of commits.
LAB_OUTPUT = $(if $(RSCIR_OUTPUT),$(RSCIR_OUTPUT),$(CURDIR)/outputs/interactive)
lab: $(BIN)/.installed
	-git config filter.rscir-nbstrip.clean "$(abspath $(BIN))/python -m rscir_kit.run_notebooks --strip-stream"
	-git config filter.rscir-nbstrip.smudge cat
	RSCIR_OUTPUT="$(LAB_OUTPUT)" PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" \
	  $(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_ARGS)

# The λ explorer as a small web app (Voilà) on http://localhost:8866 (PORT=... to change it), with the kit's
# template notebooks/voila/templates/rscir-offline (Voilà's lab template without its CDN font links).
PORT ?= 8866
explorer: $(BIN)/.installed
	RSCIR_OUTPUT="$(LAB_OUTPUT)" PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" \
	  JUPYTER_PATH="$(CURDIR)/notebooks$${JUPYTER_PATH:+:$$JUPYTER_PATH}" \
	  $(BIN)/voila notebooks/06_lambda_explorer.ipynb --template=rscir-offline --port=$(PORT) --no-browser $(VOILA_ARGS)

# Test tiers (README "Tests"):
#   make test       everything, as CI runs it: unit tests, import contracts (lint-imports), the CLI, and papermill
#                   runs of every notebook on small data with assertions on their results (each notebook executes
#                   once; tests/test_notebooks.py checks that every committed notebook is among them)
#   make test-fast  the edit loop: no slow tests (real images, models, notebooks, widget rendering, fresh interpreters)
#   make test-nbval the committed notebooks once more through nbval with RSCIR_SIZE=5 (.ci/run runs it after make test;
#                   serially: the notebooks share one feature cache, whose lock refuses a second writer)
# Test workers (pytest-xdist): each test file runs whole on one worker, so its module fixtures (the notebooks
# executed once per file) are built once; TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: $(BIN)/.installed
	$(BIN)/python -m pytest $(XDIST)

test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not slow" -q -p no:cacheprovider

test-nbval: $(BIN)/.installed
	scratch=$$(mktemp -d) && RSCIR_SIZE=5 RSCIR_OUTPUT=$$scratch/nbval RSCIR_CACHE=$$scratch/cache \
	  $(BIN)/python -m pytest --nbval-lax notebooks/ -p no:cacheprovider -q && rm -rf $$scratch

clean-outputs:
	rm -rf outputs

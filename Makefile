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

.PHONY: main test install clean-outputs

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(BIN)/.installed

main: $(BIN)/.installed
	$(BIN)/rscir-kit notebooks --out outputs

# pytest (incl. papermill runs of every notebook on small data, with assertions on their results), then
# nbval executes the committed notebooks top to bottom with RSCIR_SIZE=5 into a scratch folder.
test: $(BIN)/.installed
	$(BIN)/python -m pytest
	scratch=$$(mktemp -d) && RSCIR_SIZE=5 RSCIR_OUTPUT=$$scratch/nbval RSCIR_CACHE=$$scratch/cache \
	  $(BIN)/python -m pytest --nbval-lax notebooks/ -p no:cacheprovider -q && rm -rf $$scratch

clean-outputs:
	rm -rf outputs

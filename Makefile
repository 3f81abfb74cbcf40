# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create (or reuse) the virtual environment .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the tested release (the local CPU wheel, not a multi-GB CUDA build);
	# the package's own range (torch>=2.3) is then already met, so pip keeps it
	$(BIN)/python -m pip install -q '$(TORCH)'
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/procres demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/spectral.py
	$(BIN)/python benchmarks/diagnostics.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/regularisers.py

clean:
	rm -rf $(VENV) runs build *.egg-info

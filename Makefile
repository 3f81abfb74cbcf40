# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create (or reuse) the virtual environment .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: resolves to the local CPU wheel instead of a CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
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

clean:
	rm -rf $(VENV) runs build *.egg-info

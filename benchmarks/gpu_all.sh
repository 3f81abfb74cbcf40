#!/usr/bin/env bash
# Every GPU check in one call (the lent device machine's python3 holds a CUDA torch):
#   GPU-marked tests, the spectral core on CUDA, and the training-pipeline epoch benchmark.
# Writes logs and JSON under $OUT.
set -u
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-/tmp/procres_gpu}"; mkdir -p "$OUT"; export OUT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
timeout 90 python3 benchmarks/gpu_spectral.py 2>&1 | tee "$OUT/gpu_spectral.txt"
timeout 330 python3 benchmarks/gpu_epoch.py "$@" 2>&1 | tee "$OUT/gpu_epoch.txt"

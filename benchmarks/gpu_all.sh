#!/usr/bin/env bash
# The GPU benchmarks and tests in one command: at most ~7.7 min (each part has its own timeout, and
# gpu_epoch.py saves after every measurement, so a cut-off run keeps what it measured).
#   1. benchmarks/gpu_epoch.py: the default procres train pipeline vs the authors' -> $OUT/latest.json
#   2. benchmarks/gpu_report.py: that JSON as the markdown block of docs/benchmarks.md -> $OUT/benchmarks_table.md
#   3. the GPU-marked tests -> $OUT/gpu_tests.txt;  4. benchmarks/gpu_spectral.py -> $OUT/gpu_spectral.*
# Run from a clone on a CUDA machine; PROCRES_COMMIT names the measured commit (needed without .git):
#   PROCRES_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_all.sh     # results in $OUT (/tmp/procres_gpu)
# Afterwards copy $OUT/latest.json to docs/gpu/latest.json and the block of benchmarks_table.md into
# docs/benchmarks.md, and commit both (docs/gpu/README.md). CPU dry run of the same logic, ~1 min:
#   OUT=/tmp/gpu_dry bash benchmarks/gpu_all.sh --smoke
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/procres_gpu}"; mkdir -p "$OUT"; export OUT
PY="${PYTHON:-python3}"
SMOKE=0; for arg in "$@"; do [ "$arg" = "--smoke" ] && SMOKE=1; done
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  echo "commit ${PROCRES_COMMIT:-not given}"; } 2>&1 | tee "$OUT/gpu.txt"
timeout 330 $PY benchmarks/gpu_epoch.py --budget 270 "$@" > "$OUT/gpu_epoch.txt" 2>&1
echo "gpu_epoch.py exit $?:"; grep -v '^latest.json: ' "$OUT/gpu_epoch.txt" | tail -40
if [ -s "$OUT/latest.json" ]; then
  $PY benchmarks/gpu_report.py "$OUT/latest.json" > "$OUT/benchmarks_table.md"
else  # gpu_epoch.py measured nothing: its log above says why; the other parts still run
  echo "no latest.json: gpu_epoch.py measured nothing (see $OUT/gpu_epoch.txt)" | tee "$OUT/benchmarks_table.md"
fi
if [ "$SMOKE" = 0 ]; then
  timeout 90 $PY -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/gpu_tests.txt" 2>&1
  echo "GPU tests exit $?:"; tail -8 "$OUT/gpu_tests.txt"
  timeout 35 $PY benchmarks/gpu_spectral.py > "$OUT/gpu_spectral.txt" 2>&1
  echo "gpu_spectral.py exit $?:"; tail -8 "$OUT/gpu_spectral.txt"
fi
echo "---- $OUT/benchmarks_table.md"; cat "$OUT/benchmarks_table.md"
echo "---- $OUT/latest.json (copy it to docs/gpu/latest.json)"
[ -s "$OUT/latest.json" ] && $PY -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))))" "$OUT/latest.json"

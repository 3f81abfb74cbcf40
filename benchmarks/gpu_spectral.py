"""GPU check of the spectral core: CUDA results equal CPU float64, and timings on the card.

For each layer size (C, n) with a 3x3 kernel: conv_singular_values and one exact
project_conv_ on CUDA float32 and float64, checked against the CPU float64 result, timed with
CUDA synchronisation (median of repeats). Prints a table; writes $OUT/gpu_spectral.json if OUT is set.

    python benchmarks/gpu_spectral.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procres.spectral.projection import project_conv_
from procres.spectral.spectra import conv_singular_values

SIZES = [(16, 32), (64, 8), (64, 32), (256, 8), (128, 16), (512, 4)]


def _time(fn, repeats=5):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main():
    if not torch.cuda.is_available():
        raise SystemExit("gpu_spectral.py needs a CUDA device")
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'C':>4} {'n':>3} | {'sv f32 ms':>9} {'sv f64 ms':>9} {'rel err f32':>11} {'rel err f64':>11} | {'proj ms':>8} {'proj err':>9}")
    for c, n in SIZES:
        torch.manual_seed(0)
        w64 = torch.randn(c, c, 3, 3, dtype=torch.float64)
        ref = conv_singular_values(w64, n)
        out = {}
        for dtype in (torch.float32, torch.float64):
            w = w64.to("cuda", dtype)
            sv = conv_singular_values(w, n)
            err = ((sv.double().cpu() - ref).abs().max() / ref.max()).item()
            out[str(dtype)] = (_time(lambda: conv_singular_values(w, n)) * 1e3, err)
        conv = torch.nn.Conv2d(c, c, 1, stride=2, bias=False).cuda()
        proj_ms = _time(lambda: project_conv_(conv, 2 * n)) * 1e3
        report = project_conv_(conv, 2 * n)
        row = dict(C=c, n=n, sv_f32_ms=out["torch.float32"][0], sv_f64_ms=out["torch.float64"][0],
                   err_f32=out["torch.float32"][1], err_f64=out["torch.float64"][1],
                   proj_1x1_stride2_ms=proj_ms, proj_max_rel_error=report.max_rel_error)
        rows.append(row)
        print(f"{c:>4} {n:>3} | {row['sv_f32_ms']:>9.2f} {row['sv_f64_ms']:>9.2f} {row['err_f32']:>11.2e} "
              f"{row['err_f64']:>11.2e} | {proj_ms:>8.2f} {report.max_rel_error:>9.1e}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_spectral.json").write_text(json.dumps(
            {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Benchmark: `procres inspect` on a ResNet-50-shaped model with its conv table against the previous
path, and `procres spectrum --model resnet20` against the previous spectrum path, in one run.

1. inspect: a torchvision-layout ResNet-50 (Bottleneck blocks 3-4-6-3, width 64, ``downsample``
   1x1 convs; tests/helpers/user_models.py, torchvision is not needed) on random inputs of
   ``--input-shape`` (default 3x64x64), batch 8, two SGD steps, as ``procres inspect`` runs it
   (``inspect_model`` + ``write_inspection``, default ``zeros="max"``); the seconds of tracing,
   spectra and recording, and the total.  Then the previous conv table on the same weights
   (reference): today's code with the new routes switched off (``FLOAT32_MIN_DIM`` and
   ``GRAM_ASPECT`` set to infinity: float64 Lanczos with full re-orthogonalisation, the SVD for
   every circular block), both zero-padding extremes (``zeros="auto"``), the circular symbol
   decomposed a second time for the Lanczos start, as before; the time ratio of the spectra
   phases and the largest differences of sigma_max (circular and zero padding).
2. spectrum: ``procres spectrum --model resnet20`` (the CLI, timed from the call), then the
   previous path on the same weights (reference): circular spectra by the same FFT code; zero
   padding by the dense impulse response and a full SVD when the *input* side was at most 4096,
   else Lanczos from a random start (tol 1e-5, at most 300 iterations, warnings ignored) for
   both extremes.  Per layer: both answers; then the time ratio, the largest relative difference
   of sigma_max (circular and zero padding) and of the zero-padding sigma_min where both are
   exact or converged, and the layers where either is only an upper bound.

    python benchmarks/inspect.py                 # ~4 min on 2 shared cores, most of it the old paths
    python benchmarks/inspect.py --input-shape 3 224 224 --skip-spectrum   # ~6 min, 4 of them the old path
    python benchmarks/inspect.py --skip-old      # new paths only
    python benchmarks/inspect.py --threads 2

The file shares its name with the standard library's `inspect`, which every script in this folder
would import instead of it: imported (not run), it hands over to the standard library's module.

Times are single runs (each of these takes seconds to minutes), wall and CPU seconds of this
process: with one thread (the default) the CPU seconds are what the wall time would be on an idle
core, which a shared machine does not give; the load average is printed with them.
"""

from __future__ import annotations

import os
import sys

if __name__ != "__main__":
    # A script in this folder puts the folder first on sys.path, so `import inspect` (torch's,
    # dataclasses', ...) finds this file: hand the import over to the standard library's module.
    import importlib.util
    import sysconfig

    _spec = importlib.util.spec_from_file_location(
        __name__, os.path.join(sysconfig.get_path("stdlib"), "inspect.py"))
    _stdlib = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _stdlib
    _spec.loader.exec_module(_stdlib)


def resnet50():
    """ResNet-50 as torchvision lays it out (Bottleneck 3-4-6-3, width 64, ``downsample``), from the
    tests' user-style models (torchvision is not needed)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "tests", "helpers"))
    from user_models import tiny_bottleneck_resnet

    return tiny_bottleneck_resnet(layers=(3, 4, 6, 3), width=64, num_classes=1000)


def bench_inspect(out_dir: str, shape, skip_old: bool) -> dict:
    import time

    import torch

    from procres.diagnostics.inspection import inspect_model
    from procres.reports.inspection import write_inspection
    from procres.training.data import make_batches

    torch.manual_seed(0)
    model = resnet50()
    batches, _ = make_batches("random", input_shape=tuple(shape), batch=8, count=2)
    start, cpu = time.perf_counter(), time.process_time()
    result = inspect_model(model, batches, steps=2)
    write_inspection(result, out_dir)
    total, total_cpu = time.perf_counter() - start, time.process_time() - cpu
    convs = result["convs"]
    methods = {}
    for r in convs:
        key = (r["zeros"] or {}).get("method", "-")
        methods[key] = methods.get(key, 0) + 1
    out = {"total": total, "total_cpu": total_cpu, **result["seconds"],
           **{f"{k}_cpu": v for k, v in result["cpu_seconds"].items()}, "units": len(result["units"]),
           "convs": convs, "methods": methods, "worst_error": max((r["zeros"] or {}).get("sigma_max_error", 0) or 0
                                                                  for r in convs)}
    if not skip_old:                                   # the weights the table measured, before the SGD steps
        torch.manual_seed(0)
        start, cpu = time.perf_counter(), time.process_time()
        out["previous"] = previous_conv_table(resnet50(), batches[0][0][:1])
        out.update(previous_s=time.perf_counter() - start, previous_cpu=time.process_time() - cpu)
    return out


def previous_conv_table(model, x) -> list[dict]:
    """The conv table as procres computed it before the sigma_max-only default (see the module
    docstring): every conv's circular spectrum and both zero-padding extremes."""
    import math

    from procres.diagnostics.convs import find_convs
    from procres.spectral import spectra, symbol

    saved = spectra.FLOAT32_MIN_DIM, symbol.GRAM_ASPECT
    spectra.FLOAT32_MIN_DIM = symbol.GRAM_ASPECT = math.inf
    try:
        rows = []
        for site in find_convs(model, x):
            conv, size = site.module, site.input_size
            w = conv.weight.detach().double()
            sv = spectra.conv_singular_values(w, size, stride=conv.stride, dilation=conv.dilation, groups=conv.groups,
                                              padding_mode="circular")
            rows.append({"name": site.name, "circular": spectra.spectrum_stats(sv),
                         "zeros": spectra.conv_extremes(conv, size)})
        return rows
    finally:
        spectra.FLOAT32_MIN_DIM, symbol.GRAM_ASPECT = saved


def compare_tables(new: list[dict], old: list[dict]) -> None:
    circ = max(abs(r["circular"]["sigma_max"] / o["circular"]["sigma_max"] - 1) for r, o in zip(new, old))
    circ_min = max(abs(r["circular"]["sigma_min"] / o["circular"]["sigma_min"] - 1) for r, o in zip(new, old))
    pairs = [(r["zeros"], o["zeros"]) for r, o in zip(new, old)]
    zeros = max(abs(z["sigma_max"] / oz["sigma_max"] - 1) for z, oz in pairs)
    bound = max(max(z["sigma_max_error"], oz["sigma_max_error"]) for z, oz in pairs)
    print(f"circular spectrum vs previous, {len(new)} convs: largest relative difference of sigma_max {circ:.1e}, "
          f"of sigma_min {circ_min:.1e}")
    print(f"zero-padding sigma_max vs previous: largest relative difference {zeros:.1e} (stated errors up to "
          f"{bound:.1e}); sigma_min: {sum(z['sigma_min'] is None for z, _ in pairs)} not measured now, previously "
          f"{sum(oz['sigma_min_is'] == 'upper bound' for _, oz in pairs)} of {len(pairs)} only upper bounds")


# ---------------------------------------------------------------- the previous spectrum path (reference)
def _old_lanczos(matvec, start, *, which, tol, max_iter, zero_tol=1e-10):
    """The previous spectral._lanczos: full re-orthogonalisation, residual relative to theta."""
    import torch

    basis, alphas, betas = [], [], []
    q = start / start.norm()
    theta = 0.0
    for j in range(max_iter):
        basis.append(q)
        w = matvec(q)
        alphas.append(float(torch.dot(w, q)))
        Q = torch.stack(basis)
        for _ in range(2):
            w = w - Q.T @ (Q @ w)
        beta = float(w.norm())
        if j < 16 or j % 4 == 3 or j == max_iter - 1 or beta == 0.0:
            T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
            if betas:
                off = torch.tensor(betas, dtype=torch.float64)
                T = T + torch.diag(off, 1) + torch.diag(off, -1)
            evals, evecs = torch.linalg.eigh(T)
            top = max(float(evals[-1]), 0.0)
            idx = len(alphas) - 1
            if which == "min":
                nonzero = (evals > zero_tol * top).nonzero()
                idx = int(nonzero[0]) if len(nonzero) else idx
            theta = float(evals[idx])
            if beta * float(evecs[-1, idx].abs()) <= tol * abs(theta) or beta <= 1e-13 * max(top, 1e-300):
                return theta, True
        betas.append(beta)
        q = w / beta
    return theta, False


def _old_zeros(conv, n: int) -> dict:
    import math

    import torch

    from procres.spectral.operator import conv_operator

    w = conv.weight.detach().double()
    op = conv_operator(w, n, stride=conv.stride, padding=conv.padding, padding_mode="zeros")
    side = op.c_in * n * n
    if side <= 4096:                           # dense impulse response of the input side, full SVD
        eye = torch.eye(side, dtype=torch.float64).reshape(side, op.c_in, n, n)
        sv = torch.linalg.svdvals(op.forward(eye).reshape(side, -1))
        return {"sigma_max": float(sv[0]), "sigma_min": float(sv[sv > 1e-6 * sv[0]][-1]), "method": "dense"}
    rows, cols = op.shape
    gen = torch.Generator().manual_seed(0)
    in_shape, out_shape = (1, op.c_in, n, n), (1, op.c_out, *op.output_size)
    fwd = lambda x: op.forward(x.reshape(in_shape)).flatten()  # noqa: E731
    adj = lambda y: op.adjoint(y.reshape(out_shape)).flatten()  # noqa: E731
    if rows <= cols:
        matvec, start, dim = (lambda y: fwd(adj(y))), fwd(torch.randn(cols, generator=gen, dtype=torch.float64)), rows
    else:
        matvec, start, dim = (lambda x: adj(fwd(x))), adj(torch.randn(rows, generator=gen, dtype=torch.float64)), cols
    out = {"method": "lanczos"}
    for which in ("max", "min"):
        theta, converged = _old_lanczos(matvec, start, which=which, tol=1e-5, max_iter=min(300, dim))
        out[f"sigma_{which}"] = math.sqrt(max(theta, 0.0))
        out[f"{which}_converged"] = converged
    return out


def old_spectrum(model, rows: list[dict]) -> list[dict]:
    from procres.spectral.spectra import conv_singular_values, spectrum_stats

    out = []
    for r in rows:
        conv, n = model.get_submodule(r["name"]), r["input_size"][0]
        w = conv.weight.detach().double()
        circ = spectrum_stats(conv_singular_values(w, n, stride=conv.stride))
        if conv.kernel_size == (1, 1) and conv.padding == (0, 0):
            zeros = {"sigma_max": circ["sigma_max"], "sigma_min": circ["sigma_min"], "method": "same"}
        else:
            zeros = _old_zeros(conv, n)
        out.append({"name": r["name"], "circular": circ, "zeros": zeros})
    return out


def bench_spectrum(skip_old: bool) -> dict:
    import io
    import json
    import time
    import warnings
    from contextlib import redirect_stdout

    import torch

    from procres.cli import main
    from procres.models.factory import load_model

    buf = io.StringIO()
    start, cpu = time.perf_counter(), time.process_time()
    with redirect_stdout(buf):
        main(["spectrum", "--model", "resnet20", "--json", "--threads", str(torch.get_num_threads())])
    rows = json.loads(buf.getvalue())
    result = {"new_s": time.perf_counter() - start, "new_cpu": time.process_time() - cpu, "rows": rows}
    if skip_old:
        return result
    torch.manual_seed(0)                       # the weights the CLI built
    model, _, _ = load_model("resnet20")
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        old = old_spectrum(model, rows)
    result.update(old_s=time.perf_counter() - start, old_cpu=time.process_time() - cpu, old=old)
    return result


def compare(rows: list[dict], old: list[dict]) -> None:
    print(f"{'layer':16s} {'zeros method new/old':>22s} {'sigma_max new':>14s} {'old':>14s} "
          f"{'sigma_min new':>14s} {'old':>14s}")
    rel_max, rel_min, bounds = [], [], []
    for r, o in zip(rows, old):
        z, oz = r["zeros"], o["zeros"]
        rel_max.append(abs(r["circular"]["sigma_max"] / o["circular"]["sigma_max"] - 1))
        rel_max.append(abs(z["sigma_max"] / oz["sigma_max"] - 1))
        new_bound = z.get("sigma_min_is") == "upper bound"
        old_bound = oz.get("min_converged") is False
        if new_bound or old_bound:
            bounds.append(f"{r['name']} (new {'<' if new_bound else ''}{z['sigma_min']:.3g}, "
                          f"old {'<' if old_bound else ''}{oz['sigma_min']:.3g})")
        else:
            rel_min.append(abs(z["sigma_min"] / oz["sigma_min"] - 1))
        mark = "<" if new_bound else " "
        omark = "<" if old_bound else " "
        print(f"{r['name']:16s} {z['method'] + '/' + oz['method']:>22s} {z['sigma_max']:14.8g} {oz['sigma_max']:14.8g} "
              f"{mark}{z['sigma_min']:13.6g} {omark}{oz['sigma_min']:13.6g}")
    print(f"largest relative difference, sigma_max (circular and zeros, {len(rel_max)} values): {max(rel_max):.2e}")
    print(f"largest relative difference, zero-padding sigma_min where both are values ({len(rel_min)} layers): "
          f"{max(rel_min):.2e}")
    print(f"zero-padding sigma_min only an upper bound ('<'), new or old ({len(bounds)} layers): " + "; ".join(bounds))


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"), default=(3, 64, 64),
                   help="inspect's input shape without the batch (default 3 64 64)")
    p.add_argument("--skip-old", action="store_true", help="do not run the previous paths")
    p.add_argument("--skip-spectrum", action="store_true", help="do not run part 2 (procres spectrum --model resnet20)")
    args = p.parse_args(argv)                       # before torch: --help and bad flags answer at once
    run(args)


def run(args) -> None:
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    shape = "x".join(map(str, args.input_shape))
    with tempfile.TemporaryDirectory() as tmp:
        ins = bench_inspect(tmp, args.input_shape, args.skip_old)
    print(f"\ninspect ResNet-50 (torchvision layout) {shape}, batch 8, 2 SGD steps: {ins['total']:.1f} s wall, "
          f"{ins['total_cpu']:.1f} s CPU (trace {ins['trace']:.1f} / {ins['trace_cpu']:.1f} s, spectra "
          f"{ins['spectra']:.1f} / {ins['spectra_cpu']:.1f} s, recording {ins['record']:.1f} / {ins['record_cpu']:.1f} s, "
          f"figures and json {ins['total'] - ins['trace'] - ins['spectra'] - ins['record']:.1f} s wall); "
          f"{ins['units']} units, {len(ins['convs'])} convs, zero-padding routes {ins['methods']}, "
          f"largest stated sigma_max error {ins['worst_error']:.1e}; load average {os.getloadavg()[0]:.1f}")
    if not args.skip_old:
        print(f"previous conv table on the same weights: {ins['previous_s']:.1f} s wall, {ins['previous_cpu']:.1f} s "
              f"CPU; ratio previous/new spectra phase {ins['previous_s'] / ins['spectra']:.1f}x wall, "
              f"{ins['previous_cpu'] / ins['spectra_cpu']:.1f}x CPU")
        compare_tables(ins["convs"], ins["previous"])
    if not args.skip_spectrum:
        spec = bench_spectrum(args.skip_old)
        print(f"\nprocres spectrum --model resnet20: {spec['new_s']:.1f} s wall, {spec['new_cpu']:.1f} s CPU")
        if not args.skip_old:
            print(f"previous path on the same weights: {spec['old_s']:.1f} s wall, {spec['old_cpu']:.1f} s CPU; "
                  f"ratio old/new {spec['old_s'] / spec['new_s']:.1f}x wall, "
                  f"{spec['old_cpu'] / spec['new_cpu']:.1f}x CPU\n")
            compare(spec["rows"], spec["old"])
    print(f"\nload average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

"""Turn one run of benchmarks/gpu_epoch.py (docs/gpu/latest.json) into what gets committed with it.

    python benchmarks/gpu_report.py docs/gpu/latest.json                   # markdown for docs/benchmarks.md
    python benchmarks/gpu_report.py docs/gpu/latest.json --epoch-seconds   # entries for procres/reports/reproduce.py

The markdown is the "Epoch time on a GPU" result block: one table row per net and variant, the
speed-ups, the numerics check, procresnet1003 and the full-epoch wall times, all from the same
JSON, so the table and the file committed beside it cannot disagree. ``--epoch-seconds`` prints
``EPOCH_SECONDS_SOURCE`` and the ``EPOCH_SECONDS`` entries of the measured nets (a real epoch:
351 steps + evaluation of 15k images; ``measured: false`` ones are 351 x step time + eval time).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

VARIANT_TEXT = {
    "authors": "authors' (DataLoader, fp32, NCHW)",
    "default": "**default** (`procres train`: step graph, bf16, recorder every 10)",
    "eager": "eager (`--no-cuda-graphs`)",
    "norec": "step graph, no recorder (`--record-every 0`)",
    "compile": "`--compile --no-cuda-graphs`",
    "full_epoch": "default, one full epoch",
}


def _num(value, digits=1, suffix=""):
    return "" if value is None else f"{value:.{digits}f}{suffix}"


def table(report: dict) -> str:
    short = report["commit"][:12]
    lines = [f"One {report['gpu']}, torch {report['torch']}, commit `{short}`, {report['date']}"
             + (" (SMOKE RUN: tiny nets on the CPU, not a measurement)" if report.get("smoke") else "") + ":", "",
             "| net | pipeline | ms / step | epoch [s] | vs authors' | capture [s] | peak memory [GiB] |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for net, rows in report["nets"].items():
        authors = rows.get("authors", {}).get("epoch_s")
        for variant, row in rows.items():
            if variant == "full_epoch":
                continue
            ratio = f"{authors / row['epoch_s']:.2f}x" if authors and variant != "authors" else ""
            fell_back = " (fell back to eager)" if "capture_s" in row and not row.get("cuda_graphs") else ""
            capture = _num(row.get("capture_s"))
            if "compile_s" in row:
                capture += f" + compile {row['compile_s']:.0f}"
            lines.append(f"| {net} | {VARIANT_TEXT.get(variant, variant)}{fell_back} | {row['step_ms']:.1f} | "
                         f"{row['epoch_s']:.1f} | {ratio} | {capture} | {_num(row.get('peak_memory_gib'), 2)} |")
    lines += ["", f"Epoch = {report['epoch_steps']} steps of batch {report['batch_size']}, training "
              "only. **Speed-up** (authors' epoch time / the default pipeline's): "
              + (", ".join(f"{net} **{x:.2f}x**" for net, x in report["speedup"].items()) or "none measured") + "."]
    numerics = report.get("numerics")
    if numerics:
        lines.append(f"Numerics ({numerics['net']}, {numerics['steps']} steps, one seed): the {numerics['window']}-step "
                     f"mean training losses of the default pipeline and of eager training differ by at most "
                     f"{numerics['max_rel_diff']:.2e} (relative; tolerance {numerics['tolerance']}): "
                     f"{'**within**' if numerics['ok'] else '**OUTSIDE**'} it"
                     + ("" if numerics.get("cuda_graphs") else " (the default run trained eagerly: no step graph)")
                     + ".")
    seconds = report.get("epoch_seconds", {})
    if seconds:
        lines.append(f"One epoch with evaluation ({report['train_steps_per_epoch']} steps + the validation and test "
                     "images, what `procres reproduce` quotes): "
                     + ", ".join(f"{net} {s['seconds']:.1f} s{'' if s['measured'] else ' (from its step time)'}"
                                 for net, s in seconds.items()) + ".")
    if report.get("errors"):
        lines.append("Failed: " + "; ".join(report["errors"]) + ".")
    if report.get("skipped"):
        lines.append("Not reached within the time budget: " + ", ".join(report["skipped"]) + ".")
    return "\n".join(lines) + "\n"


def epoch_seconds(report: dict) -> str:
    seconds = report.get("epoch_seconds", {})
    source = (f"measured on one {report['gpu']} (torch {report['torch']}, the default pipeline: step graph, bf16, "
              f"batch 128; benchmarks/gpu_epoch.py at {report['commit'][:12]})")
    entries = ", ".join(f'"{net}": {s["seconds"]}' for net, s in seconds.items())
    return f"EPOCH_SECONDS_SOURCE = {json.dumps(source)}\n# measured entries: {{{entries}}}\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="the gpu_epoch.py result (docs/gpu/latest.json)")
    parser.add_argument("--epoch-seconds", action="store_true", help="print reproduce.py's EPOCH_SECONDS entries")
    args = parser.parse_args(argv)
    report = json.loads(args.json.read_text())
    sys.stdout.write(epoch_seconds(report) if args.epoch_seconds else table(report))


if __name__ == "__main__":
    main()

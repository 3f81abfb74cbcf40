"""Run folders, depth studies and spectra files in the layout procres writes, with made-up but
plausible numbers, for the figure, report and verdict tests."""

import json
import math

import numpy as np

from procres.reports.runs import model_family


def unit_kinds(family, n=3):
    if family == "procrustes":
        return (["transition"] + ["identity"] * n) * 3
    if family == "plain":
        return ["plain"] * (3 * n)
    return (["projection"] + ["identity"] * (n - 1)) * 3


def write_run(folder, model, *, epochs=4, blocks=None, seed=0):
    """A run folder in the train.py layout with made-up but plausible numbers."""
    rng = np.random.default_rng(seed)
    family = model_family(model)
    kinds = blocks or unit_kinds(family)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": model, "epochs": epochs, "seed": seed}))
    lines = []
    for e in range(epochs + 1):  # "step": 10 training steps per epoch
        ratio = []
        for k in kinds:
            spread = {"identity": 0.05, "transition": 0.1, "projection": 0.6, "plain": 0.5}[k]
            ratio.append(float(math.exp(rng.normal(0, spread) + (0.3 * e / epochs if k == "projection" else 0))))
        lines.append(json.dumps({
            "epoch": e, "step": 10 * e, "lr": 0.1,
            "train_loss": None if e == 0 else 2.0 / (e + 1), "train_acc": None if e == 0 else 1 - 0.5 / (e + 1),
            "val_loss": 2.2 / (e + 1), "val_acc": 1 - 0.6 / (e + 1),
            "test_loss": 2.3 / (e + 1), "test_acc": 1 - 0.65 / (e + 1),
            "epoch_time": 1.0, "images_per_sec": 100.0,
            "norms": {"ratio": ratio, "grad_in": ratio, "grad_out": [1.0] * len(ratio)},
            "block_kinds": kinds,
        }))
    (folder / "history.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def write_study(folder, *, depths=(14, 26, 50), overflow_at=50):
    """A depth_study.json in the layout of procres.diagnostics.study.depth_study: residual, Procrustes and
    plain nets whose deviation shrinks / grows with depth; the deepest plain net's backward overflows
    at unit 5 (its first 5 units have no ratio, and it is not trained)."""
    rng = np.random.default_rng(1)
    results, kinds, model_depths, flows = {}, {}, {}, {}
    for fam, scale in (("residual", 0.4), ("procrustes", 0.3), ("plain", 0.3)):
        fam_kinds = [unit_kinds(fam, n=d // 6) for d in depths]
        kinds[fam] = fam_kinds
        model_depths[fam] = [d + (2 if fam == "procrustes" else 0) for d in depths]
        results[fam], flows[fam] = {"init": [], "trained": []}, []
        for d, k in zip(depths, fam_kinds):
            sigma = scale * (d / 8 if fam == "plain" else 8 / d)
            ratios = np.exp(rng.normal(0, sigma, size=len(k))).tolist()
            flow = None
            if fam == "plain" and d == overflow_at:
                ratios[:5] = [float("nan")] * 5
                flow = {"unit": 5, "units": len(k), "phase": "init", "step": 0}
            results[fam]["init"].append(ratios)
            results[fam]["trained"].append(None if flow else [x * 1.01 for x in ratios])
            flows[fam].append(flow)
    study = {"depths": list(depths), "steps": 20, "results": results, "block_kinds": kinds,
             "model_depths": model_depths, "overflow": flows,
             "models": {"residual": "preresnet", "procrustes": "procresnet", "plain": "plainpre"}}
    (folder / "depth_study.json").write_text(json.dumps(study))
    return study


def spectrum_entry(values, target):
    v = sorted(values, reverse=True)
    return {"sigma_max": v[0], "sigma_min": v[-1], "cond": v[0] / v[-1], "nonzero": len(v), "count": len(v),
            "max_rel_error": max(abs(x / target - 1) for x in v)}


def write_extras(folder):
    write_study(folder)
    rng = np.random.default_rng(1)
    before = np.sort(rng.uniform(0.2, 3.0, 64))[::-1].tolist()
    layers = []
    for name, size, stride, target, b, a, bz, az in (
            ("trans_conv1", 16, 2, math.sqrt(2), before, [math.sqrt(2)] * 64, before, [math.sqrt(2)] * 64),
            ("conv1", 16, 1, 8.0, rng.uniform(0.1, 12, 256).tolist(), rng.uniform(7, 9, 256).tolist(),
             rng.uniform(0.1, 11, 256).tolist(), rng.uniform(6, 9, 256).tolist())):
        layers.append({"name": name, "input_size": size, "stride": stride, "target": target,
                       "before": {"circular": b, "zeros": bz, "stats": {"circular": spectrum_entry(b, target),
                                                                        "zeros": spectrum_entry(bz, target)}},
                       "after": {"circular": a, "zeros": az, "stats": {"circular": spectrum_entry(a, target),
                                                                       "zeros": spectrum_entry(az, target)}}})
    (folder / "spectra.json").write_text(json.dumps({"layers": layers}))


def demo_like_folder(tmp_path):
    root = tmp_path / "demo"
    for model in ("preresnet38", "procresnet40", "plainpre38"):
        write_run(root / "runs" / model, model)
    write_extras(root)
    return root

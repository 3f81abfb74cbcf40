"""procres.diagnostics.convs (every conv of a model at the size it sees), `procres spectrum`, and the Procrustes
projection of convs named on any model.

References: the input shapes seen by forward hooks the test installs itself, the dense operator
built in the test by convolving basis images with F.conv2d (float64), and numpy's SVD.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from procres.cli import main
from procres.diagnostics.convs import conv_spectra, find_convs, select_convs, spectrum_table
from procres.constraints.hooks import attach_procrustes
from procres.spectral.spectra import norm_preserving_target
from dense_operators import impulse_operator
from user_models import (CountedConv2d, DilatedNet, SamePadConv2d, StandardisedConv2d, TinyConvNeXt,
                         tiny_bottleneck_resnet, tiny_resnet)

pytestmark = pytest.mark.usefixtures("single_threaded")


def shapes_seen(model, x):
    """The reference: the (h, w) of every Conv2d's input, recorded by the test's own hooks."""
    seen = {}
    hooks = [m.register_forward_hook(lambda m, a, o: seen.setdefault(m, tuple(a[0].shape[-2:])) and None)
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("factory, size", [(tiny_resnet, 32), (tiny_bottleneck_resnet, 24),
                                           (TinyConvNeXt, 32), (DilatedNet, 12)])
def test_conv_input_sizes_equal_the_shapes_seen_in_a_forward(factory, size):
    model = factory()
    x = torch.randn(2, 3, size, size + 4)                      # non-square on purpose
    sites = find_convs(model, x)
    seen = shapes_seen(model, x)
    assert {s.module for s in sites} == set(seen)
    for s in sites:
        assert s.input_size == seen[s.module]
        assert model.get_submodule(s.name) is s.module


def test_conv_spectra_rows_equal_the_dense_operator():
    torch.manual_seed(0)
    model = DilatedNet(channels=3).double()
    rows = conv_spectra(model, torch.randn(1, 3, 6, 6, dtype=torch.float64))
    assert [r["name"] for r in rows] == ["stem", "block.conv1", "block.conv2"]
    for r in rows:
        conv = model.get_submodule(r["name"])
        assert r["dilation"] == list(conv.dilation) and r["groups"] == conv.groups
        assert r["target"] == pytest.approx(norm_preserving_target(conv))
        for part in ("circular", "zeros"):
            sv = np.linalg.svd(impulse_operator(conv, r["input_size"], part).numpy(), compute_uv=False)
            nonzero = sv[sv > 1e-6 * sv[0]]
            assert r[part]["sigma_max"] == pytest.approx(sv[0], rel=1e-8)
            assert r[part]["sigma_min"] == pytest.approx(nonzero[-1], rel=1e-7)
            err = np.abs(np.array([nonzero[0], nonzero[-1]]) / r["target"] - 1).max()
            assert r[part]["max_rel_error"] == pytest.approx(err, rel=1e-7)
        assert r["zeros"]["exact"] and r["zeros"]["method"] in ("dense", "patch")


def test_sigma_max_only_rows_equal_the_dense_operator_and_print_no_sigma_min():
    torch.manual_seed(0)
    model = DilatedNet(channels=3).double()
    rows = conv_spectra(model, torch.randn(1, 3, 6, 6, dtype=torch.float64), zeros="max")
    for r in rows:
        conv = model.get_submodule(r["name"])
        sv = np.linalg.svd(impulse_operator(conv, r["input_size"], "zeros").numpy(), compute_uv=False)
        z = r["zeros"]
        assert z["sigma_max"] == pytest.approx(sv[0], rel=max(2 * z["sigma_max_error"], 1e-12))
        if z["method"] == "patch":                            # free with sigma_max
            assert z["sigma_min"] == pytest.approx(sv[sv > 1e-6 * sv[0]][-1], rel=1e-7)
        else:
            assert z["method"] == "lanczos" and z["sigma_min"] is None and z["cond"] is None
            assert z["max_rel_error"] == pytest.approx(abs(sv[0] / r["target"] - 1), abs=1e-6)
    assert any(r["zeros"]["sigma_min"] is None for r in rows)
    line = spectrum_table(rows).splitlines()[2]               # block.conv1: padded max printed, min "-"
    assert line.split()[-2] == f"{rows[1]['zeros']['sigma_max']:.4g}" and line.split()[-1] == "-"


def test_reflect_and_replicate_layers_are_measured_with_their_own_padding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"),
                          nn.Conv2d(3, 3, 3, padding=2, dilation=2, padding_mode="replicate"),
                          nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="reflect")).double()
    rows = conv_spectra(model, torch.randn(1, 2, 6, 6, dtype=torch.float64))
    for conv, r in zip(model, rows):
        assert r["padding_mode"] == r["zeros"]["padding_mode"] == conv.padding_mode
        sv = np.linalg.svd(impulse_operator(conv, r["input_size"], conv.padding_mode).numpy(), compute_uv=False)
        assert r["zeros"]["sigma_max"] == pytest.approx(sv[0], rel=1e-8)
        assert r["zeros"]["sigma_min"] == pytest.approx(sv[sv > 1e-6 * sv[0]][-1], rel=1e-7)


def test_convs_that_compute_another_operator_are_not_measured_nor_projected():
    torch.manual_seed(0)
    model = nn.Sequential(StandardisedConv2d(3, 4, 3, padding=1), SamePadConv2d(4, 4, 3, stride=2),
                          CountedConv2d(4, 6, 1, stride=2)).double()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    rows = conv_spectra(model, x)
    for r in rows[:2]:
        assert r["circular"] is None and r["zeros"] is None and "computes another operator" in r["note"]
    counted = rows[2]                                         # its own forward, nn.Conv2d's operator
    sv = np.linalg.svd(impulse_operator(model[2], (4, 4), "zeros").numpy(), compute_uv=False)
    assert "note" not in counted and counted["zeros"]["sigma_max"] == pytest.approx(sv[0], rel=1e-10)
    assert "StandardisedConv2d.forward computes another operator" in spectrum_table(rows)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"cannot project 0 \(StandardisedConv2d\), 1 \(SamePadConv2d\)"):
        attach_procrustes(model, opt, convs=["0", "1", "2"], example_input=x)
    assert attach_procrustes(model, opt, convs="downsample", example_input=x).names == ["2"]


def test_grouped_depthwise_rows_of_a_convnext():
    torch.manual_seed(0)
    model = TinyConvNeXt(dims=(3, 4), depths=(1, 1)).double()
    rows = {r["name"]: r for r in conv_spectra(model, torch.randn(1, 3, 16, 16, dtype=torch.float64))}
    dw = rows["stages.0.1.dwconv"]
    assert dw["groups"] == 3 and dw["shape"] == [3, 1, 7, 7] and dw["input_size"] == [4, 4]
    assert dw["target"] == 1.0                                # each group: a 1 x 1 block per frequency
    conv = model.get_submodule("stages.0.1.dwconv")
    sv = np.linalg.svd(impulse_operator(conv, (4, 4), "zeros").numpy(), compute_uv=False)
    assert dw["zeros"]["sigma_max"] == pytest.approx(sv[0], rel=1e-8)
    assert dw["zeros"]["sigma_min"] == pytest.approx(sv[-1], rel=1e-7)
    stem = rows["stem.0"]                                     # 4x4 stride-4 patchify: one SVD, both paddings
    assert stem["zeros"]["method"] == "patch" and stem["circular"]["sigma_max"] == pytest.approx(
        stem["zeros"]["sigma_max"], rel=1e-12)


def test_select_convs_by_name_module_and_downsample():
    model = tiny_resnet()
    sites = find_convs(model, torch.randn(1, 3, 32, 32))
    down = select_convs(sites, "downsample")
    assert [s.name for s in down] == ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    assert [s.name for s in select_convs(sites, ["layer1.*.conv1", model.conv1])] == [
        "layer1.0.conv1", "layer1.1.conv1", "conv1"]
    with pytest.raises(ValueError, match=r"'layer9.conv'.*conv1, layer1.0.conv1"):
        select_convs(sites, "layer9.conv")


def test_attach_procrustes_projects_named_convs_of_any_model_at_their_input_size():
    torch.manual_seed(0)
    model = tiny_resnet().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hook = attach_procrustes(model, opt, convs="downsample", example_input=x, p=1.0)
    assert hook.names == ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    sizes = {s.module: s.input_size for s in find_convs(model, x)}
    assert [size for _, size, *_ in hook.layers] == [sizes[c] for c, *_ in hook.layers]
    model.train()
    F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    opt.step()
    for conv, size, *_ in hook.layers:                         # 1x1 stride 2: exactly on target
        sv = np.linalg.svd(impulse_operator(conv, size, "zeros").numpy(), compute_uv=False)
        nonzero = sv[sv > 1e-8 * sv[0]]
        np.testing.assert_allclose(nonzero, np.sqrt(2), rtol=1e-10)
    with pytest.raises(ValueError, match="example_input"):
        attach_procrustes(model, opt, convs="downsample")
    with pytest.raises(ValueError, match="no transitions.*convs='downsample'"):
        attach_procrustes(model, opt)


# ---------------------------------------------------------------- `procres spectrum`
def spectrum_json(capsys, *argv):
    assert main(["spectrum", *argv, "--json", "--threads", "1"]) == 0
    return json.loads(capsys.readouterr().out)


def test_spectrum_cli_equals_the_dense_operator(capsys):
    from procres.models.resnet import resnet

    rows = spectrum_json(capsys, "--model", "resnet8", "--input-size", "8", "--in-channels", "1", "--zeros", "dense")
    torch.manual_seed(0)                                      # the CLI builds with seed 0
    model = resnet(8, num_classes=10, in_channels=1, image_size=8)
    convs = dict(model.named_modules())
    assert [r["name"] for r in rows] == [n for n, m in convs.items() if isinstance(m, nn.Conv2d)]
    for row in rows:
        conv = convs[row["name"]]
        for part in ("circular", "zeros"):
            sv = np.linalg.svd(impulse_operator(conv, row["input_size"], part).numpy(), compute_uv=False)
            nonzero = sv[sv > 1e-6 * sv[0]]
            assert row[part]["sigma_max"] == pytest.approx(sv[0], rel=1e-8)
            assert row[part]["sigma_min"] == pytest.approx(nonzero[-1], rel=1e-7)
        assert row["target"] == pytest.approx(norm_preserving_target(conv))


def test_spectrum_cli_reads_checkpoints(tmp_path, capsys):
    from procres.models.registry import create_model
    from procres.spectral.projection import project_conv_

    model = create_model("procresnet13", num_classes=10, in_channels=1, image_size=16)
    for conv, size in model.transitions():
        project_conv_(conv, size)
    torch.save({"model": model.state_dict(), "config": {"model": "procresnet13", "dataset": "digits"}},
               tmp_path / "model.pt")
    torch.save(model.state_dict(), tmp_path / "plain_sd.pt")
    names = [n for n, m in model.named_modules() if any(m is c for c, _ in model.transitions())][1:]
    rows = spectrum_json(capsys, "--checkpoint", str(tmp_path / "model.pt"), "--layers", *names, "--zeros", "off")
    assert len(rows) == 2 and [r["input_size"] for r in rows] == [[16, 16], [8, 8]]
    for r in rows:  # projected 1x1 stride-2 transitions: every non-zero value is sqrt(2)
        assert r["circular"]["max_rel_error"] < 1e-5 and r["target"] == pytest.approx(2 ** 0.5)
    rows2 = spectrum_json(capsys, "--checkpoint", str(tmp_path / "plain_sd.pt"), "--model", "procresnet13",
                          "--input-size", "16", "--in-channels", "1", "--layers", *names, "--zeros", "off")
    assert rows2 == rows
    assert main(["spectrum", "--checkpoint", str(tmp_path / "missing.pt")]) == 1
    assert main(["spectrum", "--checkpoint", str(tmp_path / "plain_sd.pt"), "--model", "resnet8"]) == 1


def test_spectrum_cli_reads_a_training_checkpoint_and_rejects_a_corrupt_file(tmp_path, capsys):
    from procres.training.config import TrainConfig
    from procres.models.registry import create_model

    model = create_model("procresnet13", num_classes=10, in_channels=1, image_size=16)
    config = TrainConfig(model="procresnet13", dataset="digits").to_json()
    torch.save({"model": model.state_dict(), "config": config, "epoch": 1}, tmp_path / "checkpoint.pt")
    rows = spectrum_json(capsys, "--checkpoint", str(tmp_path / "checkpoint.pt"), "--zeros", "off")
    assert rows and rows[0]["input_size"] == [16, 16] and rows[0]["shape"][1] == 1
    (tmp_path / "broken.pt").write_bytes((tmp_path / "checkpoint.pt").read_bytes()[:3000])
    assert main(["spectrum", "--checkpoint", str(tmp_path / "broken.pt"), "--model", "procresnet13"]) == 1
    assert "broken.pt" in capsys.readouterr().err


def test_spectrum_cli_unknown_layer_name_is_an_error(capsys):
    assert main(["spectrum", "--model", "resnet8", "--layers", "stem.0", "no.such.conv", "--zeros", "off"]) == 1
    err = capsys.readouterr().err
    assert "'no.such.conv'" in err and "stem.0" in err and err.count("\n") == 1


def test_spectrum_cli_measures_a_run_at_its_own_image_size_and_names_a_bad_config(tmp_path, capsys):
    from procres.training.config import TrainConfig
    from procres.models.registry import create_model

    model = create_model("procresnet13", num_classes=10, in_channels=1, image_size=8)
    torch.save(model.state_dict(), tmp_path / "model.pt")  # weights only: the folder's config.json says the rest
    (tmp_path / "config.json").write_text(TrainConfig(model="procresnet13", dataset="digits", image_size=8).to_json())
    rows = spectrum_json(capsys, "--checkpoint", str(tmp_path / "model.pt"), "--zeros", "off")
    assert rows[0]["input_size"] == [8, 8]  # the demo's 8x8 digits, not the data set's 16x16
    (tmp_path / "config.json").write_text("{not json")
    assert main(["spectrum", "--checkpoint", str(tmp_path / "model.pt")]) == 1
    assert "config.json: not valid JSON" in capsys.readouterr().err


def test_a_circular_layer_that_is_no_torus_conv_gets_its_own_operators_extremes():
    """padding=2 on a 3x3 kernel: the table's circular part is the kernel's torus conv, its second
    part the layer's own operator (torch's, rows of the torus repeated), measured on basis images."""
    from procres.diagnostics.convs import layer_spectrum

    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=2, padding_mode="circular", bias=False).double()
    eye = torch.eye(2 * 36, dtype=torch.float64).reshape(-1, 2, 6, 6)
    with torch.no_grad():
        dense = conv(eye).reshape(eye.shape[0], -1).T
    row = layer_spectrum(conv, 6)
    assert row["zeros"]["sigma_max"] == pytest.approx(float(torch.linalg.matrix_norm(dense, 2)), rel=1e-9)
    assert layer_spectrum(nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), 6)["zeros"] is None

"""`procres inspect` and procres.diagnostics.inspection: any model by registered name or import path.

References: r_l from retain_grad on x_l / x_{l+1} (float64), the conv table against
procres.diagnostics.convs on the same weights, and the files the command says it wrote.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from procres.cli import main
from procres.diagnostics.inspection import inspect_model
from user_models import HFStyleEncoder, tiny_resnet

pytestmark = pytest.mark.usefixtures("single_threaded")


def test_inspect_an_import_path_factory(tmp_path, capsys):
    out = tmp_path / "vit"
    argv = ["inspect", "user_models:tiny_vit", "--kwargs", '{"dim": 8, "depth": 1}', "--input-shape", "3", "16", "16",
            "--batch", "4", "--steps", "2", "--out", str(out), "--threads", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "blocks.0:add0" in printed and "blocks.0:add1" in printed and "patch" in printed
    result = json.loads((out / "inspect.json").read_text())
    assert [u["name"] for u in result["units"]] == ["blocks.0:add0", "blocks.0:add1"]
    assert all(u["kind"] == "identity" and u["ratio_init"] > 0 and u["ratio_trained"] > 0 for u in result["units"])
    assert [c["name"] for c in result["convs"]] == ["patch"] and result["convs"][0]["input_size"] == [16, 16]
    assert result["spec"] == {"model": "user_models:tiny_vit", "kwargs": {"dim": 8, "depth": 1}, "data": "random"}
    for name in ("ratio_per_unit", "spectra"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 5000


def test_inspect_a_registered_name_on_digits(tmp_path, capsys):
    assert main(["inspect", "resnet8", "--data", "digits", "--steps", "1", "--zeros", "off", "--json",
                 "--out", str(tmp_path), "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["input_shape"] == [1, 16, 16] and result["spec"]["kwargs"]["in_channels"] == 1
    assert [(u["name"], u["kind"]) for u in result["units"]] == [
        ("blocks.0", "identity"), ("blocks.1", "projection"), ("blocks.2", "projection")]
    assert all(c["zeros"] is None and c["circular"]["sigma_max"] > 0 for c in result["convs"])
    assert json.loads((tmp_path / "inspect.json").read_text())["units"] == result["units"]


def test_inspect_model_ratios_equal_retain_grad_before_training():
    torch.manual_seed(0)
    model = tiny_resnet().double()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=gen), torch.tensor([0, 4, 9]))
               for _ in range(2)]
    reference = []
    for x, y in batches:                                       # the recorder's mean over the two batches
        pairs = []

        def keep(module, args, out):
            for t in (args[0], out):
                t.retain_grad()
            pairs.append((args[0], out))

        hooks = [model.get_submodule(n).register_forward_hook(keep)
                 for n in ("layer1.0", "layer1.1", "layer2.0", "layer3.0", "layer4.0")]
        model.train()
        F.cross_entropy(model(x.requires_grad_(True)), y).backward()
        for h in hooks:
            h.remove()
        reference.append([float(a.grad.norm() / b.grad.norm()) for a, b in pairs])
        model.zero_grad()
        x.requires_grad_(False)
    result = inspect_model(model, batches, steps=0, zeros="off")
    init = [u["ratio_init"] for u in result["units"]]
    expected = [(a + b) / 2 for a, b in zip(*reference)]
    assert init == pytest.approx(expected, rel=1e-9)
    assert [u["ratio_trained"] for u in result["units"]] == pytest.approx(init, rel=1e-9)   # no step taken


def test_inspect_a_hugging_face_style_encoder_by_layer_names():
    # tuple-returning layers, a dict output after a final LayerNorm: r_l against retain_grad with the
    # documented loss, sum(out * g) / N for a standard normal g drawn from Generator(seed)
    torch.manual_seed(0)
    model = HFStyleEncoder().double()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=gen), None) for _ in range(2)]
    directions = torch.Generator().manual_seed(0)
    reference = []
    for x, _ in batches:
        pairs = []
        hooks = [layer.register_forward_hook(lambda m, args, out: pairs.append((args[0], out[0])))
                 for layer in model.layer]
        out = model(x)["last_hidden_state"]
        for t in (t for pair in pairs for t in pair):
            t.retain_grad()
        g = torch.randn(out.shape, generator=directions, dtype=torch.float64)
        ((out * g).sum() / out.shape[0]).backward()
        for h in hooks:
            h.remove()
        reference.append([float(a.grad.norm() / b.grad.norm()) for a, b in pairs])
        model.zero_grad()
    result = inspect_model(model, batches, steps=1, pattern="layer.*", zeros="off")
    assert [u["name"] for u in result["units"]] == ["layer.0", "layer.1"]
    expected = [(a + b) / 2 for a, b in zip(*reference)]
    assert [u["ratio_init"] for u in result["units"]] == pytest.approx(expected, rel=1e-9)
    assert all(u["ratio_trained"] > 0 for u in result["units"]) and all(map(math.isfinite, result["losses"]))


def test_inspect_json_is_standard_json_when_no_gradient_reaches_the_units(tmp_path, capsys):
    def refuse(constant):
        raise ValueError(f"not standard JSON: {constant}")

    assert main(["inspect", "user_models:zero_head_resnet", "--json", "--steps", "1", "--zeros", "off",
                 "--input-shape", "3", "16", "16", "--out", str(tmp_path), "--threads", "1"]) == 0
    for text in (capsys.readouterr().out, (tmp_path / "inspect.json").read_text()):
        result = json.loads(text, parse_constant=refuse)
        assert all(u["ratio_init"] is None for u in result["units"])           # 0 / 0 at a zero head
        assert all(u["ratio_trained"] > 0 for u in result["units"])
    assert (tmp_path / "figures" / "ratio_per_unit.png").stat().st_size > 5000
    assert main(["inspect", "user_models:zero_head_resnet", "--steps", "1", "--zeros", "off", "--input-shape",
                 "3", "16", "16", "--out", str(tmp_path), "--threads", "1"]) == 0
    assert "no gradient reached the unit" in capsys.readouterr().out


def test_tables_print_whole_module_names():
    from procres.diagnostics.convs import conv_spectra, spectrum_table
    from procres.diagnostics.inspection import units_table

    name = "model.encoder.stages.0.layers.0.layer.1.convolution"        # a Hugging Face depth
    unit = {"name": name, "kind": "named", "skip": "", "ratio_init": 1.0, "ratio_trained": 1.5}
    assert name in units_table({"steps": 1, "units": [unit]}).splitlines()[1]
    row = {**conv_spectra(torch.nn.Conv2d(2, 2, 3), torch.randn(1, 2, 6, 6), zeros="off")[0], "name": name}
    assert spectrum_table([row]).splitlines()[1].startswith(name + " ")


@pytest.mark.parametrize("model, message", [
    ("bad model", "MODEL must be a registered name"),
    ("user_models:", "not an import path"),
    ("nosuch_module_xyz:f", "cannot import module 'nosuch_module_xyz'"),
    ("user_models:nothing_here", "has no attribute 'nothing_here'"),
    ("user_models:failing_factory", "raised RuntimeError: weights file not found"),
    ("user_models:DataDependent", "torch.fx cannot trace DataDependent"),
    ("user_models:not_a_model", "returned a dict, not an nn.Module"),
    ("user_models:F", "names a module, not a callable factory"),
    ("resnt20", "unknown model 'resnt20'; did you mean resnet20"),
])
def test_bad_model_strings_are_one_sentence(model, message, capsys, tmp_path):
    assert main(["inspect", model, "--out", str(tmp_path), "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("procres inspect: error: ") and message in err and err.count("\n") == 1


def test_inspect_argument_errors(capsys, tmp_path):
    assert main(["inspect", "resnet8", "--kwargs", "[1, 2]", "--out", str(tmp_path)]) == 1
    assert "--kwargs must be a JSON object" in capsys.readouterr().err
    assert main(["inspect", "resnet8", "--data", "mnist", "--out", str(tmp_path)]) == 1
    assert "'mnist'" in capsys.readouterr().err
    assert main(["inspect", "user_models:DataDependent", "--units", "block", "--steps", "1", "--zeros", "off",
                 "--out", str(tmp_path), "--threads", "1"]) == 0      # named units need no tracing
    assert "block" in capsys.readouterr().out


def test_help_lists_inspect(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "inspect" in capsys.readouterr().out


def test_readme_own_network_snippet_runs_on_a_torchvision_layout(monkeypatch, capsys):
    # torchvision is not installed here: its resnet50 is stood in for by the same layout, narrower
    import re
    import sys
    import types
    from pathlib import Path

    from user_models import tiny_bottleneck_resnet

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"## Your own network\n.*?```python\n(.*?)```", readme, re.S).group(1)
    stub = types.ModuleType("torchvision")
    stub.models = types.SimpleNamespace(resnet50=lambda num_classes: tiny_bottleneck_resnet(
        layers=(3, 4, 6, 3), width=4, num_classes=num_classes))
    monkeypatch.setitem(sys.modules, "torchvision", stub)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    ratios, extremes = capsys.readouterr().out.strip().splitlines()
    assert len(ratios.strip("[]").split(",")) == 16 == len(scope["units"])
    assert "'sigma_max'" in extremes and len(scope["rows"]) == 53
    # "downsample": the strided 1x1 convs (layer1.0's projection has stride 1)
    assert scope["hook"].names == ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]


def _inspect_json(capsys, tmp_path, *extra, size="16"):
    argv = ["inspect", "user_models:TinyConvNeXt", "--kwargs", '{"dims": [4, 8], "depths": [1, 1]}',
            "--input-shape", "3", size, size, "--batch", "2", "--steps", "1", "--zeros", "dense", "--threads", "1",
            "--out", str(tmp_path), *extra]
    assert main(argv) == 0
    return capsys.readouterr().out


def test_inspect_project_shows_the_spectra_before_and_after_one_projection(capsys, tmp_path):
    printed = _inspect_json(capsys, tmp_path / "a", "--project", "exact")
    assert "one exact Procrustes projection of --project exact" in printed and "projected layer" in printed
    result = json.loads((tmp_path / "a" / "inspect.json").read_text())
    layers = result["projection"]["layers"]
    assert result["projection"]["which"] == "exact" and [r["name"] for r in layers] == ["stem.0", "stages.1.0.1"]
    convs = {r["name"]: r for r in result["convs"]}
    for r in layers:
        assert r["before"] == convs[r["name"]]                # the conv table's row: the model's own weights
        target = r["report"]["target"]
        for part in ("circular", "zeros"):                    # patch convs: exactly on target, both paddings
            assert r["after"][part]["sigma_max"] == pytest.approx(target, rel=1e-6)
            assert r["after"][part]["sigma_min"] == pytest.approx(target, rel=1e-6)
        assert r["report"]["exact"] and r["before"]["circular"]["max_rel_error"] > 0.1
    # on a copy: every other number is what inspect prints without --project
    _inspect_json(capsys, tmp_path / "b")
    plain = json.loads((tmp_path / "b" / "inspect.json").read_text())
    assert "projection" not in plain
    assert plain["units"] == result["units"] and plain["convs"] == result["convs"]


def test_inspect_project_of_a_3x3_conv_and_its_errors(capsys, tmp_path):
    _inspect_json(capsys, tmp_path, "--project", "stages.0.*.dwconv", size="32")
    (row,) = json.loads((tmp_path / "inspect.json").read_text())["projection"]["layers"]
    assert not row["report"]["exact"]                         # a 7x7 kernel is cropped: closer, not on target
    assert row["after"]["circular"]["max_rel_error"] < row["before"]["circular"]["max_rel_error"]
    assert main(["inspect", "user_models:TinyConvNeXt", "--project", "stages.1.*.dwconv", "--input-shape", "3", "16",
                 "16", "--steps", "1", "--zeros", "off", "--out", str(tmp_path), "--threads", "1"]) == 1
    err = capsys.readouterr().err                             # its 7x7 kernel on a 2x2 input
    assert "cannot project stages.1.1.dwconv: kernel 7x7 is larger than input_size (2, 2)" in err
    assert main(["inspect", "resnet8", "--project", "nothing.*", "--steps", "1", "--zeros", "off",
                 "--out", str(tmp_path), "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert "no conv of the model matches 'nothing.*'" in err and err.count("\n") == 1


# ---------------------------------------------------------------- token models (--input-ids)
def _tiny_hf(family, **config):
    pytest.importorskip("transformers")
    import hf_models

    torch.manual_seed(0)
    return hf_models.FAMILIES[family](**config)


def test_inspect_input_ids_on_a_tiny_gpt2_factory(tmp_path, capsys):
    pytest.importorskip("transformers")
    argv = ["inspect", "hf_models:tiny_gpt2", "--input-ids", "8", "--steps", "1", "--out", str(tmp_path),
            "--threads", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "units: structure: 3 GPT2Block in 'transformer.h.*'" in printed and "glob 'transformer.h.*'" in printed
    assert "the conv table is empty" in printed
    result = json.loads((tmp_path / "inspect.json").read_text())
    assert (result["input"], result["vocab"], result["input_shape"]) == ("input_ids", 64, [8])
    assert [u["name"] for u in result["units"]] == ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
    assert result["units_glob"] == "transformer.h.*" and result["convs"] == []   # GPT-2's Conv1D is a linear map
    assert all(u["ratio_init"] > 0 and u["ratio_trained"] > 0 for u in result["units"])


def test_token_ratios_equal_retain_grad_under_hugging_faces_own_causal_lm_loss():
    model = _tiny_hf("gpt2", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0).double()
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randint(64, (3, 8), generator=gen), None) for _ in range(2)]
    reference = []
    for ids, _ in batches:
        pairs = []
        hooks = [block.register_forward_hook(lambda m, args, out: pairs.append((args[0], out)))
                 for block in model.transformer.h]
        model.train()
        out = model(ids, labels=ids)                       # the next-token loss, as Hugging Face computes it
        for t in (t for pair in pairs for t in pair):
            t.retain_grad()
        out.loss.backward()
        for h in hooks:
            h.remove()
        reference.append([float(a.grad.norm() / b.grad.norm()) for a, b in pairs])
        model.zero_grad()
    result = inspect_model(model, batches, steps=0)
    assert model.config.use_cache is False                 # no key/value cache built in every forward
    expected = [(a + b) / 2 for a, b in zip(*reference)]
    assert [u["ratio_init"] for u in result["units"]] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_next_token_loss_is_hugging_faces_causal_lm_loss(family):
    from procres.diagnostics.inspection import probe_loss

    model = _tiny_hf(family).eval()                        # no dropout: two forwards, one function
    ids = torch.randint(64, (4, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = model(ids, labels=ids).loss               # Hugging Face shifts the labels itself
        ours = probe_loss(model(ids), None, torch.Generator(), ids, 64)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


def test_probe_loss_of_logits_and_of_hidden_states():
    from procres.diagnostics.inspection import probe_loss

    bert = _tiny_hf("bert").eval()                         # a classifier's (N, K) logits: the usual cross-entropy
    ids, y = torch.randint(64, (4, 8)), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        logits = bert(ids).logits
        assert float(probe_loss(bert(ids), y, None, ids, 64)) == pytest.approx(float(F.cross_entropy(logits, y)))
    base = _tiny_hf("gpt2", head=False).eval()            # (N, T, hidden) states, hidden != vocab: not logits
    with torch.no_grad():
        h = base(ids).last_hidden_state
        ours = probe_loss(base(ids), None, torch.Generator().manual_seed(3), ids, 64)
    g = torch.randn(h.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).float()
    assert float(ours) == pytest.approx(float((h * g).sum() / h.shape[0]), rel=1e-6)


def test_token_arguments_are_checked_in_one_sentence(tmp_path, capsys):
    from procres.diagnostics.inspection import vocab_of
    from procres.training.data import make_batches

    assert main(["inspect", "user_models:tiny_resnet", "--input-ids", "8", "--out", str(tmp_path)]) == 1
    assert "ResNet has no config.vocab_size and no vocabulary was given: give it with --vocab N" in capsys.readouterr().err
    assert main(["inspect", "resnet8", "--vocab", "50", "--out", str(tmp_path)]) == 1
    assert "--vocab 50 is the vocabulary of --input-ids LEN" in capsys.readouterr().err
    assert main(["inspect", "resnet8", "--data", "digits", "--input-ids", "8", "--out", str(tmp_path)]) == 1
    assert "drop one of them" in capsys.readouterr().err
    assert vocab_of(torch.nn.Linear(2, 2), 50) == 50
    (ids, y), = make_batches("random", input_shape=(6,), batch=5, count=1, vocab=7)[0]
    assert ids.shape == (5, 6) and ids.dtype == torch.int64 and 0 <= int(ids.min()) and int(ids.max()) < 7 and y is None
    with pytest.raises(ValueError, match="at least 2"):
        make_batches("random", input_shape=(1,), batch=2, count=1, vocab=7)


def test_a_hugging_face_model_class_is_built_from_its_config_class(tmp_path, capsys):
    pytest.importorskip("transformers")
    config = '{"n_layer": 2, "n_embd": 16, "n_head": 2, "vocab_size": 64, "n_positions": 16}'
    assert main(["inspect", "transformers:GPT2LMHeadModel", "--kwargs", config, "--input-ids", "8", "--steps", "1",
                 "--json", "--out", str(tmp_path), "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [u["name"] for u in result["units"]] == ["transformer.h.0", "transformer.h.1"] and result["vocab"] == 64
    assert main(["inspect", "transformers:GPT2Config", "--input-ids", "8", "--out", str(tmp_path)]) == 1
    assert "returned a GPT2Config, not an nn.Module; name a model class instead" in capsys.readouterr().err


def test_a_keyword_the_hugging_face_config_does_not_have_is_refused(tmp_path, capsys):
    pytest.importorskip("transformers")
    config = '{"n_layers": 2, "n_embd": 16, "n_head": 2, "vocab_size": 64}'     # GPT2Config's is n_layer
    assert main(["inspect", "transformers:GPT2LMHeadModel", "--kwargs", config, "--input-ids", "8", "--out",
                 str(tmp_path), "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert "keyword 'n_layers' is not an attribute of GPT2Config" in err and "did you mean 'n_layer'" in err


def test_lm_logits_are_found_by_shape_whatever_the_ids_range(tmp_path, capsys):
    from procres.diagnostics.inspection import probe_loss

    ids = torch.randint(10, (4, 8), generator=torch.Generator().manual_seed(0))   # ids in [0, 10), 64-wide logits
    torch.manual_seed(0)
    lm = torch.nn.Sequential(torch.nn.Embedding(64, 8), torch.nn.Linear(8, 64))     # declares no vocabulary
    with torch.no_grad():
        logits = lm(ids)
        reference = F.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))
        assert float(probe_loss(logits, None, torch.Generator(), ids, 10)) == pytest.approx(float(reference))
        assert float(probe_loss(logits, None, torch.Generator(), ids, 10, 64)) == pytest.approx(float(reference))
    pytest.importorskip("transformers")
    assert main(["inspect", "hf_models:tiny_gpt2", "--input-ids", "8", "--vocab", "100", "--out", str(tmp_path),
                 "--threads", "1"]) == 1
    assert "--vocab 100 exceeds the vocabulary of GPT2LMHeadModel (64, the width of its logits)" in \
        capsys.readouterr().err

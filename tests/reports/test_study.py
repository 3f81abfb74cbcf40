"""`procres study` and procres.depth_study (procres.reports.study): FACTORY strings, the JSON and the
figure, and verdicts computed from the numbers.

References: a family whose r_l is known exactly (units x + a W x with W = I at initialisation, so
r_l = 1 + a; tests/helpers/user_models.py), with a = 0.5 at every depth (the deviation does not
fall: the claim must come out "contradicted") or a = 0.5 / depth (it falls: "holds"); the same
study from Python and from the command line; the residual layers of a tiny Hugging Face config.
"""

import json
import math

import pytest

import procres
import user_models
from procres.cli import main
from procres.errors import UserError

pytestmark = pytest.mark.usefixtures("single_threaded")
CHAIN = ["user_models:scaled_chain", "--depth-kwarg", "layers", "--depths", "1", "4", "8", "--input-shape", "1", "2",
         "2", "--steps", "2", "--batch", "8", "--threads", "1"]


def _verdicts(out) -> dict:
    study = json.loads((out / "depth_study.json").read_text())
    return {f["where"]["phase"]: f["holds"] for f in study["findings"]}


def test_a_family_built_to_fail_the_claim_is_contradicted(tmp_path, capsys):
    assert main(["study", *CHAIN, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    study = json.loads((tmp_path / "depth_study.json").read_text())
    for ratios in study["results"]["scaled_chain"]["init"]:            # r_l = 1 + a = 1.5, exactly
        assert ratios == pytest.approx([1.5] * len(ratios), rel=1e-6)
    assert [len(r) for r in study["results"]["scaled_chain"]["init"]] == [1, 4, 8]
    assert study["units"]["scaled_chain"][0].startswith("traced: ") and study["block_kinds"]["scaled_chain"][1] == [
        "identity"] * 4
    assert _verdicts(tmp_path) == {"at initialisation": False, "after 2 SGD steps": False}
    assert "contradicted  The deviation stays roughly flat with depth" in printed
    assert "scaled_chain[layers=1] -> " in printed.replace("(", "").replace(")", "")
    assert (tmp_path / "depth_study.png").stat().st_size > 10000


def test_a_family_whose_deviation_falls_with_depth_holds(tmp_path, capsys):
    assert main(["study", *CHAIN, "--kwargs", '{"shrink": true}', "--out", str(tmp_path)]) == 0
    study = json.loads((tmp_path / "depth_study.json").read_text())
    for depth, ratios in zip(study["depths"], study["results"]["scaled_chain"]["init"]):
        assert ratios == pytest.approx([1 + 0.5 / depth] * depth, rel=1e-6)
    assert _verdicts(tmp_path)["at initialisation"] is True
    assert "holds         The deviation decreases with depth" in capsys.readouterr().out


def test_procres_depth_study_takes_the_same_factory_form(tmp_path, capsys):
    assert main(["study", *CHAIN, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    cli = json.loads((tmp_path / "depth_study.json").read_text())
    python = procres.depth_study("user_models:scaled_chain", [1, 4, 8], depth_kwarg="layers", input_shape=(1, 2, 2),
                                 steps=2, batch_size=8, measure_batches=2)
    assert python["results"] == cli["results"] and python["models"] == {"scaled_chain": "scaled_chain[layers={depth}]"}


def test_two_zoo_transformer_families_on_tokens(tmp_path, capsys):
    argv = ["study", "prenorm_transformer", "postnorm_transformer", "--depths", "1", "3", "--input-ids", "6",
            "--kwargs", '{"width": 8, "heads": 2}', "--steps", "1", "--batch", "4", "--out", str(tmp_path),
            "--threads", "1"]
    assert main(argv) == 0
    study = json.loads((tmp_path / "depth_study.json").read_text())
    assert list(study["results"]) == ["prenorm_transformer", "postnorm_transformer"]
    assert study["units"]["prenorm_transformer"] == ["blocks: the model's own units"] * 2
    assert all(r > 0 and math.isfinite(r) for rs in study["results"]["postnorm_transformer"]["trained"] for r in rs)
    assert len(study["findings"]) == 4 and all(f["holds"] is not None for f in study["findings"])
    assert "prenorm_transformer3" in capsys.readouterr().out


def test_a_hugging_face_config_at_several_layer_counts(tmp_path, capsys):
    pytest.importorskip("transformers")
    assert main(["study", "hf_models:tiny_gpt2", "--depth-kwarg", "n_layer", "--depths", "2", "3", "--input-ids", "8",
                 "--steps", "1", "--batch", "4", "--out", str(tmp_path), "--threads", "1"]) == 0
    study = json.loads((tmp_path / "depth_study.json").read_text())
    assert [len(r) for r in study["results"]["tiny_gpt2"]["init"]] == [2, 3]      # the GPT2Blocks
    assert all(rule.startswith("structure: ") for rule in study["units"]["tiny_gpt2"])
    assert "tiny_gpt2[n_layer=3]" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["user_models:scaled_chain", "--depths", "1", "--input-shape", "1", "2", "2"], "needs --depth-kwarg NAME"),
    (["prenorm_transformer", "--depth-kwarg", "n", "--depths", "1", "--input-ids", "4"], "takes its depth by name"),
    (["prenorm_transformer", "--depths", "1"], "input_shape (C, H, W) or input_ids LEN"),
    (["prenorm_transformer", "--depths", "0", "--input-ids", "4"], "depths must be a non-empty list of positive ints"),
    (["no_family", "--depths", "1", "--input-ids", "4"], "neither a model family"),
    (["user_models:scaled_chain", "--depth-kwarg", "layers", "--kwargs", '{"layers": 2}', "--depths", "1",
      "--input-shape", "1", "2", "2"], "the argument the study varies"),
])
def test_bad_study_arguments_are_one_sentence(argv, message, tmp_path, capsys):
    assert main(["study", *argv, "--out", str(tmp_path), "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("procres study: error: ") and message in err and err.count("\n") == 1


def test_a_depth_argument_that_does_not_change_the_model_is_refused(tmp_path, capsys):
    argv = ["study", "user_models:chain_ignoring_depth", *CHAIN[1:], "--out", str(tmp_path)]
    assert main(argv) == 1
    assert "--depth-kwarg layers did not change the model chain_ignoring_depth: 2 units at every depth (1 and 4)" in \
        capsys.readouterr().err
    with pytest.raises(UserError, match=r"model_factory\['fixed'\] did not change the model with the depth: "
                                        r"2 units at depths 1 and 4"):
        procres.depth_study({"fixed": lambda d: user_models.scaled_chain(layers=2)}, [1, 4], input_shape=(1, 2, 2),
                            steps=0)


def test_a_config_keyword_the_hugging_face_config_does_not_have_is_refused(tmp_path, capsys):
    pytest.importorskip("transformers")
    from transformers import GPT2Config

    assert hasattr(GPT2Config(), "n_layer") and not hasattr(GPT2Config(), "num_layers")    # the reference
    argv = ["study", "transformers:GPT2LMHeadModel", "--depth-kwarg", "num_layers", "--depths", "2", "4",
            "--input-ids", "8", "--kwargs", '{"n_embd": 16, "n_head": 2, "vocab_size": 64}', "--out", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--depth-kwarg 'num_layers' is not an attribute of GPT2Config" in err and "'n_layer'" in err
    assert main([*argv[:3], "n_layer", *argv[4:10], '{"n_embd": 16, "n_heads": 2, "vocab_size": 64}', *argv[11:]]) == 1
    err = capsys.readouterr().err
    assert "--kwargs 'n_heads' is not an attribute of GPT2Config" in err and "'n_head'" in err
    assert not (tmp_path / "depth_study.json").exists()


def test_a_depth_without_units_is_named_with_the_studys_own_options():
    import torch
    from torch import nn

    def family(depth):           # depth 1: one Linear, no residual unit to find
        return nn.Sequential(nn.Flatten(), nn.Linear(4, 3)) if depth == 1 else user_models.scaled_chain(layers=depth)

    with pytest.raises(UserError) as err:
        procres.depth_study({"chain": family}, [2, 1], input_shape=(1, 2, 2), steps=0)
    assert str(err.value).startswith("chain at depth 1: no residual addition found in Sequential")
    assert "leave depth 1 out (--depths)" in str(err.value) and "procres inspect" not in str(err.value)

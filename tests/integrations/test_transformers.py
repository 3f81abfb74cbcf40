"""procres.integrations.transformers.NormRatioCallback in a real transformers.Trainer: tiny BERT and
GPT-2 trained 3 steps on random tokens, nothing reported anywhere but the Trainer's log
(report_to=[]).  Reference: the residual layers each tiny config has (tests/helpers/hf_models.py),
written out from the config; one logged value per unit at exactly the recorded steps.
"""

import math

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")          # the Trainer refuses to start without it

from transformers import Trainer, TrainingArguments  # noqa: E402

import hf_models  # noqa: E402
from procres.errors import UserError  # noqa: E402
from procres.integrations.transformers import NormRatioCallback  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_threaded")


class Tokens(torch.utils.data.Dataset):
    """Random token ids; labels: the ids themselves (a causal LM shifts them) or ``classes`` labels."""

    def __init__(self, n, length, vocab, classes=None):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(vocab, (n, length), generator=g)
        self.labels = self.ids if classes is None else torch.randint(classes, (n,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _trainer(family, tmp_path, accumulation=1, **args):
    torch.manual_seed(0)
    model = hf_models.FAMILIES[family]()
    data = Tokens(24, 8, model.config.vocab_size, classes=3 if family == "bert" else None)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], max_steps=3, per_device_train_batch_size=4,
                             gradient_accumulation_steps=accumulation, logging_steps=1, save_strategy="no",
                             use_cpu=True, disable_tqdm=True, **args)
    return Trainer(model=model, args=args, train_dataset=data)


def _logged(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if any(k.startswith("norm_ratio/") for k in h)]


@pytest.mark.parametrize("family,every,accumulation,steps", [("bert", 1, 1, [1, 2, 3]), ("gpt2", 2, 2, [1, 3])])
def test_one_value_per_unit_at_each_recorded_step(family, every, accumulation, steps, tmp_path):
    trainer = _trainer(family, tmp_path, accumulation)
    callback = NormRatioCallback(trainer, every=every)
    trainer.add_callback(callback)
    trainer.train()
    assert callback.names == hf_models.residual_layers(family)[1]
    logged = _logged(trainer)
    assert [h["step"] for h in logged] == steps                      # steps 0, every, ... (global_step after it)
    for h in logged:
        ratios = {k: v for k, v in h.items() if k.startswith("norm_ratio/")}
        assert list(ratios) == ["norm_ratio/block_01", "norm_ratio/block_02", "norm_ratio/block_03"]
        assert all(math.isfinite(v) and v > 0 for v in ratios.values())
    assert callback.summary["steps_recorded"] == accumulation       # every micro-batch of the step
    assert logged[-1]["norm_ratio/block_01"] == callback.summary["ratio"][0]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in trainer.model.modules())   # all removed


def test_units_by_glob_and_gradient_checkpointing_refused(tmp_path):
    trainer = _trainer("gpt2", tmp_path)
    callback = NormRatioCallback(trainer, every=3, units="transformer.h.*")
    trainer.add_callback(callback)
    trainer.train()
    assert callback.names == ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
    assert [h["step"] for h in _logged(trainer)] == [1]
    with pytest.raises(UserError, match="activation \\(gradient\\) checkpointing on"):
        NormRatioCallback(_trainer("gpt2", tmp_path, activation_checkpointing=True))
    with pytest.raises(UserError, match="every must be a positive integer, got 0"):
        NormRatioCallback(trainer, every=0)


def _trainer_entries(trainer) -> list[dict]:
    """The Trainer's own per-step entries (loss, grad_norm, learning_rate), without the runtime."""
    return [{k: v for k, v in h.items() if k != "epoch"} for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("family,every,accumulation", [("bert", 1, 1), ("gpt2", 2, 2)])
def test_the_trainers_own_log_is_kept(family, every, accumulation, tmp_path):
    # reference: the same run without the callback logs loss, grad_norm and learning_rate at every step
    plain = _trainer(family, tmp_path / "plain", accumulation)
    plain.train()
    expected = _trainer_entries(plain)
    assert [h["step"] for h in expected] == [1, 2, 3]
    trainer = _trainer(family, tmp_path / "recorded", accumulation)
    trainer.add_callback(NormRatioCallback(trainer, every=every))
    trainer.train()
    assert _trainer_entries(trainer) == expected           # same values: the hooks change no computation
    assert len(_logged(trainer)) == len(range(0, 3, every))


def test_a_glob_that_matches_nothing_is_refused_when_made(tmp_path):
    with pytest.raises(UserError, match="no module of GPT2LMHeadModel matches 'bad.\\*'"):
        NormRatioCallback(_trainer("gpt2", tmp_path), units="bad.*")

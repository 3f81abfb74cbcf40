"""Tiny Hugging Face models (hidden sizes 8-32, 2-3 layers, vocabulary 64), built from configs in
milliseconds on CPU and never downloaded, with the residual layers each one has.

``tiny_<family>(head=True, **config)`` builds the task model (``GPT2LMHeadModel``,
``ResNetForImageClassification``, ...) or, with ``head=False``, the bare base model; ``config``
overrides the tiny config (``tiny_gpt2(n_layer=8)``), so each is also a ``procres inspect`` /
``procres study`` factory: ``procres inspect hf_models:tiny_gpt2 --input-ids 8``.
``example_input(family)`` is a batch of two; ``residual_layers(family, head)`` the glob and the
names, in forward order, of the layers that add their input to their output (written out from the
config, not found by a glob).
"""

from __future__ import annotations

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # nothing here may reach the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VOCAB = 64


def tiny_resnet(*, head=True, **config):
    from transformers import ResNetConfig, ResNetForImageClassification, ResNetModel

    cfg = ResNetConfig(**{"num_channels": 3, "embedding_size": 8, "hidden_sizes": [8, 16, 32], "depths": [2, 2, 2],
                          "layer_type": "basic", "num_labels": 10, **config})
    return (ResNetForImageClassification if head else ResNetModel)(cfg)


def tiny_convnext(*, head=True, **config):
    from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextModel

    cfg = ConvNextConfig(**{"num_channels": 3, "num_stages": 2, "hidden_sizes": [8, 16], "depths": [2, 3],
                            "patch_size": 4, "num_labels": 10, **config})
    return (ConvNextForImageClassification if head else ConvNextModel)(cfg)


def tiny_vit(*, head=True, **config):
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    cfg = ViTConfig(**{"image_size": 16, "patch_size": 4, "num_channels": 3, "hidden_size": 16,
                       "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 32, "num_labels": 10,
                       **config})
    return (ViTForImageClassification if head else ViTModel)(cfg)


def tiny_swin(*, head=True, **config):
    from transformers import SwinConfig, SwinForImageClassification, SwinModel

    cfg = SwinConfig(**{"image_size": 32, "patch_size": 4, "num_channels": 3, "embed_dim": 8, "depths": [2, 2],
                        "num_heads": [2, 2], "window_size": 2, "mlp_ratio": 2.0, "num_labels": 10, **config})
    return (SwinForImageClassification if head else SwinModel)(cfg)


def tiny_bert(*, head=True, **config):
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    cfg = BertConfig(**{"vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2,
                        "intermediate_size": 32, "max_position_embeddings": 32, "num_labels": 3, **config})
    return (BertForSequenceClassification if head else BertModel)(cfg)


def tiny_gpt2(*, head=True, **config):
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    cfg = GPT2Config(**{"vocab_size": VOCAB, "n_positions": 32, "n_embd": 16, "n_layer": 3, "n_head": 2,
                        "bos_token_id": 0, "eos_token_id": 0, **config})
    return (GPT2LMHeadModel if head else GPT2Model)(cfg)


def tiny_llama(*, head=True, **config):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    cfg = LlamaConfig(**{"vocab_size": VOCAB, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3,
                         "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 32,
                         **config})
    return (LlamaForCausalLM if head else LlamaModel)(cfg)


FAMILIES = {"resnet": tiny_resnet, "convnext": tiny_convnext, "vit": tiny_vit, "swin": tiny_swin, "bert": tiny_bert,
            "gpt2": tiny_gpt2, "llama": tiny_llama}
TOKENS = ("bert", "gpt2", "llama")


def example_input(family: str, batch: int = 2) -> torch.Tensor:
    """Token ids ``(batch, 8)`` for the language models, else images ``(batch, 3, 32, 32)`` (ViT: 16)."""
    gen = torch.Generator().manual_seed(0)
    if family in TOKENS:
        return torch.randint(VOCAB, (batch, 8), generator=gen)
    size = 16 if family == "vit" else 32
    return torch.randn(batch, 3, size, size, generator=gen)


# the task model's base model sits under this prefix
_PREFIX = {"resnet": "resnet.", "convnext": "convnext.", "vit": "vit.", "swin": "swin.", "bert": "bert.",
           "gpt2": "transformer.", "llama": "model."}


def _staged(path: str, blocks: str, depths: list[int]) -> list[str]:
    return [f"{path}.{s}.{blocks}.{i}" for s, d in enumerate(depths) for i in range(d)]


_LAYERS = {
    "resnet": ("encoder.stages.*.layers.*", _staged("encoder.stages", "layers", [2, 2, 2])),
    "convnext": ("encoder.stages.*.layers.*", _staged("encoder.stages", "layers", [2, 3])),
    "vit": ("layers.*", [f"layers.{i}" for i in range(3)]),            # transformers 5: no encoder.layer
    "swin": ("encoder.layers.*.blocks.*", _staged("encoder.layers", "blocks", [2, 2])),
    "bert": ("encoder.layer.*", [f"encoder.layer.{i}" for i in range(3)]),
    "gpt2": ("h.*", [f"h.{i}" for i in range(3)]),
    "llama": ("layers.*", [f"layers.{i}" for i in range(3)]),
}


def residual_layers(family: str, head: bool = True) -> tuple[str, list[str]]:
    """-> (glob, names) of the residual layers of ``FAMILIES[family](head=head)``."""
    glob, names = _LAYERS[family]
    prefix = _PREFIX[family] if head else ""
    return prefix + glob, [prefix + n for n in names]

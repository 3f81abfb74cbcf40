"""The zoo's transformer language models (procres.models.transformer) and their names in the registry.

References: a parameter count written from the layer formulas, attention written out with an
explicit causal mask in float64, the layer formulas of the module docstring, and r_l from
retain_grad on each layer's input and output.
"""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from procres.diagnostics.recorder import NormRecorder
from procres.models.registry import create_model, families, model_input, smallest_variant
from procres.models.transformer import PostNormLayer, PreNormLayer, SelfAttention

F64 = torch.float64


def _params(depth, vocab=64, width=32, mlp=128, max_len=128, prenorm=True):
    layer = 2 * 2 * width + (3 * width * width + 3 * width) + (width * width + width) + 2 * width * mlp + mlp + width
    stem = (vocab + max_len) * width + (0 if prenorm else 2 * width)     # post-LN: a LayerNorm on the embedding
    head = (2 * width if prenorm else 0) + width * vocab + vocab          # pre-LN: a final LayerNorm
    return stem + depth * layer + head


@pytest.mark.parametrize("family, layer, prenorm", [("prenorm_transformer", PreNormLayer, True),
                                                    ("postnorm_transformer", PostNormLayer, False)])
def test_depth_by_name_shapes_and_parameter_count(family, layer, prenorm):
    model = create_model(f"{family}5")
    assert (model.depth, len(model.blocks), model.block_kinds) == (5, 5, ["identity"] * 5)
    assert all(type(b) is layer for b in model.blocks) and model.family == family
    assert sum(p.numel() for p in model.parameters()) == _params(5, prenorm=prenorm)
    ids = torch.randint(64, (3, 10))
    out = model(ids)
    assert out.shape == (3, 10, 64)
    assert torch.equal(model.head(model.blocks(model.stem(ids))), out)
    assert model_input(f"{family}5") == model_input(family) == "tokens" and family in families()
    assert smallest_variant(f"{family}12") == f"{family}1"
    weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    std = torch.cat([w.detach().reshape(-1) for w in weights]).std()
    assert float(std) == pytest.approx(0.02, rel=0.02)                   # BERT's and GPT-2's initializer_range


def test_attention_is_causal_multi_head_attention():
    torch.manual_seed(0)
    attn = SelfAttention(8, 2).to(F64)
    x = torch.randn(2, 5, 8, dtype=F64)
    q, k, v = attn.qkv(x).split(8, dim=-1)
    heads = [slice(0, 4), slice(4, 8)]
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    outs = []
    for h in heads:
        scores = (q[..., h] @ k[..., h].transpose(1, 2)) / math.sqrt(4)
        outs.append(scores.masked_fill(~mask, -math.inf).softmax(-1) @ v[..., h])
    torch.testing.assert_close(attn(x), attn.proj(torch.cat(outs, -1)), rtol=1e-12, atol=1e-12)


def test_layers_follow_their_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, dtype=F64)
    pre, post = PreNormLayer(8, 2, 16).to(F64), PostNormLayer(8, 2, 16).to(F64)
    h = x + pre.attn(pre.ln1(x))
    torch.testing.assert_close(pre(x), h + pre.mlp(pre.ln2(h)))
    h = post.ln1(x + post.attn(x))
    torch.testing.assert_close(post(x), post.ln2(h + post.mlp(h)))


def test_norm_recorder_on_the_blocks_equals_retain_grad():
    torch.manual_seed(0)
    model = create_model("postnorm_transformer3", width=16, heads=2).to(F64).train()
    ids = torch.randint(64, (2, 6))
    xs = []
    hooks = [b.register_forward_hook(lambda m, args, out: xs.extend([args[0], out])) for b in model.blocks]
    logits = model(ids)
    for t in xs:
        t.retain_grad()
    F.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1)).backward()
    for h in hooks:
        h.remove()
    ref = [float(xs[2 * i].grad.norm() / xs[2 * i + 1].grad.norm()) for i in range(3)]
    model.zero_grad()
    with NormRecorder(model.blocks) as rec:
        logits = model(ids)
        F.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1)).backward()
    assert rec.summary()["ratio"] == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("build, words", [
    (lambda: create_model("prenorm_transformer2", image_size=16), "takes no image_size"),
    (lambda: create_model("postnorm_transformer0"), "depth must be an integer of at least 1, got 0"),
    (lambda: create_model("prenorm_transformer2", width=10, heads=4), "width 10 must be a multiple of heads 4"),
    (lambda: create_model("prenorm_transformer1")(torch.randn(2, 4)), "token ids (N, T) of an integer dtype"),
    (lambda: create_model("prenorm_transformer1", max_len=4)(torch.zeros(1, 5, dtype=torch.long)),
     "5 tokens are more than max_len=4"),
])
def test_bad_arguments_are_one_sentence(build, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        build()

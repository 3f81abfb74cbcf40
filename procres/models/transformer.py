"""Two small transformer language models, pre-LN and post-LN, for the depth study.

    family                 layer l, x = x_l of shape (N, T, width)           as in
    prenorm_transformer    x = x + attn(LN(x));  x_{l+1} = x + mlp(LN(x))     GPT-2, Llama (and a final LN)
    postnorm_transformer   x = LN(x + attn(x));  x_{l+1} = LN(x + mlp(x))     the original Transformer, BERT

Token ids ``(N, T)`` in ``[0, vocab_size)`` -> ``stem`` (token and learned position embeddings;
post-LN: then a LayerNorm, as BERT, so every layer reads a normalised hidden state) -> ``blocks`` (one ``nn.Sequential`` entry per layer, so ``NormRecorder(model.blocks)`` records
r_l per layer) -> ``head`` (pre-LN: LayerNorm, then a linear map to the vocabulary) -> logits
``(N, T, vocab_size)``.  Attention is causal (position t sees positions <= t): a language model,
whose probe loss is the next-token cross-entropy.  ``depth`` is the number of layers L >= 1;
``create_model("prenorm_transformer8")`` has 8 (any depth by name).  Each layer adds its input to
a same-shape tensor twice, so its kind is ``"identity"``; post-LN normalises after each addition,
pre-LN leaves the residual stream untouched between the layers.

Defaults: vocabulary 64, width 32, 4 heads, MLP 4 x width with GELU, up to 128 positions, no
dropout.  Initialisation: that of Hugging Face's BERT and GPT-2 (``initializer_range`` 0.02): every
linear and embedding weight normal with standard deviation 0.02, biases 0, LayerNorm 1 and 0;
GPT-2's extra 1/sqrt(2L) on the output projections is left out, because it depends on the depth:
between the nets of a depth study only the depth differs.

Sources: Vaswani et al. 2017 (post-LN); Radford et al. 2019, GPT-2 (pre-LN); Xiong et al. 2020, "On
Layer Normalization in the Transformer Architecture" (post-LN's large gradients near the output
at initialisation, pre-LN's well-behaved ones).
"""

from __future__ import annotations

import torch
from torch import nn

from procres.errors import UserError

__all__ = ["TransformerLM", "prenorm_transformer", "postnorm_transformer"]


class SelfAttention(nn.Module):
    """Causal multi-head self-attention: ``(N, T, width) -> (N, T, width)``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class _Layer(nn.Module):
    """The parts both layers have: attention and MLP, each with its LayerNorm."""

    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width))


class PreNormLayer(_Layer):
    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return x


class PostNormLayer(_Layer):
    def forward(self, x):
        x = self.ln1(x + self.attn(x))
        x = self.ln2(x + self.mlp(x))
        return x


class TokenEmbedding(nn.Module):
    """Token plus learned position embeddings, then a LayerNorm when ``norm``: ids ``(N, T)`` ->
    ``(N, T, width)``."""

    def __init__(self, vocab_size: int, width: int, max_len: int, norm: bool = False):
        super().__init__()
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(max_len, width)
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()

    def forward(self, ids):
        if ids.is_floating_point() or ids.dim() != 2:
            raise UserError(f"a transformer language model takes token ids (N, T) of an integer dtype, got "
                            f"{tuple(ids.shape)} {ids.dtype}")
        if ids.shape[1] > self.position.num_embeddings:
            raise UserError(f"{ids.shape[1]} tokens are more than max_len={self.position.num_embeddings}")
        return self.norm(self.token(ids) + self.position(torch.arange(ids.shape[1], device=ids.device)))


class TransformerLM(nn.Module):
    """``stem -> blocks -> head`` language model (see the module docstring)."""

    def __init__(self, layer: type, depth: int, *, family: str, vocab_size: int, width: int, heads: int,
                 mlp: int, max_len: int, prenorm: bool):
        super().__init__()
        self.stem = TokenEmbedding(vocab_size, width, max_len, norm=not prenorm)
        self.blocks = nn.Sequential(*[layer(width, heads, mlp) for _ in range(depth)])
        head = [nn.LayerNorm(width)] if prenorm else []
        self.head = nn.Sequential(*head, nn.Linear(width, vocab_size))
        self.family = family
        self.depth = depth
        self.vocab_size = vocab_size
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @property
    def block_kinds(self) -> list[str]:
        return ["identity"] * len(self.blocks)

    def forward(self, ids):
        return self.head(self.blocks(self.stem(ids)))


def _checked(family: str, depth, vocab_size, width, heads, mlp, max_len) -> None:
    for name, value, least in (("depth", depth, 1), ("vocab_size", vocab_size, 2), ("width", width, 1),
                               ("heads", heads, 1), ("mlp", mlp, 1), ("max_len", max_len, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UserError(f"{family} {name} must be an integer of at least {least}, got {value!r}")
    if width % heads:
        raise UserError(f"{family} width {width} must be a multiple of heads {heads}")


def prenorm_transformer(depth: int, *, vocab_size: int = 64, width: int = 32, heads: int = 4, mlp: int | None = None,
                        max_len: int = 128) -> TransformerLM:
    """Pre-LN transformer language model of ``depth`` layers (GPT-2's layout)."""
    mlp = 4 * width if mlp is None else mlp
    _checked("prenorm_transformer", depth, vocab_size, width, heads, mlp, max_len)
    return TransformerLM(PreNormLayer, depth, family="prenorm_transformer", vocab_size=vocab_size, width=width,
                         heads=heads, mlp=mlp, max_len=max_len, prenorm=True)


def postnorm_transformer(depth: int, *, vocab_size: int = 64, width: int = 32, heads: int = 4,
                         mlp: int | None = None, max_len: int = 128) -> TransformerLM:
    """Post-LN transformer language model of ``depth`` layers (the original Transformer's layout)."""
    mlp = 4 * width if mlp is None else mlp
    _checked("postnorm_transformer", depth, vocab_size, width, heads, mlp, max_len)
    return TransformerLM(PostNormLayer, depth, family="postnorm_transformer", vocab_size=vocab_size, width=width,
                         heads=heads, mlp=mlp, max_len=max_len, prenorm=False)

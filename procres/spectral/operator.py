"""The linear operator of a 2-D convolution layer: its arguments, forward, adjoint and dense matrix.

A convolution with weight ``W`` of shape ``(C_out, C_in / groups, kh, kw)`` (PyTorch layout),
stride ``s``, dilation ``d`` and ``groups`` is a linear map from ``R^{C_in x h x w}`` to
``R^{C_out x oh x ow}``.  :func:`conv_operator` resolves what a caller gives (an ``nn.Conv2d``
or a weight, plus keyword arguments) into one :class:`ConvOperator`; every function of
:mod:`procres.spectral` goes through it, so they agree on every default:

* an ``nn.Conv2d`` brings its own stride, padding, dilation, groups and padding mode
  (``"zeros"``, ``"circular"``, ``"reflect"`` or ``"replicate"``); ``padding_mode`` may be
  overridden (the circular operator of a zero-padded layer), any other keyword that contradicts
  the conv is an error.
* a bare weight means stride 1, dilation 1, groups 1 and **circular** padding, the operator whose
  spectrum is exact at any size and the one the Procrustes projection controls; zero padding
  defaults to ``k_eff // 2`` on each side, ``k_eff = d (k - 1) + 1`` (``nn.Conv2d(padding=k // 2)``).
* half and bfloat16 weights are upcast to float32 (the FFT and LAPACK need it); sizes and
  strides are any integral values (Python or numpy ints, 0-d integer tensors, ``torch.Size``).

Operators (``padding_mode``):

* ``"circular"``: periodic convolution on the ``h x w`` torus.  The input is padded by
  ``k_eff // 2`` on top and ``k_eff - 1 - k_eff // 2`` at the bottom (same for the width) with
  wrap-around, ``k_eff = d (k - 1) + 1``, so the output is ``(h / s) x (w / s)``; ``h`` and ``w``
  must be divisible by ``s``.  For odd ``k_eff <= n`` this is
  ``nn.Conv2d(padding=k_eff // 2, padding_mode="circular")``.  Taps are taken modulo the grid, so
  even kernels and kernels larger than the grid are well defined; the explicit ``padding`` is
  ignored (a shift, which changes no singular value).
* ``"zeros"``: ``nn.Conv2d`` with zero padding exactly (asymmetric ``padding="same"`` included),
  output ``(h + pad_top + pad_bottom - k_eff) // s + 1`` rows.
* ``"reflect"``, ``"replicate"``: ``nn.Conv2d`` with that padding mode exactly (same padding and
  output size as ``"zeros"``; a padded pixel reads the input pixel it mirrors or repeats, so
  one input pixel may feed a tap twice).  Reflect padding must be smaller than the input.
* ``"wrap"``: an ``nn.Conv2d(padding_mode="circular")`` whose output is *not* the torus's: padding
  other than ``k_eff - 1`` rows in all (``padding=2`` with a 3x3 kernel: ``(h + 2) x (w + 2)``
  outputs, rows of the torus conv repeated), or an input size the stride does not divide (torch
  pads and strides anyway).  That layer is no circular convolution (no FFT spectrum); its operator
  is torch's exactly, the input padded by wrap-around indexing like reflect / replicate.

A layer's own circular padding is read by :func:`as_layer`: :func:`conv_operator` of an
``nn.Conv2d`` with ``padding_mode="circular"`` (and no ``padding_mode`` override) is the torus
operator when the layer's output is ``(h / s) x (w / s)`` (its padding then only shifts the torus
conv, which changes no singular value), the zero-padded one when it pads nothing (the same
operator: a valid conv), and ``"wrap"`` otherwise.  A bare weight's ``"circular"`` is the torus.
"""

from __future__ import annotations

import dataclasses
import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from procres.errors import UserError

__all__ = ["DENSE_LIMIT", "DENSE_ENTRIES", "PADDING_MODES", "OPERATOR_MODES", "ConvOperator", "conv_operator",
           "as_layer", "with_layer_mode", "size_pair", "check_weight", "positive_int", "finite_number"]

#: Largest *smaller* side of a dense operator (``conv_matrix``, the exact zero-padding spectrum):
#: its SVD works on a ``DENSE_LIMIT``-wide matrix (A or A^T).  4096 x 4096 float64 is 128 MiB.
DENSE_LIMIT = 4096
#: Largest number of entries of a dense operator (512 MiB in float64).
DENSE_ENTRIES = 4 * DENSE_LIMIT**2

PADDING_MODES = ("circular", "zeros", "reflect", "replicate")
#: The operators a ConvOperator may hold: PADDING_MODES and a layer's non-torus circular padding.
OPERATOR_MODES = PADDING_MODES + ("wrap",)


# ----------------------------------------------------------------------------- argument checks
def _integral(value, name: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise UserError(f"{name} must be an int, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise UserError(f"{name} must hold ints, got {value!r}") from None
    if out < minimum:
        raise UserError(f"{name} must be >= {minimum}, got {value!r}")
    return out


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1 (numpy and 0-d tensor ints too); a UserError naming it otherwise."""
    return _integral(value, name, 1)


def finite_number(value, name: str, *, positive: bool = False) -> float:
    """``value`` as a float: a finite real number, >= 0 (``positive``: > 0); a UserError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
            or (positive and value == 0):
        raise UserError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}")
    return float(value)


def size_pair(value, name: str, minimum: int = 1) -> tuple[int, int]:
    """``n`` or ``(h, w)`` of any integral types (numpy ints, ``torch.Size``) -> ``(int, int)``."""
    if isinstance(value, (tuple, list, torch.Size)):
        if len(value) != 2:
            raise UserError(f"{name} must be an int or a pair of ints, got {value!r}")
        try:
            return tuple(_integral(v, name, minimum) for v in value)
        except UserError:
            raise UserError(f"{name} must hold ints >= {minimum}, got {value!r}") from None
    try:
        n = _integral(value, name, minimum)
    except UserError:
        raise UserError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}") from None
    return n, n


def check_weight(weight) -> None:
    if not isinstance(weight, torch.Tensor):
        raise UserError(f"weight must be a torch.Tensor or an nn.Conv2d, got {type(weight).__name__}")
    if weight.dim() != 4:
        raise UserError(f"weight must be 4-D (C_out, C_in, kh, kw), got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise UserError(f"weight must be a real floating tensor, got dtype {weight.dtype}")
    if weight.numel() == 0:
        raise UserError(f"weight is empty, shape {tuple(weight.shape)}")
    if weight.is_meta:
        raise UserError(f"weight {tuple(weight.shape)} is on the meta device and has no values: materialise the "
                        "model first (model.to_empty(device='cpu'), then load or initialise its weights)")
    if not torch.isfinite(weight).all():
        raise UserError("weight contains NaN or inf values")


def _padding4(padding, kernel, dilation) -> tuple[int, int, int, int]:
    """-> (top, bottom, left, right) from an int, a pair, "same", "valid" or None (the default)."""
    totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
    if padding is None:                                      # k_eff // 2 on every side
        return tuple(p for t in totals for p in ((t + 1) // 2, (t + 1) // 2))
    if padding == "same":                                    # PyTorch's: the extra row at the end
        return tuple(p for t in totals for p in (t // 2, t - t // 2))
    if padding == "valid":
        return 0, 0, 0, 0
    ph, pw = size_pair(padding, "padding", minimum=0)
    return ph, ph, pw, pw


# ----------------------------------------------------------------------------- the operator
@dataclasses.dataclass(frozen=True)
class ConvOperator:
    """A resolved conv operator (see the module docstring).  ``weight`` is detached and at least
    float32; ``padding`` is ``(top, bottom, left, right)`` (used in ``"zeros"`` mode)."""

    weight: torch.Tensor
    input_size: tuple
    stride: tuple
    dilation: tuple
    groups: int
    padding: tuple
    padding_mode: str

    @property
    def c_out(self) -> int:
        return self.weight.shape[0]

    @property
    def c_in(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def kernel_size(self) -> tuple:
        return tuple(self.weight.shape[-2:])

    @property
    def effective_kernel(self) -> tuple:
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))

    @property
    def output_size(self) -> tuple:
        if self.padding_mode == "circular":
            return tuple(n // s for n, s in zip(self.input_size, self.stride))
        (t, b, l, r), (h, w) = self.padding, self.input_size
        return tuple((n + p - k) // s + 1 for n, p, k, s in
                     zip((h, w), (t + b, l + r), self.effective_kernel, self.stride))

    @property
    def shape(self) -> tuple:
        """(rows, columns) of the matrix: ``(C_out oh ow, C_in h w)``."""
        return self.c_out * math.prod(self.output_size), self.c_in * math.prod(self.input_size)

    @property
    def patchwise(self) -> bool:
        """Every output pixel reads its own input pixels (``k_eff <= s`` and, with zero padding, no
        padding): the operator is one matrix per pixel and group, see :meth:`patch_matrix`."""
        fits = all(k <= s for k, s in zip(self.effective_kernel, self.stride))
        return fits and (self.padding_mode == "circular" or not any(self.padding))

    def patch_matrix(self) -> torch.Tensor:
        """``(groups, C_out / groups, C_in / groups * kh * kw)``: the matrix of one output pixel
        per group when :attr:`patchwise`; its singular values, each ``oh * ow`` times, plus zeros,
        are the operator's."""
        g = self.groups
        return self.weight.reshape(g, self.c_out // g, -1)

    def dilated_weight(self) -> torch.Tensor:
        """The weight with ``d - 1`` zeros between taps: ``(C_out, C_in / g, kh_eff, kw_eff)``."""
        if self.dilation == (1, 1):
            return self.weight
        (dh, dw), (kh, kw) = self.dilation, self.effective_kernel
        out = self.weight.new_zeros(*self.weight.shape[:2], kh, kw)
        out[..., ::dh, ::dw] = self.weight
        return out

    def with_mode(self, padding_mode: str) -> "ConvOperator":
        return dataclasses.replace(self, padding_mode=_check_mode(padding_mode, self))

    def enclosing_circular(self) -> "ConvOperator":
        """The circular operator of which this zero-padded one is a restriction, so that its norm
        is an upper bound of this operator's: the same kernel on the torus of the padded input
        (``h + top + bottom``, rounded up to a multiple of the stride; the same for the width).
        Embedding the input in that torus with zeros around it is an isometry, no output pixel of
        the zero-padded conv reads across the seam, so its rows are rows of the circular conv up to
        a shift of the input (a unitary map).  A circular operator is returned as it is."""
        if self.padding_mode == "circular":
            return self
        if self.padding_mode == "wrap":
            raise UserError(f"a circularly padded conv whose output {self.output_size} is not the torus's (padding "
                            f"{self.padding} on input_size {self.input_size}, stride {self.stride}) repeats or skips "
                            "rows of a circular conv: no circular operator gives its norm")
        if self.padding_mode != "zeros":
            raise UserError(f"a {self.padding_mode}-padded conv is no restriction of a circular one (its padded "
                            "pixels copy input pixels): no circular operator bounds its norm")
        t, b, l, r = self.padding
        grid = tuple(-(-(n + p) // s) * s for n, p, s in zip(self.input_size, (t + b, l + r), self.stride))
        return dataclasses.replace(self, input_size=grid, padding_mode="circular")

    def to(self, dtype) -> "ConvOperator":
        return dataclasses.replace(self, weight=self.weight.to(dtype))

    # -- application
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C_in, h, w) -> (B, C_out, oh, ow)``."""
        kw = dict(stride=self.stride, dilation=self.dilation, groups=self.groups)
        if self.padding_mode == "zeros":
            t, b, l, r = self.padding
            if t == b and l == r:
                return F.conv2d(x, self.weight, padding=(t, l), **kw)
            return F.conv2d(F.pad(x, (l, r, t, b)), self.weight, **kw)
        ih, iw = self.pad_indices(x.device)
        return F.conv2d(x[..., ih, :][..., iw], self.weight, **kw)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The adjoint of :meth:`forward`: ``y (B, C_out, oh, ow) -> (B, C_in, h, w)``."""
        (h, w), (kh, kw) = self.input_size, self.effective_kernel
        if self.padding_mode == "zeros":
            t, b, l, r = self.padding
            padded = (h + t + b, w + l + r)
        else:
            ih, iw = self.pad_indices(y.device)
            padded = (len(ih), len(iw))
        extra = tuple(p - ((o - 1) * s + k) for p, o, s, k in
                      zip(padded, y.shape[-2:], self.stride, (kh, kw)))
        z = F.conv_transpose2d(y, self.weight, stride=self.stride, dilation=self.dilation,
                               groups=self.groups, output_padding=extra)
        if self.padding_mode == "zeros":
            return z[..., t:t + h, l:l + w]
        # adjoint of "pad by indexing, then valid conv": add each padded row and column onto its source
        x = z.new_zeros(*z.shape[:-2], h, z.shape[-1]).index_add_(-2, ih, z)
        return x.new_zeros(*x.shape[:-1], w).index_add_(-1, iw, x)

    def pad_indices(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """For a padding by indexing (every mode but ``"zeros"``): the input row and column that
        each row and column of the padded input reads."""
        (h, w), (kh, kw) = self.input_size, self.effective_kernel
        if self.padding_mode == "circular":
            return _wrap_index(h, kh, device), _wrap_index(w, kw, device)
        t, b, l, r = self.padding
        return (_source_index(torch.arange(-t, h + b, device=device), h, self.padding_mode),
                _source_index(torch.arange(-l, w + r, device=device), w, self.padding_mode))

    @property
    def dense_affordable(self) -> bool:
        """Whether :meth:`matrix` may be built: smaller side at most ``DENSE_LIMIT``, at most
        ``DENSE_ENTRIES`` entries."""
        rows, cols = self.shape
        return min(rows, cols) <= DENSE_LIMIT and rows * cols <= DENSE_ENTRIES

    def row_taps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row of the matrix as ``C_in / g * kh * kw`` taps: column indices and values, both
        ``(C_out oh ow, C_in / g * kh * kw)``; taps on zero padding have value 0 (column 0)."""
        dev = self.weight.device
        (h, w), (oh, ow), (sh, sw), (dh, dw) = self.input_size, self.output_size, self.stride, self.dilation
        c_in_g, kh, kw = self.weight.shape[1:]
        o = torch.arange(self.c_out, device=dev)[:, None, None, None, None, None]
        i = torch.arange(oh, device=dev)[:, None, None, None, None]
        j = torch.arange(ow, device=dev)[:, None, None, None]
        c = torch.arange(c_in_g, device=dev)[:, None, None]
        a = torch.arange(kh, device=dev)[:, None]
        b = torch.arange(kw, device=dev)
        if self.padding_mode == "circular":
            top, left = self.effective_kernel[0] // 2, self.effective_kernel[1] // 2
        else:
            top, left = self.padding[0], self.padding[2]
        r, q = sh * i + dh * a - top, sw * j + dw * b - left
        if self.padding_mode != "zeros":
            r, q = _source_index(r, h, self.padding_mode), _source_index(q, w, self.padding_mode)
        keep = (r >= 0) & (r < h) & (q >= 0) & (q < w)
        channel = (o // (self.c_out // self.groups)) * c_in_g + c
        shape = (self.c_out, oh, ow, c_in_g, kh, kw)
        cols = torch.where(keep, (channel * h + r) * w + q, 0).expand(shape)
        values = (self.weight[:, None, None] * keep).expand(shape)
        return cols.reshape(-1, c_in_g * kh * kw), values.reshape(-1, c_in_g * kh * kw)

    def matrix(self) -> torch.Tensor:
        """Dense ``(C_out oh ow, C_in h w)`` matrix, rows and columns C-order flattenings of
        ``(C, H, W)``, written tap by tap (an index scatter; no convolution is run)."""
        rows, cols = self.shape
        if not self.dense_affordable:
            raise UserError(
                f"dense operator would be {rows} x {cols}, above DENSE_LIMIT={DENSE_LIMIT} on its "
                f"smaller side or DENSE_ENTRIES={DENSE_ENTRIES} entries; use conv_operator_norm / "
                "conv_min_singular_value instead")
        index, values = self.row_taps()
        return self.weight.new_zeros(rows, cols).scatter_add_(1, index, values)  # padded taps may coincide


def _wrap_index(n: int, k: int, device) -> torch.Tensor:
    """Rows of the circularly padded input: ``n + k - 1`` indices starting at ``-(k // 2)``."""
    return torch.arange(-(k // 2), n + k - 1 - k // 2, device=device) % n


def _source_index(i: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """The input index that padded index ``i`` (in ``[-pad, n + pad)``) reads under ``mode``."""
    if mode in ("circular", "wrap"):
        return i % n
    if mode == "replicate":
        return i.clamp(0, n - 1)
    i = i.abs()                                               # reflect: the edge pixel is not repeated
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def _check_mode(padding_mode, op_or_conv) -> str:
    if padding_mode not in OPERATOR_MODES:
        raise UserError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if padding_mode == "reflect":
        (t, b, l, r), (h, w) = op_or_conv.padding, op_or_conv.input_size
        if max(t, b) >= h or max(l, r) >= w:
            raise UserError(f"reflect padding {op_or_conv.padding} (top, bottom, left, right) must be smaller "
                            f"than the input_size {op_or_conv.input_size}")
    if padding_mode == "circular":
        size, stride = op_or_conv.input_size, op_or_conv.stride
        if size[0] % stride[0] or size[1] % stride[1]:
            raise UserError(f"circular padding needs input_size {size} divisible by stride {stride}")
    return padding_mode


def _from_conv(conv: nn.Conv2d, given: dict) -> dict:
    """The conv's own settings.  ``padding_mode`` may be given (the circular operator of a
    zero-padded layer is a question worth asking); any other keyword that contradicts the conv is
    an error."""
    own = dict(stride=tuple(conv.stride), dilation=tuple(conv.dilation), groups=conv.groups,
               padding=conv.padding if isinstance(conv.padding, str) else tuple(conv.padding))
    for key, value in given.items():
        if value is None or key == "padding_mode":
            continue
        norm = value if isinstance(value, str) or key == "groups" else size_pair(value, key, 0)
        if norm != own[key]:
            raise UserError(f"{key}={value!r} contradicts the conv's own {key}={own[key]!r}: "
                            "pass conv.weight to measure another operator")
    return {**own, "padding_mode": given["padding_mode"] or conv.padding_mode}


def conv_operator(conv_or_weight, input_size, *, stride=None, padding=None, dilation=None, groups=None,
                  padding_mode=None) -> ConvOperator:
    """Resolve an ``nn.Conv2d`` or a weight ``(C_out, C_in / groups, kh, kw)`` and the keywords into
    a :class:`ConvOperator` on inputs of ``input_size`` (``n`` or ``(h, w)``), validating all."""
    given = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=padding_mode)
    if isinstance(conv_or_weight, nn.Conv2d):
        settings = _from_conv(conv_or_weight, given)
        weight = conv_or_weight.weight
    elif isinstance(conv_or_weight, torch.Tensor):
        settings = {k: v for k, v in given.items()}
        settings.update(stride=1 if stride is None else stride, dilation=1 if dilation is None else dilation,
                        groups=1 if groups is None else groups, padding_mode=padding_mode or "circular")
        weight = conv_or_weight
    else:
        raise UserError(f"expected an nn.Conv2d or a weight tensor, got {type(conv_or_weight).__name__}")
    check_weight(weight)
    weight = weight.detach()
    if weight.dtype in (torch.float16, torch.bfloat16):
        weight = weight.float()
    groups = _integral(settings["groups"], "groups", 1)
    if weight.shape[0] % groups:
        raise UserError(f"groups={groups} does not divide the weight's C_out={weight.shape[0]}")
    stride, dilation = size_pair(settings["stride"], "stride"), size_pair(settings["dilation"], "dilation")
    size = size_pair(input_size, "input_size")
    pad = _padding4(settings["padding"], weight.shape[-2:], dilation)
    op = ConvOperator(weight, size, stride, dilation, groups, pad, "zeros")
    own = isinstance(conv_or_weight, nn.Conv2d) and padding_mode is None   # the layer's own padding mode
    op = with_layer_mode(op, settings["padding_mode"], own=own)
    if min(op.output_size) < 1:
        raise UserError(f"input_size {size} with padding {settings['padding']!r} is smaller than the "
                        f"kernel {op.effective_kernel}")
    return op


def as_layer(op: ConvOperator) -> ConvOperator:
    """``op`` (its padding, any mode) as the operator of an ``nn.Conv2d(padding_mode="circular")``
    with that padding (see the module docstring): ``"circular"`` (the torus) when the layer's output
    is ``(h / s) x (w / s)``, ``"zeros"`` when it pads nothing, ``"wrap"`` otherwise."""
    zero = dataclasses.replace(op, padding_mode="zeros")
    if not any(op.padding):
        return zero
    torus = all(n % s == 0 and o == n // s for n, s, o in zip(op.input_size, op.stride, zero.output_size))
    return dataclasses.replace(op, padding_mode="circular" if torus else "wrap")


def with_layer_mode(op: ConvOperator, padding_mode: str, *, own: bool) -> ConvOperator:
    """``op`` in ``padding_mode``; where that is a layer's own circular padding (``own``), the
    layer's operator (:func:`as_layer`) rather than the kernel's torus conv."""
    return as_layer(op) if own and padding_mode == "circular" else op.with_mode(padding_mode)

"""Spectral normalisation of the operator a layer applies: a drop-in for torch's ``spectral_norm``.

``torch.nn.utils.parametrizations.spectral_norm`` divides a conv's weight by the largest singular
value of the reshaped ``(C_out, C_in / g * kh * kw)`` matrix, which is not the norm of the
convolution (PyTorch issue 99149; ``benchmarks/regularisers.py`` measures 22-56 % above with zero
padding).  ``spectral_norm(conv, input_size)`` here divides by the norm of the conv operator itself
(:class:`procres.spectral.operator.ConvOperator`: the layer's stride, padding, dilation, groups and
padding mode on ``C_in x h x w`` inputs).  What it returns: ``mode="normalize"``: ``W bound / sigma``
(Miyato et al. 2018); ``mode="clamp"``: ``W / max(1, sigma / bound)`` (Gouk et al. 2021: only layers
above the bound are scaled).

How sigma is obtained (``exact``; docs/benchmarks.md has the measurements behind the default):

* ``exact=True``, the default for convs with zero or circular padding (or none): an exact norm,
  recomputed at every forward, no vectors kept.  A patch conv (kernel <= stride, no padding):
  the SVD of its patch matrices.  Circular padding: the largest singular value of the FFT /
  polyphase spectrum (:func:`procres.spectral.symbol.circular_norm`).  Zero padding: the same for
  the circular operator on the padded grid
  (:meth:`~procres.spectral.operator.ConvOperator.enclosing_circular`), of which the layer's
  operator is a restriction, so ``sigma`` is a rigorous *upper* bound and the normalised layer's
  norm is at most ``bound`` at every step (measured 0.1-0.7 % below it for 3x3 convs with 16-64
  channels at 16x16 and 32x32 inputs, 2.6 % at 8x8; further below for few channels, dilated or
  large kernels on small grids, e.g. 5-14 % for 2-4 channels at 6x6-8x8: the border matters more
  where the kernel is large against the grid).  A circular conv whose padding is not the torus's
  (:func:`procres.spectral.operator.as_layer`: ``padding=2`` with a 3x3 kernel repeats torus rows)
  has no exact route: its default is the power iteration on the layer, and ``exact=True`` is
  refused; at an input size its stride does not divide, the default switches to the power
  iteration at the first forward (``exact=True`` is refused there).
  The gradient flows through the top frequency's singular pair (a subgradient where the top value
  is repeated).  Cost: one small Hermitian eigenproblem per frequency and step.
* ``exact=False`` (the default for reflect / replicate padding and for ``nn.Linear``): torch's
  power iteration on the true operator (``F.conv2d`` and its adjoint), ``n_power_iterations`` per
  training forward; ``vectors=k > 1`` keeps ``k`` vectors (a block power iteration, sigma the
  Rayleigh-Ritz value of the block).  ``sigma`` is then a lower bound that lags while training
  moves the weight (the optimiser grows directions the vectors do not see): the trained layers
  measured 0.4-8 % above ``bound`` with one iteration per step, with 1 or 4 vectors.  The exact
  route costs more per step (measured 2.00-2.24x the step time of a small conv net on a CPU,
  against 1.10-1.24x for one vector and 1.32-1.49x for four): choose ``exact=False`` where speed
  matters more than the bound.  ``nn.Linear`` gets torch's algorithm unchanged (bit for bit with
  ``bound=1``, ``mode="normalize"``: the same random draws, the same operations), so that swapping
  torch's for ours changes nothing there; ``exact=True`` gives its exact norm.

The power iteration mirrors torch's ``_SpectralNorm`` (torch 2.13):

* a ``torch.nn.utils.parametrize`` parametrization: ``state_dict`` holds
  ``parametrizations.<name>.original`` and the buffers ``parametrizations.<name>.0._u`` / ``._v``,
  ``remove_parametrizations(module, name)`` leaves the normalised weight, ``parametrize.cached()``
  computes it once per context, assigning ``module.<name> = W`` stores ``W`` as the original;
* ``v`` lives in the input space (``(in,)`` for a Linear, ``(C_in, h, w)`` for a conv; a leading
  ``k`` with several vectors), ``u`` in the output space (``(out,)``, ``(C_out, oh, ow)``); at set-up
  both are drawn from N(0, 1) (u first), normalised and advanced ``INIT_ITERATIONS`` = 15 power
  iterations; each forward in training mode advances them ``n_power_iterations`` more, in place
  (DataParallel replicas share them), under no_grad, with ``u <- A v / ||A v||``,
  ``v <- A^T u / ||A^T u||``; eval mode uses them as they are;
* ``sigma = <u, A v>`` with clones of ``u`` and ``v`` (so autograd sees fixed vectors when a loss
  adds two forwards, as in GAN training): the gradient flows through ``W`` and through ``sigma``
  (``d sigma / d W = u v^T``, for a conv the weight gradient of ``conv(v)`` against ``u``), as in torch.
  A conv in training mode computes it as ``<A^T u, v>`` from the last power step's adjoint, which
  runs with grad (equal up to rounding, the same gradient, one single-image conv fewer per step).

The input size of a conv (``input_size=None``).  A parametrization's forward sees only the weight,
so the size is learnt by a forward pre-hook on the module (``_InputSizeHook``, registered with the
parametrization): on the first forward it resolves the operator at the input's ``(h, w)`` (and
draws and warms up the vectors); on every later forward it checks the size and raises a
:class:`UserError` naming both sizes when it differs (the norm is the norm at one size; a net run
at several sizes needs the size it must be bounded at, or its own parametrization per size).
Until then ``module.weight`` raises a UserError saying so, and the vectors are empty buffers that
``load_state_dict`` resizes: with the power iteration, a state_dict saved after training loads into
a freshly parametrised module without a forward (the input size is read off ``v``'s shape); the
exact route keeps no vectors, so there the size comes from the first forward (or ``input_size``).  The registration uses
``unsafe=True`` in this one case (torch's consistency check would evaluate the weight before the
size is known), so it skips torch's extra power iteration at registration; with ``input_size``
given, the registration is torch's (its check runs the forward once, advancing the vectors once
in training mode, like torch's).  After ``remove_parametrizations`` the hook stays on the module
and does nothing.  Under DDP with ``input_size=None`` each rank draws its own vectors at the
first forward until the next buffer broadcast: pass ``input_size`` there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm as _TorchSpectralNorm

from procres.errors import UserError
from procres.spectral.operator import (PADDING_MODES, ConvOperator, conv_operator, finite_number, positive_int,
                                      size_pair, with_layer_mode)
from procres.spectral.symbol import circular_norm

__all__ = ["spectral_norm", "OperatorSpectralNorm", "MODES", "INIT_ITERATIONS", "default_exact"]

MODES = ("normalize", "clamp")
#: Power iterations at set-up, as torch's ``_SpectralNorm``.
INIT_ITERATIONS = 15
#: The ConvOperator fields that do not depend on the weight's values.
_FIELDS = ("input_size", "stride", "dilation", "groups", "padding", "padding_mode")


# ----------------------------------------------------------------------------- the operator
def conv_fields(weight_shape, settings: dict, input_size) -> dict:
    """The resolved, validated :class:`ConvOperator` fields (all but the weight) of a conv with a
    weight of ``weight_shape (C_out, C_in / g, kh, kw)`` and ``settings`` (stride, padding,
    dilation, groups, padding_mode; ``own_padding``: the mode is the layer's own, so that its
    circular padding is read as the layer's, :func:`procres.spectral.operator.as_layer`) on inputs of
    ``input_size``; UserError when they do not fit."""
    settings = dict(settings)
    own, mode = settings.pop("own_padding", False), settings.pop("padding_mode")
    op = conv_operator(torch.ones(weight_shape, dtype=torch.float64), input_size, padding_mode="zeros", **settings)
    op = with_layer_mode(op, mode, own=own)
    return {name: getattr(op, name) for name in _FIELDS}


def torus_padding(module: nn.Conv2d) -> bool:
    """Whether ``module``'s own circular padding makes it the torus conv (at every input size the
    stride divides): ``k_eff - s <= top + bottom < k_eff`` rows, the same for the columns, i.e. an
    output of ``(h / s) x (w / s)``; or it pads nothing (a valid conv)."""
    fields = conv_fields(module.weight.shape, _settings(module, None), _nominal(module))
    return fields["padding_mode"] != "wrap"


def _nominal(module: nn.Conv2d) -> tuple[int, int]:
    """An input size the stride divides and larger than the padded kernel (where :func:`torus_padding`
    decides, the condition on the padding not depending on the size)."""
    k_eff = [d * (k - 1) + 1 for k, d in zip(module.kernel_size, module.dilation)]
    pads = (0, 0) if isinstance(module.padding, str) else module.padding
    return tuple(s * (k + 2 * p + 1) for s, k, p in zip(module.stride, k_eff, pads))


def _settings(module: nn.Conv2d, padding_mode: str | None) -> dict:
    """The ConvOperator settings of ``module`` (``padding_mode``: None for its own)."""
    return dict(stride=tuple(module.stride), dilation=tuple(module.dilation), groups=module.groups,
                padding=module.padding if isinstance(module.padding, str) else tuple(module.padding),
                padding_mode=padding_mode or module.padding_mode, own_padding=padding_mode is None)


def _orthonormalize_(x: torch.Tensor, out: torch.Tensor, eps: float) -> None:
    """``out <- x`` with orthonormal rows, in place; ``x, out (k, ...)``.  One vector: torch's
    ``x / max(||x||, eps)``; several: the Q factor of their QR decomposition."""
    if x.shape[0] == 1:
        F.normalize(x.flatten(), dim=0, eps=eps, out=out.view(-1))
    else:
        out.copy_(torch.linalg.qr(x.flatten(1).T)[0].T.reshape(out.shape))


def _top(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The largest singular value of ``a b^T`` for batches ``a, b (k, ...)``: ``<a, b>`` for one
    vector (torch's Rayleigh quotient), the Rayleigh-Ritz value of the block for several."""
    if a.shape[0] == 1:
        return torch.vdot(a.flatten(), b.flatten())
    return torch.linalg.svdvals(a.flatten(1) @ b.flatten(1).T)[0]


def _scale(weight: torch.Tensor, sigma: torch.Tensor, bound: float, mode: str) -> torch.Tensor:
    """``W bound / sigma`` (normalize) or ``W / max(1, sigma / bound)`` (clamp)."""
    if mode == "normalize":
        return weight / (sigma / bound)          # sigma / 1.0 is sigma: torch's W / sigma to the bit
    return weight / torch.clamp(sigma / bound, min=1.0)


class OperatorSpectralNorm(nn.Module):
    """The parametrization ``W -> W bound / sigma(W)`` (or clamped) of :func:`spectral_norm`.

    ``conv``: None for a matrix (Linear: ``W (out, in)``), else the conv's settings (stride,
    padding, dilation, groups, padding_mode) for ``W (C_out, C_in / g, kh, kw)``.  ``input_size``:
    the conv's ``(h, w)``, or None until :meth:`set_input_size` (the module's pre-hook) gives it.
    """

    def __init__(self, weight: torch.Tensor, conv: dict | None, input_size=None, *, n_power_iterations=1,
                 eps=1e-12, bound=1.0, mode="normalize", exact=False, vectors=1, exact_chosen=True):
        super().__init__()
        self.conv, self.exact, self.vectors = conv, bool(exact), vectors
        #: False when ``exact`` is :func:`default_exact`'s: a size the exact route cannot take (a
        #: circular conv whose stride does not divide it) then switches to the power iteration.
        self.exact_chosen = exact_chosen
        self.n_power_iterations, self.eps, self.bound, self.mode = n_power_iterations, eps, float(bound), mode
        self.weight_shape = tuple(weight.shape)
        self.input_size, self._fields = None, None
        if not self.exact:
            self._add_vectors(weight)
        if conv is None:
            self._start(weight.detach())
        elif input_size is not None:
            self.set_input_size(input_size, weight)

    def extra_repr(self) -> str:
        size = "matrix" if self.conv is None else f"input_size={self.input_size}"
        how = "exact" if self.exact else f"n_power_iterations={self.n_power_iterations}, vectors={self.vectors}"
        return f"{size}, {how}, bound={self.bound}, mode={self.mode!r}"

    # -- the operator and its adjoint, on batches (k, ...) of vectors
    def operator(self, weight: torch.Tensor) -> ConvOperator:
        """The conv operator of ``weight``, built directly (``conv_operator`` would detach it):
        differentiable in ``weight``."""
        return ConvOperator(weight, **self._fields)

    def vector_shapes(self) -> tuple[tuple, tuple]:
        """``(v's shape, u's shape)`` of one vector: ``((in,), (out,))`` or
        ``((C_in, h, w), (C_out, oh, ow))``; the buffers hold ``vectors`` of them (a leading
        dimension when there are several)."""
        if self.conv is None:
            return self.weight_shape[1:], self.weight_shape[:1]
        op = self.operator(torch.empty(self.weight_shape, device="meta"))
        return (op.c_in, *op.input_size), (op.c_out, *op.output_size)

    def _block(self, buffer: torch.Tensor) -> torch.Tensor:
        """A vector buffer as a batch ``(k, ...)`` (a view: writes go to the buffer)."""
        return buffer.view(self.vectors, *buffer.shape[self.vectors > 1:])

    def _forward_map(self, weight, v):
        if self.conv is None:                     # torch's mv for one vector: the same bits
            return torch.mv(weight, v[0])[None] if len(v) == 1 else v @ weight.T
        return self.operator(weight).forward(v)

    def _adjoint_map(self, weight, u):
        if self.conv is None:
            return torch.mv(weight.H, u[0])[None] if len(u) == 1 else u @ weight.conj()
        return self.operator(weight).adjoint(u)

    # -- set-up
    def set_input_size(self, input_size, weight: torch.Tensor | None = None) -> None:
        """Resolve the conv operator at ``input_size``; with ``weight``, draw and warm up the vectors."""
        fields = conv_fields(self.weight_shape, self.conv, input_size)
        if self.exact and fields["padding_mode"] == "wrap" and not self.exact_chosen:
            self.exact = False
            self._add_vectors(weight if weight is not None else torch.empty(0))
        if self.exact and fields["padding_mode"] == "wrap":
            raise UserError(f"the exact spectral norm needs the torus conv, but this circular conv on input_size "
                            f"{fields['input_size']} with stride {fields['stride']} is not one (the stride does not "
                            "divide the size): pass exact=False for the power iteration on the layer's operator")
        self._fields = fields
        self.input_size = self._fields["input_size"]
        if weight is not None:
            self._start(weight.detach())

    def _add_vectors(self, like: torch.Tensor) -> None:
        """The power iteration's buffers ``_u``, ``_v``: empty until the size is known
        (``load_state_dict`` resizes them)."""
        self.register_buffer("_u", like.new_empty(0))
        self.register_buffer("_v", like.new_empty(0))

    def _buffer_shapes(self) -> tuple[tuple, tuple]:
        v_shape, u_shape = self.vector_shapes()
        lead = (self.vectors,) if self.vectors > 1 else ()
        return (*lead, *u_shape), (*lead, *v_shape)

    def _start(self, weight) -> None:
        if self.exact:
            return
        u_shape, v_shape = self._buffer_shapes()
        # torch: u then v from N(0, 1), normalised, 15 power iterations; resized in place so that a
        # module replica or DDP keeps pointing at the same buffers
        u = self._block(self._u.resize_(u_shape).normal_(0, 1))
        v = self._block(self._v.resize_(v_shape).normal_(0, 1))
        _orthonormalize_(u, u, self.eps)
        _orthonormalize_(v, v, self.eps)
        self._power_method(weight, INIT_ITERATIONS)

    @torch.no_grad()
    def _power_method(self, weight: torch.Tensor, iterations: int) -> None:
        u, v = self._block(self._u), self._block(self._v)
        for _ in range(iterations):
            _orthonormalize_(self._forward_map(weight, v), u, self.eps)
            _orthonormalize_(self._adjoint_map(weight, u), v, self.eps)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        v = state_dict.get(prefix + "_v")
        if self.exact and not self.exact_chosen and isinstance(v, torch.Tensor):
            self.exact = False                                 # saved after the switch of set_input_size
            self._add_vectors(v)
        if not self.exact and isinstance(v, torch.Tensor) and v.shape != self._v.shape:
            if self.conv is None or self.input_size is not None or v.dim() != 3 + (self.vectors > 1):
                raise UserError(f"the state_dict's spectral-norm vector v has shape {tuple(v.shape)}, this "
                                f"spectral_norm's has {tuple(self._v.shape)} (input_size={self.input_size})")
            self.set_input_size(tuple(v.shape[-2:]))          # a fresh module learns the size from v
            u_shape, v_shape = self._buffer_shapes()
            self._u.resize_(u_shape)
            self._v.resize_(v_shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # -- the parametrization
    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """The largest singular value used, a 0-d tensor differentiable in ``weight``: exact
        (``exact``) or the power iteration's Rayleigh quotient (advanced in training mode)."""
        if self.conv is not None and self._fields is None:
            raise UserError("spectral_norm(conv) does not know the conv's input size yet: run one forward "
                            "pass first, or pass input_size= to spectral_norm")
        if self.exact:
            return self._exact_sigma(weight)
        if self.conv is not None and self.training:
            return self._advance_and_sigma(weight)
        if self.training:
            self._power_method(weight, self.n_power_iterations)
        u = self._block(self._u).clone(memory_format=torch.contiguous_format)   # see torch's _SpectralNorm:
        v = self._block(self._v).clone(memory_format=torch.contiguous_format)   # fixed vectors for autograd
        return _top(u, self._forward_map(weight, v))

    def _exact_sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """The matrix's norm; a patch conv's patch matrices'; otherwise the norm of the circular
        operator (for zero padding on the padded grid: an upper bound of the layer's).  Half
        precisions are decomposed in float32 (LAPACK and the FFT need it); a weight holding NaN or
        inf raises FloatingPointError (a diverged training), not LAPACK's error."""
        low = weight.dtype in (torch.float16, torch.bfloat16)
        w = weight.float() if low else weight
        try:
            if self.conv is None:
                sigma = torch.linalg.svdvals(w)[0]
            else:
                op = self.operator(w)
                sigma = torch.linalg.svdvals(op.patch_matrix()).max() if op.patchwise else \
                    circular_norm(op.enclosing_circular())
        except torch.linalg.LinAlgError:
            if bool(torch.isfinite(weight).all()):
                raise
            raise FloatingPointError(f"the {tuple(weight.shape)} weight under spectral_norm holds NaN or inf values "
                                     "(the training diverged?): its norm is undefined") from None
        return sigma.to(weight.dtype) if low else sigma

    def _advance_and_sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """Training mode for a conv: torch's power steps and ``<u, A v>``, with the last step's
        adjoint ``z = A^T u`` computed with grad and reused: ``sigma = <z, v>`` with ``v = z / ||z||``
        fixed is ``<u, A v>`` up to rounding, with the same gradient ``u v^T``, one conv fewer
        (several vectors: the same with the block's Rayleigh-Ritz value)."""
        u_buffer, v_buffer = self._block(self._u), self._block(self._v)
        with torch.no_grad():
            self._power_method(weight, self.n_power_iterations - 1)
            _orthonormalize_(self._forward_map(weight, v_buffer), u_buffer, self.eps)
        u = u_buffer.clone(memory_format=torch.contiguous_format)
        z = self._adjoint_map(weight, u)
        with torch.no_grad():
            _orthonormalize_(z, v_buffer, self.eps)
        v = v_buffer.clone(memory_format=torch.contiguous_format)
        return _top(z, v)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _scale(weight, self.sigma(weight), self.bound, self.mode)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value                                          # as torch: assigning W stores W


# ----------------------------------------------------------------------------- the input size
def _parametrization(module: nn.Module, name: str):
    """The :class:`OperatorSpectralNorm` on ``module.<name>`` and the tensor it receives, or None."""
    if not parametrize.is_parametrized(module, name):
        return None
    chain = module.parametrizations[name]
    weight = chain.original
    for p in chain:
        if isinstance(p, OperatorSpectralNorm):
            return p, weight
        weight = p(weight)
    return None


class _InputSizeHook:
    """Forward pre-hook: gives the conv's input size to its spectral norm on the first forward and
    refuses another size later (see the module docstring).  Holds only the tensor's name, so that
    ``copy.deepcopy`` of the module keeps working."""

    def __init__(self, name: str):
        self.name, self.size = name, None

    def __call__(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, torch.Tensor) or x.dim() < 3:
            return None
        size = tuple(x.shape[-2:])
        if size == self.size:                                  # the common case: nothing to look up
            return None
        with torch.no_grad():
            found = _parametrization(module, self.name)
            if found is None:                                  # removed: nothing to do
                return None
            norm, weight = found
            if norm.input_size is None:
                norm.set_input_size(size, weight)
            elif size != norm.input_size:
                raise UserError(f"{type(module).__name__}.{self.name} is spectrally normalised at input size "
                                f"{norm.input_size}, but this forward has input size {size}: the operator norm "
                                "depends on the size; pass the size it must hold at as input_size, or remove "
                                "the parametrization to run at another size")
        self.size = size
        return None


# ----------------------------------------------------------------------------- the door
def _padded(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` pads its input at all (``padding="valid"`` or zeros does not)."""
    return conv.padding == "same" or (not isinstance(conv.padding, str) and any(conv.padding))


def default_exact(module: nn.Module, padding_mode: str | None = None) -> bool:
    """What ``exact=None`` means for ``module`` (see the module docstring): the exact route for a
    conv whose norm it bounds (zero or circular padding, or none), the power iteration otherwise."""
    if not isinstance(module, nn.Conv2d):
        return False
    used = padding_mode or module.padding_mode
    if used == "circular" and padding_mode is None:           # the layer's own: the torus, or not
        return torus_padding(module)
    return used in ("zeros", "circular") or not _padded(module)


def _check(module, name, n_power_iterations, eps, bound, mode, padding_mode, exact, vectors):
    """Everything :func:`spectral_norm` refuses, before it touches the module."""
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise UserError(f"spectral_norm takes an nn.Conv2d or an nn.Linear, got {type(module).__name__}")
    if parametrize.is_parametrized(module, name):
        chain = module.parametrizations[name]
        if any(isinstance(p, (_TorchSpectralNorm, OperatorSpectralNorm)) for p in chain):
            raise UserError(f"{type(module).__name__}.{name} is already spectrally normalised: remove that "
                            f"parametrization first (torch.nn.utils.parametrize.remove_parametrizations(module, "
                            f"{name!r}))")
    weight = getattr(module, name, None)
    ndim = 4 if isinstance(module, nn.Conv2d) else 2
    if not isinstance(weight, torch.Tensor) or weight.dim() != ndim:
        raise UserError(f"{type(module).__name__} has no {ndim}-D parameter or buffer named {name!r}")
    if not weight.is_meta and not bool(torch.isfinite(weight).all()):
        raise UserError(f"{type(module).__name__}.{name} holds NaN or inf values: no norm to normalise by")
    if mode not in MODES:
        raise UserError(f"mode must be one of {MODES}, got {mode!r}")
    finite_number(bound, "bound", positive=True)
    finite_number(eps, "eps", positive=True)
    positive_int(n_power_iterations, "n_power_iterations")
    positive_int(vectors, "vectors")
    if exact not in (None, True, False):
        raise UserError(f"exact must be None, True or False, got {exact!r}")
    if padding_mode is not None and padding_mode not in PADDING_MODES:
        raise UserError(f"padding_mode must be None or one of {PADDING_MODES}, got {padding_mode!r}")
    if isinstance(module, nn.Linear) and padding_mode is not None:
        raise UserError(f"padding_mode is for convs; nn.Linear has none, got padding_mode={padding_mode!r}")
    mode_used = padding_mode or getattr(module, "padding_mode", None)
    if exact and isinstance(module, nn.Conv2d) and mode_used not in ("zeros", "circular") and _padded(module):
        raise UserError(f"exact=True needs zero or circular padding (a circular operator's exact norm bounds "
                        f"those), the conv has padding_mode={mode_used!r}: pass padding_mode='zeros' or "
                        "'circular' to bound that operator, or exact=False for the power iteration")
    if exact and isinstance(module, nn.Conv2d) and mode_used == "circular" and padding_mode is None \
            and not torus_padding(module):
        raise UserError(f"exact=True needs a circular conv whose output is the torus's, but padding={module.padding!r} "
                        f"with kernel {tuple(module.kernel_size)}, dilation {tuple(module.dilation)} and stride "
                        f"{tuple(module.stride)} repeats or skips rows of it: pass exact=False for the power "
                        "iteration on the layer's own operator")
    return weight


def spectral_norm(module, input_size=None, *, name="weight", n_power_iterations=1, eps=1e-12, bound=1.0,
                  mode="normalize", padding_mode=None, exact=None, vectors=1):
    """Spectrally normalise ``module.<name>`` in place and return ``module`` (see the module docstring).

    ``module``: an ``nn.Conv2d`` (the operator on ``C_in x h x w`` inputs with the conv's own stride,
    padding, dilation, groups and padding mode; ``padding_mode`` may ask for another operator, e.g.
    ``"circular"``) or an ``nn.Linear`` (its matrix, as torch).  ``input_size``: the conv's ``n`` or
    ``(h, w)``, or None to take it from the first forward.  ``mode``: ``"normalize"``
    (``W bound / sigma``) or ``"clamp"`` (``W / max(1, sigma / bound)``).  ``exact``: True for the
    exact norm (an upper bound for zero padding), False for the power iteration
    (``n_power_iterations`` per training forward, ``vectors`` at once), None for
    :func:`default_exact`.  Bad arguments raise a UserError and leave the module unchanged.
    """
    weight = _check(module, name, n_power_iterations, eps, bound, mode, padding_mode, exact, vectors)
    exact_chosen = exact is not None
    exact = default_exact(module, padding_mode) if exact is None else exact
    conv, size = None, None
    if isinstance(module, nn.Conv2d):
        conv = _settings(module, padding_mode)
        if input_size is not None:
            size = size_pair(input_size, "input_size")
            conv_fields(weight.shape, conv, size)            # validate before anything is drawn
    elif input_size is not None:
        raise UserError(f"input_size is for convs; nn.Linear's operator is its matrix, got {input_size!r}")
    with torch.no_grad():
        norm = OperatorSpectralNorm(weight, conv, size, n_power_iterations=n_power_iterations, eps=eps,
                                    bound=bound, mode=mode, exact=exact, vectors=vectors,
                                    exact_chosen=exact_chosen)
    parametrize.register_parametrization(module, name, norm, unsafe=conv is not None and size is None)
    if conv is not None:
        module.register_forward_pre_hook(_InputSizeHook(name), with_kwargs=True)
    return module

"""The Procrustes projection: norm-preserving convolutions (Zaeemzadeh et al., TPAMI 2020).

The paper keeps the dimension-changing convolutions of a Procrustes ResNet norm preserving by
projecting their kernels, after optimizer steps, onto kernels whose circular operator has all
non-zero singular values equal to a target ``c``:

1. FFT the kernel on the layer's *output* grid: one matrix per frequency (Sedghi et al. 2019).
2. Replace each matrix by ``c`` times its polar factor ``U V^H`` (the orthogonal Procrustes
   solution: the nearest matrix with all singular values equal).
3. Inverse FFT, keep the real part, crop to the ``k x k`` support.  The crop makes one step only
   approximately norm preserving for ``k > 1``; repeating (``iterations``) alternates projections
   and converges toward the target.  For ``1 x 1`` kernels one step is exact.

Exact projection (default).  A strided convolution is not a stride-1 convolution on the output
grid: for ``k > 1`` and stride ``s`` the exact operator is the polyphase one
(``procres.spectral.polyphase_symbol``): per frequency of the ``(h/s) x (w/s)`` output grid a
``C_out x (C_in ph pw)`` block row (``ph = min(kh, s)`` phases that hold kernel taps).  We
project that matrix, so the projection acts on the operator the layer really applies.  For
``k = 1`` it reduces to ``c * polar(W)`` (the same at every frequency), and for stride 1 it is the
paper's projection.

Target.  An operator of rank ``r`` with output dimension ``d_out`` and all non-zero singular values
``c`` has ``E ||A^T g||^2 / ||g||^2 = r c^2 / d_out`` for isotropic ``g``: the backward norm is kept
in expectation for ``c = sqrt(d_out / r)``.  Per frequency the rank is
``r = min(C_out, C_in ph pw)``, so the default target is ``sqrt(C_out / min(C_out, C_in ph pw))``.
For the authors' layers (stride-1 ``conv1`` 3 -> 64 and the ``1 x 1`` stride-2 transitions) that is
their ``sqrt(C_out / C_in)``; for a ``3 x 3`` stride-2 conv 64 -> 128 it is 1 (then
``A A^T = I``: the backward map is an isometry), and for a stride-1 conv with
``C_out < C_in`` it is 1 rather than ``sqrt(C_out / C_in) < 1``, which would shrink every gradient.

``faithful=True`` reproduces the authors' released code instead (REFERENCE.md section 4): the
stride is ignored (stride-1 FFT of the kernel on the output grid), the polar factor comes from a
real ``2 C`` block embedding ``[[Re, -Im], [Im, Re]]`` and 10 coupled Newton-Schulz iterations
(not converged for ill-conditioned frequencies), the imaginary part is read back from the wrong
block, which returns ``conj(polar(A))`` (a spatially flipped kernel, harmless for ``1 x 1``), then
the real part of the inverse FFT is cropped; the target is ``sqrt(C_out / C_in)``.  After a few
applications a ``3 x 3`` kernel collapses onto one corner tap.

Arguments.  ``project_kernel`` and ``project_conv_`` take an ``nn.Conv2d`` (its own stride and
groups; a contradicting keyword is an error) or a weight (``stride=None`` and ``groups=None`` mean
1).  A grouped conv is block-diagonal over its groups and is projected group by group, to the
per-group target of ``norm_preserving_target``.  Dilated kernels larger than 1x1 are refused (the
projected kernel would need taps between the dilated ones).

The hook (``register_procrustes_hook``) projects each listed layer after every optimizer step
with probability ``p`` (the authors' ``regul_freq`` = 0.5), drawing from its own seeded
``torch.Generator`` so that every DDP rank makes the same decisions; a layer whose weights are
not finite when it is due raises ``FloatingPointError`` naming it.  ``attach_procrustes`` takes
the zoo models' ``transitions()``, or, for any model, the convs named by ``convs=`` at the input
sizes one forward pass of ``example_input`` shows.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from procres.convop import _check_weight, size_pair
from procres.device_projection import device_route, exact_step_on_device
from procres.errors import UserError
from procres.faithful import check_faithful_grid, faithful_polar, faithful_step
from procres.spectral import norm_preserving_target
from procres.symbol import (
    batched_svdvals,
    check_divisible,
    frequency_classes,
    frequency_independent,
    kernel_from_symbol,
    polyphase_symbol,
)

__all__ = [
    "polar",
    "symbol_polar",
    "faithful_polar",
    "project_kernel",
    "project_conv_",
    "ProjectionReport",
    "ProcrustesHook",
    "register_procrustes_hook",
    "attach_procrustes",
]

_METHODS = ("svd", "eigh", "newton_schulz")


# ----------------------------------------------------------------------------- polar factor
def polar(A, *, method="svd", tol=1e-6, max_iter=100, return_info=False):
    """Polar factor ``U V^H`` of a batch of (complex) matrices.

    ``A (..., m, n)`` real or complex -> ``(..., m, n)``, the nearest matrix with orthonormal
    columns (``m >= n``) or rows (``m < n``).  ``method="svd"``: from the thin SVD; for
    rank-deficient ``A`` the factor is not unique and the SVD picks one.  ``"eigh"``:
    ``A (A^H A)^{-1/2}`` (or ``(A A^H)^{-1/2} A`` for wide ``A``) from the eigendecomposition of the
    smaller Gram matrix: ~1.3x faster than the SVD on CPU and batched-Jacobi friendly on GPU for
    small sides (``3 x 3`` Grams for a 3 -> 64 conv), but its error grows like ``eps kappa^2``
    (5e-10 in float64 for random 3x3 kernels, too much in float32: use float64); eigenvalues below
    ``n eps lambda_max`` count as zero, so rank-deficient input gives a partial isometry.
    ``"newton_schulz"``:
    ``X <- 1.5 X - 0.5 X X^H X`` from ``X_0 = A / ||A||_F``; stops when the relative change
    ``||X_{k+1} - X_k||_F / ||X_k||_F`` of every matrix is below ``tol``.  It cannot diverge
    (singular values stay in ``[0, 1]``); zero singular values stay zero (a partial isometry), and
    singular values below about ``tol * ||A||_F`` may not have grown to 1 when it stops.
    ``return_info=True`` returns ``(X, info)`` with ``info = {"iterations", "converged",
    "residual"}``.
    """
    if not isinstance(A, torch.Tensor) or A.dim() < 2:
        shape = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise UserError(f"A must be a tensor with at least 2 dims, got {shape}")
    if method not in _METHODS:
        raise UserError(f"method must be one of {_METHODS}, got {method!r}")
    if not torch.isfinite(A).all():
        raise UserError("A contains NaN or inf values")
    if method == "svd":
        U, _, Vh = torch.linalg.svd(A, full_matrices=False)
        X, info = U @ Vh, {"iterations": 0, "converged": True, "residual": 0.0}
    elif method == "eigh":
        X, info = _polar_eigh(A), {"iterations": 0, "converged": True, "residual": 0.0}
    else:
        X, info = _newton_schulz(A, tol, max_iter)
    return (X, info) if return_info else X


def _polar_eigh(A):
    tall = A.shape[-2] >= A.shape[-1]
    G = A.mH @ A if tall else A @ A.mH
    lam, V = torch.linalg.eigh(G)
    eps = torch.finfo(lam.dtype).eps
    keep = lam > lam[..., -1:].clamp_min(0) * (G.shape[-1] * eps)
    inv_sqrt = torch.where(keep, lam.clamp_min(torch.finfo(lam.dtype).tiny).rsqrt(),
                           torch.zeros_like(lam))
    S = (V * inv_sqrt[..., None, :].to(V.dtype)) @ V.mH        # G^{-1/2} on its range
    return A @ S if tall else S @ A


def _newton_schulz(A, tol, max_iter):
    if not (tol > 0):
        raise UserError(f"tol must be positive, got {tol!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise UserError(f"max_iter must be a positive int, got {max_iter!r}")
    scale = torch.linalg.matrix_norm(A).clamp_min(torch.finfo(A.real.dtype).tiny)
    X = A / scale[..., None, None]
    wide = A.shape[-2] < A.shape[-1]
    residual, converged, it = float("inf"), False, 0
    for it in range(1, max_iter + 1):
        XXX = (X @ X.mH) @ X if wide else X @ (X.mH @ X)     # the smaller Gram
        X_new = 1.5 * X - 0.5 * XXX
        change = torch.linalg.matrix_norm(X_new - X) / torch.linalg.matrix_norm(X).clamp_min(1e-30)
        X = X_new
        residual = float(change.max()) if change.numel() else 0.0
        if residual <= tol:
            converged = True
            break
    return X, {"iterations": it, "converged": converged, "residual": residual}


# ----------------------------------------------------------------------------- projection
@dataclasses.dataclass
class ProjectionReport:
    """How far the circular operator's non-zero singular values are from ``target`` after the
    projection (computed exactly, polyphase for strided layers).  ``history`` holds
    ``max_rel_error`` before the first and after each iteration."""

    target: float
    sigma_min: float
    sigma_max: float
    max_rel_error: float
    iterations: int
    method: str
    faithful: bool
    stride: tuple
    grid: tuple
    history: list
    groups: int = 1

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _resolve(conv_or_weight, input_size, stride, groups):
    """-> (weight tensor, input size pair, stride pair, groups); validates everything up front.
    An ``nn.Conv2d`` brings its own stride and groups (a keyword contradicting them is an error)."""
    if isinstance(conv_or_weight, nn.Conv2d):
        conv = conv_or_weight
        if tuple(conv.dilation) != (1, 1) and tuple(conv.kernel_size) != (1, 1):
            raise UserError(f"dilated convolutions are not supported, got dilation={tuple(conv.dilation)}: "
                            "the projected kernel would have taps between the dilated ones")
        for key, value, own in (("stride", stride, tuple(conv.stride)), ("groups", groups, conv.groups)):
            if value is not None and (size_pair(value, key) if key == "stride" else value) != own:
                raise UserError(f"{key}={value!r} contradicts the conv's own {key}={own!r}")
        weight, stride, groups = conv.weight, tuple(conv.stride), conv.groups
    elif isinstance(conv_or_weight, torch.Tensor):
        weight = conv_or_weight
    else:
        raise UserError(
            f"expected an nn.Conv2d or a weight tensor, got {type(conv_or_weight).__name__}")
    _check_weight(weight)
    size = size_pair(input_size, "input_size")
    stride = size_pair(1 if stride is None else stride, "stride")
    groups = 1 if groups is None else groups
    if not (isinstance(groups, int) and groups >= 1 and weight.shape[0] % groups == 0):
        raise UserError(f"groups must be a positive int dividing C_out={weight.shape[0]}, got {groups!r}")
    check_divisible(size, stride)
    kh, kw = weight.shape[-2:]
    if kh > size[0] or kw > size[1]:
        raise UserError(
            f"kernel {kh}x{kw} is larger than input_size {size}: the crop back to the kernel "
            "support is undefined")
    return weight, size, stride, groups


def _default_target(weight, stride, groups, faithful):
    if faithful and groups != 1:
        raise UserError(f"faithful=True has no grouped form (the authors' code has none), got groups={groups}")
    c_out, c_in = weight.shape[:2]
    return math.sqrt(c_out / c_in) if faithful else norm_preserving_target(weight, stride, groups=groups)


def _exact_step(w, size, stride, groups, target, method):
    """One exact projection of ``w (C_out, C_in, kh, kw)``, computed in float64 (the polar
    factor of a frequency matrix with condition number kappa loses about ``eps * kappa``: up to
    1e-4 in float32 for He-initialised 3x3 kernels); returns the new kernel in float64."""
    if _stays_on_device(w, stride, groups, False):  # procres.device_projection: no host round trip; every
        return exact_step_on_device(w, size, stride, target)  # method's polar factor, to round-off
    device = w.device
    # Other CUDA weights take the CPU route: cuSOLVER has no batched SVD above 32 x 32, so torch
    # launches one per frequency (H200: 0.26 s for a 64 -> 64 layer on an 8 x 8 grid).  One
    # small copy each way instead.
    w = w.to("cpu", torch.float64)
    c_out = w.shape[0]
    if w.shape[-2:] == (1, 1):                  # the operator is W after subsampling: exact
        blocks = w[..., 0, 0].reshape(groups, c_out // groups, -1)
        new = target * polar(blocks, method=method).reshape(c_out, -1)[..., None, None]
    else:                                       # per group: the rows of its output channels
        symbol = polyphase_symbol(w, size, stride)
        grouped = symbol.reshape(*symbol.shape[:2], groups, c_out // groups, symbol.shape[-1])
        projected = symbol_polar(grouped, size, stride, method=method).reshape(symbol.shape)
        new = kernel_from_symbol(target * projected, w.shape[-2:], size, stride)
    return new.to(device)


def _stays_on_device(w, stride, groups, faithful) -> bool:
    """Whether projecting ``w`` needs no host round trip: a CUDA weight and the authors' step
    (matrix products) or an ungrouped exact step on the device route (``procres.device_projection``)."""
    return w.is_cuda and (faithful or (groups == 1 and device_route(w.shape, stride)))


def _step(w, size, stride, groups, target, method, faithful):
    """One projection of ``w``; the result has ``w``'s dtype (half precisions work in float32)."""
    if faithful:                                # the authors' code runs in float32
        work = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w
        new = faithful_step(work, size, stride, target)
    else:
        new = _exact_step(w, size, stride, groups, target, method)
    return new.to(w.dtype)


def symbol_polar(symbol, input_size, stride=1, *, method="svd"):
    """Polar factor of every matrix of a half-spectrum ``symbol (mh, mw // 2 + 1, ..., p, q)``
    (``procres.spectral.polyphase_symbol``), computed once per conjugate pair: the self-conjugate
    frequencies are real matrices, the mirrored half of columns ``v in {0, mw/2}`` is filled by
    conjugation, so the result is again the half spectrum of a real kernel."""
    size, stride = size_pair(input_size, "input_size"), size_pair(stride, "stride")
    grid = check_divisible(size, stride)
    real, pair, mirror, source = frequency_classes(grid, symbol.device)
    flat = symbol.flatten(0, 1)
    out = torch.empty_like(flat)
    out[pair] = polar(flat[pair], method=method)
    out[real] = polar(flat[real].real, method=method).to(out.dtype)
    out[mirror] = out[source].conj()
    return out.reshape(symbol.shape)


def _operator_sv(w, size, stride, groups):
    """Non-zero singular values of the circular strided operator (structural zeros dropped),
    one copy per conjugate pair and group (enough for min, max and errors)."""
    symbol = polyphase_symbol(w, size, stride)
    symbol = symbol.reshape(*symbol.shape[:2], groups, w.shape[0] // groups, symbol.shape[-1])
    if frequency_independent(w.shape[-2:], stride):  # every frequency holds the same matrix
        return batched_svdvals(symbol[0, 0])
    flat = symbol.flatten(0, 1)
    real, pair, _, _ = frequency_classes(check_divisible(size, stride), flat.device)
    return torch.cat([batched_svdvals(flat[real].real).flatten(),
                      batched_svdvals(flat[pair]).flatten()])


def _project(weight, size, stride, groups, target, method, faithful, iterations, report):
    w = weight.detach()
    if w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()
    errors = []

    def rel_error(w):
        sv = _operator_sv(w, size, stride, groups)
        return sv, float((sv / target - 1).abs().max())

    if report:
        errors.append(rel_error(w)[1])
    for _ in range(iterations):
        w = _step(w, size, stride, groups, target, method, faithful)
        if report:
            sv, err = rel_error(w)
            errors.append(err)
    with torch.no_grad():
        weight.copy_(w)
    if not report:
        return None
    return ProjectionReport(
        target=float(target), sigma_min=float(sv.min()), sigma_max=float(sv.max()),
        max_rel_error=errors[-1], iterations=iterations, method=method, faithful=faithful,
        stride=tuple(stride), grid=(size[0] // stride[0], size[1] // stride[1]), history=errors,
        groups=groups)


def _check_options(method, faithful, iterations, target):
    if method not in _METHODS:
        raise UserError(f"method must be one of {_METHODS}, got {method!r}")
    if not isinstance(faithful, bool):
        raise UserError(f"faithful must be a bool, got {faithful!r}")
    if not (isinstance(iterations, int) and not isinstance(iterations, bool) and iterations >= 1):
        raise UserError(f"iterations must be a positive int, got {iterations!r}")
    if target is not None and not (isinstance(target, (int, float)) and math.isfinite(target)
                                   and target > 0):
        raise UserError(f"target must be a positive number, got {target!r}")


def project_kernel(weight, input_size, *, stride=None, groups=None, target=None, method="svd",
                   faithful=False) -> torch.Tensor:
    """One Procrustes projection as a pure function: ``weight (C_out, C_in / groups, kh, kw)`` (or an
    ``nn.Conv2d``: its weight, stride and groups) -> the projected kernel, same shape, dtype and
    device (see the module docstring for the exact and the faithful algorithm and the default
    ``target``)."""
    _check_options(method, faithful, 1, target)
    weight, size, stride, groups = _resolve(weight, input_size, stride, groups)
    if faithful:
        check_faithful_grid(weight, size, stride)
    if target is None:
        target = _default_target(weight, stride, groups, faithful)
    return _step(weight.detach(), size, stride, groups, target, method, faithful)


def project_conv_(conv_or_weight, input_size, *, stride=None, groups=None, target=None, method="svd",
                  faithful=False, iterations=1) -> ProjectionReport:
    """Project a convolution in place onto norm-preserving kernels; returns a report.

    ``conv_or_weight``: an ``nn.Conv2d`` (its own stride and groups) or a weight
    ``(C_out, C_in / groups, kh, kw)`` (stride and groups default to 1).  ``input_size``: the
    layer's input size (int or ``(h, w)``); the FFT grid is the output grid
    ``input_size / stride``.  ``target`` defaults to ``norm_preserving_target``
    (``sqrt(C_out / C_in)`` for the authors' layers and for ``faithful=True``).  A grouped conv is
    projected group by group (its operator is block-diagonal).  ``iterations > 1`` repeats the
    projection (alternating projections).  The report's singular values are the exact circular
    operator's, after the projection.
    """
    _check_options(method, faithful, iterations, target)
    weight, size, stride, groups = _resolve(conv_or_weight, input_size, stride, groups)
    if faithful:
        check_faithful_grid(weight, size, stride)
    if target is None:
        target = _default_target(weight, stride, groups, faithful)
    return _project(weight, size, stride, groups, target, method, faithful, iterations, report=True)


# ----------------------------------------------------------------------------- the hook
class ProcrustesHook:
    """Projects each ``(conv, input_size)`` layer after every optimizer step with probability
    ``p``.  Decisions come from a ``torch.Generator`` seeded with ``seed`` (one draw per layer per
    step), so they are reproducible and identical across DDP ranks; ``state_dict()`` carries the
    generator state for resuming.  ``remove()`` detaches it from the optimizer.  ``names``
    label the layers in messages (default: their index).  A layer whose weights are no longer
    finite when it is due raises ``FloatingPointError`` naming it (training diverged)."""

    def __init__(self, optimizer, layers, *, p=0.5, method="svd", faithful=False, seed=0,
                 iterations=1, names=None):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise UserError(f"optimizer must be a torch.optim.Optimizer, got {optimizer!r}")
        if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
            raise UserError(f"p must be a probability in [0, 1], got {p!r}")
        _check_options(method, faithful, iterations, None)
        self.layers = []
        for item in layers:
            if not (isinstance(item, (tuple, list)) and len(item) == 2
                    and isinstance(item[0], nn.Conv2d)):
                raise UserError(f"layers must be (nn.Conv2d, input_size) pairs, got {item!r}")
            conv, size = item
            weight, size, stride, groups = _resolve(conv, size, None, None)
            if faithful:
                check_faithful_grid(weight, size, stride)
            target = _default_target(weight, stride, groups, faithful)
            self.layers.append((conv, size, stride, groups, target))
        self.names = [f"layer {i}" for i in range(len(self.layers))] if names is None else list(names)
        if len(self.names) != len(self.layers):
            raise UserError(f"names must label each of the {len(self.layers)} layers, got {len(self.names)}")
        self.p, self.method, self.faithful, self.iterations = float(p), method, faithful, iterations
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.projections = 0
        self.nonfinite = None  # per-layer counts of non-finite weights met on the device (below)
        self._handle = optimizer.register_step_post_hook(self._after_step)

    @torch.no_grad()
    def _after_step(self, optimizer, args, kwargs):
        # Draws from a CPU generator: no device sync, and the same decisions on every rank.
        draws = torch.rand(len(self.layers), generator=self.generator)
        for i, (name, (conv, size, stride, groups, target), u) in enumerate(zip(self.names, self.layers,
                                                                              draws.tolist())):
            if u < self.p:
                if _stays_on_device(conv.weight, stride, groups, self.faithful):
                    self._count_nonfinite(i, conv.weight)
                elif not torch.isfinite(conv.weight).all():
                    raise FloatingPointError(
                        f"Procrustes projection: {name} has NaN or inf weights after optimizer step "
                        f"{self.steps + 1}: training diverged, nothing to project")
                _project(conv.weight, size, stride, groups, target, self.method, self.faithful,
                         self.iterations, report=False)
                self.projections += 1
        self.steps += 1

    def _count_nonfinite(self, i, weight) -> None:
        """Count non-finite weights of layer ``i`` in ``self.nonfinite`` on the device instead of
        checking them on the host (a sync); the training loop reads the counts at its NaN checks
        and raises FloatingPointError naming the layer (``procres.train``)."""
        if self.nonfinite is None:
            self.nonfinite = torch.zeros(len(self.layers), dtype=torch.int64, device=weight.device)
        self.nonfinite[i] += torch.isfinite(weight).all().logical_not()

    def remove(self) -> None:
        self._handle.remove()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "steps": self.steps,
                "projections": self.projections, "p": self.p, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.steps = int(state["steps"])
        self.projections = int(state["projections"])


def register_procrustes_hook(optimizer, layers, *, p=0.5, method="svd", faithful=False, seed=0,
                             iterations=1, names=None) -> ProcrustesHook:
    """Project ``layers`` (a list of ``(nn.Conv2d, input_size)``) after every ``optimizer.step()``
    with probability ``p``; returns the ``ProcrustesHook`` (``.remove()``, ``.state_dict()``)."""
    return ProcrustesHook(optimizer, list(layers), p=p, method=method, faithful=faithful,
                          seed=seed, iterations=iterations, names=names)


def attach_procrustes(model, optimizer, *, convs=None, example_input=None, p=0.5, method="svd",
                      faithful=False, seed=0, iterations=1) -> ProcrustesHook:
    """Project convs of ``model`` after every ``optimizer.step()`` with probability ``p``.

    ``convs=None``: the zoo models' ``model.transitions()``.  Any other model: ``convs`` names
    them (a qualified module name, an ``nn.Conv2d``, ``"downsample"`` for every strided 1x1
    conv, or a list of these) and ``example_input`` (a batch the model accepts) gives one
    forward pass in which every conv's input size is recorded (:func:`procres.convs.find_convs`).
    A named conv whose class computes another operator in its own ``forward``
    (:func:`procres.convs.computes_its_operator`) is refused.
    """
    if convs is None:
        if not hasattr(model, "transitions"):
            raise UserError(f"model {type(model).__name__} has no transitions() method: name the convs to "
                            "project, e.g. attach_procrustes(model, opt, convs='downsample', example_input=x)")
        layers = model.transitions()
        names = {id(m): name for name, m in model.named_modules()}
        return register_procrustes_hook(optimizer, layers, p=p, method=method, faithful=faithful, seed=seed,
                                        iterations=iterations, names=[names.get(id(c), "?") for c, _ in layers])
    from procres.convs import computes_its_operator, find_convs, select_convs

    if example_input is None:
        raise UserError("attach_procrustes(convs=...) needs example_input, a batch the model accepts, "
                        "to learn each conv's input size")
    sites = select_convs(find_convs(model, example_input), convs)
    other = [f"{s.name} ({type(s.module).__name__})" for s in sites
             if not computes_its_operator(s.module, s.input_size)]
    if other:
        raise UserError(f"cannot project {', '.join(other)}: its forward computes another operator than F.conv2d "
                        "with its weight (weight standardisation, run-time padding), which a projected weight "
                        "would not make norm-preserving")
    return register_procrustes_hook(optimizer, [(s.module, s.input_size) for s in sites], p=p,
                                    method=method, faithful=faithful, seed=seed, iterations=iterations,
                                    names=[s.name for s in sites])

"""The conv layers of any model: where they are, the input size each one really sees, their spectra;
and the layers a regulariser acts on.

``find_convs(model, example_input)`` runs one forward pass (eval mode, no grad, the model's mode
restored afterwards) with a pre-hook on every ``nn.Conv2d`` and returns ``LayerSite(name,
module, input_size)`` in forward order (first call; convs never called are left out: they have no
input size).  ``select_convs`` picks some by qualified name, module or keyword (:data:`KEYWORDS`);
``select_layers(model, example_input, convs=..., linears=...)`` is the one selection of
``attach_procrustes``, ``attach_clipping`` and ``procres inspect --project``: convs as
``select_convs`` picks them, and ``nn.Linear`` layers by the same names, modules and keywords.

``conv_spectra(model, example_input)`` is one ``layer_spectrum`` per conv: its shape, stride,
padding, dilation, groups, input size, the norm-preserving target
(:func:`procres.spectral.spectra.norm_preserving_target`) and two operators' extremes with the distance
``max_rel_error = max |sigma / target - 1|`` over the non-zero singular values
(:func:`procres.spectral.spectra.spectrum_stats`):

- ``circular``: the periodic operator on the input's grid, exact at any size (FFT), when the input
  is divisible by the stride;
- ``zeros``: the layer's own padded operator (:func:`procres.spectral.spectra.conv_extremes`), with its
  ``padding_mode``: zero padding, or the reflect or replicate padding of a layer that pads so
  (None for a circular layer: the first part is its operator): exact for patch convs and where
  the dense route is affordable, else Lanczos, with the achieved error; a Lanczos ``sigma_min``
  that has not converged is an upper bound (then ``max_rel_error`` is a lower bound).
  ``zeros="max"`` measures ``sigma_max`` alone where ``sigma_min`` would cost more (Lanczos; it is
  then None, as ``cond``, and ``max_rel_error`` is ``sigma_max``'s, a lower bound): what
  ``procres inspect`` asks for by default; ``"dense"`` keeps only exact values, ``"off"`` skips it.
  Its Lanczos starts from the circular part's spectrum, computed once for both parts.

A conv whose class computes something else in its own ``forward`` (weight standardisation,
padding computed at run time: :func:`computes_its_operator`) gets neither part, and a ``note``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from procres.diagnostics.example import first_inputs
from procres.diagnostics.names import name_pattern
from procres.errors import UserError

__all__ = ["LayerSite", "ConvSite", "KEYWORDS", "find_convs", "find_linears", "select_convs", "select_layers",
           "exactly_projectable", "computes_its_operator", "layer_spectrum", "conv_spectra", "spectrum_table"]

ZEROS_MODES = ("auto", "max", "dense", "off")


@dataclasses.dataclass(frozen=True)
class LayerSite:
    """A layer of a model: qualified ``name``, the ``module``, and the ``(h, w)`` of its input (a
    conv's, from a forward pass; None for a Linear layer, whose operator is its matrix)."""

    name: str
    module: nn.Module
    input_size: tuple | None


ConvSite = LayerSite  # the name find_convs' sites had first


def find_convs(model: nn.Module, example_input) -> list[LayerSite]:
    """Every ``nn.Conv2d`` of ``model`` called in one forward pass of ``example_input``, in the
    order of first call, with the spatial size of the input it received."""
    names = {m: name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if not names:
        raise UserError(f"{type(model).__name__} has no nn.Conv2d layers")
    seen = first_inputs(model, names, example_input)
    return [LayerSite(names[m], m, tuple(int(n) for n in x.shape[-2:])) for m, x in seen.items()
            if isinstance(x, torch.Tensor)]


def find_linears(model: nn.Module) -> list[LayerSite]:
    """Every ``nn.Linear`` of ``model``, in registration order (no forward pass: a matrix needs no size)."""
    return [LayerSite(name, m, None) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def exactly_projectable(conv: nn.Conv2d) -> bool:
    """Whether one projection (or clipping) of ``conv`` is exact: every output pixel reads its own
    input pixels, i.e. the kernel is no larger than the stride in each dimension and the conv pads
    nothing.  Then its operator is one matrix per pixel (1x1 convs, the 2x2 stride-2 downsampling of
    ConvNeXt/Swin-style nets, 4x4 or 16x16 patch embeddings).  Padding rules a conv out: its border
    pixels read padded values, so the border rows of its operator are other matrices than the
    inner ones (zero padding: the patch matrix with columns removed), and a kernel with taps
    between dilated positions (dilation > 1, kernel > 1x1) is not a kernel the projection makes."""
    kernel, stride = tuple(conv.kernel_size), tuple(conv.stride)
    padded = conv.padding == "same" or (not isinstance(conv.padding, str) and any(conv.padding))
    dilated = tuple(conv.dilation) != (1, 1) and kernel != (1, 1)
    return all(k <= s for k, s in zip(kernel, stride)) and not padded and not dilated


#: Keywords of ``select_convs`` / ``select_layers``: which layers each names.
KEYWORDS = {
    "all": lambda m: True,
    "exact": lambda m: isinstance(m, nn.Linear) or exactly_projectable(m),
    "downsample": lambda m: isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and max(m.stride) > 1,
}


def select_convs(sites: list[LayerSite], which, *, what: str = "convs") -> list[LayerSite]:
    """The sites named by ``which``: a qualified name (a glob as in
    :func:`procres.diagnostics.units.units_by_name`: ``*`` within one dotted segment), a module, a
    keyword (``"exact"``: every conv of :func:`exactly_projectable` or every Linear; ``"downsample"``:
    every conv with a 1x1 kernel and a stride above 1; ``"all"``), or a list of these; each must match
    at least one of ``sites`` (``what`` names them in the message)."""
    items = which if isinstance(which, (list, tuple)) else [which]
    chosen: list[LayerSite] = []
    for item in items:
        if isinstance(item, nn.Module):
            found = [s for s in sites if s.module is item]
        elif isinstance(item, str) and item in KEYWORDS:
            found = [s for s in sites if KEYWORDS[item](s.module)]
        elif isinstance(item, str):
            pattern = name_pattern(item)
            found = [s for s in sites if pattern.fullmatch(s.name)]
        else:
            raise UserError(f"{what} must be names, modules or one of {sorted(KEYWORDS)}, got {type(item).__name__}")
        if not found:
            listed = ", ".join(s.name for s in sites[:6]) + (", ..." if len(sites) > 6 else "")
            where = "called in the forward pass" if what == "convs" else "of the model"
            hint = "; 'downsample' is the strided 1x1 convs, 'exact' every conv with kernel <= stride " \
                "(2x2 stride-2 downsampling, patch embeddings)" if item == "downsample" else ""
            raise UserError(f"no {what[:-1]} of the model matches {item!r} ({what} {where}: {listed or 'none'}{hint})")
        chosen += [s for s in found if s not in chosen]
    return chosen


def select_layers(model: nn.Module, example_input=None, *, convs=None, linears=None,
                  verb: str = "project") -> list[LayerSite]:
    """The convs (at the input sizes one forward pass of ``example_input`` shows) and the
    ``nn.Linear`` layers of ``model`` that ``convs`` and ``linears`` name (see :func:`select_convs`;
    None: none of that kind), convs first.  A named conv whose class computes another operator in its
    own ``forward`` (:func:`computes_its_operator`) is refused (``verb`` says what would not work):
    a changed weight would not bound it."""
    if convs is None and linears is None:
        raise UserError("name the layers: convs= (names, globs, modules, 'exact', 'downsample' or 'all'), "
                        "linears= (names, globs, modules or 'all') or both")
    sites = []
    if convs is not None:
        if example_input is None:
            raise UserError("selecting convs needs example_input, a batch the model accepts, to learn each conv's "
                            "input size")
        sites = select_convs(find_convs(model, example_input), convs)
        other = [f"{s.name} ({type(s.module).__name__})" for s in sites
                 if not computes_its_operator(s.module, s.input_size)]
        if other:
            raise UserError(f"cannot {verb} {', '.join(other)}: its forward computes another operator than "
                            "F.conv2d with its weight (weight standardisation, run-time padding), which a changed "
                            "weight would not bound")
    if linears is not None:
        sites += select_convs(find_linears(model), linears, what="linears")
    return sites


def _zeros_part(conv: nn.Conv2d, size, target: float, zeros: str, tol: float, max_iter: int,
                circular=None) -> dict | None:
    from procres.spectral.operator import conv_operator
    from procres.spectral.spectra import conv_extremes, exact_extremes

    if zeros == "off" or (conv.padding_mode == "circular" and conv_operator(conv, size).padding_mode == "circular"):
        return None                                           # the layer is the torus conv: its part is exact
    if zeros == "dense":
        out = exact_extremes(conv, size)
    else:
        out = conv_extremes(conv, size, which="both" if zeros == "auto" else "max", tol=tol, max_iter=max_iter,
                            circular=circular)
    if out is None:
        return None
    smax, smin = out["sigma_max"], out["sigma_min"]
    extremes = [smax] if smin is None else [smax, smin]
    return {**out, "padding_mode": conv.padding_mode,
            "cond": None if smin is None else smax / smin if smin > 0 else float("inf"),
            "max_rel_error": max(abs(v / target - 1) for v in extremes)}


def computes_its_operator(conv: nn.Conv2d, input_size) -> bool:
    """Whether ``conv`` on inputs of ``input_size`` computes the operator that the spectral
    functions measure, ``F.conv2d`` with its weight, stride, padding, dilation, groups and padding
    mode.  True for ``nn.Conv2d`` and the subclasses that keep its ``forward``; a subclass with its
    own (timm's weight-standardised ``StdConv2d``, dynamically "same"-padded ``Conv2dSame``) is
    run once on a random input, ``conv(x) - conv(0)`` (no bias) against the operator's output."""
    from procres.spectral.operator import conv_operator

    if type(conv).forward is nn.Conv2d.forward and type(conv)._conv_forward is nn.Conv2d._conv_forward:
        return True
    w = conv.weight
    try:
        op = conv_operator(conv, input_size).to(torch.float64)
    except UserError:
        if w.is_meta:
            raise
        return False                                          # its settings give no output at this size
    x = torch.randn(1, op.c_in, *op.input_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x.to(w.device, w.dtype)
    try:
        with torch.no_grad():
            out = (conv(x) - conv(torch.zeros_like(x))).double()
    except Exception:  # a forward that needs more than one tensor measures nothing we know
        return False
    ref = op.forward(x.double())
    tol = 1e-2 if w.dtype in (torch.float16, torch.bfloat16) else 1e-4
    return out.shape == ref.shape and float((out - ref).abs().max()) <= tol * float(ref.abs().max())


def layer_spectrum(conv: nn.Conv2d, input_size, *, zeros: str = "auto", name: str = "", tol: float = 1e-6,
                   max_iter: int = 300) -> dict:
    """One conv's row (see the module docstring); ``input_size`` is ``n`` or ``(h, w)``."""
    from procres.spectral.operator import size_pair
    from procres.spectral.spectra import circular_spectrum, norm_preserving_target, spectrum_stats

    if zeros not in ZEROS_MODES:
        raise UserError(f"zeros must be one of {ZEROS_MODES}, got {zeros!r}")
    size = size_pair(input_size, "input_size")
    target = norm_preserving_target(conv)
    row = {"name": name, "shape": list(conv.weight.shape), "stride": list(conv.stride),
           "padding": conv.padding if isinstance(conv.padding, str) else list(conv.padding),
           "dilation": list(conv.dilation), "groups": conv.groups, "padding_mode": conv.padding_mode,
           "input_size": list(size), "target": target, "circular": None, "zeros": None}
    if not computes_its_operator(conv, size):
        row["note"] = (f"not measured: {type(conv).__name__}.forward computes another operator than F.conv2d "
                       "with its weight and settings")
        return row
    circular = None
    if size[0] % conv.stride[0] == 0 and size[1] % conv.stride[1] == 0:
        circular = circular_spectrum(conv.weight.detach().double(), size, stride=conv.stride,  # float64: small
                                     dilation=conv.dilation, groups=conv.groups)          # values keep digits
        row["circular"] = spectrum_stats(circular.values, target)
    row["zeros"] = _zeros_part(conv, size, target, zeros, tol, max_iter, circular)
    return row


def conv_spectra(model: nn.Module, example_input, *, zeros: str = "auto", names=None, tol: float = 1e-6,
                 max_iter: int = 300) -> list[dict]:
    """:func:`layer_spectrum` of every conv seen in one forward pass of ``example_input`` (``names``:
    only these, see :func:`select_convs`), in forward order."""
    sites = find_convs(model, example_input)
    if names is not None:
        sites = select_convs(sites, list(names))
    return [layer_spectrum(s.module, s.input_size, zeros=zeros, name=s.name, tol=tol, max_iter=max_iter)
            for s in sites]


def _size(row) -> str:
    h, w = row["input_size"]
    return str(h) if h == w else f"{h}x{w}"


def _pair_text(values) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def spectrum_table(rows: list[dict]) -> str:
    """Fixed-width text table of :func:`conv_spectra` rows; a zero-padding ``sigma_min`` that is an
    upper bound prints as ``<value``."""
    w = max([30] + [len(r["name"]) for r in rows])             # whole names, however deep the module
    head = (f"{'layer':{w}s} {'out,in/g,k':>13s} {'s':>3s} {'d':>2s} {'g':>4s} {'n':>5s} {'target':>7s} "
            f"{'sigma_max':>9s} {'sigma_min':>9s} {'cond':>8s} {'max|s/c-1|':>10s}  {'padded: max':>12s} {'min':>9s}")
    lines = [head]
    for r in rows:
        c, z = r.get("circular") or {}, r.get("zeros") or {}
        f = lambda d, k, spec: "-" if d.get(k) is None else format(d[k], spec)  # noqa: E731
        zmin = f(z, "sigma_min", "9.4g")
        if z.get("sigma_min_is") == "upper bound":
            zmin = "<" + format(z["sigma_min"], ".3g")
        co, ci, kh, kw = r["shape"]
        shape = f"{co},{ci},{_pair_text([kh, kw])}"
        lines.append(f"{r['name']:{w}s} {shape:>13s} {_pair_text(r['stride']):>3s} {_pair_text(r['dilation']):>2s} "
                     f"{r['groups']:4d} {_size(r):>5s} {r['target']:7.3f} {f(c, 'sigma_max', '9.4g')} "
                     f"{f(c, 'sigma_min', '9.4g')} {f(c, 'cond', '8.3g')} {f(c, 'max_rel_error', '10.3g')}  "
                     f"{f(z, 'sigma_max', '12.4g')} {zmin:>9s}")
    lines += [f"{r['name']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(lines)

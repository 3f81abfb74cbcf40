"""Residual units of any model, found by tracing it (torch.fx) or named by the user.

A residual unit is a place where a skip path and a branch that start at the same tensor ``x_l`` are
added: ``x_{l+1} = s(x_l) + f(x_l)``.  ``find_units(model, example_input)`` traces the model with
``torch.fx`` and returns every such addition (``x + f(x)``, ``g(x) + f(x)``, ``out += identity``,
``out.add_(x)``, ``torch.add``, ``Tensor.add``) in forward order, each as a :class:`Unit` with a ``kind``:
``"identity"`` when one operand is ``x_l`` itself (``nn.Identity`` counts as itself), else
``"projection"`` (a shortcut with weights or any other map: option-A padding, 1x1 conv + BN).

How a unit is found (on the graph of :func:`procres.diagnostics.tracing.trace`).  The fork ``x_l`` of an
addition ``a + b`` is the latest tensor both operands depend on (through tensor values only:
``x.size(1)`` used to slice a table makes no fork); an addition without one (``x +
positional_table``), or whose operands do not have the result's shape (``x + bias``), is not a
residual unit.  Module units: the innermost module call whose first input is ``x_l``, whose output
depends on the addition, and with no other residual addition after it inside (torchvision's
``BasicBlock``, ``out += identity; out = relu(out)``: the whole block, so ``x_{l+1}`` is the
block's output, after the ReLU).  Sub-graph units: additions with no such module (a pre-norm
transformer block, ``x = x + attn(ln1(x)); x = x + mlp(ln2(x))``, has two in one ``forward``),
named ``"<module>:add<k>"`` (the k-th residual addition of that module's own code).

How a unit is recorded.  :class:`procres.diagnostics.recorder.NormRecorder` hooks a module unit's module
(input ``x_l``, output ``x_{l+1}``): run the model as usual.  A sub-graph unit has no module to
hook, so ``find_units`` also returns ``units.module``: the model re-traced with every module unit
kept whole and an identity *probe* module at each sub-graph unit's ``x_l`` and ``x_{l+1}``; it holds
the model's own submodules (same parameters, same modes), computes the same function and is what
to train or run while recording.  Without sub-graph units ``units.module`` is the model itself.
A traced module is specialised on its trace: Python branches on ``self.training`` or on shapes are
fixed as they were for the example input (traced in the model's current mode; batch norms, those
with a ``forward`` of their own included, are kept whole and follow the mode), and ``forward``
arguments the example input does not give are fixed at their defaults (``mask=None``).

Where tracing fails (data-dependent control flow, ``assert`` on shapes, every Hugging Face model in
transformers 5) or finds no residual addition, ``find_units`` falls back on the model's repeated
residual layers by structure (:mod:`procres.diagnostics.structure`: the innermost list of
same-class modules that each add their input to a same-shape tensor, seen in one example
forward).  Only where neither finds a unit does it refuse, in one sentence that suggests globs.
The result says how it was found: ``units.rule`` (``"traced: ..."``, ``"structure: ..."`` or
``"named: ..."``) and ``units.glob``, a glob (or list of globs or names) that ``units_by_name``
turns back into the same modules (None for sub-graph units, which have no module to name).

Naming the units: ``units_by_name(model, "layer*.*")`` globs qualified module names with ``*`` and
``?`` matching within one dotted segment (so ``"layer*.*"`` is ``layer1.0``, ``layer1.1``, ... and
not their children) and returns the matched modules in forward order: the order of their first
call in one forward pass of ``example_input`` when given, else registration order (modules never
called come last, in registration order).
"""

from __future__ import annotations

import dataclasses
import operator

import torch
from torch import fx, nn

from procres.diagnostics.example import first_inputs
from procres.diagnostics.names import glob_for, how_to_name_units, name_pattern
from procres.diagnostics.structure import residual_layers
from procres.diagnostics.tracing import Call, TraceError, trace
from procres.errors import UserError

__all__ = ["Unit", "Units", "UnitsNotFound", "find_units", "units_by_name"]

_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_", "__add__", "__iadd__", "__radd__"}


@dataclasses.dataclass(frozen=True, eq=False)
class Unit:
    """One residual unit.  ``module``: the module whose input and output are ``x_l`` and
    ``x_{l+1}`` (None for a sub-graph unit); ``scope``: that module, or the innermost module whose
    code holds the addition; ``probes``: ``(input, output)`` probe modules in ``Units.module`` when
    the unit is recorded through them, else None; ``skip``: ``"identity"`` or what the skip path
    runs (module names or operations)."""

    name: str
    kind: str
    module: nn.Module | None
    scope: nn.Module
    probes: tuple | None = None
    skip: str = ""


class Units(list):
    """The units of one model, in forward order; ``module`` is what to run while recording (see
    the module docstring), ``model`` the model they belong to, ``rule`` how they were found and
    ``glob`` what :func:`units_by_name` takes to select them again (None: sub-graph units)."""

    def __init__(self, units, *, model: nn.Module, module: nn.Module | None = None, rule: str = "",
                 glob=None):
        super().__init__(units)
        self.model = model
        self.module = model if module is None else module
        self.rule = rule
        self.glob = glob

    def names(self) -> list[str]:
        return [u.name for u in self]


class _Probe(nn.Module):
    """Identity marker of a sub-graph unit's ``x_l`` or ``x_{l+1}``: returns a view, so each probe
    output is its own tensor (an in-place addition on ``x_l`` cannot alias ``x_{l+1}``)."""

    def forward(self, x):
        return x.view_as(x)


class UnitsNotFound(UserError):
    """``find_units`` found no unit in ``model``: ``why`` tracing gave none, ``suggestions`` the
    patterns :func:`units_by_name` takes to name them; ``how(command)`` is the sentence's end for a
    caller whose own way to name units is ``command`` (None: only the Python call)."""

    def __init__(self, model: nn.Module, why: str, suggestions: list):
        self.model, self.why, self.suggestions = model, why, suggestions
        super().__init__(self.sentence())

    def sentence(self, command: str | None = "procres inspect --units PATTERN") -> str:
        return (f"{self.why}, and no list of same-class modules that add their input to a same-shape tensor; "
                f"name its units: {how_to_name_units(self.model, self.suggestions, command=command)}")


# ---------------------------------------------------------------- discovery
def _resolve(node: fx.Node, gm: fx.GraphModule) -> fx.Node:
    """Look through ``nn.Identity`` calls."""
    while node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Identity) and node.args:
        node = node.args[0]
    return node


def _operands(n: fx.Node):
    if n.op == "call_function" and n.target in _ADD_FUNCTIONS:
        return n.args[:2] if "alpha" not in n.kwargs else None
    if n.op == "call_method" and n.target in _ADD_METHODS:
        return n.args[:2] if "alpha" not in n.kwargs else None
    return None


def _ancestry(graph: fx.Graph) -> tuple[dict, list]:
    """Bitset of tensor ancestors per node (parameters and non-tensor values excluded)."""
    nodes = list(graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    anc = {}
    for n in nodes:
        bits = 0 if n.op == "get_attr" or not n.meta.get("procres_tensor") else 1 << index[n]
        for inp in n.all_input_nodes:
            if inp.meta.get("procres_tensor") and inp.op != "get_attr":
                bits |= anc[inp]
        anc[n] = bits
    return anc, nodes


@dataclasses.dataclass
class _Found:
    add: fx.Node
    fork: fx.Node
    kind: str
    skip: fx.Node | None
    call: Call | None = None


def _residual_adds(gm: fx.GraphModule, anc: dict, nodes: list) -> list[_Found]:
    found = []
    for n in nodes:
        pair = _operands(n)
        shape = n.meta.get("procres_shape")
        if pair is None or shape is None or not all(isinstance(a, fx.Node) for a in pair):
            continue
        if any(a.meta.get("procres_shape") != shape for a in pair):
            continue
        a, b = (_resolve(x, gm) for x in pair)
        common = anc[a] & anc[b]
        if not common:
            continue
        fork = nodes[common.bit_length() - 1]
        if fork in (a, b):
            found.append(_Found(n, fork, "identity", None))
        else:  # the skip path is the operand with fewer operations since the fork (a submodule: one)
            cost = [len(_steps(_since(x, fork, anc, nodes), len(_stack(n)))) for x in (a, b)]
            found.append(_Found(n, fork, "projection", (a, b)[cost[1] < cost[0]]))
    return found


def _since(x: fx.Node, fork: fx.Node, anc: dict, nodes: list) -> list[fx.Node]:
    """The operations between ``fork`` and ``x`` (``x`` included)."""
    return [n for i, n in enumerate(nodes) if anc[x] >> i & 1 and not anc[fork] >> i & 1]


def _steps(path: list[fx.Node], depth: int) -> list:
    """``path`` as the steps a reader sees in code at module depth ``depth``: a submodule (by name:
    a call, or one whose own forward was traced through) counts once, an operation at this depth
    is itself."""
    def step(n):
        inside = list(n.meta.get("nn_module_stack", {}).values())
        return n.target if n.op == "call_module" else inside[-1][0] if len(inside) > depth else n

    return list(dict.fromkeys(map(step, path)))


def _stack(node: fx.Node) -> list[str]:
    return list(node.meta.get("nn_module_stack", {}))


def _module_call(f: _Found, units: list[fx.Node], calls: dict, anc: dict, index: dict, gm):
    """The innermost module call that is this addition's unit, or None (see the module docstring).
    ``units``: every residual addition, and the calls of units kept whole."""
    for key in reversed(_stack(f.add)):
        call = calls.get(key)
        if call is None or call.input is None or call.output is None or call.output.meta.get("procres_shape") is None:
            continue
        if _resolve(call.input, gm) is not f.fork or not anc[call.output] >> index[f.add] & 1:
            continue
        if not any(u is not f.add and key in _stack(u) and anc[u] >> index[f.add] & 1 for u in units):
            return call
    return None


def _discover(gm: fx.GraphModule, calls: list[Call], whole=()) -> list[_Found]:
    """Residual additions of the traced graph; ``whole``: modules of units kept whole (a residual
    addition happens inside each)."""
    anc, nodes = _ancestry(gm.graph)
    index = {n: i for i, n in enumerate(nodes)}
    by_key = {c.key: c for c in calls}
    found = _residual_adds(gm, anc, nodes)
    kept = {id(m) for m in whole}
    units = [f.add for f in found] + [n for n in nodes if n.op == "call_module"
                                      and id(gm.get_submodule(n.target)) in kept]
    for f in found:
        f.call = _module_call(f, units, by_key, anc, index, gm)
    return found


def _subgraph_names(found: list[_Found], gm_root: nn.Module, calls: list[Call]) -> dict:
    """``"<module>:add<k>"`` for each addition without a module unit; scope module per addition."""
    by_key = {c.key: c for c in calls}
    counts: dict[str, int] = {}
    names = {}
    for f in found:
        if f.call is not None:
            continue
        stack = _stack(f.add)
        scope = by_key[stack[-1]].name if stack and stack[-1] in by_key else ""
        k = counts.get(scope, 0)
        counts[scope] = k + 1
        names[f.add] = (f"{scope}:add{k}" if scope else f"add{k}", scope)
    return names


def _skip_text(f: _Found, anc: dict, nodes: list) -> str:
    if f.kind == "identity":
        return "identity"
    steps = _steps(_since(f.skip, f.fork, anc, nodes), len(_stack(f.add)))
    mods = [m for m in steps if isinstance(m, str)]
    if mods:
        prefix = mods[0].rsplit(".", 1)[0] if len(mods) > 1 else mods[0]
        return prefix if all(m.startswith(prefix + ".") or m == prefix for m in mods) else ", ".join(mods)
    return ", ".join(str(getattr(n.target, "__name__", n.target)) for n in steps) or "projection"


def find_units(model: nn.Module, example_input) -> Units:
    """The residual units of ``model`` in forward order (see the module docstring).

    ``example_input``: a batch the model accepts (a tuple is unpacked, a dict passed by name); it
    runs once through the traced graph in eval mode (twice when a recording module is built), or
    once through the model when the units are found by structure.
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be an nn.Module, got {type(model).__name__}")
    try:
        gm, calls = trace(model, example_input)
    except TraceError as err:
        return _by_structure(model, example_input, str(err))
    found = _discover(gm, calls)
    if not found:
        return _by_structure(model, example_input, f"no residual addition found in {type(model).__name__} (an "
                                                   f"addition of two same-shape tensors computed from one input)")
    names = _subgraph_names(found, model, calls)
    anc, nodes = _ancestry(gm.graph)
    units = []
    for f in found:
        skip = _skip_text(f, anc, nodes)
        if f.call is not None:
            units.append(Unit(f.call.name, f.kind, f.call.module, f.call.module, None, skip))
        else:
            name, scope = names[f.add]
            units.append(Unit(name, f.kind, None, model.get_submodule(scope), None, skip))
    rule = "traced: the residual additions torch.fx finds in the model's code"
    if all(u.module is not None for u in units):
        return Units(units, model=model, rule=rule, glob=glob_for(model, [u.name for u in units]))
    return _with_probes(model, example_input, units, found, rule)


def _by_structure(model: nn.Module, example_input, why: str) -> Units:
    """The units by structure (:mod:`procres.diagnostics.structure`) where tracing gave none
    (``why``); the refusal where there are none either."""
    found = residual_layers(model, example_input)
    if not found.layers:
        raise UnitsNotFound(model, why, found.suggestions)
    units = [Unit(name, kind, module, module, None, skip) for name, kind, module, skip in found.layers]
    return Units(units, model=model, rule=f"structure: {found.rule} ({why})", glob=found.glob)


def _with_probes(model, example_input, units: list[Unit], found: list[_Found], rule: str) -> Units:
    """Re-trace with every module unit that holds no sub-graph unit kept whole, and put probes at
    the ``x_l`` and ``x_{l+1}`` of the others (sub-graph units and module units not kept whole)."""
    subgraph_adds = [f for f in found if f.call is None]
    whole = [f.call for f in found if f.call is not None
             and not any(f.call.key in _stack(g.add) for g in subgraph_adds)]
    gm, calls = trace(model, example_input, leaves=[c.module for c in whole])
    again = _discover(gm, calls, whole=[c.module for c in whole])
    names = _subgraph_names(again, model, calls)
    points = {}
    for f in again:
        name = f.call.name if f.call is not None else names[f.add][0]
        out = f.call.output if f.call is not None else f.add
        points[name] = (f.fork, out)
    expected = {u.name for u in units} - {c.name for c in whole}
    if set(points) != expected:
        raise RuntimeError(f"procres.find_units: the recording trace found units {sorted(points)}, "
                           f"expected {sorted(expected)}")
    probes = {}
    for name, (x_in, x_out) in points.items():
        probes[name] = tuple(_probe(gm, node) for node in (x_in, x_out))
    gm.recompile()
    units = [dataclasses.replace(u, probes=probes.get(u.name)) for u in units]
    return Units(units, model=model, module=gm, rule=rule)


def _probe(gm: fx.GraphModule, node: fx.Node) -> nn.Module:
    """The probe after ``node`` (one per node, shared by the units that meet there)."""
    existing = [u for u in node.users if u.op == "call_module" and u.target.startswith("procres_probe_")]
    if existing:
        return gm.get_submodule(existing[0].target)
    name = f"procres_probe_{sum(1 for n in gm.graph.nodes if n.op == 'call_module' and n.target.startswith('procres_probe_'))}"
    gm.add_submodule(name, _Probe())
    with gm.graph.inserting_after(node):
        probe = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(probe, delete_user_cb=lambda user: user is not probe)
    return gm.get_submodule(name)


# ---------------------------------------------------------------- by name
def units_by_name(model: nn.Module, pattern, example_input=None) -> Units:
    """The modules of ``model`` whose qualified names match ``pattern`` (a glob, or a list of
    globs; see the module docstring), as units of kind ``"named"`` in forward order."""
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be an nn.Module, got {type(model).__name__}")
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise UserError(f"pattern must be a non-empty glob string or a list of them, got {pattern!r}")
    regexes = [name_pattern(p) for p in patterns]
    named = [(n, m) for n, m in model.named_modules() if n and any(r.fullmatch(n) for r in regexes)]
    if not named:
        top = ", ".join(n for n, _ in model.named_children())
        raise UserError(f"no module of {type(model).__name__} matches {pattern!r} (its children: {top})")
    modules = [m for _, m in named]
    if example_input is not None:
        called = list(first_inputs(model, modules, example_input))
        modules = called + [m for m in modules if m not in called]
    name_of = {id(m): n for n, m in named}
    return Units([Unit(name_of[id(m)], "named", m, m, None, "") for m in modules], model=model,
                 rule=f"named: the modules matching {pattern!r}", glob=pattern)

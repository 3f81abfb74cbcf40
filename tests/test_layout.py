"""The package layout is the architecture: dependencies point one way and there is no circle.

Parts, lowest first: ``errors`` and ``files`` (what everything may use), ``spectral`` (one conv as an
operator), ``models`` and ``diagnostics`` (siblings: neither imports the other), ``constraints``,
``integrations``, ``training``, ``reports``, and on top ``cli`` / ``__main__`` / ``__init__``.  A
module may import its own part and the parts below it; every import counts, the lazy ones inside
functions too.
"""

from pathlib import Path

import pytest

import procres
from source_imports import imported_modules

ROOT = Path(procres.__file__).parent
RANK = {"errors": 0, "files": 1, "spectral": 2, "models": 3, "diagnostics": 3, "constraints": 4,
        "integrations": 5, "training": 6, "reports": 7, "top": 8}
TOP = ("cli", "__main__")  # with procres/__init__.py: the command line and the public API
SUBPACKAGES = ["spectral", "models", "diagnostics", "constraints", "integrations", "training", "reports"]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _part(module: str) -> str:
    rest = module.split(".")[1:]
    return "top" if not rest or rest[0] in TOP else rest[0]


def _edges() -> dict[str, set[str]]:
    """module -> the procres modules it imports (a package import counts as its ``__init__``)."""
    edges = {}
    for module, path in MODULES.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        targets = {m for m in imported_modules(path, package) if m in MODULES and m != module}
        # ``from procres.reports import plots`` names the module procres.reports.plots, not the package
        edges[module] = {t for t in targets if not any(u.startswith(t + ".") for u in targets) or t == "procres"}
    return edges


EDGES = _edges()


def test_every_module_is_in_a_part():
    assert set(map(_part, MODULES)) == set(RANK)
    assert all((ROOT / name / "__init__.py").is_file() for name in SUBPACKAGES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    mine = _part(module)
    for target in EDGES[module]:
        theirs = _part(target)
        assert target != "procres" or module == "procres.cli", (
            f"{module} imports the top-level package; import the module that defines the name")
        if theirs == mine:
            continue
        assert RANK[theirs] < RANK[mine], f"{module} ({mine}) imports {target} ({theirs}): an upward import"


def test_no_circle_between_or_inside_parts():
    state, cycle = {}, []

    def visit(m, path):
        state[m] = "open"
        for t in sorted(EDGES[m]):
            if state.get(t) == "open":
                cycle.extend(path[path.index(t):] + [t] if t in path else [m, t])
                return True
            if t not in state and visit(t, path + [t]):
                return True
        state[m] = "done"
        return False

    for m in sorted(MODULES):
        if m not in state and visit(m, [m]):
            break
    assert not cycle, " -> ".join(cycle)


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_each_part_says_what_it_is_for_and_imports_nothing(package):
    path = ROOT / package / "__init__.py"
    text = path.read_text()
    assert text.startswith('"""') and len(text.strip().splitlines()) >= 4
    assert not EDGES[f"procres.{package}"], f"procres.{package}.__init__ imports {EDGES[f'procres.{package}']}"


def test_the_checker_sees_upward_and_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from procres.reports import plots\n    from ..training.loop import train\n")
    assert {"procres.reports.plots", "procres.training.loop"} <= imported_modules(module, "procres.spectral")


def test_every_public_name_resolves_lazily():
    for name in procres.__all__:
        assert getattr(procres, name) is not None, name


def test_the_readme_tree_names_every_part_and_module():
    readme = (ROOT.parent / "README.md").read_text()
    tree = readme.split("### Where everything lives", 1)[1].split("```", 2)[1]
    blocks, current = {}, None
    for line in tree.splitlines():
        if line.startswith("  ") and not line.startswith("    "):
            current = line.split()[0].rstrip("/")
            blocks[current] = line
        elif current is not None:
            blocks[current] += "\n" + line
    for package in SUBPACKAGES:
        listed = blocks.get(package, "")
        files = sorted(p.name for p in (ROOT / package).glob("*.py") if p.name != "__init__.py")
        assert all(name in listed for name in files), (package, [n for n in files if n not in listed])
    assert all(f"{name}.py" in blocks for name in ("errors", "files", "cli"))

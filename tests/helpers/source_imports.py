"""What a procres source file imports, read from its syntax tree (lazy imports inside functions
included), for the layout tests."""

import ast
from pathlib import Path


def imported_modules(path, package: str) -> set[str]:
    """Every module ``path`` (a module of ``package``, e.g. ``procres.reports.demo``) imports:
    ``import a.b`` gives ``a.b``; ``from a import b`` gives ``a`` and ``a.b`` (``b`` may be a
    submodule or a name); relative imports are resolved against ``package``."""
    tree = ast.parse(Path(path).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found

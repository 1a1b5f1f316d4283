"""The package's layers only point down: checked on the import graph of the source itself.

    __main__
    → cli, docgen
      → demo                                        (the demo command: a pipeline and its seed table)
        → pipeline
          → unlearn | merge | evaluate | hub        (peers: no imports between them)
            → runs, card                            (what a run directory is; the model card)
              → data                                (loading, split, and discovery, which embeds or classifies)
                → models, runtime, tensorfiles
                  → provenance, config → fsutil → errors, the package root (version)

A module may import from its own unit (a package or a top-level module) and from any unit on a
lower line, never from a unit on its own line or above. The test reads every `import` statement
(those inside functions too, since a lazy import is still a dependency) with `ast`, so it needs no
import of the package and cannot be fooled by import order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spunge_merge"

# Top to bottom. Units on one line are peers and may not import each other.
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli", "docgen"},
    {"demo"},
    {"pipeline"},
    {"unlearn", "merge", "evaluate", "hub"},
    {"runs", "card"},
    {"data"},
    {"models", "runtime", "tensorfiles"},
    {"provenance", "config"},
    {"fsutil"},
    {"errors", "__init__"},
]
LEVEL = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    """`spunge_merge.merge.runner` → `merge`; `spunge_merge` → `__init__`; `spunge_merge.__version__` → `__init__`."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__version__":
        return "__init__"
    return parts[1]


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every spunge_merge module (or package) `path` imports, absolute or relative."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "spunge_merge")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "spunge_merge":
                found.add(module)
    return found


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(path)) for path in _sources()}
    assert units - set(LEVEL) == set(), "a new top-level module or package needs a place in LAYERS"


def _upward(path: Path, root: Path = PACKAGE) -> list[str]:
    own = _unit(_module_name(path, root))
    return sorted(module for module in _imports(path, root) if _unit(module) != own and LEVEL[_unit(module)] <= LEVEL[own])


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    own = _unit(_module_name(path))
    wrong = _upward(path)
    assert not wrong, f"{path.relative_to(PACKAGE)} ({own}, layer {LEVEL[own]}) imports from its own layer or above: {wrong}"


def test_the_check_sees_a_violation(tmp_path):
    """The checker itself, on a scratch package: upward and peer imports, absolute, relative and lazy, are found."""
    root = tmp_path / "spunge_merge"
    probe = root / "merge" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("from spunge_merge.runs import list_runs\nfrom . import views\n\n\n"
                     "def f():\n    from spunge_merge.pipeline.runner import run_pipeline\n    from ..unlearn import registry\n")
    assert _imports(probe, root) == {"spunge_merge.runs", "spunge_merge.merge", "spunge_merge.pipeline.runner", "spunge_merge.unlearn"}
    assert _upward(probe, root) == ["spunge_merge.pipeline.runner", "spunge_merge.unlearn"]

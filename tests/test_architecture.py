"""The house rules of the package, read from its source (docs/architecture.md draws the picture).

* Arrows only run down: a subpackage imports only from the rooms below it (:data:`BELOW`).
* No cycle: the modules' imports, those inside functions included, form no loop.
* A module over :data:`MAX_LINES` lines says why in its docstring (a paragraph "Why one module: ...").
"""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "otrain"

#: The foundations, which every room may use.
BASE = {"otrain", "errors", "io", "options"}
#: For each room, the rooms it may import from (besides itself); the foundations are ordered too.
BELOW: dict[str, set[str]] = {
    "otrain": set(),
    "errors": set(),
    "io": {"otrain", "errors"},
    "options": {"otrain", "errors", "io"},
    "metrics": BASE,
    "nets": BASE,
    "data": BASE,
    "simulate": BASE,
    "track": BASE,
    "score": BASE | {"metrics", "nets", "data", "track"},
    "train": BASE | {"metrics", "nets", "data", "track", "score"},
    "judge": BASE | {"metrics", "nets", "data", "track", "score"},
    "vet": BASE | {"metrics", "nets", "data", "track", "score", "judge"},
    # The entry points, and the pyfunc loader name of models logged before the rooms (otrain/model.py).
    "cli": BASE | {"metrics", "nets", "data", "simulate", "track", "score", "train", "judge", "vet"},
    "model": {"score"},
}
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    """``otrain.score.spark`` -> ``score``; ``otrain.errors`` -> ``errors``; ``otrain`` -> ``otrain``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "otrain"


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    """The otrain modules a file imports, anywhere in it (functions import lazily)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "otrain"}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (otrain imports absolutely)"
            if node.module and node.module.split(".")[0] == "otrain":
                submodules = {f"{node.module}.{alias.name}" for alias in node.names}
                found |= {name for name in submodules if is_module(name)} or {node.module}
    return {name for name in found if is_module(name)}


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_rooms_are_the_documented_ones() -> None:
    rooms = {room(name) for name in graph()}
    assert rooms == set(BELOW)
    picture = (ROOT / "docs" / "architecture.md").read_text()
    for name in rooms - {"otrain", "errors", "model"}:
        assert f"`otrain.{name}`" in picture, f"docs/architecture.md does not describe otrain/{name}/"


def test_arrows_only_run_down() -> None:
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if room(target) != room(module) and room(target) not in BELOW[room(module)]
    )
    assert not upward, "\n".join(upward)


def test_no_import_cycle() -> None:
    edges = {module: {target for target in targets if target != module} for module, targets in graph().items()}
    # A package's __init__ is imported with every module in it; importing a submodule from its own
    # package's __init__ is not a loop of logic.
    edges = {module: {t for t in targets if not module.startswith(f"{t}.")} for module, targets in edges.items()}
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: module_name(path))
def test_a_long_module_says_why(path: Path) -> None:
    source = path.read_text()
    if source.count("\n") <= MAX_LINES:
        return
    docstring = ast.get_docstring(ast.parse(source)) or ""
    assert re.search(r"^Why one module: \S", docstring, re.M), (
        f"{module_name(path)} has {source.count(chr(10))} lines: split it, or say why in its docstring "
        "(a paragraph starting 'Why one module:')"
    )


def test_the_rules_can_fail(tmp_path: Path) -> None:
    """The readers see a lazy import and a loop, so the tests above are not vacuous."""
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from otrain.score.scoring import predict\n")
    assert imports_of(lazy) == {"otrain.score.scoring"}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).prepare()
    assert "score" not in BELOW["nets"]
    assert "score" not in BELOW["track"]
    assert "options" not in BELOW["io"]

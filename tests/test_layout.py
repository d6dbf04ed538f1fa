"""The package's shape: one subpackage per stage, imports running one way (cli → … → data → leaves), small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import chestxray

PACKAGE = Path(chestxray.__file__).resolve().parent
# Lower rank = lower in the pipeline; a module may import its own stage, the leaves and lower ranks only.
# Stages sharing a rank are siblings and do not import each other.
RANKS = {
    "errors": 0, "files": 0, "openmp": 0, "locks": 0.5,  # locks: a leaf that raises errors.ConfigError
    "data": 1,
    "models": 2,
    "training": 3,
    "inference": 4,
    "evaluation": 5, "explain": 5,
    "report": 6, "deploy": 6,
    "workflows": 7,
    "cli": 8,
}
MAX_LINES = 600


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.stem not in ("__init__", "__main__"))


def _stage(path_or_name: str) -> str:
    return path_or_name.split(".")[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, stage) of every chestxray import in a module, at top level or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("chestxray"):
            names = [node.module] if node.module != "chestxray" else [f"chestxray.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("chestxray.")]
        else:
            continue
        found += [(node.lineno, _stage(n.removeprefix("chestxray."))) for n in names if n != "chestxray"]
    return found


def test_every_module_belongs_to_a_known_stage() -> None:
    stages = {_stage(str(p.relative_to(PACKAGE)).removesuffix(".py").replace("/", ".")) for p in _modules()}
    assert stages <= set(RANKS), f"modules outside the known stages: {sorted(stages - set(RANKS))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path: Path) -> None:
    own = _stage(str(path.relative_to(PACKAGE)).removesuffix(".py").replace("/", "."))
    for line, stage in _imports(path):
        if stage == own:
            continue
        assert stage in RANKS, f"{path.name}:{line} imports unknown chestxray module {stage!r}"
        assert RANKS[stage] < RANKS[own], (
            f"{path.relative_to(PACKAGE)}:{line} ({own}, rank {RANKS[own]}) imports {stage} (rank {RANKS[stage]}): "
            "imports must run down the pipeline"
        )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_600_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; split it by responsibility"


def test_every_stage_says_what_it_promises() -> None:
    for stage in RANKS:
        init = PACKAGE / stage / "__init__.py"
        if (PACKAGE / stage).is_dir():
            doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
            assert doc and len(doc.split()) >= 15, f"{init} needs a paragraph saying what the stage promises the next"


def test_nothing_imports_the_cli() -> None:
    for path in _modules():
        if "cli" not in path.relative_to(PACKAGE).parts:
            assert all(stage != "cli" for _, stage in _imports(path)), f"{path} imports the CLI"

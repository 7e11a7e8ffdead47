"""The package's layers import one way: a lower layer never imports a higher one.

errors -> io -> {data, graph} -> nn -> models -> inference -> {integrations, analysis} -> train -> cli.
Every import statement counts, including those inside functions and ``TYPE_CHECKING`` blocks:
a lazy import is still a dependency. Peers must not import each other: ``data`` and ``graph``
(datasets and graphs both build on records), ``integrations`` and ``analysis``. The package root (``cgcnn_ase/__init__.py``, ``__main__``) and the deprecated
re-export modules sit above everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGE = REPO / "cgcnn_ase"

#: Layer rank of each top-level part of the package; equal ranks in different parts are peers.
RANKS = {
    "errors": 0,
    "progress": 0,
    "warning_blocks": 0,
    "io": 1,
    "data": 2,
    "graph": 2,
    "nn": 4,
    "models": 5,
    "inference": 6,
    "integrations": 7,
    "analysis": 7,
    "train": 8,
    "cli": 9,
}
TOP = 10  # the package root and the deprecated re-exports (calculator.py, featurizer.py, predictor.py)

#: The parts every layer is documented to have; the test fails if one disappears or a new one is unranked.
EXPECTED_PARTS = set(RANKS)


def part_of(module: str) -> str | None:
    """``"cgcnn_ase.graph.batch"`` -> ``"graph"``; ``None`` for modules outside the package or the root."""
    pieces = module.split(".")
    if pieces[0] != "cgcnn_ase" or len(pieces) < 2:
        return None
    return pieces[1]


def rank_of(module: str) -> int:
    part = part_of(module)
    return RANKS.get(part, TOP) if part is not None else TOP


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every cgcnn_ase import in ``source`` (relative imports resolved)."""
    out = []
    package = module.rsplit(".", 1)[0]  # "a.b.c" and "a.b.__init__" both sit in the package "a.b"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("cgcnn_ase")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "cgcnn_ase":  # `from cgcnn_ase import X`: X may be a subpackage
                out += [(node.lineno, f"cgcnn_ase.{alias.name}") for alias in node.names if alias.name in RANKS]
                # the root's only eager import is errors, so its version string is safe to take from anywhere
                if any(alias.name not in RANKS and alias.name != "__version__" for alias in node.names):
                    out.append((node.lineno, "cgcnn_ase"))
            elif target.startswith("cgcnn_ase"):
                out.append((node.lineno, target))
    return out


def violations(module: str, source: str) -> list[str]:
    """Imports in ``source`` (the text of ``module``) that break the layering."""
    mine, my_part = rank_of(module), part_of(module)
    bad = []
    for line, target in imported_modules(source, module):
        if target == "cgcnn_ase" and mine < TOP:
            bad.append(f"{module}:{line} imports the package root (import from the defining module instead)")
            continue
        theirs, their_part = rank_of(target), part_of(target)
        if their_part == my_part:
            continue
        if theirs > mine or (theirs == mine and mine < TOP):
            bad.append(f"{module}:{line} imports {target} (layer {their_part!r} is not below {my_part!r})")
    return bad


def package_modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(REPO).with_suffix("")
        out.append((".".join(relative.parts), path))
    return out


def test_every_part_of_the_package_has_a_rank():
    parts = {p.name if p.is_dir() else p.stem for p in PACKAGE.iterdir() if not p.name.startswith(("_", "."))}
    parts -= {"pretrained_models", "calculator", "featurizer", "predictor"}  # data; deprecated re-exports
    parts = {p for p in parts if (PACKAGE / p).is_dir() or (PACKAGE / f"{p}.py").is_file()}
    assert parts == EXPECTED_PARTS


@pytest.mark.parametrize("module,path", package_modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_module_imports_only_lower_layers(module, path):
    assert violations(module, path.read_text()) == []


@pytest.mark.parametrize(
    "module,source",
    [
        ("cgcnn_ase.io.reader", "from cgcnn_ase.cli import main\n"),
        ("cgcnn_ase.graph.batch", "def f():\n    from cgcnn_ase.models.registry import load_model\n"),
        ("cgcnn_ase.models.folder", "import cgcnn_ase.inference.predictor\n"),
        ("cgcnn_ase.analysis.sites", "from cgcnn_ase.integrations.ase import CGCNNCalculator\n"),  # peers
        ("cgcnn_ase.nn.network", "from cgcnn_ase import CGCNNPredictor\n"),  # the root re-exports everything
        ("cgcnn_ase.errors", "from cgcnn_ase import io\n"),
        ("cgcnn_ase.graph.neighbours", "from cgcnn_ase.data.datasets import load_table\n"),  # peers
        ("cgcnn_ase.data.splits", "from cgcnn_ase.graph.config import GraphConfig\n"),
        ("cgcnn_ase.graph.config", "from cgcnn_ase import __version__, list_models\n"),
        ("cgcnn_ase.graph.__init__", "from ..inference.predictor import CGCNNPredictor\n"),  # relative, from an __init__
        ("cgcnn_ase.graph.__init__", "from .. import cli\n"),
    ],
)
def test_the_checker_catches_upward_imports(module, source):
    """Negative controls: each of these imports must be reported."""
    assert violations(module, source)


def test_the_checker_allows_downward_and_sibling_imports():
    source = (
        "from cgcnn_ase.errors import CGCNNError\nfrom cgcnn_ase.graph.batch import collate\n"
        "from cgcnn_ase.models.folder import LoadedModel\nfrom . import registry\n"
    )
    assert violations("cgcnn_ase.models.registry", source) == []


def test_every_long_module_is_named_among_the_documented_exceptions():
    """docs/architecture.md: 'Modules of about 600 lines at most; the exceptions are ...' names each longer one."""
    import re

    text = " ".join((REPO / "docs" / "architecture.md").read_text().split())
    rule = text[text.index("Modules of about 600 lines at most"):text.index("No function body over")]
    named = set(re.findall(r"`([\w/]+\.py)`", rule))
    long = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if len(p.read_text().splitlines()) > 620}
    assert long <= named, sorted(long - named)

"""The benchmark scripts are not run by the suite (their figures are measured by hand), so these checks keep
them from rotting silently: every name they import from the package exists (a renamed function broke
``bench_predict.py`` once), and the generated model tables of the docs match the shipped ``model.json`` files."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest

from .conftest import REPO

BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))


def _package_imports(path) -> list[tuple[int, str, str]]:
    """``(line, module, name)`` of every ``from cgcnn_ase... import name`` in the file (lazy ones included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cgcnn_ase") and not node.level:
            out += [(node.lineno, node.module, alias.name) for alias in node.names]
    return out


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_every_name_a_benchmark_imports_from_the_package_exists(path):
    missing = []
    for line, module, name in _package_imports(path):
        imported = importlib.import_module(module)
        if not hasattr(imported, name):
            try:  # a submodule: from cgcnn_ase.io import reader
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{path.name}:{line}: {module}.{name}")
    assert missing == []


def test_the_checker_finds_a_missing_name(tmp_path):
    script = tmp_path / "old.py"
    script.write_text("def f():\n    from cgcnn_ase.io.reader import _cif_gemmi, to_record\n")
    imports = _package_imports(script)
    assert imports == [(2, "cgcnn_ase.io.reader", "_cif_gemmi"), (2, "cgcnn_ase.io.reader", "to_record")]
    assert not hasattr(importlib.import_module("cgcnn_ase.io.reader"), "_cif_gemmi")


def test_the_docs_model_tables_match_the_model_json_files():
    """README.md, docs/models.md and docs/uncertainty.md hold tables that benchmarks/model_tables.py writes;
    a hand edit there (as happened to the README's moduli rows) would be undone by the next regeneration."""
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "model_tables.py"), "--check"],
                         capture_output=True, text=True, cwd=REPO, timeout=120, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr

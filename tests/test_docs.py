"""The documentation builds (mkdocs --strict) and every Python example in it runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REFERENCE, REPO, require_shared

DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


@pytest.mark.parametrize("path", [p for p in DOCS if _blocks(p)], ids=lambda p: p.name)
def test_python_examples_run(path, monkeypatch):
    """All ```python blocks of a page run in order, in one namespace, from the repo root."""
    require_shared(REFERENCE)
    monkeypatch.chdir(REPO)
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for k, code in enumerate(_blocks(path)):
        try:
            exec(compile(code, f"{path.name}[block {k}]", "exec"), namespace)  # noqa: S102 - our own docs
        except Exception as exc:  # noqa: BLE001 - report which block failed
            pytest.fail(f"{path.name} block {k} failed: {type(exc).__name__}: {exc}\n{code}")


def test_mkdocs_builds_strict(tmp_path):
    if shutil.which("mkdocs") is None and not _module_available("mkdocs"):
        if os.environ.get("CGCNN_REQUIRE_SHARED"):
            pytest.fail("mkdocs is not installed (pip install -e '.[test]')")
        pytest.skip("mkdocs not installed")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None

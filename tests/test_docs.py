"""The documentation builds (mkdocs --strict) and every example in it runs, with and without ``../shared``.

Two modes for the ```python blocks of every page:

- **with the reference data** (``../shared`` beside the repository, as in CI): every block runs, in order,
  from the repository root;
- **on a fresh clone**: from a folder holding only a copy of ``examples/`` and ``configs/`` (no
  ``../shared`` beside it), every block that does not name ``../shared`` runs. A block that needs the data
  says so by naming it; the blocks after it must not depend on it, so a page stays usable without the data.

The quickstart and the README must run entirely on a fresh clone, their ``cgcnn-ase`` commands included.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from .conftest import REFERENCE, REPO, require_shared

DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
BASH = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
NEEDS_SHARED = "../shared"
FRESH_CLONE_PAGES = ("quickstart.md", "README.md")


def _blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


def _run_blocks(path: Path, *, skip_shared: bool) -> int:
    """Run the page's python blocks in order in one namespace; returns how many ran."""
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    ran = 0
    for k, code in enumerate(_blocks(path)):
        if skip_shared and NEEDS_SHARED in code:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(compile(code, f"{path.name}[block {k}]", "exec"), namespace)  # noqa: S102 - our own docs
        except Exception as exc:  # noqa: BLE001 - report which block failed
            where = "on a fresh clone (no ../shared)" if skip_shared else "with ../shared"
            pytest.fail(f"{path.name} block {k} failed {where}: {type(exc).__name__}: {exc}\n{code}")
        ran += 1
    return ran


@pytest.fixture()
def fresh_clone(tmp_path, monkeypatch) -> Path:
    """A working folder like a user's clone without ../shared: examples/ and configs/ only."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for folder in ("examples", "configs"):
        shutil.copytree(REPO / folder, clone / folder)
    assert not (clone.parent / "shared").exists()
    monkeypatch.chdir(clone)
    return clone


@pytest.mark.parametrize("path", [p for p in DOCS if _blocks(p)], ids=lambda p: p.name)
def test_python_examples_run(path, monkeypatch):
    """All ```python blocks of a page run in order, in one namespace, from the repo root (files they write
    there, as a user's would, are removed afterwards)."""
    require_shared(REFERENCE)
    monkeypatch.chdir(REPO)
    before = set(REPO.iterdir())
    try:
        _run_blocks(path, skip_shared=False)
    finally:
        for written in set(REPO.iterdir()) - before:
            shutil.rmtree(written) if written.is_dir() else written.unlink()


@pytest.mark.parametrize("path", [p for p in DOCS if _blocks(p)], ids=lambda p: p.name)
def test_python_examples_run_on_a_fresh_clone(path, fresh_clone):
    """Every block that does not name ../shared runs without it."""
    _run_blocks(path, skip_shared=True)


@pytest.mark.parametrize("name", FRESH_CLONE_PAGES)
def test_quickstart_and_readme_need_no_shared_data(name):
    path = REPO / name if name == "README.md" else REPO / "docs" / name
    text = path.read_text()
    blocks = FENCE.findall(text) + BASH.findall(text)
    assert blocks and not [b for b in blocks if NEEDS_SHARED in b]


def _commands(path: Path) -> list[list[str]]:
    """The ``cgcnn-ase ...`` commands of a page's bash blocks (continuations joined, comments dropped)."""
    out = []
    for block in BASH.findall(path.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["cgcnn-ase"]:
                    out.append(words[1:])
    return out


@pytest.mark.parametrize("name", FRESH_CLONE_PAGES)
def test_cli_examples_run_on_a_fresh_clone(name, fresh_clone):
    """The README's main job and the quickstart's commands succeed without ../shared."""
    from click.testing import CliRunner

    from cgcnn_ase.cli import main

    path = REPO / name if name == "README.md" else REPO / "docs" / name
    commands = [c for c in _commands(path) if c[:1] == ["predict"]]
    assert commands, f"{name} shows no cgcnn-ase predict command"
    for words in commands:
        result = CliRunner().invoke(main, words, catch_exceptions=False)
        assert result.exit_code == 0, f"cgcnn-ase {' '.join(words)}\n{result.output[-2000:]}"


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


def test_the_uncertainty_prose_quotes_the_shipped_ensembles():
    """The ranges docs/uncertainty.md and the README state in words (not only its generated tables) are those
    of the shipped ensembles' model.json: coverage within 1 and 2 calibrated std, the calibration scale, the
    ensemble's gain over its members and the test Spearman correlations."""
    import json

    tests = {}
    for path in sorted((REPO / "pretrained_models").glob("*/model.json")):
        document = json.loads(path.read_text())
        test = document["metadata"].get("uncertainty", {}).get("test", {})
        if test.get("task") == "regression":
            tests[document["property"]] = (test, document["ensemble"]["calibration"]["conformal"]["test_spearman"])
    assert len(tests) == 7

    def span(values, fmt):
        return f"{fmt(min(values))}-{fmt(max(values))}"

    def pct(x):
        return f"{round(100 * x)}"

    page = (REPO / "docs" / "uncertainty.md").read_text()
    within = [t["calibrated"]["within_1std"] for t, _ in tests.values()]
    assert f"±1 `std` holds {span(within, pct)}% of the test errors" in page
    assert f"{span(within, pct)}% fall within 1 std" in page
    assert f"{span([t['calibrated']['within_2std'] for t, _ in tests.values()], pct)}% of test errors fall within 2" in page
    assert f"Only {span([t['raw']['within_1std'] for t, _ in tests.values()], pct)}% of test errors" in page
    assert f"factor of {span([t['scale'] for t, _ in tests.values()], lambda x: f'{x:.1f}')}" in page
    gains = [t["ensemble_vs_members"]["improvement_over_member_mean"] / t["ensemble_vs_members"]["member_mean"]
             for t, _ in tests.values()]  # fmt: skip
    assert f"MAE is {span(gains, pct)}% below the members'" in page
    def two(x):
        return f"{x:.2f}"

    assert f"std is {span([s['std'] for _, s in tests.values()], two)}, with the per-crystal `uncertainty` " \
           f"{span([s['uncertainty'] for _, s in tests.values()], two)}" in page  # fmt: skip
    for name, words in (("formation_energy", "formation energy"), ("band_gap", "band gap"),
                        ("fermi_energy", "Fermi energy"), ("bulk_modulus", "bulk\nmodulus"),
                        ("shear_modulus", "shear modulus"), ("poisson_ratio", "Poisson ratio")):  # fmt: skip
        spearman = tests[("log10_" if name.endswith("modulus") else "") + name][1]
        assert f"{spearman['uncertainty']:.2f} ({words})" in page, name
    fe = tests["formation_energy"][1]
    readme = (REPO / "README.md").read_text()
    assert f"Spearman {fe['uncertainty']:.2f} vs {fe['std']:.2f} for formation energy on the test split" in readme

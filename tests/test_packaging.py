"""The built wheel carries the package and every shipped model, and the models load from it."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from cgcnn_ase.models.registry import list_models

from .conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(REPO)],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"wheel build failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    (path,) = out.glob("cgcnn_ase-*.whl")
    return path


def test_wheel_contains_package_and_models(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "cgcnn_ase/predictor.py" in names and "cgcnn_ase/cli.py" in names
    for template in ("model_card.md.j2", "ensemble_card.md.j2"):  # the model cards' Jinja2 templates
        assert f"cgcnn_ase/models/templates/{template}" in names
    for info in list_models():
        for file in ("model.json", "weights.safetensors", "atom_init.json", "README.md"):
            assert f"cgcnn_ase/pretrained_models/{info.name}/{file}" in names
    assert any(n.endswith("/LICENSE") for n in names if ".dist-info/" in n)  # round 13: no licence anywhere
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "cgcnn-ase = cgcnn_ase.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_every_shipped_model_loads_from_the_installed_wheel(wheel, tmp_path):
    """Unpack the wheel as site-packages would, outside the source tree, and load each model."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import cgcnn_ase; "
        "from cgcnn_ase import CGCNNPredictor, list_models; from ase.build import bulk; "
        "assert cgcnn_ase.__file__.startswith(sys.argv[1]), cgcnn_ase.__file__; "
        "out = {}\n"
        "for info in list_models():\n"
        "    p = CGCNNPredictor.from_pretrained(info.aliases[0] if info.aliases else info.name, device='cpu')\n"
        "    out[info.name] = float(p.predict(bulk('NaCl', 'rocksalt', a=5.64)).values[0])\n"
        "print(json.dumps(out))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(loaded) == sorted(info.name for info in list_models())

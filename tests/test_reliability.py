"""Bad and edge inputs, each through the Python API, the ASE calculator, the matminer
featurizer (with and without ignore_errors) and the CLI. Every case gets a specific
exception or a documented warning whose message names the input and the problem; nothing
bad is silently predicted as a number. The table is documented in docs/reliability.md."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.io import write
from click.testing import CliRunner
from pymatgen.core import Lattice, Molecule, Structure
from pymatgen.core.periodic_table import DummySpecies

from cgcnn_ase.integrations.ase import CGCNNCalculator
from cgcnn_ase.models.folder import save_model_folder
from cgcnn_ase.cli import EXIT_BAD_INPUT, main
from cgcnn_ase.errors import (
    CloseAtomsWarning,
    InvalidStructureError,
    SparseGraphWarning,
    StretchedStructureWarning,
    StructureReadError,
    UnseenElementWarning,
    UnsupportedElementError,
    VacuumWarning,
)
from cgcnn_ase.integrations.matminer import CGCNNFeaturizer
from cgcnn_ase.inference.predictor import CGCNNPredictor

from .conftest import random_model
from .test_structures import DISORDERED_CIF

GOOD = bulk("NaCl", "rocksalt", a=5.64)


@dataclass(frozen=True)
class Case:
    """One bad/edge input: how to make it, and the exception or warning it must produce."""

    name: str
    make: Callable[[Path], Any]  # tmp_path -> Atoms | Structure | path
    kind: type[Exception] | type[Warning]
    match: str
    file: bool = False  # the input is a path (not an in-memory structure)


def _file(name: str, content: str | bytes) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        path = tmp / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        return str(path)

    return make


def _cu(**kwargs: Any) -> Atoms:
    return Atoms("Cu", **{"cell": np.eye(3) * 3.6, "pbc": True, **kwargs})


POSCAR_NO_SPECIES = "comment without species\n1.0\n3.6 0 0\n0 3.6 0\n0 0 3.6\n1\nDirect\n0 0 0\n"
CIF_NO_ATOMS = "data_x\n_cell_length_a 4\n_cell_length_b 4\n_cell_length_c 4\n_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"

CASES = [
    Case("empty Atoms", lambda t: Atoms(cell=np.eye(3) * 5, pbc=True), InvalidStructureError, "no atoms"),
    Case("one atom in a large box", lambda t: Atoms("Cu", cell=np.eye(3) * 20, pbc=True), SparseGraphWarning, "fewer than 12 neighbours"),
    Case("molecule with pbc=False", lambda t: molecule("H2O"), InvalidStructureError, "periodic in all three"),
    Case("slab periodic in two directions", lambda t: fcc111("Cu", (2, 2, 3), vacuum=8.0), InvalidStructureError, r"pbc=\(True, True, False\)"),
    Case("zero cell volume", lambda t: _cu(cell=np.zeros((3, 3))), InvalidStructureError, "degenerate"),
    Case("coplanar cell vectors", lambda t: _cu(cell=[[1, 0, 0], [0, 1, 0], [1, 1, 0]]), InvalidStructureError, "degenerate"),
    Case("NaN cell", lambda t: _cu(cell=np.full((3, 3), np.nan)), InvalidStructureError, "cell contains NaN"),
    Case("infinite cell", lambda t: _cu(cell=np.diag([np.inf, 4.0, 4.0])), InvalidStructureError, "cell contains NaN or infinite"),
    Case("NaN position", lambda t: Atoms("Cu2", positions=[[0, 0, 0], [np.nan, 0, 0]], cell=np.eye(3) * 4, pbc=True), InvalidStructureError, r"atom\(s\) \[1\] have NaN"),
    Case("infinite position", lambda t: Atoms("Cu2", positions=[[0, 0, 0], [0, np.inf, 0]], cell=np.eye(3) * 4, pbc=True), InvalidStructureError, "NaN or infinite positions"),
    Case("two atoms at the same position", lambda t: Atoms("Cu2", positions=[[1, 1, 1], [1, 1, 1]], cell=np.eye(3) * 4, pbc=True), InvalidStructureError, "overlapping"),
    Case("atoms 0.1 Å apart", lambda t: Atoms("Cu2", positions=[[1, 1, 1], [1, 1, 1.1]], cell=np.eye(3) * 4, pbc=True), InvalidStructureError, r"0\.100 Å apart"),
    Case("atoms closer than half their covalent radii", lambda t: Atoms("Cu2", positions=[[1, 1, 1], [1, 1, 1.8]], cell=np.eye(3) * 4, pbc=True), CloseAtomsWarning, r"0\.800 Å apart, 0\.36 x the sum"),
    Case("lattice doubled by mistake", lambda t: bulk("NaCl", "rocksalt", a=2 * 5.64), StretchedStructureWarning, "no two atoms are near bonding distance"),
    Case("slab with 15 Å of vacuum and pbc=True", lambda t: fcc111("Cu", (2, 2, 4), vacuum=7.5, periodic=True), VacuumWarning, r"empty gap 15\.0 Å wide across the lattice planes \(0 0 1\)"),
    Case("atomic number 0", lambda t: Atoms(numbers=[0, 11], positions=[[0, 0, 0], [2, 2, 2]], cell=np.eye(3) * 4, pbc=True), InvalidStructureError, "dummy species"),
    Case("atomic number beyond the table", lambda t: Atoms(numbers=[112], cell=np.eye(3) * 3.6, pbc=True), UnsupportedElementError, r"Cn \(Z=112\)"),
    Case("element unseen in training", lambda t: bulk("Xe", "fcc", a=6.2), UnseenElementWarning, "Xe did not occur"),
    Case("pymatgen disordered site", lambda t: Structure(Lattice.cubic(4), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]]), InvalidStructureError, "site 0 is disordered"),
    Case("pymatgen partial occupancy", lambda t: Structure(Lattice.cubic(4), [{"Fe": 0.9}], [[0, 0, 0]]), InvalidStructureError, "occupancy 0.9"),
    Case("pymatgen vacancy species", lambda t: Structure(Lattice.cubic(4), [DummySpecies("X"), "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]]), InvalidStructureError, "dummy species"),
    Case("pymatgen Molecule", lambda t: Molecule(["H", "H"], [[0, 0, 0], [0, 0, 0.74]]), InvalidStructureError, "Molecule is not periodic"),
    Case("unsupported Python object", lambda t: {"numbers": [11]}, InvalidStructureError, "unsupported input type dict"),
    Case("disordered CIF file", _file("disordered.cif", DISORDERED_CIF), InvalidStructureError, "disordered", file=True),
    Case("CIF without atoms", _file("noatoms.cif", CIF_NO_ATOMS), StructureReadError, "not a readable CIF|holds no structure", file=True),
    Case("empty file", _file("empty.cif", ""), StructureReadError, "the file is empty", file=True),
    Case("binary file named .cif", _file("binary.cif", b"\x00\x13\xff\xfe" * 256), StructureReadError, "not a readable CIF", file=True),
    Case("binary file named .xyz", _file("binary.xyz", b"\x00\x13\xff\xfe" * 256), StructureReadError, "could not be read", file=True),
    Case("truncated CIF", _file("truncated.cif", DISORDERED_CIF[:150]), StructureReadError, "not a readable CIF|holds no structure", file=True),
    Case("POSCAR without species names", _file("POSCAR", POSCAR_NO_SPECIES), StructureReadError, "a VASP 4 POSCAR .no species line", file=True),
    Case("text file that is no structure", _file("notes.txt", "hello world\n"), StructureReadError, "unknown format: ASE cannot tell", file=True),
    Case("nonexistent path", lambda t: str(t / "does_not_exist.cif"), StructureReadError, "no such file", file=True),
    Case("directory given as a structure", lambda t: str(t), StructureReadError, "is a directory", file=True),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random model whose training elements exclude Xe (Z=54)."""
    loaded = random_model(seed=21)
    loaded.spec = replace(loaded.spec, metadata={"elements_seen": [z for z in range(1, 101) if z != 54]})
    return save_model_folder(tmp_path_factory.mktemp("reliability") / "model", loaded)


@pytest.fixture(scope="module")
def predictor(model_dir) -> CGCNNPredictor:
    return CGCNNPredictor.from_checkpoint(model_dir, device="cpu")


def test_the_battery_has_at_least_30_cases():
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


def _is_warning(case: Case) -> bool:
    return issubclass(case.kind, Warning)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_python_api(case, predictor, tmp_path):
    item = case.make(tmp_path)
    if _is_warning(case):
        with pytest.warns(case.kind, match=case.match):
            result = predictor.predict(item)
        assert np.isfinite(result.values).all()
        return
    with pytest.raises(case.kind, match=case.match) as info:
        predictor.predict(item)
    if isinstance(item, str):
        assert item in str(info.value)  # the message names the file
    # collected, the bad item is NaN with its message, and a good neighbour still predicts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collected = predictor.predict([GOOD, item], errors="collect")
    assert np.isfinite(collected.values[0]) and np.isnan(collected.values[1])
    assert collected.errors[1] and (not isinstance(item, str) or item in collected.errors[1])


@pytest.mark.parametrize("case", [c for c in CASES if not c.file and "Python object" not in c.name], ids=lambda c: c.name)
def test_ase_calculator(case, model_dir, tmp_path):
    item = case.make(tmp_path)
    atoms = item if isinstance(item, Atoms) else None
    if atoms is None:
        from pymatgen.io.ase import AseAtomsAdaptor

        try:
            atoms = AseAtomsAdaptor.get_atoms(item)
        except Exception:  # noqa: BLE001 - pymatgen cannot express it as Atoms: nothing to test here
            pytest.skip(f"{case.name} has no ase.Atoms form")
    atoms.calc = CGCNNCalculator(model_dir)
    if _is_warning(case):
        with pytest.warns(case.kind, match=case.match):
            assert np.isfinite(atoms.get_potential_energy())
        return
    with pytest.raises((case.kind, InvalidStructureError), match=case.match if isinstance(item, Atoms) else None):
        atoms.get_potential_energy()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matminer_featurizer(case, model_dir, tmp_path):
    item = case.make(tmp_path)
    featurizer = CGCNNFeaturizer([str(model_dir)])
    if _is_warning(case):
        with pytest.warns(case.kind, match=case.match):
            assert np.isfinite(featurizer.featurize_many([item], pbar=False)[0][0])
        return
    with pytest.raises(case.kind, match=case.match):
        featurizer.featurize_many([GOOD, item], pbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = featurizer.featurize_many([GOOD, item], ignore_errors=True, return_errors=True, pbar=False)
    assert np.isfinite(rows[0][0]) and np.isnan(rows[1][0])
    assert isinstance(rows[1][-1], str) and rows[1][-1]


def _as_cli_file(item: Any, tmp: Path) -> str | None:
    """A path for the CLI: files as they are, Atoms written to extxyz (None if impossible)."""
    if isinstance(item, str):
        return item
    if isinstance(item, Atoms):
        path = tmp / "case.extxyz"
        try:
            write(path, item, format="extxyz")
        except Exception:  # noqa: BLE001 - some broken Atoms cannot even be written
            return None
        return str(path)
    if isinstance(item, Structure):
        path = tmp / "case.cif"
        try:
            item.to(filename=str(path))
        except Exception:  # noqa: BLE001
            return None
        return str(path)
    return None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cli(case, model_dir, tmp_path):
    path = _as_cli_file(case.make(tmp_path), tmp_path)
    if path is None:
        pytest.skip(f"{case.name} cannot be written to a file")
    good = tmp_path / "good.cif"
    write(good, GOOD, format="cif")
    result = CliRunner().invoke(main, ["predict", str(good), path, "--model", str(model_dir)])
    assert "Traceback" not in result.stderr
    if case.name == "directory given as a structure":  # the CLI expands directories (documented)
        assert result.exit_code == 0 and result.stdout.count(str(good)) == 2
        return
    df = pd.read_csv(io.StringIO(result.stdout))
    good_row = df[df["id"] == str(good)]
    assert np.isfinite(good_row.iloc[0, 1])  # the good file is predicted
    lines = [line for line in result.stderr.splitlines() if line.startswith(("error:", "warning:"))]
    if _is_warning(case):
        assert result.exit_code == 0, result.stderr
        assert any(line.startswith("warning:") for line in lines)
        return
    assert result.exit_code == EXIT_BAD_INPUT, result.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and path in errors[0], result.stderr
    bad_rows = df[df["id"].astype(str).str.startswith(path)]
    assert bad_rows.iloc[:, 1].isna().all()


def test_left_handed_cell_is_a_valid_crystal(predictor):
    """A negative-determinant cell describes the same crystal: same prediction (documented)."""
    flipped = GOOD.copy()
    flipped.set_cell(-GOOD.cell.array, scale_atoms=True)
    assert predictor.predict(flipped).values[0] == pytest.approx(predictor.predict(GOOD).values[0], abs=1e-6)


def test_thousands_of_atoms_are_predicted(predictor):
    big = bulk("Cu", "fcc", a=3.6, cubic=True) * (10, 10, 10)  # 4000 atoms
    big.rattle(0.02, seed=0)
    result = predictor.predict(big)
    assert np.isfinite(result.values[0])


@pytest.mark.parametrize("policy", ["error", "ignore"])
def test_sparse_policy(predictor, policy):
    from cgcnn_ase.errors import SparseGraphError

    lonely = Atoms("Cu", cell=np.eye(3) * 20, pbc=True)
    if policy == "error":
        with pytest.raises(SparseGraphError, match="1 of 1 atoms have fewer than 12"):
            predictor.predict(lonely, on_sparse="error")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", SparseGraphWarning)  # the VacuumWarning (a 20 Å box) is another matter
            result = predictor.predict(lonely, on_sparse="ignore")
        assert result.n_sparse.tolist() == [1]


MODEL_CASES = {
    "corrupted weights": lambda f: (f / "weights.safetensors").write_bytes(b"garbage" * 10),
    "model.json does not match weights": lambda f: f.joinpath("model.json").write_text(
        f.joinpath("model.json").read_text().replace('"atom_fea_len": 16', '"atom_fea_len": 32')
    ),
    "missing model.json": lambda f: (f / "model.json").unlink(),
}


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_bad_model_folder_through_every_entry_point(name, model_dir, tmp_path):
    """A broken model is a CheckpointError in the API, calculator and featurizer, and a one-line
    error with exit code 3 in the CLI."""
    import shutil

    from cgcnn_ase.cli import EXIT_MODEL
    from cgcnn_ase.errors import CheckpointError

    folder = Path(shutil.copytree(model_dir, tmp_path / "broken"))
    MODEL_CASES[name](folder)
    with pytest.raises(CheckpointError):
        CGCNNPredictor.from_checkpoint(folder)
    with pytest.raises(CheckpointError):
        CGCNNCalculator(folder)
    with pytest.raises(CheckpointError):
        CGCNNFeaturizer([str(folder)]).feature_labels()
    good = tmp_path / "good.cif"
    write(good, GOOD, format="cif")
    result = CliRunner().invoke(main, ["predict", str(good), "--model", str(folder)])
    assert result.exit_code == EXIT_MODEL
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr

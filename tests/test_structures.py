"""Input normalisation and the specific error for each kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from pymatgen.core import Lattice, Structure
from pymatgen.core.periodic_table import DummySpecies

from cgcnn_ase.errors import InvalidStructureError, StructureReadError
from cgcnn_ase.graph.neighbours import build_graph
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.io.reader import iter_records, read_structures, to_record

DISORDERED_CIF = """data_disordered
_cell_length_a 4.0
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
 Fe Fe1 0.0 0.0 0.0 0.5
 Co Co1 0.0 0.0 0.0 0.5
 O O1 0.5 0.5 0.5 1.0
"""


def test_atoms_and_structure_give_the_same_record():
    atoms = bulk("NaCl", "rocksalt", a=5.64)
    structure = Structure(Lattice(atoms.cell.array), ["Na", "Cl"], atoms.get_scaled_positions(wrap=False))
    a, s = to_record(atoms), to_record(structure)
    np.testing.assert_array_equal(a.numbers, s.numbers)
    np.testing.assert_allclose(a.positions, s.positions, atol=1e-12)
    assert a.volume == pytest.approx(atoms.get_volume())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Atoms(cell=np.eye(3) * 5, pbc=True), "no atoms"),
        (lambda: molecule("H2O"), "periodic in all three directions"),
        (lambda: Atoms("Cu", cell=np.eye(3) * 5, pbc=[True, True, False]), "periodic in all three"),
        (lambda: Atoms("Cu", cell=np.zeros((3, 3)), pbc=True), "degenerate"),
        (lambda: Atoms("Cu", cell=[[1, 0, 0], [2, 0, 0], [0, 0, 1]], pbc=True), "degenerate"),
        (lambda: Atoms("Cu", cell=np.full((3, 3), np.nan), pbc=True), "NaN"),
        (lambda: Atoms("Cu2", positions=[[0, 0, 0], [np.nan, 0, 0]], cell=np.eye(3) * 4, pbc=True), "NaN or infinite positions"),
        (lambda: Atoms("Cu2", positions=[[0, 0, 0], [np.inf, 0, 0]], cell=np.eye(3) * 4, pbc=True), "NaN or infinite positions"),
        (lambda: Atoms(numbers=[0, 29], positions=[[0, 0, 0], [2, 2, 2]], cell=np.eye(3) * 4, pbc=True), "dummy"),
        (lambda: Structure(Lattice.cubic(4), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]]), "disordered"),
        (lambda: Structure(Lattice.cubic(4), [DummySpecies("X")], [[0, 0, 0]]), "dummy species"),
        (lambda: "not a structure object".encode(), "unsupported input type"),
    ],
)
def test_bad_inputs_raise_specific_errors(make, match):
    with pytest.raises(InvalidStructureError, match=match):
        to_record(make())


def test_overlapping_atoms_are_refused():
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 0.01]], cell=np.eye(3) * 4, pbc=True)
    with pytest.raises(InvalidStructureError, match="overlapping"):
        build_graph(to_record(atoms), GraphConfig())


def test_negative_determinant_cell_is_accepted():
    """A left-handed cell is a valid crystal description (volume is |det|)."""
    atoms = bulk("Cu", "fcc", a=3.6)
    flipped = Atoms("Cu", cell=-atoms.cell.array, pbc=True)
    assert to_record(flipped).volume == pytest.approx(atoms.get_volume())


@pytest.mark.parametrize(
    ("content", "name", "match"),
    [
        (None, "missing.cif", "no such file"),
        ("", "empty.cif", "empty"),
        (DISORDERED_CIF, "disordered.cif", "disordered"),
        (DISORDERED_CIF[:120], "truncated.cif", "not a readable CIF|holds no structure"),
        (b"\x00\x01\x02\xff" * 64, "binary.xyz", "could not be read"),
    ],
)
def test_bad_files_raise_errors_naming_the_file(tmp_path, content, name, match):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(InvalidStructureError, match=match) as info:
        read_structures(path)
    assert str(path) in str(info.value)


def test_directory_is_not_a_structure_file(tmp_path):
    with pytest.raises(StructureReadError, match="directory"):
        read_structures(tmp_path)


def test_iter_records_yields_errors_in_place(tmp_path):
    good = bulk("Cu", "fcc", a=3.6)
    items = list(iter_records([good, tmp_path / "nope.cif", good]))
    assert [label for label, _ in items] == ["input 0", str(tmp_path / "nope.cif"), "input 2"]
    assert isinstance(items[1][1], StructureReadError)

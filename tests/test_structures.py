"""Input normalisation and the specific error for each kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import write as ase_write
from pymatgen.core import Lattice, Structure
from pymatgen.core.periodic_table import DummySpecies

from cgcnn_ase.errors import InvalidStructureError, StructureReadError
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.graph.neighbours import build_graph
from cgcnn_ase.io.reader import input_kind, iter_records, read_record, read_records, read_structures, to_record

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
        ("heavy water\n1.0\n5 0 0\n0 5 0\n0 0 5\nO D\n1 2\nCartesian\n0 0 0\n0.96 0 0\n-0.24 0.93 0\n",
         "POSCAR", "unknown element symbol 'D' \\(write the hydrogen isotopes D and T as H\\)"),
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


@pytest.mark.parametrize(
    ("value", "label", "match"),
    [
        ("data_x\n_cell_length_a 1\n", None, "CIF text: not readable CIF text"),
        ("{not json", None, "not valid structure JSON"),
        ('{"a": 1}', None, "not a pymatgen structure dict"),
        (None, "row 1", "row 1: no structure: the value is empty"),
        (float("nan"), "row 1", "no structure: the value is empty"),
        ("   ", "row 1", "no structure: the value is empty"),
        ("nofile.cif", "row 1", "row 1: 'nofile.cif' is neither CIF text nor an existing structure file"),
        ("x" * 5000, None, r"not a readable file path \(File name too long\)"),
        ({"numbers": [11]}, None, "unsupported input type dict"),
    ],
)
def test_text_inputs_raise_specific_errors(value, label, match):
    """The one reader's messages for text, cells and dicts (docs/reliability.md)."""
    with pytest.raises(InvalidStructureError, match=match):
        read_record(value, label)


def test_one_reader_for_every_kind_of_input(tmp_path):
    """A crystal as Atoms, Structure, structure dict, its JSON, CIF text and a CIF file: one record each."""
    atoms = bulk("NaCl", "rocksalt", a=5.64)
    structure = Structure(Lattice(atoms.cell.array), ["Na", "Cl"], atoms.get_scaled_positions(wrap=False))
    path = tmp_path / "nacl.cif"
    path.write_text(structure.to(fmt="cif"))
    inputs = {
        "atoms": atoms, "structure": structure, "dict": structure.as_dict(), "json": structure.to_json(),
        "cif text": path.read_text(), "cif file": path, "cif path text": str(path), "bytes": path.read_bytes(),
    }  # fmt: skip
    kinds = {name: input_kind(value) for name, value in inputs.items()}
    assert kinds == {
        "atoms": "object", "structure": "object", "dict": "structure_dict", "json": "json_text",
        "cif text": "cif_text", "cif file": "path", "cif path text": "path", "bytes": "cif_text",
    }  # fmt: skip
    reference = to_record(structure)
    for name, value in inputs.items():
        (record,) = read_records(value, "x")
        assert record.label == "x"
        np.testing.assert_array_equal(record.numbers, reference.numbers, err_msg=name)
        # CIF rounds coordinates, and gemmi orients the cell its own way: compare the lattice
        # (lengths, volume) and the fractional coordinates
        np.testing.assert_allclose(
            np.linalg.norm(record.cell, axis=1), np.linalg.norm(reference.cell, axis=1), atol=1e-5
        )
        assert record.volume == pytest.approx(reference.volume, abs=1e-4)
        np.testing.assert_allclose(record.frac_coords % 1.0, reference.frac_coords % 1.0, atol=1e-5, err_msg=name)


def test_a_file_of_several_structures_is_refused_where_one_is_expected(tmp_path):
    path = tmp_path / "two.extxyz"
    ase_write(path, [bulk("Cu", "fcc", a=3.6), bulk("Cu", "fcc", a=3.7)])
    assert [r.label for r in read_records(path)] == [f"{path}@0", f"{path}@1"]
    assert [r.label for r in read_records(str(path), "row 1")] == ["row 1@0", "row 1@1"]
    with pytest.raises(StructureReadError, match="holds 2 structures; give one per item"):
        read_record(str(path), "row 1")

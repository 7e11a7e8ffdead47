"""The P1 shortcut of the pymatgen CIF reading (io.cif._cif_p1_as_pymatgen) gives pymatgen's records bit for bit.

The authors' checkpoints break neighbour ties in pymatgen's site order, so the ``pymatgen`` reading
must reproduce CifParser exactly: same site order, same fractional coordinates and the same cell
matrix, to the last bit. Blocks the shortcut does not handle must be left to pymatgen (``None``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from cgcnn_ase.io import cif as reader
from cgcnn_ase.io.reader import read_records
from cgcnn_ase.io.records import from_pymatgen

from .conftest import SHARED, require_shared


def _pymatgen_records(text: str) -> list:
    return [from_pymatgen(s, label="x") for s in reader._cif_pymatgen(text, "x", text=True)]


def assert_identical(fast: list, slow: list) -> None:
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        assert a.frac_coords.tobytes() == b.frac_coords.tobytes()
        assert a.cell.tobytes() == b.cell.tobytes()


def test_800_materials_project_cifs_read_exactly_as_pymatgen_reads_them():
    """Bit for bit on a random sample (2000 cost 24 s of the suite for no more kinds of file: every one is P1)."""
    path = require_shared(SHARED / "data" / "mp_cgcnn46k_kdmsit" / "data.csv.gz")
    cifs = pd.read_csv(path, usecols=["cif"]).sample(n=800, random_state=11)["cif"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for text in cifs:
            fast = reader._cif_p1_as_pymatgen(text, "x", text=True)
            assert fast is not None  # Materials Project CIFs are plain P1
            assert_identical(fast, _pymatgen_records(text))


def test_reference_cifs_are_identical_or_left_to_pymatgen(reference_cifs):
    shortcut = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(reference_cifs.glob("*.cif")):
            text = path.read_text()
            fast = reader._cif_p1_as_pymatgen(text, "x", text=True)
            if fast is not None:
                shortcut += 1
                assert_identical(fast, _pymatgen_records(text))
    assert 0 < shortcut < 297  # both paths are exercised by these files


P1 = """data_test
_cell_length_a 4.0
_cell_length_b 4.5(2)
_cell_length_c 5.0
_cell_angle_alpha 90
_cell_angle_beta 100.5
_cell_angle_gamma 120
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
  1  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
{sites}
"""

#: Out of electronegativity order, equal electronegativities (K/Rb, Si/Cu), near-1/3 and 2/3
#: coordinates pymatgen rounds, and coordinates outside [0, 1).
SITES = """  Rb Rb1 0.0 0.0 0.0 1
  O O1 0.33333 0.66667 0.25 1
  K K1 0.5 0.5 0.5 1
  Cu Cu1 -0.25 1.10 0.333330 1.0
  Si Si1 0.75 0.2 0.6666 1
  O O2 0.1 0.9 0.9 1
  K K2 0.5 0.0 0.5 1"""


def test_unsorted_sites_equal_electronegativities_and_rounded_thirds():
    text = P1.format(sites=SITES)
    fast = reader._cif_p1_as_pymatgen(text, "x", text=True)
    assert fast is not None
    slow = _pymatgen_records(text)
    assert_identical(fast, slow)
    assert fast[0].frac_coords.min() >= 0 and fast[0].frac_coords.max() < 1
    # and the reader uses it for the pymatgen reading
    assert_identical(read_records(text, cif_reader="pymatgen"), slow)


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.replace("'x, y, z'", "'x, y, z'\n  2  '-x, -y, -z'"),  # symmetry to apply
        lambda t: t.replace("K K2 0.5 0.0 0.5 1", "K K2 0.5 0.0 0.5 0.5"),  # partial occupancy
        lambda t: t.replace("Rb Rb1", "Rb1+ Rb1"),  # an oxidation state in the symbol
        lambda t: t.replace("Rb Rb1", "Ar Ar1"),  # no electronegativity in pymatgen
        lambda t: t.replace("K K2 0.5 0.0 0.5 1", "K K2 0.50001 0.5 0.5 1"),  # a site pymatgen merges
        lambda t: t.replace(" _atom_site_occupancy\n", " _atom_site_occupancy\n _atom_site_fract_extra\n").replace(" 1\n", " 1 0\n"),
    ],
)
def test_blocks_the_shortcut_does_not_handle_are_left_to_pymatgen(change):
    text = change(P1.format(sites=SITES) + "\n")
    assert reader._cif_p1_as_pymatgen(text, "x", text=True) is None


def _gemmi_records(text: str) -> list:
    import gemmi

    return [reader.gemmi_block_record(gemmi.make_small_structure_from_block(b), "x") for b in gemmi.cif.read_string(text)]


def test_p1_shortcut_of_the_gemmi_reading_gives_gemmis_records(reference_cifs):
    """The gemmi reading skips gemmi's structure building for plain P1 blocks; records stay identical."""
    import gemmi

    path = require_shared(SHARED / "data" / "mp_cgcnn46k_kdmsit" / "data.csv.gz")
    texts = list(pd.read_csv(path, usecols=["cif"]).sample(n=2000, random_state=12)["cif"])
    texts += [p.read_text() for p in sorted(reference_cifs.glob("*.cif"))]
    shortcut = 0
    for text in texts:
        shortcut += reader._p1_block_as_gemmi(gemmi.cif.read_string(text)[0]) is not None
        assert_identical(reader._cif_gemmi(text, "x", text=True), _gemmi_records(text))
    assert 2000 <= shortcut < len(texts)


def test_gemmi_shortcut_leaves_coordinates_outside_the_cell_to_gemmi():
    import gemmi

    text = P1.format(sites=SITES)  # holds -0.25 and 1.10
    assert reader._p1_block_as_gemmi(gemmi.cif.read_string(text)[0]) is None
    inside = P1.format(sites="\n".join(line for line in SITES.splitlines() if "Cu" not in line))
    assert reader._p1_block_as_gemmi(gemmi.cif.read_string(inside)[0]) is not None
    for t in (text, inside):
        assert_identical(read_records(t), _gemmi_records(t))


@pytest.mark.parametrize("value", ["?", "."])
def test_an_unknown_cell_length_is_an_error_not_a_1_angstrom_cube(value):
    """gemmi silently builds a 1 Å cubic cell when a cell parameter is missing; the reader refuses."""
    from cgcnn_ase.errors import StructureReadError

    text = P1.format(sites=SITES).replace("_cell_length_c 5.0", f"_cell_length_c {value}")
    for cif_reader in ("gemmi", "pymatgen"):
        with pytest.raises(StructureReadError, match="not readable CIF text"):
            read_records(text, cif_reader=cif_reader)

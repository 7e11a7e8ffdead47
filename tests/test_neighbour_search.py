"""The ``symmetric`` policy's two-step pair search gives exactly the graph of one search over the full radius.

``build_graph`` first searches a sphere scaled to the volume per atom (:data:`FIRST_SEARCH`) and searches
the full radius only where some atom's kept shell (its k-th distance plus the tie tolerance) could reach
past it. The graphs must be the same arrays, edge order included, whichever search served.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from ase.build import bulk

from cgcnn_ase.errors import SparseGraphWarning
from cgcnn_ase.graph import neighbours
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.graph.neighbours import build_graph
from cgcnn_ase.io.reader import read_records
from cgcnn_ase.io.records import from_ase

from .conftest import SHARED, rattled, require_shared
from .test_batched_graphs import _odd_cells

CONFIG = GraphConfig()  # symmetric policy, 8 Å, 12 neighbours


def _graphs(records, monkeypatch=None, *, full: bool = False):
    """``build_graph`` of each record; with ``full``, every search over the full radius."""
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore", SparseGraphWarning)
        if full:
            patch.setattr(neighbours, "_first_search_radius", lambda record, config: float(config.radius))
        return [build_graph(r, CONFIG, on_sparse="ignore") for r in records]


def _assert_identical(records) -> None:
    for record, a, b in zip(records, _graphs(records), _graphs(records, full=True)):
        for name in ("centers", "neighbors", "distances", "numbers"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{record.label}: {name}")
        assert a.n_sparse == b.n_sparse, record.label


def _searches(record) -> list[float]:
    """The radii (Å) ``build_graph`` searched for ``record``."""
    radii = []
    real = neighbours._raw_neighbors

    def spy(record, config, radius=None):
        radii.append(float(config.radius if radius is None else radius))
        return real(record, config, radius)

    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore", SparseGraphWarning)
        patch.setattr(neighbours, "_raw_neighbors", spy)
        build_graph(record, CONFIG, on_sparse="ignore")
    return radii


def _clustered() -> Atoms:
    """A dense bcc block and one atom alone in a 10 Å gap: the cell's volume per atom understates how
    far the lone atom must look for 12 neighbours, so the first search cannot serve it."""
    block = bulk("Fe", "bcc", a=2.87, cubic=True).repeat(3)  # 54 atoms, 8.61 Å cube
    cell = block.cell.array.copy()
    cell[2, 2] += 10.0
    lone = Atoms("Fe", positions=[[4.3, 4.3, 8.61 + 5.0]])
    return Atoms(block.get_chemical_symbols() + ["Fe"], positions=np.vstack([block.positions, lone.positions]),
                 cell=cell, pbc=True)  # fmt: skip


def test_odd_cells_give_the_full_search_graph():
    records = _odd_cells() + [from_ase(_clustered(), label="clustered")]
    records += [from_ase(rattled(bulk("Fe", "bcc", a=2.87, cubic=True).repeat(3), seed=s), label=f"Fe{s}") for s in range(3)]
    _assert_identical(records)


def test_a_typical_crystal_is_served_by_the_first_search_and_a_gap_falls_back():
    rocksalt = from_ase(bulk("NaCl", "rocksalt", a=5.64), label="NaCl")
    first = _searches(rocksalt)
    assert len(first) == 1 and first[0] < 0.65 * CONFIG.radius  # 5.1 Å: a quarter of the 8 Å sphere
    gap = _searches(from_ase(_clustered(), label="clustered"))
    assert len(gap) == 2 and gap[0] < CONFIG.radius and gap[1] == CONFIG.radius
    slab = _searches(_odd_cells()[3])  # two neighbours each within 8 Å: sparse, so the full radius decides
    assert slab[-1] == CONFIG.radius


def test_the_first_search_reaches_the_close_atoms_check():
    """A low-density cell with two close atoms: the first radius still covers the close-atoms reach,
    so the warning fires as after a full search."""
    atoms = Atoms("CsCs", positions=[[0, 0, 0], [1.0, 0, 0]], cell=np.eye(3) * 6.0, pbc=True)
    record = from_ase(atoms, label="close")
    assert neighbours._first_search_radius(record, CONFIG) > 2 * neighbours.CLOSE_ATOMS_FACTOR * 2.32
    with pytest.warns(Warning, match="apart"):
        build_graph(record, CONFIG, on_sparse="ignore")


def test_materials_project_and_reference_crystals_give_the_full_search_graph(reference_cifs):
    path = require_shared(SHARED / "data" / "mp_cgcnn46k_kdmsit" / "data.csv.gz")
    cifs = pd.read_csv(path, usecols=["cif"]).sample(n=1000, random_state=11)["cif"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = [read_records(cif)[0] for cif in cifs]
        records += [read_records(p)[0] for p in sorted(reference_cifs.glob("*.cif"))]
    _assert_identical(records)

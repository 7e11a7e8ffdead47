"""The batched neighbour search (cgcnn_ase.graph.batched) gives build_graph's edges, crystal by crystal.

Edges are compared as multisets of (centre, neighbour, distance): same centres and neighbours with
the same multiplicity, distances to 1e-6 Å, and the same sparse-atom counts. Every test runs on the
CPU, and again on CUDA when a GPU is present.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from cgcnn_ase.errors import (
    CloseAtomsWarning,
    GeometryWarning,
    InvalidStructureError,
    SparseGraphError,
    SparseGraphWarning,
    StretchedStructureWarning,
)
from cgcnn_ase.graph.batch import collate
from cgcnn_ase.graph.batched import FlatCrystals, batch_edges, graph_batch
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.graph.elements import generate_cgcnn_table
from cgcnn_ase.graph.neighbours import build_graph
from cgcnn_ase.io.reader import read_records
from cgcnn_ase.io.records import from_ase

from .conftest import SHARED, perovskite, rattled, require_shared

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]
POLICIES = ["symmetric", "original"]


def _canonical(c: np.ndarray, nb: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, ...]:
    order = np.lexsort((np.round(d, 6), nb, c))
    return c[order], nb[order], d[order]


def assert_same_edges(records, config: GraphConfig, device: str, batch: int = 64) -> None:
    """Every record's batched edges equal build_graph's (as multisets), batch by batch."""
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        flat, edges, errors = batch_edges(chunk, config, device=device)
        assert not errors
        offsets = flat.offsets.cpu().numpy()
        crystal = flat.crystal_index.cpu().numpy()
        c, nb, d = (t.cpu().numpy() for t in (edges.centers, edges.neighbors, edges.distances))
        assert np.all(np.diff(c) >= 0), "edges are grouped by centre"
        for b, record in enumerate(chunk):
            graph = build_graph(record, config, on_sparse="ignore")
            mine = crystal[c] == b
            got = _canonical(c[mine] - offsets[b], nb[mine] - offsets[b], d[mine])
            want = _canonical(graph.centers, graph.neighbors, graph.distances)
            assert len(got[0]) == len(want[0]), record.label
            np.testing.assert_array_equal(got[0], want[0], err_msg=record.label)
            np.testing.assert_array_equal(got[1], want[1], err_msg=record.label)
            np.testing.assert_allclose(got[2], want[2], atol=1e-6, rtol=0, err_msg=record.label)
            assert int(edges.n_sparse[b]) == graph.n_sparse, record.label


@pytest.fixture(scope="module")
def mp_records() -> list:
    path = require_shared(SHARED / "data" / "mp_cgcnn46k_kdmsit" / "data.csv.gz")
    cifs = pd.read_csv(path, usecols=["cif"]).sample(n=2000, random_state=7)["cif"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [read_records(cif)[0] for cif in cifs]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy", POLICIES)
def test_2000_materials_project_crystals(mp_records, policy, device):
    assert_same_edges(mp_records, GraphConfig(neighbor_policy=policy), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy", POLICIES)
def test_297_reference_crystals(reference_cifs, policy, device):
    records = [read_records(path, cif_reader="pymatgen")[0] for path in sorted(reference_cifs.glob("*.cif"))]
    assert len(records) == 297
    assert_same_edges(records, GraphConfig(neighbor_policy=policy), device)


def _odd_cells() -> list:
    """Skewed, tiny, sparse and tie-rich cells, and atoms outside the cell."""
    fcc = bulk("Cu", "fcc", a=3.6)  # primitive cell: 60-degree angles
    skew = Atoms("Si2", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], pbc=True,
                 cell=[[4.0, 0, 0], [3.7, 1.2, 0], [3.1, 0.9, 1.4]])  # fmt: skip
    tiny = Atoms("H", cell=np.eye(3) * 0.9, pbc=True)  # every neighbour is an image of the atom itself
    slab = Atoms("NaCl", positions=[[0, 0, 0], [2.8, 0, 0]], cell=[9.0, 9.0, 30.0], pbc=True)  # 2 neighbours each: sparse
    outside = Atoms("MgO", scaled_positions=[[1.7, -2.2, 0.1], [0.5, 0.5, -0.5]], cell=np.eye(3) * 4.2, pbc=True)
    long = Atoms("Ar", cell=[3.0, 3.0, 25.0], pbc=True)
    atoms = [fcc, skew, tiny, slab, outside, long, perovskite(), rattled(perovskite()), bulk("NaCl", "rocksalt", a=5.64)]
    return [from_ase(a, label=f"odd{k}") for k, a in enumerate(atoms)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy", POLICIES)
def test_skewed_tiny_sparse_and_tied_cells(policy, device):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparseGraphWarning)
        assert_same_edges(_odd_cells(), GraphConfig(neighbor_policy=policy), device)


@pytest.mark.parametrize("device", DEVICES)
def test_a_2000_atom_supercell_in_small_chunks(device):
    atoms = rattled(bulk("NaCl", "rocksalt", a=5.64).repeat((10, 10, 10)), stdev=0.02)
    record = from_ase(atoms, label="NaCl-2000")
    assert len(record) == 2000
    config = GraphConfig()
    flat, edges, _ = batch_edges([record], config, device=device, max_pairs=300_000, max_candidates=200_000)
    graph = build_graph(record, config, on_sparse="ignore")
    got = _canonical(*(t.cpu().numpy() for t in (edges.centers, edges.neighbors, edges.distances)))
    want = _canonical(graph.centers, graph.neighbors, graph.distances)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], atol=1e-6, rtol=0)


def test_chunk_sizes_do_not_change_the_edges():
    records = _odd_cells()[:2] + [from_ase(rattled(bulk("Si", "diamond", a=5.43).repeat(2)), label="Si16")]
    config = GraphConfig()
    whole = batch_edges(records, config)[1]
    small = batch_edges(records, config, max_pairs=7, max_candidates=50)[1]
    for a, b in zip((whole.centers, whole.neighbors, whole.distances), (small.centers, small.neighbors, small.distances)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_overlapping_atoms_are_a_per_crystal_error_with_build_graphs_message(device):
    good = from_ase(bulk("Si", "diamond", a=5.43), label="Si")
    bad = from_ase(Atoms("Si2", positions=[[0, 0, 0], [0.1, 0, 0]], cell=np.eye(3) * 5, pbc=True), label="overlap")
    table = generate_cgcnn_table()
    features = torch.from_numpy(table.features).to(device)
    batch, items = graph_batch([good, bad, good], GraphConfig(), features)
    assert [type(x).__name__ for x in items] == ["GraphSummary", "InvalidStructureError", "GraphSummary"]
    with pytest.raises(InvalidStructureError) as expected:
        build_graph(bad, GraphConfig())
    assert str(items[1]) == str(expected.value)
    assert batch.n_crystals == 2


def test_close_atoms_warn_as_build_graph_does():
    close = from_ase(Atoms("C2", positions=[[0, 0, 0], [0.5, 0, 0]], cell=np.eye(3) * 6, pbc=True), label="close")
    with pytest.warns(CloseAtomsWarning, match="close: atoms 0 .C. and 1 .C."):
        batch_edges([close], GraphConfig())


def test_stretched_structures_warn_in_both_paths_and_normal_ones_do_not():
    """Round 5: 'NaCl with its lattice doubled gets the 77th domain percentile and no word of warning'."""
    doubled = from_ase(bulk("NaCl", "rocksalt", a=2 * 5.64), label="doubled")
    normal = [from_ase(bulk("NaCl", "rocksalt", a=5.64), label="NaCl"), from_ase(bulk("Cu", "fcc", a=3.6), label="Cu"),
              from_ase(bulk("Si", "diamond", a=5.43), label="Si")]  # fmt: skip
    with pytest.warns(StretchedStructureWarning, match=r"doubled: .* 5.640 Å apart, 2.22 x the sum"):
        build_graph(doubled, GraphConfig())
    with pytest.warns(StretchedStructureWarning, match="doubled"):
        batch_edges([*normal, doubled], GraphConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)
        batch_edges(normal, GraphConfig())
        for record in normal:
            build_graph(record, GraphConfig())
        build_graph(from_ase(bulk("NaCl", "rocksalt", a=1.2 * 5.64), label="x1.2"), GraphConfig())  # within the data


def test_sparse_policy_per_crystal():
    sparse = _odd_cells()[3]
    dense = from_ase(bulk("Cu", "fcc", a=3.6), label="Cu")
    features = torch.from_numpy(generate_cgcnn_table().features)
    with pytest.warns(SparseGraphWarning, match="odd3: 2 of 2 atoms"):
        _, items = graph_batch([dense, sparse], GraphConfig(), features)
    assert [x.n_sparse for x in items] == [0, 2]
    batch, items = graph_batch([dense, sparse], GraphConfig(), features, on_sparse="error")
    assert batch.n_crystals == 1 and isinstance(items[1], SparseGraphError)


@pytest.mark.parametrize("device", DEVICES)
def test_graph_batch_equals_collate_of_build_graph(device):
    records = _odd_cells()[:3] + [from_ase(rattled(bulk("NaCl", "rocksalt", a=5.64).repeat(2)), label="NaCl8")]
    config = GraphConfig()
    table = generate_cgcnn_table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparseGraphWarning)
        batch, items = graph_batch(records, config, torch.from_numpy(table.features).to(device))
        graphs = [build_graph(r, config) for r in records]
        want = collate(graphs, table, config, merge_edges=True)
    assert [x.n_sparse for x in items] == [g.n_sparse for g in graphs]
    got = batch.to("cpu")
    for name in ("centers", "neighbors", "crystal_index"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert torch.equal(got.atom_fea, want.atom_fea)
    assert torch.equal(got.edge_weight, want.edge_weight)
    torch.testing.assert_close(got.edge_fea, want.edge_fea, atol=1e-6, rtol=0)


def test_flat_crystals_wrap_atoms_outside_the_cell():
    record = _odd_cells()[4]
    flat = FlatCrystals.from_records([record])
    assert float(flat.frac.min()) >= 0 and float(flat.frac.max()) < 1
    assert flat.sizes.tolist() == [2] and flat.cells.shape == (1, 3, 3)


@pytest.mark.parametrize("model", ["formation_energy", "perovskite_formation_energy"])
def test_predictor_gives_the_same_results_with_batched_graphs(model):
    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.io.records import StructureRecord

    from .conftest import REPO

    inputs = [str(p) for p in sorted((REPO / "examples").iterdir()) if p.suffix in (".cif", ".POSCAR", ".extxyz")]
    overlap = Atoms("Si2", positions=[[0, 0, 0], [0.1, 0, 0]], cell=np.eye(3) * 5, pbc=True)
    inputs += [overlap, "missing.cif", *(_odd_cells()[k] for k in (0, 3, 6, 8))]
    assert any(isinstance(x, StructureRecord) for x in inputs)
    predictor = CGCNNPredictor.load(model, device="cpu")
    results = {}
    for backend in ("per-structure", "batched"):
        predictor.graph_backend = backend
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results[backend] = predictor.predict(inputs, errors="collect", per_atom=True, batch_size=4)
        results[backend + " warnings"] = sorted(str(w.message) for w in caught)
    a, b = results["per-structure"], results["batched"]
    assert a.ids == b.ids and a.errors == b.errors and list(a.n_sparse) == list(b.n_sparse)
    assert sum(e is not None for e in a.errors) == 2
    np.testing.assert_allclose(b.values, a.values, atol=1e-6, rtol=0)
    for x, y in zip(a.per_atom, b.per_atom):
        np.testing.assert_allclose(y, x, atol=1e-6, rtol=0)
    assert results["batched warnings"] == results["per-structure warnings"]
    with pytest.raises(InvalidStructureError, match="overlapping"):
        predictor.predict(inputs, batch_size=4)


def test_graph_backend_is_checked():
    from cgcnn_ase import CGCNNPredictor

    predictor = CGCNNPredictor.load("formation_energy", members=1, device="cpu")
    assert not predictor.batched_graphs()  # auto: per structure on the CPU
    predictor.graph_backend = "gpu"
    with pytest.raises(ValueError, match="graph_backend must be"):
        predictor.predict(bulk("Si", "diamond", a=5.43))


def test_batched_graphs_with_reading_workers_keep_order_and_errors():
    """With workers, the batched path's processes only read; results equal the serial run's."""
    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.inference.parallel import MIN_PARALLEL

    from .conftest import REPO

    examples = [str(p) for p in sorted((REPO / "examples").iterdir()) if p.suffix in (".cif", ".POSCAR", ".extxyz")]
    inputs = (examples + ["missing.cif"]) * (MIN_PARALLEL // len(examples) + 2)
    predictor = CGCNNPredictor.load("formation_energy", members=1, device="cpu")
    predictor.graph_backend = "batched"
    serial = predictor.predict(inputs, errors="collect", batch_size=16)
    pooled = predictor.predict(inputs, errors="collect", batch_size=16, workers=2)
    assert pooled.ids == serial.ids and pooled.errors == serial.errors
    np.testing.assert_array_equal(pooled.values, serial.values)
    assert sum(e is not None for e in pooled.errors) == inputs.count("missing.cif")


def test_the_batched_path_needs_neither_ase_nor_pymatgen(tmp_path):
    """A bare GPU machine has torch, numpy and gemmi: reading CIFs, batched graphs and networks run there."""
    import os
    import subprocess
    import sys

    from .conftest import REPO

    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ase", "pymatgen", "spglib", "scipy"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
from cgcnn_ase.inference.predictor import CGCNNPredictor
predictor = CGCNNPredictor.load("formation_energy", device="cpu")
predictor.graph_backend = "batched"
result = predictor.predict([{str(REPO / "examples" / "SrTiO3.cif")!r}] * 3, errors="collect")
assert result.errors == [None] * 3, result.errors
print(result.values[0])
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout, whatever is installed
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    from cgcnn_ase import CGCNNPredictor

    here = CGCNNPredictor.load("formation_energy", device="cpu").predict(str(REPO / "examples" / "SrTiO3.cif"))
    assert abs(float(done.stdout.split()[-1]) - here.values[0]) < 1e-6


def test_embed_with_batched_graphs_equals_the_per_structure_embedding():
    from cgcnn_ase import CGCNNPredictor

    records = _odd_cells()[:3] + [from_ase(rattled(bulk("NaCl", "rocksalt", a=5.64).repeat(2)), label="NaCl8")]
    predictor = CGCNNPredictor.load("formation_energy", members=1, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparseGraphWarning)
        per_structure = predictor.embed(records, batch_size=3)
        predictor.graph_backend = "batched"
        batched = predictor.embed(records, batch_size=3)
    np.testing.assert_allclose(batched, per_structure, rtol=1e-6, atol=1e-6)
    bad = from_ase(Atoms("Si2", positions=[[0, 0, 0], [0.1, 0, 0]], cell=np.eye(3) * 5, pbc=True), label="overlap")
    with pytest.raises(InvalidStructureError, match="overlap"):
        predictor.embed([records[0], bad])


def test_chunks_are_greedy_runs_within_the_budget():
    from cgcnn_ase.graph.batched import _segments

    assert _segments(torch.tensor([3, 5, 0, 7, 1]), 8) == [(0, 3), (3, 5)]
    assert _segments(torch.tensor([10, 1, 1]), 5) == [(0, 1), (1, 3)]  # an item over the budget runs alone
    assert _segments(torch.tensor([2, 2]), 100) == [(0, 2)]

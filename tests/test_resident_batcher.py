"""The device-resident GraphBatcher assembles the same batches as the numpy one, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.graph.elements import generate_cgcnn_table
from cgcnn_ase.graph.neighbours import build_graph
from cgcnn_ase.io.records import from_ase
from cgcnn_ase.train.cache import GraphBatcher, GraphStore

from .conftest import perovskite, rattled

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.fixture(scope="module")
def store() -> GraphStore:
    crystals = [perovskite(), rattled(perovskite(), seed=1), bulk("Si", "diamond", a=5.43), bulk("Cu", "fcc", a=3.6),
                rattled(bulk("NaCl", "rocksalt", a=5.64) * (1, 1, 2), seed=2), bulk("Fe", "bcc", a=2.87, cubic=True)]  # fmt: skip
    graphs = [build_graph(from_ase(a), GraphConfig()) for a in crystals]
    return GraphStore.from_graphs([f"k{i}" for i in range(len(graphs))], graphs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("merge", [False, True])
@pytest.mark.parametrize("precomputed", [True, False])
def test_resident_batches_equal_numpy_batches(store, device, merge, precomputed):
    table, config = generate_cgcnn_table(), GraphConfig()
    budget = 1 << 30 if precomputed else 0  # 0: Gaussians computed per batch
    host = GraphBatcher(store, table, config, merge_edges=merge, edge_feature_bytes=budget)
    resident = GraphBatcher(store, table, config, merge_edges=merge, edge_feature_bytes=budget, device=device)
    rng = np.random.default_rng(0)
    for indices in ([0], [5, 1, 3], rng.permutation(len(store)), np.array([2, 2, 4])):
        want = host.batch(indices)
        got = resident.batch(torch.as_tensor(indices, device=device) if len(indices) > 1 else indices)
        assert got.atom_fea.device.type == torch.device(device).type
        got = got.to("cpu")
        for name in ("atom_fea", "edge_fea", "centers", "neighbors", "crystal_index"):
            assert torch.equal(getattr(got, name), getattr(want, name)), name
        assert got.n_crystals == want.n_crystals
        assert (got.edge_weight is None) == (want.edge_weight is None)
        if merge:
            assert torch.equal(got.edge_weight, want.edge_weight)
    with pytest.raises(ValueError, match="at least one crystal"):
        resident.batch([])

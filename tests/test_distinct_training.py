"""Training on one edge-feature row per distinct length (``GraphBatch.edge_rows``) keeps the per-edge maths.

The batcher's precomputed rows reproduce every edge's Gaussian features bit for bit; the split-form
convolutions (plain and fused, eager and compiled) then give the per-edge batch's loss, gradients and
batch-norm running statistics to float rounding (float64: 1e-10, float32: 2e-5 of each tensor's scale),
with and without merged-edge weights, after one step and after a few SGD steps; bf16 autocast too.
No ../shared needed: synthetic batches and a few ASE crystals.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from ase.build import bulk

from cgcnn_ase.graph.batch import GraphBatch
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.graph.elements import generate_cgcnn_table
from cgcnn_ase.graph.neighbours import build_graph
from cgcnn_ase.io.records import from_ase
from cgcnn_ase.nn.network import CrystalGraphConvNet
from cgcnn_ase.train.cache import GraphBatcher, GraphStore, distinct_lengths

from .conftest import perovskite, rattled
from .test_fast_training import ARCH, bf16_step, compare, compiled_against_eager, network, one_step, random_batch


def paired_batches(seed: int, *, weighted: bool, dtype: torch.dtype) -> tuple[GraphBatch, GraphBatch]:
    """The same synthetic batch twice: per-edge features, and one row per distinct length (a few
    lengths per crystal, each edge's row drawn among its crystal's)."""
    batch = random_batch(seed, weighted=weighted, dtype=dtype)
    g = torch.Generator().manual_seed(100 + seed)
    edge_crystal = batch.crystal_index[batch.centers]
    per_crystal = torch.randint(2, 5, (batch.n_crystals,), generator=g)  # distinct lengths of each crystal
    offsets = torch.cumsum(per_crystal, 0) - per_crystal
    local = (torch.rand(len(batch.centers), generator=g, dtype=torch.float64) * per_crystal[edge_crystal]).long()
    rows = offsets[edge_crystal] + local
    table = torch.rand(int(per_crystal.sum()), ARCH["nbr_fea_len"], generator=g, dtype=dtype)
    per_edge = dataclasses.replace(batch, edge_fea=table[rows])
    return per_edge, dataclasses.replace(batch, edge_fea=table, edge_rows=rows)


# -- the batcher -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store() -> GraphStore:
    crystals = [perovskite(), perovskite(4.1) * (2, 1, 1), rattled(perovskite(), seed=1), bulk("Si", "diamond", a=5.43),
                bulk("Cu", "fcc", a=3.6), rattled(bulk("NaCl", "rocksalt", a=5.64) * (1, 1, 2), seed=2)]  # fmt: skip
    graphs = [build_graph(from_ase(a), GraphConfig()) for a in crystals]
    return GraphStore.from_graphs([f"k{i}" for i in range(len(graphs))], graphs)


@pytest.mark.parametrize("merge", [False, True])
@pytest.mark.parametrize("precomputed", [True, False])
def test_distinct_rows_reproduce_per_edge_batches(store, merge, precomputed):
    """edge_features() of a distinct batch is the per-edge batch's edge_fea bit for bit; the rest is unchanged."""
    table, config = generate_cgcnn_table(), GraphConfig()
    budget = 1 << 30 if precomputed else 0  # 0: Gaussians computed per batch
    per_edge = GraphBatcher(store, table, config, merge_edges=merge, edge_feature_bytes=budget)
    distinct = GraphBatcher(store, table, config, merge_edges=merge, edge_feature_bytes=budget, distinct_distances=True)
    for indices in ([0], [5, 1, 3], np.random.default_rng(0).permutation(len(store)), np.array([2, 2, 4])):
        want, got = per_edge.batch(indices), distinct.batch(indices)
        assert got.edge_rows is not None and want.edge_rows is None
        assert torch.equal(got.edge_features(), want.edge_fea)
        assert len(got.edge_fea) < len(want.edge_fea)
        assert int(got.edge_rows.max()) == len(got.edge_fea) - 1  # every row is used
        for name in ("atom_fea", "centers", "neighbors", "crystal_index"):
            assert torch.equal(getattr(got, name), getattr(want, name)), name
        if merge:
            assert torch.equal(got.edge_weight, want.edge_weight)
        edge_crystal = got.crystal_index[got.centers]  # no row is shared by two crystals
        row_crystal = torch.full((len(got.edge_fea),), -1).index_put_((got.edge_rows,), edge_crystal)
        assert torch.equal(row_crystal[got.edge_rows], edge_crystal)
    with pytest.raises(ValueError, match="host"):
        GraphBatcher(store, table, config, distinct_distances=True, device="cpu")


def test_distinct_lengths_of_a_cubic_perovskite(store):
    """Cubic SrTiO3's edges (symmetric policy) take a handful of lengths: each crystal's rows are
    distinct and ascending, and the edges' lengths equal their row's."""
    lengths, offsets, rows = distinct_lengths(store, GraphConfig())
    crystal = np.repeat(np.arange(len(store)), store.n_edges)
    assert np.allclose(lengths[offsets[crystal] + rows], store.distances, rtol=0, atol=1e-9)
    for k in range(len(store)):
        own = lengths[offsets[k] : offsets[k + 1]]
        assert np.all(np.diff(own) > 0)
    assert offsets[1] - offsets[0] <= 6 < store.n_edges[0]


# -- the network -----------------------------------------------------------------------------------
@pytest.mark.parametrize("execution", ["plain", "fused", "opaque"])  # opaque: compiled multi-threaded training's
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_distinct_step_equals_per_edge_step(execution, weighted, dtype, rtol):
    per_edge, distinct = paired_batches(1, weighted=weighted, dtype=dtype)
    target = torch.linspace(-1, 1, per_edge.n_crystals, dtype=dtype)
    a = network(dtype)
    a.set_execution(fused=execution == "fused", opaque_indexing=execution == "opaque")
    b = copy.deepcopy(a)
    compare(one_step(a, per_edge, target), one_step(b, distinct, target), rtol)
    assert b.convs[0].bn1.num_batches_tracked.item() == 1


def test_eval_mode_and_other_layers_accept_distinct_batches():
    """Eval mode (validation) uses the rows too; the concatenated form and simple convolutions get
    per-edge features; all to float rounding of the per-edge batch."""
    per_edge, distinct = paired_batches(2, weighted=True, dtype=torch.float64)
    net = network(torch.float64)
    net(per_edge)  # some running statistics
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(distinct), net(per_edge), rtol=1e-12, atol=1e-12)
        net.set_execution(split_matmul=False)
        torch.testing.assert_close(net(distinct), net(per_edge), rtol=1e-12, atol=1e-12)
        torch.manual_seed(0)
        simple = CrystalGraphConvNet(**ARCH, conv="simple").double().eval()
        torch.testing.assert_close(simple(distinct), simple(per_edge), rtol=1e-12, atol=1e-12)


def test_distinct_steps_train_like_per_edge_steps():
    """Five SGD steps (momentum, two batches, weighted edges, fused layer) end at the same weights."""
    pairs = [paired_batches(s, weighted=True, dtype=torch.float32) for s in (4, 5)]
    nets = []
    for which in (0, 1):
        net = network()
        net.set_execution(fused=True)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        for step in range(5):
            batch = pairs[step % 2][which]
            loss = torch.nn.functional.mse_loss(net(batch), torch.linspace(-1, 1, batch.n_crystals))
            opt.zero_grad()
            loss.backward()
            opt.step()
        nets.append(net)
    for (name, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"{name} after 5 steps")


def test_distinct_step_under_bf16_autocast():
    per_edge, distinct = paired_batches(6, weighted=True, dtype=torch.float32)
    results = [bf16_step(batch, fused=True) for batch in (per_edge, distinct)]
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=3e-2)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=3e-2 * results[0][1].abs().max().item())


def test_distinct_step_compiles_in_one_graph():
    """torch.compile (fullgraph, dynamic, as training compiles) computes the per-edge step from distinct batches."""
    per_edge, distinct = paired_batches(8, weighted=True, dtype=torch.float32)
    compiled_against_eager(per_edge, distinct)

"""The network against the paper's equations and the original parameter names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cgcnn_ase.graph.batch import GraphBatch
from cgcnn_ase.nn.network import ConvLayer, CrystalGraphConvNet, SimpleConvLayer

A, B = 8, 5


def _toy_batch(n_atoms: int = 6, k: int = 3, n_crystals: int = 2, seed: int = 0) -> GraphBatch:
    g = torch.Generator().manual_seed(seed)
    crystal_index = torch.tensor([0, 0, 0, 1, 1, 1])[:n_atoms]
    centers = torch.arange(n_atoms).repeat_interleave(k)
    neighbors = torch.stack([(centers[e] // 3) * 3 + torch.randint(0, 3, (1,), generator=g)[0] for e in range(len(centers))])
    return GraphBatch(
        atom_fea=torch.rand(n_atoms, 92, generator=g),
        edge_fea=torch.rand(len(centers), B, generator=g),
        centers=centers,
        neighbors=neighbors,
        crystal_index=crystal_index,
        n_crystals=n_crystals,
    )


def _randomise_bn(module: nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("split", [False, True])
def test_gated_conv_matches_equation_5(split):
    """v_i <- g(v_i + BN2(sum_j sigma(BN1(z W + b))_f * g(BN1(z W + b))_s)), z = v_i (+) v_j (+) u_ij."""
    torch.manual_seed(0)
    layer = ConvLayer(A, B, split_matmul=split).eval()
    _randomise_bn(layer)
    v, u = torch.randn(4, A), torch.randn(6, B)
    centers, neighbors = torch.tensor([0, 0, 1, 2, 3, 3]), torch.tensor([1, 2, 0, 3, 2, 0])
    expected = torch.empty(4, A)
    with torch.no_grad():
        for i in range(4):
            total = torch.zeros(A)
            for e in range(6):
                if centers[e] != i:
                    continue
                z = torch.cat([v[i], v[neighbors[e]], u[e]])
                h = layer.bn1(layer.fc_full(z).unsqueeze(0)).squeeze(0)
                total += torch.sigmoid(h[:A]) * nn.functional.softplus(h[A:])
            expected[i] = nn.functional.softplus(v[i] + layer.bn2(total.unsqueeze(0)).squeeze(0))
        torch.testing.assert_close(layer(v, u, centers, neighbors), expected, atol=1e-5, rtol=1e-5)


def test_simple_conv_matches_equation_4():
    torch.manual_seed(1)
    layer = SimpleConvLayer(A, B)
    v, u = torch.randn(3, A), torch.randn(4, B)
    centers, neighbors = torch.tensor([0, 0, 1, 2]), torch.tensor([1, 2, 2, 0])
    with torch.no_grad():
        expected = torch.stack(
            [
                nn.functional.softplus(
                    sum((layer.fc_nbr(torch.cat([v[neighbors[e]], u[e]])) for e in range(4) if centers[e] == i), torch.zeros(A))
                    + layer.fc_self(v[i])
                )
                for i in range(3)
            ]
        )
        torch.testing.assert_close(layer(v, u, centers, neighbors), expected, atol=1e-5, rtol=1e-5)


def test_parameter_names_match_the_original_state_dict():
    net = CrystalGraphConvNet(nbr_fea_len=41, atom_fea_len=64, n_conv=4, h_fea_len=32, n_h=2)
    names = set(net.state_dict())
    for expected in ["embedding.weight", "convs.3.fc_full.weight", "convs.0.bn1.running_var", "convs.2.bn2.bias",
                     "conv_to_fc.weight", "fcs.0.weight", "fc_out.bias"]:  # fmt: skip
        assert expected in names
    assert tuple(net.state_dict()["convs.0.fc_full.weight"].shape) == (128, 169)


def test_mean_readout_pools_then_applies_head():
    torch.manual_seed(2)
    net = CrystalGraphConvNet(nbr_fea_len=B, atom_fea_len=A, n_conv=2, h_fea_len=6).eval()
    batch = _toy_batch()
    with torch.no_grad():
        atoms = net.atom_features(batch)
        pooled = torch.stack([atoms[:3].mean(0), atoms[3:].mean(0)])
        torch.testing.assert_close(net.crystal_features(batch), pooled)
        torch.testing.assert_close(net(batch), net.head(pooled).squeeze(1))


def test_atomwise_readout_is_mean_of_atom_contributions():
    torch.manual_seed(3)
    net = CrystalGraphConvNet(nbr_fea_len=B, atom_fea_len=A, n_conv=2, h_fea_len=6, readout="atomwise").eval()
    batch = _toy_batch()
    with torch.no_grad():
        per_atom = net.atom_contributions(batch)
        assert per_atom.shape == (6,)
        torch.testing.assert_close(net(batch), torch.stack([per_atom[:3].mean(), per_atom[3:].mean()]))


def test_classification_outputs_log_probabilities():
    net = CrystalGraphConvNet(nbr_fea_len=B, atom_fea_len=A, task="classification").eval()
    with torch.no_grad():
        out = net(_toy_batch())
    assert out.shape == (2, 2)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2))


@pytest.mark.parametrize(
    "kwargs", [dict(task="ranking"), dict(readout="max"), dict(conv="attention"), dict(task="classification", readout="atomwise")]
)
def test_invalid_options_are_refused(kwargs):
    with pytest.raises(ValueError):
        CrystalGraphConvNet(**kwargs)


@pytest.mark.parametrize("conv", ["gated", "simple"])
def test_merged_edges_give_the_unmerged_outputs_gradients_and_running_stats(conv):
    """Edges merged with multiplicities (training's merge_edges) are the same maths as the
    original graph: outputs, parameter gradients and batch-norm running statistics."""
    import copy

    import numpy as np

    from cgcnn_ase.graph.elements import generate_cgcnn_table
    from cgcnn_ase.graph.neighbours import build_graph
    from cgcnn_ase.graph.config import GraphConfig
    from cgcnn_ase.io.reader import to_record
    from cgcnn_ase.train.cache import GraphBatcher, GraphStore, merge_duplicate_edges

    from .conftest import perovskite, rattled

    config = GraphConfig()
    crystals = [perovskite(), rattled(perovskite(4.0).repeat((2, 1, 1)), seed=3), perovskite(3.7)]
    graphs = [build_graph(to_record(a), config) for a in crystals]
    store = GraphStore.from_graphs([f"k{i}" for i in range(3)], graphs)
    merged, weights = merge_duplicate_edges(store)
    assert merged.n_edges[0] < store.n_edges[0] / 3  # the cubic cell's tied images collapse
    assert merged.n_edges[1] == store.n_edges[1]  # a rattled cell has no identical edges
    assert weights.sum() == len(store.distances) and (weights >= 1).all()
    elements = generate_cgcnn_table()
    plain = GraphBatcher(store, elements, config).batch([0, 1, 2])
    fewer = GraphBatcher(store, elements, config, merge_edges=True).batch([0, 1, 2])
    assert fewer.edge_weight is not None and len(fewer.centers) == len(merged.distances)

    torch.manual_seed(0)
    net_a = CrystalGraphConvNet(orig_atom_fea_len=elements.n_features, atom_fea_len=16, n_conv=2, h_fea_len=8, conv=conv)
    for layer in net_a.convs:
        if hasattr(layer, "split_matmul"):
            layer.split_matmul = True
    net_b = copy.deepcopy(net_a)
    for net in (net_a, net_b):
        net.train()
    out_a, out_b = net_a(plain), net_b(fewer)
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-5)
    out_a.sum().backward()
    out_b.sum().backward()
    for (name, p_a), p_b in zip(net_a.named_parameters(), net_b.parameters()):
        torch.testing.assert_close(p_b.grad, p_a.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, b_a), b_b in zip(net_a.named_buffers(), net_b.buffers()):
        torch.testing.assert_close(b_b.float(), b_a.float(), rtol=1e-5, atol=1e-6, msg=name)
    net_a.eval(), net_b.eval()
    torch.testing.assert_close(net_b(fewer), net_a(plain), rtol=1e-5, atol=1e-5)
    # negative control: dropping the multiplicities changes the answer
    fewer.edge_weight = None
    assert not torch.allclose(net_b(fewer), net_a(plain), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(merged.numbers, store.numbers)


def test_opaque_indexing_gives_the_same_outputs_and_gradients():
    """gather_rows / scatter_rows (opaque operators for torch.compile) equal index_select / index_add_."""
    from cgcnn_ase.nn.network import ConvLayer

    torch.manual_seed(0)
    n, e = 7, 30
    atom = torch.randn(n, 8, dtype=torch.float64)
    edge = torch.randn(e, 5, dtype=torch.float64)
    centers = torch.sort(torch.randint(0, n, (e,))).values
    neighbors = torch.randint(0, n, (e,))
    weight = torch.randint(1, 4, (e,))
    layer = ConvLayer(8, 5, split_matmul=True).double().train()
    results = []
    for opaque in (False, True):
        layer.opaque_indexing = opaque
        x = atom.clone().requires_grad_(True)
        out = layer(x, edge, centers, neighbors, weight)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        results.append((out.detach(), x.grad, layer.fc_full.weight.grad.clone()))
        layer.zero_grad()
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    x = atom.clone().requires_grad_(True)
    from cgcnn_ase.nn.ops import gather_rows, scatter_rows

    assert torch.autograd.gradcheck(lambda v: scatter_rows(gather_rows(v, neighbors), centers, n), (x,))

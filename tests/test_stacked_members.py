"""An ensemble's members run as one network (nn.stacked) give what each member gives alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from cgcnn_ase import CGCNNPredictor
from cgcnn_ase.graph.batch import collate
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.graph.elements import generate_cgcnn_table
from cgcnn_ase.graph.neighbours import build_graph
from cgcnn_ase.io.records import from_ase
from cgcnn_ase.nn.inference import inference_network
from cgcnn_ase.nn.network import CrystalGraphConvNet
from cgcnn_ase.nn.ops import segment_mean
from cgcnn_ase.nn.stacked import StackedNetworks, can_stack

from .conftest import perovskite, rattled


def _crystals():
    return [
        rattled(bulk("NaCl", "rocksalt", a=5.64), stdev=0.05, seed=1),
        rattled(bulk("Si", "diamond", a=5.43).repeat((2, 1, 1)), stdev=0.05, seed=2),
        rattled(bulk("Cu", "fcc", a=3.61), stdev=0.05, seed=3),
        rattled(perovskite(), stdev=0.05, seed=4),
    ]


def _batch(merge: bool):
    config, table = GraphConfig(), generate_cgcnn_table()
    graphs = [build_graph(from_ase(a), config, on_sparse="ignore") for a in _crystals()]
    return collate(graphs, table, config, merge_edges=merge)


def _members(seed: int, **hparams) -> list[CrystalGraphConvNet]:
    torch.manual_seed(seed)
    nets = []
    for _ in range(3):
        net = CrystalGraphConvNet(atom_fea_len=16, n_conv=2, h_fea_len=24, **hparams)
        for module in net.modules():  # non-trivial batch-norm statistics
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.3, 0.3)
        nets.append(inference_network(net))
    return nets


@pytest.mark.parametrize("merge", [False, True], ids=["plain_edges", "weighted_edges"])
@pytest.mark.parametrize(
    "hparams",
    [dict(), dict(n_h=3), dict(readout="atomwise"), dict(task="classification")],
    ids=["mean", "three_dense", "atomwise", "classification"],
)
def test_stacked_members_equal_each_member(hparams, merge):
    nets = _members(0, **hparams)
    batch = _batch(merge)
    stacked = StackedNetworks(nets)
    with torch.no_grad():
        x = stacked.atom_features(batch)
        for k, net in enumerate(nets):
            torch.testing.assert_close(x[:, k], net.atom_features(batch), rtol=1e-5, atol=1e-5)
        pooled = segment_mean(x.reshape(x.shape[0], -1), batch.crystal_index, batch.n_crystals).view(
            batch.n_crystals, *x.shape[1:]
        )
        out = stacked.head(pooled)
        for k, net in enumerate(nets):
            torch.testing.assert_close(out[:, k], net.head(pooled[:, k]), rtol=1e-5, atol=1e-5)


def test_only_inference_copies_of_one_gated_architecture_stack():
    nets = _members(0)
    assert can_stack(nets) and not can_stack(nets[:1])
    assert not can_stack([nets[0], _members(1, n_h=2)[0]])  # another architecture
    assert not can_stack([CrystalGraphConvNet(atom_fea_len=16, n_conv=2) for _ in range(2)])  # batch norms not folded
    simple = [inference_network(CrystalGraphConvNet(atom_fea_len=16, n_conv=2, conv="simple")) for _ in range(2)]
    assert not can_stack(simple)
    with pytest.raises(ValueError, match="stacking needs"):
        StackedNetworks(simple)


@pytest.mark.parametrize("name", ["formation_energy", "is_metal"])
def test_shipped_ensembles_predict_the_same_stacked_or_member_by_member(name):
    crystals = _crystals()
    stacked = CGCNNPredictor.from_pretrained(name, device="cpu")
    assert stacked.stacked() is not None
    one_by_one = CGCNNPredictor.from_pretrained(name, device="cpu")
    one_by_one.stack_members = False
    assert one_by_one.stacked() is None
    a = stacked.predict(crystals, embeddings=True)
    b = one_by_one.predict(crystals, embeddings=True)
    np.testing.assert_allclose(a.member_values, b.member_values, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(a.embeddings, b.embeddings, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.domain_percentile, b.domain_percentile, atol=0.05)
    # per-atom contributions run member by member, and their mean is still the prediction
    c = stacked.predict(crystals[:2], per_atom=True)
    np.testing.assert_allclose([p.mean() for p in c.per_atom], c.values, rtol=1e-5, atol=1e-6)


def test_compiled_stacked_members_equal_the_eager_ones():
    crystals = _crystals()
    eager = CGCNNPredictor.from_pretrained("formation_energy", device="cpu")
    compiled = CGCNNPredictor.from_pretrained("formation_energy", device="cpu")
    compiled.compile = True
    got = compiled.predict(crystals)  # compiles once (or falls back with a CompileWarning)
    assert compiled.stacked() is not None
    np.testing.assert_allclose(got.member_values, eager.predict(crystals).member_values, rtol=1e-5, atol=2e-6)

"""The inference forms of a network (cgcnn_ase.nn.inference): the same maths, float32 rounding apart."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cgcnn_ase import CGCNNPredictor
from cgcnn_ase.errors import CompileWarning
from cgcnn_ase.graph.batch import collate
from cgcnn_ase.graph.neighbours import build_graph
from cgcnn_ase.io.records import from_ase
from cgcnn_ase.nn import inference
from cgcnn_ase.nn.inference import CompiledFunction, inference_network

from .conftest import random_model


def _batch(model, crystals, merge: bool):
    graphs = [build_graph(from_ase(a), model.spec.graph) for a in crystals]
    return collate(graphs, model.elements, model.spec.graph, merge_edges=merge)


@pytest.mark.parametrize("readout", ["mean", "atomwise"])
@pytest.mark.parametrize("merge", [False, True])
def test_folded_split_network_computes_the_same_function(crystals, readout, merge):
    model = random_model(readout=readout, seed=3)
    batch = _batch(model, crystals, merge)
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    fast = inference_network(model.network)
    with torch.no_grad():
        want = model.network(batch)
        got = fast(batch)
        atoms_want, atoms_got = model.network.atom_features(batch), fast.atom_features(batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(atoms_got, atoms_want, atol=1e-5, rtol=1e-5)
    for key, value in model.network.state_dict().items():  # the original is untouched
        assert torch.equal(value, before[key]), key
    assert all(conv.bn1_folded and conv.split_matmul for conv in fast.convs)
    assert not any(conv.bn1_folded for conv in model.network.convs)
    assert not any(p.requires_grad for p in fast.parameters())


def test_predictor_picks_the_fast_form_by_neighbour_policy(crystals):
    symmetric = CGCNNPredictor(random_model(), device="cpu")
    original = CGCNNPredictor(random_model(policy="original"), device="cpu")
    assert all(net.convs[0].bn1_folded for net, _, _ in symmetric.heads())
    assert original.heads()[0][0] is original.model.network
    symmetric.fast_network = False
    assert symmetric.heads()[0][0] is symmetric.model.network
    fast = CGCNNPredictor(random_model(), device="cpu").predict(crystals).values
    np.testing.assert_allclose(fast, symmetric.predict(crystals).values, atol=1e-5, rtol=0)


def test_fast_copies_follow_changes_of_the_weights(crystals):
    predictor = CGCNNPredictor(random_model(), device="cpu")
    first = predictor.predict(crystals).values
    with torch.no_grad():
        predictor.model.network.fc_out.bias.add_(1.0)  # in place, as an optimiser step would
    second = predictor.predict(crystals).values
    np.testing.assert_allclose(second - first, 0.5, atol=1e-5)  # normaliser std 0.5


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch, crystals):
    def broken_compile(fn, **_):
        def run(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nmore")

        return run

    monkeypatch.setattr(inference.torch, "compile", broken_compile)
    calls = []
    wrapped = CompiledFunction(lambda x: calls.append(x) or x * 2, name="double")
    with pytest.warns(CompileWarning, match="torch.compile of double failed .RuntimeError: InvalidCxxCompiler"):
        assert wrapped(3) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wrapped(4) == 8  # no second warning, eager from now on
    assert calls == [3, 4]

    predictor = CGCNNPredictor(random_model(), device="cpu")
    predictor.compile = True
    with pytest.warns(CompileWarning):
        values = predictor.predict(crystals).values
    predictor.compile = False
    np.testing.assert_array_equal(values, predictor.predict(crystals).values)


def test_errors_in_the_function_itself_still_propagate_after_the_first_call(monkeypatch):
    monkeypatch.setattr(inference.torch, "compile", lambda fn, **_: fn)
    wrapped = CompiledFunction(lambda x: 1 / x)
    assert wrapped(2) == 0.5
    with pytest.raises(ZeroDivisionError):
        wrapped(0)


def test_compiled_network_matches_eager(crystals):
    """A real torch.compile (dynamic shapes: batches of different sizes reuse one compilation)."""
    predictor = CGCNNPredictor(random_model(readout="atomwise", seed=5), device="cpu")
    eager = predictor.predict(crystals, per_atom=True, batch_size=2)
    predictor.compile = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileWarning)  # this machine has a working compiler
        compiled = predictor.predict(crystals, per_atom=True, batch_size=2)
    np.testing.assert_allclose(compiled.values, eager.values, atol=1e-5, rtol=0)
    for a, b in zip(compiled.per_atom, eager.per_atom):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_cli_compile_flag_reaches_the_predictors(monkeypatch, model_folder):
    from click.testing import CliRunner

    from cgcnn_ase.cli import main

    from .conftest import REPO

    compiled = []
    monkeypatch.setattr(inference.torch, "compile", lambda fn, **_: compiled.append(fn) or fn)
    args = ["predict", str(REPO / "examples" / "SrTiO3.cif"), "--model", str(model_folder), "--format", "csv"]
    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 0 and not compiled
    result = CliRunner().invoke(main, [*args, "--compile"])
    assert result.exit_code == 0, result.output
    assert len(compiled) == 1 and result.output == plain.output


def test_a_prediction_does_not_depend_on_the_thread_that_asks(crystals):
    """Python threads start with OpenMP's default thread count; predict gives them torch's own."""
    import threading

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from .conftest import REPO

        predictor = CGCNNPredictor.from_pretrained("formation_energy", device="cpu")
        crystal = str(REPO / "examples" / "SrTiO3.cif")  # 5 atoms: matrix products of a few rows
        here = predictor.predict(crystal).values
        there: dict = {}
        worker = threading.Thread(target=lambda: there.setdefault("values", predictor.predict(crystal).values))
        worker.start()
        worker.join()
        np.testing.assert_array_equal(there["values"], here)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _symmetric_crystals():
    from ase.build import bulk

    from .conftest import perovskite, rattled

    return [perovskite(), bulk("NaCl", "rocksalt", a=5.64), bulk("Si", "diamond", a=5.43),
            bulk("Cu", "fcc", a=3.61, cubic=True), rattled(bulk("ZnO", "wurtzite", a=3.25, c=5.2), seed=5)]  # fmt: skip


def test_a_batch_of_distinct_distances_holds_every_edges_features():
    model = random_model()
    graphs = [build_graph(from_ase(a), model.spec.graph) for a in _symmetric_crystals()]
    plain = collate(graphs, model.elements, model.spec.graph, merge_edges=True)
    distinct = collate(graphs, model.elements, model.spec.graph, merge_edges=True, distinct_distances=True)
    assert distinct.edge_rows is not None and plain.edge_rows is None
    assert len(distinct.edge_fea) < len(plain.edge_fea) / 2  # symmetric crystals repeat their bond lengths
    torch.testing.assert_close(distinct.edge_features(), plain.edge_fea, atol=1e-7, rtol=0)
    for name in ("atom_fea", "centers", "neighbors", "crystal_index", "edge_weight"):
        assert torch.equal(getattr(distinct, name), getattr(plain, name)), name


@pytest.mark.parametrize("readout", ["mean", "atomwise"])
def test_networks_give_the_same_result_on_distinct_distance_batches(readout):
    """The folded network multiplies each distinct length once; others get one row per edge; the stacked
    ensemble does either: all agree with the per-edge batch to float32 rounding."""
    from cgcnn_ase.nn.stacked import StackedNetworks

    models = [random_model(readout=readout, seed=s) for s in (3, 4)]
    graphs = [build_graph(from_ase(a), models[0].spec.graph) for a in _symmetric_crystals()]
    spec = models[0].spec.graph
    plain = collate(graphs, models[0].elements, spec, merge_edges=True)
    distinct = collate(graphs, models[0].elements, spec, merge_edges=True, distinct_distances=True)
    fast = [inference_network(m.network) for m in models]
    with torch.no_grad():
        for network in (models[0].network.eval(), fast[0]):
            torch.testing.assert_close(network.atom_features(distinct), network.atom_features(plain), atol=1e-5, rtol=1e-5)
        stacked = StackedNetworks(fast)
        torch.testing.assert_close(stacked.atom_features(distinct), stacked.atom_features(plain), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="folded inference form"):
        models[0].network.convs[0](plain.atom_fea[:, :16], distinct.edge_fea, plain.centers, plain.neighbors, None,
                                   distinct.edge_rows)  # fmt: skip


def test_the_predictor_uses_distinct_distances_with_the_fast_network_only(monkeypatch):
    from cgcnn_ase.inference import predictor as module

    seen = []
    real = module.collate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("distinct_distances"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "collate", spy)
    crystals = _symmetric_crystals()
    predictor = CGCNNPredictor(random_model(), device="cpu")
    fast = predictor.predict(crystals).values
    predictor.fast_network = False  # the reference arithmetic: one row per edge, as recorded
    reference = predictor.predict(crystals).values
    assert seen == [True, False]
    np.testing.assert_allclose(fast, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fast", [True, False])
def test_evaluation_in_blocks_of_edges_equals_one_pass(monkeypatch, fast):
    """Eval-mode convolutions on a CPU work in cache-sized blocks of edges (nn.ops.CPU_BLOCK_VALUES):
    the same result as one pass over all edges, bit for bit for the reference arithmetic (rows are
    independent and each centre's sum keeps the edge order), to float32 rounding for the fast form."""
    from cgcnn_ase.nn import ops

    model = random_model(seed=5)
    graphs = [build_graph(from_ase(a), model.spec.graph) for a in _symmetric_crystals() * 3]
    batch = collate(graphs, model.elements, model.spec.graph, merge_edges=True, distinct_distances=fast)
    network = inference_network(model.network) if fast else model.network.eval()
    with torch.no_grad():
        monkeypatch.setattr(ops, "CPU_BLOCK_VALUES", 1 << 30)  # one block
        whole = network.atom_features(batch)
        monkeypatch.setattr(ops, "CPU_BLOCK_VALUES", 32 * 20)  # blocks of 20 edges
        blocks = network.atom_features(batch)
    assert len(batch.centers) > 100
    if fast:
        torch.testing.assert_close(blocks, whole, atol=1e-6, rtol=1e-6)
    else:
        assert torch.equal(blocks, whole)

"""Reading and graph building in worker processes: the same results bit for bit, in input order,
with per-item errors and warnings coming back from the workers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from cgcnn_ase import CGCNNPredictor
from cgcnn_ase.errors import InvalidStructureError, SparseGraphWarning, StructureReadError

from .conftest import REPO, rattled


@pytest.fixture(scope="module")
def predictor() -> CGCNNPredictor:
    """Two members, on the CPU, with one torch thread as the workers use (the bitwise guarantee)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield CGCNNPredictor.from_pretrained("formation_energy", members=2, device="cpu")
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def pool_runs(monkeypatch) -> list[str]:
    """Workers for every list, however short (by default lists under ``MIN_PARALLEL`` run in the
    calling process), and a record of which pool path ran: ``"pipeline"`` (one task per batch) and
    ``"regrouped"`` (batches formed in the calling process after a multi-frame input)."""
    from cgcnn_ase.inference import parallel

    runs: list[str] = []
    monkeypatch.setattr(parallel, "MIN_PARALLEL", 0)
    def spy_on(name: str, tag: str) -> None:
        original = getattr(parallel, name)

        def spy(*args, **kwargs):
            runs.append(tag)
            yield from original(*args, **kwargs)

        monkeypatch.setattr(parallel, name, spy)

    spy_on("_pipeline", "pipeline")
    spy_on("_regrouped", "regrouped")
    return runs


def _inputs(tmp_path) -> list:
    (tmp_path / "bad.cif").write_text("not a crystal\n")
    items: list = [str(REPO / "examples" / name) for name in ("NaCl.POSCAR", "SrTiO3.cif", "Si.extxyz")]
    items += [rattled(bulk("NaCl", "rocksalt", a=5.5 + 0.02 * k), seed=k) for k in range(40)]
    items.insert(7, str(tmp_path / "bad.cif"))
    items.insert(20, Atoms("Cu", positions=[[0, 0, 0]], cell=[30, 30, 30], pbc=True))  # sparse: a warning
    items.insert(30, (REPO / "examples" / "SrTiO3.cif").read_text())  # CIF text
    return items


def test_workers_give_the_same_results_in_input_order(predictor, tmp_path, pool_runs):
    items = _inputs(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serial = predictor.predict(items, errors="collect", batch_size=16)
        assert pool_runs == []
        parallel = predictor.predict(items, errors="collect", batch_size=16, workers=2)
    assert pool_runs == ["pipeline"]  # one structure per input: whole batches in the workers
    assert parallel.ids == serial.ids and len(serial) == len(items)
    assert parallel.errors == serial.errors
    assert serial.errors[7] is not None and "bad.cif" in serial.errors[7]
    np.testing.assert_array_equal(parallel.member_values, serial.member_values)  # bit for bit
    np.testing.assert_array_equal(parallel.n_sparse, serial.n_sparse)
    assert serial.ids[30] == "input 30"


def test_multi_frame_inputs_shift_batches_as_in_one_process(predictor, tmp_path, pool_runs):
    """A file of three frames makes three results: every later batch starts elsewhere than the
    inputs' batches would, so from there the batches are formed in the calling process
    (the same batches as one process forms, so the same bits)."""
    from ase.io import write

    frames = [rattled(bulk("Si", "diamond", a=5.43 + 0.01 * k), seed=k) for k in range(3)]
    write(tmp_path / "three.extxyz", frames, format="extxyz")
    items = _inputs(tmp_path)
    items.insert(9, str(tmp_path / "three.extxyz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serial = predictor.predict(items, errors="collect", batch_size=8)
        parallel = predictor.predict(items, errors="collect", batch_size=8, workers=2)
        assert pool_runs == ["pipeline", "regrouped"]
        with pytest.raises(StructureReadError, match="bad.cif"):  # after the shift, still in input order
            predictor.predict(items, batch_size=8, workers=2)
    assert len(serial) == len(items) + 2 and parallel.ids == serial.ids
    assert [i for i in serial.ids if "three.extxyz" in i] == [f"{tmp_path / 'three.extxyz'}@{k}" for k in range(3)]
    assert parallel.errors == serial.errors
    np.testing.assert_array_equal(parallel.member_values, serial.member_values)
    np.testing.assert_array_equal(parallel.domain_percentile, serial.domain_percentile)


def test_ensemble_signal_from_workers_is_bitwise(tmp_path):
    """The full ensemble's per-crystal signal (std, domain, uncertainty, intervals) is computed with
    each batch, in the workers: the same bits as in one process."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        full = CGCNNPredictor.from_pretrained("formation_energy", device="cpu")
        items = _inputs(tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            serial = full.predict(items, errors="collect", batch_size=16, coverage=0.9)
            parallel = full.predict(items, errors="collect", batch_size=16, coverage=0.9, workers=2)
    finally:
        torch.set_num_threads(before)
    assert serial.uncertainty is not None and np.isnan(serial.uncertainty[7])  # the bad file
    for name in ("values", "std", "domain_distance", "domain_percentile", "uncertainty", "lower", "upper"):
        np.testing.assert_array_equal(getattr(parallel, name), getattr(serial, name), err_msg=name)
    assert np.isfinite(np.delete(serial.uncertainty, 7)).all()


def test_worker_warnings_reach_the_caller(predictor):
    lonely = Atoms("Cu", positions=[[0, 0, 0]], cell=[30, 30, 30], pbc=True)
    with pytest.warns(SparseGraphWarning, match="fewer than 12 neighbours"):
        predictor.predict([bulk("Cu", "fcc", a=3.61)] * 20 + [lonely], workers=2)


def test_errors_raise_in_input_order_from_workers(predictor, tmp_path):
    items = _inputs(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(StructureReadError, match="bad.cif"):
            predictor.predict(items, workers=2)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        predictor.predict(items, workers=0)


def test_invalid_structures_keep_their_specific_error(predictor):
    overlapping = Atoms("Cu2", positions=[[0, 0, 0], [0.1, 0, 0]], cell=[5, 5, 5], pbc=True)
    result = predictor.predict([bulk("Cu", "fcc", a=3.61)] * 20 + [overlapping], workers=2, errors="collect")
    assert result.errors[-1] is not None and "overlapping atoms" in result.errors[-1]
    with pytest.raises(InvalidStructureError, match="overlapping"):
        predictor.predict([overlapping], workers=2)


@pytest.mark.parametrize("model", [["--model", "formation_energy"], []])
def test_cli_workers_write_the_same_file(tmp_path, model):
    """``--workers 2`` and ``--workers 1`` write identical output, good and bad rows in input order."""
    from ase.io import write
    from click.testing import CliRunner

    from cgcnn_ase.cli import main

    folder = tmp_path / "cifs"
    folder.mkdir()
    for k in range(70):
        write(folder / f"c{k:02d}.cif", rattled(bulk("NaCl", "rocksalt", a=5.5 + 0.01 * k), seed=k), format="cif")
    (folder / "c33_bad.cif").write_text("junk\n")
    outputs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.csv"
        result = CliRunner().invoke(main, ["predict", str(folder), *model, "--workers", workers, "-o", str(out)])
        assert result.exit_code == 1 and "c33_bad.cif" in result.stderr  # one bad file
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]
    assert len(outputs[0].splitlines()) == 72
    bad = CliRunner().invoke(main, ["predict", str(folder), "--workers", "none"])
    assert bad.exit_code == 2 and "--workers" in bad.output


def test_a_kept_pool_serves_many_calls_with_the_same_bits(predictor, tmp_path, pool_runs, monkeypatch):
    """``NetworkPool``: processes started once serve several ``predict`` calls (a stream's chunks),
    with the results of ``workers=1``; it refuses another predictor or changed options."""
    from cgcnn_ase.inference.parallel import NetworkPool

    started: list[int] = []
    original_init = NetworkPool.__init__

    def counting_init(self, *args, **kwargs):
        started.append(1)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(NetworkPool, "__init__", counting_init)
    items = _inputs(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serial = [predictor.predict(items[k : k + 15], errors="collect", batch_size=4) for k in (0, 15, 30)]
        with NetworkPool(predictor, 2) as pool:
            kept = [predictor.predict(items[k : k + 15], errors="collect", batch_size=4, workers=pool) for k in (0, 15, 30)]
            assert started == [1]  # no call started processes of its own
            other = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
            with pytest.raises(ValueError, match="another predictor"):
                other.predict(items[:3], workers=pool)
            predictor.fast_network = False
            try:
                with pytest.raises(ValueError, match="other predictor options"):
                    predictor.predict(items[:3], workers=pool)
            finally:
                predictor.fast_network = None
    assert pool_runs == ["pipeline"] * 3
    for a, b in zip(serial, kept):
        assert a.ids == b.ids and a.errors == b.errors
        np.testing.assert_array_equal(a.member_values, b.member_values)
    with pytest.raises(ValueError, match="at least 2"):
        NetworkPool(predictor, 1)


def test_a_stream_starts_its_workers_once(predictor, tmp_path, monkeypatch):
    """``predict_stream`` with one model and workers: processes started once for every chunk, and
    none for a stream too short to be worth them (``cgcnn-ase predict POSCAR`` runs in one process)."""
    from cgcnn_ase.inference import parallel, streaming

    started: list[int] = []

    class CountingPool(streaming.NetworkPool):
        @property
        def pool(self):
            if not self.started:
                started.append(1)
            return super().pool

    monkeypatch.setattr(streaming, "NetworkPool", CountingPool)
    items = [(f"c{k}", rattled(bulk("NaCl", "rocksalt", a=5.5 + 0.02 * k), seed=k)) for k in range(12)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = streaming.predict_stream(items, [predictor], tmp_path / "out.csv", chunk_size=4, workers=2)
        single = streaming.predict_stream(items, [predictor], tmp_path / "one.csv", chunk_size=4)
        assert summary.n_chunks == 3 and summary.n_predicted == 12 and single.n_predicted == 12
        assert started == [1]
        monkeypatch.setattr(parallel, "MIN_PARALLEL", 64)  # the library's own threshold
        streaming.predict_stream(items[:1], [predictor], tmp_path / "short.csv", workers=2)
    assert started == [1]  # no processes for one structure
    assert (tmp_path / "out.csv").read_text() == (tmp_path / "one.csv").read_text()


def test_per_atom_and_embeddings_from_workers_are_bitwise(predictor, pool_runs):
    """Per-atom contributions, embeddings and the domain signal come back from whole-batch tasks unchanged."""
    items = [rattled(bulk("NaCl", "rocksalt", a=5.5 + 0.02 * k), seed=k) * (1, 1, 1 + k % 2) for k in range(12)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serial = predictor.predict(items, per_atom=True, embeddings=True, batch_size=5)
        parallel = predictor.predict(items, per_atom=True, embeddings=True, batch_size=5, workers=2)
    assert pool_runs == ["pipeline"]
    assert [len(a) for a in parallel.per_atom] == [len(a) for a in items]
    for a, b in zip(serial.per_atom, parallel.per_atom):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(serial.embeddings, parallel.embeddings)
    np.testing.assert_array_equal(serial.domain_percentile, parallel.domain_percentile)


# -- several models together (predict_many) ----------------------------------------------------------


@pytest.fixture(scope="module")
def models(predictor) -> list[CGCNNPredictor]:
    """Four models on the CPU: two ensembles' members, a classifier, and one that keeps 10 neighbours (another
    graph config, so its graphs cannot be the others')."""
    from dataclasses import replace

    gap = CGCNNPredictor.from_pretrained("band_gap", members=1, device="cpu")
    metal = CGCNNPredictor.from_pretrained("is_metal", members=1, device="cpu")
    narrow = CGCNNPredictor.from_pretrained("fermi_energy", members=1, device="cpu")
    narrow.model.spec = replace(narrow.model.spec, graph=replace(narrow.model.spec.graph, max_neighbors=10))
    return [predictor, gap, metal, narrow]


def _count_builds(monkeypatch) -> list[int]:
    from cgcnn_ase.inference import parallel

    builds, build = [], parallel.build_graph

    def counting(record, config, **kwargs):
        builds.append(config.max_neighbors)
        return build(record, config, **kwargs)

    monkeypatch.setattr(parallel, "build_graph", counting)
    return builds


def _same_results(together, separate) -> None:
    for a, b in zip(together, separate, strict=True):
        assert a.ids == b.ids and a.errors == b.errors and a.property == b.property
        np.testing.assert_array_equal(a.values, b.values)  # bit for bit: the same graphs, the same batches
        np.testing.assert_array_equal(a.n_sparse, b.n_sparse)
        np.testing.assert_array_equal(a.domain_percentile, b.domain_percentile)
        assert a.unseen_elements == b.unseen_elements


def test_several_models_read_once_and_share_graphs_with_the_same_bits(models, tmp_path, pool_runs, monkeypatch):
    from cgcnn_ase.inference.predictor import predict_many

    items = _inputs(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        builds = _count_builds(monkeypatch)
        separate = [p.predict(items, errors="collect", batch_size=8) for p in models]
        assert len(builds) == 4 * 45  # 45 structures (and an unreadable file), four models
        builds.clear()
        together = predict_many(models, items, errors="collect", batch_size=8)
        assert sorted(set(builds)) == [10, 12] and builds.count(12) == builds.count(10) == 45  # one graph per config
        parallel = predict_many(models, items, errors="collect", batch_size=8, workers=2)
        twelve = CGCNNPredictor.from_pretrained("fermi_energy", members=1, device="cpu")
        assert not np.array_equal(separate[3].values, twelve.predict(items, errors="collect", batch_size=8).values)
    assert pool_runs == ["pipeline"]  # one pool ran every model, one task per batch
    assert "bad.cif" in separate[0].errors[7] and separate[2].task == "classification"
    _same_results(together, separate)
    _same_results(parallel, separate)


def test_several_models_after_a_multi_frame_input(models, tmp_path, pool_runs):
    """A file of three frames shifts the later batches: from there the calling process forms them for all models."""
    from ase.io import write

    from cgcnn_ase.inference.predictor import predict_many

    frames = [rattled(bulk("Si", "diamond", a=5.43 + 0.01 * k), seed=k) for k in range(3)]
    write(tmp_path / "three.extxyz", frames, format="extxyz")
    items = _inputs(tmp_path)
    items.insert(9, str(tmp_path / "three.extxyz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        separate = [p.predict(items, errors="collect", batch_size=8) for p in models]
        parallel = predict_many(models, iter(items), errors="collect", batch_size=8, workers=2)  # an iterator too
        assert pool_runs == ["pipeline", "regrouped"]
        with pytest.raises(StructureReadError, match="bad.cif"):
            predict_many(models, items, batch_size=8, workers=2)
    assert len(parallel[0]) == len(items) + 2
    _same_results(parallel, separate)


def test_a_kept_pool_of_several_models_and_models_that_cannot_share(models, tmp_path, monkeypatch):
    """A ``NetworkPool`` of several predictors serves several calls; models that cannot share graphs (another CIF
    reader) each predict in turn, with the same results, and cannot share a pool."""
    from dataclasses import replace

    from cgcnn_ase.inference.parallel import NetworkPool, shares_graphs
    from cgcnn_ase.inference.predictor import predict_many

    items = _inputs(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        separate = [[p.predict(items[k : k + 20], errors="collect", batch_size=4) for p in models] for k in (0, 20)]
        with NetworkPool(models, 2) as pool:
            kept = [predict_many(models, items[k : k + 20], errors="collect", batch_size=4, workers=pool) for k in (0, 20)]
            with pytest.raises(ValueError, match="another predictor"):
                predict_many(models[:2], items[:3], workers=pool)
        for a, b in zip(kept, separate):
            _same_results(a, b)
        original = CGCNNPredictor.from_pretrained("band_gap", members=1, device="cpu")
        original.model.spec = replace(original.model.spec,
                                      graph=replace(original.model.spec.graph, neighbor_policy="original"))  # fmt: skip
        mixed = [models[0], original]
        assert shares_graphs(models) and not shares_graphs(mixed)
        with pytest.raises(ValueError, match="cannot share"):
            NetworkPool(mixed, 2)
        alone = [p.predict(items, errors="collect", batch_size=8) for p in mixed]
        _same_results(predict_many(mixed, (x for x in items), errors="collect", batch_size=8, workers=2), alone)
    assert predict_many([], items) == []

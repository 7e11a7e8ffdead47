"""The applicability-domain percentile and the per-crystal uncertainty (issue 18).

The shipped Materials Project summaries store every training embedding and compare a crystal with
the validation crystals of its formula-unit size class; the ensembles' summaries carry the error
model behind ``uncertainty``. What must hold: textbook rocksalts and strained training crystals are
in the domain of the formation-energy model; the perovskite model flags NaCl, Si and Cu; an element
absent from training is flagged; intervals widen with the coverage.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from cgcnn_ase import CGCNNPredictor
from cgcnn_ase.models.domain import MIN_CLASS, DomainSummary, formula_size, nearest_rows
from cgcnn_ase.models.local_error import FEATURES, ErrorModel, fit_laplace

from .conftest import SHARED, require_shared

ROCKSALTS = {"MgO": 4.21, "CaO": 4.81, "KCl": 6.29, "NaCl": 5.64}


def _quiet_predict(predictor: CGCNNPredictor, structures, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return predictor.predict(structures, **kwargs)


@pytest.fixture(scope="module")
def formation_energy() -> CGCNNPredictor:
    return CGCNNPredictor.from_pretrained("formation_energy", device="cpu")


# -- small pieces -------------------------------------------------------------------------------


def test_formula_size_is_the_same_for_any_cell():
    assert formula_size([11, 17]) == 2
    assert formula_size([11] * 4 + [17] * 4) == 2
    assert formula_size([38, 22, 8, 8, 8]) == 5
    assert formula_size([14] * 8) == 1
    assert formula_size([3, 3, 25, 8, 8, 8]) == 6  # Li2MnO3


def test_nearest_rows_leave_one_out_and_nan_rows():
    points = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    idx, dist = nearest_rows(points, points, 1, exclude_self=True)
    assert idx[:, 0].tolist() == [1, 0, 1] and dist[:, 0].tolist() == [1.0, 1.0, 2.0]
    idx, dist = nearest_rows(np.array([[np.nan, 0.0], [2.9, 0.0]]), points, 2)
    assert idx[0].tolist() == [-1, -1] and np.isnan(dist[0]).all()
    assert idx[1].tolist() == [2, 1]


def test_percentiles_compare_within_size_classes_and_fall_back_to_the_pool():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(2000, 4))
    small, large = rng.normal(size=(300, 4)) * 3, rng.normal(size=(300, 4))  # small cells lie farther out
    sizes = [2] * 300 + [20] * 300
    summary = DomainSummary.build(train, np.vstack([small, large]), max_centers=None, max_bytes=None,
                                  reference_sizes=sizes)  # fmt: skip
    d = summary.distances(np.vstack([small[:50], large[:50]]))
    own = summary.percentiles(d, [2] * 50 + [20] * 50)
    pooled = summary.percentiles(d)
    assert own[:50].mean() < pooled[:50].mean() and own[50:].mean() > pooled[50:].mean()
    lonely = summary.percentiles(d[:5], [5] * 5)  # no reference crystal of 5 atoms: the pooled reference
    np.testing.assert_allclose(lonely, pooled[:5])
    assert MIN_CLASS > 1


def test_laplace_fit_recovers_a_known_scale():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20000, 1))
    residuals = rng.laplace(scale=np.exp(0.5 + 0.8 * x[:, 0]))
    w = fit_laplace(x, residuals)
    np.testing.assert_allclose(w, [0.5, 0.8], atol=0.03)


def test_domain_file_round_trip_with_targets_sizes_and_error_model(tmp_path):
    rng = np.random.default_rng(2)
    summary = DomainSummary.build(rng.normal(size=(300, 8)), rng.normal(size=(80, 8)), max_centers=None,
                                  max_bytes=None, reference_sizes=rng.integers(1, 30, 80),
                                  train_targets=rng.normal(size=300))  # fmt: skip
    model = ErrorModel(val_embeddings=rng.normal(size=(80, 8)).astype(np.float16),
                       val_residuals=rng.normal(size=80).astype(np.float32),
                       element_error=np.ones(119, dtype=np.float32), weights=np.arange(1 + len(FEATURES)) / 10,
                       info={"split": "val", "floor": 1e-6})  # fmt: skip
    summary = replace(summary, error_model=model)
    back = DomainSummary.load(summary.save(tmp_path / "domain.safetensors"))
    np.testing.assert_array_equal(back.targets, summary.targets)
    np.testing.assert_array_equal(back.reference_sizes, summary.reference_sizes)
    np.testing.assert_array_equal(back.error_model.weights, model.weights)
    assert back.error_model.info == model.info


# -- the shipped models -------------------------------------------------------------------------


def test_textbook_rocksalts_are_inside_the_formation_energy_domain(formation_energy):
    """MgO (not in the data set), CaO (test split), KCl and NaCl (training split), built by ase."""
    crystals = [bulk(name, "rocksalt", a=a) for name, a in ROCKSALTS.items()]
    result = _quiet_predict(formation_energy, crystals)
    assert np.all(result.domain_percentile < 80), dict(zip(ROCKSALTS, result.domain_percentile.round(1)))
    assert result.in_domain(max_percentile=80).all()


def test_the_percentile_does_not_depend_on_the_cell(formation_energy):
    primitive = bulk("NaCl", "rocksalt", a=5.64)
    cubic = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 1, 1))
    result = _quiet_predict(formation_energy, [primitive, cubic])
    assert result.domain_percentile[0] == pytest.approx(result.domain_percentile[1], abs=0.5)


def test_strained_training_crystals_stay_inside_the_domain(formation_energy):
    """50 training crystals strained by +2% and by -2%: all 100 below the 80th percentile (issue 18). These are
    the 50 that docs/uncertainty.md measures (rng 0 over the training split); of 800 strained cells of 400
    training crystals, 17 reach the 80th percentile and one the 96.8th (docs/uncertainty.md): one sample, not a
    guarantee. Their rows are read from the table, not by parsing the whole training split (15-20 s)."""
    import pandas as pd

    from cgcnn_ase.data.splits import Split
    from cgcnn_ase.io.reader import read_record
    from cgcnn_ase.models.registry import resolve_model

    data = require_shared(SHARED / "data" / "mp_cgcnn46k_kdmsit" / "data.csv.gz")
    train = Split.load(resolve_model("formation_energy").path / "split.json").ids("train")  # all usable, in order
    picked_ids = {train[i] for i in np.random.default_rng(0).choice(len(train), 50, replace=False)}
    table = pd.read_csv(data, usecols=["material_id", "cif"])
    picked = [read_record(text) for text in table.loc[table["material_id"].isin(picked_ids), "cif"]]
    assert len(picked) == 50
    strained = [replace(r, cell=r.cell * (1 + s)) for r in picked for s in (0.02, -0.02)]
    result = _quiet_predict(formation_energy, strained, on_sparse="ignore")
    assert np.all(result.domain_percentile < 80), np.sort(result.domain_percentile)[-5:]


def test_the_perovskite_model_flags_what_is_not_a_perovskite():
    predictor = CGCNNPredictor.from_pretrained("perovskite_formation_energy", device="cpu")
    others = [bulk("NaCl", "rocksalt", a=5.64), bulk("Si", "diamond", a=5.43), bulk("Cu", "fcc", a=3.61)]
    result = _quiet_predict(predictor, others)
    assert np.all(result.domain_percentile > 95) and not result.in_domain().any()


def test_an_element_absent_from_training_is_flagged(formation_energy):
    """Ra never occurs in the Materials Project training split of the formation-energy model."""
    cell = bulk("NaCl", "rocksalt", a=5.8).cell  # a rocksalt RaO
    ra_o = Atoms("RaO", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=cell, pbc=True)
    result = _quiet_predict(formation_energy, [ra_o, bulk("NaCl", "rocksalt", a=5.64)])
    assert result.unseen_elements[0] == ["Ra"] and result.unseen_elements[1] == []
    assert result.in_domain().tolist() == [False, True]


def test_uncertainty_is_reported_and_intervals_widen_with_coverage(formation_energy):
    crystals = [bulk(name, "rocksalt", a=a) for name, a in ROCKSALTS.items()] + [bulk("Si", "diamond", a=5.43)]
    widths = []
    for coverage in (0.5, 0.68, 0.8, 0.9, 0.95, 0.99):
        result = _quiet_predict(formation_energy, crystals, coverage=coverage)
        widths.append(result.upper - result.lower)
    assert all(np.all(a < b) for a, b in zip(widths, widths[1:]))
    assert result.uncertainty is not None and np.all(result.uncertainty > 0)
    frame = result.to_dataframe()
    assert frame.attrs["units"]["formation_energy_uncertainty"] == "eV/atom"
    np.testing.assert_array_equal(frame["formation_energy_uncertainty"], result.uncertainty)
    fast = CGCNNPredictor.from_pretrained("formation_energy", device="cpu", members=1)
    assert _quiet_predict(fast, crystals[:1]).uncertainty is None  # no ensemble: no uncertainty


def test_error_model_leaves_each_validation_crystal_out_of_its_own_features():
    from cgcnn_ase.models.local_error import K_VALIDATION, fit_error_model

    rng = np.random.default_rng(3)
    train = rng.normal(size=(200, 6))
    val = rng.normal(size=(60, 6))
    domain = DomainSummary.build(train, val, max_centers=None, max_bytes=None, train_targets=np.zeros(200))
    y = np.zeros(60)
    y[0] = 100.0  # one huge validation error
    elements = [np.array([8, 12])] * 60
    model = fit_error_model(domain, val, np.zeros(60), np.full(60, 0.1), y, elements)
    knn, element = FEATURES.index("knn"), FEATURES.index("element")
    out = model.features(domain, val, np.zeros(60), np.full(60, 0.1), elements, leave_out=True)
    inside = model.features(domain, val, np.zeros(60), np.full(60, 0.1), elements)
    assert np.exp(inside[0, knn]) == pytest.approx(100.0 / K_VALIDATION, rel=1e-3)  # its own error counts
    assert np.exp(out[0, knn]) < 1e-3 * 100.0 / K_VALIDATION  # left out: only the others' zero errors
    assert np.exp(out[0, element]) < np.exp(inside[0, element])
    with pytest.raises(ValueError, match="leave_out"):
        model.features(domain, val[:1], np.zeros(1), np.full(1, 0.1), elements[:1], leave_out=True)

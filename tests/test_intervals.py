"""Prediction intervals with a stated coverage (split-conformal on the validation split)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from ase.build import bulk

from cgcnn_ase import CGCNNCalculator, CGCNNFeaturizer, CGCNNPredictor
from cgcnn_ase.analysis.intervals import calibrate_intervals
from cgcnn_ase.analysis.metrics import conditional_rank, conformal_quantiles, interval_coverage
from cgcnn_ase.errors import CheckpointError
from cgcnn_ase.models.folder import load_model_folder

from .conftest import SHARED, require_shared
from .test_ensemble import data, ensemble, members  # noqa: F401 - a tiny trained ensemble and its data


def test_conformal_quantile_is_the_finite_sample_order_statistic():
    scores = np.arange(1, 20, dtype=float)  # 19 calibration scores 1..19, std 1
    q = conformal_quantiles(scores, np.zeros(19), np.ones(19), levels=(0.5, 0.9, 0.95, 0.99))
    assert q[:3] == [10.0, 18.0, 19.0]  # ceil(20 * a)-th smallest
    assert math.isinf(q[3])  # ceil(20 * 0.99) = 20 > 19: no finite quantile


def test_training_conditional_quantiles_cover_with_the_stated_confidence():
    """Uniform scores: the coverage of future items by quantile q is q itself, so over many draws of
    441 calibration scores the marginal rule reaches 90% coverage in about half of the draws and the
    training-conditional rule (confidence 0.9) in about 90% of them, never with a lower quantile."""
    rng = np.random.default_rng(0)
    n, draws = 441, 2000
    marginal, conditional = [], []
    for _ in range(draws):
        scores = rng.uniform(size=n)
        (m,) = conformal_quantiles(scores, np.zeros(n), np.ones(n), levels=(0.9,))
        (c,) = conformal_quantiles(scores, np.zeros(n), np.ones(n), levels=(0.9,), confidence=0.9)
        assert c >= m
        marginal.append(m), conditional.append(c)
    assert 0.40 < np.mean(np.array(marginal) >= 0.9) < 0.60
    assert 0.88 < np.mean(np.array(conditional) >= 0.9) < 0.93
    assert np.mean(marginal) == pytest.approx(0.9, abs=0.003)  # the marginal rule: nominal on average
    # the rank: P(Binomial(n, level) <= k - 1) >= confidence, smallest such k
    from scipy.stats import binom

    k = conditional_rank(n, 0.9, 0.9)
    assert binom.cdf(k - 1, n, 0.9) >= 0.9 > binom.cdf(k - 2, n, 0.9)
    # many calibration items: the two rules meet
    assert conditional_rank(10**6, 0.68, 0.9) / 10**6 == pytest.approx(0.68, abs=0.001)
    with pytest.raises(ValueError, match="confidence must lie in"):
        conformal_quantiles(np.ones(5), np.zeros(5), np.ones(5), levels=(0.5,), confidence=1.0)


def test_normalised_gaussian_errors_give_gaussian_quantiles_and_coverage():
    rng = np.random.default_rng(0)
    std = rng.uniform(0.1, 2.0, 20000)
    y = rng.normal(scale=std)
    q68, q90 = conformal_quantiles(y[:10000], np.zeros(10000), std[:10000], levels=(0.68, 0.9))
    assert q68 == pytest.approx(0.994, abs=0.03) and q90 == pytest.approx(1.645, abs=0.04)
    covered = interval_coverage(y[10000:], -q90 * std[10000:], q90 * std[10000:])
    assert covered == pytest.approx(0.9, abs=0.01)


@pytest.fixture(scope="module")
def calibrated(ensemble, data, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("intervals") / "calibrated"
    shutil.copytree(ensemble, folder)
    # 3 validation crystals: too few for the training-conditional rule, so the plain one
    conformal = calibrate_intervals(folder, str(data), workers=1, confidence=None)
    return folder, conformal


def test_calibration_on_edited_labels_warns(ensemble, data, tmp_path):  # noqa: F811
    """Calibrate fitted intervals to a dataset whose labels had changed since training, without a word
    (evaluate already said so)."""
    import pandas as pd

    folder = tmp_path / "copy"
    shutil.copytree(ensemble, folder)
    edited = pd.read_csv(data)
    edited["vpa"] = edited["vpa"] * 1.1
    edited.to_csv(tmp_path / "edited.csv", index=False)
    with pytest.warns(UserWarning, match="labels of the val split differ .*; the intervals are fitted to them"):
        calibrate_intervals(folder, str(tmp_path / "edited.csv"), write=False, workers=1, confidence=None)


def test_too_few_validation_crystals_for_the_confidence_are_refused(calibrated):
    from cgcnn_ase.errors import DatasetError

    folder, _ = calibrated
    with pytest.raises(DatasetError, match="3 validation crystals are too few .* at confidence 0.9"):
        calibrate_intervals(folder, write=False, workers=1)


def test_an_error_model_needs_100_validation_crystals_and_says_so(calibrated):
    """Round 11: --normaliser uncertainty on a small validation split was an internal error blaming the domain
    summary; auto dropped the per-crystal uncertainty without a word."""
    from cgcnn_ase.errors import DatasetError

    folder, _ = calibrated
    with pytest.raises(DatasetError, match="holds 3 usable crystals and the error model needs at least 100"):
        calibrate_intervals(folder, write=False, workers=1, confidence=None, normaliser="uncertainty")
    with pytest.warns(UserWarning, match="no per-crystal uncertainty .*3 usable crystals.* normalised by the ensemble's std"):
        conformal = calibrate_intervals(folder, write=False, workers=1, confidence=None)
    assert conformal["normaliser"] == "std_raw"


def test_calibration_is_stored_checked_and_shown_on_the_card(calibrated):
    folder, conformal = calibrated
    document = json.loads((folder / "model.json").read_text())
    stored = document["ensemble"]["calibration"]["conformal"]
    assert stored["split"] == "val" and stored["levels"] == conformal["levels"]
    assert [row["nominal"] for row in stored["test_coverage"]] == [0.68, 0.9, 0.95]
    assert "Prediction intervals" in (folder / "README.md").read_text()
    assert load_model_folder(folder).conformal_quantile(stored["levels"][0]) == pytest.approx(stored["quantiles"][0])
    stored["quantiles"] = stored["quantiles"][::-1]  # decreasing: refused at load
    broken = folder.parent / "broken"
    shutil.copytree(folder, broken)
    (broken / "model.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="conformal.quantiles must be positive, finite and non-decreasing"):
        load_model_folder(broken)


def test_intervals_contain_the_prediction_and_widen_with_coverage(calibrated):
    folder, conformal = calibrated
    predictor = CGCNNPredictor.load(folder)
    crystals = [bulk("NaCl", "rocksalt", a=5.6), bulk("Cu", "fcc", a=3.61)]
    levels = [c for c in (0.6, 0.68, 0.8, 0.9) if conformal["levels"][0] <= c <= conformal["levels"][-1]]
    widths = []
    for coverage in levels:
        result = predictor.predict(crystals, coverage=coverage)
        assert np.all(result.lower <= result.values) and np.all(result.values <= result.upper)
        widths.append(result.upper - result.lower)
        frame = result.to_dataframe()
        assert {f"{result.property}_lower", f"{result.property}_upper"} <= set(frame.columns)
    assert len(widths) >= 2 and all(np.all(a <= b) for a, b in zip(widths, widths[1:]))
    with pytest.raises(ValueError, match="coverage must lie between"):
        predictor.predict(crystals, coverage=0.999)
    with pytest.raises(ValueError, match="runs 1 of its 3 members.*without members="):
        CGCNNPredictor.load(folder, members=1).predict(crystals, coverage=0.68)


def test_calculator_and_featurizer_give_the_same_intervals(calibrated):
    import pandas as pd
    from pymatgen.io.ase import AseAtomsAdaptor

    folder, conformal = calibrated
    coverage = conformal["levels"][0]
    atoms = bulk("NaCl", "rocksalt", a=5.6)
    reference = CGCNNPredictor.load(folder).predict(atoms, coverage=coverage)
    name = reference.property
    calc = CGCNNCalculator(str(folder), coverage=coverage)
    assert calc.get_property(f"{name}_lower", atoms) == pytest.approx(reference.lower[0], abs=1e-9)
    frame = CGCNNFeaturizer([str(folder)], coverage=coverage).featurize_dataframe(
        pd.DataFrame({"s": [AseAtomsAdaptor.get_structure(atoms)]}), "s", pbar=False
    )
    assert frame.loc[0, f"{name}_upper ({reference.units})"] == pytest.approx(reference.upper[0], abs=1e-9)


def test_shipped_regression_ensembles_carry_validation_fitted_intervals_and_their_test_coverage():
    """Every shipped regression ensemble carries training-conditional intervals fitted on the validation split,
    and reports their test coverage at 68, 90 and 95% (stored by `cgcnn-ase calibrate`); for the smallest set
    (441 validation crystals) both are recomputed here from the data.

    The test coverage is reported, not required: a test that failed on it would make the test split choose
    which models ship (round 21c found that it once had: docs/models.md, "Shear modulus")."""
    from cgcnn_ase.models.registry import list_models

    checked = []
    for info in list_models():
        if info.task != "regression" or not info.metadata.get("ensemble_of"):
            continue
        predictor = CGCNNPredictor.from_pretrained(info.name)
        assert predictor.has_intervals, info.name
        conformal = predictor.model.calibration["conformal"]
        assert conformal["confidence"] == 0.9 and conformal["split"] == "val", info.name
        assert [row["nominal"] for row in conformal["test_coverage"]] == [0.68, 0.9, 0.95], info.name
        assert all(0 <= row["conformal"] <= 1 for row in conformal["test_coverage"]), info.name
        assert set(conformal["test_spearman"]) == {"std", "uncertainty"}, info.name
        checked.append(info.name)
    assert len(checked) >= 7, checked
    require_shared(SHARED / "data" / "mp_elastic3k_kdmsit")
    from cgcnn_ase.models.registry import model_folder

    conformal = calibrate_intervals(model_folder("bulk_modulus"), write=False, workers=1)
    stored = CGCNNPredictor.from_pretrained("bulk_modulus").model.calibration["conformal"]
    # reproducible from the data, to the float32 rounding of the networks (stacked members or one by one)
    assert conformal["quantiles"] == pytest.approx(stored["quantiles"], rel=1e-4)
    for row, kept in zip(conformal["test_coverage"], stored["test_coverage"]):
        assert row["conformal"] == pytest.approx(kept["conformal"], abs=1 / 441), row


def test_the_perovskite_model_flags_crystals_that_are_not_perovskites():
    """'The perovskite model happily predicts NaCl (+0.59 eV/atom) with no warning': its domain summary
    (embeddings of its training perovskites) puts NaCl, Si and Cu beyond every validation perovskite."""
    import warnings

    from ase import Atoms

    def perovskite(a_el: str, b_el: str, a: float) -> Atoms:
        fractions = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
        return Atoms(f"{a_el}{b_el}O3", scaled_positions=fractions, cell=[a, a, a], pbc=True)

    predictor = CGCNNPredictor.from_pretrained("perovskite_formation_energy")
    assert predictor.has_domain
    others = [bulk("NaCl", "rocksalt", a=5.64), bulk("Si", "diamond", a=5.43), bulk("Cu", "fcc", a=3.61)]
    cubic = [perovskite("Sr", "Ti", 3.905), perovskite("Ba", "Zr", 4.19), perovskite("K", "Nb", 4.02),
             perovskite("Sr", "Ti", 3.905 * 1.02), perovskite("Sr", "Ti", 3.905 * 0.98)]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = predictor.predict(others + cubic)
    assert np.all(result.domain_percentile[:3] > 99) and not result.in_domain()[:3].any()
    assert np.all(result.domain_percentile[3:] < 80) and result.in_domain()[3:].all()


def test_refreshing_the_domain_report_keeps_the_std_calibration(ensemble, data, tmp_path):  # noqa: F811
    """`cgcnn-ase calibrate --domain --report`: the domain summary is rebuilt and the report's domain bins
    re-measured, while the std calibration, the metrics and therefore `std` stay exactly as they were."""
    from cgcnn_ase.train.ensembles import add_domain_summary, refresh_domain_report

    folder = tmp_path / "refreshed"
    shutil.copytree(ensemble, folder)
    before = json.loads((folder / "model.json").read_text())
    add_domain_summary(folder, str(data), max_centers=3, workers=1)
    stored = refresh_domain_report(folder, str(data), workers=1)
    after = json.loads((folder / "model.json").read_text())
    assert after["ensemble"]["calibration"] == before["ensemble"]["calibration"]
    assert after["metadata"]["test_metrics"] == before["metadata"]["test_metrics"]
    assert after["domain"]["n_centers"] == 3 and before["domain"]["n_centers"] != 3
    bins = [b["n"] for b in after["metadata"]["uncertainty"]["test"]["domain"]["percentile_bins"]]
    assert bins == [b["n"] for b in stored["test"]["domain"]["percentile_bins"]] and sum(bins) > 0


def test_calibrate_folder_refuses_what_a_single_model_cannot_have(model_folder):
    from cgcnn_ase.errors import EnsembleError
    from cgcnn_ase.train.ensembles import calibrate_folder

    with pytest.raises(EnsembleError, match="intervals need a regression ensemble .* a single network; --domain"):
        calibrate_folder(model_folder)
    with pytest.raises(EnsembleError, match=r"report \(--report\) needs an ensemble"):
        calibrate_folder(model_folder, report=True)

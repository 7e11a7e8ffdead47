"""Metrics and plots (evaluate_model itself is exercised on a trained model in test_training.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cgcnn_ase.analysis.plots import learning_curve_plot, parity_plot, roc_plot
from cgcnn_ase.analysis.metrics import classification_metrics, regression_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def test_regression_metrics_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    yhat = np.array([1.5, 2.0, 2.0, 4.0])
    m = regression_metrics(y, yhat)
    assert m["n"] == 4
    assert m["mae"] == pytest.approx(0.375)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 1.0) / 4))
    assert m["r2"] == pytest.approx(1 - 1.25 / 5.0)
    assert regression_metrics(y, y)["mae"] == 0 and regression_metrics(y, y)["r2"] == 1
    assert np.isnan(regression_metrics([], [])["mae"])
    with pytest.raises(ValueError, match="differ in length"):
        regression_metrics([1, 2], [1])


def test_classification_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    m = classification_metrics(y, p)
    assert m["n"] == 5 and m["n_positive"] == 3
    assert m["accuracy"] == pytest.approx(3 / 5)  # predictions 0 1 0 1 1
    assert m["roc_auc"] == pytest.approx(5 / 6)  # 5 of 6 (positive, negative) pairs ranked right
    assert m["precision"]["1"] == pytest.approx(2 / 3) and m["recall"]["1"] == pytest.approx(2 / 3)
    assert m["precision"]["0"] == pytest.approx(1 / 2) and m["recall"]["0"] == pytest.approx(1 / 2)
    assert np.isnan(classification_metrics([1, 1], [0.2, 0.9])["roc_auc"])
    with pytest.raises(ValueError, match="0 or 1"):
        classification_metrics([0, 2], [0.1, 0.2])


def test_plots_write_png_files(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    parity_plot(y, y + rng.normal(scale=0.1, size=50), tmp_path / "a" / "parity.png", units="eV/atom", title="t")
    parity_plot(np.arange(3000.0), np.arange(3000.0), tmp_path / "dense.png")  # hexbin branch
    labels = (y > 0).astype(int)
    roc_plot(labels, 1 / (1 + np.exp(-3 * y)), tmp_path / "roc.png")
    roc_plot(np.ones(4), np.full(4, 0.5), tmp_path / "one_class.png")
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "epoch,train_loss,train_mae,val_loss,val_mae,val_rmse,lr,epoch_time_s,best\n"
        "1,1.0,0.5,1.1,0.6,0.7,0.01,0.1,1\n2,0.5,0.3,0.9,0.4,0.5,0.01,0.1,1\n3,0.4,0.2,1.0,0.45,0.55,0.001,0.1,0\n"
    )
    learning_curve_plot(csv, tmp_path / "curve.png", title="curve")
    for name in ("a/parity.png", "dense.png", "roc.png", "one_class.png", "curve.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


def test_plots_do_not_touch_pyplot_state(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    parity_plot([1.0, 2.0], [1.1, 2.1], tmp_path / "p.png")
    assert matplotlib.get_backend() == backend
    import sys

    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        assert not plt.get_fignums()


# -- uncertainty metrics (ensembles) ------------------------------------------------------------


def test_spearman_and_fractions_within_k_std_by_hand():
    from cgcnn_ase.analysis.metrics import fit_std_scale, fraction_within, regression_uncertainty_metrics, spearman

    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6 * 4 / (5 * 24)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2, 3], [1, 1, 1]))
    y = np.zeros(4)
    yhat = np.array([0.5, -1.5, 3.0, 0.1])
    std = np.array([1.0, 1.0, 1.0, 0.05])
    assert fraction_within(y, yhat, std, 1) == pytest.approx(0.25)  # |z| = 0.5, 1.5, 3, 2
    assert fraction_within(y, yhat, std, 2) == pytest.approx(0.75)
    m = regression_uncertainty_metrics(y, yhat, std)
    assert m["n"] == 4 and m["within_1std"] == pytest.approx(0.25) and m["within_2std"] == pytest.approx(0.75)
    assert m["mae"] == pytest.approx((0.5 + 1.5 + 3.0 + 0.1) / 4) and m["mean_std"] == pytest.approx(3.05 / 4)
    assert m["rms_z"] == pytest.approx(np.sqrt((0.25 + 2.25 + 9 + 4) / 4))
    # |error| 0.5, 1.5, 3, 0.1 ranks 2, 3, 4, 1; std ranks 2.5, 2.5, 2.5, 1: Pearson of the ranks
    assert m["spearman_abs_error_std"] == pytest.approx(np.corrcoef([2, 3, 4, 1], [2.5, 2.5, 2.5, 1])[0, 1])
    assert m["expected_within_1std"] == pytest.approx(0.6827, abs=1e-4) and m["expected_within_2std"] == pytest.approx(0.9545, abs=1e-4)
    scale = fit_std_scale(y, yhat, std)
    assert scale == pytest.approx(m["rms_z"])
    assert regression_uncertainty_metrics(y, yhat, scale * std)["rms_z"] == pytest.approx(1.0)


def test_calibration_curve_of_a_gaussian_follows_the_diagonal():
    from cgcnn_ase.analysis.metrics import calibration_curve

    rng = np.random.default_rng(0)
    std = rng.uniform(0.1, 2.0, size=20000)
    y = rng.normal(scale=std)
    curve = calibration_curve(y, np.zeros_like(y), std)
    assert curve["k"][0] == 0 and curve["k"][-1] == 3 and len(curve["k"]) == 31
    np.testing.assert_allclose(curve["observed"], curve["expected"], atol=0.01)
    small = calibration_curve([0.0, 0.0], [0.5, 2.5], [1.0, 1.0], ks=[1, 2, 3])
    assert small["observed"] == [0.5, 0.5, 1.0]


def test_classifier_ensemble_and_domain_metrics_by_hand():
    from cgcnn_ase.analysis.metrics import classification_uncertainty_metrics, ensemble_vs_members, error_by_domain

    y = np.array([0, 0, 1, 1])
    p = np.array([0.25, 0.625, 0.375, 0.75])  # crystals 1 and 2 are misclassified (binary fractions: exact ties)
    std = np.array([0.05, 0.3, 0.2, 0.1])
    m = classification_uncertainty_metrics(y, p, std)
    assert m["n_wrong"] == 2 and m["error_detection_auc"] == pytest.approx(1.0)  # both mistakes have the largest std
    assert m["mean_abs_error"] == pytest.approx((0.25 + 0.625 + 0.625 + 0.25) / 4)
    assert m["spearman_abs_error_std"] == pytest.approx(np.corrcoef([1.5, 3.5, 3.5, 1.5], [1, 4, 3, 2])[0, 1])
    members = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 5.0]])  # member 0 exact, member 1 off by 2, 0, 2
    versus = ensemble_vs_members([1.0, 2.0, 3.0], members)
    assert versus["members"] == pytest.approx([0.0, 4 / 3]) and versus["ensemble"] == pytest.approx(2 / 3)
    assert versus["member_mean"] == pytest.approx(2 / 3) and versus["member_best"] == 0.0
    auc = ensemble_vs_members(y, np.stack([p, p[::-1]], 1), task="classification")
    assert auc["metric"] == "roc_auc" and auc["members"][0] == pytest.approx(0.75)
    bins = error_by_domain([1.0, 2.0, 3.0, 4.0], [0.0, 30.0, 60.0, 99.0], unseen=[False, False, True, True],
                           edges=(0, 50, 100))  # fmt: skip
    assert [b["n"] for b in bins["percentile_bins"]] == [2, 2]
    assert [b["mean_abs_error"] for b in bins["percentile_bins"]] == [1.5, 3.5]
    assert bins["unseen_elements"] == {"n": 2, "mean_abs_error": 3.5} and bins["spearman_abs_error_percentile"] == pytest.approx(1.0)


def test_uncertainty_plots_write_png_files(tmp_path):
    from cgcnn_ase.analysis.plots import calibration_plot, error_vs_std_plot, reliability_plot

    rng = np.random.default_rng(1)
    std = rng.uniform(0.1, 1.0, size=200)
    y = rng.normal(scale=std)
    error_vs_std_plot(y, np.zeros_like(y), std, tmp_path / "e.png", units="eV/atom", title="t")
    calibration_plot(y, np.zeros_like(y), {"raw": std, "calibrated": 1.2 * std}, tmp_path / "c.png")
    labels = (y > 0).astype(int)
    reliability_plot(labels, 1 / (1 + np.exp(-y / std)), tmp_path / "r.png")
    error_vs_std_plot(labels, np.full(200, 0.5), std, tmp_path / "ec.png", classification=True)
    for name in ("e.png", "c.png", "r.png", "ec.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG

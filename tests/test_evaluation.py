"""Metrics and plots (evaluate_model itself is exercised on a trained model in test_training.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cgcnn_ase.evaluation import (
    classification_metrics,
    learning_curve_plot,
    parity_plot,
    regression_metrics,
    roc_plot,
)

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

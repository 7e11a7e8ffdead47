"""Metrics and plots for trained models, and evaluation of a model folder on a dataset.

Plots use matplotlib's object API (:class:`matplotlib.figure.Figure`, rendered by Agg),
so nothing here touches pyplot's global state or the user's backend.

>>> evaluate_model("runs/formation_energy", split="test", out_dir="eval")  # doctest: +SKIP
{'split': 'test', 'n': 3423, 'metrics': {'mae': 0.041, ...}, 'units': 'eV/atom', ...}
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def _pair(y: Sequence[float], yhat: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    yhat = np.asarray(yhat, dtype=np.float64).reshape(-1)
    if y.shape != yhat.shape:
        raise ValueError(f"targets and predictions differ in length ({len(y)} vs {len(yhat)})")
    return y, yhat


def regression_metrics(y: Sequence[float], yhat: Sequence[float]) -> dict[str, float]:
    """Mean absolute error, root-mean-square error, R² and count.

    Args:
        y: true values, shape (n,).
        yhat: predictions, shape (n,), same units as ``y``.

    Returns:
        ``{"mae", "rmse", "r2", "n"}``; MAE and RMSE in the units of ``y``; NaN when ``n == 0``
        (R² is NaN when ``y`` is constant).
    """
    y, yhat = _pair(y, yhat)
    n = len(y)
    if n == 0:
        return {"mae": float("nan"), "rmse": float("nan"), "r2": float("nan"), "n": 0}
    err = yhat - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else float("nan")
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2))), "r2": r2, "n": n}


def classification_metrics(y: Sequence[int], p: Sequence[float], *, threshold: float = 0.5) -> dict[str, Any]:
    """Binary classification metrics.

    Args:
        y: true labels, 0 or 1, shape (n,).
        p: predicted probability of class 1, shape (n,).
        threshold: probability above which (``p >= threshold``) class 1 is predicted.

    Returns:
        ``{"roc_auc", "accuracy", "precision": {"0", "1"}, "recall": {"0", "1"},
        "f1": {"0", "1"}, "n", "n_positive"}``; ``roc_auc`` is NaN when ``y`` holds one class only.
    """
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    y, p = _pair(y, p)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"classification labels must be 0 or 1, got {np.unique(y)[:5].tolist()}")
    n = len(y)
    pred = (p >= threshold).astype(int)
    labels = y.astype(int)
    both = n > 0 and 0 < labels.sum() < n
    precision, recall, f1, _ = precision_recall_fscore_support(labels, pred, labels=[0, 1], zero_division=0)
    return {
        "roc_auc": float(roc_auc_score(labels, p)) if both else float("nan"),
        "accuracy": float(np.mean(pred == labels)) if n else float("nan"),
        "precision": {"0": float(precision[0]), "1": float(precision[1])},
        "recall": {"0": float(recall[0]), "1": float(recall[1])},
        "f1": {"0": float(f1[0]), "1": float(f1[1])},
        "n": n,
        "n_positive": int(labels.sum()),
    }


# ---------------------------------------------------------------------------------------------
# Uncertainty metrics (ensembles)
# ---------------------------------------------------------------------------------------------

#: Fraction of a Gaussian within k standard deviations, k = 1 and 2.
GAUSSIAN_WITHIN = {1: 0.6826894921370859, 2: 0.9544997361036416}

#: Default edges (percent) of the domain-percentile bins in uncertainty reports.
DOMAIN_BINS = (0.0, 25.0, 50.0, 75.0, 90.0, 100.0)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of two arrays (ties get average ranks); NaN if undefined.

    Non-finite pairs are dropped; NaN when fewer than 3 pairs remain or either side is
    constant.
    """
    from scipy.stats import rankdata

    a, b = _pair(a, b)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def _uncertainty_arrays(
    y: Sequence[float], yhat: Sequence[float], std: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Finite (y, yhat, std) triples as float64 arrays."""
    y, yhat = _pair(y, yhat)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    if std.shape != y.shape:
        raise ValueError(f"targets and standard deviations differ in length ({len(y)} vs {len(std)})")
    ok = np.isfinite(y) & np.isfinite(yhat) & np.isfinite(std)
    return y[ok], yhat[ok], std[ok]


def fraction_within(y: Sequence[float], yhat: Sequence[float], std: Sequence[float], k: float) -> float:
    """Fraction of predictions with ``|yhat - y| <= k * std`` (NaN when there are none)."""
    y, yhat, std = _uncertainty_arrays(y, yhat, std)
    return float(np.mean(np.abs(yhat - y) <= k * std)) if len(y) else float("nan")


def fit_std_scale(y: Sequence[float], yhat: Sequence[float], std: Sequence[float]) -> float:
    """Calibration factor ``s`` making the z-scores ``(yhat - y) / (s * std)`` unit-RMS.

    ``s = sqrt(mean(((yhat - y) / std)**2))``: the maximum-likelihood scale of a Gaussian
    whose standard deviation is proportional to the ensemble's. Fit it on a split not used
    to report calibration (the validation split). Items with ``std <= 0`` are ignored.

    Raises:
        ValueError: no item has a positive standard deviation.
    """
    y, yhat, std = _uncertainty_arrays(y, yhat, std)
    ok = std > 0
    if not ok.any():
        raise ValueError("cannot fit a calibration scale: no prediction has a positive standard deviation")
    z = (yhat[ok] - y[ok]) / std[ok]
    return float(np.sqrt(np.mean(z**2)))


def calibration_curve(
    y: Sequence[float], yhat: Sequence[float], std: Sequence[float], ks: Sequence[float] | None = None
) -> dict[str, list[float]]:
    """Expected (Gaussian) and observed fraction of errors within ``k`` standard deviations.

    Args:
        ks: multiples of ``std`` (default 0 to 3 in steps of 0.1).

    Returns:
        ``{"k", "expected", "observed"}``, lists of equal length; ``expected`` is
        ``erf(k / sqrt(2))``.
    """
    from scipy.special import erf

    y, yhat, std = _uncertainty_arrays(y, yhat, std)
    ks = np.round(np.linspace(0.0, 3.0, 31), 10) if ks is None else np.asarray(ks, dtype=np.float64)
    err = np.abs(yhat - y)
    observed = [float(np.mean(err <= k * std)) if len(y) else float("nan") for k in ks]
    return {"k": ks.tolist(), "expected": erf(ks / np.sqrt(2.0)).tolist(), "observed": observed}


def regression_uncertainty_metrics(y: Sequence[float], yhat: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """How well predicted standard deviations describe the errors of a regression.

    Args:
        y: true values, shape (n,); yhat: predictions (the ensemble mean), shape (n,);
        std: predicted standard deviations, shape (n,), in the units of ``y``.

    Returns:
        ``n``; ``mae`` and ``mean_std`` / ``median_std`` (units of ``y``);
        ``spearman_abs_error_std`` (rank correlation of ``|yhat - y|`` with ``std``);
        ``within_1std`` / ``within_2std`` (fraction of ``|yhat - y| <= k std``; a Gaussian
        gives ``expected_within_1std`` = 0.683 and ``expected_within_2std`` = 0.954);
        ``rms_z`` (root mean square of ``(yhat - y) / std`` over ``std > 0``: 1 when
        calibrated); ``calibration_error`` (mean |observed - expected| fraction within
        ``k std`` over k = 0, 0.1, ..., 3).
    """
    y, yhat, std = _uncertainty_arrays(y, yhat, std)
    n = len(y)
    if n == 0:
        nan = float("nan")
        return {"n": 0, "mae": nan, "mean_std": nan, "median_std": nan, "spearman_abs_error_std": nan,
                "within_1std": nan, "within_2std": nan, "expected_within_1std": GAUSSIAN_WITHIN[1],
                "expected_within_2std": GAUSSIAN_WITHIN[2], "rms_z": nan, "calibration_error": nan}  # fmt: skip
    err = np.abs(yhat - y)
    positive = std > 0
    curve = calibration_curve(y, yhat, std)
    return {
        "n": n,
        "mae": float(err.mean()),
        "mean_std": float(std.mean()),
        "median_std": float(np.median(std)),
        "spearman_abs_error_std": spearman(err, std),
        "within_1std": float(np.mean(err <= std)),
        "within_2std": float(np.mean(err <= 2 * std)),
        "expected_within_1std": GAUSSIAN_WITHIN[1],
        "expected_within_2std": GAUSSIAN_WITHIN[2],
        "rms_z": float(np.sqrt(np.mean((err[positive] / std[positive]) ** 2))) if positive.any() else float("nan"),
        "calibration_error": float(np.mean(np.abs(np.subtract(curve["observed"], curve["expected"])))),
    }


def classification_uncertainty_metrics(y: Sequence[int], p: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """How well the spread of member probabilities flags a classifier's mistakes.

    Args:
        y: true labels 0/1, shape (n,); p: ensemble probability of class 1, shape (n,);
        std: standard deviation of the members' probabilities, shape (n,).

    Returns:
        ``n``; ``mean_abs_error`` (mean ``|y - p|``); ``mean_std``;
        ``spearman_abs_error_std`` (rank correlation of ``|y - p|`` with ``std``);
        ``error_detection_auc`` (ROC-AUC of ``std`` as a score for misclassified crystals,
        ``p >= 0.5`` predicting class 1; 0.5 = no better than chance, NaN if there is no
        mistake or only mistakes).
    """
    from sklearn.metrics import roc_auc_score

    y, p, std = _uncertainty_arrays(y, p, std)
    wrong = ((p >= 0.5).astype(int) != y.astype(int)).astype(int)
    both = 0 < wrong.sum() < len(wrong)
    err = np.abs(y - p)
    return {
        "n": len(y),
        "mean_abs_error": float(err.mean()) if len(y) else float("nan"),
        "mean_std": float(std.mean()) if len(y) else float("nan"),
        "spearman_abs_error_std": spearman(err, std),
        "error_detection_auc": float(roc_auc_score(wrong, std)) if both else float("nan"),
        "n_wrong": int(wrong.sum()),
    }


def ensemble_vs_members(y: Sequence[float], member_values: np.ndarray, *, task: str = "regression") -> dict[str, Any]:
    """The ensemble's score against each member's.

    Args:
        y: true values (labels 0/1 for classification), shape (n,).
        member_values: each member's predictions, shape (n, n_members); the ensemble
            prediction is their mean.
        task: ``"regression"`` (scores: MAE, units of ``y``, lower is better) or
            ``"classification"`` (ROC-AUC of the probabilities, higher is better).

    Returns:
        ``{"metric", "ensemble", "members" (one per member), "member_mean",
        "member_best", "member_worst", "improvement_over_member_mean"}``; the
        improvement is ``member_mean - ensemble`` for MAE, ``ensemble - member_mean`` for
        ROC-AUC (positive: the ensemble is better).
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    members = np.asarray(member_values, dtype=np.float64)
    if members.ndim != 2 or members.shape[0] != len(y):
        raise ValueError(f"member_values must have shape ({len(y)}, n_members), got {members.shape}")
    ok = np.isfinite(y) & np.isfinite(members).all(axis=1)
    y, members = y[ok], members[ok]
    if task == "classification":
        metric = "roc_auc"
        score = lambda v: classification_metrics(y, v)["roc_auc"]
    else:
        metric = "mae"
        score = lambda v: regression_metrics(y, v)["mae"]
    ensemble = score(members.mean(axis=1))
    each = [score(members[:, k]) for k in range(members.shape[1])]
    better_high = task == "classification"
    mean = float(np.mean(each))
    return {
        "metric": metric,
        "n": len(y),
        "ensemble": ensemble,
        "members": each,
        "member_mean": mean,
        "member_best": float(np.max(each) if better_high else np.min(each)),
        "member_worst": float(np.min(each) if better_high else np.max(each)),
        "improvement_over_member_mean": (ensemble - mean) if better_high else (mean - ensemble),
    }


def error_by_domain(
    abs_error: Sequence[float],
    domain_percentile: Sequence[float] | None = None,
    *,
    unseen: Sequence[bool] | None = None,
    sparse: Sequence[bool] | None = None,
    edges: Sequence[float] = DOMAIN_BINS,
) -> dict[str, Any]:
    """Mean absolute error grouped by the applicability-domain signals.

    Args:
        abs_error: absolute errors, shape (n,) (for classifiers ``|y - p|``).
        domain_percentile: each crystal's domain percentile (0-100), shape (n,).
        unseen: True where a crystal holds elements absent from training, shape (n,).
        sparse: True where a crystal has sparse atoms, shape (n,).
        edges: percentile bin edges; the first bin includes its lower edge.

    Returns:
        ``{"percentile_bins": [{"range", "n", "mean_abs_error", "mean_percentile"}],
        "spearman_abs_error_percentile", "unseen_elements": {"n", "mean_abs_error"},
        "all_seen": {...}, "sparse": {...}, "not_sparse": {...}}`` (only the groups whose
        signal was given).
    """
    err = np.asarray(abs_error, dtype=np.float64).reshape(-1)

    def group(mask: np.ndarray) -> dict[str, Any]:
        values = err[mask & np.isfinite(err)]
        return {"n": len(values), "mean_abs_error": float(values.mean()) if len(values) else float("nan")}

    out: dict[str, Any] = {}
    if domain_percentile is not None:
        pct = np.asarray(domain_percentile, dtype=np.float64).reshape(-1)
        bins = []
        for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            mask = (pct > lo) & (pct <= hi) if k else (pct >= lo) & (pct <= hi)
            entry = {"range": f"{lo:g}-{hi:g}", **group(mask)}
            entry["mean_percentile"] = float(pct[mask].mean()) if mask.any() else float("nan")
            bins.append(entry)
        out["percentile_bins"] = bins
        out["spearman_abs_error_percentile"] = spearman(err, pct)
    if unseen is not None:
        mask = np.asarray(unseen, dtype=bool).reshape(-1)
        out["unseen_elements"], out["all_seen"] = group(mask), group(~mask)
    if sparse is not None:
        mask = np.asarray(sparse, dtype=bool).reshape(-1)
        out["sparse"], out["not_sparse"] = group(mask), group(~mask)
    return out


def uncertainty_report(y: Sequence[float], result: Any, *, scale: float | None = None) -> dict[str, Any]:
    """All uncertainty metrics of an ensemble's predictions on one split.

    Args:
        y: true values (labels for classifiers), shape (n,), aligned with ``result``.
        result: a :class:`~cgcnn_ase.inference.predictor.PredictionResult` of an ensemble (needs
            ``member_values`` and ``std_raw``); failed items are skipped.
        scale: calibration factor to apply to ``result.std_raw`` (``None``: the
            result's own ``std_scale``, if any).

    Returns:
        ``{"n", "ensemble_vs_members", "raw": metrics of the raw std, "calibrated":
        metrics of ``scale * std_raw`` (regression, when a scale is known), "scale",
        "calibration_curve": {"raw", "calibrated"}, "domain": :func:`error_by_domain`}``.
    """
    if result.member_values is None or result.std_raw is None:
        raise ValueError("uncertainty_report needs an ensemble's result (member_values and std_raw)")
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    good = result.ok & np.isfinite(y)
    scale = result.std_scale if scale is None else scale
    yg, mean, raw = y[good], result.values[good], result.std_raw[good]
    classification = result.task == "classification"
    report: dict[str, Any] = {
        "n": int(good.sum()),
        "task": result.task,
        "units": result.units,
        "n_members": int(result.member_values.shape[1]),
        "ensemble_vs_members": ensemble_vs_members(yg, result.member_values[good], task=result.task),
        "scale": None if classification else scale,
    }
    if classification:
        report["raw"] = classification_uncertainty_metrics(yg, mean, raw)
    else:
        report["raw"] = regression_uncertainty_metrics(yg, mean, raw)
        report["calibration_curve"] = {"raw": calibration_curve(yg, mean, raw)}
        if scale is not None:
            report["calibrated"] = regression_uncertainty_metrics(yg, mean, scale * raw)
            report["calibration_curve"]["calibrated"] = calibration_curve(yg, mean, scale * raw)
    unseen = [bool(u) for u, g in zip(result.unseen_elements, good) if g] if result.unseen_elements else None
    report["domain"] = error_by_domain(
        np.abs(yg - mean),
        result.domain_percentile[good] if result.domain_percentile is not None else None,
        unseen=unseen,
        sparse=result.n_sparse[good] > 0,
    )
    return report


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _figure(width: float = 5.0, height: float = 5.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def parity_plot(
    y: Sequence[float],
    yhat: Sequence[float],
    path: str | os.PathLike,
    *,
    units: str = "",
    title: str | None = None,
    label: str = "target",
) -> Path:
    """Predicted vs true values with the y = x line and MAE / RMSE / R² in a corner.

    Uses a scatter plot up to 2000 points and a log-density hexbin above.

    Args:
        y: true values, shape (n,); yhat: predictions, shape (n,).
        path: PNG file to write (folders are created).
        units: units of both axes, shown in the labels.
        title: figure title.
        label: name of the quantity, for the axis labels.
    """
    y, yhat = _pair(y, yhat)
    metrics = regression_metrics(y, yhat)
    fig = _figure()
    ax = fig.subplots()
    finite = np.isfinite(y) & np.isfinite(yhat)
    if finite.any():
        lo = float(min(y[finite].min(), yhat[finite].min()))
        hi = float(max(y[finite].max(), yhat[finite].max()))
        pad = 0.03 * (hi - lo or 1.0)
        lo, hi = lo - pad, hi + pad
        if finite.sum() > 2000:
            hb = ax.hexbin(
                y[finite], yhat[finite], gridsize=80, bins="log", mincnt=1, cmap="viridis", extent=(lo, hi, lo, hi)
            )
            fig.colorbar(hb, ax=ax, label="crystals per bin")
        else:
            ax.scatter(y[finite], yhat[finite], s=8, alpha=0.6, edgecolors="none")
        ax.plot([lo, hi], [lo, hi], color="k", lw=1, ls="--")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    suffix = f" ({units})" if units else ""
    ax.set_xlabel(f"true {label}{suffix}")
    ax.set_ylabel(f"predicted {label}{suffix}")
    unit = f" {units}" if units else ""
    ax.text(
        0.04, 0.96,
        f"MAE {metrics['mae']:.4g}{unit}\nRMSE {metrics['rmse']:.4g}{unit}\nR² {metrics['r2']:.4f}\nn = {metrics['n']}",
        transform=ax.transAxes, va="top", ha="left", fontsize=9,
        bbox=dict(boxstyle="round", facecolor="white", alpha=0.8),
    )  # fmt: skip
    if title:
        ax.set_title(title)
    return _save(fig, path)


def roc_plot(y: Sequence[int], p: Sequence[float], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Receiver operating characteristic curve, with its area in the legend.

    Args:
        y: true labels (0/1), shape (n,); p: probability of class 1, shape (n,).
        path: PNG file to write.
    """
    from sklearn.metrics import roc_curve

    y, p = _pair(y, p)
    metrics = classification_metrics(y, p)
    fig = _figure()
    ax = fig.subplots()
    if np.isfinite(metrics["roc_auc"]):
        fpr, tpr, _ = roc_curve(y.astype(int), p)
        ax.plot(fpr, tpr, lw=1.5, label=f"ROC-AUC = {metrics['roc_auc']:.4f} (n = {metrics['n']})")
    else:
        ax.text(0.5, 0.5, "one class only: ROC undefined", ha="center", transform=ax.transAxes)
    ax.plot([0, 1], [0, 1], color="k", lw=1, ls="--", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def learning_curve_plot(metrics_csv: str | os.PathLike, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Training loss and validation metrics per epoch (top) and learning rate (bottom).

    Args:
        metrics_csv: the ``metrics.csv`` written by training (columns ``epoch``,
            ``train_loss``, ``val_*``, ``lr``, ...).
        path: PNG file to write.
    """
    import pandas as pd

    df = pd.read_csv(metrics_csv)
    fig = _figure(7.0, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    epochs = df["epoch"] if "epoch" in df else np.arange(1, len(df) + 1)
    top.plot(epochs, df["train_loss"], label="train loss (normalised)", color="C0")
    top.set_ylabel("train loss")
    top.set_yscale("log" if (df["train_loss"] > 0).all() else "linear")
    right = top.twinx()
    val_columns = [c for c in ("val_mae", "val_rmse", "val_roc_auc", "val_accuracy") if c in df and df[c].notna().any()]
    for k, column in enumerate(val_columns[:2]):
        right.plot(epochs, df[column], label=column, color=f"C{k + 1}")
    if "train_mae" in df and df["train_mae"].notna().any():
        right.plot(epochs, df["train_mae"], label="train_mae", color="C3", ls=":")
    right.set_ylabel("metric (target units)" if "val_mae" in df else "metric")
    if "best" in df and df["best"].astype(bool).any():
        best = df[df["best"].astype(bool)]["epoch"].iloc[-1]
        top.axvline(best, color="grey", ls="--", lw=1, label=f"best epoch {best}")
    handles = top.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = top.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    top.legend(handles, labels, loc="upper right", fontsize=8)
    if "lr" in df:
        bottom.plot(epochs, df["lr"], color="C4")
        bottom.set_yscale("log" if (df["lr"] > 0).all() else "linear")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("epoch")
    if title:
        top.set_title(title)
    return _save(fig, path)


def error_vs_std_plot(
    y: Sequence[float],
    yhat: Sequence[float],
    std: Sequence[float],
    path: str | os.PathLike,
    *,
    units: str = "",
    title: str | None = None,
    n_bins: int = 10,
    classification: bool = False,
) -> Path:
    """Absolute error against predicted standard deviation, with binned means.

    Points: one per crystal (log axes when all values are positive). Line: mean ``|error|``
    in ``n_bins`` equal-count bins of ``std``. Dashed: what a calibrated Gaussian gives,
    ``E|error| = sqrt(2/pi) std`` (regression only).

    Args:
        y, yhat, std: true values, predictions (ensemble mean) and standard deviations,
            shape (n,), all in ``units``; for classifiers labels, probabilities and the
            std of the members' probabilities (then the error is ``|y - p|``).
        path: PNG file to write.
    """
    y, yhat, std = _uncertainty_arrays(y, yhat, std)
    err = np.abs(yhat - y)
    fig = _figure(5.5, 4.5)
    ax = fig.subplots()
    if len(y):
        ax.scatter(std, err, s=6, alpha=0.35, edgecolors="none", label="crystals")
        order = np.argsort(std, kind="stable")
        chunks = [c for c in np.array_split(order, min(n_bins, len(order))) if len(c)]
        ax.plot([std[c].mean() for c in chunks], [err[c].mean() for c in chunks], "o-", color="C3",
                label=f"mean |error| in {len(chunks)} bins of std")  # fmt: skip
        lo, hi = float(std.min()), float(std.max())
        if not classification and hi > 0:
            grid = np.linspace(lo, hi, 50)
            ax.plot(grid, np.sqrt(2 / np.pi) * grid, "k--", lw=1, label="calibrated Gaussian")
        if lo > 0 and (err > 0).all():
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.text(0.04, 0.96, f"Spearman {spearman(err, std):.3f}\nn = {len(y)}", transform=ax.transAxes,
                va="top", ha="left", fontsize=9, bbox=dict(boxstyle="round", facecolor="white", alpha=0.8))  # fmt: skip
        ax.legend(loc="lower right", fontsize=8)
    suffix = f" ({units})" if units else ""
    ax.set_xlabel(f"predicted std{suffix}")
    ax.set_ylabel(("|y - p|" if classification else "|error|") + suffix)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def calibration_plot(
    y: Sequence[float],
    yhat: Sequence[float],
    stds: dict[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Calibration curve: observed vs expected fraction of errors within ``k`` std, k = 0..3.

    Args:
        y, yhat: true values and predictions, shape (n,).
        stds: one or more standard-deviation arrays to compare, by label (e.g.
            ``{"raw": std_raw, "calibrated (x1.4)": std}``).
        path: PNG file to write. A calibrated model follows the diagonal; a curve below
            it means over-confident standard deviations.
    """
    fig = _figure(5.0, 5.0)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="k", lw=1, ls="--", label="ideal")
    for k, (label, std) in enumerate(stds.items()):
        curve = calibration_curve(y, yhat, std)
        ax.plot(curve["expected"], curve["observed"], lw=1.5, color=f"C{k}", label=label)
        for mark in (1.0, 2.0):
            i = int(np.argmin(np.abs(np.asarray(curve["k"]) - mark)))
            ax.plot(curve["expected"][i], curve["observed"][i], "o", color=f"C{k}", ms=4)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("expected fraction within k std (Gaussian)")
    ax.set_ylabel("observed fraction within k std")
    ax.legend(loc="lower right", fontsize=8)
    ax.text(0.04, 0.96, "dots: k = 1 and 2", transform=ax.transAxes, va="top", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def reliability_plot(y: Sequence[int], p: Sequence[float], path: str | os.PathLike, *, n_bins: int = 10,
                     title: str | None = None) -> Path:  # fmt: skip
    """Reliability diagram of a classifier: observed frequency of class 1 per bin of ``p``.

    Args:
        y: labels 0/1, shape (n,); p: predicted probabilities of class 1, shape (n,).
        path: PNG file to write; bins are ``n_bins`` equal-width probability bins.
    """
    y, p = _pair(y, p)
    fig = _figure(5.0, 5.0)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="k", lw=1, ls="--", label="ideal")
    edges = np.linspace(0, 1, n_bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    xs, ys, ns = [], [], []
    for b in range(n_bins):
        mask = index == b
        if mask.any():
            xs.append(float(p[mask].mean()))
            ys.append(float(y[mask].mean()))
            ns.append(int(mask.sum()))
    ax.plot(xs, ys, "o-", color="C0", label="ensemble")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def uncertainty_plots(
    y: Sequence[float], result: Any, out_dir: str | os.PathLike, *, title: str | None = None
) -> dict[str, Path]:
    """Write ``error_vs_std.png`` and ``calibration.png`` for an ensemble's result.

    Regression: the calibration curve of the raw and (if fitted) calibrated std.
    Classification: a reliability diagram of the ensemble's probabilities.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    good = result.ok & np.isfinite(y)
    out = Path(out_dir)
    classification = result.task == "classification"
    units = "" if classification else result.units
    files = {}
    files["error_vs_std"] = error_vs_std_plot(
        y[good], result.values[good], result.std[good], out / "error_vs_std.png",
        units=units, title=title, classification=classification,
    )  # fmt: skip
    if classification:
        files["calibration"] = reliability_plot(y[good], result.values[good], out / "calibration.png", title=title)
    else:
        stds = {"raw ensemble std": result.std_raw[good]}
        if result.std_scale is not None:
            stds[f"calibrated (x{result.std_scale:.3g})"] = result.std[good]
        files["calibration"] = calibration_plot(y[good], result.values[good], stds, out / "calibration.png", title=title)
    return files


# ---------------------------------------------------------------------------------------------
# Evaluating a model folder
# ---------------------------------------------------------------------------------------------


def _model_folder(model: str | os.PathLike) -> Path:
    """A model folder from a path or a shipped model's name/alias (:func:`~cgcnn_ase.models.registry.model_folder`)."""
    from cgcnn_ase.models.registry import model_folder

    return model_folder(model, purpose="evaluation needs a folder with model.json and split.json")


def _dataset_spec(folder: Path, dataset: Any) -> Any:
    """The dataset to evaluate on: the training config's, possibly at another path."""
    import yaml

    from cgcnn_ase.train.datasets import DatasetError, DatasetSpec

    if isinstance(dataset, DatasetSpec):
        return dataset
    if isinstance(dataset, dict):
        return DatasetSpec.from_dict(dataset)
    config_path = folder / "config.yaml"
    trained = None
    if config_path.is_file():
        trained = (yaml.safe_load(config_path.read_text()) or {}).get("data")
    if dataset is None:
        if trained is None:
            raise DatasetError(f"{folder}: no config.yaml with a 'data' section; pass the dataset explicitly")
        return DatasetSpec.from_dict(trained)
    if trained is not None:  # same targets / filters / transform, another location
        return DatasetSpec.from_dict({**trained, "path": str(dataset)})
    return DatasetSpec(path=str(dataset))


@dataclass
class SplitRecords:
    """Parsed crystals of one split of a dataset, with their targets.

    Attributes:
        ids: row ids of the usable crystals, in split order.
        records: their structures.
        targets: targets after ``per_atom`` and ``transform``, float64, shape (n,), in the
            model's units (labels 0/1 for classifiers).
        n_unusable: rows of the split whose structure could not be parsed.
    """

    ids: list[str]
    records: list[Any]
    targets: np.ndarray
    n_unusable: int = 0


def load_split_records(
    model: str | os.PathLike,
    dataset: Any = None,
    splits: Sequence[str] = ("test",),
    *,
    workers: int = 2,
    progress: bool = False,
) -> tuple[Any, dict[str, SplitRecords]]:
    """Read and parse the crystals of some splits of a model's dataset (the file is read once).

    Args:
        model: a model folder (with ``split.json`` and, unless ``dataset`` is a full
            spec, ``config.yaml``) or a shipped model's name.
        dataset: as in :func:`evaluate_model` (``None``: the training config's dataset;
            a path: the same settings applied to another location).
        splits: any of ``"train"``, ``"val"``, ``"test"``, ``"all"``.

    Returns:
        The :class:`~cgcnn_ase.train.datasets.DatasetSpec` used and ``{split: SplitRecords}``.

    Raises:
        DatasetError: no dataset, no ``split.json``, or a split without rows.
    """
    import warnings

    from cgcnn_ase.train.datasets import DatasetError, Split, finalize_targets, load_table, parse_structures
    from cgcnn_ase.io.reader import StructureRecord

    folder = _model_folder(model)
    spec = _dataset_spec(folder, dataset)
    table = load_table(spec)
    position = {i: k for k, i in enumerate(table.ids)}
    saved = None
    chosen: dict[str, list[int]] = {}
    for split in splits:
        if split == "all":
            chosen[split] = list(range(len(table)))
            continue
        if saved is None:
            split_path = folder / "split.json"
            if not split_path.is_file():
                raise DatasetError(f"{folder}: no split.json; use split='all' to evaluate every row")
            saved = Split.load(split_path)
        wanted = saved.ids(split)
        missing = [i for i in wanted if i not in position]
        if missing:
            warnings.warn(
                f"{len(missing)} of {len(wanted)} {split} ids are not in {spec.path} (e.g. {missing[:3]}); "
                "they are skipped",
                UserWarning,
                stacklevel=2,
            )
        chosen[split] = [position[i] for i in wanted if i in position]
        if not chosen[split]:
            raise DatasetError(f"no rows of {spec.path} to evaluate for split {split!r}")
    rows = sorted({r for part in chosen.values() for r in part})
    parsed = dict(zip(rows, parse_structures(table, rows, workers=workers, progress=progress)))
    out: dict[str, SplitRecords] = {}
    for split, part in chosen.items():
        ok = [r for r in part if isinstance(parsed[r], StructureRecord)]
        records = [parsed[r] for r in ok]
        ids = [table.ids[r] for r in ok]
        targets = finalize_targets(spec, table.raw_targets[ok], np.array([len(r) for r in records]), ids)
        out[split] = SplitRecords(ids=ids, records=records, targets=targets, n_unusable=len(part) - len(ok))
    return spec, out


def _predict_quietly(predictor: Any, records: list[Any], *, batch_size: int, progress: bool, **kwargs: Any) -> Any:
    """Predict with errors collected and unseen-element warnings silenced (summarised by the caller)."""
    import warnings

    from cgcnn_ase.errors import UnseenElementWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnseenElementWarning)
        return predictor.predict(
            records, batch_size=batch_size, errors="collect", on_sparse="ignore", progress=progress, **kwargs
        )


def evaluate_model(
    model: str | os.PathLike,
    dataset: Any = None,
    *,
    split: str = "test",
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    device: str | None = None,
    workers: int = 2,
    progress: bool = False,
) -> dict[str, Any]:
    """Predict one split of a dataset with a trained model (single or ensemble) and score it.

    Args:
        model: a model folder written by training, or a shipped model's name/alias.
        dataset: ``None`` (the dataset in the model's ``config.yaml``), a path (the same
            dataset settings applied to another file, e.g. a moved copy), a
            :class:`~cgcnn_ase.train.datasets.DatasetSpec` or a mapping of its fields.
        split: ``"train"``, ``"val"`` or ``"test"`` (ids from the model folder's
            ``split.json``), or ``"all"`` (every usable row, e.g. of an external dataset).
        out_dir: where to write ``metrics.json``, ``predictions.csv`` and ``parity.png`` /
            ``roc.png`` (ensembles also ``error_vs_std.png`` and ``calibration.png``);
            ``None`` writes nothing.
        batch_size, device: passed to :meth:`CGCNNPredictor.predict`.
        workers: processes for parsing structures.

    Returns:
        ``{"model", "dataset", "split", "n", "n_failed", "n_unseen_elements", "property",
        "units", "task", "metrics", "files"}``; ``metrics`` as from :func:`regression_metrics` or
        :func:`classification_metrics`. For an ensemble also ``"uncertainty"``
        (:func:`uncertainty_report`, with the model's stored calibration).
    """
    import warnings

    from cgcnn_ase.errors import UnseenElementWarning
    from cgcnn_ase.inference.predictor import CGCNNPredictor

    folder = _model_folder(model)
    predictor = CGCNNPredictor.load(folder, device=device)
    spec, parts = load_split_records(folder, dataset, (split,), workers=workers, progress=progress)
    data = parts[split]
    ids, targets = data.ids, data.targets
    result = _predict_quietly(predictor, data.records, batch_size=batch_size, progress=progress)
    good = result.ok
    unseen = [bool(u) for u in result.unseen_elements] if result.unseen_elements else [False] * len(ids)
    if any(unseen):
        warnings.warn(
            f"{sum(unseen)} of {len(ids)} structures hold elements absent from the model's training data "
            "(column 'unseen_elements' of predictions.csv)",
            UnseenElementWarning,
            stacklevel=2,
        )
    spec_m = predictor.model.spec
    if spec_m.task == "classification":
        metrics = classification_metrics(targets[good], result.values[good])
    else:
        metrics = regression_metrics(targets[good], result.values[good])
    summary: dict[str, Any] = {
        "model": str(folder),
        "dataset": spec.to_dict(),
        "split": split,
        "n": int(good.sum()),
        "n_failed": int(data.n_unusable + (~good).sum()),
        "n_unseen_elements": int(sum(unseen)),
        "property": spec_m.property,
        "units": spec_m.units,
        "task": spec_m.task,
        "metrics": metrics,
        "files": {},
    }
    if predictor.is_ensemble:
        summary["uncertainty"] = uncertainty_report(targets, result)
    if out_dir is not None:
        import pandas as pd

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        column = f"{spec_m.property} ({spec_m.units})"
        frame = {"id": ids, f"true {column}": targets, f"predicted {column}": result.values}
        if result.std is not None:
            frame[f"std {column}"] = result.std
            if result.std_scale is not None:
                frame[f"raw std {column}"] = result.std_raw
        frame["n_sparse"] = result.n_sparse
        frame["unseen_elements"] = [" ".join(u) for u in result.unseen_elements] if result.unseen_elements else ""
        if result.domain_percentile is not None:
            frame["domain_distance"] = result.domain_distance
            frame["domain_percentile"] = result.domain_percentile
        frame["error"] = result.errors
        pd.DataFrame(frame).to_csv(out / "predictions.csv", index=False, float_format="%.6g")
        title = f"{spec_m.name}: {split} split of {spec.display_name}"
        if spec_m.task == "classification":
            plot = roc_plot(targets[good], result.values[good], out / "roc.png", title=title)
        else:
            plot = parity_plot(
                targets[good],
                result.values[good],
                out / "parity.png",
                units=spec_m.units,
                title=title,
                label=spec_m.property,
            )
        summary["files"] = {
            "metrics": str(out / "metrics.json"),
            "predictions": str(out / "predictions.csv"),
            "plot": str(plot),
        }
        if predictor.is_ensemble:
            summary["files"].update({k: str(v) for k, v in uncertainty_plots(targets, result, out, title=title).items()})
        (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    logger.info("evaluated %s on %d %s crystals: %s", folder, summary["n"], split, metrics)
    return summary


def evaluate_uncertainty(
    model: str | os.PathLike,
    dataset: Any = None,
    *,
    split: str = "test",
    calibration_split: str = "val",
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    device: str | None = None,
    workers: int = 2,
    progress: bool = False,
    parts: dict[str, SplitRecords] | None = None,
) -> dict[str, Any]:
    """Measure an ensemble's uncertainty: fit the std calibration on one split, report on another.

    The calibration factor ``s`` (:func:`fit_std_scale`: calibrated z-scores have unit RMS)
    is fitted on ``calibration_split`` (validation) with the raw ensemble std and applied
    to ``split`` (test), so the reported calibration is measured on crystals it was not
    fitted on. Classifiers are not calibrated (``scale`` is ``None``).

    Args:
        model: an ensemble model folder (or a shipped ensemble's name).
        dataset: as in :func:`evaluate_model`.
        split: the split to report on.
        calibration_split: the split to fit the scale on (``None``: no calibration).
        out_dir: where to write ``error_vs_std.png``, ``calibration.png`` and
            ``parity.png`` / ``roc.png`` of ``split`` (``None``: no plots).
        parts: already parsed splits (from :func:`load_split_records`), to skip reading.

    Returns:
        ``{"model", "property", "units", "task", "calibration": {"scale", "method",
        "split", "n"} or None, split: uncertainty_report (with the fitted scale),
        calibration_split: uncertainty_report, "metrics": {split: ensemble metrics,
        calibration_split: ...}, "files"}``.

    Raises:
        ValueError: the model is not an ensemble.
    """
    from cgcnn_ase.inference.predictor import CGCNNPredictor

    folder = _model_folder(model)
    predictor = CGCNNPredictor.load(folder, device=device)
    if not predictor.is_ensemble:
        raise ValueError(f"{folder}: not an ensemble (uncertainty needs several members)")
    names = [n for n in dict.fromkeys([calibration_split, split]) if n]
    if parts is None or any(n not in parts for n in names):
        _, parts = load_split_records(folder, dataset, names, workers=workers, progress=progress)
    spec_m = predictor.model.spec
    classification = spec_m.task == "classification"
    results = {n: _predict_quietly(predictor, parts[n].records, batch_size=batch_size, progress=progress) for n in names}
    calibration = None
    if calibration_split and not classification:
        fit = results[calibration_split]
        good = fit.ok
        scale = fit_std_scale(parts[calibration_split].targets[good], fit.values[good], fit.std_raw[good])
        calibration = {"scale": scale, "method": "rms_z", "split": calibration_split, "n": int(good.sum()),
                       "description": "std = scale * raw ensemble std; scale = RMS of the raw z-scores on the "
                                      f"{calibration_split} split, so calibrated {calibration_split} z-scores have unit RMS"}  # fmt: skip
    report: dict[str, Any] = {
        "model": str(folder),
        "property": spec_m.property,
        "units": spec_m.units,
        "task": spec_m.task,
        "n_members": predictor.model.n_members,
        "calibration": calibration,
        "metrics": {},
        "files": {},
    }
    scale = calibration["scale"] if calibration else None
    for n in names:
        result = results[n]
        result.std_scale = scale
        result.std = result.std_raw * scale if scale is not None else result.std_raw.copy()
        y = parts[n].targets
        good = result.ok
        report[n] = uncertainty_report(y, result)
        report["metrics"][n] = (
            classification_metrics(y[good], result.values[good])
            if classification
            else regression_metrics(y[good], result.values[good])
        )
    if out_dir is not None:
        out = Path(out_dir)
        result, y = results[split], parts[split].targets
        good = result.ok
        title = f"{spec_m.name}: {split} split"
        files = uncertainty_plots(y, result, out, title=title)
        if classification:
            files["plot"] = roc_plot(y[good], result.values[good], out / "roc.png", title=title)
        else:
            files["plot"] = parity_plot(y[good], result.values[good], out / "parity.png", units=spec_m.units,
                                        title=title, label=spec_m.property)  # fmt: skip
        report["files"] = {k: str(v) for k, v in files.items()}
    return report

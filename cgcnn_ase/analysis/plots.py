"""Plots of trained models: parity, ROC, learning curve, error vs std, calibration, reliability.

Matplotlib's object API (:class:`matplotlib.figure.Figure`, rendered by Agg), so nothing here
touches pyplot's global state or the user's backend. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cgcnn_ase.analysis.metrics import (
    calibration_curve,
    classification_metrics,
    paired_arrays,
    regression_metrics,
    spearman,
    uncertainty_arrays,
)
from cgcnn_ase.models.cards import significant


def _figure(width: float = 5.0, height: float = 5.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def _finite(*arrays: np.ndarray) -> tuple[tuple[np.ndarray, ...], int]:
    """The rows of ``arrays`` (same length) where every array is finite, and how many were left out
    (failed predictions are NaN: a figure's numbers count only what it draws)."""
    keep = np.logical_and.reduce([np.isfinite(a) for a in arrays]) if arrays and len(arrays[0]) else np.zeros(0, bool)
    return tuple(a[keep] for a in arrays), int(len(keep) - keep.sum())


def _note(ax: Any, n: int, dropped: int) -> None:
    """Say on an empty figure that there was nothing to draw, and on any figure how many rows were left out."""
    if n == 0:
        ax.text(0.5, 0.5, "no finite predictions to plot" + (f"\n({dropped} rows left out)" if dropped else ""),
                ha="center", va="center", transform=ax.transAxes)  # fmt: skip
    elif dropped:
        ax.text(0.98, 0.02, f"{dropped} non-finite rows left out", ha="right", va="bottom", fontsize=7,
                transform=ax.transAxes, color="0.4")  # fmt: skip


def _title(ax: Any, title: str | None) -> None:
    """A title wrapped to the figure's width (model, split and dataset names run long)."""
    import textwrap

    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 48, break_long_words=False)), fontsize=10)


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
    (y, yhat), dropped = _finite(*paired_arrays(y, yhat))
    metrics = regression_metrics(y, yhat)
    dense = len(y) > 2000  # a hexbin with its colour bar: a wider figure keeps the square axes as tall as the bar
    fig = _figure(5.9 if dense else 5.0, 5.0)
    ax = fig.subplots()
    _note(ax, len(y), dropped)
    if len(y):
        lo = float(min(y.min(), yhat.min()))
        hi = float(max(y.max(), yhat.max()))
        pad = 0.03 * (hi - lo or 1.0)
        lo, hi = lo - pad, hi + pad
        if dense:
            hb = ax.hexbin(y, yhat, gridsize=80, bins="log", mincnt=1, cmap="viridis", extent=(lo, hi, lo, hi))
            from mpl_toolkits.axes_grid1 import make_axes_locatable

            # a bar axes cut from the parity axes: exactly as tall as they are (round 30a: a fixed shrink was not)
            bar = fig.colorbar(hb, cax=make_axes_locatable(ax).append_axes("right", size="4%", pad=0.08),
                               label="crystals per bin")  # fmt: skip
            most = float(np.nanmax(hb.get_array()))
            ticks = [t for e in range(int(np.log10(most)) + 1) for t in (10**e, 2 * 10**e, 5 * 10**e) if t <= most]
            bar.set_ticks(ticks, labels=[str(t) for t in ticks])  # 1, 2, 5, 10, ...: not 10 alone (round 29d)
        else:
            ax.scatter(y, yhat, s=8, alpha=0.6, edgecolors="none")
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
        f"MAE {significant(metrics['mae'])}{unit}\nRMSE {significant(metrics['rmse'])}{unit}\n"
        f"R² {significant(metrics['r2']) if np.isfinite(metrics['r2']) else 'n/a'}\nn = {metrics['n']}",
        transform=ax.transAxes, va="top", ha="left", fontsize=9,
        bbox=dict(boxstyle="round", facecolor="white", alpha=0.8),
    )  # fmt: skip
    _title(ax, title)
    return _save(fig, path)


def roc_plot(y: Sequence[int], p: Sequence[float], path: str | os.PathLike, *, title: str | None = None,
             positive: str | None = None) -> Path:  # fmt: skip
    """Receiver operating characteristic curve, with its area in the legend.

    Args:
        y: true labels (0/1), shape (n,); p: probability of class 1, shape (n,).
        path: PNG file to write.
        positive: what class 1 is (e.g. ``"metal"``), named on the axes.
    """
    from sklearn.metrics import roc_curve

    (y, p), dropped = _finite(*paired_arrays(y, p))
    metrics = classification_metrics(y, p)
    fig = _figure()
    ax = fig.subplots()
    if np.isfinite(metrics["roc_auc"]):
        fpr, tpr, _ = roc_curve(y.astype(int), p)
        ax.plot(fpr, tpr, lw=1.5, label=f"ROC-AUC = {metrics['roc_auc']:.4f} (n = {metrics['n']})")
        _note(ax, len(y), dropped)
    elif len(y):
        ax.text(0.5, 0.5, "one class only: ROC undefined", ha="center", transform=ax.transAxes)
    else:
        _note(ax, 0, dropped)
    ax.plot([0, 1], [0, 1], color="k", lw=1, ls="--", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    positive_text = f" (positive: {positive})" if positive else ""
    ax.set_xlabel(f"false positive rate{positive_text}")
    ax.set_ylabel(f"true positive rate{positive_text}")
    ax.legend(loc="lower right")
    _title(ax, title)
    return _save(fig, path)


#: How the learning curve's legend names the metrics of ``metrics.csv``.
_METRIC_NAMES = {"val_mae": "validation MAE", "val_rmse": "validation RMSE", "val_roc_auc": "validation ROC-AUC",
                 "val_accuracy": "validation accuracy", "train_mae": "train MAE"}  # fmt: skip


def learning_curve_plot(
    metrics_csv: str | os.PathLike, path: str | os.PathLike, *, title: str | None = None, units: str = ""
) -> Path:
    """Training loss and validation metrics per epoch (top) and learning rate (bottom).

    Args:
        metrics_csv: the ``metrics.csv`` written by training (columns ``epoch``,
            ``train_loss``, ``val_*``, ``lr``, ...).
        path: PNG file to write.
        units: the target's units, for the error axis (e.g. ``eV/atom``).
    """
    import pandas as pd

    df = pd.read_csv(metrics_csv)
    fig = _figure(7.0, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    epochs = df["epoch"] if "epoch" in df else np.arange(1, len(df) + 1)
    log = (df["train_loss"] > 0).all()
    marker = "o" if len(df) <= 20 else None  # a few epochs: points, not an empty axes (round 30a: one epoch)
    top.plot(epochs, df["train_loss"], label="train loss (normalised; left axis)", color="C0", marker=marker)
    if "val_loss" in df and df["val_loss"].notna().any():  # round 29d: the validation loss was not drawn
        top.plot(epochs, df["val_loss"], label="validation loss (left axis)", color="C0", ls="--", marker=marker)
        log = log and (df["val_loss"].dropna() > 0).all()
    top.set_ylabel("loss" + (" (log scale)" if log else ""))
    top.set_yscale("log" if log else "linear")
    right = top.twinx()
    val_columns = [c for c in ("val_mae", "val_rmse", "val_roc_auc", "val_accuracy") if c in df and df[c].notna().any()]
    for k, column in enumerate(val_columns[:2]):
        right.plot(epochs, df[column], label=f"{_METRIC_NAMES[column]} (right axis)", color=f"C{k + 1}", marker=marker)
    if "train_mae" in df and df["train_mae"].notna().any():
        right.plot(epochs, df["train_mae"], label=f"{_METRIC_NAMES['train_mae']} (right axis)", color="C3", ls=":")
    if "val_mae" in df:
        right.set_ylabel(f"MAE, RMSE ({units})" if units else "MAE, RMSE (target units)")
    else:
        right.set_ylabel("ROC-AUC, accuracy")
    from matplotlib.ticker import MaxNLocator

    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if "best" in df and df["best"].astype(bool).any():  # the last marked epoch is the kept one (select: best or last)
        best = df[df["best"].astype(bool)]["epoch"].iloc[-1]
        top.axvline(best, color="grey", ls="--", lw=1, label=f"kept model: epoch {best}")
    handles = top.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = top.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    top.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=8, ncols=2,
               framealpha=0.9)  # fmt: skip  (below the curves, not over the kept epoch)
    if "lr" in df:
        bottom.plot(epochs, df["lr"], color="C4")
        bottom.set_yscale("log" if (df["lr"] > 0).all() else "linear")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("epoch")
    _title(top, title)
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
    y, yhat, std = uncertainty_arrays(y, yhat, std)
    err = np.abs(yhat - y)
    fig = _figure(5.5, 4.5)
    ax = fig.subplots()
    if not len(y):
        _note(ax, 0, 0)
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
    _title(ax, title)
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
    (shown, _), dropped = _finite(*paired_arrays(y, yhat))
    if not len(shown):
        _note(ax, 0, dropped)
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
    _title(ax, title)
    return _save(fig, path)


def reliability_plot(y: Sequence[int], p: Sequence[float], path: str | os.PathLike, *, n_bins: int = 10,
                     title: str | None = None, positive: str | None = None) -> Path:  # fmt: skip
    """Reliability diagram of a classifier: observed frequency of class 1 per bin of ``p``.

    Args:
        y: labels 0/1, shape (n,); p: predicted probabilities of class 1, shape (n,).
        path: PNG file to write; bins are ``n_bins`` equal-width probability bins, each point labelled
            with its number of crystals. Non-finite pairs are left out (and counted on the figure).
        positive: what class 1 is (e.g. ``"metal"``), named on the axes.
    """
    (y, p), dropped = _finite(*paired_arrays(y, p))
    fig = _figure(5.0, 5.0)
    ax = fig.subplots()
    _note(ax, len(y), dropped)
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
    ax.plot(xs, ys, "o-", color="C0", label="ensemble (numbers: crystals per bin)")
    for x, f, n in zip(xs, ys, ns):  # crystals per bin: a point of 3 crystals says little
        right = x > 0.9  # the last bin's label left of its point, inside the axes (round 29d)
        ax.annotate(str(n), (x, f), textcoords="offset points", xytext=(-8 if right else 8, 4 if f < 0.1 else -12),
                    ha="right" if right else "left", fontsize=7, color="0.35")  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal", adjustable="box")
    name = positive or "class 1"
    ax.set_xlabel(f"predicted probability of {name}")
    ax.set_ylabel(f"observed frequency of {name}")
    ax.legend(loc="lower right", fontsize=8)
    _title(ax, title)
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
        files["calibration"] = reliability_plot(y[good], result.values[good], out / "calibration.png", title=title,
                                                positive=result.positive_class)  # fmt: skip
    else:
        stds = {"raw ensemble std": result.std_raw[good]}
        if result.std_scale is not None:
            stds[f"calibrated (x{result.std_scale:.3g})"] = result.std[good]
        files["calibration"] = calibration_plot(y[good], result.values[good], stds, out / "calibration.png", title=title)
    return files

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


# ---------------------------------------------------------------------------------------------
# Evaluating a model folder
# ---------------------------------------------------------------------------------------------


def _model_folder(model: str | os.PathLike) -> Path:
    """A model folder from a path or a shipped model's name/alias."""
    path = Path(model)
    if path.is_dir():
        return path
    from cgcnn_ase.errors import CheckpointError
    from cgcnn_ase.pretrained import resolve_model

    if path.exists() or any(sep in str(model) for sep in ("/", "\\")):
        raise CheckpointError(f"{model}: not a model folder (evaluation needs a folder with model.json and split.json)")
    return resolve_model(str(model)).path


def _dataset_spec(folder: Path, dataset: Any) -> Any:
    """The dataset to evaluate on: the training config's, possibly at another path."""
    import yaml

    from cgcnn_ase.datasets import DatasetError, DatasetSpec

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
    """Predict one split of a dataset with a trained model and score it.

    Args:
        model: a model folder written by training, or a shipped model's name/alias.
        dataset: ``None`` (the dataset in the model's ``config.yaml``), a path (the same
            dataset settings applied to another file, e.g. a moved copy), a
            :class:`~cgcnn_ase.datasets.DatasetSpec` or a mapping of its fields.
        split: ``"train"``, ``"val"`` or ``"test"`` (ids from the model folder's
            ``split.json``), or ``"all"`` (every usable row, e.g. of an external dataset).
        out_dir: where to write ``metrics.json``, ``predictions.csv`` and ``parity.png`` /
            ``roc.png``; ``None`` writes nothing.
        batch_size, device: passed to :meth:`CGCNNPredictor.predict`.
        workers: processes for parsing structures.

    Returns:
        ``{"model", "dataset", "split", "n", "n_failed", "n_unseen_elements", "property",
        "units", "task", "metrics", "files"}``; ``metrics`` as from :func:`regression_metrics` or
        :func:`classification_metrics`.
    """
    import warnings

    from cgcnn_ase.datasets import DatasetError, Split, finalize_targets, load_table, parse_structures
    from cgcnn_ase.predictor import CGCNNPredictor
    from cgcnn_ase.structures import StructureRecord

    folder = _model_folder(model)
    predictor = CGCNNPredictor.from_checkpoint(folder, device=device)
    spec = _dataset_spec(folder, dataset)
    table = load_table(spec)
    if split == "all":
        rows = list(range(len(table)))
    else:
        split_path = folder / "split.json"
        if not split_path.is_file():
            raise DatasetError(f"{folder}: no split.json; use split='all' to evaluate every row")
        wanted = Split.load(split_path).ids(split)
        position = {i: k for k, i in enumerate(table.ids)}
        missing = [i for i in wanted if i not in position]
        if missing:
            warnings.warn(
                f"{len(missing)} of {len(wanted)} {split} ids are not in {spec.path} (e.g. {missing[:3]}); "
                "they are skipped",
                UserWarning,
                stacklevel=2,
            )
        rows = [position[i] for i in wanted if i in position]
    if not rows:
        raise DatasetError(f"no rows of {spec.path} to evaluate for split {split!r}")
    parsed = parse_structures(table, rows, workers=workers, progress=progress)
    ok = [k for k, r in enumerate(parsed) if isinstance(r, StructureRecord)]
    records = [parsed[k] for k in ok]
    ids = [table.ids[rows[k]] for k in ok]
    targets = finalize_targets(spec, table.raw_targets[[rows[k] for k in ok]], np.array([len(r) for r in records]), ids)
    from cgcnn_ase.errors import UnseenElementWarning

    with warnings.catch_warnings():  # one summary below instead of a warning per structure
        warnings.simplefilter("ignore", UnseenElementWarning)
        result = predictor.predict(
            records, batch_size=batch_size, errors="collect", on_sparse="ignore", progress=progress
        )
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
        "n_failed": int(len(parsed) - len(ok) + (~good).sum()),
        "n_unseen_elements": int(sum(unseen)),
        "property": spec_m.property,
        "units": spec_m.units,
        "task": spec_m.task,
        "metrics": metrics,
        "files": {},
    }
    if out_dir is not None:
        import pandas as pd

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        column = f"{spec_m.property} ({spec_m.units})"
        pd.DataFrame(
            {
                "id": ids,
                f"true {column}": targets,
                f"predicted {column}": result.values,
                "unseen_elements": [" ".join(u) for u in result.unseen_elements] if result.unseen_elements else "",
                "error": result.errors,
            }
        ).to_csv(out / "predictions.csv", index=False, float_format="%.6g")
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
        (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    logger.info("evaluated %s on %d %s crystals: %s", folder, summary["n"], split, metrics)
    return summary

"""Metrics of predictions against targets: errors, classification scores and uncertainty quality.

Pure numpy; every function takes plain arrays (targets ``y``, predictions ``yhat`` in the same
units, standard deviations ``std`` in those units) and returns plain dicts of floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def paired_arrays(y: Sequence[float], yhat: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``y`` and ``yhat`` as float64 arrays of shape (n,); ValueError when their lengths differ."""
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
    y, yhat = paired_arrays(y, yhat)
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
        threshold: probability above which (``p > threshold``) class 1 is predicted, as the band-gap gating
            treats P(metal) (:func:`~cgcnn_ase.inference.properties.gated_band_gap`).

    Returns:
        ``{"roc_auc", "accuracy", "precision": {"0", "1"}, "recall": {"0", "1"},
        "f1": {"0", "1"}, "n", "n_positive"}``; ``roc_auc`` is NaN when ``y`` holds one class only.
    """
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    y, p = paired_arrays(y, p)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"classification labels must be 0 or 1, got {np.unique(y)[:5].tolist()}")
    n = len(y)
    pred = (p > threshold).astype(int)
    labels = y.astype(int)
    both = n > 0 and 0 < labels.sum() < n
    if n == 0:  # nothing predicted (every structure failed): sklearn refuses empty input
        nan = float("nan")
        return {"roc_auc": nan, "accuracy": nan, "precision": {"0": nan, "1": nan}, "recall": {"0": nan, "1": nan},
                "f1": {"0": nan, "1": nan}, "n": 0, "n_positive": 0}  # fmt: skip
    # undefined (no predicted or no true crystal of a class): NaN, "n/a" on cards (round 29e: shown as 0)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, pred, labels=[0, 1], zero_division=np.nan)
    return {
        "roc_auc": float(roc_auc_score(labels, p)) if both else float("nan"),
        "accuracy": float(np.mean(pred == labels)) if n else float("nan"),
        "precision": {"0": float(precision[0]), "1": float(precision[1])},
        "recall": {"0": float(recall[0]), "1": float(recall[1])},
        "f1": {"0": float(f1[0]), "1": float(f1[1])},
        "n": n,
        "n_positive": int(labels.sum()),
    }


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

    a, b = paired_arrays(a, b)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def uncertainty_arrays(
    y: Sequence[float], yhat: Sequence[float], std: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Finite (y, yhat, std) triples as float64 arrays."""
    y, yhat = paired_arrays(y, yhat)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    if std.shape != y.shape:
        raise ValueError(f"targets and standard deviations differ in length ({len(y)} vs {len(std)})")
    ok = np.isfinite(y) & np.isfinite(yhat) & np.isfinite(std)
    return y[ok], yhat[ok], std[ok]


def fraction_within(y: Sequence[float], yhat: Sequence[float], std: Sequence[float], k: float) -> float:
    """Fraction of predictions with ``|yhat - y| <= k * std`` (NaN when there are none)."""
    y, yhat, std = uncertainty_arrays(y, yhat, std)
    return float(np.mean(np.abs(yhat - y) <= k * std)) if len(y) else float("nan")


def fit_std_scale(y: Sequence[float], yhat: Sequence[float], std: Sequence[float]) -> float:
    """Calibration factor ``s`` making the z-scores ``(yhat - y) / (s * std)`` unit-RMS.

    ``s = sqrt(mean(((yhat - y) / std)**2))``: the maximum-likelihood scale of a Gaussian
    whose standard deviation is proportional to the ensemble's. Fit it on a split not used
    to report calibration (the validation split). Items with ``std <= 0`` are ignored.

    Raises:
        ValueError: no item has a positive standard deviation.
    """
    y, yhat, std = uncertainty_arrays(y, yhat, std)
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

    y, yhat, std = uncertainty_arrays(y, yhat, std)
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
    y, yhat, std = uncertainty_arrays(y, yhat, std)
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
        ``p > 0.5`` predicting class 1; 0.5 = no better than chance, NaN if there is no
        mistake or only mistakes).
    """
    from sklearn.metrics import roc_auc_score

    y, p, std = uncertainty_arrays(y, p, std)
    wrong = ((p > 0.5).astype(int) != y.astype(int)).astype(int)
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
        result: a :class:`~cgcnn_ase.inference.results.PredictionResult` of an ensemble (needs
            ``member_values`` and ``std_raw``); failed items are skipped.
        scale: calibration factor to apply to ``result.std_raw`` (``None``: the
            result's own ``std_scale``, if any).

    Returns:
        ``{"n", "ensemble_vs_members", "raw": metrics of the raw std, "calibrated":
        metrics of ``scale * std_raw`` (regression, when a scale is known), "uncertainty":
        metrics of ``result.uncertainty`` (when the ensemble has an error model), "scale",
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
        if getattr(result, "uncertainty", None) is not None:  # the per-crystal error model's
            report["uncertainty"] = regression_uncertainty_metrics(yg, mean, result.uncertainty[good])
    unseen = [bool(u) for u, g in zip(result.unseen_elements, good) if g] if result.unseen_elements else None
    report["domain"] = error_by_domain(
        np.abs(yg - mean),
        result.domain_percentile[good] if result.domain_percentile is not None else None,
        unseen=unseen,
        sparse=result.n_sparse[good] > 0,
    )
    return report


#: Default ``confidence`` of fitted interval quantiles: their coverage is at least nominal for 90% of validation draws.
CONFIDENCE = 0.9
#: Coverages at which split-conformal quantiles are stored; others are interpolated between them.
INTERVAL_LEVELS = (0.5, 0.55, 0.6, 0.65, 0.68, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)


def conformal_quantiles(
    y: Sequence[float],
    yhat: Sequence[float],
    std: Sequence[float],
    levels: Sequence[float] = INTERVAL_LEVELS,
    *,
    confidence: float | None = None,
) -> list[float]:
    """Split-conformal quantiles of the normalised scores ``|y - yhat| / std``, one per coverage level.

    For ``n`` calibration crystals the quantile at level ``a`` is the ``ceil((n + 1) a)``-th
    smallest score (infinite when that exceeds ``n``), so the interval ``yhat ± q * std`` of a new
    crystal exchangeable with them covers its true value with probability at least ``a``
    (Vovk et al. 2005; Lei et al. 2018). That probability is an average over draws of the
    calibration split: for one split the coverage of future crystals is a random variable,
    Beta(k, n + 1 - k) for the k-th smallest score, spread by about ``sqrt(a (1 - a) / n)``.
    With ``confidence`` the ``k``-th smallest score is taken with the smallest ``k`` for which
    that coverage is at least ``a`` with probability ``confidence`` (training-conditional
    validity, Vovk 2012, "Conditional validity of inductive conformal predictors"), and never
    a smaller ``k`` than the marginal rule's. Items with ``std <= 0`` are left out.

    Args:
        y, yhat: targets and predictions of the calibration split (validation), same units.
        std: the ensemble's raw standard deviation there, same units.
        levels: coverages in (0, 1).
        confidence: in (0, 1), or ``None`` for the marginal rule.

    Returns:
        One quantile (dimensionless, in units of ``std``) per level, non-decreasing.
    """
    y, yhat, std = uncertainty_arrays(y, yhat, std)
    ok = std > 0
    scores = np.sort(np.abs(yhat[ok] - y[ok]) / std[ok])
    n = len(scores)
    if n == 0:
        raise ValueError("no calibration item has a positive standard deviation")
    out = []
    for level in levels:
        if not 0 < level < 1:
            raise ValueError(f"coverage levels must lie in (0, 1), got {level}")
        k = math.ceil((n + 1) * level)
        if confidence is not None:
            k = max(k, conditional_rank(n, level, confidence))
        out.append(float(scores[k - 1]) if k <= n else float("inf"))
    return out


def conditional_rank(n: int, level: float, confidence: float) -> int:
    """The smallest rank ``k`` (1-based; ``n + 1`` when none) such that the interval of the ``k``-th
    smallest of ``n`` calibration scores covers at least ``level`` of future items with probability
    at least ``confidence`` over the calibration draw: P(Binomial(n, level) <= k - 1) >= confidence."""
    from scipy.stats import binom

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return int(binom.ppf(confidence, n, level)) + 1


def interval_coverage(y: Sequence[float], lower: Sequence[float], upper: Sequence[float]) -> float:
    """Fraction of targets inside ``[lower, upper]`` (NaN when there are none)."""
    y = np.asarray(y, dtype=np.float64)
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(lower) & np.isfinite(upper)
    return float(np.mean((y[ok] >= lower[ok]) & (y[ok] <= upper[ok]))) if ok.any() else float("nan")

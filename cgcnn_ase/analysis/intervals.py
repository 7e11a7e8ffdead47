"""Prediction intervals with a stated coverage: split-conformal calibration of an ensemble folder.

The score of a validation crystal is ``|y - mean| / s``, with ``s`` the members' raw standard
deviation. For a coverage ``c`` the interval of a new crystal is ``mean ± q(c) * s``, with ``q(c)``
the ``ceil((n + 1) c)``-th smallest of the ``n`` validation scores: it holds the true value with
probability at least ``c`` for crystals exchangeable with the validation split (Vovk et al. 2005;
Lei et al., JASA 113, 1094 (2018)). Normalising by ``s`` makes the intervals wider where the
members disagree. The quantiles are stored in ``model.json`` (``ensemble.calibration.conformal``)
for a grid of coverages; :meth:`~cgcnn_ase.models.folder.LoadedModel.conformal_quantile`
interpolates between them.

>>> calibrate_intervals("pretrained_models/formation_energy-mp_cgcnn46k-v2")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from cgcnn_ase.analysis.evaluation import _model_folder, _predict_quietly, load_split_records
from cgcnn_ase.analysis.metrics import INTERVAL_LEVELS, conformal_quantiles, interval_coverage
from cgcnn_ase.models.cards import ensemble_card, json_safe
from cgcnn_ase.models.folder import MODEL_JSON, read_model_json

logger = logging.getLogger(__name__)

#: Coverages reported on the test split, with the Gaussian z of the same coverage.
REPORTED = ((0.68, 0.994458), (0.90, 1.644854), (0.95, 1.959964))


def calibrate_intervals(
    model: str | os.PathLike,
    dataset: Any = None,
    *,
    split: str = "val",
    report_split: str = "test",
    batch_size: int = 256,
    device: str | None = None,
    workers: int = 2,
    progress: bool = False,
    write: bool = True,
) -> dict[str, Any]:
    """Fit split-conformal interval quantiles on ``split`` and measure their coverage on ``report_split``.

    Args:
        model: an ensemble model folder (regression) with ``split.json``.
        dataset: as in :func:`~cgcnn_ase.analysis.evaluation.evaluate_model` (``None``: the
            training configuration's dataset).
        split: the split the quantiles are fitted on (validation; never the test split).
        report_split: the split their coverage is measured on.
        write: store the quantiles and the measured coverage in ``model.json`` and re-render
            the model card.

    Returns:
        The ``conformal`` section: ``levels``, ``quantiles`` (in units of the raw std),
        ``split``, ``n``, ``score`` and ``test_coverage`` (nominal, conformal, Gaussian with the
        calibrated std).

    Raises:
        ValueError: the model is not a regression ensemble.
    """
    from cgcnn_ase.inference.predictor import CGCNNPredictor

    folder = _model_folder(model)
    predictor = CGCNNPredictor.load(folder, device=device)
    if not predictor.is_ensemble or predictor.model.spec.task != "regression":
        raise ValueError(f"{folder}: intervals need a regression ensemble")
    _, parts = load_split_records(folder, dataset, (split, report_split), workers=workers, progress=progress)
    results = {
        name: _predict_quietly(predictor, parts[name].records, batch_size=batch_size, progress=progress)
        for name in (split, report_split)
    }
    fit, y_fit = results[split], parts[split].targets
    quantiles = conformal_quantiles(y_fit[fit.ok], fit.values[fit.ok], fit.std_raw[fit.ok], INTERVAL_LEVELS)
    kept = [(level, q) for level, q in zip(INTERVAL_LEVELS, quantiles) if np.isfinite(q)]  # n too small: dropped
    conformal: dict[str, Any] = {
        "method": "split conformal",
        "score": "|y - mean| / raw ensemble std",
        "split": split,
        "n": int(fit.ok.sum()),
        "levels": [level for level, _ in kept],
        "quantiles": [q for _, q in kept],
    }
    conformal["test_coverage"] = _coverage(conformal, results[report_split], parts[report_split].targets,
                                           predictor.model.std_scale or 1.0)  # fmt: skip
    if write:
        _write(folder, conformal)
    logger.info("intervals of %s: %s", folder, conformal["test_coverage"])
    return conformal


def _coverage(conformal: dict[str, Any], result: Any, y: np.ndarray, scale: float) -> list[dict[str, float]]:
    """Measured coverage of the conformal and the Gaussian intervals at the :data:`REPORTED` levels."""
    good = result.ok
    mean, std_raw, y = result.values[good], result.std_raw[good], y[good]
    rows = []
    for nominal, z in REPORTED:
        q = float(np.interp(nominal, conformal["levels"], conformal["quantiles"]))
        rows.append({
            "nominal": nominal,
            "conformal": interval_coverage(y, mean - q * std_raw, mean + q * std_raw),
            "gaussian": interval_coverage(y, mean - z * scale * std_raw, mean + z * scale * std_raw),
            "n": int(len(y)),
        })  # fmt: skip
    return rows


def _write(folder: Path, conformal: dict[str, Any]) -> None:
    """Store ``conformal`` under ``ensemble.calibration`` and re-render the card."""
    document = read_model_json(folder)
    calibration = document["ensemble"].get("calibration") or {}
    calibration["conformal"] = conformal
    document["ensemble"]["calibration"] = calibration
    (folder / MODEL_JSON).write_text(json.dumps(json_safe(document), indent=2) + "\n")
    (folder / "README.md").write_text(ensemble_card(document, files=[p.name for p in folder.iterdir()]))

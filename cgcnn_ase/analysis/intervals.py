"""Prediction intervals with a stated coverage: split-conformal calibration of an ensemble folder.

The score of a validation crystal is ``|y - mean| / s``, with ``s`` its per-crystal ``uncertainty``
(:mod:`cgcnn_ase.models.local_error`, fitted on the same split, each crystal left out of its own
features) or, for an ensemble without an error model, the members' raw standard deviation. For a coverage ``c`` the interval of a new crystal is ``mean ± q(c) * s``, with ``q(c)``
the ``ceil((n + 1) c)``-th smallest of the ``n`` validation scores: it holds the true value with
probability at least ``c`` for crystals exchangeable with the validation split (Vovk et al. 2005;
Lei et al., JASA 113, 1094 (2018)), on average over draws of that split. With a few hundred
validation crystals one draw's coverage can fall several points short, so by default the rank is
raised until the coverage is at least ``c`` with probability :data:`~cgcnn_ase.analysis.metrics.CONFIDENCE` over the draw
(training-conditional validity, Vovk 2012). Normalising by ``s`` makes the intervals wider where the
members disagree. The quantiles are stored in ``model.json`` (``ensemble.calibration.conformal``)
for a grid of coverages; :meth:`~cgcnn_ase.models.folder.LoadedModel.conformal_quantile`
interpolates between them.

>>> calibrate_intervals("pretrained_models/formation_energy-mp_cgcnn46k-v3")   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cgcnn_ase.analysis.evaluation import labels_changed, load_split_records, predict_quietly
from cgcnn_ase.analysis.metrics import (
    CONFIDENCE,
    INTERVAL_LEVELS,
    conformal_quantiles,
    interval_coverage,
    spearman,
)
from cgcnn_ase.errors import DatasetError, EnsembleError
from cgcnn_ase.models.cards import ensemble_card
from cgcnn_ase.models.domain import DOMAIN_FILE
from cgcnn_ase.models.folder import read_model_json, write_model_json
from cgcnn_ase.models.local_error import fit_error_model
from cgcnn_ase.models.registry import model_folder

logger = logging.getLogger(__name__)

#: Coverages reported on the test split, with the Gaussian z of the same coverage.
REPORTED = ((0.68, 0.994458), (0.90, 1.644854), (0.95, 1.959964))


def calibrate_intervals(
    model: str | os.PathLike,
    dataset: Any = None,
    *,
    split: str = "val",
    report_split: str = "test",
    uncertainty: bool = True,
    normaliser: str = "auto",
    confidence: float | None = CONFIDENCE,
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
        split: the split the quantiles (and the error model) are fitted on (validation; never the
            test split).
        report_split: the split their coverage is measured on.
        uncertainty: fit the per-crystal error model (:func:`~cgcnn_ase.models.local_error.fit_error_model`)
            when the domain summary stores the training targets and ``split`` holds at least
            :data:`MIN_ERROR_MODEL` crystals, and normalise the conformal
            scores by its ``uncertainty`` instead of the raw std when :func:`crossfit_coverage`
            chooses it.
        normaliser: ``"auto"`` (:func:`crossfit_coverage` decides, on the validation split alone;
            without an error model a warning says why and the raw std normalises), ``"uncertainty"``
            (a :class:`~cgcnn_ase.errors.DatasetError` saying why where there is no error model) or
            ``"std_raw"`` (forced).
        confidence: each quantile is the order statistic whose coverage of future crystals is at
            least the nominal one with this probability over the draw of the validation split
            (:func:`~cgcnn_ase.analysis.metrics.conformal_quantiles`); ``None``: the marginal rule,
            whose coverage is nominal only on average over such draws.
        write: store the quantiles, the measured coverage and the error model in ``model.json`` /
            ``domain.safetensors`` and re-render the model card.

    Returns:
        The ``conformal`` section: ``levels``, ``quantiles`` (in units of the normaliser),
        ``normaliser`` (``"uncertainty"`` or ``"std_raw"``), ``split``, ``n``, ``score``,
        ``test_coverage`` (nominal; conformal; conformal normalised by the raw std; Gaussian with the
        calibrated std) and ``test_spearman`` (of |error| with the std and with the uncertainty).

    Raises:
        ValueError: the model is not a regression ensemble.
        DatasetError: too few validation crystals for any interval; ``normaliser="uncertainty"`` without an
            error model.
    """
    from cgcnn_ase.inference.predictor import CGCNNPredictor

    folder = model_folder(model, purpose="calibration needs a folder with model.json and split.json")
    if normaliser not in ("auto", "uncertainty", "std_raw"):
        raise ValueError(f"normaliser must be 'auto', 'uncertainty' or 'std_raw', got {normaliser!r}")
    _, parts = load_split_records(folder, dataset, (split, report_split), workers=workers, progress=progress)
    predictor = CGCNNPredictor.load(folder, device=device)
    if not predictor.is_ensemble or predictor.model.spec.task != "regression":
        raise EnsembleError(f"{folder}: intervals need a regression ensemble")
    for name in dict.fromkeys((split, report_split)):  # edited labels would fit the intervals to other data
        changed = labels_changed(predictor.model.spec.metadata, folder, name, parts[name].ids, parts[name].targets,
                                  None)  # fmt: skip
        if changed:
            warnings.warn(f"{folder}: {changed}; the intervals are fitted to them", UserWarning, stacklevel=2)
    fit, test = (_Arrays.of(predictor, parts[name], batch_size, progress) for name in (split, report_split))
    summary = predictor.model.domain
    error = None
    if uncertainty and summary is not None and summary.targets is not None and len(fit.y) >= MIN_ERROR_MODEL:
        error = fit_error_model(summary, fit.embeddings, fit.mean, fit.std_raw, fit.y, fit.elements)
        summary = replace(summary, error_model=error)
        fit.u = error.uncertainty(error.features(summary, fit.embeddings, fit.mean, fit.std_raw, fit.elements,
                                                 leave_out=True))  # fmt: skip
        test.u = error.uncertainty(error.features(summary, test.embeddings, test.mean, test.std_raw, test.elements))
    selection = crossfit_coverage(summary, fit) if error is not None else None
    norm = "uncertainty" if selection is not None and selection["chosen"] == "uncertainty" else "std_raw"
    why_none = None if error is not None else _why_no_error_model(summary, len(fit.y), uncertainty)
    if normaliser == "uncertainty" and why_none is not None:
        raise DatasetError(f"{folder}: no per-crystal uncertainty to normalise the intervals with: {why_none}")
    if normaliser == "auto" and why_none is not None and uncertainty:
        warnings.warn(f"{folder}: no per-crystal uncertainty ({why_none}); the intervals are normalised by the "
                      "ensemble's std", UserWarning, stacklevel=2)  # fmt: skip
    if normaliser != "auto":
        norm = normaliser
    quantiles = conformal_quantiles(fit.y, fit.mean, fit.normaliser(norm), INTERVAL_LEVELS, confidence=confidence)
    kept = [(level, q) for level, q in zip(INTERVAL_LEVELS, quantiles) if np.isfinite(q)]  # n too small: dropped
    dropped = [level for level, q in zip(INTERVAL_LEVELS, quantiles) if not np.isfinite(q)]
    if kept and dropped:
        warnings.warn(f"{folder}: {len(fit.y)} validation crystals are too few for the {', '.join(f'{x:g}' for x in dropped)} "
                      f"interval(s)" + (f" at confidence {confidence:g}" if confidence is not None else "")
                      + "; they are not stored, and asking for that coverage will be refused", UserWarning, stacklevel=2)  # fmt: skip
    if not kept:
        raise DatasetError(
            f"{folder}: {len(fit.y)} validation crystals are too few for any interval from {INTERVAL_LEVELS[0]:g} to "
            f"{INTERVAL_LEVELS[-1]:g}" + (f" at confidence {confidence:g} (confidence=None, or --marginal, asks less)"
                                          if confidence is not None else "")
        )
    conformal: dict[str, Any] = {
        "method": "split conformal" if confidence is None else "split conformal, training-conditional",
        "confidence": confidence,
        "normaliser": norm,
        "score": f"|y - mean| / {'per-crystal uncertainty (error model)' if error else 'raw ensemble std'}",
        "split": split,
        "n": len(fit.y),
        "levels": [level for level, _ in kept],
        "quantiles": [q for _, q in kept],
    }
    if selection is not None:
        conformal["selection"] = selection
    std_q = conformal_quantiles(fit.y, fit.mean, fit.std_raw, [level for level, _ in REPORTED], confidence=confidence)
    reported = [level for level, _ in REPORTED]
    marginal_q = conformal_quantiles(fit.y, fit.mean, fit.normaliser(norm), reported) if confidence is not None else None
    conformal["test_coverage"] = _coverage(conformal, test, std_q, predictor.model.std_scale or 1.0, marginal_q)
    conformal["test_spearman"] = {"std": spearman(np.abs(test.y - test.mean), test.std_raw)}
    if error is not None:
        conformal["test_spearman"]["uncertainty"] = spearman(np.abs(test.y - test.mean), test.u)
    if write:
        if error is not None:
            summary.save(folder / DOMAIN_FILE)
        elif summary is not None and summary.error_model is not None:  # an earlier fit's: its uncertainty is stale
            replace(summary, error_model=None).save(folder / DOMAIN_FILE)
        _write(folder, conformal, error)
    logger.info("intervals of %s: %s", folder, conformal["test_coverage"])
    return conformal


def _why_no_error_model(summary: Any, n_fit: int, uncertainty: bool) -> str:
    """Why :func:`fit_intervals` fits no error model (the per-crystal uncertainty), in words."""
    if not uncertainty:
        return "uncertainty=False"
    if summary is None:
        return "the model has no domain summary (cgcnn-ase calibrate --domain builds it)"
    if summary.targets is None:
        return "its domain summary stores no training targets (cgcnn-ase calibrate --domain rebuilds it)"
    return (f"the validation split holds {n_fit} usable crystals and the error model needs at least {MIN_ERROR_MODEL} "
            "(train the members with a larger validation fraction)")  # fmt: skip


#: The uncertainty normalises the intervals when its cross-fitted validation coverage is this close to nominal.
TOLERANCE = 0.03
#: Fewer validation crystals than this: no error model (its seven weights and neighbour features need data).
MIN_ERROR_MODEL = 100


def crossfit_coverage(domain: Any, fit: _Arrays, *, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Choose the conformal normaliser on the validation split alone, by cross-fitting.

    The validation crystals are cut into ``folds`` parts; for each, the error model and both sets of
    quantiles (scores normalised by the uncertainty, and by the raw std) are fitted on the other
    parts and the coverage measured on it at the :data:`REPORTED` levels. The uncertainty is chosen
    when all its cross-fitted coverages lie within :data:`TOLERANCE` of nominal, else the raw std.

    Returns:
        ``{"method", "folds", "uncertainty": [coverages], "std_raw": [coverages], "chosen"}``.
    """
    levels = [nominal for nominal, _ in REPORTED]
    fold = np.random.default_rng(seed).integers(0, folds, len(fit.y))
    covered = {"uncertainty": np.zeros(len(levels)), "std_raw": np.zeros(len(levels))}
    for f in range(folds):
        a, b = fold != f, fold == f
        pick = lambda x, m: x[m]  # noqa: E731
        els = [fit.elements[i] for i in np.flatnonzero(a)], [fit.elements[i] for i in np.flatnonzero(b)]
        model = fit_error_model(domain, fit.embeddings[a], fit.mean[a], fit.std_raw[a], fit.y[a], els[0])
        u_a = model.uncertainty(model.features(domain, fit.embeddings[a], fit.mean[a], fit.std_raw[a], els[0],
                                               leave_out=True))  # fmt: skip
        u_b = model.uncertainty(model.features(domain, fit.embeddings[b], fit.mean[b], fit.std_raw[b], els[1]))
        for name, (s_a, s_b) in (("uncertainty", (u_a, u_b)), ("std_raw", (pick(fit.std_raw, a), pick(fit.std_raw, b)))):
            q = conformal_quantiles(fit.y[a], fit.mean[a], s_a, levels)
            err = np.abs(fit.y[b] - fit.mean[b])
            covered[name] += [np.sum(err <= k * s_b) for k in q]
    out: dict[str, Any] = {"method": f"{folds}-fold cross-fitted coverage on the validation split", "folds": folds}
    for name, hits in covered.items():
        out[name] = (hits / len(fit.y)).tolist()
    good = all(abs(c - nominal) <= TOLERANCE for c, nominal in zip(out["uncertainty"], levels))
    out["chosen"] = "uncertainty" if good else "std_raw"
    return out


@dataclass
class _Arrays:
    """One split's ensemble outputs on its predicted crystals (failed ones left out)."""

    y: np.ndarray
    mean: np.ndarray
    std_raw: np.ndarray
    embeddings: np.ndarray
    elements: list[np.ndarray]
    u: np.ndarray | None = None

    @classmethod
    def of(cls, predictor: Any, part: Any, batch_size: int, progress: bool) -> _Arrays:
        result = predict_quietly(predictor, part.records, batch_size=batch_size, progress=progress, embeddings=True)
        ok = result.ok & np.isfinite(part.targets)
        return cls(y=np.asarray(part.targets)[ok], mean=result.values[ok], std_raw=result.std_raw[ok],
                   embeddings=result.embeddings[ok],
                   elements=[np.asarray(r.numbers) for r, good in zip(part.records, ok) if good])  # fmt: skip

    def normaliser(self, name: str) -> np.ndarray:
        return self.u if name == "uncertainty" else self.std_raw


def _coverage(
    conformal: dict[str, Any], test: _Arrays, std_q: list[float], scale: float, marginal_q: list[float] | None = None
) -> list[dict[str, float]]:
    """Measured coverage at the :data:`REPORTED` levels: the conformal interval, the std-normalised conformal
    interval (``std_q``, fitted on the same split), the Gaussian interval of the calibrated std and, for
    training-conditional quantiles, the same normaliser with the marginal rank (``marginal_q``)."""
    rows = []
    levels = conformal["levels"]
    for k, ((nominal, z), q_std) in enumerate(zip(REPORTED, std_q)):
        q = float(np.interp(nominal, levels, conformal["quantiles"])) if levels[0] <= nominal <= levels[-1] else np.inf
        width = q * test.normaliser(conformal["normaliser"])  # infinite: no such interval (too few validation crystals)
        rows.append({
            "nominal": nominal,
            "conformal": interval_coverage(test.y, test.mean - width, test.mean + width) if np.isfinite(q) else None,
            "conformal_std": interval_coverage(test.y, test.mean - q_std * test.std_raw, test.mean + q_std * test.std_raw)
            if np.isfinite(q_std) else None,
            "gaussian": interval_coverage(test.y, test.mean - z * scale * test.std_raw,
                                          test.mean + z * scale * test.std_raw),
            "n": len(test.y),
        })  # fmt: skip
        if marginal_q is not None:
            q_m = marginal_q[k] * test.normaliser(conformal["normaliser"])
            rows[-1]["conformal_marginal"] = (interval_coverage(test.y, test.mean - q_m, test.mean + q_m)
                                              if np.isfinite(marginal_q[k]) else None)  # fmt: skip
    return rows


def _write(folder: Path, conformal: dict[str, Any], error: Any) -> None:
    """Store ``conformal`` (and the error model's description) under ``ensemble.calibration``; re-render the card."""
    document = read_model_json(folder)
    calibration = document["ensemble"].get("calibration") or {}
    calibration["conformal"] = conformal
    if error is not None:
        calibration["uncertainty"] = {**error.metadata(), "weights": error.weights.tolist(), "file": DOMAIN_FILE}
    else:
        calibration.pop("uncertainty", None)
    document["ensemble"]["calibration"] = calibration
    if error is not None and document.get("domain"):
        document["domain"]["error_model"] = "uncertainty model stored as error.* arrays"
    elif document.get("domain"):
        document["domain"].pop("error_model", None)
    write_model_json(folder, document)
    (folder / "README.md").write_text(ensemble_card(document, files=[p.name for p in folder.iterdir()], folder=folder))

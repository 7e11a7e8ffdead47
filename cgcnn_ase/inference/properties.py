"""General-purpose properties in user units: what ``cgcnn-ase predict FILE`` gives without ``--model``.

The shipped models predict some properties in the form they were trained on: the moduli as
log10(GPa), the metal/non-metal classifier as a probability, the band gap regardless of whether
the crystal is a metal. This module turns their outputs into what a user asks for:

- **band gap, gated** (eV): 0 where the ``is_metal`` classifier gives P(metal) > ``threshold``
  (0.5), else the regression value, clipped at 0 (:func:`physical_values`; Poisson's ratio is
  clipped to [-1, 0.5] alike). The band-gap model was trained on non-metals only (as the
  paper's), so its raw value for a metal means nothing; ``band_gap_raw`` keeps it. Its std is
  NaN there and its interval bounds 0 (:func:`gated_band_gap_result`). The ASE calculator, the
  matminer featurizer and the CLI all gate so.
- **moduli in GPa**: ``10**m`` of the ensemble's mean log10 value ``m`` (a geometric mean of the
  members), with the standard deviation propagated to first order, ``ln(10) * 10**m * s``
  for a log10 std ``s``. The log10 columns come only on request.
- every ensemble's (calibrated) standard deviation beside its value, in the same units.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cgcnn_ase.errors import ConfigError, UnknownModelError, user_stacklevel
from cgcnn_ase.inference.results import FLAG_UNITS, UNSEEN, add_flag_columns, flag_cells, unseen_cell

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cgcnn_ase.inference.parallel import NetworkPool
    from cgcnn_ase.inference.predictor import CGCNNPredictor
    from cgcnn_ase.inference.results import PredictionResult

#: Shipped models behind the general-purpose properties, in column order.
GENERAL_MODELS = ("formation_energy", "band_gap", "is_metal", "fermi_energy", "bulk_modulus", "shear_modulus",
                  "poisson_ratio")  # fmt: skip
#: P(metal) above which the gated band gap is 0.
METAL_THRESHOLD = 0.5

_LN10 = math.log(10.0)


def physical_values(property_name: str, values: Any) -> np.ndarray:
    """A model's values clipped to its property's physical range (``PHYSICAL_RANGE`` of
    :mod:`cgcnn_ase.inference.predictor`: a band gap is not negative, Poisson's ratio lies in
    [-1, 0.5]), as the interval bounds already are; other properties unchanged. The network
    itself is not bounded: a non-metal near 0 eV may come out at -0.1 eV, a far extrapolation
    above 0.5. NaN stays NaN. What users read (the CLI's table, the calculator, the featurizer)
    is clipped; ``PredictionResult.values`` keep the network's numbers (metrics are theirs)."""
    from cgcnn_ase.inference.predictor import PHYSICAL_RANGE

    array = np.asarray(values, dtype=np.float64)
    low, high = PHYSICAL_RANGE.get(property_name, (-np.inf, np.inf))
    return np.clip(array, low, high)


def check_metal_threshold(threshold: Any) -> float:
    """``threshold`` as a float, if it is a probability in [0, 1] (0: every crystal counts as a metal, 1: none).

    Raises:
        ConfigError: anything else (NaN, which would silently turn the gate off; text; a bool).
    """
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real) or not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"metal_threshold is a probability between 0 and 1, got {threshold!r}")
    return float(threshold)


def gated_band_gap(band_gap: Any, metal_probability: Any, threshold: float = METAL_THRESHOLD) -> np.ndarray:
    """The band gap, eV, set to 0 where ``metal_probability`` > ``threshold`` and at least 0
    elsewhere (:func:`physical_values`); NaN where either is NaN.

    Args:
        band_gap: the band-gap model's regression values, eV, shape (n,).
        metal_probability: the ``is_metal`` classifier's P(metal), shape (n,).
        threshold: the probability above which a crystal counts as a metal.
    """
    threshold = check_metal_threshold(threshold)
    gap = np.asarray(band_gap, dtype=np.float64)
    p = np.asarray(metal_probability, dtype=np.float64)
    out = np.where(p > threshold, 0.0, physical_values("band_gap", gap))
    return np.where(np.isnan(p) | np.isnan(gap), np.nan, out)


def gated_band_gap_result(
    band_gap: Any, std: Any, lower: Any, upper: Any, metal_probability: Any, threshold: float = METAL_THRESHOLD
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """A band-gap prediction gated as a whole: value, std and interval bounds (eV), each shape (n,).

    Where P(metal) > ``threshold`` the value and both bounds are 0 and the std is NaN. The band-gap
    ensemble was trained on non-metals, so its spread on a metal (median 0.9 eV, docs/units.md) says
    nothing about a gap the classifier has set to 0; ``metal_probability`` is that row's uncertainty. Elsewhere the
    regression's std and bounds are returned unchanged. ``std``, ``lower``, ``upper`` may be ``None``
    (not computed) and stay so.
    """
    threshold = check_metal_threshold(threshold)
    p = np.asarray(metal_probability, dtype=np.float64)
    value = gated_band_gap(band_gap, p, threshold)
    std_out = None if std is None else gated_spread(std, p, threshold)
    low = None if lower is None else gated_band_gap(lower, p, threshold)
    high = None if upper is None else gated_band_gap(upper, p, threshold)
    return value, std_out, low, high


def gated_spread(spread: Any, metal_probability: Any, threshold: float = METAL_THRESHOLD) -> np.ndarray:
    """A band-gap spread (a std or the per-crystal ``uncertainty``, eV) set to NaN where P(metal) >
    ``threshold``: there the gated gap is 0 and the regression's spread says nothing about it
    (:func:`gated_band_gap_result`)."""
    p = np.asarray(metal_probability, dtype=np.float64)
    return np.where(p > check_metal_threshold(threshold), np.nan, np.asarray(spread, dtype=np.float64))


@dataclass(frozen=True)
class Column:
    """One output column: ``name`` (e.g. ``"bulk_modulus"``) in ``units`` (e.g. ``"GPa"``)."""

    name: str
    units: str

    @property
    def header(self) -> str:
        return f"{self.name} ({self.units})"


def with_metal_classifier(predictors: Sequence[CGCNNPredictor], device: Any = None) -> list[CGCNNPredictor]:
    """``predictors`` plus the shipped ``is_metal`` classifier when a band-gap model trained on non-metals
    only (:func:`trained_on_non_metals`) is among them without one, so that its band gap can be gated;
    as given when none is shipped. Such a model's value for a metal means nothing (the authors'
    checkpoint gives Cu 1.83 eV). A band-gap model of one's own is gated only when ``is_metal`` is
    given with it: it may have been trained on metals too."""
    from cgcnn_ase.inference.predictor import as_predictor
    from cgcnn_ase.models.registry import resolve_model

    out = list(predictors)
    properties = {p.property_name for p in out}
    others = [p.model.spec.name for p in out if p.model.spec.task == "classification" and p.property_name != "is_metal"
              and "metal" in f"{p.property_name} {p.model.spec.positive_class or ''}".lower()]  # fmt: skip
    if others and "band_gap" in properties:
        shipped = "is_metal" not in properties and any(trained_on_non_metals(p) for p in out)
        instead = "the shipped is_metal gates the band gap instead" if shipped else "the band gap is not gated by it"
        warnings.warn(f"{', '.join(others)}: a metal classifier gates the band gap only when its property is is_metal "
                      f"(train it with property: is_metal); {instead}", UserWarning, stacklevel=user_stacklevel())
    if "is_metal" not in properties and any(trained_on_non_metals(p) for p in out):
        try:
            resolve_model("is_metal")
        except UnknownModelError:  # no shipped classifier: the band gap stays ungated
            return out
        out.append(as_predictor("is_metal", device=device))
    return out


def trained_on_non_metals(predictor: CGCNNPredictor) -> bool:
    """True for a band-gap model known to be trained on non-metals only: a shipped one (rows with
    ``band_gap > 0``, as the paper) or one of the authors' checkpoints (the paper's 16,458 crystals).
    A folder of one's own is not assumed to be (it says nothing of what its rows held)."""
    from cgcnn_ase.models.registry import list_models

    if predictor.property_name != "band_gap":
        return False
    spec = predictor.model.spec
    if str(spec.metadata.get("origin", "")).startswith("original CGCNN checkpoint"):
        return True
    return any(spec.name == info.name for info in list_models())


def warn_ungated_band_gaps(predictors: Sequence[CGCNNPredictor], names: Sequence[str] | None = None) -> None:
    """Warn (``UserWarning``) when ``predictors`` include a band-gap model trained on non-metals
    (:func:`trained_on_non_metals`) whose column is its own value: ``cgcnn-ase predict --model``, streaming and
    Dask give each model's output, while :func:`property_table`, the featurizer and the calculator gate it (round
    23a: Dask's ``band_gap (eV)`` was 0.30 eV for a metal the featurizer's column of the same name gave 0)."""
    names = list(names) if names is not None else [p.model.spec.name for p in predictors]
    ungated = [name for name, p in zip(names, predictors) if trained_on_non_metals(p)]
    if ungated:
        warnings.warn(f"{', '.join(ungated)}: band_gap is the model's own value (clipped at 0), not gated by the metal "
                      "classifier; the model was trained on non-metals, so for a metal it means nothing. The "
                      "general-purpose properties (cgcnn-ase predict without --model, property_table), CGCNNFeaturizer "
                      "and CGCNNCalculator give 0 for predicted metals (band_gap_raw keeps this value)", UserWarning,
                      stacklevel=user_stacklevel())  # fmt: skip


def gpa_spread(log10_value: Any, spread: Any) -> np.ndarray:
    """A spread (std or ``uncertainty``) of a log10(GPa) value, in GPa, to first order:
    ``ln(10) * 10**log10_value * spread``."""
    return _LN10 * 10.0 ** np.asarray(log10_value, dtype=np.float64) * np.asarray(spread, dtype=np.float64)


def _is_log_gpa(predictor: CGCNNPredictor) -> bool:
    return predictor.property_name.startswith("log10_") and predictor.units == "log10(GPa)"


def _name(predictor: CGCNNPredictor) -> str:
    """The user-facing name: ``is_metal`` -> ``metal_probability``, ``log10_bulk_modulus`` -> ``bulk_modulus``."""
    if predictor.property_name == "is_metal":
        return "metal_probability"
    return predictor.property_name.removeprefix("log10_") if _is_log_gpa(predictor) else predictor.property_name


def property_columns(
    predictors: Sequence[CGCNNPredictor],
    *,
    log10: bool = False,
    domain: bool = False,
    coverage: float | None = None,
    uncertainty: bool = False,
) -> list[Column]:
    """The columns :func:`property_table` writes for ``predictors``, in order (``id`` and ``error`` aside)."""
    names = {p.property_name for p in predictors}
    gate = {"band_gap", "is_metal"} <= names
    columns: list[Column] = []
    for p in predictors:
        name, units = _name(p), ("GPa" if _is_log_gpa(p) else p.units)
        columns.append(Column(name, units))
        if p.is_ensemble:
            columns.append(Column(f"{name}_std", units))
        if uncertainty and p.has_uncertainty:
            columns.append(Column(f"{name}_uncertainty", units))
        if coverage is not None and p.has_intervals:
            columns += [Column(f"{name}_lower", units), Column(f"{name}_upper", units)]
        if p.property_name == "band_gap" and gate:
            columns.append(Column("band_gap_raw", p.units))
        if _is_log_gpa(p) and log10:
            columns.append(Column(p.property_name, p.units))
            if p.is_ensemble:
                columns.append(Column(f"{p.property_name}_std", p.units))
            if uncertainty and p.has_uncertainty:
                columns.append(Column(f"{p.property_name}_uncertainty", p.units))
            if coverage is not None and p.has_intervals:
                columns += [Column(f"{p.property_name}_lower", p.units), Column(f"{p.property_name}_upper", p.units)]
        if domain and p.has_domain:
            columns.append(Column(f"{name}_domain_percentile", "percent"))
    return columns


def property_table(
    structures: Any,
    predictors: Sequence[CGCNNPredictor],
    *,
    batch_size: int | None = None,
    metal_threshold: float = METAL_THRESHOLD,
    log10: bool = False,
    domain: bool = False,
    on_sparse: str = "warn",
    workers: int | NetworkPool = 1,
    coverage: float | None = None,
    uncertainty: bool = False,
) -> tuple[pd.DataFrame, list[Column]]:
    """Predict every model's property for ``structures`` and return them in user units.

    Each structure is read once and its graph built once per distinct graph config
    (:func:`~cgcnn_ase.inference.predictor.predict_many`); a structure that any model refuses gets
    NaN everywhere and its message in ``error``.

    Args:
        structures: what :meth:`CGCNNPredictor.predict` accepts.
        predictors: the models (:data:`GENERAL_MODELS` for the CLI's default).
        batch_size: crystals per forward pass.
        metal_threshold: see :func:`gated_band_gap` (used when both ``band_gap`` and ``is_metal`` run).
        log10: also give the moduli's log10 columns (and their log10 bounds with ``coverage``).
        domain: also give each model's domain percentile.
        workers: processes reading, building graphs and running the networks (see
            :meth:`CGCNNPredictor.predict`), or a :class:`~cgcnn_ase.inference.parallel.NetworkPool`
            of ``predictors`` kept open across calls.
        coverage: add ``<name>_lower``/``<name>_upper`` prediction intervals of this coverage
            for the models calibrated for them, in the same user units (GPa bounds are ``10**``
            of the log10 bounds; a gated band gap's interval is [0, 0]).
        uncertainty: also give ``<name>_uncertainty``, the per-crystal error estimate (a standard
            deviation, docs/uncertainty.md) of the models that carry an error model, in the same user
            units (GPa: propagated to first order as the std; NaN for a gated band gap's metals).

    Returns:
        ``(frame, columns)``: ``frame`` has ``id``, one column per :class:`Column` (headers
        ``"<name> (<units>)"``) and ``error``; ``columns`` describes them.
    """
    from cgcnn_ase.inference.predictor import check_interval_models, predict_many

    check_metal_threshold(metal_threshold)
    check_interval_models(predictors, coverage)
    results = predict_many(predictors, structures, batch_size=batch_size, errors="collect", on_sparse=on_sparse,
                           progress=False, workers=workers, coverage=coverage)  # fmt: skip
    return property_frame(predictors, results, metal_threshold=metal_threshold, log10=log10, domain=domain,
                          coverage=coverage, uncertainty=uncertainty)  # fmt: skip


def property_frame(
    predictors: Sequence[CGCNNPredictor],
    results: Sequence[PredictionResult],
    *,
    metal_threshold: float = METAL_THRESHOLD,
    log10: bool = False,
    domain: bool = False,
    coverage: float | None = None,
    uncertainty: bool = False,
) -> tuple[pd.DataFrame, list[Column]]:
    """:func:`property_table`'s ``(frame, columns)`` from each predictor's result for the same structures."""
    import pandas as pd

    metal_threshold = check_metal_threshold(metal_threshold)
    ids = results[0].ids if results else []
    values: dict[str, np.ndarray] = {}
    for p, r in zip(predictors, results):
        values.update(_user_values(p, r, log10=log10, domain=domain))
    by_property = {p.property_name: r for p, r in zip(predictors, results)}
    if "band_gap" in by_property and "is_metal" in by_property:
        names = ("band_gap", "band_gap_std", "band_gap_lower", "band_gap_upper")
        gated = gated_band_gap_result(values["band_gap_raw"], *(values.get(n) for n in names[1:]),
                                      by_property["is_metal"].values, metal_threshold)  # fmt: skip
        values.update({n: v for n, v in zip(names, gated) if v is not None})
        if "band_gap_uncertainty" in values:
            values["band_gap_uncertainty"] = gated_spread(values["band_gap_uncertainty"], by_property["is_metal"].values,
                                                          metal_threshold)  # fmt: skip
    columns = property_columns(predictors, log10=log10, domain=domain, coverage=coverage, uncertainty=uncertainty)
    frame = pd.DataFrame({"id": ids, **{c.header: values[c.name] if results else np.zeros(0) for c in columns}})
    errors = [sorted({r.errors[k] for r in results if r.errors[k]}) for k in range(len(ids))]
    labels = [_name(p) for p in predictors]
    unseen = [None if errors[k] else unseen_cell(labels, results, k) for k in range(len(ids))]
    frame[UNSEEN] = pd.Series(unseen, dtype=object)
    frame["error"] = pd.Series(["; ".join(e) if e else None for e in errors], dtype=object)
    bad = frame["error"].notna().to_numpy()
    frame.loc[bad, [c.header for c in columns]] = np.nan  # one refusal voids the row, as `cgcnn-ase predict --model`
    add_flag_columns(frame, [None if errors[k] else flag_cells(results, k) for k in range(len(ids))])
    frame.attrs["units"] = {c.header: c.units for c in columns} | FLAG_UNITS
    return frame, columns


def _user_values(predictor: CGCNNPredictor, result: Any, *, log10: bool, domain: bool) -> dict[str, np.ndarray]:
    """One model's columns by name, converted to user units (see the module docstring)."""
    name = _name(predictor)
    out: dict[str, np.ndarray] = {}
    if _is_log_gpa(predictor):
        gpa = 10.0**result.values
        out[name] = gpa
        if result.std is not None:
            out[f"{name}_std"] = gpa_spread(result.values, result.std)
        if result.uncertainty is not None:
            out[f"{name}_uncertainty"] = gpa_spread(result.values, result.uncertainty)
        if result.lower is not None:
            out[f"{name}_lower"], out[f"{name}_upper"] = 10.0**result.lower, 10.0**result.upper
        if log10:
            out[predictor.property_name] = result.values
            if result.std is not None:
                out[f"{predictor.property_name}_std"] = result.std
            if result.uncertainty is not None:
                out[f"{predictor.property_name}_uncertainty"] = result.uncertainty
            if result.lower is not None:
                out[f"{predictor.property_name}_lower"] = result.lower
                out[f"{predictor.property_name}_upper"] = result.upper
    else:
        out[name] = physical_values(predictor.property_name, result.values)
        if result.std is not None:
            out[f"{name}_std"] = result.std
        if result.uncertainty is not None:
            out[f"{name}_uncertainty"] = result.uncertainty
        if result.lower is not None:
            out[f"{name}_lower"], out[f"{name}_upper"] = result.lower, result.upper
    if predictor.property_name == "band_gap":
        out["band_gap_raw"] = result.values
    if domain and result.domain_percentile is not None:
        out[f"{name}_domain_percentile"] = result.domain_percentile
    return out


#: Ids of the compact terminal table keep their file name up to this many characters, however narrow the screen.
ID_NAME_ROOM = 40
#: Short labels of the compact terminal table, and the legend line that explains them.
_SHORT = {
    "formation_energy": ("Ef", "formation energy, eV/atom"),
    "band_gap": ("Eg", "band gap, eV (0 when P(metal) > {threshold})"),
    "metal_probability": ("P(metal)", "probability of a metal"),
    "fermi_energy": ("EF", "Fermi energy, eV"),
    "bulk_modulus": ("K", "bulk modulus, GPa"),
    "shear_modulus": ("G", "shear modulus, GPa"),
    "poisson_ratio": ("nu", "Poisson ratio"),
}


def _cell(value: float, std: float | None) -> str:
    """``value±std`` with the std to two significant digits (at most 3 decimals) and the value to match."""
    if value is None or not np.isfinite(value):
        return "-"
    if std is None or not np.isfinite(std) or std <= 0:
        return f"{value:.3g}"
    decimals = min(3, max(0, 1 - math.floor(math.log10(std))))
    return f"{value:.{decimals}f}±{std:.{decimals}f}"


def _symbols_of_unseen_cell(cell: Any) -> str:
    """The element symbols of an ``unseen_elements`` cell without the model names, e.g. ``"La Ra"``."""
    if not isinstance(cell, str):
        return ""
    symbols = re.sub(r"\s*\([^)]*\)", "", cell).replace(";", " ").split()
    return " ".join(dict.fromkeys(symbols))


def std_coverage(predictors: Sequence[CGCNNPredictor]) -> tuple[float, float] | None:
    """The smallest and largest share (0-1) of test errors within ±1 calibrated std over the regression
    ensembles among ``predictors``, as their ``model.json`` records it
    (``metadata.uncertainty.test.calibrated.within_1std``); ``None`` if none records it."""
    shares = [p.model.spec.metadata.get("uncertainty", {}).get("test", {}).get("calibrated", {}).get("within_1std")
              for p in predictors]  # fmt: skip
    shares = [s for s in shares if s is not None]
    return (min(shares), max(shares)) if shares else None


def compact_table(frame: pd.DataFrame, columns: Sequence[Column], *, width: int = 100, shorten_ids: bool = True,
                  metal_threshold: float = METAL_THRESHOLD, coverage_of_std: tuple[float, float] | None = None) -> str:  # fmt: skip
    """A terminal table of ``frame``: one row per structure, ``value±std`` cells with short
    headers, ids shortened to fit ``width`` characters where ``shorten_ids`` (:func:`short_ids`:
    never so far that different ids look alike), and a legend of the headers below, which quotes
    ``coverage_of_std`` (:func:`std_coverage` of the models) where given."""
    shown = [c for c in columns if not c.name.endswith(("_std", "_raw", "_domain_percentile", "_lower", "_upper",
                                                        "_uncertainty"))
             and not c.name.startswith("log10_")]  # fmt: skip
    headers = [_SHORT.get(c.name, (c.name, f"{c.name}, {c.units}"))[0] for c in shown]
    names = {c.name for c in columns}
    domain = [c.header for c in columns if c.name.endswith("_domain_percentile")]
    if domain:
        headers.append("dom%")
    unseen = [_symbols_of_unseen_cell(u) for u in frame[UNSEEN]] if UNSEEN in frame.columns else []
    if any(unseen):
        headers.append("unseen")
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for c in shown:
            std_name = f"{c.name}_std"
            std = row[f"{std_name} ({c.units})"] if std_name in names else None
            cells.append(_cell(row[c.header], std))
        if domain:
            values = row[domain].to_numpy(float)
            typical = np.nanmedian(values) if np.isfinite(values).any() else np.nan
            beyond = bool(np.nanmax(values, initial=0) >= 100) if np.isfinite(values).any() else False
            flagged = beyond and typical < 100  # round 25a: LaN's median 10 hid bulk_modulus at 100
            cells.append((f"{typical:.0f}" + ("!" if flagged else "")) if np.isfinite(typical) else "-")
        if any(unseen):
            cells.append(unseen[len(rows)] or "")
        rows.append(cells)
    widths = [max([len(h)] + [len(r[j]) for r in rows]) for j, h in enumerate(headers)]
    ids, folder = [str(i) for i in frame["id"]], ""
    room = max(8, width - sum(w + 2 for w in widths))
    if shorten_ids and any(len(i) > room for i in ids):
        folder = _common_folder(ids)
        ids = short_ids([os.path.relpath(i, folder) if folder else i for i in ids], room)
    id_width = max([2] + [len(i) for i in ids])
    lines = ["  ".join(["id".ljust(id_width)] + [h.rjust(w) for h, w in zip(headers, widths)])]
    for label, cells, error in zip(ids, rows, frame["error"]):
        line = "  ".join([label.ljust(id_width)] + [c.rjust(w) for c, w in zip(cells, widths)])
        lines.append(line if not error else label.ljust(id_width) + "  error (see stderr)")
    legend = "; ".join(
        f"{h}: {_SHORT.get(c.name, (c.name, f'{c.name}, {c.units}'))[1].format(threshold=metal_threshold)}"
        for h, c in zip(headers, shown)
    )
    if domain:
        legend += ("; dom%: the median over the models of the domain percentile (near 100: far from their "
                   "training data, so the predictions extrapolate; --domain gives each model's; ! marks a crystal "
                   "some model puts beyond all its validation crystals, at 100)")
    if any(unseen):
        legend += ("; unseen: elements absent from some model's training data, whose predictions for that crystal "
                   "extrapolate (csv and parquet name the models in unseen_elements)")
    if folder:
        legend = f"ids are in {folder}{os.sep}; " + legend
    if not any(f"{c.name}_std" in names for c in shown):  # single networks (--members 1): no ± to explain (32c)
        return "\n".join(lines) + "\n\n" + _wrap(legend + "; no ± shown: one network per model (--members 1) "
                                                  "gives no ensemble standard deviation.", width)  # fmt: skip
    held = f"it holds {coverage_of_std[0]:.0%}-{coverage_of_std[1]:.0%} of test errors; " if coverage_of_std else ""
    probability = "; the ± of a probability (P(metal)) is its members' spread, not calibrated" if any(
        c.units == "probability" and f"{c.name}_std" in names for c in shown) else ""  # fmt: skip
    which = " of the other columns" if probability else ""
    note = f"{probability}; ± the calibrated ensemble standard deviation{which} (a conservative 1-sigma: {held}"
    elsewhere = [what for what, suffix in (("the --coverage intervals", "_lower"), ("the --uncertainty columns",
                 "_uncertainty")) if any(name.endswith(suffix) for name in names)]  # fmt: skip
    if elsewhere:
        note += f"{' and '.join(elsewhere)} are in the csv and json output, -o out.csv, not in this table)."
    else:
        note += "--coverage 0.9 gives 90% intervals)."
    return "\n".join(lines) + "\n\n" + _wrap(legend + note, width)


def _common_folder(ids: Sequence[str]) -> str:
    """The folder holding every id that is a path in a folder (``""`` if there is none), e.g.
    ``data/run1`` for ``data/run1/a.cif`` and ``data/run1/x/b.cif``."""
    folders = [os.path.dirname(i) for i in ids]
    if not ids or not all(folders):
        return ""
    try:
        common = os.path.commonpath(folders)
    except ValueError:  # absolute and relative paths mixed
        return ""
    return common if common and common != os.sep else ""


def short_ids(ids: Sequence[str], room: int) -> list[str]:
    """``ids`` cut from the left to ``room`` characters (``"..."`` and the end), but never so far that
    different ids look alike, nor shorter than the longest file name plus ``"..."`` (up to
    :data:`ID_NAME_ROOM` characters): ``dir/sub/ase_Si2.extxyz`` and ``dir/sub/ase_Ti2.extxyz`` stay
    apart."""
    if all(len(i) <= room for i in ids):
        return list(ids)
    longest = max(len(i) for i in ids)
    room = max(room, min(max(len(os.path.basename(i)) for i in ids) + 3, ID_NAME_ROOM))
    distinct = len(set(ids))
    while True:
        short = [i if len(i) <= room else "..." + i[-(room - 3) :] for i in ids]
        if len(set(short)) == distinct or room >= longest:
            return short
        room += 1


def _wrap(text: str, width: int) -> str:
    import textwrap

    return textwrap.fill(text, width=width) + "\n"

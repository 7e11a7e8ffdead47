"""Prediction results: :class:`PredictionResult`, and how a prediction call accumulates them.

A :class:`PredictionResult` holds one row per structure in input order: values (and, for
ensembles, member values, std, intervals, per-crystal uncertainty), errors, sparse-atom counts,
unseen elements, domain signals, per-atom contributions and embeddings.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cgcnn_ase.errors import UNSEEN_HINT, CGCNNError, UnseenElementWarning, user_stacklevel
from cgcnn_ase.graph.batched import GraphSummary
from cgcnn_ase.graph.neighbours import CrystalGraph

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


@dataclass
class PredictionResult:
    """Predictions for a list of inputs, in input order.

    Attributes:
        ids: one label per structure (file path, ``path@frame``, or ``input i``).
        values: predictions, shape (n,), float64, in ``units``; for a classifier the
            probability of ``positive_class``. NaN where ``errors`` holds a message.
        property: predicted property name.
        units: units of ``values``.
        task: ``"regression"`` or ``"classification"``.
        errors: ``None`` per successful item, else the error message (only with
            ``errors="collect"``).
        per_atom: per-structure arrays of per-atom contributions (``per_atom=True``).
        embeddings: crystal feature vectors, shape (n, atom_fea_len), NaN rows for failed
            items (``embeddings=True``).
        n_sparse: atoms with fewer than the model's neighbour count, per structure
            (-1 for failed items).
        bond_ratio: per structure, its shortest graph edge over the sum of the two atoms'
            covalent radii (dimensionless; :func:`~cgcnn_ase.graph.neighbours.bond_ratio`): about 1;
            below 0.5 or above 1.6 no training crystal lies (a cell scaled wrong). NaN for failed
            items and crystals without edges.
        vacuum_gap: per structure, the widest empty slab across its cell, Å
            (:func:`~cgcnn_ase.io.records.vacuum_gap`): above 5 Å (wider than in 99.9% of the
            training crystals; :data:`~cgcnn_ase.io.records.VACUUM_GAP`) the atoms form a slab, wire or
            molecule in a periodic box, not a bulk crystal. NaN for failed items.
        unseen_elements: per structure, symbols of elements absent from the model's
            training data (empty when all were seen or the model does not record them).
        positive_class: the class whose probability ``values`` holds (classifiers).
        std: for an ensemble, the standard deviation of the members' predictions, shape
            (n,), in ``units`` (classifiers: of the members' probabilities), multiplied by
            the model's calibration factor ``std_scale`` when one was fitted (see
            docs/uncertainty.md); ``None`` for a single model. NaN for failed items.
        std_raw: the uncalibrated standard deviation (population, ddof=0, over members);
            equal to ``std`` when no calibration was fitted; ``None`` for a single model.
        std_scale: the calibration factor (``std = std_scale * std_raw``), ``None`` if none.
        member_values: each member's prediction, shape (n, n_members), in ``units``
            (ensembles only); ``values`` is their mean.
        domain_distance: distance of each crystal's embedding (member 0's) to the nearest
            stored training embedding, dimensionless (standardised embedding units); NaN
            for failed items; ``None`` when the model ships no domain summary.
        coverage, lower, upper: with ``predict(..., coverage=c)``, the prediction interval
            ``[lower, upper]`` (shape (n,), in ``units``) that holds the true value with
            probability ``c``: split-conformal, ``values ± q(c) * std_raw`` with ``q`` fitted on
            the validation split (see docs/uncertainty.md); ``None`` otherwise.
        domain_percentile: percentage (0-100) of the model's validation crystals of the same
            formula-unit size class that lay at most ``domain_distance`` from the training set
            (see :mod:`cgcnn_ase.models.domain`): about uniform for crystals like the
            validation data, near 100 outside its domain; ``None`` as above.
        uncertainty: for a full ensemble whose domain summary carries an error model, the
            estimated standard deviation of each prediction's error, shape (n,), in ``units``:
            a validation-fitted combination of ``std_raw``, the domain distance and the errors of
            nearby validation crystals (:mod:`cgcnn_ase.models.local_error`); it ranks errors
            better than ``std``. ``None`` otherwise; NaN for failed items.
        index: the pandas index of the input when it was a ``Series`` giving one structure per row (its labels
            and dtype, which ``ids`` hold as text, except a default 0..n-1 index, which names no rows: the ids are
            then the inputs' own): :meth:`to_dataframe` keeps it, so ``df.join(result.to_dataframe())`` matches the
            rows; ``None`` otherwise.
    """

    ids: list[str]
    values: np.ndarray
    property: str
    units: str
    task: str
    errors: list[str | None]
    n_sparse: np.ndarray
    unseen_elements: list[list[str]] = field(default_factory=list)
    bond_ratio: np.ndarray | None = None
    vacuum_gap: np.ndarray | None = None
    per_atom: list[np.ndarray] | None = None
    embeddings: np.ndarray | None = None
    positive_class: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    std: np.ndarray | None = None
    std_raw: np.ndarray | None = None
    std_scale: float | None = None
    member_values: np.ndarray | None = None
    domain_distance: np.ndarray | None = None
    domain_percentile: np.ndarray | None = None
    coverage: float | None = None
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    index: Any = None

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:  # the dataclass's own printed every id and array (89 kB for 600 crystals)
        failed = sum(e is not None for e in self.errors)
        parts = [f"{len(self)} structures", f"{self.property!r} in {self.units}" if self.units else repr(self.property)]
        parts += [f"{failed} failed"] if failed else []
        parts += ["std"] if self.std is not None else []
        if self.lower is not None:  # round 29d: "lower" alone, without "upper" or the coverage
            parts.append(f"lower/upper ({self.coverage:.0%} interval)" if self.coverage is not None else "lower/upper")
        parts += [name for name in ("uncertainty", "per_atom", "embeddings") if getattr(self, name) is not None]
        return f"PredictionResult({', '.join(parts)}; .values, .to_dataframe())"

    def in_domain(self, *, max_percentile: float = 95.0, allow_sparse: bool = False) -> np.ndarray:
        """Boolean mask of predictions inside the model's applicability domain.

        A crystal is inside when it was predicted, holds only elements seen in training,
        has no sparse atom (unless ``allow_sparse``), has interatomic distances like the
        training crystals' (``bond_ratio`` within [0.6, 1.6]) and no vacuum gap wider than
        5 Å (``vacuum_gap``: not a slab or molecule in a box), the limits of the
        :class:`~cgcnn_ase.errors.GeometryWarning` s, and, when the model ships a domain
        summary, its ``domain_percentile`` is at most ``max_percentile`` (percent).
        """
        from cgcnn_ase.graph.neighbours import CLOSE_ATOMS_FACTOR, STRETCHED_FACTOR
        from cgcnn_ase.io.records import VACUUM_GAP

        mask = self.ok.copy()
        if self.bond_ratio is not None:
            with np.errstate(invalid="ignore"):
                mask &= ~((self.bond_ratio < CLOSE_ATOMS_FACTOR) | (self.bond_ratio > STRETCHED_FACTOR))
        if self.vacuum_gap is not None:
            with np.errstate(invalid="ignore"):
                mask &= ~(self.vacuum_gap > VACUUM_GAP)
        if self.unseen_elements:
            mask &= np.array([not u for u in self.unseen_elements], dtype=bool)
        if not allow_sparse:
            mask &= self.n_sparse == 0
        if self.domain_percentile is not None:
            with np.errstate(invalid="ignore"):
                mask &= self.domain_percentile <= max_percentile
        return mask

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of items that were predicted."""
        return np.array([e is None for e in self.errors], dtype=bool)

    def to_dataframe(self) -> "pandas.DataFrame":  # noqa: F821
        """One row per structure: ``id``, the property column, ``n_sparse`` (nullable integers, ``<NA>``
        for failed items), ``bond_ratio``, ``vacuum_gap``, ``unseen_elements``, ``error``.

        Ensembles add ``<property>_std`` after the property (and ``<property>_std_raw`` when
        the std is calibrated, ``<property>_uncertainty`` when they carry an error model);
        models with a domain summary add ``domain_distance`` and ``domain_percentile`` before
        ``error``. Units are in ``df.attrs["units"]`` (a dict column -> units), an interval's coverage in
        ``df.attrs["coverage"]`` (a fraction). The frame's index is the input
        Series' index where there was one (:attr:`index`), and its ``id`` column then holds those labels as they
        are (integers stay integers) unless the index is the default 0..n-1; else the index is 0..n-1 and ``id``
        the text ids (:attr:`ids`).
        """
        import pandas as pd

        # a Series' own labels (101, not "101"), so that the id column joins its frame (round 26b); a default
        # 0..n-1 index names no rows, and the ids stay the inputs' own (paths, "input k"; round 28)
        default = type(self.index).__name__ == "RangeIndex" and self.index.start == 0 and self.index.step == 1
        ids = list(self.index) if self.index is not None and not default else self.ids
        columns: dict[str, Any] = {"id": ids, self.property: self.values}
        units = {self.property: self.units}
        if self.std is not None:
            columns[f"{self.property}_std"] = self.std
            units[f"{self.property}_std"] = self.units
            if self.std_scale is not None and self.std_raw is not None:
                columns[f"{self.property}_std_raw"] = self.std_raw
                units[f"{self.property}_std_raw"] = self.units
        if self.uncertainty is not None:
            columns[f"{self.property}_uncertainty"] = self.uncertainty
            units[f"{self.property}_uncertainty"] = self.units
        if self.lower is not None:
            for bound, values in (("lower", self.lower), ("upper", self.upper)):
                columns[f"{self.property}_{bound}"] = values
                units[f"{self.property}_{bound}"] = self.units
        # a nullable integer column: <NA> for failed items (the array's -1), as every other column is NaN there
        columns["n_sparse"] = pd.array(np.where(self.n_sparse < 0, None, self.n_sparse), dtype="Int64")
        if self.bond_ratio is not None:
            columns["bond_ratio"] = self.bond_ratio
        if self.vacuum_gap is not None:
            columns["vacuum_gap"] = self.vacuum_gap
            units["vacuum_gap"] = "Å"
        columns["unseen_elements"] = [" ".join(u) for u in self.unseen_elements]
        if self.domain_distance is not None:
            columns["domain_distance"] = self.domain_distance
            columns["domain_percentile"] = self.domain_percentile
            units.update(domain_distance="dimensionless", domain_percentile="percent")
        columns["error"] = self.errors
        df = pd.DataFrame(columns, index=self.index)
        df.attrs["units"] = units
        if self.coverage is not None and self.lower is not None:  # what _lower/_upper mean, kept with the frame
            df.attrs["coverage"] = self.coverage
        return df



@dataclass
class ResultRows:
    """Per-structure outputs accumulated over the batches of one :meth:`CGCNNPredictor.predict` call."""

    n_members: int
    width: int
    per_atom: bool
    features: bool
    domain_columns: bool = False
    ids: list[str] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    messages: list[str | None] = field(default_factory=list)
    n_sparse: list[int] = field(default_factory=list)
    bond_ratio: list[float] = field(default_factory=list)
    vacuum_gap: list[float] = field(default_factory=list)
    unseen: list[list[str]] = field(default_factory=list)
    atoms: list[np.ndarray] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    domain: list[np.ndarray] = field(default_factory=list)

    def add(
        self,
        chunk: list[tuple[str, CrystalGraph | CGCNNError]],
        values: np.ndarray | None,
        atoms: list[np.ndarray] | None,
        features: np.ndarray | None,
        domain: np.ndarray | None,
        *,
        seen: frozenset[int] | None,
    ) -> None:
        """Record one batch: ``values`` (n_members, n_good), ``domain`` (n_good, 3) etc. cover the graphs
        of ``chunk`` in order."""
        k = 0
        for label, item in chunk:
            self.ids.append(label)
            if not isinstance(item, CGCNNError):  # a CrystalGraph, or a GraphSummary of the batched path
                self.values.append(values[:, k])
                self.messages.append(None)
                self.n_sparse.append(item.n_sparse)
                self.bond_ratio.append(item.bond_ratio)
                self.vacuum_gap.append(item.vacuum_gap)
                self.unseen.append(_unseen_symbols(item, seen))
                if self.domain_columns:
                    self.domain.append(domain[k])
                if self.per_atom:
                    self.atoms.append(atoms[k])
                if self.features:
                    self.embeddings.append(features[k])
                k += 1
            else:
                self.values.append(np.full(self.n_members, np.nan))
                self.messages.append(str(item))
                self.n_sparse.append(-1)
                self.bond_ratio.append(np.nan)
                self.vacuum_gap.append(np.nan)
                self.unseen.append([])
                if self.domain_columns:
                    self.domain.append(np.full(3, np.nan))
                if self.per_atom:
                    self.atoms.append(np.zeros(0))
                if self.features:
                    self.embeddings.append(np.full(self.width, np.nan))


def _unseen_symbols(graph: CrystalGraph | GraphSummary, seen: frozenset[int] | None) -> list[str]:
    """Symbols of the elements in ``graph`` outside the training elements ``seen`` (sorted by Z)."""
    unseen = sorted(set(graph.numbers.tolist()) - seen) if seen is not None else []
    if not unseen:
        return []
    from ase.data import chemical_symbols

    return [chemical_symbols[z] for z in unseen]


#: The text columns after the model columns of every result table, in order.
UNSEEN = "unseen_elements"
TEXT_COLUMNS = (UNSEEN, "error")
#: The geometry checks between the model columns and :data:`TEXT_COLUMNS` of the command line's and the
#: streaming tables, as :meth:`PredictionResult.to_dataframe` names them: ``n_sparse`` (atoms with fewer
#: neighbours than the graph's count; the most over the models), ``bond_ratio`` (dimensionless) and
#: ``vacuum_gap`` (Å); what the :class:`~cgcnn_ase.errors.GeometryWarning` s and sparse-graph warnings flag.
#: Empty where the row failed.
FLAG_COLUMNS = ("n_sparse", "bond_ratio", "vacuum_gap")
#: Their units (the tables' metadata; the names carry none, as in :meth:`PredictionResult.to_dataframe`).
FLAG_UNITS = {"n_sparse": "atoms", "bond_ratio": "dimensionless", "vacuum_gap": "Å"}


def flag_cells(results: Sequence[PredictionResult], row: int) -> tuple[int, float, float]:
    """The :data:`FLAG_COLUMNS` cells of row ``row`` of several models' results for the same structures."""
    n_sparse = max(int(r.n_sparse[row]) for r in results)
    ratio = next((float(r.bond_ratio[row]) for r in results if r.bond_ratio is not None), float("nan"))
    gap = next((float(r.vacuum_gap[row]) for r in results if r.vacuum_gap is not None), float("nan"))
    return n_sparse, ratio, gap


def add_flag_columns(frame: pd.DataFrame, cells: Sequence[tuple[int, float, float] | None]) -> None:
    """Insert :data:`FLAG_COLUMNS` into ``frame`` before its first text column (``None``: a failed row;
    ``n_sparse`` is a nullable integer column)."""
    import pandas as pd

    at = min((frame.columns.get_loc(c) for c in TEXT_COLUMNS if c in frame.columns), default=len(frame.columns))
    empty = (None, np.nan, np.nan)
    columns = list(zip(*[c if c is not None else empty for c in cells])) or [(), (), ()]
    frame.insert(at, "n_sparse", pd.array(columns[0], dtype="Int64"))
    frame.insert(at + 1, "bond_ratio", np.asarray(columns[1], dtype=np.float64))
    frame.insert(at + 2, "vacuum_gap", np.asarray(columns[2], dtype=np.float64))


def unseen_label(per_model: Sequence[tuple[str, Sequence[str]]]) -> str | None:
    """The ``unseen_elements`` cell of one row: ``None`` when every model saw all its elements;
    with one model the symbols (``"Ra"``, ``"La Nd"``); with several, each set of symbols followed by
    the models that lack them, e.g. ``"La (bulk_modulus, shear_modulus)"`` or
    ``"Ra (formation_energy, band_gap); La (bulk_modulus)"``.

    Args:
        per_model: (model label, that model's unseen symbols for this row) for each model.
    """
    if len(per_model) == 1:
        return " ".join(per_model[0][1]) or None
    groups: dict[tuple[str, ...], list[str]] = {}
    for label, symbols in per_model:
        if symbols:
            groups.setdefault(tuple(symbols), []).append(label)
    return "; ".join(f"{' '.join(symbols)} ({', '.join(labels)})" for symbols, labels in groups.items()) or None


def unseen_cell(labels: Sequence[str], results: Sequence[PredictionResult], row: int) -> str | None:
    """The ``unseen_elements`` cell of row ``row`` of several models' ``results`` (one per model, named by
    ``labels``, e.g. :func:`unseen_labels`): :func:`unseen_label` of their unseen symbols there."""
    return unseen_label([(label, result.unseen_elements[row]) for label, result in zip(labels, results)])


def unseen_labels(predictors: Sequence[Any]) -> list[str]:
    """How :func:`unseen_label` names each of ``predictors``: its property, or, where several of them
    predict one property, the model's own name (as its unseen-element warning names it)."""
    labels = [p.property_name for p in predictors]
    if len(set(labels)) < len(labels):
        labels = [p.model.spec.name for p in predictors]
    return labels


def reissue_warnings(caught: Sequence[warnings.WarningMessage], unseen_place: str) -> None:
    """Warn again with the warnings ``caught`` from ``predict`` calls, each unseen-element warning saying
    ``unseen_place`` (e.g. ``"calc.results['unseen_elements'] lists them"``) instead of
    :data:`~cgcnn_ase.errors.UNSEEN_HINT`, for front ends whose users hold no ``PredictionResult``; each
    names the user's line that led here (:func:`user_stacklevel`)."""
    stacklevel = user_stacklevel()
    for caught_warning in caught:
        message = str(caught_warning.message)
        if issubclass(caught_warning.category, UnseenElementWarning):
            message = message.replace(UNSEEN_HINT, unseen_place)
        warnings.warn(message, caught_warning.category, stacklevel=stacklevel)

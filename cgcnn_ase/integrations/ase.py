"""CGCNNCalculator: a thin ASE adapter over :class:`~cgcnn_ase.inference.predictor.CGCNNPredictor`.

>>> atoms.calc = CGCNNCalculator("formation_energy")                 # doctest: +SKIP
>>> atoms.get_potential_energy()          # eV: (eV/atom prediction) x number of atoms
>>> atoms.calc.get_property("formation_energy", atoms)   # eV/atom

**``energy`` is not a total energy.** It is the predicted *formation energy* per atom times the
number of atoms (eV): fine for comparing compositions and polymorphs, meaningless as a potential
energy surface. CGCNN predicts properties of a crystal, not forces or stress; asking for them
raises ``PropertyNotImplementedError`` with that explanation. For relaxations and molecular
dynamics use a machine-learning force field (CHGNet, MACE, M3GNet, ...) or DFT.

Results are computed for every configured model in one pass per structure state and
cached until the structure changes (ASE's ``check_state``: positions, numbers, cell, pbc, initial magnetic
moments and charges).

Property names:

- each model's own property (``formation_energy`` in eV/atom, ``band_gap`` in eV,
  ``is_metal`` as P(metal), ``log10_bulk_modulus`` in log10(GPa), ...), through
  ``calc.get_property(name, atoms)``;
- ``energy``, ``free_energy`` (eV, per-atom value x N) and ``energies`` (eV per atom,
  summing to ``energy``) for the first energy model (units ``eV/atom``);
- ``fermi_level`` (eV) for a Fermi-energy model;
- moduli also in GPa, as the CLI's table gives them: ``bulk_modulus`` = 10 ** ``log10_bulk_modulus``,
  ``bulk_modulus_std`` = ln(10) x ``bulk_modulus`` x ``log10_bulk_modulus_std`` (first order) and, with
  ``coverage``, ``bulk_modulus_lower``/``_upper`` = 10 ** the log10 bounds;
- with a band-gap model *and* a metal classifier: ``band_gap`` is 0 for predicted metals
  (P(metal) > ``metal_threshold``, default 0.5), ``band_gap_raw`` the regression output, ``metal_probability`` P(metal) (``metal_probability_std`` its spread);
- for an ensemble model, ``<property>_std``: the (calibrated) standard deviation of the
  members' predictions, in the property's own units (``log10_bulk_modulus_std`` in
  log10(GPa); ``band_gap_std`` is that of the regression output, NaN where the gate sets the gap to 0;
  ``is_metal_std`` of the members' probabilities); the property itself is the members' mean;
- for a calibrated ensemble with an error model, ``<property>_uncertainty``: a per-crystal estimate of
  the prediction's error (a standard deviation in the property's units, GPa ones propagated as the std;
  NaN for a gated band gap's metal; it ranks errors better than the std, docs/uncertainty.md);
- for a model shipping a domain summary, ``<property>_domain_percentile`` (percent, 0-100;
  near 100: the crystal lies outside the model's training domain; see docs/uncertainty.md).

Two models of one property (``perovskite_formation_energy`` and ``perovskite_site_energy`` both predict
``perovskite_formation_energy``) keep their results apart under the model's name:
``"perovskite_site_energy-castelli_cmr-v1:perovskite_formation_energy"`` and its ``_std``, ... (the
featurizer's labels and the CLI's columns tell them apart alike); one model given twice is refused.

Forces and stress are not predicted: asking raises ``PropertyNotImplementedError`` (see above).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from cgcnn_ase.errors import user_stacklevel
from cgcnn_ase.inference.predictor import CGCNNPredictor, as_predictor, check_interval_models
from cgcnn_ase.inference.properties import (
    check_metal_threshold,
    gated_band_gap_result,
    gated_spread,
    gpa_spread,
    physical_values,
    with_metal_classifier,
)
from cgcnn_ase.inference.results import reissue_warnings, unseen_cell, unseen_labels
from cgcnn_ase.warning_blocks import catch_warnings

#: Standard ASE property names this calculator can fill (everything else is custom).
STANDARD_PROPERTIES = ("energy", "free_energy", "energies", "fermi_level")
#: ASE properties a potential would give and CGCNN does not.
_NOT_PREDICTED = ("forces", "stress", "stresses", "dipole", "charges", "magmom", "magmoms")
#: Results that are text, not numbers: in ``calc.results`` and ``get_property``, but not in
#: ``implemented_properties``, whose every name ASE's mixing calculators (``SumCalculator``,
#: ``AverageCalculator``) add up across their calculators.
_TEXT_RESULTS = ("unseen_elements",)
#: Endings of the results that describe a value's doubt: served like the text results and left out of
#: ``implemented_properties`` too, since ASE's ``SumCalculator`` would add them (round 25b: two calculators'
#: stds summed linearly, domain percentiles to 33 "percent" from 16.5 each).
_SPREAD_ENDINGS = ("_std", "_uncertainty", "_domain_percentile", "_lower", "_upper")


def _is_listed(name: str) -> bool:
    """Whether a result name belongs in ``implemented_properties`` (a value that combines across calculators)."""
    return name not in _TEXT_RESULTS and not name.endswith(_SPREAD_ENDINGS)


def _warning_key(warning: warnings.WarningMessage) -> tuple[type, str]:
    """A warning's category and message with its numbers blanked (not a formula's: Fe2O3 and Fe3O4 stay apart,
    round 27): a volume scan's close-atoms warnings differ only in the distance, and each would otherwise be given
    again (round 25b)."""
    return warning.category, re.sub(r"(?<![A-Za-z\d])\d+(?:\.\d+)?(?:e-?\d+)?", "#", str(warning.message))


class CGCNNCalculator(Calculator):
    """ASE calculator predicting crystal properties with one or several CGCNN models.

    Args:
        models: a shipped model name (``"formation_energy"``), a model folder path, a
            :class:`CGCNNPredictor`, or a sequence of them. Asking for a band-gap model trained
            on non-metals only (the shipped ``band_gap``, the authors' checkpoint) adds the shipped
            ``is_metal`` classifier for gating; a band-gap model of one's own is gated when
            ``is_metal`` is given with it.
        device: torch device for the models.
        members: for the models given by name or folder that are ensembles, how many members to run
            (``None``: all; ``1``: the first alone, about 3x faster, without ``_std``); one number for all,
            or one per model (``None`` for a model run whole). A :class:`CGCNNPredictor` given as a model
            runs as it was loaded.
        store_in_info: also write each result to ``atoms.info["cgcnn_<name>"]`` (and
            per-atom contributions to ``atoms.arrays["cgcnn_energies"]``) so predictions
            survive writing to extxyz (``.traj`` keeps ``info`` only, ``ase.db`` neither). A calculation
            that fails removes the values this calculator wrote into that ``Atoms`` before.
        on_sparse: policy for atoms with fewer than 12 neighbours (``"warn"``,
            ``"error"``, ``"ignore"``).
        metal_threshold: P(metal) above which the gated ``band_gap`` is 0.
        coverage: also give ``<property>_lower`` and ``<property>_upper``, a prediction interval
            holding the true value with this probability (e.g. 0.9), for every regression model
            (the shipped regression ensembles are calibrated for them; see docs/uncertainty.md). A
            regression model without intervals (a single network, an ensemble loaded with
            ``members=``) is refused with the reason; the ``is_metal`` classifier gives none.
        atom_init: the element table of an original ``.pth.tar`` checkpoint among ``models`` (see
            :meth:`CGCNNPredictor.from_checkpoint`; ``todict()`` records it).

    The four settings above can be changed later with ``calc.set(coverage=0.8)`` (checked, and the
    results computed with the old settings are dropped); ``calc.todict()`` lists the models (a shipped one by its
    versioned name), the device, ``members`` where a model runs part of its ensemble, an original checkpoint's
    ``atom_init``, and the settings not at their defaults, as
    ASE's other calculators do: ``CGCNNCalculator(**calc.todict())`` builds the same calculator.

    Every calculation also gives ``unseen_elements``: ``None``, or the elements of the crystal that a
    model never saw in training (its prediction is then an extrapolation, and an
    :class:`~cgcnn_ase.errors.UnseenElementWarning` says so, once per calculator and message), written as
    ``cgcnn-ase predict`` writes them (``"Ar"`` with one model, ``"Ar (formation_energy, band_gap)"`` with
    several). It is text: ``calc.results`` and ``get_property`` give it, ``implemented_properties`` does not
    list it. Nor does it list the spreads, percentiles and interval bounds (``_std``, ``_uncertainty``,
    ``_domain_percentile``, ``_lower``, ``_upper``), which ``get_property`` and ``calc.results`` give as well:
    ASE's mixing calculators (``SumCalculator``, ``AverageCalculator``) add up every listed property, and a sum
    of standard deviations or percentiles means nothing. ``calc.result_names`` lists every name, ``calc.units``
    their units.
    """

    implemented_properties: list[str] = []  # set per instance from the models
    #: the settings ``calc.set(...)`` changes (ASE's ``parameters``; ``todict()`` lists those not at
    #: their default, with the models and the device, which are fixed when the calculator is built).
    default_parameters: ClassVar[dict[str, Any]] = {
        "store_in_info": False, "on_sparse": "warn", "metal_threshold": 0.5, "coverage": None,
    }  # fmt: skip

    def __init__(
        self,
        models: str | os.PathLike | CGCNNPredictor | Sequence[str | os.PathLike | CGCNNPredictor] = "formation_energy",
        *,
        device: str | None = None,
        members: int | Sequence[int | None] | None = None,
        store_in_info: bool = False,
        on_sparse: str = "warn",
        metal_threshold: float = 0.5,
        coverage: float | None = None,
        atom_init: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # ASE's own arguments (label, directory, atoms); others are refused by set()
        items = [models] if isinstance(models, (str, os.PathLike, CGCNNPredictor)) else list(models)
        if not items:
            raise ValueError("CGCNNCalculator needs at least one model")
        counts = _members_per_model(members, len(items))
        given = [as_predictor(m, device=device, members=k, atom_init=atom_init if _is_file(m) else None)
                 for m, k in zip(items, counts)]  # fmt: skip
        self.predictors = with_metal_classifier(given, device)
        self._warned: set[tuple[type, str]] = set()  # warnings given already (_warning_key): each once per calculator
        self._stored: set[str] = set()  # the atoms.info / atoms.arrays keys store_in_info has written
        keys = [(p.model.spec.name, p.property_name) for p in self.predictors]
        twice = sorted({name for name, prop in keys if keys.count((name, prop)) > 1})
        if twice:  # their results could not be told apart
            raise ValueError(f"model {', '.join(twice)} is given twice (or two models share its name and property); "
                             "give each model once")  # fmt: skip
        properties = [p.property_name for p in self.predictors]
        #: the result-name prefix of each predictor: its model's name where two models predict one property
        #: (as the featurizer's labels and the CLI's columns tell them apart), else nothing
        self._prefixes = [f"{p.model.spec.name}:" if properties.count(p.property_name) > 1 else "" for p in self.predictors]
        energy_models = [p for p in self.predictors if p.units == "eV/atom"]
        self._energy_model = energy_models[0] if energy_models else None
        if len(energy_models) > 1:  # round 30b: energy was -17.97 or -0.25 eV for SrTiO3 by the order of the list
            others = ", ".join(repr(p.model.spec.name) for p in energy_models[1:])
            warnings.warn(f"energy, free_energy and energies come from {energy_models[0].model.spec.name!r}, the "
                          f"first eV/atom model given; {others} stay under their own names (they may be on another "
                          "energy scale: docs/units.md); list first the model whose energy you want",
                          UserWarning, stacklevel=user_stacklevel())  # fmt: skip
        # what loads each model again: a predictor's source (a copy's folder, not its name), a shipped model's versioned
        # name (round 32b: an alias may name a newer model later), a path as given; and an original checkpoint's table
        self.parameters["models"] = [(m.model.source or m.model.spec.name) if isinstance(m, CGCNNPredictor)
                                     else os.fspath(m) if _is_file(m) or os.path.isdir(m) else p.model.spec.name
                                     for m, p in zip(items, given)]  # fmt: skip
        tables = {p.model.spec.metadata.get("atom_init") for p in given} - {None}
        if len(tables) == 1:  # round 32b: CGCNNCalculator(**calc.todict()) of an original checkpoint lacked it
            self.parameters["atom_init"] = tables.pop()
        self.parameters["device"] = str(self.predictors[0].device)
        run = [p.model.n_members if p.model.members_in_folder > p.model.n_members else None for p in given]
        if any(k is not None for k in run):  # todict() rebuilds the calculator that ran (ase.db stores it)
            self.parameters["members"] = run[0] if len(set(run)) == 1 else run
        self.set(store_in_info=store_in_info, on_sparse=on_sparse, metal_threshold=metal_threshold, coverage=coverage)

    def set(self, **kwargs: Any) -> dict[str, Any]:
        """Change settings (``store_in_info``, ``on_sparse``, ``metal_threshold``, ``coverage``),
        as ASE's ``calc.set(...)``: each is checked, results computed with other settings are
        dropped, and the changed ones are returned. The models and the device are fixed: build a
        new calculator for others."""
        if {"models", "device", "members", "atom_init"} & set(kwargs):
            raise TypeError("the models, their members and the device are fixed when a CGCNNCalculator is built; "
                            "build a new one")  # fmt: skip
        unknown = sorted(set(kwargs) - set(self.default_parameters))
        if unknown:
            raise TypeError(f"CGCNNCalculator has no setting {', '.join(map(repr, unknown))}; its settings are "
                            f"{', '.join(self.default_parameters)} (and the models, members= and device, given when it is "
                            "built)")  # fmt: skip
        if not hasattr(self, "predictors"):  # ASE's __init__ calls set() before the models are loaded
            return {}
        settings = {**{k: self.parameters.get(k, v) for k, v in self.default_parameters.items()}, **kwargs}
        self._check_settings(**settings)
        changed = super().set(**kwargs)
        if changed:
            self.reset()
        #: every result name a calculation gives with these settings; ``implemented_properties`` the values among
        #: them (see the class)
        self.result_names = self._property_names()
        self.implemented_properties = [n for n in self.result_names if _is_listed(n)]
        return changed

    def _check_settings(self, *, store_in_info: Any, on_sparse: Any, metal_threshold: Any, coverage: Any) -> None:
        """Refuse settings that would fail, or silently do nothing, at the first calculation."""
        if not isinstance(store_in_info, (bool, np.bool_)):
            raise TypeError(f"store_in_info is True or False, got {store_in_info!r}")
        if on_sparse not in ("warn", "error", "ignore"):
            raise ValueError(f"on_sparse must be 'warn', 'error' or 'ignore', got {on_sparse!r}")
        check_metal_threshold(metal_threshold)
        check_interval_models(self.predictors, coverage)

    @property
    def store_in_info(self) -> bool:
        """Also write results to ``atoms.info`` / ``atoms.arrays`` (see the class)."""
        return bool(self.parameters["store_in_info"])

    @property
    def on_sparse(self) -> str:
        """Policy for atoms with fewer than 12 neighbours."""
        return str(self.parameters["on_sparse"])

    @property
    def metal_threshold(self) -> float:
        """P(metal) above which the gated ``band_gap`` is 0."""
        return float(self.parameters["metal_threshold"])

    @property
    def coverage(self) -> float | None:
        """Coverage of the prediction intervals, or ``None`` (no intervals)."""
        return self.parameters["coverage"]

    def _property_names(self) -> list[str]:
        """Every result name the models give with the current settings (``result_names``)."""
        self.units: dict[str, str] = {}
        names: list[str] = []
        for predictor, prefix in zip(self.predictors, self._prefixes):
            spec = predictor.model.spec
            prop = prefix + spec.property
            names.append(prop)
            self.units[prop] = spec.units
            if predictor.is_ensemble:
                names.append(f"{prop}_std")
                self.units[names[-1]] = spec.units
            if predictor.has_uncertainty:
                names.append(f"{prop}_uncertainty")
                self.units[names[-1]] = spec.units
            if predictor.has_domain:
                names.append(f"{prop}_domain_percentile")
                self.units[names[-1]] = "percent"
            if self.coverage is not None and predictor.has_intervals:
                for bound in ("lower", "upper"):
                    names.append(f"{prop}_{bound}")
                    self.units[names[-1]] = spec.units
            if spec.property.startswith("log10_") and spec.units == "log10(GPa)":  # also in GPa, as the CLI gives them
                gpa = prefix + spec.property.removeprefix("log10_")
                names.append(gpa)
                if predictor.is_ensemble:
                    names.append(f"{gpa}_std")
                if predictor.has_uncertainty:
                    names.append(f"{gpa}_uncertainty")
                if self.coverage is not None and predictor.has_intervals:
                    names += [f"{gpa}_lower", f"{gpa}_upper"]
                self.units.update({n: "GPa" for n in names if n.startswith(gpa)})
        if self._energy_model is not None:
            names += ["energy", "free_energy", "energies"]
            self.units.update(energy="eV", free_energy="eV", energies="eV")
        if "fermi_energy" in names:
            names.append("fermi_level")
            self.units["fermi_level"] = "eV"
        for gap in self._gated_band_gaps():
            names.append(f"{gap}_raw")
            self.units[f"{gap}_raw"] = "eV"
        if self._gated_band_gaps():
            names.append("metal_probability")
            self.units["metal_probability"] = "probability"
            if "is_metal_std" in names:  # the same spread under the same name as the probability it belongs to
                names.append("metal_probability_std")
                self.units["metal_probability_std"] = "probability"
        names.append("unseen_elements")
        self.units["unseen_elements"] = "element symbols"  # a text result (_TEXT_RESULTS), not listed
        return list(dict.fromkeys(names))

    def _gated_band_gaps(self) -> list[str]:
        """The result names of the band-gap models that the ``is_metal`` classifier gates (none without it)."""
        if not any(p.property_name == "is_metal" and not k for p, k in zip(self.predictors, self._prefixes)):
            return []
        return [k + p.property_name for p, k in zip(self.predictors, self._prefixes) if p.property_name == "band_gap"]

    def calculate(
        self, atoms: Any = None, properties: Sequence[str] | None = None, system_changes: Sequence[str] = all_changes
    ) -> None:
        """Run every model once on ``atoms`` and fill ``self.results`` with all properties."""
        if atoms is None and self.atoms is None:  # ASE's own calculators fail here with an AttributeError
            from ase.calculators.calculator import CalculatorError

            raise CalculatorError(
                "no structure to calculate: attach the calculator (atoms.calc = calc) and call "
                "atoms.get_potential_energy(), or pass the Atoms (calc.get_potential_energy(atoms))"
            )
        for name in properties or ():
            self._check_name(name)  # ASE passes what was asked; a name no model gives is refused with the reason
        if atoms is not None and not hasattr(atoms, "info"):  # round 32b: a pymatgen Structure ended in AttributeError
            raise TypeError(f"the calculator takes ase.Atoms, not {type(atoms).__name__}: convert it "
                            "(pymatgen.io.ase.AseAtomsAdaptor.get_atoms), or predict it with CGCNNPredictor, which "
                            "takes pymatgen structures as they are")  # fmt: skip
        if atoms is not None:  # a failed calculation must not leave the last crystal's values (round 25b)
            for key in self._stored & set(atoms.info):
                del atoms.info[key]
            if "cgcnn_energies" in self._stored:
                atoms.arrays.pop("cgcnn_energies", None)
        super().calculate(atoms, properties, system_changes)
        results: dict[str, Any] = {}
        n_atoms = len(self.atoms)
        outputs = []  # each model's result, for unseen_elements
        label = f"Atoms({self.atoms.get_chemical_formula()})"  # how messages name the crystal (not "input 0")
        raw: dict[str, float] = {}  # each model's value before clipping to the physical range
        for predictor, prefix in zip(self.predictors, self._prefixes):
            spec = predictor.model.spec
            prop = prefix + spec.property
            per_atom = predictor is self._energy_model
            coverage = self.coverage if predictor.has_intervals else None
            with catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = predictor.predict([(label, self.atoms)], per_atom=per_atom, on_sparse=self.on_sparse, coverage=coverage)
            new = [w for w in caught if _warning_key(w) not in self._warned]
            self._warned.update(map(_warning_key, new))  # a loop over crystals or volumes warns once each
            reissue_warnings(new, "calc.results['unseen_elements'] lists them")
            outputs.append(out)
            value = float(out.values[0])
            results[prop] = float(physical_values(spec.property, value))  # a gap >= 0, a Poisson ratio <= 0.5
            raw[prop] = value
            if out.std is not None:
                results[f"{prop}_std"] = float(out.std[0])
            if out.uncertainty is not None:
                results[f"{prop}_uncertainty"] = float(out.uncertainty[0])
            if out.domain_percentile is not None:
                results[f"{prop}_domain_percentile"] = float(out.domain_percentile[0])
            if out.lower is not None:
                results[f"{prop}_lower"] = float(out.lower[0])
                results[f"{prop}_upper"] = float(out.upper[0])
            if spec.property.startswith("log10_") and spec.units == "log10(GPa)":  # GPa, as the CLI's table
                gpa = prefix + spec.property.removeprefix("log10_")
                results[gpa] = 10.0**value
                if out.std is not None:  # first-order propagation, as inference.properties does
                    results[f"{gpa}_std"] = float(gpa_spread(value, out.std[0]))
                if out.uncertainty is not None:
                    results[f"{gpa}_uncertainty"] = float(gpa_spread(value, out.uncertainty[0]))
                if out.lower is not None:
                    results[f"{gpa}_lower"], results[f"{gpa}_upper"] = 10.0 ** float(out.lower[0]), 10.0 ** float(out.upper[0])
            if per_atom:
                results["energy"] = results["free_energy"] = value * n_atoms
                results["energies"] = np.asarray(out.per_atom[0], dtype=np.float64)
        results["unseen_elements"] = unseen_cell(unseen_labels(self.predictors), outputs, 0)
        if "fermi_energy" in results:
            results["fermi_level"] = results["fermi_energy"]
        for gap in self._gated_band_gaps():
            results["metal_probability"] = results["is_metal"]
            if "is_metal_std" in results:
                results["metal_probability_std"] = results["is_metal_std"]
            results[f"{gap}_raw"] = raw[gap]
            names = (f"{gap}_raw", f"{gap}_std", f"{gap}_lower", f"{gap}_upper")
            gated = gated_band_gap_result(*(results.get(n) for n in names), results["is_metal"], self.metal_threshold)
            names = (gap, *names[1:])
            results.update({n: float(v) for n, v in zip(names, gated) if v is not None})
            if f"{gap}_uncertainty" in results:
                results[f"{gap}_uncertainty"] = float(gated_spread(results[f"{gap}_uncertainty"], results["is_metal"],
                                                                   self.metal_threshold))  # fmt: skip
        self.results = results
        self._store(atoms)

    def _store(self, atoms: Any) -> None:
        """With ``store_in_info``, write the results into ``atoms.info["cgcnn_<name>"]`` (per-atom values into
        ``atoms.arrays["cgcnn_energies"]``). Called for every ``Atoms`` the results are handed to, also when ASE
        serves them from its cache (a frame identical to the one last calculated)."""
        if not self.store_in_info or atoms is None:
            return
        for name, value in self.results.items():
            if name == "energies":
                atoms.arrays["cgcnn_energies"] = value.copy()
                self._stored.add("cgcnn_energies")
            elif name == "unseen_elements" and value is None:
                atoms.info.pop("cgcnn_unseen_elements", None)  # file formats cannot hold None
            elif name not in ("energy", "free_energy"):
                atoms.info[f"cgcnn_{name}"] = value
                self._stored.add(f"cgcnn_{name}")

    def get_fermi_level(self) -> float:
        """The Fermi energy, eV, of the Fermi-energy model (ASE's DFT calculators' method, which
        ASE tools call) for the structure last calculated; the calculator must include that model."""
        if self.atoms is None:
            from ase.calculators.calculator import CalculatorError

            raise CalculatorError("get_fermi_level() reads the structure last calculated, and there is none yet: "
                                  "use calc.get_property('fermi_level', atoms), or calculate first")  # fmt: skip
        return self.get_property("fermi_level", self.atoms)

    def get_property(self, name: str, atoms: Any = None, allow_calculation: bool = True) -> Any:
        """ASE's ``get_property``; forces and stress are refused with what CGCNN predicts instead. The names
        outside ``implemented_properties`` (text, spreads, bounds: see the class) are served alike: ``None`` with
        ``allow_calculation=False`` when ``atoms`` differs from the crystal last calculated."""
        self._check_name(name)
        if not _is_listed(name):
            if self.atoms is None or self.check_state(atoms if atoms is not None else self.atoms):
                if not allow_calculation:
                    return None  # not the last crystal's value (round 25b: its unseen 'Am' was given for NaCl)
                self.get_property(self.implemented_properties[0], atoms, allow_calculation)
            value = self.results.get(name)
            self._store(atoms)
            return value
        value = super().get_property(name, atoms, allow_calculation)
        if value is not None:
            self._store(atoms)  # also when ASE served its cache (this frame equals the one last calculated)
        return value

    def _check_name(self, name: str) -> None:
        """Refuse a property no model gives: forces and stress with what CGCNN predicts instead, energy without
        an energy model, and any other name with the nearest ones."""
        if name in _NOT_PREDICTED and name not in self.result_names:
            raise PropertyNotImplementedError(
                f"CGCNNCalculator does not predict {name!r}: CGCNN predicts properties of a crystal "
                f"({', '.join(self.implemented_properties)}), not a potential energy surface, so it has no forces or "
                "stress (and 'energy' is the formation energy x N, not a total energy). For relaxations or dynamics "
                "use a machine-learning force field (e.g. CHGNet, MACE, M3GNet) or DFT."
            )
        if name in ("energy", "free_energy", "energies") and name not in self.result_names:
            raise PropertyNotImplementedError(
                f"CGCNNCalculator gives {name!r} only with a formation-energy model (eV/atom): its value x the number "
                f"of atoms; these models give {', '.join(self.implemented_properties)}. Add \"formation_energy\" to "
                "the models, or read a property with calc.get_property(NAME, atoms)."
            )
        if name not in self.result_names:
            import difflib

            close = difflib.get_close_matches(name, self.result_names, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "."
            raise PropertyNotImplementedError(
                f"CGCNNCalculator gives no property {name!r}{hint} These models give: {', '.join(self.result_names)}"
            )

    def export_properties(self) -> Any:
        """ASE ``Properties`` of the standard names only (custom names are not exportable)."""
        from ase.outputs import Properties

        return Properties({k: v for k, v in self.results.items() if k in STANDARD_PROPERTIES})


def _is_file(model: Any) -> bool:
    """Whether a model argument names a file (an original ``.pth.tar`` checkpoint, which takes ``atom_init``)."""
    return isinstance(model, (str, os.PathLike)) and os.path.isfile(model)


def _members_per_model(members: int | Sequence[int | None] | None, n_models: int) -> list[int | None]:
    """``members=`` of the calculator, one entry per model (a number applies to all)."""
    if members is None or isinstance(members, (int, np.integer)) and not isinstance(members, bool):
        return [members] * n_models
    if isinstance(members, Sequence) and not isinstance(members, str) and len(members) == n_models:
        return list(members)
    raise ValueError(f"members must be a whole number, None, or one of them per model ({n_models}); got {members!r}")

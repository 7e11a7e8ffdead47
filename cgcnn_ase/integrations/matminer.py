"""CGCNNFeaturizer: CGCNN predictions (and crystal embeddings) as matminer feature columns.

>>> from cgcnn_ase.integrations.matminer import CGCNNFeaturizer                     # doctest: +SKIP
>>> df = CGCNNFeaturizer(["formation_energy", "band_gap"]).featurize_dataframe(df, "structure")

``featurize_many`` / ``featurize_dataframe`` run the network in batches (one process by
default: the base class would otherwise pickle the models into a pool), honouring
matminer's per-row ``ignore_errors`` / ``return_errors``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from cgcnn_ase.errors import DuplicateIdsWarning, InvalidStructureError, MissingDependencyError
from cgcnn_ase.inference.predictor import CGCNNPredictor, as_predictor, check_interval_models, predict_many
from cgcnn_ase.inference.properties import (
    METAL_THRESHOLD,
    check_metal_threshold,
    gated_band_gap_result,
    gated_spread,
    physical_values,
    with_metal_classifier,
)
from cgcnn_ase.inference.results import reissue_warnings, unseen_cell, unseen_labels
from cgcnn_ase.models.folder import check_coverage
from cgcnn_ase.nn.threads import torch_threads
from cgcnn_ase.warning_blocks import catch_warnings

try:
    from matminer.featurizers.base import BaseFeaturizer
except ImportError:  # round 26a: a raw ModuleNotFoundError, and `cgcnn-ase featurize` called it an internal error
    raise MissingDependencyError("CGCNNFeaturizer needs matminer: pip install 'cgcnn-ase[matminer]' (or matminer)") from None

#: The label of the column that ``unseen_elements=True`` adds (the name ``cgcnn-ase predict`` gives it too).
UNSEEN_COLUMN = "unseen_elements"


#: Per thread: ``(id(featurizer), labels)`` of the frame a ``featurize_dataframe`` call is featurizing.
_ROWS = threading.local()


@contextlib.contextmanager
def _fork_safe_threads(owner_pid: int) -> Iterator[None]:
    """One torch CPU thread inside the block when this process is not the one that made the
    featurizer (a worker that a process pool forked): torch's thread pool does not survive
    ``fork``, and using more than one thread there hangs. The count is restored afterwards."""
    if os.getpid() == owner_pid:
        yield
        return
    with torch_threads(1):
        yield

#: BibTeX of the papers :meth:`CGCNNFeaturizer.citations` may name.
_CITATIONS = {
    "xie2018crystal": "@article{xie2018crystal, title={Crystal Graph Convolutional Neural Networks for an Accurate and "
    "Interpretable Prediction of Material Properties}, author={Xie, Tian and Grossman, Jeffrey C.}, "
    "journal={Physical Review Letters}, volume={120}, number={14}, pages={145301}, year={2018}, "
    "doi={10.1103/PhysRevLett.120.145301}}",
    "jain2013materials": "@article{jain2013materials, title={Commentary: The Materials Project: A materials genome "
    "approach to accelerating materials innovation}, author={Jain, Anubhav and Ong, Shyue Ping and Hautier, Geoffroy "
    "and Chen, Wei and Richards, William Davidson and Dacek, Stephen and Cholia, Shreyas and Gunter, Dan and "
    "Skinner, David and Ceder, Gerbrand and Persson, Kristin A.}, journal={APL Materials}, volume={1}, "
    "number={1}, pages={011002}, year={2013}, doi={10.1063/1.4812323}}",
    "dejong2015charting": "@article{dejong2015charting, title={Charting the complete elastic properties of inorganic "
    "crystalline compounds}, author={de Jong, Maarten and others}, journal={Scientific Data}, volume={2}, "
    "pages={150009}, year={2015}, doi={10.1038/sdata.2015.9}}",
    "castelli2012computational": "@article{castelli2012computational, title={Computational screening of perovskite "
    "metal oxides for optimal solar light capture}, author={Castelli, Ivano E. and others}, journal={Energy & "
    "Environmental Science}, volume={5}, pages={5814--5819}, year={2012}, doi={10.1039/C1EE02717D}}",
}


class CGCNNFeaturizer(BaseFeaturizer):
    """Predict CGCNN properties of ``Structure`` / ``Atoms`` entries as features.

    Args:
        properties: shipped model names (``"formation_energy"``, ...), model folder
            paths or :class:`CGCNNPredictor` objects; one feature column each, labelled
            ``"<property> (<units>)"``. An ensemble model adds a column
            ``"<property>_std (<units>)"`` right after it: the (calibrated) standard
            deviation of its members (the value column is their mean).
        embeddings: also add each model's crystal feature vector (the mean-pooled atom
            features after the convolutions; member 0's for an ensemble) as columns
            ``"<property> embedding <k>"``.
        domain: also add ``"<property>_domain_percentile (percent)"`` (as ``cgcnn-ase predict`` names it) for
            models that ship a domain summary (0-100; near 100: outside the training domain).
        uncertainty: also add ``"<property>_uncertainty (<units>)"`` after the std for the calibrated
            ensembles that carry an error model: a per-crystal estimate of the error (a standard
            deviation; it ranks errors better than the std, docs/uncertainty.md); NaN for a gated
            band gap's metals, as its std.
        batch_size: structures per forward pass (``None``: the predictor's default, 64 on a CPU and
            1024 on a GPU).
        device: torch device (``None``: CUDA if available).
        metal_threshold: with both a band-gap model and an ``is_metal`` model (asking for any
            band-gap model, the authors' checkpoint too, adds the shipped ``is_metal``, as the ASE
            calculator does),
            ``"band_gap (eV)"`` is gated: 0 where P(metal) > ``metal_threshold``
            (:func:`cgcnn_ase.inference.properties.gated_band_gap_result`: its std NaN and its
            interval bounds 0 there too); the regression value stays in ``"band_gap_raw (eV)"``.
            ``None`` turns gating off.
        coverage: also add ``"<property>_lower (<units>)"`` and ``"<property>_upper (<units>)"``,
            a prediction interval holding the true value with this probability, for every
            regression model (the shipped regression ensembles are calibrated for them; one that
            cannot give them, such as a single network, is refused with the reason when the
            models load). The ``is_metal`` classifier gives none.
        unseen_elements: also add a last column ``"unseen_elements"`` (text, not a number):
            ``None``, or the elements of the structure that a model never saw in training (its
            prediction there is an extrapolation), as the ASE calculator writes them: ``"Ar"`` with
            one model, ``"Ar (log10_bulk_modulus, log10_shear_modulus)"`` with several (each model's
            property, as this featurizer's columns name them; the CLI's columns say ``bulk_modulus``). Either way such
            structures raise one :class:`~cgcnn_ase.errors.UnseenElementWarning` per model and call.

    Runs in one process (``n_jobs=1``) and batches the network. Inside matminer's process
    pools (``MultipleFeaturizer`` runs one by default, with one process per CPU, whatever its
    featurizers' ``n_jobs``) it still works: a worker forked from a process where torch has
    run uses one torch thread, since torch's thread pool does not survive ``fork`` (more
    threads hang there). Pools are slow for this featurizer, which reloads its models in each
    worker and cannot batch: call ``MultipleFeaturizer(...).set_n_jobs(1)``.
    """

    def __init__(
        self,
        properties: str | CGCNNPredictor | Sequence[str | CGCNNPredictor] = ("formation_energy",),
        embeddings: bool = False,
        batch_size: int | None = None,
        device: str | None = None,
        domain: bool = False,
        metal_threshold: float | None = METAL_THRESHOLD,
        coverage: float | None = None,
        unseen_elements: bool = False,
        uncertainty: bool = False,
    ) -> None:
        self.properties = properties
        self.unseen_elements = unseen_elements
        self.metal_threshold = None if metal_threshold is None else check_metal_threshold(metal_threshold)
        self.coverage = None if coverage is None else check_coverage(coverage)
        self._owner_pid = os.getpid()
        self.embeddings = embeddings
        self.domain = domain
        self.uncertainty = uncertainty
        self.batch_size = batch_size
        self.device = device
        self._predictors: list[CGCNNPredictor] | None = None
        self._loaded_for: tuple[Any, ...] | None = None  # the settings the models were loaded for
        self.set_n_jobs(1)

    # -- set-up ----------------------------------------------------------------------
    def _model_settings(self) -> tuple[Any, ...]:
        """What the loaded models depend on: ``properties`` (each item, as given), ``device``, ``metal_threshold``
        and ``coverage``."""
        single = isinstance(self.properties, (str, os.PathLike, CGCNNPredictor))
        items = (self.properties,) if single else tuple(self.properties)
        return items, self.device, self.metal_threshold, self.coverage

    @property
    def predictors(self) -> list[CGCNNPredictor]:
        """The loaded models (loaded on first use, and again after ``set_params`` or an assignment changes what
        they depend on: round 23a, a Pipeline's ``set_params(f__properties=...)`` kept the old models)."""
        settings = self._model_settings()
        if self._predictors is None or getattr(self, "_loaded_for", None) != settings:
            items = list(settings[0])
            with _fork_safe_threads(self._owner_pid):
                predictors = [as_predictor(item, device=self.device) for item in items]
                if self.metal_threshold is not None:  # the shipped classifier gates those trained on non-metals
                    predictors = with_metal_classifier(predictors, self.device)
            check_interval_models(predictors, self.coverage)
            self._predictors, self._loaded_for = predictors, settings
        return self._predictors

    def _gating(self) -> tuple[int, int] | None:
        """Positions of the band-gap and metal-classifier models when the band gap is gated, else ``None``."""
        names = [p.property_name for p in self.predictors]
        gated = [k for k, p in enumerate(self.predictors) if p.property_name == "band_gap"]
        if self.metal_threshold is None or not gated or "is_metal" not in names:
            return None
        return gated[0], names.index("is_metal")

    def fit(self, X: Any, y: Any = None, **fit_kwargs: Any) -> CGCNNFeaturizer:
        """No-op: the models are pretrained."""
        return self

    def __getstate__(self) -> dict[str, Any]:  # models reload lazily after pickling/cloning
        return {**self.__dict__, "_predictors": None, "_loaded_for": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # A pool worker forked from the featurizer's process keeps that process as owner (one torch thread there);
        # anywhere else (a pickle or joblib file loaded by a new process, round 29c) this process owns it
        if state.get("_owner_pid") != os.getppid():
            self._owner_pid = os.getpid()

    # -- matminer API ----------------------------------------------------------------
    def feature_labels(self) -> list[str]:
        """One label per feature column. When models predict the same property (two perovskite models,
        or one's own model beside a shipped one), every label starts with its model's name, as in
        ``cgcnn-ase predict``'s columns: e.g. ``"perovskite_site_energy-castelli_cmr-v1:
        perovskite_formation_energy (eV/atom)"``."""
        labels = []
        properties = [p.model.spec.property for p in self.predictors]
        collide = len(set(properties)) < len(properties)
        gating = self._gating()
        for k, p in enumerate(self.predictors):
            spec = p.model.spec
            name = f"{spec.name}: {spec.property}" if collide else spec.property
            labels.append(f"{name} ({spec.units})")
            if p.is_ensemble:
                labels.append(f"{name}_std ({spec.units})")
            if self.uncertainty and p.has_uncertainty:
                labels.append(f"{name}_uncertainty ({spec.units})")
            if gating is not None and k == gating[0]:
                labels.append(f"{name}_raw ({spec.units})")
            if self.coverage is not None and p.has_intervals:
                labels += [f"{name}_lower ({spec.units})", f"{name}_upper ({spec.units})"]
            if self.domain and p.has_domain:
                labels.append(f"{name}_domain_percentile (percent)")
            if self.embeddings:
                width = spec.architecture.get("atom_fea_len", 64)
                labels += [f"{name} embedding {k}" for k in range(width)]
        if self.unseen_elements:
            labels.append(UNSEEN_COLUMN)
        return labels

    def featurize(self, structure: Any) -> list[float]:
        """Features of one structure (prefer ``featurize_many``/``featurize_dataframe``: batched)."""
        return self._featurize_batch([structure], raise_errors=True)[0][0]

    def featurize_dataframe(self, df: Any, col_id: Any, *args: Any, **kwargs: Any) -> Any:
        """matminer's ``featurize_dataframe``; warnings name each row by the frame's index (unless that is the
        default 0..n-1, whose ``input k`` already names the row)."""
        import pandas as pd

        index = df.index
        plain = isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1
        previous = getattr(_ROWS, "labels", None)
        _ROWS.labels = None if plain else (id(self), [str(i) for i in index])
        try:
            return super().featurize_dataframe(df, col_id, *args, **kwargs)
        finally:
            _ROWS.labels = previous

    def featurize_many(
        self, entries: Any, ignore_errors: bool = False, return_errors: bool = False, pbar: bool | dict = True,
        labels: Sequence[str] | None = None,
    ) -> list[list[Any]]:
        """Featurize many structures in batches; per-row error handling as in matminer. ``entries``: a list, tuple,
        array or pandas Series of structures, or a one-column DataFrame (its rows, as matminer takes them).
        ``pbar``: a bar (from 100 entries on: not for single rows), or matminer's dict of tqdm options, of which
        ``disable`` is honoured. ``labels`` (one per entry; this package's addition) name the rows in warnings and
        messages instead of ``input k``."""
        if return_errors and not ignore_errors:
            raise ValueError("Please set ignore_errors to True to use return_errors.")
        if type(entries).__name__ == "DataFrame" and type(entries).__module__.startswith("pandas."):
            if entries.shape[1] != 1:  # round 29c: the column names were read as the entries (one row of NaN)
                raise ValueError(f"CGCNNFeaturizer takes one structure per entry; the DataFrame has {entries.shape[1]} "
                                 "columns: give its structure column")  # fmt: skip
            entries = entries.iloc[:, 0]
        if isinstance(pbar, dict):  # matminer's tqdm options
            pbar = not pbar.get("disable", False)
        structures = [e[0] if isinstance(e, (tuple, list, np.ndarray)) and len(e) == 1 else e for e in list(entries)]
        if not structures:
            return []
        owner, frame_labels = getattr(_ROWS, "labels", None) or (None, None)
        if labels is None and owner == id(self) and frame_labels is not None and len(frame_labels) == len(structures):
            labels = frame_labels
        if labels is not None:
            if len(labels) != len(structures):
                raise ValueError(f"labels: {len(labels)} for {len(structures)} entries")
            structures = [(str(label), item) for label, item in zip(labels, structures)]
        rows, errors = self._featurize_batch(structures, raise_errors=not ignore_errors, progress=bool(pbar),
                                             labels=None if labels is None else [str(label) for label in labels])
        if return_errors:
            return [row + [err if err is not None else float("nan")] for row, err in zip(rows, errors)]
        return rows

    def _featurize_batch(
        self, structures: list[Any], *, raise_errors: bool, progress: bool = False, labels: list[str] | None = None
    ) -> tuple[list[list[Any]], list[str | None]]:
        """Rows of features (NaN for failed rows) and per-row error messages. A row is one structure: a
        file or CIF text holding several (frames, data blocks) is that row's error. ``labels``: the rows'
        labels, when ``structures`` are ``(label, structure)`` pairs."""
        inputs, several = self._one_structure_each(structures, raise_errors)
        kept = [k for k in range(len(inputs)) if k not in several]
        rows, errors = self._feature_rows([inputs[k] for k in kept], raise_errors=raise_errors, progress=progress,
                                          labels=None if labels is None else [labels[k] for k in kept])  # fmt: skip
        width = len(self.feature_labels())
        out_rows: list[list[Any]] = [[float("nan")] * (width - 1) + [None] if self.unseen_elements
                                     else [float("nan")] * width for _ in inputs]  # fmt: skip
        out_errors: list[str | None] = [several.get(k) for k in range(len(inputs))]
        for k, row, message in zip(kept, rows, errors):
            out_rows[k], out_errors[k] = row, message
        return out_rows, out_errors

    def _one_structure_each(self, structures: list[Any], raise_errors: bool) -> tuple[list[Any], dict[int, str]]:
        """Paths and text read here, so that each row is one structure: ``(inputs, several)`` with the records
        read (other inputs as given; those that cannot be read are left to the prediction, which reports
        them) and the messages of the rows holding several structures (raised with ``raise_errors``)."""
        from cgcnn_ase.inference.streaming import cif_reader_for
        from cgcnn_ase.io.reader import input_kind, is_labelled_pair, labelled_pair, read_input, read_record

        reader = cif_reader_for(self.predictors)
        inputs, several = list(structures), {}
        for k, item in enumerate(inputs):
            label, obj = labelled_pair(item) if is_labelled_pair(item) else (None, item)
            if not isinstance(obj, (str, os.PathLike)):
                continue
            read = read_input(k, item, cif_reader=reader)  # labelled as the prediction labels it
            if len(read) == 1:
                if not isinstance(read[0][1], InvalidStructureError):
                    inputs[k] = read[0][1]
                continue  # an error: the prediction reports it, as for any input
            name = label or (None if input_kind(obj) == "path" else f"input {k}")
            try:  # its error: the message for a row of several structures
                read_record(obj, name, cif_reader=reader)
            except InvalidStructureError as exc:
                if raise_errors:
                    raise
                # the row names itself, as in the other messages (round 29c); a file's path stays
                several[k] = str(exc).removeprefix(f"{name}: ") if name else str(exc)
        return inputs, several

    def _feature_rows(
        self, structures: list[Any], *, raise_errors: bool, progress: bool, labels: list[str] | None = None
    ) -> tuple[list[list[Any]], list[str | None]]:
        """:meth:`_featurize_batch` for inputs of one structure each."""
        n = len(structures)
        columns: list[np.ndarray] = []
        errors: list[str | None] = [None] * n
        with _fork_safe_threads(self._owner_pid), catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = predict_many(  # each structure read once, its graph built once for every model
                self.predictors,
                structures,
                batch_size=self.batch_size,
                errors="raise" if raise_errors else "collect",  # raise: the specific exception, unchanged
                progress=progress and n >= 100,
                embeddings=self.embeddings,  # from the same graphs: no second read or graph build
                coverage=self.coverage,  # for the models calibrated for intervals
            )
        place = (f"the {UNSEEN_COLUMN} column lists them per structure" if self.unseen_elements
                 else "CGCNNFeaturizer(..., unseen_elements=True) adds a column listing them per structure")  # fmt: skip
        # rows are positional here: a repeated dataframe label mixes nothing
        reissue_warnings([w for w in caught if not issubclass(w.category, DuplicateIdsWarning)], place)
        gating = self._gating()
        for j, (predictor, result) in enumerate(zip(self.predictors, results)):
            for k, message in enumerate(result.errors):
                # the message sits in its row: a position ("input k", counted among the rows read here) would
                # name another row of a filtered or re-indexed frame, and a row's own label repeats it; a file's
                # path stays
                label = labels[k] if labels is not None else f"input {k}"
                errors[k] = errors[k] or (message and message.removeprefix(f"{label}: "))
            values, std, lower, upper = physical_values(predictor.property_name, result.values), result.std, result.lower, result.upper
            if gating is not None and j == gating[0]:
                values, std, lower, upper = gated_band_gap_result(result.values, std, lower, upper,
                                                                  results[gating[1]].values, self.metal_threshold)  # fmt: skip
            block = [values[:, None]]
            if predictor.is_ensemble:
                block.append(std[:, None])
            if self.uncertainty and predictor.has_uncertainty:
                spread = result.uncertainty
                if gating is not None and j == gating[0]:
                    spread = gated_spread(spread, results[gating[1]].values, self.metal_threshold)
                block.append(spread[:, None])
            if gating is not None and j == gating[0]:
                block.append(result.values[:, None])
            if lower is not None:
                block += [lower[:, None], upper[:, None]]
            if self.domain and predictor.has_domain:
                block.append(result.domain_percentile[:, None])
            if self.embeddings:
                block.append(result.embeddings)
            columns.append(np.hstack(block))
        rows = np.hstack(columns).tolist()
        if self.unseen_elements:
            labels = unseen_labels(self.predictors)
            for k, row in enumerate(rows):
                row.append(None if errors[k] else unseen_cell(labels, results, k))
        return rows, errors

    def citations(self) -> list[str]:
        """The CGCNN paper, and the papers of the data the chosen models were trained on, as their model.json
        names the dataset: the Materials Project (``mp_*``), de Jong's elastic set (``mp_elastic*``) and Castelli's
        perovskites; a model of unknown data adds none."""
        datasets = " ".join(str(p.model.spec.metadata.get("dataset", {}).get("name", "")).lower()
                            for p in self.predictors)  # fmt: skip
        wanted = ["xie2018crystal"]
        wanted += ["jain2013materials"] if "mp_" in datasets else []
        wanted += ["dejong2015charting"] if "elastic" in datasets else []
        wanted += ["castelli2012computational"] if "castelli" in datasets or "perovskite" in datasets else []
        return [_CITATIONS[key] for key in wanted]

    def implementors(self) -> list[str]:
        return ["cgcnn-ase developers"]


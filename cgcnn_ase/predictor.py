"""CGCNNPredictor: structures in, property values out, in batches.

>>> from cgcnn_ase import CGCNNPredictor
>>> predictor = CGCNNPredictor.from_pretrained("formation_energy")   # doctest: +SKIP
>>> predictor.predict(["POSCAR", atoms, structure]).values            # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal

import numpy as np
import torch

from cgcnn_ase.checkpoint import LoadedModel, load_checkpoint, load_model_folder
from cgcnn_ase.elements import ElementTable
from cgcnn_ase.errors import CGCNNError, InvalidStructureError, UnseenElementWarning, UnsupportedElementError
from cgcnn_ase.graph import CrystalGraph, SparsePolicy, build_graph, collate
from cgcnn_ase.model import segment_mean
from cgcnn_ase.pretrained import resolve_model
from cgcnn_ase.structures import iter_records

ErrorPolicy = Literal["raise", "collect"]


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
        unseen_elements: per structure, symbols of elements absent from the model's
            training data (empty when all were seen or the model does not record them).
        positive_class: the class whose probability ``values`` holds (classifiers).
    """

    ids: list[str]
    values: np.ndarray
    property: str
    units: str
    task: str
    errors: list[str | None]
    n_sparse: np.ndarray
    unseen_elements: list[list[str]] = field(default_factory=list)
    per_atom: list[np.ndarray] | None = None
    embeddings: np.ndarray | None = None
    positive_class: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of items that were predicted."""
        return np.array([e is None for e in self.errors], dtype=bool)

    def to_dataframe(self) -> "pandas.DataFrame":  # noqa: F821
        """One row per structure: ``id``, the property column, ``n_sparse``, ``unseen_elements``, ``error``.

        Units are in ``df.attrs["units"]`` (a dict column -> units).
        """
        import pandas as pd

        df = pd.DataFrame(
            {
                "id": self.ids,
                self.property: self.values,
                "n_sparse": self.n_sparse,
                "unseen_elements": [" ".join(u) for u in self.unseen_elements],
                "error": self.errors,
            }
        )
        df.attrs["units"] = {self.property: self.units}
        return df


class CGCNNPredictor:
    """Run a CGCNN model on crystals.

    Args:
        model: a loaded model (see :func:`cgcnn_ase.checkpoint.load_checkpoint`).
        device: torch device for inference (``"cpu"``, ``"cuda"``, ...); ``None`` picks
            CUDA when available.
    """

    def __init__(self, model: LoadedModel, *, device: str | torch.device | None = None) -> None:
        self.model = model
        self.device = torch.device(device) if device is not None else _default_device()
        self.model.network.to(self.device).eval()

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        atom_init: str | os.PathLike | ElementTable | None = None,
        trusted: bool = False,
        device: str | torch.device | None = None,
    ) -> CGCNNPredictor:
        """Load a model folder or an original CGCNN ``.pth.tar`` file.

        Args:
            path: model folder, or ``.pth.tar`` checkpoint of the original code.
            atom_init: element table for an original checkpoint (its ``atom_init.json``).
            trusted: allow unpickling code-bearing legacy files (see checkpoint docs).
            device: inference device.
        """
        return cls(load_checkpoint(path, atom_init=atom_init, trusted=trusted), device=device)

    @classmethod
    def from_pretrained(cls, name: str, *, device: str | torch.device | None = None) -> CGCNNPredictor:
        """Load a shipped model by name or alias (see ``cgcnn-ase models``)."""
        return cls(load_model_folder(resolve_model(name).path), device=device)

    # -- properties ---------------------------------------------------------------
    @property
    def property_name(self) -> str:
        """The predicted property, e.g. ``"formation_energy"``."""
        return self.model.spec.property

    @property
    def units(self) -> str:
        """Units of the predicted values, e.g. ``"eV/atom"``."""
        return self.model.spec.units

    # -- prediction ---------------------------------------------------------------
    def _graphs(
        self, structures: Any, errors: ErrorPolicy, on_sparse: SparsePolicy
    ) -> Iterator[tuple[str, CrystalGraph | CGCNNError]]:
        """Normalise inputs and build graphs lazily, yielding (label, graph or error)."""
        config = self.model.spec.graph
        # The original policy breaks neighbour ties in pymatgen's site order: read CIFs as it did.
        reader = "pymatgen" if config.neighbor_policy == "original" else "gemmi"
        for label, item in iter_records(structures, cif_reader=reader):
            try:
                if isinstance(item, CGCNNError):
                    raise item
                try:
                    self.model.elements.featurize(item.numbers)  # fails early on unsupported elements
                except UnsupportedElementError as exc:
                    raise UnsupportedElementError(f"{item.label}: {exc}") from None
                yield label, build_graph(item, config, on_sparse=on_sparse)
            except InvalidStructureError as exc:
                if errors == "raise":
                    raise
                yield label, exc

    @torch.no_grad()
    def _run(
        self, graphs: list[CrystalGraph], per_atom: bool, embeddings: bool = False
    ) -> tuple[np.ndarray, list[np.ndarray] | None, np.ndarray | None]:
        """Model outputs for one batch: values (len(graphs),) in model units, per-atom arrays, embeddings."""
        spec, network = self.model.spec, self.model.network
        batch = collate(graphs, self.model.elements, spec.graph).to(self.device)
        atoms = None
        if not per_atom:
            out = network(batch)
            values = out[:, 1].exp() if spec.task == "classification" else out
        elif spec.readout == "atomwise":  # one pass: the prediction is the mean of the atom outputs
            contributions = network.atom_contributions(batch)
            values = segment_mean(contributions, batch.crystal_index, batch.n_crystals)
        else:
            values, contributions = network.linear_attributions(batch)
        values = values.double().cpu().numpy()
        if spec.task == "regression":
            values = values * spec.normalizer_std + spec.normalizer_mean
        if per_atom:
            contributions = contributions.double().cpu().numpy()
            if spec.task == "regression":
                contributions = contributions * spec.normalizer_std + spec.normalizer_mean
            atoms = np.split(contributions, np.cumsum([g.n_atoms for g in graphs])[:-1])
        crystal = network.crystal_features(batch).double().cpu().numpy() if embeddings else None
        return values, atoms, crystal

    def predict(
        self,
        structures: Any,
        *,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        progress: bool | None = None,
        errors: ErrorPolicy = "raise",
        on_sparse: SparsePolicy = "warn",
        per_atom: bool = False,
        embeddings: bool = False,
    ) -> PredictionResult:
        """Predict the model's property for one or many structures.

        Args:
            structures: one ``ase.Atoms``, pymatgen ``Structure`` or file path, or an
                iterable of them (consumed lazily). A file with several frames gives one
                result per frame.
            batch_size: crystals per forward pass; results do not depend on it.
            device: override the predictor's device for this call.
            progress: show a progress bar on stderr; ``None`` shows one for 100+ inputs
                when stderr is a terminal.
            errors: ``"raise"`` stops at the first bad input; ``"collect"`` records the
                message in ``result.errors`` and leaves NaN in ``values`` for that item.
            on_sparse: policy for atoms with fewer than 12 neighbours within the cutoff
                (``"warn"``, ``"error"``, ``"ignore"``).
            per_atom: also return per-atom contributions, in the model's units; their mean
                over a structure's atoms equals its prediction. Atomwise-readout models give
                each atom's own output (exact, the paper's site energies); mean-pooled models
                give a first-order attribution around the pooled features (see
                :meth:`CrystalGraphConvNet.linear_attributions` and docs/per_atom.md).
            embeddings: also return the crystal feature vectors (as :meth:`embed`), from the
                same graphs, in ``result.embeddings``.

        Returns:
            A :class:`PredictionResult` in input order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if errors not in ("raise", "collect"):
            raise ValueError(f"errors must be 'raise' or 'collect', got {errors!r}")
        if device is not None and torch.device(device) != self.device:
            self.device = torch.device(device)
            self.model.network.to(self.device)
        total = len(structures) if isinstance(structures, (list, tuple)) else None
        from tqdm.auto import tqdm

        # tqdm's disable=None hides the bar when stderr is not a terminal
        disable = (not progress) if progress is not None else (None if (total or 0) >= 100 else True)
        ids: list[str] = []
        values: list[float] = []
        messages: list[str | None] = []
        n_sparse: list[int] = []
        unseen: list[list[str]] = []
        seen = self.model.spec.metadata.get("elements_seen")
        seen = frozenset(seen) if seen else None
        atoms: list[np.ndarray] = []
        emb_rows: list[np.ndarray] = []
        width = self.model.spec.architecture.get("atom_fea_len", 64)
        stream = self._graphs(structures, errors, on_sparse)
        with tqdm(total=total, disable=disable, unit="structure", leave=False) as bar:
            while chunk := list(islice(stream, batch_size)):
                good = [g for _, g in chunk if isinstance(g, CrystalGraph)]
                batch_values, batch_atoms, batch_emb = self._run(good, per_atom, embeddings) if good else (None, None, None)
                k = 0
                for label, item in chunk:
                    ids.append(label)
                    if isinstance(item, CrystalGraph):
                        values.append(float(batch_values[k]))
                        messages.append(None)
                        n_sparse.append(item.n_sparse)
                        unseen.append(self._unseen(item, seen))
                        if per_atom:
                            atoms.append(batch_atoms[k])
                        if embeddings:
                            emb_rows.append(batch_emb[k])
                        k += 1
                    else:
                        values.append(float("nan"))
                        messages.append(str(item))
                        n_sparse.append(-1)
                        unseen.append([])
                        if per_atom:
                            atoms.append(np.zeros(0))
                        if embeddings:
                            emb_rows.append(np.full(width, np.nan))
                bar.update(len(chunk))
        spec = self.model.spec
        return PredictionResult(
            ids=ids,
            values=np.asarray(values, dtype=np.float64),
            property=spec.property,
            units=spec.units,
            task=spec.task,
            errors=messages,
            n_sparse=np.asarray(n_sparse, dtype=np.int64),
            unseen_elements=unseen,
            per_atom=atoms if per_atom else None,
            embeddings=(np.array(emb_rows).reshape(-1, width) if embeddings else None),
            positive_class=spec.positive_class,
        )

    @staticmethod
    def _unseen(graph: CrystalGraph, seen: frozenset[int] | None) -> list[str]:
        """Symbols in ``graph`` outside the training elements ``seen``; warns when there are any."""
        if seen is None:
            return []
        from ase.data import chemical_symbols

        missing = sorted(set(graph.numbers.tolist()) - seen)
        if missing:
            symbols = [chemical_symbols[z] for z in missing]
            warnings.warn(
                f"{graph.label}: element(s) {', '.join(symbols)} did not occur in this model's training data; "
                "the prediction is an extrapolation",
                UnseenElementWarning,
                stacklevel=4,
            )
            return symbols
        return []

    @torch.inference_mode()
    def embed(self, structures: Any, *, batch_size: int = 64, on_sparse: SparsePolicy = "warn") -> np.ndarray:
        """Crystal feature vectors (the mean-pooled atom features after the convolutions).

        Returns:
            float32 array, shape (n, atom_fea_len), in input order. Bad inputs raise.
        """
        stream = (g for _, g in self._graphs(structures, "raise", on_sparse))
        rows = []
        while chunk := list(islice(stream, batch_size)):
            batch = collate(chunk, self.model.elements, self.model.spec.graph).to(self.device)
            rows.append(self.model.network.crystal_features(batch).cpu().numpy())
        width = self.model.spec.architecture.get("atom_fea_len", 64)
        return np.concatenate(rows) if rows else np.zeros((0, width), dtype=np.float32)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


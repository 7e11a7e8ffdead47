"""CGCNNPredictor: structures in, property values out, in batches.

>>> from cgcnn_ase import CGCNNPredictor
>>> predictor = CGCNNPredictor.from_pretrained("formation_energy")   # doctest: +SKIP
>>> predictor.predict(["POSCAR", atoms, structure]).values            # doctest: +SKIP
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cgcnn_ase.errors import (
    UNSEEN_HINT,
    CGCNNError,
    CheckpointError,
    DuplicateIdsWarning,
    InvalidStructureError,
    OutOfDomainWarning,
    UnseenElementWarning,
    user_stacklevel,
)
from cgcnn_ase.graph.batch import GraphBatch, collate
from cgcnn_ase.graph.batched import graph_batch
from cgcnn_ase.graph.config import SparsePolicy
from cgcnn_ase.graph.element_table import ElementTable
from cgcnn_ase.graph.neighbours import CrystalGraph
from cgcnn_ase.inference.parallel import NetworkPool, iter_graphs, predict_batches, shares_graphs
from cgcnn_ase.inference.results import PredictionResult, ResultRows
from cgcnn_ase.io.inputs import expand_inputs
from cgcnn_ase.io.reader import cif_reader_for_policy
from cgcnn_ase.models.folder import LoadedModel, check_coverage
from cgcnn_ase.models.local_error import K_TRAIN
from cgcnn_ase.models.registry import load_model, resolve_device
from cgcnn_ase.nn.inference import CompiledFunction, inference_network
from cgcnn_ase.nn.network import CrystalGraphConvNet
from cgcnn_ase.nn.ops import segment_mean
from cgcnn_ase.nn.stacked import StackedNetworks, can_stack
from cgcnn_ase.progress import progress_bar

ErrorPolicy = Literal["raise", "collect"]
GraphBackend = Literal["auto", "batched", "per-structure"]


#: Physical range of a property in its model units (interval bounds are clipped to it): a band gap is not
#: negative; Poisson's ratio of a stable isotropic solid lies in (-1, 0.5).
PHYSICAL_RANGE: dict[str, tuple[float, float]] = {"band_gap": (0.0, np.inf), "poisson_ratio": (-1.0, 0.5)}

#: Default crystals per forward pass on a CPU and on a GPU (see :meth:`CGCNNPredictor.default_batch_size`).
CPU_BATCH, GPU_BATCH = 64, 1024


#: The coverage at which a prediction interval holds every ensemble member's prediction (at least).
FLOOR_LEVEL = 0.95


class CGCNNPredictor:
    """Run a CGCNN model, or a deep ensemble of them, on crystals.

    An ensemble builds each batch's graphs once and runs every member on them; results
    carry the members' mean (``values``) and standard deviation (``std``). Loading with
    ``members=1`` runs member 0 alone, as fast as a single model.

    Args:
        model: a loaded model (see :func:`cgcnn_ase.models.registry.load_model`); to load
            one by name or path, use :meth:`load`.
        device: torch device for inference (``"cpu"``, ``"cuda"``, ...); ``None`` picks
            CUDA when available.

    Attributes:
        graph_backend: how graphs are built: ``"per-structure"`` (:func:`~cgcnn_ase.graph.neighbours.build_graph`,
            pymatgen's compiled cell list, one structure at a time: the fastest on a CPU),
            ``"batched"`` (:mod:`cgcnn_ase.graph.batched`: a whole batch at once, in torch, on the
            inference device) or ``"auto"`` (the default: batched on a GPU, per structure on the
            CPU). Both give the same edges; see docs/performance.md for the measurements.
        fast_network: run :func:`~cgcnn_ase.nn.inference.inference_network` copies of the networks
            (batch norms folded into the weights, the split product of training): the same maths
            with about 1e-6 (normalised units) of float32 rounding, faster. ``None`` (default): on for
            models with the ``symmetric`` neighbour policy (this project's, trained with the split
            product), off for the ``original`` one (the authors' checkpoints keep the reference arithmetic).
        compile: also ``torch.compile`` the fast networks' convolutions (one compilation, some
            seconds, on the first batch; worth it for tens of thousands of structures; falls back to
            eager with a :class:`~cgcnn_ase.errors.CompileWarning`).
        stack_members: run an ensemble's fast networks as one (:class:`~cgcnn_ase.nn.stacked.StackedNetworks`:
            shared products and gathers done once for every member; the same maths to float32
            rounding). ``None`` (default): whenever the fast networks run and the members allow it
            (gated convolutions); per-atom contributions always run member by member.
    """

    def __init__(self, model: LoadedModel, *, device: str | torch.device | None = None) -> None:
        if not isinstance(model, LoadedModel):  # CGCNNPredictor("formation_energy") failed with an AttributeError
            raise TypeError(f"CGCNNPredictor takes a loaded model, not {type(model).__name__}: use "
                            "CGCNNPredictor.from_pretrained(NAME) or CGCNNPredictor.load(NAME_OR_PATH)")  # fmt: skip
        self.model = model
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.graph_backend: GraphBackend = "auto"
        self.fast_network: bool | None = None
        self.compile = False
        self.stack_members: bool | None = None
        self._stacked_for: tuple[Any, StackedNetworks | None] | None = None
        self._features_on: tuple[torch.device, torch.Tensor] | None = None
        self._heads_for: tuple[Any, list[tuple[CrystalGraphConvNet, float, float]]] | None = None
        self._parameters_of: tuple[tuple[int, ...], list[torch.nn.Parameter]] | None = None

    # -- construction -------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        members: int | None = None,
        atom_init: str | os.PathLike | ElementTable | None = None,
        trusted: bool = False,
    ) -> CGCNNPredictor:
        """A predictor for a shipped model's name or alias, a model folder or an original
        ``.pth.tar`` file: :func:`cgcnn_ase.models.registry.load_model`, whose arguments these are."""
        return cls(
            load_model(model, device=device, members=members, atom_init=atom_init, trusted=trusted), device=device
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        atom_init: str | os.PathLike | ElementTable | None = None,
        trusted: bool = False,
        device: str | torch.device | None = None,
        members: int | None = None,
    ) -> CGCNNPredictor:
        """Load a model folder (single or ensemble) or an original CGCNN ``.pth.tar`` file.

        Args:
            path: model folder, or ``.pth.tar`` checkpoint of the original code (always a
                path: a missing one is reported, never looked up as a shipped name).
            atom_init: element table for an original checkpoint (its ``atom_init.json``).
            trusted: allow unpickling code-bearing legacy files (see :mod:`cgcnn_ase.models.legacy`).
            device: inference device.
            members: for an ensemble folder, the number of members to run (``None``: all;
                ``1``: member 0 alone, the fast single-model path, without ``std``).
        """
        return cls.load(Path(path), device=device, members=members, atom_init=atom_init, trusted=trusted)

    @classmethod
    def from_pretrained(
        cls, name: str | os.PathLike, *, device: str | torch.device | None = None, members: int | None = None
    ) -> CGCNNPredictor:
        """Load a shipped model by name or alias (see ``cgcnn-ase models``), or a model
        folder written by ``cgcnn-ase train`` (a path object, or a string naming an
        existing folder).

        ``members``: for an ensemble, how many members to run (``None``: all; ``1``: the
        fast single-model path).
        """
        if not isinstance(name, (str, os.PathLike)):
            raise TypeError(f"from_pretrained takes a model name or folder path, not {type(name).__name__}")
        return cls.load(name, device=device, members=members)

    def __repr__(self) -> str:
        members = f", {self.model.n_members} members" if self.model.is_ensemble else ""
        return f"CGCNNPredictor({self.model.spec.name!r}: {self.property_name} in {self.units}{members}, device={str(self.device)!r})"

    # -- properties ---------------------------------------------------------------
    @property
    def property_name(self) -> str:
        """The predicted property, e.g. ``"formation_energy"``."""
        return self.model.spec.property

    @property
    def units(self) -> str:
        """Units of the predicted values, e.g. ``"eV/atom"``."""
        return self.model.spec.units

    @property
    def is_ensemble(self) -> bool:
        """True when several members are averaged (results carry ``std``)."""
        return self.model.is_ensemble

    @property
    def has_intervals(self) -> bool:
        """True when ``predict(..., coverage=c)`` gives prediction intervals (a calibrated full ensemble)."""
        return self.model.interval_problem() is None

    @property
    def has_domain(self) -> bool:
        """True when the model ships a domain summary (results carry ``domain_percentile``)."""
        return self.model.domain is not None

    @property
    def has_uncertainty(self) -> bool:
        """True when results carry ``uncertainty``: a calibrated full ensemble (the calibration belongs
        to it alone) whose domain summary holds the error model (``cgcnn-ase calibrate`` fits it)."""
        domain = self.model.domain
        full = self.model.calibration is not None
        return self.model.is_ensemble and full and domain is not None and domain.error_model is not None

    # -- prediction ---------------------------------------------------------------
    def _graphs(
        self, structures: Any, errors: ErrorPolicy, on_sparse: SparsePolicy, workers: int = 1, read_only: bool = False
    ) -> Iterator[tuple[str, CrystalGraph | CGCNNError]]:
        """Normalise inputs and build graphs lazily (in ``workers`` processes when > 1), yielding
        ``(label, graph or error)`` in input order; with ``errors="raise"`` the first error is raised.
        ``read_only``: validated records instead of graphs."""
        config = self.model.spec.graph
        # The original policy breaks neighbour ties in pymatgen's site order: read CIFs as it did.
        reader = cif_reader_for_policy(config.neighbor_policy)
        graphs = iter_graphs(structures, config=config, elements=self.model.elements, cif_reader=reader,
                             on_sparse=on_sparse, workers=workers, read_only=read_only)  # fmt: skip
        for label, item in graphs:
            if errors == "raise" and isinstance(item, InvalidStructureError):
                raise item
            yield label, item

    @torch.no_grad()
    def _run(
        self, graphs: list[CrystalGraph], per_atom: bool, embeddings: bool = False
    ) -> tuple[np.ndarray, list[np.ndarray] | None, np.ndarray | None]:
        """Model outputs for one batch, from graphs collated once for every member.

        Returns:
            member values, shape (n_members, len(graphs)), in model units (probabilities
            for classifiers); per-atom arrays (mean over members) or ``None``; member 0's
            crystal features, shape (len(graphs), atom_fea_len), or ``None``; the domain
            signal (:meth:`_domain_rows`) or ``None``.
        """
        outputs = self._forward(self._collate(graphs), [g.n_atoms for g in graphs], per_atom, embeddings)
        return *outputs, self._domain_rows(outputs[0], outputs[2], [g.numbers for g in graphs])

    def _domain_rows(
        self, values: np.ndarray, crystal: np.ndarray | None, numbers: list[np.ndarray]
    ) -> np.ndarray | None:
        """The domain signal of one batch, shape (n, 3): ``domain_distance`` (standardised units),
        ``domain_percentile`` (percent) and the error model's ``uncertainty`` (model units; NaN where
        the model has none); ``None`` for a model without a domain summary.

        Computed with the batch (in a worker process when there are workers) from the member
        ``values`` (n_members, n), member 0's ``crystal`` features (n, width) and each crystal's
        atomic ``numbers``: the searches are row by row, so a crystal's signal does not depend on
        the others.
        """
        domain = self.model.domain
        if domain is None or crystal is None:
            return None
        from cgcnn_ase.models.domain import formula_size

        sizes = np.array([formula_size(z) for z in numbers], dtype=np.int64)
        error_model = domain.error_model if self.has_uncertainty else None
        # one search serves the domain distance (first column) and the error model's neighbours
        neighbours = domain.neighbours(crystal, K_TRAIN if error_model is not None else 1, device=self.device)
        out = np.full((len(numbers), 3), np.nan)
        out[:, 0] = neighbours[1][:, 0]
        out[:, 1] = domain.percentiles(out[:, 0], sizes)
        if error_model is not None:
            members = np.ascontiguousarray(values.T, dtype=np.float64)  # (n, n_members), as _result holds them
            x = error_model.features(domain, crystal, members.mean(axis=1), members.std(axis=1), numbers,
                                     device=self.device, train_neighbours=neighbours)  # fmt: skip
            out[:, 2] = error_model.uncertainty(x)
        return out

    def batched_graphs(self) -> bool:
        """Whether :meth:`predict` builds graphs with :mod:`cgcnn_ase.graph.batched` (see ``graph_backend``)."""
        if self.graph_backend not in ("auto", "batched", "per-structure"):
            raise ValueError(f"graph_backend must be 'auto', 'batched' or 'per-structure', got {self.graph_backend!r}")
        return self.graph_backend == "batched" or (self.graph_backend == "auto" and self.device.type == "cuda")

    def default_batch_size(self) -> int:
        """Crystals per forward pass when none is given: 64 on a CPU, 1024 on a GPU (1.8x the throughput of 256
        on an H200). On a CPU, since the convolutions work in cache-sized blocks of edges, 64 ran 2.5-9% faster
        than 32 for one network and 2.5-4% for the five stacked members in two runs of
        ``benchmarks/bench_cpu_pass.py`` (128: faster still for one network, not for the ensemble).
        Measured in docs/performance.md."""
        return CPU_BATCH if self.device.type == "cpu" else GPU_BATCH

    def element_features(self) -> torch.Tensor:
        """The element table as a tensor on the inference device, (max_Z + 1, n_features), float32."""
        if self._features_on is None or self._features_on[0] != self.device:
            table = torch.from_numpy(np.array(self.model.elements.features)).to(self.device)
            self._features_on = (self.device, table)
        return self._features_on[1]

    def uses_fast_network(self) -> bool:
        """Whether predictions run the fast copies of the networks (``fast_network``; by default for
        models with the ``symmetric`` neighbour policy, i.e. this project's own)."""
        if self.fast_network is None:
            return self.model.spec.graph.neighbor_policy == "symmetric"
        return bool(self.fast_network)

    def _collate(self, graphs: list[CrystalGraph]) -> GraphBatch:
        """One batch on the device: identical periodic-image edges merged into weighted ones (the same
        result, fewer edges) and, for the fast networks, one Gaussian expansion per distinct edge length
        (their edge products are computed once per length; the reference arithmetic keeps one row per edge)."""
        spec = self.model.spec
        batch = collate(graphs, self.model.elements, spec.graph, merge_edges=True,
                        distinct_distances=self.uses_fast_network())  # fmt: skip
        return batch.to(self.device)

    def heads(self) -> list[tuple[CrystalGraphConvNet, float, float]]:
        """``(network, normaliser mean, normaliser std)`` per member, as :meth:`_forward` runs them
        (the model's own networks, or their fast copies: see ``fast_network``)."""
        heads = self.model.heads()
        if not self.uses_fast_network():
            return heads
        # rebuilt when the device, the options or any weight (in-place version counter) changed
        key = (self.device, self.compile, tuple(p._version for p in self._parameters([net for net, _, _ in heads])))
        if self._heads_for is None or self._heads_for[0] != key:
            fast_heads = [(inference_network(net, compile=self.compile), mean, std) for net, mean, std in heads]
            self._heads_for = (key, fast_heads)
        return self._heads_for[1]

    def _parameters(self, networks: list[CrystalGraphConvNet]) -> list[torch.nn.Parameter]:
        """The parameters of ``networks``, listed once per set of networks (walking the modules on every call took
        3.6 ms of an 11 ms one-structure prediction with an ensemble; weights loaded in place, as
        ``load_state_dict`` does, are the same objects, whose version counters :meth:`heads` compares)."""
        ids = tuple(id(net) for net in networks)
        if self._parameters_of is None or self._parameters_of[0] != ids:
            self._parameters_of = (ids, [p for net in networks for p in net.parameters()])
        return self._parameters_of[1]

    def stacked(self) -> StackedNetworks | None:
        """The members as one network (see ``stack_members``), or ``None`` where they run one by one."""
        heads = self.heads()
        if self.stack_members is False or not can_stack([net for net, _, _ in heads]):
            return None
        key = (self._heads_for[0] if self._heads_for is not None else None, self.compile)  # rebuilt with the heads
        if self._stacked_for is None or self._stacked_for[0] != key:
            stacked = StackedNetworks([net for net, _, _ in heads]).to(self.device)
            if self.compile:
                stacked.atom_features = CompiledFunction(stacked.atom_features, name="the stacked networks")  # type: ignore[method-assign]
            self._stacked_for = (key, stacked)
        return self._stacked_for[1]

    def _forward_stacked(
        self, stacked: StackedNetworks, batch: GraphBatch, embeddings: bool
    ) -> tuple[np.ndarray, None, np.ndarray | None]:
        """:meth:`_forward` without per-atom outputs, every member in one pass."""
        spec = self.model.spec
        x = stacked.atom_features(batch)  # (N, K, A)
        pooled = segment_mean(x.reshape(x.shape[0], -1), batch.crystal_index, batch.n_crystals).view(
            batch.n_crystals, *x.shape[1:]
        )  # (n, K, A)
        if spec.readout == "atomwise":
            out = segment_mean(stacked.head(x)[:, :, 0], batch.crystal_index, batch.n_crystals)
        else:
            out = stacked.head(pooled)
            out = out[:, :, 1].exp() if spec.task == "classification" else out[:, :, 0]
        values = out.double().cpu().numpy().T  # (K, n)
        if spec.task != "classification":
            normalisers = np.array([(mean, std) for _, mean, std in self.heads()])
            values = values * normalisers[:, 1:2] + normalisers[:, 0:1]
        return values, None, pooled[:, 0].double().cpu().numpy() if embeddings else None

    @torch.no_grad()
    def _forward(
        self, batch: GraphBatch, n_atoms: list[int], per_atom: bool, embeddings: bool = False
    ) -> tuple[np.ndarray, list[np.ndarray] | None, np.ndarray | None]:
        """Model outputs for one collated batch (on the device) of crystals with ``n_atoms`` atoms: see :meth:`_run`."""
        spec = self.model.spec
        classification = spec.task == "classification"
        stacked = None if per_atom else self.stacked()
        if stacked is not None:
            return self._forward_stacked(stacked, batch, embeddings)
        rows, atom_sum, crystal = [], None, None
        for k, (network, mean, std) in enumerate(self.heads()):
            features = embeddings and k == 0
            if not per_atom:
                atom_fea = network.atom_features(batch)
                pooled = segment_mean(atom_fea, batch.crystal_index, batch.n_crystals)
                if spec.readout == "atomwise":
                    out = segment_mean(network.head(atom_fea).squeeze(1), batch.crystal_index, batch.n_crystals)
                else:
                    out = network.head(pooled)
                    out = out[:, 1].exp() if classification else out.squeeze(1)
                values = out
                if features:
                    crystal = pooled.double().cpu().numpy()
            elif spec.readout == "atomwise":  # one pass: the prediction is the mean of the atom outputs
                contributions = network.atom_contributions(batch)
                values = segment_mean(contributions, batch.crystal_index, batch.n_crystals)
            else:
                values, contributions = network.linear_attributions(batch)
            values = values.double().cpu().numpy()
            if not classification:
                values = values * std + mean
            rows.append(values)
            if per_atom:
                contributions = contributions.double().cpu().numpy()
                if not classification:
                    contributions = contributions * std + mean
                atom_sum = contributions if atom_sum is None else atom_sum + contributions
                if features:
                    crystal = network.crystal_features(batch).double().cpu().numpy()
        atoms = None
        if per_atom:
            atoms = np.split(atom_sum / len(rows), np.cumsum(n_atoms)[:-1])
        return np.stack(rows), atoms, crystal

    def predict(
        self,
        structures: Any,
        *,
        batch_size: int | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = None,
        errors: ErrorPolicy = "raise",
        on_sparse: SparsePolicy = "warn",
        per_atom: bool = False,
        embeddings: bool = False,
        workers: int | NetworkPool = 1,
        coverage: float | None = None,
    ) -> PredictionResult:
        """Predict the model's property for one or many structures.

        For an ensemble, each batch's graphs are built once and every member runs on them:
        ``values`` is the members' mean, ``std`` their (calibrated) standard deviation and
        ``member_values`` each member's prediction. Models shipping a domain summary also
        fill ``domain_distance`` and ``domain_percentile``.

        Args:
            structures: one ``ase.Atoms``, pymatgen ``Structure`` or file path, or an
                iterable of them (consumed lazily), or of ``(id, structure)`` pairs (the id names
                the result and its error); a pandas Series' index names its rows. A file with
                several frames gives one result per frame.
            batch_size: crystals per forward pass; results depend on it only through float32 rounding
                (other batches, other summation order: about 1e-7 relative). ``None``:
                :meth:`default_batch_size` (64 on a CPU, 1024 on a GPU).
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
                :meth:`CrystalGraphConvNet.linear_attributions` and docs/per_atom.md). For an
                ensemble, the mean of the members' contributions (so their mean over atoms
                is still the ensemble's prediction).
            embeddings: also return the crystal feature vectors (as :meth:`embed`; for an
                ensemble, member 0's, the space of the domain signal), from the same graphs,
                in ``result.embeddings``.
            coverage: also give prediction intervals holding the true value with this
                probability (e.g. 0.9): ``result.lower`` / ``result.upper``, clipped to the property's
                physical range (:data:`PHYSICAL_RANGE`: a band gap's lower bound is at least 0). The
                values are not clipped (they are the network's, which the metrics score), so a band gap
                of -0.1 eV comes with an interval starting at 0; the CLI, the calculator and the
                featurizer clip both. Needs an ensemble with its interval calibration (the shipped
                regression ensembles have it).
            workers: processes for the work (:mod:`cgcnn_ase.inference.parallel`): on the CPU
                they read, build graphs and run the networks (one torch thread each); on a GPU
                they read and build graphs while this process runs the networks. 1 does
                everything here. Results come in input order, the same bit for bit as
                ``workers=1`` at one torch thread. A :class:`~cgcnn_ase.inference.parallel.NetworkPool`
                of this predictor: its processes, kept running between calls (for many calls in a row).

        Returns:
            A :class:`PredictionResult` in input order.
        """
        if device is not None and resolve_device(device) != self.device:
            self.device = resolve_device(device)
            self.model.to(self.device)
        return _predict_together([self], structures, batch_size=batch_size, progress=progress, errors=errors,
                                 on_sparse=on_sparse, per_atom=per_atom, embeddings=embeddings, workers=workers,
                                 coverages=[coverage])[0]  # fmt: skip

    def _rows(self, per_atom: bool, embeddings: bool) -> ResultRows:
        """An empty accumulator of one call's outputs."""
        return ResultRows(
            n_members=self.model.n_members,
            width=self.model.spec.architecture.get("atom_fea_len", 64),
            per_atom=per_atom,
            features=embeddings or self.model.domain is not None,
            domain_columns=self.model.domain is not None,
        )

    def _finish(self, rows: ResultRows, *, embeddings: bool, errors: ErrorPolicy, coverage: float | None,
                stacklevel: int) -> PredictionResult:  # fmt: skip
        """The result of one call's accumulated ``rows``: non-finite values refused, intervals added, unseen
        elements warned about."""
        result = self._result(rows, embeddings)
        self._refuse_non_finite(result, errors)
        if coverage is not None:
            half_width = self.model.conformal_quantile(coverage) * self._interval_scale(result)
            result.coverage = coverage
            # clipped to the property's physical range: the true value lies there, so coverage can only grow
            low, high = PHYSICAL_RANGE.get(self.model.spec.property, (-np.inf, np.inf))
            result.lower = np.clip(result.values - half_width, low, high)
            result.upper = np.clip(result.values + half_width, low, high)
        self._warn_unseen(result, stacklevel=stacklevel + 1)
        self._warn_out_of_domain(result)
        return result

    def _refuse_non_finite(self, result: PredictionResult, errors: ErrorPolicy) -> None:
        """A NaN or infinite prediction without an input error (a diverged model, an overflow) becomes that
        row's error, so it is never passed on as a number; with ``errors="raise"`` it raises."""
        for k in np.flatnonzero(~np.isfinite(result.values)):
            if result.errors[k]:
                continue
            message = (f"{result.ids[k]}: model {self.model.spec.name!r} gave a non-finite value "
                       f"({result.values[k]}); its weights may be broken (retrain it)")  # fmt: skip
            if errors == "raise":
                raise CheckpointError(message)
            result.errors[k] = message
            for name in ("std", "std_raw", "uncertainty"):
                column = getattr(result, name)
                if column is not None:
                    column[k] = np.nan

    def _seen_elements(self) -> frozenset[int] | None:
        """Atomic numbers of the training data, or ``None`` when the model does not record them."""
        seen = self.model.spec.metadata.get("elements_seen")
        return frozenset(seen) if seen else None

    def _result(self, rows: ResultRows, embeddings: bool) -> PredictionResult:
        """The :class:`PredictionResult` of accumulated rows: ensemble mean, std and domain signal added."""
        spec = self.model.spec
        members = np.array(rows.values, dtype=np.float64).reshape(-1, rows.n_members)  # (n, n_members)
        features = np.array(rows.embeddings, dtype=np.float64).reshape(-1, rows.width) if rows.features else None
        result = PredictionResult(
            ids=rows.ids,
            values=members[:, 0].copy() if rows.n_members == 1 else members.mean(axis=1),
            property=spec.property,
            units=spec.units,
            task=spec.task,
            errors=rows.messages,
            n_sparse=np.asarray(rows.n_sparse, dtype=np.int64),
            bond_ratio=np.asarray(rows.bond_ratio, dtype=np.float64),
            vacuum_gap=np.asarray(rows.vacuum_gap, dtype=np.float64),
            unseen_elements=rows.unseen,
            per_atom=rows.atoms if rows.per_atom else None,
            embeddings=features if embeddings else None,
            positive_class=spec.positive_class,
        )
        if self.model.is_ensemble:
            scale = self.model.std_scale
            result.member_values = members
            result.std_raw = members.std(axis=1)
            result.std_scale = scale
            result.std = result.std_raw * scale if scale is not None else result.std_raw.copy()
        if rows.domain_columns:
            signal = np.array(rows.domain, dtype=np.float64).reshape(-1, 3)
            result.domain_distance, result.domain_percentile = signal[:, 0], signal[:, 1]
            if self.has_uncertainty and len(result):
                result.uncertainty = signal[:, 2]
        return result

    def _interval_scale(self, result: PredictionResult) -> np.ndarray:
        """The per-crystal scale ``s`` of the intervals ``mean ± q(c) s``: the calibrated normaliser, but
        at least the members' largest deviation from their mean over ``q`` at :data:`FLOOR_LEVEL`, so the
        interval at that level holds every member's prediction (far outside the validation crystals the
        error model's log-linear fit grows slower than the members' spread). On the shipped ensembles' test
        splits the floor binds for 0-0.4% of the crystals (``benchmarks/interval_floor.py``)."""
        scale = self._interval_normaliser(result)
        conformal = self.model.calibration["conformal"]
        levels = conformal["levels"]
        q_floor = float(np.interp(min(FLOOR_LEVEL, levels[-1]), levels, conformal["quantiles"]))
        with np.errstate(invalid="ignore"):
            reach = np.abs(result.member_values - result.values[:, None]).max(axis=1)
            return np.fmax(scale, reach / q_floor)

    def _interval_normaliser(self, result: PredictionResult) -> np.ndarray:
        """The per-crystal scale of the conformal intervals: ``uncertainty`` or the raw std, as calibrated."""
        conformal = self.model.calibration["conformal"]
        if conformal.get("normaliser", "std_raw") == "uncertainty":
            if result.uncertainty is None:
                raise CheckpointError(f"model {self.model.spec.name!r}: its intervals need the error model of its "
                                 "domain summary, which is missing")  # fmt: skip
            return result.uncertainty
        return result.std_raw

    def _warn_unseen(self, result: PredictionResult, *, stacklevel: int = 3) -> None:
        """One :class:`UnseenElementWarning` per call, naming the model, the elements and how many structures."""
        hit = [(label, symbols) for label, symbols in zip(result.ids, result.unseen_elements) if symbols]
        if not hit:
            return
        counts: dict[str, int] = {}
        for _, symbols in hit:
            for symbol in symbols:
                counts[symbol] = counts.get(symbol, 0) + 1
        ranked = sorted(counts, key=lambda s: (-counts[s], s))
        detail = ", ".join(f"{s} in {counts[s]}" for s in ranked[:8]) + (", ..." if len(ranked) > 8 else "")
        examples = ", ".join(label for label, _ in hit[:3]) + (", ..." if len(hit) > 3 else "")
        warnings.warn(
            f"model {self.model.spec.name!r}: element(s) {', '.join(ranked[:8])} did not occur in its training data; "
            f"{len(hit)} of {sum(e is None for e in result.errors)} predicted structure(s) hold them ({detail}; "
            f"e.g. {examples}), and their predictions "
            f"are extrapolations ({UNSEEN_HINT})",
            UnseenElementWarning,
            stacklevel=stacklevel,
        )

    def _warn_out_of_domain(self, result: PredictionResult) -> None:
        """One :class:`OutOfDomainWarning` per call when predicted structures lie beyond every validation crystal
        (domain percentile 100), naming the model, how many and a few of them (round 23c: a perovskite model's
        site energies of Cu and Si came without a word)."""
        if result.domain_percentile is None:
            return
        far = [label for label, percentile, error in zip(result.ids, result.domain_percentile, result.errors)
               if error is None and percentile >= 100.0]  # fmt: skip
        if not far:
            return
        examples = ", ".join(far[:3]) + (", ..." if len(far) > 3 else "")
        warnings.warn(
            f"model {self.model.spec.name!r}: {len(far)} of {sum(e is None for e in result.errors)} predicted "
            f"structure(s) lie farther from its training data than every validation crystal (domain percentile 100; "
            f"e.g. {examples}): their predictions are extrapolations (docs/uncertainty.md)",
            OutOfDomainWarning,
            stacklevel=user_stacklevel(),
        )

    @torch.inference_mode()
    def embed(self, structures: Any, *, batch_size: int | None = None, on_sparse: SparsePolicy = "warn") -> np.ndarray:
        """Crystal feature vectors (the mean-pooled atom features after the convolutions;
        for an ensemble, member 0's: the space of the domain signal).

        Returns:
            float32 array, shape (n, atom_fea_len), in input order. Bad inputs raise.
        """
        _match_thread_count()
        batched = self.batched_graphs()
        stream = (g for _, g in self._graphs(structures, "raise", on_sparse, read_only=batched))
        rows = []
        batch_size = self.default_batch_size() if batch_size is None else batch_size
        while chunk := list(islice(stream, batch_size)):
            if batched:  # graphs built on the device, as predict builds them there
                batch, items = graph_batch(chunk, self.model.spec.graph, self.element_features(), on_sparse=on_sparse)
                for item in items:
                    if isinstance(item, CGCNNError):
                        raise item
            else:
                batch = self._collate(chunk)
            # member 0 alone; predict's stacked pass over all members gives the same to float32 rounding
            rows.append(self.heads()[0][0].crystal_features(batch).cpu().numpy())
        width = self.model.spec.architecture.get("atom_fea_len", 64)
        return np.concatenate(rows) if rows else np.zeros((0, width), dtype=np.float32)


def _match_thread_count() -> None:
    """Give the calling thread torch's own thread count (a no-op for the process).

    A Python thread starts with OpenMP's default of one thread per core, whatever
    ``torch.set_num_threads`` said in the main thread, and a matrix product of a few rows is then
    split (and rounded) differently: the same crystal would get a prediction differing in the last
    float32 bits depending on the thread that asks (a Dask thread, a GUI callback).
    """
    torch.set_num_threads(torch.get_num_threads())


def as_predictor(
    model: str | os.PathLike | CGCNNPredictor,
    *,
    device: str | torch.device | None = None,
    members: int | None = None,
    atom_init: str | os.PathLike | ElementTable | None = None,
    trusted: bool = False,
) -> CGCNNPredictor:
    """``model`` itself if it is a predictor, else :meth:`CGCNNPredictor.load` of it.

    The calculator, featurizer, CLI, streaming, dask, evaluation and site-energy code take
    their model argument through this function, so a name means the same model everywhere.
    """
    if isinstance(model, CGCNNPredictor):
        return model
    return CGCNNPredictor.load(model, device=device, members=members, atom_init=atom_init, trusted=trusted)


def predict_many(
    predictors: Sequence[CGCNNPredictor],
    structures: Any,
    *,
    batch_size: int | None = None,
    progress: bool | None = None,
    errors: ErrorPolicy = "raise",
    on_sparse: SparsePolicy = "warn",
    per_atom: bool = False,
    embeddings: bool = False,
    workers: int | NetworkPool = 1,
    coverage: float | None = None,
) -> list[PredictionResult]:
    """Every predictor's :meth:`~CGCNNPredictor.predict` of the same structures, with each structure
    read once and its graph built once per distinct graph config where the predictors allow
    (:func:`~cgcnn_ase.inference.parallel.shares_graphs`: all on the CPU, per-structure graphs, one
    CIF reader); with ``workers``, one pool of processes runs every model on each batch.

    The results are those of calling each predictor's ``predict`` in turn, bit for bit (the same
    graphs, the same batches). Arguments as in :meth:`~CGCNNPredictor.predict`, except ``coverage``:
    intervals for the predictors that have them (:attr:`~CGCNNPredictor.has_intervals`), none for
    the others (where ``predict`` refuses; :func:`check_interval_models` refuses them up front). ``workers`` may be a :class:`~cgcnn_ase.inference.parallel.NetworkPool` of these
    predictors. Where they cannot share graphs (a GPU among them, mixed CIF readers), each predicts
    in turn (an iterator of structures is then read into a list first).

    >>> gaps, metals = predict_many([gap, metal], ["POSCAR", atoms])   # doctest: +SKIP
    """
    predictors = list(predictors)
    if coverage is not None:  # fails before any model runs
        check_interval_models([p for p in predictors if p.has_intervals], coverage)
    coverages = [coverage if p.has_intervals else None for p in predictors]
    options = {"batch_size": batch_size, "progress": progress, "errors": errors, "on_sparse": on_sparse,
               "per_atom": per_atom, "embeddings": embeddings, "workers": workers}  # fmt: skip
    sizes = {p.default_batch_size() for p in predictors}
    if len(predictors) > 1 and shares_graphs(predictors) and (batch_size is not None or len(sizes) == 1):
        return _predict_together(predictors, structures, coverages=coverages, **options)
    # one predictor, or models that cannot share graphs: each predictor's own predict, in turn
    structures = expand_inputs(structures)
    if len(predictors) > 1 and not isinstance(structures, Sequence):
        structures = list(structures)
    return [p.predict(structures, coverage=c, **options) for p, c in zip(predictors, coverages)]


def check_interval_models(predictors: Sequence[CGCNNPredictor], coverage: float | None) -> None:
    """Refuse a ``coverage`` that a regression model among ``predictors`` cannot give intervals for.

    A classifier gives none and passes beside other models, but is refused when only classifiers are
    asked (nothing would get an interval); a regression model must be a calibrated full ensemble with
    ``coverage`` within its calibrated levels.

    Raises:
        TypeError: ``coverage`` is not a number.
        ValueError: which model, and why (:meth:`~cgcnn_ase.models.folder.LoadedModel.interval_problem`).
    """
    if coverage is None:
        return
    check_coverage(coverage)
    if predictors and all(p.model.spec.task == "classification" for p in predictors):
        names = ", ".join(p.model.spec.name for p in predictors)
        raise ValueError(f"{names}: a classifier gives a probability (with the members' std), no interval")
    for p in predictors:
        if p.model.spec.task != "classification":
            p.model.conformal_quantile(coverage)


def _predict_together(
    predictors: Sequence[CGCNNPredictor], structures: Any, *, batch_size: int | None, progress: bool | None,
    errors: ErrorPolicy, on_sparse: SparsePolicy, per_atom: bool, embeddings: bool, workers: int | NetworkPool,
    coverages: Sequence[float | None],
) -> list[PredictionResult]:  # fmt: skip
    """The predictions of ``predictors`` (one, or several that share graphs) on the same batches;
    ``coverages[m]``: predictor ``m``'s interval coverage or ``None``. The frame below
    :meth:`CGCNNPredictor.predict` and :func:`predict_many` (the warnings' stack level counts on it)."""
    if errors not in ("raise", "collect"):
        raise ValueError(f"errors must be 'raise' or 'collect', got {errors!r}")
    if not isinstance(workers, NetworkPool) and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be at least 1 (a number of processes) or a NetworkPool, got {workers!r}")
    size = predictors[0].default_batch_size() if batch_size is None else batch_size
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:  # 1.5 and "64" failed deep inside; True ran as 1
        raise ValueError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
    for p, c in zip(predictors, coverages):
        if c is not None:
            p.model.conformal_quantile(c)  # fails early
    _match_thread_count()
    # a Series' index is kept for to_dataframe() when each row gives one result (round 23a: a join on it matched nothing)
    is_series = type(structures).__module__.startswith("pandas.") and type(structures).__name__ == "Series"
    index = structures.index if is_series else None
    structures = expand_inputs(structures)
    total = len(structures) if isinstance(structures, (list, tuple)) else None
    show = progress if progress is not None else (None if (total or 0) >= 100 else False)  # None: on a terminal
    rows = [p._rows(per_atom, embeddings) for p in predictors]
    batches = predict_batches(predictors, structures, batch_size=size, per_atom=per_atom,
                              features=[r.features for r in rows], errors=errors, on_sparse=on_sparse,
                              workers=workers)  # fmt: skip
    with progress_bar(show=show, total=total, unit=" structures", leave=False) as bar:
        for columns, outputs in batches:
            for p, accumulated, items, out in zip(predictors, rows, columns, outputs):
                accumulated.add(items, *out, seen=p._seen_elements())
            bar.update(len(columns[0]))
    results = [p._finish(r, embeddings=embeddings, errors=errors, coverage=c, stacklevel=4)
               for p, r, c in zip(predictors, rows, coverages)]  # fmt: skip
    if index is not None and results and len(results[0]) == len(index):
        for result in results:
            result.index = index
    if results:
        _warn_repeated_ids(results[0].ids)
    return results


def _warn_repeated_ids(ids: Sequence[str]) -> None:
    """One :class:`~cgcnn_ase.errors.DuplicateIdsWarning` when results share ids (pairs or a Series index that
    repeat a label): rows joined or looked up by id would mix them (left open in round 21)."""
    from collections import Counter

    repeated = [item_id for item_id, n in Counter(ids).items() if n > 1]
    if repeated:
        shown = ", ".join(repr(i) for i in repeated[:3]) + (", ..." if len(repeated) > 3 else "")
        warnings.warn(f"{len(repeated)} id(s) name more than one result ({shown}): rows looked up or joined by id "
                      "would be mixed; give unique labels", DuplicateIdsWarning, stacklevel=user_stacklevel())  # fmt: skip

"""Model files: this project's model folder, and the original authors' ``.pth.tar`` files.

A model folder is self-describing and holds no pickled code::

    model.json           format version, property, units, task, architecture, graph
                         settings, target normaliser, element table fingerprint, metadata
    weights.safetensors  the state dict (safetensors: plain tensors only)
    atom_init.json       the element feature table, in the original format
    README.md            the model card (written by training; optional for loading)
    domain.safetensors   optional applicability-domain summary (:mod:`cgcnn_ase.models.domain`)

An ensemble folder (deep ensemble: members trained with different seeds on one split)
has the same files, with ``format_version`` 2, every member's weights in the one
``weights.safetensors`` under ``member<k>.<parameter>`` keys, and an ``ensemble``
section in ``model.json``: member count, each member's normaliser, seed and val/test
metrics, and the calibration of the ensemble's standard deviation. The top-level
normaliser is member 0's. :func:`load_model_folder` reads both kinds; ``members=1``
loads member 0 alone, a plain single model.

The authors' checkpoints are legacy pickles saved on a GPU. They are read with
``torch.load(weights_only=True, map_location="cpu")`` plus an allow-list of two harmless
numpy globals, so no code from the file runs; anything needing more is refused unless
the caller passes ``trusted=True``.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cgcnn_ase.models.cards import json_safe
from cgcnn_ase.models.domain import DOMAIN_FILE, DomainSummary
from cgcnn_ase.graph.element_table import ElementTable, load_atom_init
from cgcnn_ase.errors import CheckpointError, ConfigError
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.nn.network import CrystalGraphConvNet

FORMAT_VERSION = 1
#: model.json format of ensemble folders (older cgcnn-ase refuses them with "upgrade").
ENSEMBLE_FORMAT_VERSION = 2
#: Prefix of member ``k``'s parameters in an ensemble's weights file.
MEMBER_PREFIX = "member{k}."
MODEL_JSON = "model.json"
WEIGHTS_FILE = "weights.safetensors"
ELEMENTS_FILE = "atom_init.json"
#: The training state a cgcnn-ase run keeps in its work folder after every epoch (to resume it).
CHECKPOINT_LAST = "checkpoint_last.pt"
#: Files of a run's work folder that are training state, not models (``checkpoint_best.pt``: older runs).
TRAINING_STATE_FILES = (CHECKPOINT_LAST, "checkpoint_best.pt")


@dataclass(frozen=True)
class ModelSpec:
    """Everything about a model except its weights.

    Attributes:
        name: model name (registry name or file stem).
        property: predicted property, e.g. ``"formation_energy"``.
        units: units of predictions, e.g. ``"eV/atom"``; ``"probability"`` for classifiers.
        task: ``"regression"`` or ``"classification"``.
        architecture: keyword arguments of :class:`CrystalGraphConvNet`.
        graph: graph settings the model was trained with.
        normalizer_mean: target mean (regression), in ``units``.
        normalizer_std: target standard deviation (regression), in ``units``.
        positive_class: name of class 1 for classifiers (e.g. ``"metal"``).
        metadata: free-form provenance (dataset, split, metrics, source file, ...).
    """

    name: str
    property: str
    units: str
    task: str
    architecture: dict[str, Any]
    graph: GraphConfig
    normalizer_mean: float = 0.0
    normalizer_std: float = 1.0
    positive_class: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def readout(self) -> str:
        """``"mean"`` or ``"atomwise"``."""
        return self.architecture.get("readout", "mean")

    def to_json(self, elements: ElementTable) -> dict[str, Any]:
        """The ``model.json`` document."""
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "property": self.property,
            "units": self.units,
            "task": self.task,
            "positive_class": self.positive_class,
            "architecture": self.architecture,
            "graph": self.graph.to_dict(),
            "normalizer": {"mean": self.normalizer_mean, "std": self.normalizer_std},
            "elements": {"file": ELEMENTS_FILE, "fingerprint": elements.fingerprint()},
            "weights": WEIGHTS_FILE,
            "metadata": self.metadata,
        }


@dataclass
class EnsembleMember:
    """One member of a deep ensemble: its network and its own target normaliser.

    Attributes:
        network: the member's network (eval mode); same architecture for all members.
        normalizer_mean: target mean (regression), in the model's units.
        normalizer_std: target standard deviation (regression), in the model's units.
        info: provenance kept in ``model.json`` (``name``, ``seed``, ``val_metrics``,
            ``test_metrics``, ``best_epoch``, ...).
    """

    network: CrystalGraphConvNet
    normalizer_mean: float = 0.0
    normalizer_std: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)


def check_coverage(coverage: Any) -> float:
    """``coverage`` as a float, if it is a probability strictly between 0 and 1.

    Raises:
        TypeError: not a real number (a string such as ``"0.9"``, a bool).
        ValueError: outside (0, 1), or NaN.
    """
    if isinstance(coverage, bool) or not isinstance(coverage, numbers.Real):
        raise TypeError(f"coverage is a probability such as 0.9, got {coverage!r} ({type(coverage).__name__})")
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage is a probability between 0 and 1 (such as 0.9), got {coverage}")
    return float(coverage)


@dataclass
class LoadedModel:
    """A ready-to-run model: network (in eval mode), its spec and its element table.

    Attributes:
        spec: settings, units and metadata (for an ensemble: member 0's normaliser).
        network: the network (for an ensemble: member 0's, which also gives embeddings
            and the domain signal).
        elements: the element feature table.
        members: the ensemble's members (``network`` is ``members[0].network``); empty
            for a single model.
        calibration: for ensembles, how the standard deviation is calibrated, e.g.
            ``{"scale": 1.4, "method": "rms_z", "split": "val", "n": 441}``; ``None``:
            uncalibrated.
        domain: the applicability-domain summary, if the folder ships one.
        members_in_folder: how many members the folder holds (more than run when loaded with
            ``members=``; 1 for a single model).
        source: what loads this model again with :func:`~cgcnn_ase.models.registry.load_model`: a shipped
            model's name, or the absolute path of its folder or checkpoint file (``None``: built in memory).
    """

    spec: ModelSpec
    network: CrystalGraphConvNet
    elements: ElementTable
    members: list[EnsembleMember] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    domain: DomainSummary | None = None
    members_in_folder: int = 1
    source: str | None = None

    @property
    def is_ensemble(self) -> bool:
        """True when several members are averaged."""
        return len(self.members) > 1

    @property
    def n_members(self) -> int:
        """Number of networks run per prediction (1 for a single model)."""
        return max(1, len(self.members))

    @property
    def std_scale(self) -> float | None:
        """Calibration factor applied to the ensemble's standard deviation (``None``: none)."""
        if not self.is_ensemble or not self.calibration:
            return None
        scale = self.calibration.get("scale")
        return float(scale) if scale is not None else None

    def conformal_quantile(self, coverage: float) -> float:
        """The split-conformal quantile ``q`` for ``coverage``: the interval ``mean ± q * raw std``
        covers the true value with probability ``coverage`` (interpolated linearly between the
        stored levels; see :func:`cgcnn_ase.analysis.metrics.conformal_quantiles`).

        Raises:
            TypeError: ``coverage`` is not a number.
            ValueError: the model has no interval calibration (:meth:`interval_problem` says why),
                or ``coverage`` lies outside the calibrated levels.
        """
        coverage = check_coverage(coverage)
        problem = self.interval_problem()
        if problem is not None:
            raise ValueError(problem)
        conformal = self.calibration["conformal"]
        levels, quantiles = conformal["levels"], conformal["quantiles"]
        if not levels[0] <= coverage <= levels[-1]:
            raise ValueError(f"coverage must lie between {levels[0]} and {levels[-1]}, got {coverage}")
        return float(np.interp(coverage, levels, quantiles))

    def interval_problem(self) -> str | None:
        """Why this model gives no prediction intervals (one sentence with the remedy), or ``None``."""
        name = self.spec.name
        if self.spec.task == "classification":
            return f"model {name!r} is a classifier: it gives a probability, and prediction intervals apply to regression models"
        if self.members_in_folder > self.n_members:
            return (f"model {name!r} runs {self.n_members} of its {self.members_in_folder} members: its prediction intervals "
                    "are calibrated for the whole ensemble (load it without members=)")  # fmt: skip
        if not self.is_ensemble:
            return (f"model {name!r} is a single network: prediction intervals need an ensemble calibrated on its "
                    "validation split (cgcnn-ase ensemble, then cgcnn-ase calibrate MODEL_FOLDER)")  # fmt: skip
        if not (self.calibration or {}).get("conformal"):
            return (f"model {name!r} is an ensemble without a prediction-interval calibration yet (assembling an "
                    "ensemble, also by fine-tuning every member, does not fit one): run cgcnn-ase calibrate MODEL_FOLDER "
                    "once")  # fmt: skip
        return None

    def heads(self) -> list[tuple[CrystalGraphConvNet, float, float]]:
        """``(network, normalizer_mean, normalizer_std)`` per member (one for a single model)."""
        if self.members:
            return [(m.network, m.normalizer_mean, m.normalizer_std) for m in self.members]
        return [(self.network, self.spec.normalizer_mean, self.spec.normalizer_std)]

    def to(self, device: torch.device) -> LoadedModel:
        """Move every network to ``device`` in eval mode (in place); returns ``self``."""
        for network, _, _ in self.heads():
            network.to(device).eval()
        self.network.to(device).eval()
        return self


def save_model_folder(folder: str | os.PathLike, loaded: LoadedModel) -> Path:
    """Write ``loaded`` as a model folder (created if needed); returns the folder path.

    A single model writes ``format_version`` 1 exactly as before; a model with two or
    more ``members`` writes an ensemble folder (``format_version`` 2, ``member<k>.``
    weight keys, an ``ensemble`` section). A ``domain`` summary is written to
    ``domain.safetensors`` and described in ``model.json``.
    """
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    document = loaded.spec.to_json(loaded.elements)
    if loaded.is_ensemble:
        state = {}
        for k, member in enumerate(loaded.members):
            prefix = MEMBER_PREFIX.format(k=k)
            state.update({prefix + n: v.detach().cpu().contiguous() for n, v in member.network.state_dict().items()})
        document["format_version"] = ENSEMBLE_FORMAT_VERSION
        document["normalizer"] = {"mean": loaded.members[0].normalizer_mean, "std": loaded.members[0].normalizer_std}
        document["ensemble"] = {
            "n_members": len(loaded.members),
            "weights_prefix": MEMBER_PREFIX,
            "std": "population standard deviation (ddof=0) of the members' predictions",
            "calibration": loaded.calibration,
            "members": [
                {**m.info, "normalizer": {"mean": m.normalizer_mean, "std": m.normalizer_std}} for m in loaded.members
            ],
        }
    else:
        state = {k: v.detach().cpu().contiguous() for k, v in loaded.network.state_dict().items()}
    # bytes written with open(): the file gets the user's umask, readable by the group like the other
    # files of the folder (safetensors' save_file makes it 0600)
    (folder / WEIGHTS_FILE).write_bytes(save(state))
    if loaded.domain is not None:
        loaded.domain.save(folder / DOMAIN_FILE)
        document["domain"] = {"file": DOMAIN_FILE, **loaded.domain.info}
    (folder / ELEMENTS_FILE).write_text(json.dumps(loaded.elements.to_atom_init()))
    write_model_json(folder, document)
    return folder


def build_network(architecture: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> CrystalGraphConvNet:
    """Instantiate the network and load ``state`` strictly; mismatches raise CheckpointError."""
    try:
        with torch.random.fork_rng(devices=[]):  # the random initial weights, replaced below, leave the caller's stream
            network = CrystalGraphConvNet(**architecture)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: invalid architecture {architecture}: {exc}") from None
    expected = network.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state) - {k for k in expected if k.endswith("num_batches_tracked")})
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing weights {missing[:4]}")
        if unexpected:
            details.append(f"unexpected weights {unexpected[:4]}")
        if wrong:
            details.append(
                "shape mismatch " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:3])
            )
        raise CheckpointError(f"{source}: the architecture does not match the weights: " + "; ".join(details))
    network.load_state_dict(state, strict=False)
    return network.eval()


@dataclass(frozen=True)
class _Document:
    """The checked contents of a ``model.json``: what :func:`load_model_folder` needs to load the files."""

    spec: ModelSpec
    version: int
    weights: Path
    elements_file: Path
    elements_fingerprint: str | None
    domain_file: Path | None
    members: list[dict[str, Any]]  # ensemble members' documents (normaliser included); [] for a single model
    prefix: str
    calibration: dict[str, Any] | None

    @property
    def is_ensemble(self) -> bool:
        return bool(self.members)


def _inside(folder: Path, name: Any, field_name: str) -> Path:
    """``folder / name`` for a plain relative file name that stays inside ``folder`` (model folders are sealed).

    Raises:
        CheckpointError: naming ``field_name`` when the name is not a string, is absolute, or leaves the folder.
    """
    if not isinstance(name, str) or not name.strip():
        raise CheckpointError(f"{folder}/{MODEL_JSON}: {field_name} must be a file name, got {name!r}")
    relative = Path(name)
    resolved_folder = folder.resolve()
    target = (folder / relative).resolve()
    if relative.is_absolute() or ".." in relative.parts or not target.is_relative_to(resolved_folder):
        raise CheckpointError(
            f"{folder}/{MODEL_JSON}: {field_name} = {name!r} points outside the model folder; a model folder may "
            "only name files inside itself"
        )
    return folder / relative


def _finite(value: Any, field_name: str, source: Path, *, positive: bool = False) -> float:
    """``value`` as a finite float (and > 0 with ``positive``), else CheckpointError naming ``field_name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"{source}: {field_name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise CheckpointError(f"{source}: {field_name} must be finite, got {value!r}")
    if positive and not number > 0:
        raise CheckpointError(f"{source}: {field_name} must be positive, got {value!r}")
    return number


def _normalizer(doc: Any, field_name: str, source: Path) -> tuple[float, float]:
    if not isinstance(doc, dict):
        raise CheckpointError(f"{source}: {field_name} must be an object with mean and std, got {doc!r}")
    mean = _finite(doc.get("mean"), f"{field_name}.mean", source)
    return mean, _finite(doc.get("std"), f"{field_name}.std", source, positive=True)


def _check_architecture(architecture: dict[str, Any], graph: GraphConfig, source: Path) -> None:
    """Positive integer sizes, and an edge-feature width equal to the graph settings' Gaussian count."""
    for key in ("orig_atom_fea_len", "nbr_fea_len", "atom_fea_len", "n_conv", "h_fea_len", "n_h"):
        value = architecture.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CheckpointError(f"{source}: architecture.{key} must be a positive integer, got {value!r}")
    width = architecture.get("nbr_fea_len")
    if width is not None and width != graph.n_gaussians:
        raise CheckpointError(
            f"{source}: the graph settings give {graph.n_gaussians} Gaussians per edge (radius {graph.radius}, "
            f"gaussian_dmin {graph.gaussian_dmin}, gaussian_step {graph.gaussian_step}) but architecture.nbr_fea_len "
            f"is {width}; the graph section does not belong to these weights"
        )


def _check_conformal(conformal: Any, source: Path) -> None:
    """Levels strictly increasing in (0, 1); one non-decreasing, positive, finite quantile per level."""
    name = "ensemble.calibration.conformal"
    try:
        levels = [float(v) for v in conformal["levels"]]
        quantiles = [float(v) for v in conformal["quantiles"]]
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{source}: {name} needs lists 'levels' and 'quantiles' of numbers") from None
    if len(levels) != len(quantiles) or not levels:
        raise CheckpointError(f"{source}: {name}.levels and .quantiles must have the same, non-zero length")
    if not all(0 < a < b < 1 for a, b in zip(levels, levels[1:])) or not 0 < levels[0] < 1:
        raise CheckpointError(f"{source}: {name}.levels must increase strictly within (0, 1), got {levels}")
    if not all(math.isfinite(q) and q > 0 for q in quantiles) or any(a > b for a, b in zip(quantiles, quantiles[1:])):
        raise CheckpointError(f"{source}: {name}.quantiles must be positive, finite and non-decreasing")


def _parse_document(meta: Any, folder: Path) -> _Document:
    """Check every field of a ``model.json`` document; errors name the field.

    Raises:
        CheckpointError: a missing or malformed field, a non-finite or non-positive number
            where a positive finite one is needed, a newer format, a file name leaving the folder.
    """
    source = folder / MODEL_JSON
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source}: the document must be a JSON object")
    try:
        version = int(meta["format_version"])
        if version > ENSEMBLE_FORMAT_VERSION:
            raise CheckpointError(
                f"{folder}: model format {version} is newer than this cgcnn-ase understands "
                f"({ENSEMBLE_FORMAT_VERSION}); upgrade cgcnn-ase"
            )
        task = str(meta["task"])
        if task not in ("regression", "classification"):
            raise CheckpointError(f"{source}: task must be 'regression' or 'classification', got {task!r}")
        try:
            graph = GraphConfig.from_dict(meta["graph"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: graph: {exc}") from None
        architecture = dict(meta["architecture"])
        _check_architecture(architecture, graph, source)
        mean, std = _normalizer(meta["normalizer"], "normalizer", source)
        spec = ModelSpec(
            name=str(meta["name"]), property=str(meta["property"]), units=str(meta["units"]), task=task,
            architecture=architecture, graph=graph, normalizer_mean=mean, normalizer_std=std,
            positive_class=meta.get("positive_class"), metadata=dict(meta.get("metadata", {})),
        )  # fmt: skip
        elements_info = dict(meta["elements"])
        ensemble = meta.get("ensemble")
        members = [dict(m) for m in ensemble["members"]] if ensemble else []
        domain_info = meta.get("domain")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{source}: malformed model description ({type(exc).__name__}: {exc})") from None
    if ensemble and version < ENSEMBLE_FORMAT_VERSION:
        raise CheckpointError(f"{source}: an ensemble needs format_version {ENSEMBLE_FORMAT_VERSION}, got {version}")
    if ensemble and int(ensemble.get("n_members", -1)) != len(members):
        raise CheckpointError(
            f"{source}: ensemble.n_members is {ensemble.get('n_members')} but {len(members)} members are described"
        )
    for k, member in enumerate(members):
        member["normalizer"] = _normalizer(member.get("normalizer"), f"ensemble.members[{k}].normalizer", source)
    calibration = dict(ensemble["calibration"]) if ensemble and ensemble.get("calibration") else None
    if calibration and calibration.get("scale") is not None:
        _finite(calibration["scale"], "ensemble.calibration.scale", source, positive=True)
    if calibration and calibration.get("conformal") is not None:
        _check_conformal(calibration["conformal"], source)
    return _Document(
        spec=spec,
        version=version,
        weights=_inside(folder, meta.get("weights", WEIGHTS_FILE), "weights"),
        elements_file=_inside(folder, elements_info.get("file", ELEMENTS_FILE), "elements.file"),
        elements_fingerprint=elements_info.get("fingerprint"),
        domain_file=_inside(folder, domain_info.get("file", DOMAIN_FILE), "domain.file") if domain_info else None,
        members=members,
        prefix=str(ensemble.get("weights_prefix", MEMBER_PREFIX)) if ensemble else "",
        calibration=calibration,
    )


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path.parent}: weights file {path.name} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable weights ({exc})") from None


def _load_domain(doc: _Document, folder: Path) -> DomainSummary | None:
    if doc.domain_file is None:
        return None
    try:
        domain = DomainSummary.load(doc.domain_file)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    width = doc.spec.architecture.get("atom_fea_len", 64)
    if domain.dim != width:
        raise CheckpointError(f"{folder}: the domain summary has width {domain.dim}, the model's embeddings {width}")
    return domain


def _load_members(
    doc: _Document, state: dict[str, torch.Tensor], n: int, folder: Path, weights: Path
) -> list[EnsembleMember]:
    """The first ``n`` members of an ensemble from its weights (keys ``member<k>.<parameter>``)."""
    loaded = []
    for k in range(n):
        key_prefix = doc.prefix.format(k=k)
        part = {name[len(key_prefix) :]: v for name, v in state.items() if name.startswith(key_prefix)}
        if not part:
            raise CheckpointError(f"{weights}: no weights for ensemble member {k} (keys {key_prefix}*)")
        network = build_network(doc.spec.architecture, part, f"{folder} (member {k})")
        mean, std = doc.members[k]["normalizer"]
        info = {key: value for key, value in doc.members[k].items() if key != "normalizer"}
        loaded.append(EnsembleMember(network, mean, std, info))
    n_total = len(doc.members)
    extra = sorted({name.split(".")[0] for name in state} - {doc.prefix.format(k=k).rstrip(".") for k in range(n_total)})
    if extra:
        raise CheckpointError(f"{weights}: unexpected weights {extra[:4]} beside the {n_total} members")
    return loaded


def load_model_folder(folder: str | os.PathLike, *, members: int | None = None) -> LoadedModel:
    """Load a model folder written by :func:`save_model_folder` (or by training), single or ensemble.

    Every field of ``model.json`` is checked before any file is read (:func:`_parse_document`):
    normalisers finite with a positive std, the edge-feature width equal to the graph
    settings' Gaussian count, file names inside the folder.

    Args:
        folder: the model folder.
        members: for an ensemble folder, how many members to load (the first ones):
            ``None`` loads all; ``1`` loads member 0 alone as a plain single model (the
            fast path: no standard deviation). Loading fewer than all members drops the
            calibration of the standard deviation, which was fitted for the full
            ensemble. A single-model folder accepts ``None`` or ``1``.

    Raises:
        CheckpointError: a file is missing or corrupt, the format is newer than this
            package, or ``model.json`` does not match the weights or element table.
        ConfigError: ``members`` is not a whole number or is out of range.
    """
    folder = Path(folder)
    doc = _parse_document(read_model_json(folder), folder)
    spec = doc.spec
    n_total = len(doc.members) if doc.is_ensemble else 1
    if members is not None and (isinstance(members, bool) or not isinstance(members, numbers.Integral)):
        # a wrong argument, not a damaged model (round 29a: "model not loadable", exit 3): a ConfigError is a ValueError
        raise ConfigError(f"{folder}: members must be a whole number of members (or None for all), got {members!r}")
    if members is not None and not 1 <= int(members) <= n_total:
        kind = f"an ensemble of {n_total} members" if doc.is_ensemble else "a single model"
        raise ConfigError(f"{folder}: members={members} is out of range; the folder holds {kind}")
    elements = load_atom_init(doc.elements_file)
    if doc.elements_fingerprint and elements.fingerprint() != doc.elements_fingerprint:
        raise CheckpointError(f"{folder}: the element table does not match the fingerprint in {MODEL_JSON}")
    state = _load_weights(doc.weights)
    if spec.architecture.get("orig_atom_fea_len", 92) != elements.n_features:
        raise CheckpointError(
            f"{folder}: the element table has {elements.n_features} features but the model expects "
            f"{spec.architecture.get('orig_atom_fea_len')}"
        )
    domain = _load_domain(doc, folder)
    if not doc.is_ensemble:
        network = build_network(spec.architecture, state, str(folder))
        return LoadedModel(spec=spec, network=network, elements=elements, domain=domain)
    n = n_total if members is None else int(members)
    loaded = _load_members(doc, state, n, folder, doc.weights)
    first = loaded[0]
    spec = replace(spec, normalizer_mean=first.normalizer_mean, normalizer_std=first.normalizer_std)
    if n == 1:  # the fast path: member 0 alone is a plain single model
        return LoadedModel(spec=spec, network=first.network, elements=elements, domain=domain, members_in_folder=n_total)
    if n < n_total and doc.calibration is not None:
        warnings.warn(
            f"{folder.name}: members={n} of {n_total}: the std is these members' spread, uncalibrated (the calibration "
            f"was fitted for all {n_total}), and gives no coverage intervals; members=None loads all",
            UserWarning,
            stacklevel=2,
        )
    return LoadedModel(
        spec=spec,
        network=first.network,
        elements=elements,
        members=loaded,
        calibration=doc.calibration if n == n_total else None,
        domain=domain,
        members_in_folder=n_total,
    )


def checkpoint_hint(folder: str | os.PathLike, subject: str = "it") -> str:
    """For a folder that is not a model folder but holds original checkpoint files (``model_best.pth.tar``):
    a clause naming them, to load one of them instead; else ``""``."""
    try:
        files = sorted(p.name for p in Path(folder).iterdir() if p.name.endswith((".pth.tar", ".pth", ".pt"))
                       and p.name not in TRAINING_STATE_FILES)  # a cgcnn-ase run's state
    except OSError:
        return ""
    if not files:
        return ""
    return (f"; {subject} holds the checkpoint file(s) {', '.join(files[:3])}: give a file's path instead, with the "
            "atom_init.json it was trained with (CLI --atom-init)")


def write_model_json(folder: str | os.PathLike, document: dict[str, Any]) -> Path:
    """Write ``document`` as the ``model.json`` of ``folder`` (NaN and inf as null, numpy values as
    Python ones), replacing the file in one step: a run stopped while writing leaves the old file whole."""
    path = Path(folder) / MODEL_JSON
    partial = path.with_name(f".{MODEL_JSON}.partial")
    partial.write_text(json.dumps(json_safe(document), indent=2) + "\n")
    os.replace(partial, path)
    return path


def read_model_json(folder: str | os.PathLike) -> dict[str, Any]:
    """The raw ``model.json`` document of a model folder.

    Raises:
        CheckpointError: no such file or invalid JSON.
    """
    path = Path(folder) / MODEL_JSON
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: not a model folder (no {MODEL_JSON}){checkpoint_hint(folder)}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from None

"""Training CGCNN models: configuration, graph cache, training loop, model folders.

>>> from cgcnn_ase.train.trainer import load_config, train_from_config
>>> config = load_config("configs/formation_energy.yaml", ["epochs=5", "optim.lr=0.005"])  # doctest: +SKIP
>>> folder = train_from_config(config)                                                      # doctest: +SKIP

What one run does:

1. Reads the dataset table (:mod:`cgcnn_ase.train.datasets`) and fetches the crystal graphs
   from the on-disk graph cache; only structures missing from the cache are parsed and
   turned into graphs (in a process pool), and then added to it. Re-running never
   re-parses CIFs.
2. Splits the usable crystals (seeded; ``split.json``) and normalises the target with the
   training split's mean and standard deviation.
3. Trains with per-epoch validation, best-model selection on the validation metric, early
   stopping and an atomic ``checkpoint_last.pt`` after every epoch in the work folder
   (``<output>/run`` unless ``work_dir`` is set). Calling :func:`train_from_config` again
   with the same settings resumes from it (``epochs`` may be raised).
4. Scores the best model on the test split (never used for selection) and writes the
   model folder: ``model.json``, ``weights.safetensors``, ``atom_init.json``, ``README.md``
   (model card), ``config.yaml``, ``split.json``, ``metrics.csv``, ``learning_curve.png``
   and ``parity.png`` (regression) or ``roc.png`` (classification).

Graph cache layout: ``<cache_dir>/graphs/<digest>/shard-<digest>.npz``. The folder digest
covers the :class:`~cgcnn_ase.graph.config.GraphConfig`, the package version and the source of the
parsing and graph code, so edited code never reuses stale graphs. Each shard holds the
concatenated atomic numbers, edge lists and distances of many crystals, with offsets,
keyed by a hash of each crystal's raw structure text (so the cache is shared by every
dataset, filter, limit and split that uses the same structures).
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import csv
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import platform
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cgcnn_ase.graph import config as graph_config
from cgcnn_ase.graph import neighbours as graph_module
from cgcnn_ase.graph.batch import merge_identical_edges
from cgcnn_ase.train import ddp as parallel_training
from cgcnn_ase.models.cards import fmt, json_safe
from cgcnn_ase.models.registry import resolve_device
from cgcnn_ase.models.folder import LoadedModel, ModelSpec, save_model_folder
from cgcnn_ase.train.datasets import (
    DatasetError,
    DatasetSpec,
    DatasetTable,
    Split,
    finalize_targets,
    is_binary_labels,
    load_table,
    make_split,
    parse_structures,
    warn_dropped_structures,
)
from cgcnn_ase.graph.elements import ElementTable, generate_cgcnn_table, load_atom_init
from cgcnn_ase.errors import CGCNNError, ConfigError, TrainingError
from cgcnn_ase.graph.neighbours import CrystalGraph
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.graph.batch import GraphBatch, gaussian_expand
from cgcnn_ase.nn.network import CrystalGraphConvNet
from cgcnn_ase.io.reader import StructureRecord

__all__ = [
    "ConfigError",
    "GraphBatcher",
    "GraphCache",
    "GraphStore",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "Split",
    "SplitConfig",
    "TrainConfig",
    "TrainingError",
    "build_graph_store",
    "default_cache_dir",
    "load_config",
    "make_split",
    "train_from_config",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cgcnn_ase.training/1"
CHECKPOINT_LAST = "checkpoint_last.pt"
GRAPH_CACHE_FORMAT = 1


# =============================================================================================
# Configuration
# =============================================================================================


@dataclass
class SplitConfig:
    """How crystals are split: seeded random fractions, or ids from an existing ``split.json``."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    file: str | None = None


@dataclass
class ModelConfig:
    """Keyword arguments of :class:`~cgcnn_ase.nn.network.CrystalGraphConvNet` (defaults: the
    original training script's), plus two training-speed options that leave the maths
    unchanged (the saved model does not depend on them): ``split_matmul`` computes the
    gated convolution's edge products in the cheaper split form (~2x faster on CPU), and
    ``merge_edges`` trains on graphs whose identical edges (periodic images of one atom at
    one distance from the same centre) are merged into one edge with a multiplicity
    (:func:`merge_duplicate_edges`; 2.4x fewer edges on 5-atom perovskites)."""

    atom_fea_len: int = 64
    n_conv: int = 3
    h_fea_len: int = 128
    n_h: int = 1
    readout: str = "mean"
    conv: str = "gated"
    dropout: float = 0.5
    split_matmul: bool = True
    merge_edges: bool = True


@dataclass
class OptimConfig:
    """Optimiser: ``sgd`` (with ``momentum``), ``adam`` or ``adamw``; ``lr``, ``weight_decay``."""

    name: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.9


@dataclass
class ScheduleConfig:
    """Learning-rate schedule.

    ``none``; ``multistep`` (×``gamma`` at each epoch in ``milestones``; the original's
    default is [100], 0.1); ``cosine`` (to ``min_lr`` over ``epochs``); ``onecycle``
    (peak ``optim.lr`` at ``pct_start`` of all steps); ``reduce_on_plateau`` (×``factor``
    after ``patience`` epochs without improvement of the monitored metric, down to ``min_lr``).
    """

    name: str = "multistep"
    milestones: list[int] = field(default_factory=lambda: [100])
    gamma: float = 0.1
    min_lr: float = 0.0
    pct_start: float = 0.3
    factor: float = 0.5
    patience: int = 10


@dataclass
class TrainConfig:
    """Everything a training run needs; see ``configs/*.yaml`` for annotated examples.

    Attributes:
        data: the dataset (:class:`~cgcnn_ase.train.datasets.DatasetSpec`).
        output: the model folder to write (created).
        property: name of the predicted property (default: the target column, with
            ``log10_`` for log targets).
        units: units of the (transformed) target, e.g. ``"eV/atom"`` or ``"log10(GPa)"``;
            classifiers report ``"probability"``.
        task: ``"regression"`` or ``"classification"`` (targets 0/1; class 1 is
            ``positive_class``).
        positive_class: name of class 1 (classification).
        split, model, optim, schedule: see their classes.
        graph: :class:`~cgcnn_ase.graph.config.GraphConfig` (8 Å, 12 neighbours, 41 Gaussians,
            ``neighbor_policy="symmetric"``).
        elements: ``"generated"`` (:func:`~cgcnn_ase.graph.elements.generate_cgcnn_table`) or the
            path of an ``atom_init.json``.
        loss: ``"auto"`` (``mse`` for regression, ``cross_entropy`` for classification),
            ``"mse"``, ``"mae"`` or ``"cross_entropy"``; computed on normalised targets.
        epochs: maximum number of epochs; batch_size: crystals per training step.
        eval_batch_size: crystals per step for validation and test predictions.
        patience: stop after this many epochs without improvement (``None``: never).
        time_limit: stop after the first epoch that ends more than this many minutes
            after this session started (``None``: no limit); the run can be resumed
            later with a larger limit, like any interrupted run.
        monitor: validation metric for model selection: ``"auto"`` (``val_mae`` /
            ``val_roc_auc``), ``val_mae``, ``val_rmse``, ``val_loss``, ``val_roc_auc`` or
            ``val_accuracy``.
        seed: seeds weights, shuffling and dropout.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        precision: ``"fp32"``, or ``"bf16"`` to run training steps under bfloat16 autocast
            (weights, optimiser, validation and the final test evaluation stay float32);
            faster on CPUs with AVX512-BF16/AMX and on recent GPUs, slightly less precise.
        compile: run training steps through ``torch.compile`` (dynamic shapes), which fuses
            the convolutions' elementwise work into a few loops: about 1.4-1.7x faster
            epochs on a CPU after a one-off compilation of 10-60 s (cached across runs in
            torch's inductor cache), so worth it for runs of more than a few minutes.
            Needs a C++ compiler on a CPU (Triton on a GPU); if compilation fails, training
            warns and goes on without it. Validation and test predictions stay eager.
        threads: torch CPU threads during the run (``None``: leave torch's setting).
        workers: processes for parsing structures and building graphs.
        cache_dir: graph cache folder (``None``: ``$CGCNN_ASE_CACHE`` or
            ``~/.cache/cgcnn_ase``).
        work_dir: folder for ``checkpoint_last.pt`` (``None``: ``<output>/run``).
        resume: continue from ``<work_dir>/checkpoint_last.pt`` when it exists.
        name: model name in ``model.json`` (default: the output folder's name).
        aliases: short names for the registry (``model.json`` metadata).
        metadata: provenance for the model card: ``dataset_name``, ``source``,
            ``licence``, ``citation``, ``notes``, ...
        command: the command that started the run, for the model card (default: rebuilt
            from the config file and overrides given to :func:`load_config`).
    """

    data: DatasetSpec
    output: str = "runs/cgcnn"
    property: str | None = None
    units: str = "unknown"
    task: str = "regression"
    positive_class: str | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    elements: str = "generated"
    loss: str = "auto"
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 30
    batch_size: int = 256
    eval_batch_size: int = 256
    patience: int | None = None
    time_limit: float | None = None
    monitor: str = "auto"
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    threads: int | None = None
    workers: int = 2
    cache_dir: str | None = None
    work_dir: str | None = None
    resume: bool = True
    name: str | None = None
    aliases: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    command: str | None = None
    source: str | None = field(default=None, repr=False)
    overrides: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    # -- derived settings ------------------------------------------------------------------
    @builtins.property  # the field `property` shadows the builtin here
    def loss_name(self) -> str:
        if self.loss != "auto":
            return self.loss
        return "cross_entropy" if self.task == "classification" else "mse"

    @builtins.property  # the field `property` shadows the builtin here
    def monitor_name(self) -> str:
        if self.monitor != "auto":
            return self.monitor
        return "val_roc_auc" if self.task == "classification" else "val_mae"

    @builtins.property  # the field `property` shadows the builtin here
    def property_name(self) -> str:
        if self.property:
            return self.property
        base = self.data.target if self.data.target.isidentifier() else "target"
        base = f"{base}_per_atom" if self.data.per_atom else base
        return f"log10_{base}" if self.data.transform == "log10" else base

    @builtins.property  # the field `property` shadows the builtin here
    def model_name(self) -> str:
        return self.name or Path(self.output).name

    @builtins.property  # the field `property` shadows the builtin here
    def work_path(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(self.output) / "run"

    def validate(self) -> None:
        """Check settings; raise :class:`ConfigError` naming the bad value and the choices."""

        def choice(name: str, value: Any, options: Sequence[str]) -> None:
            if value not in options:
                raise ConfigError(f"{name} must be one of {list(options)}, got {value!r}")

        choice("task", self.task, ("regression", "classification"))
        choice("model.readout", self.model.readout, ("mean", "atomwise"))
        choice("model.conv", self.model.conv, ("gated", "simple"))
        choice("optim.name", self.optim.name, ("sgd", "adam", "adamw"))
        choice("precision", self.precision, ("fp32", "bf16"))
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be true or false, got {self.compile!r}")
        choice("schedule.name", self.schedule.name, ("none", "multistep", "cosine", "onecycle", "reduce_on_plateau"))
        losses = ("auto", "cross_entropy") if self.task == "classification" else ("auto", "mse", "mae")
        choice("loss", self.loss, losses)
        monitors = (
            ("auto", "val_roc_auc", "val_accuracy", "val_loss")
            if self.task == "classification"
            else ("auto", "val_mae", "val_rmse", "val_loss")
        )
        choice("monitor", self.monitor, monitors)
        if self.task == "classification" and self.model.readout != "mean":
            raise ConfigError("classification needs model.readout='mean' (the atomwise readout is for regression)")
        if self.task == "classification" and self.data.transform != "none":
            raise ConfigError("classification targets are labels 0/1: data.transform must be 'none'")
        for name in ("epochs", "batch_size", "eval_batch_size", "workers"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ConfigError(f"time_limit must be a positive number of minutes (or null), got {self.time_limit}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be at least 1 (or null), got {self.patience}")
        if not self.optim.lr > 0:
            raise ConfigError(f"optim.lr must be positive, got {self.optim.lr}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1 (or null), got {self.threads}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}") from None
        fractions = (self.split.train, self.split.val, self.split.test)
        if min(fractions) < 0 or sum(fractions) > 1 + 1e-9 or self.split.train <= 0:
            raise ConfigError(f"split fractions must be >= 0, train > 0, summing to at most 1; got {fractions}")

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain data (what ``config.yaml`` holds)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("source", "overrides"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, GraphConfig):
                value = value.to_dict()
            elif dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            out[f.name] = copy.deepcopy(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from nested mappings (as read from YAML/TOML); unknown keys raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"a training configuration must be a mapping, got {type(data).__name__}")
        data = dict(data)
        if "data" not in data:
            raise ConfigError("the configuration needs a 'data' section (at least data.path and data.target)")
        sections = {
            "split": SplitConfig,
            "model": ModelConfig,
            "optim": OptimConfig,
            "schedule": ScheduleConfig,
        }
        kwargs: dict[str, Any] = {}
        try:
            kwargs["data"] = DatasetSpec.from_dict(_coerce(DatasetSpec, data.pop("data"), "data"))
        except DatasetError as exc:
            raise ConfigError(f"data: {exc}") from None
        for name, section_cls in sections.items():
            if name in data:
                value = data.pop(name)
                kwargs[name] = section_cls(**_coerce(section_cls, value or {}, name))
        if "graph" in data:
            try:
                kwargs["graph"] = GraphConfig.from_dict(_coerce(GraphConfig, data.pop("graph") or {}, "graph"))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"graph: {exc}") from None
        kwargs.update(_coerce(cls, data, "config", skip={"data", *sections, "graph"}))
        return cls(**kwargs)


def _coerce(cls: type, data: Any, section: str, skip: set[str] = frozenset()) -> dict[str, Any]:
    """Check keys against ``cls``'s fields and coerce numeric strings (YAML reads ``1e-3`` as text)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{section} must be a mapping, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known) - skip)
    if unknown:
        raise ConfigError(f"unknown {section} setting(s) {unknown}; known: {sorted(set(known) - skip)}")
    out = {}
    for key, value in data.items():
        kind = str(known[key].type)
        if isinstance(value, str) and ("float" in kind or "int" in kind) and "str" not in kind:
            try:
                value = int(value) if "int" in kind and "float" not in kind else float(value)
            except ValueError:
                raise ConfigError(f"{section}.{key} must be a number, got {value!r}") from None
        out[key] = value
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``"section.key=value"`` overrides to a config mapping (values parsed as YAML)."""
    import yaml

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. optim.lr=0.01")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc})") from None
        _set_dotted(data, key, value)
    return data


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) configuration into a mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such configuration file")
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    else:
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping of sections")
    return data


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML or TOML training configuration and apply ``key=value`` overrides.

    Args:
        path: the configuration file.
        overrides: e.g. ``["optim.lr=0.01", "epochs=5", "data.drop_ids=[mp-1, mp-2]"]``;
            values are parsed with ``yaml.safe_load``.

    Raises:
        ConfigError: unreadable file, unknown key, invalid value.
    """
    data = apply_overrides(read_config_file(path), overrides)
    config = TrainConfig.from_dict(data)
    config.source = str(path)
    config.overrides = list(overrides)
    return config


def _fingerprint(config: TrainConfig) -> str:
    """Digest of the settings a resumed run must share with the checkpoint."""
    data = config.to_dict()
    for key in ("output", "work_dir", "resume", "name", "aliases", "metadata", "command", "property", "units",
                "positive_class", "patience", "time_limit", "threads", "workers", "cache_dir", "device", "precision",
                "compile", "eval_batch_size"):  # fmt: skip
        data.pop(key, None)
    data["data"].pop("name", None)
    data["model"].pop("split_matmul", None)
    data["model"].pop("merge_edges", None)
    if config.schedule.name not in ("cosine", "onecycle"):
        data.pop("epochs")  # more epochs may be added on resume
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# =============================================================================================
# Graph store, cache and batching
# =============================================================================================


def _concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without a loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(np.asarray(starts, dtype=np.int64) - (ends - lengths), lengths) + np.arange(total, dtype=np.int64)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))


@dataclass
class GraphStore:
    """Many crystal graphs in concatenated arrays (the cache's and the batcher's format).

    Attributes:
        keys: structure content hash per crystal, shape (n,), str.
        numbers: atomic numbers of all atoms, shape (N_total,), int64.
        atom_offsets: crystal ``k``'s atoms are ``numbers[atom_offsets[k]:atom_offsets[k+1]]``, shape (n+1,).
        centers, neighbors: edge end points, local to their crystal, shape (E_total,), int32.
        distances: edge lengths, Å, shape (E_total,), float64.
        edge_offsets: crystal ``k``'s edges are ``[edge_offsets[k]:edge_offsets[k+1]]``, shape (n+1,).
        n_sparse: atoms with fewer than ``max_neighbors`` neighbours per crystal, shape (n,).
    """

    keys: np.ndarray
    numbers: np.ndarray
    atom_offsets: np.ndarray
    centers: np.ndarray
    neighbors: np.ndarray
    distances: np.ndarray
    edge_offsets: np.ndarray
    n_sparse: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per crystal, shape (n,)."""
        return np.diff(self.atom_offsets)

    @property
    def n_edges(self) -> np.ndarray:
        """Edges per crystal, shape (n,)."""
        return np.diff(self.edge_offsets)

    @classmethod
    def from_graphs(cls, keys: Sequence[str], graphs: Sequence[CrystalGraph]) -> GraphStore:
        if len(keys) != len(graphs):
            raise ValueError("one key per graph is needed")
        if not graphs:
            return cls.empty()
        return cls(
            keys=np.asarray(list(keys), dtype="U32"),
            numbers=np.concatenate([g.numbers for g in graphs]).astype(np.int64),
            atom_offsets=_offsets(np.array([g.n_atoms for g in graphs])),
            centers=np.concatenate([g.centers for g in graphs]).astype(np.int32),
            neighbors=np.concatenate([g.neighbors for g in graphs]).astype(np.int32),
            distances=np.concatenate([g.distances for g in graphs]).astype(np.float64),
            edge_offsets=_offsets(np.array([len(g.centers) for g in graphs])),
            n_sparse=np.array([g.n_sparse for g in graphs], dtype=np.int32),
        )

    @classmethod
    def empty(cls) -> GraphStore:
        zero = np.zeros(1, dtype=np.int64)
        return cls(
            keys=np.zeros(0, dtype="U32"), numbers=np.zeros(0, dtype=np.int64), atom_offsets=zero,
            centers=np.zeros(0, dtype=np.int32), neighbors=np.zeros(0, dtype=np.int32),
            distances=np.zeros(0), edge_offsets=zero.copy(), n_sparse=np.zeros(0, dtype=np.int32),
        )  # fmt: skip

    @classmethod
    def concat(cls, stores: Sequence[GraphStore]) -> GraphStore:
        stores = [s for s in stores if len(s)]
        if not stores:
            return cls.empty()
        if len(stores) == 1:
            return stores[0]
        return cls(
            keys=np.concatenate([s.keys for s in stores]),
            numbers=np.concatenate([s.numbers for s in stores]),
            atom_offsets=_offsets(np.concatenate([s.n_atoms for s in stores])),
            centers=np.concatenate([s.centers for s in stores]),
            neighbors=np.concatenate([s.neighbors for s in stores]),
            distances=np.concatenate([s.distances for s in stores]),
            edge_offsets=_offsets(np.concatenate([s.n_edges for s in stores])),
            n_sparse=np.concatenate([s.n_sparse for s in stores]),
        )

    def take(self, indices: Sequence[int] | np.ndarray) -> GraphStore:
        """The crystals at ``indices`` (in that order), as a new store."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n_at, n_ed = self.n_atoms[idx], self.n_edges[idx]
        atoms = _concat_ranges(self.atom_offsets[idx], n_at)
        edges = _concat_ranges(self.edge_offsets[idx], n_ed)
        return GraphStore(
            keys=self.keys[idx],
            numbers=self.numbers[atoms],
            atom_offsets=_offsets(n_at),
            centers=self.centers[edges],
            neighbors=self.neighbors[edges],
            distances=self.distances[edges],
            edge_offsets=_offsets(n_ed),
            n_sparse=self.n_sparse[idx],
        )

    def graph(self, k: int, label: str = "") -> CrystalGraph:
        """Crystal ``k`` as a :class:`~cgcnn_ase.graph.neighbours.CrystalGraph`."""
        a0, a1 = self.atom_offsets[k], self.atom_offsets[k + 1]
        e0, e1 = self.edge_offsets[k], self.edge_offsets[k + 1]
        return CrystalGraph(
            numbers=self.numbers[a0:a1].copy(),
            centers=self.centers[e0:e1].astype(np.int64),
            neighbors=self.neighbors[e0:e1].astype(np.int64),
            distances=self.distances[e0:e1].copy(),
            n_sparse=int(self.n_sparse[k]),
            label=label or str(self.keys[k]),
        )

    def save(self, path: str | os.PathLike, failures: dict[str, str] | None = None) -> Path:
        """Write an uncompressed ``.npz`` atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        failures = failures or {}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                format=np.array(GRAPH_CACHE_FORMAT),
                keys=self.keys.astype("U32"),
                numbers=self.numbers.astype(np.int16),
                atom_offsets=self.atom_offsets,
                centers=self.centers.astype(np.int32),
                neighbors=self.neighbors.astype(np.int32),
                distances=self.distances,
                edge_offsets=self.edge_offsets,
                n_sparse=self.n_sparse,
                failed_keys=np.asarray(list(failures), dtype="U32"),
                failed_messages=np.asarray(list(failures.values()), dtype=str),
            )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple[GraphStore, dict[str, str]]:
        """Read a store written by :meth:`save`, with its failed keys and messages."""
        with np.load(path, allow_pickle=False) as z:
            store = cls(
                keys=z["keys"],
                numbers=z["numbers"].astype(np.int64),
                atom_offsets=z["atom_offsets"].astype(np.int64),
                centers=z["centers"],
                neighbors=z["neighbors"],
                distances=z["distances"],
                edge_offsets=z["edge_offsets"].astype(np.int64),
                n_sparse=z["n_sparse"],
            )
            failures = dict(zip(z["failed_keys"].tolist(), z["failed_messages"].tolist()))
        return store, failures


def default_cache_dir() -> Path:
    """``$CGCNN_ASE_CACHE``, else ``$XDG_CACHE_HOME/cgcnn_ase``, else ``~/.cache/cgcnn_ase``."""
    if os.environ.get("CGCNN_ASE_CACHE"):
        return Path(os.environ["CGCNN_ASE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cgcnn_ase"


class GraphCache:
    """Crystal graphs on disk, keyed by structure content hash, one folder per graph setting.

    Args:
        root: cache folder (``None``: :func:`default_cache_dir`).
        config: the graph settings; together with the package version they name the folder,
            so changing either never reuses stale graphs.
    """

    def __init__(self, root: str | os.PathLike | None, config: GraphConfig) -> None:
        self.config = config
        settings = {"graph": config.to_dict(), "code": _code_digest(), "format": GRAPH_CACHE_FORMAT}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(root if root is not None else default_cache_dir()) / "graphs" / digest

    def lookup(self, keys: Sequence[str]) -> tuple[GraphStore, np.ndarray, dict[str, str]]:
        """Cached graphs for ``keys``.

        Returns:
            ``(store, found, failures)``: the graphs of the found keys in the order of
            ``keys``; a boolean mask of found keys (graphs or known failures); and the
            messages of keys that are known to be unusable.
        """
        keys = list(keys)
        wanted = {k: i for i, k in enumerate(keys)}
        found = np.zeros(len(keys), dtype=bool)
        pieces: list[tuple[np.ndarray, GraphStore]] = []  # (positions in `keys`, store)
        failures: dict[str, str] = {}
        for shard in sorted(self.folder.glob("shard-*.npz")) if self.folder.is_dir() else []:
            if found.all():
                break
            try:
                store, failed = GraphStore.load(shard)
            except (OSError, ValueError, KeyError) as exc:  # a corrupt shard is ignored and rebuilt
                logger.warning("ignoring unreadable graph cache file %s (%s)", shard, exc)
                continue
            hits = [(wanted[k], j) for j, k in enumerate(store.keys.tolist()) if k in wanted and not found[wanted[k]]]
            if hits:
                positions, rows = (np.array(v, dtype=np.int64) for v in zip(*hits))
                pieces.append((positions, store.take(rows)))
                found[positions] = True
            for key, message in failed.items():
                if key in wanted and not found[wanted[key]]:
                    failures[key] = message
                    found[wanted[key]] = True
        if not pieces:
            return GraphStore.empty(), found, failures
        positions = np.concatenate([p for p, _ in pieces])
        store = GraphStore.concat([s for _, s in pieces])
        return store.take(np.argsort(positions, kind="stable")), found, failures

    def add(self, store: GraphStore, failures: dict[str, str] | None = None) -> Path | None:
        """Write a new shard holding ``store`` (and known failures); returns its path."""
        if not len(store) and not failures:
            return None
        digest = hashlib.sha256("\n".join([*store.keys.tolist(), *sorted(failures or {})]).encode()).hexdigest()[:16]
        return store.save(self.folder / f"shard-{digest}.npz", failures)


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """Digest of the code that turns raw structures into graphs (parsing, validation, graph
    construction), so that cached graphs are never reused after that code changes."""
    import inspect

    from cgcnn_ase import __version__
    from cgcnn_ase.io import reader as structures
    from cgcnn_ase.train import datasets

    h = hashlib.sha256(__version__.encode())
    try:
        h.update(inspect.getsource(datasets.parse_one).encode())
        for module in (structures, graph_config, graph_module):
            h.update(Path(module.__file__).read_bytes())
    except (OSError, TypeError):  # no source (frozen/zipped install): the version must do
        pass
    return h.hexdigest()[:16]


def _graph_of_record(record: StructureRecord, *, config: GraphConfig) -> CrystalGraph:
    """Pool worker step: the graph of a parsed record (warnings off; sparsity is recorded)."""
    return graph_module.build_graph(record, config, on_sparse="ignore")


def build_graph_store(
    table: DatasetTable,
    config: GraphConfig,
    *,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 2,
    progress: bool = False,
    use_cache: bool = True,
) -> tuple[GraphStore, np.ndarray, dict[str, str]]:
    """Graphs of every row of ``table``, from the cache where possible.

    Structures not in the cache are parsed and their graphs built (in ``workers``
    processes), then stored as a new cache shard.

    Returns:
        ``(store, rows, errors)``: graphs of the usable rows, in table order; the table
        row of each graph; ``{id: message}`` for rows whose structure is unusable.
    """
    cache = GraphCache(cache_dir, config) if use_cache else None
    if cache is not None:
        cached, found, failures = cache.lookup(table.keys)
    else:
        cached, found, failures = GraphStore.empty(), np.zeros(len(table), dtype=bool), {}
    missing = np.flatnonzero(~found)
    new_store, new_failures = GraphStore.empty(), {}
    if len(missing):
        logger.info("building %d crystal graphs (%d found in the cache)", len(missing), int(found.sum()))
        results = parse_structures(
            table,
            missing,
            workers=workers,
            progress=progress,
            postprocess=functools.partial(_graph_of_record, config=config),
        )
        good = [(table.keys[i], r) for i, r in zip(missing, results) if isinstance(r, CrystalGraph)]
        new_failures = {table.keys[i]: r for i, r in zip(missing, results) if not isinstance(r, CrystalGraph)}
        new_store = GraphStore.from_graphs([k for k, _ in good], [g for _, g in good])
        if cache is not None:
            try:
                cache.add(new_store, new_failures)
            except OSError as exc:
                warnings.warn(f"could not write the graph cache in {cache.folder} ({exc})", UserWarning, stacklevel=2)
    else:
        logger.info("all %d crystal graphs found in the cache %s", len(table), cache.folder if cache else "")
    failures.update(new_failures)
    combined = GraphStore.concat([cached, new_store])
    position = {k: i for i, k in enumerate(combined.keys.tolist())}
    rows = np.array([i for i, k in enumerate(table.keys) if k in position], dtype=np.int64)
    store = combined.take([position[table.keys[i]] for i in rows]) if len(rows) else GraphStore.empty()
    errors = {
        table.ids[i]: failures.get(k, "unusable structure") for i, k in enumerate(table.keys) if k not in position
    }
    return store, rows, errors


def merge_duplicate_edges(store: GraphStore) -> tuple[GraphStore, np.ndarray]:
    """Merge each crystal's identical edges into one edge with a multiplicity
    (:func:`cgcnn_ase.graph.batch.merge_identical_edges`).

    Returns:
        ``(merged, weights)``: the store with merged edges (each crystal's edges sorted by
        centre, neighbour and distance; atoms unchanged) and the multiplicity of each of
        its edges, float32, shape (E_merged,).
    """
    if not len(store.distances):
        return store, np.ones(0, dtype=np.float32)
    crystal = np.repeat(np.arange(len(store)), store.n_edges)
    centre = store.centers.astype(np.int64) + store.atom_offsets[:-1][crystal]  # global: sorts by crystal first
    keep, weights = merge_identical_edges(centre, store.neighbors, store.distances)
    merged = dataclasses.replace(
        store,
        centers=store.centers[keep],
        neighbors=store.neighbors[keep],
        distances=store.distances[keep],
        edge_offsets=_offsets(np.bincount(crystal[keep], minlength=len(store))),
    )
    return merged, weights


class GraphBatcher:
    """Builds :class:`~cgcnn_ase.graph.batch.GraphBatch` objects from a :class:`GraphStore`.

    Equivalent to :func:`cgcnn_ase.graph.batch.collate` on the same graphs, but gathers from the
    concatenated arrays with vectorised index arithmetic. Gaussian edge features are
    computed once for the whole store when they fit in ``edge_feature_bytes`` (else per
    batch).

    Args:
        store: the graphs.
        elements: element feature table (every element in ``store`` must be supported).
        config: graph settings (Gaussian centres and width).
        edge_feature_bytes: memory allowed for precomputed edge features.
        merge_edges: batch merged graphs (:func:`merge_duplicate_edges`) whose batches
            carry ``edge_weight``: the same network outputs and gradients on fewer edges.
    """

    def __init__(
        self,
        store: GraphStore,
        elements: ElementTable,
        config: GraphConfig,
        *,
        edge_feature_bytes: int = 1 << 30,
        merge_edges: bool = False,
    ) -> None:
        self.edge_weight: np.ndarray | None = None
        if merge_edges:
            store, self.edge_weight = merge_duplicate_edges(store)
        self.store = store
        self.elements = elements
        self.config = config
        self.atom_features = torch.tensor(elements.features, dtype=torch.float32)
        n_edges = len(store.distances)
        self.edge_features: torch.Tensor | None = None
        if n_edges * config.n_gaussians * 4 <= edge_feature_bytes:
            chunks = [
                gaussian_expand(torch.from_numpy(store.distances[i : i + 1_000_000]), config)
                for i in range(0, max(n_edges, 1), 1_000_000)
            ]
            self.edge_features = torch.cat(chunks) if chunks else torch.zeros((0, config.n_gaussians))
        if len(store.numbers):
            elements.featurize(np.unique(store.numbers))  # raises for unsupported elements

    def batch(self, indices: Sequence[int] | np.ndarray) -> GraphBatch:
        """The crystals at ``indices`` (store positions), in that order, as one batch."""
        s = self.store
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) == 0:
            raise ValueError("a batch needs at least one crystal")
        n_at, n_ed = s.n_atoms[idx], s.n_edges[idx]
        atoms = _concat_ranges(s.atom_offsets[idx], n_at)
        edges = _concat_ranges(s.edge_offsets[idx], n_ed)
        shift = np.repeat(_offsets(n_at)[:-1], n_ed)
        edges_t = torch.from_numpy(edges)
        if self.edge_features is not None:
            edge_fea = self.edge_features.index_select(0, edges_t)
        else:
            edge_fea = gaussian_expand(torch.from_numpy(s.distances[edges]), self.config)
        return GraphBatch(
            atom_fea=self.atom_features.index_select(0, torch.from_numpy(s.numbers[atoms])),
            edge_fea=edge_fea,
            centers=torch.from_numpy(s.centers[edges] + shift),
            neighbors=torch.from_numpy(s.neighbors[edges] + shift),
            crystal_index=torch.from_numpy(np.repeat(np.arange(len(idx), dtype=np.int64), n_at)),
            n_crystals=len(idx),
            edge_weight=None if self.edge_weight is None else torch.from_numpy(self.edge_weight[edges]),
        )


# =============================================================================================
# Data preparation
# =============================================================================================


@dataclass
class PreparedData:
    """Usable crystals of a dataset with their graphs and final targets.

    Attributes:
        ids: crystal ids, shape (n,); targets: float64 (n,) after per_atom/transform.
        store: their graphs (same order); elements: the element table.
        table: the dataset table (all selected rows); errors: ``{id: reason}`` of rows
            left out because the structure or an element was unusable.
    """

    ids: list[str]
    targets: np.ndarray
    store: GraphStore
    elements: ElementTable
    table: DatasetTable
    errors: dict[str, str]


def load_elements(spec: str) -> ElementTable:
    """``"generated"`` -> this project's table; else the path of an ``atom_init.json``."""
    if spec == "generated":
        return generate_cgcnn_table()
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"elements must be 'generated' or the path of an atom_init.json; {path} does not exist")
    return load_atom_init(path)


def prepare_data(config: TrainConfig, *, progress: bool = False) -> PreparedData:
    """Read the dataset table, fetch/build graphs, drop unusable rows, compute targets."""
    elements = load_elements(config.elements)
    try:
        table = load_table(config.data)
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    store, rows, errors = build_graph_store(
        table, config.graph, cache_dir=config.cache_dir, workers=config.workers, progress=progress
    )
    if len(store):  # elements the table cannot featurise
        supported = np.zeros(max(elements.max_z, int(store.numbers.max())) + 1, dtype=bool)
        supported[sorted(elements.supported)] = True
        bad_atom = ~supported[store.numbers]
        crystal = np.repeat(np.arange(len(store)), store.n_atoms)
        bad = np.bincount(crystal[bad_atom], minlength=len(store)) > 0
        if bad.any():
            for k in np.flatnonzero(bad):
                errors[table.ids[rows[k]]] = f"element(s) not in the element table {elements.name!r}"
            keep = np.flatnonzero(~bad)
            store, rows = store.take(keep), rows[keep]
    warn_dropped_structures(config.data, errors)
    if not len(store):
        raise ConfigError(f"{config.data.path}: no usable crystals")
    ids = [table.ids[i] for i in rows]
    try:
        targets = finalize_targets(config.data, table.raw_targets[rows], store.n_atoms, ids)
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    if config.task == "classification" and not is_binary_labels(targets):
        raise ConfigError(
            f"classification targets must be 0 or 1; {config.data.target!r} gives {np.unique(targets)[:6].tolist()} "
            "(use an expression such as 'band_gap == 0')"
        )
    return PreparedData(ids=ids, targets=targets, store=store, elements=elements, table=table, errors=errors)


# =============================================================================================
# Training loop pieces
# =============================================================================================


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Use ``threads`` torch CPU threads inside the block, restoring the previous count after."""
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def _batches(order: np.ndarray, batch_size: int, min_last: int = 2) -> list[np.ndarray]:
    """Consecutive chunks of ``order``; a last chunk of fewer than ``min_last`` crystals joins
    the previous one (batch norm needs more than one value per channel; data-parallel runs
    use ``2 * world_size`` so that every process gets at least two crystals)."""
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) < min_last:
        last = chunks.pop()  # pop first: `chunks[-2] = concat(chunks[-2], chunks.pop())` overwrote the wrong chunk
        chunks[-1] = np.concatenate([chunks[-1], last])
    return chunks


def _steps_per_epoch(n_train: int, batch_size: int, min_last: int = 2) -> int:
    return len(_batches(np.arange(n_train), batch_size, min_last))


def _make_optimizer(config: TrainConfig, params: Any) -> torch.optim.Optimizer:
    o = config.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)


def _make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    s = config.schedule
    if s.name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(s.milestones), gamma=s.gamma)
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=s.min_lr)
    if s.name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.optim.lr, total_steps=config.epochs * steps_per_epoch, pct_start=s.pct_start
        )
    if s.name == "reduce_on_plateau":
        mode = "max" if config.monitor_name in ("val_roc_auc", "val_accuracy") else "min"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=s.factor, patience=s.patience, min_lr=s.min_lr
        )
    return None


def _plain_state(state: dict[str, Any]) -> dict[str, Any]:
    """A scheduler state dict with Counters turned into dicts (loadable with weights_only=True)."""
    return {k: ({"__counter__": dict(v)} if isinstance(v, Counter) else v) for k, v in state.items()}


def _restore_state(state: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (Counter(v["__counter__"]) if isinstance(v, dict) and "__counter__" in v else v) for k, v in state.items()
    }


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.inference_mode()
def predict_store(
    network: CrystalGraphConvNet,
    batcher: GraphBatcher,
    indices: np.ndarray,
    *,
    mean: float,
    std: float,
    batch_size: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode predictions for store positions ``indices``.

    Returns:
        ``(values, raw)``: values in target units (regression) or the probability of
        class 1 (classification), float64 (n,); and the raw network outputs (normalised
        values (n,) or log-probabilities (n, 2)).
    """
    was_training = network.training
    network.eval()
    raw = []
    try:
        for chunk in _batches(np.asarray(indices), batch_size):
            raw.append(network(batcher.batch(chunk).to(device)).double().cpu())
    finally:
        network.train(was_training)
    if not raw:
        return np.zeros(0), np.zeros(0)
    out = torch.cat(raw).numpy()
    if out.ndim == 2:
        return np.exp(out[:, 1]), out
    return out * std + mean, out


def _split_metrics(
    task: str, y: np.ndarray, values: np.ndarray, raw: np.ndarray, loss_name: str, mean: float, std: float
) -> dict[str, float]:
    """Validation/test metrics of one split, plus the loss in normalised units."""
    from cgcnn_ase.analysis.evaluation import classification_metrics, regression_metrics

    if len(y) == 0:
        return {}
    if task == "classification":
        m = classification_metrics(y, values)
        nll = float(-np.mean(raw[np.arange(len(y)), y.astype(int)]))
        return {"loss": nll, "roc_auc": m["roc_auc"], "accuracy": m["accuracy"]}
    m = regression_metrics(y, values)
    z = (y - mean) / std
    loss = float(np.mean(np.abs(raw - z))) if loss_name == "mae" else float(np.mean((raw - z) ** 2))
    return {"loss": loss, "mae": m["mae"], "rmse": m["rmse"]}


def _hardware(device: torch.device, threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        info["processes"] = torch.distributed.get_world_size()  # data-parallel run (cgcnn_ase.train.ddp)
    return info


def _command(config: TrainConfig) -> str:
    if config.command:
        return config.command
    if config.source:
        parts = ["cgcnn-ase", "train", config.source] + [f"--set {o}" for o in config.overrides]
        return " ".join(parts)
    return "cgcnn_ase.train.trainer.train_from_config(TrainConfig(...)) -- settings in config.yaml"


METRIC_COLUMNS = {
    "regression": ["epoch", "train_loss", "train_mae", "val_loss", "val_mae", "val_rmse", "lr", "epoch_time_s", "best"],
    "classification": [
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_roc_auc",
        "val_accuracy",
        "lr",
        "epoch_time_s",
        "best",
    ],
}


def _write_metrics_csv(path: Path, history: list[dict[str, Any]], task: str) -> None:
    columns = METRIC_COLUMNS[task]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, path)


# =============================================================================================
# train_from_config
# =============================================================================================


def train_from_config(config: TrainConfig, *, progress: bool = True) -> Path:
    """Train a model as ``config`` says and write its model folder; returns the folder.

    Resumes from ``<work_dir>/checkpoint_last.pt`` when it exists and ``config.resume``
    is true (the settings that shape the run must match; ``epochs`` and ``patience`` may
    change). A run that already reached ``epochs`` or stopped early only rewrites the
    model folder.

    Launched by ``torchrun`` with more than one process (``WORLD_SIZE`` > 1), it trains
    data-parallel with DistributedDataParallel (see :mod:`cgcnn_ase.train.ddp`):
    ``batch_size`` is the global batch, split across the processes; only rank 0 writes
    files; every process returns the model folder's path.

    Raises:
        ConfigError: bad settings, or settings that differ from the checkpoint's.
        TrainingError: the loss became NaN or infinite.
    """
    config.validate()
    ddp = parallel_training.start(config.device)
    if ddp is None:
        return _train(config, progress=progress, ddp=None)
    try:
        return _train(config, progress=progress and ddp.is_main, ddp=ddp)
    finally:
        ddp.close()


def _train(config: TrainConfig, *, progress: bool, ddp: parallel_training.DistributedRun | None) -> Path:
    """:func:`train_from_config` in one process (``ddp=None``) or as one rank of a data-parallel run."""
    from tqdm.auto import tqdm

    session_start = time.perf_counter()
    work = config.work_path
    device = ddp.device if ddp is not None else resolve_device(config.device)
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    # fork_rng: seeding for this run leaves the caller's global RNG state untouched
    with torch_threads(config.threads) as threads, torch.random.fork_rng(devices=rng_devices):
        with parallel_training.main_first(ddp):  # rank 0 builds the graph cache; the others then read it
            data = prepare_data(config, progress=progress)
        work.mkdir(parents=True, exist_ok=True)
        checkpoint_path = work / CHECKPOINT_LAST
        fingerprint = _fingerprint(config)
        checkpoint = None
        if config.resume and checkpoint_path.is_file():
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            if checkpoint.get("format") != CHECKPOINT_FORMAT:
                raise ConfigError(f"{checkpoint_path}: not a cgcnn-ase training checkpoint")
            if checkpoint["fingerprint"] != fingerprint:
                raise ConfigError(
                    f"{checkpoint_path} was written with different settings (data, split, model, graph, optimiser or "
                    "schedule); use another output/work_dir, or set resume=false to start over"
                )
        split = _resolve_split(config, work, data.ids, resuming=checkpoint is not None)
        position = {i: k for k, i in enumerate(data.ids)}
        missing = [i for name in ("train", "val", "test") for i in split.ids(name) if i not in position]
        if missing:
            raise ConfigError(
                f"{len(missing)} ids of the split are not usable crystals of the dataset (e.g. {missing[:3]})"
            )
        parts = {
            name: np.array([position[i] for i in split.ids(name)], dtype=np.int64) for name in ("train", "val", "test")
        }
        y_all = data.targets
        if config.task == "regression":
            mean = float(np.mean(y_all[parts["train"]]))
            std = float(np.std(y_all[parts["train"]]))
            std = std if std > 1e-12 else 1.0
        else:
            mean, std = 0.0, 1.0
        if checkpoint is not None:
            mean, std = checkpoint["normalizer"]["mean"], checkpoint["normalizer"]["std"]
        batcher = GraphBatcher(data.store, data.elements, config.graph, merge_edges=config.model.merge_edges)

        torch.manual_seed(config.seed)
        architecture = dict(
            orig_atom_fea_len=data.elements.n_features,
            nbr_fea_len=config.graph.n_gaussians,
            atom_fea_len=config.model.atom_fea_len,
            n_conv=config.model.n_conv,
            h_fea_len=config.model.h_fea_len,
            n_h=config.model.n_h,
            task=config.task,
            readout=config.model.readout,
            conv=config.model.conv,
            dropout=config.model.dropout,
        )
        try:
            network = CrystalGraphConvNet(**architecture)
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from None
        network.to(device)
        _set_split_matmul(network, config.model.split_matmul)
        optimizer = _make_optimizer(config, network.parameters())
        min_last = 2 * ddp.world_size if ddp is not None else 2  # every process gets >= 2 crystals
        if ddp is not None and len(parts["train"]) < min_last:
            raise ConfigError(f"{ddp.world_size} processes need at least {min_last} training crystals")
        steps = _steps_per_epoch(len(parts["train"]), config.batch_size, min_last)
        scheduler = _make_scheduler(config, optimizer, steps)
        shuffle = torch.Generator().manual_seed(config.seed)
        history: list[dict[str, Any]] = []
        best: dict[str, Any] = {"epoch": 0, "value": None, "state": None}
        epoch, wall_before = 0, 0.0
        if checkpoint is not None:
            network.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            if scheduler is not None and checkpoint["scheduler"] is not None:
                scheduler.load_state_dict(_restore_state(checkpoint["scheduler"]))
            torch.set_rng_state(checkpoint["rng"]["torch"])
            shuffle.set_state(checkpoint["rng"]["shuffle"])
            if device.type == "cuda" and checkpoint["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], device)
            history, best = checkpoint["history"], checkpoint["best"]
            epoch, wall_before = int(checkpoint["epoch"]), float(checkpoint["wall_time_s"])
            logger.info("resuming %s from epoch %d", checkpoint_path, epoch)
        # every process has read the same checkpoint and data before rank 0 writes
        parallel_training.check_same(ddp, epoch=epoch, crystals=len(data.ids), train=len(parts["train"]))
        parallel_training.seed_rank(ddp, config.seed, epoch)
        model = parallel_training.wrap(network, ddp)  # the network itself in a single process
        forward = TrainingForward(model, network, compile=config.compile)
        if ddp is None or ddp.is_main:
            split.save(work / "split.json")

        monitor = config.monitor_name
        if monitor == "val_roc_auc" and len(np.unique(y_all[parts["val"]])) < 2:
            logger.warning("the validation split holds one class only; selecting the model on val_loss instead")
            monitor = "val_loss"
        if len(parts["val"]) == 0:
            logger.warning("no validation split; selecting the model on the training loss")
            monitor = "train_loss"
        maximize = monitor in ("val_roc_auc", "val_accuracy")
        loss_fn = _loss_function(config.loss_name)
        targets_t = torch.as_tensor((y_all - mean) / std, dtype=torch.float32)
        if config.task == "classification":
            targets_t = torch.as_tensor(y_all, dtype=torch.long)

        def improved(value: float) -> bool:
            if best["value"] is None or not math.isfinite(best["value"]):
                return math.isfinite(value) or best["value"] is None
            return value > best["value"] if maximize else value < best["value"]

        def finished() -> bool:
            if epoch >= config.epochs:
                return True
            over_time = config.time_limit is not None and time.perf_counter() - session_start > 60 * config.time_limit
            if over_time and epoch > first_epoch:  # each session trains at least one epoch
                logger.info("stopping after epoch %d: the time limit of %g min is reached", epoch, config.time_limit)
                return True
            return config.patience is not None and best["epoch"] > 0 and epoch - best["epoch"] >= config.patience

        first_epoch = epoch
        bar = tqdm(total=config.epochs, initial=epoch, disable=not progress, unit="epoch", desc=config.model_name)
        try:
            while not parallel_training.agree(finished(), ddp):  # rank 0 decides for all processes
                epoch += 1
                t0 = time.perf_counter()
                network.train()
                order = parts["train"][torch.randperm(len(parts["train"]), generator=shuffle).numpy()]
                sum_loss, sum_err, count = 0.0, 0.0, 0
                for chunk in _batches(order, config.batch_size, min_last):
                    if ddp is not None:  # this process's rank-strided share of the global batch
                        chunk, scale = parallel_training.shard(chunk, ddp)
                    batch = batcher.batch(chunk).to(device)
                    target = targets_t[chunk].to(device)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                        out = forward(batch)
                    out = out.float()
                    loss = loss_fn(out, target)
                    optimizer.zero_grad(set_to_none=True)
                    (loss * scale if ddp is not None else loss).backward()
                    optimizer.step()
                    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
                        scheduler.step()
                    loss_value = loss.item()
                    with torch.no_grad():
                        n = len(chunk)
                        if config.task == "classification":
                            step_err = float((out.argmax(1) == target).sum())
                        else:
                            step_err = float((out - target).abs().sum()) * std
                        if ddp is not None:  # the global batch's mean loss, error sum and size
                            loss_value, step_err, n = parallel_training.step_totals(ddp, loss_value, step_err, n)
                        sum_loss += loss_value * n
                        sum_err += step_err
                        count += n
                    if not math.isfinite(loss_value):
                        raise TrainingError(
                            f"epoch {epoch}: the training loss became {loss_value}; lower optim.lr "
                            f"(now {optimizer.param_groups[0]['lr']:g}) or check the targets"
                        )
                lr = optimizer.param_groups[0]["lr"]
                row: dict[str, Any] = {"epoch": epoch, "train_loss": sum_loss / count}
                row["train_accuracy" if config.task == "classification" else "train_mae"] = sum_err / count
                predict_val = functools.partial(
                    predict_store, network, batcher, mean=mean, std=std, batch_size=config.eval_batch_size, device=device
                )
                if ddp is None:
                    values, raw = predict_val(parts["val"])
                else:  # identical models on every process; each predicts 1/W of the validation set
                    parallel_training.sync_buffers(network, ddp)
                    values, raw = parallel_training.gather_rows(predict_val, parts["val"], ddp)
                val = _split_metrics(config.task, y_all[parts["val"]], values, raw, config.loss_name, mean, std)
                row.update({f"val_{k}": v for k, v in val.items()})
                row.update({"lr": lr, "epoch_time_s": time.perf_counter() - t0})
                value = float(row.get(monitor, float("nan")))
                row["best"] = int(improved(value))
                if row["best"]:
                    best = {
                        "epoch": epoch,
                        "value": value,
                        "state": {k: v.detach().cpu().clone() for k, v in network.state_dict().items()},
                    }
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(value if math.isfinite(value) else row["train_loss"])
                elif scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
                    scheduler.step()
                history.append(row)
                if ddp is not None and not ddp.is_main:  # only rank 0 writes files
                    bar.update(1)
                    continue
                _save_atomic(
                    {
                        "format": CHECKPOINT_FORMAT,
                        "fingerprint": fingerprint,
                        "epoch": epoch,
                        "model": network.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": _plain_state(scheduler.state_dict()) if scheduler is not None else None,
                        "best": best,
                        "history": history,
                        "normalizer": {"mean": mean, "std": std},
                        "rng": {
                            "torch": torch.get_rng_state(),
                            "shuffle": shuffle.get_state(),
                            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                        },
                        "wall_time_s": wall_before + time.perf_counter() - session_start,
                    },
                    checkpoint_path,
                )
                _write_metrics_csv(work / "metrics.csv", history, config.task)
                shown = {k: f"{v:.4g}" for k, v in row.items() if k in ("train_loss", monitor)}
                bar.set_postfix(shown)
                bar.update(1)
                logger.info("epoch %d: %s", epoch, {k: row[k] for k in row if k != "epoch"})
        finally:
            bar.close()
        if best["state"] is None:
            raise TrainingError("no epoch was trained; raise epochs")
        if ddp is not None and not ddp.is_main:
            parallel_training.barrier(ddp)  # returns once rank 0 has written the model folder
            return Path(config.output)
        # a finished run that is only rewritten keeps the wall time of the sessions that trained
        wall = wall_before + (time.perf_counter() - session_start if epoch > first_epoch else 0.0)
        folder = _write_model_folder(
            config,
            data,
            split,
            parts,
            history,
            best,
            architecture,
            mean,
            std,
            batcher,
            device,
            threads,
            wall,
            fingerprint,
        )
        parallel_training.barrier(ddp)  # the other processes return once the folder is complete
        return folder


class TrainingForward:
    """The forward pass of training steps: ``model`` itself, or ``torch.compile(model)``.

    Compilation happens on the first call. If it fails there (no C++ compiler, an
    unsupported backend, ...), a warning says why and every call, that one included, runs
    ``model`` eagerly; later errors propagate. Compiled for a CPU with more than one
    thread, the convolutions use opaque gather/scatter operators
    (:class:`~cgcnn_ase.nn.network.ConvLayer`'s ``opaque_indexing``), measured faster there.

    Args:
        model: the network (or its DistributedDataParallel wrapper) in training mode.
        network: the network itself (``model`` or the module it wraps).
        compile: use ``torch.compile(model, dynamic=True)``; batches differ in size, so the
            compiled code takes the numbers of atoms, edges and crystals as variables.
    """

    def __init__(self, model: torch.nn.Module, network: CrystalGraphConvNet, *, compile: bool) -> None:
        self.model = model
        self.network = network
        self.compiled: Any = torch.compile(model, dynamic=True) if compile else None
        on_cpu = next(network.parameters()).device.type == "cpu"
        self._set_opaque_indexing(compile and on_cpu and torch.get_num_threads() > 1)
        self._first = True

    def _set_opaque_indexing(self, enabled: bool) -> None:
        self.network.set_execution(opaque_indexing=enabled)

    def __call__(self, batch: GraphBatch) -> torch.Tensor:
        if self.compiled is None:
            return self.model(batch)
        if not self._first:
            return self.compiled(batch)
        self._first = False
        try:
            return self.compiled(batch)
        except Exception as exc:  # noqa: BLE001 - any compiler failure; eager code re-raises real errors
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            logger.warning("torch.compile failed (%s: %s); training goes on without it", type(exc).__name__, first_line)
            self.compiled = None
            self._set_opaque_indexing(False)
            return self.model(batch)


def _set_split_matmul(network: CrystalGraphConvNet, enabled: bool) -> None:
    network.set_execution(split_matmul=enabled)


def _loss_function(name: str) -> Any:
    if name == "mae":
        return torch.nn.functional.l1_loss
    if name == "cross_entropy":
        return torch.nn.functional.nll_loss  # the network returns log-probabilities
    return torch.nn.functional.mse_loss


def _resolve_split(config: TrainConfig, work: Path, ids: list[str], *, resuming: bool) -> Split:
    saved = work / "split.json"
    if resuming and saved.is_file():
        return Split.load(saved)
    if config.split.file:
        try:
            return Split.load(config.split.file)
        except DatasetError as exc:
            raise ConfigError(str(exc)) from None
    try:
        return make_split(ids, (config.split.train, config.split.val, config.split.test), config.split.seed)
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None


# =============================================================================================
# The model folder
# =============================================================================================


def _write_model_folder(
    config: TrainConfig,
    data: PreparedData,
    split: Split,
    parts: dict[str, np.ndarray],
    history: list[dict[str, Any]],
    best: dict[str, Any],
    architecture: dict[str, Any],
    mean: float,
    std: float,
    batcher: GraphBatcher,
    device: torch.device,
    threads: int,
    wall: float,
    fingerprint: str,
) -> Path:
    import yaml

    from cgcnn_ase import __version__
    from cgcnn_ase.analysis.evaluation import (
        classification_metrics,
        learning_curve_plot,
        parity_plot,
        regression_metrics,
        roc_plot,
    )

    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    network = CrystalGraphConvNet(**architecture)
    network.load_state_dict(best["state"])
    network.to(device).eval()
    classification = config.task == "classification"
    units = "probability" if classification else config.units
    results: dict[str, dict[str, Any]] = {}
    predictions: dict[str, np.ndarray] = {}
    for name in ("val", "test"):
        if len(parts[name]) == 0:
            continue
        values, _ = predict_store(
            network, batcher, parts[name], mean=mean, std=std, batch_size=config.eval_batch_size, device=device
        )
        y = data.targets[parts[name]]
        metrics = classification_metrics(y, values) if classification else regression_metrics(y, values)
        results[name] = {**metrics, "units": units if not classification else "dimensionless"}
        predictions[name] = values
    if "test" not in results:
        logger.warning("no test split: the model card has no test metrics")

    dataset_meta = {
        "name": config.metadata.get("dataset_name") or config.data.display_name,
        "path": config.data.path,
        "target": config.data.target,
        "transform": config.data.transform,
        "per_atom": config.data.per_atom,
        "filter": config.data.filter,
        "drop_ids": list(config.data.drop_ids),
        "rows_in_file": data.table.n_rows,
        "rows_selected": len(data.table),
        "rows_used": len(data.ids),
        "rows_dropped": {**data.table.dropped, "unusable_structure": len(data.errors)},
        **{k: v for k, v in config.metadata.items() if k != "dataset_name"},
    }
    stopped_early = history[-1]["epoch"] < config.epochs if history else False
    hardware = _hardware(device, threads)
    training_meta = {
        "command": _command(config),
        "config": config.to_dict(),
        "config_fingerprint": fingerprint,
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "stopped_early": stopped_early,
        "monitor": config.monitor_name,
        "wall_time_s": round(wall, 1),
        "hardware": hardware,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "cgcnn_ase_version": __version__,
        "python": platform.python_version(),
    }
    train_atoms = data.store.take(parts["train"]).numbers
    metadata = {
        "aliases": list(config.aliases),
        "elements_seen": sorted(int(z) for z in np.unique(train_atoms)),
        "dataset": dataset_meta,
        "split": {
            "seed": split.seed,
            "fractions": list(split.fractions) if split.fractions else None,
            "sizes": split.sizes,
            "file": "split.json",
        },
        "test_metrics": results.get("test", {}),
        "val_metrics": results.get("val", {}),
        "training": training_meta,
    }
    spec = ModelSpec(
        name=config.model_name,
        property=config.property_name,
        units=units,
        task=config.task,
        architecture=architecture,
        graph=config.graph,
        normalizer_mean=mean,
        normalizer_std=std,
        positive_class=(config.positive_class or "class 1") if classification else None,
        metadata=json_safe(metadata),
    )
    save_model_folder(output, LoadedModel(spec=spec, network=network.cpu(), elements=data.elements))
    split.save(output / "split.json")
    (output / "config.yaml").write_text(
        "# resolved training configuration (cgcnn-ase); rerun with: cgcnn-ase train config.yaml\n"
        + yaml.safe_dump(config.to_dict(), sort_keys=False)
    )
    _write_metrics_csv(output / "metrics.csv", history, config.task)
    learning_curve_plot(output / "metrics.csv", output / "learning_curve.png", title=config.model_name)
    title = f"{config.model_name}: test split"
    for stale in ("parity.png", "roc.png"):
        (output / stale).unlink(missing_ok=True)
    if "test" in predictions:
        y = data.targets[parts["test"]]
        if classification:
            roc_plot(y, predictions["test"], output / "roc.png", title=title)
        else:
            parity_plot(
                y, predictions["test"], output / "parity.png", units=units, title=title, label=config.property_name
            )
    (output / "README.md").write_text(model_card(spec, config, metadata))
    logger.info("model folder written to %s (test: %s)", output, results.get("test"))
    return output




def _symbols(numbers: Sequence[int]) -> str:
    from ase.data import chemical_symbols

    return " ".join(chemical_symbols[z] for z in numbers)


def model_card(spec: ModelSpec, config: TrainConfig, metadata: dict[str, Any]) -> str:
    """The ``README.md`` model card of a trained model folder."""
    ds, tr, sp = metadata["dataset"], metadata["training"], metadata["split"]
    test = metadata.get("test_metrics") or {}
    classification = spec.task == "classification"
    handle = (config.aliases or [spec.name])[0]
    lines = [
        f"# {spec.name}",
        "",
        f"A CGCNN model (Xie & Grossman, Phys. Rev. Lett. 120, 145301 (2018)) predicting **{spec.property}**"
        + (f" (probability that a crystal is {spec.positive_class})" if classification else f" in **{spec.units}**")
        + f", trained with cgcnn-ase {tr['cgcnn_ase_version']}.",
        "",
    ]
    if config.aliases:
        lines += ["Aliases: " + ", ".join(f"`{a}`" for a in config.aliases), ""]
    lines += [
        "## Use",
        "",
        "```python",
        "from cgcnn_ase import CGCNNPredictor",
        f'predictor = CGCNNPredictor.from_pretrained("{handle}")  # or .from_checkpoint("path/to/this/folder")',
        'print(predictor.predict(["POSCAR"]).values)',
        "```",
        "",
        "## Data",
        "",
        f"- Dataset: **{ds['name']}** (`{ds['path']}`)",
    ]
    for key, label in (("source", "Source"), ("licence", "Licence"), ("citation", "Cite")):
        if ds.get(key):
            lines.append(f"- {label}: {ds[key]}")
    target = f"`{ds['target']}`" + (" divided by the number of atoms" if ds["per_atom"] else "")
    if ds["transform"] == "log10":
        target = f"log10 of {target}"
    lines.append(
        f"- Target: {target}" + (f", rows with `{ds['filter']}`" if ds["filter"] else "") + f"; units: {spec.units}"
    )
    if ds["drop_ids"]:
        lines.append(f"- Left out on purpose: {', '.join(ds['drop_ids'])}")
    dropped = ", ".join(f"{k}: {v}" for k, v in ds["rows_dropped"].items() if v) or "none"
    seen = metadata.get("elements_seen") or []
    lines += [
        f"- Rows: {ds['rows_in_file']} in the file, {ds['rows_used']} used (left out: {dropped})",
        f"- Elements in the training split: {len(seen)} ({_symbols(seen)}); the predictor warns about others",
        "",
        "## Split",
        "",
        f"Random split with seed {sp['seed']} (fractions {sp['fractions']}); ids in `split.json`.",
        "",
        "| part | crystals |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sp["sizes"].items()],
        "",
        "## Test metrics",
        "",
        f"Best model (epoch {tr['best_epoch']} of {tr['epochs_run']}, selected on {tr['monitor']}) on the test split, "
        "which was never used for training or selection:",
        "",
        "| metric | value | units |",
        "|---|---|---|",
    ]
    if classification:
        lines += [
            f"| ROC-AUC | {fmt(test.get('roc_auc'))} | dimensionless |",
            f"| accuracy (p >= 0.5) | {fmt(test.get('accuracy'))} | dimensionless |",
            f"| precision / recall ({spec.positive_class}) | {fmt((test.get('precision') or {}).get('1'))} / "
            f"{fmt((test.get('recall') or {}).get('1'))} | dimensionless |",
        ]
    else:
        lines += [
            f"| MAE | {fmt(test.get('mae'))} | {spec.units} |",
            f"| RMSE | {fmt(test.get('rmse'))} | {spec.units} |",
            f"| R² | {fmt(test.get('r2'))} | dimensionless |",
        ]
    lines += [f"| n | {test.get('n', 0)} | crystals |", ""]
    a, g, hw = spec.architecture, spec.graph, tr["hardware"]
    lines += [
        "## Training",
        "",
        "```",
        tr["command"],
        "```",
        "",
        f"- Architecture: {a['n_conv']} {a['conv']} convolutions, atom features {a['atom_fea_len']}, "
        f"{a['n_h']} hidden layer(s) of {a['h_fea_len']}, {a['readout']} readout",
        f"- Graph: radius {g.radius} Å, {g.max_neighbors} neighbours, Gaussian step {g.gaussian_step} Å, "
        f"neighbour policy `{g.neighbor_policy}`",
        f"- Element features: {config.elements}",
        f"- Optimiser: {config.optim.name} (lr {config.optim.lr}, weight decay {config.optim.weight_decay}"
        + (f", momentum {config.optim.momentum}" if config.optim.name == "sgd" else "")
        + f"), schedule {config.schedule.name}, batch size {config.batch_size}, loss {config.loss_name} on "
        + (
            "labels"
            if classification
            else f"normalised targets (mean {spec.normalizer_mean:.4g}, std {spec.normalizer_std:.4g})"
        ),
        f"- Epochs: {tr['epochs_run']} run (max {config.epochs}"
        + (f", early stopping patience {config.patience}" if config.patience else "")
        + f"), best epoch {tr['best_epoch']}",
        f"- Wall time: {tr['wall_time_s'] / 60:.1f} min on {hw['cpu']} ({hw['torch_threads']} torch threads"
        + (f" in each of {hw['processes']} data-parallel processes" if hw.get("processes") else "")
        + (f", GPU {hw['gpu']}" if hw.get("gpu") else "")
        + f"), device {hw['device']}",
        f"- Date: {tr['date']}; torch {tr['torch_version']}, Python {tr['python']}",
        "",
        "Files: `model.json` (settings, normaliser, metrics), `weights.safetensors`, `atom_init.json`, `config.yaml` "
        "(resolved configuration), `split.json`, `metrics.csv` and `learning_curve.png` (per epoch), "
        + ("`roc.png`" if classification else "`parity.png`")
        + " (test split).",
        "",
    ]
    if ds.get("notes"):
        lines += ["## Notes", "", str(ds["notes"]), ""]
    return "\n".join(lines)

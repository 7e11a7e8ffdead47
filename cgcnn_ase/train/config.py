"""Training configuration: :class:`TrainConfig` and its sections, read from YAML or TOML.

>>> from cgcnn_ase.train.config import load_config
>>> config = load_config("configs/formation_energy.yaml", ["epochs=5", "optim.lr=0.005"])  # doctest: +SKIP
>>> config.optim.lr, config.model.n_conv                                                    # doctest: +SKIP
(0.005, 4)

Types and keys are checked by pydantic: numbers written as text (YAML reads ``1e-3`` as a
string) become numbers, and an unknown key, a value of the wrong type or an invalid choice
raises :class:`~cgcnn_ase.errors.ConfigError` naming the key and what it accepts. The
dataset (:class:`~cgcnn_ase.data.datasets.DatasetSpec`) and graph
(:class:`~cgcnn_ase.graph.config.GraphConfig`) sections stay dataclasses, validated the same
way. :meth:`TrainConfig.validate` checks what depends on several settings (choices that
depend on the task, split fractions, ranges); it runs on construction and again when a
run starts, after any change of attributes.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

from cgcnn_ase.errors import ConfigError, user_stacklevel
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.data.datasets import DatasetSpec
from cgcnn_ase.train.config_sections import (
    FineTuneConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    Settings,
    SplitConfig,
    config_error,
)

__all__ = [
    "ConfigError",
    "TrainConfig",
    "apply_overrides",
    "command_line",
    "config_fingerprint",
    "load_config",
    "read_config_file",
]


#: Sections whose value may be left empty in a file (``optim:`` alone means the defaults).
SECTIONS = ("split", "model", "graph", "optim", "schedule", "finetune")


class TrainConfig(Settings):
    """Everything a training run needs; see ``configs/*.yaml`` for annotated examples.

    Attributes:
        data: the dataset (:class:`~cgcnn_ase.data.datasets.DatasetSpec`).
        output: the model folder to write (created).
        property: name of the predicted property (default: the target column, with
            ``log10_`` for log targets).
        units: units of the target, e.g. ``"eV/atom"``; for a log10-transformed target either
            ``"log10(GPa)"`` or the raw values' ``"GPa"`` (the model's units are then ``log10(GPa)``);
            with ``data.per_atom`` the column's ``"eV"`` or the result's ``"eV/atom"`` (the model's
            units are eV/atom either way); classifiers report ``"probability"``.
        task: ``"regression"`` or ``"classification"`` (targets 0/1; class 1 is
            ``positive_class``).
        positive_class: name of class 1 (classification), shown on the card; it does not map text labels
            (for a column of ``metal``/``insulator``, give the target ``'label == "metal"'``).
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
        select: which epoch's weights the model folder holds: ``"best"`` (the epoch with the best
            ``monitor`` value) or ``"last"`` (the final epoch). With ``"last"`` the validation
            split never chooses anything (it needs ``patience: null`` and a schedule that does
            not read it, i.e. not ``reduce_on_plateau``), so its errors are those of unseen
            crystals: what an ensemble's interval calibration on that split needs.
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
        init_from: fine-tune: start from this trained model, a shipped model's name or
            alias, a model folder or an authors' ``.pth.tar`` (whose element table is then
            ``elements``). Its architecture, graph settings and element table are used; a
            ``model``, ``graph`` or ``elements`` setting given here that contradicts them is
            refused (:mod:`cgcnn_ase.train.finetune`). ``None``: train from scratch.
        finetune: how to fine-tune (:class:`FineTuneConfig`); only with ``init_from``.
    """

    data: DatasetSpec
    output: str = "runs/cgcnn"
    property: str | None = None
    units: str = "unknown"
    task: str = "regression"
    positive_class: str | None = None
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    graph: GraphConfig = Field(default_factory=GraphConfig)
    elements: str = "generated"
    loss: str = "auto"
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    epochs: int = 30
    batch_size: int = 256
    eval_batch_size: int = 256
    patience: int | None = None
    time_limit: float | None = None
    monitor: str = "auto"
    select: str = "best"
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
    aliases: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    command: str | None = None
    init_from: str | None = None
    finetune: FineTuneConfig = Field(default_factory=FineTuneConfig)
    source: str | None = Field(default=None, repr=False)
    overrides: list[str] = Field(default_factory=list, repr=False)
    #: keys of the ``graph`` section as given (all of them when a GraphConfig was passed)
    _graph_keys: set[str] = PrivateAttr(default_factory=set)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_graph_keys(cls, data: Any, handler: Any) -> Any:
        """Note which graph settings were given, so that fine-tuning can tell a setting that
        contradicts the base model from a default (:mod:`cgcnn_ase.train.finetune`)."""
        config = handler(data)
        graph = data.get("graph") if isinstance(data, dict) else None
        if isinstance(graph, dict):
            config._graph_keys = {str(key) for key in graph}
        elif isinstance(graph, GraphConfig):
            config._graph_keys = {f.name for f in dataclasses.fields(GraphConfig)}
        return config

    @builtins.property  # the field `property` shadows the builtin here
    def graph_keys(self) -> set[str]:
        """The graph settings given in the configuration (not left at their defaults)."""
        return set(self._graph_keys)

    @field_validator("data", mode="before")
    @classmethod
    def _dataset_mapping(cls, value: Any) -> Any:
        """A blank ``transform`` means ``"none"`` and a path may be a ``PathLike``, as
        :class:`~cgcnn_ase.data.datasets.DatasetSpec` itself reads them."""
        if isinstance(value, dict):
            value = dict(value)
            if "transform" in value and value["transform"] in (None, ""):
                value["transform"] = "none"
            if isinstance(value.get("path"), os.PathLike):
                value["path"] = os.fspath(value["path"])
        return value

    def model_post_init(self, context: Any) -> None:
        self.validate()

    # -- derived settings ------------------------------------------------------------------
    @builtins.property  # the field `property` shadows the builtin here
    def loss_name(self) -> str:
        """The loss used: ``loss``, with ``auto`` resolved by the task."""
        if self.loss != "auto":
            return self.loss
        return "cross_entropy" if self.task == "classification" else "mse"

    @builtins.property  # the field `property` shadows the builtin here
    def monitor_name(self) -> str:
        """The selection metric: ``monitor``, with ``auto`` resolved by the task."""
        if self.monitor != "auto":
            return self.monitor
        return "val_roc_auc" if self.task == "classification" else "val_mae"

    @builtins.property  # the field `property` shadows the builtin here
    def property_name(self) -> str:
        """``property``, or a name made from the target (``log10_`` and ``_per_atom`` added)."""
        if self.property:
            return self.property
        base = self.data.target if self.data.target.isidentifier() else "target"
        base = f"{base}_per_atom" if self.data.per_atom else base
        return f"log10_{base}" if self.data.transform == "log10" else base

    @builtins.property  # the field `property` shadows the builtin here
    def target_units(self) -> str:
        """The units of what the network predicts: ``units``, with ``/atom`` added for a ``per_atom`` target
        whose ``units`` name the column's (``eV`` per cell: the model predicts eV/atom), and as
        ``log10(<units>)`` for a log10-transformed target whose ``units`` name the raw values (``GPa`` for a
        modulus: the model predicts log10(GPa))."""
        units = self.units
        if self.data.per_atom and units not in ("unknown", "dimensionless"):
            units = _per_atom_units(units)
        if self.data.transform == "log10" and not units.lower().startswith(("log10", "log(", "log ")) and units != "unknown":
            return f"log10({units})"
        return units

    @builtins.property  # the field `property` shadows the builtin here
    def model_name(self) -> str:
        """``name``, or the output folder's name."""
        return self.name or Path(self.output).name

    @builtins.property  # the field `property` shadows the builtin here
    def work_path(self) -> Path:
        """The folder of ``checkpoint_last.pt``: ``work_dir``, or ``<output>/run``."""
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
        warmup = self.schedule.warmup_epochs
        if warmup and (self.schedule.name != "cosine" or not 0 < warmup < self.epochs):
            raise ConfigError(
                f"schedule.warmup_epochs ({warmup}) needs schedule.name: cosine and fewer epochs than epochs "
                f"({self.epochs}); got schedule.name: {self.schedule.name}"
            )
        self._validate_unused()
        losses = ("auto", "cross_entropy") if self.task == "classification" else ("auto", "mse", "mae")
        choice("loss", self.loss, losses)
        monitors = (
            ("auto", "val_roc_auc", "val_accuracy", "val_loss")
            if self.task == "classification"
            else ("auto", "val_mae", "val_rmse", "val_loss")
        )
        choice("monitor", self.monitor, monitors)
        choice("select", self.select, ("best", "last"))
        if self.select == "last" and (self.patience is not None or self.schedule.name == "reduce_on_plateau"):
            raise ConfigError(
                "select: last keeps the validation split out of every choice, but "
                + ("patience stops the run on it: set patience: null" if self.patience is not None
                   else "schedule reduce_on_plateau steps on it: use cosine, multistep, onecycle or none")
            )
        if self.task == "classification" and self.model.readout != "mean":
            raise ConfigError("classification needs model.readout='mean' (the atomwise readout is for regression)")
        if self.task == "classification" and self.data.transform != "none":
            raise ConfigError("classification targets are labels 0/1: data.transform must be 'none'")
        self._validate_ranges()
        self._validate_finetune()

    def _validate_unused(self) -> None:
        """Warn about settings changed from their defaults that the chosen schedule, optimiser or task does not use
        (round 23b: ``schedule.milestones`` with ``cosine``, ``optim.momentum`` with ``adamw`` and
        ``positive_class`` for a regression ran as if they were not there). A warning, not a refusal: the saved
        configs of two shipped models carry such a setting (``schedule.patience`` with ``cosine``) and must still
        run again."""
        unused = self.schedule.unused() + self.optim.unused()
        ft = self.finetune
        if self.init_from is not None and ft.head_only:  # round 29e: ignored without a word
            unused += [f"finetune.{name} ({getattr(ft, name)}: head_only freezes the embedding and every convolution)"
                       for name in ("body_lr", "freeze_convs", "freeze_embedding") if getattr(ft, name)]  # fmt: skip
        if self.task != "classification" and self.positive_class is not None:
            unused.append(f"positive_class ({self.positive_class!r}: it names class 1 of a classifier, and this is a "
                          f"{self.task} run)")  # fmt: skip
        if unused:
            warnings.warn(f"settings that this run does not use: {'; '.join(unused)}. Remove them, or choose the "
                          "schedule, optimiser or task that uses them", UserWarning, stacklevel=user_stacklevel())  # fmt: skip

    def _validate_finetune(self) -> None:
        """The checks of ``init_from`` and the ``finetune`` section that need no base model (a run
        refuses ``finetune`` settings without ``init_from``, which may be given when it starts)."""
        ft = self.finetune
        if self.init_from is None:
            return
        if not isinstance(self.init_from, str) or not self.init_from.strip():
            raise ConfigError(f"init_from must name a model (shipped name, folder or .pth.tar), got {self.init_from!r}")
        if ft.output_layer not in ("auto", "reset", "keep"):
            raise ConfigError(f"finetune.output_layer must be one of ['auto', 'reset', 'keep'], got {ft.output_layer!r}")
        if ft.member != "all" and not (isinstance(ft.member, int) and ft.member >= 0):
            raise ConfigError(f"finetune.member must be a member index (0, 1, ...) or 'all', got {ft.member!r}")
        if ft.freeze_convs < 0:
            raise ConfigError(f"finetune.freeze_convs must be at least 0, got {ft.freeze_convs}")
        for name in ("body_lr", "head_lr"):
            value = getattr(ft, name)
            if value is not None and not value > 0:
                raise ConfigError(f"finetune.{name} must be positive (or null for optim.lr), got {value}")

    def _validate_ranges(self) -> None:
        """The numeric checks of :meth:`validate`."""
        for name in ("epochs", "batch_size", "eval_batch_size", "workers"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if int(self.batch_size) < 2:  # a batch of one single-atom crystal leaves batch norm one value per channel
            raise ConfigError(f"batch_size must be at least 2 for training (batch normalisation), got {self.batch_size}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ConfigError(f"time_limit must be a positive number of minutes (or null), got {self.time_limit}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be at least 1 (or null), got {self.patience}")
        if not self.optim.lr > 0:
            raise ConfigError(f"optim.lr must be positive, got {self.optim.lr}")
        if not self.optim.weight_decay >= 0:
            raise ConfigError(f"optim.weight_decay must be at least 0, got {self.optim.weight_decay}")
        if not 0 <= self.optim.momentum < 1:
            raise ConfigError(f"optim.momentum must be at least 0 and below 1, got {self.optim.momentum}")
        for name in ("atom_fea_len", "n_conv", "h_fea_len", "n_h"):  # as model.json's architecture check
            if int(getattr(self.model, name)) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self.model, name)}")
        if not 0 <= self.model.dropout < 1:
            raise ConfigError(f"model.dropout must be at least 0 and below 1, got {self.model.dropout}")
        if self.task == "regression" and self.model.dropout not in (0, ModelConfig().dropout):
            warnings.warn(f"model.dropout={self.model.dropout} has no effect: as in the original CGCNN, only "
                          "classification networks have a dropout layer (optim.weight_decay regularises a regression)",
                          UserWarning, stacklevel=2)  # fmt: skip
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1 (or null), got {self.threads}")
        if self.device != "auto":
            import torch

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
        for name in type(self).model_fields:
            if name in ("source", "overrides"):
                continue
            if name in ("init_from", "finetune") and self.init_from is None:
                continue  # a run from scratch writes (and fingerprints) what it did before fine-tuning existed
            value = getattr(self, name)
            if isinstance(value, (GraphConfig, DatasetSpec)):
                value = value.to_dict()
            elif isinstance(value, BaseModel):
                value = value.model_dump()
            out[name] = copy.deepcopy(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from nested mappings (as read from YAML/TOML); unknown keys raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"a training configuration must be a mapping, got {type(data).__name__}")
        if "data" not in data:
            raise ConfigError("the configuration needs a 'data' section (at least data.path and data.target)")
        data = {key: value for key, value in data.items() if not (key in SECTIONS and value is None)}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise config_error(exc, cls, ()) from None


# =============================================================================================
# Validation errors -> ConfigError
# =============================================================================================



# =============================================================================================
# Files and overrides
# =============================================================================================


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
            hint = ""
            if text.strip()[:1] in "`@%!&*|>":  # round 23b: a pandas expression with `backticked column`
                hint = f"; text starting with {text.strip()[0]!r} is quoted in YAML: {key}=\"{text.strip()}\""
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc}){hint}") from None
        _set_dotted(data, key, value)
    return data


def _unique_key_loader() -> Any:
    """A YAML ``SafeLoader`` that refuses a key given twice in one mapping (round 23b: ``property`` twice, the last
    silently won)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor': its keys may be overridden here
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                            key_node.start_mark)  # fmt: skip
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Loader


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) configuration into a mapping."""
    import yaml

    path = Path(path)
    if path.exists() and not path.is_file():  # round 32c: a pipe (`<(...)`, /dev/stdin) was "no such file"
        raise ConfigError(f"{path}: not a regular file (a pipe, a device or a folder): give the configuration as a "
                          "YAML or TOML file (it is read again to resume a run, and copied beside the model)")  # fmt: skip
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
            data = yaml.load(path.read_text(), Loader=_unique_key_loader())  # a SafeLoader subclass
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
    written = read_config_file(path)
    data = _without_stale_provenance(written, apply_overrides(written, overrides), path)
    config = TrainConfig.from_dict(data)
    config.source = str(path)
    config.overrides = list(overrides)
    return config


def _same_file(a: Any, b: Any) -> bool:
    """Whether two ``data.path`` values name the same file (``./x``, ``x``, its absolute or real path)."""
    try:
        return str(a) == str(b) or os.path.realpath(os.fspath(a)) == os.path.realpath(os.fspath(b))
    except (TypeError, ValueError):
        return False


#: ``metadata`` keys that describe the configuration file's dataset (the model card prints them as its data).
DATASET_METADATA = ("dataset_name", "source", "licence", "citation")


def _without_stale_provenance(written: dict[str, Any], data: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """``data`` (the configuration after overrides) without the ``metadata`` that describes the file's dataset
    when an override points ``data.path`` at another file (warned): a card must not name a dataset the model
    never saw. Metadata given by the overrides themselves is kept."""
    before = (written.get("data") or {}).get("path") if isinstance(written.get("data"), dict) else None
    after = (data.get("data") or {}).get("path") if isinstance(data.get("data"), dict) else None
    metadata, old = data.get("metadata"), written.get("metadata")
    if before is None or _same_file(before, after) or not isinstance(metadata, dict) or not isinstance(old, dict):
        return data
    stale = [k for k in DATASET_METADATA if k in metadata and metadata[k] == old.get(k)]
    if not stale:
        return data
    import warnings

    warnings.warn(f"{path}: data.path is now {after}, not {before}, so the file's metadata ({', '.join(stale)}) "
                  "describes another dataset and is left out of the model card; describe yours with "
                  f"--set metadata.{stale[0]}=...", UserWarning, stacklevel=3)  # fmt: skip
    return {**data, "metadata": {k: v for k, v in metadata.items() if k not in stale}}


# =============================================================================================
# Identity of a run
# =============================================================================================


def config_fingerprint(config: TrainConfig) -> str:
    """Digest of the settings a resumed run must share with its checkpoint (16 hex digits): those of
    :func:`fingerprinted_settings`."""
    data = fingerprinted_settings(config)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_settings(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two :func:`fingerprinted_settings` dicts."""
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += changed_settings(a, b, f"{prefix}{key}.")
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            names.append(f"{prefix}{key}")
    return names


def fingerprinted_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint, as plain data.

    Left out: where files go, provenance, stopping and selection rules, speed options and, unless the
    schedule depends on it (``cosine``, ``onecycle``), ``epochs``, which may grow on resume.
    """
    data = config.to_dict()
    for key in ("output", "work_dir", "resume", "name", "aliases", "metadata", "command", "property", "units",
                "positive_class", "patience", "select", "time_limit", "threads", "workers", "cache_dir", "device", "precision",
                "compile", "eval_batch_size"):  # fmt: skip
        data.pop(key, None)
    data["data"].pop("name", None)
    data["model"].pop("split_matmul", None)
    data["model"].pop("merge_edges", None)
    if not data["schedule"].get("warmup_epochs"):
        data["schedule"].pop("warmup_epochs", None)  # runs started before warm-up existed still resume
    if config.schedule.name not in ("cosine", "onecycle"):
        data.pop("epochs")  # more epochs may be added on resume
    return json.loads(json.dumps(data, default=str))


def command_line(config: TrainConfig) -> str:
    """The command that started the run, for the model card: ``config.command``, else
    ``cgcnn-ase train FILE --set ...`` rebuilt from :func:`load_config`'s file and overrides."""
    if config.command:
        return config.command
    if config.source:
        parts = ["cgcnn-ase", "train", config.source] + [f"--set {o}" for o in config.overrides]
        return " ".join(parts)
    return "cgcnn_ase.train.trainer.train_from_config(TrainConfig(...)) -- settings in config.yaml"


def _per_atom_units(units: str) -> str:
    """The units of a column divided by the number of atoms: ``eV`` and ``eV/cell`` -> ``eV/atom``; units that
    are per atom already (``eV/atom``, ``eV per atom``) as they are."""
    import re

    if re.search(r"(/\s*atom|per\s+atom)\b", units, flags=re.IGNORECASE):
        return units
    stripped = re.sub(r"\s*(/\s*cell|per\s+cell)\s*$", "", units, flags=re.IGNORECASE)
    return f"{stripped}/atom"


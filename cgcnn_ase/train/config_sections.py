"""The sections of a training configuration (split, model, optim, schedule, finetune) and how their
validation errors become :class:`~cgcnn_ase.errors.ConfigError` messages naming the key and what it
accepts. :class:`~cgcnn_ase.train.config.TrainConfig` gathers them."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cgcnn_ase.errors import ConfigError

#: pydantic error types, grouped by how the message reads.
_NUMBER_ERRORS = {"int_parsing", "int_type", "int_from_float", "float_parsing", "float_type", "int_parsing_size"}
_BOOL_ERRORS = {"bool_parsing", "bool_type"}
_MAPPING_ERRORS = {"model_type", "model_attributes_type", "dict_type", "dataclass_type", "dataclass_exact_type"}
_UNKNOWN_KEY_ERRORS = {"extra_forbidden", "unexpected_keyword_argument"}


class Settings(BaseModel):
    """A configuration section: unknown keys refused, numbers in text converted, errors as
    :class:`ConfigError` naming the key (``section`` is the section's key in the file)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
    section: ClassVar[str] = "config"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            prefix = (self.section,) if self.section != "config" else ()
            raise config_error(exc, type(self), prefix) from None


class SplitConfig(Settings):
    """How crystals are split: seeded random fractions, or ids from an existing ``split.json``."""

    section: ClassVar[str] = "split"
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    file: str | None = None


class ModelConfig(Settings):
    """Keyword arguments of :class:`~cgcnn_ase.nn.network.CrystalGraphConvNet` (defaults: the
    original training script's), plus two training-speed options that leave the maths
    unchanged (the saved model does not depend on them): ``split_matmul`` computes the
    gated convolution's edge products in the cheaper split form (~2x faster on CPU), and
    ``merge_edges`` trains on graphs whose identical edges (periodic images of one atom at
    one distance from the same centre) are merged into one edge with a multiplicity
    (:func:`~cgcnn_ase.train.cache.merge_duplicate_edges`; 2.4x fewer edges on 5-atom perovskites)."""

    section: ClassVar[str] = "model"
    atom_fea_len: int = 64
    n_conv: int = 3
    h_fea_len: int = 128
    n_h: int = 1
    readout: str = "mean"
    conv: str = "gated"
    dropout: float = 0.5
    split_matmul: bool = True
    merge_edges: bool = True


class OptimConfig(Settings):
    """Optimiser: ``sgd`` (with ``momentum``), ``adam`` or ``adamw``; ``lr``, ``weight_decay``."""

    section: ClassVar[str] = "optim"
    name: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.9

    def unused(self) -> list[str]:
        """Settings changed from their defaults that this optimiser does not use (``momentum`` outside ``sgd``)."""
        if self.name != "sgd" and self.momentum != type(self)().momentum:
            return [f"optim.momentum ({self.momentum!r}: {self.name} keeps its own moment estimates; sgd uses it)"]
        return []


class ScheduleConfig(Settings):
    """Learning-rate schedule.

    ``none``; ``multistep`` (×``gamma`` at each epoch in ``milestones``; the original's
    default is [100], 0.1); ``cosine`` (to ``min_lr`` over ``epochs``); ``onecycle``
    (peak ``optim.lr`` at ``pct_start`` of all steps); ``reduce_on_plateau`` (×``factor``
    after ``patience`` epochs without improvement of the monitored metric, down to ``min_lr``).
    ``warmup_epochs`` (``cosine`` only): the learning rate first rises linearly from 1% of
    ``optim.lr`` over this many epochs, then the cosine runs over the remaining epochs.
    """

    section: ClassVar[str] = "schedule"
    name: str = "multistep"
    milestones: list[int] = Field(default_factory=lambda: [100])
    gamma: float = 0.1
    min_lr: float = 0.0
    pct_start: float = 0.3
    factor: float = 0.5
    patience: int = 10
    warmup_epochs: int = 0

    #: The settings each schedule uses (``warmup_epochs`` outside ``cosine`` is refused by the run's config).
    USES: ClassVar[dict[str, tuple[str, ...]]] = {
        "none": (), "multistep": ("milestones", "gamma"), "cosine": ("min_lr", "warmup_epochs"),
        "onecycle": ("pct_start",), "reduce_on_plateau": ("factor", "patience", "min_lr"),
    }  # fmt: skip

    def unused(self) -> list[str]:
        """Settings changed from their defaults that this schedule does not use, each with the schedules that do."""
        out, defaults = [], type(self)()
        for key in ("milestones", "gamma", "min_lr", "pct_start", "factor", "patience"):
            if key not in self.USES.get(self.name, ()) and getattr(self, key) != getattr(defaults, key):
                users = [name for name, keys in self.USES.items() if key in keys]
                out.append(f"schedule.{key} ({getattr(self, key)!r}: schedule {self.name} does not use it, "
                           f"{' and '.join(users)} {'do' if len(users) > 1 else 'does'})")  # fmt: skip
        return out


class FineTuneConfig(Settings):
    """How a run starts from a trained model (``init_from``); see ``docs/finetuning.md``.

    The network's architecture, graph settings and element table are the base model's; the
    target gets its own normaliser (mean and std of the new training split).

    Attributes:
        member: which member of an ensemble base model to start from (0, 1, ...), or
            ``"all"``: one fine-tuned member per base member (seeds ``seed``, ``seed + 1``,
            ...; each trained in ``<work_dir>/member<k>``), assembled into an ensemble
            folder at ``output``. A single model is member 0.
        output_layer: ``"reset"`` (a freshly initialised ``fc_out``), ``"keep"`` (the base
            model's, rescaled to the new normaliser so that the run starts from the base
            model's predictions in target units) or ``"auto"``: keep when the base model
            predicts the same ``property`` in the same ``units`` and task, else reset.
        freeze_embedding: do not train the element embedding.
        freeze_convs: do not train the first ``k`` convolutions (weights and batch-norm
            statistics: a frozen convolution runs in eval mode during training).
        head_only: train the dense head only (``conv_to_fc``, ``fcs``, ``fc_out``): the
            embedding and every convolution frozen.
        freeze_batch_norm: keep every batch-norm layer's running statistics as the base model's (the
            layers run in eval mode during training; their scale and shift are still trained). For a
            dataset whose batches differ from the base model's training batches, whose statistics would
            otherwise move the start far from the base model (the run warns when they do).
        body_lr: learning rate of the trained embedding and convolutions (``None``: ``optim.lr``).
        head_lr: learning rate of the dense head (``None``: ``optim.lr``).
    """

    section: ClassVar[str] = "finetune"
    member: int | str = 0
    output_layer: str = "auto"
    freeze_embedding: bool = False
    freeze_convs: int = 0
    head_only: bool = False
    freeze_batch_norm: bool = False
    body_lr: float | None = None
    head_lr: float | None = None


def _known_keys(root: type, where: tuple[Any, ...]) -> list[str]:
    """The keys of the section at ``where`` (a path of field names below ``root``)."""
    cls = root
    for name in where:
        cls = cls.model_fields[name].annotation
    names = list(cls.model_fields) if issubclass(cls, BaseModel) else [f.name for f in dataclasses.fields(cls)]
    return sorted(name for name in names if name not in ("source", "overrides"))


def config_error(exc: ValidationError, root: type, prefix: tuple[str, ...]) -> ConfigError:
    """The first problem of a pydantic ``ValidationError`` as a :class:`ConfigError`: unknown
    keys with the known ones, or the key, what it must be and the value given.

    Args:
        exc: the error of validating ``root`` (a section class or :class:`TrainConfig`).
        root: the class validated.
        prefix: its key in the file (``("optim",)``; ``()`` for the whole configuration).
    """
    errors = exc.errors(include_url=False)
    for error in errors:  # raised by TrainConfig.validate during construction
        if isinstance((error.get("ctx") or {}).get("error"), ConfigError):
            return error["ctx"]["error"]
    unknown = [error for error in errors if error["type"] in _UNKNOWN_KEY_ERRORS]
    if unknown:
        where = unknown[0]["loc"][:-1]
        keys = sorted(str(error["loc"][-1]) for error in unknown if error["loc"][:-1] == where)
        section = ".".join(str(part) for part in (*prefix, *where)) or "config"
        return ConfigError(f"unknown {section} setting(s) {keys}; known: {_known_keys(root, where)}")
    return ConfigError(_describe(errors[0], prefix))


def _describe(error: dict[str, Any], prefix: tuple[str, ...]) -> str:
    """One validation error in words, e.g. ``"optim.lr must be a number, got 'fast'"``."""
    key = ".".join(str(part) for part in (*prefix, *error["loc"]))
    kind, value = error["type"], error.get("input")
    if kind == "missing":
        return f"{key} is required"
    if kind == "int_from_float":
        return f"{key} must be a whole number, got {value!r}"
    if kind in _NUMBER_ERRORS:
        return f"{key} must be a number, got {value!r}"
    if kind in _BOOL_ERRORS:
        return f"{key} must be true or false, got {value!r}"
    if kind == "literal_error":
        return f"{key} must be {error['ctx']['expected']}, got {value!r}"
    if kind in _MAPPING_ERRORS:
        return f"{key} must be a mapping, got {value!r}"
    if kind == "value_error":  # raised by a dataclass section itself (GraphConfig, DatasetSpec)
        return f"{key}: {error['ctx']['error']}"
    return f"{key}: {error['msg'].lower()}, got {value!r}"

"""Fine-tuning: start a training run from a trained model (``init_from``) instead of random weights.

>>> from cgcnn_ase.train.config import load_config
>>> from cgcnn_ase.train.trainer import train_from_config
>>> config = load_config("my_small_set.yaml", ["finetune.freeze_convs=2"])       # doctest: +SKIP
>>> folder = train_from_config(config, init_from="formation_energy")            # doctest: +SKIP

``init_from`` names the base model as everything else in the package does: a shipped model's
name or alias, a model folder (single or ensemble) or one of the authors' ``.pth.tar`` files,
loaded by the one :func:`~cgcnn_ase.models.registry.load_model`. From the base model the run
takes:

- the **architecture** (``model.atom_fea_len``, ``n_conv``, ``h_fea_len``, ``n_h``,
  ``readout``, ``conv``), the **graph settings** and the **element table**: a setting the
  configuration gives that contradicts them is refused with a :class:`ConfigError` naming
  it (settings left out are filled in from the base model);
- the **weights**: all of them, except the output layer ``fc_out`` when it is reset
  (``finetune.output_layer``; always when the task changes).

The target is the configuration's, with its own normaliser (mean and std of the new
training split). A kept output layer is rescaled to that normaliser, so that the run starts
from the base model's predictions in target units. ``finetune`` also freezes the element
embedding and the first ``k`` convolutions (their weights and batch-norm statistics), trains
the dense head only, and gives the body (embedding and convolutions) and the head
(``conv_to_fc``, ``fcs``, ``fc_out``) their own learning rates.

``finetune.member: all`` fine-tunes every member of an ensemble base model (one run each,
seeds ``seed + k``) and assembles the results into an ensemble folder
(:func:`finetune_all_members`). The model card records the base model, its data and these
settings (``metadata.finetune`` of ``model.json``).
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cgcnn_ase.data.datasets import label_shift_problem
from cgcnn_ase.errors import CGCNNError, ConfigError, UnfinishedRunError
from cgcnn_ase.graph.elements import generate_cgcnn_table
from cgcnn_ase.models.folder import ELEMENTS_FILE, LoadedModel, read_model_json, write_model_json
from cgcnn_ase.models.registry import load_model, model_folder, shipped_by_name
from cgcnn_ase.nn.network import CrystalGraphConvNet
from cgcnn_ase.train.config import TrainConfig
from cgcnn_ase.train.data import load_elements
from cgcnn_ase.warning_blocks import catch_warnings

__all__ = [
    "ARCHITECTURE_KEYS",
    "HEAD_PREFIXES",
    "FineTuneBase",
    "FineTuneState",
    "base_overlap",
    "finetune_all_members",
    "finetune_metadata",
    "initialise_from_base",
    "load_base",
    "overlap_warning",
    "parameter_groups",
    "resolve_config",
]

logger = logging.getLogger(__name__)

#: ``model`` settings that come from the base model (``dropout``, which has no weights, may differ).
ARCHITECTURE_KEYS = ("atom_fea_len", "n_conv", "h_fea_len", "n_h", "readout", "conv")
#: Parameter-name prefixes of the dense head; the rest (``embedding``, ``convs``) is the body.
HEAD_PREFIXES = ("conv_to_fc.", "fcs.", "fc_out.")

SHIPPED, FOLDER, CHECKPOINT = "shipped model", "model folder", "original checkpoint"


@dataclass
class FineTuneBase:
    """The base model of a fine-tuning run: one network (one member of an ensemble).

    Attributes:
        init_from: the model as named in the configuration.
        kind: ``"shipped model"``, ``"model folder"`` or ``"original checkpoint"``.
        path: its folder (or ``.pth.tar`` file).
        loaded: the loaded model (for an ensemble, the first ``member + 1`` members).
        network: the member's network (eval mode, on the CPU).
        member: the member's index (0 for a single model); n_members: members of the base model.
        mean, std: the member's target normaliser, in the base model's units.
        info: the member's description in the base model's ``model.json`` (``ensemble.members[k]``), or ``{}``.
    """

    init_from: str
    kind: str
    path: Path
    loaded: LoadedModel
    network: CrystalGraphConvNet
    member: int
    n_members: int
    mean: float
    std: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The base model's name (its ``model.json`` name, or the file's stem)."""
        return self.loaded.spec.name


@dataclass
class FineTuneState:
    """What :func:`initialise_from_base` did to a network.

    Attributes:
        output_layer: ``"reset"`` or ``"keep"`` (the resolved choice).
        frozen: names of the frozen modules (``"embedding"``, ``"convs.0"``, ...), run in
            eval mode during training.
        batch_norm_frozen: every batch-norm layer keeps the base model's statistics
            (``finetune.freeze_batch_norm``).
    """

    output_layer: str
    frozen: list[str]
    batch_norm_frozen: bool = False

    def modules(self, network: CrystalGraphConvNet) -> list[torch.nn.Module]:
        """The frozen modules of ``network``."""
        return [network.get_submodule(name) for name in self.frozen]

    def eval_modules(self, network: CrystalGraphConvNet) -> list[torch.nn.Module]:
        """The modules that run in eval mode during training: the frozen ones, and every batch-norm layer
        when their statistics are frozen."""
        return self.modules(network) + (batch_norms(network) if self.batch_norm_frozen else [])


def training_mode(network: torch.nn.Module, eval_modules: list[torch.nn.Module]) -> None:
    """``network`` in training mode, but ``eval_modules`` (:meth:`FineTuneState.eval_modules`) in eval mode."""
    network.train()
    for module in eval_modules:
        module.eval()


def batch_norms(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The batch-norm layers of ``module``."""
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def batch_norm_shift(network: CrystalGraphConvNet, batches: list[Any], targets: list[torch.Tensor],
                     eval_modules: list[torch.nn.Module]) -> tuple[float, float]:  # fmt: skip
    """How far a regression network's outputs move in training mode, where its batch-norm layers use each batch's
    own statistics, from eval mode, where they use their stored ones: ``(mean |moved - stored|, mean |stored -
    target|)`` over the batches' crystals, in the network's (normalised) output units. ``eval_modules`` run in eval
    mode, as in training; nothing of the network changes (its running statistics are restored).
    """
    was_training = network.training
    saved = {k: v.clone() for k, v in network.state_dict().items() if "running_" in k or "num_batches" in k}
    moved_sum, error_sum, count = 0.0, 0.0, 0
    try:
        with torch.no_grad():
            for batch, target in zip(batches, targets):
                network.eval()
                stored = network(batch).reshape(-1)
                training_mode(network, eval_modules)
                moved = network(batch).reshape(-1)
                moved_sum += float((moved - stored).abs().sum())
                error_sum += float((stored - target.reshape(-1)).abs().sum())
                count += len(stored)
    finally:
        network.load_state_dict(saved, strict=False)
        network.train(was_training)
    return moved_sum / max(count, 1), error_sum / max(count, 1)


# ---------------------------------------------------------------------------------------------
# The base model and the run's settings
# ---------------------------------------------------------------------------------------------


def _locate(init_from: str) -> tuple[str, Path]:
    """``(kind, path)`` of a model argument (shipped models: their folder, found by the registry)."""
    shipped = shipped_by_name(init_from)
    if shipped is not None:
        return SHIPPED, shipped.path
    path = Path(init_from)
    if path.is_dir():
        return FOLDER, path
    if path.exists():
        return CHECKPOINT, path
    return SHIPPED, model_folder(init_from, purpose="init_from names the model to start from")


def load_base(config: TrainConfig) -> FineTuneBase:
    """Load member ``config.finetune.member`` of ``config.init_from`` on the CPU.

    Raises:
        ConfigError: a member the model does not hold, or an authors' ``.pth.tar`` without
            ``elements`` (the file does not store its element table).
        UnknownModelError, CheckpointError: no such model, or an unreadable one.
    """
    init_from, member = str(config.init_from), config.finetune.member
    if not isinstance(member, int):
        raise ConfigError(f"finetune.member={member!r}: one run fine-tunes one member; 'all' is train_from_config's")
    kind, path = _locate(init_from)
    document = read_model_json(path) if kind != CHECKPOINT else {}
    described = (document.get("ensemble") or {}).get("members") or []
    n_members = max(1, len(described))
    if member >= n_members:
        raise ConfigError(
            f"finetune.member={member}: the base model {init_from} holds {n_members} member(s), numbered from 0"
        )
    atom_init = None
    if kind == CHECKPOINT:
        if "elements" not in config.model_fields_set:
            raise ConfigError(
                f"init_from={init_from}: an authors' checkpoint does not store its element table; set elements to "
                "the atom_init.json it was trained with ('generated' uses this project's table, which changes it)"
            )
        atom_init = config.elements
    with catch_warnings():  # members 0..K are loaded for member K's network, not for a std
        warnings.filterwarnings("ignore", message=r".*: members=\d+ of \d+: the std is", category=UserWarning)
        loaded = load_model(path, device="cpu", members=member + 1, atom_init=atom_init)
    if loaded.is_ensemble:
        chosen = loaded.members[member]
        network, mean, std = chosen.network, chosen.normalizer_mean, chosen.normalizer_std
    else:
        network, mean, std = loaded.network, loaded.spec.normalizer_mean, loaded.spec.normalizer_std
    info = {k: v for k, v in described[member].items() if k != "normalizer"} if described else {}
    return FineTuneBase(init_from, kind, path, loaded, network, member, n_members, mean, std, info)


def _refuse(setting: str, given: Any, base: FineTuneBase, theirs: Any, what: str) -> ConfigError:
    return ConfigError(
        f"{setting} is {given!r} but the base model {base.init_from} was trained with {theirs!r}; fine-tuning keeps "
        f"the base model's {what}: leave {setting} out of the configuration (or set it to {theirs!r})"
    )


def _elements_setting(config: TrainConfig, base: FineTuneBase) -> str:
    """The ``elements`` value of the resolved configuration; refuses a table that is not the base model's."""
    table = base.loaded.elements
    if base.kind == CHECKPOINT:
        return config.elements  # the table given for the authors' file is the base model's by definition
    if "elements" in config.model_fields_set:
        if load_elements(config.elements).fingerprint() != table.fingerprint():
            raise ConfigError(
                f"elements is {config.elements!r} but the base model {base.init_from} uses another element table "
                f"({table.name!r}); fine-tuning keeps the base model's element table: leave elements out"
            )
        return config.elements  # the base model's table, named as the configuration names it
    if table.fingerprint() == generate_cgcnn_table().fingerprint():
        return "generated"
    document = read_model_json(base.path)
    return str(base.path / (document.get("elements") or {}).get("file", ELEMENTS_FILE))


def resolve_config(config: TrainConfig, base: FineTuneBase) -> TrainConfig:
    """A copy of ``config`` with the base model's architecture, graph settings and element table.

    Raises:
        ConfigError: naming the first ``model``, ``graph``, ``elements``, ``task`` or
            ``finetune`` setting that contradicts the base model.
    """
    spec = base.loaded.spec
    architecture = spec.architecture
    for key in ARCHITECTURE_KEYS:
        mine, theirs = getattr(config.model, key), architecture.get(key, getattr(type(config.model)(), key))
        if key in config.model.model_fields_set and mine != theirs:
            raise _refuse(f"model.{key}", mine, base, theirs, "architecture")
    for key in sorted(config.graph_keys):
        mine, theirs = getattr(config.graph, key), getattr(spec.graph, key)
        if mine != theirs:
            raise _refuse(f"graph.{key}", mine, base, theirs, "graph settings (the weights were trained on them)")
    elements = _elements_setting(config, base)
    n_conv = int(architecture["n_conv"])
    ft = config.finetune
    if ft.freeze_convs > n_conv:
        raise ConfigError(f"finetune.freeze_convs is {ft.freeze_convs} but the base model has {n_conv} convolutions")
    if ft.output_layer == "keep" and config.task != spec.task:
        raise ConfigError(
            f"finetune.output_layer is 'keep' but the base model is a {spec.task} model and the task is "
            f"{config.task}: the output layer must be reset (output_layer: reset or auto)"
        )
    if config.task == "classification" and architecture.get("readout") == "atomwise":
        raise ConfigError(f"task is 'classification' but the base model {base.init_from} has the atomwise readout, "
                          "which is for regression only")  # fmt: skip
    settings = {key: architecture[key] for key in ARCHITECTURE_KEYS if key in architecture}
    if "dropout" not in config.model.model_fields_set and "dropout" in architecture:
        settings["dropout"] = architecture["dropout"]
    resolved = config.model_copy(deep=True)
    resolved.model = config.model.model_copy(update=settings)
    resolved.graph = spec.graph
    resolved.elements = elements
    resolved.validate()
    return resolved


# ---------------------------------------------------------------------------------------------
# The network of the run
# ---------------------------------------------------------------------------------------------


def output_layer_choice(config: TrainConfig, base: FineTuneBase) -> str:
    """``"keep"`` or ``"reset"``: ``finetune.output_layer``, with ``auto`` keeping the layer
    when the base model predicts the same property in the same units (and task)."""
    setting, spec = config.finetune.output_layer, base.loaded.spec
    if setting != "auto":
        return setting
    same = spec.task == config.task and spec.property == config.property_name
    if config.task == "regression":
        same = same and spec.units == config.target_units
    return "keep" if same else "reset"


def initialise_from_base(
    network: CrystalGraphConvNet, base: FineTuneBase, config: TrainConfig, *, mean: float, std: float
) -> FineTuneState:
    """Copy the base model's weights into ``network`` (built with the resolved configuration)
    and freeze what ``config.finetune`` says.

    A reset output layer keeps ``network``'s own (seeded) initialisation. A kept one of a
    regression model is rescaled from the base normaliser ``(m_b, s_b)`` to the run's
    ``(mean, std)``: ``W' = W s_b / std``, ``b' = (b s_b + m_b - mean) / std``, which leaves
    the predictions in target units unchanged.

    Args:
        network: the run's freshly built network (on the CPU).
        base: the base model; config: the resolved configuration.
        mean, std: the run's target normaliser, in target units.
    """
    choice = output_layer_choice(config, base)
    state = {k: v.detach().clone() for k, v in base.network.state_dict().items()}
    if choice == "reset":
        state = {k: v for k, v in state.items() if not k.startswith("fc_out.")}
    elif config.task == "regression":
        spec = base.loaded.spec
        if spec.property != config.property_name or spec.units != config.target_units:
            # kept as finetune.output_layer=keep asks (round 29e: it was called "same property and units", with the
            # base model's eV/atom statistics labelled GPa)
            warnings.warn(f"{config.data.path}: the output layer of {base.init_from}, a model of {spec.property} "
                          f"({spec.units}), is kept for {config.property_name} ({config.target_units}) as "
                          f"finetune.output_layer=keep asks: its outputs are rescaled from the base model's targets "
                          f"(mean {base.mean:.4g}, std {base.std:.4g} {spec.units}) to this run's labels (mean "
                          f"{mean:.4g}, std {std:.4g} {config.target_units})", UserWarning, stacklevel=3)  # fmt: skip
        else:
            shift = label_shift_problem(mean, base.mean, base.std, config.target_units,
                                        "this run's training labels' mean", "the base model's training targets' mean")
            if shift:  # the layer is kept for the same property in the same units: the labels say otherwise
                warnings.warn(f"{config.data.path}: the output layer of {base.init_from} is kept (same property and "
                              f"units), but {shift}", UserWarning, stacklevel=3)  # fmt: skip
        scale = base.std / std
        state["fc_out.weight"] = state["fc_out.weight"] * scale
        state["fc_out.bias"] = (state["fc_out.bias"] * base.std + base.mean - mean) / std
    missing, unexpected = network.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("fc_out.") for k in missing):
        raise ConfigError(f"the base model's weights do not fit the network: missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]}")  # fmt: skip
    ft = config.finetune
    n_frozen = network.hparams["n_conv"] if ft.head_only else ft.freeze_convs
    frozen = (["embedding"] if ft.freeze_embedding or ft.head_only else []) + [f"convs.{k}" for k in range(n_frozen)]
    state_ = FineTuneState(output_layer=choice, frozen=frozen, batch_norm_frozen=ft.freeze_batch_norm)
    for module in state_.modules(network):
        module.requires_grad_(False)
    return state_


def parameter_groups(network: CrystalGraphConvNet, config: TrainConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: the head (``finetune.head_lr``), then the trained part
    of the body (``finetune.body_lr``; left out when all of it is frozen). ``metrics.csv``'s
    ``lr`` is the head's."""
    ft, lr = config.finetune, config.optim.lr
    head, body = [], []
    for name, parameter in network.named_parameters():
        if parameter.requires_grad:
            (head if name.startswith(HEAD_PREFIXES) else body).append(parameter)
    groups = [{"params": head, "lr": ft.head_lr or lr, "name": "head"}]
    if body:
        groups.append({"params": body, "lr": ft.body_lr or lr, "name": "body"})
    return groups


# ---------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------


def _base_description(base: FineTuneBase) -> dict[str, Any]:
    """``metadata.finetune.base``: which model, its target and data, and its test metrics."""
    spec = base.loaded.spec
    dataset = spec.metadata.get("dataset") or {}
    keys = ("name", "path", "target", "rows_used", "source", "licence", "citation")
    test = base.info.get("test_metrics") or spec.metadata.get("test_metrics") or {}
    return {
        "init_from": base.init_from,
        "name": spec.name,
        "kind": base.kind,
        "path": str(base.path),
        "aliases": list(spec.metadata.get("aliases") or []),
        "property": spec.property,
        "units": spec.units,
        "task": spec.task,
        "member": base.member,
        "n_members": base.n_members,
        "normalizer": {"mean": base.mean, "std": base.std},
        "dataset": {k: dataset[k] for k in keys if dataset.get(k) is not None},
        "origin": spec.metadata.get("origin"),
        "test_metrics": test,
    }


def _base_dataset(base: FineTuneBase) -> Any:
    """The base model folder's dataset specification with a path that exists here (as its ``config.yaml``
    gives it, from the working directory or, as for the shipped models, from the folder's grandparent: the
    folder the training ran in), or ``None``."""
    import yaml

    from cgcnn_ase.data.datasets import DatasetSpec

    try:
        data = (yaml.safe_load((base.path / "config.yaml").read_text()) or {}).get("data")
        spec = DatasetSpec.from_dict(data)
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    for candidate in (Path(spec.path), base.path.parent.parent / spec.path):
        if candidate.exists():
            return spec.__class__.from_dict({**spec.to_dict(), "path": str(candidate.resolve())})
    return None


def base_overlap(base: FineTuneBase, table: Any, split: Any) -> dict[str, Any]:
    """Which of this run's validation and test crystals the base model trained on (its ``train`` split) or
    selected its epoch with (``val``): the same structure (:func:`content_digest` of the text or file; when the
    base model's dataset is found here), or the same id where both datasets have ids of their own (not row
    numbers, which name nothing outside their file). A test crystal the base model trained on makes the
    fine-tuned model's test error optimistic.

    Returns:
        ``{"checked": "ids and structures" | "structures" | "ids" | "nothing", "base_data": path or None,
        "val": {...}, "test": {...}}``, each part ``{"n", "base_train", "base_val"}`` (crystals; each counted once);
        with ``"nothing"`` checked, ``"why"`` says why.
    """
    from cgcnn_ase.data.datasets import content_digest, load_table
    from cgcnn_ase.data.splits import Split

    if base.kind == CHECKPOINT or not (base.path / "split.json").is_file():  # the authors' checkpoints record none
        return {"checked": "nothing", "base_data": None, "why": "the base model records no split"}
    saved = Split.load(base.path / "split.json")
    base_ids = {part: set(saved.ids(part)) for part in ("train", "val")}
    base_digests: dict[str, set[str]] = {"train": set(), "val": set()}
    spec, base_rows = _base_dataset(base), None
    if spec is not None:
        try:
            with catch_warnings():
                warnings.simplefilter("ignore")  # the base run's dataset warnings were given when it trained
                base_table = load_table(spec)
        except (CGCNNError, OSError, ValueError):
            spec = None
        else:
            base_rows = base_table.ids_are_rows
            for row_id, source in zip(base_table.ids, base_table.sources):
                for part in ("train", "val"):
                    if row_id in base_ids[part]:
                        base_digests[part].add(content_digest(source))
            for digests in base_digests.values():
                digests.discard(None)
    if table.ids_are_rows:
        by_id = False
    elif base_rows is None:  # the base's data not found: its ids are taken for row numbers if all are digits
        by_id = not all(i.isdigit() for part in base_ids.values() for i in part)
    else:
        by_id = not base_rows
    by_structure = spec is not None
    checked = " and ".join(w for w, on in (("ids", by_id), ("structures", by_structure)) if on) or "nothing"
    position = {row_id: k for k, row_id in enumerate(table.ids)}
    result: dict[str, Any] = {"checked": checked, "base_data": spec.path if spec is not None else None}
    if checked == "nothing":  # round 25a: the card blamed a split the base model ships
        result["why"] = ("this run's ids are row numbers, which cannot be matched with the base model's ids, and the "
                         "base model's data are not found here to match structures")  # fmt: skip
    for part in ("val", "test"):
        counts = {"n": 0, "base_train": 0, "base_val": 0}
        for row_id in split.ids(part):
            counts["n"] += 1
            digest = content_digest(table.sources[position[row_id]]) if by_structure and row_id in position else None
            for seen in ("train", "val"):
                if (by_id and row_id in base_ids[seen]) or (digest is not None and digest in base_digests[seen]):
                    counts[f"base_{seen}"] += 1
                    break
        result[part] = counts
    return result


def overlap_warning(base: FineTuneBase, overlap: dict[str, Any]) -> str | None:
    """The warning for test crystals the base model had seen (:func:`base_overlap`), or ``None``."""
    test = overlap.get("test") or {}
    seen = test.get("base_train", 0) + test.get("base_val", 0)
    if not seen:
        return None
    how = {"ids and structures": "by id or identical structure", "structures": "by identical structure"}.get(
        overlap.get("checked"), "by id")
    return (f"{seen} of the {test['n']} test crystals of this run are crystals the base model {base.name} was trained "
            f"on ({test['base_train']}) or selected with ({test['base_val']}), {how}: this model's test error "
            "understates its error on new crystals. Leave them out of this run (data.drop_ids) or give a split "
            "file whose test part holds crystals the base model has not seen (split.file)")  # fmt: skip


def finetune_metadata(
    base: FineTuneBase,
    config: TrainConfig,
    network: CrystalGraphConvNet,
    state: FineTuneState,
    overlap: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``metadata.finetune`` of the fine-tuned model's ``model.json`` (rendered by its card); ``overlap``:
    :func:`base_overlap`."""
    ft = config.finetune
    frozen = {id(p) for module in state.modules(network) for p in module.parameters()}
    counts = {"trained": 0, "frozen": 0}
    for parameter in network.parameters():
        counts["frozen" if id(parameter) in frozen else "trained"] += parameter.numel()
    trains_body = not ft.head_only and (len(state.frozen) < 1 + network.hparams["n_conv"])
    return {
        "base": _base_description(base),
        "output_layer": state.output_layer,
        "output_layer_setting": ft.output_layer,
        "frozen": list(state.frozen),
        "head_only": ft.head_only,
        "freeze_batch_norm": ft.freeze_batch_norm,
        "lr": {"head": ft.head_lr or config.optim.lr, "body": (ft.body_lr or config.optim.lr) if trains_body else None},
        "parameters": counts,
        "base_overlap": overlap or {"checked": "nothing", "base_data": None},
    }


# ---------------------------------------------------------------------------------------------
# Every member of an ensemble
# ---------------------------------------------------------------------------------------------


def _member_config(config: TrainConfig, k: int) -> TrainConfig:
    """Member ``k``'s run: base member ``k``, seed ``seed + k``, folders under the work folder."""
    member = config.model_copy(deep=True)
    member.finetune = config.finetune.model_copy(update={"member": k})
    member.seed = config.seed + k
    member.output = str(config.work_path / f"member{k}")
    member.work_dir = None
    member.name = f"{config.model_name}-member{k}"
    return member


def _train_members(config: TrainConfig, n_members: int, progress: bool) -> list[Path]:
    """Each member's run in turn (a finished one is only rewritten), within one ``time_limit`` for all.

    Raises:
        UnfinishedRunError: the time limit stopped a member, or passed before the next one began.
    """
    import time

    from cgcnn_ase.train.trainer import train_from_config

    start, folders, progressed = time.monotonic(), [], False
    for k in range(n_members):
        member = _member_config(config, k)
        before = _training_record(Path(member.output)).get("epochs_run")
        if config.time_limit is not None:
            left = config.time_limit - (time.monotonic() - start) / 60
            if left <= 0 and progressed:  # as a single run, a session trains at least one epoch
                _unfinished(config, k, n_members, None)
            member.time_limit = max(left, 1e-9)
        folder = train_from_config(member, progress=progress)
        training = _training_record(folder)
        progressed = progressed or training.get("epochs_run") != before
        if training.get("stopped_by") == "time_limit":
            _unfinished(config, k, n_members, training)
        folders.append(folder)
    return folders


def _training_record(folder: Path) -> dict[str, Any]:
    """``metadata.training`` of the model folder at ``folder``, or ``{}`` when it holds none yet."""
    if not (folder / "model.json").is_file():
        return {}
    return read_model_json(folder).get("metadata", {}).get("training", {}) or {}


def _unfinished(config: TrainConfig, k: int, n_members: int, training: dict[str, Any] | None) -> None:
    """Raise :class:`~cgcnn_ase.errors.UnfinishedRunError` for a session stopped in (or before) member ``k``."""
    where = (f"in member {k} of 0-{n_members - 1} (epoch {training.get('epochs_run')} of {config.epochs})"
             if training is not None else f"before member {k} of 0-{n_members - 1} began")  # fmt: skip
    done = f"members 0-{k - 1} are done" if k > 1 else "member 0 is done" if k == 1 else "no member is done yet"
    raise UnfinishedRunError(
        f"unfinished: the time limit ({config.time_limit} min) stopped this session {where}; {done} (under "
        f"{config.work_path}). {config.output} is assembled once every member has finished: run the same command "
        "again to continue.",
        folder=str(config.work_path),
    )


def finetune_all_members(config: TrainConfig, *, progress: bool = True) -> Path:
    """Fine-tune every member of the ensemble ``config.init_from`` (``finetune.member: all``)
    and assemble them into the ensemble folder ``config.output``; returns it.

    Member ``k`` starts from base member ``k`` with seed ``config.seed + k`` and the same split,
    in ``<work_dir>/member<k>`` (each resumable). The ensemble is then assembled, calibrated
    on the validation split and scored on the test split
    (:func:`~cgcnn_ase.train.ensembles.assemble_ensemble`). A single-model base gives one run.
    """
    import yaml

    from cgcnn_ase.train import ddp as parallel_training
    from cgcnn_ase.train.ensembles import assemble_ensemble
    from cgcnn_ase.train.export import CONFIG_HEADER, check_output_folder
    from cgcnn_ase.train.trainer import train_from_config

    if parallel_training.world_size_from_env() > 1:
        raise ConfigError("finetune.member: all trains the members one after the other; under torchrun, fine-tune one "
                          "member per launch (finetune.member=K) and assemble them with cgcnn-ase ensemble")  # fmt: skip
    kind, path = _locate(str(config.init_from))
    base_document = read_model_json(path) if kind != CHECKPOINT else {}
    described = (base_document.get("ensemble") or {}).get("members") or []
    single = copy.deepcopy(config)
    single.finetune = config.finetune.model_copy(update={"member": 0})
    if len(described) < 2:
        return train_from_config(single, progress=progress)
    check_output_folder(config)  # another model at output is refused before any member trains
    earlier = Path(config.output)
    had_intervals = (earlier / "model.json").is_file() and bool(
        ((read_model_json(earlier).get("ensemble") or {}).get("calibration") or {}).get("conformal"))
    folders = _train_members(config, len(described), progress)
    device = None if config.device == "auto" else config.device
    output = assemble_ensemble(
        folders, config.output, name=config.model_name, aliases=list(config.aliases) or None, device=device,
        batch_size=config.eval_batch_size, workers=config.workers, progress=progress,
        overwrite=True,  # check_output_folder passed: an earlier session's ensemble of these members, or nothing
    )  # fmt: skip
    document = read_model_json(output)
    finetune = document["metadata"].get("finetune") or {}
    if finetune.get("base"):  # member 0's description, which holds for every member but its index and metrics
        finetune["base"]["member"] = "all"
        finetune["base"]["test_metrics"] = (base_document.get("metadata") or {}).get("test_metrics") or {}  # the
        # base ensemble's, not its member 0's
        document["metadata"]["finetune"] = finetune
        write_model_json(output, document)
    member_text = (folders[0] / "config.yaml").read_text()
    resolved = yaml.safe_load(member_text)  # member 0's, with the base model's settings and its versioned name
    resolved.update({k: v for k, v in config.to_dict().items() if k not in ("model", "graph", "elements", "init_from")})
    header = "".join(line + "\n" for line in member_text.splitlines() if line.startswith("#")) or CONFIG_HEADER
    (output / "config.yaml").write_text(header + yaml.safe_dump(resolved, sort_keys=False))
    if had_intervals:  # round 29e: dropped without a word, and predict --coverage failed again
        warnings.warn(f"{output}: the ensemble written there before was calibrated for prediction intervals; this one "
                      f"is not yet: run `cgcnn-ase calibrate {output}` again", UserWarning, stacklevel=2)  # fmt: skip
    return output

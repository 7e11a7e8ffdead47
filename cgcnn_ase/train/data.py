"""The data of one training run: usable crystals with their graphs and final targets, the
split, its store positions and the target normaliser."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cgcnn_ase.data.datasets import (
    DatasetTable,
    class_labels_problem,
    finalize_targets,
    is_binary_labels,
    load_table,
    log_units_problem,
    warn_dropped_structures,
)
from cgcnn_ase.data.splits import SPLIT_NAMES, Split, make_split
from cgcnn_ase.errors import ConfigError, DatasetError
from cgcnn_ase.graph.element_table import ElementTable, load_atom_init
from cgcnn_ase.graph.elements import generate_cgcnn_table
from cgcnn_ase.train.cache import GraphStore, build_graph_store
from cgcnn_ase.train.config import TrainConfig
from cgcnn_ase.warning_blocks import catch_warnings

__all__ = ["PreparedData", "load_elements", "prepare_data", "resolve_split", "split_positions", "target_normalizer"]


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


def data_fingerprint(data: PreparedData) -> str:
    """Digest of what a run trains on (16 hex digits): the ids, the final targets and each crystal's
    structure (its graph-cache key, a hash of the structure's text, file contents or coordinates).
    A resumed run must see the same: :func:`~cgcnn_ase.train.config.config_fingerprint` covers the
    settings only, so edited labels or structures in a file of the same name would otherwise resume
    (or re-export) the old model."""
    digest = hashlib.sha256("\n".join([*data.ids, *data.store.keys.tolist()]).encode())
    digest.update(np.ascontiguousarray(data.targets, dtype="<f8").tobytes())
    return digest.hexdigest()[:16]


def load_elements(spec: str) -> ElementTable:
    """``"generated"`` -> this project's table; else the path of an ``atom_init.json``."""
    if spec == "generated":
        return generate_cgcnn_table()
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"elements must be 'generated' or the path of an atom_init.json; {path} does not exist")
    return load_atom_init(path)


def _drop_unsupported(
    store: GraphStore, rows: np.ndarray, table: DatasetTable, elements: ElementTable, errors: dict[str, str]
) -> tuple[GraphStore, np.ndarray]:
    """Leave out crystals with elements the table cannot featurise (recorded in ``errors``)."""
    if not len(store):
        return store, rows
    supported = np.zeros(max(elements.max_z, int(store.numbers.max())) + 1, dtype=bool)
    supported[sorted(elements.supported)] = True
    bad_atom = ~supported[store.numbers]
    crystal = np.repeat(np.arange(len(store)), store.n_atoms)
    bad = np.bincount(crystal[bad_atom], minlength=len(store)) > 0
    if not bad.any():
        return store, rows
    for k in np.flatnonzero(bad):
        errors[table.ids[rows[k]]] = f"element(s) not in the element table {elements.name!r}"
    keep = np.flatnonzero(~bad)
    return store.take(keep), rows[keep]


def log_name_problem(config: TrainConfig) -> str | None:
    """Why a regression model's ``property`` misnames its log values: the model predicts log10 (``units``
    ``log10(...)``, given or made by ``transform: log10``) under a name without ``log10_``, which reads as the
    quantity itself (a shipped ``bulk_modulus`` gives GPa); ``None`` when the name says log10 or none was given."""
    units = config.target_units
    if config.task != "regression" or not config.property or not units.lower().startswith("log10("):
        return None
    if config.property.lower().startswith(("log10_", "log_")):
        return None
    made = f" (units: {config.units} with data.transform: log10)" if config.units != units else ""
    return (f"property {config.property!r} is predicted in {units}{made}: its values are logarithms, but the name "
            "reads as the quantity itself (the CLI, calculator and featurizer give a log10(GPa) model's values in GPa "
            f"under the plain name only when the model's name starts with 'log10_'); name it 'log10_{config.property}'")


def prepare_data(config: TrainConfig, *, progress: bool = False, graph_device: torch.device | None = None) -> PreparedData:
    """Read the dataset table, fetch/build graphs, drop unusable rows, compute targets.

    ``graph_device``: build the graphs missing from the cache a batch at a time on this device
    (a GPU: see :func:`~cgcnn_ase.train.cache.build_graph_store`); ``None``: per structure in
    ``config.workers`` processes.

    Raises:
        ConfigError: unreadable dataset, no usable crystals, bad targets or labels.
    """
    elements = load_elements(config.elements)
    try:
        table = load_table(config.data)
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    store, rows, errors = build_graph_store(
        table, config.graph, cache_dir=config.cache_dir, workers=config.workers, progress=progress, device=graph_device
    )
    store, rows = _drop_unsupported(store, rows, table, elements, errors)
    warn_dropped_structures(config.data, errors)
    if not len(store):
        raise ConfigError(f"{config.data.path}: no usable crystals")
    ids = [table.ids[i] for i in rows]
    try:
        targets = finalize_targets(config.data, table.raw_targets[rows], store.n_atoms, ids)
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    if not store.n_edges.any():
        raise ConfigError(
            f"{config.data.path}: no atom of any crystal has a neighbour within graph.radius = {config.graph.radius} Å, "
            "so the convolutions would see nothing; raise graph.radius (the paper's is 8 Å)"
        )
    units_problem = log_units_problem(targets, config.target_units) if config.task == "regression" else None
    if units_problem:
        warnings.warn(f"{config.data.path}: {units_problem}", UserWarning, stacklevel=3)
    log_name = log_name_problem(config)
    if log_name:
        warnings.warn(log_name, UserWarning, stacklevel=3)
    outliers = outlier_labels_problem(targets, ids, config.target_units) if config.task == "regression" else None
    if outliers:
        warnings.warn(f"{config.data.path}: {outliers}", UserWarning, stacklevel=3)
    if config.task == "regression" and len(targets) > 1 and np.ptp(targets) == 0:
        warnings.warn(f"{config.data.path}: every target is {targets[0]:g}: there is nothing to learn",
                      UserWarning, stacklevel=3)  # fmt: skip
    folder = Path(config.data.path)
    if config.elements == "generated" and folder.is_dir() and (folder / "atom_init.json").is_file():
        warnings.warn(
            f"{folder / 'atom_init.json'} is not used: the run uses this project's element table (elements: "
            f"generated); set elements: {folder / 'atom_init.json'} to train with the folder's own, as the original "
            "code did", UserWarning, stacklevel=3,
        )  # fmt: skip
    if config.task == "classification":
        problem = class_labels_problem(targets, config.data.target, per_atom=config.data.per_atom, one_class=True)
        if problem:
            raise ConfigError(problem)
    elif len(targets) > 1 and is_binary_labels(targets) and np.ptp(targets) > 0:
        warnings.warn(f"{config.data.path}: every target of {config.data.target!r} is 0 or 1, labels of a class: this "
                      "run trains a regression on them (task: regression); for a classifier set task: classification",
                      UserWarning, stacklevel=3)  # fmt: skip
    return PreparedData(ids=ids, targets=targets, store=store, elements=elements, table=table, errors=errors)


#: Median absolute deviations (scaled to a Gaussian's std) from the median beyond which a label is called far from
#: the others: the shipped models' targets' farthest labels lie within 19 (tests/test_user_reports_r29.py checks
#: that none is flagged); a typo's 10^6 GPa among moduli lies at about 10^4.
OUTLIER_MADS = 50.0
#: At most this share of the labels (and at least 5 of them) is called far from the others: more is a target with a
#: heavy tail or mostly one value (round 30a: the total magnetisation, 0 for 74% of the MP crystals, flagged 8,855).
OUTLIER_SHARE = 0.01


def outlier_labels_problem(targets: np.ndarray, ids: Sequence[str], units: str) -> str | None:
    """Labels far from all the others (more than :data:`OUTLIER_MADS` scaled median absolute deviations from the
    median: a typo or a value in other units, which sets the normaliser and the loss; round 29e: one 10^6 GPa
    label among 200 moduli trained silently, and the card's test MAE became 2.2e4 GPa), or ``None``."""
    finite = np.isfinite(targets)
    if finite.sum() < 10:
        return None
    median = float(np.median(targets[finite]))
    mad = 1.4826 * float(np.median(np.abs(targets[finite] - median)))
    if mad <= 0:
        return None
    far = np.flatnonzero(finite & (np.abs(targets - median) > OUTLIER_MADS * mad))
    if not len(far) or len(far) > max(5, OUTLIER_SHARE * finite.sum()):
        return None
    worst = far[np.argsort(-np.abs(targets[far] - median))][:3]
    shown = ", ".join(f"{ids[k]}: {targets[k]:.4g}" for k in worst)
    return (f"{len(far)} label(s) lie more than {OUTLIER_MADS:g} deviations from the others (median {median:.4g} "
            f"{units}; {shown}): a typo, or a value in other units? They set the normaliser and weigh on the loss; "
            "leave them out (data.drop_ids) if they are wrong")


def copies_of_crystals(data: PreparedData) -> list[list[str]]:
    """The ids of rows holding one crystal, in groups of two or more: the same graph
    (:func:`~cgcnn_ase.graph.identity.same_graph_groups`) and one structure to pymatgen's ``StructureMatcher`` at
    tight tolerances (:func:`~cgcnn_ase.graph.identity.same_crystal_groups`), however the rows write it (another
    format, cell, supercell, atom order or precision; not a polymorph or a strained copy, round 27)."""
    from cgcnn_ase.data.datasets import parse_one
    from cgcnn_ase.graph.identity import same_crystal_groups, same_graph_groups

    store = data.store
    groups = same_graph_groups(store.numbers, store.atom_offsets, store.centers, store.neighbors, store.distances,
                               store.edge_offsets)  # fmt: skip
    if not groups:
        return []
    row = {row_id: k for k, row_id in enumerate(data.table.ids)}

    def structure(k: int) -> object:
        row_id = data.ids[k]
        try:
            with catch_warnings():
                warnings.simplefilter("ignore")  # read before, when the graphs were built
                record = parse_one(data.table.kind, data.table.sources[row[row_id]], row_id)
            return record.to_pymatgen()
        except Exception:  # noqa: BLE001 - a row that cannot be read again here is left out of the check
            return None

    return [[data.ids[k] for k in group] for group in same_crystal_groups(groups, structure)]


def one_class_warning(config: TrainConfig, targets: np.ndarray, parts: dict[str, np.ndarray]) -> str | None:
    """For a classifier: the validation or test split holding crystals of one class only (round 29e: 40 crystals
    with 3 metals left a test split without any, and the card read "accuracy 1"), or ``None``."""
    if config.task != "classification":
        return None
    single = {part: int(targets[rows][0]) for part in ("val", "test") if len(rows := np.asarray(parts.get(part, ())))
              and len(np.unique(targets[rows])) == 1}  # fmt: skip
    if not single:
        return None
    what = "; ".join(f"the {part} split's {len(parts[part])} crystals are all of class {label}"
                     for part, label in single.items())  # fmt: skip
    return (f"{what}: its ROC-AUC, precision and recall are undefined (n/a) and its accuracy says little; use more "
            "crystals, larger split fractions or another split.seed")


def resolve_split(config: TrainConfig, work: Path, ids: list[str], *, resuming: bool) -> Split:
    """The run's split: the work folder's ``split.json`` when resuming, else ``split.file``,
    else a seeded random split of ``ids`` with ``config.split``'s fractions."""
    saved = work / "split.json"
    if resuming and saved.is_file():
        return Split.load(saved)
    if config.split.file:
        try:
            return Split.load(config.split.file)
        except DatasetError as exc:
            raise ConfigError(str(exc)) from None
    fractions = (config.split.train, config.split.val, config.split.test)
    try:
        split = make_split(ids, fractions, config.split.seed)
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None
    unused = len(ids) - sum(split.sizes.values())
    if unused:  # allowed (a learning curve trains on part of the data), but never silently
        warnings.warn(f"split fractions {fractions} sum to {sum(fractions):g}: {unused} of {len(ids)} crystals are in "
                      "no split and are not used (the model card counts them as left out)", UserWarning, stacklevel=2)  # fmt: skip
    return split


def split_positions(split: Split, data: PreparedData, source: str | None = None) -> dict[str, np.ndarray]:
    """Store positions of each part of ``split`` (``train``, ``val``, ``test``), int64 arrays; a split
    read from a file (``source``) that leaves usable crystals out gets a warning saying how many.

    Raises:
        ConfigError: ids of the split that are not usable crystals of the dataset, with the reason
            (left out by this run's data settings, unusable, or not in the file).
    """
    position = {i: k for k, i in enumerate(data.ids)}
    missing = [i for name in SPLIT_NAMES for i in split.ids(name) if i not in position]
    if missing:
        raise ConfigError(f"{len(missing)} ids of the split are not usable crystals of the dataset: "
                          f"{_why_missing(missing, data)}")  # fmt: skip
    used = sum(split.sizes.values())
    if source is not None and used < len(data.ids):
        warnings.warn(f"the split {source} names {used} of the {len(data.ids)} usable crystals: the other "
                      f"{len(data.ids) - used} are in no part and are not used", UserWarning, stacklevel=2)  # fmt: skip
    return {name: np.array([position[i] for i in split.ids(name)], dtype=np.int64) for name in SPLIT_NAMES}


def _why_missing(missing: list[str], data: PreparedData) -> str:
    """Why ids of a split are not among the usable crystals, grouped by reason with examples."""
    selected, no_target = set(data.table.ids), set(data.table.missing_targets)
    groups: dict[str, list[str]] = {}
    for i in missing:
        reason = ("its structure is unusable" if i in data.errors else "it has no finite target" if i in no_target
                  else "it is not among the rows this run selects" if i not in selected else "it is not usable")  # fmt: skip
        groups.setdefault(reason, []).append(i)
    parts = [f"{len(ids)} because {reason} (e.g. {ids[:3]})" for reason, ids in groups.items()]
    chosen = {k: v for k, v in data.table.dropped.items() if k in ("drop_ids", "filter", "limit") and v}
    if "it is not among the rows this run selects" in groups:
        left = ", ".join(f"{count} rows by {setting}" for setting, count in chosen.items())
        settings = f"this run's data settings leave out {left}" if chosen else "they are not in the dataset file"
        parts.append(f"{settings}; a split file must name rows this run keeps: use the data settings of the run "
                     "that wrote it, or let this run make its own split (remove split.file)")  # fmt: skip
    return "; ".join(parts)


def target_normalizer(task: str, train_targets: np.ndarray) -> tuple[float, float]:
    """``(mean, std)`` of the training targets for regression (std 1 when they are all
    equal); ``(0, 1)`` for classification."""
    if task != "regression":
        return 0.0, 1.0
    mean = float(np.mean(train_targets))
    std = float(np.std(train_targets))
    return mean, std if std > 1e-12 else 1.0

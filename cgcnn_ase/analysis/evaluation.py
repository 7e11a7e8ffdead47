"""Evaluation of a model folder on its dataset's splits (metrics in :mod:`.metrics`, plots in :mod:`.plots`).

>>> evaluate_model("runs/formation_energy", split="test", out_dir="eval")  # doctest: +SKIP
{'split': 'test', 'n': 3423, 'metrics': {'mae': 0.041, ...}, 'units': 'eV/atom', ...}
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cgcnn_ase.analysis.metrics import (
    classification_metrics,
    fit_std_scale,
    regression_metrics,
    uncertainty_report,
)
from cgcnn_ase.analysis.plots import parity_plot, roc_plot, uncertainty_plots
from cgcnn_ase.data.datasets import class_labels_problem, label_shift_problem
from cgcnn_ase.errors import CGCNNError, DatasetError, EnsembleError
from cgcnn_ase.models.cards import json_safe
from cgcnn_ase.warning_blocks import catch_warnings

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Evaluating a model folder
# ---------------------------------------------------------------------------------------------


def _model_folder(model: str | os.PathLike) -> Path:
    """A model folder from a path or a shipped model's name/alias (:func:`~cgcnn_ase.models.registry.model_folder`)."""
    from cgcnn_ase.models.registry import model_folder

    return model_folder(model, purpose="evaluation needs a folder with model.json and split.json")


#: Dataset settings that describe a file's layout; another dataset's may differ from the training one's.
LAYOUT_FIELDS = ("target", "id_column", "structure_column", "filter", "format", "per_atom", "transform")


def _dataset_spec(folder: Path, dataset: Any, layout: Mapping[str, Any] | None = None) -> Any:
    """The dataset to evaluate on: the training config's, possibly at another path, with the
    ``layout`` settings (:data:`LAYOUT_FIELDS`, e.g. another target column name) replaced."""
    import yaml

    from cgcnn_ase.data.datasets import DatasetError, DatasetSpec

    layout = dict(layout or {})
    unknown = sorted(set(layout) - set(LAYOUT_FIELDS))
    if unknown:
        raise DatasetError(f"unknown dataset layout settings {unknown}; allowed: {list(LAYOUT_FIELDS)}")
    if layout and (dataset is None or isinstance(dataset, (DatasetSpec, dict))):
        raise DatasetError("layout settings (target, id column, ...) apply to a dataset given by its path")
    if isinstance(dataset, DatasetSpec):
        return dataset
    if isinstance(dataset, dict):
        return DatasetSpec.from_dict(dataset)
    config_path = folder / "config.yaml"
    trained = None
    if config_path.is_file():
        trained = (yaml.safe_load(config_path.read_text()) or {}).get("data")
    if dataset is None:
        if trained is None:
            raise DatasetError(f"{folder}: no config.yaml with a 'data' section; pass the dataset explicitly")
        spec = DatasetSpec.from_dict(trained)
        if not Path(spec.path).exists():  # the training run's path, relative to where it ran
            raise DatasetError(
                f"{folder.name} was trained on {spec.path}, which is not there from {Path.cwd()}: give the dataset's "
                f"path on this machine (the DATASET argument of cgcnn-ase evaluate or calibrate; Python: their dataset "
                f"argument)"
            )
        return spec
    if trained is not None and layout.get("transform") == "log10" and trained.get("transform") != "log10":
        raise DatasetError(f"{folder.name} predicts its target as it is (trained without a log10 transform): --transform "
                           "log10 would score its values against logarithms; give the column in the model's units")  # fmt: skip
    if trained is not None:  # same targets / filters / transform, another location (and perhaps layout)
        moved_copy = Path(str(trained.get("path", ""))).name == Path(str(dataset)).name  # names compared, as training does
        if layout or not moved_copy:  # another file: the training file's outlier ids and its name do not describe it
            trained = {k: v for k, v in trained.items() if k not in ("drop_ids", "name")}
        if "target" in layout and trained.get("per_atom") and "per_atom" not in layout:
            import warnings

            warnings.warn(
                f"{folder.name} was trained on {trained.get('target')!r} divided by each crystal's number of atoms "
                f"(per_atom); {layout['target']!r} is divided too. If it is already per atom, say so (CLI "
                "--no-per-atom; Python layout per_atom=False)",
                UserWarning,
                stacklevel=3,
            )
        return DatasetSpec.from_dict({**trained, "path": str(dataset), **layout})
    return DatasetSpec(path=str(dataset), **layout)


@dataclass
class SplitRecords:
    """Parsed crystals of one split of a dataset, with their targets.

    Attributes:
        ids: row ids of the usable crystals, in split order.
        records: their structures.
        targets: targets after ``per_atom`` and ``transform``, float64, shape (n,), in the
            model's units (labels 0/1 for classifiers).
        n_unusable: rows of the split whose structure could not be parsed.
        unusable: those rows' ids and why each could not be used.
    """

    ids: list[str]
    records: list[Any]
    targets: np.ndarray
    n_unusable: int = 0
    unusable: dict[str, str] = field(default_factory=dict)


def load_split_records(
    model: str | os.PathLike,
    dataset: Any = None,
    splits: Sequence[str] = ("test",),
    *,
    workers: int = 2,
    progress: bool = False,
    layout: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, SplitRecords]]:
    """Read and parse the crystals of some splits of a model's dataset (the file is read once).

    Args:
        model: a model folder (with ``split.json`` and, unless ``dataset`` is a full
            spec, ``config.yaml``) or a shipped model's name.
        dataset: as in :func:`evaluate_model` (``None``: the training config's dataset;
            a path: the same settings applied to another location).
        splits: any of ``"train"``, ``"val"``, ``"test"``, ``"all"``.
        layout: with ``dataset`` a path to another file, the settings of :data:`LAYOUT_FIELDS` that
            differ from the training config's (e.g. ``{"target": "bulk_modulus_vrh", "id_column":
            "mp_id"}``, or ``per_atom`` for a column that is already per atom); the transform and
            the rest stay the model's.

    Returns:
        The :class:`~cgcnn_ase.data.datasets.DatasetSpec` used and ``{split: SplitRecords}``.

    Raises:
        DatasetError: no dataset, no ``split.json``, or a split without rows.
    """
    import warnings

    from cgcnn_ase.data.datasets import finalize_targets, load_table, parse_structures
    from cgcnn_ase.data.splits import Split
    from cgcnn_ase.errors import DatasetError
    from cgcnn_ase.io.reader import cif_reader_for_policy
    from cgcnn_ase.io.records import StructureRecord
    from cgcnn_ase.models.folder import read_model_json

    folder = _model_folder(model)
    spec = _dataset_spec(folder, dataset, layout)
    try:
        table = load_table(spec)
    except DatasetError as exc:
        if not (layout and spec.filter and "filter" not in layout and "invalid filter" in str(exc)):
            raise
        raise DatasetError(f"{exc}. The filter is the model's training config's: replace it for this dataset "
                           "(layout filter=..., CLI --filter; '' for none)") from None  # fmt: skip
    position = {i: k for k, i in enumerate(table.ids)}
    saved = None
    chosen: dict[str, list[int]] = {}
    for split in splits:
        if split == "all":
            chosen[split] = list(range(len(table)))
            _warn_seen_rows(folder, table)
            continue
        if saved is None:
            split_path = folder / "split.json"
            if not split_path.is_file():
                raise DatasetError(f"{folder}: no split.json; use split='all' to evaluate every row")
            saved = Split.load(split_path)
        wanted = saved.ids(split)
        if not wanted:
            sizes = ", ".join(f"{part} {size}" for part, size in saved.sizes.items())
            raise DatasetError(
                f"{folder}: the model's split holds no {split} crystals ({sizes}): nothing to use there (evaluate: "
                "choose another split with --split val/train/all; calibrate: the members need a validation split)"
            )
        missing = [i for i in wanted if i not in position]
        if missing:
            warnings.warn(
                f"{len(missing)} of {len(wanted)} {split} ids are not in {spec.path} (e.g. {missing[:3]}); "
                "they are skipped",
                UserWarning,
                stacklevel=2,
            )
        chosen[split] = [position[i] for i in wanted if i in position]
        if not chosen[split]:
            raise DatasetError(
                f"no rows of {spec.path} to evaluate for split {split!r}: none of its ids are in this dataset "
                "(another dataset than the model's own? evaluation scores every row of one with split='all', CLI "
                "`evaluate --split all`; calibration needs the model's own dataset)"
            )
    rows = sorted({r for part in chosen.values() for r in part})
    policy = read_model_json(folder)["graph"].get("neighbor_policy", "symmetric")
    reader = cif_reader_for_policy(policy)  # as the model's predictor reads CIFs
    parsed = dict(zip(rows, parse_structures(table, rows, workers=workers, progress=progress, cif_reader=reader)))
    out: dict[str, SplitRecords] = {}
    for split, part in chosen.items():
        ok = [r for r in part if isinstance(parsed[r], StructureRecord)]
        records = [parsed[r] for r in ok]
        ids = [table.ids[r] for r in ok]
        targets = finalize_targets(spec, table.raw_targets[ok], np.array([len(r) for r in records]), ids)
        unusable = {str(table.ids[r]): str(parsed[r]) for r in part if not isinstance(parsed[r], StructureRecord)}
        out[split] = SplitRecords(ids=ids, records=records, targets=targets, n_unusable=len(part) - len(ok),
                                  unusable=unusable)  # fmt: skip
    return spec, out


def _warn_seen_rows(folder: Path, table: Any) -> None:
    """A warning when rows scored with ``split="all"`` are the model's own training or validation crystals, by id
    or, where the model's training data is found from here, by identical structure (round 23b: the same crystals
    shuffled and renamed passed unwarned): their errors understate the error on new crystals."""
    import warnings

    from cgcnn_ase.data.datasets import structure_digest
    from cgcnn_ase.data.splits import Split

    if not (folder / "split.json").is_file():
        return
    saved = Split.load(folder / "split.json")
    parts = {part: set(saved.ids(part)) for part in ("train", "val")}
    own = _own_training_digests(folder, parts)
    seen = {"train": 0, "val": 0}
    for row_id, source in zip(table.ids, table.sources):
        digest = structure_digest(source) if own is not None else None
        for part in ("train", "val"):
            if row_id in parts[part] or (digest is not None and digest in own[part]):
                seen[part] += 1
                break
    if any(seen.values()):
        how = ("by id or identical structure (the same text, file or dict; a copy written another way is not found)"
               if own is not None else "by id (the model's training data is not found here)")
        warnings.warn(
            f"{seen['train'] + seen['val']} of the {len(table.ids)} rows scored are crystals the model was trained on "
            f"({seen['train']} of its train split) or selected on ({seen['val']} of its val split), {how}: their "
            "errors understate the error on new crystals (score the test split, or a table of new crystals)",
            UserWarning, stacklevel=3,
        )  # fmt: skip


def _own_training_digests(folder: Path, parts: dict[str, set[str]]) -> dict[str, set[str]] | None:
    """:func:`~cgcnn_ase.data.datasets.structure_digest` of the model's own training and validation crystals, from
    the dataset its config names; ``None`` when that is not found or cannot be read from here."""
    import warnings

    from cgcnn_ase.data.datasets import load_table, structure_digest

    try:
        with catch_warnings():
            warnings.simplefilter("ignore")  # its warnings were given when it trained
            own = load_table(_dataset_spec(folder, None, None))
    except (CGCNNError, OSError, ValueError):
        return None
    digests: dict[str, set[str]] = {part: set() for part in parts}
    for row_id, source in zip(own.ids, own.sources):
        for part, ids in parts.items():
            if row_id in ids and (digest := structure_digest(source)) is not None:
                digests[part].add(digest)
    return digests


def predict_quietly(predictor: Any, records: list[Any], *, batch_size: int, progress: bool, **kwargs: Any) -> Any:
    """Predict with errors collected and unseen-element warnings silenced (summarised by the caller)."""
    import warnings

    from cgcnn_ase.errors import UnseenElementWarning

    with catch_warnings():
        warnings.simplefilter("ignore", UnseenElementWarning)
        return predictor.predict(
            records, batch_size=batch_size, errors="collect", on_sparse="ignore", progress=progress, **kwargs
        )


def _write_evaluation(
    out: Path, summary: dict[str, Any], ids: list[str], targets: np.ndarray, result: Any, predictor: Any, title: str,
    unusable: dict[str, str],
) -> dict[str, str]:
    """Write ``predictions.csv`` (a row per scored crystal, then one per unreadable row with its message), the
    parity (or ROC) plot, the ensemble plots and ``metrics.json``; their paths."""
    import pandas as pd

    spec_m = predictor.model.spec
    out.mkdir(parents=True, exist_ok=True)
    column = f"{spec_m.property} ({spec_m.units})"
    frame = {"id": ids, f"true {column}": targets, f"predicted {column}": result.values}
    if result.std is not None:
        frame[f"std {column}"] = result.std
        if result.std_scale is not None:
            frame[f"raw std {column}"] = result.std_raw
    frame["n_sparse"] = result.n_sparse
    frame["unseen_elements"] = [" ".join(u) for u in result.unseen_elements] if result.unseen_elements else ""
    if result.domain_percentile is not None:
        frame["domain_distance"] = result.domain_distance
        frame["domain_percentile"] = result.domain_percentile
    frame["error"] = result.errors
    table = pd.DataFrame(frame)
    if unusable:  # rows whose structure could not be read: named, with why (metrics.json counts them in n_failed)
        table = pd.concat([table, pd.DataFrame({"id": list(unusable), "error": list(unusable.values())})],
                          ignore_index=True)  # fmt: skip
    table.to_csv(out / "predictions.csv", index=False)  # full precision, as predict writes (31a)
    good = result.ok
    if spec_m.task == "classification":
        plot = roc_plot(targets[good], result.values[good], out / "roc.png", title=title, positive=spec_m.positive_class)
    else:
        plot = parity_plot(targets[good], result.values[good], out / "parity.png", units=spec_m.units, title=title,
                           label=spec_m.property)  # fmt: skip
    files = {"metrics": str(out / "metrics.json"), "predictions": str(out / "predictions.csv"), "plot": str(plot)}
    if predictor.is_ensemble:
        files.update({k: str(v) for k, v in uncertainty_plots(targets, result, out, title=title).items()})
    document = json_safe({**summary, "files": files})  # NaN (e.g. R² of one crystal) as null: valid JSON
    (out / "metrics.json").write_text(json.dumps(document, indent=2, default=float) + "\n")
    return files


def evaluate_model(
    model: str | os.PathLike,
    dataset: Any = None,
    *,
    split: str = "test",
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    device: str | None = None,
    workers: int = 2,
    progress: bool = False,
    layout: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Predict one split of a dataset with a trained model (single or ensemble) and score it.

    Args:
        model: a model folder written by training, or a shipped model's name/alias.
        dataset: ``None`` (the dataset in the model's ``config.yaml``), a path (the same
            dataset settings applied to another file, e.g. a moved copy), a
            :class:`~cgcnn_ase.data.datasets.DatasetSpec` or a mapping of its fields.
        split: ``"train"``, ``"val"`` or ``"test"`` (ids from the model folder's
            ``split.json``), or ``"all"`` (every usable row, e.g. of an external dataset).
        out_dir: where to write ``metrics.json``, ``predictions.csv`` and ``parity.png`` /
            ``roc.png`` (ensembles also ``error_vs_std.png`` and ``calibration.png``);
            ``None`` writes nothing.
        batch_size, device: passed to :meth:`CGCNNPredictor.predict`.
        workers: processes for parsing structures and for the prediction (see
            :meth:`CGCNNPredictor.predict`).
        layout: as in :func:`load_split_records` (another file's column names).

    Returns:
        ``{"model", "dataset", "split", "n", "n_failed", "n_unseen_elements", "property",
        "units", "task", "metrics", "files"}``; ``metrics`` as from :func:`regression_metrics` or
        :func:`classification_metrics`. For an ensemble also ``"uncertainty"``
        (:func:`uncertainty_report`, with the model's stored calibration).
    """
    import warnings

    from cgcnn_ase.errors import UnseenElementWarning
    from cgcnn_ase.inference.predictor import CGCNNPredictor

    folder = _model_folder(model)
    predictor = CGCNNPredictor.load(folder, device=device)
    spec, parts = load_split_records(folder, dataset, (split,), workers=workers, progress=progress, layout=layout)
    data = parts[split]
    ids, targets = data.ids, data.targets
    result = predict_quietly(predictor, data.records, batch_size=batch_size, progress=progress, workers=workers)
    good = result.ok
    unseen = [bool(u) for u in result.unseen_elements] if result.unseen_elements else [False] * len(ids)
    if any(unseen):
        warnings.warn(
            f"model {predictor.model.spec.name!r}: {sum(unseen)} of {len(ids)} structures hold elements absent "
            "from its training data; their predictions are extrapolations, included in the metrics (column "
            "'unseen_elements' of predictions.csv)",
            UnseenElementWarning,
            stacklevel=2,
        )
    spec_m = predictor.model.spec
    if spec_m.task == "classification":
        problem = class_labels_problem(targets, spec.target, per_atom=spec.per_atom)
        if problem:
            raise DatasetError(f"{spec.path}: {problem} (CLI: --target, --no-per-atom)")
        metrics = classification_metrics(targets[good], result.values[good])
    else:
        metrics = regression_metrics(targets[good], result.values[good])
    summary: dict[str, Any] = {
        "model": str(folder),
        "dataset": spec.to_dict(),
        "split": split,
        "n": int(good.sum()),
        "n_failed": int(data.n_unusable + (~good).sum()),
        "n_unseen_elements": int(sum(unseen)),
        "property": spec_m.property,
        "units": spec_m.units,
        "task": spec_m.task,
        "metrics": metrics,
        "files": {},
    }
    notes = [labels_changed(spec_m.metadata, folder, split, ids, targets, layout), _base_had_seen(spec_m.metadata, split, len(ids)),
             _labels_shifted(spec_m, spec, targets[good], result.values[good]), _classes_inverted(spec_m, metrics)]
    for note in filter(None, notes):
        summary["note"] = f"{summary['note']}; {note}" if "note" in summary else note
        warnings.warn(f"model {spec_m.name!r}: {note}", UserWarning, stacklevel=2)
    if predictor.is_ensemble:
        summary["uncertainty"] = uncertainty_report(targets, result)
    if out_dir is not None:
        title = f"{spec_m.name}: {split} split of {spec.display_name}"
        summary["files"] = _write_evaluation(Path(out_dir), summary, ids, targets, result, predictor, title,
                                             data.unusable)  # fmt: skip
    logger.info("evaluated %s on %d %s crystals: %s", folder, summary["n"], split, metrics)
    return summary


#: Training standard deviations between the medians of the labels and of the predictions beyond which
#: ``evaluate`` takes the labels to be in other units (a model that predicts a dataset at all is far closer;
#: a factor of 10 on a log10 modulus is 2.9 of them).
PREDICTION_SHIFT_LIMIT = 2.5


def _labels_shifted(model: Any, spec: Any, targets: np.ndarray, predictions: np.ndarray) -> str | None:
    """A note when a regression model's labels lie far from its own predictions of them (other units, or a
    log10 applied to a column already in log10), else ``None``."""
    finite = np.isfinite(targets) & np.isfinite(predictions)
    if model.task != "regression" or not finite.any():
        return None
    labels, predicted = float(np.median(targets[finite])), float(np.median(predictions[finite]))
    problem = label_shift_problem(labels, predicted, model.normalizer_std, model.units,
                                  reference="the predictions' median", limit=PREDICTION_SHIFT_LIMIT)  # fmt: skip
    if problem and spec.transform == "log10" and labels < predicted:  # log10 of logs: smaller numbers
        problem += (f" (the labels are {spec.target!r} after log10, as in training: a column already in log10 needs "
                    "transform none, CLI --transform none)")
    return problem


def _classes_inverted(model: Any, metrics: Mapping[str, Any]) -> str | None:
    """A note when a classifier ranks the labels backwards (ROC-AUC below 0.3): label 1 is likely its class 0."""
    auc = metrics.get("roc_auc") if model.task == "classification" else None
    if auc is None or not np.isfinite(auc) or auc >= 0.3:
        return None
    positive = model.positive_class or "class 1"
    return (f"ROC-AUC {auc:.2f}: the model ranks these labels backwards; is label 1 here its class 1 ({positive!r})? "
            "Invert the target (e.g. --target 'band_gap == 0' for metals)")


def _base_had_seen(metadata: Mapping[str, Any], split: str, n_scored: int | None = None) -> str | None:
    """A note when a fine-tuned model's ``test`` split holds crystals its base model trained on or selected
    with (``metadata.finetune.base_overlap``, recorded at training), else ``None``; ``n_scored``: the test crystals
    this evaluation scores (round 29e: the counts of the whole split were repeated for 7 of its 30 crystals)."""
    test = ((metadata.get("finetune") or {}).get("base_overlap") or {}).get("test") or {}
    seen = test.get("base_train", 0) + test.get("base_val", 0)
    if split != "test" or not seen:
        return None
    scope = "" if n_scored is None or n_scored == test.get("n") else (
        f"; this evaluation scores {n_scored} of them, so it may hold fewer")
    return (f"{seen} of the {test.get('n')} test crystals are crystals its base model was trained on or selected "
            f"with (recorded at fine-tuning{scope}): this test error understates the error on new crystals")


def labels_changed(metadata: Mapping[str, Any], folder: Path, split: str, ids: Sequence[str], targets: np.ndarray,
                    layout: Mapping[str, Any] | None) -> str | None:
    """A note when the ``split`` part's labels differ from those recorded at training (the model's
    ``metadata.dataset.label_digests``: the file was edited since), else ``None`` (also when nothing
    was recorded, or another layout or rows missing from the split make the comparison meaningless)."""
    from cgcnn_ase.data.splits import Split, label_digest

    digests = (metadata.get("dataset") or {}).get("label_digests") or {}
    if not digests or layout or not (folder / "split.json").is_file():
        return None
    saved, target = Split.load(folder / "split.json"), dict(zip(ids, np.asarray(targets).tolist()))
    changed = []
    for part in ((split,) if split != "all" else tuple(digests)):
        wanted = saved.ids(part)
        if part not in digests or not all(i in target for i in wanted):  # rows missing or unusable: warned already
            continue
        if label_digest(wanted, [target[i] for i in wanted]) != digests[part]:
            changed.append(part)
    if not changed:
        return None
    parts = " and ".join(changed)
    return (f"the labels of the {parts} split differ from those the model was trained and scored with (the dataset "
            "was edited since, or another file has the same ids): these metrics are not the model card's")


def evaluate_uncertainty(
    model: str | os.PathLike,
    dataset: Any = None,
    *,
    split: str = "test",
    calibration_split: str = "val",
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    device: str | None = None,
    workers: int = 2,
    progress: bool = False,
    parts: dict[str, SplitRecords] | None = None,
) -> dict[str, Any]:
    """Measure an ensemble's uncertainty: fit the std calibration on one split, report on another.

    The calibration factor ``s`` (:func:`fit_std_scale`: calibrated z-scores have unit RMS)
    is fitted on ``calibration_split`` (validation) with the raw ensemble std and applied
    to ``split`` (test), so the reported calibration is measured on crystals it was not
    fitted on. Classifiers are not calibrated (``scale`` is ``None``).

    Args:
        model: an ensemble model folder (or a shipped ensemble's name).
        dataset: as in :func:`evaluate_model`.
        split: the split to report on.
        calibration_split: the split to fit the scale on (``None``: no calibration).
        out_dir: where to write ``error_vs_std.png``, ``calibration.png`` and
            ``parity.png`` / ``roc.png`` of ``split`` (``None``: no plots).
        parts: already parsed splits (from :func:`load_split_records`), to skip reading.

    Returns:
        ``{"model", "property", "units", "task", "calibration": {"scale", "method",
        "split", "n"} or None, split: uncertainty_report (with the fitted scale),
        calibration_split: uncertainty_report, "metrics": {split: ensemble metrics,
        calibration_split: ...}, "files"}``.

    Raises:
        ValueError: the model is not an ensemble.
    """
    from cgcnn_ase.inference.predictor import CGCNNPredictor

    folder = _model_folder(model)
    predictor = CGCNNPredictor.load(folder, device=device)
    if not predictor.is_ensemble:
        raise EnsembleError(f"{folder}: not an ensemble (uncertainty needs several members)")
    names = [n for n in dict.fromkeys([calibration_split, split]) if n]
    if parts is None or any(n not in parts for n in names):
        _, parts = load_split_records(folder, dataset, names, workers=workers, progress=progress)
    spec_m = predictor.model.spec
    classification = spec_m.task == "classification"
    results = {n: predict_quietly(predictor, parts[n].records, batch_size=batch_size, progress=progress) for n in names}
    calibration = None
    if calibration_split and not classification:
        fit = results[calibration_split]
        good = fit.ok
        scale = fit_std_scale(parts[calibration_split].targets[good], fit.values[good], fit.std_raw[good])
        calibration = {"scale": scale, "method": "rms_z", "split": calibration_split, "n": int(good.sum()),
                       "description": "std = scale * raw ensemble std; scale = RMS of the raw z-scores on the "
                                      f"{calibration_split} split, so calibrated {calibration_split} z-scores have unit RMS"}  # fmt: skip
    report: dict[str, Any] = {
        "model": str(folder),
        "property": spec_m.property,
        "units": spec_m.units,
        "task": spec_m.task,
        "n_members": predictor.model.n_members,
        "calibration": calibration,
        "metrics": {},
        "files": {},
    }
    scale = calibration["scale"] if calibration else None
    for n in names:
        result = results[n]
        result.std_scale = scale
        result.std = result.std_raw * scale if scale is not None else result.std_raw.copy()
        y = parts[n].targets
        good = result.ok
        report[n] = uncertainty_report(y, result)
        report["metrics"][n] = (
            classification_metrics(y[good], result.values[good])
            if classification
            else regression_metrics(y[good], result.values[good])
        )
    if out_dir is not None:
        out = Path(out_dir)
        result, y = results[split], parts[split].targets
        good = result.ok
        title = f"{spec_m.name}: {split} split"
        files = uncertainty_plots(y, result, out, title=title)
        if classification:
            files["plot"] = roc_plot(y[good], result.values[good], out / "roc.png", title=title,
                                     positive=spec_m.positive_class)  # fmt: skip
        else:
            files["plot"] = parity_plot(y[good], result.values[good], out / "parity.png", units=spec_m.units,
                                        title=title, label=spec_m.property)  # fmt: skip
        report["files"] = {k: str(v) for k, v in files.items()}
    return report

"""Writing a trained model folder, and the per-epoch ``metrics.csv``.

The model folder of a run (:func:`write_model_folder`): ``model.json`` (settings, normaliser,
provenance and val/test metrics of the best model), ``weights.safetensors``,
``atom_init.json``, ``README.md`` (the model card, :func:`cgcnn_ase.models.cards.model_card`),
``config.yaml`` (the resolved configuration), ``split.json``, ``metrics.csv``,
``learning_curve.png`` and ``parity.png`` (regression) or ``roc.png`` (classification).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cgcnn_ase.errors import ConfigError
from cgcnn_ase.models.cards import json_safe, model_card
from cgcnn_ase.models.folder import LoadedModel, ModelSpec, read_model_json, save_model_folder
from cgcnn_ase.nn.network import CrystalGraphConvNet
from cgcnn_ase.train.cache import GraphBatcher
from cgcnn_ase.train.config import TrainConfig, command_line
from cgcnn_ase.train.data import PreparedData
from cgcnn_ase.data.splits import Split
from cgcnn_ase.train.steps import predict_store

__all__ = ["METRIC_COLUMNS", "TrainingResult", "hardware_info", "write_metrics_csv", "write_model_folder"]

logger = logging.getLogger(__name__)

#: Columns of ``metrics.csv``, one row per epoch.
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


def write_metrics_csv(path: Path, history: list[dict[str, Any]], task: str) -> None:
    """Write the per-epoch rows of ``history`` (floats with 6 significant digits), atomically."""
    columns = METRIC_COLUMNS[task]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, path)


def hardware_info(device: torch.device, threads: int) -> dict[str, Any]:
    """CPU model and count, torch threads, device, GPU name and data-parallel processes."""
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


@dataclass
class TrainingResult:
    """What a finished run hands to :func:`write_model_folder`.

    Attributes:
        data: the run's crystals, graphs and targets; split: its split; parts: store
            positions of each part (``train``, ``val``, ``test``), int64 arrays.
        history: one row per epoch (``metrics.csv``'s columns).
        best: the selected epoch: ``{"epoch", "value", "state"}`` (``state``: the weights, on the CPU).
        architecture: keyword arguments of the network.
        mean, std: the target normaliser, in target units.
        batcher: batches of the run's graphs; device: where to evaluate.
        threads: torch threads of the run; wall_time_s: training time of all sessions, s.
        fingerprint: :func:`~cgcnn_ase.train.config.config_fingerprint` of the run.
        finetune: ``metadata.finetune`` of a fine-tuning run (base model, its data and the
            settings; :func:`~cgcnn_ase.train.finetune.finetune_metadata`), ``None`` otherwise.
        stopped_by: what ended the last session: ``"epochs"`` (all done), ``"patience"`` or
            ``"time_limit"`` (unfinished: running the command again continues it).
        monitor: the metric that selected the best epoch as used (``train_loss`` when the run
            had no validation split), ``None`` for ``config.monitor_name``.
        twins: one crystal under several ids and how they fall across the split
            (:func:`~cgcnn_ase.data.splits.twins_across_split`), ``None`` when not checked.
    """

    data: PreparedData
    split: Split
    parts: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    best: dict[str, Any]
    architecture: dict[str, Any]
    mean: float
    std: float
    batcher: GraphBatcher
    device: torch.device
    threads: int
    wall_time_s: float
    fingerprint: str
    finetune: dict[str, Any] | None = None
    stopped_by: str = "epochs"
    monitor: str | None = None
    twins: dict[str, Any] | None = None


def _evaluate(
    config: TrainConfig, result: TrainingResult, network: CrystalGraphConvNet
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Metrics and predictions of the best model on the validation and test splits."""
    from cgcnn_ase.analysis.metrics import classification_metrics, regression_metrics

    classification = config.task == "classification"
    units = "dimensionless" if classification else config.target_units
    metrics: dict[str, dict[str, Any]] = {}
    predictions: dict[str, np.ndarray] = {}
    for name in ("val", "test"):
        if len(result.parts[name]) == 0:
            continue
        values, _ = predict_store(
            network, result.batcher, result.parts[name], mean=result.mean, std=result.std,
            batch_size=config.eval_batch_size, device=result.device,
        )  # fmt: skip
        y = result.data.targets[result.parts[name]]
        scores = classification_metrics(y, values) if classification else regression_metrics(y, values)
        metrics[name] = {**scores, "units": units}
        predictions[name] = values
    if "test" not in metrics:
        logger.warning("no test split: the model card has no test metrics")
    return metrics, predictions


def _label_digests(data: PreparedData, split: Split) -> dict[str, str]:
    """Per split part, :func:`~cgcnn_ase.data.splits.label_digest` of its ids and final targets."""
    from cgcnn_ase.data.splits import label_digest

    target = dict(zip(data.ids, data.targets.tolist()))
    out = {}
    for part in ("train", "val", "test"):
        ids = [i for i in split.ids(part) if i in target]
        if ids:
            out[part] = label_digest(ids, [target[i] for i in ids])
    return out


def _dataset_metadata(config: TrainConfig, data: PreparedData, split: Split,
                      twins: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """``metadata.dataset`` of ``model.json``: where the data came from and which rows were used (a usable
    crystal in no part of the split, as fractions summing to less than 1 leave, counts as left out)."""
    usable = set(data.ids)
    in_split = sum(1 for part in ("train", "val", "test") for i in split.ids(part) if i in usable)
    outside = {"outside_split": len(data.ids) - in_split} if in_split < len(data.ids) else {}
    return {
        "name": config.metadata.get("dataset_name") or config.data.display_name,
        "path": config.data.path,
        "target": config.data.target,
        "transform": config.data.transform,
        "per_atom": config.data.per_atom,
        "filter": config.data.filter,
        "drop_ids": list(config.data.drop_ids),
        "rows_in_file": data.table.n_rows,
        "rows_selected": len(data.table),
        "rows_used": in_split,
        "rows_dropped": {**data.table.dropped, "unusable_structure": len(data.errors), **outside},
        "label_digests": _label_digests(data, split),
        **({"duplicate_structures": twins} if twins and twins.get("groups") else {}),
        **{k: v for k, v in config.metadata.items() if k != "dataset_name"},
    }


def _training_metadata(config: TrainConfig, result: TrainingResult) -> dict[str, Any]:
    """``metadata.training`` of ``model.json``: command, resolved configuration, epochs, time, hardware."""
    from cgcnn_ase import __version__

    history = result.history
    return {
        "command": command_line(config),
        "config": config.to_dict(),
        "config_fingerprint": result.fingerprint,
        "epochs_run": len(history),
        "best_epoch": result.best["epoch"],
        "select": config.select,
        "stopped_early": history[-1]["epoch"] < config.epochs if history else False,
        "stopped_by": result.stopped_by,
        "monitor": result.monitor or config.monitor_name,
        "wall_time_s": round(result.wall_time_s, 1),
        "hardware": hardware_info(result.device, result.threads),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "cgcnn_ase_version": __version__,
        "python": platform.python_version(),
    }


def _model_spec(config: TrainConfig, result: TrainingResult, metrics: dict[str, dict[str, Any]]) -> ModelSpec:
    """The ``model.json`` settings and metadata of the trained model."""
    classification = config.task == "classification"
    split = result.split
    metadata = {
        "aliases": list(config.aliases),
        "elements_seen": sorted(int(z) for z in np.unique(result.data.store.take(result.parts["train"]).numbers)),
        "dataset": _dataset_metadata(config, result.data, result.split, result.twins),
        "split": {
            "seed": split.seed,
            "fractions": list(split.fractions) if split.fractions else None,
            "sizes": split.sizes,
            "file": "split.json",
            **({"given": str(config.split.file)} if config.split.file else {}),  # not drawn here: no seed applies
        },
        "test_metrics": metrics.get("test", {}),
        "val_metrics": metrics.get("val", {}),
        "training": _training_metadata(config, result),
    }
    if result.finetune is not None:
        metadata["finetune"] = result.finetune
    return ModelSpec(
        name=config.model_name,
        property=config.property_name,
        units="probability" if classification else config.target_units,
        task=config.task,
        architecture=result.architecture,
        graph=config.graph,
        normalizer_mean=result.mean,
        normalizer_std=result.std,
        positive_class=(config.positive_class or "class 1") if classification else None,
        metadata=json_safe(metadata),
    )


def _write_plots(
    output: Path, config: TrainConfig, result: TrainingResult, test_predictions: np.ndarray | None
) -> None:
    """``learning_curve.png``, and ``parity.png`` or ``roc.png`` of the test split (stale ones removed)."""
    from cgcnn_ase.analysis.plots import learning_curve_plot, parity_plot, roc_plot

    learning_curve_plot(output / "metrics.csv", output / "learning_curve.png", title=config.model_name,
                        units=config.target_units)  # fmt: skip
    for stale in ("parity.png", "roc.png"):
        (output / stale).unlink(missing_ok=True)
    if test_predictions is None:
        return
    title = f"{config.model_name}: test split"
    y = result.data.targets[result.parts["test"]]
    if config.task == "classification":
        roc_plot(y, test_predictions, output / "roc.png", title=title, positive=config.positive_class)
    else:
        parity_plot(
            y, test_predictions, output / "parity.png", units=config.target_units, title=title, label=config.property_name
        )


#: What a training run writes into ``output`` (and the default work folder ``run``).
RUN_FILES = frozenset({
    "model.json", "weights.safetensors", "atom_init.json", "README.md", "config.yaml", "split.json", "metrics.csv",
    "learning_curve.png", "parity.png", "roc.png", "run", "dropped.csv",
})  # fmt: skip


def check_output_folder(config: TrainConfig) -> None:
    """Refuse an ``output`` that holds something other than this run's model folder: training
    rewrites ``model.json``, ``README.md`` and the other :data:`RUN_FILES` there.

    The folder may be missing or empty, hold only files of a training run that had not
    finished, or hold a model folder trained on the same data and target under the same
    model name (an earlier run of this configuration, e.g. with fewer epochs; the data file
    is compared by name, as a path may be given relative to another folder).

    Raises:
        ConfigError: ``output`` is a file, holds another model, or holds files of its own.
    """
    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output {output} is a file; the model folder needs a folder path")
    if not output.is_dir():
        return
    names = {p.name for p in output.iterdir()}
    spec = output / "model.json"
    if spec.is_file():
        try:
            document = json.loads(spec.read_text())
            earlier = document["metadata"]["training"]["config"]["data"]
            same = (document.get("name") == config.model_name and earlier.get("target") == config.data.target
                    and Path(str(earlier.get("path"))).name == Path(config.data.path).name)  # fmt: skip
        except (ValueError, KeyError, TypeError, OSError):
            same, document = False, {}
        if not same:
            name = document.get("name") if isinstance(document, dict) else None
            raise ConfigError(
                f"output {output} holds another model ({name or 'model.json'}, not a run of {config.model_name!r} on "
                f"{config.data.path}:{config.data.target}); training would overwrite it: choose another output"
            )
    elif names - RUN_FILES:
        shown = ", ".join(sorted(names - RUN_FILES)[:3])
        raise ConfigError(
            f"output {output} already holds files that are not a model folder ({shown}{', ...' if len(names - RUN_FILES) > 3 else ''}); "
            "training writes model.json, README.md and more there: choose a new or empty folder"
        )


#: The rows of the dataset that training could not use, with the reason (written only when there are some).
DROPPED_FILE = "dropped.csv"
#: The first line of a model folder's ``config.yaml`` (round 26a: "rerun with" did not say that the paths are the
#: training machine's, and shipped folders name /tmp and checkout paths that exist nowhere else).
CONFIG_HEADER = ("# resolved training configuration (cgcnn-ase), paths as on the machine that trained it: rerun with "
                 "`cgcnn-ase train config.yaml` where they exist (the model card gives the command)\n")


def config_text(config: TrainConfig, result: TrainingResult) -> str:
    """``config.yaml``: :data:`CONFIG_HEADER` and the resolved configuration. A shipped base model is recorded by
    its versioned name (round 29b: an alias such as ``formation_energy`` later names a newer model, from which a
    rerun fine-tuned silently), with a header line naming what the run was given."""
    import yaml

    recorded, header = config.to_dict(), CONFIG_HEADER
    base = (result.finetune or {}).get("base") or {}
    if base.get("kind") == "shipped model" and base.get("name") and base["name"] != recorded.get("init_from"):
        header += (f"# init_from: the base model's versioned name; the run named it {recorded.get('init_from')!r}, a "
                   "name that may point to a newer model later\n")
        recorded["init_from"] = base["name"]
    return header + yaml.safe_dump(recorded, sort_keys=False)


def _write_dropped(path: Path, data: Any) -> None:
    """``dropped.csv`` (``id``, ``reason``): every row left out for want of a finite target or of a usable
    structure (the warnings name only the first few); rows left out by choice (``drop_ids``, ``filter``,
    ``limit``) are counted in ``model.json`` only. Removed when there are none (a rerun into the folder)."""
    import csv

    rows = [(i, "no finite numeric target") for i in data.table.missing_targets]
    rows += [(i, reason) for i, reason in data.errors.items()]
    if not rows:
        path.unlink(missing_ok=True)
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "reason"])
        writer.writerows(rows)


def write_model_folder(config: TrainConfig, result: TrainingResult) -> Path:
    """Score the best model on the validation and test splits and write the model folder
    ``config.output`` (see the module docstring); returns the folder."""
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    network = CrystalGraphConvNet(**result.architecture)
    network.load_state_dict(result.best["state"])
    network.to(result.device).eval()
    metrics, predictions = _evaluate(config, result, network)
    spec = _model_spec(config, result, metrics)
    save_model_folder(output, LoadedModel(spec=spec, network=network.cpu(), elements=result.data.elements))
    result.split.save(output / "split.json")
    (output / "config.yaml").write_text(config_text(config, result))
    _write_dropped(output / DROPPED_FILE, result.data)
    write_metrics_csv(output / "metrics.csv", result.history, config.task)
    _write_plots(output, config, result, predictions.get("test"))
    (output / "README.md").write_text(model_card(read_model_json(output), loss_name=config.loss_name, folder=output))
    logger.info("model folder written to %s (test: %s)", output, metrics.get("test"))
    return output

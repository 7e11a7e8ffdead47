"""Deep ensembles: assemble member model folders into one ensemble folder, and measure it.

Members are ordinary model folders from ``cgcnn-ase train CONFIG --set seed=K --set
output=...``: the same data, split (``split.seed``), architecture and graph settings,
different ``seed``. :func:`assemble_ensemble` checks that, and writes one folder::

    model.json           format_version 2: the common spec, an ``ensemble`` section
                         (member count, each member's seed, normaliser and val/test
                         metrics, the std calibration) and a ``domain`` section
    weights.safetensors  every member's weights, keys ``member<k>.<parameter>``
    atom_init.json       the shared element table
    domain.safetensors   applicability-domain summary (:mod:`cgcnn_ase.models.domain`)
    split.json           the shared split
    config.yaml          member 0's resolved training configuration
    README.md            the model card, with ensemble and uncertainty metrics
    parity.png / roc.png, error_vs_std.png, calibration.png   (test split)

Load it like any model folder (:class:`~cgcnn_ase.inference.predictor.CGCNNPredictor`
``.from_checkpoint(folder)``; ``members=1`` for member 0 alone).

>>> assemble_ensemble([f"runs/fe-seed{k}" for k in range(5)], "pretrained_models/formation_energy-ens",
...                   dataset="../shared/data/mp_cgcnn46k/data.csv.gz")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cgcnn_ase.analysis.metrics import CONFIDENCE
from cgcnn_ase.models.cards import ensemble_card
from cgcnn_ase.models.folder import (
    DOMAIN_FILE,
    MODEL_JSON,
    EnsembleMember,
    LoadedModel,
    load_model_folder,
    read_model_json,
    save_model_folder,
    write_model_json,
)
from cgcnn_ase.models.domain import MAX_CENTER_BYTES, DomainSummary
from cgcnn_ase.errors import ConfigError, EnsembleError

logger = logging.getLogger(__name__)

#: Files copied from member 0 into the ensemble folder when present.
SHARED_FILES = ("split.json", "config.yaml")


# ---------------------------------------------------------------------------------------------
# Checking and assembling members
# ---------------------------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _member_seed(loaded: LoadedModel, folder: Path) -> int | None:
    """The training seed of a member, from its model.json, else its config.yaml."""
    seed = ((loaded.spec.metadata.get("training") or {}).get("config") or {}).get("seed")
    if seed is None:
        seed = _read_yaml(folder / "config.yaml").get("seed")
    return int(seed) if seed is not None else None


def _difference(theirs: Any, mine: Any) -> str:
    """``theirs`` vs ``mine``, for a mapping (or dataclass) only the keys whose values differ."""
    import dataclasses

    a, b = (dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x for x in (theirs, mine))
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [key for key in dict.fromkeys([*a, *b]) if a.get(key) != b.get(key)]
        return ", ".join(f"{key} {a.get(key)!r} vs {b.get(key)!r}" for key in keys)
    return f"{theirs!r} vs {mine!r}"


def _without_inert_dropout(spec: Any) -> dict[str, Any]:
    """A spec's architecture, without ``dropout`` for a regression (which has no dropout layer)."""
    if spec.task == "regression":
        return {k: v for k, v in spec.architecture.items() if k != "dropout"}
    return dict(spec.architecture)


def check_members(folders: Sequence[Path], members: Sequence[LoadedModel]) -> None:
    """Refuse member folders that cannot be averaged into one ensemble.

    Members must predict the same property in the same units and task, with the same
    architecture, graph settings and element table, trained on the same data settings
    and the same split, with different seeds.

    Raises:
        EnsembleError: naming the first member that differs from member 0 and how.
    """
    from cgcnn_ase.data.splits import Split
    from cgcnn_ase.errors import DatasetError

    if len(members) < 2:
        raise EnsembleError(f"an ensemble needs at least 2 members, got {len(members)}")
    ref, ref_folder = members[0], folders[0]
    try:
        ref_split = Split.load(ref_folder / "split.json")
    except DatasetError:
        raise EnsembleError(f"{ref_folder}: no readable split.json; members must be trained model folders") from None
    ref_data = _read_yaml(ref_folder / "config.yaml").get("data") or {}
    seeds: dict[int, Path] = {}
    for k, (folder, member) in enumerate(zip(folders, members)):
        if member.members_in_folder > 1:
            raise EnsembleError(f"member {k} ({folder}) is itself an ensemble of {member.members_in_folder} members: "
                                "give the folders of single trained models (its model.json lists them under "
                                "metadata.ensemble_of)")  # fmt: skip
        a, b = ref.spec, member.spec
        checks = [
            ("property", a.property, b.property),
            ("units", a.units, b.units),
            ("task", a.task, b.task),
            ("positive_class", a.positive_class, b.positive_class),
            ("architecture", *(_without_inert_dropout(spec) for spec in (a, b))),
            ("graph settings", a.graph, b.graph),
            ("element table", ref.elements.fingerprint(), member.elements.fingerprint()),
        ]
        for what, mine, theirs in checks:
            if mine != theirs:
                raise EnsembleError(
                    f"member {k} ({folder}) differs from member 0 ({ref_folder}) in its {what}: {_difference(theirs, mine)}"
                )
        if k > 0:
            try:
                split = Split.load(folder / "split.json")
            except DatasetError:
                raise EnsembleError(
                    f"{folder}: no readable split.json; members must be trained model folders"
                ) from None
            for part in ("train", "val", "test"):
                if set(split.ids(part)) != set(ref_split.ids(part)):
                    raise EnsembleError(
                        f"member {k} ({folder}) was trained on another split than member 0 ({ref_folder}): the "
                        f"{part} ids differ; train every member with the same split.seed (or split.file)"
                    )
            data = _read_yaml(folder / "config.yaml").get("data") or {}
            differ = sorted(
                key for key in set(ref_data) | set(data) if key != "path" and ref_data.get(key) != data.get(key)
            )
            if differ:
                raise EnsembleError(
                    f"member {k} ({folder}) was trained on other data settings than member 0 ({ref_folder}): {differ}"
                )
            # the same settings on other labels (another file, or an edited one): round 23b averaged members trained on
            # doubled labels with the others, and the card scored each on its own
            mine, theirs = ((m.spec.metadata.get("dataset") or {}).get("label_digests") or {} for m in (ref, member))
            relabelled = [part for part in ("train", "val", "test") if part in mine and part in theirs
                          and mine[part] != theirs[part]]  # fmt: skip
            if relabelled:
                raise EnsembleError(
                    f"member {k} ({folder}) was trained on other labels than member 0 ({ref_folder}): its "
                    f"{' and '.join(relabelled)} targets differ (another file, or one edited between the runs); train "
                    "every member on the same data"
                )
        # after the split: another split is the likelier cause, and its message is the clearer one
        if (seen := b.metadata.get("elements_seen")) != (ref_seen := a.metadata.get("elements_seen")):
            raise EnsembleError(f"member {k} ({folder}) differs from member 0 ({ref_folder}) in its elements seen in "
                                f"training: {seen!r} vs {ref_seen!r}")  # fmt: skip
        seed = _member_seed(member, folder)
        if seed is not None:
            if seed in seeds:
                raise EnsembleError(
                    f"members {seeds[seed]} and {folder} were trained with the same seed {seed}: they are the same "
                    "network, not independent members; train with --set seed=K"
                )
            seeds[seed] = folder


def _member_info(loaded: LoadedModel, folder: Path) -> dict[str, Any]:
    md = loaded.spec.metadata
    training = md.get("training") or {}
    return {
        "name": loaded.spec.name,
        "folder": folder.name,
        "seed": _member_seed(loaded, folder),
        "val_metrics": md.get("val_metrics") or {},
        "test_metrics": md.get("test_metrics") or {},
        "best_epoch": training.get("best_epoch"),
        "epochs_run": training.get("epochs_run"),
        "select": training.get("select", "best"),
        "wall_time_s": training.get("wall_time_s"),
        "command": training.get("command"),
    }


def assemble_ensemble(
    member_folders: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    dataset: Any = None,
    name: str | None = None,
    aliases: Sequence[str] | None = None,
    evaluate: bool = True,
    domain: bool = True,
    max_centers: int | None = None,
    batch_size: int = 256,
    device: str | None = None,
    workers: int = 2,
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write an ensemble model folder from trained member folders.

    Args:
        member_folders: two or more model folders written by ``cgcnn-ase train`` (same
            data, split, architecture and graph settings; different ``seed``). Member 0
            gives the embeddings of the domain signal and the fast ``members=1`` path.
        output: the ensemble folder to write (created). A folder that already holds a model
            (``model.json``) is refused unless ``overwrite``: its files of the same names are then
            replaced (its calibration and domain summary with them).
        dataset: where the members' dataset lives on this machine: ``None`` (the path in
            member 0's ``config.yaml``), a path (same settings, another location), or a
            :class:`~cgcnn_ase.data.datasets.DatasetSpec`. Needed for the domain summary and
            the evaluation.
        name: the ensemble's model name (default: the output folder's name).
        aliases: registry aliases (default: member 0's).
        evaluate: also measure the ensemble (:func:`write_uncertainty_report`): fit the
            std calibration on the validation split, write test metrics, uncertainty
            metrics and plots into ``model.json`` and the card.
        domain: compute the applicability-domain summary from the training split
            (:func:`add_domain_summary`).
        max_centers: at most this many training embeddings in the domain summary (``None``: all).
        batch_size: crystals per forward pass.
        device: torch device (``None``: CUDA when available).
        workers: processes for parsing structures.
        progress: show progress bars on stderr.
        overwrite: replace the model an existing ``output`` holds.

    Returns:
        The ensemble folder.

    Raises:
        EnsembleError: the members differ in settings, split, data or share a seed.
        ConfigError: ``output`` is one of the members, or holds a model and ``overwrite`` is not set
            (as ``cgcnn-ase train`` refuses an output holding another model; the CLI exits 2).
        CheckpointError: a member folder cannot be loaded.
    """
    folders = [Path(f) for f in member_folders]
    output = Path(output)
    if output.resolve() in {f.resolve() for f in folders}:
        raise ConfigError(f"{output}: the ensemble folder must not be one of its members")
    if (output / MODEL_JSON).is_file() and not overwrite:
        raise ConfigError(f"{output} already holds a model ({MODEL_JSON}); write the ensemble to another folder, "
                            "or replace that model with overwrite=True (CLI --overwrite)")  # fmt: skip
    loaded = [load_model_folder(f) for f in folders]
    check_members(folders, loaded)
    first = loaded[0]
    infos = [_member_info(m, f) for m, f in zip(loaded, folders)]
    metadata = dict(first.spec.metadata)
    if aliases is not None:
        metadata["aliases"] = list(aliases)
    metadata["test_metrics"], metadata["val_metrics"] = {}, {}
    metadata["ensemble_of"] = [info["folder"] for info in infos]
    spec = replace(first.spec, name=name or output.name, metadata=metadata)
    ensemble = LoadedModel(
        spec=spec,
        network=first.network,
        elements=first.elements,
        members=[
            EnsembleMember(m.network, m.spec.normalizer_mean, m.spec.normalizer_std, info)
            for m, info in zip(loaded, infos)
        ],
    )
    output.mkdir(parents=True, exist_ok=True)
    for stale in (DOMAIN_FILE, "parity.png", "roc.png", "error_vs_std.png", "calibration.png"):
        (output / stale).unlink(missing_ok=True)
    save_model_folder(output, ensemble)
    for shared in SHARED_FILES:
        if (folders[0] / shared).is_file():
            shutil.copyfile(folders[0] / shared, output / shared)
    logger.info("ensemble of %d members written to %s", len(loaded), output)
    parts = None
    if domain or evaluate:
        from cgcnn_ase.analysis.evaluation import load_split_records

        wanted = ("train", "val", "test") if evaluate else ("train", "val")
        _, parts = load_split_records(output, dataset, wanted, workers=workers, progress=progress)
    if domain:
        add_domain_summary(
            output, parts=parts, max_centers=max_centers, batch_size=batch_size, device=device, progress=progress
        )
    if evaluate:
        write_uncertainty_report(output, parts=parts, batch_size=batch_size, device=device, progress=progress)
    else:
        write_card(output)
    return output


# ---------------------------------------------------------------------------------------------
# Domain summary
# ---------------------------------------------------------------------------------------------


def add_domain_summary(
    folder: str | os.PathLike,
    dataset: Any = None,
    *,
    parts: dict[str, Any] | None = None,
    max_centers: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | None = None,
    workers: int = 2,
    progress: bool = False,
) -> DomainSummary:
    """Compute the applicability-domain summary of a model folder (single or ensemble) and save it.

    Embeds the training crystals with the model (member 0 of an ensemble) and stores them all
    (or a k-centre subset of ``max_centers``) with their targets; the nearest-neighbour distances
    of the validation crystals, with their formula-unit sizes, become the reference distribution
    (:class:`~cgcnn_ase.models.domain.DomainSummary`). Writes ``domain.safetensors`` and the
    ``domain`` section of ``model.json``; predictions from this folder then carry
    ``domain_distance`` and ``domain_percentile``. An error model stored in the previous summary
    is dropped (``cgcnn-ase calibrate`` fits a new one).

    Args:
        folder: a model folder with ``split.json`` (and ``config.yaml`` unless ``dataset``
            is a full spec).
        dataset: as in :func:`~cgcnn_ase.analysis.evaluation.evaluate_model`.
        parts: already parsed ``train`` and ``val`` splits (from
            :func:`~cgcnn_ase.analysis.evaluation.load_split_records`).
        max_centers: ``None`` (default): every training embedding (float16, 128 bytes per crystal
            for 64-wide embeddings); a number: a greedy k-centre subset of that size.
    """
    from cgcnn_ase.analysis.evaluation import predict_quietly, load_split_records
    from cgcnn_ase.inference.predictor import CGCNNPredictor
    from cgcnn_ase.models.domain import formula_size

    folder = Path(folder)
    if parts is None or not {"train", "val"} <= set(parts):
        _, parts = load_split_records(folder, dataset, ("train", "val"), workers=workers, progress=progress)
    predictor = CGCNNPredictor(load_model_folder(folder, members=1), device=device)
    predictor.model.domain = None  # embed only
    embeddings = {
        split: predict_quietly(
            predictor, parts[split].records, batch_size=batch_size, progress=progress, embeddings=True
        ).embeddings
        for split in ("train", "val")
    }
    summary = DomainSummary.build(
        embeddings["train"],
        embeddings["val"],
        max_centers=max_centers,
        max_bytes=None if max_centers is None else MAX_CENTER_BYTES,
        seed=seed,
        reference_sizes=[formula_size(r.numbers) for r in parts["val"].records],
        train_targets=parts["train"].targets,
        info={
            "embedding": "member 0 crystal features (mean-pooled atom features after the convolutions)",
            "train_split": "train",
            "reference_split": "val",
        },
    )
    summary.save(folder / DOMAIN_FILE)
    document = read_model_json(folder)
    document["domain"] = {"file": DOMAIN_FILE, **summary.info}
    write_model_json(folder, document)
    logger.info(
        "domain summary of %s: %d centres, %d reference distances", folder, len(summary.centers), len(summary.reference)
    )
    return summary


# ---------------------------------------------------------------------------------------------
# Uncertainty report and model card
# ---------------------------------------------------------------------------------------------


def _compact(report: dict[str, Any]) -> dict[str, Any]:
    """An uncertainty report without the calibration curves (those are in the plot)."""
    return {k: v for k, v in report.items() if k != "calibration_curve"}


def write_uncertainty_report(
    folder: str | os.PathLike,
    dataset: Any = None,
    *,
    parts: dict[str, Any] | None = None,
    batch_size: int = 256,
    device: str | None = None,
    workers: int = 2,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure an ensemble folder on its validation and test splits and write the results into it.

    Fits the std calibration on the validation split (:func:`~cgcnn_ase.analysis.metrics.fit_std_scale`;
    regression only), then on the test split measures the ensemble against each member,
    the Spearman correlation of |error| with std, the fractions within 1 and 2 std (raw and
    calibrated) and the error by domain percentile. Writes ``ensemble.calibration``,
    ``metadata.test_metrics`` / ``val_metrics`` (the ensemble's) and
    ``metadata.uncertainty`` into ``model.json``, the plots ``error_vs_std.png``,
    ``calibration.png`` and ``parity.png`` / ``roc.png``, and rewrites ``README.md``.

    Returns:
        The report of :func:`~cgcnn_ase.analysis.evaluation.evaluate_uncertainty`.
    """
    from cgcnn_ase.analysis.evaluation import evaluate_uncertainty

    folder = Path(folder)
    report = evaluate_uncertainty(
        folder,
        dataset,
        split="test",
        calibration_split="val",
        out_dir=folder,
        parts=parts,
        batch_size=batch_size,
        device=device,
        workers=workers,
        progress=progress,
    )
    document = read_model_json(folder)
    units = "dimensionless" if document["task"] == "classification" else document["units"]
    kept = {k: v for k, v in (document["ensemble"].get("calibration") or {}).items() if k in ("conformal", "uncertainty")}
    merged = {**(report["calibration"] or {}), **kept}  # intervals and error model stay (classifiers: None)
    document["ensemble"]["calibration"] = merged or report["calibration"]
    md = document["metadata"]
    md["test_metrics"] = {**report["metrics"]["test"], "units": units}
    md["val_metrics"] = {**report["metrics"]["val"], "units": units}
    md["uncertainty"] = {
        "test": _compact(report["test"]),
        # the error model was fitted on the validation split: its uncertainty there is not a measurement
        "val": {k: v for k, v in _compact(report["val"]).items() if k != "uncertainty"},
        "calibration": report["calibration"],
    }
    write_model_json(folder, document)
    write_card(folder)
    return report


def refresh_domain_report(
    folder: str | os.PathLike,
    dataset: Any = None,
    *,
    batch_size: int = 256,
    device: str | None = None,
    workers: int = 2,
    progress: bool = False,
) -> dict[str, Any]:
    """Re-measure the parts of an ensemble's stored uncertainty report that depend on its domain summary
    and error model, after either was rebuilt (``cgcnn-ase calibrate --domain --report``).

    Recomputes, on the splits the report holds, the error by domain percentile
    (:func:`~cgcnn_ase.analysis.metrics.error_by_domain`) and, on the test split, the metrics of the
    per-crystal ``uncertainty``; the std calibration, the accuracy metrics and the plots are left
    as they are (so ``std`` stays what it was). Rewrites ``model.json`` and the card.

    Returns:
        ``metadata.uncertainty`` as written.

    Raises:
        EnsembleError: not an ensemble folder, or no stored uncertainty report.
    """
    import numpy as np

    from cgcnn_ase.analysis.evaluation import predict_quietly, load_split_records
    from cgcnn_ase.analysis.metrics import error_by_domain, regression_uncertainty_metrics
    from cgcnn_ase.inference.predictor import CGCNNPredictor

    folder = Path(folder)
    document = read_model_json(folder)
    stored = (document.get("metadata") or {}).get("uncertainty") or {}
    splits = [split for split in ("test", "val") if split in stored]
    if not document.get("ensemble") or not splits:
        raise EnsembleError(f"{folder}: no stored uncertainty report to refresh (write_uncertainty_report first)")
    predictor = CGCNNPredictor.load(folder, device=device)
    _, parts = load_split_records(folder, dataset, splits, workers=workers, progress=progress)
    for split in splits:
        result = predict_quietly(predictor, parts[split].records, batch_size=batch_size, progress=progress)
        y = np.asarray(parts[split].targets, dtype=np.float64)
        good = result.ok & np.isfinite(y)
        error = np.abs(y[good] - result.values[good])
        stored[split]["domain"] = error_by_domain(
            error,
            result.domain_percentile[good] if result.domain_percentile is not None else None,
            unseen=[bool(u) for u, g in zip(result.unseen_elements, good) if g] if result.unseen_elements else None,
            sparse=result.n_sparse[good] > 0,
        )
        if split == "test" and result.uncertainty is not None:  # validation: the error model's own data
            stored[split]["uncertainty"] = regression_uncertainty_metrics(y[good], result.values[good],
                                                                          result.uncertainty[good])  # fmt: skip
    document["metadata"]["uncertainty"] = stored
    write_model_json(folder, document)
    write_card(folder)
    return stored


def write_card(folder: str | os.PathLike) -> Path:
    """(Re)write ``README.md`` of an ensemble folder from its ``model.json``."""
    folder = Path(folder)
    document = read_model_json(folder)
    if not document.get("ensemble"):
        raise EnsembleError(f"{folder}: not an ensemble folder (no 'ensemble' section in {MODEL_JSON})")
    path = folder / "README.md"
    path.write_text(ensemble_card(document, files=[p.name for p in folder.iterdir()], folder=folder))
    return path


def calibration_problem(folder: str | os.PathLike, *, domain: bool = False, report: bool = False) -> str | None:
    """Why :func:`calibrate_folder` cannot do what is asked of the model folder ``folder``
    (intervals need a regression ensemble, ``report`` an ensemble), or ``None`` when it can."""
    document = read_model_json(folder)
    ensemble, regression = "ensemble" in document, document.get("task", "regression") == "regression"
    kind = "a classifier" if not regression else "a single network" if not ensemble else "a regression ensemble"
    if report and not ensemble:
        return f"the uncertainty report (--report) needs an ensemble, and this model is {kind}"
    if not (ensemble and regression) and not domain and not report:
        return (f"prediction intervals need a regression ensemble (several members), and this model is {kind}; "
                "--domain rebuilds its applicability-domain summary alone")
    return None


def calibrate_folder(
    model: str | os.PathLike,
    dataset: str | os.PathLike | None = None,
    *,
    domain: bool = False,
    normaliser: str = "auto",
    confidence: float | None = CONFIDENCE,
    report: bool = False,
    max_centers: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, Any] | None:
    """``cgcnn-ase calibrate``: fit a model folder's uncertainty and intervals, in place.

    With ``domain``, the applicability-domain summary is rebuilt first (:func:`add_domain_summary`;
    for a single model or a classifier, the only step). A regression ensemble then gets its
    per-crystal uncertainty and split-conformal intervals fitted on the validation split
    (:func:`~cgcnn_ase.analysis.intervals.calibrate_intervals`; ``confidence`` as there), and with ``report`` the parts of its
    uncertainty report that depend on them are re-measured (:func:`refresh_domain_report`).

    Returns:
        the interval calibration stored in ``model.json`` (a regression ensemble), the domain
        summary's ``info`` (``domain`` on another model), or ``None``.

    Raises:
        EnsembleError: intervals or ``report`` asked of a model that cannot have them.
    """
    from cgcnn_ase.analysis.intervals import calibrate_intervals
    from cgcnn_ase.models.folder import load_model_folder
    from cgcnn_ase.models.registry import model_folder

    folder = model_folder(model, purpose="calibration needs a folder with model.json and split.json")
    problem = calibration_problem(folder, domain=domain, report=report)
    if problem is not None:
        raise EnsembleError(f"{model}: {problem}")
    loaded = load_model_folder(folder)
    options = dict(batch_size=batch_size, progress=progress)
    if not (loaded.is_ensemble and loaded.spec.task == "regression"):
        info = add_domain_summary(folder, dataset, max_centers=max_centers, **options).info if domain else None
        if report:
            refresh_domain_report(folder, dataset, **options)
        return info
    if domain:
        add_domain_summary(folder, dataset, max_centers=max_centers, **options)
    conformal = calibrate_intervals(folder, dataset, normaliser=normaliser, confidence=confidence, **options)
    if report:
        refresh_domain_report(folder, dataset, **options)
    return conformal

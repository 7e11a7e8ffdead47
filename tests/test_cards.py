"""Model cards rendered from the templates equal those of the line-by-line writers they replaced.

Every shipped ensemble card is re-rendered from its folder's ``model.json`` and compared with
the shipped ``README.md``. Branches the shipped folders do not reach (classification or
regression variants, missing sections, GPUs, notes, ...) and the single-model card of a freshly
trained tiny model are compared with verbatim copies of the former writers, kept below as
references (``legacy_model_card`` and ``legacy_ensemble_card``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.models.cards import ensemble_card, fmt, model_card
from cgcnn_ase.models.folder import read_model_json
from cgcnn_ase.train.config_sections import ModelConfig, SplitConfig
from cgcnn_ase.train.trainer import train_from_config

from .conftest import REPO
from .test_training import dataset_csv, tiny_config  # noqa: F401 - the tiny 12-crystal dataset fixture

# =================================================================================================
# The former writers, verbatim (references; do not edit)
# =================================================================================================


def _symbols(numbers: Sequence[int]) -> str:
    from ase.data import chemical_symbols

    return " ".join(chemical_symbols[z] for z in numbers)


def legacy_model_card(spec: Any, config: Any, metadata: dict[str, Any]) -> str:
    """The former ``cgcnn_ase.train.trainer.model_card`` (``spec`` and ``config`` by attribute), kept verbatim as
    the reference: hence its length."""
    ds, tr, sp = metadata["dataset"], metadata["training"], metadata["split"]
    test = metadata.get("test_metrics") or {}
    classification = spec.task == "classification"
    handle = (config.aliases or ["path/to/this/folder"])[0]  # a name without an alias resolves nowhere
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
        f'predictor = CGCNNPredictor.from_pretrained("{handle}")'
        + ('  # or .from_checkpoint("path/to/this/folder")' if config.aliases else ""),
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
            f"| accuracy (p > 0.5) | {fmt(test.get('accuracy'))} | dimensionless |",
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
    n_test, n_val = test.get("n", 0), sp["sizes"].get("val") or 0
    if n_test < 50 or 0 < n_val < 50:  # round 29e: cards of tiny datasets said nothing about it
        rough = (f"Only {n_test} test crystals: these metrics are rough estimates (a few crystals more or less would "
                 "move them much). ") if n_test < 50 else ""
        selected = f"The epoch was selected on {n_val} validation crystals. " if 0 < n_val < 50 else ""
        lines += [f"{rough}{selected}More data, or larger val/test fractions, give firmer numbers.", ""]
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
        f"- Wall time: {tr['wall_time_s'] / 60:.1f} min on {hw['cpu']} ({hw['torch_threads']} torch thread{'' if hw['torch_threads'] == 1 else 's'}"
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


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def legacy_ensemble_card(document: dict[str, Any]) -> str:
    """The former ``cgcnn_ase.train.ensembles.ensemble_card`` (``document["_files"]``: the folder's files), kept
    verbatim as the reference: hence its length."""
    from ase.data import chemical_symbols

    md, ens = document["metadata"], document["ensemble"]
    ds, sp = md.get("dataset") or {}, md.get("split") or {}
    classification = document["task"] == "classification"
    units = document["units"]
    members = ens["members"]
    n = len(members)
    handle = (md.get("aliases") or ["path/to/this/folder"])[0]
    calibration = ens.get("calibration")
    metric = "roc_auc" if classification else "mae"
    metric_label = "ROC-AUC" if classification else f"MAE ({units})"
    lines = [
        f"# {document['name']}",
        "",
        f"A deep ensemble of {n} CGCNN models (Xie & Grossman, Phys. Rev. Lett. 120, 145301 (2018)), trained with "
        f"different seeds on one split, predicting **{document['property']}**"
        + (
            f" (probability that a crystal is {document.get('positive_class')})"
            if classification
            else f" in **{units}**"
        )
        + ". A prediction is the members' mean; its `std` is the members' standard deviation"
        + (
            f", calibrated by a factor {calibration['scale']:.3g} fitted on the {calibration['split']} split"
            if calibration
            else ""
        )
        + ".",
        "",
    ]
    if md.get("aliases"):
        lines += ["Aliases: " + ", ".join(f"`{a}`" for a in md["aliases"]), ""]
    lines += [
        "## Use",
        "",
        "```python",
        "from cgcnn_ase import CGCNNPredictor",
        f'predictor = CGCNNPredictor.from_pretrained("{handle}")  # all {n} members',
        'result = predictor.predict(["POSCAR"])',
        "print(result.values, result.std, result.domain_percentile)",
        f'fast = CGCNNPredictor.from_pretrained("{handle}", members=1)  # member 0 only: no std',
        "```",
        "",
        "See `docs/uncertainty.md` for what `std` and `domain_percentile` mean and how to screen with them.",
        "",
        "## Data",
        "",
    ]
    if ds:
        lines.append(f"- Dataset: **{ds.get('name')}** (`{ds.get('path')}`)")
        for key, label in (("source", "Source"), ("licence", "Licence"), ("citation", "Cite")):
            if ds.get(key):
                lines.append(f"- {label}: {ds[key]}")
        target = f"`{ds.get('target')}`" + (" divided by the number of atoms" if ds.get("per_atom") else "")
        if ds.get("transform") == "log10":
            target = f"log10 of {target}"
        lines.append(
            f"- Target: {target}" + (f", rows with `{ds['filter']}`" if ds.get("filter") else "") + f"; units: {units}"
        )
        if "rows_in_file" in ds:
            lines.append(f"- Rows: {ds['rows_in_file']} in the file, {ds.get('rows_used')} used")
    seen = md.get("elements_seen") or []
    if seen:
        lines.append(f"- Elements in the training split: {len(seen)} ({' '.join(chemical_symbols[z] for z in seen)})")
    lines += ["", "## Split", ""]
    if sp:
        lines += [
            f"Random split with seed {sp.get('seed')} (fractions {sp.get('fractions')}), shared by all members; ids in "
            "`split.json`.",
            "",
            "| part | crystals |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in (sp.get("sizes") or {}).items()],
            "",
        ]
    unc = md.get("uncertainty") or {}
    test = unc.get("test") or {}
    versus = test.get("ensemble_vs_members") or {}
    lines += ["## Test metrics", ""]
    if versus:
        better = "higher" if classification else "lower"
        lines += [
            f"On the test split ({test.get('n')} crystals, never used for training or selection); {metric_label}, "
            f"{better} is better:",
            "",
            "| | " + metric_label + " |",
            "|---|---|",
            f"| ensemble of {n} (mean) | {fmt(versus.get('ensemble'))} |",
            f"| single member, mean of {n} | {fmt(versus.get('member_mean'))} |",
            f"| best / worst member | {fmt(versus.get('member_best'))} / {fmt(versus.get('member_worst'))} |",
            "",
        ]
        tm = md.get("test_metrics") or {}
        if classification:
            lines += [f"Ensemble accuracy (p > 0.5): {fmt(tm.get('accuracy'))}.", ""]
        else:
            lines += [f"Ensemble RMSE {fmt(tm.get('rmse'))} {units}, R² {fmt(tm.get('r2'))}.", ""]
    else:
        lines += ["Not measured yet (`cgcnn_ase.train.ensembles.write_uncertainty_report(folder, dataset=...)`).", ""]
    lines += [
        "## Members",
        "",
        f"| member | seed | val {metric} | test {metric} | best epoch |",
        "|---|---|---|---|---|",
        *[
            f"| {k} (`{m.get('folder') or m.get('name')}`) | {m.get('seed')} | {fmt((m.get('val_metrics') or {}).get(metric))} | "
            f"{fmt((m.get('test_metrics') or {}).get(metric))} | {m.get('best_epoch')} |"
            for k, m in enumerate(members)
        ],
        "",
    ]
    lines += ["## Uncertainty (test split)", ""]
    raw, cal = test.get("raw") or {}, test.get("calibrated") or {}
    if classification and raw:
        lines += [
            "| measure | value |",
            "|---|---|",
            f"| Spearman correlation of \\|y - p\\| with std | {fmt(raw.get('spearman_abs_error_std'), 3)} |",
            f"| ROC-AUC of std for spotting misclassified crystals | {fmt(raw.get('error_detection_auc'), 3)} |",
            f"| mean std of member probabilities | {fmt(raw.get('mean_std'), 3)} |",
            "",
            "The std of a classifier is the spread of the members' probabilities; it is not calibrated.",
            "",
        ]
    elif raw:
        lines += [
            "| measure | raw std | calibrated std"
            + (f" (x{calibration['scale']:.3g})" if calibration else "")
            + " | Gaussian |",
            "|---|---|---|---|",
            f"| Spearman correlation of \\|error\\| with std | {fmt(raw.get('spearman_abs_error_std'), 3)} | "
            f"{fmt(cal.get('spearman_abs_error_std'), 3)} | |",
            f"| errors within 1 std | {_pct(raw.get('within_1std'))} | {_pct(cal.get('within_1std'))} | 68.3% |",
            f"| errors within 2 std | {_pct(raw.get('within_2std'))} | {_pct(cal.get('within_2std'))} | 95.4% |",
            f"| RMS of z = error / std | {fmt(raw.get('rms_z'), 3)} | {fmt(cal.get('rms_z'), 3)} | 1 |",
            f"| mean std ({units}) | {fmt(raw.get('mean_std'))} | {fmt(cal.get('mean_std'))} | |",
            "",
        ]
        if calibration:
            lines += [
                f"Calibration: `std` = {calibration['scale']:.4g} x the members' standard deviation, the factor that "
                f"gives the {calibration['split']} split's z-scores unit root mean square ({calibration['n']} crystals); "
                "the test numbers above were not used to fit it.",
                "",
            ]
    else:
        lines += ["Not measured yet.", ""]
    dom = test.get("domain") or {}
    bins = dom.get("percentile_bins") or []
    if bins:
        err = "mean \\|y - p\\|" if classification else f"MAE ({units})"
        lines += [
            "Error against the applicability-domain signal (`domain_percentile`: percentile of the distance of a "
            "crystal's embedding to the training set, against validation crystals):",
            "",
            f"| domain percentile | crystals | {err} |",
            "|---|---|---|",
            *[f"| {b['range']} | {b['n']} | {fmt(b.get('mean_abs_error'))} |" for b in bins],
            "",
            f"Spearman correlation of the error with the domain percentile: {fmt(dom.get('spearman_abs_error_percentile'), 3)}.",
        ]
        if dom.get("unseen_elements", {}).get("n"):
            lines.append(
                f"Crystals with elements unseen in training: {dom['unseen_elements']['n']}, error "
                f"{fmt(dom['unseen_elements']['mean_abs_error'])} (others {fmt(dom['all_seen']['mean_abs_error'])})."
            )
        lines.append("")
    domain = document.get("domain")
    if domain:
        lines += [
            "## Applicability domain",
            "",
            f"`domain.safetensors` holds {domain.get('n_centers')} of the {domain.get('n_train')} training crystals' "
            f"embeddings ({domain.get('selection')}) and the nearest-neighbour distances of {domain.get('n_reference')} "
            "validation crystals to them. Each prediction reports `domain_distance` (to the nearest stored training "
            "embedding, standardised units) and `domain_percentile` (the share of validation crystals that were at most "
            "as far; near 100: outside the training domain), plus `unseen_elements` and `n_sparse`.",
            "",
        ]
    commands = list(dict.fromkeys(m.get("command") for m in members if m.get("command")))  # since round 16: once each
    lines += ["## Training", ""]
    if commands:
        lines += ["Each member was trained with:", "", "```", *commands, "```", ""]
    total = sum(m.get("wall_time_s") or 0 for m in members)
    training = md.get("training") or {}
    hw = training.get("hardware") or {}
    a, g = document["architecture"], document["graph"]
    lines += [
        f"- Architecture (every member): {a.get('n_conv')} {a.get('conv')} convolutions, atom features "
        f"{a.get('atom_fea_len')}, {a.get('n_h')} hidden layer(s) of {a.get('h_fea_len')}, {a.get('readout')} readout",
        f"- Graph: radius {g.get('radius')} Å, {g.get('max_neighbors')} neighbours, neighbour policy "
        f"`{g.get('neighbor_policy')}`",
        "- Epochs (best / run) per member: "
        + ", ".join(f"{m.get('best_epoch')}/{m.get('epochs_run')}" for m in members),
        f"- Wall time: {total / 60:.1f} min in total over {n} members"
        + (
            f" (member 0 on {hw.get('cpu')}"
            + (f", GPU {hw['gpu']}" if hw.get("gpu") else "")
            + f", device {hw.get('device')})"
            if hw
            else ""
        ),
    ]
    if training.get("date"):
        lines.append(
            f"- Member 0 date: {training['date']}; torch {training.get('torch_version')}, Python {training.get('python')}"
        )
    lines.append("")
    plots = [
        f
        for f in ("parity.png", "roc.png", "error_vs_std.png", "calibration.png")
        if f in (document.get("_files") or [])
    ]
    lines += [
        "Files: `model.json` (settings, each member's normaliser and metrics, calibration, uncertainty metrics), "
        f"`weights.safetensors` (all {n} members, keys `member<k>.`), `atom_init.json`, `domain.safetensors`, "
        "`split.json`, `config.yaml` (member 0's configuration)"
        + (", " + ", ".join(f"`{p}`" for p in plots) + " (test split)" if plots else "")
        + ".",
        "",
    ]
    if ds.get("notes"):
        lines += ["## Notes", "", str(ds["notes"]), ""]
    return "\n".join(lines)


# =================================================================================================
# Ensemble cards
# =================================================================================================

SHIPPED = sorted(path.parent for path in (REPO / "pretrained_models").glob("*/model.json"))
ENSEMBLES = [folder for folder in SHIPPED if read_model_json(folder).get("ensemble")]


def _files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_shipped_models_include_ensembles_of_both_tasks():
    tasks = {read_model_json(folder)["task"] for folder in ENSEMBLES}
    assert tasks == {"regression", "classification"}


@pytest.mark.parametrize("folder", ENSEMBLES, ids=lambda folder: folder.name)
def test_shipped_ensemble_cards_are_reproduced_byte_for_byte(folder):
    card = ensemble_card(read_model_json(folder), _files(folder))
    assert card == (folder / "README.md").read_text()


def test_ensemble_card_opens_its_training_section_with_the_training_notes():
    folder = next(f for f in ENSEMBLES if read_model_json(f)["task"] == "regression")
    document = read_model_json(folder)
    document["metadata"]["training_notes"] = "Each member continued for 42 epochs on one GPU."
    card = ensemble_card(document, _files(folder))
    assert card[card.index("## Training") :].split("\n\n")[1] == "Each member continued for 42 epochs on one GPU."
    document["metadata"].pop("training_notes")
    assert "continued for 42 epochs" not in ensemble_card(document, _files(folder))


def test_ensemble_card_says_when_no_member_selected_an_epoch():
    folder = next(f for f in ENSEMBLES if read_model_json(f)["task"] == "regression")
    document = read_model_json(folder)
    assert "the validation split chose nothing" not in ensemble_card(document, _files(folder))
    for member in document["ensemble"]["members"]:
        member["select"] = "last"
    card = ensemble_card(document, _files(folder))
    assert "| kept epoch |" in card and "- Epochs (kept / run) per member:" in card
    assert "the validation split chose nothing" in card
    document["ensemble"]["members"][0]["select"] = "best"  # one member selected: no such claim
    assert "the validation split chose nothing" not in ensemble_card(document, _files(folder))


def _not_measured(doc: dict[str, Any]) -> None:
    doc["metadata"].pop("uncertainty")
    doc["metadata"]["test_metrics"] = {}
    doc["ensemble"].pop("calibration", None)


def _no_domain(doc: dict[str, Any]) -> None:
    doc.pop("domain", None)
    doc["metadata"]["uncertainty"]["test"].pop("domain", None)


def _unseen_elements_gpu_notes(doc: dict[str, Any]) -> None:
    domain = doc["metadata"]["uncertainty"]["test"]["domain"]
    domain["unseen_elements"] = {"n": 3, "mean_abs_error": 0.51234}
    domain["all_seen"] = {"n": 97, "mean_abs_error": float("nan")}
    doc["metadata"]["training"]["hardware"]["gpu"] = "NVIDIA H100"
    doc["metadata"]["dataset"]["notes"] = "Some notes."


def _bare(doc: dict[str, Any]) -> None:
    for key in ("dataset", "split", "aliases", "elements_seen", "training"):
        doc["metadata"].pop(key, None)
    for member in doc["ensemble"]["members"]:
        member.pop("command", None)
        member["wall_time_s"] = None


def _target_variants(doc: dict[str, Any]) -> None:
    ds = doc["metadata"]["dataset"]
    ds.update(transform="log10", per_atom=True, filter="x > 0")
    ds.pop("rows_in_file", None)
    doc["metadata"]["test_metrics"].pop("accuracy", None)
    doc["metadata"]["test_metrics"].pop("rmse", None)


ENSEMBLE_VARIANTS = {
    "as_shipped": lambda doc: None,
    "not_measured": _not_measured,
    "no_domain": _no_domain,
    "unseen_elements_gpu_notes": _unseen_elements_gpu_notes,
    "bare": _bare,
    "target_variants": _target_variants,
}


@pytest.mark.parametrize("variant", sorted(ENSEMBLE_VARIANTS))
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_ensemble_card_variants_equal_the_former_writer(task, variant):
    folder = next(f for f in ENSEMBLES if read_model_json(f)["task"] == task)
    document = read_model_json(folder)
    for later in ("conformal", "uncertainty"):  # intervals and the error model postdate the former writer
        (document["ensemble"].get("calibration") or {}).pop(later, None)
    for later in ("training_notes", "finetune"):  # so do training notes and fine-tuned members
        document["metadata"].pop(later, None)
    ENSEMBLE_VARIANTS[variant](document)
    files = [] if variant == "bare" else _files(folder)
    expected = legacy_ensemble_card({**copy.deepcopy(document), "_files": files})
    assert ensemble_card(document, files) == expected


# =================================================================================================
# Single-model cards
# =================================================================================================


@pytest.fixture(scope="module")
def tiny_model(dataset_csv, tmp_path_factory):  # noqa: F811 - pytest fixture injection
    """A 2-epoch model folder of the tiny dataset and its configuration."""
    root = tmp_path_factory.mktemp("cards")
    config = tiny_config(
        dataset_csv, root, epochs=2, split=SplitConfig(train=8 / 12, val=2 / 12, test=2 / 12, seed=1),
        model=ModelConfig(atom_fea_len=8, n_conv=1, h_fea_len=8),
    )  # fmt: skip
    return config, train_from_config(config, progress=False)


def _legacy_single(document: dict[str, Any], loss_name: str) -> str:
    """The former writer on the same data: ``spec`` and ``config`` rebuilt from the document."""
    md = document["metadata"]
    settings = md["training"]["config"]
    spec = SimpleNamespace(
        name=document["name"], property=document["property"], units=document["units"], task=document["task"],
        positive_class=document["positive_class"], architecture=document["architecture"],
        graph=GraphConfig.from_dict(document["graph"]), normalizer_mean=document["normalizer"]["mean"],
        normalizer_std=document["normalizer"]["std"],
    )  # fmt: skip
    config = SimpleNamespace(
        aliases=md["aliases"], elements=settings["elements"], optim=SimpleNamespace(**settings["optim"]),
        schedule=SimpleNamespace(**settings["schedule"]), batch_size=settings["batch_size"], loss_name=loss_name,
        epochs=settings["epochs"], patience=settings["patience"],
    )  # fmt: skip
    return legacy_model_card(spec, config, copy.deepcopy(md))


def test_trained_model_card_equals_the_former_writer(tiny_model):
    config, folder = tiny_model
    document = read_model_json(folder)
    card = (folder / "README.md").read_text()
    assert model_card(document, loss_name=config.loss_name) == _legacy_single(document, config.loss_name)
    assert card == model_card(document, loss_name=config.loss_name, folder=folder)
    # its alias finds no installed model, so the written card loads it by its folder (round 11)
    assert document["metadata"]["aliases"] and 'from_pretrained("path/to/this/folder")' in card
    assert "find another model or none" in card


def _classification(doc: dict[str, Any]) -> str:
    doc.update(task="classification", units="probability", positive_class="metal")
    doc["metadata"]["test_metrics"] = {
        "roc_auc": 0.91234, "accuracy": 0.875, "precision": {"0": 0.8, "1": 0.9}, "recall": {"0": 0.7, "1": 0.95},
        "n": 8, "units": "dimensionless",
    }  # fmt: skip
    return "cross_entropy"


def _regression_extras(doc: dict[str, Any]) -> str:
    md = doc["metadata"]
    md["aliases"] = []
    md["dataset"].update(transform="log10", filter="band_gap > 0", drop_ids=["mp-1", "mp-2"], notes="Some notes.")
    md["dataset"]["rows_dropped"] = {"drop_ids": 2, "filter": 0, "unusable_structure": 1}
    md["training"]["config"]["patience"] = 7
    md["training"]["config"]["optim"].update(name="sgd", momentum=0.9)
    md["test_metrics"]["r2"] = None
    return "mae"


def _parallel_gpu(doc: dict[str, Any]) -> str:
    md = doc["metadata"]
    md["training"]["hardware"].update(processes=4, gpu="NVIDIA H100", device="cuda:0")
    md["elements_seen"] = []
    md["dataset"].pop("source")
    return "mse"


SINGLE_VARIANTS = {"classification": _classification, "regression_extras": _regression_extras,
                   "parallel_gpu": _parallel_gpu}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(SINGLE_VARIANTS))
def test_model_card_variants_equal_the_former_writer(tiny_model, variant):
    _, folder = tiny_model
    document = read_model_json(folder)
    loss_name = SINGLE_VARIANTS[variant](document)
    assert model_card(document, loss_name=loss_name) == _legacy_single(document, loss_name)

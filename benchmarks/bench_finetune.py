"""Learning curves: test MAE against training-set size, from scratch vs fine-tuned from ``formation_energy``.

For each target, the usable crystals are split once, 70/15/15 with seed 42 (the shipped elastic
models' split). The test part is fixed and only scored. For a training-set size ``n`` and a
repeat ``r``, the run trains on the first ``n`` crystals of a seeded permutation (seed ``r``) of
the training part and selects its epoch on the first ``round(n * 15/70)`` crystals of a
permutation of the validation part: what a user holding ``n / 0.7`` labelled crystals would have
(``all``: the whole training and validation parts). Both methods get the same split file, the
same seed, architecture (the base model's: 4 gated convolutions, 64 atom features, one hidden
layer of 128), optimiser (AdamW, lr 1e-3, weight decay 1e-5), cosine schedule, batch size and
number of epochs; no early stopping.

- **scratch**: random initial weights;
- **fine-tuned**: ``init_from: formation_energy`` (member 0 of the shipped ensemble, trained on
  the Materials Project formation energies of mp_cgcnn46k), default ``finetune`` settings: every
  layer trained at the same learning rate, the output layer reset (another target), the new
  target's own normaliser.

Targets: ``shear`` (log10 of the VRH shear modulus, GPa, mp_elastic3k_kdmsit) and
``perovskite`` (Castelli's heat of formation per atom, eV/atom, perovskites_castelli_cmr).

Every run is a model folder under ``--out`` (resumable: a finished run is read back, not
redone); results accumulate in ``--out/results.json``. The script prints the markdown table of
``docs/finetuning.md`` and draws ``docs/img/finetune_learning_curves.png``.

    python benchmarks/bench_finetune.py [--shared ../shared] [--out runs/bench_finetune]
        [--targets shear,perovskite] [--sizes 100,300,1000,all] [--repeats 3] [--repeats-all 1]
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TARGETS: dict[str, dict[str, Any]] = {
    "shear": {
        "data": {"path": "data/mp_elastic3k_kdmsit/data.csv.gz", "target": "G_VRH", "transform": "log10",
                 "id_column": "material_id"},
        "property": "log10_shear_modulus", "units": "log10(GPa)",
        "label": "shear modulus, mp_elastic3k (log10 GPa)",
    },
    "perovskite": {
        "data": {"path": "data/perovskites_castelli_cmr/data.csv.gz", "target": "e_form", "per_atom": True,
                 "id_column": "id"},
        "property": "perovskite_formation_energy", "units": "eV/atom",
        "label": "perovskite heat of formation, Castelli CMR (eV/atom)",
    },
}  # fmt: skip
FRACTIONS = (0.7, 0.15, 0.15)
SPLIT_SEED = 42
BASE = "formation_energy"
ARCHITECTURE = {"atom_fea_len": 64, "n_conv": 4, "h_fea_len": 128, "n_h": 1, "readout": "mean", "conv": "gated"}
#: Epochs per training-set size, the same for both methods (more epochs for smaller sets, which have fewer steps each).
EPOCHS = {100: 300, 300: 200, 1000: 150, "all": 100}
METHODS = ("scratch", "finetuned")


def _settings(target: str, shared: str | None) -> dict[str, Any]:
    spec = TARGETS[target]
    data = dict(spec["data"], path=str(_common.shared_path(shared, spec["data"]["path"])))
    return {
        "data": data, "property": spec["property"], "units": spec["units"], "task": "regression", "loss": "mse",
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-5},
        "schedule": {"name": "cosine", "min_lr": 1e-5},
        "batch_size": 64, "eval_batch_size": 512, "threads": 1, "workers": 1, "device": "cpu", "patience": None,
        "metadata": {"notes": "benchmarks/bench_finetune.py learning-curve run"},
    }  # fmt: skip


def base_split(target: str, shared: str | None, out: Path) -> Any:
    """The target's 70/15/15 split of its usable crystals (builds the graph cache on first use)."""
    from cgcnn_ase.data.splits import Split, make_split
    from cgcnn_ase.train.config import TrainConfig
    from cgcnn_ase.train.data import prepare_data

    path = out / target / "split_full.json"
    if path.is_file():
        return Split.load(path)
    settings = _settings(target, shared)
    settings["workers"] = 2
    data = prepare_data(TrainConfig.from_dict(settings), progress=True)
    split = make_split(data.ids, FRACTIONS, SPLIT_SEED)
    split.save(path)
    return split


def subset_split(full: Any, size: int | str, repeat: int, path: Path) -> Path:
    """The split file of one (size, repeat): nested subsets of the training and validation parts."""
    from cgcnn_ase.data.splits import Split

    if size == "all":
        train, val = list(full.train), list(full.val)
    else:
        rng = np.random.default_rng(repeat)
        train = [full.train[i] for i in rng.permutation(len(full.train))[:size]]
        n_val = max(10, round(size * FRACTIONS[1] / FRACTIONS[0]))
        val = [full.val[i] for i in rng.permutation(len(full.val))[:n_val]]
    if not path.is_file():
        Split(train=train, val=val, test=list(full.test), seed=None, fractions=None).save(path)
    return path


def run_one(target: str, size: int | str, repeat: int, method: str, split_file: Path, out: Path,
            shared: str | None) -> dict[str, Any]:  # fmt: skip
    """Train (or read back) one run; returns its row of results."""
    from cgcnn_ase.models.folder import read_model_json
    from cgcnn_ase.train.config import TrainConfig
    from cgcnn_ase.train.trainer import train_from_config

    settings = _settings(target, shared)
    folder = out / target / f"n{size}-r{repeat}" / method
    settings.update(split={"file": str(split_file)}, epochs=EPOCHS[size], seed=repeat, output=str(folder))
    if method == "finetuned":
        settings["init_from"] = BASE
    else:
        settings["model"] = dict(ARCHITECTURE)
    started = time.perf_counter()
    train_from_config(TrainConfig.from_dict(settings), progress=False)
    md = read_model_json(folder)["metadata"]
    return {
        "target": target, "size": size, "repeat": repeat, "method": method,
        "n_train": md["split"]["sizes"]["train"], "n_val": md["split"]["sizes"]["val"],
        "n_test": md["split"]["sizes"]["test"], "epochs": md["training"]["epochs_run"],
        "best_epoch": md["training"]["best_epoch"], "val_mae": md["val_metrics"]["mae"],
        "test_mae": md["test_metrics"]["mae"], "wall_time_s": md["training"]["wall_time_s"],
        "elapsed_s": round(time.perf_counter() - started, 1), "cpu": md["training"]["hardware"]["cpu"],
    }  # fmt: skip


def _key(row: dict[str, Any]) -> tuple:
    return row["target"], str(row["size"]), row["repeat"], row["method"]


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread of the test MAE per (target, size, method), with the paired difference."""
    out = []
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        groups.setdefault((row["target"], str(row["size"])), {}).setdefault(row["method"], []).append(row)
    for (target, size), by_method in groups.items():
        if set(by_method) != set(METHODS):
            continue
        paired = {m: {r["repeat"]: r for r in by_method[m]} for m in METHODS}
        repeats = sorted(set(paired["scratch"]) & set(paired["finetuned"]))
        s = [paired["scratch"][r]["test_mae"] for r in repeats]
        f = [paired["finetuned"][r]["test_mae"] for r in repeats]
        out.append({
            "target": target, "size": size, "n_train": paired["scratch"][repeats[0]]["n_train"],
            "repeats": len(repeats), "epochs": paired["scratch"][repeats[0]]["epochs"],
            "scratch": statistics.mean(s), "scratch_sd": statistics.stdev(s) if len(s) > 1 else None,
            "finetuned": statistics.mean(f), "finetuned_sd": statistics.stdev(f) if len(f) > 1 else None,
            "ratio": statistics.mean(f) / statistics.mean(s), "wins": sum(b < a for a, b in zip(s, f)),
            "minutes": sum(r["wall_time_s"] for m in METHODS for r in by_method[m]) / 60,
        })  # fmt: skip
    order = {t: k for k, t in enumerate(TARGETS)}
    return sorted(out, key=lambda r: (order[r["target"]], r["n_train"]))


def markdown(summary: list[dict[str, Any]]) -> str:
    def cell(mean: float, sd: float | None) -> str:
        return f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")

    lines = ["| target | training crystals | epochs | repeats | MAE from scratch | MAE fine-tuned | fine-tuned / scratch "
             "| fine-tuned better in | CPU min (both) |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in summary:
        units = TARGETS[r["target"]]["units"]
        lines.append(
            f"| {r['target']} ({units}) | {r['n_train']} | {r['epochs']} | {r['repeats']} | "
            f"{cell(r['scratch'], r['scratch_sd'])} | {cell(r['finetuned'], r['finetuned_sd'])} | {r['ratio']:.2f} | "
            f"{r['wins']} of {r['repeats']} | {r['minutes']:.1f} |"
        )
    return "\n".join(lines)


def plot(summary: list[dict[str, Any]], path: Path) -> Path:
    """One panel per target: test MAE against training crystals (log axes), both methods."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    targets = [t for t in TARGETS if any(r["target"] == t for r in summary)]
    fig = Figure(figsize=(5.0 * len(targets), 4.2), dpi=120, layout="constrained")
    axes = fig.subplots(1, len(targets), squeeze=False)[0]
    for ax, target in zip(axes, targets):
        rows = [r for r in summary if r["target"] == target]
        x = [r["n_train"] for r in rows]
        for method, style in (("scratch", "o--"), ("finetuned", "s-")):
            y = [r[method] for r in rows]
            err = [r[f"{method}_sd"] or 0.0 for r in rows]
            label = "from scratch" if method == "scratch" else f"fine-tuned from {BASE}"
            ax.errorbar(x, y, yerr=err, fmt=style, capsize=3, label=label)
        ax.set_xscale("log")
        values = [r[m] for r in rows for m in METHODS]
        if max(values) > 3 * min(values):  # a log axis where the errors span a wide range, in plain numbers
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("training crystals")
        ax.set_ylabel(f"test MAE ({TARGETS[target]['units']})")
        ax.set_title(TARGETS[target]["label"], fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


@click.command()
@click.option("--shared", default=None, help="The shared folder (default: ../shared beside the repository).")
@click.option("--out", default="runs/bench_finetune", show_default=True, type=click.Path(file_okay=False))
@click.option("--targets", default="shear,perovskite", show_default=True)
@click.option("--sizes", default="100,300,1000,all", show_default=True)
@click.option("--repeats", default=3, show_default=True, help="Repeats (subsets and seeds) of the sizes below all.")
@click.option("--repeats-all", default=1, show_default=True, help="Repeats (seeds) of the size all.")
@click.option("--plot-path", default=str(_common.REPO_ROOT / "docs" / "img" / "finetune_learning_curves.png"),
              show_default=True)  # fmt: skip
@click.option("--table-only", is_flag=True, help="Only print the table and draw the plot from results.json.")
def cli(shared: str | None, out: str, targets: str, sizes: str, repeats: int, repeats_all: int, plot_path: str,
        table_only: bool) -> None:  # fmt: skip
    """Run (or resume) the learning curves and print their table."""
    _common.quiet()
    logging.basicConfig(level=logging.WARNING)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    results_path = root / "results.json"
    rows = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {_key(r) for r in rows}
    wanted = [s if s == "all" else int(s) for s in sizes.split(",")]
    for target in ([] if table_only else targets.split(",")):
        full = base_split(target, shared, root)
        for size in wanted:
            for repeat in range(repeats_all if size == "all" else repeats):
                split_file = subset_split(full, size, repeat, root / target / f"split_n{size}_r{repeat}.json")
                for method in METHODS:
                    key = (target, str(size), repeat, method)
                    if key in done:
                        continue
                    row = run_one(target, size, repeat, method, split_file, root, shared)
                    print(f"{target} n={row['n_train']} r={repeat} {method}: test MAE {row['test_mae']:.4f} "
                          f"(best epoch {row['best_epoch']}/{row['epochs']}, {row['wall_time_s']:.0f} s)", flush=True)
                    rows.append(row)
                    done.add(key)
                    results_path.write_text(json.dumps(rows, indent=1))
    summary = summarise(rows)
    print(markdown(summary))
    if summary:
        print(f"plot: {plot(summary, Path(plot_path))}")
    cpus = sorted({r["cpu"] for r in rows})
    total = sum(r["wall_time_s"] for r in rows) / 60
    print(f"{len(rows)} runs, {total:.1f} min of training in total (1 torch thread) on {', '.join(cpus)}")


if __name__ == "__main__":
    cli()

"""Rebuild the model tables of docs/models.md, docs/uncertainty.md and README.md from the shipped model.json files.

    python benchmarks/model_tables.py          # rewrites the marked tables in place
    python benchmarks/model_tables.py --check  # exit 1 if a page's table differs from the model.json files

The tables sit between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers; everything else in the
pages is hand-written. tests/test_models.py checks that docs/models.md quotes each model.json metric.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import click

REPO = Path(__file__).resolve().parents[1]

# the paper's test metrics (Xie & Grossman, PRL 120, 145301 (2018), Table 1; matbench for the perovskites)
PAPER: dict[str, tuple[float, str]] = {
    "formation_energy": (0.039, "0.039 (Xie & Grossman 2018)"),
    "band_gap": (0.388, "0.388 (Xie & Grossman 2018)"),
    "fermi_energy": (0.363, "0.363 (Xie & Grossman 2018)"),
    "bulk_modulus": (0.054, "0.054 (Xie & Grossman 2018)"),
    "shear_modulus": (0.087, "0.087 (Xie & Grossman 2018)"),
    "poisson_ratio": (0.030, "0.030 (Xie & Grossman 2018)"),
    "is_metal": (0.95, "AUC 0.95 (Xie & Grossman 2018)"),
    "perovskite_formation_energy": (0.009, "0.009 (matbench_perovskites CGCNN 0.045 eV/cell; best 0.027)"),
    "perovskite_site_energy": (0.009, "0.009 (as above; the paper gives no test error for its Eq. 4 model)"),
}


def _models() -> list[dict[str, Any]]:
    out = []
    for path in sorted((REPO / "pretrained_models").glob("*/model.json")):
        model = json.loads(path.read_text())
        model["_folder"] = path.parent.name
        out.append(model)
    return out


def _alias(model: dict[str, Any]) -> str:
    return (model["metadata"].get("aliases") or [model["name"]])[0]


def _training(model: dict[str, Any]) -> str:
    """Epochs and wall time, e.g. '5 x 75-78 epochs, 20 min each (one H100 shared by 35 runs)'."""
    md = model["metadata"]
    hardware = md["training"].get("hardware", {})
    where = "GPU" if str(hardware.get("device", "cpu")).startswith("cuda") else "CPU"
    members = (model.get("ensemble") or {}).get("members")
    if members:
        epochs = [m["epochs_run"] for m in members]
        minutes = max(m["wall_time_s"] for m in members) / 60
        span = f"{min(epochs)}-{max(epochs)}" if min(epochs) != max(epochs) else str(epochs[0])
        base = (md.get("finetune") or {}).get("base") or {}
        if not base:
            more = ""
        elif base.get("property") == model.get("property"):
            more = f" more, continuing `{base['name']}`'s members"
        else:
            more = f", fine-tuned from `{base['name']}`'s members"
        return f"{len(members)} members x {span} epochs{more}, <= {math.ceil(minutes)} min each, {where}"  # round 29b
    t = md["training"]
    return f"{t['epochs_run']} epochs, {t['wall_time_s'] / 60:.0f} min {where}"


def models_table() -> str:
    rows = [
        "| name | property (units) | data | train/val/test | our test metric | paper's test metric | beats paper? | training |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in _models():
        md, alias = model["metadata"], _alias(model)
        test = md["test_metrics"]
        key = "mae" if "mae" in test else "roc_auc"
        ours = test[key]
        paper, paper_text = PAPER.get(alias, (float("nan"), "n/a"))
        beats = ours > paper if key == "roc_auc" else ours < paper
        sizes = md["split"]["sizes"]
        members = (model.get("ensemble") or {}).get("members")
        metric = f"{'ROC-AUC' if key == 'roc_auc' else 'MAE'} **{ours:.4f}**"
        if members:
            single = [m["test_metrics"][key] for m in members]
            metric += f" (ensemble; members {min(single):.4f}-{max(single):.4f})"
        data = md["dataset"]["name"].split(" ")[0].rstrip(",") + (", non-metals only" if md["dataset"].get("filter") else "")
        rows.append(
            f"| `{alias}` | {model['property']} ({model['units']}) | {data} | "
            f"{sizes['train']}/{sizes['val']}/{sizes['test']} | {metric} | {paper_text} | "
            f"{'yes' if beats else 'no'} | {_training(model)} |"
        )
    return "\n".join(rows)


#: What each shipped model predicts, in a user's words (the README's table).
DESCRIPTION: dict[str, str] = {
    "formation_energy": "formation energy (Materials Project)",
    "band_gap": "PBE band gap (non-metals; gated to 0 by `is_metal` in the default CLI and the calculator)",
    "is_metal": "probability that the crystal is a metal",
    "fermi_energy": "Fermi energy",
    "bulk_modulus": "log10 of the VRH bulk modulus (`cgcnn-ase predict` without `--model` and the calculator also "
    "give GPa)",
    "shear_modulus": "log10 of the VRH shear modulus (`cgcnn-ase predict` without `--model` and the calculator also "
    "give GPa)",
    "poisson_ratio": "Poisson ratio",
    "perovskite_formation_energy": "heat of formation of ABX3 perovskites (atomwise: site energies)",
    "perovskite_site_energy": "the same with the paper's Eq. 4 convolution, 5 seeds: the paper's site energies, "
    "measured against the data and a no-split baseline (`docs/site_energies.md`)",
}


def readme_table() -> str:
    """The README's table: each shipped model, what it predicts, its test error and the paper's."""
    rows = ["| name | predicts | units | test error (held-out split) | paper |", "|---|---|---|---|---|"]
    for model in _models():
        alias, test = _alias(model), model["metadata"]["test_metrics"]
        key = "mae" if "mae" in test else "roc_auc"
        metric = f"ROC-AUC {test[key]:.4f}" if key == "roc_auc" else f"MAE {test[key]:.4f}"
        paper = PAPER.get(alias, (float("nan"), "n/a"))[1].split(" (")[0]
        rows.append(f"| `{alias}` | {DESCRIPTION.get(alias, model['property'])} | {model['units']} | {metric} | {paper} |")
    return "\n".join(rows)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def uncertainty_tables() -> str:
    reg = [
        "| model | members | ensemble MAE | single-member MAE (mean; best) | Spearman(\\|error\\|, std) "
        "| within 1 std (raw / calibrated) | within 2 std (raw / calibrated) | scale | MAE by domain percentile "
        "0-25 / 25-50 / 50-75 / 75-90 / 90-100 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cls = [
        "| classifier | members | ensemble ROC-AUC | single-member ROC-AUC (mean; best) | Spearman(\\|y - p\\|, std) "
        "| ROC-AUC of std for spotting mistakes |",
        "|---|---|---|---|---|---|",
    ]
    for model in _models():
        if not model.get("ensemble"):
            continue
        u = model["metadata"]["uncertainty"]["test"]
        vs = u["ensemble_vs_members"]
        name = f"`{_alias(model)}` ({model['units']})"
        if model["task"] == "classification":
            cls.append(
                f"| {name} | {u['n_members']} | {vs['ensemble']:.4f} | {vs['member_mean']:.4f}; {vs['member_best']:.4f} "
                f"| {u['raw']['spearman_abs_error_std']:.2f} | {u['raw']['error_detection_auc']:.2f} |"
            )
            continue
        raw, cal = u["raw"], u["calibrated"]
        bins = " / ".join(f"{b['mean_abs_error']:.3g}" for b in u["domain"]["percentile_bins"])
        reg.append(
            f"| {name} | {u['n_members']} | {vs['ensemble']:.4f} | {vs['member_mean']:.4f}; {vs['member_best']:.4f} "
            f"| {raw['spearman_abs_error_std']:.2f} | {_pct(raw['within_1std'])} / {_pct(cal['within_1std'])} "
            f"| {_pct(raw['within_2std'])} / {_pct(cal['within_2std'])} | {u['scale']:.2f} | {bins} |"
        )
    return "\n".join(reg) + "\n\n" + "\n".join(cls)


def replace_between(path: Path, marker: str, text: str, *, write: bool = True) -> bool:
    """Replace what lies between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in ``path`` (``write``:
    otherwise only compare); whether it differed."""
    page = path.read_text()
    pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", re.S)
    if not pattern.search(page):
        raise SystemExit(f"{path}: no {marker} markers")
    new = pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), page)
    if write and new != page:
        path.write_text(new)
    return new != page


TABLES = (("docs/models.md", "models-table", models_table), ("docs/uncertainty.md", "uncertainty-table", uncertainty_tables),
          ("README.md", "readme-models", readme_table))  # fmt: skip


@click.command(help=__doc__.splitlines()[0])
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if a page's table differs from the model.json files.")
def main(check: bool) -> None:
    differ = [page for page, marker, table in TABLES if replace_between(REPO / page, marker, table(), write=not check)]
    if check:
        if differ:
            raise SystemExit(f"out of date: {', '.join(differ)} (run python benchmarks/model_tables.py)")
        print("the tables match the model.json files")
    else:
        print(f"rewrote the tables of {', '.join(differ) or 'no page (all were up to date)'}")


if __name__ == "__main__":
    main()

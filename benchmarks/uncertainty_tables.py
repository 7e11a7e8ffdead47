"""Rewrite the before/after table of docs/uncertainty.md from the shipped ensembles' model.json files.

``cgcnn-ase calibrate MODEL`` stores, for each regression ensemble, the test-split coverage of the
conformal intervals normalised by the per-crystal uncertainty (``conformal``) and by the raw std
(``conformal_std``, both fitted on the validation split) and the Spearman correlation of |error| with the
std and with the uncertainty (``test_spearman``). This script only reads them:

    python benchmarks/uncertainty_tables.py     # also refreshes the results table (benchmarks/model_tables.py)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_tables import REPO, replace_between, uncertainty_tables  # noqa: E402


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def before_after() -> str:
    rows = [
        "| model | val / test crystals | Spearman(\\|error\\|, std) | Spearman(\\|error\\|, uncertainty) "
        "| coverage 68/90/95, std-normalised (before) | coverage 68/90/95, uncertainty-normalised (after) "
        "| shipped normaliser |",
        "|---|---|---|---|---|---|---|",
    ]
    for folder in sorted((REPO / "pretrained_models").iterdir()):
        path = folder / "model.json"
        if not path.is_file():
            continue
        doc = json.loads(path.read_text())
        conformal = ((doc.get("ensemble") or {}).get("calibration") or {}).get("conformal")
        if not conformal or "test_spearman" not in conformal:
            continue
        cov = conformal["test_coverage"]
        before = " / ".join(_pct(r["conformal_std"]) for r in cov)
        after = " / ".join(_pct(r["conformal"]) for r in cov)
        if conformal["normaliser"] != "uncertainty":
            after = "(std kept) " + after
        spear = conformal["test_spearman"]
        rows.append(
            f"| `{folder.name}` | {conformal['n']} / {cov[0]['n']} | {spear['std']:.2f} "
            f"| {spear.get('uncertainty', float('nan')):.2f} | {before} | {after} | {conformal['normaliser']} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    page = REPO / "docs" / "uncertainty.md"
    replace_between(page, "intervals-table", before_after())
    replace_between(page, "uncertainty-table", uncertainty_tables())
    print(f"rewrote the before/after and results tables of {page}")

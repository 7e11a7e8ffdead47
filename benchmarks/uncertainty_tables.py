"""Rewrite the before/after table of docs/uncertainty.md from the shipped ensembles' model.json files.

``cgcnn-ase calibrate MODEL`` stores, for each regression ensemble, the test-split coverage of the
conformal intervals as shipped (``conformal``: the chosen normaliser, training-conditional rank), normalised
by the raw std instead (``conformal_std``), and with the plain split-conformal rank (``conformal_marginal``),
all fitted on the validation split, and the Spearman correlation of |error| with the
std and with the uncertainty (``test_spearman``). This script only reads them:

    python benchmarks/uncertainty_tables.py     # also refreshes the results table (benchmarks/model_tables.py)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_tables import REPO, replace_between, uncertainty_tables  # noqa: E402


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def before_after() -> str:
    rows = [
        "| model | val / test crystals | Spearman(\\|error\\|, std) | Spearman(\\|error\\|, uncertainty) "
        "| coverage 68/90/95, mean ± z x calibrated std (before: Gaussian) "
        "| coverage 68/90/95, std-normalised | coverage 68/90/95, plain split-conformal rank "
        "| coverage 68/90/95, training-conditional rank (shipped) | shipped normaliser |",
        "|---|---|---|---|---|---|---|---|---|",
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
        gaussian = " / ".join(_pct(r["gaussian"]) for r in cov)
        std = " / ".join(_pct(r["conformal_std"]) for r in cov)
        marginal = " / ".join(_pct(r.get("conformal_marginal", r["conformal"])) for r in cov)
        shipped = " / ".join(_pct(r["conformal"]) for r in cov)
        spear = conformal["test_spearman"]
        rows.append(
            f"| `{folder.name}` | {conformal['n']} / {cov[0]['n']} | {spear['std']:.2f} "
            f"| {spear.get('uncertainty', float('nan')):.2f} | {gaussian} | {std} | {marginal} | {shipped} | {conformal['normaliser']} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    import _common

    _common.positional_cli(__doc__)
    page = REPO / "docs" / "uncertainty.md"
    replace_between(page, "intervals-table", before_after())
    replace_between(page, "uncertainty-table", uncertainty_tables())
    print(f"rewrote the before/after and results tables of {page}")

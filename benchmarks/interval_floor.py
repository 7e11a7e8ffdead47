"""What the members' floor on the prediction intervals changes, on each shipped ensemble's test split.

`predict(..., coverage=c)` gives mean ± q(c) x max(s, max |member - mean| / q(0.95)): the conformal
interval, whose scale is floored so that the 95% interval holds every member's prediction (far outside the
validation crystals the error model's log-linear fit grows slower than the members' spread). Fitted on the validation split as shipped; this script reads
the test split from the cache of ``benchmarks/uncertainty_cache.py`` (run that first) and prints, per model
and level, the coverage without and with the floor, how often the floor binds (the same crystals at every
level) and the mean width ratio; then the squeezed and stretched NaCl of docs/uncertainty.md.

    python benchmarks/uncertainty_cache.py formation_energy band_gap ...   # once, ~minutes per model
    python benchmarks/interval_floor.py                                     # seconds
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
from uncertainty_cache import CACHE, REGRESSION_ENSEMBLES

LEVELS = (0.68, 0.9, 0.95)


def main() -> None:
    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.inference.predictor import FLOOR_LEVEL

    warnings.simplefilter("ignore")
    print("| model | test crystals | level | coverage, conformal only | coverage, with the floor | floor binds | mean width ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in REGRESSION_ENSEMBLES:
        path = CACHE / f"{name}.npz"
        if not path.is_file():
            print(f"| {name} | (no cache: run benchmarks/uncertainty_cache.py {name}) | | | | | |")
            continue
        data = np.load(path)
        predictor = CGCNNPredictor.from_pretrained(name, device="cpu")
        model = predictor.model
        members, y = data["test_members"], data["test_y"]
        ok = np.isfinite(members).all(axis=1) & np.isfinite(y)
        members, y, emb = members[ok], y[ok], data["test_emb"][ok]
        elements = [np.flatnonzero(row) for row in data["test_comp"][ok]]
        mean, std_raw = members.mean(axis=1), members.std(axis=1)
        if model.calibration["conformal"].get("normaliser") == "uncertainty":
            error = model.domain.error_model
            s = error.uncertainty(error.features(model.domain, emb, mean, std_raw, elements))
        else:
            s = std_raw
        reach = np.abs(members - mean[:, None]).max(axis=1)
        levels = model.calibration["conformal"]["levels"]
        scale = np.fmax(s, reach / model.conformal_quantile(min(FLOOR_LEVEL, levels[-1])))
        for level in LEVELS:
            half = model.conformal_quantile(level) * s
            floored = model.conformal_quantile(level) * scale
            before = np.mean(np.abs(y - mean) <= half)
            after = np.mean(np.abs(y - mean) <= floored)
            print(f"| {name} | {len(y)} | {level:.2f} | {100 * before:.1f}% | {100 * after:.1f}% | "
                  f"{100 * np.mean(scale > s):.1f}% | {np.mean(floored / half):.3f} |")
    examples()


def examples() -> None:
    """The report's case (docs/uncertainty.md): NaCl squeezed to 0.6x its lattice, beside NaCl and NaCl at
    1.2x, with the formation-energy ensemble: members, calibrated std and the 90% / 95% intervals."""
    from ase.build import bulk

    from cgcnn_ase import CGCNNPredictor

    predictor = CGCNNPredictor.from_pretrained("formation_energy", device="cpu")
    crystals = {f"NaCl, lattice x{f}": bulk("NaCl", "rocksalt", a=f * 5.64) for f in (0.6, 1.0, 1.2)}
    wide = predictor.predict(list(crystals.values()), coverage=0.95)
    ninety = predictor.predict(list(crystals.values()), coverage=0.9)
    for k, label in enumerate(crystals):
        members = ", ".join(f"{v:.2f}" for v in wide.member_values[k])
        print(f"{label}: members {members}; std {wide.std[k]:.3f} eV/atom; 90% [{ninety.lower[k]:.2f}, "
              f"{ninety.upper[k]:.2f}], 95% [{wide.lower[k]:.2f}, {wide.upper[k]:.2f}]")


if __name__ == "__main__":
    _common.positional_cli(__doc__)
    main()

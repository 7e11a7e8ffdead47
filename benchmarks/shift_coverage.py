"""Prediction-interval coverage under a mild distribution shift: the moduli ensembles on the 2025 binaries.

The shipped bulk and shear modulus ensembles were calibrated (split conformal) on the validation split of
mp_elastic3k_kdmsit, and cover about 90% of its test split at `coverage=0.9`. This script measures the
same on the crystals of mp_elastic_binary2025_matcalc that are not in mp_elastic3k (newer Materials Project
binaries, the set docs/models.md scores), overall, inside `in_domain()` and by domain percentile, and at the
other calibrated levels (50, 68, 95%) beside the bands of one and two calibrated standard deviations.

    python benchmarks/shift_coverage.py [--shared ../shared]     # about 2 minutes at one thread; needs ../shared
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common


def main() -> None:
    import pandas as pd
    from pymatgen.core import Structure

    from cgcnn_ase import CGCNNPredictor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=None)
    parser.add_argument("--coverage", type=float, default=0.9)
    args = parser.parse_args()
    _common.quiet()
    warnings.simplefilter("ignore")
    path = _common.shared_path(args.shared, "data/mp_elastic_binary2025_matcalc/mp-binary-pbe-elasticity-2025.1.json.gz")
    with gzip.open(path, "rt") as f:
        entries = json.load(f)
    known = set(pd.read_csv(_common.shared_path(args.shared, "data/mp_elastic3k_kdmsit/data.csv.gz"),
                            usecols=["material_id"])["material_id"])  # fmt: skip
    new = [e for e in entries if e["mp_id"] not in known]
    structures = [Structure.from_dict(e["structure"]) for e in new]
    print(f"{len(new)} of {len(entries)} binaries are not in mp_elastic3k; coverage {args.coverage}")
    for name, key in (("bulk_modulus", "bulk_modulus_vrh"), ("shear_modulus", "shear_modulus_vrh")):
        with np.errstate(divide="ignore", invalid="ignore"):
            truth = np.log10(np.array([e[key] for e in new], dtype=np.float64))
        result = CGCNNPredictor.from_pretrained(name).predict(structures, coverage=args.coverage, errors="collect")
        ok = result.ok & np.isfinite(truth)
        inside = (truth >= result.lower) & (truth <= result.upper)
        error = np.abs(result.values - truth)
        domain = result.in_domain(max_percentile=95)
        print(f"{name}: n {ok.sum()}, MAE {error[ok].mean():.4f} log10(GPa), covered {inside[ok].mean():.3f}; "
              f"in_domain(95): n {(ok & domain).sum()}, covered {inside[ok & domain].mean():.3f}")
        predictor = CGCNNPredictor.from_pretrained(name)
        scale = (result.upper - result.lower) / 2 / predictor.model.conformal_quantile(args.coverage)  # per crystal
        levels = ", ".join(f"{c:.0%} {(error[ok] <= predictor.model.conformal_quantile(c) * scale[ok]).mean():.3f}"
                           for c in (0.5, 0.68, 0.9, 0.95))  # fmt: skip
        bands = ", ".join(f"+-{k} std {(error[ok] <= k * result.std[ok]).mean():.3f}" for k in (1, 2))
        print(f"  intervals by level: {levels}; the std's bands: {bands}")
        for low, high in ((0, 25), (25, 50), (50, 75), (75, 95), (95, 100)):
            band = ok & (result.domain_percentile >= low) & (result.domain_percentile <= high)
            if band.any():
                print(f"  domain percentile {low}-{high}: n {band.sum()}, covered {inside[band].mean():.3f}, "
                      f"MAE {error[band].mean():.4f}")


if __name__ == "__main__":
    main()

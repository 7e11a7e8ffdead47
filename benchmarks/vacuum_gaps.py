"""The widest empty gap the atoms of training crystals leave across their cells (VACUUM_GAP).

For every crystal: `vacuum_gap`, the widest empty slab between consecutive atoms' planes along any
lattice direction, Å. Reading a structure warns (`VacuumWarning`) above VACUUM_GAP (5 Å, wider than
in 99.9% of the training crystals). Prints percentiles, the count above it (and above 4, 6 and 8 Å) and the widest crystals per dataset, and the gap of a
few slabs and molecules in periodic boxes.

    python benchmarks/vacuum_gaps.py [--shared ../shared]     # about 1 min at one thread; needs ../shared
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

DATASETS = ("mp_cgcnn46k_kdmsit", "mp_elastic3k_kdmsit", "perovskites_castelli_cmr")


def main() -> None:
    from ase.build import fcc111, graphene_nanoribbon, molecule, mx2

    from cgcnn_ase.io.reader import to_record
    from cgcnn_ase.io.records import VACUUM_GAP, vacuum_gap

    shared = _common.shared_only_cli(__doc__)
    for name in DATASETS:
        records, formulas = _common.usable_crystals(shared, name)
        gaps = np.asarray([vacuum_gap(record.frac_coords, record.cell)[0] for record in records])
        pct = np.percentile(gaps, [50, 99, 99.9, 100])
        top = np.argsort(-gaps)[:6]
        print(f"{name} ({len(gaps)} crystals): widest gap, Å: median {pct[0]:.2f}, 99% {pct[1]:.2f}, 99.9% {pct[2]:.2f}, "
              f"max {pct[3]:.2f}; above {VACUUM_GAP:g} Å: {int((gaps > VACUUM_GAP).sum())} "
              f"(above 4/6/8 Å: {'/'.join(str(int((gaps > t).sum())) for t in (4, 6, 8))}); widest: "
              + ", ".join(f"{formulas[k]} {gaps[k]:.1f}" for k in top))  # fmt: skip
    water = molecule("H2O")
    water.center(vacuum=5.0)
    water.pbc = True
    examples = {
        "Cu(111) slab, 4 layers, 15 Å vacuum": fcc111("Cu", (2, 2, 4), vacuum=7.5, periodic=True),
        "Cu(111) slab, 4 layers, 6 Å vacuum": fcc111("Cu", (2, 2, 4), vacuum=3.0, periodic=True),
        "MoS2 monolayer, 10 Å vacuum": mx2("MoS2", vacuum=5.0),
        "graphene nanoribbon in a box": graphene_nanoribbon(3, 2, vacuum=5.0, sheet=False),
        "H2O in a 10 Å box": water,
    }
    for label, atoms in examples.items():
        atoms.pbc = True
        record = to_record(atoms)
        print(f"{label}: {vacuum_gap(record.frac_coords, record.cell)[0]:.1f} Å")


if __name__ == "__main__":
    main()

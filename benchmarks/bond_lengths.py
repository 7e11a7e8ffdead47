"""How close the closest pair of atoms comes to bonding, over the training crystals (CLOSE_ATOMS_FACTOR and STRETCHED_FACTOR).

For every crystal: the smallest ratio, over the pairs of its graph, of the distance to the sum of the
two atoms' Pyykkö covalent radii. `build_graph` warns below CLOSE_ATOMS_FACTOR (atoms too close, or a cell
scaled down by mistake, such as Å read as Bohr) and
above STRETCHED_FACTOR (no pair near bonding: a cell scaled up by mistake). Prints percentiles and the
highest crystals per dataset, and the ratio of a few deliberately mis-scaled crystals.

    python benchmarks/bond_lengths.py [--shared ../shared]     # about 30 s at one thread; needs ../shared
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

DATASETS = ("mp_cgcnn46k_kdmsit", "mp_elastic3k_kdmsit", "perovskites_castelli_cmr")


def closest_ratio(record) -> float:
    from cgcnn_ase.graph.config import GraphConfig
    from cgcnn_ase.graph.neighbours import _covalent_radii, build_graph

    graph = build_graph(record, GraphConfig(), on_sparse="ignore")
    radii = _covalent_radii()
    z = record.numbers
    return float(np.min(graph.distances / (radii[z[graph.centers]] + radii[z[graph.neighbors]])))


def _bohr_as_angstrom(atoms):
    """``atoms`` scaled by 0.529177: a cell given in Bohr and read as if in Å."""
    atoms.set_cell(atoms.cell * 0.529177, scale_atoms=True)
    return atoms


def main() -> None:
    from ase.build import bulk

    from cgcnn_ase.io.reader import to_record

    shared = _common.shared_only_cli(__doc__)
    for name in DATASETS:
        records, formulas = _common.usable_crystals(shared, name)
        ratios = np.asarray([closest_ratio(record) for record in records])
        pct = np.percentile(ratios, [0, 0.1, 50, 99.9, 100])
        top, bottom = np.argsort(-ratios)[:5], np.argsort(ratios)[:5]
        print(f"{name} ({len(ratios)} crystals): closest pair / covalent sum: min {pct[0]:.3f}, 0.1% {pct[1]:.3f}, "
              f"median {pct[2]:.2f}, 99.9% {pct[3]:.2f}, max {pct[4]:.2f}; highest: "
              + ", ".join(f"{formulas[k]} {ratios[k]:.2f}" for k in top)
              + "; lowest: " + ", ".join(f"{formulas[k]} {ratios[k]:.3f}" for k in bottom))  # fmt: skip
    for label, atoms in (("NaCl", bulk("NaCl", "rocksalt", a=5.64)), ("NaCl, lattice x1.2", bulk("NaCl", "rocksalt", a=6.77)),
                         ("NaCl, lattice x2", bulk("NaCl", "rocksalt", a=11.28)), ("Ar fcc", bulk("Ar", "fcc", a=5.26)),
                         ("Xe fcc", bulk("Xe", "fcc", a=6.13)), ("NaCl, lattice x0.8", bulk("NaCl", "rocksalt", a=4.51)),
                         ("NaCl, Å read as Bohr (x0.529)", bulk("NaCl", "rocksalt", a=2.98)),
                         ("Si, Å read as Bohr (x0.529)", bulk("Si", "diamond", a=2.87)),
                         *((f"{metal}, Å read as Bohr (x0.529)", _bohr_as_angstrom(bulk(metal)))
                           for metal in ("Cu", "Al", "Na", "Au", "Pb"))):  # fmt: skip
        print(f"{label}: {closest_ratio(to_record(atoms)):.2f}")


if __name__ == "__main__":
    main()

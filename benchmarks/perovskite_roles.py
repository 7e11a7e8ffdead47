"""How well `perovskite_roles` tells perovskites from other crystals (docs/site_energies.md).

* the 17,428 Castelli cells of ../shared: roles found, and agreement of the A/B sites with the
  database's formulas (they list A first, then B, then the anions);
* random arrangements of the same 5 atoms in a cube (uniform fractional coordinates), which are not
  perovskites: how many get roles;
* tilted and strained perovskites built with ASE (2x2x2 supercells with rattled atoms), which are.

    python benchmarks/perovskite_roles.py [--shared ../shared] [--random 1000]
    # about 1 minute at one thread; needs ../shared for the first part
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common


def castelli(shared: str | None) -> None:
    import pandas as pd
    from ase.data import chemical_symbols

    from cgcnn_ase.analysis.sites import perovskite_roles
    from cgcnn_ase.io.reader import iter_records

    df = pd.read_csv(_common.shared_path(shared, "data/perovskites_castelli_cmr/data.csv.gz"))
    counts = {"agree": 0, "swapped": 0, "no roles": 0}
    for formula, (_, record) in zip(df["formula"], iter_records(list(df["cif"]))):
        roles = perovskite_roles(record)
        if roles is None:
            counts["no roles"] += 1
            continue
        a, b = re.findall(r"[A-Z][a-z]?", formula)[:2]
        found = {role: chemical_symbols[z] for role, z in zip(roles, record.numbers) if role in "AB"}
        counts["agree" if (found["A"], found["B"]) == (a, b) else "swapped"] += 1
    print(f"Castelli cells ({len(df)}): A/B as the database lists them {counts['agree']}, "
          f"swapped {counts['swapped']}, not recognised {counts['no roles']}")  # fmt: skip


def synthetic(n_random: int) -> None:
    from ase import Atoms
    from ase.build import make_supercell

    from cgcnn_ase.analysis.sites import perovskite_roles
    from cgcnn_ase.io.reader import to_record

    rng = np.random.default_rng(0)
    cube = np.eye(3) * 3.905
    found = sum(
        perovskite_roles(to_record(Atoms("SrTiO3", scaled_positions=rng.random((5, 3)), cell=cube, pbc=True)))
        is not None
        for _ in range(n_random)
    )  # fmt: skip
    print(f"random SrTiO3 arrangements in a 3.905 Å cube: {found} of {n_random} get roles")
    ideal = Atoms("SrTiO3", scaled_positions=[[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
                  cell=cube, pbc=True)  # fmt: skip
    for amplitude in (0.05, 0.1, 0.2):
        hits = 0
        for _ in range(100):
            atoms = make_supercell(ideal, 2 * np.eye(3))
            atoms.rattle(amplitude, seed=int(rng.integers(1 << 30)))
            roles = perovskite_roles(to_record(atoms))
            hits += roles is not None and roles == [{"Sr": "A", "Ti": "B", "O": "X"}[s] for s in atoms.get_chemical_symbols()]
        print(f"2x2x2 SrTiO3 rattled by {amplitude} Å (std): correct roles in {hits} of 100")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=None)
    parser.add_argument("--random", type=int, default=1000)
    args = parser.parse_args()
    _common.quiet()
    synthetic(args.random)
    castelli(args.shared)


if __name__ == "__main__":
    main()

"""How the formation-energy and band-gap ensembles see random packings of atoms (amorphous-like inputs).

For Si, NaCl and MgO: 32 atoms placed at random in a cube at the crystal's volume per atom, no two closer
than a minimum distance (rejection sampling, seeded), against the crystal itself. Prints each model's
prediction, ensemble std, domain percentile and `in_domain()`. docs/uncertainty.md quotes it.

    python benchmarks/random_packings.py [--seeds 4]     # about 1 minute at one thread; no ../shared needed
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

#: formula unit, crystal (ase.build.bulk arguments), minimum distance in a packing (Å)
#: (kept below random sequential packing's jamming limit, a packing fraction of about 0.38)
SYSTEMS = {"Si": (["Si"], ("Si", "diamond", 5.43), 2.2), "NaCl": (["Na", "Cl"], ("NaCl", "rocksalt", 5.64), 2.4),
           "MgO": (["Mg", "O"], ("MgO", "rocksalt", 4.21), 1.7)}  # fmt: skip


def random_packing(symbols: list[str], volume_per_atom: float, d_min: float, n: int, seed: int):
    """``n`` atoms (``symbols`` repeated) at random in a periodic cube of ``n x volume_per_atom`` Å^3, no
    two closer than ``d_min`` Å."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    side = (n * volume_per_atom) ** (1 / 3)
    points: list[np.ndarray] = []
    for _ in range(1_000_000):
        if len(points) == n:
            break
        trial = rng.random(3) * side
        delta = np.asarray(points) - trial if points else np.zeros((0, 3))
        delta -= side * np.round(delta / side)
        if not len(points) or np.sqrt((delta**2).sum(axis=1)).min() >= d_min:
            points.append(trial)
    else:
        raise RuntimeError(f"no room for {n} atoms {d_min} Å apart at {volume_per_atom:.1f} Å^3 per atom")
    return Atoms([symbols[k % len(symbols)] for k in range(n)], positions=points, cell=[side] * 3, pbc=True)


def main() -> None:
    from ase.build import bulk

    from cgcnn_ase import CGCNNPredictor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    _common.quiet()
    warnings.simplefilter("ignore")
    predictors = {name: CGCNNPredictor.from_pretrained(name, device="cpu") for name in ("formation_energy", "band_gap")}
    for system, (symbols, crystal_args, d_min) in SYSTEMS.items():
        crystal = bulk(*crystal_args[:2], a=crystal_args[2], cubic=True)
        packings = [random_packing(symbols, crystal.get_volume() / len(crystal), d_min, 32, seed)
                    for seed in range(args.seeds)]  # fmt: skip
        for name, predictor in predictors.items():
            result = predictor.predict([crystal, *packings])
            inside = result.in_domain()
            print(f"{system} {name}: crystal {result.values[0]:.3f} ± {result.std[0]:.3f} {result.units}, domain "
                  f"percentile {result.domain_percentile[0]:.0f}; random packings: std "
                  f"{result.std[1:].min():.3f}-{result.std[1:].max():.3f}, domain percentile "
                  f"{result.domain_percentile[1:].min():.0f}-{result.domain_percentile[1:].max():.0f}, in_domain "
                  f"{int(inside[1:].sum())} of {len(packings)}")


if __name__ == "__main__":
    main()

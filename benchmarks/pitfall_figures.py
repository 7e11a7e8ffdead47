"""The figures docs quote for three pitfalls: tied shells under small displacements, intervals of crystals with
unseen elements, and the elastic models' domain percentile of a well-predicted crystal.

1. Rocksalt NaCl (8-atom cell) rattled by ``ase``'s ``rattle(stdev, seed=1)``: ``formation_energy`` and its
   std, and the graph's edges per atom (docs/compatibility.md, docs/units.md).
2. ``bulk_modulus`` with ``coverage=0.9`` on rocksalt LaN (La unseen) and NaCl: std, uncertainty, interval
   half-width, domain percentile (docs/uncertainty.md).
3. ``bulk_modulus`` on MgO (mp-1265 of ``mp_elastic3k_kdmsit``, in its validation split): prediction in GPa
   against the DFT value and its domain percentile (docs/uncertainty.md; needs ../shared, skipped without).

    python benchmarks/pitfall_figures.py [--shared ../shared]     # under a minute at one thread
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common


def main() -> None:
    from ase.build import bulk

    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.graph.neighbours import build_graph
    from cgcnn_ase.io.reader import to_record

    shared = _common.shared_only_cli(__doc__)

    energy = CGCNNPredictor.from_pretrained("formation_energy", device="cpu")
    print("1. NaCl rattled: stdev (Å), formation_energy (eV/atom), std, edges per atom")
    for stdev in (0.0, 1e-4, 5e-4, 1.1e-3, 2e-3, 2e-2):
        atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
        if stdev:
            atoms.rattle(stdev, seed=1)
        result = energy.predict(atoms)
        edges = len(build_graph(to_record(atoms), energy.model.spec.graph).centers) / len(atoms)
        print(f"   {stdev:<7g} {result.values[0]:.4f}  {result.std[0]:.3f}  {edges:.2f}")

    moduli = CGCNNPredictor.from_pretrained("bulk_modulus", device="cpu")
    pairs = [("LaN", bulk("LaN", "rocksalt", a=5.3)), ("NaCl", bulk("NaCl", "rocksalt", a=5.64))]
    result = moduli.predict(pairs, coverage=0.9)
    print("2. bulk_modulus, 90% intervals (log10(GPa)): crystal, unseen, std, uncertainty, half-width, domain %")
    for k, (name, _) in enumerate(pairs):
        half = (result.upper[k] - result.lower[k]) / 2
        print(f"   {name:5s} {result.unseen_elements[k]!s:7s} {result.std[k]:.3f}  {result.uncertainty[k]:.3f}  "
              f"±{half:.3f}  {result.domain_percentile[k]:.1f}")  # fmt: skip

    try:
        data = _common.shared_path(shared, "data/mp_elastic3k_kdmsit/data.csv.gz")
    except SystemExit:
        print("3. skipped: ../shared is not here")
        return
    import pandas as pd

    row = pd.read_csv(data).set_index("material_id").loc["mp-1265"]
    mgo = moduli.predict([("mp-1265", row["cif"])])
    print(f"3. MgO mp-1265: bulk_modulus {10 ** mgo.values[0]:.0f} GPa (DFT {row['K_VRH']:.0f}), "
          f"domain percentile {mgo.domain_percentile[0]:.1f}")


if __name__ == "__main__":
    main()

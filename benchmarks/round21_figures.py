"""The figures docs quote from round 21 of outside testing that a script can re-measure in a minute or two.

1. Structure-dict reading (docs/scale.md, io.formats.structure_dict_record): entries/s of the direct reading
   and of pymatgen's ``Structure.from_dict`` on the same 2000 MP structures, median of 3 rounds each, and
   whether every record is the same bit for bit.
2. Memory of a parsed JSON list: the Python heap ``json.loads`` holds per entry for those 2000 MP entries
   (``tracemalloc``; docs/scale.md's "6-12 KB per entry").
3. Steps under strain (docs/quickstart.md, "Not a potential energy surface"): conventional NaCl's formation
   energy with its c axis at 0.999x and 1.001x, against the unstrained cell (meV/atom), for the ensemble and
   for one network.

    python benchmarks/round21_figures.py [--shared ../shared]     # about a minute at one thread
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common


def main() -> None:
    import torch
    from ase.build import bulk
    from pymatgen.core import Structure

    from cgcnn_ase import CGCNNCalculator
    from cgcnn_ase.io import formats

    shared = _common.shared_only_cli(__doc__)
    torch.set_num_threads(1)
    entries = [{"material_id": name, "structure": Structure.from_str(cif, fmt="cif").as_dict()}
               for name, cif in _common.load_cif_strings(shared, "mp", 2000)]  # fmt: skip
    dicts = [e["structure"] for e in entries]
    rates = {}
    for name, read in (("direct", formats.structure_dict_record), ("pymatgen", formats._pymatgen_dict_record)):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            records = [read(d, "x") for d in dicts]
            times.append(time.perf_counter() - start)
        rates[name] = (len(dicts) / statistics.median(times), records)
    same = all(a.numbers.tobytes() == b.numbers.tobytes() and a.frac_coords.tobytes() == b.frac_coords.tobytes()
               and a.cell.tobytes() == b.cell.tobytes() for a, b in zip(rates["direct"][1], rates["pymatgen"][1]))  # fmt: skip
    print(f"1. structure dicts: direct {rates['direct'][0]:.0f}/s, pymatgen {rates['pymatgen'][0]:.0f}/s, "
          f"{rates['direct'][0] / rates['pymatgen'][0]:.1f}x; identical records: {same}")

    text = json.dumps(entries)
    tracemalloc.start()
    parsed = json.loads(text)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"2. a parsed JSON list: {held / len(parsed) / 1024:.1f} KB per entry ({len(text) / len(parsed) / 1024:.1f} KB "
          "of text per entry)")

    for members, what in ((None, "the 5-member ensemble"), (1, "its first network alone (members=1)")):
        calc = CGCNNCalculator("formation_energy", members=members)
        salt = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
        salt.calc = calc
        unstrained = salt.get_potential_energy() / len(salt)
        for factor in (0.999, 1.001):
            strained = salt.copy()
            cell = strained.cell.copy()
            cell[2] *= factor
            strained.set_cell(cell, scale_atoms=True)
            strained.calc = calc
            change = 1000 * (strained.get_potential_energy() / len(strained) - unstrained)
            print(f"3. NaCl, c axis x{factor}, {what}: {change:+.1f} meV/atom")


if __name__ == "__main__":
    main()

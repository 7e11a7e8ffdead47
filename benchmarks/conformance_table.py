"""The conformance table of docs/compatibility.md: each of the authors' 8 checkpoints on the 297 reference
structures, largest absolute difference from the predictions their code made, and how many lie within 1e-5.

The differences are float32 rounding and depend on the CPU and the BLAS build (the test only asserts the 1e-5
tolerance: ``tests/test_conformance.py``).

    python benchmarks/conformance_table.py [--shared ../shared]
"""

from __future__ import annotations

import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

CHECKPOINTS = {
    "band-gap": "eV", "bulk-moduli": "log10(GPa)", "efermi": "eV", "final-energy-per-atom": "eV/atom",
    "formation-energy-per-atom": "eV/atom", "poisson-ratio": "", "semi-metal-classification": "(probability)",
    "shear-moduli": "log10(GPa)",
}  # fmt: skip


def main() -> None:
    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.io.reader import read_structures

    shared = _common.shared_only_cli(__doc__)
    reference = _common.shared_path(shared, "reference/cgcnn")
    manifest = pd.read_csv(reference / "structures" / "manifest.csv")
    with tempfile.TemporaryDirectory() as folder:
        with tarfile.open(reference / "structures" / "cifs.tar.gz") as tar:
            tar.extractall(folder, filter="data")
        records = [read_structures(Path(folder) / "cifs" / f"{c}.cif", cif_reader="pymatgen")[0] for c in manifest.cif_id]
    print(f"{_common.machine_line()}; batches of 256\n")
    rows = []
    for name, units in CHECKPOINTS.items():
        predictor = CGCNNPredictor.from_checkpoint(reference / "pre-trained" / f"{name}.pth.tar",
                                                   atom_init=_common.shared_path(shared, _common.ATOM_INIT),
                                                   device="cpu")  # fmt: skip
        values = predictor.predict(records, batch_size=256, on_sparse="ignore").values
        expected = pd.read_csv(reference / "predictions" / f"{name}.csv").set_index("cif_id")
        column = "probability" if name == "semi-metal-classification" else "prediction"
        diff = np.abs(values - expected.loc[manifest.cif_id, column].to_numpy())
        worst = manifest.cif_id[int(np.argmax(diff))]
        rows.append([name, f"{diff.max():.1e} {units}".strip(), f"{(diff < 1e-5).sum()} / {len(diff)}", worst])
    print(_common.markdown_table(["checkpoint", "max abs difference, 297 structures", "structures within 1e-5",
                                  "largest at"], rows))  # fmt: skip


if __name__ == "__main__":
    main()

"""How far a prediction steps when a crystal's atoms move by far less than DFT resolves (round 23c).

The graph keeps each atom's 12 nearest neighbours plus every neighbour within ``tie_tolerance`` (1e-3 Å) of the
12th (the ``symmetric`` policy). A neighbour crossing that cutoff adds or removes an edge, and the prediction
steps. On ``--n`` random Materials Project crystals (seeded), with the shipped ``formation_energy`` as one
network (``members=1``), this script measures |prediction - prediction of the crystal as given| (meV/atom) for:

* **rattles**: every atom moved by Gaussian noise of sigma 1e-4, 1e-3 and 1e-2 Å (one draw per crystal);
* **rounding**: fractional coordinates and cell lengths and angles rounded to 4 and 3 decimals, as CIFs written at
  that precision hold them;

* **uniform scaling**: the cell scaled by 0.95 to 1.05 in steps of 0.005, the fractional coordinates kept. Scaling
  keeps the order of every atom's neighbour distances, so the graph can change only where a shell lies within about
  the tolerance of the 12th neighbour's distance; the script counts the crystals whose edge count changes anywhere
  on that grid (a step in the prediction);

and, per crystal, the **tie margin**: the smallest gap (Å) between any atom's neighbour distances beyond the 12th
and its cutoff (12th distance + tolerance). An exact tie at the 12th neighbour (most high-symmetry crystals) gives
a margin of exactly the tolerance, 1e-3 Å, so displacements of that size can split it. The table splits the
crystals by margin.

    python benchmarks/tie_sensitivity.py [--shared ../shared] [--n 400]   # about a minute at one thread
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

SIGMAS = (1e-4, 1e-3, 1e-2)
DECIMALS = (4, 3)
SCALES = np.round(np.linspace(0.95, 1.05, 21), 3)


def tie_margin(record, config) -> float:
    """The smallest |d_k - (d_12 + tolerance)| over atoms and neighbours k beyond the 12th (Å); inf without any."""
    from cgcnn_ase.graph.neighbours import _raw_neighbors

    i, _, d = _raw_neighbors(record, config)
    k = config.max_neighbors
    best = np.inf
    for atom in range(len(record)):
        row = np.sort(d[i == atom])
        if len(row) > k:
            cutoff = row[k - 1] + config.tie_tolerance
            best = min(best, float(np.abs(row[k:] - cutoff).min()))
    return best


def _rattled(record, sigma: float, seed: int):
    from cgcnn_ase.io.records import validate_record

    rng = np.random.default_rng(seed)
    cart = record.frac_coords @ record.cell + rng.normal(scale=sigma, size=(len(record), 3))
    return validate_record(record.numbers, cart @ np.linalg.inv(record.cell), record.cell, (True,) * 3, record.label)


def _rounded(record, decimals: int):
    from pymatgen.core import Lattice

    from cgcnn_ase.io.records import validate_record

    lattice = Lattice(record.cell)
    params = [round(v, decimals) for v in (*lattice.abc, *lattice.angles)]
    cell = Lattice.from_parameters(*params).matrix
    return validate_record(record.numbers, np.round(record.frac_coords, decimals), cell, (True,) * 3, record.label)


def _scaled(record, scale: float):
    from cgcnn_ase.io.records import validate_record

    return validate_record(record.numbers, record.frac_coords, record.cell * scale, (True,) * 3, record.label)


def scaling_steps(record, config) -> int:
    """How many of the scale factors in ``SCALES`` give another edge count than the crystal as given."""
    from cgcnn_ase.graph.neighbours import build_graph

    edges = {s: len(build_graph(_scaled(record, s), config, on_sparse="ignore").distances) for s in SCALES}
    return sum(count != edges[1.0] for count in edges.values())


def _row(label: str, delta: np.ndarray) -> list[object]:
    meV = 1000 * delta[np.isfinite(delta)]
    return [label, len(meV), f"{np.median(meV):.2f}", f"{np.mean(meV > 5):.1%}", f"{np.mean(meV > 20):.1%}",
            f"{meV.max():.0f}"]  # fmt: skip


@click.command(help=__doc__)
@click.option("--shared", default=None, help="The shared folder (default: ../shared beside the repository).")
@click.option("--n", default=400, show_default=True, help="Materials Project crystals (random, seed 0).")
def main(shared: str | None, n: int) -> None:
    import torch

    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.io.reader import iter_records

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    config = predictor.model.spec.graph
    records = [r for _, r in iter_records([cif for _, cif in _common.load_cif_strings(shared, "mp", n)])
               if not isinstance(r, Exception)]  # fmt: skip

    def predict(items) -> np.ndarray:
        return predictor.predict(items, batch_size=256, errors="collect", on_sparse="ignore").values

    base = predict(records)
    margins = np.array([tie_margin(r, config) for r in records])
    deltas = {f"rattle sigma {s:g} Å": np.abs(predict([_rattled(r, s, k) for k, r in enumerate(records)]) - base)
              for s in SIGMAS}  # fmt: skip
    deltas |= {f"rounded to {p} decimals": np.abs(predict([_rounded(r, p) for r in records]) - base) for p in DECIMALS}
    tied = margins <= config.tie_tolerance * (1 + 1e-6)
    steps = np.array([scaling_steps(r, config) for r in records])
    header = ["change", "crystals", "median meV/atom", "> 5 meV/atom", "> 20 meV/atom", "max meV/atom"]
    rows = []
    for label, delta in deltas.items():
        rows.append(_row(label, delta))
        rows.append(_row(f"... tie margin <= tolerance ({tied.sum()})", delta[tied]))
        rows.append(_row(f"... tie margin > tolerance ({(~tied).sum()})", delta[~tied]))
    print(f"{len(records)} Materials Project crystals, `formation_energy` with members=1; tie margin <= the "
          f"{config.tie_tolerance:g} Å tolerance (an exact tie at the 12th neighbour): {tied.sum()}; "
          f"margin < 0.01 Å: {(margins < 0.01).sum()}\n")  # fmt: skip
    print(_common.markdown_table(header, rows))
    print(f"\nUniform scaling by {SCALES[0]:g} to {SCALES[-1]:g} ({len(SCALES)} factors): {(steps > 0).sum()} of "
          f"{len(records)} crystals change their edge count somewhere on that grid "
          f"({(steps[tied] > 0).sum()} of the {tied.sum()} with a tie margin <= tolerance)")  # fmt: skip
    print("\n" + _common.machine_line())


if __name__ == "__main__":
    main()

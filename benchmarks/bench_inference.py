"""Prediction cost of the inference options: ensemble vs one member, merged vs unmerged edges.

    python benchmarks/bench_inference.py [--n 400] [--repeats 3] [--device cpu|cuda]

Structures: N Materials Project crystals (shipped ``formation_energy`` ensemble) and N Castelli
perovskites (shipped ``perovskite_formation_energy``), parsed to pymatgen ``Structure`` objects
before timing; ``CGCNNPredictor.predict`` with batch 64 (graph building included). Variants run
interleaved in one process; prints medians and ratios as a markdown table.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common


def _timed_predict(predictor, structures, *, merge: bool, batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds for one ``predict`` pass with edge merging on or off, and its values."""
    import cgcnn_ase.inference.predictor as predictor_module
    from cgcnn_ase.graph.batch import collate

    predictor_module.collate = lambda graphs, elements, config, merge_edges=True, **options: collate(
        graphs, elements, config, merge_edges=merge, **options
    )
    try:
        t0 = time.perf_counter()
        values = predictor.predict(structures, batch_size=batch_size).values
        return time.perf_counter() - t0, values
    finally:
        predictor_module.collate = collate


@click.command()
@click.option("--shared", default=None, help="shared/ folder (default: ../shared from the repo root).")
@click.option("--n", default=400, show_default=True, help="structures per dataset.")
@click.option("--repeats", default=3, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def main(shared: str | None, n: int, repeats: int, device: str) -> None:
    import torch
    from pymatgen.core import Structure

    from cgcnn_ase import CGCNNPredictor

    torch.set_num_threads(1)
    _common.quiet()
    warnings.simplefilter("ignore")
    datasets = {"mp": "formation_energy", "perovskites": "perovskite_formation_energy"}
    rows = []
    for dataset, model in datasets.items():
        structures = [Structure.from_str(cif, fmt="cif") for _, cif in _common.load_cif_strings(shared, dataset, n)]
        full = CGCNNPredictor.from_pretrained(model, device=device)
        variants = {"as shipped (merged edges)": (full, True), "unmerged edges": (full, False)}
        if full.is_ensemble:
            variants["members=1 (merged edges)"] = (CGCNNPredictor.from_pretrained(model, members=1, device=device), True)
        times: dict[str, list[float]] = {name: [] for name in variants}
        values: dict[str, np.ndarray] = {}
        for name, (predictor, merge) in variants.items():  # warm-up
            _timed_predict(predictor, structures[:64], merge=merge, batch_size=64)
        for _ in range(repeats):
            for name, (predictor, merge) in variants.items():
                seconds, values[name] = _timed_predict(predictor, structures, merge=merge, batch_size=64)
                times[name].append(seconds)
        shipped = statistics.median(times["as shipped (merged edges)"])
        for name in variants:
            t = statistics.median(times[name])
            diff = float(np.abs(values[name] - values["as shipped (merged edges)"]).max())
            rows.append([f"`{model}` ({dataset})", name, f"{1e3 * t / n:.3f}", f"{t / shipped:.2f}x",
                         f"{diff:.1e}" if name == "unmerged edges" else ""])  # fmt: skip
    print(f"# Inference options, {n} structures per dataset, batch 64, {device}, median of {repeats}\n")
    header = ["model", "variant", "ms/structure", "time vs shipped", "max |diff| vs shipped"]
    print(_common.markdown_table(header, rows))
    print()
    print(_common.machine_line())


if __name__ == "__main__":
    main()

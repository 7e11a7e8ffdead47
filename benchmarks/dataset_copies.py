"""Copies of one crystal under several ids in the shipped models' datasets, and how they fall across each shipped
split (docs/models.md). For each training config: the groups of rows with the same graph
(``cgcnn_ase.graph.identity.same_graph_groups``), the groups left once pymatgen's StructureMatcher confirms them
(``cgcnn_ase.train.data.copies_of_crystals``, what training warns about), and the validation and test crystals of
the shipped model with a copy in its training split.

    python benchmarks/dataset_copies.py [formation_energy band_gap ...]   # about 30 s a config, needs ../shared

Configs read their data paths relative to the repository root, so run it from there.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

CONFIGS = ("formation_energy", "band_gap", "is_metal", "fermi_energy", "bulk_modulus", "shear_modulus",
           "poisson_ratio", "perovskite_formation_energy")  # fmt: skip


@click.command(help=__doc__)
@click.argument("configs", nargs=-1)
def main(configs: tuple[str, ...]) -> None:
    from cgcnn_ase.graph.identity import same_graph_groups
    from cgcnn_ase.train.config import load_config
    from cgcnn_ase.train.data import copies_of_crystals, prepare_data

    warnings.simplefilter("ignore")
    rows = []
    for name in configs or CONFIGS:
        data = prepare_data(load_config(_common.REPO_ROOT / "configs" / f"{name}.yaml"))
        store = data.store
        graphs = same_graph_groups(store.numbers, store.atom_offsets, store.centers, store.neighbors,
                                   store.distances, store.edge_offsets)  # fmt: skip
        start = time.perf_counter()
        copies = copies_of_crystals(data)
        seconds = time.perf_counter() - start
        folder = next((_common.REPO_ROOT / "pretrained_models").glob(f"{name}-*"))
        split = json.loads((folder / "split.json").read_text())
        part = {i: p for p in ("train", "val", "test") for i in split[p]}
        crossing = {"val": 0, "test": 0}
        for group in copies:
            if any(part.get(i) == "train" for i in group):
                for i in group:
                    if part.get(i) in crossing:
                        crossing[part[i]] += 1
        rows.append([name, len(store), f"{len(graphs)} ({sum(map(len, graphs))} rows)",
                     f"{len(copies)} ({sum(map(len, copies))} rows)", f"{crossing['val']} of {len(split['val'])}",
                     f"{crossing['test']} of {len(split['test'])}", f"{seconds:.1f}"])  # fmt: skip
    header = ["config", "crystals", "same graph: groups", "copies: groups", "val with a copy in train",
              "test with a copy in train", "copies_of_crystals s"]  # fmt: skip
    print(_common.markdown_table(header, rows))
    print("\n" + _common.machine_line())


if __name__ == "__main__":
    main()

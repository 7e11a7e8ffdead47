"""The third CPU pass, change by change: each switched off and on within one process, side by side.

``--n`` Materials Project CIFs (sampled reproducibly from the shared CSV), one torch thread. The host's
speed drifts between processes by 10-20% here, so every comparison runs in one process, in interleaved
rounds, and a speed-up is the median over rounds of the per-round ratio. Rows:

* **first pair search**: ``build_graph`` on every record with the ``symmetric`` policy's smaller first
  search (:data:`~cgcnn_ase.graph.neighbours.FIRST_SEARCH`) against one search over the full radius;
  also checks that the two give the same arrays, and reports how far the kept shells reach;
* **domain blocks**: the nearest-training-embedding search of ``formation_energy`` for ``--n`` crystals
  in 64-query blocks (the CPU default) against blocks of 1024;
* **edge blocks**: ``predict`` of records in memory, one network, at batch 32 and 256, and the five
  stacked members at batch 32, with eval-mode convolutions in blocks of 2^18 values against one block;
* **batch size**: ``predict`` of records in memory at batch 32 (the CPU default), 64 and 128;
* **all of the pass**: ``predict`` from the CIF files, one network, everything on against everything
  off (full-radius search, one Gaussian row per edge, domain blocks of 1024, one block of edges).

    python benchmarks/bench_cpu_pass.py [--n 1000] [--rounds 5] [--shared ../shared]
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common


def _rounds(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, in interleaved rounds (the order alternates each round)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _row(label: str, times: dict[str, list[float]], n: int, before: str, after: str) -> list[object]:
    ratio = statistics.median(b / a for b, a in zip(times[before], times[after]))
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    return [label, f"{rate[before]:,.0f}", f"{rate[after]:,.0f}", f"{ratio:.2f}x"]


@click.command()
@click.option("--n", default=1000, show_default=True)
@click.option("--rounds", default=5, show_default=True)
@click.option("--shared", default=None, help="shared/ folder (default: ../shared next to the repo).")
def main(n: int, rounds: int, shared: str | None) -> None:
    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.graph import neighbours
    from cgcnn_ase.graph.config import GraphConfig
    from cgcnn_ase.inference import predictor as predictor_module
    from cgcnn_ase.io.reader import read_record
    from cgcnn_ase.models import domain
    from cgcnn_ase.nn import ops

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    _, paths = _common.write_cifs(_common.load_cif_strings(shared, "mp", n))
    records = [read_record(p) for p in paths]
    first_search, collate, nearest_rows, block = (neighbours._first_search_radius, predictor_module.collate,
                                                  domain.nearest_rows, ops.CPU_BLOCK_VALUES)  # fmt: skip

    def setting(*, first: bool = True, distinct: bool = True, chunk: int | None = None, blocks: bool = True) -> None:
        """Switch the pass's changes on (the defaults) or off, in this process."""
        neighbours._first_search_radius = first_search if first else (lambda record, config: float(config.radius))
        predictor_module.collate = collate if distinct else (lambda *a, **k: collate(*a, **{**k, "distinct_distances": False}))
        domain.nearest_rows = (lambda *a, **k: nearest_rows(*a, **{**k, "chunk": k.get("chunk") or chunk})) if chunk else nearest_rows
        ops.CPU_BLOCK_VALUES = block if blocks else 1 << 40

    rows = []
    config = GraphConfig()

    def graphs(first: bool) -> list:
        setting(first=first)
        return [neighbours.build_graph(r, config, on_sparse="ignore") for r in records]

    full = graphs(False)
    same = sum(all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("centers", "neighbors", "distances"))
               for a, b in zip(graphs(True), full))  # fmt: skip
    # how far each crystal's kept shells reach, in units of (V/N)^(1/3), and where the first search cannot serve
    reach = np.array([g.distances.max() / (r.volume / len(r)) ** (1 / 3) for g, r in zip(full, records)])
    fallback = sum(g.n_sparse > 0 or g.distances.max() + config.tie_tolerance >= first_search(r, config)
                   for g, r in zip(full, records))  # fmt: skip
    reach_line = (f"kept shells reach {np.percentile(reach, 99):.2f} (V/N)^(1/3) in 99% of the crystals, "
                  f"{reach.max():.2f} at most; the full radius is searched for {fallback} of {n}")  # fmt: skip
    times = _rounds({"full radius": lambda: graphs(False), "first search": lambda: graphs(True)}, rounds)
    rows.append(_row(f"graphs: first pair search ({same} of {n} identical)", times, n, "full radius", "first search"))

    one = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    setting()
    batches = [collate(full[k : k + 32], one.model.elements, config, merge_edges=True, distinct_distances=True)
               for k in range(0, n, 32)]  # fmt: skip
    reach_line += (f"; batches of 32 (periodic images merged) hold {sum(len(b.edge_fea) for b in batches):,} "
                   f"distinct lengths for {sum(len(b.centers) for b in batches):,} edges")  # fmt: skip
    embeddings = one.embed(records)
    summary = one.model.domain
    times = _rounds({"1024": lambda: summary.distances(embeddings, chunk=1024),
                     "64": lambda: summary.distances(embeddings)}, rounds)  # fmt: skip
    rows.append(_row("domain search, 64-query blocks", times, n, "1024", "64"))

    ensemble = CGCNNPredictor.from_pretrained("formation_energy", device="cpu")
    for label, predictor, batch in (("one network", one, 32), ("one network", one, 256), ("5 stacked members", ensemble, 32)):
        predictor.predict(records[:64], batch_size=batch)

        def run(blocks: bool, predictor=predictor, batch=batch) -> None:
            setting(blocks=blocks)
            predictor.predict(records, batch_size=batch)

        times = _rounds({"one block": lambda: run(False), "blocks": lambda: run(True)}, rounds)
        rows.append(_row(f"edge blocks: {label}, records, batch {batch}", times, n, "one block", "blocks"))

    sizes = (32, 64, 128)  # the CPU default batch (CPU_BATCH) among its neighbours, everything on
    setting()
    batch_rows = []
    for label, predictor in (("one network", one), ("5 stacked members", ensemble)):
        times = _rounds({str(b): (lambda b=b, p=predictor: p.predict(records, batch_size=b)) for b in sizes}, rounds)
        batch_rows.append([label] + [f"{n / statistics.median(times[str(b)]):,.0f}" for b in sizes])

    def files(on: bool) -> None:
        setting(first=on, distinct=on, chunk=None if on else 1024, blocks=on)
        one.predict(paths)

    times = _rounds({"off": lambda: files(False), "on": lambda: files(True)}, rounds)
    rows.append(_row("all of the pass: one network, from CIF files", times, n, "off", "on"))
    setting()
    print(f"{n} MP crystals, one torch thread, {rounds} interleaved rounds in one process")
    print(reach_line)
    print(_common.markdown_table(["change", "structures/s without", "with", "speed-up (median of rounds)"], rows))
    print(_common.markdown_table(["records in memory, structures/s"] + [f"batch {b}" for b in sizes], batch_rows))
    print(_common.machine_line())


if __name__ == "__main__":
    main()

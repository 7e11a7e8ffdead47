"""An ensemble's members stacked into one pass (``stack_members``) against one pass per member.

``predict`` over ``--n`` Materials Project CIFs read beforehand (records in memory), one torch
thread, for each shipped ensemble named; rows timed in interleaved rounds, the speed-up being the
median over rounds of the per-round ratio (the machines here are shared and drift)::

    python benchmarks/bench_stacked.py [--n 1000] [--rounds 3] [--models formation_energy,is_metal] [--device cpu]
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@click.command()
@click.option("--n", default=1000, show_default=True)
@click.option("--rounds", default=3, show_default=True)
@click.option("--models", default="formation_energy,is_metal", show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--shared", default=None)
def main(n: int, rounds: int, models: str, batch_size: int, device: str, shared: str | None) -> None:
    import _common

    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.io.reader import read_records

    _common.quiet()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    records = [read_records(cif)[0] for _, cif in _common.load_cif_strings(shared, "mp", n)]
    print(f"{len(records)} MP crystals, batch {batch_size}, {device}, 1 thread, torch {torch.__version__}")
    print("| model | members one by one (structures/s) | stacked (structures/s) | speed-up | max |difference| (model units) |")
    print("|---|---|---|---|---|")
    for name in models.split(","):
        plain = CGCNNPredictor.from_pretrained(name, device=device)
        plain.stack_members = False
        stacked = CGCNNPredictor.from_pretrained(name, device=device)
        times: dict[str, list[float]] = {"plain": [], "stacked": []}
        results = {}
        for predictor in (plain, stacked):
            predictor.predict(records[:batch_size], batch_size=batch_size)  # warm-up
        for _ in range(rounds):
            for key, predictor in (("plain", plain), ("stacked", stacked)):
                start = time.perf_counter()
                results[key] = predictor.predict(records, batch_size=batch_size)
                times[key].append(time.perf_counter() - start)
        ratio = statistics.median(p / s for p, s in zip(times["plain"], times["stacked"]))
        diff = float(np.max(np.abs(results["plain"].member_values - results["stacked"].member_values)))
        rate = {k: len(records) / statistics.median(v) for k, v in times.items()}
        print(f"| `{name}` | {rate['plain']:,.0f} | {rate['stacked']:,.0f} | {ratio:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()

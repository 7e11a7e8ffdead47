"""matminer featurizer: batched ``featurize_dataframe`` vs calling ``featurize`` row by row.

    python benchmarks/bench_featurizer.py [--n 1000] [--model bulk_modulus] [--repeats 3]

Structures: the first N Materials Project crystals of ../shared/data/mp_cgcnn46k_kdmsit
(pymatgen ``Structure`` objects in a dataframe column). Prints a markdown table of median
wall times; both paths give the same numbers (checked).
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


@click.command()
@click.option("--shared", default=None, help="shared/ folder (default: ../shared from the repo root).")
@click.option("--n", default=1000, show_default=True, help="rows in the dataframe.")
@click.option("--model", default="bulk_modulus", show_default=True, help="shipped model name or model folder.")
@click.option("--repeats", default=3, show_default=True)
def main(shared: str | None, n: int, model: str, repeats: int) -> None:
    import pandas as pd
    import torch
    from pymatgen.core import Structure

    from cgcnn_ase.integrations.matminer import CGCNNFeaturizer

    torch.set_num_threads(1)
    _common.quiet()
    warnings.simplefilter("ignore")
    items = _common.load_cif_strings(shared, "mp", n, seed=0)
    df = pd.DataFrame({"structure": [Structure.from_str(text, fmt="cif") for _, text in items]})
    featurizer = CGCNNFeaturizer([model])
    featurizer.feature_labels()  # load the model outside the timings
    batched, single = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        out = featurizer.featurize_dataframe(df, "structure", pbar=False)
        batched.append(time.perf_counter() - t)
        t = time.perf_counter()
        rows = [featurizer.featurize(s) for s in df["structure"]]
        single.append(time.perf_counter() - t)
    column = featurizer.feature_labels()[0]
    assert np.allclose(out[column].to_numpy(), np.array(rows)[:, 0], atol=1e-6)
    b, s = statistics.median(batched), statistics.median(single)
    print(f"| {n} rows, model `{model}` | wall s (median of {repeats}) | rows/s |")
    print("|---|---|---|")
    print(f"| `featurize_dataframe` (batched, batch 256) | {b:.2f} | {n / b:.0f} |")
    print(f"| `featurize` row by row | {s:.2f} | {n / s:.0f} |")
    print(f"| speed-up | {s / b:.1f}x | |")
    print(f"\nMachine: {_common.machine_line()}")


if __name__ == "__main__":
    main()

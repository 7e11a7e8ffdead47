"""Which crystals the authors' checkpoints had seen: are the issue's accuracy targets a held-out comparison?

The training issue's test-MAE targets (formation energy 0.036 eV/atom, band gap 0.34 eV, bulk modulus 0.043 and
shear modulus 0.078 log10(GPa), Poisson ratio 0.027) are the authors' checkpoints scored on *our* test splits.
The checkpoints record their own training arguments: a random 60/20/20 split of the full 2017 datasets (e.g.
28,046 / 9,348 / 9,348 crystals for formation energy) and the best validation MAE they reached on their 20%.
Our datasets are subsets of the same 2017 data, so about 60% of our test crystals were in their training set.

This script measures, for each of the six regression checkpoints:

1. its MAE on our train (a seeded sample), val and test splits, next to the validation MAE stored in the
   checkpoint (crystals it had not trained on) and the paper's test MAE; and our shipped ensemble on the same
   crystals. A checkpoint that scores alike on all three of our splits, and better than on its own held-out
   crystals, had seen most of them;
2. for the elastic moduli, both models on crystals neither trained on: the 2025 Materials Project binaries of
   ``../shared/data/mp_elastic_binary2025_matcalc`` whose ids are absent from ``mp_elastic3k_kdmsit`` (that
   file's README: the rows held back from mp_elastic3k were removed from it), against the 2025 values; the
   binaries that are in mp_elastic3k are shown for contrast (labels recomputed since 2017 differ).

    python benchmarks/heldout_comparison.py [--train-sample 3000] [--json out.json]   # ~10 min, 2 cores; needs ../shared

Predictions of the authors' checkpoints use their element table and the ``original`` neighbour policy, as
``CGCNNPredictor.from_checkpoint`` loads them (docs/compatibility.md); the structures come from our datasets'
CIF text, parsed by this package's reader (site order may differ from pymatgen's for a few tied shells).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # puts the repository on sys.path

#: shipped model -> (authors' checkpoint, the paper's test MAE in the same units)
PAIRS = {
    "formation_energy": ("formation-energy-per-atom", 0.039),
    "band_gap": ("band-gap", 0.388),
    "fermi_energy": ("efermi", 0.363),
    "bulk_modulus": ("bulk-moduli", 0.054),
    "shear_modulus": ("shear-moduli", 0.087),
    "poisson_ratio": ("poisson-ratio", 0.030),
}


def _mae(predicted: np.ndarray, target: np.ndarray) -> float:
    ok = np.isfinite(predicted) & np.isfinite(target)
    return float(np.mean(np.abs(predicted[ok] - target[ok])))


def _values(predictor, records) -> np.ndarray:
    from cgcnn_ase.analysis.evaluation import predict_quietly

    return np.asarray(predict_quietly(predictor, records, batch_size=256, progress=False).values, dtype=float)


def _authors(name: str, shared: Path):
    from cgcnn_ase import CGCNNPredictor

    ref = shared / "reference" / "cgcnn"
    return CGCNNPredictor.from_checkpoint(ref / "pre-trained" / f"{name}.pth.tar",
                                          atom_init=ref / "data" / "sample-regression" / "atom_init.json",
                                          device="cpu")  # fmt: skip


def _checkpoint_record(name: str, shared: Path) -> dict:
    """The training arguments the authors' file stores (read as plain data) and its best validation MAE."""
    from cgcnn_ase.models.legacy import _torch_load  # weights_only, numpy scalars allowed: plain data

    saved = _torch_load(shared / "reference" / "cgcnn" / "pre-trained" / f"{name}.pth.tar", trusted=False)
    args = saved.get("args") or {}
    return {"epoch": int(saved["epoch"]), "best_val_mae": float(saved["best_mae_error"]),
            "split": [args.get("train_size"), args.get("val_size"), args.get("test_size")]}  # fmt: skip


def splits_table(shared: Path, train_sample: int, out: dict) -> None:
    """Part 1: the authors' checkpoints and our ensembles on our three splits."""
    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.analysis.evaluation import load_split_records

    print("| property | authors' split (train/val/test) | authors' own val MAE | paper | authors on our train | "
          "on our val | on our test | ours (ensemble) on our train | on our test |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for model, (checkpoint, paper) in PAIRS.items():
        _, parts = load_split_records(model, None, ("train", "val", "test"), workers=2)
        train = parts["train"]
        pick = np.sort(np.random.default_rng(0).choice(len(train.records), min(train_sample, len(train.records)),
                                                       replace=False))  # fmt: skip
        sets = {"train": ([train.records[i] for i in pick], np.asarray(train.targets)[pick]),
                "val": (parts["val"].records, np.asarray(parts["val"].targets)),
                "test": (parts["test"].records, np.asarray(parts["test"].targets))}  # fmt: skip
        authors, ours = _authors(checkpoint, shared), CGCNNPredictor.from_pretrained(model, device="cpu")
        row = {"checkpoint": _checkpoint_record(checkpoint, shared), "paper": paper, "n_train_sample": len(pick)}
        for split, (records, y) in sets.items():
            row[f"authors_{split}"] = _mae(_values(authors, records), y)
        for split in ("train", "test"):
            row[f"ours_{split}"] = _mae(_values(ours, sets[split][0]), sets[split][1])
        out[model] = row
        c = row["checkpoint"]
        print(f"| {model} | {'/'.join(map(str, c['split']))} | {c['best_val_mae']:.4f} | {paper} | "
              f"{row['authors_train']:.4f} | {row['authors_val']:.4f} | {row['authors_test']:.4f} | "
              f"{row['ours_train']:.4f} | **{row['ours_test']:.4f}** |", flush=True)


def unseen_binaries(shared: Path, out: dict) -> None:
    """Part 2: bulk, shear modulus and Poisson ratio of 2025 MP binaries, in mp_elastic3k or not."""
    import pandas as pd

    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.data.datasets import DatasetSpec, load_dataset

    path = shared / "data" / "mp_elastic_binary2025_matcalc" / "mp-binary-pbe-elasticity-2025.1.json.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bulk = load_dataset(DatasetSpec(path=str(path), target="bulk_modulus_vrh", transform="log10"))
        shear = load_dataset(DatasetSpec(path=str(path), target="shear_modulus_vrh", transform="log10"))
    if list(bulk.ids) != list(shear.ids):
        raise RuntimeError("bulk and shear rows differ")
    k, g = 10 ** np.asarray(bulk.targets), 10 ** np.asarray(shear.targets)
    targets = {"bulk_modulus": np.asarray(bulk.targets), "shear_modulus": np.asarray(shear.targets),
               "poisson_ratio": (3 * k - 2 * g) / (2 * (3 * k + g))}  # fmt: skip
    known = set(pd.read_csv(shared / "data" / "mp_elastic3k_kdmsit" / "data.csv.gz", usecols=["material_id"])["material_id"])
    seen = np.array([i in known for i in bulk.ids])
    print(f"\n{len(bulk.ids)} binaries: {int((~seen).sum())} absent from mp_elastic3k (neither model trained on them), "
          f"{int(seen.sum())} in it\n")  # fmt: skip
    print("| property | authors, absent | ours (ensemble), absent | ours, member 0, absent | authors, in mp_elastic3k | "
          "ours, in mp_elastic3k |\n|---|---|---|---|---|---|")  # fmt: skip
    out["binaries"] = {"n_absent": int((~seen).sum()), "n_in_mp_elastic3k": int(seen.sum())}
    for model in ("bulk_modulus", "shear_modulus", "poisson_ratio"):
        y = targets[model]
        a = _values(_authors(PAIRS[model][0], shared), bulk.records)
        e = _values(CGCNNPredictor.from_pretrained(model, device="cpu"), bulk.records)
        m0 = _values(CGCNNPredictor.from_pretrained(model, device="cpu", members=1), bulk.records)
        row = {"authors_absent": _mae(a[~seen], y[~seen]), "ours_absent": _mae(e[~seen], y[~seen]),
               "ours_member0_absent": _mae(m0[~seen], y[~seen]), "authors_in": _mae(a[seen], y[seen]),
               "ours_in": _mae(e[seen], y[seen])}  # fmt: skip
        out["binaries"][model] = row
        print(f"| {model} | {row['authors_absent']:.4f} | **{row['ours_absent']:.4f}** | {row['ours_member0_absent']:.4f} | "
              f"{row['authors_in']:.4f} | {row['ours_in']:.4f} |", flush=True)


@click.command()
@click.option("--train-sample", default=3000, show_default=True, help="Training crystals scored per property.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the numbers here.")
@click.option("--part", type=click.Choice(["all", "splits", "binaries"]), default="all", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="torch CPU threads.")
def main(train_sample: int, json_out: str | None, part: str, threads: int) -> None:
    """Authors' checkpoints and our ensembles on our splits and on crystals neither trained on."""
    import torch

    shared = Path(os.environ.get("CGCNN_SHARED", _common.DEFAULT_SHARED))
    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")
    if not (shared / "reference" / "cgcnn" / "pre-trained").is_dir():
        raise SystemExit(f"needs ../shared (looked in {shared}; CGCNN_SHARED overrides)")
    out: dict = {}
    if part in ("all", "splits"):
        splits_table(shared, train_sample, out)
    if part in ("all", "binaries"):
        unseen_binaries(shared, out)
    if json_out:
        Path(json_out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

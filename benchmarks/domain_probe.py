"""What the applicability-domain percentile says about textbook and near-training crystals.

For the shipped ``formation_energy`` ensemble (member 0's embeddings, as the domain summary uses):

* whether rocksalt MgO (mp-1265), CaO (mp-2605), KCl (mp-23193) and NaCl (mp-22862) are in its data, and in
  which split;
* their ``domain_percentile`` (ase.build cells) with the shipped 2000-embedding k-centre summary, and against
  all training embeddings (the validation split's nearest-neighbour distances as the reference);
* 50 training crystals strained by +2% and by -2%: how many of the 100 sit below the 80th percentile, both ways.

    python benchmarks/domain_probe.py        # about 2 minutes at one thread; needs ../shared
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

ROCKSALTS = {"MgO": ("mp-1265", 4.21), "CaO": ("mp-2605", 4.81), "KCl": ("mp-23193", 6.29), "NaCl": ("mp-22862", 5.64)}


def _nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = []
    for i in range(0, len(a), 256):
        out.append(np.sqrt(((a[i : i + 256, None, :] - b[None]) ** 2).sum(-1).min(1)))
    return np.concatenate(out)


def main() -> None:
    import pandas as pd
    import torch
    from ase.build import bulk

    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.analysis.evaluation import load_split_records
    from cgcnn_ase.models.registry import model_folder

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    domain = predictor.model.domain
    split = json.loads((model_folder("formation_energy") / "split.json").read_text())
    where = {i: part for part in ("train", "val", "test") for i in split[part]}
    ids = set(pd.read_csv(_common.shared_path(None, _common.MP_CSV), usecols=["material_id"])["material_id"])
    _, parts = load_split_records("formation_energy", None, ("train", "val"), workers=1)
    z = lambda x: (x - domain.mean) / domain.scale  # noqa: E731 - the summary's standardisation
    train, val = z(predictor.embed(parts["train"].records, batch_size=256)), z(predictor.embed(parts["val"].records))
    reference = np.sort(_nearest(val, train))
    crystals = {name: bulk(name, "rocksalt", a=a) for name, (_, a) in ROCKSALTS.items()}
    shipped = predictor.predict(list(crystals.values())).domain_percentile
    full = np.searchsorted(reference, _nearest(z(predictor.embed(list(crystals.values()))), train)) / len(reference) * 100
    print("| crystal | in the data | split | percentile, shipped summary | percentile, all training embeddings |")
    print("|---|---|---|---|---|")
    for (name, (mid, _)), a, b in zip(ROCKSALTS.items(), shipped, full):
        print(f"| {name} ({mid}) | {mid in ids} | {where.get(mid, '-')} | {a:.1f} | {b:.1f} |")
    rng = np.random.default_rng(0)
    picked = [parts["train"].records[i] for i in rng.choice(len(parts["train"].records), 50, replace=False)]
    strained = [replace(r, cell=r.cell * (1 + s)) for r in picked for s in (0.02, -0.02)]
    shipped = predictor.predict(strained).domain_percentile
    full = np.searchsorted(reference, _nearest(z(predictor.embed(strained)), train)) / len(reference) * 100
    print(f"\n100 training crystals strained by ±2%: below the 80th percentile {int((shipped < 80).sum())} with the shipped "
          f"summary, {int((full < 80).sum())} against all training embeddings (max {full.max():.1f})")  # fmt: skip


if __name__ == "__main__":
    main()

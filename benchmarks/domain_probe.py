"""What the applicability-domain percentile says about textbook and near-training crystals, per normalisation.

For the shipped ``formation_energy`` ensemble (member 0's embeddings, as the domain summary uses):

* whether rocksalt MgO (mp-1265), CaO (mp-2605), KCl (mp-23193) and NaCl (mp-22862) are in its data, and in
  which split;
* their ``domain_percentile`` (ase.build cells), the number of 50 training crystals strained by +2% and by -2%
  (100) below the 80th percentile, and the share of test crystals above the 95th, for each way of normalising
  the distance that was measured: stored training embeddings (2000 k-centre subset, 10000, all), k-th
  neighbour, whitening, cosine, size classes of the reference (atoms per formula unit);
* the median validation distance by formula-unit size (why size classes);
* what the shipped summary gives.

    python benchmarks/uncertainty_cache.py formation_energy   # once: embeddings of every split (~3 min)
    python benchmarks/domain_probe.py                         # about 1 minute at one thread; needs ../shared
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 - also puts the repository on sys.path
import uncertainty_cache as cache  # noqa: E402
from uncertainty_select import _sizes  # noqa: E402

ROCKSALTS = {"MgO": ("mp-1265", 4.21), "CaO": ("mp-2605", 4.81), "KCl": ("mp-23193", 6.29), "NaCl": ("mp-22862", 5.64)}


def _probes(predictor, c: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, list, list[str]]:
    """Embeddings of the ase rocksalts and of the 100 strained training crystals, and the latter's sizes."""
    from ase.build import bulk

    from cgcnn_ase.analysis.evaluation import load_split_records

    _, parts = load_split_records("formation_energy", None, ("train",), workers=1)
    records = parts["train"].records
    idx = np.random.default_rng(0).choice(len(records), 50, replace=False)  # as tests/test_domain.py
    strained = [replace(records[i], cell=records[i].cell * (1 + s)) for i in idx for s in (0.02, -0.02)]
    rocksalts = [bulk(name, "rocksalt", a=a) for name, (_, a) in ROCKSALTS.items()]
    sizes = np.repeat(_sizes(c["train_comp"][idx], c["train_natoms"][idx]), 2)
    labels = [f"{parts['train'].ids[i]} {s:+.0%}" for i in idx for s in (0.02, -0.02)]
    return predictor.embed(rocksalts), predictor.embed(strained, on_sparse="ignore"), sizes, strained, labels


def _variant(label, c, probes, *, transform=None, subset=None, kth=1, edges=()):
    """One normalisation: percentiles of the probes against the validation reference (val→train distances)."""
    import cgcnn_ase.models.domain as dm

    from cgcnn_ase.models.domain import DomainSummary, kcenter_subset, nearest_rows

    base = DomainSummary.build(c["train_emb"], c["val_emb"], max_centers=None, max_bytes=None)
    f = transform or (lambda x: base.standardise(x))
    train = f(c["train_emb"])
    if subset is not None:
        train = train[kcenter_subset(base.standardise(c["train_emb"]).astype(np.float32), subset)]
    dist = lambda x: nearest_rows(f(x), train, kth)[1][:, kth - 1]  # noqa: E731
    val_sizes = _sizes(c["val_comp"], c["val_natoms"])
    ref = dist(c["val_emb"])
    order = np.argsort(ref)
    summary = replace(base, reference=ref[order], reference_sizes=val_sizes[order])
    saved, dm.SIZE_EDGES = dm.SIZE_EDGES, tuple(edges)
    try:
        rock = summary.percentiles(dist(probes[0]), [2] * 4)
        strained = summary.percentiles(dist(probes[1]), probes[2])
        test = summary.percentiles(dist(c["test_emb"]), _sizes(c["test_comp"], c["test_natoms"]))
    finally:
        dm.SIZE_EDGES = saved
    cells = " | ".join(f"{v:.1f}" for v in rock)
    print(f"| {label} | {cells} | {int((strained < 80).sum())} | {strained.max():.1f} | {100 * np.mean(test > 95):.1f}% |")


def main() -> None:
    import pandas as pd
    import torch

    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.models.registry import model_folder

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    c = cache.load("formation_energy")
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    split = json.loads((model_folder("formation_energy") / "split.json").read_text())
    where = {i: part for part in ("train", "val", "test") for i in split[part]}
    ids = set(pd.read_csv(_common.shared_path(None, _common.MP_CSV), usecols=["material_id"])["material_id"])
    print("| crystal | in the data | split |\n|---|---|---|")
    for name, (mid, _) in ROCKSALTS.items():
        print(f"| {name} ({mid}) | {mid in ids} | {where.get(mid, '-')} |")
    probes = _probes(predictor, c)
    base = predictor.model.domain
    val_d = base.distances(c["val_emb"])
    sizes = _sizes(c["val_comp"], c["val_natoms"])
    print("\nvalidation distance to the training set by atoms per formula unit (median; 80th percentile; crystals):")
    for lo, hi in ((1, 2), (3, 4), (5, 8), (9, 16), (17, 10**6)):
        m = (sizes >= lo) & (sizes <= hi)
        print(f"  {lo}-{hi if hi < 10**6 else ''}: {np.median(val_d[m]):.2f}; {np.quantile(val_d[m], 0.8):.2f}; {m.sum()}")
    print("\n| normalisation | MgO | CaO | KCl | NaCl | strained below 80 (of 100) | strained max | test above 95 |")
    print("|---|---|---|---|---|---|---|---|")
    mean = c["train_emb"].astype(np.float64).mean(0)
    cov = np.cov(c["train_emb"].astype(np.float64).T)
    w, v = np.linalg.eigh(cov)
    white = v / np.sqrt(np.maximum(w, w.max() * 1e-4))
    _variant("2000 k-centre embeddings (before)", c, probes, subset=2000)
    _variant("10000 k-centre embeddings", c, probes, subset=10000)
    _variant("all training embeddings", c, probes)
    _variant("all, 2nd neighbour", c, probes, kth=2)
    _variant("all, whitened (Mahalanobis)", c, probes, transform=lambda x: (np.asarray(x, float) - mean) @ white)
    _variant("all, cosine", c, probes, transform=lambda x: (np.asarray(x, float) - mean)
             / np.linalg.norm(np.asarray(x, float) - mean, axis=1, keepdims=True))  # fmt: skip
    for edges in ((2,), (2, 8), (2, 4, 8, 16)):
        _variant(f"all, size classes {edges}", c, probes, edges=edges)
    shipped = predictor.predict(probes[3], on_sparse="ignore").domain_percentile
    from ase.build import bulk

    rock = predictor.predict([bulk(n, "rocksalt", a=a) for n, (_, a) in ROCKSALTS.items()]).domain_percentile
    worst = [f"{probes[4][i]}: {shipped[i]:.1f}" for i in np.argsort(shipped)[::-1][:3]]
    print(f"\nshipped summary: rocksalts {np.round(rock, 1).tolist()}; strained below 80: {int((shipped < 80).sum())} "
          f"of 100 (highest: {', '.join(worst)})")


if __name__ == "__main__":
    _common.positional_cli(__doc__)
    main()

"""Cache what the uncertainty studies need from a shipped ensemble: one pass of the networks per split.

For each split (train, val, test) of a model's own data and split, stores in ``CACHE/<model>.npz``:
``<split>_emb`` (member 0's crystal embeddings, raw units, float32), ``<split>_y`` (targets),
``<split>_natoms``, ``<split>_comp`` (element fractions, column Z) and, for val and test, ``<split>_members`` (each member's prediction, model units).
The training split runs member 0 alone (only its embeddings are used).

    python benchmarks/uncertainty_cache.py formation_energy band_gap ...   # one torch thread; needs ../shared

Used by ``benchmarks/uncertainty_select.py`` and ``benchmarks/domain_probe.py``; nothing here is imported by
the package.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("CGCNN_UQ_CACHE", "/tmp/cgcnn_uq_cache"))
REGRESSION_ENSEMBLES = ("formation_energy", "band_gap", "fermi_energy", "bulk_modulus", "shear_modulus",
                        "poisson_ratio")  # fmt: skip


def _outputs(predictor, records, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Member values (n, M) and member 0's embeddings (n, d) of ``records`` (failed graphs: NaN rows)."""
    from cgcnn_ase.graph.neighbours import CrystalGraph
    from cgcnn_ase.inference.parallel import iter_graphs
    from cgcnn_ase.io.reader import cif_reader_for_policy

    spec = predictor.model.spec
    graphs = [g for _, g in iter_graphs(records, config=spec.graph, elements=predictor.model.elements,
                                        cif_reader=cif_reader_for_policy(spec.graph.neighbor_policy),
                                        on_sparse="ignore")]  # fmt: skip
    n, m, width = len(graphs), predictor.model.n_members, spec.architecture.get("atom_fea_len", 64)
    values, emb = np.full((n, m), np.nan), np.full((n, width), np.nan, dtype=np.float32)
    good = [i for i, g in enumerate(graphs) if isinstance(g, CrystalGraph)]
    for start in range(0, len(good), batch_size):
        idx = good[start : start + batch_size]
        member_values, _, features, _ = predictor._run([graphs[i] for i in idx], False, True)
        values[idx] = member_values.T
        emb[idx] = features
    return values, emb


def _fractions(records) -> np.ndarray:
    """Element fractions of each record, shape (n, 119), float32 (column Z)."""
    out = np.zeros((len(records), 119), dtype=np.float32)
    for i, record in enumerate(records):
        np.add.at(out[i], np.asarray(record.numbers), 1.0 / len(record.numbers))
    return out


def collect(name: str, *, force: bool = False) -> Path:
    """Write (or reuse) ``CACHE/<name>.npz`` for a shipped ensemble ``name``."""
    import torch

    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.analysis.evaluation import load_split_records

    path = CACHE / f"{name}.npz"
    if path.is_file() and not force:
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    _, parts = load_split_records(name, None, ("train", "val", "test"), workers=1)
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        predictor = CGCNNPredictor.from_pretrained(name, device="cpu", members=1 if split == "train" else None)
        values, emb = _outputs(predictor, parts[split].records)
        arrays[f"{split}_emb"] = emb
        arrays[f"{split}_y"] = np.asarray(parts[split].targets, dtype=np.float64)
        arrays[f"{split}_natoms"] = np.array([len(r) for r in parts[split].records])
        arrays[f"{split}_ids"] = np.array(parts[split].ids)
        arrays[f"{split}_comp"] = _fractions(parts[split].records)
        if split != "train":
            arrays[f"{split}_members"] = values
        print(f"{name} {split}: {len(emb)} crystals", flush=True)
    np.savez(path, **arrays)
    return path


def load(name: str) -> dict[str, np.ndarray]:
    """The cached arrays of ``name`` (collected first when missing)."""
    with np.load(collect(name)) as fh:
        return {k: fh[k] for k in fh.files}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import _common

    for model in _common.positional_cli(__doc__, REGRESSION_ENSEMBLES, "MODEL") or REGRESSION_ENSEMBLES:
        collect(model)

"""The original CGCNN pipeline's approach, re-written here as a speed baseline.

Written from the paper (Xie & Grossman, PRL 120, 145301, 2018) and a plain description
of what the original code does; no code was copied from it. It reproduces the *costs*
of the original approach:

* reading: ``pymatgen.core.Structure.from_file`` per CIF;
* graph: ``Structure.get_all_neighbors(8.0, include_index=True)``, then per atom a Python
  ``sorted(..., key=distance)``, the first 12 kept, padded with (index 0, 9 Å) when fewer,
  then the Gaussian expansion ``exp(-(d - μ)² / 0.2²)`` in numpy, per structure;
* atom features: one ``atom_init.json`` lookup per atom, stacked;
* batching: padded ``(N, 12)`` neighbour arrays concatenated with index offsets, and a
  list of per-crystal index tensors for pooling (batches of 256);
* model: a dense forward on the ``(N, 12, 2A + B)`` tensor, from Eqs. 5 and the pooling
  of the paper, with the same weights as ours (parameter names of the authors' files).

Usage (as a script, it predicts the given CIF files and prints a CSV)::

    python benchmarks/original_baseline.py --shared ../shared file1.cif file2.cif ...
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

RADIUS = 8.0
MAX_NBR = 12
DMIN, STEP = 0.0, 0.2
GAUSSIAN_CENTERS = np.arange(DMIN, RADIUS + STEP, STEP)  # 41 centres, 0 .. 8 Å


# -- graph ---------------------------------------------------------------------------------
def gaussian(distances: np.ndarray) -> np.ndarray:
    """``exp(-(d - μ_k)² / σ²)`` with σ = step, on the padded (N, 12) distance array."""
    return np.exp(-((distances[..., np.newaxis] - GAUSSIAN_CENTERS) ** 2) / STEP**2)


def original_graph(structure) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour indices (N, 12) int and Gaussian features (N, 12, 41) float64 of a pymatgen Structure."""
    all_nbrs = structure.get_all_neighbors(RADIUS, include_index=True)
    all_nbrs = [sorted(nbrs, key=lambda x: x[1]) for nbrs in all_nbrs]
    idx, dist = [], []
    for nbrs in all_nbrs:
        n_pad = max(MAX_NBR - len(nbrs), 0)
        if n_pad:
            warnings.warn("not enough neighbours within the radius; padding", UserWarning, stacklevel=2)
        idx.append([x[2] for x in nbrs[:MAX_NBR]] + [0] * n_pad)
        dist.append([x[1] for x in nbrs[:MAX_NBR]] + [RADIUS + 1.0] * n_pad)
    return np.array(idx), gaussian(np.array(dist))


# -- atom features ---------------------------------------------------------------------------
class AtomInit:
    """Element vectors from an ``atom_init.json`` (key: atomic number as a string)."""

    def __init__(self, path: str | Path) -> None:
        with open(path) as f:
            table = json.load(f)
        self.vectors = {int(z): np.array(v, dtype=float) for z, v in table.items()}

    def get(self, z: int) -> np.ndarray:
        return self.vectors[z]


def load_item(path: str, atom_init: AtomInit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One CIF -> (atom_fea (N, 92), nbr_fea (N, 12, 41), nbr_idx (N, 12)) tensors."""
    from pymatgen.core import Structure

    structure = Structure.from_file(path)
    atom_fea = np.vstack([atom_init.get(structure[i].specie.number) for i in range(len(structure))])
    nbr_idx, nbr_fea = original_graph(structure)
    return torch.Tensor(atom_fea), torch.Tensor(nbr_fea), torch.LongTensor(nbr_idx)


def collate_pool(items: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Concatenate padded graphs; neighbour indices shifted; per-crystal atom index lists."""
    atom_feas, nbr_feas, nbr_idxs, crystal_atom_idx = [], [], [], []
    base = 0
    for atom_fea, nbr_fea, nbr_idx in items:
        n = atom_fea.shape[0]
        atom_feas.append(atom_fea)
        nbr_feas.append(nbr_fea)
        nbr_idxs.append(nbr_idx + base)
        crystal_atom_idx.append(torch.LongTensor(np.arange(n) + base))
        base += n
    return torch.cat(atom_feas, 0), torch.cat(nbr_feas, 0), torch.cat(nbr_idxs, 0), crystal_atom_idx


# -- model ---------------------------------------------------------------------------------
class DenseCGCNN(nn.Module):
    """Inference-only CGCNN on padded (N, M) neighbour arrays, from the paper's equations.

    Built from a state dict with the authors' parameter names (``embedding``,
    ``convs.k.fc_full``, ``convs.k.bn1``, ``convs.k.bn2``, ``conv_to_fc``, ``fcs.k``,
    ``fc_out``); regression (mean pooling) models only.
    """

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.p = {k: v.detach().float() for k, v in state.items()}
        self.n_conv = len({k.split(".")[1] for k in state if k.startswith("convs.")})
        self.n_fcs = len({k.split(".")[1] for k in state if k.startswith("fcs.")})
        self.a = self.p["embedding.weight"].shape[0]

    def _bn(self, x: torch.Tensor, name: str) -> torch.Tensor:
        p = self.p
        return nn.functional.batch_norm(
            x,
            p[f"{name}.running_mean"],
            p[f"{name}.running_var"],
            p[f"{name}.weight"],
            p[f"{name}.bias"],
            False,
            0.0,
            1e-5,
        )

    def _lin(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return nn.functional.linear(x, self.p[f"{name}.weight"], self.p[f"{name}.bias"])

    def forward(self, atom_fea, nbr_fea, nbr_idx, crystal_atom_idx) -> torch.Tensor:
        softplus = nn.functional.softplus
        x = self._lin(atom_fea, "embedding")
        n, m = nbr_idx.shape
        a = self.a
        for k in range(self.n_conv):
            # z_ij = v_i ⊕ v_j ⊕ u_ij on the padded (N, M, 2A + B) tensor
            z = torch.cat([x.unsqueeze(1).expand(n, m, a), x[nbr_idx, :], nbr_fea], dim=2)
            gated = self._bn(self._lin(z, f"convs.{k}.fc_full").view(-1, 2 * a), f"convs.{k}.bn1").view(n, m, 2 * a)
            filt, core = gated.chunk(2, dim=2)
            summed = torch.sum(torch.sigmoid(filt) * softplus(core), dim=1)
            x = softplus(x + self._bn(summed, f"convs.{k}.bn2"))
        crys = torch.cat([torch.mean(x[idx], dim=0, keepdim=True) for idx in crystal_atom_idx], dim=0)
        h = softplus(self._lin(softplus(crys), "conv_to_fc"))
        for k in range(self.n_fcs):
            h = softplus(self._lin(h, f"fcs.{k}"))
        return self._lin(h, "fc_out").squeeze(1)


def load_dense_model(model_path: str | Path, atom_init_path: str | Path) -> tuple[DenseCGCNN, float, float]:
    """The authors' checkpoint as a :class:`DenseCGCNN`, with the target mean and std.

    Weights are read through this project's safe loader (same tensors as a plain
    ``torch.load``), which is not part of the timed pipeline.
    """
    from cgcnn_ase.models.registry import load_model as load_checkpoint

    loaded = load_checkpoint(model_path, atom_init=atom_init_path)
    if loaded.spec.task != "regression":
        raise ValueError("the dense baseline supports regression checkpoints only")
    model = DenseCGCNN(loaded.network.state_dict()).eval()
    return model, loaded.spec.normalizer_mean, loaded.spec.normalizer_std


def predict_files(
    paths: Sequence[str], model: DenseCGCNN, atom_init: AtomInit, mean: float, std: float, batch_size: int = 256
) -> tuple[np.ndarray, dict[str, float]]:
    """The original approach end to end; returns predictions and seconds per stage."""
    stages = {"read + graph + features": 0.0, "collate": 0.0, "model": 0.0}
    out = []
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for start in range(0, len(paths), batch_size):
            t0 = time.perf_counter()
            items = [load_item(p, atom_init) for p in paths[start : start + batch_size]]
            t1 = time.perf_counter()
            batch = collate_pool(items)
            t2 = time.perf_counter()
            out.append(model(*batch).numpy() * std + mean)
            t3 = time.perf_counter()
            stages["read + graph + features"] += t1 - t0
            stages["collate"] += t2 - t1
            stages["model"] += t3 - t2
    return np.concatenate(out).astype(np.float64), stages


@click.command(help="Predict formation energies of CIF FILES the original CGCNN way (speed baseline).")
@click.argument("files", nargs=-1, required=True)
@click.option("--shared", default=None, help="shared/ folder (default: ../shared from the repo root).")
@click.option("--batch-size", default=256, show_default=True)
def main(files: tuple[str, ...], shared: str | None, batch_size: int) -> None:
    model, mean, std = load_dense_model(
        _common.shared_path(shared, _common.ORIGINAL_MODEL), _common.shared_path(shared, _common.ATOM_INIT)
    )
    atom_init = AtomInit(_common.shared_path(shared, _common.ATOM_INIT))
    values, _ = predict_files(list(files), model, atom_init, mean, std, batch_size)
    print("id,formation_energy (eV/atom)")
    for path, value in zip(files, values):
        print(f"{path},{value:.6g}")


if __name__ == "__main__":
    main()

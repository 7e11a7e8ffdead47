"""Shared fixtures: the ../shared reference assets, test crystals, and small models."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from cgcnn_ase.models.folder import LoadedModel, ModelSpec, save_model_folder
from cgcnn_ase.graph.elements import generate_cgcnn_table
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.nn.network import CrystalGraphConvNet

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CGCNN_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference" / "cgcnn"
ATOM_INIT = REFERENCE / "data" / "sample-regression" / "atom_init.json"


def require_shared(path: Path = REFERENCE) -> Path:
    """Skip the calling test when the ../shared reference assets are absent (a user's fresh clone)."""
    if not path.exists():
        if os.environ.get("CGCNN_REQUIRE_SHARED"):
            pytest.fail(f"reference assets required (CGCNN_REQUIRE_SHARED is set) but missing: {path}")
        pytest.skip(f"reference assets not found at {path} (they live in ../shared beside the repo; CI provides them)")
    return path


@pytest.fixture(scope="session")
def reference_cifs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 297 reference CIFs, extracted once per session."""
    archive = require_shared(REFERENCE / "structures" / "cifs.tar.gz")
    target = tmp_path_factory.mktemp("reference")
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target / "cifs"


def perovskite(a: float = 3.9) -> Atoms:
    """Cubic SrTiO3 (5 atoms), whose 12th-neighbour shells are full of exact ties."""
    return Atoms(
        "SrTiO3",
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        cell=np.eye(3) * a,
        pbc=True,
    )


def rattled(atoms: Atoms, stdev: float = 0.05, seed: int = 0) -> Atoms:
    """A copy with positions displaced by Gaussian noise (Å), so no neighbour distances tie."""
    out = atoms.copy()
    out.rattle(stdev=stdev, seed=seed)
    return out


@pytest.fixture
def crystals() -> list[Atoms]:
    """A few small, varied, perturbed crystals (no exact distance ties)."""
    return [
        rattled(perovskite(), seed=1),
        rattled(bulk("NaCl", "rocksalt", a=5.64) * (1, 1, 2), seed=2),
        rattled(bulk("Si", "diamond", a=5.43), seed=3),
        rattled(bulk("Fe", "bcc", a=2.87, cubic=True), seed=4),
        rattled(bulk("ZnO", "wurtzite", a=3.25, c=5.2), seed=5),
    ]


def random_model(*, task: str = "regression", readout: str = "mean", seed: int = 0, policy: str = "symmetric") -> LoadedModel:
    """A small CGCNN with random weights and non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    config = GraphConfig(neighbor_policy=policy)
    architecture = dict(
        orig_atom_fea_len=92, nbr_fea_len=config.n_gaussians, atom_fea_len=16, n_conv=2, h_fea_len=16, n_h=2,
        task=task, readout=readout, conv="gated",
    )  # fmt: skip
    network = CrystalGraphConvNet(**architecture)
    with torch.no_grad():
        for name, buffer in network.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.5)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    spec = ModelSpec(
        name=f"random-{task}-{readout}",
        property="formation_energy" if task == "regression" else "is_metal",
        units="eV/atom" if task == "regression" else "probability",
        task=task,
        architecture=architecture,
        graph=config,
        normalizer_mean=-1.0 if task == "regression" else 0.0,
        normalizer_std=0.5 if task == "regression" else 1.0,
        positive_class="metal" if task == "classification" else None,
    )
    return LoadedModel(spec=spec, network=network.eval(), elements=generate_cgcnn_table())


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random regression model saved in this project's folder format."""
    return save_model_folder(tmp_path_factory.mktemp("models") / "random", random_model())


@pytest.fixture(scope="session")
def atomwise_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random atomwise-readout regression model folder."""
    return save_model_folder(tmp_path_factory.mktemp("models") / "atomwise", random_model(readout="atomwise", seed=1))

"""Property-based tests (hypothesis) over random valid crystals: finite predictions,
invariances, determinism within and across processes, independence of batch composition."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cgcnn_ase.inference.predictor import CGCNNPredictor

from .conftest import random_model

ELEMENTS = [1, 3, 6, 8, 11, 13, 14, 16, 20, 22, 26, 29, 31, 38, 47, 56, 74, 83]
TOL = 2e-5


@st.composite
def crystals(draw: st.DrawFn, max_atoms: int = 5) -> Atoms:
    """A random, well-conditioned periodic crystal whose atoms are at least 1.2 Å apart."""
    lengths = draw(st.lists(st.floats(3.0, 7.0), min_size=3, max_size=3))
    angles = draw(st.lists(st.floats(70.0, 110.0), min_size=3, max_size=3))
    from ase.geometry import cellpar_to_cell

    cell = cellpar_to_cell([*lengths, *angles])
    if abs(np.linalg.det(cell)) < 0.4 * np.prod(lengths):
        cell = np.diag(lengths)  # fall back to an orthorhombic cell for nearly flat draws
    n = draw(st.integers(1, max_atoms))
    numbers = draw(st.lists(st.sampled_from(ELEMENTS), min_size=n, max_size=n))
    frac = np.array(draw(st.lists(st.lists(st.floats(0, 1, exclude_max=True), min_size=3, max_size=3), min_size=n, max_size=n)))
    atoms = Atoms(numbers=numbers, scaled_positions=frac, cell=cell, pbc=True)
    # drop atoms that come too close to an earlier one (minimum-image distances)
    keep: list[int] = []
    for i in range(n):
        if all(atoms.get_distance(i, j, mic=True) > 1.2 for j in keep):
            keep.append(i)
    return atoms[keep]


PROFILE = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@pytest.fixture(scope="module")
def predictor() -> CGCNNPredictor:
    return CGCNNPredictor(random_model(seed=31), device="cpu")


def _value(predictor: CGCNNPredictor, atoms: Atoms) -> float:
    return float(predictor.predict(atoms, on_sparse="ignore").values[0])


@PROFILE
@given(atoms=crystals(), data=st.data())
def test_finite_and_invariant(predictor, atoms, data):
    base = _value(predictor, atoms)
    assert np.isfinite(base)
    order = data.draw(st.permutations(range(len(atoms))))
    assert abs(_value(predictor, atoms[list(order)]) - base) < TOL
    shifted = atoms.copy()
    shifted.translate(data.draw(st.lists(st.floats(-10, 10), min_size=3, max_size=3)))
    assert abs(_value(predictor, shifted) - base) < TOL
    from scipy.spatial.transform import Rotation

    rotated = atoms.copy()
    rotation = Rotation.from_rotvec(data.draw(st.lists(st.floats(-3, 3), min_size=3, max_size=3))).as_matrix()
    rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=True)
    assert abs(_value(predictor, rotated) - base) < TOL
    reps = data.draw(st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2)))
    assert abs(_value(predictor, atoms * reps) - base) < TOL


@PROFILE
@given(batch=st.lists(crystals(max_atoms=3), min_size=2, max_size=6), batch_size=st.integers(1, 4))
def test_batch_composition_and_repeat(predictor, batch, batch_size):
    singles = np.array([_value(predictor, a) for a in batch])
    together = predictor.predict(batch, batch_size=batch_size, on_sparse="ignore").values
    np.testing.assert_allclose(together, singles, atol=TOL)
    again = predictor.predict(batch, batch_size=batch_size, on_sparse="ignore").values
    np.testing.assert_array_equal(again, together)  # same process: bit-identical


def test_same_result_across_processes(model_folder, tmp_path):
    """A fresh interpreter loading the same model folder gives bit-identical numbers."""
    from ase.build import bulk
    from ase.io import write

    atoms = bulk("GaAs", "zincblende", a=5.65)
    atoms.rattle(0.03, seed=1)
    path = tmp_path / "gaas.extxyz"
    write(path, atoms)
    here = CGCNNPredictor.from_checkpoint(model_folder, device="cpu").predict(path).values.tolist()
    code = (  # same torch thread count: a different count may change float rounding (1e-7)
        f"import json, sys, torch; torch.set_num_threads({torch.get_num_threads()}); from cgcnn_ase import CGCNNPredictor; "
        f"print(json.dumps(CGCNNPredictor.from_checkpoint({str(model_folder)!r}, device='cpu').predict({str(path)!r}).values.tolist()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here

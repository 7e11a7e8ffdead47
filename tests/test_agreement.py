"""The predictor, ASE calculator, matminer featurizer and CLI give the same numbers (1e-6)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from ase.io import read, write
from click.testing import CliRunner

from cgcnn_ase.integrations.ase import CGCNNCalculator
from cgcnn_ase.cli import main
from cgcnn_ase.integrations.matminer import CGCNNFeaturizer
from cgcnn_ase.inference.predictor import CGCNNPredictor


def test_all_four_entry_points_agree(model_folder, crystals, tmp_path):
    paths = []
    for k, atoms in enumerate(crystals):
        paths.append(str(tmp_path / f"c{k}.extxyz"))
        write(paths[-1], atoms)
    api = CGCNNPredictor.from_checkpoint(model_folder).predict(paths).values
    calc = []
    for path in paths:
        atoms = read(path)
        atoms.calc = CGCNNCalculator(model_folder)
        calc.append(atoms.calc.get_property("formation_energy", atoms))
    feat = np.array(CGCNNFeaturizer([str(model_folder)]).featurize_many(paths, pbar=False))[:, 0]
    result = CliRunner().invoke(main, ["predict", *paths, "--model", str(model_folder)])
    assert result.exit_code == 0, result.stderr
    cli = pd.read_csv(io.StringIO(result.stdout))["formation_energy (eV/atom)"].to_numpy()
    for other in (calc, feat, cli):
        np.testing.assert_allclose(other, api, atol=1e-6, rtol=0)

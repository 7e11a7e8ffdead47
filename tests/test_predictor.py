"""CGCNNPredictor: input kinds, ordering, batching, results."""

from __future__ import annotations

import numpy as np
import pytest
from ase.io import write
from pymatgen.io.ase import AseAtomsAdaptor

from cgcnn_ase import CGCNNPredictor, InvalidStructureError, UnsupportedElementError
from cgcnn_ase.errors import UnknownModelError

from .conftest import random_model


@pytest.fixture(scope="module")
def predictor(model_folder) -> CGCNNPredictor:
    return CGCNNPredictor.from_checkpoint(model_folder, device="cpu")


def test_single_item_and_list_give_same_numbers(predictor, crystals):
    many = predictor.predict(crystals)
    assert many.values.shape == (len(crystals),)
    for k, atoms in enumerate(crystals):
        single = predictor.predict(atoms)
        assert single.values.shape == (1,)
        assert single.values[0] == pytest.approx(many.values[k], abs=1e-6)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 64, None])
def test_results_do_not_depend_on_batch_size_or_composition(predictor, crystals, batch_size):
    reference = np.array([predictor.predict(a).values[0] for a in crystals])
    shuffled = [crystals[k] for k in (3, 0, 4, 1, 2)]
    result = predictor.predict(shuffled, batch_size=batch_size)
    np.testing.assert_allclose(result.values, reference[[3, 0, 4, 1, 2]], atol=1e-6)


def test_the_default_batch_depends_on_the_device(predictor):
    import torch

    assert predictor.device.type == "cpu" and predictor.default_batch_size() == 64
    other = CGCNNPredictor(predictor.model, device="cpu")
    other.device = torch.device("cuda")  # only the rule is asked; nothing runs there
    assert other.default_batch_size() == 1024


def test_atoms_and_structure_inputs_agree(predictor, crystals):
    structures = [AseAtomsAdaptor.get_structure(a) for a in crystals]
    np.testing.assert_allclose(predictor.predict(structures).values, predictor.predict(crystals).values, atol=1e-7)
    immutable = [s.copy().as_dict() for s in structures]
    from pymatgen.core import IStructure

    np.testing.assert_allclose(
        predictor.predict([IStructure.from_dict(d) for d in immutable]).values, predictor.predict(crystals).values, atol=1e-7
    )


def test_file_paths_in_several_formats(predictor, crystals, tmp_path):
    atoms = crystals[1]
    paths = []
    for name, fmt in [("a.cif", "cif"), ("POSCAR", "vasp"), ("a.extxyz", "extxyz")]:
        write(tmp_path / name, atoms, format=fmt)
        paths.append(tmp_path / name)
    result = predictor.predict(paths)
    assert result.ids == [str(p) for p in paths]
    np.testing.assert_allclose(result.values, predictor.predict(atoms).values[0], atol=1e-5)


def test_multi_frame_file_gives_one_result_per_frame(predictor, crystals, tmp_path):
    write(tmp_path / "traj.extxyz", crystals[:3], format="extxyz")
    result = predictor.predict(tmp_path / "traj.extxyz")
    assert result.ids == [f"{tmp_path / 'traj.extxyz'}@{k}" for k in range(3)]
    np.testing.assert_allclose(result.values, predictor.predict(crystals[:3]).values, atol=1e-5)


def test_results_in_input_order_with_units_and_dataframe(predictor, crystals):
    result = predictor.predict(crystals)
    assert result.ids == [f"input {k}" for k in range(len(crystals))]
    assert result.units == "eV/atom" and result.property == "formation_energy"
    df = result.to_dataframe()
    assert list(df.columns) == ["id", "formation_energy", "n_sparse", "bond_ratio", "vacuum_gap", "unseen_elements", "error"]
    assert df.attrs["units"] == {"formation_energy": "eV/atom", "vacuum_gap": "Å"}
    np.testing.assert_array_equal(df["formation_energy"].to_numpy(), result.values)


def test_errors_collect_keeps_good_items_and_marks_bad_ones(predictor, crystals, tmp_path):
    empty = tmp_path / "empty.cif"
    empty.write_text("")
    result = predictor.predict([crystals[0], empty, crystals[1]], errors="collect")
    assert np.isfinite(result.values[[0, 2]]).all()
    assert np.isnan(result.values[1])
    assert result.errors[0] is None and "empty" in result.errors[1]
    assert result.ok.tolist() == [True, False, True]
    with pytest.raises(InvalidStructureError, match="empty"):
        predictor.predict([crystals[0], empty])


def test_unsupported_element_is_refused(predictor, crystals):
    atoms = crystals[0].copy()
    atoms.numbers[0] = 110  # darmstadtium: beyond every element table
    with pytest.raises(UnsupportedElementError, match="Ds|110"):
        predictor.predict(atoms)


def test_classifier_returns_probability_of_positive_class(crystals):
    result = CGCNNPredictor(random_model(task="classification"), device="cpu").predict(crystals)
    assert result.units == "probability" and result.positive_class == "metal"
    assert ((result.values > 0) & (result.values < 1)).all()


def test_per_atom_contributions_average_to_prediction(atomwise_folder, crystals):
    predictor = CGCNNPredictor.from_checkpoint(atomwise_folder, device="cpu")
    result = predictor.predict(crystals, per_atom=True, batch_size=2)
    for atoms, contributions, value in zip(crystals, result.per_atom, result.values):
        assert contributions.shape == (len(atoms),)
        assert contributions.mean() == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_mean_pooled_per_atom_attributions_average_to_prediction(crystals, task):
    predictor = CGCNNPredictor(random_model(task=task, seed=5), device="cpu")
    result = predictor.predict(crystals, per_atom=True, batch_size=3)
    for atoms, contributions, value in zip(crystals, result.per_atom, result.values):
        assert contributions.shape == (len(atoms),)
        assert contributions.mean() == pytest.approx(value, abs=1e-6)
        if len(set(atoms.numbers)) > 1:  # (two like atoms in a cell always share one environment)
            assert np.ptp(contributions) > 1e-6  # they do tell atoms apart


def test_mean_pooled_attributions_equal_prediction_for_equivalent_atoms():
    """In a crystal whose atoms all share one environment, every contribution is the prediction."""
    from ase.build import bulk

    predictor = CGCNNPredictor(random_model(seed=5), device="cpu")
    result = predictor.predict(bulk("Cu", "fcc", a=3.6, cubic=True), per_atom=True)
    np.testing.assert_allclose(result.per_atom[0], result.values[0], atol=1e-6)


def test_embed_returns_pooled_features(predictor, crystals):
    features = predictor.embed(crystals, batch_size=2)
    assert features.shape == (len(crystals), 16)
    np.testing.assert_allclose(features[2], predictor.embed(crystals[2])[0], rtol=1e-6, atol=1e-6)  # float32 rounding of differently sized products


def test_from_pretrained_unknown_name_suggests():
    with pytest.raises(UnknownModelError, match="unknown model 'formation_enrgy'"):
        CGCNNPredictor.from_pretrained("formation_enrgy")


def test_progress_bar_goes_to_stderr(predictor, crystals, capsys):
    predictor.predict(crystals, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "structure" in captured.err


def test_predict_returns_embeddings_from_the_same_pass(predictor, crystals, tmp_path):
    empty = tmp_path / "empty.cif"
    empty.write_text("")
    result = predictor.predict([crystals[0], empty, crystals[1]], errors="collect", embeddings=True)
    assert result.embeddings.shape == (3, 16)
    assert np.isnan(result.embeddings[1]).all()
    np.testing.assert_allclose(result.embeddings[[0, 2]], predictor.embed([crystals[0], crystals[1]]), rtol=1e-6, atol=1e-6)


def test_from_pretrained_takes_a_model_folder_path(tmp_path):
    """A pathlib.Path (or a string naming a folder) loads that model folder; the same model as by name."""
    from pathlib import Path

    from ase.build import bulk

    from cgcnn_ase.errors import CheckpointError
    from cgcnn_ase.models.registry import resolve_model

    folder = resolve_model("bulk_modulus").path
    by_name = CGCNNPredictor.from_pretrained("bulk_modulus", device="cpu", members=1)
    atoms = bulk("Cu", "fcc", a=3.61)
    expected = by_name.predict([atoms]).values
    for handle in (Path(folder), str(folder)):
        predictor = CGCNNPredictor.from_pretrained(handle, device="cpu", members=1)
        np.testing.assert_array_equal(predictor.predict([atoms]).values, expected)
    with pytest.raises(CheckpointError, match="not a model folder"):
        CGCNNPredictor.from_pretrained(tmp_path)
    with pytest.raises(TypeError, match="model name or folder path"):
        CGCNNPredictor.from_pretrained(3)
    with pytest.raises(UnknownModelError):
        CGCNNPredictor.from_pretrained("bulk_moduli")

"""CGCNNCalculator follows ASE's calculator protocol."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from cgcnn_ase.integrations.ase import CGCNNCalculator
from cgcnn_ase.models.folder import save_model_folder
from cgcnn_ase.inference.predictor import CGCNNPredictor

from .conftest import random_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("calc-models")
    energy = save_model_folder(root / "fe", random_model(seed=11))
    gap_model = random_model(seed=12)
    gap = save_model_folder(root / "gap", _with(gap_model, property="band_gap", units="eV"))
    metal = save_model_folder(root / "metal", random_model(task="classification", seed=13))
    fermi = save_model_folder(root / "fermi", _with(random_model(seed=14), property="fermi_energy", units="eV"))
    bulk = save_model_folder(root / "bulk", _with(random_model(seed=15), property="log10_bulk_modulus", units="log10(GPa)"))
    return dict(energy=energy, gap=gap, metal=metal, fermi=fermi, bulk=bulk)


def _with(loaded, **changes):
    from dataclasses import replace

    loaded.spec = replace(loaded.spec, **changes)
    return loaded


def test_energy_properties_follow_ase_conventions(folders, crystals):
    atoms = crystals[1].copy()
    atoms.calc = CGCNNCalculator(folders["energy"])
    per_atom_value = CGCNNPredictor.from_checkpoint(folders["energy"]).predict(atoms).values[0]
    assert atoms.calc.get_property("formation_energy", atoms) == pytest.approx(per_atom_value, abs=1e-6)
    assert atoms.get_potential_energy() == pytest.approx(per_atom_value * len(atoms), abs=1e-5)
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(per_atom_value * len(atoms), abs=1e-5)
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms),)
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-5)


def test_forces_and_stress_are_not_implemented(folders, crystals):
    atoms = crystals[0].copy()
    atoms.calc = CGCNNCalculator(folders["energy"])
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_forces()
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_no_energy_for_non_energy_models(folders, crystals):
    atoms = crystals[0].copy()
    atoms.calc = CGCNNCalculator(folders["bulk"])
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_potential_energy()
    log_k = atoms.calc.get_property("log10_bulk_modulus", atoms)
    assert atoms.calc.get_property("bulk_modulus", atoms) == pytest.approx(10**log_k)
    assert atoms.calc.units["bulk_modulus"] == "GPa"


def test_results_cached_until_the_structure_changes(folders, crystals, monkeypatch):
    atoms = crystals[0].copy()
    calc = CGCNNCalculator(folders["energy"])
    atoms.calc = calc
    calls = []
    original = CGCNNPredictor.predict
    monkeypatch.setattr(CGCNNPredictor, "predict", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    e1 = atoms.get_potential_energy()
    atoms.get_potential_energies()
    calc.get_property("formation_energy", atoms)
    assert len(calls) == 1
    atoms.positions[0] += 0.05
    e2 = atoms.get_potential_energy()
    assert len(calls) == 2 and e2 != e1
    atoms.set_cell(atoms.cell.array * 1.01, scale_atoms=True)
    atoms.get_potential_energy()
    assert len(calls) == 3


def test_several_models_in_one_pass_with_gated_band_gap(folders, crystals):
    atoms = crystals[2].copy()
    calc = CGCNNCalculator([folders["energy"], folders["gap"], folders["metal"], folders["fermi"]])
    atoms.calc = calc
    raw = calc.get_property("band_gap_raw", atoms)
    p_metal = calc.get_property("metal_probability", atoms)
    gap = calc.get_property("band_gap", atoms)
    assert gap == (0.0 if p_metal > 0.5 else max(raw, 0.0))  # a non-metal's gap is clipped at 0 (a random model's raw < 0)
    assert calc.get_property("fermi_level", atoms) == calc.get_property("fermi_energy", atoms)
    # the gate is applied: thresholds just below / above the probability
    models = [folders["gap"], folders["metal"]]
    below, above = CGCNNCalculator(models, metal_threshold=p_metal - 1e-3), CGCNNCalculator(models, metal_threshold=p_metal + 1e-3)
    assert below.get_property("band_gap", atoms) == 0.0
    assert above.get_property("band_gap", atoms) == pytest.approx(max(raw, 0.0))
    assert above.get_property("band_gap_raw", atoms) == pytest.approx(raw)


def test_export_and_singlepoint_round_trip(folders, crystals, tmp_path):
    atoms = crystals[1].copy()
    atoms.calc = CGCNNCalculator([folders["energy"], folders["gap"]])
    energy = atoms.get_potential_energy()
    props = atoms.calc.export_properties()
    assert set(props) <= {"energy", "free_energy", "energies", "natoms"}
    single = SinglePointCalculator(atoms, **{k: v for k, v in atoms.calc.results.items() if k in props})
    copy = atoms.copy()
    copy.calc = single
    assert copy.get_potential_energy() == pytest.approx(energy)
    write(tmp_path / "out.extxyz", atoms)
    assert read(tmp_path / "out.extxyz").get_potential_energy() == pytest.approx(energy)


def test_store_in_info_survives_extxyz(folders, crystals, tmp_path):
    atoms = crystals[1].copy()
    atoms.calc = CGCNNCalculator([folders["energy"], folders["bulk"]], store_in_info=True)
    atoms.get_potential_energy()
    atoms.calc.get_property("bulk_modulus", atoms)
    assert "cgcnn_formation_energy" in atoms.info and "cgcnn_bulk_modulus" in atoms.info
    atoms.calc = None
    write(tmp_path / "info.extxyz", atoms)
    back = read(tmp_path / "info.extxyz")
    assert back.info["cgcnn_formation_energy"] == pytest.approx(atoms.info["cgcnn_formation_energy"])
    np.testing.assert_allclose(back.arrays["cgcnn_energies"], atoms.arrays["cgcnn_energies"])


def test_calculator_agrees_with_predictor(folders, crystals):
    predictor = CGCNNPredictor.from_checkpoint(folders["energy"])
    values = predictor.predict(crystals).values
    for atoms, value in zip(crystals, values):
        atoms = atoms.copy()
        atoms.calc = CGCNNCalculator(predictor)
        assert atoms.calc.get_property("formation_energy", atoms) == pytest.approx(value, abs=1e-6)


def test_bad_structure_raises_specific_error(folders):
    from ase.build import molecule

    from cgcnn_ase.errors import InvalidStructureError

    atoms = molecule("H2O")
    atoms.calc = CGCNNCalculator(folders["energy"])
    with pytest.raises(InvalidStructureError, match="periodic"):
        atoms.get_potential_energy()


def test_the_calculator_names_elements_its_models_never_saw():
    """Ar occurs in no training set: ``unseen_elements`` says so (as cgcnn-ase predict writes it), the warning
    points there (an ASE user holds no ``result``), and a later crystal's calculation clears it."""
    import warnings

    from ase.build import bulk

    from cgcnn_ase.errors import UnseenElementWarning

    argon = bulk("Ar", "fcc", a=5.26)
    argon.calc = CGCNNCalculator(["formation_energy", "bulk_modulus"], store_in_info=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        argon.get_potential_energy()
    messages = [str(w.message) for w in caught if issubclass(w.category, UnseenElementWarning)]
    assert len(messages) == 2 and all("calc.results['unseen_elements']" in m for m in messages), messages
    assert argon.calc.get_property("unseen_elements", argon) == "Ar (formation_energy, log10_bulk_modulus)"
    assert argon.info["cgcnn_unseen_elements"] == "Ar (formation_energy, log10_bulk_modulus)"
    salt = bulk("NaCl", "rocksalt", a=5.64)
    salt.calc = argon.calc
    salt.info.update(argon.info)  # a copied info dict must not keep a stale value
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenElementWarning)
        salt.get_potential_energy()
    assert salt.calc.results["unseen_elements"] is None and "cgcnn_unseen_elements" not in salt.info


def test_energy_without_a_formation_energy_model_says_why():
    from ase.build import bulk

    atoms = bulk("NaCl", "rocksalt", a=5.64)
    atoms.calc = CGCNNCalculator(["bulk_modulus"])
    with pytest.raises(PropertyNotImplementedError, match="only with a formation-energy model"):
        atoms.get_potential_energy()
    assert atoms.calc.get_property("bulk_modulus", atoms) > 0

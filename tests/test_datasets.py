"""Datasets: the four file layouts, row selection, targets, parsing, splits."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from cgcnn_ase.data import datasets
from cgcnn_ase.data.datasets import DatasetError, DatasetSpec, load_dataset, load_table, parse_structures
from cgcnn_ase.data.splits import Split, make_split
from cgcnn_ase.io.records import StructureRecord

from .conftest import SHARED, rattled


def small_structures() -> list:
    """Six small crystals (pymatgen Structures) of different sizes."""
    atoms = [
        rattled(bulk("NaCl", "rocksalt", a=5.64), seed=1),
        rattled(bulk("Si", "diamond", a=5.43), seed=2),
        rattled(bulk("Cu", "fcc", a=3.6), seed=3),
        rattled(bulk("MgO", "rocksalt", a=4.2) * (1, 1, 2), seed=4),
        rattled(bulk("Fe", "bcc", a=2.87, cubic=True), seed=5),
        rattled(bulk("ZnO", "wurtzite", a=3.25, c=5.2), seed=6),
    ]
    return [AseAtomsAdaptor.get_structure(a) for a in atoms]


def _frame(structures) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "material_id": [f"mp-{k}" for k in range(len(structures))],
            "energy": [10.0 * (k + 1) for k in range(len(structures))],
            "band_gap": [0.0, 1.1, 0.0, 7.8, 0.0, 3.3][: len(structures)],
            "cif": [str(CifWriter(s)) for s in structures],
        }
    )


@pytest.fixture(scope="module")
def structures():
    return small_structures()


@pytest.fixture
def csv_path(tmp_path, structures) -> Path:
    path = tmp_path / "data.csv.gz"
    _frame(structures).to_csv(path, index=False)
    return path


def test_csv_with_cif_column(csv_path, structures):
    records, targets, ids = load_dataset(DatasetSpec(path=str(csv_path), target="energy"))
    assert ids == [f"mp-{k}" for k in range(6)]
    np.testing.assert_allclose(targets, [10, 20, 30, 40, 50, 60])
    for record, structure in zip(records, structures):
        assert isinstance(record, StructureRecord)
        np.testing.assert_array_equal(np.sort(record.numbers), np.sort(structure.atomic_numbers))
        assert record.volume == pytest.approx(structure.volume, rel=1e-6)


def test_filter_drop_ids_per_atom_and_log10(csv_path, structures):
    spec = DatasetSpec(
        path=str(csv_path), target="energy", filter="band_gap > 0", drop_ids=["mp-3"], per_atom=True, transform="log10"
    )
    data = load_dataset(spec)
    assert data.ids == ["mp-1", "mp-5"]
    n = [len(structures[1]), len(structures[5])]
    np.testing.assert_allclose(data.targets, np.log10([20 / n[0], 60 / n[1]]))
    assert data.dropped == {"drop_ids": 1, "filter": 3}


def test_target_expression_gives_labels(csv_path):
    table = load_table(DatasetSpec(path=str(csv_path), target="band_gap == 0"))
    np.testing.assert_array_equal(table.raw_targets, [1, 0, 1, 0, 1, 0])
    assert datasets.is_binary_labels(table.raw_targets)


def test_missing_targets_are_dropped_with_a_warning(tmp_path, structures):
    df = _frame(structures)
    df["efermi"] = ["1.5", "None", "2.0", "None", "0.1", "3"]
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    with pytest.warns(UserWarning, match="2 rows have no finite numeric 'efermi'"):
        table = load_table(DatasetSpec(path=str(path), target="efermi"))
    assert table.ids == ["mp-0", "mp-2", "mp-4", "mp-5"]
    # listing them in drop_ids instead is silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = load_table(DatasetSpec(path=str(path), target="efermi", drop_ids=["mp-1", "mp-3"]))
    assert len(table) == 4


def test_limit_and_content_keys(csv_path):
    table = load_table(DatasetSpec(path=str(csv_path), target="energy", limit=2))
    assert table.ids == ["mp-0", "mp-1"] and table.dropped["limit"] == 4
    assert len(set(table.keys)) == 2 and all(len(k) == 32 for k in table.keys)
    again = load_table(DatasetSpec(path=str(csv_path), target="band_gap"))
    assert again.keys[:2] == table.keys  # keys depend on the structure only


def test_json_list_of_structure_dicts(tmp_path, structures):
    entries = [
        {
            "mp_id": f"mp-{k}",
            "formula": s.composition.reduced_formula,
            "structure": s.as_dict(),
            "bulk_modulus_vrh": 50.0 + k,
        }
        for k, s in enumerate(structures)
    ]
    path = tmp_path / "data.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(entries, f)
    records, targets, ids = load_dataset(DatasetSpec(path=str(path), target="bulk_modulus_vrh", transform="log10"))
    assert ids == [f"mp-{k}" for k in range(6)]
    np.testing.assert_allclose(targets, np.log10(50.0 + np.arange(6)))
    np.testing.assert_allclose(records[2].cell, structures[2].lattice.matrix)
    plain = tmp_path / "data.json"
    plain.write_text(json.dumps(entries))
    assert load_dataset(DatasetSpec(path=str(plain), target="bulk_modulus_vrh")).ids == ids


def test_cif_directory_with_id_prop(tmp_path, structures):
    folder = tmp_path / "cifs"
    folder.mkdir()
    rows = []
    for k, s in enumerate(structures):
        CifWriter(s).write_file(folder / f"{1000 + k}.cif")
        rows.append(f"{1000 + k},{0.5 * k}")
    (folder / "id_prop.csv").write_text("\n".join(rows) + "\n")
    records, targets, ids = load_dataset(DatasetSpec(path=str(folder)))
    assert ids == [str(1000 + k) for k in range(6)]
    np.testing.assert_allclose(targets, 0.5 * np.arange(6))
    assert [len(r) for r in records] == [len(s) for s in structures]


def test_extxyz_and_ase_database(tmp_path, structures):
    import ase.db
    import ase.io

    frames = []
    for k, s in enumerate(structures):
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.info = {"name": f"c{k}", "gap": 0.1 * k}
        frames.append(atoms)
    xyz = tmp_path / "data.extxyz"
    ase.io.write(xyz, frames, format="extxyz")
    records, targets, ids = load_dataset(DatasetSpec(path=str(xyz), target="gap"))
    assert ids == [f"c{k}" for k in range(6)]
    np.testing.assert_allclose(targets, 0.1 * np.arange(6))
    np.testing.assert_allclose(records[3].positions, frames[3].positions, atol=1e-6)

    db_path = tmp_path / "data.db"
    with ase.db.connect(str(db_path)) as db:
        for k, atoms in enumerate(frames):
            db.write(atoms, material=f"m{k}", gap=0.2 * k)
    data = load_dataset(DatasetSpec(path=str(db_path), target="gap", id_column="material"))
    assert data.ids == [f"m{k}" for k in range(6)]
    np.testing.assert_allclose(data.targets, 0.2 * np.arange(6))


def test_unusable_structures_are_dropped_with_one_warning(tmp_path, structures):
    df = _frame(structures[:3])
    df.loc[1, "cif"] = "data_broken\n_cell_length_a 3\n"
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    with pytest.warns(UserWarning, match="1 structures could not be used"):
        data = load_dataset(DatasetSpec(path=str(path), target="energy"))
    assert data.ids == ["mp-0", "mp-2"] and "mp-1" in data.errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": "nope"}, "neither a column nor a valid expression"),
        ({"target": "energy", "filter": "nope >"}, "invalid filter"),
        ({"target": "energy", "structure_column": "poscar"}, "no structure column"),
        ({"target": "energy", "id_column": "key"}, "no id column"),
    ],
)
def test_bad_specs_name_the_problem(csv_path, kwargs, match):
    with pytest.raises(DatasetError, match=match):
        load_table(DatasetSpec(path=str(csv_path), **kwargs))


def test_log10_of_non_positive_targets_is_an_error(csv_path):
    with pytest.raises(DatasetError, match="log10 needs positive targets"):
        load_dataset(DatasetSpec(path=str(csv_path), target="band_gap", transform="log10"))


def test_spec_validation_and_format_detection(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset settings"):
        DatasetSpec.from_dict({"path": "x.csv", "targte": "y"})
    with pytest.raises(DatasetError, match="transform"):
        DatasetSpec(path="x.csv", transform="log")
    assert datasets.detect_format("a/b.csv.gz") == "csv"
    assert datasets.detect_format("a/b.json.gz") == "json"
    assert datasets.detect_format("a/b.extxyz") == "ase" and datasets.detect_format("b.db") == "ase"
    assert datasets.detect_format(tmp_path) == "cif_dir"
    assert DatasetSpec(path="../shared/data/mp_x/data.csv.gz").display_name == "mp_x"
    with pytest.raises(DatasetError, match="no such dataset"):
        load_table(DatasetSpec(path=str(tmp_path / "missing.csv")))


def test_parsing_in_a_process_pool_matches_serial(csv_path, monkeypatch):
    table = load_table(DatasetSpec(path=str(csv_path), target="energy"))
    serial = parse_structures(table, workers=1)
    monkeypatch.setattr(datasets, "POOL_THRESHOLD", 0)
    pooled = parse_structures(table, workers=2)
    for a, b in zip(serial, pooled):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.frac_coords, b.frac_coords)


# -- splits -------------------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_complete():
    ids = [f"id{k}" for k in range(103)]
    split = make_split(ids, (0.8, 0.1, 0.1), seed=7)
    assert split.sizes == {"train": 83, "val": 10, "test": 10}
    assert sorted(split.train + split.val + split.test) == sorted(ids)
    assert make_split(ids, (0.8, 0.1, 0.1), seed=7) == split
    assert make_split(ids, (0.8, 0.1, 0.1), seed=8).test != split.test
    partial = make_split(ids, (0.5, 0.1, 0.1), seed=0)
    assert partial.sizes == {"train": 52, "val": 10, "test": 10}


def test_split_round_trip(tmp_path):
    split = make_split([f"id{k}" for k in range(20)], (0.6, 0.2, 0.2), seed=3)
    loaded = Split.load(split.save(tmp_path / "split.json"))
    assert loaded == split
    with pytest.raises(DatasetError, match="shares ids"):
        Split(train=["a", "b"], val=["b"], test=[])
    with pytest.raises(DatasetError, match="fractions"):
        make_split(["a", "b"], (0.9, 0.2, 0.1))


# -- the shared datasets (read a few rows) --------------------------------------------------------

SHARED_DATA = SHARED / "data"


@pytest.mark.parametrize(
    ("relative", "target", "id_prefix"),
    [
        ("mp_cgcnn46k_kdmsit/data.csv.gz", "formation_energy_per_atom", "mp-"),
        ("mp_elastic3k_kdmsit/data.csv.gz", "K_VRH", "mp-"),
        ("perovskites_castelli_cmr/data.csv.gz", "e_form", "perov_"),
        ("mp_elastic_binary2025_matcalc/mp-binary-pbe-elasticity-2025.1.json.gz", "bulk_modulus_vrh", "mp-"),
    ],
)
def test_shared_datasets_load(relative, target, id_prefix):
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared dataset {path} is absent (it lives in ../shared beside the repository)")
    data = load_dataset(DatasetSpec(path=str(path), target=target, limit=4))
    assert len(data) == 4 and all(i.startswith(id_prefix) for i in data.ids)
    assert np.all(np.isfinite(data.targets)) and all(len(r) > 0 for r in data.records)


def test_shared_cif_directory_loads():
    path = SHARED / "reference" / "cgcnn" / "data" / "sample-regression"
    if not path.exists():
        pytest.skip(f"{path} is absent (it lives in ../shared beside the repository)")
    data = load_dataset(DatasetSpec(path=str(path)))
    assert len(data) == 10 and data.ids[0] == "1000041"

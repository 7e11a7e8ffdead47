"""The cgcnn-ase command line, through click's CliRunner."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from ase.io import write
from click.testing import CliRunner

from cgcnn_ase.cli import EXIT_BAD_INPUT, EXIT_MODEL, main
from cgcnn_ase.inference.predictor import CGCNNPredictor
from cgcnn_ase.inference.results import FLAG_COLUMNS

from .conftest import ATOM_INIT, REFERENCE, REPO, require_shared


@pytest.fixture
def files(crystals, tmp_path):
    paths = []
    for k, atoms in enumerate(crystals[:3]):
        path = tmp_path / f"c{k}.cif"
        write(path, atoms, format="cif")
        paths.append(str(path))
    return paths


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_predict_csv_matches_python_api(model_folder, files):
    result = _run("predict", *files, "--model", model_folder)
    assert result.exit_code == 0, result.output
    df = pd.read_csv(io.StringIO(result.stdout))
    assert list(df.columns) == ["id", "formation_energy (eV/atom)", *FLAG_COLUMNS, "unseen_elements", "error"]
    assert df["id"].tolist() == files
    expected = CGCNNPredictor.from_checkpoint(model_folder).predict(files).values
    np.testing.assert_allclose(df["formation_energy (eV/atom)"], expected, atol=1e-5)


def test_predict_json_and_table_and_output_file(model_folder, files, tmp_path):
    out = tmp_path / "out.json"
    result = _run("predict", *files, "--model", model_folder, "--format", "json", "-o", out)
    assert result.exit_code == 0 and result.stdout == ""
    data = json.loads(out.read_text())
    assert data["units"] == {"formation_energy (eV/atom)": "eV/atom", "n_sparse": "atoms", "bond_ratio": "dimensionless",
                             "vacuum_gap": "Å"}  # by column, as in the Parquet metadata  # fmt: skip
    assert [r["id"] for r in data["results"]] == files
    table = _run("predict", *files, "--model", model_folder, "--format", "table")
    assert "formation_energy (eV/atom)" in table.stdout and files[0] in table.stdout


def test_bad_files_get_one_line_each_and_good_ones_are_predicted(model_folder, files, tmp_path):
    empty = tmp_path / "empty.cif"
    empty.write_text("")
    result = _run("predict", files[0], tmp_path / "missing.cif", empty, files[1], "--model", model_folder)
    assert result.exit_code == EXIT_BAD_INPUT
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'missing.cif'}: no such file", f"error: {empty}: the file is empty"]
    assert "Traceback" not in result.stderr
    df = pd.read_csv(io.StringIO(result.stdout))
    assert df["formation_energy (eV/atom)"].notna().tolist() == [True, False, False, True]


def test_unknown_model_is_one_line_with_exit_code(files):
    result = _run("predict", *files, "--model", "formation_enrgy")
    assert result.exit_code == EXIT_MODEL
    assert result.stderr.startswith("error: unknown model 'formation_enrgy'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_checkpoint_path(files, tmp_path):
    result = _run("predict", *files, "--model", tmp_path / "nope.pth.tar")
    assert result.exit_code == EXIT_MODEL and "no such" in result.stderr


def test_original_checkpoint_with_atom_init(files):
    checkpoint = require_shared(REFERENCE / "pre-trained" / "band-gap.pth.tar")
    result = _run("predict", *files, "--model", checkpoint, "--atom-init", ATOM_INIT)
    assert result.exit_code == 0, result.stderr
    assert "band_gap (eV)" in result.stdout.splitlines()[0]
    no_table = _run("predict", *files, "--model", checkpoint)
    assert no_table.exit_code == EXIT_MODEL and "atom_init" in no_table.stderr


def test_two_models_give_two_columns(model_folder, atomwise_folder, files):
    result = _run("predict", *files, "--model", model_folder, "--model", atomwise_folder)
    assert result.exit_code == 0
    df = pd.read_csv(io.StringIO(result.stdout))
    columns = [f"{model_folder}: formation_energy (eV/atom)", f"{atomwise_folder}: formation_energy (eV/atom)"]
    assert list(df.columns) == ["id", *columns, *FLAG_COLUMNS, "unseen_elements", "error"]
    for folder, column in zip((model_folder, atomwise_folder), columns):
        expected = CGCNNPredictor.from_checkpoint(folder).predict(files).values
        np.testing.assert_allclose(df[column], expected, atol=1e-5)


def test_usage_error_exit_code():
    assert _run("predict").exit_code == 2


def test_directories_and_globs_expand_in_sorted_order(model_folder, files, tmp_path):
    by_dir = _run("predict", tmp_path, "--model", model_folder)
    by_glob = _run("predict", str(tmp_path / "c*.cif"), "--model", model_folder)
    assert by_dir.exit_code == 0 and by_glob.exit_code == 0, by_dir.stderr
    assert pd.read_csv(io.StringIO(by_dir.stdout))["id"].tolist() == sorted(files)
    assert by_glob.stdout == by_dir.stdout
    none = _run("predict", str(tmp_path / "zz*.cif"), "--model", model_folder)
    assert none.exit_code == EXIT_BAD_INPUT and "no file matches this pattern" in none.stderr


def test_mixed_directory_reports_bad_files_and_predicts_good_ones(model_folder, files, tmp_path):
    (tmp_path / "broken.cif").write_text("data_x\n_cell_length_a 3\n")
    (tmp_path / "junk.bin").write_bytes(b"\x00\xff" * 50)
    (tmp_path / "notes.txt").write_text("not a structure")  # left out of the folder, with a warning
    result = _run("predict", tmp_path, "--model", model_folder)
    assert result.exit_code == EXIT_BAD_INPUT
    df = pd.read_csv(io.StringIO(result.stdout))
    assert df["formation_energy (eV/atom)"].notna().sum() == len(files)
    assert sum(line.startswith("error:") for line in result.stderr.splitlines()) == 2
    assert "notes.txt" not in df["id"].str.cat() and "left out 1 file(s)" in result.stderr


def test_per_atom_long_format(atomwise_folder, files):
    result = _run("predict", files[0], "--model", atomwise_folder, "--per-atom")
    assert result.exit_code == 0, result.stderr
    df = pd.read_csv(io.StringIO(result.stdout))
    assert list(df.columns[:3]) == ["id", "atom", "element"]
    value = CGCNNPredictor.from_checkpoint(atomwise_folder).predict(files[0]).values[0]
    assert df["formation_energy (eV/atom)"].mean() == pytest.approx(value, abs=1e-5)


def test_models_command_lists_cards_and_refuses_unknown_names():
    from cgcnn_ase.models.registry import list_models

    listing = _run("models")
    assert listing.exit_code == 0, listing.output
    for info in list_models():
        assert info.aliases[0] in listing.stdout
        card = _run("models", info.aliases[0])
        assert card.exit_code == 0 and "Test metrics" in card.stdout
    unknown = _run("models", "nonexistent_model")
    assert unknown.exit_code == EXIT_MODEL and "unknown model" in unknown.stderr


def test_all_without_models_is_a_usage_error(files, monkeypatch):
    monkeypatch.setattr("cgcnn_ase.models.registry.list_models", lambda: [])
    result = _run("predict", *files, "--all")
    assert result.exit_code == 2 and "--model" in result.output


def test_featurize_csv(model_folder, crystals, tmp_path):
    from pymatgen.io.ase import AseAtomsAdaptor

    cifs = [AseAtomsAdaptor.get_structure(a).to(fmt="cif") for a in crystals[:3]]
    table = tmp_path / "in.csv"
    pd.DataFrame({"name": ["a", "b", "c", "bad"], "cif": [*cifs, "not a cif"]}).to_csv(table, index=False)
    out = tmp_path / "out.csv"
    result = _run("featurize", table, "-o", out, "--model", model_folder)
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr.count(f"error: {table}@3:") == 1  # as predict names the row
    named = _run("featurize", table, "-o", out, "--model", model_folder, "--id-column", "name")
    assert named.stderr.count("error: bad:") == 1 and pd.read_csv(out)["error"].notna().sum() == 1
    df = pd.read_csv(out)
    expected = CGCNNPredictor.from_checkpoint(model_folder).predict(crystals[:3]).values
    np.testing.assert_allclose(df["formation_energy (eV/atom)"][:3], expected, atol=1e-5)
    assert np.isnan(df["formation_energy (eV/atom)"][3]) and df["name"].tolist() == ["a", "b", "c", "bad"]
    assert df["unseen_elements"].isna().all()  # the test model saw every element of these crystals


def test_featurize_names_elements_a_model_never_saw(tmp_path):
    """featurize writes the unseen_elements column that its warning points to (as predict does)."""
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    cifs = [AseAtomsAdaptor.get_structure(bulk(*args)).to(fmt="cif") for args in (("Ar", "fcc", 5.26), ("NaCl", "rocksalt", 5.64))]
    table = tmp_path / "in.csv"
    pd.DataFrame({"cif": cifs}).to_csv(table, index=False)
    result = _run("featurize", table, "-o", tmp_path / "out.csv", "--model", "formation_energy")
    assert result.exit_code == 0, result.output
    assert "the unseen_elements column lists them" in result.stderr and "result." not in result.stderr
    assert pd.read_csv(tmp_path / "out.csv")["unseen_elements"].tolist()[0] == "Ar"


def test_every_output_names_the_elements_a_model_never_saw(tmp_path):
    """Rows whose elements a model never trained on say so in an ``unseen_elements`` column (csv, parquet, the
    default command and --model), not only on stderr: Ra is in no training set, La in no elastic one."""
    from ase import Atoms
    from ase.build import bulk

    cell = bulk("NaCl", "rocksalt", a=5.8).cell
    files = {"nacl": bulk("NaCl", "rocksalt", a=5.64), "ran": Atoms("RaO", scaled_positions=[[0, 0, 0], [0.5] * 3],
                                                                   cell=cell, pbc=True),
             "lan": bulk("LaN", "rocksalt", a=5.3)}  # fmt: skip
    paths = []
    for name, atoms in files.items():
        paths.append(tmp_path / f"{name}.cif")
        write(paths[-1], atoms)
    one = _run("predict", *paths, "--model", "formation_energy", "-o", tmp_path / "one.csv")
    assert one.exit_code == 0, one.output
    assert pd.read_csv(tmp_path / "one.csv")["unseen_elements"].fillna("").tolist() == ["", "Ra", ""]  # input order
    per_atom = _run("predict", paths[1], paths[0], "--model", "formation_energy", "--per-atom")
    long = pd.read_csv(io.StringIO(per_atom.stdout))
    assert long.groupby("id", sort=False)["unseen_elements"].first().fillna("").tolist() == ["Ra", ""]
    default = _run("predict", *paths, "-o", tmp_path / "all.parquet")
    assert default.exit_code == 0, default.output
    table = pd.read_parquet(tmp_path / "all.parquet")
    elastic = "bulk_modulus, shear_modulus, poisson_ratio"
    assert table["unseen_elements"].tolist() == [
        None, f"Ra (formation_energy, band_gap, metal_probability, fermi_energy, {elastic})", f"La ({elastic})",
    ]  # fmt: skip


def test_unseen_label_groups_models_by_their_unseen_elements():
    from cgcnn_ase.inference.results import unseen_label

    assert unseen_label([("a", [])]) is None and unseen_label([("a", ["Ra"])]) == "Ra"
    assert unseen_label([("a", []), ("b", [])]) is None
    assert unseen_label([("a", ["La"]), ("b", []), ("c", ["La"]), ("d", ["Ra", "La"])]) == "La (a, c); Ra La (d)"


def test_predict_reports_the_ensemble_std_and_domain_percentile_of_the_api():
    """A shipped ensemble: the CLI's _std and _domain_percentile columns are the API's numbers."""
    files = [REPO / "examples" / "NaCl.POSCAR", REPO / "examples" / "SrTiO3.cif"]
    out = _run("predict", *files, "--model", "bulk_modulus")
    assert out.exit_code == 0, out.output
    table = pd.read_csv(io.StringIO(out.stdout))
    api = CGCNNPredictor.from_pretrained("bulk_modulus", device="cpu").predict(files)
    assert api.std is not None and api.domain_percentile is not None
    np.testing.assert_allclose(table["log10_bulk_modulus (log10(GPa))"], api.values, rtol=1e-6)
    np.testing.assert_allclose(table["log10_bulk_modulus_std (log10(GPa))"], api.std, rtol=1e-6)
    np.testing.assert_allclose(table["log10_bulk_modulus_domain_percentile (percent)"], api.domain_percentile, rtol=1e-6)
    assert (api.std > 0).all()


def test_a_long_text_given_as_a_path_is_a_per_item_error(tmp_path):
    """'File name too long' from the OS becomes a one-line bad-input error, not a crash."""
    out = _run("predict", "x" * 5000, REPO / "examples" / "NaCl.POSCAR", "--model", "bulk_modulus")
    assert out.exit_code == EXIT_BAD_INPUT
    assert "not a readable file path" in out.output
    assert "Traceback" not in out.output


def test_evaluate_a_shipped_model_on_a_users_dataset_with_its_own_column_names(tmp_path):
    """A table with other column names (moduli in GPa, as measured): --target/--id-column/--column name them, the
    model's log10 transform still applies, and --split all scores every row. The metrics equal the API's."""
    from ase.build import bulk

    crystals = {"c1": (bulk("NaCl", "rocksalt", a=5.64), 24.0), "c2": (bulk("Si", "diamond", a=5.43), 98.0),
                "c3": (bulk("Cu", "fcc", a=3.61), 140.0)}  # fmt: skip
    texts = []
    for name, (atoms, _) in crystals.items():
        write(tmp_path / f"{name}.cif", atoms)
        texts.append((tmp_path / f"{name}.cif").read_text())
    table = pd.DataFrame({"key": list(crystals), "K_GPa": [k for _, k in crystals.values()], "structure_cif": texts})
    table.to_csv(tmp_path / "mine.csv", index=False)
    out = _run("evaluate", "bulk_modulus", tmp_path / "mine.csv", "--split", "all", "--target", "K_GPa",
               "--id-column", "key", "--column", "structure_cif", "-o", tmp_path / "ev")  # fmt: skip
    assert out.exit_code == 0, out.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    predicted = CGCNNPredictor.from_pretrained("bulk_modulus", device="cpu").predict([a for a, _ in crystals.values()])
    truth = np.log10([k for _, k in crystals.values()])
    assert metrics["n"] == 3 and metrics["metrics"]["mae"] == pytest.approx(np.mean(np.abs(predicted.values - truth)), abs=1e-6)
    without = _run("evaluate", "bulk_modulus", tmp_path / "mine.csv", "--target", "K_GPa", "--id-column", "key",
                   "--column", "structure_cif", "-o", tmp_path / "ev2")  # fmt: skip
    assert without.exit_code != 0 and "--split all" in without.output  # the model's test ids are not in this table
    assert "need(s) a DATASET" in _run("evaluate", "bulk_modulus", "--target", "K_GPa").output
    table.rename(columns={"K_GPa": "gap"}).to_csv(tmp_path / "gaps.csv", index=False)
    layout = ("--split", "all", "--target", "gap", "--id-column", "key", "--column", "structure_cif")
    refused = _run("evaluate", "band_gap", tmp_path / "gaps.csv", *layout, "-o", tmp_path / "ev3")
    assert refused.exit_code != 0 and "band_gap > 0" in refused.output and "--filter" in refused.output
    scored = _run("evaluate", "band_gap", tmp_path / "gaps.csv", *layout, "--filter", "gap > 50", "-o", tmp_path / "ev4")
    assert scored.exit_code == 0, scored.output
    assert json.loads((tmp_path / "ev4" / "metrics.json").read_text())["n"] == 2  # the filter replaced: 98 and 140


def test_featurize_defaults_to_the_general_models_and_reads_tsv_and_parquet(tmp_path):
    """Without --model, featurize adds predict's general-purpose properties (it failed with an internal
    error), and a .tsv or .parquet table is read as such (a .tsv was parsed as CSV)."""
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    table = pd.DataFrame({"cif": [AseAtomsAdaptor.get_structure(bulk("NaCl", "rocksalt", a=5.64)).to(fmt="cif")]})
    outputs = []
    for name, write_table in (("t.tsv", lambda p: table.to_csv(p, sep="\t", index=False)),
                              ("t.parquet", table.to_parquet)):  # fmt: skip
        write_table(tmp_path / name)
        result = _run("featurize", tmp_path / name, "-o", tmp_path / f"{name}.csv")
        assert result.exit_code == 0, result.output
        outputs.append(pd.read_csv(tmp_path / f"{name}.csv"))
    for column in ("formation_energy (eV/atom)", "band_gap (eV)", "log10_bulk_modulus (log10(GPa))"):
        assert np.isfinite(outputs[0][column]).all() and outputs[0][column].equals(outputs[1][column])


def test_featurize_tells_apart_models_of_the_same_property(model_folder, crystals, tmp_path):
    from pymatgen.io.ase import AseAtomsAdaptor

    table = tmp_path / "in.csv"
    pd.DataFrame({"cif": [AseAtomsAdaptor.get_structure(crystals[1]).to(fmt="cif")]}).to_csv(table, index=False)
    result = _run("featurize", table, "-o", tmp_path / "out.csv", "-m", "formation_energy", "-m", model_folder)
    assert result.exit_code == 0, result.output
    columns = pd.read_csv(tmp_path / "out.csv").columns.tolist()
    assert len(columns) == len(set(columns))
    assert "formation_energy-mp_cgcnn46k-v3: formation_energy (eV/atom)" in columns

"""Regression tests for what new users and a hostile tester reported (issue: hangs, silent numbers, CLI).

Each test failed on the release before the fix; the issue item it covers is named in its docstring.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from cgcnn_ase import CGCNNPredictor
from cgcnn_ase.errors import UnseenElementWarning

from .test_training import dataset_csv, trained  # noqa: F401 - a tiny trained model folder


def test_unseen_elements_give_one_summary_warning_per_call_naming_the_model():
    """'200 MP rows gave 58 separate unseen-element warnings that do not name the model'."""
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    crystals = [bulk("Ar", "fcc", a=5.26 + 0.01 * k) for k in range(5)] + [bulk("NaCl", "rocksalt", a=5.64)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = predictor.predict(crystals)
    unseen = [w for w in caught if issubclass(w.category, UnseenElementWarning)]
    assert len(unseen) == 1
    message = str(unseen[0].message)
    assert predictor.model.spec.name in message and "Ar" in message and "5 of 6 predicted structure(s)" in message
    assert result.unseen_elements == [["Ar"]] * 5 + [[]]


def _cli(*args: str):
    from click.testing import CliRunner

    from cgcnn_ase.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_predict_without_model_gives_the_general_properties_in_user_units(tmp_path):
    """'cgcnn-ase predict POSCAR (no --model) exits 2 with a usage error'."""
    import pandas as pd

    from .conftest import REPO

    result = _cli("predict", str(REPO / "examples" / "NaCl.POSCAR"), str(REPO / "examples" / "SrTiO3.cif"))
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split(",")  # not a terminal: csv
    for column in ("formation_energy (eV/atom)", "formation_energy_std (eV/atom)", "band_gap (eV)",
                   "band_gap_raw (eV)", "metal_probability (probability)", "fermi_energy (eV)",
                   "bulk_modulus (GPa)", "bulk_modulus_std (GPa)", "shear_modulus (GPa)",
                   "poisson_ratio (dimensionless)"):  # fmt: skip
        assert column in header
    assert not any(c.startswith("log10_") for c in header)  # only on request
    out = tmp_path / "out.csv"
    assert _cli("predict", str(REPO / "examples" / "NaCl.POSCAR"), "--log10", "-o", str(out)).exit_code == 0
    frame = pd.read_csv(out)
    assert frame.loc[0, "bulk_modulus (GPa)"] == pytest.approx(10 ** frame.loc[0, "log10_bulk_modulus (log10(GPa))"])
    single = CGCNNPredictor.from_pretrained("formation_energy").predict(str(REPO / "examples" / "NaCl.POSCAR"))
    assert frame.loc[0, "formation_energy (eV/atom)"] == pytest.approx(single.values[0], abs=1e-6)


def test_compact_table_fits_100_columns(tmp_path):
    """The readable default for a terminal: one row per structure within 100 characters."""
    from .conftest import REPO

    result = _cli("predict", str(REPO / "examples"), "--format", "table")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert sum(bool(re.search(r"\d±\d", line)) for line in lines) == 3  # one row per example crystal


def test_band_gap_is_gated_by_the_metal_classifier_in_the_property_table():
    """The gated band gap is available beside the raw value, from the library (not only the calculator)."""
    from cgcnn_ase.inference.predictor import as_predictor
    from cgcnn_ase.inference.properties import gated_band_gap, property_table

    copper, salt = bulk("Cu", "fcc", a=3.61), bulk("NaCl", "rocksalt", a=5.64)
    predictors = [as_predictor(name, members=1) for name in ("band_gap", "is_metal")]
    frame, _ = property_table([copper, salt], predictors)
    p_metal = frame["metal_probability (probability)"].to_numpy()
    assert p_metal[0] > 0.5 > p_metal[1]
    assert frame.loc[0, "band_gap (eV)"] == 0.0 and frame.loc[0, "band_gap_raw (eV)"] != 0.0
    assert frame.loc[1, "band_gap (eV)"] == frame.loc[1, "band_gap_raw (eV)"]
    assert gated_band_gap([1.0, 2.0, float("nan")], [0.9, 0.1, 0.2]).tolist()[:2] == [0.0, 2.0]


def test_a_gated_band_gap_has_no_std_or_interval_from_the_regression_in_every_adapter():
    """A metal's band gap is 0 by the classifier: the band-gap ensemble's spread there (median 0.9 eV on MP metals) is not its
    uncertainty. The property table, the ASE calculator and the featurizer give std NaN and bounds 0 for it, and
    keep the regression's std and bounds for a non-metal."""
    import pandas as pd

    from cgcnn_ase import CGCNNCalculator, CGCNNFeaturizer
    from cgcnn_ase.inference.predictor import as_predictor
    from cgcnn_ase.inference.properties import gated_band_gap_result, property_table

    copper, salt = bulk("Cu", "fcc", a=3.61), bulk("NaCl", "rocksalt", a=5.64)
    gap = as_predictor("band_gap")
    raw = gap.predict([copper, salt], coverage=0.9)
    assert raw.std[0] > 0 and raw.lower[0] < raw.upper[0]  # the regression does give a spread for the metal
    frame, _ = property_table([copper, salt], [gap, as_predictor("is_metal")], coverage=0.9)
    row = {name: frame[f"{name} (eV)"].to_numpy() for name in ("band_gap", "band_gap_std", "band_gap_lower", "band_gap_upper")}
    assert row["band_gap"][0] == 0.0 and np.isnan(row["band_gap_std"][0])
    assert row["band_gap_lower"][0] == row["band_gap_upper"][0] == 0.0
    np.testing.assert_allclose([row[n][1] for n in row], [raw.values[1], raw.std[1], raw.lower[1], raw.upper[1]])

    atoms = copper.copy()
    atoms.calc = CGCNNCalculator("band_gap", coverage=0.9)
    assert atoms.calc.get_property("band_gap", atoms) == 0.0 and np.isnan(atoms.calc.get_property("band_gap_std", atoms))
    assert atoms.calc.get_property("band_gap_upper", atoms) == 0.0
    salt_atoms = salt.copy()
    salt_atoms.calc = CGCNNCalculator("band_gap", coverage=0.9)
    assert salt_atoms.calc.get_property("band_gap_std", salt_atoms) == pytest.approx(raw.std[1], rel=1e-6)

    table = CGCNNFeaturizer("band_gap", coverage=0.9).featurize_dataframe(
        pd.DataFrame({"structure": [copper, salt]}), "structure", pbar=False)  # fmt: skip
    assert table.loc[0, "band_gap (eV)"] == 0.0 and np.isnan(table.loc[0, "band_gap_std (eV)"])
    assert table.loc[0, "band_gap_upper (eV)"] == 0.0
    assert table.loc[1, "band_gap_std (eV)"] == pytest.approx(raw.std[1], rel=1e-6)

    value, std, lower, upper = gated_band_gap_result([1.0, 2.0], None, None, None, [0.9, 0.1])
    assert value.tolist() == [0.0, 2.0] and std is None and lower is None and upper is None


MULTIPLE_FEATURIZER = """
import sys, pandas as pd
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor
from matminer.featurizers.base import MultipleFeaturizer
from cgcnn_ase import CGCNNFeaturizer
structures = [AseAtomsAdaptor.get_structure(bulk("NaCl", "rocksalt", a=5.6 + 0.01 * k)) for k in range(3)]
df = pd.DataFrame({"structure": structures})
featurizer = CGCNNFeaturizer(["formation_energy"])
alone = featurizer.featurize_dataframe(df.copy(), "structure", pbar=False)  # torch has now run here
column = "formation_energy (eV/atom)"
for n_jobs in sys.argv[1:]:
    multiple = MultipleFeaturizer([featurizer])
    if n_jobs != "default":
        multiple.set_n_jobs(int(n_jobs))
    out = multiple.featurize_dataframe(df.copy(), "structure", pbar=False)
    assert abs(out[column] - alone[column]).max() < 1e-5, (n_jobs, out[column], alone[column])
    print("ok", n_jobs, flush=True)
"""


def test_multiple_featurizer_finishes_after_torch_has_run():
    """'MultipleFeaturizer([CGCNNFeaturizer(...)]).featurize_dataframe never returns once torch has run'
    (matminer forks a pool of one process per CPU; torch's threads do not survive the fork). One process
    tries each n_jobs in turn, torch having run before each (one process each cost 10 s apiece)."""
    import subprocess
    import sys

    runs = ["1", "2", "default"]
    try:
        done = subprocess.run([sys.executable, "-c", MULTIPLE_FEATURIZER, *runs], capture_output=True, text=True,
                              timeout=240)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"MultipleFeaturizer hung after {exc.stdout!r}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [word for n_jobs in runs for word in ("ok", n_jobs)], done.stdout


def test_forces_are_refused_with_an_explanation_not_asees_generic_message():
    """'The calculator's answer to get_forces is ASE's generic message'."""
    from ase.calculators.calculator import PropertyNotImplementedError

    from cgcnn_ase import CGCNNCalculator

    atoms = bulk("NaCl", "rocksalt", a=5.64)
    atoms.calc = CGCNNCalculator("formation_energy")
    for getter in (atoms.get_forces, atoms.get_stress):
        with pytest.raises(PropertyNotImplementedError, match="not a potential energy surface.*force field"):
            getter()
    assert atoms.get_potential_energy() == pytest.approx(2 * atoms.calc.get_property("formation_energy", atoms))


def test_featurizer_gates_the_band_gap_like_the_calculator():
    """'The band gap is gated by the metal classifier only in the calculator'."""
    import pandas as pd
    from pymatgen.io.ase import AseAtomsAdaptor

    from cgcnn_ase import CGCNNCalculator, CGCNNFeaturizer

    crystals = [bulk("Cu", "fcc", a=3.61), bulk("NaCl", "rocksalt", a=5.64)]
    featurizer = CGCNNFeaturizer(["band_gap"])
    frame = featurizer.featurize_dataframe(
        pd.DataFrame({"s": [AseAtomsAdaptor.get_structure(a) for a in crystals]}), "s", pbar=False
    )
    assert {"band_gap (eV)", "band_gap_raw (eV)", "is_metal (probability)"} <= set(frame.columns)
    assert frame.loc[0, "band_gap (eV)"] == 0.0 < frame.loc[0, "band_gap_raw (eV)"]
    calc = CGCNNCalculator("band_gap")
    for k, atoms in enumerate(crystals):
        assert calc.get_property("band_gap", atoms) == pytest.approx(frame.loc[k, "band_gap (eV)"], abs=1e-6)
    ungated = CGCNNFeaturizer(["band_gap"], metal_threshold=None).feature_labels()
    assert "band_gap_raw (eV)" not in ungated


def test_an_atom_a_million_cells_away_is_wrapped_before_the_neighbor_search():
    """'one atom shifted by 10^6 lattice vectors asks for terabytes in the neighbour search'."""
    import numpy as np

    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    crystal = bulk("NaCl", "rocksalt", a=5.64)
    shifted = crystal.copy()
    frac = shifted.get_scaled_positions(wrap=False)
    frac[1] += [1e6, -1e6, 3e6]
    shifted.set_scaled_positions(frac)
    wrapped = shifted.copy()
    wrapped.wrap()
    values = predictor.predict([shifted, wrapped, crystal]).values
    assert np.allclose(values, values[2], atol=1e-5)  # float rounding of the 10^6 shift only


def test_a_nearly_flat_cell_is_refused_before_searching():
    """'A nearly flat cell (20 x 20 x 0.0001 Å) spends about 20 s in the neighbour search before its error'."""
    import time

    from ase import Atoms

    from cgcnn_ase.errors import InvalidStructureError

    flat = Atoms("Cu2", positions=[[0, 0, 0], [1, 1, 0]], cell=[20, 20, 0.0001], pbc=True)
    start = time.perf_counter()
    with pytest.raises(InvalidStructureError, match="nearly flat: 0.0001 Å thick"):
        CGCNNPredictor.from_pretrained("formation_energy", members=1).predict(flat)
    assert time.perf_counter() - start < 5
    # a skewed basis of a good lattice is not flat: its reduced cell is thick
    skewed = Atoms("Cu", positions=[[0, 0, 0]], cell=[[2.55, 0, 0], [2.55 * 60, 2.55, 0], [0, 0, 2.55]], pbc=True)
    from cgcnn_ase.io.records import cell_thickness

    assert cell_thickness(skewed.cell.array) > 2.0


def test_atoms_far_closer_than_their_covalent_radii_are_warned_about():
    """'fcc Cu at a = 0.707 Å gives +1.92 eV/atom' without a word (the 0.3 Å error stays)."""
    from cgcnn_ase.errors import CloseAtomsWarning, InvalidStructureError

    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1)
    with pytest.warns(CloseAtomsWarning, match=r"0.500 Å apart, 0.22 x the sum of their covalent radii"):
        predictor.predict(bulk("Cu", "fcc", a=0.707))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CloseAtomsWarning)
        predictor.predict([bulk("Cu", "fcc", a=3.61), bulk("NaCl", "rocksalt", a=5.64)])  # ordinary: silent
    from ase import Atoms

    with pytest.raises(InvalidStructureError, match="overlapping atoms"):
        predictor.predict(Atoms("Cu2", positions=[[0, 0, 0], [0.2, 0, 0]], cell=[5, 5, 5], pbc=True))


DISORDER_CIF = """data_x
_cell_length_a 4.0
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Fe1 Fe 0 0 0 {fe}
{co}O1 O 0.5 0.5 0.5 1.0
"""


def _write_cif(path, fe: float, co: float | None = None) -> str:
    import bz2
    import gzip

    text = DISORDER_CIF.format(fe=fe, co=f"Co1 Co 0 0 0 {co}\n" if co is not None else "")
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "wt") as f:
        f.write(text)
    return str(path)


@pytest.mark.parametrize("name", ["mixed.cif.gz", "mixed.cif.bz2", "mixed.txt"])
@pytest.mark.parametrize("reader", ["gemmi", "pymatgen"])
def test_a_disordered_cif_is_refused_whatever_its_name_or_compression(tmp_path, name, reader):
    """'A disordered CIF compressed as .cif.gz ... gets a number with exit code 0'."""
    from cgcnn_ase.errors import InvalidStructureError
    from cgcnn_ase.io.reader import read_records

    path = _write_cif(tmp_path / name, 0.5, 0.5)
    with pytest.raises(InvalidStructureError, match="disordered"):
        read_records(path, cif_reader=reader)
    result = _cli("predict", path, "-m", "formation_energy")
    assert result.exit_code == 1 and "disordered" in result.stderr


def test_occupancy_above_one_is_an_error_and_0_9999_is_full(tmp_path):
    """'_atom_site_occupancy 1.5 is accepted on the gemmi path'; '"disordered (occupancy 1)" is self-contradictory'."""
    from cgcnn_ase.errors import InvalidStructureError
    from cgcnn_ase.io.reader import read_records

    over = _write_cif(tmp_path / "over.cif", 1.5)
    with pytest.raises(InvalidStructureError, match="occupancy 1.5, above 1"):
        read_records(over)
    with pytest.raises(InvalidStructureError):  # pymatgen refuses it too (its own message)
        read_records(over, cif_reader="pymatgen")
    full = _write_cif(tmp_path / "full.cif.gz", 0.9999)
    (gemmi_record,) = read_records(full)
    (pymatgen_record,) = read_records(full, cif_reader="pymatgen")
    assert gemmi_record.numbers.tolist() == pymatgen_record.numbers.tolist() == [26, 8]
    partial = _write_cif(tmp_path / "partial.cif", 0.9)
    with pytest.raises(InvalidStructureError, match=r"partial occupancy 0.9\b") as caught:
        read_records(partial)
    assert "occupancy 1)" not in str(caught.value)


@pytest.mark.parametrize("model", [None, "formation_energy"])
def test_a_second_run_over_a_folder_does_not_read_its_own_output(tmp_path, monkeypatch, model):
    """'cgcnn-ase predict . -o out.csv reads its own output file as an input on the next run';
    'ids should be written the same way for all inputs (./bad.cif vs NaCl.POSCAR today)'."""
    import shutil

    import pandas as pd

    from .conftest import REPO

    for name in ("NaCl.POSCAR", "SrTiO3.cif"):
        shutil.copy(REPO / "examples" / name, tmp_path / name)
    (tmp_path / "bad.cif").write_text("junk\n")
    monkeypatch.chdir(tmp_path)
    args = ["predict", ".", "-o", "out.csv"] + (["--model", model] if model else [])
    first = _cli(*args)
    second = _cli(*args)
    assert first.exit_code == second.exit_code == 1  # bad.cif, and nothing else
    frame = pd.read_csv("out.csv")
    assert frame["id"].tolist() == ["NaCl.POSCAR", "SrTiO3.cif", "bad.cif"]
    assert frame["error"].notna().tolist() == [False, False, True]
    assert "out.csv" not in second.stderr


def test_model_files_get_the_users_umask_not_0600(tmp_path):
    """'Model weights are written with mode 0600'."""
    import stat

    from cgcnn_ase.models.domain import DomainSummary
    from cgcnn_ase.models.folder import save_model_folder

    from .conftest import random_model

    folder = save_model_folder(tmp_path / "m", random_model())
    rng = __import__("numpy").random.default_rng(0)
    DomainSummary.build(rng.normal(size=(20, 16)), rng.normal(size=(5, 16)), max_centers=10).save(folder / "d.safetensors")
    previous = os.umask(0)
    os.umask(previous)
    expected = 0o666 & ~previous
    for name in ("weights.safetensors", "d.safetensors", "model.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == expected, name


def test_models_listing_fits_100_columns_and_help_is_not_truncated():
    """'cgcnn-ase models prints a table about 220 characters wide; --help truncates command descriptions'."""
    listing = _cli("models")
    assert listing.exit_code == 0 and max(len(line) for line in listing.stdout.splitlines()) <= 100
    assert "formation_energy" in listing.stdout and "MAE" in listing.stdout
    help_text = _cli("--help").stdout
    commands = help_text.split("Commands:")[1].splitlines()
    assert len([c for c in commands if c.strip()]) == 8 and not any(c.rstrip().endswith("...") for c in commands)


def test_sites_suggests_the_command_line_flag():
    """'cgcnn-ase sites suggests allow_mean_pooled=True instead of --allow-mean-pooled'."""
    from .conftest import REPO

    result = _cli("sites", str(REPO / "examples" / "NaCl.POSCAR"), "-m", "formation_energy", "-o", "unused")
    assert result.exit_code == 2 and "--allow-mean-pooled" in result.stderr  # usage, as README's exit codes say


def test_a_training_run_is_named_after_its_own_folder_not_the_shipped_model(tmp_path):
    """'a training run's folder takes the shipped model's name from the config'."""
    from cgcnn_ase.models.registry import list_models
    from cgcnn_ase.train.config import load_config

    from .conftest import REPO

    shipped = {info.name for info in list_models()}
    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = load_config(path, [f"output={tmp_path / 'mine'}"])
        assert config.model_name == "mine", path.name
        default = load_config(path)
        assert default.model_name not in shipped and not str(default.output).startswith("pretrained_models")


def test_evaluate_writes_its_plot_without_an_output_option(trained, tmp_path, monkeypatch):
    """'evaluate makes no plot without -o'."""
    _, folder = trained
    monkeypatch.chdir(tmp_path)
    result = _cli("evaluate", str(folder))
    assert result.exit_code == 0, result.output
    written = tmp_path / "evaluation" / f"{folder.name}-test"
    assert {"metrics.json", "predictions.csv", "parity.png"} <= {p.name for p in written.iterdir()}
    assert str(written.relative_to(tmp_path)) in result.stderr


def test_cif_text_is_accepted_by_predict():
    """'CIF text passed to predict() gives "not a readable file path (File name too long)"'."""
    from .conftest import REPO

    path = REPO / "examples" / "SrTiO3.cif"
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1)
    from_text = predictor.predict(path.read_text())
    from_file = predictor.predict(str(path))
    assert from_text.errors == [None] and from_text.values[0] == from_file.values[0]


# -- the second hostile-input round (2026-11-28) ----------------------------------------------------


@pytest.mark.parametrize("kind", ["cif", "table"])
def test_an_output_that_is_also_an_input_is_refused_before_anything_is_written(tmp_path, kind):
    """'-o naming one of the inputs destroys it (the table was left with only the header line)'."""
    import shutil

    import pandas as pd

    from cgcnn_ase.cli import EXIT_USAGE

    from .conftest import REPO

    path = tmp_path / ("victim.cif" if kind == "cif" else "mydata.csv")
    if kind == "cif":
        shutil.copy(REPO / "examples" / "SrTiO3.cif", path)
    else:
        pd.DataFrame({"id": ["a"], "cif": [(REPO / "examples" / "SrTiO3.cif").read_text()]}).to_csv(path, index=False)
    before = path.read_bytes()
    for extra in ([], ["--model", "formation_energy"], ["--model", "formation_energy", "--format", "json"]):
        result = _cli("predict", str(path), "-o", str(path), *extra)
        assert result.exit_code == EXIT_USAGE, result.output
        assert "is also an input" in result.stderr and path.read_bytes() == before
    pattern = _cli("predict", str(tmp_path / "*"), "-o", str(path))  # a pattern that matches the output too
    assert pattern.exit_code == EXIT_USAGE and path.read_bytes() == before
    folder = _cli("predict", str(tmp_path), "-o", str(tmp_path), "--format", "parquet")  # parts among the inputs
    assert folder.exit_code == EXIT_USAGE and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_an_output_below_a_file_is_a_usage_error_not_an_internal_one(tmp_path):
    """'-o lf.cif/out.csv: internal error (FileExistsError ...) ... report it'."""
    from cgcnn_ase.cli import EXIT_USAGE

    from .conftest import REPO

    (tmp_path / "lf.cif").write_text("data_x\n")
    for name in ("out.csv", "sub/out.parquet"):
        result = _cli("predict", str(REPO / "examples" / "NaCl.POSCAR"), "-m", "formation_energy",
                      "-o", str(tmp_path / "lf.cif" / name))  # fmt: skip
        assert result.exit_code == EXIT_USAGE, result.output
        assert "is a file, not a folder" in result.stderr and "internal error" not in result.stderr


def test_a_json_output_name_gives_json(tmp_path):
    """'-o results.json silently writes CSV'."""
    import json

    from .conftest import REPO

    out = tmp_path / "results.json"
    result = _cli("predict", str(REPO / "examples" / "NaCl.POSCAR"), "-m", "formation_energy", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["results"][0]["id"].endswith("NaCl.POSCAR")


def test_a_folder_in_the_original_cgcnn_layout_predicts_its_cifs(tmp_path):
    """'the original CGCNN data folder (N.cif, id_prop.csv, atom_init.json) always exits 1; a README in a
    folder is an error'."""
    import shutil

    import pandas as pd

    from .conftest import REPO

    for k, name in enumerate(("SrTiO3.cif", "SrTiO3.cif")):
        shutil.copy(REPO / "examples" / name, tmp_path / f"{k}.cif")
    (tmp_path / "id_prop.csv").write_text("0,1.0\n1,2.0\n")
    (tmp_path / "atom_init.json").write_text('{"1": [0, 1], "8": [1, 0]}')  # the layout's element table
    (tmp_path / "README.md").write_text("# my crystals\n")
    result = _cli("predict", str(tmp_path), "-m", "formation_energy")
    assert result.exit_code == 0, result.output
    import io

    assert [p.rsplit("/", 1)[-1] for p in pd.read_csv(io.StringIO(result.stdout))["id"]] == ["0.cif", "1.cif"]
    assert "left out 3 file(s)" in result.stderr and "README.md" in result.stderr
    named = _cli("predict", str(tmp_path / "README.md"), "-m", "formation_energy")  # named on its own: read
    assert named.exit_code == 1


def test_a_missing_table_column_writes_nothing_to_stdout(tmp_path):
    """'predict table.csv --column nosuch prints the CSV header on stdout before the usage error'."""
    import pandas as pd

    from cgcnn_ase.cli import EXIT_USAGE

    from .conftest import REPO

    table = tmp_path / "t.csv"
    pd.DataFrame({"id": ["a"], "cif": [(REPO / "examples" / "SrTiO3.cif").read_text()]}).to_csv(table, index=False)
    for extra in ([], ["--model", "formation_energy"]):
        result = _cli("predict", str(table), "--column", "nosuch", *extra)
        assert result.exit_code == EXIT_USAGE and result.stdout == "", result.output
        assert "no structure column 'nosuch'" in result.stderr


def test_every_shipped_model_records_its_training_elements():
    """'perovskite_formation_energy never warns about unseen elements (no elements_seen); --all labels the
    Cl of NaCl with the other perovskite model's property name'."""
    import io

    import pandas as pd

    from cgcnn_ase.models.registry import list_models

    from .conftest import REPO

    for info in list_models():
        assert info.metadata.get("elements_seen"), info.name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CGCNNPredictor.from_pretrained("perovskite_formation_energy").predict(str(REPO / "examples" / "NaCl.POSCAR"))
    assert result.unseen_elements == [["Cl"]]
    assert any(issubclass(w.category, UnseenElementWarning) for w in caught)
    both = _cli("predict", str(REPO / "examples" / "NaCl.POSCAR"), "-m", "perovskite_formation_energy",
                "-m", "perovskite_site_energy")  # fmt: skip
    cell = pd.read_csv(io.StringIO(both.stdout))["unseen_elements"][0]
    assert cell == "Cl (perovskite_formation_energy-castelli_cmr-v1, perovskite_site_energy-castelli_cmr-v1)"


def test_table_ids_never_shorten_into_each_other():
    """'the terminal table shows both ase_Si2.extxyz and ase_Ti2.extxyz as ...i2.extxyz'."""
    from cgcnn_ase.inference.properties import short_ids

    ids = ["data/known/ase_Si2.extxyz", "data/known/ase_Ti2.extxyz", "data/known/ase_Si2.extxyz"]
    short = short_ids(ids, 12)
    assert short[0] != short[1] and short[0] == short[2] and all(s.endswith(i[-14:]) for s, i in zip(short, ids))
    deep = ["run/a/1/x.cif", "run/b/1/x.cif"]  # the same file name: kept apart by the folders
    assert len(set(short_ids(deep, 8))) == 2
    assert short_ids(["short.cif"], 40) == ["short.cif"]


def test_the_default_table_shows_how_far_a_crystal_lies_from_the_training_data(tmp_path):
    """'Diamond comes out as a metal with Eg 0 and the default table gives no hint (96-100th percentile
    with --domain only)'."""
    from ase.io import write

    from .conftest import REPO

    write(tmp_path / "diamond.cif", bulk("C", "diamond", a=3.567))
    result = _cli("predict", str(REPO / "examples" / "NaCl.POSCAR"), str(tmp_path / "diamond.cif"), "--format", "table")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[-1] == "dom%" and "median over the models" in result.stdout
    nacl, diamond = (line.split()[-1] for line in lines[1:3])
    assert int(nacl) < 50 and int(diamond.rstrip("!")) >= 95 and diamond.endswith("!")  # some model at 100 (round 25a)
    from cgcnn_ase.inference.predictor import as_predictor
    from cgcnn_ase.inference.properties import GENERAL_MODELS, std_coverage

    low, high = std_coverage([as_predictor(name) for name in GENERAL_MODELS])  # the models' own test figures
    assert 0.68 < low < high < 1 and f"it holds {low:.0%}-{high:.0%} of test errors" in " ".join(lines)


def test_models_that_agree_about_unseen_elements_share_one_warning_line(tmp_path):
    """'one Ar crystal without --model prints 7 near-identical warnings ending "(result.unseen_elements lists
    them per structure)", a Python attribute in command-line output'."""
    from ase.io import write

    write(tmp_path / "ar.cif", bulk("Ar", "fcc", a=5.26))
    result = _cli("predict", str(tmp_path / "ar.cif"))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "did not occur" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: models formation_energy-")
    assert lines[0].count("-mp_") == 7 and "the unseen_elements column" in lines[0] and "result." not in lines[0]


def test_repeated_ids_in_an_output_are_warned_about(tmp_path):
    """'two tables with the same ids give duplicate mp-1 rows with no warning'."""
    import pandas as pd

    from .conftest import REPO

    cif = (REPO / "examples" / "SrTiO3.cif").read_text()
    for name in ("a.csv", "b.csv"):
        pd.DataFrame({"material_id": ["mp-1"], "cif": [cif]}).to_csv(tmp_path / name, index=False)
    result = _cli("predict", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--id-column", "material_id",
                  "-m", "formation_energy", "-o", str(tmp_path / "out.csv"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ids repeat in the output (mp-1)" in result.stderr
    assert pd.read_csv(tmp_path / "out.csv")["id"].tolist() == ["mp-1", "mp-1"]
    unique = _cli("predict", str(tmp_path / "a.csv"), "-m", "formation_energy", "-o", str(tmp_path / "one.csv"))
    assert "ids repeat" not in unique.stderr


def test_a_model_that_outputs_nan_gives_errors_not_numbers(crystals, tmp_path):
    """A diverged model (here: NaN output bias) must not hand out NaN as a prediction with no error: each row
    gets an error (the CLI then exits 1), and errors="raise" raises."""
    import torch
    from ase.io import write
    from click.testing import CliRunner

    from cgcnn_ase.cli import main
    from cgcnn_ase.errors import CheckpointError
    from cgcnn_ase.inference.predictor import CGCNNPredictor
    from cgcnn_ase.models.folder import save_model_folder

    from .conftest import random_model

    model = random_model()
    with torch.no_grad():
        model.heads()[0][0].fc_out.bias.fill_(float("nan"))
    predictor = CGCNNPredictor(model, device="cpu")
    result = predictor.predict(crystals, errors="collect")
    assert np.isnan(result.values).all() and all("non-finite" in e for e in result.errors)
    with pytest.raises(CheckpointError, match="non-finite"):
        predictor.predict(crystals[:1])
    folder = save_model_folder(tmp_path / "nan", model)
    write(tmp_path / "nacl.cif", crystals[1])
    cli = CliRunner().invoke(main, ["predict", str(tmp_path / "nacl.cif"), "--model", str(folder)])
    assert cli.exit_code == 1 and "non-finite" in cli.stderr


# -- outside testing, round 4 (several models together) -------------------------------------------------


def test_an_output_naming_a_structure_file_of_an_input_folder_is_refused(tmp_path):
    """'-o folder/SrTiO3.cif silently left that crystal out and overwrote it with the csv (exit 0)'."""
    import shutil

    from .conftest import REPO

    for name in ("SrTiO3.cif", "NaCl.POSCAR"):
        shutil.copy(REPO / "examples" / name, tmp_path / name)
    before = (tmp_path / "SrTiO3.cif").read_text()
    for models in ([], ["-m", "formation_energy", "-m", "band_gap"]):
        result = _cli("predict", str(tmp_path), *models, "-o", str(tmp_path / "SrTiO3.cif"), "--workers", "1")
        assert result.exit_code == 2 and "structure file of the input folder" in result.output
        assert (tmp_path / "SrTiO3.cif").read_text() == before
    # a table of results inside the folder is still fine, and left out of the inputs on the next run
    for _ in range(2):
        result = _cli("predict", str(tmp_path), "-m", "formation_energy", "-o", str(tmp_path / "res.csv"))
        assert result.exit_code == 0 and len((tmp_path / "res.csv").read_text().splitlines()) == 3


def test_file_names_with_an_at_sign_are_names_not_frame_selectors(tmp_path):
    """'Si@300K.extxyz fails with FileNotFoundError .../Si; a file x.extxyz@1 was read as frame 1 of x.extxyz'."""
    from ase.io import write

    from cgcnn_ase.io.reader import read_structures

    silicon, salt, copper, aluminium = (bulk("Si"), bulk("NaCl", "rocksalt", a=5.64), bulk("Cu", "fcc", a=3.6),
                                        bulk("Al", "fcc", a=4.05))  # fmt: skip
    write(tmp_path / "Si@300K.extxyz", silicon, format="extxyz")
    write(tmp_path / "NaCl@2.vasp", salt, format="vasp")
    write(tmp_path / "x.extxyz", [copper, aluminium], format="extxyz")
    write(tmp_path / "y@1.extxyz", silicon, format="extxyz")
    assert read_structures(tmp_path / "Si@300K.extxyz")[0].numbers.tolist() == [14, 14]
    assert read_structures(str(tmp_path / "NaCl@2.vasp"))[0].numbers.tolist() == [11, 17]
    out = tmp_path / "out.csv"
    result = _cli("predict", str(tmp_path), "-m", "formation_energy", "-m", "band_gap", "-o", str(out))
    assert result.exit_code == 0, result.output
    import pandas as pd

    frame = pd.read_csv(out).set_index("id")
    ids = [str(tmp_path / n) for n in ("NaCl@2.vasp", "Si@300K.extxyz", "x.extxyz@0", "x.extxyz@1", "y@1.extxyz")]
    assert sorted(frame.index) == ids
    value = "formation_energy (eV/atom)"
    assert frame.loc[ids[1], value] == frame.loc[ids[4], value]  # both silicon: the y@1 file is not frame 1 of y
    assert frame.loc[ids[3], value] != frame.loc[ids[1], value]  # aluminium, not the silicon of another file


def test_the_featurizer_gives_a_row_error_for_an_input_of_several_structures(tmp_path):
    """'CGCNNFeaturizer raised IndexError on a multi-frame file or two-block CIF text, even with ignore_errors'."""
    from ase.io import write

    from cgcnn_ase import CGCNNFeaturizer
    from cgcnn_ase.errors import StructureReadError

    from .conftest import REPO

    write(tmp_path / "two.extxyz", [bulk("Cu", "fcc", a=3.6), bulk("Al", "fcc", a=4.05)], format="extxyz")
    text = (REPO / "examples" / "SrTiO3.cif").read_text()
    two_blocks = text + "\n" + text.replace("data_", "data_second", 1)
    featurizer = CGCNNFeaturizer([CGCNNPredictor.from_pretrained(n, members=1, device="cpu")
                                  for n in ("formation_energy", "band_gap")])  # fmt: skip
    inputs = [str(tmp_path / "two.extxyz"), str(REPO / "examples" / "NaCl.POSCAR"), two_blocks, bulk("Si"), text]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = featurizer.featurize_many(inputs, ignore_errors=True, return_errors=True, pbar=False)
        alone = featurizer.featurize_many(inputs[1:2] + inputs[3:], pbar=False)
        with pytest.raises(StructureReadError, match="holds 2 structures"):
            featurizer.featurize(inputs[0])
    # round 29c: the row names itself, as every other row's message (no "input 2: " prefix); a file keeps its path
    assert "holds 2 structures" in rows[0][-1] and rows[2][-1].startswith("the CIF text holds 2 structures")
    assert all(np.isnan(rows[k][:-1]).all() for k in (0, 2))
    np.testing.assert_array_equal([rows[k][:-1] for k in (1, 3, 4)], alone)  # the others as if alone
    assert all(isinstance(rows[k][-1], float) and np.isnan(rows[k][-1]) for k in (1, 3, 4))


@pytest.mark.parametrize("fmt", ["json", "table", "csv"])
def test_the_default_command_on_an_empty_folder_warns_in_every_format(tmp_path, fmt):
    """'--format json or table on an empty folder: internal error (KeyError)'."""
    (tmp_path / "empty").mkdir()
    result = _cli("predict", str(tmp_path / "empty"), "--format", fmt)
    assert result.exit_code == 1 and "held no structures" in result.stderr  # round 15: 0 is 'all predicted'
    named = _cli("predict", str(tmp_path / "empty"), "--format", fmt, "-m", "formation_energy")
    assert named.exit_code == 1 and "held no structures" in named.stderr


def test_atom_init_applies_to_the_checkpoints_among_several_models(tmp_path):
    """'-m formation_energy -m X.pth.tar --atom-init A: --atom-init applies to original checkpoints only'."""
    from .conftest import ATOM_INIT, REFERENCE, REPO, require_shared

    example = str(REPO / "examples" / "NaCl.POSCAR")
    refused = _cli("predict", example, "-m", "formation_energy", "--atom-init", str(tmp_path / "a.json"))
    assert refused.exit_code == 2  # the file does not exist
    (tmp_path / "a.json").write_text("{}")
    for models in (["-m", "formation_energy"], []):
        refused = _cli("predict", example, *models, "--atom-init", str(tmp_path / "a.json"))
        assert refused.exit_code == 2 and "none among the models" in refused.output
    checkpoint = require_shared(REFERENCE / "pre-trained" / "formation-energy-per-atom.pth.tar")
    mixed = _cli("predict", example, "-m", "formation_energy", "-m", str(checkpoint), "--atom-init", str(ATOM_INIT))
    assert mixed.exit_code == 0, mixed.output
    header, row = mixed.stdout.splitlines()[:2]
    values = dict(zip(header.split(","), row.split(",")))
    ours = float(values["formation_energy: formation_energy (eV/atom)"])
    authors = float(values[f"{checkpoint}: formation_energy (eV/atom)"])
    assert ours == pytest.approx(-2.12, abs=0.05) and authors == pytest.approx(-2.11, abs=0.05) and ours != authors


def test_interval_bounds_stay_within_the_physical_range():
    """'band_gap_lower was negative for 17 of 300 crystals; poisson_ratio_upper reached 0.524'."""
    predictor = CGCNNPredictor.from_pretrained("band_gap", device="cpu")
    metals = [bulk(s, "fcc", a=a) for s, a in (("Cu", 3.6), ("Al", 4.05), ("Ni", 3.52), ("Ag", 4.09))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = predictor.predict(metals, coverage=0.99)
    half = predictor.model.conformal_quantile(0.99) * predictor._interval_scale(result)
    assert (result.values - half < 0).any()  # unclipped, some lower bounds would be negative
    assert (result.lower >= 0).all() and np.array_equal(result.upper, result.values + half)
    from cgcnn_ase.inference.predictor import PHYSICAL_RANGE

    assert PHYSICAL_RANGE["poisson_ratio"] == (-1.0, 0.5)


def test_empty_id_cells_fall_back_to_the_row_and_other_small_reports(tmp_path):
    """'a NaN in --id-column gave the id "CIF text"'; 'workers="2": bare TypeError'; '--per-atom atom column
    became float beside a failed row'; 'predict_stream with one model twice wrote duplicate headers'."""
    import io

    import pandas as pd

    from cgcnn_ase.errors import StreamError
    from cgcnn_ase.inference.predictor import predict_many
    from cgcnn_ase.inference.streaming import predict_stream
    from cgcnn_ase.io.inputs import iter_inputs

    from .conftest import REPO

    text = (REPO / "examples" / "SrTiO3.cif").read_text()
    table = tmp_path / "t.csv"
    pd.DataFrame({"name": ["a", None, " "], "cif": [text] * 3}).to_csv(table, index=False)
    assert [i for i, _ in iter_inputs([str(table)], id_column="name")] == ["a", f"{table}@1", f"{table}@2"]
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    with pytest.raises(ValueError, match="workers must be at least 1"):
        predict_many([predictor], [bulk("Si")], workers="2")
    (tmp_path / "bad.cif").write_text("junk\n")
    out = tmp_path / "atoms.csv"
    _cli("predict", str(REPO / "examples" / "NaCl.POSCAR"), str(tmp_path / "bad.cif"), "-m", "formation_energy",
         "--per-atom", "-o", str(out))  # fmt: skip
    assert out.read_text().splitlines()[1].split(",")[1] == "0"
    with pytest.raises(StreamError, match="named alike"):
        predict_stream([str(REPO / "examples" / "NaCl.POSCAR")], ["formation_energy", "formation_energy"], io.StringIO())


def test_the_calculator_gates_any_band_gap_model_whatever_its_name():
    """Round 5: 'CGCNNCalculator("band_gap-mp_cgcnn46k-v4") gave Cu a gap of 0.44 eV; "band_gap" gave 0'."""
    from cgcnn_ase import CGCNNCalculator
    from cgcnn_ase.models.registry import resolve_model

    gaps = []
    for name in ("band_gap", resolve_model("band_gap").path.name):
        copper = bulk("Cu", "fcc", a=3.6)
        copper.calc = CGCNNCalculator(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gaps.append((copper.calc.get_property("band_gap", copper), copper.calc.results.get("metal_probability")))
    assert gaps[0] == gaps[1] and gaps[0][0] == 0.0 and gaps[0][1] > 0.5
    with pytest.raises(ValueError, match="metal_threshold"):
        CGCNNCalculator("band_gap", metal_threshold=1.5)
    with pytest.raises(ValueError, match="on_sparse"):
        CGCNNCalculator("formation_energy", on_sparse="nonsense")


def test_a_coverage_beyond_a_models_calibrated_levels_is_a_usage_error(monkeypatch):
    """Round 5: '--coverage 0.95 on a small ensemble calibrated up to 0.92: internal error, exit 4'."""
    from cgcnn_ase.models.folder import LoadedModel

    from .conftest import REPO

    real = LoadedModel.conformal_quantile

    def short_levels(self, coverage):  # as a model calibrated on a small validation split
        if coverage > 0.92:
            raise ValueError(f"coverage must lie between 0.5 and 0.92, got {coverage}")
        return real(self, coverage)

    monkeypatch.setattr(LoadedModel, "conformal_quantile", short_levels)
    example = str(REPO / "examples" / "NaCl.POSCAR")
    for models in (["-m", "formation_energy"], []):
        result = _cli("predict", example, *models, "--coverage", "0.95")
        assert result.exit_code == 2 and "between 0.5 and 0.92" in result.output
    assert _cli("predict", example, "-m", "formation_energy", "--coverage", "0.9").exit_code == 0


def test_sites_lists_failed_inputs_and_exits_one(tmp_path):
    """Round 5: '`cgcnn-ase sites` exits 0 when inputs fail, and its warning prints a Python tuple'."""
    import pandas as pd

    from .conftest import REPO

    bad = tmp_path / "bad.cif"
    bad.write_text("garbage\n")
    out = tmp_path / "report"
    result = _cli("sites", str(REPO / "examples" / "SrTiO3.cif"), str(bad), str(tmp_path / "missing.cif"),
                  "-m", "perovskite_site_energy", "-o", str(out))  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"error: {bad}: not a readable CIF" in result.stderr and "missing.cif: no such file" in result.stderr
    assert "('" not in result.output and "later warning(s)" not in result.stderr
    skipped = pd.read_csv(out / "skipped.csv")
    assert [p.rsplit("/", 1)[-1] for p in skipped["structure"]] == ["bad.cif", "missing.cif"]
    assert set(pd.read_csv(out / "sites.csv")["structure"].map(lambda p: p.rsplit("/", 1)[-1])) == {"SrTiO3.cif"}
    good = _cli("sites", str(REPO / "examples" / "SrTiO3.cif"), "-m", "perovskite_site_energy", "-o", str(out))
    assert good.exit_code == 0 and not (out / "skipped.csv").exists()  # not left over from the run before


def test_coverage_is_handled_alike_everywhere():
    """Round 5: 'members=1 and is_metal point to calibrate; the calculator silently gives no bounds;
    coverage="0.9" gives a TypeError from deep inside; calc.set(coverage=...) has no effect; calc.todict() is empty'."""
    from cgcnn_ase import CGCNNCalculator
    from cgcnn_ase.integrations.matminer import CGCNNFeaturizer

    from .conftest import REPO

    salt = bulk("NaCl", "rocksalt", a=5.64)
    with pytest.raises(ValueError, match="runs 1 of its 5 members.*without members="):
        CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu").predict(salt, coverage=0.9)
    with pytest.raises(ValueError, match="is a classifier"):
        CGCNNPredictor.from_pretrained("is_metal", device="cpu").predict(salt, coverage=0.9)
    with pytest.raises(TypeError, match="coverage is a probability such as 0.9, got '0.9'"):
        CGCNNPredictor.from_pretrained("formation_energy", device="cpu").predict(salt, coverage="0.9")
    with pytest.raises(ValueError, match="is a single network"):  # the calculator no longer drops it silently
        CGCNNCalculator("perovskite_formation_energy", coverage=0.9)
    with pytest.raises(ValueError, match="is a single network"):
        CGCNNFeaturizer("perovskite_formation_energy", coverage=0.9).feature_labels()
    result = _cli("predict", str(REPO / "examples" / "SrTiO3.cif"), "-m", "perovskite_formation_energy", "--coverage", "0.9")
    assert result.exit_code == 2 and "single network" in result.output
    every = _cli("predict", str(REPO / "examples" / "SrTiO3.cif"), "--all", "--coverage", "0.9")  # where it can
    assert every.exit_code == 0 and "no intervals from perovskite_formation_energy" in every.stderr
    assert "formation_energy: formation_energy_lower" in every.stdout.splitlines()[0]

    calc = CGCNNCalculator("formation_energy")
    assert calc.todict()["models"] == ["formation_energy-mp_cgcnn46k-v3"] and "coverage" not in calc.todict()  # 32b
    salt.calc = calc
    calc.get_property("formation_energy", salt)
    assert "formation_energy_lower" not in calc.results
    assert calc.set(coverage=0.8) == {"coverage": 0.8} and calc.todict()["coverage"] == 0.8
    salt.calc.get_property("formation_energy", salt)
    lower, upper = calc.results["formation_energy_lower"], calc.results["formation_energy_upper"]
    assert lower < calc.results["formation_energy"] < upper and "formation_energy_upper" in calc.result_names
    with pytest.raises(TypeError, match="no setting 'coverag'"):
        calc.set(coverag=0.9)
    with pytest.raises(TypeError, match="no setting 'coverag'"):
        CGCNNCalculator("formation_energy", coverag=0.9)
    with pytest.raises(TypeError, match="fixed"):
        calc.set(models=["band_gap"])
    with pytest.raises(ValueError, match="metal_threshold"):
        calc.set(metal_threshold=2)
    assert calc.coverage == 0.8  # a refused change leaves the settings as they were


def test_the_featurizer_gates_any_band_gap_model_whatever_its_name():
    """Round 5's calculator report, in the featurizer: a band-gap model named by its folder went ungated."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from cgcnn_ase.integrations.matminer import CGCNNFeaturizer
    from cgcnn_ase.models.registry import resolve_model

    copper = AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=3.6))
    for name in ("band_gap", resolve_model("band_gap").path.name):
        featurizer = CGCNNFeaturizer(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row = dict(zip(featurizer.feature_labels(), featurizer.featurize(copper)))
        assert row["band_gap (eV)"] == 0.0 and row["band_gap_raw (eV)"] > 0


def test_evaluate_names_the_model_and_writes_strict_json(tmp_path):
    """Round 5: 'the evaluate warning lacks the model name, and its metrics.json holds bare NaN'."""
    import json

    import pandas as pd
    from ase.io import write

    write(tmp_path / "ar.cif", bulk("Ar", "fcc", a=5.26))
    table = pd.DataFrame({"id": ["ar"], "K": [3.0], "cif": [(tmp_path / "ar.cif").read_text()]})
    table.to_csv(tmp_path / "one.csv", index=False)
    result = _cli("evaluate", "bulk_modulus", str(tmp_path / "one.csv"), "--split", "all", "--target", "K",
                  "--id-column", "id", "-o", str(tmp_path / "ev"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "bulk_modulus-mp_elastic3k" in result.stderr and "1 of 1 structures hold elements" in result.stderr
    assert "\r" not in result.stderr  # round 6: no progress bars when stderr is not a terminal

    def refuse(constant):
        raise AssertionError(f"metrics.json holds {constant}, which is not JSON")

    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["n"] == 1 and metrics["metrics"]["r2"] is None  # undefined for one crystal
    json.loads(result.stdout, parse_constant=refuse)


def test_small_reports_on_screening_maps_and_model_names(tmp_path):
    """Round 5: 'screen_perovskites accepts cutoff=nan ("shrunk infx")', 'site_energy_maps({"a": 1}):
    AttributeError', 'models <folder> says unknown model', 'the Did you mean suggestions are poor'."""
    from cgcnn_ase.analysis.screening import screen_perovskites
    from cgcnn_ase.analysis.site_maps import site_energy_maps
    from cgcnn_ase.errors import UnknownModelError
    from cgcnn_ase.models.registry import resolve_model

    from .conftest import REPO

    means = {"A": {"Sr": -0.1}, "B": {"Ti": -0.2}, "X": {"O": -0.3}}
    for bad in (float("nan"), float("inf"), "0.1"):
        with pytest.raises(ValueError, match="cutoff is a finite energy"):
            screen_perovskites(means, cutoff=bad)
    assert "no A or B element in the chosen groups" in screen_perovskites(means, cutoff=0.0).summary()
    with pytest.raises(TypeError, match="takes a sites table"):
        site_energy_maps({"a": 1}, tmp_path)
    folder = REPO / "pretrained_models" / resolve_model("is_metal").path.name
    shown = _cli("models", str(folder))
    assert shown.exit_code == 0 and shown.output.startswith("# is_metal")
    assert "not a model folder" in _cli("models", str(tmp_path)).output
    for typed, meant in (("bulk", "bulk_modulus"), ("formation", "formation_energy"), ("bandgap", "band_gap"),
                         ("Formation-Energy", "formation_energy")):  # fmt: skip
        with pytest.raises(UnknownModelError, match=rf"Did you mean '{meant}'"):
            resolve_model(typed)


def test_intervals_are_never_narrower_than_the_members_disagreement():
    """Round 5: 'NaCl at 0.6x the lattice has std_raw 3.0 but a 90% interval of ±1.5'."""
    predictor = CGCNNPredictor.from_pretrained("formation_energy", device="cpu")
    squeezed, salt = bulk("NaCl", "rocksalt", a=0.6 * 5.64), bulk("NaCl", "rocksalt", a=5.64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wide = predictor.predict([squeezed, salt], coverage=0.95)
        ninety = predictor.predict([squeezed, salt], coverage=0.9)
    members = wide.member_values[0]
    assert wide.lower[0] <= members.min() + 1e-9 and wide.upper[0] >= members.max() - 1e-9
    reach = np.abs(members - wide.values[0]).max()
    q90, q95 = (predictor.model.conformal_quantile(c) for c in (0.9, 0.95))
    assert ninety.upper[0] - ninety.values[0] == pytest.approx(q90 / q95 * reach)
    # an ordinary crystal keeps its conformal interval: mean ± q(c) x uncertainty
    assert ninety.upper[1] - ninety.values[1] == pytest.approx(q90 * ninety.uncertainty[1])


def test_resume_refuses_an_output_written_with_other_settings(tmp_path):
    """Round 4: '--resume with a different --metal-threshold appends rows computed with another threshold'."""
    import pandas as pd

    from .conftest import REPO

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("NaCl.POSCAR", "SrTiO3.cif"):
        (inputs / name).write_bytes((REPO / "examples" / name).read_bytes())
    out = tmp_path / "out.csv"
    assert _cli("predict", str(inputs), "-o", str(out)).exit_code == 0
    assert (tmp_path / ".out.csv.run.json").is_file()
    refused = _cli("predict", str(inputs), "-o", str(out), "--resume", "--metal-threshold", "0.3")
    assert refused.exit_code == 2 and "metal_threshold: 0.5 then, 0.3 now" in refused.output
    assert len(pd.read_csv(out)) == 2  # untouched
    same = _cli("predict", str(inputs), "-o", str(out), "--resume")
    assert same.exit_code == 0 and "2 structures already in" in same.stderr
    # one model: the model's name (with its version) is recorded; a record in an input folder is not read
    (inputs / ".old.csv.run.json").write_bytes((tmp_path / ".out.csv.run.json").read_bytes())
    table = tmp_path / "fe.parquet"
    assert _cli("predict", str(inputs), "-m", "formation_energy", "-o", str(table)).exit_code == 0
    assert (table / "_cgcnn_run.json").is_file() and len(pd.read_parquet(table)) == 2
    other = _cli("predict", str(inputs), "-m", "band_gap", "-o", str(table), "--resume")
    assert other.exit_code == 2 and "formation_energy-mp_cgcnn46k" in other.output


def test_a_dash_reads_one_structure_piped_to_stdin():
    """click's convention: `cat x.cif | cgcnn-ase predict -` ('-' was taken for a missing file)."""
    from click.testing import CliRunner

    from cgcnn_ase.cli import main

    from .conftest import REPO

    def run(text: str, *args: str):
        return CliRunner().invoke(main, ["predict", "-", *args, "-m", "formation_energy"], input=text)

    expected = _cli("predict", str(REPO / "examples" / "NaCl.POSCAR"), "-m", "formation_energy").stdout.splitlines()[1]
    for name in ("NaCl.POSCAR", "SrTiO3.cif", "Si.extxyz"):
        result = run((REPO / "examples" / name).read_text())
        assert result.exit_code == 0 and result.stdout.splitlines()[1].startswith("stdin,"), result.output
    piped = run((REPO / "examples" / "NaCl.POSCAR").read_text()).stdout.splitlines()[1]
    assert piped.split(",")[1:] == expected.split(",")[1:]  # the same number as from the file
    both = run((REPO / "examples" / "SrTiO3.cif").read_text(), str(REPO / "examples" / "NaCl.POSCAR"))
    assert [line.split(",")[0] for line in both.stdout.splitlines()[1:]] == ["stdin", str(REPO / "examples" / "NaCl.POSCAR")]
    # round 14: several extxyz frames are read as a multi-block CIF is (they were refused, the CIF blocks read)
    frames = run((REPO / "examples" / "Si.extxyz").read_text() * 2)
    assert frames.exit_code == 0 and [line.split(",")[0] for line in frames.stdout.splitlines()[1:]] == ["stdin@0", "stdin@1"]
    assert run("junk\n").exit_code == 2 and "holds one line" in run("junk\n").output
    assert run("\n \n").exit_code == 2 and "it is empty" in run("\n \n").output
    junk = run("junk\nmore junk\n")  # like a file that is no structure: its own error row
    assert junk.exit_code == 1 and "stdin: text that is neither CIF" in junk.stderr
    # a POSCAR whose comment line starts with data_ is no CIF (it was read as one and failed)
    poscar = (REPO / "examples" / "NaCl.POSCAR").read_text().split("\n", 1)[1]
    renamed = run("data_NaCl relaxed\n" + poscar).stdout.splitlines()[1]
    assert renamed.split(",")[1:] == expected.split(",")[1:]


def test_in_domain_leaves_out_mis_scaled_cells_by_their_bond_ratio():
    """Round 5: 'NaCl with its lattice doubled: 77th percentile and in_domain'. The shortest edge over the
    covalent bond length is the same from every graph path, and in_domain requires it within [0.5, 1.6]."""
    crystals = [bulk("NaCl", "rocksalt", a=f * 5.64) for f in (1.0, 1.2, 2.0)] + [bulk("Cu", "fcc", a=3.6)]
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    ratios = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for backend, workers in (("per-structure", 1), ("per-structure", 2), ("batched", 1)):
            predictor.graph_backend = backend
            result = predictor.predict(crystals, workers=workers)
            ratios.append(result.bond_ratio)
    np.testing.assert_allclose(ratios[0], [1.11, 1.33, 2.22, 1.14], atol=0.01)
    np.testing.assert_allclose(ratios[1], ratios[0], rtol=0, atol=0)
    np.testing.assert_allclose(ratios[2], ratios[0], rtol=1e-12)
    assert result.in_domain(max_percentile=100).tolist() == [True, True, False, True]
    assert "bond_ratio" in result.to_dataframe().columns


def test_round_6_device_training_and_calibrate_reports(tmp_path):
    """Round 6: '--device cuda on a CPU-only torch: internal error, exit 4'; 'batch_size=1 or a one-row
    training set: internal error from batch norm'; 'calibrate formation_energy rewrites the shipped model'."""
    import torch

    from cgcnn_ase.errors import ConfigError, DeviceError
    from cgcnn_ase.models.registry import resolve_device
    from cgcnn_ase.train.config import TrainConfig

    from .conftest import REPO

    example = str(REPO / "examples" / "SrTiO3.cif")
    with pytest.raises(DeviceError, match="not a torch device"):
        resolve_device("banana")
    assert _cli("predict", example, "-m", "formation_energy", "--device", "banana").exit_code == 2
    if not torch.cuda.is_available():
        result = _cli("predict", example, "-m", "formation_energy", "--device", "cuda")
        assert result.exit_code == 2 and "no CUDA GPU" in result.output
    with pytest.raises(ConfigError, match="batch_size must be at least 2"):
        TrainConfig.from_dict({"data": {"path": "x.csv", "target": "y"}, "batch_size": 1}).validate()
    shipped = resolve_model_folder = REPO / "pretrained_models"
    before = {p: p.stat().st_mtime_ns for p in shipped.rglob("*") if p.is_file()}
    refused = _cli("calibrate", "formation_energy")
    assert refused.exit_code == 2 and "copy that folder" in refused.output
    assert {p: p.stat().st_mtime_ns for p in resolve_model_folder.rglob("*") if p.is_file()} == before


def test_a_training_split_of_one_crystal_is_a_config_error(dataset_csv, tmp_path):  # noqa: F811 - the fixture
    """Round 6: 'a one-row dataset: internal error (Expected more than 1 value per channel when training)'."""
    import pandas as pd

    from cgcnn_ase.errors import ConfigError
    from cgcnn_ase.train.config_sections import SplitConfig
    from cgcnn_ase.train.trainer import train_from_config

    from .test_training import tiny_config

    one = tmp_path / "one.csv"
    pd.read_csv(dataset_csv).head(1).to_csv(one, index=False)
    config = tiny_config(one, tmp_path, split=SplitConfig(train=1.0, val=0.0, test=0.0, seed=1))
    with pytest.raises(ConfigError, match="at least 2 crystals in the training split"):
        train_from_config(config, progress=False)


def test_the_elements_that_share_a_feature_vector_get_one_prediction():
    """Round 6: 'Nd, Pm, Sm, Gd and Tb nitrides give the same formation energy'; docs/elements.md lists the groups."""
    import json

    from cgcnn_ase.models.registry import resolve_model

    table = json.loads((resolve_model("formation_energy").path / "atom_init.json").read_text())
    groups: dict[tuple, list[int]] = {}
    for z, vector in table.items():
        groups.setdefault(tuple(vector), []).append(int(z))
    shared = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    assert shared == [[57, 58], [60, 61, 62, 64, 65], [66, 67, 68], [95, 96], [97, 98]]
    predictor = CGCNNPredictor.from_pretrained("formation_energy", device="cpu")
    values = predictor.predict([bulk(f"{e}N", "rocksalt", a=5.1) for e in ("Nd", "Pm", "Sm", "Gd", "Tb")]).values
    np.testing.assert_allclose(values, -1.652209, atol=2e-6)
    assert np.ptp(values) < 1e-7


# -- round 6, the reports left for later (2026-11-28) ------------------------------------------------------


def test_a_resume_with_fewer_epochs_than_run_is_refused(dataset_csv, tmp_path):  # noqa: F811 - the fixture
    """Round 6: 'resume with epochs=10 after 150 is accepted; the card says 150 run (max 10)'."""
    from cgcnn_ase.errors import ConfigError
    from cgcnn_ase.train.trainer import train_from_config

    from .test_training import tiny_config

    train_from_config(tiny_config(dataset_csv, tmp_path, epochs=3), progress=False)
    with pytest.raises(ConfigError, match="already trained 3 epochs, more than epochs=2"):
        train_from_config(tiny_config(dataset_csv, tmp_path, epochs=2), progress=False)
    folder = train_from_config(tiny_config(dataset_csv, tmp_path, epochs=4), progress=False)  # more: continues
    assert len((folder / "metrics.csv").read_text().splitlines()) == 1 + 4


def test_a_run_without_validation_or_test_split_has_a_true_card(dataset_csv, tmp_path):  # noqa: F811
    """Round 6: 'the card of a run without a validation split names val_mae selection and a parity.png
    that is not written'."""
    from cgcnn_ase.train.config_sections import SplitConfig
    from cgcnn_ase.train.trainer import train_from_config

    from .test_training import tiny_config

    split = SplitConfig(train=1.0, val=0.0, test=0.0, seed=1)
    folder = train_from_config(tiny_config(dataset_csv, tmp_path, split=split), progress=False)
    card = (folder / "README.md").read_text()
    assert "val_mae" not in card and "parity.png" not in card and not (folder / "parity.png").exists()
    assert "selected on train_loss" in card and "kept no test crystals" in card
    split = SplitConfig(train=0.75, val=0.0, test=0.25, seed=1)
    other = train_from_config(tiny_config(dataset_csv, tmp_path / "b", split=split), progress=False)
    card = (other / "README.md").read_text()
    assert "selected on train_loss for want of a validation split" in card
    assert "`parity.png` (test split)" in card and (other / "parity.png").is_file()
    # evaluating the empty test split names the split, not the dataset
    result = _cli("evaluate", str(folder), "-o", str(tmp_path / "ev"))
    assert result.exit_code == 1 and "holds no test crystals (train 12, val 0, test 0)" in result.output


def test_training_does_not_overwrite_another_model_or_foreign_files(dataset_csv, tmp_path):  # noqa: F811
    """Round 6: 'train overwrites an unrelated model.json in output'."""
    import shutil

    from cgcnn_ase.errors import ConfigError
    from cgcnn_ase.models.registry import resolve_model
    from cgcnn_ase.train.trainer import train_from_config

    from .test_training import tiny_config

    shipped = tmp_path / "model"
    shutil.copytree(resolve_model("formation_energy").path, shipped)
    before = (shipped / "model.json").read_text()
    with pytest.raises(ConfigError, match="holds another model"):
        train_from_config(tiny_config(dataset_csv, tmp_path), progress=False)
    assert (shipped / "model.json").read_text() == before
    notes = tmp_path / "notes" / "model"
    notes.mkdir(parents=True)
    (notes / "README.md").write_text("my notes")
    (notes / "draft.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"files that are not a model folder \(draft.txt\)"):
        train_from_config(tiny_config(dataset_csv, notes.parent), progress=False)
    assert (notes / "README.md").read_text() == "my notes"
    own = tmp_path / "own"  # an earlier run of the same configuration is rewritten
    train_from_config(tiny_config(dataset_csv, own, epochs=2), progress=False)
    train_from_config(tiny_config(dataset_csv, own, epochs=3, resume=False), progress=False)


def test_ctrl_c_in_train_says_how_to_continue(dataset_csv, tmp_path, monkeypatch):  # noqa: F811
    """Round 6: 'Ctrl-C in train gives no resume hint'."""
    import yaml

    from cgcnn_ase.train.trainer import Trainer

    from .test_training import tiny_config

    config = tiny_config(dataset_csv, tmp_path, epochs=5)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    run_epoch = Trainer.run_epoch

    def interrupted(self):
        if self.epoch == 2:
            raise KeyboardInterrupt
        return run_epoch(self)

    monkeypatch.setattr(Trainer, "run_epoch", interrupted)
    result = _cli("train", str(path))
    assert result.exit_code == 130, result.output
    assert "2 finished epoch(s) of 5 are saved in" in result.output and "run the same command again" in result.output
    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)
    result = _cli("train", str(path))
    assert result.exit_code == 0 and len((tmp_path / "model" / "metrics.csv").read_text().splitlines()) == 6


def test_calibrating_a_single_network_is_a_usage_error(trained):  # noqa: F811 - the fixture
    """Round 6: 'calibrating a single model exits 3 (model not loadable) instead of 2'."""
    _, folder = trained
    result = _cli("calibrate", str(folder))
    assert result.exit_code == 2 and "need a regression ensemble" in result.output and "a single network" in result.output
    result = _cli("calibrate", str(folder), "--report")
    assert result.exit_code == 2 and "needs an ensemble" in result.output


def test_an_output_suffix_of_another_format_is_refused(tmp_path):
    """Round 6: '-o out.xlsx writes CSV'."""
    from cgcnn_ase.errors import StreamError
    from cgcnn_ase.inference.writers import infer_format

    from .conftest import REPO

    example = str(REPO / "examples" / "SrTiO3.cif")
    for name in ("out.xlsx", "out.tsv", "out.csv.gz"):
        result = _cli("predict", example, "-m", "formation_energy", "-o", str(tmp_path / name))
        # a compressed name is refused whatever --format says (round 32c: --format csv wrote plain text into a .gz)
        hint = "compress it afterwards" if name.endswith(".gz") else "give --format csv"
        assert result.exit_code == 2 and hint in result.output and not (tmp_path / name).exists()
    assert _cli("predict", example, "-m", "formation_energy", "-o", str(tmp_path / "o.xlsx"), "--format", "csv").exit_code == 0
    assert (tmp_path / "o.xlsx").read_text().startswith("id,")
    with pytest.raises(StreamError, match="'.xlsx' names a format that is not written"):
        infer_format("a.xlsx")
    assert infer_format("a.txt") == "csv" and infer_format("a.pq") == "parquet" and infer_format("a.xlsx", "csv") == "csv"


def test_a_slab_or_molecule_in_a_periodic_box_is_warned_about():
    """Round 6: 'a slab with 15 Å of vacuum and pbc=True predicts without a hint'."""
    from ase.build import fcc111, molecule

    from cgcnn_ase.errors import VacuumWarning
    from cgcnn_ase.io.reader import to_record
    from cgcnn_ase.io.records import vacuum_gap

    slab = fcc111("Cu", (2, 2, 4), vacuum=7.5, periodic=True)
    with pytest.warns(VacuumWarning, match=r"15\.0 Å wide across the lattice planes \(0 0 1\)"):
        record = to_record(slab)
    # the gap is that of the structure, not of its description: shifted, wrapped, permuted, a supercell
    shifted = slab.copy()
    shifted.positions += [0.3, -1.1, 6.0]
    for atoms in (shifted, slab[np.random.default_rng(0).permutation(len(slab))], slab.repeat((2, 1, 2))):
        with pytest.warns(VacuumWarning):
            other = to_record(atoms)
        assert vacuum_gap(other.frac_coords, other.cell)[0] == pytest.approx(vacuum_gap(record.frac_coords, record.cell)[0])
    water = molecule("H2O")
    water.center(vacuum=5.0)
    water.pbc = True
    with pytest.warns(VacuumWarning, match="slab, wire or molecule"):
        to_record(water)
    skewed = bulk("NaCl", "rocksalt", a=5.64).repeat((4, 1, 1))  # long, but bulk: no gap
    with warnings.catch_warnings():
        warnings.simplefilter("error", VacuumWarning)
        record = to_record(skewed)
    assert vacuum_gap(record.frac_coords, record.cell)[0] < 3.0  # bulk: no gap near 5 Å


# -- outside testing, round 7 (readers, streaming, fine-tuning, API) -----------------------------------------

_STO_HEAD = """data_SrTiO3
_cell_length_a 3.905
_cell_length_b 3.905
_cell_length_c 3.905
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
"""
_STO_SITES = """loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Sr1 Sr 0 0 0
Ti1 Ti 0.5 0.5 0.5
O1 O 0.5 0.5 0
"""
_CUBIC_OPS = ["x,y,z", "-x,-y,-z", "-y,x,z", "y,-x,-z", "-x,-y,z", "x,y,-z", "y,-x,z", "-y,x,-z", "x,-y,-z", "-x,y,z",
              "-y,-x,-z", "y,x,z", "-x,y,-z", "x,-y,z", "y,x,-z", "-y,-x,z", "z,x,y", "-z,-x,-y", "z,-y,x", "-z,y,-x",
              "z,-x,-y", "-z,x,y", "z,y,-x", "-z,-y,x", "-z,x,-y", "z,-x,y", "-z,-y,-x", "z,y,x", "-z,-x,y", "z,x,-y",
              "-z,y,x", "z,-y,-x", "y,z,x", "-y,-z,-x", "x,z,-y", "-x,-z,y", "-y,z,-x", "y,-z,x", "-x,z,y", "x,-z,-y",
              "-y,-z,x", "y,z,-x", "-x,-z,-y", "x,z,y", "y,-z,-x", "-y,z,x", "x,-z,y", "-x,z,-y"]  # fmt: skip
_BCC_FE_MCIF = """data_Fe_bcc
_space_group_magn.number_BNS 229.1
_space_group_magn.name_BNS "I m -3 m"
_cell_length_a 2.8665
_cell_length_b 2.8665
_cell_length_c 2.8665
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
loop_
_space_group_symop_magn_operation.id
_space_group_symop_magn_operation.xyz
1 x,y,z,+1
loop_
_space_group_symop_magn_centering.id
_space_group_symop_magn_centering.xyz
1 x,y,z,+1
2 x+1/2,y+1/2,z+1/2,+1
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Fe1 Fe 0.00000 0.00000 0.00000 1
"""


@pytest.mark.parametrize("reader", ["gemmi", "pymatgen"])
def test_symmetry_given_by_number_dotted_tags_or_magnetic_operations_is_applied(tmp_path, reader):
    """Round 7: 'a CIF giving its space group by number only, CIF2 dotted symmetry tags, or mCIF magnetic
    operations is read as P1: SrTiO3 as SrTiO (-1.67 instead of -3.59 eV/atom), bcc Fe as one atom'."""
    from collections import Counter

    from ase.data import chemical_symbols

    from cgcnn_ase.io.reader import read_structures

    dotted = "loop_\n_space_group_symop.id\n_space_group_symop.operation_xyz\n" + "".join(
        f"{k} '{op}'\n" for k, op in enumerate(_CUBIC_OPS, 1)
    )
    files = {
        "number.cif": (_STO_HEAD + "_space_group_IT_number 221\n" + _STO_SITES, {"Sr": 1, "Ti": 1, "O": 3}),
        "old_number.cif": (_STO_HEAD + "_symmetry_Int_Tables_number 221\n" + _STO_SITES, {"Sr": 1, "Ti": 1, "O": 3}),
        "hm.cif": (_STO_HEAD + "_symmetry_space_group_name_H-M 'P m -3 m'\n" + _STO_SITES, {"Sr": 1, "Ti": 1, "O": 3}),
        "magnetic.mcif": (_BCC_FE_MCIF, {"Fe": 2}),
    }
    files["dotted.cif"] = (_STO_HEAD + dotted + _STO_SITES, {"Sr": 1, "Ti": 1, "O": 3})
    for name, (text, expected) in files.items():
        (tmp_path / name).write_text(text)
        (record,) = read_structures(tmp_path / name, cif_reader=reader)
        assert dict(Counter(chemical_symbols[z] for z in record.numbers)) == expected, name
    if reader == "pymatgen":
        return
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    values = predictor.predict([str(tmp_path / n) for n in ("number.cif", "hm.cif", "dotted.cif")]).values
    assert np.ptp(values) < 1e-6 and values[0] < -3  # one crystal, read alike


def test_undecipherable_symmetry_cartesian_sites_and_metadata_blocks(tmp_path):
    """Round 7: symmetry that cannot be applied is refused (never read as P1); 'a Cartesian-only CIF gets
    "overlapping atoms"'; 'a CIF whose first block holds only journal metadata is refused entirely'."""
    from cgcnn_ase.errors import StructureReadError
    from cgcnn_ase.io.reader import read_structures

    odd = tmp_path / "odd.cif"
    odd.write_text(_STO_HEAD + "_space_group_name_H-M_alt 'Q x -9 z'\n" + _STO_SITES)
    with pytest.raises(StructureReadError, match="declares its symmetry in a form that could not be read"):
        read_structures(odd)
    cartesian = tmp_path / "cartesian.cif"
    cartesian.write_text(_STO_HEAD + _STO_SITES.replace("fract_", "Cartn_"))
    with pytest.raises(StructureReadError, match="Cartesian coordinates only"):
        read_structures(cartesian)
    journal = tmp_path / "paper.cif"
    journal.write_text("data_global\n_journal_name_full 'Some Journal'\n_publ_section_title 'A structure'\n\n"
                       + _STO_HEAD + "_space_group_IT_number 221\n" + _STO_SITES)  # fmt: skip
    (record,) = read_structures(journal)
    assert len(record) == 5 and record.label == str(journal)


def test_one_bad_frame_or_data_block_leaves_the_others(tmp_path):
    """Round 7: 'predict(path, errors="collect") on a file of four frames, two bad, gives one NaN row';
    'a CIF of two data blocks, one disordered, fails as a whole'."""
    from ase.io import write

    from .test_structures import DISORDERED_CIF

    good = bulk("Si", "diamond", a=5.43)
    overlapping = good.copy()
    overlapping.positions[1] = overlapping.positions[0] + [0.1, 0, 0]
    frames = tmp_path / "frames.extxyz"
    write(frames, [good, overlapping, good])
    cif = tmp_path / "two.cif"
    write(tmp_path / "nacl.cif", bulk("NaCl", "rocksalt", a=5.64))
    cif.write_text((tmp_path / "nacl.cif").read_text() + "\n" + DISORDERED_CIF)
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    result = predictor.predict([str(frames), str(cif)], errors="collect")
    assert result.ids == [f"{frames}@0", f"{frames}@1", f"{frames}@2", f"{cif}@0", f"{cif}@1"]
    ok = np.isfinite(result.values)
    assert ok.tolist() == [True, False, True, True, False]
    assert result.values[0] == pytest.approx(result.values[2], abs=1e-6)
    for workers in ("1", "2"):  # the CLI reads files in its worker processes
        out = _cli("predict", str(frames), str(cif), "-m", "formation_energy", "--workers", workers)
        assert out.exit_code == 1 and "3 of 5" not in out.output and "2 of 5 structures could not" in out.output
        assert [line.split(",")[0] for line in out.stdout.splitlines()[1:]] == result.ids


def test_json_files_folders_and_gzip_on_stdin(tmp_path):
    """Round 7: 'pymatgen JSON files are not read by path'; 'a folder whose structures lie in subfolders
    says the inputs held no structures'; 'targets.csv in a folder counts as a failed structure';
    'a gzipped CIF on stdin is an internal error'."""
    import gzip
    import json

    from click.testing import CliRunner
    from pymatgen.io.ase import AseAtomsAdaptor

    from cgcnn_ase.cli import main
    from cgcnn_ase.errors import StructureReadError
    from cgcnn_ase.io.reader import read_structures

    from .conftest import REPO

    structure = AseAtomsAdaptor.get_structure(bulk("NaCl", "rocksalt", a=5.64))
    (tmp_path / "one.json").write_text(json.dumps(structure.as_dict()))
    with gzip.open(tmp_path / "mp.json.gz", "wt") as f:  # a Materials Project style list of entries
        json.dump([{"material_id": "mp-22862", "structure": structure.as_dict()}] * 2, f)
    (tmp_path / "summary.json").write_text('{"mae": 0.04}')
    assert [r.label for r in read_structures(tmp_path / "one.json")] == [str(tmp_path / "one.json")]
    assert len(read_structures(tmp_path / "mp.json.gz")) == 2
    with pytest.raises(StructureReadError, match="JSON that holds no structure"):
        read_structures(tmp_path / "summary.json")
    nacl = _cli("predict", str(REPO / "examples" / "NaCl.POSCAR"), "-m", "formation_energy").stdout.splitlines()[1]
    out = _cli("predict", str(tmp_path / "one.json"), "-m", "formation_energy")
    assert out.exit_code == 0
    assert float(out.stdout.splitlines()[1].split(",")[1]) == pytest.approx(float(nacl.split(",")[1]), abs=1e-5)
    nested = tmp_path / "nested"
    (nested / "mp-1").mkdir(parents=True)
    (nested / "mp-1" / "POSCAR").write_text((REPO / "examples" / "NaCl.POSCAR").read_text())
    out = _cli("predict", str(nested), "-m", "formation_energy")
    assert "only 1 subfolder(s) (mp-1)" in out.output and "**" in out.output
    out = _cli("predict", str(nested / "**" / "*"), "-m", "formation_energy")
    assert out.exit_code == 0 and len(out.stdout.splitlines()) == 2
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "NaCl.POSCAR").write_text((REPO / "examples" / "NaCl.POSCAR").read_text())
    (folder / "targets.csv").write_text("id,y\nNaCl,1\n")
    out = _cli("predict", str(folder), "-m", "formation_energy")
    assert out.exit_code == 0 and "left out 1 file(s)" in out.output and "targets.csv" in out.output
    packed = gzip.compress((REPO / "examples" / "SrTiO3.cif").read_bytes())
    piped = CliRunner().invoke(main, ["predict", "-", "-m", "formation_energy"], input=packed)
    assert piped.exit_code == 0 and piped.stdout.splitlines()[1].startswith("stdin,-3.59")


def test_ctrl_c_in_predict_exits_130_with_a_resume_hint(tmp_path, monkeypatch):
    """Round 7: 'Ctrl-C exits 1, the code of failed inputs'. The hint names --resume once rows were written
    (round 23a: a stop before the first chunk now leaves no file, so it says that no row was written)."""
    from cgcnn_ase.inference import predictor as predictor_module

    from .conftest import REPO

    original, calls = predictor_module.predict_many, []

    def interrupted_second(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "predict_many", interrupted_second)
    examples = [str(REPO / "examples" / name) for name in ("SrTiO3.cif", "NaCl.POSCAR")]
    out = _cli("predict", *examples, "-m", "formation_energy", "-o", str(tmp_path / "o.csv"), "--chunk-size", "1",
               "--workers", "1")  # fmt: skip
    assert out.exit_code == 130 and "--resume" in out.output
    assert len((tmp_path / "o.csv").read_text().splitlines()) == 2  # the header and the first chunk's row
    calls.append(1)  # every call from here on is interrupted
    out = _cli("predict", examples[0], "-m", "formation_energy", "-o", str(tmp_path / "p.csv"))
    assert out.exit_code == 130 and "no row was written" in out.output and not (tmp_path / "p.csv").exists()
    out = _cli("predict", examples[0], "-m", "formation_energy")
    assert out.exit_code == 130 and "interrupted" in out.output and "--resume" not in out.output


def test_an_uncalibrated_ensemble_says_to_run_calibrate():
    """Round 7: 'a just fine-tuned ensemble is said to be "calibrated before intervals existed"'."""
    from cgcnn_ase.models.registry import load_model

    loaded = load_model("formation_energy")
    loaded.calibration = {k: v for k, v in (loaded.calibration or {}).items() if k != "conformal"}
    problem = loaded.interval_problem()
    assert "without a prediction-interval calibration yet" in problem and "cgcnn-ase calibrate MODEL_FOLDER" in problem


def test_the_vacuum_gap_is_a_result_column_and_leaves_slabs_out_of_the_domain():
    """Round 7: 'a Cu(111) slab with 10 Å of vacuum, MoS2 or graphene with pbc=True: in_domain() True'."""
    import torch
    from ase.build import fcc111, molecule

    from cgcnn_ase.graph.batched import FlatCrystals, graph_batch
    from cgcnn_ase.graph.config import GraphConfig
    from cgcnn_ase.graph.neighbours import build_graph
    from cgcnn_ase.io.reader import to_record

    water = molecule("H2O")
    water.center(vacuum=5.0)
    water.pbc = True
    crystals = [bulk("NaCl", "rocksalt", a=5.64), fcc111("Cu", (2, 2, 4), vacuum=5.0, periodic=True), water,
                bulk("Si", "diamond", a=5.43).repeat((1, 2, 3))]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = [to_record(a) for a in crystals]
        single = [build_graph(r, GraphConfig(), on_sparse="ignore").vacuum_gap for r in records]
        features = torch.zeros((101, 4))
        _, items = graph_batch(records, GraphConfig(), features, on_sparse="ignore")
        result = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu").predict(crystals)
    assert [item.vacuum_gap for item in items] == single  # both graph paths report the same number
    assert single[1] == pytest.approx(10.0) and single[2] == pytest.approx(10.0) and max(single[0], single[3]) < 3
    assert result.vacuum_gap.tolist() == single
    assert result.in_domain(max_percentile=100).tolist() == [True, False, False, True]
    df = result.to_dataframe()
    assert df["vacuum_gap"].tolist() == single and df.attrs["units"]["vacuum_gap"] == "Å"
    assert len(FlatCrystals.from_records(records).sizes) == 4


# -- outside testing, round 8 (claims on data, uncertainty, ASE, matminer) --------------------------------


def test_what_users_read_stays_in_the_physical_range():
    """Round 8: 'the default band gap can be negative (-0.131 eV, below its own interval's 0)'; 'Poisson
    ratio 0.512 for a compressed Cu, above its interval's 0.5'."""
    from ase.io import write

    from cgcnn_ase import CGCNNCalculator
    from cgcnn_ase.inference.properties import gated_band_gap, physical_values

    np.testing.assert_array_equal(gated_band_gap([-0.13, 0.5, 1.0, np.nan], [0.47, 0.6, 0.2, 0.1]), [0, 0, 1.0, np.nan])
    np.testing.assert_array_equal(physical_values("poisson_ratio", [0.51, 0.3, -1.2]), [0.5, 0.3, -1.0])
    np.testing.assert_array_equal(physical_values("formation_energy", [-9.0, 3.0]), [-9.0, 3.0])
    squeezed = bulk("Cu", "fcc", a=3.61 * 0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = CGCNNPredictor.from_pretrained("poisson_ratio", device="cpu").predict(squeezed).values[0]
        squeezed.calc = CGCNNCalculator("poisson_ratio", device="cpu")
        assert raw > 0.5 and squeezed.calc.get_property("poisson_ratio", squeezed) == 0.5  # the network's is kept
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/squeezed.cif"
        write(path, squeezed)
        out = _cli("predict", path, "-m", "poisson_ratio")  # one model: its own numbers, in the physical range
        table = _cli("predict", path)  # the property table: what a user reads
    assert float(out.stdout.splitlines()[1].split(",")[1]) == 0.5  # round 14b: was raw, outside its own interval
    header, row = table.stdout.splitlines()[:2]
    assert float(row.split(",")[header.split(",").index("poisson_ratio (dimensionless)")]) == 0.5


def test_get_fermi_level_and_an_evaluate_without_the_training_data(tmp_path, monkeypatch):
    """Round 8: 'CGCNNCalculator has no get_fermi_level()'; 'evaluate NAME works only from the folder where
    ../shared lies, and does not say to give DATASET'."""
    from ase.calculators.calculator import CalculatorError

    from cgcnn_ase import CGCNNCalculator

    atoms = bulk("Cu")
    atoms.calc = CGCNNCalculator("fermi_energy", device="cpu")
    with pytest.raises(CalculatorError, match="no structure calculated yet|there is none yet"):
        atoms.calc.get_fermi_level()
    level = atoms.calc.get_property("fermi_level", atoms)
    assert atoms.calc.get_fermi_level() == level and np.isfinite(level)
    monkeypatch.chdir(tmp_path)
    out = _cli("evaluate", "formation_energy", "-o", str(tmp_path / "ev"))
    assert out.exit_code == 1 and "the DATASET argument of cgcnn-ase evaluate or calibrate" in out.output


def test_the_calculator_gives_a_modulus_std_and_bounds_in_gpa_as_the_cli():
    """Round 8: 'the calculator gives the modulus in GPa but its std and interval bounds only in log10'."""
    import io

    import pandas as pd
    from ase.io import write

    from cgcnn_ase import CGCNNCalculator

    atoms = bulk("MgO", "rocksalt", a=4.21)
    atoms.calc = CGCNNCalculator("bulk_modulus", coverage=0.9, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = {k: atoms.calc.get_property(k, atoms) for k in ("bulk_modulus", "bulk_modulus_std", "bulk_modulus_lower",
                                                                 "bulk_modulus_upper", "log10_bulk_modulus_std")}  # fmt: skip
    assert atoms.calc.units["bulk_modulus_std"] == "GPa" and atoms.calc.units["bulk_modulus_upper"] == "GPa"
    assert results["bulk_modulus_lower"] < results["bulk_modulus"] < results["bulk_modulus_upper"]
    assert results["bulk_modulus_std"] == pytest.approx(np.log(10) * results["bulk_modulus"] * results["log10_bulk_modulus_std"])
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        write(f"{folder}/MgO.cif", atoms)
        table = pd.read_csv(io.StringIO(_cli("predict", f"{folder}/MgO.cif", "--coverage", "0.9").stdout))
    for name in ("bulk_modulus", "bulk_modulus_std", "bulk_modulus_lower", "bulk_modulus_upper"):
        assert table[f"{name} (GPa)"].iloc[0] == pytest.approx(results[name], rel=1e-5)


# -- round 9: a hostile screening user (CLI, API misuse) ----------------------------------------


def test_a_model_named_twice_by_alias_or_path_is_predicted_once(tmp_path):
    """Round 9: '-m log10_bulk_modulus -m bulk_modulus' (one model, two names) was an internal error (exit 4)
    and left an empty output file; featurize wrote the columns twice."""
    import pandas as pd

    from cgcnn_ase.models.registry import resolve_model

    from .conftest import REPO

    folder = str(resolve_model("bulk_modulus").path)
    out = tmp_path / "out.csv"
    result = _cli("predict", str(REPO / "examples" / "NaCl.POSCAR"), "-m", "log10_bulk_modulus", "-m", "bulk_modulus",
                  "-m", folder, "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "bulk_modulus is the model log10_bulk_modulus already names" in result.stderr
    frame = pd.read_csv(out)
    assert [c for c in frame.columns if c.startswith("log10_bulk_modulus (")] == ["log10_bulk_modulus (log10(GPa))"]
    single = pd.read_csv(__import__("io").StringIO(_cli("predict", str(REPO / "examples" / "NaCl.POSCAR"), "-m",
                                                        "bulk_modulus").stdout))  # fmt: skip
    assert list(frame.columns) == list(single.columns) and frame.iloc[0, 1] == single.iloc[0, 1]


def test_featurize_refuses_its_own_input_and_existing_result_columns(tmp_path):
    """Round 9: featurize -o TABLE overwrote the input (predict refuses); featurizing a featurized table added a
    second column of the same name (pandas then read 'formation_energy (eV/atom).1')."""
    import pandas as pd
    from ase.io import write

    write(tmp_path / "NaCl.cif", bulk("NaCl", "rocksalt", a=5.64))
    table = tmp_path / "table.csv"
    pd.DataFrame({"name": ["nacl"], "cif": [(tmp_path / "NaCl.cif").read_text()]}).to_csv(table, index=False)
    before = table.read_text()
    same = _cli("featurize", str(table), "-o", str(table), "-m", "formation_energy")
    assert same.exit_code == 2 and "also the input table" in same.output and table.read_text() == before
    first = _cli("featurize", str(table), "-o", str(tmp_path / "f1.csv"), "-m", "formation_energy",
                 "-m", "formation_energy-mp_cgcnn46k-v3")  # fmt: skip
    assert first.exit_code == 0, first.output
    f1 = pd.read_csv(tmp_path / "f1.csv")
    assert list(f1.columns) == ["name", "cif", "formation_energy (eV/atom)", "formation_energy_std (eV/atom)",
                                "unseen_elements", "error"]  # fmt: skip
    again = _cli("featurize", str(tmp_path / "f1.csv"), "-o", str(tmp_path / "f2.csv"), "-m", "formation_energy")
    assert again.exit_code == 2 and "--overwrite" in again.output and not (tmp_path / "f2.csv").exists()
    replaced = _cli("featurize", str(tmp_path / "f1.csv"), "-o", str(tmp_path / "f2.csv"), "-m", "formation_energy",
                    "--overwrite")  # fmt: skip
    assert replaced.exit_code == 0, replaced.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "f2.csv"), f1)


def test_predict_takes_id_structure_pairs_and_a_series_index_as_ids():
    """Round 9: predict() refused the (id, structure) pairs that predict_stream takes, named a pandas Series'
    rows 'input k' whatever its index, and read a DataFrame's column names as file paths."""
    import pandas as pd
    from pymatgen.core import Lattice, Structure

    from cgcnn_ase.errors import InvalidStructureError

    from .conftest import REPO

    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    paired = predictor.predict([("mine", nacl), ("srtio3", str(REPO / "examples" / "SrTiO3.cif"))])
    plain = predictor.predict([nacl, str(REPO / "examples" / "SrTiO3.cif")])
    assert paired.ids == ["mine", "srtio3"] and np.array_equal(paired.values, plain.values)
    mixed = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}], [[0, 0, 0]])
    series = pd.Series([bulk("Cu", "fcc", a=3.61), mixed], index=["mp-30", "mp-bad"])
    result = predictor.predict(series, errors="collect")
    assert result.ids == ["mp-30", "mp-bad"] and result.errors[0] is None and result.errors[1].startswith("mp-bad: ")
    assert predictor.predict(series.reset_index(drop=True), errors="collect").ids == ["input 0", "input 1"]
    with pytest.raises(InvalidStructureError, match=r"give its structure column, e.g. df\['structure'\]"):
        predictor.predict(pd.DataFrame({"structure": series}))


def test_featurizer_row_errors_do_not_name_another_row_by_position():
    """Round 9: on a frame indexed by ids, the error of row 'mp-bad' read 'input 1: ...' (a position counted among
    the rows it predicted, which names another row of a filtered frame)."""
    import pandas as pd
    from pymatgen.core import Lattice, Structure

    from cgcnn_ase import CGCNNFeaturizer

    mixed = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}], [[0, 0, 0]])
    frame = pd.DataFrame({"structure": [bulk("Cu", "fcc", a=3.61), None, mixed]}, index=["mp-30", "mp-none", "mp-bad"])
    out = CGCNNFeaturizer(["formation_energy"], device="cpu").featurize_dataframe(
        frame, "structure", ignore_errors=True, return_errors=True, pbar=False)  # fmt: skip
    errors = out.iloc[:, -1]
    assert errors["mp-bad"].startswith("site 0 is disordered") and not re.search(r"input \d", errors["mp-none"])
    assert np.isfinite(out.loc["mp-30"].iloc[1]) and np.isnan(out.loc["mp-bad"].iloc[1])


# -- round 9: a researcher retraining on their own data ------------------------------------------


def test_a_log10_target_given_in_raw_units_is_labelled_log10(dataset_csv, tmp_path):  # noqa: F811
    """Round 9: data.transform log10 with units GPa (the natural spelling: evaluate --help calls GPa the units
    before the transform) gave a model whose card, columns and metrics said 'GPa' for log10 values."""
    import json

    from cgcnn_ase.train.trainer import train_from_config

    from .test_training import tiny_config

    config = tiny_config(dataset_csv, tmp_path, epochs=1, units="GPa", data={"path": str(dataset_csv), "target": "vpa",
                                                                              "transform": "log10"})  # fmt: skip
    assert config.target_units == "log10(GPa)" and config.property_name == "log10_vpa"
    folder = train_from_config(config, progress=False)
    assert json.loads((folder / "model.json").read_text())["units"] == "log10(GPa)"
    card = (folder / "README.md").read_text()
    assert "units: log10(GPa)" in card and "| GPa |" not in card
    assert CGCNNPredictor.load(folder, device="cpu").units == "log10(GPa)"
    for units, expected in (("log10(GPa)", "log10(GPa)"), ("log(GPa)", "log(GPa)"), ("unknown", "unknown")):
        assert tiny_config(dataset_csv, tmp_path, units=units, data={"path": str(dataset_csv), "target": "vpa",
                                                                     "transform": "log10"}).target_units == expected  # fmt: skip
    assert tiny_config(dataset_csv, tmp_path, units="GPa").target_units == "GPa"  # no transform: as given


def test_crystals_in_no_split_are_warned_about_and_counted_as_left_out(dataset_csv, tmp_path):  # noqa: F811
    """Round 9: split fractions summing to less than 1 silently left crystals unused, and the card said
    '12 used (left out: none)'."""
    import json

    from cgcnn_ase.train.config_sections import SplitConfig
    from cgcnn_ase.train.trainer import train_from_config

    from .test_training import tiny_config

    config = tiny_config(dataset_csv, tmp_path, epochs=1, split=SplitConfig(train=0.5, val=0.25, test=0.0, seed=1))
    with pytest.warns(UserWarning, match=r"sum to 0.75: 3 of 12 crystals are in no split"):
        folder = train_from_config(config, progress=False)
    dataset = json.loads((folder / "model.json").read_text())["metadata"]["dataset"]
    assert dataset["rows_used"] == 9 and dataset["rows_dropped"]["outside_split"] == 3
    assert "12 in the file, 9 used (left out: outside_split: 3)" in (folder / "README.md").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fractions summing to 1: no warning, nothing counted
        whole = train_from_config(tiny_config(dataset_csv, tmp_path / "whole", epochs=1), progress=False)
    assert "outside_split" not in json.loads((whole / "model.json").read_text())["metadata"]["dataset"]["rows_dropped"]


def test_text_labels_get_a_hint_to_an_expression_target(tmp_path):
    """Round 9: a classification column of 'metal'/'insulator' was dropped as '200 rows have no numeric ...'
    with no word of how to train on it."""
    import pandas as pd

    from cgcnn_ase.data.datasets import DatasetSpec, load_table

    table = pd.DataFrame({"material_id": ["a", "b", "c"], "label": ["metal", "insulator", "metal"],
                          "cif": ["x", "y", "z"]})  # fmt: skip
    table.to_csv(tmp_path / "labels.csv", index=False)
    with pytest.warns(UserWarning, match=r"""it holds text \('insulator', 'metal'\).*data.target: 'label == "insulator"'"""):
        with pytest.raises(Exception, match="no rows left"):
            load_table(DatasetSpec(path=str(tmp_path / "labels.csv"), target="label"))
    loaded = load_table(DatasetSpec(path=str(tmp_path / "labels.csv"), target='label == "metal"'))
    assert loaded.raw_targets.tolist() == [1.0, 0.0, 1.0]


def test_scoring_every_row_warns_when_rows_are_the_models_own_training_crystals(trained, dataset_csv, tmp_path):  # noqa: F811
    """Round 9: 'evaluate MODEL DATASET --split all' on rows the model was trained on printed inflated metrics
    without a word, although split.json names those ids."""
    import pandas as pd

    from cgcnn_ase.analysis.evaluation import evaluate_model
    from cgcnn_ase.data.splits import Split

    _, folder = trained
    split = Split.load(folder / "split.json")
    with pytest.warns(UserWarning, match=r"10 of the 12 rows scored are crystals the model was trained on \(8 of its "
                                         r"train split\) or selected on \(2 of its val split\)"):  # fmt: skip
        evaluate_model(folder, dataset_csv, split="all")
    fresh = pd.read_csv(dataset_csv)
    fresh = fresh[fresh["material_id"].isin(split.ids("test"))]
    fresh.to_csv(tmp_path / "new.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", UnseenElementWarning)  # the test split holds an element training lacks
        assert evaluate_model(folder, tmp_path / "new.csv", split="all")["n"] == 2


def test_a_card_without_an_alias_loads_the_model_by_its_folder(dataset_csv, tmp_path):  # noqa: F811
    """Round 9: the card of a user's model said from_pretrained("vbm"), which resolves to no shipped model."""
    from cgcnn_ase.train.trainer import train_from_config

    from .test_training import tiny_config

    folder = train_from_config(tiny_config(dataset_csv, tmp_path, epochs=1, aliases=[]), progress=False)
    card = (folder / "README.md").read_text()
    assert 'CGCNNPredictor.from_pretrained("path/to/this/folder")\n' in card
    assert f'from_pretrained("{folder.name}")' not in card


# -- round 10: a library integrator, and a user of the authors' checkpoints -----------------------


def _original_layout_checkpoint(path, *, nbr_fea_len=41, normalizer=True):
    """An original-layout ``.pth.tar`` (state_dict, normalizer) of a random regression network."""
    import torch

    from cgcnn_ase.nn.network import CrystalGraphConvNet

    network = CrystalGraphConvNet(orig_atom_fea_len=92, nbr_fea_len=nbr_fea_len, atom_fea_len=16, n_conv=2,
                                  h_fea_len=16, n_h=1)  # fmt: skip
    checkpoint = {"state_dict": network.state_dict(), "epoch": 3}
    if normalizer:
        checkpoint["normalizer"] = {"mean": torch.tensor(-1.5), "std": torch.tensor(0.8)}
    torch.save(checkpoint, path)
    return path


def _atom_init_file(folder):
    """This project's element table written as an original atom_init.json (the command needs a file)."""
    import json

    from cgcnn_ase.graph.elements import generate_cgcnn_table

    path = folder / "atom_init.json"
    path.write_text(json.dumps(generate_cgcnn_table().to_atom_init()))
    return path


def test_original_checkpoints_missing_a_normaliser_or_of_another_graph_are_refused_at_load(tmp_path):
    """Round 10: a checkpoint without 'normalizer' silently got mean 0 / std 1 (-1.72 instead of -3.52 eV/atom);
    one whose convolutions take 31 bond features loaded and then failed inside the network (internal error)."""
    from cgcnn_ase.errors import CheckpointError
    from cgcnn_ase.models.legacy import load_original_checkpoint

    good = load_original_checkpoint(_original_layout_checkpoint(tmp_path / "good.pth.tar"), atom_init="generated")
    assert (good.spec.normalizer_mean, good.spec.normalizer_std) == pytest.approx((-1.5, 0.8))
    with pytest.raises(CheckpointError, match="without its target normaliser"):
        load_original_checkpoint(_original_layout_checkpoint(tmp_path / "bare.pth.tar", normalizer=False),
                                 atom_init="generated")  # fmt: skip
    import torch

    torch.save(torch.load(tmp_path / "good.pth.tar")["state_dict"], tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="a bare CGCNN state dict, without the wrapper"):
        load_original_checkpoint(tmp_path / "weights.pth", atom_init="generated")
    with pytest.raises(CheckpointError, match=r"31 bond features per edge, but the original code's graph \(8 Å"):
        load_original_checkpoint(_original_layout_checkpoint(tmp_path / "r6.pth.tar", nbr_fea_len=31), atom_init="generated")
    from .conftest import REPO

    result = _cli("predict", str(REPO / "examples" / "NaCl.POSCAR"), "--model", str(tmp_path / "r6.pth.tar"),
                  "--atom-init", str(_atom_init_file(tmp_path)))  # fmt: skip
    assert result.exit_code == 3 and "31 bond features" in result.output and "internal error" not in result.output


def test_checkpoint_messages_point_to_what_works(tmp_path):
    """Round 10: from_pretrained(path.pth.tar) said 'pass atom_init=PATH', which from_pretrained does not take; a
    folder holding only model_best.pth.tar got 'not a model folder' or 'a model folder carries its own element
    table'; the original layout's id_prop.csv given to predict was read as a table with a header."""
    from cgcnn_ase.errors import CheckpointError

    from .conftest import REPO

    (tmp_path / "run").mkdir()
    checkpoint = _original_layout_checkpoint(tmp_path / "run" / "model_best.pth.tar")
    with pytest.raises(CheckpointError, match=r"CGCNNPredictor.from_checkpoint\(path, atom_init=PATH\)"):
        CGCNNPredictor.from_pretrained(str(checkpoint))
    for options in ({}, {"atom_init": "generated"}):
        with pytest.raises(CheckpointError, match="not a model folder .*holds the checkpoint file.s. model_best.pth.tar"):
            CGCNNPredictor.from_checkpoint(tmp_path / "run", **options)
    result = _cli("predict", str(REPO / "examples" / "NaCl.POSCAR"), "--model", str(tmp_path / "run"), "--atom-init",
                  str(_atom_init_file(tmp_path)))  # fmt: skip
    assert result.exit_code == 2 and "holds the checkpoint file(s) model_best.pth.tar" in result.output
    (tmp_path / "layout").mkdir()
    (tmp_path / "layout" / "id_prop.csv").write_text("NaCl,1.0\n")
    result = _cli("predict", str(tmp_path / "layout" / "id_prop.csv"), "--model", "formation_energy")
    assert result.exit_code == 2 and "original CGCNN layout's id_prop.csv" in result.output


def test_predict_reads_a_folder_or_a_pattern_given_alone_as_the_command_does():
    """Round 10: predictor.predict('folder/') failed ('is a directory') although the command reads folders."""
    from .conftest import REPO

    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    folder = predictor.predict(str(REPO / "examples"))
    files = sorted(str(p) for p in (REPO / "examples").iterdir() if p.suffix in (".cif", ".extxyz") or "POSCAR" in p.name)
    assert folder.ids == files and np.array_equal(folder.values, predictor.predict(files).values)
    assert predictor.predict(str(REPO / "examples" / "*.cif")).ids == [str(REPO / "examples" / "SrTiO3.cif")]


def test_loading_and_predicting_leave_process_state_alone():
    """Round 10: the first predict() fixed the multiprocessing start method (tqdm's lock, even for a hidden bar) and
    started a monitor thread; loading a model advanced the global torch random stream."""
    import subprocess
    import sys

    from .conftest import REPO

    code = """
import multiprocessing as mp, threading, torch
from cgcnn_ase import CGCNNCalculator, CGCNNPredictor
torch.manual_seed(0); expected = torch.rand(3)
torch.manual_seed(0)
predictor = CGCNNPredictor.from_pretrained("formation_energy")
CGCNNCalculator("band_gap")
predictor.predict(["examples/SrTiO3.cif"] * 120, progress=False)
predictor.predict("examples/SrTiO3.cif")
assert torch.equal(torch.rand(3), expected), "the random stream moved"
assert mp.get_start_method(allow_none=True) is None, mp.get_start_method(allow_none=True)
assert threading.active_count() == 1, threading.enumerate()
mp.set_start_method("spawn")
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# -- round 10: screening at scale (streams, resume, concurrent runs) ---------------------------------


def _table_of(tmp_path, n=6, name="table.csv", **changes):
    """A CSV of ``n`` CIF texts with ids; ``changes``: {row: (id, cif)} replacing rows."""
    import pandas as pd
    from ase.io import write

    rows = []
    for k in range(n):
        write(tmp_path / "one.cif", bulk("NaCl", "rocksalt", a=5.5 + 0.02 * k))
        rows.append((f"c{k}", (tmp_path / "one.cif").read_text()))
    for k, row in changes.items():
        rows[int(k.removeprefix("row"))] = row
    pd.DataFrame(rows, columns=["key", "cif"]).to_csv(tmp_path / name, index=False)
    return tmp_path / name


def test_a_second_run_on_an_output_being_written_is_refused(tmp_path):
    """Round 10: two runs writing one output both exited 0, with rows duplicated or lost."""
    from cgcnn_ase.errors import StreamError
    from cgcnn_ase.inference.streaming import predict_stream
    from cgcnn_ase.inference.writers import output_lock

    table = _table_of(tmp_path)
    with output_lock(tmp_path / "out.csv"):
        assert (tmp_path / ".out.csv.lock").read_text() == f"pid {__import__('os').getpid()}\n"
        result = _cli("predict", str(table), "--id-column", "key", "-m", "formation_energy", "-o", str(tmp_path / "out.csv"))
        assert result.exit_code == 2 and "is being written by another run" in result.output
        with pytest.raises(StreamError, match="being written by another run"):
            predict_stream([str(table)], "formation_energy", tmp_path / "out.csv", id_column="key")
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / ".out.csv.lock").exists()
    done = _cli("predict", str(table), "--id-column", "key", "-m", "formation_energy", "-o", str(tmp_path / "out.csv"))
    assert done.exit_code == 0 and not (tmp_path / ".out.csv.lock").exists()  # released: the lock file is gone


def test_resume_refuses_other_ids_and_keeps_a_repeated_ids_second_row(tmp_path):
    """Round 10: resuming without the --id-column of the first session appended every crystal again under other
    ids; an id repeated in a later chunk was skipped on resume (a crystal lost, '101 skipped' of 100 rows)."""
    import pandas as pd

    table = _table_of(tmp_path)
    out = tmp_path / "out.csv"
    assert _cli("predict", str(table), "--id-column", "key", "-m", "formation_energy", "-o", str(out)).exit_code == 0
    again = _cli("predict", str(table), "-m", "formation_energy", "-o", str(out), "--resume")
    assert again.exit_code == 2 and "id_column: 'key' then, None now" in again.output and len(pd.read_csv(out)) == 6
    repeated = _table_of(tmp_path, name="repeated.csv", row4=("c1", (tmp_path / "one.cif").read_text()))
    whole = tmp_path / "whole.csv"
    assert _cli("predict", str(repeated), "--id-column", "key", "-m", "formation_energy", "-o", str(whole),
                "--chunk-size", "3").exit_code == 0  # fmt: skip
    expected = pd.read_csv(whole)
    expected.iloc[:3].to_csv(whole, index=False)  # as a run stopped after its first chunk leaves it
    resumed = _cli("predict", str(repeated), "--id-column", "key", "-m", "formation_energy", "-o", str(whole),
                   "--chunk-size", "3", "--resume")  # fmt: skip
    assert resumed.exit_code == 0 and "id 'c1' occurs more often among the inputs than in the output" in resumed.output
    pd.testing.assert_frame_equal(pd.read_csv(whole), expected)  # six rows, the repeated id's second one too


def test_a_resumed_run_reports_the_failures_already_written(tmp_path):
    """Round 10: a resume over an output holding error rows exited 0 and said nothing of them."""
    import pandas as pd

    table = _table_of(tmp_path, row2=("c2", "garbage"))
    out = tmp_path / "out.parquet"
    first = _cli("predict", str(table), "--id-column", "key", "-m", "formation_energy", "-o", str(out))
    assert first.exit_code == 1
    resumed = _cli("predict", str(table), "--id-column", "key", "-m", "formation_energy", "-o", str(out), "--resume")
    assert resumed.exit_code == 1 and "1 rows already in" in resumed.output and "hold errors" in resumed.output
    rerun = _cli("predict", str(table), "--id-column", "key", "-m", "formation_energy", "-o", str(out))
    assert rerun.exit_code == 1 and "holds files other than part files" not in rerun.output  # its own run record
    assert len(pd.read_parquet(out)) == 6


def test_malformed_tables_broken_pipes_and_full_disks_get_their_own_messages(tmp_path, monkeypatch):
    """Round 10: a CSV with an unclosed quote was an 'internal error'; a full disk and a closed pipe were usage
    errors (exit 2); an error message could span two lines."""
    import errno

    from cgcnn_ase.inference import writers

    (tmp_path / "cut.csv").write_text('key,cif\nc0,"data_x\n_cell_length_a 4\n')
    cut = _cli("predict", str(tmp_path / "cut.csv"), "--id-column", "key", "-m", "formation_energy")
    assert cut.exit_code == 2 and "not a readable CSV table (ParserError" in cut.output
    table = _table_of(tmp_path)

    def full(self, frame):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writers.CSVChunkWriter, "write", full)
    result = _cli("predict", str(table), "--id-column", "key", "-m", "formation_energy", "-o", str(tmp_path / "o.csv"))
    assert result.exit_code == 74 and f"writing {tmp_path / 'o.csv'}: No space left on device" in result.output
    assert "run the same command with --resume" in result.output

    def closed(self, frame):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(writers.CSVChunkWriter, "write", closed)
    piped = _cli("predict", str(table), "--id-column", "key", "-m", "formation_energy")
    assert piped.exit_code == 141 and "error" not in piped.stderr


# -- round 11: site energies, own ensembles, docs followed verbatim, ASE/pymatgen/matminer workflows ------------


def test_calculator_keeps_two_models_of_one_property_apart():
    """Round 11: two perovskite models in one calculator wrote one 'perovskite_formation_energy' (the second
    model's value) while energy/N was the first model's; one model given twice was accepted."""
    from ase.io import read

    from cgcnn_ase import CGCNNCalculator

    from .conftest import REPO

    atoms = read(REPO / "examples" / "SrTiO3.cif")
    names = ["perovskite_formation_energy", "perovskite_site_energy"]
    alone = [CGCNNPredictor.from_pretrained(n, device="cpu").predict(atoms).values[0] for n in names]
    calc = CGCNNCalculator(names, device="cpu")
    atoms.calc = calc
    assert "perovskite_formation_energy" not in calc.implemented_properties
    keys = [f"{CGCNNPredictor.from_pretrained(n).model.spec.name}:perovskite_formation_energy" for n in names]
    got = [calc.get_property(k, atoms) for k in keys]
    assert got == pytest.approx(alone, abs=1e-6) and got[0] != pytest.approx(got[1], abs=1e-4)
    assert atoms.get_potential_energy() / len(atoms) == pytest.approx(alone[0], abs=1e-6)  # the first energy model
    assert f"{keys[1]}_std" in calc.result_names
    with pytest.raises(ValueError, match="given twice"):
        CGCNNCalculator(["formation_energy", "formation_energy"], device="cpu")


def test_calculator_names_the_crystal_and_the_users_line_and_suggests_property_names():
    """Round 11: messages said 'input 0', warnings pointed into ase/calculators/calculator.py, and a mistyped
    property got ASE's bare 'bandgap property not implemented'."""
    from ase.calculators.calculator import PropertyNotImplementedError

    from cgcnn_ase import CGCNNCalculator
    from cgcnn_ase.errors import InvalidStructureError

    atoms = bulk("Ar", "fcc", a=5.2)
    atoms.calc = CGCNNCalculator("band_gap", device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        atoms.calc.get_property("band_gap", atoms)
    unseen = [w for w in caught if issubclass(w.category, UnseenElementWarning)]
    assert unseen and all(w.filename == __file__ for w in unseen), [(w.filename, w.lineno) for w in unseen]
    assert "e.g. Atoms(Ar)" in str(unseen[0].message) and "input 0" not in str(unseen[0].message)
    with pytest.raises(PropertyNotImplementedError, match="did you mean 'band_gap'"):
        atoms.calc.get_property("bandgap", atoms)
    broken = bulk("Si")
    broken.positions[1] = broken.positions[0]
    broken.calc = CGCNNCalculator("formation_energy", device="cpu")
    with pytest.raises(InvalidStructureError, match=r"^Atoms\(Si2\): atoms 0 and 1"):
        broken.get_potential_energy()


def test_featurizer_warnings_point_at_the_users_line():
    """Round 11: the featurizer's unseen-element warning pointed into integrations/matminer.py."""
    import pandas as pd

    from cgcnn_ase.integrations.matminer import CGCNNFeaturizer

    frame = pd.DataFrame({"structure": [bulk("Ar", "fcc", a=5.2)]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CGCNNFeaturizer("formation_energy", device="cpu").featurize_dataframe(frame, "structure", pbar=False)
    unseen = [w for w in caught if issubclass(w.category, UnseenElementWarning)]
    assert unseen and all(w.filename == __file__ for w in unseen), [(w.filename, w.lineno) for w in unseen]


def test_member_site_contributions_refuse_members_of_other_models():
    """Round 11: a list of model folders of other units or another property was averaged as seeds of one model."""
    from cgcnn_ase.analysis.site_members import member_site_contributions
    from cgcnn_ase.errors import SiteAnalysisError

    with pytest.raises(SiteAnalysisError, match="differs from member 0 .* in its property: 'formation_energy'"):
        member_site_contributions(["perovskite_site_energy", "formation_energy"], {"Si": bulk("Si")},
                                  allow_mean_pooled=True)  # fmt: skip


def test_sites_mark_unseen_elements_and_say_when_there_is_nothing(tmp_path):
    """Round 11: 'sites' pointed to an unseen_elements column its tables lack (Pu sat in the maps unflagged), and
    an empty folder 'succeeded' with header-only tables and no word."""
    import pandas as pd
    from ase.io import read, write

    from .conftest import REPO

    atoms = read(REPO / "examples" / "SrTiO3.cif")
    atoms.symbols[0] = "Pu"
    write(tmp_path / "PuTiO3.cif", atoms)
    out = tmp_path / "report"
    result = _cli("sites", str(tmp_path / "PuTiO3.cif"), str(REPO / "examples" / "SrTiO3.cif"), "-m",
                  "perovskite_site_energy", "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "the unseen column of sites.csv and by_element.csv marks their sites" in result.stderr
    assert "unseen_elements column" not in result.stderr
    sites = pd.read_csv(out / "sites.csv")
    assert sites.loc[sites["unseen"], "element"].tolist() == ["Pu"]
    table = pd.read_csv(out / "by_element.csv").set_index("element")
    assert bool(table.loc["Pu", "unseen"]) and not table.drop(index="Pu")["unseen"].any()
    (tmp_path / "empty").mkdir()
    empty = _cli("sites", str(tmp_path / "empty"), "-m", "perovskite_site_energy", "-o", str(tmp_path / "r2"))
    assert "the inputs held no structures" in empty.stderr and empty.exit_code == 1


def test_per_atom_values_of_a_mean_pooled_model_are_called_attributions():
    """Round 11: predict --per-atom on formation_energy printed per-atom 'eV/atom' values that read as site
    energies, with no word that they are first-order attributions (sites says so)."""
    from .conftest import REPO

    pooled = _cli("predict", str(REPO / "examples" / "SrTiO3.cif"), "-m", "formation_energy", "--per-atom")
    assert pooled.exit_code == 0 and "formation_energy pools the mean" in pooled.stderr
    assert "first-order attributions" in pooled.stderr
    atomwise = _cli("predict", str(REPO / "examples" / "SrTiO3.cif"), "-m", "perovskite_site_energy", "--per-atom")
    assert atomwise.exit_code == 0 and "first-order" not in atomwise.stderr


def test_a_bad_training_setting_is_a_usage_error(tmp_path):
    """Round 11: 'train CONFIG --set optim.lrate=1' exited 1 (bad input); the README gives 2 to usage errors."""
    from .conftest import REPO

    result = _cli("train", str(REPO / "configs" / "formation_energy.yaml"), "--set", "optim.lrate=1",
                  "--set", f"output={tmp_path / 'run'}")  # fmt: skip
    assert result.exit_code == 2 and "lrate" in result.output


def test_failed_rows_have_no_sparse_count():
    """Round 11: to_dataframe() gave failed rows n_sparse = -1 where every other column is NaN."""
    result = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu").predict(
        [bulk("Si"), "no-such-file.cif"], errors="collect"
    )
    frame = result.to_dataframe()
    assert frame["n_sparse"].iloc[0] == 0 and frame["n_sparse"].isna().tolist() == [False, True]
    assert result.n_sparse.tolist() == [0, -1]  # the array keeps its documented sentinel


def test_additive_site_energies_warn_when_the_cells_cannot_separate_the_elements():
    """Round 11: two cells (SrTiO3, BaZrO3) gave Sr and Ti the same term without a word."""
    import pandas as pd

    from cgcnn_ase.analysis.site_members import additive_site_energies

    two = pd.DataFrame({"A": ["Sr", "Ba"], "B": ["Ti", "Zr"], "X": [{"O": 3}] * 2, "energy": [1.0, 2.0]})
    with pytest.warns(UserWarning, match="do not separate every element's term"):
        additive_site_energies(two)
    four = pd.DataFrame({"A": ["Sr", "Ba", "Sr", "Ba"], "B": ["Ti", "Zr", "Zr", "Ti"], "X": [{"O": 3}] * 4,
                         "energy": [1.0, 2.0, 1.5, 1.4]})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only the roles' own constants are free: no warning
        terms = additive_site_energies(four).set_index(["role", "element"])["mean"]
    assert terms["A", "Ba"] - terms["A", "Sr"] == pytest.approx(0.45)  # differences within a role are determined


# -- round 12: the figures ---------------------------------------------------------------------------------------


def test_plots_count_only_what_they_draw_and_say_when_there_is_nothing(tmp_path, monkeypatch):
    """Round 12: parity_plot printed 'MAE nan, n = 4' over 3 drawn points; roc_plot raised on a NaN probability;
    reliability_plot dropped a valid crystal's bin; classification metrics of no rows were an internal error."""
    from matplotlib.axes import Axes

    from cgcnn_ase.analysis import plots
    from cgcnn_ase.analysis.metrics import classification_metrics

    texts = []
    original_text, original_annotate = Axes.text, Axes.annotate

    def text(self, x, y, s, *args, **kwargs):
        texts.append(str(s))
        return original_text(self, x, y, s, *args, **kwargs)

    def annotate(self, s, *args, **kwargs):
        texts.append(str(s))
        return original_annotate(self, s, *args, **kwargs)

    monkeypatch.setattr(Axes, "text", text)
    monkeypatch.setattr(Axes, "annotate", annotate)
    plots.parity_plot([1, 2, 3, 4], [1.1, np.nan, 2.9, 4.2], tmp_path / "p.png", units="eV")
    assert any("MAE 0.1333 eV" in t and "n = 3" in t for t in texts), texts
    assert any("1 non-finite rows left out" in t for t in texts)
    texts.clear()
    plots.parity_plot([], [], tmp_path / "p0.png")
    assert any("no finite predictions to plot" in t for t in texts)
    plots.roc_plot([0, 1, 0, 1], [0.1, np.nan, 0.3, 0.9], tmp_path / "r.png")  # raised ValueError: NaN
    texts.clear()
    plots.reliability_plot([0, 1, 1], [0.1, np.nan, 0.9], tmp_path / "rel.png")
    assert texts[-2:] == ["1", "1"]  # two bins of one crystal each: the crystal at 0.9 is kept
    assert classification_metrics([], [])["n"] == 0 and np.isnan(classification_metrics([], [])["roc_auc"])


def test_evaluate_names_unreadable_rows_and_fails_when_none_could_be_scored(tmp_path):
    """Round 12: evaluate of a classifier on rows that all fail was an internal error (exit 4), and rows whose
    structure could not be read were missing from predictions.csv with nothing naming them."""
    import pandas as pd

    table = pd.DataFrame({"material_id": ["x1", "x2"], "band_gap": [0.0, 1.0], "cif": ["garbage", "garbage"]})
    table.to_csv(tmp_path / "bad.csv", index=False)
    result = _cli("evaluate", "is_metal", str(tmp_path / "bad.csv"), "--split", "all", "--id-column", "material_id",
                  "-o", str(tmp_path / "ev"))  # fmt: skip
    assert result.exit_code == 1 and "none of the 2 crystals could be predicted" in result.stderr, result.output
    rows = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    assert rows["id"].tolist() == ["x1", "x2"] and rows["error"].str.contains("garbage").all()


def test_the_docs_uncertainty_figures_are_the_shipped_models_own():
    """Round 12: docs/img's formation-energy figures came from the replaced v2 model (x2.81, Spearman 0.233)."""
    from cgcnn_ase.models.registry import resolve_model

    from .conftest import REPO

    folder = resolve_model("formation_energy").path
    for name in ("calibration", "error_vs_std"):
        assert (REPO / "docs" / "img" / f"formation_energy_{name}.png").read_bytes() == (folder / f"{name}.png").read_bytes()


def test_learning_curve_axis_names_the_metric_and_its_units(tmp_path, monkeypatch):
    """Round 12: the learning curve's error axis read 'metric (target units)' and its legend raw column names."""
    import pandas as pd
    from matplotlib.figure import Figure

    from cgcnn_ase.analysis import plots

    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1, 0.5, 0.3], "val_mae": [0.3, 0.2, 0.15], "lr": [1e-3] * 3,
                  "best": [0, 1, 1]}).to_csv(tmp_path / "m.csv", index=False)  # fmt: skip
    saved = []
    original = Figure.savefig

    def keep(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    plots.learning_curve_plot(tmp_path / "m.csv", tmp_path / "c.png", units="eV/atom")
    labels = [ax.get_ylabel() for ax in saved[0].axes]
    assert "MAE, RMSE (eV/atom)" in labels
    legend = [t.get_text() for ax in saved[0].axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "validation MAE (right axis)" in legend and not [text for text in legend if "val_mae" in text]


# -- round 13: a physicist's audit (invariances, ASE conventions, hostile CIF text) -----------------------------


def test_slabs_with_five_to_eight_angstrom_of_vacuum_are_warned_about_and_out_of_the_domain():
    """Round 13: 'Cu(111) slabs with 4-30 Å of vacuum all predict the same value, but only the 15 and 30 Å ones
    warn; with 6 or 7.5 Å in_domain() is True': the threshold was the 8 Å graph radius, while the 12 nearest
    neighbours reach 3-4 Å, so gaps from 5 to 8 Å gave the isolated slab's number as a bulk crystal's."""
    from ase.build import fcc111

    from cgcnn_ase.errors import VacuumWarning
    from cgcnn_ase.io.records import VACUUM_GAP

    assert VACUUM_GAP == 5.0
    slabs = [fcc111("Cu", (1, 1, 4), vacuum=gap / 2, periodic=True) for gap in (6.0, 7.5, 15.0)]
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = predictor.predict(slabs)
    assert sum(issubclass(w.category, VacuumWarning) for w in caught) == 3
    assert np.allclose(result.values, result.values[0], atol=1e-6)  # the model cannot see the vacuum: hence the warning
    assert not result.in_domain(max_percentile=100).any()
    # bulk crystals, layered ones included, stay quiet: graphite's 3.35 Å gap is within the training crystals'
    from ase import Atoms
    from ase.cell import Cell

    graphite = Atoms("C4", scaled_positions=[[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]],
                     cell=Cell.fromcellpar([2.46, 2.46, 6.7, 90, 90, 120]), pbc=True)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", VacuumWarning)
        quiet = predictor.predict([graphite, bulk("Cu", "fcc", a=3.6), bulk("NaCl", "rocksalt", a=5.64)])
    assert quiet.in_domain(max_percentile=100).all() and quiet.vacuum_gap.max() < 4
    from cgcnn_ase.graph.config import GraphConfig
    from cgcnn_ase.graph.neighbours import build_graph
    from cgcnn_ase.io.reader import to_record

    assert build_graph(to_record(graphite), GraphConfig()).distances.max() < 3.35  # no edge between the layers
    with pytest.warns(VacuumWarning):
        slab_graph = build_graph(to_record(slabs[0]), GraphConfig(), on_sparse="ignore")
    assert slab_graph.distances.max() < 3.7 < 6.0  # the Cu slab's edges reach 3.6 Å, not across its 6 Å gap


def test_the_vacuum_threshold_leaves_almost_every_training_crystal_alone():
    """The 5 Å threshold against the data it stands for: at most 0.1% of 2000 sampled MP training crystals warn."""
    import pandas as pd

    from cgcnn_ase.io.reader import read_records
    from cgcnn_ase.io.records import VACUUM_GAP, vacuum_gap

    from .conftest import SHARED, require_shared

    path = require_shared(SHARED / "data" / "mp_cgcnn46k_kdmsit" / "data.csv.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = [read_records(cif)[0] for cif in pd.read_csv(path, usecols=["cif"]).sample(n=2000, random_state=3)["cif"]]
    gaps = np.array([vacuum_gap(r.frac_coords, r.cell)[0] for r in records])
    assert (gaps > VACUUM_GAP).mean() <= 0.001 and np.percentile(gaps, 99) < 4.2


@pytest.mark.parametrize("value", ["1/2", "?", "abc"])
def test_a_cif_coordinate_that_is_not_a_number_is_named(value):
    """Round 13: 'a CIF coordinate written 1/2 gives "atom(s) [1] have NaN or infinite positions"' (with symmetry the
    indices were of atoms the user never wrote)."""
    from cgcnn_ase.errors import StructureReadError

    from .conftest import REPO

    lines = (REPO / "examples" / "SrTiO3.cif").read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if line.split()[:2] == ["Ti", "Ti1"])
    parts = lines[k].split()  # symbol, label, multiplicity, x, y, z, occupancy
    parts[3] = value
    lines[k] = " ".join(parts)
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    with pytest.raises(StructureReadError, match=rf"_atom_site_fract_x of site \S+ is '{re.escape(value)}', not a number"):
        predictor.predict("\n".join(lines) + "\n")


def test_the_calculator_without_a_structure_says_so():
    """Round 13: CGCNNCalculator(model, atoms=a).get_potential_energy() raised "TypeError: object of type 'NoneType'
    has no len()" (ASE's own EMT fails with an AttributeError there)."""
    from ase.calculators.calculator import CalculatorError

    from cgcnn_ase import CGCNNCalculator

    atoms = bulk("Cu", "fcc", a=3.6)
    calc = CGCNNCalculator("formation_energy", atoms=atoms)
    with pytest.raises(CalculatorError, match="no structure to calculate"):
        calc.get_potential_energy()
    assert calc.get_potential_energy(atoms) == pytest.approx(atoms.get_potential_energy())  # both ways work


# -- round 13: a user who pip-installed it and drives the command line -----------------------------------------


def _ase_cif_frames(tmp_path):
    """Three crystals written by ASE, one CIF each (every block named ``data_image0``), and the three concatenated."""
    import ase.io

    frames = [bulk("NaCl", "rocksalt", a=5.64), bulk("Si", "diamond", a=5.43), bulk("Cu", "fcc", a=3.6)]
    paths = []
    for k, atoms in enumerate(frames):
        paths.append(tmp_path / f"f{k}.cif")
        ase.io.write(paths[-1], atoms)
    assert all("data_image0" in p.read_text() for p in paths)
    joined = tmp_path / "same3.cif"
    joined.write_text("".join(p.read_text() for p in paths))
    return paths, joined


@pytest.mark.parametrize("cif_reader", ["gemmi", "pymatgen"])
def test_cif_blocks_that_share_a_name_are_all_read(tmp_path, cif_reader):
    """Round 13: 'a CIF whose data blocks share a name (every ASE-written CIF starts data_image0) is predicted as
    one structure, the last; exit 0, no warning': gemmi refused the repeated name and pymatgen kept the last block."""
    import gzip

    from cgcnn_ase.io.reader import read_records

    paths, joined = _ase_cif_frames(tmp_path)
    compressed = tmp_path / "same3.cif.gz"
    compressed.write_bytes(gzip.compress(joined.read_bytes()))
    single = [read_records(p, cif_reader=cif_reader)[0] for p in paths]
    for source in (joined, compressed, joined.read_text()):
        records = read_records(source, cif_reader=cif_reader)
        assert len(records) == 3 and [r.label[-2:] for r in records] == ["@0", "@1", "@2"]
        for got, want in zip(records, single):
            np.testing.assert_array_equal(got.numbers, want.numbers)
            np.testing.assert_allclose(got.cell, want.cell, atol=1e-12)
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    np.testing.assert_allclose(predictor.predict(joined).values, predictor.predict(paths).values, atol=1e-6)


def test_an_unreadable_or_non_regular_file_gets_its_own_error(tmp_path, monkeypatch):
    """Round 13: 'one CIF at mode 000 in a folder aborts the whole run (exit 2, no rows)'; 'predict <(cat x.cif)
    says the file is empty'."""
    from cgcnn_ase.errors import StructureReadError
    from cgcnn_ase.io import reader

    paths, _ = _ase_cif_frames(tmp_path)
    real_read_cif = reader.read_cif

    def refuse(path, *args, **kwargs):  # root reads any file, so mode 000 cannot be tested as such; gemmi says:
        if str(path) == str(paths[1]):
            raise PermissionError(13, f"unable to open() file {path} for reading: Permission denied")
        return real_read_cif(path, *args, **kwargs)

    monkeypatch.setattr(reader, "read_cif", refuse)
    result = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu").predict(paths, errors="collect")
    assert result.ok.tolist() == [True, False, True]
    assert "cannot be read (Permission denied)" in result.errors[1]
    monkeypatch.undo()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(StructureReadError, match="not a regular file"):
        reader.read_records(fifo)


def test_a_bad_start_method_variable_is_a_configuration_error(monkeypatch):
    """Round 13: CGCNN_ASE_START_METHOD=bogus with --workers 2 gave 'internal error ... report it' (exit 4)."""
    from cgcnn_ase.data.datasets import worker_start_method
    from cgcnn_ase.errors import ConfigError

    monkeypatch.setenv("CGCNN_ASE_START_METHOD", "bogus")
    with pytest.raises(ConfigError, match=r"CGCNN_ASE_START_METHOD is 'bogus'.*spawn"):
        worker_start_method()
    monkeypatch.setenv("CGCNN_ASE_START_METHOD", "spawn")
    assert worker_start_method() == "spawn"


def test_a_vasp_run_folder_predicts_its_structures_and_leaves_out_the_rest(tmp_path):
    """Round 13: 'README, LICENSE, Makefile, INCAR, KPOINTS ... each produce an error: line, and the run exits 1, so
    any VASP run folder exits 1'."""
    import ase.io
    from click.testing import CliRunner

    from cgcnn_ase.cli import main

    ase.io.write(tmp_path / "POSCAR", bulk("NaCl", "rocksalt", a=5.64), format="vasp")
    ase.io.write(tmp_path / "CONTCAR", bulk("NaCl", "rocksalt", a=5.60), format="vasp")
    for name in ("INCAR", "KPOINTS", "POTCAR", "OSZICAR", "README", "LICENSE", "Makefile"):
        (tmp_path / name).write_text("ENCUT = 520\n")
    result = CliRunner().invoke(main, ["predict", str(tmp_path), "-m", "formation_energy", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "INCAR" in result.stderr and "error:" not in result.stderr  # named as left out, not as bad files
    rows = [line for line in result.stdout.splitlines()[1:] if line]
    assert [row.split(",")[0].rsplit("/", 1)[-1] for row in rows] == ["CONTCAR", "POSCAR"]


def test_predict_cli_conventions_from_round_13(tmp_path):
    """Round 13: '-o - wrote a file named -'; '--format json rounded to 15 decimal places (1e-16 -> 0)';
    '--metal-threshold/--log10/--domain with --model change nothing, silently'."""
    import json

    from click.testing import CliRunner

    from cgcnn_ase.cli import main

    from .conftest import REPO

    cif = str(REPO / "examples" / "SrTiO3.cif")
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path):
        result = runner.invoke(main, ["predict", cif, "-m", "formation_energy", "-o", "-", "--workers", "1"])
        assert result.exit_code == 0 and result.stdout.startswith("id,formation_energy (eV/atom)")
        assert not any(p.name in ("-", ".-.run.json") for p in Path(".").iterdir())
    csv = float(result.stdout.splitlines()[1].split(",")[1])
    result = runner.invoke(main, ["predict", cif, "-m", "formation_energy", "--format", "json", "--workers", "1"])
    assert json.loads(result.stdout)["results"][0]["formation_energy (eV/atom)"] == csv  # every digit, as the CSV
    result = runner.invoke(main, ["predict", cif, "-m", "formation_energy", "--metal-threshold", "0.9", "--workers", "1"])
    assert result.exit_code == 0 and "note: --metal-threshold applies only without --model/--all" in result.stderr


def test_reprs_are_short_and_say_what_they_hold():
    """Round 13: repr(PredictionResult) printed every id and array (89 kB for 600 structures); the predictor's was
    '<... object at 0x...>'."""
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    assert repr(predictor) == "CGCNNPredictor('formation_energy-mp_cgcnn46k-v3': formation_energy in eV/atom, device='cpu')"
    result = predictor.predict([bulk("Cu", "fcc", a=3.6)] * 600 + ["no such file.cif"], errors="collect")
    text = repr(result)
    assert len(text) < 200 and "601 structures" in text and "1 failed" in text and "eV/atom" in text


def test_one_calculator_on_several_frames_keeps_each_frames_numbers_only_in_info(tmp_path):
    """docs/quickstart.md: written together, frames sharing one calculator all get the last one's energy (as with
    any ASE calculator); with store_in_info=True each frame's own value survives in extxyz."""
    import ase.io

    from cgcnn_ase import CGCNNCalculator

    calc = CGCNNCalculator("formation_energy", store_in_info=True)
    frames = [bulk("NaCl", "rocksalt", a=5.64), bulk("Cu", "fcc", a=3.6)]
    own = []
    for atoms in frames:
        atoms.calc = calc
        own.append(atoms.get_potential_energy() / len(atoms))
    ase.io.write(tmp_path / "out.extxyz", frames)
    back = ase.io.read(tmp_path / "out.extxyz", index=":")
    assert [a.get_potential_energy() for a in back] == pytest.approx([own[1] * 1, own[1] * 1])  # the last one's (Cu: 1 atom)
    assert [a.info["cgcnn_formation_energy"] for a in back] == pytest.approx(own)


# -- round 14 ------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_an_output_that_is_a_pipe_or_device_gets_no_lock_or_record_beside_it(tmp_path):
    """'-o /dev/null' wrote /dev/.null.run.json and /dev/.null.lock (as root; a user cannot create files in /dev, so
    the command failed there). A device or named pipe is written like stdout: nothing beside it, no --resume."""
    import threading

    from .conftest import REPO

    fifo = tmp_path / "results.pipe"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    result = _cli("predict", str(REPO / "examples" / "SrTiO3.cif"), "-m", "formation_energy", "-o", str(fifo),
                  "--workers", "1")  # fmt: skip
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert received and received[0].startswith("id,formation_energy (eV/atom)") and "SrTiO3.cif," in received[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.pipe"]  # no .results.pipe.run.json or .lock
    resumed = _cli("predict", str(REPO / "examples" / "SrTiO3.cif"), "-m", "formation_energy", "-o", str(fifo),
                   "--resume")  # fmt: skip
    assert resumed.exit_code == 2 and "not a stream, pipe or device" in resumed.stderr
    if os.path.exists(os.devnull):
        assert _cli("predict", str(REPO / "examples" / "SrTiO3.cif"), "-m", "formation_energy", "-o", os.devnull,
                    "--workers", "1").exit_code == 0  # fmt: skip
        assert not list(Path(os.devnull).parent.glob(f".{Path(os.devnull).name}.*"))


def test_poscar_and_extxyz_text_and_files_named_without_a_format_are_read_by_content(tmp_path):
    """Round 14 (left alone in round 13): POSCAR text given to the API or in a table cell was 'not readable CIF
    text'; a POSCAR file named without a suffix ASE knows ('Si', 'relaxed') was 'Could not guess file type',
    while the same text on stdin was read."""
    from .conftest import REPO

    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    poscar = (REPO / "examples" / "NaCl.POSCAR").read_text()
    frames = (REPO / "examples" / "Si.extxyz").read_text() * 2
    (tmp_path / "NaCl").write_text(poscar)
    (tmp_path / "relaxed").write_text(frames)
    (tmp_path / "notes").write_text("two lines\nof prose\n")
    reference = predictor.predict([REPO / "examples" / "NaCl.POSCAR", REPO / "examples" / "Si.extxyz"]).values
    result = predictor.predict([poscar, ("cell", frames), tmp_path / "NaCl", tmp_path / "relaxed", tmp_path / "notes"],
                               errors="collect")  # fmt: skip
    assert list(result.ids) == ["input 0", "cell@0", "cell@1", str(tmp_path / "NaCl"), f"{tmp_path / 'relaxed'}@0",
                                f"{tmp_path / 'relaxed'}@1", str(tmp_path / "notes")]  # fmt: skip
    assert result.values[[0, 3]] == pytest.approx([reference[0]] * 2, abs=1e-6)  # batches differ: float32 rounding
    assert result.values[[1, 2, 4, 5]] == pytest.approx([reference[1]] * 4, abs=1e-6)
    assert "unknown format: ASE cannot tell it from the name" in result.errors[6]


def test_batch_size_must_be_a_whole_number():
    """Round 14: batch_size=1.5 or "64" failed deep inside (islice, '<' between str and int); True ran as 1."""
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    for bad in (1.5, "64", True, 0):
        with pytest.raises(ValueError, match="batch_size must be a whole number of at least 1"):
            predictor.predict(bulk("Cu", "fcc", a=3.6), batch_size=bad)
    assert np.isfinite(predictor.predict(bulk("Cu", "fcc", a=3.6), batch_size=np.int64(2)).values).all()


def test_csv_ids_keep_their_leading_zeros(tmp_path):
    """Round 14: ids such as 0007 in a training CSV were read as numbers (drop_ids '0000' matched nothing, the
    split held '31'); the id_prop.csv layout kept them."""
    from cgcnn_ase.data.datasets import DatasetSpec, load_table

    from .conftest import REPO

    cif = (REPO / "examples" / "SrTiO3.cif").read_text().replace('"', '""')
    rows = "".join(f'{k:04d},{-k / 10},"{cif}"\n' for k in range(3))
    (tmp_path / "zeros.csv").write_text("id,y,cif\n" + rows)
    table = load_table(DatasetSpec(path=str(tmp_path / "zeros.csv"), target="y"))
    assert list(table.ids) == ["0000", "0001", "0002"]


def test_a_folder_named_like_a_shipped_model_does_not_replace_it(trained, tmp_path, monkeypatch):
    """Round 14a: a run written to ./formation_energy became the default command's formation energy (units
    'unknown'), and an empty ./band_gap made it exit 3. A bare shipped name selects the shipped model (warned),
    ./NAME the folder."""
    import shutil

    from cgcnn_ase.errors import ShadowedModelWarning
    from cgcnn_ase.models.registry import load_model, model_folder, resolve_model

    _, folder = trained
    monkeypatch.chdir(tmp_path)
    shutil.copytree(folder, tmp_path / "formation_energy")
    (tmp_path / "band_gap").mkdir()
    shipped = resolve_model("formation_energy")
    with pytest.warns(ShadowedModelWarning, match=r"give \./formation_energy to load it"):
        assert load_model("formation_energy", device="cpu").spec.units == shipped.units
    with pytest.warns(ShadowedModelWarning):
        assert model_folder("band_gap") == resolve_model("band_gap").path
    assert load_model("./formation_energy", device="cpu").spec.units == "Å^3/atom"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShadowedModelWarning)
        assert CGCNNPredictor.from_pretrained("formation_energy", device="cpu").units == shipped.units
    bulk("Si").write(tmp_path / "Si.cif")
    result = _cli("predict", "Si.cif", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "formation_energy (eV/atom)" in result.stdout and "band_gap (eV)" in result.stdout
    assert "the folder 'band_gap' in the working directory" in result.stderr
    monkeypatch.chdir(shipped.path.parent)  # inside pretrained_models/: the folder named is the shipped one itself
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShadowedModelWarning)
        assert model_folder(shipped.name) == shipped.path


def test_evaluate_with_another_target_column_says_how_per_atom_applies(trained, tmp_path):
    """Round 14a: evaluate MODEL DATASET --target COL divided a column that was already per atom by the number of
    atoms again (MAE 1.290 against 1.091), silently. It is now warned, and --no-per-atom takes it as it is."""
    import shutil

    import pandas as pd
    import yaml
    from pymatgen.core import Structure

    from cgcnn_ase.analysis.evaluation import evaluate_model

    config, folder = trained
    model = tmp_path / "per_atom_model"
    shutil.copytree(folder, model)
    settings = yaml.safe_load((model / "config.yaml").read_text())
    settings["data"].update(target="volume", per_atom=True)  # the same model, as if trained on volume / atoms
    (model / "config.yaml").write_text(yaml.safe_dump(settings))
    table = pd.read_csv(config.data.path)
    table["volume"] = [row.vpa * len(Structure.from_str(row.cif, fmt="cif")) for row in table.itertuples()]
    table.to_csv(tmp_path / "data.csv", index=False)
    reference = evaluate_model(model, tmp_path / "data.csv", split="all", layout={"target": "volume"}, workers=1)
    with pytest.warns(UserWarning, match="'vpa' is divided too. If it is already per atom, say so"):
        doubled = evaluate_model(model, tmp_path / "data.csv", split="all", layout={"target": "vpa"}, workers=1)
    as_is = evaluate_model(model, tmp_path / "data.csv", split="all", layout={"target": "vpa", "per_atom": False},
                           workers=1)  # fmt: skip
    assert as_is["metrics"]["mae"] == pytest.approx(reference["metrics"]["mae"], rel=1e-9)
    assert doubled["metrics"]["mae"] != pytest.approx(as_is["metrics"]["mae"], rel=1e-3)  # divided twice
    cli = _cli("evaluate", str(model), str(tmp_path / "data.csv"), "--split", "all", "--target", "vpa",
               "--no-per-atom", "--format", "json", "-o", str(tmp_path / "out"))  # fmt: skip
    assert cli.exit_code == 0, cli.output
    import json

    assert json.loads(cli.stdout)["metrics"]["mae"] == pytest.approx(reference["metrics"]["mae"], rel=1e-9)


def test_a_band_gap_model_of_ones_own_is_gated_only_with_is_metal_named(tmp_path):
    """Round 14a: the calculator gated a user's own band-gap model with the shipped is_metal (Cu 0.0 there, -0.68
    from the API and CLI), though such a model may have learned metals. Shipped and authors' band-gap models are
    still gated; --model band_gap says on stderr that its column is the model's own value, clipped at 0."""
    from dataclasses import replace

    from cgcnn_ase import CGCNNCalculator
    from cgcnn_ase.models.folder import save_model_folder

    from .conftest import REPO, random_model

    loaded = random_model(seed=12)
    own = save_model_folder(tmp_path / "gap", replace(loaded, spec=replace(loaded.spec, property="band_gap", units="eV")))
    copper = bulk("Cu", "fcc", a=3.6)
    raw = CGCNNPredictor.from_checkpoint(own, device="cpu").predict(copper).values[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = CGCNNCalculator(str(own))
        assert [p.property_name for p in alone.predictors] == ["band_gap"]
        assert alone.get_property("band_gap", copper) == pytest.approx(max(raw, 0.0), abs=1e-6)
        named = CGCNNCalculator([str(own), "is_metal"])
        assert named.get_property("band_gap", copper) == 0.0 and named.get_property("metal_probability", copper) > 0.5
    result = _cli("predict", str(REPO / "examples" / "SrTiO3.cif"), "-m", "band_gap", "--workers", "1", "-o", "-")
    assert result.exit_code == 0 and "band_gap is the model's own value (clipped at 0), not gated" in result.stderr
    own_run = _cli("predict", str(REPO / "examples" / "SrTiO3.cif"), "-m", str(own), "--workers", "1", "-o", "-")
    assert own_run.exit_code == 0 and "not gated" not in own_run.stderr


def test_datasets_in_another_encoding_or_format_are_named_and_parquet_and_json_lines_are_read(tmp_path):
    """Round 14a: a cp1252 CSV, Parquet given as csv and a CSV given as json were internal errors (exit 4); the
    Parquet message suggested format=csv, which crashed. Parquet tables and JSON lines are now datasets too."""
    import json

    import pandas as pd

    from cgcnn_ase.data.datasets import DatasetSpec, load_table
    from cgcnn_ase.errors import DatasetError

    from .conftest import REPO

    cif = (REPO / "examples" / "SrTiO3.cif").read_text()
    frame = pd.DataFrame({"id": ["Sé0", "007"], "y": [1.0, 2.0], "cif": [cif, cif]})
    frame.to_csv(tmp_path / "windows.csv", index=False, encoding="cp1252")
    frame.to_parquet(tmp_path / "table.parquet")
    (tmp_path / "table_as.csv").write_bytes((tmp_path / "table.parquet").read_bytes())
    frame.to_csv(tmp_path / "table.json", index=False)
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"id": i, "y": 1.0, "structure": {}}) + "\n" for i in "ab"))
    for spec, message in [
        ({"path": tmp_path / "windows.csv"}, "not UTF-8 text .* save the file as UTF-8"),
        ({"path": tmp_path / "table_as.csv"}, "this is a Parquet file, not csv text; name it .parquet"),
        ({"path": tmp_path / "table.parquet", "format": "csv"}, "this is a Parquet file"),
        ({"path": tmp_path / "table.json"}, "cannot be read as json .*a CSV table needs format csv"),
    ]:
        with pytest.raises(DatasetError, match=message):
            load_table(DatasetSpec(target="y", **spec))
    assert load_table(DatasetSpec(path=str(tmp_path / "table.parquet"), target="y")).ids == ["Sé0", "007"]
    assert load_table(DatasetSpec(path=str(tmp_path / "rows.jsonl"), target="y")).ids == ["a", "b"]


def test_a_pair_of_two_structure_files_is_not_taken_for_an_id_and_its_structure(tmp_path):
    """Round 14b: predict(list(zip(initial, relaxed))) took each (path, path) tuple as (id, structure): one row per
    pair, the first file's name beside the second file's value, no warning."""
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    for name, crystal in (("a.cif", bulk("Cu", "fcc", a=3.6)), ("b.cif", bulk("Al", "fcc", a=4.05))):
        crystal.write(tmp_path / name)
    a, b = str(tmp_path / "a.cif"), str(tmp_path / "b.cif")
    result = predictor.predict([(a, b), ("copper", a), (a, a)], errors="collect")
    assert np.isnan(result.values[0]) and "an (id, structure) pair whose id is a structure file too" in result.errors[0]
    assert list(result.ids[1:]) == ["copper", a] and result.values[1] == pytest.approx(result.values[2], abs=1e-6)
    # Path objects (zip of two globs) are the same pairs; they were "unsupported input type tuple"
    paths = predictor.predict([(Path(a), Path(b)), (Path("copper"), Path(a))], errors="collect")
    assert "an (id, structure) pair whose id is a structure file too" in paths.errors[0]
    assert list(paths.ids) == [a, "copper"] and paths.values[1] == pytest.approx(result.values[1], abs=1e-6)


@pytest.mark.parametrize("policy", ["symmetric", "original"])
def test_a_valid_but_very_skewed_cell_is_reduced_before_the_neighbour_search(policy):
    """Round 14b: NaCl with c + 1e4 a + 1e4 b (a valid cell of the same crystal) asked pymatgen's neighbour search
    for 343 GB: a bare MemoryError that errors='collect' did not catch, and the CLI was killed. Such a cell is now
    replaced by its Minkowski-reduced cell: same positions, same graph (under the original policy, the same
    distances: which of several equidistant atoms fill the last slots follows the pair order, as in any cell)."""
    from cgcnn_ase.graph.config import GraphConfig
    from cgcnn_ase.graph.neighbours import build_graph
    from cgcnn_ase.io.records import from_ase

    crystal = bulk("NaCl", "rocksalt", a=5.64) * (1, 1, 2)
    reference = build_graph(from_ase(crystal), GraphConfig(neighbor_policy=policy), on_sparse="ignore")
    for k in (1e2, 1e4, 1e6):
        skewed = crystal.copy()
        cell = crystal.cell.array.copy()
        cell[2] += k * (cell[0] + cell[1])
        skewed.set_cell(cell, scale_atoms=False)
        record = from_ase(skewed)
        assert np.prod(np.linalg.norm(record.cell, axis=1)) < 2 * record.volume  # the reduced cell
        assert record.volume == pytest.approx(crystal.get_volume(), rel=1e-9)
        np.testing.assert_allclose(record.positions % 1, record.positions % 1)  # finite
        graph = build_graph(record, GraphConfig(neighbor_policy=policy), on_sparse="ignore")
        for atom in range(len(crystal)):
            mine, theirs = graph.centers == atom, reference.centers == atom
            np.testing.assert_allclose(np.sort(graph.distances[mine]), np.sort(reference.distances[theirs]), atol=1e-6)
            if policy == "symmetric":  # the original policy breaks ties at the k-th slot in pymatgen's pair order
                assert sorted(graph.neighbors[mine]) == sorted(reference.neighbors[theirs])


def test_a_cell_read_in_bohr_as_angstrom_is_warned_about_and_out_of_the_domain():
    """Round 14b: CloseAtomsWarning fired below 0.5 x the covalent bond length, while no training crystal lies below
    0.64 x (benchmarks/bond_lengths.py), so SrTiO3 and NaCl at 0.529 x their size (Bohr read as Å) were predicted
    without a word (NaCl +5.65 eV/atom, exit 0). The threshold is now 0.6."""
    from ase.io import read

    from cgcnn_ase.errors import CloseAtomsWarning
    from cgcnn_ase.graph.neighbours import CLOSE_ATOMS_FACTOR

    from .conftest import REPO

    assert CLOSE_ATOMS_FACTOR == 0.6
    predictor = CGCNNPredictor.from_pretrained("formation_energy", device="cpu")
    strontium_titanate = read(REPO / "examples" / "SrTiO3.cif")
    crystals = [bulk("NaCl", "rocksalt", a=5.64), bulk("Si", "diamond", a=5.43), strontium_titanate]
    for crystal in crystals:
        with warnings.catch_warnings():
            warnings.simplefilter("error", CloseAtomsWarning)
            assert predictor.predict(crystal).in_domain()[0]  # as it is: no warning, in the domain
        squeezed = crystal.copy()
        squeezed.set_cell(crystal.cell * 0.529, scale_atoms=True)
        with pytest.warns(CloseAtomsWarning, match="warned below 0.6"):
            result = predictor.predict(squeezed)
        assert not result.in_domain()[0]
    for metal in ("Cu", "Al", "Au"):  # bonds longer than covalent: at 0.60-0.62x, not warned, but out of the domain
        squeezed = bulk(metal)
        squeezed.set_cell(squeezed.cell * 0.529177, scale_atoms=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CloseAtomsWarning)
            result = predictor.predict(squeezed)
        assert not result.in_domain()[0] and result.domain_percentile[0] > 99


def test_members_must_be_a_whole_number_and_a_part_of_an_ensemble_says_its_std_is_uncalibrated():
    """Round 14b: members=1.5, True and "2" were accepted; members=2..4 of a calibrated 5-member ensemble gave an
    uncalibrated std under the same name without a word; device="meta" ended in a bare NotImplementedError."""
    from cgcnn_ase.errors import ConfigError, DeviceError

    for bad in (1.5, True, "2"):
        with pytest.raises(ConfigError, match="members must be a whole number"):  # round 29a: an argument error
            CGCNNPredictor.from_pretrained("formation_energy", members=bad, device="cpu")
    with pytest.warns(UserWarning, match="members=3 of 5: the std is these members' spread, uncalibrated"):
        three = CGCNNPredictor.from_pretrained("formation_energy", members=np.int64(3), device="cpu")
    assert three.is_ensemble and not three.has_intervals
    with pytest.raises(DeviceError, match="cannot run the models"):
        CGCNNPredictor.from_pretrained("formation_energy", members=1, device="meta")


def test_round_14b_messages_name_what_is_wrong(tmp_path, monkeypatch):
    """Round 14b: {Fe: 0.5, Fe2+: 0.5} was 'occupancy 1.5'; CIF labels without type symbols (OW1, Oa) were
    'vacancies or dummy species'; lower-case POSCAR species were KeyError 'na'; an open file was iterated line by
    line; a CIF without _cell_angle_gamma was 'cannot reshape array'; a URL lost its double slash in 'no such file';
    -o /proc/x.csv named the lock file; file names piped to 'predict -' got no hint."""
    import io

    from pymatgen.core import Element, Lattice, Species, Structure

    from .conftest import REPO

    monkeypatch.chdir(tmp_path)
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    iron = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    valence = Structure(Lattice.cubic(2.87), [{Element("Fe"): 0.5, Species("Fe", 2): 0.5}, {Species("Fe", 3): 1}],
                        [[0, 0, 0], [0.5, 0.5, 0.5]])  # fmt: skip
    site_labels = "\n".join(["data_labels", *(f"_cell_length_{x} 4.0" for x in "abc"),
                             *(f"_cell_angle_{x} 90" for x in ("alpha", "beta", "gamma")),
                             "loop_", "_atom_site_label", "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z",
                             "Na1 0 0 0", "Oa 0.5 0.5 0.5", "OW1 0.5 0 0", "Cl 0 0.5 0.5", ""])  # fmt: skip
    poscar = (REPO / "examples" / "NaCl.POSCAR").read_text()
    lines = poscar.splitlines()
    lines[5] = lines[5].lower()  # the species line: na cl
    (tmp_path / "lower.vasp").write_text("\n".join(lines) + "\n")
    (tmp_path / "nogamma.cif").write_text("".join(line for line in (REPO / "examples" / "SrTiO3.cif").open()
                                                  if not line.startswith("_cell_angle_gamma")))  # fmt: skip
    result = predictor.predict([valence, site_labels, "lower.vasp", "nogamma.cif", "https://example.org//x.cif"],
                               errors="collect")  # fmt: skip
    assert result.values[0] == pytest.approx(predictor.predict(iron).values[0], abs=1e-6)  # oxidation states dropped
    assert result.errors[1] is None and np.isfinite(result.values[1])  # read as Na, O, O, Cl (as pymatgen reads them)
    assert "unknown element symbol 'na' (element symbols are capitalised: Na)" in result.errors[2]
    assert "no _cell_angle_gamma (a crystal's CIF gives all six cell parameters" in result.errors[3]
    assert "https://example.org//x.cif: a URL; only local files are read" in result.errors[4]
    with open(REPO / "examples" / "SrTiO3.cif") as handle:
        from_handle = predictor.predict(handle)
    assert len(from_handle) == 1 and from_handle.ids[0].endswith("SrTiO3.cif")
    assert predictor.predict(io.StringIO(poscar)).values[0] == pytest.approx(
        predictor.predict(REPO / "examples" / "NaCl.POSCAR").values[0], abs=1e-6)
    if os.path.isdir("/proc"):
        out = _cli("predict", str(REPO / "examples" / "SrTiO3.cif"), "-m", "formation_energy", "-o", "/proc/x.csv")
        assert out.exit_code != 0 and "cannot write /proc/x.csv" in out.output and ".lock" not in out.output
    from click.testing import CliRunner

    from cgcnn_ase.cli import main

    listing = f"{REPO / 'examples' / 'SrTiO3.cif'}\n{REPO / 'examples' / 'NaCl.POSCAR'}\n"
    piped = CliRunner().invoke(main, ["predict", "-", "-m", "formation_energy"], input=listing)
    assert piped.exit_code == 2 and "holds 2 file names" in piped.output and "as arguments" in piped.output


def test_training_on_own_data_names_what_it_left_out_and_why(dataset_csv, trained, tmp_path):
    """Round 14a: rows dropped beyond the first were named nowhere; a split file covering part of the data did not
    warn; a reused split under one's own limit was refused without the reason; model.dropout did nothing for a
    regression without a word; per_atom kept units 'eV'; a CSV's file names resolved against the working directory;
    a model folder's weights.safetensors and run/checkpoint_last.pt got advice that led nowhere."""
    import json
    import shutil

    import pandas as pd

    from cgcnn_ase.data.splits import Split
    from cgcnn_ase.errors import CheckpointError, ConfigError
    from cgcnn_ase.models.registry import load_model
    from cgcnn_ase.train.config_sections import ModelConfig, SplitConfig
    from cgcnn_ase.train.trainer import train_from_config

    from .test_training import tiny_config

    _, folder = trained
    for part in ("weights.safetensors", "run/checkpoint_last.pt"):
        with pytest.raises(CheckpointError, match=f"is a file of the model folder {re.escape(str(folder))}: load the"):
            load_model(folder / part)
    table = pd.read_csv(dataset_csv)
    structures = tmp_path / "structures"
    structures.mkdir()
    (structures / "c00.cif").write_text(table.loc[0, "cif"])
    table.loc[0, "cif"] = "structures/c00.cif"  # a file beside the table, named relative to it
    table.loc[1, "vpa"] = float("nan")
    table.loc[2, "cif"] = "data_broken\n_cell_length_a 3\n"
    table.to_csv(tmp_path / "own.csv", index=False)
    data = {"path": str(tmp_path / "own.csv"), "target": "vpa"}
    with pytest.warns(UserWarning, match="model.dropout=0.2 has no effect"):
        config = tiny_config(tmp_path / "own.csv", tmp_path, data=data, epochs=1, output=str(tmp_path / "run1"),
                             model=ModelConfig(atom_fea_len=8, n_conv=1, h_fea_len=8, dropout=0.2),
                             split=SplitConfig(train=0.6, val=0.2, test=0.2, seed=1))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = train_from_config(config, progress=False)
    dropped = pd.read_csv(first / "dropped.csv", dtype=str)
    assert dict(zip(dropped["id"], dropped["reason"]))["c01"] == "no finite numeric target"
    assert set(dropped["id"]) == {"c01", "c02"}  # c00 was read from structures/c00.cif, beside the table
    split = Split.load(first / "split.json")
    part = Split(train=split.train[:3], val=split.val, test=split.test)
    part.save(tmp_path / "part.json")
    with pytest.warns(UserWarning, match=r"names 7 of the 10 usable crystals: the other \d+ are in no part"):
        train_from_config(config.model_copy(update={"output": str(tmp_path / "run2"),
                                                    "split": SplitConfig(file=str(tmp_path / "part.json"))}),
                          progress=False)  # fmt: skip
    limited = config.model_copy(update={"output": str(tmp_path / "run3"),
                                        "data": config.data.__class__(**{**data, "limit": 5}),
                                        "split": SplitConfig(file=str(first / "split.json"))})  # fmt: skip
    with pytest.raises(ConfigError, match=r"not among the rows this run selects .*leave out \d+ rows by limit"):
        train_from_config(limited, progress=False)
    per_atom = tiny_config(tmp_path / "own.csv", tmp_path, data={**data, "per_atom": True}, units="eV")
    assert per_atom.target_units == "eV/atom" and json.loads(json.dumps(per_atom.units)) == "eV"
    shutil.rmtree(tmp_path / "run1")


def test_targets_that_are_no_numbers_get_the_right_hint(tmp_path):
    """Round 14a: a header row in id_prop.csv, decimal commas and inf were all met with the hint for class labels."""
    import pandas as pd

    from cgcnn_ase.data.datasets import DatasetSpec, load_table

    from .conftest import REPO

    layout = tmp_path / "layout"
    layout.mkdir()
    for name in ("a", "b"):
        (layout / f"{name}.cif").write_text((REPO / "examples" / "SrTiO3.cif").read_text())
    (layout / "id_prop.csv").write_text("id,target\na,1.0\nb,2.0\n")
    cif = (REPO / "examples" / "SrTiO3.cif").read_text()
    pd.DataFrame({"id": ["a", "b", "c"], "y": ["1,5", "2.0", "3.0"], "cif": [cif] * 3}).to_csv(tmp_path / "comma.csv",
                                                                                                 index=False)  # fmt: skip
    pd.DataFrame({"id": ["a", "b", "c"], "y": [1.0, float("inf"), 3.0], "cif": [cif] * 3}).to_csv(tmp_path / "inf.csv",
                                                                                                 index=False)  # fmt: skip
    for spec, hint in [(DatasetSpec(path=str(layout)), "looks like a header: id_prop.csv has no header row"),
                       (DatasetSpec(path=str(tmp_path / "comma.csv"), target="y"), "'1,5' has a decimal comma"),
                       (DatasetSpec(path=str(tmp_path / "inf.csv"), target="y"), "1 of them are infinite")]:  # fmt: skip
        with pytest.warns(UserWarning, match=hint) as caught:
            assert len(load_table(spec)) == 2
        assert not any("for labels, give an expression" in str(w.message) for w in caught)


def test_evaluate_notes_labels_edited_since_training(trained, tmp_path):
    """Round 14a: evaluate on a dataset whose labels were edited after training gave other metrics than the card
    without a word (the data digest was only in the training checkpoint)."""
    import pandas as pd

    from cgcnn_ase.analysis.evaluation import evaluate_model
    from cgcnn_ase.data.splits import Split

    config, folder = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", UnseenElementWarning)
        assert "note" not in evaluate_model(folder, split="test", workers=1)
    table = pd.read_csv(config.data.path)
    test_id = Split.load(folder / "split.json").test[0]
    table.loc[table["material_id"] == test_id, "vpa"] += 1.0
    table.to_csv(tmp_path / "edited.csv", index=False)
    with pytest.warns(UserWarning, match="labels of the test split differ from those the model was trained"):
        report = evaluate_model(folder, tmp_path / "edited.csv", split="test", workers=1)
    assert "not the model card's" in report["note"]
    assert "note" not in evaluate_model(folder, tmp_path / "edited.csv", split="train", workers=1)
    with pytest.warns(UserWarning, match="labels of the test split differ"):  # round 15: --split all checks each part
        evaluate_model(folder, tmp_path / "edited.csv", split="all", workers=1)


# -- round 15: ASE, pymatgen and matminer users -------------------------------------------------------------------


def test_a_disordered_cif_read_by_ase_is_refused(tmp_path):
    """Round 15: a CIF with Fe 0.6 / Ni 0.4 on one site, read with ase.io.read, was predicted as ordered FeO (ASE
    keeps one species per site and the occupancies in atoms.info['occupancy']); the same file by path was refused."""
    from ase.io import read

    from cgcnn_ase import CGCNNCalculator
    from cgcnn_ase.errors import InvalidStructureError

    from .conftest import REPO

    cell = "".join(f"_cell_length_{x} 4.3\n" for x in "abc") + "".join(f"_cell_angle_{x} 90\n" for x in ("alpha", "beta", "gamma"))
    loop = "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n_atom_site_occupancy\n"
    (tmp_path / "mixed.cif").write_text(f"data_m\n{cell}{loop}Fe1 Fe 0 0 0 0.6\nNi1 Ni 0 0 0 0.4\nO1 O .5 .5 .5 1\n")
    (tmp_path / "partial.cif").write_text(f"data_p\n{cell}{loop}Fe1 Fe 0 0 0 0.8\nO1 O .5 .5 .5 1\n")
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    for name, what in (("mixed.cif", "mixed species Fe 0.6, Ni 0.4"), ("partial.cif", "partial occupancy Fe 0.8")):
        atoms = read(tmp_path / name)
        with pytest.raises(InvalidStructureError, match=f"site 0 is disordered \\({what}"):
            predictor.predict(atoms)
        atoms.calc = CGCNNCalculator(predictor)
        with pytest.raises(InvalidStructureError, match="disordered"):
            atoms.get_potential_energy()
    ordered = read(REPO / "examples" / "SrTiO3.cif")  # occupancies of 1 everywhere: predicted
    assert ordered.info["occupancy"] and np.isfinite(predictor.predict(ordered).values[0])


def test_store_in_info_fills_every_frame_also_when_ase_serves_the_cache():
    """Round 15: with store_in_info=True a frame identical to the one just calculated got nothing stored (ASE's
    check_state served the cached results), so the extxyz written afterwards lacked its values."""
    from cgcnn_ase import CGCNNCalculator

    calc = CGCNNCalculator(CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu"), store_in_info=True)
    frames = [bulk("NaCl", "rocksalt", a=5.64), bulk("NaCl", "rocksalt", a=5.64), bulk("MgO", "rocksalt", a=4.21)]
    for frame in frames:
        frame.calc = calc
        frame.get_potential_energy()
    values = [frame.info.get("cgcnn_formation_energy") for frame in frames]
    assert values[0] == values[1] and values[2] != values[0] and None not in values
    assert all("cgcnn_energies" in frame.arrays for frame in frames)


def test_ase_database_rows_have_the_same_ids_in_the_api_and_the_cli(tmp_path):
    """Round 15: the API labelled database rows by position (path@0) while the CLI and docs/scale.md use the row's
    own id (path@id=2); after a deletion they disagreed by more than one."""
    import ase.db

    path = tmp_path / "rows.db"
    with ase.db.connect(path) as db:
        for formula, a in (("NaCl", 5.64), ("MgO", 4.21), ("KCl", 6.29)):
            db.write(bulk(formula, "rocksalt", a=a))
    del ase.db.connect(path)[1]
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    assert list(predictor.predict(path).ids) == [f"{path}@id=2", f"{path}@id=3"]
    cli = _cli("predict", str(path), "-m", "formation_energy", "--workers", "1", "-o", "-")
    assert [line.split(",")[0] for line in cli.stdout.splitlines()[1:]] == [f"{path}@id=2", f"{path}@id=3"]


def test_round_15_check_of_the_round_14_fixes(tmp_path, trained):
    """A second outsider tried to break the round-14 fixes: unquoted decimal commas in id_prop.csv trained on the
    integer parts, silently; a semicolon-separated id_prop.csv named a missing CIF; a CIF of a mixed-valence Fe site
    (two Fe rows of 0.5) was refused though pymatgen reads it as ordered; a gzipped cp1252 CSV was 'a gzip file';
    UTF-16 got the cp1252 hint; 'predict' on such tables gave a raw UnicodeDecodeError; model.json of a model
    folder and a work_dir's checkpoint_last.pt led nowhere; 'featurize' did not resolve file names beside the table;
    units eV/cell with per_atom became eV/cell/atom."""
    import gzip
    import shutil

    import pandas as pd
    from pymatgen.core import Lattice, Structure

    from cgcnn_ase.data.datasets import DatasetSpec, load_table
    from cgcnn_ase.errors import CheckpointError, DatasetError
    from cgcnn_ase.models.registry import load_model
    from cgcnn_ase.train.config import _per_atom_units

    from .conftest import REPO

    layout = tmp_path / "layout"
    layout.mkdir()
    for name in ("mp-1", "mp-2"):
        shutil.copy(REPO / "examples" / "SrTiO3.cif", layout / f"{name}.cif")
    (layout / "id_prop.csv").write_text("mp-1,0,0388\nmp-2,-1,7923\n")
    with pytest.raises(DatasetError, match="decimal commas\\? .*write 'mp-1,0.0388'"):
        load_table(DatasetSpec(path=str(layout)))
    (layout / "id_prop.csv").write_text("mp-1;0,0388\nmp-2;-1,7923\n")
    with pytest.raises(DatasetError, match="looks semicolon-separated"):
        load_table(DatasetSpec(path=str(layout)))
    mixed = Structure(Lattice.cubic(2.87), [{"Fe": 0.5, "Fe2+": 0.5}, "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    mixed.to(filename=str(tmp_path / "mixed.cif"))
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    assert predictor.predict(tmp_path / "mixed.cif").values[0] == pytest.approx(predictor.predict(mixed).values[0],
                                                                                 abs=1e-6)  # fmt: skip
    cif = (REPO / "examples" / "SrTiO3.cif").read_text()
    frame = pd.DataFrame({"id": ["Sé", "b"], "y": [1.0, 2.0], "cif": [cif, cif]})
    (tmp_path / "w.csv.gz").write_bytes(gzip.compress(frame.to_csv(index=False).encode("cp1252")))
    frame.to_csv(tmp_path / "u16.csv", index=False, encoding="utf-16")
    frame.to_csv(tmp_path / "w.csv", index=False, encoding="cp1252")
    with pytest.raises(DatasetError, match="not UTF-8 text"):
        load_table(DatasetSpec(path=str(tmp_path / "w.csv.gz"), target="y"))
    with pytest.raises(DatasetError, match="UTF-16 text; .*iconv -f utf-16"):
        load_table(DatasetSpec(path=str(tmp_path / "u16.csv"), target="y"))
    run = _cli("predict", str(tmp_path / "w.csv"), "-m", "formation_energy")
    assert run.exit_code == 2 and "not UTF-8 text" in run.stderr and "UnicodeDecodeError" not in run.stderr
    _, folder = trained
    with pytest.raises(CheckpointError, match="is a file of the model folder"):
        load_model(folder / "model.json")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(folder / "run" / "checkpoint_last.pt", work)
    with pytest.raises(CheckpointError, match="training state of a cgcnn-ase run"):
        load_model(work / "checkpoint_last.pt")
    (tmp_path / "cifs").mkdir()
    shutil.copy(REPO / "examples" / "SrTiO3.cif", tmp_path / "cifs" / "a.cif")
    pd.DataFrame({"id": ["a"], "file": ["cifs/a.cif"]}).to_csv(tmp_path / "files.csv", index=False)
    featurized = _cli("featurize", str(tmp_path / "files.csv"), "--column", "file", "--id-column", "id",
                      "-m", "formation_energy", "-o", str(tmp_path / "out.csv"))  # fmt: skip
    assert featurized.exit_code == 0, featurized.output
    assert pd.read_csv(tmp_path / "out.csv")["error"].isna().all()
    assert [_per_atom_units(u) for u in ("eV", "eV/cell", "eV per cell", "eV/atom", "eV per atom")] == [
        "eV/atom", "eV/atom", "eV/atom", "eV/atom", "eV per atom"]

"""Round 21 of outside testing (a screening user at scale, an ASE user with the calculator and site energies)
and the nits earlier rounds left open. Each test quotes or paraphrases what was reported and asserts the fixed
behaviour."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from cgcnn_ase.data.datasets import DatasetSpec, load_table, parse_structures
from cgcnn_ase.errors import DatasetError
from cgcnn_ase.io.reader import iter_records, read_records

from .conftest import REPO
from .test_user_reports import _cli


def _salt(a: float = 5.64) -> Structure:
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _entries(n: int = 3) -> list[dict]:
    return [{"material_id": f"mp-{k}", "structure": _salt(5.5 + 0.1 * k).as_dict(), "e": -1.0 - k} for k in range(n)]


def _zip(path, members: dict[str, str | bytes]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_zipped_structure_files_are_predicted_as_training_reads_them(tmp_path):
    """Left open in round 19: 'predict does not read .json.zip (training does)'; a zipped CIF neither."""
    text = json.dumps(_entries())
    plain = tmp_path / "entries.json"
    plain.write_text(text)
    packed = _zip(tmp_path / "entries.json.zip", {"entries.json": text, "__MACOSX/._entries.json": b"\x00\x05"})
    cif = (REPO / "examples" / "SrTiO3.cif").read_text()
    zipped_cif = _zip(tmp_path / "SrTiO3.cif.zip", {"SrTiO3.cif": cif})
    outputs = []
    for path in (plain, packed):
        run = _cli("predict", str(path), "-m", "formation_energy", "--id-column", "material_id")
        assert run.exit_code == 0, run.output
        outputs.append(run.stdout)
    assert outputs[0] == outputs[1] and "\nmp-2," in outputs[0]
    [record] = read_records(str(zipped_cif))
    [reference] = read_records(str(REPO / "examples" / "SrTiO3.cif"))
    np.testing.assert_array_equal(record.positions, reference.positions)
    assert len(read_records(str(packed))) == 3


def test_zips_that_cannot_be_read_say_why(tmp_path):
    """A zip of a frame file, of two files, or no zip at all named .zip: each its own message, never 'unknown
    format' or ASE's traceback."""
    frames = _zip(tmp_path / "Si.extxyz.zip", {"Si.extxyz": (REPO / "examples" / "Si.extxyz").read_text()})
    two = _zip(tmp_path / "two.zip", {"a.cif": "x", "b.cif": "y"})
    broken = tmp_path / "broken.json.zip"
    broken.write_text("no archive")
    items = dict(iter_records([str(frames), str(two), str(broken)]))
    assert "a zip archive of 'Si.extxyz', which is neither CIF nor pymatgen structure JSON" in str(items[str(frames)])
    assert "unzip it" in str(items[str(frames)])
    assert "a zip archive of 2 files" in str(items[str(two)])
    assert "not a readable zip archive" in str(items[str(broken)])


def test_a_macos_zip_of_a_csv_table_is_read_for_prediction_and_training(tmp_path):
    """Left open in round 19: 'a CSV zip with __MACOSX is refused by pandas' (Finder's Compress adds it)."""
    import pandas as pd

    cif = (REPO / "examples" / "SrTiO3.cif").read_text()
    table = pd.DataFrame({"id": ["a", "b"], "cif": [cif, cif], "y": [1.0, 2.0]}).to_csv(index=False)
    packed = _zip(tmp_path / "t.csv.zip", {"t.csv": table, "__MACOSX/._t.csv": b"\x00\x05\x16\x07"})
    run = _cli("predict", str(packed), "-m", "formation_energy", "--id-column", "id")
    assert run.exit_code == 0, run.output
    assert [line.split(",")[0] for line in run.stdout.splitlines()[1:]] == ["a", "b"]
    assert load_table(DatasetSpec(path=str(packed), target="y", id_column="id")).ids == ["a", "b"]
    two = _zip(tmp_path / "two.csv.zip", {"t.csv": table, "u.csv": table})
    with pytest.raises(DatasetError, match="a zip archive of 2 files"):
        load_table(DatasetSpec(path=str(two), target="y", id_column="id"))
    run = _cli("predict", str(two), "-m", "formation_energy", "--id-column", "id")
    assert run.exit_code != 0 and "a zip archive of 2 files" in run.output and "Traceback" not in run.output


def test_one_json_entry_without_a_structure_is_one_dropped_row_not_a_refused_dataset(tmp_path):
    """Left open in round 20: 'one JSON entry without "structure" refuses the whole dataset file'."""
    entries = _entries(4)
    del entries[2]["structure"]
    path = tmp_path / "entries.json"
    path.write_text(json.dumps(entries))
    table = load_table(DatasetSpec(path=str(path), target="e", id_column="material_id"))
    assert table.ids == ["mp-0", "mp-1", "mp-2", "mp-3"]
    parsed = parse_structures(table, workers=1)
    assert [isinstance(p, str) for p in parsed] == [False, False, True, False]
    assert "has no structure 'structure'" in parsed[2]
    for entry in entries:
        entry.pop("structure", None)
    path.write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match="have no structure column 'structure'"):
        load_table(DatasetSpec(path=str(path), target="e", id_column="material_id"))


@pytest.mark.parametrize("missing", [None, ""])
def test_rows_without_an_id_are_refused_not_named_nan(tmp_path, missing):
    """Left open in round 20: 'entries without the id column get the id nan' (two such rows were then refused as
    duplicate ids 'nan', one was trained on as 'nan')."""
    entries = _entries(3)
    if missing is None:
        del entries[1]["material_id"]
    else:
        entries[1]["material_id"] = missing
    path = tmp_path / "entries.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=r"1 of 3 rows \(first: row 1\) have no id in column 'material_id'"):
        load_table(DatasetSpec(path=str(path), target="e", id_column="material_id"))


def test_a_foreign_sqlite_file_in_wal_mode_gets_no_files_beside_it(tmp_path):
    """Left open in round 20: 'a foreign SQLite file in WAL mode gets -wal/-shm files beside it when checked'."""
    import sqlite3

    path = tmp_path / "lab.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE samples (x)")
    db.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    [(_, error)] = list(iter_records([str(path)]))
    assert "an SQLite file without ASE's tables: samples" in str(error)
    assert sorted(p.name for p in tmp_path.iterdir()) == before == ["lab.db"]


def test_a_json_list_is_read_entry_by_entry_so_a_big_one_streams_and_resumes(tmp_path, monkeypatch):
    """Left open in round 20: 'Ctrl-C on one big JSON writes no rows': a Materials Project download (one JSON list)
    was one item, read whole by one worker, so it was one chunk, written at its end; with --id-column every entry
    was parsed before the first prediction. Entries are now items, parsed as they are reached; on resume the
    finished ones are not parsed at all."""
    from cgcnn_ase.io import formats
    from cgcnn_ase.io.inputs import FinishedIds, iter_inputs

    path = tmp_path / "download.json"
    path.write_text(json.dumps(_entries(5)))
    parsed = []
    original = formats.structure_dict_record
    monkeypatch.setattr(formats, "structure_dict_record", lambda data, label: parsed.append(label) or original(data, label))
    for id_column, ids in ((None, [f"{path}@{k}" for k in range(5)]), ("material_id", [f"mp-{k}" for k in range(5)])):
        parsed.clear()
        stream = iter_inputs([str(path)], id_column=id_column, defer_files=True)
        first_id, first = next(stream)
        assert first_id == ids[0] and first.label == ids[0] and parsed == ids[:1]
        assert [i for i, _ in stream] == ids[1:] and parsed == ids
    parsed.clear()
    done = FinishedIds.from_ids([["mp-0", "mp-1", "mp-3"]])
    assert [i for i, _ in iter_inputs([str(path)], id_column="material_id", finished=done)] == ["mp-2", "mp-4"]
    assert parsed == ["mp-2", "mp-4"]


def test_an_interrupted_prediction_of_one_json_list_keeps_its_chunks_and_resumes(tmp_path):
    """The same through the command: rows are written chunk by chunk, and --resume completes them without
    repeats, with the numbers of an uninterrupted run."""
    path = tmp_path / "download.json"
    path.write_text(json.dumps(_entries(6)))
    whole = _cli("predict", str(path), "-m", "formation_energy", "--id-column", "material_id", "--chunk-size", "2")
    assert whole.exit_code == 0, whole.output
    out = tmp_path / "out.csv"
    lines = whole.stdout.splitlines()
    out.write_text("\n".join(lines[:3]) + "\n")  # the header and the first chunk, as a run killed after it leaves
    resumed = _cli("predict", str(path), "-m", "formation_energy", "--id-column", "material_id", "--chunk-size", "2",
                   "-o", str(out), "--resume")  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    assert "2 structures already in" in resumed.output
    assert out.read_text().splitlines() == lines


def test_supercells_of_thousands_of_atoms_keep_the_primitive_cells_energy(tmp_path):
    """21b: 'in large supercells the total energy drifts, and energies no longer sum to energy': 4096 atoms of
    NaCl gave E/N 2.1e-6 eV/atom from the primitive cell's and sum(energies) - E = -8.4e-3 eV (mean pooling
    summed in float32)."""
    from ase.build import bulk

    from cgcnn_ase import CGCNNCalculator

    calc = CGCNNCalculator("formation_energy")
    primitive = bulk("NaCl", "rocksalt", a=5.64)
    primitive.calc = calc
    per_atom = primitive.get_potential_energy() / 2
    big = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(8)
    big.calc = calc
    energy = big.get_potential_energy()
    assert len(big) == 4096
    assert abs(energy / len(big) - per_atom) < 2e-7
    assert abs(big.get_potential_energies().sum() - energy) < 1e-3


def test_ase_mixing_calculators_combine_two_cgcnn_calculators(recwarn):
    """21b: 'AverageCalculator([CGCNNCalculator("formation_energy"), CGCNNCalculator("perovskite_formation_energy")])
    ... TypeError: unsupported operand type(s) for *: float and NoneType' (ASE's mixers add up every property
    both list; unseen_elements is text). It is still a result, and get_property gives it."""
    from ase.build import bulk
    from ase.calculators.mixing import AverageCalculator, SumCalculator

    from cgcnn_ase import CGCNNCalculator

    salt = bulk("NaCl", "rocksalt", a=5.64)
    first, second = CGCNNCalculator("formation_energy"), CGCNNCalculator("perovskite_formation_energy")
    energies = []
    for calc in (first, second):
        salt.calc = calc
        energies.append(salt.get_potential_energy())
    assert "unseen_elements" not in first.implemented_properties
    assert salt.calc.get_property("unseen_elements", salt) == "Cl"  # the perovskite model never saw Cl
    assert first.results["unseen_elements"] is None
    salt.calc = AverageCalculator([first, second])
    assert salt.get_potential_energy() == pytest.approx(sum(energies) / 2, abs=1e-9)
    salt.calc = SumCalculator([CGCNNCalculator("formation_energy"), CGCNNCalculator("formation_energy")])
    assert salt.get_potential_energy() == pytest.approx(2 * energies[0], abs=1e-9)
    fresh = CGCNNCalculator("formation_energy")
    assert fresh.get_property("unseen_elements", bulk("Cu")) is None  # calculates when asked first


def test_the_calculator_takes_members_and_todict_rebuilds_the_calculator_that_ran():
    """21b: 'calc.todict() drops members=, so rebuilding the calculator gives a different number' (ase.db stores
    todict() as calculator_parameters), and 'CGCNNCalculator has no members option'."""
    from ase.build import bulk

    from cgcnn_ase import CGCNNCalculator, CGCNNPredictor

    salt = bulk("NaCl", "rocksalt", a=5.64)
    values = []
    for calc in (CGCNNCalculator(CGCNNPredictor.from_pretrained("formation_energy", members=1)),
                 CGCNNCalculator("formation_energy", members=1)):  # fmt: skip
        salt.calc = calc
        values.append(salt.get_potential_energy())
        assert calc.todict()["members"] == 1 and "formation_energy_std" not in calc.results
        salt.calc = CGCNNCalculator(**calc.todict())
        values.append(salt.get_potential_energy())
    assert len(set(values)) == 1
    whole = CGCNNCalculator("formation_energy")
    salt.calc = whole
    assert "members" not in whole.todict() and salt.get_potential_energy() != values[0]
    mixed = CGCNNCalculator(["formation_energy", "band_gap"], members=[1, None])
    assert mixed.todict()["members"] == [1, None] and "band_gap_std" in mixed.result_names
    with pytest.raises(ValueError, match="one of them per model"):
        CGCNNCalculator(["formation_energy", "band_gap"], members=[1])
    with pytest.raises(TypeError, match="fixed when a CGCNNCalculator is built"):
        whole.set(members=1)


def test_an_unseen_element_warns_once_per_calculator_not_once_per_call():
    """21b: 'UnseenElementWarning repeats on every call with identical text' (an element-substitution loop floods
    stderr)."""
    import warnings

    from ase.build import bulk

    from cgcnn_ase import CGCNNCalculator
    from cgcnn_ase.errors import UnseenElementWarning

    calc = CGCNNCalculator("formation_energy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(3):
            crystal = bulk("RaO", "rocksalt", a=5.5 + 0.01 * k)
            crystal.calc = calc
            crystal.get_potential_energy()
        crystal = bulk("RaS", "rocksalt", a=6.0)  # another crystal: its own message
        crystal.calc = calc
        crystal.get_potential_energy()
    unseen = [str(w.message) for w in caught if issubclass(w.category, UnseenElementWarning)]
    assert len(unseen) == 2 and "Atoms(ORa)" in unseen[0] and "Atoms(RaS)" in unseen[1], unseen


def _same_record_or_error(data, label="x"):
    """The fast reading of a structure dict gives pymatgen's record bit for bit, or pymatgen's own error."""
    from cgcnn_ase.errors import InvalidStructureError
    from cgcnn_ase.io import formats

    outcomes = []
    for read in (formats.structure_dict_record, formats._pymatgen_dict_record):
        try:
            record = read(data, label)
        except InvalidStructureError as exc:
            outcomes.append(("error", str(exc)))
            continue
        outcomes.append(("record", record.numbers.dtype, record.numbers.tobytes(), record.frac_coords.tobytes(),
                         record.cell.tobytes()))  # fmt: skip
    assert outcomes[0] == outcomes[1]
    return outcomes[0][0]


def test_structure_dicts_are_read_fast_and_exactly_as_pymatgen_reads_them():
    """Reading a Materials Project JSON list entry by entry made pymatgen's Structure.from_dict the bottleneck
    (about 1000 entries/s): plain ordered dicts are now read directly. Every kind of dict gives what pymatgen's
    reading gives."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.core.periodic_table import DummySpecies

    salt = _salt()
    kinds = {
        "plain": salt.as_dict(),
        "wrapped outside the cell": Structure(Lattice.cubic(4.0), ["Si"], [[1.25, -0.5, 0.3]]).as_dict(),
        "oxidation states": Structure(Lattice.cubic(5.64), ["Na+", "Cl-"], [[0, 0, 0], [0.5] * 3]).as_dict(),
        "disordered": Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]]).as_dict(),
        "partial": Structure(Lattice.cubic(4.0), [{"Fe": 0.7}], [[0, 0, 0]]).as_dict(),
        "dummy": Structure(Lattice.cubic(4.0), [DummySpecies("X"), "Fe"], [[0, 0, 0], [0.5] * 3]).as_dict(),
        "not periodic along c": Structure(Lattice(np.eye(3) * 4, pbc=(True, True, False)), ["Cu"], [[0, 0, 0]]).as_dict(),
        "skewed": Structure(Lattice.from_parameters(3, 4, 5, 70, 80, 100), ["O", "Mg"], [[0.1, 0.2, 0.3], [0.6] * 3]).as_dict(),
    }
    integers = salt.as_dict()
    integers["sites"][0]["abc"] = [0, 0, 0]  # hand-written JSON
    kinds["integer coordinates"] = integers
    cartesian = salt.as_dict()
    for site in cartesian["sites"]:
        del site["abc"]
    kinds["Cartesian only"] = cartesian
    for name, change in {"pbc one value": ("pbc", True), "pbc null": ("pbc", None), "pbc text": ("pbc", ["false"] * 3),
                         "pbc of two": ("pbc", [True, True]), "pbc as numbers": ("pbc", [1, 1, 0])}.items():  # fmt: skip
        kinds[name] = salt.as_dict()
        kinds[name]["lattice"][change[0]] = change[1]  # round 22: one value crashed the whole run (TypeError)
    kinds["oxidation state as text"] = salt.as_dict()
    kinds["oxidation state as text"]["sites"][0]["species"][0]["oxidation_state"] = "+1"
    kinds["huge coordinate"] = salt.as_dict()
    kinds["huge coordinate"]["sites"][0]["abc"] = [10**400, 0, 0]
    outcomes = {name: _same_record_or_error(data) for name, data in kinds.items()}
    assert {outcomes[name] for name in kinds if name.startswith(("pbc", "oxidation state as", "huge"))} == {"error"}
    assert outcomes["plain"] == outcomes["oxidation states"] == outcomes["skewed"] == "record"
    assert outcomes["disordered"] == outcomes["partial"] == outcomes["dummy"] == "error"


def test_structure_dicts_of_materials_project_crystals_read_fast_as_pymatgen_reads_them():
    """The same on 300 Materials Project crystals of the shared formation-energy data."""
    import pandas as pd

    from .conftest import SHARED, require_shared

    table = require_shared(SHARED / "data" / "mp_cgcnn46k_kdmsit" / "data.csv.gz")
    frame = pd.read_csv(table, nrows=300)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_str(cif, fmt="cif") for cif in frame["cif"]]
        assert {_same_record_or_error(s.as_dict()) for s in structures} == {"record"}


def test_calibrating_without_an_error_model_drops_the_old_one(tmp_path):
    """21c: 'calibrate falls back but leaves a stale uncertainty column': with a validation split cut to 60 crystals
    it warned and normalised by the std, but domain.safetensors kept the earlier fit's error model, so predictions
    still carried log10_bulk_modulus_uncertainty from it."""
    import shutil
    import warnings

    from ase.build import bulk

    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.analysis.intervals import calibrate_intervals
    from cgcnn_ase.models.folder import read_model_json
    from cgcnn_ase.models.registry import model_folder

    from .conftest import SHARED, require_shared

    require_shared(SHARED / "data" / "mp_elastic3k_kdmsit")
    folder = tmp_path / "bm_small"
    shutil.copytree(model_folder("bulk_modulus"), folder)
    split = json.loads((folder / "split.json").read_text())
    split["val"], split["test"] = split["val"][:60], split["test"][:60]  # the test part only to keep this test short
    split["sizes"] = {name: len(split[name]) for name in ("train", "val", "test")}
    (folder / "split.json").write_text(json.dumps(split))
    salt = bulk("NaCl", "rocksalt", a=5.64)
    assert CGCNNPredictor.load(folder).predict([salt]).uncertainty is not None  # the shipped fit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conformal = calibrate_intervals(folder, workers=1)
    assert any("no per-crystal uncertainty" in str(w.message) for w in caught)
    assert conformal["normaliser"] == "std_raw"
    # 21c: 'calibrate --confidence 0.999 silently drops the 0.99 level' (60 crystals: the highest levels too)
    from cgcnn_ase.analysis.metrics import INTERVAL_LEVELS

    missing = sorted(set(INTERVAL_LEVELS) - set(conformal["levels"]))
    assert missing and any(f"too few for the {missing[0]:g}" in str(w.message) for w in caught), conformal["levels"]
    result = CGCNNPredictor.load(folder).predict([salt], coverage=0.9)
    assert result.uncertainty is None and result.lower is not None
    document = read_model_json(folder)
    assert "uncertainty" not in document["ensemble"]["calibration"] and "error_model" not in (document.get("domain") or {})


def test_repeated_ids_are_warned_across_chunks_and_a_resume_adds_no_third_copy(tmp_path):
    """21a: 'repeated ids are not caught on a fresh run (the check looks within one 1024-row chunk), and an interrupt
    plus resume adds another copy': mp-1001016, repeated 2500 rows apart, came out three times after a resume,
    with a warning saying its row was made by its first occurrence (both were in the output)."""
    import pandas as pd

    from .test_user_reports import _table_of

    table = _table_of(tmp_path, n=8, row6=("c1", None))
    frame = pd.read_csv(table)
    frame.loc[6, "cif"] = frame.loc[1, "cif"]
    frame.to_csv(table, index=False)
    whole = tmp_path / "whole.csv"
    fresh = _cli("predict", str(table), "--id-column", "key", "-m", "formation_energy", "-o", str(whole),
                 "--chunk-size", "3")  # fmt: skip
    assert fresh.exit_code == 0 and "ids repeat in the output (c1)" in fresh.output  # rows 1 and 6: other chunks
    expected = pd.read_csv(whole)
    assert list(expected["id"]) == ["c0", "c1", "c2", "c3", "c4", "c5", "c1", "c7"]
    expected.iloc[:7].to_csv(whole, index=False)  # stopped after both c1 rows were written
    resumed = _cli("predict", str(table), "--id-column", "key", "-m", "formation_energy", "-o", str(whole),
                   "--chunk-size", "3", "--resume")  # fmt: skip
    assert resumed.exit_code == 0 and "occurs more often" not in resumed.output, resumed.output
    # the last row was predicted in a batch of one this time: float32 rounding of another batch, no more
    pd.testing.assert_frame_equal(pd.read_csv(whole), expected, check_exact=False, rtol=1e-5, atol=1e-6)


def test_seen_ids_find_repeats_however_far_apart():
    from cgcnn_ase.io.inputs import SeenIds

    seen = SeenIds()
    found = [seen.repeated([f"id{k}" for k in range(start, start + 100)]) for start in range(0, 10_000, 100)]
    assert found == [[]] * 100
    assert seen.repeated(["new", "id0", "new", "id9999", "id10000"]) == ["id0", "new", "id9999"]
    assert len(seen._runs) <= 1 + int(np.log2(10_000 / 100)) + 1  # merged as they grow


def test_a_rerun_without_resume_does_not_replace_an_interrupted_runs_rows(tmp_path):
    """21a: 'a rerun without --resume silently replaces the existing output': after Ctrl-C the command says to
    run it again with --resume; forgetting the flag wiped the rows written so far. A finished run's output is
    still replaced, as any file is."""
    import pandas as pd

    from .test_user_reports import _table_of

    table = _table_of(tmp_path, n=6, row3=("c0", None))
    frame = pd.read_csv(table)
    frame.loc[3, "cif"] = frame.loc[0, "cif"]  # c0 twice: rows, not ids, are counted in the refusal (round 22)
    frame.to_csv(table, index=False)
    out = tmp_path / "out.csv"
    command = ("predict", str(table), "--id-column", "key", "-m", "formation_energy", "-o", str(out), "--chunk-size", "2")
    assert _cli(*command).exit_code == 0
    record = tmp_path / ".out.csv.run.json"
    assert json.loads(record.read_text())["finished"] is True
    whole = pd.read_csv(out)
    whole.iloc[:4].to_csv(out, index=False)  # what Ctrl-C after two chunks leaves
    record.write_text(json.dumps({**json.loads(record.read_text()), "finished": False}))
    refused = _cli(*command)
    assert refused.exit_code != 0 and "holds 4 rows of an interrupted run" in refused.output and "--resume" in refused.output
    assert len(pd.read_csv(out)) == 4
    resumed = _cli(*command, "--resume")
    assert resumed.exit_code == 0 and json.loads(record.read_text())["finished"] is True
    pd.testing.assert_frame_equal(pd.read_csv(out), whole)
    assert _cli(*command).exit_code == 0 and len(pd.read_csv(out)) == 6  # finished: replaced


def test_id_column_names_database_rows_and_frames_by_their_own_key(tmp_path):
    """21a: '--id-column is silently ignored for .db and extxyz inputs': rows written with name=... and frames with
    info['name'] came out as small.db@id=1 and small.extxyz@0."""
    import warnings

    import ase.db
    from ase.build import bulk
    from ase.io import write

    from cgcnn_ase.io.inputs import iter_inputs

    crystals = [bulk("NaCl", "rocksalt", a=5.6 + 0.05 * k) for k in range(3)]
    with ase.db.connect(tmp_path / "small.db") as db:
        for k, atoms in enumerate(crystals):
            db.write(atoms, name=f"cand-{k}") if k != 1 else db.write(atoms)
    for k, atoms in enumerate(crystals):
        atoms.info["name"] = f"frame-{k}"
    write(tmp_path / "small.extxyz", crystals)
    db_path, frames_path = str(tmp_path / "small.db"), str(tmp_path / "small.extxyz")
    assert [i for i, _ in iter_inputs([db_path], id_column="name")] == ["cand-0", f"{db_path}@id=2", "cand-2"]
    assert [i for i, _ in iter_inputs([frames_path], id_column="name")] == ["frame-0", "frame-1", "frame-2"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [i for i, _ in iter_inputs([db_path, frames_path], id_column="label")]
    assert ids == [f"{db_path}@id={k}" for k in (1, 2, 3)] + [f"{frames_path}@{k}" for k in range(3)]
    messages = [str(w.message) for w in caught]
    assert any("no row has the key 'label'" in m for m in messages) and any("no frame has the info key 'label'" in m
                                                                           for m in messages)  # fmt: skip
    run = _cli("predict", frames_path, "-m", "formation_energy", "--id-column", "name")
    assert run.exit_code == 0 and [line.split(",")[0] for line in run.stdout.splitlines()[1:]] == ["frame-0", "frame-1",
                                                                                                     "frame-2"]  # fmt: skip


def test_an_interrupt_before_any_row_does_not_point_to_resume(tmp_path):
    """22: 'a hint after Ctrl-C leads to old predictions being kept for new structures': stopped while loading the
    models, a rerun over a finished output said 'the rows written so far are kept: run the same command with
    --resume', and the resume kept the earlier run's rows for re-relaxed inputs."""
    from cgcnn_ase.cli import _resume_hint

    from .test_user_reports import _table_of

    out = tmp_path / "out.csv"
    assert "no row was written" in _resume_hint("predict", {"output": str(out)})
    table = _table_of(tmp_path, n=3)
    assert _cli("predict", str(table), "--id-column", "key", "-m", "formation_energy", "-o", str(out)).exit_code == 0
    hint = _resume_hint("predict", {"output": str(out)})
    assert "was not changed" in hint and "without --resume" in hint and "run the same command with --resume" not in hint
    record = tmp_path / ".out.csv.run.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "finished": False}))  # as a run that began writing
    assert "run the same command with --resume to continue" in _resume_hint("predict", {"output": str(out)})
    assert _resume_hint("predict", {"output": str(tmp_path / "out.json")}) == ""


def test_todict_of_a_calculator_built_from_a_loaded_folder_names_the_folder(tmp_path):
    """22: 'CGCNNCalculator(**calc.todict()) does not rebuild a calculator made from a folder-loaded CGCNNPredictor':
    todict gave the name in its model.json, so a recalibrated copy was rebuilt as the shipped model (other
    intervals, silently) and a model of one's own as 'unknown model'."""
    import shutil

    from ase.build import bulk

    from cgcnn_ase import CGCNNCalculator, CGCNNPredictor
    from cgcnn_ase.models.registry import model_folder

    copy = tmp_path / "my_formation_energy"
    shutil.copytree(model_folder("formation_energy"), copy)
    calc = CGCNNCalculator([CGCNNPredictor.load(copy, members=2)])
    assert calc.todict()["models"] == [str(copy.resolve())] and calc.todict()["members"] == 2
    salt = bulk("NaCl", "rocksalt", a=5.64)
    salt.calc = calc
    value = salt.get_potential_energy()
    salt.calc = CGCNNCalculator(**calc.todict())
    assert salt.get_potential_energy() == value
    shipped = CGCNNCalculator([CGCNNPredictor.from_pretrained("formation_energy")])
    assert shipped.todict()["models"] == [model_folder("formation_energy").name]


def test_a_predictor_built_from_a_name_says_how_to_load_one():
    """22: 'CGCNNPredictor("formation_energy") fails with AttributeError: str object has no attribute to'."""
    from cgcnn_ase import CGCNNPredictor

    with pytest.raises(TypeError, match=r"CGCNNPredictor.from_pretrained\(NAME\) or CGCNNPredictor.load"):
        CGCNNPredictor("formation_energy")


def test_one_materials_project_entry_saved_on_its_own_is_read(tmp_path):
    """22: 'a single MP entry {"material_id": ..., "structure": {...}} as a file: JSON that holds no structure'."""
    [entry] = _entries(1)
    path = tmp_path / "mp-0.json"
    path.write_text(json.dumps(entry))
    [record] = read_records(str(path))
    [reference] = read_records(str(_write_json(tmp_path / "plain.json", entry["structure"])))
    assert record.label == str(path)
    np.testing.assert_array_equal(record.frac_coords, reference.frac_coords)
    run = _cli("predict", str(path), "-m", "formation_energy")
    assert run.exit_code == 0 and run.stdout.splitlines()[1].startswith(f"{path},-")


def _write_json(path, data):
    path.write_text(json.dumps(data))
    return path

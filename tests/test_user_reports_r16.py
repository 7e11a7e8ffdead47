"""Round 16 of outside testing: a screening user at scale (16b) and a researcher fine-tuning and reading site
energies (16a). Each test quotes or paraphrases what was reported and asserts the fixed behaviour."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from ase.build import bulk

from cgcnn_ase import CGCNNPredictor

from .conftest import REPO
from .test_user_reports import _cli


def test_parquet_units_of_percentile_and_std_columns(tmp_path):
    """16b: 'the cgcnn_ase.units entry gives each *_domain_percentile (percent) column the model's own units'
    (band_gap's percentile in 'eV'); Dask's write_parquet wrote an empty units entry."""
    import pyarrow.parquet as pq

    from cgcnn_ase.inference.writers import arrow_schema

    out = tmp_path / "mp.parquet"
    run = _cli("predict", str(REPO / "examples"), "-m", "band_gap", "-m", "is_metal", "-o", str(out))
    assert run.exit_code == 0, run.output
    units = json.loads(pq.read_schema(min(out.glob("part-*"))).metadata[b"cgcnn_ase.units"])
    assert units == {"band_gap (eV)": "eV", "band_gap_std (eV)": "eV", "band_gap_uncertainty (eV)": "eV",
                     "band_gap_domain_percentile (percent)": "percent",
                     "is_metal (probability)": "probability", "is_metal_std (probability)": "probability",
                     "is_metal_domain_percentile (percent)": "percent",
                     "n_sparse": "atoms", "bond_ratio": "dimensionless", "vacuum_gap": "Å"}  # fmt: skip
    columns = ["id", "log10_bulk_modulus (log10(GPa))", "m (1): y_domain_percentile (percent)", "error"]
    assert json.loads(arrow_schema(columns).metadata[b"cgcnn_ase.units"]) == {  # what Dask's write_parquet stores
        "log10_bulk_modulus (log10(GPa))": "log10(GPa)", "m (1): y_domain_percentile (percent)": "percent"}


def test_featurize_keeps_the_users_columns_as_written(tmp_path):
    """16b: 'Ids "0000", "0001" come out as "0", "1"; the literal text "NaN" in another column becomes an empty
    cell; error messages name the row "3" instead of "0003"'."""
    import csv

    cif = (REPO / "examples" / "SrTiO3.cif").read_text()
    rows = [["sid", "cif", "note"], ["0000", cif, "1E5"], ["0001", cif, "NaN"], ["0002", "", "True"], ["0003", cif, ""]]
    with open(tmp_path / "in.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    run = _cli("featurize", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv"), "-m", "formation_energy",
               "--id-column", "sid")  # fmt: skip
    assert run.exit_code == 1 and "error: 0002: no structure" in run.stderr
    with open(tmp_path / "out.csv", newline="") as f:
        out = list(csv.reader(f))
    assert [r[0] for r in out[1:]] == ["0000", "0001", "0002", "0003"]
    assert [r[1] for r in out[1:]] == [cif, cif, "", cif] and [r[2] for r in out[1:]] == ["1E5", "NaN", "True", ""]
    values = [r[out[0].index("formation_energy (eV/atom)")] for r in out[1:]]
    assert values[2] == "" and float(values[0]) == float(values[1]) == float(values[3])


def test_error_messages_are_one_line_in_outputs_and_an_old_cut_file_is_refused_on_resume(tmp_path):
    """16b: 'Some error messages contain a raw newline (gemmi's ...in CIF.\\n'_atom_site_label'); they are written
    into the CSV error field. --resume crashes when the cut falls after the embedded newline (internal error,
    exit 4); the newlines also break wc -l and grep on the output'."""
    folder = tmp_path / "bad"
    folder.mkdir()
    good = (REPO / "examples" / "SrTiO3.cif").read_text()
    (folder / "01_good.cif").write_text(good)
    (folder / "02_trunc.cif").write_text(good[:300])
    (folder / "03_empty.cif").write_text("")
    out = tmp_path / "ref.csv"
    for output in (out, tmp_path / "ref.parquet"):
        run = _cli("predict", str(folder), "-m", "formation_energy", "-o", str(output))
        assert run.exit_code == 1
    text = out.read_text()
    assert len(text.splitlines()) == 4 and "'_atom_site_label'" in text  # a header and one line per input
    parquet = pd.read_parquet(tmp_path / "ref.parquet")
    assert parquet["error"].fillna("").tolist() == pd.read_csv(out, keep_default_na=False)["error"].tolist()
    # an output of an earlier version, cut just after a line break inside a quoted message
    header, first = text.splitlines()[:2]
    (tmp_path / "old.csv").write_text(f'{header}\n{first}\n{folder}/02_trunc.cif,,,,,"{folder}/02: not a CIF.\n')
    (tmp_path / ".old.csv.run.json").write_text((tmp_path / ".ref.csv.run.json").read_text())
    resumed = _cli("predict", str(folder), "-m", "formation_energy", "-o", str(tmp_path / "old.csv"), "--resume")
    assert resumed.exit_code == 2 and "cannot be resumed: it is not valid CSV" in resumed.stderr, resumed.output


def test_site_members_of_different_networks_are_refused():
    """16a: 'member_site_contributions([perovskite_formation_energy, perovskite_site_energy], S) returns 6
    "members", mixing the gated Eq. 5 network with the 5 simple-conv Eq. 4 networks; seed_std then mixes
    architectures'."""
    from ase import Atoms

    from cgcnn_ase.analysis.site_members import member_site_contributions
    from cgcnn_ase.errors import SiteAnalysisError
    from cgcnn_ase.models.registry import resolve_model

    cubic = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    crystal = {"SrTiO3": Atoms("SrTiO3", scaled_positions=cubic, cell=[3.905] * 3, pbc=True)}
    gated, simple = resolve_model("perovskite_formation_energy").path, resolve_model("perovskite_site_energy").path
    with pytest.raises(SiteAnalysisError, match="in its convolution: 'simple' vs 'gated'"):
        member_site_contributions([gated, simple], crystal)
    stacked = member_site_contributions([simple], crystal)  # one ensemble: its own members, alike
    assert sorted(stacked["member"].unique()) == [0, 1, 2, 3, 4] and len(stacked) == 25


def test_patterns_read_what_a_folder_reads_and_broken_links_get_their_row(tmp_path, monkeypatch):
    """16b: "predict 'runs/**/*' (the pattern the docs recommend for subfolders) aborts with exit 2 because of an
    id_prop.csv below it; README.md, INCAR and *.png become error rows"; "a folder input drops a broken symlink
    with no row and no warning"; "a glob that matches nothing says 'no such file'"; "predict('sl/*.cif') expands
    the glob but predict(['sl/*.cif']) treats it as a file"."""
    import os

    from cgcnn_ase.errors import SkippedFilesWarning

    monkeypatch.chdir(tmp_path)
    for folder in ("runs/r1", "runs/r2", "sl"):
        os.makedirs(folder)
    cif = (REPO / "examples" / "SrTiO3.cif").read_text()
    for path, text in (("runs/r1/a.cif", cif), ("runs/r1/README.md", "x\n"), ("runs/r1/INCAR", "E=1\n"),
                       ("runs/r2/id_prop.csv", "1,2\n"), ("sl/a.cif", cif)):  # fmt: skip
        (tmp_path / path).write_text(text)
    os.symlink("/nonexistent/x.cif", "sl/broken.cif")
    run = _cli("predict", "runs/**/*", "-m", "formation_energy")
    assert run.exit_code == 0, run.output
    assert "left out 3 matched file(s) that are not structure files" in run.stderr
    assert pd.read_csv(io.StringIO(run.stdout))["id"].tolist() == ["runs/r1/a.cif"]
    tables = _cli("predict", "runs/**/*.csv", "-m", "formation_energy")  # a pattern naming tables reads tables
    assert tables.exit_code == 2 and "no structure column" in tables.stderr
    linked = _cli("predict", "sl", "nomatch/*.cif", "-m", "formation_energy")
    assert linked.exit_code == 1
    rows = pd.read_csv(io.StringIO(linked.stdout), keep_default_na=False)
    assert rows["id"].tolist() == ["sl/a.cif", "sl/broken.cif", "nomatch/*.cif"]
    assert "a broken symbolic link (to /nonexistent/x.cif" in rows["error"][1]
    assert "no file matches this pattern" in rows["error"][2]
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    with pytest.warns(SkippedFilesWarning):
        alone = predictor.predict("runs/**/*")
    assert list(alone.ids) == ["runs/r1/a.cif"]
    # in a list a pattern or folder stays one item (the featurizer and others need one row per item): it says so
    result = predictor.predict(["sl/*.cif", "runs", bulk("NaCl", "rocksalt", a=5.64)], errors="collect")
    assert list(result.ids) == ["sl/*.cif", "runs", "input 2"] and np.isfinite(result.values[2])
    assert "a glob pattern is expanded when it is the whole input" in result.errors[0]
    assert "is a directory, not a structure file (a folder is read file by file when" in result.errors[1]


def test_warned_geometry_is_flagged_in_every_output_table(tmp_path):
    """16b: 'reliability.md says a warning means the prediction is returned "with the condition flagged in the
    result". In the CLI, streaming and Dask outputs, vacuum gap, sparse graph and stretched cell warnings appear
    only on stderr: a 10^5 screen cannot filter slabs or isolated atoms from the table'. The columns are the
    API's, equal with one and two workers and in the default command's table."""
    from ase import Atoms

    lone, nacl = tmp_path / "lone.cif", tmp_path / "nacl.cif"
    Atoms("Cu", cell=[20] * 3, pbc=True).write(lone)
    bulk("NaCl", "rocksalt", a=5.64).write(nacl)
    api = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    with pytest.warns(UserWarning):
        expected = api.predict([str(lone), str(nacl)]).to_dataframe()
    tables = []
    for args in (["-m", "formation_energy"], ["-m", "formation_energy", "--workers", "2"], []):
        out = tmp_path / f"out{len(tables)}.csv"
        run = _cli("predict", str(lone), str(nacl), "missing.cif", *args, "-o", str(out))
        assert run.exit_code == 1, run.output
        tables.append(pd.read_csv(out))
    for table in tables:
        columns = list(table.columns)
        assert columns[-5:] == ["n_sparse", "bond_ratio", "vacuum_gap", "unseen_elements", "error"]
        assert table["n_sparse"].tolist()[:2] == expected["n_sparse"].tolist() == [1, 0]
        np.testing.assert_allclose(table["vacuum_gap"][:2], expected["vacuum_gap"], rtol=1e-6)
        np.testing.assert_allclose(table["bond_ratio"][:2], expected["bond_ratio"], rtol=1e-6)  # NaN for lone Cu
        assert table.iloc[2][["n_sparse", "bond_ratio", "vacuum_gap"]].isna().all()  # the missing file's row
    assert table["vacuum_gap"][0] == pytest.approx(20.0) and table["vacuum_gap"][1] < 5
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_an_empty_folder_among_the_inputs_is_named(tmp_path):
    """An input with no row must say why: an empty folder gave no row and no word."""
    (tmp_path / "empty").mkdir()
    run = _cli("predict", str(REPO / "examples" / "NaCl.POSCAR"), str(tmp_path / "empty"), "-m", "formation_energy")
    assert run.exit_code == 0 and f"{tmp_path / 'empty'}: an empty folder (no visible files)" in run.stderr


def test_site_tables_name_their_units(tmp_path):
    """16a: 'sites.csv and by_element.csv carry no units, unlike the headers from predict'."""
    run = _cli("sites", str(REPO / "examples" / "SrTiO3.cif"), "--model", "perovskite_site_energy", "-o",
               str(tmp_path / "report"))  # fmt: skip
    assert run.exit_code == 0, run.output
    for name in ("sites.csv", "by_element.csv"):
        assert set(pd.read_csv(tmp_path / "report" / name)["units"]) == {"eV/atom"}


def test_an_output_of_the_version_before_the_geometry_columns_says_so_on_resume(tmp_path):
    """Resuming a CSV written before n_sparse, bond_ratio and vacuum_gap were added is refused with that reason,
    not with two column lists to compare by eye."""
    out = tmp_path / "old.csv"
    run = _cli("predict", str(REPO / "examples" / "NaCl.POSCAR"), "-m", "formation_energy", "-o", str(out))
    assert run.exit_code == 0, run.output
    old = pd.read_csv(out).drop(columns=["n_sparse", "bond_ratio", "vacuum_gap"])
    old.to_csv(out, index=False)
    resumed = _cli("predict", str(REPO / "examples"), "-m", "formation_energy", "-o", str(out), "--resume")
    assert resumed.exit_code == 2 and "written by an earlier version of cgcnn-ase, without the columns" in resumed.stderr


def test_the_ensemble_card_of_a_finetune_names_test_crystals_the_base_saw():
    """Round 17: 'ft/ens/model.json has base_overlap (29 of 30 test crystals) but ft/ens/README.md has no line and
    shows its test metrics without the caveat' (each member's card had it)."""
    import copy

    from cgcnn_ase.models.cards import ensemble_card
    from cgcnn_ase.models.folder import read_model_json
    from cgcnn_ase.models.registry import resolve_model

    document = copy.deepcopy(read_model_json(resolve_model("perovskite_site_energy").path))
    base = {"name": "b", "kind": "shipped model", "init_from": "b", "property": "e"}
    overlap = {"checked": "ids and structures", "test": {"n": 30, "base_train": 22, "base_val": 7}}
    document["metadata"]["finetune"] = {"base": base, "base_overlap": overlap}
    card = ensemble_card(document)
    assert ("**29 of the 30 test crystals are crystals the base model was trained on (22) or selected with (7)**, "
            "found by id and by identical structure") in card
    overlap["test"].update(base_train=0, base_val=0)
    assert "test crystals are crystals the base model" not in ensemble_card(document)


def test_round_17_check_of_the_round_16_fixes(tmp_path, monkeypatch):
    """Round 17 (a helper trying to break the round-16 fixes): a pair of two files in predict_stream gave the first
    file's id the second file's value; units holding ' (' were cut ('RPBE)'); a symbolic link loop in a folder
    aborted the run; a pattern given alone that matched only non-structure files was called a directory;
    n_sparse was a float in json; an empty id cell in featurize named no row."""
    import os
    from pathlib import Path

    from cgcnn_ase.inference.streaming import predict_stream
    from cgcnn_ase.inference.writers import column_units

    monkeypatch.chdir(tmp_path)
    os.makedirs("g")
    (tmp_path / "g" / "nacl.cif").write_text((REPO / "examples" / "SrTiO3.cif").read_text())
    sto = str(REPO / "examples" / "SrTiO3.cif")
    predict_stream([(Path("g/nacl.cif"), Path(sto)), ("x", "g/nacl.cif")], ["formation_energy"], "ps.csv", workers=1)
    rows = pd.read_csv("ps.csv")
    assert np.isnan(rows.iloc[0, 1]) and "an (id, structure) pair whose id is a structure file too" in rows["error"][0]
    assert rows["id"][1] == "x" and np.isfinite(rows.iloc[1, 1])
    assert column_units(["e (eV/atom (RPBE))", "k (log10(GPa))", "a(b)"]) == {"e (eV/atom (RPBE))": "eV/atom (RPBE)",
                                                                             "k (log10(GPa))": "log10(GPa)"}  # fmt: skip
    os.symlink("self.cif", "g/self.cif")
    run = _cli("predict", "g", "-m", "formation_energy", "--format", "json")
    assert run.exit_code == 1, run.output
    results = json.loads(run.stdout)["results"]
    assert [r["id"] for r in results] == ["g/nacl.cif", "g/self.cif"] and results[0]["n_sparse"] == 0
    assert "a symbolic link loop (to self.cif" in results[1]["error"]
    os.makedirs("docs_only")
    (tmp_path / "docs_only" / "README.md").write_text("x\n")
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    with pytest.warns(UserWarning), pytest.raises(Exception, match="none of the files this pattern matches"):
        predictor.predict("docs_only/*")
    with pytest.warns(UserWarning), pytest.raises(Exception, match=r"holding no structure files$"):
        predictor.predict("docs_only")
    pd.DataFrame({"sid": ["a", ""], "cif": ["", ""]}).to_csv("t.csv", index=False)
    featurized = _cli("featurize", "t.csv", "-o", "o.csv", "-m", "formation_energy", "--id-column", "sid")
    assert "error: a: no structure" in featurized.stderr and "error: t.csv@1: no structure" in featurized.stderr


def test_site_members_may_differ_in_dropout_only():
    """Round 17: members that differ only in dropout (no effect at inference; `cgcnn-ase ensemble` accepts them)
    were refused as 'differs in its architecture'."""
    import dataclasses

    from cgcnn_ase.analysis.site_members import _check_alike
    from cgcnn_ase.errors import SiteAnalysisError

    first = CGCNNPredictor.from_pretrained("perovskite_site_energy", members=1, device="cpu")
    second = CGCNNPredictor.from_pretrained("perovskite_site_energy", members=1, device="cpu")
    spec = second.model.spec
    second.model = dataclasses.replace(second.model, spec=dataclasses.replace(
        spec, architecture={**spec.architecture, "dropout": 0.5}))  # fmt: skip
    _check_alike([first, second])
    second.model = dataclasses.replace(second.model, spec=dataclasses.replace(
        spec, architecture={**spec.architecture, "n_conv": spec.architecture["n_conv"] + 1}))  # fmt: skip
    with pytest.raises(SiteAnalysisError, match="in its architecture"):
        _check_alike([first, second])


def test_sites_given_a_table_says_so(tmp_path):
    """Round 17: 'cgcnn-ase sites on a .csv reports "not readable CIF text (ValueError: ...)" rather than saying
    tables are not read there'."""
    pd.DataFrame({"id": ["a"], "cif": [(REPO / "examples" / "SrTiO3.cif").read_text()]}).to_csv(tmp_path / "t.csv")
    run = _cli("sites", str(tmp_path / "t.csv"), "--model", "perovskite_site_energy", "-o", str(tmp_path / "r"))
    assert run.exit_code == 2 and "a table; sites reads structure files" in run.stderr


def test_evaluating_on_another_file_does_not_apply_the_training_files_drop_ids(tmp_path):
    """'evaluate NAME own.csv keeps the training config's drop_ids, which prints a spurious "drop_ids not found"
    warning' (band_gap's config drops four outliers of its own file)."""
    import warnings

    from cgcnn_ase.analysis.evaluation import evaluate_model

    cif = (REPO / "examples" / "SrTiO3.cif").read_text()
    pd.DataFrame({"material_id": ["a", "b"], "band_gap": [1.8, 1.9], "cif": [cif, cif]}).to_csv(tmp_path / "own.csv",
                                                                                               index=False)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluate_model("band_gap", tmp_path / "own.csv", split="all", workers=1)
    assert report["n"] == 2 and not report["dataset"].get("drop_ids")
    assert not [w for w in caught if "drop_ids" in str(w.message)]


def test_the_shipped_perovskite_split_backs_the_finetuning_docs():
    """docs/finetuning.md: 'perovskite_site_energy trained on 13,942 and selected with 1,743 of the 17,428 Castelli
    cells, so ... about 9 in 10 of its test crystals' were seen."""
    from cgcnn_ase.data.splits import Split
    from cgcnn_ase.models.registry import resolve_model

    split = Split.load(resolve_model("perovskite_site_energy").path / "split.json")
    sizes = {part: len(split.ids(part)) for part in ("train", "val", "test")}
    assert sizes == {"train": 13942, "val": 1743, "test": 1743}
    assert (sizes["train"] + sizes["val"]) / 17428 == pytest.approx(0.9, abs=0.001)
    text = (REPO / "docs" / "finetuning.md").read_text()
    assert "trained on 13,942 and selected with 1,743 of\nthe 17,428 Castelli" in text


def test_wyckoff_letters_follow_the_origin_as_documented():
    """docs/site_energies.md and wyckoff_labels: 'rocksalt NaCl shifted by half a cell puts Na on 4b and Cl on 4a
    instead of the reverse'."""
    from cgcnn_ase.analysis.sites import wyckoff_labels
    from cgcnn_ase.io.records import from_ase

    crystal = bulk("NaCl", "rocksalt", a=5.64)
    shifted = crystal.copy()
    shifted.translate(0.5 * crystal.cell.sum(axis=0))
    shifted.wrap()
    assert wyckoff_labels(from_ase(crystal)) == ["4a", "4b"] and wyckoff_labels(from_ase(shifted)) == ["4b", "4a"]

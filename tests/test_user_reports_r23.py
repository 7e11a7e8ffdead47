"""Round 23 of outside testing and the items earlier rounds left open. Each test quotes or paraphrases what was
reported and asserts the fixed behaviour."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from ase.build import bulk
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from cgcnn_ase import CGCNNCalculator, CGCNNPredictor

from .conftest import REPO
from .test_user_reports import _cli

EXAMPLES = [str(REPO / "examples" / name) for name in ("NaCl.POSCAR", "SrTiO3.cif")]


@pytest.fixture(scope="module")
def copper(tmp_path_factory) -> str:
    """A metal the shipped is_metal classifier calls one: its gated band gap is 0."""
    path = tmp_path_factory.mktemp("cu") / "Cu.cif"
    bulk("Cu", "fcc", a=3.61).write(str(path))
    return str(path)


def _csv(run) -> pd.DataFrame:
    assert run.exit_code == 0, run.output
    return pd.read_csv(io.StringIO(run.stdout))


def test_the_per_crystal_uncertainty_reaches_the_cli_with_a_model():
    """Left open in round 21: 'the CLI, streaming and Dask lack the _uncertainty column' that
    docs/uncertainty.md's screening recipe ranks by; --model now writes it, as the API's to_dataframe()."""
    frame = _csv(_cli("predict", *EXAMPLES, "-m", "formation_energy", "-m", "is_metal"))
    result = CGCNNPredictor.from_pretrained("formation_energy").predict(EXAMPLES)
    column = "formation_energy_uncertainty (eV/atom)"
    assert list(frame.columns[1:5]) == ["formation_energy (eV/atom)", "formation_energy_std (eV/atom)", column,
                                        "formation_energy_domain_percentile (percent)"]  # fmt: skip
    np.testing.assert_allclose(frame[column], result.uncertainty, rtol=1e-5)
    assert not any("is_metal_uncertainty" in c for c in frame.columns)  # the classifier has no error model
    single = _csv(_cli("predict", EXAMPLES[0], "-m", str(REPO / "pretrained_models" / "perovskite_formation_energy-castelli_cmr-v1")))
    assert not any(c.endswith("_uncertainty (eV/atom)") for c in single.columns)  # a single network has none


def test_uncertainty_flag_gives_the_default_properties_in_user_units(copper):
    """--uncertainty adds each property's _uncertainty to the default table: GPa moduli propagated as their
    std, and none for a predicted metal's gated band gap; without the flag the columns are absent."""
    frame = _csv(_cli("predict", *EXAMPLES, copper, "--uncertainty", "--log10"))
    plain = _csv(_cli("predict", *EXAMPLES, copper))
    assert not any(c.endswith("_uncertainty") or "_uncertainty (" in c for c in plain.columns)
    for name, units in (("formation_energy", "eV/atom"), ("band_gap", "eV"), ("fermi_energy", "eV"),
                        ("bulk_modulus", "GPa"), ("shear_modulus", "GPa"), ("poisson_ratio", "dimensionless")):  # fmt: skip
        assert f"{name}_uncertainty ({units})" in frame.columns
    assert "metal_probability_uncertainty (probability)" not in frame.columns
    for name in ("bulk_modulus", "shear_modulus"):
        log10 = frame[f"log10_{name}_uncertainty (log10(GPa))"]
        np.testing.assert_allclose(frame[f"{name}_uncertainty (GPa)"], math.log(10) * frame[f"{name} (GPa)"] * log10,
                                   rtol=1e-6)  # fmt: skip
    metal = frame["metal_probability (probability)"] > 0.5
    assert metal.tolist() == [False, False, True]
    assert frame.loc[metal, "band_gap_uncertainty (eV)"].isna().all()
    assert frame.loc[~metal, "band_gap_uncertainty (eV)"].gt(0).all()
    api = CGCNNPredictor.from_pretrained("fermi_energy").predict(EXAMPLES + [copper])
    np.testing.assert_allclose(frame["fermi_energy_uncertainty (eV)"], api.uncertainty, rtol=1e-5)
    noted = _cli("predict", EXAMPLES[0], "-m", "formation_energy", "--uncertainty")
    assert noted.exit_code == 0 and "--uncertainty applies only without --model" in noted.stderr


def test_featurizer_and_calculator_give_the_same_uncertainty(copper):
    """The matminer featurizer (uncertainty=True) and the ASE calculator give the API's per-crystal uncertainty,
    gated like the std for a metal's band gap."""
    from pymatgen.core import Structure

    from cgcnn_ase.integrations.matminer import CGCNNFeaturizer

    structures = [Structure.from_file(path) for path in EXAMPLES + [copper]]
    featurizer = CGCNNFeaturizer(["band_gap", "formation_energy"], uncertainty=True)
    labels = featurizer.feature_labels()
    assert labels[:3] == ["band_gap (eV)", "band_gap_std (eV)", "band_gap_uncertainty (eV)"]
    assert "formation_energy_uncertainty (eV/atom)" in labels and "is_metal_uncertainty (probability)" not in labels
    assert "band_gap_uncertainty (eV)" not in CGCNNFeaturizer(["band_gap"]).feature_labels()  # off by default
    rows = pd.DataFrame(featurizer.featurize_many(structures, pbar=False), columns=labels)
    api = CGCNNPredictor.from_pretrained("formation_energy").predict(structures)
    np.testing.assert_allclose(rows["formation_energy_uncertainty (eV/atom)"], api.uncertainty, rtol=1e-5)
    assert rows["band_gap_uncertainty (eV)"].isna().tolist() == [False, False, True]

    calc = CGCNNCalculator(["formation_energy", "band_gap", "bulk_modulus"])
    assert {"formation_energy_uncertainty", "bulk_modulus_uncertainty"} <= set(calc.result_names)
    for k, structure in enumerate(structures):
        atoms = structure.to_ase_atoms()
        atoms.calc = calc
        assert calc.get_property("formation_energy_uncertainty", atoms) == pytest.approx(api.uncertainty[k], rel=1e-5)
        assert math.isnan(calc.get_property("band_gap_uncertainty", atoms)) == (k == 2)
        gpa = calc.get_property("bulk_modulus", atoms) * math.log(10) * calc.get_property("log10_bulk_modulus_uncertainty", atoms)
        assert calc.get_property("bulk_modulus_uncertainty", atoms) == pytest.approx(gpa)
    assert "formation_energy_uncertainty" not in CGCNNCalculator("formation_energy", members=1).result_names


def test_progress_bar_has_a_total_where_counting_is_cheap(tmp_path, capsys):
    """Left open in round 21: 'the progress bar of a 100k-file screen shows no total or ETA'. Folders, patterns
    and Parquet tables are counted before the run (listed, not read); what cannot be counted without reading
    stays without a total, and a generator is never consumed by counting."""
    import shutil

    from cgcnn_ase.inference.streaming import predict_stream
    from cgcnn_ase.io.inputs import count_inputs

    folder = tmp_path / "cifs"
    folder.mkdir()
    for path in EXAMPLES:
        shutil.copy(path, folder)
    (folder / "notes.md").write_text("not a structure")
    table = tmp_path / "t.parquet"
    pd.DataFrame({"cif": [(REPO / "examples" / "SrTiO3.cif").read_text()] * 3}).to_parquet(table)
    assert count_inputs([str(folder), str(table)]) == 5
    assert count_inputs(str(tmp_path / "cifs" / "*")) == 2 and count_inputs(str(folder / "*.cif")) == 1
    assert count_inputs([str(folder), str(REPO / "examples" / "Si.extxyz")]) is None  # frames: unknown until read
    table.with_suffix(".csv").write_text("cif\nx\n")
    assert count_inputs(str(table.with_suffix(".csv"))) is None
    pending = (p for p in EXAMPLES)
    assert count_inputs(pending) is None and len(list(pending)) == 2

    predict_stream([str(folder), str(table)], ["formation_energy"], str(tmp_path / "out.csv"), chunk_size=2,
                   progress=True)  # fmt: skip
    assert "| 0/5 [" in capsys.readouterr().err  # tqdm's bar, with its total from the start

    import cgcnn_ase.progress

    bars = []

    class Bar:  # what the run asks of its bar: the total and the rows of each chunk
        def __init__(self, show, total=None, **options):
            self.total, self.steps = total, []
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def update(self, n):
            self.steps.append(n)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cgcnn_ase.progress, "progress_bar", Bar)
        predict_stream([str(folder), str(table)], ["formation_energy"], str(tmp_path / "out2.csv"), chunk_size=2,
                       progress=True)  # fmt: skip
    assert bars[0].total == 5 and bars[0].steps == [2, 2, 1]


def test_atoms_spread_over_a_huge_cell_are_refused_per_item():
    """23c: 'NaCl with its cell scaled by 1e5: MemoryError (350 TB) from pymatgen's cell list, not caught by
    errors="collect", the good Cu result lost; the CLI exit 4 with no row'. Now a per-item refusal on both graph
    backends; a merely large cell (NaCl x 200) is still predicted."""
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1)
    huge, large = bulk("NaCl", "rocksalt", a=5.64), bulk("NaCl", "rocksalt", a=5.64)
    huge.set_cell(huge.cell[:] * 1e5, scale_atoms=True)
    large.set_cell(large.cell[:] * 200, scale_atoms=True)
    copper = bulk("Cu", "fcc", a=3.61)
    for backend in ("per-structure", "batched"):
        predictor.graph_backend = backend
        with pytest.warns(UserWarning):  # the large cell: sparse and stretched
            result = predictor.predict([huge, copper, large], errors="collect")
        assert "spread over 2.82e+05 x 2.82e+05 x 2.82e+05 Å" in result.errors[0] and "in Å?" in result.errors[0]
        assert result.errors[1:] == [None, None] and np.isfinite(result.values[1:]).all()
    with pytest.raises(Exception, match="spread over"):
        predictor.predict(huge)


def test_overlap_message_keeps_the_distance(tmp_path):
    """23c: 'a Na at x = 1.00001 next to one at x = 0 (5.6e-5 Å apart) is reported as 0.000 Å apart'."""
    from ase import Atoms

    from cgcnn_ase.errors import InvalidStructureError

    atoms = Atoms("Na2Cl", scaled_positions=[[0, 0, 0], [1.00001, 0, 0], [0.5, 0.5, 0.5]], cell=[5.64] * 3, pbc=True)
    with pytest.raises(InvalidStructureError, match=r"are 5.6e-05 Å apart \(overlapping atoms\)"):
        CGCNNPredictor.from_pretrained("formation_energy", members=1).predict(atoms)


def test_far_out_crystals_warn_and_per_atom_rows_carry_the_domain(copper):
    """23c: 'perovskite_site_energy answers 0.43 eV/atom for Cu with no warning (its card: cubic ABX3 only), and
    predict --per-atom prints no domain column'. Crystals beyond every validation crystal (percentile 100) now
    raise one OutOfDomainWarning per call and model; crystals within the data do not."""
    import warnings

    from cgcnn_ase import OutOfDomainWarning

    site = CGCNNPredictor.from_pretrained("perovskite_site_energy")
    with pytest.warns(OutOfDomainWarning, match=r"perovskite_site_energy-castelli_cmr-v1': 2 of 3 predicted .* e\.g\. "
                                                 r"input 0, input 2\)"):  # fmt: skip
        result = site.predict([bulk("Cu", "fcc", a=3.61), EXAMPLES[1], bulk("Si", "diamond", a=5.43)])
    assert result.domain_percentile[[0, 2]].tolist() == [100.0, 100.0] and result.domain_percentile[1] < 100
    with warnings.catch_warnings():  # docs: Cu stays below 100 for the single perovskite model, and is not warned
        warnings.simplefilter("error", OutOfDomainWarning)
        single = CGCNNPredictor.from_pretrained("perovskite_formation_energy").predict(bulk("Cu", "fcc", a=3.61))
    assert 99 < single.domain_percentile[0] < 100
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDomainWarning)
        CGCNNPredictor.from_pretrained("formation_energy").predict(EXAMPLES)
    frame = _csv(_cli("predict", EXAMPLES[0], copper, "-m", "perovskite_site_energy", "--per-atom"))
    column = "perovskite_formation_energy_domain_percentile (percent)"
    assert frame[column].tolist() == [100.0] * 3  # on every atom's row: Na, Cl and Cu
    assert list(frame.columns[:4]) == ["id", "atom", "element", "perovskite_formation_energy (eV/atom)"]


def test_a_cif_whose_symbol_and_operations_disagree_warns(tmp_path):
    """23c: "'F m -3 m' with only 'x,y,z' listed is read as a 2-atom CsCl-type cell and predicted without mentioning
    the conflict". The listed operations are applied (as every reader does), with a CifSymmetryWarning; symmetrised
    CIFs whose operations match their symbol read silently."""
    import warnings

    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    from cgcnn_ase.errors import CifSymmetryWarning
    from cgcnn_ase.io.reader import read_records

    salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    symmetrised = str(CifWriter(salt, symprec=0.01))
    assert "_symmetry_space_group_name_H-M   Fm-3m" in symmetrised
    with warnings.catch_warnings():
        warnings.simplefilter("error", CifSymmetryWarning)
        assert len(read_records(symmetrised)[0]) == 8
    start = symmetrised.index("loop_\n _symmetry_equiv_pos_site_id")
    end = symmetrised.index("loop_", start + 5)
    conflicting = symmetrised[:start] + "loop_\n _symmetry_equiv_pos_as_xyz\n  'x, y, z'\n" + symmetrised[end:]
    with pytest.warns(CifSymmetryWarning, match="'Fm-3m' has 192 symmetry operations but the CIF lists 1"):
        [record] = read_records(conflicting)
    assert len(record) == 2


def test_band_gap_columns_that_are_not_gated_say_so(tmp_path):
    """23a: "Dask's predict_dataframe and predict_stream give the band-gap model's own value under 'band_gap (eV)',
    the featurizer's column of that name is gated: 0.30 eV against 0 for a metal, without a word" (the CLI said
    so). Every path that gives the model's own value now warns."""
    import dask.dataframe as dd

    from cgcnn_ase.inference.streaming import predict_stream
    from cgcnn_ase.integrations.dask import predict_dataframe

    with pytest.warns(UserWarning, match="band_gap is the model's own value .* not gated"):
        predict_stream(EXAMPLES[:1], ["band_gap"], str(tmp_path / "out.csv"))
    table = dd.from_pandas(pd.DataFrame({"cif": [(REPO / "examples" / "SrTiO3.cif").read_text()]}), npartitions=1)
    with pytest.warns(UserWarning, match="not gated by the metal classifier"):
        predict_dataframe(table, ["band_gap"])
    run = _cli("predict", EXAMPLES[0], "-m", "band_gap", "--format", "json")
    assert run.exit_code == 0 and run.stderr.count("not gated by the metal classifier") == 1


def test_featurizer_reloads_its_models_after_set_params():
    """23a: "Pipeline.set_params(f__properties='band_gap') is ignored once the featurizer has run: get_params says
    band_gap, feature_labels and transform still give formation energies"."""
    from pymatgen.core import Structure

    from cgcnn_ase.integrations.matminer import CGCNNFeaturizer

    structure = Structure.from_file(EXAMPLES[1])
    featurizer = CGCNNFeaturizer("formation_energy")
    first = featurizer.featurize(structure)
    featurizer.set_params(properties="band_gap", metal_threshold=None)
    assert featurizer.feature_labels() == ["band_gap (eV)", "band_gap_std (eV)"]
    gap = featurizer.featurize(structure)
    assert gap[0] == pytest.approx(CGCNNPredictor.from_pretrained("band_gap").predict(structure).values[0], rel=1e-5)
    assert gap[0] != pytest.approx(first[0])
    featurizer.properties = ["formation_energy"]  # a plain assignment too
    assert featurizer.featurize(structure) == pytest.approx(first, rel=1e-6)


def test_inputs_pandas_and_materials_project_users_hold(tmp_path):
    """23a: "to_dataframe() drops the Series' index (ids '500', '501' as text): df.join matches 0 rows"; "b'nofile.cif'
    escapes errors='collect' as a bare TypeError"; "an MP document {material_id, structure} or a
    ComputedStructureEntry is an 'unsupported input type'"; "Dask's str(Structure) text fails with a message that
    hides the cause"."""
    import json

    from pymatgen.core import Structure
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    structure = Structure.from_file(EXAMPLES[1])
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1)
    frame = pd.DataFrame({"structure": [structure, None, structure]}, index=pd.Index([500, 501, 502], name="row"))
    result = predictor.predict(frame["structure"], errors="collect").to_dataframe()
    assert result.index.equals(frame.index) and result["id"].tolist() == [500, 501, 502]  # round 26b: the labels as given
    joined = frame.join(result["formation_energy"])
    assert joined["formation_energy"].notna().tolist() == [True, False, True]
    assert predictor.predict([structure, structure]).to_dataframe().index.tolist() == [0, 1]

    document = {"material_id": "mp-5229", "structure": structure.as_dict()}
    entry = ComputedStructureEntry(structure, -40.0)
    inputs = [structure, document, json.dumps(document), entry, b"nofile.cif", str(structure), str(bulk("Cu"))]
    out = predictor.predict(inputs, errors="collect")
    np.testing.assert_allclose(out.values[1:4], out.values[0], rtol=1e-6)
    assert out.errors[:4] == [None] * 4 and out.errors[4] == "nofile.cif: no such file"
    for message, kind in zip(out.errors[5:], ("a pymatgen Structure", "an ase.Atoms")):
        assert f"printed form of {kind}" in message and "dataframe.convert-string" in message


def test_dask_and_streaming_inputs_of_the_wrong_kind_and_interrupted_first_chunks(tmp_path):
    """23a nits: predict_dataframe on a pandas DataFrame (AttributeError), a dask Series (KeyError) or with a loaded
    predictor (TypeError); citations() naming papers of data the models never saw; Ctrl-C before the first chunk
    leaving a 0-byte csv. An earlier run's output now stands until this run writes its first rows."""
    import dask.dataframe as dd

    from cgcnn_ase.errors import StreamError
    from cgcnn_ase.inference.streaming import predict_stream
    from cgcnn_ase.integrations.dask import predict_dataframe
    from cgcnn_ase.integrations.matminer import CGCNNFeaturizer

    table = pd.DataFrame({"cif": [(REPO / "examples" / "SrTiO3.cif").read_text()]})
    for bad, models, match in ((table, ["formation_energy"], "takes a dask DataFrame"),
                               (dd.from_pandas(table, npartitions=1)["cif"], ["formation_energy"], "to_frame"),
                               (dd.from_pandas(table, npartitions=1), [CGCNNPredictor.from_pretrained("formation_energy")],
                                "not CGCNNPredictor objects")):  # fmt: skip
        with pytest.raises(StreamError, match=match):
            predict_dataframe(bad, models)
    cited = CGCNNFeaturizer(["formation_energy", "band_gap"]).citations()
    assert len(cited) == 2 and not any("de Jong" in c or "Castelli" in c for c in cited)
    assert any("Castelli" in c for c in CGCNNFeaturizer("perovskite_site_energy").citations())

    class Stop(KeyboardInterrupt):
        pass

    def stop(*args, **kwargs):
        raise Stop

    for name in ("new.csv", "old.csv", "old.parquet"):
        path = tmp_path / name
        if name.startswith("old"):
            predict_stream(EXAMPLES, ["formation_energy"], str(path), progress=False)
        before = pd.read_csv(path) if name.endswith(".csv") and path.exists() else None
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("cgcnn_ase.inference.streaming.predict_items", stop)
            with pytest.raises(Stop):
                predict_stream(EXAMPLES, ["formation_energy"], str(path), progress=False)
        if name == "new.csv":
            assert not path.exists()  # no 0-byte file
        elif name == "old.csv":
            pd.testing.assert_frame_equal(pd.read_csv(path), before)
        else:
            assert len(pd.read_parquet(path)) == 2
        predict_stream(EXAMPLES, ["formation_energy"], str(path), progress=False)  # no refusal: nothing was begun


def test_repeated_ids_warn_once_in_the_api_not_in_the_featurizer():
    """Left open in round 21: 'the API's results can share ids (a Series index with a repeated label) without a
    word', while streaming warns. The featurizer, whose rows are positional, stays quiet."""
    import warnings

    from pymatgen.core import Structure

    from cgcnn_ase.errors import DuplicateIdsWarning
    from cgcnn_ase.integrations.matminer import CGCNNFeaturizer

    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1)
    with pytest.warns(DuplicateIdsWarning, match=r"1 id\(s\) name more than one result \('a'\)"):
        predictor.predict(pd.Series([EXAMPLES[0]] * 3, index=["a", "a", "b"]))
    structure = Structure.from_file(EXAMPLES[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DuplicateIdsWarning)
        predictor.predict([("x", structure), ("y", structure)])
        frame = pd.DataFrame({"s": [structure, structure]}, index=[1, 1])
        assert CGCNNFeaturizer("formation_energy").featurize_dataframe(frame, "s", pbar=False).shape == (2, 3)


def test_an_ase_json_database_is_read_as_a_database(tmp_path):
    """Left open in round 21: 'an ASE JSON database ignores --id-column' (its rows were read as frames, path@0).
    Its rows now get the ids of a .db's rows (path@id=N, or the --id-column key), in the CLI and the API."""
    from ase.db import connect
    from pymatgen.core import Structure

    path = tmp_path / "t.json"
    with connect(str(path)) as db:
        db.write(bulk("Cu", "fcc", a=3.61), mpid="mp-30")
        db.write(bulk("NaCl", "rocksalt", a=5.64), mpid="mp-22862")
    named = _csv(_cli("predict", str(path), "-m", "formation_energy", "--id-column", "mpid"))
    plain = _csv(_cli("predict", str(path), "-m", "formation_energy"))
    assert named["id"].tolist() == ["mp-30", "mp-22862"]
    assert plain["id"].tolist() == [f"{path}@id=1", f"{path}@id=2"]
    api = CGCNNPredictor.from_pretrained("formation_energy").predict(str(path))
    assert api.ids == plain["id"].tolist()
    np.testing.assert_allclose(named["formation_energy (eV/atom)"], api.values, rtol=1e-6)
    plain_json = tmp_path / "s.json"  # a pymatgen structure JSON is not taken for one
    plain_json.write_text(Structure.from_file(EXAMPLES[1]).to_json())
    assert CGCNNPredictor.from_pretrained("formation_energy", members=1).predict(str(plain_json)).ids == [str(plain_json)]


@pytest.fixture(scope="module")
def twins_run(tmp_path_factory):
    """One tiny training run on 12 crystals given twice, the copies under new ids and written differently (round
    25: CIF text re-laid out; a 2x1x1 supercell; the atoms shuffled and written at 4 significant figures), with a
    target expression holding backticks: ``(folder, table, warning messages)``."""
    import warnings

    from cgcnn_ase.train.config_sections import SplitConfig
    from cgcnn_ase.train.trainer import train_from_config

    from .test_training import _crystals, tiny_config

    root = tmp_path_factory.mktemp("twins")
    crystals = _crystals()
    structures = [AseAtomsAdaptor.get_structure(a) for a in crystals]
    cifs = [str(CifWriter(s)) for s in structures]

    def copy(k: int) -> str:
        if k % 3 == 0:
            return " \n".join(cifs[k].splitlines())
        if k % 3 == 1:
            return str(CifWriter(structures[k] * (2, 1, 1)))
        order = np.random.default_rng(k).permutation(len(structures[k]))
        return str(CifWriter(Structure.from_sites([structures[k][i] for i in order]), significant_figures=4))

    vpa = [a.get_volume() / len(a) for a in crystals]
    table = pd.DataFrame({"material_id": [f"c{k:02d}" for k in range(12)] + [f"copy{k:02d}" for k in range(12)],
                          "vpa": vpa + vpa, "cif": cifs + [copy(k) for k in range(12)]})  # fmt: skip
    table.to_csv(root / "twins.csv", index=False)
    config = tiny_config(root / "twins.csv", root / "run", epochs=1, split=SplitConfig(train=0.5, val=0.25, test=0.25, seed=3))
    config.data.target = "`vpa` * 1000"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = train_from_config(config, progress=False)
    return folder, table, [str(w.message) for w in caught]


def test_training_says_when_test_crystals_are_copies_of_training_ones(twins_run):
    """23b: "300 perovskites plus the same 300 CIFs under new ids: 49 of the 60 test crystals have an identical
    structure in the training split, no warning, the card says 600 used"; "a given split.file is carded as
    'Random split with seed None'"; "a target with backticks breaks the card's markdown". The run warns, model.json
    and the card count the copies, a given split is carded as given and backticks are quoted."""
    import json

    from cgcnn_ase.models.cards import model_card

    folder, _, messages = twins_run
    split = json.loads((folder / "split.json").read_text())
    pairs = [(f"c{k:02d}", f"copy{k:02d}") for k in range(12)]
    in_train = {part: sum(1 for a, b in pairs for x, y in ((a, b), (b, a)) if x in split[part] and y in split["train"])
                for part in ("val", "test")}  # fmt: skip
    assert in_train["test"] and any(
        "12 crystal(s) appear under more than one id (24 rows, e.g. " in m and f"{in_train['test']} of the 6 test and "
        f"{in_train['val']} of the 6 validation crystals have the same crystal in the training split" in m
        for m in messages)  # fmt: skip
    document = json.loads((folder / "model.json").read_text())
    twins = document["metadata"]["dataset"]["duplicate_structures"]
    assert (twins["groups"], twins["rows"], twins["val_in_train"], twins["test_in_train"]) == (
        12, 24, in_train["val"], in_train["test"])  # fmt: skip
    card = (folder / "README.md").read_text()
    assert f"**{in_train['test']} test and {in_train['val']} validation crystals** also have their structure in the " \
        "training split, so the test metrics understate the error on new crystals\n- Elements in the training" in card
    assert "- Target: `` `vpa` * 1000 ``;" in card and "Random split with seed 3" in card
    document["metadata"]["split"]["given"] = "my/split.json"  # as a run with split.file records it
    assert "The split given in `my/split.json` (not drawn here); ids in `split.json`." in model_card(document, loss_name="mse")


def test_evaluate_finds_training_crystals_under_new_ids(twins_run, tmp_path):
    """23b: "evaluate DATASET --split all on the training file shuffled and renamed X0...X599: no warning, while
    the original file warns '540 of the 600 rows ... by id'" (docs/models.md: evaluate warns when a dataset holds
    crystals a model trained on)."""
    import json
    import re
    import warnings

    from cgcnn_ase.analysis.evaluation import evaluate_model

    folder, table, _ = twins_run
    split = json.loads((folder / "split.json").read_text())
    part_of = {i: part for part in ("train", "val", "test") for i in split[part]}
    expected = {"train": 0, "val": 0}
    for k in range(12):  # each structure is held by c_k and copy_k; evaluate matches identical text only
        same_text = k % 3 == 0  # the re-laid copies; the supercells and shuffled copies are other text
        for row, other in ((f"c{k:02d}", f"copy{k:02d}"), (f"copy{k:02d}", f"c{k:02d}")):
            parts = {part_of.get(row), part_of.get(other) if same_text else None}
            seen = "train" if "train" in parts else "val" if "val" in parts else None
            if seen:
                expected[seen] += 1
    renamed = table.sample(frac=1, random_state=0).assign(material_id=[f"X{k}" for k in range(24)])
    renamed.to_csv(tmp_path / "renamed.csv", index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate_model(folder, str(tmp_path / "renamed.csv"), split="all", workers=1)
    found = [re.search(r"(\d+) of the 24 rows scored .* \((\d+) of its train split\) or selected on \((\d+) of its val "
                       r"split\), by id or identical structure", str(w.message)) for w in caught]  # fmt: skip
    match = next(m for m in found if m)
    assert [int(g) for g in match.groups()] == [expected["train"] + expected["val"], expected["train"], expected["val"]]


def test_settings_a_run_does_not_use_are_named(tmp_path):
    """23b: "schedule.milestones with cosine, optim.momentum with adamw, positive_class for a regression and a key
    given twice in the YAML file are silently ignored"; "--set 'data.filter=`gap gllbsc` > 0' fails without saying
    to quote"."""
    from cgcnn_ase.errors import ConfigError
    from cgcnn_ase.train.config import apply_overrides, load_config, read_config_file

    base = REPO / "configs" / "perovskite_formation_energy.yaml"
    with pytest.warns(UserWarning, match=r"schedule\.milestones \(\[2\]: schedule cosine does not use it, multistep "
                                         r"does\); optim\.momentum \(0\.5: adamw .*; positive_class"):  # fmt: skip
        load_config(base, ["schedule.name=cosine", "schedule.milestones=[2]", "optim.name=adamw",
                           "optim.momentum=0.5", "positive_class=metal"])  # fmt: skip
    twice = tmp_path / "twice.yaml"
    twice.write_text(base.read_text() + "\nproperty: something_else\n")
    with pytest.raises(ConfigError, match="the key 'property' is given twice"):
        read_config_file(twice)
    with pytest.raises(ConfigError, match=r"quoted in YAML: data\.filter=\"`gap gllbsc` > 0\""):
        apply_overrides({}, ["data.filter=`gap gllbsc` > 0"])


# -- round 24: an outsider tried to break the fixes above ------------------------------------------------------------


def test_round24_inputs_and_configs(tmp_path):
    """24: YAML merge keys (<<: *anchor) were refused by the duplicate-key check; bytearray and memoryview were
    iterated byte by byte; a ComputedStructureEntry's as_dict() and a JSON list of MP documents given as text were
    refused; Dask given one loaded predictor and featurize_dask given a pandas frame or a dask Series failed bare."""
    import json

    import dask.dataframe as dd
    from pymatgen.core import Structure
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    from cgcnn_ase.errors import ConfigError, StreamError
    from cgcnn_ase.integrations.dask import featurize_dask, predict_dataframe, predict_files
    from cgcnn_ase.integrations.matminer import CGCNNFeaturizer
    from cgcnn_ase.train.config import read_config_file

    merged = tmp_path / "merge.yaml"
    merged.write_text("metadata: {optim_defaults: &common {name: adamw, lr: 0.001}}\n"
                      "optim: {<<: *common, weight_decay: 0.01}\n")  # fmt: skip
    assert read_config_file(merged)["optim"] == {"name": "adamw", "lr": 0.001, "weight_decay": 0.01}
    merged.write_text(merged.read_text() + "optim: {}\n")
    with pytest.raises(ConfigError, match="the key 'optim' is given twice"):
        read_config_file(merged)

    cif = (REPO / "examples" / "SrTiO3.cif").read_bytes()
    structure = Structure.from_file(EXAMPLES[1])
    document = {"material_id": "mp-5229", "structure": structure.as_dict()}
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1)
    result = predictor.predict([bytearray(cif), memoryview(cif), ComputedStructureEntry(structure, -40.0).as_dict(),
                                json.dumps([document, document])], errors="collect")  # fmt: skip
    assert result.ids == ["input 0", "input 1", "input 2", "input 3@0", "input 3@1"] and result.errors == [None] * 5
    np.testing.assert_allclose(result.values, result.values[0], rtol=1e-6)
    from click.testing import CliRunner

    from cgcnn_ase.cli import main

    piped = CliRunner().invoke(main, ["predict", "-", "-m", "formation_energy"], input=json.dumps([document, document]))
    assert piped.exit_code == 0 and _csv(piped)["id"].tolist() == ["stdin@0", "stdin@1"]

    table = dd.from_pandas(pd.DataFrame({"cif": [cif.decode()]}), npartitions=1)
    for call in (lambda: predict_dataframe(table, predictor), lambda: predict_files(str(REPO / "examples"), predictor)):
        with pytest.raises(StreamError, match="not CGCNNPredictor objects"):
            call()
    featurizer = CGCNNFeaturizer("formation_energy")
    for frame, match in ((table.compute(), "takes a dask DataFrame"), (table["cif"], "takes a dask DataFrame"),
                         (table, "no column 'structure'")):  # fmt: skip
        with pytest.raises(StreamError, match=match):
            featurize_dask(frame, featurizer, "structure" if match.startswith("no column") else "cif")


def test_round24_messages_and_warnings(tmp_path, monkeypatch):
    """24: out-of-domain warnings repeated per model and chunk (25 lines for 300 crystals); a correct rhombohedral
    R -3 m CIF and '+x,+y,+z' beside 'x,y,z' were warned about; Ctrl-C while torch was half imported crashed in the
    resume hint's imports; resuming an older version's --model output blamed the options."""
    import sys
    import warnings

    from cgcnn_ase.cli import _resume_hint
    from cgcnn_ase.errors import CifSymmetryWarning, StreamError
    from cgcnn_ase.inference.writers import CSVChunkWriter
    from cgcnn_ase.io.reader import read_records

    folder = tmp_path / "far"
    folder.mkdir()
    for k, (symbol, kind, a) in enumerate((("Si", "diamond", 5.43), ("Ge", "diamond", 5.66), ("C", "diamond", 3.57))):
        bulk(symbol, kind, a=a).write(str(folder / f"{k}.cif"))
    run = _cli("predict", str(folder), "-m", "perovskite_site_energy", "-m", "perovskite_formation_energy",
               "--chunk-size", "1", "-o", str(tmp_path / "far.csv"))  # fmt: skip
    lines = [line for line in run.stderr.splitlines() if "every validation crystal" in line]
    assert run.exit_code == 0 and len(lines) == 2, run.stderr  # the first, and one sum for the run
    assert lines[1].startswith("warning: in all, structures farther") and "perovskite_site_energy" in lines[1]

    ops = ["x,y,z", "z,x,y", "y,z,x", "-y,-x,-z", "-x,-z,-y", "-z,-y,-x", "-x,-y,-z", "-z,-x,-y", "-y,-z,-x", "y,x,z",
           "x,z,y", "z,y,x"]  # fmt: skip
    bismuth = ("data_Bi\n_symmetry_space_group_name_H-M 'R -3 m'\n" + "".join(
        f"_cell_length_{x} 4.746\n" for x in "abc") + "".join(f"_cell_angle_{x} 57.23\n" for x in ("alpha", "beta", "gamma"))
        + "loop_\n_symmetry_equiv_pos_as_xyz\n{ops}\nloop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n"
        "_atom_site_fract_y\n_atom_site_fract_z\nBi1 Bi 0.2366 0.2366 0.2366\n")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", CifSymmetryWarning)
        assert len(read_records(bismuth.format(ops="\n".join(ops)))[0]) == 2
        assert len(read_records(bismuth.format(ops="\n".join(["+x,+y,+z", *ops])))[0]) == 2
    with pytest.warns(CifSymmetryWarning, match="'R -3 m' has 12 or 36 symmetry operations but the CIF lists 1"):
        read_records(bismuth.format(ops="x,y,z"))

    output = tmp_path / "prev.csv"
    output.write_text("id,x\n")
    monkeypatch.delitem(sys.modules, "cgcnn_ase.inference.streaming")
    assert "was not changed" in _resume_hint("predict", {"output": str(output)})
    assert "cgcnn_ase.inference.streaming" not in sys.modules  # nothing imported while interrupted

    old = ["id", "formation_energy (eV/atom)", "formation_energy_std (eV/atom)", "error"]
    (tmp_path / "old.csv").write_text(",".join(old) + "\nx,1,0.1,\n")
    new = [*old[:3], "formation_energy_uncertainty (eV/atom)", old[3]]
    with pytest.raises(StreamError, match="earlier version of cgcnn-ase, without the per-crystal uncertainty columns"):
        CSVChunkWriter(tmp_path / "old.csv", new, append=True)


def test_streaming_sums_out_of_domain_warnings_for_the_run(tmp_path):
    """Round 24, in Python: predict_stream warned once per model and chunk (a million-crystal screen: a thousand
    warnings per model). The first passes, later chunks' are summed in one warning per model at the end; other
    warnings pass as they came."""
    import warnings

    from cgcnn_ase import OutOfDomainWarning
    from cgcnn_ase.inference.streaming import predict_stream

    files = []
    for k, (symbol, kind, a) in enumerate((("Si", "diamond", 5.43), ("Ge", "diamond", 5.66), ("C", "diamond", 3.57))):
        path = tmp_path / f"{k}.cif"
        bulk(symbol, kind, a=a).write(str(path))
        files.append(str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict_stream(files, ["perovskite_site_energy"], str(tmp_path / "out.csv"), chunk_size=1)
    far = [str(w.message) for w in caught if issubclass(w.category, OutOfDomainWarning)]
    assert len(far) == 2 and "1 of 1 predicted structure(s) lie farther" in far[0]
    assert far[1].startswith("model 'perovskite_site_energy-castelli_cmr-v1': 2 more predicted structure(s), in later")
    assert any("did not occur in its training data" in str(w.message) for w in caught)  # Ge, C: passed on as they came

"""Round 25 of outside testing: a user following the docs on a fresh clone (25a), an ASE user holding the
calculator to ASE's conventions (25b), a solid-state chemist checking site energies (25c); and crystals written
differently found as one crystal by their graphs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase.build import bulk
from pymatgen.io.cif import CifWriter

from cgcnn_ase import CGCNNCalculator

from .conftest import REPO


@pytest.fixture(scope="module")
def calc_fe():
    return CGCNNCalculator("formation_energy")


def _graphs(items):
    """The :class:`~cgcnn_ase.train.cache.GraphStore` of ``items`` (Atoms or Structures), default graph settings."""
    from cgcnn_ase.graph.config import GraphConfig
    from cgcnn_ase.graph.neighbours import build_graph
    from cgcnn_ase.io.reader import iter_records
    from cgcnn_ase.train.cache import GraphStore

    graphs = [build_graph(record, GraphConfig(), on_sparse="ignore") for _, record in iter_records(items)]
    return GraphStore.from_graphs([str(k) for k in range(len(graphs))], graphs)


def test_one_crystal_written_differently_is_one_graph():
    """Copies written another way (other cell setting, supercell, atom order, rotation, translation, coordinates at
    4 decimals) are found as one crystal; a 0.5% strain, another element and another structure are not."""
    from ase.build import make_supercell

    from cgcnn_ase.graph.identity import same_graph_groups

    nacl = bulk("NaCl", "rocksalt", a=5.64)
    conv = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    shuffled = conv[np.random.default_rng(0).permutation(len(conv))]
    moved = conv.copy()
    moved.rotate(33, "x", rotate_cell=True)
    moved.translate([0.3, -1.1, 2.0])
    rounded = conv.copy()
    rounded.set_scaled_positions(np.round(conv.get_scaled_positions(), 4) + 1e-4)
    items = [nacl, conv, make_supercell(nacl, [[1, 1, 0], [0, 2, 1], [0, 0, 1]]), shuffled, moved, rounded,
             bulk("NaCl", "rocksalt", a=5.64 * 1.005), bulk("KCl", "rocksalt", a=5.64), bulk("NaCl", "zincblende", a=5.64),
             bulk("Si", "diamond", a=5.43), bulk("Si", "diamond", a=5.43, cubic=True)]  # fmt: skip
    store = _graphs(items)
    groups = same_graph_groups(store.numbers, store.atom_offsets, store.centers, store.neighbors, store.distances,
                               store.edge_offsets)  # fmt: skip
    assert groups == [[0, 1, 2, 3, 4, 5], [9, 10]]


def test_calculator_mixing_adds_values_only(calc_fe):
    """25b: "SumCalculator of two formation-energy calculators: formation_energy_std 0.1298 (2 x 0.0649),
    domain percentile 33.06 (2 x 16.53)". The spreads are left out of implemented_properties, so ASE's mixers
    combine values only; get_property still gives them."""
    from ase.calculators.mixing import SumCalculator

    other = CGCNNCalculator("formation_energy", members=1)
    atoms = bulk("NaCl", "rocksalt", a=5.64)
    atoms.calc = SumCalculator([calc_fe, other])
    total = atoms.get_potential_energy()
    assert total == pytest.approx(calc_fe.get_property("energy", atoms) + other.get_property("energy", atoms))
    assert not any(k.endswith(("_std", "_domain_percentile", "_uncertainty")) for k in atoms.calc.results)
    assert "formation_energy_std" in calc_fe.result_names and "formation_energy_std" not in calc_fe.implemented_properties
    assert calc_fe.get_property("formation_energy_std", atoms) == calc_fe.results["formation_energy_std"] > 0
    assert 0 <= calc_fe.get_property("formation_energy_domain_percentile", atoms) <= 100


def test_calculator_gives_no_value_of_another_crystal(calc_fe):
    """25b: "get_property('unseen_elements', nacl, allow_calculation=False) after an Am crystal gives 'Am'"; a
    spread alike. ASE's convention: None for a structure other than the last calculated."""
    americium = bulk("NaCl", "rocksalt", a=5.64)
    americium.numbers[1] = 95
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc_fe.get_potential_energy(americium)
    assert calc_fe.get_property("unseen_elements", americium, allow_calculation=False) == "Am"
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    for name in ("unseen_elements", "formation_energy_std", "formation_energy"):
        assert calc_fe.get_property(name, nacl, allow_calculation=False) is None
    assert calc_fe.get_property("unseen_elements", nacl) is None and calc_fe.get_property("formation_energy", nacl) < 0


def test_calculator_refuses_properties_asked_of_calculate(calc_fe):
    """25b: "calc.calculate(atoms, properties=['forces']) succeeds silently, so atoms.get_properties(['forces'])
    ends in ASE's bare PropertyNotPresent"."""
    from ase.calculators.calculator import PropertyNotImplementedError

    atoms = bulk("NaCl", "rocksalt", a=5.64)
    with pytest.raises(PropertyNotImplementedError, match="not a potential energy surface"):
        calc_fe.calculate(atoms, properties=["forces"])
    atoms.calc = calc_fe
    with pytest.raises(PropertyNotImplementedError, match="not a potential energy surface"):
        atoms.get_properties(["energy", "forces"])
    with pytest.raises(PropertyNotImplementedError, match="did you mean 'formation_energy_std'"):
        calc_fe.calculate(atoms, properties=["formation_energy_sdt"])


def test_stored_values_do_not_outlive_a_failed_calculation():
    """25b: "store_in_info values go stale: NaCl's value stays on the Atoms after it became an overlapping FNa
    whose calculation failed, and travels into the written file"; other keys of the info are kept."""
    from cgcnn_ase.errors import InvalidStructureError

    calc = CGCNNCalculator("formation_energy", members=1, store_in_info=True)
    atoms = bulk("NaCl", "rocksalt", a=5.64)
    atoms.info["source"] = "mine"
    atoms.calc = calc
    atoms.get_potential_energy()
    assert atoms.info["cgcnn_formation_energy"] < 0 and "cgcnn_energies" in atoms.arrays
    atoms.numbers[1] = 9
    atoms.positions[1] = atoms.positions[0] + 0.1
    with pytest.raises(InvalidStructureError):
        atoms.get_potential_energy()
    assert "cgcnn_formation_energy" not in atoms.info and "cgcnn_energies" not in atoms.arrays
    assert atoms.info["source"] == "mine"


def test_calculator_warns_once_over_a_volume_scan():
    """25b: "in a volume scan every step warns again: the messages hold the distance (0.707, 0.714 Å ...)"."""
    calc = CGCNNCalculator("formation_energy", members=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for a in (2.40, 2.42, 2.44):  # NaCl squeezed: its atoms closer than 0.6 x their covalent radii
            atoms = bulk("NaCl", "rocksalt", a=a)
            atoms.calc = calc
            atoms.get_potential_energy()
    close = [str(w.message) for w in caught if "sum of their covalent radii" in str(w.message)]
    assert len(close) == 1, close


def test_site_energies_of_non_perovskites_are_flagged(tmp_path):
    """25c: "`cgcnn-ase sites` on Si, rutile-like TiO2 and GaAs with perovskite_site_energy exits 0 with site values on
    the Castelli scale and no warning; predict warns 'domain percentile 100' for the same Si". The site tables carry
    the ensemble's domain percentile, member 0 keeps its out-of-domain warning, and a perovskite model warns about
    crystals without A and B sites."""
    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.analysis.site_members import member_site_contributions
    from cgcnn_ase.analysis.sites import site_contributions
    from cgcnn_ase.errors import OutOfDomainWarning

    from .conftest import perovskite

    silicon, salt, srtio3 = bulk("Si", "diamond", a=5.43), bulk("NaCl", "rocksalt", a=5.64), perovskite()
    ensemble = CGCNNPredictor.from_pretrained("perovskite_site_energy")
    expected = ensemble.predict([silicon, srtio3]).domain_percentile
    with pytest.warns(OutOfDomainWarning) as caught:
        stacked = member_site_contributions(ensemble, {"Si": silicon, "SrTiO3": srtio3}, on_sparse="ignore")
    texts = [str(w.message) for w in caught]
    assert any("domain percentile 100; e.g. Si" in t for t in texts), texts
    assert any("1 of 2 structure(s) have no A and B perovskite sites (Si)" in t for t in texts), texts
    by_structure = stacked.groupby("structure", sort=False)["domain_percentile"].agg(["min", "max"])
    np.testing.assert_allclose(by_structure["min"], expected, rtol=1e-6)
    np.testing.assert_allclose(by_structure["max"], expected, rtol=1e-6)
    assert set(stacked.loc[stacked["structure"] == "SrTiO3", "role"]) == {"A", "B", "X"}
    with warnings.catch_warnings():  # a model of other crystals does not speak of perovskites
        warnings.simplefilter("error", OutOfDomainWarning)
        assert site_contributions("formation_energy", [salt], allow_mean_pooled=True, roles="auto").attrs["kind"] == \
            "first-order"  # fmt: skip


def test_unchecked_base_overlap_says_why(tmp_path, monkeypatch):
    """25a: a fine-tune card said "not checked (the base model records no split, or ...)" of a base model that ships
    its split: the reason was that the run's ids are row numbers and the base's data are not found here."""
    import shutil
    import types

    from cgcnn_ase.data.datasets import DatasetTable
    from cgcnn_ase.data.splits import Split
    from cgcnn_ase.models.cards import model_card
    from cgcnn_ase.models.folder import read_model_json
    from cgcnn_ase.train.finetune import base_overlap

    from .conftest import REPO

    shipped = REPO / "pretrained_models" / "formation_energy-mp_cgcnn46k-v3"
    folder = tmp_path / "a" / "b" / "base"  # its config's data path is found neither from here nor from its grandparent
    folder.mkdir(parents=True)
    for name in ("split.json", "config.yaml", "model.json"):
        shutil.copy(shipped / name, folder / name)
    monkeypatch.chdir(tmp_path)
    table = DatasetTable(spec=None, ids=["0", "1", "2"], raw_targets=np.zeros(3), keys=["k0", "k1", "k2"], kind="cif_text",
                         sources=["x", "y", "z"], n_rows=3, dropped={}, ids_are_rows=True)  # fmt: skip
    overlap = base_overlap(types.SimpleNamespace(kind="model folder", path=folder), table, Split(["0"], ["1"], ["2"]))
    assert overlap["checked"] == "nothing" and "ids are row numbers" in overlap["why"]
    none = base_overlap(types.SimpleNamespace(kind="model folder", path=tmp_path), table, Split(["0"], ["1"], ["2"]))
    assert none["why"] == "the base model records no split"
    document = read_model_json(shipped.parent / "perovskite_formation_energy-castelli_cmr-v1")
    finetune = read_model_json(shipped.parent / "shear_modulus-mp_elastic3k-v3")["metadata"]["finetune"]
    document["metadata"]["finetune"] = {**finetune, "base_overlap": overlap}
    card = model_card(document, loss_name="mse")
    assert f"- Test crystals the base model had seen: not checked ({overlap['why']})" in card


def test_a_tiny_cell_is_not_called_flat():
    """25b: "predict(bulk('Cu', a=0.5)) says 'nearly flat, 0.289 Å thick': the cell is a well-shaped fcc cell, only
    too small"."""
    from ase import Atoms

    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.errors import InvalidStructureError

    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1)
    with pytest.raises(InvalidStructureError, match=r"too small \(lattice vectors 0.354, 0.354, 0.354 Å; a cell in nm"):
        predictor.predict(bulk("Cu", "fcc", a=0.5))
    with pytest.raises(InvalidStructureError, match="nearly flat: 0.01 Å thick"):
        predictor.predict(Atoms("Cu", cell=[[5, 0, 0], [0, 5, 0], [0, 0, 0.01]], pbc=True))


def test_ase_containers_and_file_at_index_are_inputs(tmp_path):
    """25b: "read('multi.extxyz@1'), read('multi.db@id=2'), read('multi.db@formula=MgO') work in ASE, but predict
    and the CLI say 'no such file', although the package's own ids are written so"; "Trajectory(...), connect(...),
    db.get(1) are refused as 'unsupported input type'"."""
    from ase.db import connect
    from ase.io import write
    from ase.io.trajectory import Trajectory

    from cgcnn_ase import CGCNNPredictor

    from .test_user_reports import _cli
    from .test_user_reports_r23 import _csv

    crystals = [bulk("NaCl", "rocksalt", a=5.64), bulk("Cu", "fcc", a=3.61), bulk("MgO", "rocksalt", a=4.21)]
    frames, trajectory, database = tmp_path / "multi.extxyz", tmp_path / "multi.traj", tmp_path / "multi.db"
    write(str(frames), crystals)
    write(str(trajectory), crystals)
    with connect(str(database)) as db:
        for atoms in crystals:
            db.write(atoms)
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1)
    whole = predictor.predict(str(frames))
    value = dict(zip(whole.ids, whole.values))
    one = predictor.predict(f"{frames}@1")
    assert one.ids == [f"{frames}@1"] and one.values[0] == pytest.approx(value[f"{frames}@1"], abs=1e-6)
    assert predictor.predict(f"{frames}@-1").values[0] == pytest.approx(value[f"{frames}@2"], abs=1e-6)
    assert predictor.predict(f"{frames}@0:2").ids == [f"{frames}@0", f"{frames}@1"]
    assert predictor.predict(f"{database}@formula=MgO").ids == [f"{database}@id=3"]
    assert predictor.predict(f"{database}@id=2").values[0] == pytest.approx(value[f"{frames}@1"], abs=1e-6)
    missing = predictor.predict(f"{frames}@7", errors="collect")
    assert "holds no structure '7' (it holds 3; give @k or @a:b" in missing.errors[0]
    assert predictor.predict(str(tmp_path / "nofile.cif@1"), errors="collect").errors[0].endswith("no such file")
    run = _csv(_cli("predict", f"{frames}@1", f"{database}@formula=MgO", "-m", "formation_energy"))
    assert run["id"].tolist() == [f"{frames}@1", f"{database}@id=3"]
    assert predictor.predict(Trajectory(str(trajectory))).ids == [f"{trajectory}@{k}" for k in range(3)]
    with connect(str(database)) as db:
        assert predictor.predict(db).ids == [f"{database}@id={k}" for k in (1, 2, 3)]
        row = predictor.predict(db.get(2))
        assert row.values[0] == pytest.approx(value[f"{frames}@1"], abs=1e-6)


def test_the_table_marks_a_model_at_the_domain_edge(tmp_path):
    """25a: "the terminal table's dom% (the median over the 7 models) shows 10 for rocksalt LaN, which
    bulk_modulus puts at domain percentile 100"."""
    import re

    from pymatgen.core import Lattice, Structure

    from .test_user_reports import _cli

    path = tmp_path / "LaN.cif"
    Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.3), ["La", "N"], [[0, 0, 0], [0.5] * 3]).to(filename=str(path))
    run = _cli("predict", str(path), "examples/NaCl.POSCAR", "--format", "table")
    assert run.exit_code == 0, run.output
    rows = {line.split()[0]: line for line in run.stdout.splitlines() if line.startswith(("...", str(tmp_path), "LaN", "examples"))}
    lan = next(line for key, line in rows.items() if "LaN" in key)
    nacl = next(line for key, line in rows.items() if "NaCl" in key)
    assert re.search(r"\s\d{1,2}!\s", lan) and not re.search(r"\d!", nacl), run.stdout
    assert "! marks a crystal some model puts beyond all its validation crystals" in " ".join(run.stdout.split())


def test_the_command_runs_part_of_an_ensemble(tmp_path):
    """The README offers members=1 "when speed matters more than the error bar" in Python; a screening run from
    the command line had no way to ask for it (round 25)."""
    from cgcnn_ase import CGCNNPredictor

    from .test_user_reports import _cli
    from .test_user_reports_r23 import _csv

    files = ["examples/NaCl.POSCAR", "examples/SrTiO3.cif"]
    one = _csv(_cli("predict", *files, "-m", "formation_energy", "--members", "1"))
    api = CGCNNPredictor.from_pretrained("formation_energy", members=1).predict(files)
    np.testing.assert_allclose(one["formation_energy (eV/atom)"], api.values, rtol=1e-6)
    assert not any(c.startswith("formation_energy_std") for c in one.columns)
    default = _csv(_cli("predict", *files, "--members", "1"))
    assert "formation_energy_std (eV/atom)" not in default.columns
    np.testing.assert_allclose(default["formation_energy (eV/atom)"], api.values, rtol=1e-6)
    out = tmp_path / "run.csv"
    assert _cli("predict", files[0], "-m", "formation_energy", "--members", "2", "-o", str(out)).exit_code == 0
    again = _cli("predict", *files, "-m", "formation_energy", "--members", "3", "-o", str(out), "--resume")
    assert again.exit_code == 2 and "members: [2] then, [3] now" in again.output
    refused = _cli("predict", files[0], "--members", "1", "--coverage", "0.9")
    assert refused.exit_code == 2 and "runs 1 of its 5 members" in refused.output


def test_pymatgen_formats_entry_ids_and_series_labels(tmp_path):
    """26b: "pymatgen-written .cssr, .yaml and PWmat .config files are refused as unknown format although the
    README says anything ASE or pymatgen reads"; "a list of ComputedStructureEntry or MP documents comes back as
    input 0, input 1"; "a Series indexed 101, 7 gives an id column '101', '7': df.join(out.set_index('id')) is
    all NaN"."""
    import pandas as pd
    from pymatgen.core import Lattice, Structure
    from pymatgen.entries.computed_entries import ComputedStructureEntry
    from pymatgen.io.pwmat import AtomConfig

    from cgcnn_ase import CGCNNPredictor

    salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    magnesia = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5] * 3])
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1)
    expected = predictor.predict(salt).values[0]
    salt.to(filename=str(tmp_path / "salt.cssr"))
    salt.to(filename=str(tmp_path / "salt.yaml"))
    AtomConfig(salt).write_file(str(tmp_path / "atom.config"))
    files = [str(tmp_path / name) for name in ("salt.cssr", "salt.yaml", "atom.config")]
    result = predictor.predict(files, errors="collect")
    assert result.errors == [None] * 3 and np.allclose(result.values, expected, atol=1e-6)
    (tmp_path / "junk.xyzq").write_text("hello\nworld\n")
    assert "unknown format" in predictor.predict(str(tmp_path / "junk.xyzq"), errors="collect").errors[0]

    entries = [ComputedStructureEntry(salt, -1.0, entry_id="mp-22862"), {"material_id": "mp-1265", "structure": magnesia},
               salt]  # fmt: skip
    assert predictor.predict(entries).ids == ["mp-22862", "mp-1265", "input 2"]

    frame = pd.DataFrame({"structure": [salt, magnesia]}, index=[101, 7])
    out = predictor.predict(frame["structure"]).to_dataframe()
    assert out["id"].tolist() == [101, 7]
    joined = frame.join(out.set_index("id"))["formation_energy"]
    assert joined.notna().all() and joined.loc[101] == pytest.approx(expected, abs=1e-6)


def test_a_mapping_of_ids_and_a_computed_entry():
    """26b: "predict({'p': s1, 'c': s2}) says 'input 0: unsupported input type dict' (site_contributions takes such
    a mapping)"; "a ComputedEntry (no structure) gets the generic unsupported-type message"."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.entries.computed_entries import ComputedEntry

    from cgcnn_ase import CGCNNPredictor

    salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1)
    result = predictor.predict({"p": salt, "c": salt.copy()})
    assert result.ids == ["p", "c"] and result.values[0] == pytest.approx(result.values[1], abs=1e-7)
    assert predictor.predict(salt.as_dict()).ids == ["input 0"]  # one structure dict stays one structure
    message = predictor.predict([ComputedEntry("NaCl", -1.0)], errors="collect").errors[0]
    assert "a ComputedEntry holds a composition and an energy, no structure; give a ComputedStructureEntry" in message


def test_missing_optional_packages_name_their_extra():
    """26a: "without matminer, CGCNNFeaturizer raises a raw ModuleNotFoundError and `cgcnn-ase featurize` calls it
    an internal error to report; without dask, the same with no hint of the [scale] extra"."""
    import subprocess
    import sys

    script = """
import sys
sys.modules['matminer'] = None
sys.modules['dask'] = None
for statement in ('from cgcnn_ase import CGCNNFeaturizer', 'import cgcnn_ase.integrations.dask'):
    try:
        exec(statement)
    except Exception as exc:
        print(type(exc).__name__, exc)
from cgcnn_ase.cli import main
sys.argv = ['cgcnn-ase', 'featurize', 'examples/NaCl.POSCAR', '-o', '/tmp/never.csv']
main()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, cwd=REPO)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("MissingDependencyError") and "pip install 'cgcnn-ase[matminer]'" in lines[0], done
    assert lines[1].startswith("MissingDependencyError") and "pip install 'cgcnn-ase[scale]'" in lines[1], done
    assert done.returncode == 2 and "needs matminer: pip install 'cgcnn-ase[matminer]'" in done.stderr, done.stderr


def test_hostile_structure_files_get_their_own_errors(tmp_path):
    """26c: "a VASP 4 POSCAR whose comment is 'POSCAR' is read as phosphorus"; "'?' or '.' as a CIF type symbol drops
    the site, 'Va' is read as vanadium"; "a 2-atom extxyz declaring 999999999999 atoms hangs; a 96-byte POSCAR
    declaring 10^9 atoms takes 23.6 GB"; "one damaged .gz or .xz, or a CIF name with non-UTF-8 bytes, ends the whole
    run (exit 4)"; "a CIF with a UTF-8 byte-order mark is refused"."""
    import lzma
    import os

    from cgcnn_ase import CGCNNPredictor

    from .test_user_reports import _cli

    cif = (REPO / "examples" / "SrTiO3.cif").read_bytes()
    body = "1.0\n0 2.715 2.715\n2.715 0 2.715\n2.715 2.715 0\n2\nDirect\n0 0 0\n0.25 0.25 0.25\n"
    (tmp_path / "POSCAR_word").write_text("POSCAR\n" + body)
    (tmp_path / "POSCAR_symbol").write_text("Si\n" + body)
    site = "Cl4 Cl 0.5 0.5 0.5\n"
    salt = ("data_NaCl\n" + "".join(f"_cell_length_{x} 5.64\n" for x in "abc")
            + "".join(f"_cell_angle_{x} 90\n" for x in ("alpha", "beta", "gamma"))
            + "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
            + "Na1 Na 0 0 0\nNa2 Na 0 0.5 0.5\nNa3 Na 0.5 0 0.5\nNa4 Na 0.5 0.5 0\nCl1 Cl 0.5 0 0\nCl2 Cl 0 0.5 0\n"
            + "Cl3 Cl 0 0 0.5\n" + site)  # fmt: skip
    for name, symbol in (("unknown", "?"), ("blank", "."), ("vacancy", "Va")):
        (tmp_path / f"{name}.cif").write_text(salt.replace(site, f"Cl4 {symbol} 0.5 0.5 0.5\n"))
    (tmp_path / "bomb.extxyz").write_text('999999999999\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3 '
                                          'pbc="T T T"\nNa 0 0 0\nCl 2.5 2.5 2.5\n')  # fmt: skip
    (tmp_path / "POSCAR_bomb").write_text("NaCl\n1.0\n5 0 0\n0 5 0\n0 0 5\nNa Cl\n1000000000 1\nDirect\n0 0 0\n0.5 0.5 0.5\n")
    (tmp_path / "damaged.cif.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    packed = lzma.compress(cif)
    (tmp_path / "damaged.cif.xz").write_bytes(packed[: len(packed) // 2] + b"xx" + packed[len(packed) // 2 + 2 :])
    with open(os.path.join(os.fsencode(tmp_path), b"name_\xff\xfe.cif"), "wb") as f:
        f.write(cif)
    (tmp_path / "bom.cif").write_bytes(b"\xef\xbb\xbf" + cif)

    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1)
    reference = predictor.predict(str(REPO / "examples" / "SrTiO3.cif")).values[0]
    expected = {"POSCAR_word": "a VASP 4 POSCAR (no species line above the counts '2') whose comment line 'POSCAR'",
                "unknown.cif": "site Cl4 has no element (_atom_site_type_symbol is '?')",
                "blank.cif": "site Cl4 has no element (_atom_site_type_symbol is '.')",
                "vacancy.cif": "site Cl4 is a vacancy ('Va')",
                "bomb.extxyz": "its header declares 999999999999 atoms, more than its",
                "POSCAR_bomb": "its header declares 1000000001 atoms",
                "damaged.cif.gz": "EOFError", "damaged.cif.xz": "LZMAError"}  # fmt: skip
    for name, message in expected.items():
        error = predictor.predict(str(tmp_path / name), errors="collect").errors[0]
        assert error is not None and message in error, (name, error)
    assert predictor.predict(str(tmp_path / "POSCAR_symbol")).values[0] == pytest.approx(
        predictor.predict(bulk("Si", "diamond", a=5.43)).values[0], abs=1e-6)  # fmt: skip
    for name in (b"name_\xff\xfe.cif", b"bom.cif"):
        path = os.fsdecode(os.path.join(os.fsencode(tmp_path), name))
        assert predictor.predict(path).values[0] == pytest.approx(reference, abs=1e-6)
    os.remove(os.path.join(os.fsencode(tmp_path), b"name_\xff\xfe.cif"))  # click's test runner writes strict UTF-8
    run = _cli("predict", str(tmp_path), "-m", "formation_energy", "--workers", "1")
    assert run.exit_code == 1 and "internal error" not in run.output  # every file its own row, the run finished
    assert run.stdout.count("\n") == 1 + 10 and "8 of 10 structures could not be predicted" in run.stderr, run.output


def test_cif_symmetry_that_cannot_be_applied_is_refused():
    """26c: "an operation 'q,-y,z', a space-group number 'abc', or 'P 1' with number 186 read the listed atoms as P1
    without a word (reliability.md: never read as P1)"; "'F d -3 m' with Si at (0,0,0) became 16 atoms (origin
    choice 2), while the number 227 alone and pymatgen gave diamond's 8"."""
    from cgcnn_ase.errors import CifSymmetryWarning, StructureReadError
    from cgcnn_ase.io.reader import read_records

    def cif(cell: str, symmetry: str, sites: str) -> str:
        lengths, angles = cell.split("|")
        return ("data_x\n" + "".join(f"_cell_length_{x} {v}\n" for x, v in zip("abc", lengths.split()))
                + "".join(f"_cell_angle_{x} {v}\n" for x, v in zip(("alpha", "beta", "gamma"), angles.split()))
                + symmetry + "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
                "_atom_site_fract_z\n" + sites)  # fmt: skip

    zno = ("3.25 3.25 5.2|90 90 120", "Zn1 Zn 0.3333333 0.6666667 0.0\nO1 O 0.3333333 0.6666667 0.38\n")
    for symmetry, message in (("loop_\n_symmetry_equiv_pos_as_xyz\nx,y,z\n-y,x-y,z\nq,-y,z\n", "operation 'q,-y,z'"),
                              ("_space_group_IT_number abc\n", "'abc', not a space-group number"),
                              ("_symmetry_space_group_name_H-M 'P 1'\n_space_group_IT_number 186\n",
                               "more than one space group ('P 1' and number(s) 1, 186)")):  # fmt: skip
        with pytest.raises(StructureReadError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_records(cif(zno[0], symmetry, zno[1]))
    assert len(read_records(cif(zno[0], "_space_group_IT_number 186\n", zno[1]))[0]) == 4  # wurtzite
    silicon = ("5.431 5.431 5.431|90 90 90", "Si1 Si 0 0 0\n")
    for symmetry in ("_symmetry_space_group_name_H-M 'F d -3 m'\n", "_space_group_IT_number 227\n"):
        with pytest.warns(CifSymmetryWarning, match="two origin choices and the CIF names neither"):
            assert len(read_records(cif(silicon[0], symmetry, silicon[1]))[0]) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error", CifSymmetryWarning)
        named = cif(silicon[0], "_symmetry_space_group_name_H-M 'F d -3 m:2'\n", "Si1 Si 0.125 0.125 0.125\n")
        assert len(read_records(named)[0]) == 8


def test_cif_formula_and_api_responses():
    """26c: "a CIF cut at a line break (6 of 8 atoms) is predicted, its _chemical_formula_sum 'Na4 Cl4' notwithstanding";
    "a Materials Project API response ({'data': [...], 'meta': ...}) is refused, though the docs speak of MP downloads"."""
    import json

    from pymatgen.core import Lattice, Structure

    from cgcnn_ase.errors import CifContentWarning
    from cgcnn_ase.io.reader import read_records

    salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    text = str(CifWriter(salt))
    assert "_chemical_formula_sum   'Na4 Cl4'" in text
    cut = "\n".join(text.rstrip().splitlines()[:-2]) + "\n"  # the last two atom lines gone
    with pytest.warns(CifContentWarning, match=r"the atoms read \(Na4 Cl2\) disagree with its _chemical_formula_sum "
                                               r"'Na4 Cl4'"):  # fmt: skip
        assert len(read_records(cut)[0]) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error", CifContentWarning)
        assert len(read_records(text)[0]) == 8
    response = json.dumps({"data": [{"material_id": "mp-22862", "structure": salt.as_dict()}], "meta": {"total_doc": 1}})
    assert len(read_records(response)) == 1


def test_polymorphs_and_strain_series_are_no_copies():
    """27: "same_graph_groups calls zincblende and wurtzite CdTe, fcc and hcp Cu, and a 0.01 Å strain series 'the
    same crystal', and training tells the user to drop them". Their graphs match (a network cannot tell them apart),
    but only the members that pymatgen's StructureMatcher also matches at tight tolerances are copies."""
    from ase.build import make_supercell

    from cgcnn_ase.graph.identity import same_crystal_groups, same_graph_groups
    from cgcnn_ase.io.reader import iter_records

    salt = bulk("NaCl", "rocksalt", a=5.64)
    rounded = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    rounded.set_scaled_positions(np.round(rounded.get_scaled_positions(), 4))
    items = [bulk("Cu", "fcc", a=3.61), bulk("Cu", "hcp", a=3.61 / 2**0.5), bulk("Cu", "fcc", a=3.615),
             bulk("ZnS", "zincblende", a=5.41), bulk("ZnS", "wurtzite", a=5.41 / 2**0.5),
             salt, make_supercell(salt, [[1, 1, 0], [0, 2, 1], [0, 0, 1]]), rounded]  # fmt: skip
    store = _graphs(items)
    graphs = same_graph_groups(store.numbers, store.atom_offsets, store.centers, store.neighbors, store.distances,
                               store.edge_offsets)  # fmt: skip
    assert [0, 1, 2] in graphs and [5, 6, 7] in graphs  # fcc/hcp and a 0.005 Å strain share a graph
    structures = [record.to_pymatgen() for _, record in iter_records(items)]
    assert same_crystal_groups(graphs, structures.__getitem__) == [[5, 6, 7]]


def test_round_27_holes_in_the_new_checks(tmp_path):
    """27: "a VASP 4 counts line '2 ! atoms' escapes the check (read as P2)"; "a quoted '?' type symbol still drops the
    site"; "ICSD's 'F d -3 m Z' (origin choice 2) is read in origin choice 1, 16 Si"; "--members 99 is ignored by the
    CLI while the API refuses it"; "Fe2O3 and Fe3O4 warnings share one key once numbers are blanked"."""
    import warnings as _warnings

    from cgcnn_ase.errors import CifSymmetryWarning, StructureReadError
    from cgcnn_ase.integrations.ase import _warning_key
    from cgcnn_ase.io.reader import read_records

    from .test_user_reports import _cli

    body = "1.0\n0 2.715 2.715\n2.715 0 2.715\n2.715 2.715 0\n2 ! atoms\nDirect\n0 0 0\n0.25 0.25 0.25\n"
    (tmp_path / "POSCAR").write_text("POSCAR\n" + body)
    with pytest.raises(StructureReadError, match="a VASP 4 POSCAR"):
        read_records(str(tmp_path / "POSCAR"))
    head = "data_x\n" + "".join(f"_cell_length_{x} 5.431\n" for x in "abc") + "".join(
        f"_cell_angle_{x} 90\n" for x in ("alpha", "beta", "gamma"))  # fmt: skip
    loop = "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
    with pytest.raises(StructureReadError, match="site Cl1 has no element"):
        read_records(head + loop + "Na1 Na 0 0 0\nCl1 '?' 0.5 0.5 0.5\n")
    with _warnings.catch_warnings():
        _warnings.simplefilter("error", CifSymmetryWarning)
        for symbol, site in (("F d -3 m Z", "0.125 0.125 0.125"), ("F d -3 m S", "0 0 0")):
            text = head + f"_symmetry_space_group_name_H-M '{symbol}'\n_symmetry_Int_Tables_number 227\n" + loop
            assert len(read_records(text + f"Si1 Si {site}\n")[0]) == 8
    run = _cli("predict", "examples/NaCl.POSCAR", "-m", "formation_energy", "--members", "99")
    assert run.exit_code == 2 and "is an ensemble of 5 members" in run.output
    keys = [_warning_key(_warnings.WarningMessage(f"Atoms({f}): atoms 0 and 1 are 1.2{k} Å apart", UserWarning, "x", 1))
            for k, f in enumerate(("Fe2O3", "Fe3O4"))]  # fmt: skip
    assert keys[0] != keys[1] and "1.2" not in keys[0][1]


def test_a_default_series_index_keeps_the_inputs_ids():
    """28: "for a Series of file paths on a default index, result.ids are the paths but to_dataframe()'s id column
    is 0, 1, 2: the paths are lost"."""
    import pandas as pd

    from cgcnn_ase import CGCNNPredictor

    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1)
    paths = ["examples/NaCl.POSCAR", "examples/SrTiO3.cif"]
    frame = predictor.predict(pd.Series(paths)).to_dataframe()
    assert frame["id"].tolist() == paths and frame.index.tolist() == [0, 1]
    assert predictor.predict(pd.Series(paths, index=[5, 9])).to_dataframe()["id"].tolist() == [5, 9]


def test_vacancy_labels_and_the_formula_check_of_the_pymatgen_reading():
    """27: "a CIF with the label Va1 and no type symbols is read as vanadium"; "with cif_reader='pymatgen' (models of
    the original neighbour policy) a CIF whose atoms disagree with its formula gives no CifContentWarning"."""
    from cgcnn_ase.errors import CifContentWarning, StructureReadError
    from cgcnn_ase.io.reader import read_records

    head = "data_x\n" + "".join(f"_cell_length_{x} 5.64\n" for x in "abc") + "".join(
        f"_cell_angle_{x} 90\n" for x in ("alpha", "beta", "gamma"))  # fmt: skip
    labels = "loop_\n_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
    with pytest.raises(StructureReadError, match="site Va1 is a vacancy by its label"):
        read_records(head + labels + "Na1 0 0 0\nVa1 0.5 0.5 0.5\n")
    assert len(read_records(head + labels + "Na1 0 0 0\nCl1 0.5 0.5 0.5\n")[0]) == 2
    typed = ("_chemical_formula_sum 'Na2 Cl1'\n_symmetry_space_group_name_H-M 'P 1'\nloop_\n_atom_site_label\n"
             "_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
             "Na1 Na 0 0 0\nCl1 Cl 0.5 0.5 0.5\n")  # fmt: skip
    for reader in ("gemmi", "pymatgen"):
        with pytest.warns(CifContentWarning, match=r"the atoms read \(Na1 Cl1\) disagree"):
            read_records(head + typed, cif_reader=reader)

"""Streaming prediction: lazy inputs, bounded chunks, CSV/Parquet outputs, exact resume, per-item errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from ase.build import bulk
from ase.io import write
from click.testing import CliRunner
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from cgcnn_ase.cli import EXIT_BAD_INPUT, EXIT_USAGE, main
from cgcnn_ase.errors import StructureReadError
from cgcnn_ase.inference.predictor import CGCNNPredictor
from cgcnn_ase.inference.streaming import StreamError, predict_stream, read_finished_ids
from cgcnn_ase.io import inputs as io_inputs
from cgcnn_ase.io.inputs import FinishedIds, iter_inputs

from .conftest import perovskite, rattled

COLUMN = "formation_energy (eV/atom)"
FLAGS = ("n_sparse", "bond_ratio", "vacuum_gap")  # the geometry checks after the model columns


def _crystals(n: int) -> list:
    """``n`` small rattled crystals of four kinds (no distance ties)."""
    kinds = [perovskite(), bulk("NaCl", "rocksalt", a=5.64), bulk("Si", "diamond", a=5.43), bulk("Cu", "fcc", a=3.6)]
    return [rattled(kinds[k % 4], stdev=0.03, seed=k) for k in range(n)]


def _cif(atoms) -> str:
    return str(CifWriter(AseAtomsAdaptor.get_structure(atoms)))


def _record_calls(monkeypatch, owner, name: str, record) -> list:
    """Wrap ``owner.<name>`` so that each call first appends ``record(*args, **kwargs)`` to the returned list."""
    calls, real = [], getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(record(*args, **kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


@pytest.fixture
def predictor(model_folder) -> CGCNNPredictor:
    return CGCNNPredictor.from_checkpoint(model_folder, device="cpu")


class CountingPredictor(CGCNNPredictor):
    """A predictor that records how many structures each ``predict`` call received."""

    def __init__(self, base: CGCNNPredictor, on_call=None) -> None:
        super().__init__(base.model, device="cpu")
        self.calls: list[int] = []
        self.on_call = on_call

    def predict(self, structures, **kwargs):
        structures = list(structures)
        self.calls.append(len(structures))
        if self.on_call is not None:
            self.on_call(len(structures))
        return super().predict(structures, **kwargs)


def _expected(predictor: CGCNNPredictor, atoms_list) -> np.ndarray:
    return predictor.predict(atoms_list, errors="collect").values


# -- lazy inputs ------------------------------------------------------------------------------


def test_directory_files_are_read_only_when_consumed(tmp_path, monkeypatch):
    for k, atoms in enumerate(_crystals(6)):
        write(tmp_path / f"c{k}.cif", atoms, format="cif")
    (tmp_path / ".hidden.cif").write_text("junk")
    reads = _record_calls(monkeypatch, io_inputs, "read_items", lambda path, *args, **kwargs: str(path))
    stream = iter_inputs([str(tmp_path)])
    assert reads == []  # nothing read before iteration
    first_two = [next(stream), next(stream)]
    assert reads == [str(tmp_path / "c0.cif"), str(tmp_path / "c1.cif")]
    assert [i for i, _ in first_two] == reads
    assert len(list(stream)) == 4 and len(reads) == 6  # hidden files are skipped


def test_globs_extxyz_frames_and_database_rows(tmp_path, predictor):
    atoms = _crystals(5)
    write(tmp_path / "many.extxyz", atoms[:3], format="extxyz")
    write(tmp_path / "one.extxyz", atoms[3], format="extxyz")
    import ase.db

    with ase.db.connect(str(tmp_path / "set.db")) as db:
        for a in atoms[3:]:
            db.write(a)
    items = list(iter_inputs([str(tmp_path / "*.extxyz"), str(tmp_path / "set.db")]))
    ids = [i for i, _ in items]
    many, one, dbp = (str(tmp_path / n) for n in ("many.extxyz", "one.extxyz", "set.db"))
    assert ids == [f"{many}@0", f"{many}@1", f"{many}@2", one, f"{dbp}@id=1", f"{dbp}@id=2"]
    # the same ids and values as the predictor's own reading of the same files
    direct = predictor.predict([many, one])
    assert direct.ids == ids[:4]
    got = predictor.predict([record for _, record in items]).values
    np.testing.assert_allclose(got, _expected(predictor, atoms[:4] + atoms[3:]), atol=1e-6)


def test_corrupt_frame_ends_the_file_but_earlier_frames_stand(tmp_path):
    path = tmp_path / "broken.extxyz"
    write(path, _crystals(2), format="extxyz")
    path.write_text(path.read_text() + "3\nnot an extxyz comment line\nSi 0 0\n")
    items = list(iter_inputs(str(path)))
    assert [type(r).__name__ for _, r in items] == ["StructureRecord", "StructureRecord", "StructureReadError"]
    assert items[2][0] == f"{path}@2" and "could not be read by ASE" in str(items[2][1])


def test_tables_with_cif_text_structure_json_and_paths(tmp_path, predictor):
    atoms = _crystals(4)
    write(tmp_path / "file.cif", atoms[3], format="cif")
    cells = [_cif(atoms[0]), json.dumps(AseAtomsAdaptor.get_structure(atoms[1]).as_dict()), _cif(atoms[2]),
             str(tmp_path / "file.cif")]  # fmt: skip
    frame = pd.DataFrame({"material_id": ["a", "b", "c", "d"], "structure": cells})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    expected = _expected(predictor, atoms)
    for name in ("t.csv", "t.parquet"):
        items = list(iter_inputs(str(tmp_path / name), column="structure", id_column="material_id", table_chunk_rows=3))
        assert [i for i, _ in items] == ["a", "b", "c", "d"]
        np.testing.assert_allclose(predictor.predict([r for _, r in items]).values, expected, atol=1e-6)
    rows = [i for i, _ in iter_inputs(str(tmp_path / "t.csv"), column="structure")]
    assert rows == [f"{tmp_path / 't.csv'}@{k}" for k in range(4)]  # no id column: FILE@ROW
    with pytest.raises(StreamError, match="no structure column 'cif'"):
        list(iter_inputs(str(tmp_path / "t.csv")))


def test_gemmi_and_pymatgen_read_cif_text_alike(predictor):
    atoms = _crystals(4)
    for a in atoms:
        text = _cif(a)
        fast = io_inputs.parse_cell(text, "x", cif_reader="gemmi")
        slow = io_inputs.parse_cell(text, "x", cif_reader="pymatgen")
        np.testing.assert_allclose(predictor.predict([fast]).values, predictor.predict([slow]).values, atol=1e-6)


# -- bounded memory ---------------------------------------------------------------------------


def test_streaming_loop_never_holds_more_than_one_chunk(predictor, tmp_path):
    atoms = _crystals(23)
    pulled = [0]
    written = [0]
    held: list[int] = []

    def source():
        for k, a in enumerate(atoms):
            pulled[0] += 1
            yield (f"s{k}", a)

    def on_call(n):
        held.append(pulled[0] - written[0])  # structures read but not yet written, at each model call

    counting = CountingPredictor(predictor, on_call=on_call)

    def on_chunk(result):
        written[0] += len(result.frame)

    out = tmp_path / "out.csv"
    summary = predict_stream(source(), [counting], out, chunk_size=5, batch_size=2, on_chunk=on_chunk)
    assert counting.calls == [5, 5, 5, 5, 3]  # one model call per chunk, never more than chunk_size structures
    assert max(held) <= 5
    assert summary.n_predicted == 23 and summary.n_chunks == 5
    assert not hasattr(summary, "frame")  # the rows are in the file, not in memory
    table = pd.read_csv(out)
    assert table["id"].tolist() == [f"s{k}" for k in range(23)]
    np.testing.assert_allclose(table[COLUMN], _expected(predictor, atoms), atol=1e-6)


def test_prediction_chunks_in_memory_are_the_streamed_rows(predictor, tmp_path):
    """``iter_prediction_chunks`` (docs/scale.md's in-memory pipeline) yields the rows ``predict_stream`` writes,
    one chunk at a time, reading lazily."""
    from cgcnn_ase.inference.streaming import iter_prediction_chunks
    from cgcnn_ase.io.inputs import iter_inputs

    atoms = _crystals(7)
    items = [(f"s{k}", a) for k, a in enumerate(atoms)]
    counting = CountingPredictor(predictor)
    chunks = list(iter_prediction_chunks(iter_inputs(items), [counting], chunk_size=3))
    assert counting.calls == [3, 3, 1] and [len(c.frame) for c in chunks] == [3, 3, 1]
    out = tmp_path / "out.csv"
    predict_stream(items, [predictor], out, chunk_size=3)
    streamed = pd.read_csv(out)
    joined = pd.concat([c.frame for c in chunks], ignore_index=True)
    assert joined["id"].tolist() == streamed["id"].tolist() == [f"s{k}" for k in range(7)]
    np.testing.assert_allclose(joined[COLUMN], streamed[COLUMN], rtol=0, atol=1e-12)


# -- outputs and resume -----------------------------------------------------------------------


class Interrupt(Exception):
    pass


def _mixed_folder(tmp_path):
    """Eight CIFs, a bad one, a CIF of two data blocks and an extxyz of two frames (13 structures or errors)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    atoms = _crystals(12)
    for k in range(8):
        (folder / f"a{k:02d}.cif").write_text(_cif(atoms[k]))
    (folder / "b_bad.cif").write_text("junk\n")
    (folder / "c_two.cif").write_text(_cif(atoms[8]) + "\n" + _cif(atoms[9]).replace("data_", "data_second_", 1))
    write(folder / "d_frames.extxyz", atoms[10:], format="extxyz")
    return folder


def test_one_model_reads_files_where_it_runs(predictor, tmp_path, monkeypatch):
    """With one model, structure files reach the predictor unread (its workers read them, overlapping
    the networks): the same ids, rows and errors as reading them first, the same bits with 1 and 2
    workers, and the structures of a two-block CIF each get their row."""
    import torch

    from cgcnn_ase.inference import parallel

    monkeypatch.setattr(parallel, "MIN_PARALLEL", 0)  # a pool even for this short list
    folder = _mixed_folder(tmp_path)
    deferred = list(iter_inputs(str(folder), defer_files=True))
    read_first = list(iter_inputs(str(folder)))
    assert [type(item).__name__ for _, item in deferred].count("str") == 10  # the CIFs; the frames are read
    assert len(read_first) == 13 and len(deferred) == 12
    kwargs = {"chunk_size": 5, "batch_size": 3}
    texts = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the bitwise promise is at one torch thread, as each worker runs
    read_here = _record_calls(monkeypatch, io_inputs, "read_records", lambda source, *args, **kw: str(source))
    try:
        for workers in (1, 2):
            out = tmp_path / f"w{workers}.csv"
            summary = predict_stream(str(folder), [predictor], out, workers=workers, **kwargs)
            assert summary.n_predicted == 12 and summary.n_failed == 1
            texts.append(out.read_text())
    finally:
        torch.set_num_threads(before)
    assert texts[0] == texts[1]  # bit for bit
    assert read_here == []  # no file was read by the input iterator: the predictor read them
    frame = pd.read_csv(tmp_path / "w1.csv")
    assert frame["id"].tolist() == [label for label, _ in read_first]
    two = str(folder / "c_two.cif")
    assert frame["id"].tolist()[9:11] == [f"{two}@0", f"{two}@1"]
    assert frame["error"].notna().tolist() == [k == 8 for k in range(13)]
    assert "b_bad.cif" in frame.loc[8, "error"]
    expected = predictor.predict([item for _, item in read_first], errors="collect").values
    np.testing.assert_allclose(frame[COLUMN], expected, atol=1e-6)
    # resume after a run that stopped between the two blocks of c_two.cif: only the second is added
    part = tmp_path / "part.csv"
    lines = texts[0].splitlines(keepends=True)
    part.write_text("".join(lines[:11]))  # the header and rows up to c_two.cif@0
    summary = predict_stream(str(folder), [predictor], part, resume=True, workers=2, **kwargs)
    assert summary.n_skipped == 10 and summary.n_written == 3
    resumed = pd.read_csv(part)
    assert resumed["id"].tolist() == frame["id"].tolist()
    np.testing.assert_allclose(resumed[COLUMN], frame[COLUMN], atol=1e-6)


def test_files_named_like_another_files_structures(predictor, tmp_path):
    """``x.cif`` of two data blocks (ids ``x.cif@0``, ``x.cif@1``) next to a file named ``x.cif@2``:
    the ids alone cannot say which file a row came from, so the files are read here; the rows are
    those of reading first, each with its own structure's value."""
    atoms = _crystals(3)
    folder = tmp_path / "names"
    folder.mkdir()
    (folder / "x.cif").write_text(_cif(atoms[0]) + "\n" + _cif(atoms[1]).replace("data_", "data_second_", 1))
    (folder / "x.cif@2").write_text(_cif(atoms[2]))
    out = tmp_path / "out.csv"
    summary = predict_stream(str(folder), [predictor], out)
    frame = pd.read_csv(out)
    x = str(folder / "x.cif")
    assert frame["id"].tolist() == [f"{x}@0", f"{x}@1", f"{x}@2"] and summary.n_predicted == 3
    np.testing.assert_allclose(frame[COLUMN], _expected(predictor, atoms), atol=1e-6)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_resume_skips_finished_items_and_matches_an_uninterrupted_run(predictor, tmp_path, suffix):
    atoms = _crystals(17)
    table = pd.DataFrame({"id": [f"m{k:02d}" for k in range(17)], "cif": [_cif(a) for a in atoms]})
    table.loc[6, "cif"] = "data_broken\n_cell_length_a 3\n"  # a bad row is recorded, not fatal
    source = tmp_path / "structures.csv"
    table.to_csv(source, index=False)
    kwargs = {"id_column": "id", "chunk_size": 4, "batch_size": 3}

    full = tmp_path / f"full{suffix}"
    predict_stream(str(source), [predictor], full, **kwargs)

    part = tmp_path / f"part{suffix}"
    chunks = [0]

    def stop_after_two(result):
        chunks[0] += 1
        if chunks[0] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        predict_stream(str(source), [predictor], part, on_chunk=stop_after_two, **kwargs)
    if suffix == ".csv":  # a run killed while writing leaves a partial line: it is cut and redone
        with open(part, "a") as f:
            f.write("m08,-1.2")
    assert len(read_finished_ids(part)) == 8

    parsed: list[str] = []
    original = io_inputs.parse_cell

    def counting_parse(value, label, **kw):
        parsed.append(label)
        return original(value, label, **kw)

    counting = CountingPredictor(predictor)
    import unittest.mock

    with unittest.mock.patch.object(io_inputs, "parse_cell", counting_parse):
        summary = predict_stream(str(source), [counting], part, resume=True, **kwargs)
    assert parsed == [f"m{k:02d}" for k in range(8, 17)]  # finished rows are not even parsed
    assert sum(counting.calls) == 9 and summary.n_skipped == 8
    assert summary.n_predicted == 9 and summary.n_failed == 0

    read = pd.read_csv if suffix == ".csv" else pd.read_parquet
    resumed, reference = read(part), read(full)
    pd.testing.assert_frame_equal(resumed, reference, check_exact=True)  # same rows, order and values as uninterrupted
    assert resumed["error"].notna().tolist() == [k == 6 for k in range(17)]
    assert resumed.loc[6, "error"].startswith("m06: ")
    # a second resume finds nothing to do
    again = predict_stream(str(source), [counting], part, resume=True, **kwargs)
    assert again.n_written == 0 and again.n_skipped == 17 and sum(counting.calls) == 9


def test_resume_refuses_an_output_of_other_models(predictor, atomwise_folder, tmp_path):
    path = tmp_path / "out.parquet"
    predict_stream([("a", _crystals(1)[0])], [predictor], path)
    other = CGCNNPredictor.from_checkpoint(atomwise_folder)
    both = [predictor, other]
    with pytest.raises(StreamError, match=r"written with other settings \(.*models: \['random-regression-mean'\] then"):
        predict_stream([("b", _crystals(2)[1])], both, path, resume=True, names=["a", "b"])
    (path / "_cgcnn_run.json").unlink()  # an output from before settings were recorded: its columns still tell
    with pytest.raises(StreamError, match="differ from this run's"):
        predict_stream([("b", _crystals(2)[1])], both, path, resume=True, names=["a", "b"])


def test_parquet_output_is_a_typed_dataset_with_units(predictor, tmp_path):
    path = tmp_path / "res.parquet"
    items = [("ok", _crystals(1)[0]), ("bad", "missing.cif")]
    summary = predict_stream(items, [predictor], path, chunk_size=1)
    assert summary.n_predicted == 1 and summary.n_failed == 1
    import pyarrow.parquet as pq

    parts = sorted(p.name for p in path.iterdir())
    assert parts == ["_cgcnn_run.json", "part-000000.parquet", "part-000001.parquet"]  # readers skip "_" files
    parts = parts[1:]
    schema = pq.read_schema(path / parts[0])
    assert [str(t) for t in schema.types] == ["string", "double", "int64", "double", "double", "string",
                                              "string"]  # text even when empty; the geometry flags numbers
    assert json.loads(schema.metadata[b"cgcnn_ase.units"]) == {COLUMN: "eV/atom", "n_sparse": "atoms",
                                                               "bond_ratio": "dimensionless", "vacuum_gap": "Å"}
    table = pd.read_parquet(path)
    assert table["id"].tolist() == ["ok", "bad"] and np.isnan(table[COLUMN][1])
    assert "missing.cif: no such file" in table["error"][1]


def test_ensembles_add_their_std_column(tmp_path):
    from cgcnn_ase.models.folder import EnsembleMember, LoadedModel, save_model_folder

    from .conftest import random_model

    nets = [random_model(seed=s) for s in (31, 32, 33)]
    loaded = LoadedModel(
        nets[0].spec, nets[0].network, nets[0].elements, members=[EnsembleMember(m.network) for m in nets]
    )
    folder = save_model_folder(tmp_path / "ensemble", loaded)
    ensemble = CGCNNPredictor.from_checkpoint(folder, device="cpu")
    atoms = _crystals(5)
    expected = ensemble.predict(atoms)
    out = tmp_path / "out.parquet"
    predict_stream([(f"s{k}", a) for k, a in enumerate(atoms)], [ensemble], out, chunk_size=2)
    table = pd.read_parquet(out)
    assert list(table.columns) == ["id", COLUMN, "formation_energy_std (eV/atom)", *FLAGS, "unseen_elements", "error"]
    np.testing.assert_allclose(table[COLUMN], expected.values, atol=1e-6)
    np.testing.assert_allclose(table["formation_energy_std (eV/atom)"], expected.std, atol=1e-6)
    write(tmp_path / "a.cif", atoms[0], format="cif")
    as_json = _run("predict", tmp_path / "a.cif", "-m", folder, "--format", "json")
    row = json.loads(as_json.stdout)["results"][0]
    assert row["formation_energy_std (eV/atom)"] == pytest.approx(expected.std[0], abs=1e-6)


def test_finished_ids_are_exact():
    ids = FinishedIds.from_ids([["a", "b"], ["mp-1", "mp-10", "ünïcode"]])
    assert len(ids) == 5
    assert all(i in ids for i in ("a", "mp-10", "ünïcode"))
    assert not any(i in ids for i in ("mp-100", "mp-", "A", ""))
    assert ids.take("a") and not ids.take("z") and ids.skipped == 1
    assert "x" not in FinishedIds()


# -- the command line -------------------------------------------------------------------------


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_streams_tables_to_parquet_and_resumes(model_folder, predictor, tmp_path):
    atoms = _crystals(7)
    frame = pd.DataFrame({"mid": [f"x{k}" for k in range(7)], "cif": [_cif(a) for a in atoms]})
    frame.loc[2, "cif"] = ""
    frame.to_parquet(tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    args = ["predict", tmp_path / "in.parquet", "-m", model_folder, "--id-column", "mid", "-o", out, "--chunk-size", 3]
    result = _run(*args)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "error: x2: no structure: the value is empty" in result.stderr
    assert "1 of 7 structures could not be predicted" in result.stderr
    table = pd.read_parquet(out)
    assert table["id"].tolist() == frame["mid"].tolist()
    good = [k for k in range(7) if k != 2]
    np.testing.assert_allclose(table[COLUMN][good], _expected(predictor, [atoms[k] for k in good]), atol=1e-6)
    again = _run(*args, "--resume")
    assert again.exit_code == EXIT_BAD_INPUT and "7 structures already in" in again.stderr  # the error row stays
    assert "1 rows already in" in again.stderr and "hold errors" in again.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(out), table)


def test_cli_csv_stream_equals_the_in_memory_formats(model_folder, tmp_path):
    atoms = _crystals(5)
    write(tmp_path / "set.extxyz", atoms, format="extxyz")
    inputs = [tmp_path / "set.extxyz", tmp_path / "missing.cif"]
    streamed = _run("predict", *inputs, "-m", model_folder, "--chunk-size", 2)
    as_json = _run("predict", *inputs, "-m", model_folder, "--format", "json")
    assert streamed.exit_code == as_json.exit_code == EXIT_BAD_INPUT
    csv_rows = pd.read_csv(io.StringIO(streamed.stdout))
    json_rows = pd.DataFrame(json.loads(as_json.stdout)["results"])
    assert (
        csv_rows["id"].tolist() == json_rows["id"].tolist() == [f"{inputs[0]}@{k}" for k in range(5)] + [str(inputs[1])]
    )
    np.testing.assert_allclose(csv_rows[COLUMN], json_rows[COLUMN].astype(float), atol=1e-6)
    assert streamed.stderr.count("error:") == as_json.stderr.count("error:") == 1


def test_cli_usage_errors(model_folder, tmp_path):
    write(tmp_path / "a.cif", _crystals(1)[0], format="cif")
    assert _run("predict", tmp_path / "a.cif", "-m", model_folder, "--resume").exit_code == EXIT_USAGE
    assert _run("predict", tmp_path / "a.cif", "-m", model_folder, "--format", "parquet").exit_code == EXIT_USAGE
    result = _run(
        "predict", tmp_path / "a.cif", "-m", model_folder, "--format", "json", "-o", tmp_path / "o", "--resume"
    )
    assert result.exit_code == EXIT_USAGE
    table = tmp_path / "t.csv"
    pd.DataFrame({"structure": ["x"]}).to_csv(table, index=False)
    result = _run("predict", table, "-m", model_folder, "-o", tmp_path / "o.csv")
    assert result.exit_code == EXIT_USAGE and "no structure column 'cif'" in result.stderr


def test_bad_cells_name_their_id():
    for value, message in (
        (None, "empty"),
        ("{not json", "not valid structure JSON"),
        ("no_such_file.cif", "neither CIF"),
    ):
        with pytest.raises(StructureReadError, match=message):
            io_inputs.parse_cell(value, "row-7")


# -- the default command (no --model: seven ensembles) streams too -----------------------------------


@pytest.fixture(scope="module")
def default_inputs(tmp_path_factory):
    """Seven crystals as CIF files and one unreadable file (sorted names: the bad one is 4th)."""
    folder = tmp_path_factory.mktemp("default")
    for k, atoms in enumerate(_crystals(7)):
        (folder / f"{k if k < 3 else k + 1}.cif").write_text(_cif(atoms))
    (folder / "3.cif").write_text("data_broken\n_cell_length_a oops\n")
    return folder


def _default(*args):
    return CliRunner().invoke(main, ["predict", *[str(a) for a in args], "--workers", "1"], catch_exceptions=False)


def _spy_property_table(monkeypatch) -> list[int]:
    """Record the number of inputs of each predict_many call (the default command's per-chunk work: the
    seven models together)."""
    from cgcnn_ase.inference import predictor

    return _record_calls(monkeypatch, predictor, "predict_many", lambda models, structures, **kwargs: len(structures))


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) and a["id"].tolist() == b["id"].tolist()
    assert a["error"].isna().tolist() == b["error"].isna().tolist()
    values = [c for c in a.columns if c not in ("id", "error")]
    # other batches, other float32 rounding (about 1e-5 relative at most)
    np.testing.assert_allclose(a[values].to_numpy(float), b[values].to_numpy(float), rtol=1e-4, atol=1e-6)


def test_the_default_properties_are_written_chunk_by_chunk(default_inputs, tmp_path, monkeypatch):
    whole, chunked = tmp_path / "whole.csv", tmp_path / "chunked.csv"
    first = _default(default_inputs, "-o", whole)
    sizes = _spy_property_table(monkeypatch)
    second = _default(default_inputs, "-o", chunked, "--chunk-size", "3")
    for result in (first, second):  # the unreadable file: one error line, exit code 1, the rest predicted
        assert result.exit_code == EXIT_BAD_INPUT
        assert result.stderr.count("error: ") == 1 and "1 of 8 structures could not be predicted" in result.stderr
    assert sizes == [3, 3, 2]  # chunks of 3 inputs (files travel unread: the unreadable one fails where it is read)
    a, b = pd.read_csv(whole), pd.read_csv(chunked)
    _same_rows(a, b)
    assert [name.split("/")[-1] for name in b["id"]] == [f"{k}.cif" for k in range(8)]
    assert "not a readable CIF" in b.loc[3, "error"] and b.loc[[0, 1, 2, 4], "formation_energy (eV/atom)"].notna().all()


def test_the_default_properties_resume_where_a_killed_run_stopped(default_inputs, tmp_path, monkeypatch):
    full, part = tmp_path / "full.csv", tmp_path / "part.csv"
    _default(default_inputs, "-o", full, "--chunk-size", "3")
    lines = full.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:4]) + lines[4][:25])  # header, three rows and a torn fourth: a killed run
    sizes = _spy_property_table(monkeypatch)
    result = _default(default_inputs, "-o", part, "--resume", "--chunk-size", "3")
    assert "resumed: 3 structures already in" in result.stderr
    assert sum(sizes) == 5  # 8 inputs: 3 finished (skipped unread), 1 unreadable, 4 predicted
    _same_rows(pd.read_csv(full), pd.read_csv(part))


def test_the_default_properties_as_parquet_and_the_usage_errors(default_inputs, tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "screen.parquet"
    assert _default(default_inputs, "-o", out, "--chunk-size", "4").exit_code == EXIT_BAD_INPUT
    csv = tmp_path / "screen.csv"
    _default(default_inputs, "-o", csv)
    table = pd.read_parquet(out)
    table["error"] = table["error"].where(table["error"].notna(), np.nan)
    _same_rows(pd.read_csv(csv), table.reset_index(drop=True))
    for args, message in ((["--resume"], "--resume needs -o"), (["--format", "parquet"], "parquet output needs -o"),
                          (["--per-atom"], "--per-atom needs --model")):  # fmt: skip
        result = _default(default_inputs, *args)
        assert result.exit_code == EXIT_USAGE and message in result.output


def test_a_streams_unseen_element_warning_is_shown_once_per_model(tmp_path):
    """Each chunk's prediction warns about elements its model never saw; a long run shows the first and a count."""
    for k in range(4):
        (tmp_path / f"Ar{k}.cif").write_text(_cif(bulk("Ar", "fcc", a=5.26 + 0.01 * k)))
    (tmp_path / "NaCl.cif").write_text(_cif(bulk("NaCl", "rocksalt", a=5.64)))  # a chunk that does not warn
    result = CliRunner().invoke(main, ["predict", str(tmp_path), "-m", "formation_energy", "--chunk-size", "1",
                                       "-o", str(tmp_path / "out.csv"), "--workers", "1"], catch_exceptions=False)  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    stretched = [line for line in lines if "no two atoms are near bonding distance" in line]  # solid Ar: van der Waals
    assert len(stretched) == 4  # one per crystal
    lines = [line for line in lines if line not in stretched]
    assert len(lines) == 2, lines
    assert "element(s) Ar did not occur in its training data; 1 of 1 predicted structure(s)" in lines[0]
    assert lines[1].endswith("in all, 4 predicted structure(s) hold elements it never saw; 3 later warning(s) "
                             "about them (from later chunks, or from ensemble members run one by one) are not shown; "
                             "those predictions are extrapolations too")  # round 10: the run's totals, not the first chunk's
    assert len(pd.read_csv(tmp_path / "out.csv")) == 5  # round 28: no "4 of 4" counting only the chunks that warned


def test_the_default_command_gives_domain_percentiles_on_request(default_inputs, tmp_path):
    out = tmp_path / "domain.csv"
    _default(default_inputs, "-o", out, "--domain")
    frame = pd.read_csv(out)
    domain = [c for c in frame.columns if c.endswith("_domain_percentile (percent)")]
    assert "formation_energy_domain_percentile (percent)" in domain and len(domain) == 7
    good = frame["error"].isna()
    assert frame.loc[good, domain].notna().all().all() and frame.loc[~good, domain].isna().all().all()
    assert ((frame.loc[good, domain] >= 0) & (frame.loc[good, domain] <= 100)).all().all()
    files = sorted(str(p) for p in default_inputs.iterdir() if p.name != "3.cif")
    api = CGCNNPredictor.from_pretrained("formation_energy", device="cpu").predict(files)
    np.testing.assert_allclose(frame.loc[good, "formation_energy_domain_percentile (percent)"], api.domain_percentile,
                               atol=1e-6)  # fmt: skip
    table = _default(default_inputs, "--domain", "--format", "table").stdout.splitlines()
    assert table[0].split()[-1] == "dom%"
    typical = frame.loc[good, domain].median(axis=1).round().astype(int).tolist()
    rows = table[1 : table.index("")]  # the legend follows a blank line
    assert [int(line.split()[-1]) for line in rows if "error (see stderr)" not in line] == typical
    assert "domain_percentile" not in pd.read_csv(io.StringIO(_default(default_inputs).stdout)).columns.str.cat()


@pytest.mark.parametrize(("models", "device", "expected"), [(["-m", "formation_energy"], "cpu", 1024),
                                                            (["-m", "formation_energy", "-m", "band_gap"], "cpu", 1024),
                                                            (["-m", "formation_energy", "-m", "band_gap"], "cuda", 8192),
                                                            (["-m", "formation_energy"], "cuda", 1024)])  # fmt: skip
def test_the_chunk_size_default_follows_the_number_of_models_and_the_device(models, device, expected):
    """On a GPU several models start their worker processes per chunk, so chunks are larger there; on a CPU one
    pool serves the whole run, and a smaller chunk loses less to an interrupt (round 21a: the default command's
    8192 were minutes of work)."""
    from unittest import mock

    import torch

    from cgcnn_ase import cli

    with mock.patch("cgcnn_ase.models.registry.resolve_device", lambda d: torch.device(d or "cpu")):
        assert cli._default_chunk(len(models) // 2, device) == expected
    assert cli._default_chunk(0, "cpu") == 1024


@pytest.mark.parametrize("models", [[], ["-m", "formation_energy"]])
def test_inputs_without_structures_give_a_header_and_a_warning(tmp_path, models):
    """An empty folder: a table of no rows with this run's columns (csv and parquet), a warning, exit code 1
    (round 15: it was 0, which the README keeps for 'all predicted')."""
    pytest.importorskip("pyarrow")
    (tmp_path / "empty").mkdir()
    for name in ("out.csv", "out.parquet"):
        result = _default(tmp_path / "empty", *models, "-o", tmp_path / name)
        assert result.exit_code == 1 and "warning: the inputs held no structures" in result.stderr
    csv, parquet = pd.read_csv(tmp_path / "out.csv"), pd.read_parquet(tmp_path / "out.parquet")
    assert len(csv) == len(parquet) == 0 and list(csv.columns) == list(parquet.columns)
    assert csv.columns[0] == "id" and csv.columns[1] == "formation_energy (eV/atom)" and csv.columns[-1] == "error"


def test_a_warning_every_model_gives_about_one_structure_is_printed_once(tmp_path):
    """A water molecule in a 20 Å box: each of the seven models finds its graph sparse; one line says so."""
    from ase.build import molecule

    water = molecule("H2O")
    water.center(vacuum=10)
    water.pbc = True
    write(tmp_path / "water.cif", water)
    result = _default(tmp_path / "water.cif", "-o", tmp_path / "out.csv")
    sparse = [line for line in result.stderr.splitlines() if "fewer than 12 neighbours" in line]
    assert result.exit_code == 0 and len(sparse) == 1, result.stderr


def test_the_command_passes_its_chunk_size_default_to_the_stream(default_inputs, tmp_path, monkeypatch):
    from cgcnn_ase.inference import streaming

    seen = _record_calls(monkeypatch, streaming, "predict_stream", lambda *args, **kwargs: kwargs["chunk_size"])
    _default(default_inputs, "-m", "formation_energy", "-m", "band_gap", "-o", tmp_path / "out.csv")
    assert seen == [1024]  # two models on this CPU

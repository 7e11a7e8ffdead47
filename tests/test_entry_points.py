"""Every entry point reads a crystal through the one reader and predicts the same number.

The same crystal, given as a CIF file (``examples/SrTiO3.cif``), a POSCAR file
(``examples/NaCl.POSCAR``) or CIF text (the CIF file's text), goes through the Python API
(``CGCNNPredictor.predict``), the ASE calculator, the matminer featurizer, the CLI
(``cgcnn-ase predict``), streaming (``predict_stream``) and Dask (``predict_dataframe`` on an
in-process cluster). Each must build its graph from the record the API builds it from
(atomic numbers, fractional coordinates and cell compared exactly) and give the same
prediction and ensemble std, exactly (measured: bit-identical when each call predicts the
one crystal; crystals batched together differ from one-at-a-time calls by ~1e-8 in float32,
so every call here holds one crystal). CIF text gives the record of its CIF file.

The calculator takes an ``ase.Atoms``, made here by the one reader
(``read_record(source).to_ase()``): it gets the reader's record of that Atoms exactly, and the
file's record up to the Cartesian round trip of ``Atoms`` (fractional coordinates within
1e-15; numbers and cell exact).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import cgcnn_ase.inference.parallel as graph_building
from cgcnn_ase.cli import main
from cgcnn_ase.inference.predictor import CGCNNPredictor
from cgcnn_ase.inference.streaming import predict_stream
from cgcnn_ase.integrations.ase import CGCNNCalculator
from cgcnn_ase.integrations.matminer import CGCNNFeaturizer
from cgcnn_ase.io.reader import read_record, read_records
from cgcnn_ase.io.records import StructureRecord

REPO = Path(__file__).resolve().parents[1]
CIF = REPO / "examples" / "SrTiO3.cif"
POSCAR = REPO / "examples" / "NaCl.POSCAR"
MODEL = "formation_energy"
VALUE, STD = "formation_energy (eV/atom)", "formation_energy_std (eV/atom)"
KINDS = ("cif_file", "poscar_file", "cif_text")


def _source(kind: str) -> str:
    """The input as a user gives it: a path (text) or the CIF's text."""
    return {"cif_file": str(CIF), "poscar_file": str(POSCAR), "cif_text": CIF.read_text()}[kind]


def _same_record(a: StructureRecord, b: StructureRecord) -> bool:
    return (
        np.array_equal(a.numbers, b.numbers)
        and np.array_equal(a.frac_coords, b.frac_coords)
        and np.array_equal(a.cell, b.cell)
    )


@pytest.fixture
def graphs_of(monkeypatch) -> list[StructureRecord]:
    """The records every prediction builds its graphs from (all entry points end in the predictor, whose
    graphs are built by :mod:`cgcnn_ase.inference.parallel`, in this process with the default workers=1)."""
    seen: list[StructureRecord] = []
    build = graph_building.build_graph

    def spy(record, *args, **kwargs):
        seen.append(record)
        return build(record, *args, **kwargs)

    monkeypatch.setattr(graph_building, "build_graph", spy)
    return seen


@pytest.fixture(scope="module")
def predictor() -> CGCNNPredictor:
    return CGCNNPredictor.from_pretrained(MODEL, device="cpu")


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _api(predictor: CGCNNPredictor, source: str, graphs_of: list) -> tuple[StructureRecord, float, float]:
    graphs_of.clear()
    result = predictor.predict(source)
    assert result.errors == [None] and len(graphs_of) == 1
    return graphs_of[0], float(result.values[0]), float(result.std[0])


def _table_row(frame: pd.DataFrame) -> tuple[float, float]:
    assert len(frame) == 1 and pd.isna(frame["error"].iloc[0]), frame.to_dict("records")
    return float(frame[VALUE].iloc[0]), float(frame[STD].iloc[0])


def _calculator(source: str, graphs_of: list) -> tuple[StructureRecord, float, float, object]:
    atoms = read_record(source).to_ase()
    calc = CGCNNCalculator(MODEL, device="cpu")
    atoms.calc = calc
    graphs_of.clear()
    atoms.get_potential_energy()
    assert len(graphs_of) == 1
    return graphs_of[0], calc.results[MODEL], calc.results[f"{MODEL}_std"], atoms


def _featurizer(source: str, graphs_of: list) -> tuple[StructureRecord, float, float]:
    featurizer = CGCNNFeaturizer(MODEL, device="cpu")
    graphs_of.clear()
    (row,) = featurizer.featurize_many([source], pbar=False)
    labels = featurizer.feature_labels()
    assert len(graphs_of) == 1
    return graphs_of[0], row[labels.index(VALUE)], row[labels.index(STD)]


def _cli(kind: str, source: str, tmp_path: Path, graphs_of: list) -> tuple[StructureRecord, float, float]:
    """Files as arguments; CIF text as the cell of a table's ``cif`` column."""
    argument = source
    if kind == "cif_text":
        argument = str(tmp_path / "table.csv")
        pd.DataFrame({"cif": [source]}).to_csv(argument, index=False)
    graphs_of.clear()
    threads = str(torch.get_num_threads())  # the CLI sets torch's thread count: keep this process's
    result = CliRunner().invoke(main, ["predict", argument, "-m", MODEL, "--threads", threads])
    assert result.exit_code == 0, result.output
    assert len(graphs_of) == 1
    return graphs_of[0], *_table_row(pd.read_csv(io.StringIO(result.stdout), float_precision="round_trip"))


def _streaming(source: str, graphs_of: list) -> tuple[StructureRecord, float, float]:
    out = io.StringIO()
    graphs_of.clear()
    predict_stream([("crystal", source)], MODEL, out, device="cpu")
    assert len(graphs_of) == 1
    frame = pd.read_csv(io.StringIO(out.getvalue()), float_precision="round_trip")
    assert frame["id"].tolist() == ["crystal"]
    return graphs_of[0], *_table_row(frame)


def _dask(source: str, graphs_of: list) -> tuple[StructureRecord, float, float]:
    import dask.dataframe as dd

    from cgcnn_ase.integrations.dask import predict_dataframe

    table = dd.from_pandas(pd.DataFrame({"id": ["crystal"], "cif": [source]}), npartitions=1, sort=False)
    graphs_of.clear()
    # threads=None: the in-process worker must not change this process's torch thread count
    frame = predict_dataframe(table, [MODEL], id_column="id", threads=None).compute()
    assert len(graphs_of) == 1
    return graphs_of[0], *_table_row(frame)


def test_cif_text_is_read_as_its_cif_file():
    """The reader: CIF text takes the CIF file's path (gemmi, then the same validation)."""
    text = _source("cif_text")
    for reader in ("gemmi", "pymatgen"):
        (from_file,) = read_records(CIF, cif_reader=reader)
        (from_text,) = read_records(text, cif_reader=reader)
        assert _same_record(from_file, from_text)
    gemmi, pymatgen = read_record(text), read_record(text, cif_reader="pymatgen")
    np.testing.assert_allclose(gemmi.positions[np.argsort(gemmi.numbers, kind="stable")],
                               pymatgen.positions[np.argsort(pymatgen.numbers, kind="stable")], atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_every_entry_point_reads_and_predicts_alike(kind, predictor, dask_client, graphs_of, tmp_path):
    source = _source(kind)
    record, value, std = _api(predictor, source, graphs_of)
    assert _same_record(record, read_record(source))  # the API's record is the one reader's
    if kind == "cif_text":
        assert _same_record(record, read_record(CIF))  # CIF text reads as its file
    results = {
        "featurizer": _featurizer(source, graphs_of),
        "cli": _cli(kind, source, tmp_path, graphs_of),
        "streaming": _streaming(source, graphs_of),
        "dask": _dask(source, graphs_of),
    }
    for name, (got, got_value, got_std) in results.items():
        assert _same_record(got, record), f"{name} read another record from {kind}"
        assert (got_value, got_std) == (value, std), (
            f"{name}: {got_value!r} ± {got_std!r} vs the API's {value!r} ± {std!r}"
        )

    got, got_value, got_std, atoms = _calculator(source, graphs_of)
    assert _same_record(got, read_record(atoms))  # the calculator's record is the reader's record of its Atoms
    np.testing.assert_array_equal(got.numbers, record.numbers)
    np.testing.assert_array_equal(got.cell, record.cell)
    np.testing.assert_allclose(got.frac_coords, record.frac_coords, rtol=0, atol=1e-15)  # Atoms store Cartesians
    # the calculator also asks for per-atom energies, which run member by member, while the API runs the members
    # stacked in one pass (cgcnn_ase.nn.stacked): the same maths, float32 rounding apart
    assert got_value == pytest.approx(value, abs=2e-6) and got_std == pytest.approx(std, abs=2e-6)


def test_cif_text_and_paths_mix_in_one_predict_call(predictor):
    """CIF text in ``predict`` used to be taken for a path ('File name too long')."""
    text = _source("cif_text")
    result = predictor.predict([text, str(CIF)])
    assert result.errors == [None, None] and result.ids == ["input 0", str(CIF)]
    # one batch: the same graph twice differs by ~1e-7 with its place in the batch (float32)
    assert result.values[0] == pytest.approx(result.values[1], abs=1e-6)

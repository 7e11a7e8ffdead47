"""Round 18 of outside testing: a newcomer's audit of the code (18a) and an ML researcher training a new
property from a dataset the package had not read before (18b). Each test quotes or paraphrases what was
reported and asserts the fixed behaviour."""

from __future__ import annotations

import ast
import bz2
import importlib
import json
import lzma
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from cgcnn_ase.data.datasets import DatasetSpec, load_table
from cgcnn_ase.errors import DatasetError, StructureReadError
from cgcnn_ase.io.inputs import iter_file
from cgcnn_ase.io.reader import iter_records, read_records

from .conftest import REPO

EXTXYZ_WITH_D = """2
Lattice="3 0 0 0 3 0 0 0 3" Properties=species:S:1:pos:R:3 pbc="T T T"
D 0 0 0
O 1.5 1.5 1.5
"""


def test_a_frame_file_fails_the_same_way_in_every_entry_point(tmp_path):
    """18a: 'the same extxyz file holding the symbol D: iter_records says "unknown element symbol 'D' (write the
    hydrogen isotopes D and T as H)", iter_file, the path the CLI and streaming use, says "could not be read by
    ASE (KeyError: 'D')"'."""
    path = tmp_path / "heavy_water.extxyz"
    path.write_text(EXTXYZ_WITH_D)
    [(_, streamed)] = list(iter_file(str(path)))
    [(_, read)] = list(iter_records(str(path)))
    with pytest.raises(StructureReadError) as caught:
        read_records(str(path))
    for error in (streamed, read, caught.value):
        assert isinstance(error, StructureReadError)
        assert "unknown element symbol 'D' (write the hydrogen isotopes D and T as H)" in str(error)
    assert str(streamed) == str(read)


def test_a_bad_database_fails_the_same_way_in_every_entry_point(tmp_path):
    """18a: the ASE database was read by three pieces of code; the dataset reader had no error handling (a
    foreign file named .db gave ase.db's own exception)."""
    path = tmp_path / "runs.db"
    path.write_text("not a database\n" * 20)
    [(_, streamed)] = list(iter_file(str(path)))
    [(_, read)] = list(iter_records(str(path)))
    assert isinstance(streamed, StructureReadError) and str(streamed) == str(read)
    assert "not a readable ASE database" in str(read)
    with pytest.raises(DatasetError, match="not a readable ASE database"):
        load_table(DatasetSpec(path=str(path), target="energy"))


def _json_dataset() -> str:
    salt = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return json.dumps([{"id": f"x{k}", "structure": salt.as_dict(), "k": 1.5 + k} for k in range(3)])


@pytest.mark.parametrize("suffix", ["json", "json.gz", "json.bz2", "json.xz", "json.zip"])
def test_compressed_json_datasets_are_read(tmp_path, suffix):
    """18a: 'a copied _open_text breaks .json.bz2 datasets: only .gz is decompressed; load_table on d.json.bz2
    fails with a misleading "not UTF-8 text ... iconv -f cp1252"' (detect_format accepts .bz2, .xz and .zip)."""
    import gzip

    text = _json_dataset()
    path = tmp_path / f"moduli.{suffix}"
    if suffix.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("moduli.json", text)
    else:
        opener = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}.get(suffix.rsplit(".", 1)[-1])
        with opener(path, "wt", encoding="utf-8") if opener else open(path, "w", encoding="utf-8") as f:
            f.write(text)
    table = load_table(DatasetSpec(path=str(path), target="k"))
    assert table.ids == ["x0", "x1", "x2"]
    np.testing.assert_array_equal(table.raw_targets, [1.5, 2.5, 3.5])


def test_zip_archives_the_dataset_readers_cannot_use_are_refused_plainly(tmp_path):
    broken = tmp_path / "broken.json.zip"
    broken.write_text("hello")
    with pytest.raises(DatasetError, match="not a readable zip archive"):
        load_table(DatasetSpec(path=str(broken), target="k"))
    two = tmp_path / "two.json.zip"
    with zipfile.ZipFile(two, "w") as archive:
        archive.writestr("a.json", _json_dataset())
        archive.writestr("b.json", _json_dataset())
    with pytest.raises(DatasetError, match="a zip archive of 2 files"):
        load_table(DatasetSpec(path=str(two), target="k"))
    frames = tmp_path / "frames.extxyz.zip"
    with zipfile.ZipFile(frames, "w") as archive:
        archive.writestr("frames.extxyz", EXTXYZ_WITH_D)
    with pytest.raises(DatasetError, match="ASE does not read zip archives; unzip it"):
        load_table(DatasetSpec(path=str(frames), target="k"))


def test_model_json_is_replaced_whole(tmp_path, model_folder):
    """18a: model.json was written in six places, not atomically, some without NaN -> null. Now one function
    writes it through a temporary file and a rename."""
    import shutil

    from cgcnn_ase.models.folder import read_model_json, write_model_json

    folder = tmp_path / "m"
    shutil.copytree(model_folder, folder)
    document = read_model_json(folder)
    document["metadata"]["test_metrics"] = {"mae": np.float32(0.5), "r2": float("nan")}
    write_model_json(folder, document)
    assert json.loads((folder / "model.json").read_text())["metadata"]["test_metrics"] == {"mae": 0.5, "r2": None}
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # no partial file left
    writers = []
    for path in (REPO / "cgcnn_ase").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "write_text" and "model.json" in \
                    ast.unparse(node.func.value) + ast.unparse(node):  # fmt: skip
                writers.append(str(path.relative_to(REPO)))
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "write_text" and "MODEL_JSON" in \
                    ast.unparse(node.func.value):  # fmt: skip
                writers.append(str(path.relative_to(REPO)))
    assert writers == []


def _imports(module: str) -> set[str]:
    """The cgcnn_ase modules ``module`` imports (lazy imports included, relative ones resolved)."""
    from .test_layers import imported_modules

    path = Path(importlib.import_module(module).__file__)
    out = set()
    for _, target in imported_modules(path.read_text(), module):
        try:  # `from cgcnn_ase.graph import config`: the module is cgcnn_ase.graph.config
            out.add(importlib.import_module(target).__name__)
        except ImportError:
            continue
    return out


def test_the_graph_cache_key_covers_the_code_that_builds_graphs():
    """18a: 'the graph cache key leaves out io/cif.py (the actual CIF parser) and graph/batched.py (which builds
    the cached graphs when a device is given)': an edit there reused stale graphs."""
    from cgcnn_ase.train.cache import GRAPH_CODE_MODULES

    todo, seen = ["cgcnn_ase.io.reader", "cgcnn_ase.graph.neighbours", "cgcnn_ase.graph.batched"], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += [m for m in _imports(module) if m.startswith(("cgcnn_ase.io.", "cgcnn_ase.graph."))]
    seen -= {"cgcnn_ase.io", "cgcnn_ase.graph"}
    assert seen <= set(GRAPH_CODE_MODULES), sorted(seen - set(GRAPH_CODE_MODULES))
    assert {"cgcnn_ase.io.cif", "cgcnn_ase.graph.batched"} <= seen


def test_user_facing_errors_are_the_packages_own(tmp_path):
    """18a: plain ValueError/KeyError for user mistakes where errors.py has a class (the CLI and users catch
    CGCNNError)."""
    import pandas as pd

    from cgcnn_ase.analysis.sites import aggregate_by_element
    from cgcnn_ase.errors import CGCNNError, SiteAnalysisError

    with pytest.raises(SiteAnalysisError, match=r"column\(s\) \['role'\] not in the table"):
        aggregate_by_element(pd.DataFrame({"element": ["O"], "contribution": [1.0]}))
    dd = pytest.importorskip("dask.dataframe")
    from cgcnn_ase.errors import StreamError
    from cgcnn_ase.integrations.dask import predict_files

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StreamError, match="no files in"), pytest.warns(UserWarning, match="an empty folder"):
        predict_files([str(empty)], ["formation_energy"])
    assert issubclass(StreamError, CGCNNError) and dd is not None


def test_warnings_name_the_users_line_through_one_helper(tmp_path, monkeypatch):
    """18a: two stack-level finders (the registry's by file path, the results' by module name). Now one,
    ``errors.user_stacklevel``: the shadowed-model warning names this file, however deep the call came in."""
    from cgcnn_ase.errors import ShadowedModelWarning
    from cgcnn_ase.models.registry import model_folder, resolve_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "band_gap").mkdir()
    with pytest.warns(ShadowedModelWarning) as caught:
        assert model_folder("band_gap") == resolve_model("band_gap").path
    assert [Path(w.filename).name for w in caught] == [Path(__file__).name]

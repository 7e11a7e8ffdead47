"""The five dataset layouts read into a table of columns plus one raw structure per row.

Used by :func:`cgcnn_ase.data.datasets.load_table` (see its module for the layouts); each
reader returns ``(frame, kind, sources)``: a pandas DataFrame of the non-structure columns,
the kind of raw structure (``"cif_text"``, ``"structure_dict"``, ``"cif_file"`` or
``"record"``) and one raw structure per row (for ``ase`` inputs already a record, or the
error that made the row unusable).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cgcnn_ase.errors import CGCNNError, DatasetError, StructureReadError
from cgcnn_ase.io.formats import open_text, read_db_rows, read_frames
from cgcnn_ase.io.inputs import csv_source, file_magic, separator, undecodable_text
from cgcnn_ase.io.reader import beside_table, to_record
from cgcnn_ase.warning_blocks import catch_warnings

if TYPE_CHECKING:
    from cgcnn_ase.data.datasets import DatasetSpec

__all__ = ["also_missing", "read_layout"]


def _read_csv(spec: DatasetSpec) -> tuple[Any, str, list[Any]]:
    """A CSV (``.tsv``: tab-separated) or Parquet table with a column of structure text."""
    import pandas as pd

    from cgcnn_ase.data.datasets import ID_COLUMNS

    path = Path(spec.path)
    if spec.resolved_format == "parquet":
        df = pd.read_parquet(path)
    else:
        sep = separator(path.name.lower())
        ids = [spec.id_column] if spec.id_column else list(ID_COLUMNS)
        with csv_source(path) as source:
            df = pd.read_csv(source, sep=sep, dtype={c: str for c in ids})  # ids as written: 0007 stays 0007, not 7
        df = df.dropna(how="all")  # a spreadsheet's trailing empty rows (",,,"; round 29e: "rows have no id")
    column = spec.structure_column or "cif"
    if column not in df.columns:
        raise DatasetError(f"{path}: no structure column {column!r} (CIF text){also_missing(df.columns, id_column=spec.id_column, target=spec.target)}; "
                           + (_header_problem(df.columns) or f"set structure_column to one of {list(df.columns)}"))  # fmt: skip
    sources = [beside_table(value, path) for value in df[column].tolist()]  # file names: beside the table
    return df.drop(columns=[column]), "cif_text", sources


def _read_json(spec: DatasetSpec) -> tuple[Any, str, list[Any]]:
    import pandas as pd

    path = Path(spec.path)
    with open_text(path, errors="strict") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            raise
        data = [json.loads(line) for line in text.splitlines() if line.strip()]  # JSON lines: one object per line
    if isinstance(data, dict):  # {"id": {...}, ...} -> list
        data = [{"id": k, **v} for k, v in data.items()] if all(isinstance(v, dict) for v in data.values()) else None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise DatasetError(f"{path}: expected a JSON list of objects, one per crystal")
    column = spec.structure_column or "structure"
    missing = [i for i, d in enumerate(data) if column not in d]
    if len(missing) == len(data):  # another layout, or another key for the structures
        raise DatasetError(
            f"{path}: {len(missing)} entries (first: #{missing[0]}) have no structure column {column!r} (a key)"
            f"{also_missing(data[missing[0]], id_column=spec.id_column, target=spec.target)}; keys of that entry: {sorted(data[missing[0]])}; set structure_column"
        )
    sources = [d[column] if column in d else StructureReadError(f"entry #{i} has no structure {column!r} (a key; its "
                                                                f"keys: {sorted(d)})") for i, d in enumerate(data)]  # fmt: skip
    df = pd.DataFrame([{k: v for k, v in d.items() if k != column} for d in data])
    return df, "structure_dict", sources


def _header_problem(columns: Any) -> str | None:
    """What is wrong with a CSV table's header, when its columns are not what was asked (round 29e: a semicolon-separated
    table's one merged column was offered as the structure column), or ``None``."""
    names = [str(c) for c in columns]
    if len(names) == 1 and ";" in names[0]:
        return (f"the file looks semicolon-separated (header {names[0]!r}): save it comma-separated, with decimal "
                "points (a spreadsheet's English number format)")  # fmt: skip
    padded = [n for n in names if n != n.strip()]
    if padded:
        return f"column names keep their spaces ({padded[0]!r}): remove the spaces after the commas of the header row"
    if any(re.fullmatch(r"[-+]?\d*\.?\d+([eE][-+]?\d+)?(\.\d+)?", n) or n.lower().endswith(".cif") for n in names):
        return f"its first row looks like data, not a header ({names}): the table needs a header row naming the columns"
    return None


def also_missing(columns: Any, *, id_column: str | None = None, target: str | None = None) -> str:
    """``", and no id column 'x', and no target column 'y'"`` for the id column and the target (a plain name)
    that ``columns`` lack, so that a file of another layout is described in one message."""
    names = {str(c) for c in columns}
    parts = [f"no id column {id_column!r}"] if id_column and id_column not in names else []
    if target and target.isidentifier() and target not in names:
        parts.append(f"no target column {target!r}")
    return "".join(f", and {part}" for part in parts)


def _read_cif_dir(spec: DatasetSpec) -> tuple[Any, str, list[Any]]:
    import pandas as pd

    root = Path(spec.path)
    table = root / "id_prop.csv"
    if not table.is_file():
        raise DatasetError(f"{root}: a CIF directory needs an id_prop.csv (no header: id,target)")
    df = pd.read_csv(table, header=None, dtype={0: str}).dropna(how="all")  # a spreadsheet's trailing empty rows
    if df.shape[1] < 2:
        semicolons = " (it looks semicolon-separated: id_prop.csv is comma-separated, with decimal points)" if (
            df.shape[1] == 1 and df[0].astype(str).str.contains(";").any()) else ""
        raise DatasetError(f"{table}: expected at least two columns (id,target){semicolons}")
    _check_decimal_commas(table)
    df.columns = ["id", "target"] + [f"target_{k}" for k in range(2, df.shape[1])]
    df["id"] = df["id"].str.strip()
    if len(df) and df["id"].str.contains(";").all():
        raise DatasetError(f"{table}: every id holds a ';' ({df['id'].iloc[0]!r}): the file looks semicolon-separated, "
                           "perhaps with decimal commas; id_prop.csv is comma-separated, with decimal points (ID,0.0388)")  # fmt: skip
    sources = [str(root / f"{i}.cif") for i in df["id"]]
    return df, "cif_file", sources


def _check_decimal_commas(table: Path) -> None:
    """Refuse an ``id_prop.csv`` written with decimal commas (``mp-1,0,0388``): read as written, its target
    would be the integer part 0 and a second target 388, silently. Every row with exactly three fields, an
    integer and then digits, and some of those digits with a leading zero (``0388``) cannot be two integer
    targets as anyone writes them; without a leading zero the rows are only warned about."""
    import re

    lines = [line.strip() for line in table.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    pattern = re.compile(r"[^,]*,\s*[-+]?\d+\s*,\s*(\d+)\s*")
    matches = [pattern.fullmatch(line) for line in lines]
    if not lines or not all(matches):
        return
    example = lines[0]
    fixed = re.sub(r",\s*([-+]?\d+)\s*,\s*(\d+)\s*$", r",\1.\2", example)
    message = (f"{table}: every row looks like ID,INTEGER,DIGITS ({example!r}): numbers written with decimal commas? "
               f"id_prop.csv is comma-separated, so the target would be the integer part; write {fixed!r}")
    if any(len(m.group(1)) > 1 and m.group(1).startswith("0") for m in matches if m):
        raise DatasetError(message)
    warnings.warn(message + " (if these are two integer targets, ignore this)", UserWarning, stacklevel=4)


def _scalar_items(mapping: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if isinstance(v, (int, float, str, bool, np.number, np.bool_))}


def _read_ase(spec: DatasetSpec) -> tuple[Any, str, list[Any]]:
    import pandas as pd

    path = Path(spec.path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    rows: list[dict[str, Any]] = []
    records: list[Any] = []
    with catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the one reader's rows and frames, with key-value pairs, info and calculator results
            is_db = path.name.lower().endswith(".db")
            db_rows = read_db_rows(path, str(path)) if is_db else []
            frames = [] if is_db else read_frames(path)
        except StructureReadError as exc:
            raise DatasetError(str(exc)) from None
        for row in db_rows:
            info = {"db_id": row.id, **_scalar_items(dict(row.key_value_pairs))}
            for key in ("energy", "free_energy"):
                value = row.get(key)
                if value is not None:
                    info.setdefault(key, value)
            rows.append(info)
            records.append(row.toatoms())
        for atoms in frames:
            info = _scalar_items(dict(atoms.info))
            if atoms.calc is not None:  # extxyz puts energy= etc. into a SinglePointCalculator
                for key, value in getattr(atoms.calc, "results", {}).items():
                    if np.ndim(value) == 0:
                        info.setdefault(key, float(value))
            rows.append(info)
            records.append(atoms)
    if not records:
        raise DatasetError(f"{path}: holds no structures")
    df = pd.DataFrame(rows)
    out: list[Any] = []
    for i, atoms in enumerate(records):
        try:
            out.append(to_record(atoms, label=f"{path.name}@{i}"))
        except CGCNNError as exc:
            out.append(exc)
    return df, "record", out


def read_layout(spec: DatasetSpec, fmt: str) -> tuple[Any, str, list[Any]]:
    """``(frame, kind, sources)`` of the dataset at ``spec.path`` in layout ``fmt``
    (``csv``, ``parquet``, ``json``, ``cif_dir`` or ``ase``).

    Raises:
        DatasetError: unreadable file (not in that format, not UTF-8 text) or a missing structure
            column / key.
    """
    readers = {"csv": _read_csv, "parquet": _read_csv, "json": _read_json, "cif_dir": _read_cif_dir, "ase": _read_ase}
    try:
        return readers[fmt](spec)
    except StructureReadError as exc:  # the file itself (a zip of several files): the dataset cannot be read
        raise DatasetError(str(exc)) from None
    except CGCNNError:
        raise
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{spec.path}: {undecodable_text(Path(spec.path), exc, fmt)}") from None
    except (ValueError, OSError, EOFError) as exc:  # pandas' parser, json, gzip, pyarrow errors
        raise DatasetError(f"{spec.path}: cannot be read as {fmt} ({type(exc).__name__}: {_first_line(exc)}){_hint(spec, fmt)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _hint(spec: DatasetSpec, fmt: str) -> str:
    """What the file may be instead, for an error reading it as ``fmt``."""
    magic = file_magic(Path(spec.path))
    if magic == "parquet" and fmt != "parquet":
        return "; this is a Parquet file: set format to parquet"
    if fmt == "json":
        return "; json expects a list of objects (or one object per line); a CSV table needs format csv"
    if fmt == "parquet":
        return "; not a Parquet file: set format to csv for CSV text"
    return ""

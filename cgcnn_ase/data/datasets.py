"""Labelled crystal datasets: a table of targets plus one structure per row.

Five layouts are read (``DatasetSpec.format="auto"`` picks one from the path):

``csv``
    A CSV / CSV.gz table with a CIF-text column (default ``cif``) and target columns,
    as in ``shared/data/mp_cgcnn46k_kdmsit/data.csv.gz``.
``parquet``
    The same table as a Parquet file (``.parquet``, ``.pq``).
``json``
    A JSON list of objects (or JSON lines; gzip, bzip2, xz or a zip of one file), each holding a
    pymatgen ``Structure.as_dict()`` (default key ``structure``), an id and targets, as in
    ``shared/data/mp_elastic_binary2025_matcalc/*.json.gz``.
``cif_dir``
    The original CGCNN layout: a directory of ``ID.cif`` files and an ``id_prop.csv``
    without header (``id,target[,target_2,...]``).
``ase``
    An extxyz / ASE trajectory file or an ASE database (``.db``); targets are read from
    ``atoms.info`` (and, for files, the scalar results of an attached calculator, since
    ASE stores ``energy=`` of extxyz there) or from a database row's key-value pairs.

Loading happens in two steps so that training can skip the slow one:

1. :func:`load_table` reads the table, applies ``drop_ids``, ``filter`` and ``target``,
   and drops rows whose target is missing. It does not parse structures; each row gets a
   content hash of its raw structure (the graph cache key).
2. :func:`parse_structures` parses the selected rows into
   :class:`~cgcnn_ase.io.records.StructureRecord` objects by the one reader
   (:func:`cgcnn_ase.io.reader.read_record`: CIF text as CIF files are read), in a process
   pool for large datasets.

:func:`load_dataset` does both and applies the per-atom division and the transform
(in that order), returning a :class:`LabelledDataset` of ``(records, targets, ids)``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cgcnn_ase.data.table_formats import also_missing, read_layout
from cgcnn_ase.errors import CGCNNError, ConfigError, DatasetError, GeometryWarning
from cgcnn_ase.io.reader import CifReader, input_kind, read_record
from cgcnn_ase.io.records import StructureRecord
from cgcnn_ase.warning_blocks import catch_warnings

logger = logging.getLogger(__name__)

DatasetFormat = Literal["auto", "csv", "parquet", "json", "cif_dir", "ase"]
Transform = Literal["none", "log10"]

#: Id columns tried, in order, when ``DatasetSpec.id_column`` is not given.
ID_COLUMNS = ("material_id", "mp_id", "id", "name", "db_id")
#: Below this many structures, parsing runs in the calling process (a pool costs ~1 s to start).
POOL_THRESHOLD = 200


@dataclass
class DatasetSpec:
    """Where a labelled dataset lives and how to turn its rows into (structure, target) pairs.

    Attributes:
        path: file or directory (relative paths resolve against the current directory).
        target: the target column (CSV / JSON key / ``atoms.info`` key; ``target`` for
            ``cif_dir``, whose extra columns are ``target_2``, ``target_3``, ...), or a
            pandas expression over the columns, e.g. ``"band_gap == 0"`` (booleans become
            0/1 labels) or ``"(3*K - 2*G) / (2*(3*K + G))"``. Column names with spaces
            need backticks: ``"`e_form` / 5"``.
        format: ``"auto"`` (from the path), ``"csv"`` (also ``.tsv``), ``"parquet"``, ``"json"``
            (a list of objects, or JSON lines), ``"cif_dir"`` or ``"ase"``.
        id_column: column holding unique ids; default the first of ``material_id``,
            ``mp_id``, ``id``, ``name`` (and, for ASE databases, the row id ``db_id``)
            that exists, else the row number.
        structure_column: column/key with the structure: CIF (or POSCAR, extended XYZ) text for
            ``csv`` and ``parquet`` (default ``cif``), a pymatgen structure dict for ``json``
            (default ``structure``).
        transform: ``"none"`` or ``"log10"`` (applied after ``per_atom``; non-positive
            values are an error: filter them out first).
        filter: pandas query selecting rows before anything else is computed, e.g.
            ``"band_gap > 0"``.
        per_atom: divide the target by the number of atoms in the structure.
        drop_ids: ids to leave out (e.g. outliers listed in a dataset's README).
        limit: keep only the first ``limit`` rows after filtering (quick experiments).
        name: short dataset name for model cards (default: the file or folder name).
    """

    path: str
    target: str = "target"
    format: DatasetFormat = "auto"
    id_column: str | None = None
    structure_column: str | None = None
    transform: Transform = "none"
    filter: str | None = None
    per_atom: bool = False
    drop_ids: list[str] = field(default_factory=list)
    limit: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        self.path = str(self.path)
        if self.format not in ("auto", "csv", "parquet", "json", "cif_dir", "ase"):
            raise DatasetError(f"unknown dataset format {self.format!r}; choose auto, csv, parquet, json, cif_dir or ase")
        if self.transform in (None, ""):
            self.transform = "none"
        if self.transform not in ("none", "log10"):
            raise DatasetError(f"unknown target transform {self.transform!r}; choose 'none' or 'log10'")
        self.drop_ids = [str(i) for i in (self.drop_ids or [])]
        if self.limit is not None and int(self.limit) < 1:
            raise DatasetError(f"limit must be a positive number of rows, got {self.limit}")

    @property
    def resolved_format(self) -> str:
        """The format, detected from the path when ``format="auto"``."""
        return self.format if self.format != "auto" else detect_format(self.path)

    @property
    def display_name(self) -> str:
        """``name``, or the dataset folder / file name without extensions."""
        if self.name:
            return self.name
        path = Path(self.path)
        if path.name.startswith("data.") and path.parent.name:  # shared/data/<name>/data.csv.gz
            return path.parent.name
        return path.name.split(".")[0] or str(path)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | str) -> DatasetSpec:
        """From a mapping (unknown keys raise :class:`DatasetError`) or a bare path."""
        if isinstance(data, (str, os.PathLike)):
            return cls(path=str(data))
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise DatasetError(f"unknown dataset settings {sorted(unknown)}; known: {sorted(known)}")
        if "path" not in data:
            raise DatasetError("the dataset needs a 'path'")
        return cls(**data)


def detect_format(path: str | os.PathLike) -> str:
    """Dataset format from a path: a directory is ``cif_dir``; otherwise by extension."""
    p = Path(path)
    if p.is_dir():
        return "cif_dir"
    name = p.name.lower()
    for suffix in (".gz", ".bz2", ".xz", ".zip"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".json", ".jsonl", ".ndjson")):
        return "json"
    if name.endswith((".extxyz", ".xyz", ".traj", ".db")):
        if p.name.lower().endswith(".zip"):
            raise DatasetError(f"{path}: ASE does not read zip archives; unzip it (gzip, bzip2 and xz files are read)")
        return "ase"
    raise DatasetError(
        f"{path}: cannot tell the dataset format from the name; set format to csv, parquet, json, cif_dir or ase"
    )


# ---------------------------------------------------------------------------------------------
# Step 1: the table
# ---------------------------------------------------------------------------------------------


@dataclass
class DatasetTable:
    """Selected rows of a dataset, structures not yet parsed.

    Attributes:
        spec: the specification that produced the table.
        ids: unique row ids, as strings.
        raw_targets: targets before ``per_atom`` and ``transform``, float64, shape (n,).
        keys: content hash of each row's raw structure (32 hex digits), the graph cache key.
        kind: what ``sources`` hold: ``"cif_text"``, ``"structure_dict"``, ``"cif_file"``
            or ``"record"``.
        sources: one raw structure per row (CIF text, dict, file path or record).
        n_rows: rows in the file before any selection.
        dropped: rows left out, by reason (``drop_ids``, ``filter``, ``missing_target``, ``limit``).
        missing_targets: the ids of the ``missing_target`` rows (no finite numeric target).
        ids_are_rows: the ids are row numbers (no id column was found), which name no crystal outside
            this file.
    """

    spec: DatasetSpec
    ids: list[str]
    raw_targets: np.ndarray
    keys: list[str]
    kind: str
    sources: list[Any]
    n_rows: int
    dropped: dict[str, int]
    missing_targets: list[str] = field(default_factory=list)
    ids_are_rows: bool = False

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int] | np.ndarray) -> DatasetTable:
        """The rows at ``indices``, in that order."""
        idx = [int(i) for i in indices]
        return DatasetTable(
            spec=self.spec,
            ids=[self.ids[i] for i in idx],
            raw_targets=self.raw_targets[idx],
            keys=[self.keys[i] for i in idx],
            kind=self.kind,
            sources=[self.sources[i] for i in idx],
            n_rows=self.n_rows,
            dropped=dict(self.dropped),
            missing_targets=list(self.missing_targets),
            ids_are_rows=self.ids_are_rows,
        )


def _hash_text(prefix: str, data: bytes) -> str:
    return hashlib.blake2b(prefix.encode() + b"\0" + data, digest_size=16).hexdigest()


def _text_key(text: str) -> str:
    """The cache key of a structure given as text: CIF text itself; a path (a table cell naming a file, or
    the original layout's CIF files), the file's name and contents, so an edited file is read again; a
    missing file, its absolute path (the same relative path may name a file in another folder)."""
    if input_kind(text) != "path":
        return _hash_text("cif", text.encode())
    path = Path(text.strip())
    if path.is_file():
        return _hash_text("file", path.name.encode() + b"\0" + path.read_bytes())
    return _hash_text("missing", str(path.absolute()).encode())


def _record_key(record: StructureRecord) -> str:
    """Content hash of an in-memory crystal (atomic numbers, fractional coordinates, cell)."""
    data = b"".join(
        np.ascontiguousarray(a, dtype=dt).tobytes()
        for a, dt in ((record.numbers, "<i8"), (record.frac_coords, "<f8"), (record.cell, "<f8"))
    )
    return _hash_text("record", data)


def _pick_id_column(columns: Sequence[str], requested: str | None, path: str, target: str | None = None) -> str | None:
    """The id column: ``requested``, else the first of :data:`ID_COLUMNS` present (``None``: none is).

    Raises:
        DatasetError: no column ``requested``; a ``target`` that is a plain name of no column is named in the
            same message, so that a file of another layout is described in one go.
    """
    if requested is not None:
        if requested not in columns:
            also = also_missing(columns, target=target)
            raise DatasetError(f"{path}: no id column {requested!r}{also}; columns: {list(columns)}")
        return requested
    return next((c for c in ID_COLUMNS if c in columns), None)


def _evaluate_target(df: Any, target: str, path: str) -> np.ndarray:
    """A target column, or a pandas expression over the columns, as float64."""
    frame = df
    if target in df.columns:
        values = df[target]
    else:
        try:
            values, frame, _ = _evaluate_expression(df, target)
        except Exception as exc:  # noqa: BLE001 - pandas raises many types for bad expressions
            if target == DatasetSpec.target:  # the default: the config never named one
                raise DatasetError(
                    f"{path}: data.target is not set (and there is no column {target!r}); name the column or an "
                    f"expression to learn, e.g. data.target: {list(df.columns)[-1]}; columns: {list(df.columns)}"
                ) from None
            raise DatasetError(
                f"{path}: target {target!r} is neither a column nor a valid expression "
                f"({type(exc).__name__}: {exc}); columns: {list(df.columns)}"
            ) from None
    import pandas as pd

    if not hasattr(values, "dtype"):  # a scalar expression
        values = pd.Series(values, index=df.index)
    if values.dtype == bool:
        out = values.to_numpy(dtype=np.float64)
    else:
        out = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    if target not in df.columns:  # an expression: a missing value it reads gives a missing target, not False (0)
        out[_missing_in_expression(frame, target)] = np.nan
    return out


#: Text that marks a missing value in a column of numbers (compared in lower case).
MISSING_MARKERS = frozenset({"n/a", "n.a.", "n.a", "na", "#n/a", "nan", "none", "null", "nil", "-", "--", "?", "missing",
                             "unknown", "not available"})  # fmt: skip
#: Calls with which an expression deals with missing values itself (its rows are then not left out for them).
HANDLES_MISSING = ("isna", "isnull", "notna", "notnull", "fillna")


def _evaluate_expression(df: Any, expression: str) -> tuple[Any, Any, list[str]]:
    """``df.eval(expression)`` (pandas' python engine) with the text columns it reads that hold numbers among
    missing-value text (``"n/a"``) read as numbers, that text as NaN: ``(values, frame evaluated, those
    columns)``. A column is read so when its text is all :data:`MISSING_MARKERS`; after a ``TypeError`` (text
    compared with a number, e.g. ids read as text) also when any of its cells is a number."""
    names = [name for name in df.columns if _names_column(expression, name)]
    frame, coerced = _numbers_read(df, names, any_number=False)
    try:
        return frame.eval(expression, engine="python"), frame, coerced
    except TypeError:
        frame, coerced = _numbers_read(df, names, any_number=True)
        if not coerced:
            raise
        return frame.eval(expression, engine="python"), frame, coerced


def _names_column(expression: str, name: Any) -> bool:
    """Whether ``expression`` reads the column ``name`` (plainly or in backticks; not inside a quoted string)."""
    text = str(name)
    expression = re.sub(r"'[^']*'|\"[^\"]*\"", "''", expression)
    if f"`{text}`" in expression:
        return True
    return text.isidentifier() and re.search(rf"(?<![\w.]){re.escape(text)}\b", expression) is not None


def _numbers_read(df: Any, names: Sequence[Any], *, any_number: bool) -> tuple[Any, list[str]]:
    """``df`` with the text columns among ``names`` that hold numbers turned into numbers (other cells NaN):
    those whose other text is all :data:`MISSING_MARKERS` (``any_number``: any column with a number); and those
    columns' names."""
    out, coerced = df, []
    for name in names:
        if df[name].dtype != object:
            continue
        given = df[name].dropna()
        numbers = np.isfinite(_numbers(given))
        text = {str(v).strip().lower() for v, number in zip(given, numbers) if not number}
        if numbers.any() and (any_number or (text and text <= MISSING_MARKERS)):
            out = out.copy() if out is df else out
            out[name] = _numbers(df[name])
            coerced.append(str(name))
    return out, coerced


def _missing_in_expression(df: Any, expression: str) -> np.ndarray:
    """Rows where a column that ``expression`` names (plainly or in backticks) holds no value (NaN, None, blank);
    none for an expression that deals with missing values itself (``isna()``, ``fillna()``, ...)."""
    import pandas as pd

    missing = np.zeros(len(df), dtype=bool)
    if any(re.search(rf"\.{call}\s*\(", expression) for call in HANDLES_MISSING):
        return missing
    for name in df.columns:
        if _names_column(expression, name):
            column = df[name]
            blank = column.map(lambda v: isinstance(v, str) and not v.strip()) if column.dtype == object else False
            missing |= np.asarray(pd.isna(column) | blank, dtype=bool)
    return missing


def load_table(spec: DatasetSpec) -> DatasetTable:
    """Read a dataset's table and select rows (no structure parsing, except ASE inputs).

    Order: ``drop_ids``, ``filter``, target evaluation, rows with a missing/non-finite
    target dropped (with a warning naming the first ids), ``limit``.

    Raises:
        DatasetError: unreadable file, missing column, bad filter or target, duplicate ids.
    """
    fmt = spec.resolved_format
    path = Path(spec.path)
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset file or directory (relative paths resolve against {Path.cwd()})")
    df, kind, sources = read_layout(spec, fmt)
    n_rows = len(df)
    id_col = _pick_id_column(list(df.columns), spec.id_column, spec.path, spec.target)
    if id_col:
        no_id = np.flatnonzero(df[id_col].isna().to_numpy() | (df[id_col].astype(str).str.strip() == "").to_numpy())
        if len(no_id):
            raise DatasetError(f"{path}: {len(no_id)} of {n_rows} rows (first: row {no_id[0]}) have no id in column "
                               f"{id_col!r}; give every row an id, or set id_column to a column that has them all")  # fmt: skip
    ids = df[id_col].astype(str).tolist() if id_col else [str(i) for i in range(n_rows)]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = [i for i in ids if i in seen or seen.add(i)]
        advice = ("each row of id_prop.csv names one CIF file: remove the repeated rows" if fmt == "cif_dir"
                  else "set id_column to a column of unique ids")  # fmt: skip
        raise DatasetError(f"{path}: ids in column {id_col!r} are not unique (e.g. {dup[:3]}); {advice}")
    rows, targets, dropped, missing = _select_rows(spec, df.reset_index(drop=True), ids)
    chosen = [sources[i] for i in rows]
    return DatasetTable(
        spec=spec,
        ids=[ids[i] for i in rows],
        raw_targets=targets[rows].astype(np.float64),
        keys=_structure_keys(kind, chosen),
        kind=kind,
        sources=chosen,
        n_rows=n_rows,
        dropped=dropped,
        missing_targets=[ids[i] for i in missing],
        ids_are_rows=id_col is None,
    )


def _select_rows(
    spec: DatasetSpec, df: Any, ids: list[str]
) -> tuple[np.ndarray, np.ndarray, dict[str, int], np.ndarray]:
    """:func:`load_table`'s row selection.

    Returns:
        ``(rows, targets, dropped, missing)``: the selected row positions, shape (n_selected,); every
        row's raw target, float64, shape (n_rows,); rows left out, by reason; the positions of the
        rows left out for want of a finite target.
    """
    path = Path(spec.path)
    keep = np.ones(len(df), dtype=bool)
    dropped: dict[str, int] = {}
    if spec.drop_ids:
        wanted = set(spec.drop_ids)
        mask = np.array([i in wanted for i in ids])
        missing = wanted - {i for i, m in zip(ids, mask) if m}
        if missing:
            warnings.warn(f"{path}: drop_ids not found in the dataset: {sorted(missing)[:5]}{_near_ids_hint(missing, ids)}",
                          UserWarning, stacklevel=3)  # fmt: skip
        keep &= ~mask
        dropped["drop_ids"] = int(mask.sum())
    if spec.filter:
        try:
            selected, frame, mixed = _evaluate_expression(df, spec.filter)
        except Exception as exc:  # noqa: BLE001
            raise DatasetError(
                f"{path}: invalid filter {spec.filter!r} ({type(exc).__name__}: {exc}); columns: {list(df.columns)}"
            ) from None
        selected = np.asarray(selected, dtype=bool).reshape(-1)
        if selected.shape != (len(df),):
            raise DatasetError(f"{path}: filter {spec.filter!r} must give one True/False per row")
        missing = _missing_in_expression(frame, spec.filter)  # a row without a value the filter reads is not chosen
        if mixed:
            warnings.warn(f"{path}: filter {spec.filter!r}: column(s) {mixed} hold text among numbers; those cells are "
                          "missing values, and rows missing a value the filter reads are left out",
                          UserWarning, stacklevel=3)  # fmt: skip
        selected &= ~missing
        dropped["filter"] = int((keep & ~selected).sum())
        keep &= selected
    targets = _evaluate_target(df, spec.target, spec.path)
    bad = keep & ~np.isfinite(targets)
    if bad.any():
        examples = [ids[i] for i in np.flatnonzero(bad)[:5]]
        warnings.warn(
            f"{path}: {int(bad.sum())} rows have no finite numeric {spec.target!r} and are dropped (e.g. {examples})"
            + _text_label_hint(df, spec.target, bad),
            UserWarning,
            stacklevel=3,
        )
        dropped["missing_target"] = int(bad.sum())
        keep &= ~bad
    missing = np.flatnonzero(bad)
    rows = np.flatnonzero(keep)
    if spec.limit is not None and len(rows) > spec.limit:
        dropped["limit"] = len(rows) - int(spec.limit)
        rows = rows[: int(spec.limit)]
    if len(rows) == 0:
        raise DatasetError(f"{path}: no rows left after drop_ids/filter/missing targets ({dropped})")
    return rows, targets, dropped, missing


def content_digest(source: Any) -> str | None:
    """A digest (16 hex digits) of a raw structure's content that does not depend on where it is kept or how it
    is laid out: CIF or other structure text, or a structure file's text, with all whitespace collapsed (a CIF
    copied from a table cell into a file, or re-indented, digests alike); a structure dict's sorted JSON.
    ``None`` for parsed records, missing or unreadable files."""
    if isinstance(source, Mapping):
        data = json.dumps(source, sort_keys=True, default=str)
    elif isinstance(source, (str, os.PathLike)):
        if input_kind(source) == "path":
            try:
                data = Path(os.fspath(source).strip()).read_text(encoding="utf-8", errors="replace")
            except (OSError, ValueError):
                return None
        else:
            data = str(source)
        data = " ".join(data.split())
    else:
        return None
    return hashlib.blake2b(data.encode(), digest_size=8).hexdigest()


def structure_digest(source: Any) -> str | None:
    """A row's raw structure as a digest that two copies share however they are kept: :func:`content_digest` of
    text, files and dicts, the atoms, coordinates and cell of a parsed record; ``None`` for a row whose structure
    could not be read."""
    if isinstance(source, Exception):
        return None
    return _record_key(source) if isinstance(source, StructureRecord) else content_digest(source)


def _structure_keys(kind: str, sources: list[Any]) -> list[str]:
    """The graph-cache key of each raw structure: a content hash (32 hex digits); a row the layout's reader
    found unusable is keyed by its error."""

    def key(source: Any) -> str:
        if isinstance(source, Exception):
            return _hash_text("error", str(source).encode())
        if kind in ("cif_text", "cif_file"):
            return _text_key(str(source))
        if kind == "structure_dict":
            return _hash_text("pmg", json.dumps(source, sort_keys=True).encode())
        return _record_key(source)

    return [key(s) for s in sources]


# ---------------------------------------------------------------------------------------------
# Step 2: structures
# ---------------------------------------------------------------------------------------------


def parse_one(kind: str, source: Any, label: str, *, cif_reader: CifReader = "gemmi") -> StructureRecord:
    """One raw structure (CIF text, structure dict, CIF path or record) -> validated record,
    read by the one reader (:func:`cgcnn_ase.io.reader.read_record`) as every entry point reads it.

    Args:
        kind: ``"cif_text"``, ``"structure_dict"``, ``"cif_file"`` or ``"record"`` (set by
            :func:`load_table`).
        source: the raw structure of that kind.
        label: the row id, for the record and messages.
        cif_reader: how CIFs are read: the model's
            :func:`~cgcnn_ase.io.reader.cif_reader_for_policy` (``"gemmi"`` for the default
            ``symmetric`` neighbour policy, ``"pymatgen"`` for ``original``).

    Raises:
        InvalidStructureError (or subclass): unparsable, disordered or invalid structure,
            or a CIF holding several structures.
    """
    from cgcnn_ase.errors import StructureReadError

    if isinstance(source, Exception):  # a row the layout's reader found unusable (no structure)
        raise source
    if kind == "record":
        return source
    if kind == "cif_file":
        if not Path(source).is_file():
            path = Path(source)
            hint = ""
            if path.name.lower().endswith(".cif.cif") and path.with_suffix("").is_file():  # round 29e
                hint = f" (the id already ends in .cif: id_prop.csv names each CIF without it, e.g. {path.stem[:-4]})"
            elif near := _names_by_case(str(path.parent), _modified(path.parent)).get(path.name.lower()):
                hint = f" ({near} is there: ids and file names must match in case)"
            raise StructureReadError(f"{label}: CIF file {source} is missing{hint}")
        source = Path(source)
    elif kind not in ("cif_text", "structure_dict"):  # pragma: no cover - kinds are set by load_table
        raise ValueError(f"unknown structure kind {kind!r}")
    return read_record(source, label, cif_reader=cif_reader)


def _work(task: tuple[str, Any, str, Callable[[StructureRecord], Any] | None, CifReader]) -> tuple[bool, Any]:
    """Pool worker: parse (and post-process) one structure; errors come back as messages."""
    kind, source, label, post, cif_reader = task
    try:
        with catch_warnings():  # as the graph cache: a dataset's geometry is its own (16 MP monolayers)
            warnings.simplefilter("ignore", GeometryWarning)
            record = parse_one(kind, source, label, cif_reader=cif_reader)
        return True, post(record) if post is not None else record
    except CGCNNError as exc:
        return False, str(exc)


def quiet_worker(stop: Any = None, parent: int | None = None) -> None:
    """Pool initializer: the worker ignores Ctrl-C (SIGINT), which a terminal sends to every process of the job; the
    parent stops the pool and reports the interruption once (round 29a: each worker printed a traceback).

    Without ``stop`` the worker ends quietly on SIGTERM (a parent's handler, inherited through ``fork``, would not).
    With ``stop`` (a flag of :class:`WorkerPool`, read without a lock) it ends on SIGTERM only once the parent has set
    ``stop`` or is gone (``parent``: its pid): a SIGTERM to the whole process group, as a batch system's time limit
    sends, otherwise killed idle workers holding the pool's task-queue lock, and the parent's orderly stop waited
    for it forever (round 31b); the parent stops them itself (:meth:`WorkerPool.kill`)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # this is the worker's own process, started for this pool
    if stop is None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        if stop.value or os.getppid() != parent:
            raise SystemExit(128 + signum)  # unwinds the pool's `with lock` blocks (os._exit would not)

    signal.signal(signal.SIGTERM, on_sigterm)


def _start_worker(stop: Any, parent: int, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
    """:class:`WorkerPool`'s initializer: :func:`quiet_worker`, then the pool's own."""
    quiet_worker(stop, parent)
    if initializer is not None:
        initializer(*initargs)


class WorkerPool:
    """A ``multiprocessing`` pool (:func:`worker_start_method`) whose workers leave Ctrl-C and SIGTERM to this
    process: use ``with WorkerPool(n) as pool:`` (``pool`` is the ``multiprocessing.Pool``), or :attr:`pool` and
    :meth:`close` / :meth:`kill`; wait for results with :func:`result_of`.

    When this process stops on SIGTERM itself (Python's default, no handler), the workers do too, as it does. When it
    handles SIGTERM (the command line, a user's handler), they leave it to this process, and an interruption
    (``KeyboardInterrupt``, :class:`~cgcnn_ase.errors.TerminatedError`, ``SystemExit``) leaving the ``with`` block
    kills them (:meth:`kill`) instead of the orderly stop, which a signal can leave waiting forever; so does a dead
    worker (:func:`check_workers`). :meth:`kill` and :func:`check_workers` read ``multiprocessing.Pool``'s private
    ``_pool``, ``_worker_handler`` and ``_terminate`` (each through ``getattr``: without them they do less, never
    fail); the pool has no public way to kill its workers or to tell that one died.
    """

    def __init__(self, processes: int, initializer: Callable[..., Any] | None = None,
                 initargs: Sequence[Any] = ()) -> None:  # fmt: skip
        import signal

        context = multiprocessing.get_context(worker_start_method())
        handled = signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
        self._stop = context.RawValue("b", 0) if handled else None  # a lock in a signal handler can deadlock
        self.pool = context.Pool(processes, initializer=_start_worker,
                                 initargs=(self._stop, os.getpid(), initializer, tuple(initargs)))  # fmt: skip
        self.pool._cgcnn_workers = {p.pid for p in getattr(self.pool, "_pool", ())}  # see check_workers

    def close(self) -> None:
        """Stop the workers (those busy included) and wait for them: ``multiprocessing``'s orderly ``terminate``."""
        if self._stop is not None:
            self._stop.value = 1
        self.pool.terminate()
        self.pool.join()

    def kill(self) -> None:
        """Kill the workers (SIGKILL) and leave the pool: for an interruption, where ``terminate`` may wait forever
        for a lock that a worker ended by a signal held. The pool's threads are left blocked (daemon threads)."""
        from multiprocessing import pool as mp_pool

        self.pool._state = mp_pool.TERMINATE
        handler = getattr(self.pool, "_worker_handler", None)
        if handler is not None:  # else it starts new workers in place of the killed ones
            handler._state = mp_pool.TERMINATE
        workers = list(getattr(self.pool, "_pool", ()))
        for process in workers:
            try:
                process.kill()
            except OSError:  # gone meanwhile
                pass
        for process in workers:
            process.join(timeout=5)
        finalizer = getattr(self.pool, "_terminate", None)
        if finalizer is not None:  # its orderly stop, at exit, would wait on the killed workers' locks
            finalizer.cancel()

    def __enter__(self) -> Any:
        return self.pool

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.kill() if interrupted(exc_type) else self.close()


def interrupted(exc_type: type[BaseException] | None) -> bool:
    """Whether an exception leaving a pool's ``with`` block calls for :meth:`WorkerPool.kill`: Ctrl-C, SIGTERM
    (:class:`~cgcnn_ase.errors.TerminatedError`), ``SystemExit`` or a dead worker (:class:`~cgcnn_ase.errors.WorkerError`)."""
    from cgcnn_ase.errors import WorkerError

    return exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, SystemExit, WorkerError))


def check_workers(pool: Any) -> None:
    """Raise :class:`~cgcnn_ase.errors.WorkerError` when a worker of ``pool`` (a :class:`WorkerPool`'s) has died:
    ``multiprocessing`` replaces it without a word, and its task is never done (round 32a: a run waited forever)."""
    started = getattr(pool, "_cgcnn_workers", None)
    workers = getattr(pool, "_pool", None)
    if started is None or workers is None:
        return
    dead = [p for p in list(workers) if p.exitcode is not None and p.exitcode != 0]
    if dead or not {p.pid for p in list(workers)} <= started:
        from cgcnn_ase.errors import WorkerError

        code = dead[0].exitcode if dead else None
        how = f" by signal {-code}" if code is not None and code < 0 else ""
        raise WorkerError(f"a worker process died{how} (the out-of-memory killer or `kill -9` ends one with signal 9) "
                          "and its work with it: the run stops. Use fewer workers or smaller chunks if memory is short")  # fmt: skip


def _checked(results: Any, pool: Any) -> Iterator[Any]:
    """The items of the lists that ``pool.imap``'s iterator (``chunksize=1``, whose ``next`` takes a timeout) gives,
    checking every second that no worker died (:func:`check_workers`)."""
    while True:
        try:
            yield from results.next(timeout=1.0)
        except StopIteration:
            return
        except multiprocessing.TimeoutError:
            check_workers(pool)


def _work_all(tasks: list[Any]) -> list[tuple[bool, Any]]:
    """:func:`_work` on each of a chunk of tasks (one pool task)."""
    return [_work(task) for task in tasks]


def result_of(pending: Any, pool: Any) -> Any:
    """``pending.get()`` of an ``AsyncResult`` of ``pool``, checking every second that no worker died
    (:func:`check_workers`)."""
    while True:
        try:
            return pending.get(timeout=1.0)
        except multiprocessing.TimeoutError:
            check_workers(pool)


def _near_ids_hint(missing: set[str], ids: Sequence[str]) -> str:
    """For drop_ids not found: the dataset's ids they name with a file suffix or in another case, if any."""
    by_key = {str(i).lower(): str(i) for i in ids}
    near = {}
    for entry in sorted(missing):
        stem = entry.rsplit(".", 1)[0] if "." in entry and not entry.rsplit(".", 1)[1].isdigit() else entry
        match = by_key.get(entry.lower()) or by_key.get(stem.lower())
        if match is not None:
            near[entry] = match
    if not near:
        return ""
    pairs = ", ".join(f"{entry!r} -> {match!r}" for entry, match in list(near.items())[:5])
    return f" (ids are matched exactly, without a file suffix; did you mean {pairs}?)"


def _modified(folder: Path) -> int:
    """``folder``'s modification time in ns (-1 if it cannot be read): a key that changes when files come or go."""
    try:
        return folder.stat().st_mtime_ns
    except OSError:
        return -1


@functools.lru_cache(maxsize=4)
def _names_by_case(folder: str, modified: int) -> dict[str, str]:
    """The file names of ``folder`` by their lower-case form, for the missing-file hint: listed once per folder and
    ``modified`` time (:func:`_modified`), so a folder whose files change is listed again."""
    try:
        return {name.lower(): name for name in os.listdir(folder)}
    except OSError:
        return {}


def worker_start_method() -> str:
    """How the package starts worker processes (dataset parsing here, and inference's worker pools):
    ``fork`` on Linux, which unlike ``spawn``/``forkserver`` works from notebooks and scripts without a
    ``__main__`` guard (workers that run torch use one torch thread, as torch's thread pool does not
    survive a fork). Elsewhere ``spawn`` (fork is unsafe on macOS). ``$CGCNN_ASE_START_METHOD`` overrides."""
    method = os.environ.get("CGCNN_ASE_START_METHOD")
    if method:
        import multiprocessing

        if method not in multiprocessing.get_all_start_methods():
            raise ConfigError(
                f"$CGCNN_ASE_START_METHOD is {method!r}; on this system it must be one of "
                f"{', '.join(multiprocessing.get_all_start_methods())} (or unset)"
            )
        return method
    return "fork" if sys.platform.startswith("linux") else "spawn"


def parse_structures(
    table: DatasetTable,
    indices: Sequence[int] | None = None,
    *,
    workers: int = 2,
    progress: bool = False,
    postprocess: Callable[[StructureRecord], Any] | None = None,
    cif_reader: CifReader = "gemmi",
) -> list[Any]:
    """Parse rows of ``table`` into records, in row order.

    Args:
        table: rows from :func:`load_table`.
        indices: rows to parse (default: all).
        workers: processes for parsing (1: in this process). Pools are only started for
            at least 200 structures.
        progress: show a tqdm bar.
        postprocess: a picklable function applied to each record in the worker (e.g.
            graph construction); its result replaces the record.
        cif_reader: how CIFs are read: the model's
            :func:`~cgcnn_ase.io.reader.cif_reader_for_policy`, as prediction reads them.

    Returns:
        One item per row: the record (or ``postprocess(record)``), or the error message
        (str) of a row that could not be used.
    """
    from cgcnn_ase.progress import progress_bar

    rows = range(len(table)) if indices is None else [int(i) for i in indices]
    tasks = [(table.kind, table.sources[i], table.ids[i], postprocess, cif_reader) for i in rows]
    bar = dict(show=bool(progress), total=len(tasks), unit=" structures", desc="parsing structures", leave=False)
    if workers <= 1 or len(tasks) < POOL_THRESHOLD or table.kind == "record":
        results = [_work(t) for t in progress_bar(tasks, **bar)]
    else:
        # the reader's modules are imported once here and inherited by forked workers
        if table.kind == "structure_dict" or (table.kind in ("cif_text", "cif_file") and cif_reader == "pymatgen"):
            import pymatgen.core  # noqa: F401
            import pymatgen.io.cif  # noqa: F401
        elif table.kind in ("cif_text", "cif_file"):
            import gemmi  # noqa: F401
        chunk = max(1, min(64, len(tasks) // (workers * 8)))
        with WorkerPool(workers) as pool:
            chunks = [tasks[k : k + chunk] for k in range(0, len(tasks), chunk)]
            results = list(progress_bar(_checked(pool.imap(_work_all, chunks), pool), **bar))
    return [value if ok else str(value) for ok, value in results]


@dataclass
class LabelledDataset:
    """Parsed crystals with their targets: a whole dataset in memory, for work in Python (:func:`load_dataset`;
    training and evaluation read the table and parse only the rows they use).

    Attributes:
        records: validated structures, shape-free list of length n.
        targets: targets after ``per_atom`` and ``transform``, float64, shape (n,).
        ids: row ids.
        spec: the dataset specification.
        errors: ``{id: message}`` of rows dropped because their structure was unusable.
        dropped: rows left out before parsing, by reason (see :class:`DatasetTable`).
    """

    records: list[StructureRecord]
    targets: np.ndarray
    ids: list[str]
    spec: DatasetSpec
    errors: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Any]:  # records, targets, ids = dataset
        return iter((self.records, self.targets, self.ids))


def finalize_targets(spec: DatasetSpec, raw: np.ndarray, n_atoms: np.ndarray | None, ids: Sequence[str]) -> np.ndarray:
    """Apply ``per_atom`` (needs ``n_atoms``) and ``transform`` to raw targets.

    Raises:
        DatasetError: ``log10`` of a non-positive value.
    """
    values = np.asarray(raw, dtype=np.float64).copy()
    if spec.per_atom:
        if n_atoms is None:
            raise ValueError("per_atom needs the number of atoms of each structure")
        values = values / np.asarray(n_atoms, dtype=np.float64)
    if spec.transform == "log10":
        bad = np.flatnonzero(~(values > 0))
        if len(bad):
            raise DatasetError(
                f"{spec.path}: log10 needs positive targets, but {len(bad)} rows are <= 0 "
                f"(e.g. {[ids[i] for i in bad[:5]]}); add a filter such as '{spec.target} > 0'"
            )
        values = np.log10(values)
    return values


def _text_label_hint(df: Any, target: str, bad: np.ndarray) -> str:
    """Why a target column's dropped values are not numbers, and what to do: a header row of
    ``id_prop.csv``, decimal commas, infinities, or text labels (``metal``/``insulator``) to turn
    into numbers with an expression."""
    if target not in df.columns:
        return ""
    column = df[target].to_numpy()
    dropped = column[bad]
    text = sorted({str(v).strip() for v in dropped if isinstance(v, str) and v.strip()})
    if bad[:1].any() and isinstance(column[0], str) and len(text) == 1 and target == "target" and "id" in df.columns:
        return (f"; the first row ({df['id'].iloc[0]!r}, {column[0]!r}) looks like a header: id_prop.csv has no "
                "header row (the original CGCNN layout), so remove it")  # fmt: skip
    commas = [t for t in text if re.fullmatch(r"[-+]?\d*,\d+", t)]
    if commas:
        return (f"; {commas[0]!r} has a decimal comma: write numbers with a decimal point ({commas[0].replace(',', '.')})"
                ", e.g. save the table from a spreadsheet with an English number format")  # fmt: skip
    number_first = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
    with_units = [t for t in text if re.fullmatch(number_first + r"\s*[^\d\s.,;:+-][^,;]*", t)]
    if with_units and len(with_units) * 2 >= len(text):  # round 29e: '101.0 GPa' got the advice to make labels
        number = re.match(number_first, with_units[0]).group(0)
        return (f"; {with_units[0]!r} carries a unit: write plain numbers ({number}), in the units the config names, "
                "e.g. strip the unit from the column in a spreadsheet")  # fmt: skip
    if not text:
        values = np.asarray(_numbers(dropped), dtype=np.float64)
        infinite = int(np.isinf(values).sum())
        return f"; {infinite} of them are infinite (inf): leave those rows out or give finite values" if infinite else ""
    shown = ", ".join(repr(t) for t in text[:4]) + (", ..." if len(text) > 4 else "")
    if np.isfinite(_numbers(column)).sum() * 2 >= len(column) or {t.lower() for t in text} <= MISSING_MARKERS:
        return f"; it holds text ({shown}) among numbers: those cells are taken as missing values"
    return (f"; it holds text ({shown}): for labels, give an expression as the target, e.g. "
            f"data.target: '{target} == \"{text[0]}\"' (1 where true, 0 elsewhere)")


def _numbers(values: Any) -> Any:
    """``values`` as numbers where they are (NaN elsewhere)."""
    import pandas as pd

    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy()


def warn_dropped_structures(spec: DatasetSpec, errors: dict[str, str]) -> None:
    """One warning summarising rows dropped because their structure was unusable."""
    if errors:
        first = next(iter(errors.items()))
        warnings.warn(
            f"{spec.path}: {len(errors)} structures could not be used and are left out (first: {first[0]}: {first[1]})",
            UserWarning,
            stacklevel=3,
        )


def load_dataset(spec: DatasetSpec | dict | str, *, workers: int = 2, progress: bool = False) -> LabelledDataset:
    """Load a labelled dataset: table, structures, final targets.

    Rows whose structure cannot be parsed or validated are dropped with one warning
    (their messages are in ``LabelledDataset.errors``).

    >>> records, targets, ids = load_dataset(DatasetSpec("data.csv.gz", target="band_gap"))  # doctest: +SKIP
    """
    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec.from_dict(spec)
    table = load_table(spec)
    parsed = parse_structures(table, workers=workers, progress=progress)
    good = [i for i, r in enumerate(parsed) if isinstance(r, StructureRecord)]
    errors = {table.ids[i]: r for i, r in enumerate(parsed) if not isinstance(r, StructureRecord)}
    warn_dropped_structures(spec, errors)
    records = [parsed[i] for i in good]
    ids = [table.ids[i] for i in good]
    n_atoms = np.array([len(r) for r in records])
    targets = finalize_targets(spec, table.raw_targets[good], n_atoms, ids)
    return LabelledDataset(records=records, targets=targets, ids=ids, spec=spec, errors=errors, dropped=table.dropped)


def class_labels_problem(
    targets: np.ndarray, target: str, *, per_atom: bool = False, one_class: bool = False
) -> str | None:
    """Why ``targets`` cannot be a classifier's labels (not 0 or 1; with ``one_class``, all of one class, which
    training cannot learn from), or ``None`` (also for no labels at all); ``target`` is the column or expression
    that made them."""
    if not np.size(targets):
        return None
    if per_atom and not is_binary_labels(targets):
        return (f"classification labels must be 0 or 1, and per_atom divides {target!r} by each crystal's number of "
                "atoms: set per_atom: false for a classifier")  # fmt: skip
    if not is_binary_labels(targets):
        return (f"classification labels must be 0 or 1; {target!r} gives {np.unique(targets)[:6].tolist()} (use an "
                "expression such as 'band_gap == 0')")  # fmt: skip
    if one_class and len(np.unique(targets)) < 2:
        return (f"every label of {target!r} is {int(targets[0])}: a classifier needs crystals of both classes (0 and 1); "
                "check data.target and data.filter")  # fmt: skip
    return None


def is_binary_labels(values: np.ndarray) -> bool:
    """True when every value is 0 or 1 (classification targets)."""
    values = np.asarray(values)
    return bool(values.size) and bool(np.all((values == 0) | (values == 1))) and not any(math.isnan(v) for v in values)


#: |value| above which a target cannot be a log10 of anything measured in ordinary units (10^20 GPa, eV, ...).
LOG10_LIMIT = 20.0
#: Standard deviations of a base model's training targets between their mean and a fine-tuning run's labels'
#: mean beyond which those labels are taken to be in other units, not merely another kind of crystal (``evaluate``
#: compares with the model's predictions instead, more closely: ``analysis.evaluation.PREDICTION_SHIFT_LIMIT``).
SHIFT_LIMIT = 4.0


def log_units_problem(values: np.ndarray, units: str) -> str | None:
    """Why ``values`` cannot be in the log units ``units`` (``"log10(GPa)"``): some exceed
    :data:`LOG10_LIMIT` in magnitude, as the raw values given for their logs do; ``None`` if they can
    (or ``units`` are no log units)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not units.lower().startswith("log") or not values.size:
        return None
    largest = float(np.max(np.abs(values)))
    if largest <= LOG10_LIMIT:
        return None
    inner = units[units.find("(") + 1:units.rfind(")")] if "(" in units and units.endswith(")") else "its units"
    return (f"targets up to {largest:.4g} cannot be in {units} (that would be 10^{largest:.0f} {inner}): if they are "
            f"raw values in {inner}, set data.transform: log10 so the model learns their log10")


def label_shift_problem(center: float, mean: float, std: float, units: str, what: str = "the labels' median",
                        reference: str = "the training targets' mean", limit: float = SHIFT_LIMIT) -> str | None:
    """Why labels look like they are in other units than a model's: their ``center`` (``what``: e.g. their
    median) lies more than ``limit`` training standard deviations ``std`` from ``mean`` (``reference``: e.g. the
    training targets' mean), all in ``units``; ``None`` otherwise (or with nothing finite to compare)."""
    if not all(math.isfinite(v) for v in (center, mean, std)) or std <= 0:
        return None
    distance = abs(center - mean) / std
    if distance <= limit:
        return None
    return (f"{what}, {center:.4g} {units}, lies {distance:.1f} standard deviations of the training targets "
            f"({std:.4g} {units}) from {reference} ({mean:.4g} {units}): check that they are in the same units and "
            "transformed the same way")

"""Streaming prediction: lazy inputs, bounded memory, incremental output, exact resume.

>>> from cgcnn_ase.inference.streaming import predict_stream
>>> summary = predict_stream(["generated/"], ["formation_energy"], "results.parquet")   # doctest: +SKIP
>>> summary = predict_stream(["generated/"], ["formation_energy"], "results.parquet", resume=True)  # doctest: +SKIP

Data flow, one chunk at a time (memory holds one chunk of structure records and its
result rows, whatever the input size)::

    inputs --iter_inputs--> (id, record | error) --chunks of chunk_size--> predict_items
           --> one result frame per chunk --> ChunkWriter (CSV append / one Parquet part file)

Inputs (:func:`iter_inputs`):

* structure files (CIF, POSCAR, ...), directories of them (listed lazily; sorted per
  directory unless ``sort=False``) and glob patterns;
* multi-frame files read frame by frame: extxyz/xyz/traj with :func:`ase.io.iread`, ASE
  databases (``.db``) row by row;
* tables given explicitly (``.csv``, ``.csv.gz``, ``.tsv``, ``.parquet``, ``.pq``) read in
  chunks of rows, with a column holding CIF text, a pymatgen structure dict (JSON text)
  or a structure file path;
* in-memory ``ase.Atoms`` / pymatgen ``Structure`` objects or ``(id, structure)`` pairs.

Ids (the ``id`` column; resume compares them exactly):

* a file holding one structure: its path as given (``dir/name.cif`` for directory members);
* frame ``i`` (0-based) of a multi-frame file: ``path@i``;
* row ``N`` of an ASE database: ``path@id=N`` (the database's own row id);
* row ``k`` (0-based data row) of a table: ``path@k``, or the value of ``id_column``;
* in-memory objects: ``input i`` (their position), or the id of an ``(id, structure)`` pair.

Resume: with ``resume=True`` the ids already in the output (successes and recorded
errors alike) are skipped before their structure is parsed or predicted, and new rows are
appended. The ids are held as 16-byte BLAKE2b digests in one sorted array (16 bytes per
finished item; a false match has probability below 1e-20 for 10^9 items). The final table
holds the same rows as an uninterrupted run when the inputs are the same and ids are
unique (give tables a unique ``id_column``, or none).

Outputs: CSV (one header, rows appended per chunk; a partial last line left by a killed
run is cut off on resume) or Parquet (a directory of ``part-NNNNNN.parquet`` files, one per
chunk, each written to a temporary name and renamed, so a killed run never leaves a broken
part). Columns: ``id``, one ``"<property> (<units>)"`` column per model (float64, NaN
where the item failed; an ensemble adds ``"<property>_std (<units>)"`` and a model
with a domain summary ``"<property>_domain_percentile (percent)"``), ``error`` (``None``
or the messages, joined by ``"; "``).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import numpy as np

from cgcnn_ase.errors import CGCNNError, InvalidStructureError, StreamError, StructureReadError
from cgcnn_ase.io.reader import CifReader, StructureRecord, read_structures, to_record

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cgcnn_ase.inference.predictor import CGCNNPredictor

__all__ = [
    "CSVChunkWriter",
    "ChunkResult",
    "FinishedIds",
    "OutputFormat",
    "ParquetChunkWriter",
    "StreamError",
    "StreamSummary",
    "arrow_schema",
    "cif_reader_for",
    "infer_format",
    "iter_file",
    "iter_files",
    "iter_inputs",
    "iter_prediction_chunks",
    "iter_table",
    "load_predictors",
    "model_columns",
    "open_writer",
    "parse_cell",
    "predict_items",
    "predict_stream",
    "read_finished_ids",
]

OutputFormat = Literal["csv", "parquet"]
Item = tuple[str, "StructureRecord | InvalidStructureError"]

#: Explicitly named files with these endings are tables (a column of structures).
TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet", ".pq")
#: Files read frame by frame with ase.io.iread (memory: one frame at a time).
FRAME_SUFFIXES = (".extxyz", ".xyz", ".traj")
#: ASE databases, read row by row.
DB_SUFFIXES = (".db",)
PARQUET_SUFFIXES = (".parquet", ".pq")


# =============================================================================================
# Finished ids (resume)
# =============================================================================================


class FinishedIds:
    """Ids already present in an output, compared exactly (16-byte digests, 16 bytes per id).

    ``in`` tests membership; :meth:`take` also counts the hits in ``skipped``.
    """

    def __init__(self, digests: np.ndarray | None = None) -> None:
        digests = np.zeros(0, dtype="S16") if digests is None else np.asarray(digests, dtype="S16")
        self._digests = np.unique(digests)  # sorted, unique
        self.skipped = 0

    @staticmethod
    def digest(item_id: str) -> bytes:
        """The 16-byte BLAKE2b digest of an id (UTF-8)."""
        return hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    @classmethod
    def from_ids(cls, batches: Iterable[Iterable[str]]) -> FinishedIds:
        """Build from batches of ids (e.g. one per file chunk), never holding the ids themselves."""
        parts = [np.array([cls.digest(str(i)) for i in batch], dtype="S16") for batch in batches]
        return cls(np.concatenate(parts) if parts else None)

    def __len__(self) -> int:
        return len(self._digests)

    def __contains__(self, item_id: object) -> bool:
        if not len(self._digests):
            return False
        key = np.array([self.digest(str(item_id))], dtype="S16")
        k = int(np.searchsorted(self._digests, key[0]))
        return k < len(self._digests) and self._digests[k] == key[0]

    def take(self, item_id: str) -> bool:
        """True if ``item_id`` is finished (and count it in ``skipped``)."""
        if item_id in self:
            self.skipped += 1
            return True
        return False


def _skip(finished: FinishedIds | None, item_id: str) -> bool:
    return finished is not None and finished.take(item_id)


# =============================================================================================
# Inputs
# =============================================================================================


def _pyarrow() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or a clear error naming the extra that installs them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise StreamError("Parquet files need pyarrow: pip install 'cgcnn-ase[scale]' (or pyarrow)") from None
    return pyarrow, pyarrow.parquet


def _lower_name(path: str | os.PathLike) -> str:
    return os.path.basename(os.fspath(path)).lower()


def _is_table(path: str | os.PathLike) -> bool:
    return _lower_name(path).endswith(TABLE_SUFFIXES)


def _is_structure_object(obj: Any) -> bool:
    """Single structures that happen to be iterable (Atoms and Structure iterate over sites)."""
    return isinstance(obj, (StructureRecord, Mapping)) or type(obj).__module__.startswith(("ase.", "pymatgen."))


def _dir_files(folder: str, sort: bool) -> Iterator[str]:
    """Files of ``folder`` (not recursive; hidden ones skipped): sorted by name, or in directory
    order without holding the listing (``sort=False``)."""
    if sort:
        names = sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_file())
        for name in names:
            yield os.path.join(folder, name)
        return
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_file():
                yield entry.path


def iter_files(inputs: str | os.PathLike | Iterable[str | os.PathLike], *, sort: bool = True) -> Iterator[str]:
    """Expand path arguments lazily: files as given, directories to their files, globs to matches.

    A path or pattern that matches nothing is yielded as is (it is then reported as a
    missing file). With ``sort=True`` (the CLI's order) one directory's or pattern's names
    are sorted in memory (about 100 bytes per name); ``sort=False`` streams them.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            yield from _dir_files(item, sort)
        elif not os.path.exists(item) and glob.has_magic(item):
            matches = glob.iglob(item, recursive=True)
            found = False
            for match in sorted(matches) if sort else matches:
                found = True
                yield match
            if not found:
                yield item
        else:
            yield item


def iter_inputs(
    inputs: Any,
    *,
    column: str = "cif",
    id_column: str | None = None,
    cif_reader: CifReader = "gemmi",
    sort: bool = True,
    table_chunk_rows: int = 4096,
    finished: FinishedIds | None = None,
) -> Iterator[Item]:
    """Lazily read structures from files, directories, globs, tables, databases and objects.

    Args:
        inputs: one input or an iterable of them: paths (files, directories, glob
            patterns, tables), ``ase.Atoms`` / pymatgen ``Structure`` / records, or
            ``(id, structure)`` pairs.
        column: table column holding CIF text, pymatgen structure-dict JSON, or file paths.
        id_column: table column of unique ids (``None``: ``path@row``).
        cif_reader: ``"gemmi"`` (fast) or ``"pymatgen"`` (needed by models using the
            original neighbour policy; see :func:`cgcnn_ase.io.reader.read_structures`).
        sort: sort directory listings and glob matches (see :func:`iter_files`).
        table_chunk_rows: rows read from a table at a time.
        finished: ids to skip (resume); they are skipped before any parsing where the id
            is known beforehand (files holding one structure, table rows, database rows).

    Yields:
        ``(id, record)`` or ``(id, error)``: errors (:class:`InvalidStructureError`) are
        yielded, not raised, so that one bad item never stops a run. Ids are described in
        the module docstring.
    """
    opts = {"column": column, "id_column": id_column, "cif_reader": cif_reader, "table_chunk_rows": table_chunk_rows}
    if isinstance(inputs, (str, os.PathLike)) or not isinstance(inputs, Iterable) or _is_structure_object(inputs):
        inputs = [inputs]
    for index, obj in enumerate(inputs):
        if isinstance(obj, (str, os.PathLike)):
            item = os.fspath(obj)
            explicit_table = _is_table(item) and os.path.isfile(item)
            if explicit_table:
                yield from iter_table(item, finished=finished, **opts)
                continue
            for path in iter_files([item], sort=sort):
                if _is_table(path) and path != item and os.path.isfile(path) and glob.has_magic(item):
                    yield from iter_table(path, finished=finished, **opts)  # tables matched by a pattern
                else:
                    yield from iter_file(path, cif_reader=cif_reader, finished=finished)
        elif isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str):
            yield from _iter_object(obj[0], obj[1], cif_reader, finished)
        else:
            label = obj.label if isinstance(obj, StructureRecord) else f"input {index}"
            yield from _iter_object(label, obj, cif_reader, finished)


def _iter_object(item_id: str, obj: Any, cif_reader: CifReader, finished: FinishedIds | None) -> Iterator[Item]:
    """One in-memory object (or a path given with an id)."""
    if isinstance(obj, (str, os.PathLike)) and "\n" not in os.fspath(obj):
        if _skip(finished, item_id):  # finished as a one-structure file
            return
        frames = iter_file(os.fspath(obj), cif_reader=cif_reader)  # yields at least one item
        first, second = next(frames), next(frames, None)
        if second is None:
            yield item_id, _relabel(first[1], item_id)
            return
        for k, (_, record) in enumerate(chain([first, second], frames)):
            label = f"{item_id}@{k}"
            if not _skip(finished, label):
                yield label, _relabel(record, label)
        return
    if _skip(finished, item_id):
        return
    try:
        yield item_id, parse_cell(obj, item_id, cif_reader=cif_reader)
    except InvalidStructureError as exc:
        yield item_id, exc


def _relabel(item: StructureRecord | InvalidStructureError, label: str) -> StructureRecord | InvalidStructureError:
    return replace(item, label=label) if isinstance(item, StructureRecord) else item


def iter_file(path: str, *, cif_reader: CifReader = "gemmi", finished: FinishedIds | None = None) -> Iterator[Item]:
    """Structures of one file: extxyz/xyz/traj frame by frame, ``.db`` row by row, others whole.

    Ids: ``path`` for a file holding one structure, ``path@i`` for frame ``i``,
    ``path@id=N`` for database rows. A file whose path is in ``finished`` is not read.
    """
    if _skip(finished, path):
        return
    name = _lower_name(path)
    usable = os.path.isfile(path) and os.path.getsize(path) > 0
    if usable and name.endswith(FRAME_SUFFIXES):
        yield from _iter_frames(path, finished)
    elif usable and name.endswith(DB_SUFFIXES):
        yield from _iter_db(path, finished)
    else:
        try:
            records = read_structures(path, cif_reader=cif_reader)
        except InvalidStructureError as exc:
            yield path, exc
            return
        for record in records:
            if not _skip(finished, record.label):
                yield record.label, record


def _next_frame(frames: Iterator[Any]) -> Any:
    """The next ASE frame or ``None`` at the end (reader warnings silenced for this call only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return next(frames, None)


def _atoms_item(atoms: Any, label: str) -> Item:
    try:
        return label, to_record(atoms, label=label)
    except InvalidStructureError as exc:
        return label, exc


def _safe_frames(path: str) -> Iterator[Any]:
    """ASE frames of ``path`` one at a time; a read error is yielded (not raised) and ends the file."""
    import ase.io

    try:
        frames = ase.io.iread(path, index=":")
        while (frame := _next_frame(frames)) is not None:
            yield frame
    except Exception as exc:  # noqa: BLE001 - ASE raises many types for unreadable files
        yield exc


def _iter_frames(path: str, finished: FinishedIds | None) -> Iterator[Item]:
    """Frames read one at a time, with one frame of look-ahead to tell one-frame files apart.

    A frame that cannot be read ends the file with one error item; the frames before it stand.
    """
    label = str(Path(path))
    source = _safe_frames(path)
    current = next(source, None)
    if current is None:
        yield path, StructureReadError(f"{path}: the file holds no structure")
        return
    if isinstance(current, Exception):
        yield path, StructureReadError(f"{path}: could not be read by ASE ({type(current).__name__}: {current})")
        return
    ahead = next(source, None)
    if ahead is None:
        yield _atoms_item(current, label)
        return
    k = 0
    while current is not None:
        frame_label = f"{label}@{k}"
        if isinstance(current, Exception):
            yield (
                frame_label,
                StructureReadError(f"{frame_label}: could not be read by ASE ({type(current).__name__}: {current})"),
            )
            return
        if not _skip(finished, frame_label):
            yield _atoms_item(current, frame_label)
        current, ahead = ahead, (next(source, None) if ahead is not None else None)
        k += 1


def _iter_db(path: str, finished: FinishedIds | None) -> Iterator[Item]:
    """Rows of an ASE database, one at a time; ids ``path@id=N``."""
    import ase.db

    try:
        connection = ase.db.connect(path)
        rows = connection.select()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row = next(rows, None)
    except Exception as exc:  # noqa: BLE001 - ase.db raises many types for foreign files
        yield path, StructureReadError(f"{path}: not a readable ASE database ({type(exc).__name__}: {exc})")
        return
    if row is None:
        yield path, StructureReadError(f"{path}: the database holds no structure")
        return
    while row is not None:
        label = f"{path}@id={row.id}"
        if not _skip(finished, label):
            yield _atoms_item(row.toatoms(), label)
        row = next(rows, None)


# -- tables ----------------------------------------------------------------------------------


def _table_columns(path: str) -> list[str]:
    name = _lower_name(path)
    if name.endswith(PARQUET_SUFFIXES):
        _, pq = _pyarrow()

        return list(pq.ParquetFile(path).schema_arrow.names)
    import pandas as pd

    return [str(c) for c in pd.read_csv(path, sep="\t" if ".tsv" in name else ",", nrows=0).columns]


def _table_chunks(path: str, columns: list[str], rows: int) -> Iterator[pd.DataFrame]:
    """The table's ``columns`` in chunks of ``rows`` rows (text kept as text)."""
    name = _lower_name(path)
    if name.endswith(PARQUET_SUFFIXES):
        _, pq = _pyarrow()

        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=columns):
            yield batch.to_pandas()
        return
    import pandas as pd

    reader = pd.read_csv(
        path, sep="\t" if ".tsv" in name else ",", usecols=columns, chunksize=rows, dtype=str,
        keep_default_na=False, na_filter=False,
    )  # fmt: skip
    with reader:
        yield from reader


def iter_table(
    path: str,
    *,
    column: str = "cif",
    id_column: str | None = None,
    cif_reader: CifReader = "gemmi",
    table_chunk_rows: int = 4096,
    finished: FinishedIds | None = None,
) -> Iterator[Item]:
    """Rows of a CSV/TSV/Parquet table, ``table_chunk_rows`` at a time; each row's structure is
    parsed only when it is not in ``finished``.

    Raises:
        StreamError: the table has no ``column`` or ``id_column``.
    """
    available = _table_columns(path)
    for name, what in ((column, "structure"), (id_column, "id")):
        if name is not None and name not in available:
            raise StreamError(f"{path}: no {what} column {name!r}; columns: {', '.join(available)}")
    wanted = [column] + ([id_column] if id_column and id_column != column else [])
    start = 0
    for chunk in _table_chunks(path, wanted, table_chunk_rows):
        ids = chunk[id_column].astype(str).tolist() if id_column else [f"{path}@{start + k}" for k in range(len(chunk))]
        for item_id, cell in zip(ids, chunk[column].tolist()):
            if _skip(finished, item_id):
                continue
            try:
                yield item_id, parse_cell(cell, item_id, cif_reader=cif_reader)
            except InvalidStructureError as exc:
                yield item_id, exc
        start += len(chunk)


# -- one cell ----------------------------------------------------------------------------------


def parse_cell(value: Any, label: str, *, cif_reader: CifReader = "gemmi") -> StructureRecord:
    """One table cell or object -> a validated record labelled ``label``.

    Accepts CIF text, a pymatgen structure dict (or its JSON text), the path of a file
    holding one structure, or an ``ase.Atoms`` / pymatgen ``Structure`` / record.

    Raises:
        InvalidStructureError: empty, unreadable or invalid structure (the message names ``label``).
    """
    if isinstance(value, StructureRecord):
        return value if value.label == label else replace(value, label=label)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if (
        value is None
        or (isinstance(value, float) and not np.isfinite(value))
        or (isinstance(value, str) and not value.strip())
    ):
        raise StructureReadError(f"{label}: the structure cell is empty")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise StructureReadError(f"{label}: not valid structure JSON ({exc})") from None
        elif "\n" not in text:
            if not os.path.isfile(text):
                raise StructureReadError(f"{label}: {text!r} is neither CIF text nor an existing structure file")
            records = read_structures(text, cif_reader=cif_reader)
            if len(records) != 1:
                raise StructureReadError(f"{label}: {text} holds {len(records)} structures; give one per row")
            return replace(records[0], label=label)
        else:
            return _cif_text_record(text, label, cif_reader)
    if isinstance(value, Mapping):
        try:
            from pymatgen.core import Structure

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = Structure.from_dict(dict(value))
        except Exception as exc:  # noqa: BLE001 - pymatgen raises many types for bad dicts
            raise StructureReadError(f"{label}: not a pymatgen structure dict ({type(exc).__name__}: {exc})") from None
    return to_record(value, label=label)


def _cif_text_record(text: str, label: str, cif_reader: CifReader) -> StructureRecord:
    """CIF text holding one crystal -> record (gemmi, falling back to pymatgen; or pymatgen)."""
    if cif_reader == "gemmi":
        record = _cif_text_gemmi(text, label)
        if record is not None:
            return record
    try:
        from pymatgen.io.cif import CifParser

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structures = CifParser.from_str(text, occupancy_tolerance=1.0).parse_structures(
                primitive=False, on_error="raise"
            )
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types for bad CIFs
        raise StructureReadError(f"{label}: not readable CIF text ({type(exc).__name__}: {exc})") from None
    if len(structures) != 1:
        raise StructureReadError(f"{label}: the CIF text holds {len(structures)} structures; give one per row")
    return to_record(structures[0], label=label)


def _cif_text_gemmi(text: str, label: str) -> StructureRecord | None:
    """gemmi's reading of CIF text, as :func:`cgcnn_ase.io.reader.read_structures` reads CIF
    files (symmetry applied, special positions merged); ``None`` when gemmi cannot make a
    crystal of it (the caller then falls back to pymatgen)."""
    import gemmi

    from cgcnn_ase.io.reader import gemmi_block_record

    try:
        blocks = [gemmi.make_small_structure_from_block(block) for block in gemmi.cif.read_string(text)]
    except (RuntimeError, ValueError, IndexError):
        return None
    if len(blocks) != 1:
        return None
    return gemmi_block_record(blocks[0], label)


# =============================================================================================
# Prediction of one chunk
# =============================================================================================


def load_predictors(
    models: str | os.PathLike | CGCNNPredictor | Sequence[str | os.PathLike | CGCNNPredictor],
    *,
    device: str | None = None,
) -> list[CGCNNPredictor]:
    """Predictors for shipped model names, model folders / ``.pth.tar`` paths, or predictors (kept),
    each through :func:`~cgcnn_ase.inference.predictor.as_predictor`."""
    from cgcnn_ase.inference.predictor import CGCNNPredictor, as_predictor

    if isinstance(models, (str, os.PathLike, CGCNNPredictor)):
        models = [models]
    out = [as_predictor(model, device=device) for model in models]
    if not out:
        raise ValueError("give at least one model")
    return out


def _column_blocks(predictors: Sequence[CGCNNPredictor], names: Sequence[str] | None = None) -> list[list[str]]:
    """Per model: ``["<property> (<units>)"]``, plus ``"<property>_std (<units>)"`` for an ensemble
    and ``"<property>_domain_percentile (percent)"`` for a model with a domain summary."""
    headers = [f"{p.property_name} ({p.units})" for p in predictors]
    prefixes = [""] * len(predictors)
    if len(set(headers)) < len(headers):
        names = list(names) if names is not None else [p.model.spec.name for p in predictors]
        prefixes = [f"{name}: " for name in names]
    blocks = []
    for prefix, p in zip(prefixes, predictors):
        block = [f"{prefix}{p.property_name} ({p.units})"]
        if getattr(p, "is_ensemble", False):
            block.append(f"{prefix}{p.property_name}_std ({p.units})")
        if getattr(p, "has_domain", False):
            block.append(f"{prefix}{p.property_name}_domain_percentile (percent)")
        blocks.append(block)
    return blocks


def model_columns(predictors: Sequence[CGCNNPredictor], names: Sequence[str] | None = None) -> list[str]:
    """The result columns of ``predictors``: ``"<property> (<units>)"`` per model, followed for
    an ensemble by ``"<property>_std (<units>)"`` (the members' calibrated standard deviation,
    as :class:`~cgcnn_ase.integrations.matminer.CGCNNFeaturizer` names it) and, for a model with a domain
    summary, by ``"<property>_domain_percentile (percent)"`` (0-100; near 100: outside the
    training data, see docs/uncertainty.md); prefixed by the model name
    (``"<name>: ..."``) when several models predict the same property."""
    return [column for block in _column_blocks(predictors, names) for column in block]


def cif_reader_for(predictors: Sequence[CGCNNPredictor]) -> CifReader:
    """``"pymatgen"`` when any model uses the original neighbour policy (its ties follow
    pymatgen's site order), else ``"gemmi"``."""
    original = any(p.model.spec.graph.neighbor_policy == "original" for p in predictors)
    return "pymatgen" if original else "gemmi"


@dataclass
class ChunkResult:
    """Predictions of one chunk.

    Attributes:
        frame: ``id``, one float64 column per model (in its units, NaN where the item
            failed; ensembles add their ``_std`` column), ``error`` (``None`` or the
            messages joined by ``"; "``).
        messages: per row, the list of error messages (empty for predicted items).
    """

    frame: pd.DataFrame
    messages: list[list[str]]

    @property
    def n_failed(self) -> int:
        return sum(bool(m) for m in self.messages)


def predict_items(
    items: Sequence[Item],
    predictors: Sequence[CGCNNPredictor],
    *,
    columns: Sequence[str] | None = None,
    batch_size: int = 64,
    on_sparse: str = "warn",
) -> ChunkResult:
    """Predict a list of ``(id, record | error)`` items with every model (each structure is
    read once, by the caller, for all models).

    An item fails when it could not be read or when any model refuses it; its values are
    then NaN for all models (as ``cgcnn-ase predict`` reports it).
    """
    import pandas as pd

    columns = list(columns) if columns is not None else model_columns(predictors)
    widths = [len(block) for block in _column_blocks(predictors)]
    if sum(widths) != len(columns):
        raise ValueError(f"{len(columns)} column names for {sum(widths)} model columns")
    records = [item for _, item in items if not isinstance(item, CGCNNError)]
    results = (
        [
            p.predict(records, batch_size=batch_size, errors="collect", on_sparse=on_sparse, progress=False)
            for p in predictors
        ]
        if records
        else []
    )
    values = np.full((len(items), len(columns)), np.nan)
    messages: list[list[str]] = []
    k = 0
    for row, (_, item) in enumerate(items):
        if isinstance(item, CGCNNError):
            messages.append([str(item)])
            continue
        found = sorted({r.errors[k] for r in results if r.errors[k]})
        messages.append(found)
        if not found:
            cells = []
            for r, p in zip(results, predictors):
                cells.append(r.values[k])
                if getattr(p, "is_ensemble", False):
                    cells.append(r.std[k])
                if getattr(p, "has_domain", False):
                    cells.append(r.domain_percentile[k])
            values[row] = cells
        k += 1
    data: dict[str, Any] = {"id": [str(i) for i, _ in items]}
    for j, name in enumerate(columns):
        data[name] = values[:, j]
    data["error"] = ["; ".join(m) if m else None for m in messages]
    frame = pd.DataFrame(data)
    frame["error"] = frame["error"].astype(object)
    return ChunkResult(frame=frame, messages=messages)


def iter_prediction_chunks(
    items: Iterable[Item],
    predictors: Sequence[CGCNNPredictor],
    *,
    chunk_size: int = 1024,
    batch_size: int = 64,
    columns: Sequence[str] | None = None,
    on_sparse: str = "warn",
) -> Iterator[ChunkResult]:
    """Predict ``items`` ``chunk_size`` at a time; only one chunk is held at any moment.

    Items are pulled from ``items`` lazily: chunk ``k`` is read only after chunk ``k - 1``
    has been yielded (and, in :func:`predict_stream`, written).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    columns = list(columns) if columns is not None else model_columns(predictors)
    stream = iter(items)
    while chunk := list(islice(stream, chunk_size)):
        yield predict_items(chunk, predictors, columns=columns, batch_size=batch_size, on_sparse=on_sparse)


# =============================================================================================
# Outputs
# =============================================================================================


def infer_format(path: str | os.PathLike | None, fmt: str | None = None) -> OutputFormat:
    """``fmt`` if given, else ``"parquet"`` for ``.parquet``/``.pq`` paths and ``"csv"`` otherwise."""
    if fmt is not None:
        if fmt not in ("csv", "parquet"):
            raise ValueError(f"output format must be 'csv' or 'parquet', got {fmt!r}")
        return fmt  # type: ignore[return-value]
    return "parquet" if path is not None and _lower_name(path).endswith(PARQUET_SUFFIXES) else "csv"


def arrow_schema(columns: Sequence[str], units: Mapping[str, str] | None = None) -> Any:
    """The pyarrow schema of a result table: ``id`` string, model columns float64, ``error`` string;
    ``units`` ({column: units}) go into the schema metadata under ``cgcnn_ase.units``."""
    pa, _ = _pyarrow()

    fields = [pa.field("id", pa.string(), nullable=False)]
    fields += [pa.field(c, pa.float64()) for c in columns if c not in ("id", "error")]
    fields.append(pa.field("error", pa.string()))
    metadata = {"cgcnn_ase.units": json.dumps(dict(units or {}))}
    return pa.schema(fields, metadata=metadata)


class CSVChunkWriter:
    """Append result frames to a CSV file (or a text stream such as stdout).

    Args:
        target: file path, or an open text stream (never closed here).
        columns: the full column list (``id``, model columns, ``error``).
        append: keep an existing file's rows (resume); its header must equal ``columns``.
    """

    def __init__(self, target: str | os.PathLike | TextIO, columns: Sequence[str], *, append: bool = False) -> None:
        self.columns = list(columns)
        self._own = not hasattr(target, "write")
        if not self._own:
            self._stream = target
            self._header = True
            return
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = append and path.is_file() and path.stat().st_size > 0
        if existing:
            _cut_partial_line(path)
            header = _csv_header(path)
            if header and header != self.columns:
                raise StreamError(
                    f"{path}: its columns {header} differ from this run's {self.columns}; "
                    "resume with the same models, or write to a new file"
                )
            existing = bool(header)
        self._stream = open(path, "a" if existing else "w", newline="")  # noqa: SIM115 - closed in close()
        self._header = not existing

    def write(self, frame: pd.DataFrame) -> None:
        """Write the rows of ``frame`` (columns in ``self.columns`` order) and flush."""
        buffer = io.StringIO()
        frame[self.columns].to_csv(buffer, index=False, header=self._header)
        self._stream.write(buffer.getvalue())
        self._stream.flush()
        self._header = False

    def close(self) -> None:
        if self._own:
            self._stream.close()


def _cut_partial_line(path: Path) -> None:
    """Cut a last line without its newline (a run killed while writing)."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        block = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            data = f.read(end - start)
            k = data.rfind(b"\n")
            if k >= 0:
                f.truncate(start + k + 1)
                return
            end = start
        f.truncate(0)


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


class ParquetChunkWriter:
    """Write each result frame as one part file of a Parquet dataset directory.

    Part files are named ``part-NNNNNN.parquet`` and written atomically (temporary name,
    then rename); the directory reads as one table with ``pandas.read_parquet(folder)``.

    Args:
        folder: the dataset directory (created).
        columns: the full column list (``id``, model columns, ``error``).
        append: keep existing part files (resume); their columns must equal ``columns``.
        units: {column: units}, stored in each file's schema metadata.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        columns: Sequence[str],
        *,
        append: bool = False,
        units: Mapping[str, str] | None = None,
    ) -> None:
        self.columns = list(columns)
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise StreamError(
                f"{self.folder}: exists and is not a directory (Parquet output is a folder of part files)"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.schema = arrow_schema(self.columns, units)
        parts = _part_files(self.folder)
        if parts and not append:
            others = [p for p in self.folder.iterdir() if p not in parts and not p.name.startswith(".")]
            if others:
                raise StreamError(
                    f"{self.folder}: holds files other than part files ({others[0].name}); choose a new folder"
                )
            for part in parts:
                part.unlink()
            parts = []
        if parts:
            _, pq = _pyarrow()

            names = pq.read_schema(parts[0]).names
            if names != self.columns:
                raise StreamError(
                    f"{self.folder}: its columns {names} differ from this run's {self.columns}; "
                    "resume with the same models, or write to a new folder"
                )
        self._next = max((int(p.stem.split("-")[1]) for p in parts), default=-1) + 1

    def write(self, frame: pd.DataFrame) -> None:
        """Write ``frame`` as the next part file."""
        pa, pq = _pyarrow()

        table = pa.Table.from_pandas(frame[self.columns], schema=self.schema, preserve_index=False)
        path = self.folder / f"part-{self._next:06d}.parquet"
        tmp = self.folder / f".{path.name}.{os.getpid()}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        self._next += 1

    def close(self) -> None:
        """Nothing to flush: every part is complete when written."""


def _part_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("part-*.parquet") if p.stem.split("-")[1].isdigit())


def open_writer(
    output: str | os.PathLike | TextIO,
    columns: Sequence[str],
    *,
    fmt: OutputFormat | None = None,
    append: bool = False,
    units: Mapping[str, str] | None = None,
) -> CSVChunkWriter | ParquetChunkWriter:
    """A chunk writer for ``output`` (format from ``fmt`` or the path's suffix)."""
    if hasattr(output, "write"):
        if fmt == "parquet":
            raise StreamError("Parquet output needs a folder path, not a stream")
        return CSVChunkWriter(output, columns, append=append)
    if infer_format(output, fmt) == "parquet":
        return ParquetChunkWriter(output, columns, append=append, units=units)
    return CSVChunkWriter(output, columns, append=append)


def read_finished_ids(
    output: str | os.PathLike, *, fmt: OutputFormat | None = None, chunk_rows: int = 1 << 16
) -> FinishedIds:
    """The ids already in ``output`` (a CSV file or a Parquet folder), read in chunks.

    A missing or empty output gives an empty set. For CSV a partial last line (a killed
    run) is cut off first.
    """
    path = Path(output)
    if infer_format(path, fmt) == "parquet":
        if not path.is_dir():
            return FinishedIds()
        _, pq = _pyarrow()

        def parquet_batches() -> Iterator[list[str]]:
            for part in _part_files(path):
                for batch in pq.ParquetFile(part).iter_batches(batch_size=chunk_rows, columns=["id"]):
                    yield batch.column(0).to_pylist()

        return FinishedIds.from_ids(parquet_batches())
    if not path.is_file() or path.stat().st_size == 0:
        return FinishedIds()
    _cut_partial_line(path)
    import pandas as pd

    if "id" not in _csv_header(path):
        raise StreamError(f"{path}: has no 'id' column; it is not an output of cgcnn-ase predict")
    reader = pd.read_csv(path, usecols=["id"], dtype=str, keep_default_na=False, na_filter=False, chunksize=chunk_rows)
    with reader:
        return FinishedIds.from_ids(chunk["id"].tolist() for chunk in reader)


# =============================================================================================
# The whole run
# =============================================================================================


@dataclass
class StreamSummary:
    """What one :func:`predict_stream` call did.

    Attributes:
        output: where the rows went (``None`` for a stream).
        format: ``"csv"`` or ``"parquet"``.
        columns: the output columns.
        n_predicted: items written by this call that were predicted.
        n_failed: items written by this call with an error.
        n_skipped: items skipped because the output already held them (resume).
        n_chunks: chunks written by this call.
    """

    output: Path | None
    format: str
    columns: list[str]
    n_predicted: int = 0
    n_failed: int = 0
    n_skipped: int = 0
    n_chunks: int = 0

    @property
    def n_written(self) -> int:
        return self.n_predicted + self.n_failed


def predict_stream(
    inputs: Any,
    models: str | os.PathLike | CGCNNPredictor | Sequence[str | os.PathLike | CGCNNPredictor],
    output: str | os.PathLike | TextIO,
    *,
    fmt: OutputFormat | None = None,
    resume: bool = False,
    chunk_size: int = 1024,
    batch_size: int = 64,
    column: str = "cif",
    id_column: str | None = None,
    sort: bool = True,
    device: str | None = None,
    on_sparse: str = "warn",
    names: Sequence[str] | None = None,
    progress: bool | None = False,
    on_chunk: Callable[[ChunkResult], None] | None = None,
) -> StreamSummary:
    """Predict every structure in ``inputs`` with ``models``, writing rows chunk by chunk.

    Memory holds one chunk (``chunk_size`` records and their rows) plus, when resuming,
    16 bytes per finished id; nothing accumulates with the input size.

    Args:
        inputs: see :func:`iter_inputs` (files, directories, globs, tables, ``.db``,
            extxyz, objects, ``(id, structure)`` pairs).
        models: shipped model names, model folders / checkpoints, or predictors.
        output: a CSV path, a Parquet folder path (``.parquet``/``.pq`` or ``fmt="parquet"``),
            or a text stream for CSV.
        fmt: ``"csv"`` or ``"parquet"`` (default: from the output's suffix).
        resume: skip the ids already in ``output`` and append; otherwise ``output`` is
            replaced.
        chunk_size: structures per chunk (read, predicted and written together).
        batch_size: crystals per forward pass (results do not depend on it).
        column, id_column: for table inputs (see :func:`iter_inputs`).
        sort: sort directory listings and glob matches.
        device: torch device for models loaded by name or path.
        on_sparse: sparse-graph policy of :meth:`CGCNNPredictor.predict`.
        names: model names for column headers (default: the model folders' names).
        progress: show a progress bar (structures) on stderr; ``None``: only when stderr is a terminal.
        on_chunk: called with each :class:`ChunkResult` after it is written.

    Returns:
        A :class:`StreamSummary` (counts; the rows are in ``output``).

    Raises:
        StreamError: a table lacks the column, or ``output`` holds another run's columns.
    """
    from tqdm.auto import tqdm

    predictors = load_predictors(models, device=device)
    columns = model_columns(predictors, names)
    all_columns = ["id", *columns, "error"]
    stream_output = hasattr(output, "write")
    out_format = infer_format(None if stream_output else output, fmt)
    if resume and stream_output:
        raise StreamError("resume needs an output file or folder, not a stream")
    finished = read_finished_ids(output, fmt=out_format) if resume else None
    units = {c: p.units for block, p in zip(_column_blocks(predictors, names), predictors) for c in block}
    writer = open_writer(output, all_columns, fmt=out_format, append=resume, units=units)
    summary = StreamSummary(output=None if stream_output else Path(output), format=out_format, columns=all_columns)
    items = iter_inputs(
        inputs, column=column, id_column=id_column, cif_reader=cif_reader_for(predictors), sort=sort, finished=finished
    )
    try:
        with tqdm(disable=None if progress is None else not progress, unit="structure", leave=False) as bar:
            for result in iter_prediction_chunks(
                items, predictors, chunk_size=chunk_size, batch_size=batch_size, columns=columns, on_sparse=on_sparse
            ):
                writer.write(result.frame)
                failed = result.n_failed
                summary.n_failed += failed
                summary.n_predicted += len(result.frame) - failed
                summary.n_chunks += 1
                bar.update(len(result.frame))
                if on_chunk is not None:
                    on_chunk(result)
    finally:
        writer.close()
        summary.n_skipped = finished.skipped if finished is not None else 0
    return summary

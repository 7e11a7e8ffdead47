"""Input iteration: files, directories, globs, multi-frame files, databases, tables and objects,
lazily, as ``(id, record | error)`` items; every structure goes through :mod:`cgcnn_ase.io.reader`.

Inputs (:func:`iter_inputs`):

* structure files (CIF, POSCAR, ...), directories of them (listed lazily; sorted per
  directory unless ``sort=False``) and glob patterns;
* multi-frame files read frame by frame: extxyz/xyz/traj with :func:`ase.io.iread`, ASE
  databases (``.db``) row by row;
* tables given explicitly (``.csv``, ``.csv.gz``, ``.tsv``, ``.parquet``, ``.pq``) read in
  chunks of rows, with a column holding CIF text, a pymatgen structure dict (JSON text)
  or a structure file path;
* in-memory ``ase.Atoms`` / pymatgen ``Structure`` objects, CIF text, or ``(id, structure)`` pairs.

Ids (``cgcnn-ase predict``'s ``id`` column; resume compares them exactly):

* a file holding one structure: its path as given (``dir/name.cif`` for directory members);
* frame ``i`` (0-based) of a multi-frame file: ``path@i``;
* row ``N`` of an ASE database: ``path@id=N`` (the database's own row id);
* row ``k`` (0-based data row) of a table: ``path@k``, or the value of ``id_column`` (``path@k`` where it is empty);
* in-memory objects: ``input i`` (their position), or the id of an ``(id, structure)`` pair.

:class:`FinishedIds` holds the ids to skip when resuming (as 16-byte BLAKE2b digests, 16 bytes
per id); they are skipped before their structure is parsed where the id is known beforehand.
Errors are yielded in place of records, never raised, so one bad item never stops a run.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cgcnn_ase.errors import (
    DuplicateIdsWarning,
    InvalidStructureError,
    SkippedFilesWarning,
    StreamError,
    StructureReadError,
)
from cgcnn_ase.io.formats import (
    FRAME_SUFFIXES,
    atoms_item,
    connect_db,
    db_read_error,
    frame_items,
    is_ase_db,
    is_json_name,
    json_entry_items,
    open_text,
)
from cgcnn_ase.io.reader import (
    CifReader,
    as_input_sequence,
    beside_table,
    entry_id,
    input_kind,
    is_labelled_pair,
    is_selection,
    labelled_pair,
    pair_of_two_files,
    read_items,
    read_record,
    read_records,
    read_selection,
    relabelled,
)
from cgcnn_ase.io.records import StructureRecord
from cgcnn_ase.warning_blocks import catch_warnings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "DB_SUFFIXES",
    "FRAME_SUFFIXES",
    "PARQUET_SUFFIXES",
    "TABLE_SUFFIXES",
    "DeferredItem",
    "FinishedIds",
    "Item",
    "SeenIds",
    "expand_inputs",
    "iter_file",
    "iter_files",
    "iter_inputs",
    "iter_table",
    "parse_cell",
    "pyarrow_modules",
]

Item = tuple[str, "StructureRecord | InvalidStructureError"]
#: With ``defer_files=True``, an item may also be ``(path, path)``: a file left for the consumer to read
#: (:func:`cgcnn_ase.io.reader.read_input` gives the same ids, and several for a file of several structures).
DeferredItem = tuple[str, "StructureRecord | InvalidStructureError | str"]

#: Explicitly named files with these endings are tables (a column of structures).
TABLE_SUFFIXES = (*(f".{kind}{packed}" for kind in ("csv", "tsv") for packed in ("", ".gz", ".bz2", ".xz", ".zip")),
                  ".parquet", ".pq")  # fmt: skip
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
        self._digests, counts = np.unique(digests, return_counts=True)  # sorted, unique; rows per id
        self._rows = counts.astype(np.uint32)  # an id written twice (repeated in the inputs) is skipped twice
        self._taken = np.zeros(len(self._digests), dtype=np.uint32)  # times skipped so far
        self.skipped = 0
        self.n_errors = 0  # rows of the output that hold an error (set by the output's reader)

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

    @property
    def n_rows(self) -> int:
        """Rows of the output these ids came from (an id may have several)."""
        return int(self._rows.sum())

    def _position(self, item_id: object) -> int | None:
        if not len(self._digests):
            return None
        key = np.array([self.digest(str(item_id))], dtype="S16")
        k = int(np.searchsorted(self._digests, key[0]))
        return k if k < len(self._digests) and self._digests[k] == key[0] else None

    def __contains__(self, item_id: object) -> bool:
        return self._position(item_id) is not None

    def take(self, item_id: str) -> bool:
        """True if ``item_id`` is finished (and count it in ``skipped``). An id the output holds in ``n`` rows is
        finished for its first ``n`` occurrences among the inputs; one met more often is predicted again."""
        k = self._position(item_id)
        if k is None:
            return False
        if self._taken[k] >= self._rows[k]:
            rows = "its row" if self._rows[k] == 1 else f"its {self._rows[k]} rows"
            warnings.warn(f"id {item_id!r} occurs more often among the inputs than in the output: {rows} in the output "
                          "came from its first occurrence(s), this one is predicted again; give unique ids (a file "
                          "named once; for a table, --id-column)", DuplicateIdsWarning, stacklevel=3)  # fmt: skip
            return False
        self._taken[k] += 1
        self.skipped += 1
        return True


class SeenIds:
    """The ids met so far in a run, to find one met again however far apart (8 bytes per id: the first 8 bytes of
    :meth:`FinishedIds.digest` in sorted runs, merged as they grow, so a stream of 10^7 ids costs about 80 MB and no quadratic time)."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []  # sorted, unique, each at least twice as long as the next

    def repeated(self, ids: Iterable[str]) -> list[str]:
        """The ids of ``ids`` met before (in earlier calls, or earlier in ``ids``), in order; all are then met."""
        ids = [str(i) for i in ids]
        keys = np.array([int.from_bytes(FinishedIds.digest(i)[:8], "little") for i in ids], dtype=np.uint64)
        seen = np.zeros(len(keys), dtype=bool)
        for run in self._runs:
            at = np.searchsorted(run, keys).clip(max=len(run) - 1)
            seen |= run[at] == keys
        _, first = np.unique(keys, return_index=True)
        again = np.ones(len(keys), dtype=bool)
        again[first] = False  # a repeat within this batch
        self._runs.append(np.unique(keys))
        while len(self._runs) > 1 and 2 * len(self._runs[-1]) >= len(self._runs[-2]):
            self._runs[-2:] = [np.union1d(self._runs[-2], self._runs[-1])]
        return [i for i, repeat in zip(ids, seen | again) if repeat]


def _skip(finished: FinishedIds | None, item_id: str) -> bool:
    return finished is not None and finished.take(item_id)


# =============================================================================================
# Inputs
# =============================================================================================


def pyarrow_modules() -> tuple[Any, Any]:
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


#: Names in a folder input that are never read as structures: the original CGCNN data layout's
#: targets and element table (a folder of ``N.cif`` files beside them predicts the CIFs), a project's
#: documents without a suffix, and the VASP files that hold no structure (a VASP run folder predicts its
#: POSCAR, CONTCAR, OUTCAR, vasprun.xml, XDATCAR). Compared in upper case.
NOT_STRUCTURE_NAMES = frozenset({
    "ID_PROP.CSV", "ATOM_INIT.JSON", "README", "LICENSE", "LICENCE", "COPYING", "AUTHORS", "MAKEFILE", "THUMBS.DB",
    "INCAR", "KPOINTS", "POTCAR", "OSZICAR", "EIGENVAL", "DOSCAR", "IBZKPT", "WAVECAR", "PROCAR", "PCDAT", "REPORT",
    "WAVEDER", "CHG", "CHGCAR", "AECCAR0", "AECCAR1", "AECCAR2", "ELFCAR", "LOCPOT", "PARCHG", "VASPOUT.H5",
})  # fmt: skip
#: Suffixes (lower case) of folder members that are not structure files: documents, images, code,
#: logs and configuration. A file named on its own is read whatever its name.
NOT_STRUCTURE_SUFFIXES = (".md", ".rst", ".txt", ".pdf", ".html", ".png", ".jpg", ".jpeg", ".svg", ".py",
                          ".ipynb", ".sh", ".log", ".yaml", ".yml", ".toml", ".ini",
                          *TABLE_SUFFIXES, ".xlsx", ".xls", ".ods")  # tables: named on their own, or by a pattern  # fmt: skip


def is_structure_name(name: str) -> bool:
    """Whether a folder member named ``name`` is read as a structure file (not hidden, not one of
    :data:`NOT_STRUCTURE_NAMES`, no suffix of :data:`NOT_STRUCTURE_SUFFIXES`)."""
    return not (name.startswith(".") or name.upper() in NOT_STRUCTURE_NAMES or name.lower().endswith(NOT_STRUCTURE_SUFFIXES))


def _dir_files(folder: str, sort: bool, excluded: Callable[[str], bool] = lambda path: False) -> Iterator[str]:
    """Structure files of ``folder`` (not recursive; :func:`is_structure_name`): sorted by name, or
    in directory order without holding the listing (``sort=False``). Left-out visible files are
    named in one :class:`~cgcnn_ase.errors.SkippedFilesWarning` after the listing; ``excluded`` paths
    (a run's own output) are passed over silently."""
    skipped: list[str] = []
    subfolders: list[str] = []
    found = 0
    with os.scandir(folder) as scan:
        for entry in sorted(scan, key=lambda e: e.name) if sort else scan:
            if excluded(entry.path):
                continue
            if (_is_file(entry) or _broken_link(entry)) and is_structure_name(entry.name):  # a broken link's row says so
                found += 1
                yield os.path.normpath(entry.path)  # "./x.cif" -> "x.cif", as ids everywhere
            elif not entry.name.startswith("."):
                (skipped if _is_file(entry) else subfolders if _is_dir(entry) else []).append(entry.name)
    if skipped:
        shown = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        warnings.warn(f"{folder}: left out {len(skipped)} file(s) that are not structure files ({shown}); "
                      "name a file on its own to read it", SkippedFilesWarning, stacklevel=2)  # fmt: skip
    if not (found or skipped or subfolders):
        warnings.warn(f"{folder}: an empty folder (no visible files): nothing of it is predicted", SkippedFilesWarning,
                      stacklevel=2)  # fmt: skip
    if subfolders:  # left out whether or not the folder holds files itself (round 21a: silently, when it did)
        shown = ", ".join(subfolders[:3]) + (f" and {len(subfolders) - 3} more" if len(subfolders) > 3 else "")
        pattern = os.path.join(folder, "**", "*")
        what = (f"left out {len(subfolders)} subfolder(s) ({shown})" if found else
                f"holds no structure files itself, only {len(subfolders)} subfolder(s) ({shown})")  # fmt: skip
        warnings.warn(f"{folder}: {what}, and folders are read one level deep; to read the files below it too give "
                      f"the pattern '{pattern}' (quoted)", SkippedFilesWarning, stacklevel=2)  # fmt: skip


def _broken_link(entry: os.DirEntry) -> bool:
    """A symbolic link whose target does not exist or that loops (``is_file`` and ``is_dir`` are both false
    for it, or raise)."""
    return entry.is_symlink() and not os.path.exists(entry.path)


def _is_file(entry: os.DirEntry) -> bool:
    """``entry.is_file()``, false where it cannot be told (a symbolic link loop raises ``OSError``)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _pattern_files(pattern: str, sort: bool, excluded: Callable[[str], bool]) -> list[str]:
    """The files a glob pattern matches (``'**/*'`` lists folders too: they are passed over). A pattern whose
    last part is only wildcards (``'runs/**/*'``, ``'data/*'``) names no kind of file, so its matches are
    filtered as a folder's members are (:func:`is_structure_name`; tables, documents and images left out, in one
    :class:`~cgcnn_ase.errors.SkippedFilesWarning`); a pattern such as ``'*.csv'`` or ``'*/POSCAR'`` keeps every
    match. A pattern that matches no file is returned as itself (the reader then says so)."""
    matches = [m for m in glob.iglob(pattern, recursive=True) if not os.path.isdir(m)]
    if sort:
        matches.sort()
    if not matches:
        return [pattern]
    if set(os.path.basename(pattern)) - {"*"}:
        return matches
    kept = [m for m in matches if is_structure_name(os.path.basename(m)) or excluded(m)]
    left_out = sorted(set(matches) - set(kept))
    if left_out:
        shown = ", ".join(left_out[:3]) + (f" and {len(left_out) - 3} more" if len(left_out) > 3 else "")
        warnings.warn(f"{pattern}: left out {len(left_out)} matched file(s) that are not structure files ({shown}), as a "
                      "folder's are; name a file on its own, or by its suffix ('*.csv'), to read it",
                      SkippedFilesWarning, stacklevel=3)  # fmt: skip
    return kept


def expand_inputs(obj: Any) -> Any:
    """:func:`~cgcnn_ase.io.reader.as_input_sequence` of ``obj``, except that one folder or glob pattern given
    alone becomes its structure files (:func:`iter_files`, sorted), as the command line reads it. Inside a list
    a folder or pattern stays one input (an error row that says so): callers such as the featurizer rely on one
    row per item.

    Raises:
        StructureReadError: a folder given alone that holds no structure files (nothing to predict).
    """
    if _names_files(obj):
        path = os.fspath(obj)
        files = list(iter_files(path))
        if not files:  # a pattern matching nothing stays itself (then "no file matches this pattern")
            raise StructureReadError(_nothing_to_read(path))
        return files
    return as_input_sequence(obj)


def _nothing_to_read(path: str) -> str:
    """Why a folder or pattern given alone yields no structure file."""
    if not os.path.isdir(path):
        return f"{path}: none of the files this pattern matches is a structure file (the warning names them)"
    try:
        subfolders = any(_is_dir(entry) for entry in os.scandir(path))
    except OSError:
        subfolders = False
    if subfolders:
        below = os.path.join(path, "**", "*")
        return (f"{path}: is a directory holding no structure files itself (to read the files in its subfolders, "
                f"give the pattern {below!r})")
    return f"{path}: is a directory holding no structure files"


def _names_files(obj: Any) -> bool:
    """A folder, or a glob pattern that names no existing file, given as a path (str or PathLike)."""
    if not isinstance(obj, (str, os.PathLike)) or input_kind(obj) != "path":
        return False
    path = os.fspath(obj)
    return os.path.isdir(path) or (not os.path.exists(path) and glob.has_magic(path))


def iter_files(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    sort: bool = True,
    exclude: Iterable[str | os.PathLike] = (),
) -> Iterator[str]:
    """Expand path arguments lazily: files as given, directories to their files, globs to matches.

    A path or pattern that matches nothing is yielded as is (it is then reported as a
    missing file). With ``sort=True`` (the CLI's order) one directory's or pattern's names
    are sorted in memory (about 100 bytes per name); ``sort=False`` streams them. Files that
    are, or lie inside, a path of ``exclude`` (a run's own output file or Parquet folder) are
    skipped, so a second run over the same folder does not read the first run's results.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    skipped = _Excluded(exclude)
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            expanded: Iterable[str] = _dir_files(item, sort, skipped)
        elif not os.path.exists(item) and glob.has_magic(item):
            expanded = _pattern_files(item, sort, skipped)
        else:
            expanded = [item]
        for path in expanded:
            if not skipped(path):
                yield path


class _Excluded:
    """``exclude(path)``: whether ``path`` is one of the excluded paths or inside one of them."""

    def __init__(self, paths: Iterable[str | os.PathLike]) -> None:
        self.paths = [os.path.realpath(os.fspath(p)) for p in paths]

    def __call__(self, path: str) -> bool:
        if not self.paths:
            return False
        real = os.path.realpath(path)
        return any(real == p or real.startswith(p + os.sep) for p in self.paths)


def count_inputs(inputs: Any, *, exclude: Iterable[str | os.PathLike] = ()) -> int | None:
    """How many structures :func:`iter_inputs` will yield for ``inputs``, when that is cheap to know beforehand
    (for a progress bar's total): the files of folders and patterns are listed, not read, and a Parquet table's
    rows come from its metadata. Each other file counts as one structure, so a CIF of several data blocks makes
    the count low (a bar then raises its total as it goes).

    ``None`` when the count would need reading: inputs that are not paths (objects, generators, which counting
    would consume), CSV tables (a CIF cell spans lines), frame files, databases and JSON files (a list of
    entries)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(i, (str, os.PathLike)) for i in inputs):
        return None
    total = 0
    for path in iter_files(inputs, exclude=exclude):
        name = _lower_name(path)
        if name.endswith(PARQUET_SUFFIXES) and os.path.isfile(path):
            try:
                total += pyarrow_modules()[1].ParquetFile(path).metadata.num_rows
            except (StreamError, OSError, ValueError):  # no pyarrow, or unreadable: its error comes when it is read
                return None
        elif name.endswith((*TABLE_SUFFIXES, *FRAME_SUFFIXES, *DB_SUFFIXES)) or is_json_name(name):
            return None
        else:
            total += 1
    return total


def iter_inputs(
    inputs: Any,
    *,
    column: str = "cif",
    id_column: str | None = None,
    cif_reader: CifReader = "gemmi",
    sort: bool = True,
    table_chunk_rows: int = 4096,
    finished: FinishedIds | None = None,
    exclude: Iterable[str | os.PathLike] = (),
    defer_files: bool = False,
) -> Iterator[Item | DeferredItem]:
    """Lazily read structures from files, directories, globs, tables, databases and objects.

    Args:
        inputs: one input or an iterable of them: paths (files, directories, glob
            patterns, tables), ``ase.Atoms`` / pymatgen ``Structure`` / records, or
            ``(id, structure)`` pairs.
        column: table column holding CIF text, pymatgen structure-dict JSON, or file paths.
        id_column: table column of unique ids (``None``: ``path@row``; also for a row whose id is empty); for a
            JSON list of entries (Materials Project style: a structure dict under ``"structure"``), the key of
            each entry's id.
        cif_reader: ``"gemmi"`` (fast) or ``"pymatgen"`` (needed by models using the
            original neighbour policy; see :func:`cgcnn_ase.io.reader.read_structures`).
        sort: sort directory listings and glob matches (see :func:`iter_files`).
        table_chunk_rows: rows read from a table at a time.
        finished: ids to skip (resume); they are skipped before any parsing where the id
            is known beforehand (files holding one structure, table rows, database rows).
        exclude: paths never read when directories and globs are expanded (see :func:`iter_files`).
        defer_files: yield ``(path, path)`` for structure files read whole (not for frame files,
            databases or tables) instead of reading them here: the consumer reads them, e.g. in
            the worker processes of :meth:`~cgcnn_ase.inference.predictor.CGCNNPredictor.predict`,
            where reading overlaps with the networks. A file already in ``finished`` is still
            skipped; one holding several structures is the consumer's to expand (ids ``path@i``).

    Yields:
        ``(id, record)`` or ``(id, error)``: errors (:class:`InvalidStructureError`) are
        yielded, not raised, so that one bad item never stops a run. Ids are described in
        the module docstring.
    """
    opts = {"column": column, "id_column": id_column, "cif_reader": cif_reader, "table_chunk_rows": table_chunk_rows}
    for index, obj in enumerate(as_input_sequence(inputs)):
        if input_kind(obj) == "path":  # files, directories, globs, tables (text with line breaks is CIF)
            item = os.fspath(obj)
            if is_selection(item):  # ASE's "file@index" (and this package's own ids, path@k, path@id=N)
                yield from read_selection(item, cif_reader=cif_reader)
                continue
            explicit_table = _is_table(item) and os.path.isfile(item)
            if explicit_table:
                yield from iter_table(item, finished=finished, **opts)
                continue
            for path in iter_files([item], sort=sort, exclude=exclude):
                if _is_table(path) and path != item and os.path.isfile(path) and glob.has_magic(item):
                    yield from iter_table(path, finished=finished, **opts)  # tables matched by a pattern
                else:
                    yield from iter_file(path, cif_reader=cif_reader, finished=finished, defer=defer_files,
                                         id_key=id_column)  # fmt: skip
        elif is_labelled_pair(obj):
            yield from _iter_object(*labelled_pair(obj), cif_reader, finished)
        else:
            label = obj.label if isinstance(obj, StructureRecord) else (entry_id(obj) or f"input {index}")
            yield from _iter_object(label, obj, cif_reader, finished)


def _json_entries(path: str, id_key: str | None, finished: FinishedIds | None) -> Iterator[Item] | None:
    """The entries of a JSON list (Materials Project style) one at a time, each parsed as it is reached (those
    in ``finished`` not at all), ids from each entry's ``id_key`` (``path@k`` for an entry without one or
    without ``id_key``); ``None`` for any other JSON file (one structure, an ASE database)."""
    try:
        entries = json_entry_items(path, id_key, skip=None if finished is None else lambda label: _skip(finished, label))
    except InvalidStructureError as exc:
        return iter([(path, exc)])
    return entries


def _iter_object(item_id: str, obj: Any, cif_reader: CifReader, finished: FinishedIds | None) -> Iterator[Item]:
    """One in-memory object, CIF or JSON text, or a path given with an id; several structures
    (frames, CIF data blocks) get ids ``item_id@k``."""
    if input_kind(obj) == "path":
        if _skip(finished, item_id):  # finished as a one-structure file
            return
        refused = pair_of_two_files(item_id, obj)
        if refused is not None:
            yield item_id, refused
            return
        frames = iter_file(os.fspath(obj), cif_reader=cif_reader)  # yields at least one item
        first, second = next(frames), next(frames, None)
        if second is None:
            yield item_id, relabelled(first[1], item_id)
            return
        for k, (_, record) in enumerate(chain([first, second], frames)):
            label = f"{item_id}@{k}"
            if not _skip(finished, label):
                yield label, relabelled(record, label)
        return
    if _skip(finished, item_id):
        return
    try:
        records = read_records(obj, item_id, cif_reader=cif_reader)
    except InvalidStructureError as exc:
        yield item_id, exc
        return
    for record in records:
        if len(records) == 1 or not _skip(finished, record.label):
            yield record.label, record


def iter_file(
    path: str,
    *,
    cif_reader: CifReader = "gemmi",
    finished: FinishedIds | None = None,
    defer: bool = False,
    id_key: str | None = None,
) -> Iterator[Item | DeferredItem]:
    """Structures of one file: extxyz/xyz/traj frame by frame, ``.db`` row by row, a JSON list entry by
    entry, others whole (``defer``: those as ``(path, path)``, unread; see :func:`iter_inputs`).

    Ids: ``path`` for a file holding one structure, ``path@i`` for frame ``i``,
    ``path@id=N`` for database rows, a JSON list entry's ``id_key`` value (else ``path@i``). A file whose
    path is in ``finished`` is not read.
    """
    if _skip(finished, path):
        return
    name = _lower_name(path)
    usable = os.path.isfile(path) and os.path.getsize(path) > 0
    database = usable and is_ase_db(path)  # .db, or ASE's JSON database
    entries = _json_entries(path, id_key, finished) if usable and is_json_name(name) and not database else None
    if entries is not None:
        yield from entries
    elif usable and name.endswith(FRAME_SUFFIXES):
        yield from _iter_frames(path, finished, id_key)
    elif database:
        yield from _iter_db(path, finished, id_key)
    elif defer:
        yield path, path
    else:
        try:  # labelled with the path as given, so good and bad files get ids written the same way
            items = read_items(path, path, cif_reader=cif_reader)  # a bad data block leaves the others
        except InvalidStructureError as exc:
            yield path, exc
            return
        for label, record in items:
            if not _skip(finished, label):
                yield label, record


def _iter_frames(path: str, finished: FinishedIds | None, id_key: str | None = None) -> Iterator[Item]:
    """Frames read one at a time (:func:`~cgcnn_ase.io.formats.frame_items`), those in ``finished`` skipped."""
    return frame_items(path, skip=None if finished is None else lambda label: _skip(finished, label), id_key=id_key)


def _iter_db(path: str, finished: FinishedIds | None, id_key: str | None = None) -> Iterator[Item]:
    """Rows of an ASE database, one at a time; ids ``path@id=N``, or the row's ``id_key`` value where it has one
    (a database where no row has it is warned about)."""
    try:
        connection = connect_db(path, path)
        rows = connection.select()
        with catch_warnings():
            warnings.simplefilter("ignore")
            row = next(rows, None)
    except StructureReadError as exc:
        yield path, exc
        return
    except Exception as exc:  # noqa: BLE001 - ase.db raises many types for foreign files
        yield path, db_read_error(path, exc)
        return
    if row is None:
        yield path, StructureReadError(f"{path}: the database holds no structure")
        return
    named = 0
    while row is not None:
        label = f"{path}@id={row.id}"
        value = row.get(id_key) if id_key is not None else None
        if value is not None and str(value).strip():
            label, named = str(value), named + 1
        if not _skip(finished, label):
            yield atoms_item(row.toatoms(), label)
        row = next(rows, None)
    if id_key is not None and not named:
        warnings.warn(f"{path}: no row has the key {id_key!r}; its rows keep the ids {path}@id=N", UserWarning,
                      stacklevel=2)  # fmt: skip


# -- tables ----------------------------------------------------------------------------------


def separator(name: str) -> str:
    """The field separator of a text table named ``name`` (lower case): tab for .tsv, else comma."""
    return "\t" if ".tsv" in name else ","


@contextlib.contextmanager
def csv_source(path: str | os.PathLike) -> Iterator[Any]:
    """What ``pandas.read_csv`` reads for the text table ``path``: the path itself (pandas decompresses gzip,
    bzip2 and xz by the suffix), or for a ``.zip`` its one data file as UTF-8 text through
    :func:`~cgcnn_ase.io.formats.open_text` (pandas refuses the ``__MACOSX/`` entries macOS's Compress adds).

    Raises:
        StructureReadError: a ``.zip`` that is no readable archive, or holds no file or several.
    """
    if _lower_name(os.fspath(path)).endswith(".zip"):
        with open_text(path, errors="strict") as text:
            yield text
    else:
        yield path


def undecodable_text(path: Path, exc: UnicodeDecodeError, fmt: str = "csv") -> str:
    """Why a text file (``fmt``: csv, json) did not decode: a binary file of another kind under the wrong
    name, UTF-16 text, or text in another encoding; with what to do."""
    magic = file_magic(path)
    name = path.name.lower()
    if magic == "parquet":
        return f"this is a Parquet file, not {fmt} text; name it .parquet (a training dataset: or set format parquet)"
    if magic and not name.endswith({"gzip": (".gz",), "zip": (".zip",)}[magic]):
        return f"this is a {magic} file, not {fmt} text; name it with its suffix (.gz, .zip) or unpack it"
    if exc.object[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return ("UTF-16 text; save the file as UTF-8 (e.g. from a spreadsheet: CSV UTF-8), or convert it with "
                "iconv -f utf-16 -t utf-8")
    return (f"not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} at position {exc.start}); save the file as "
            "UTF-8 (e.g. from a spreadsheet: CSV UTF-8), or convert it, e.g. iconv -f cp1252 -t utf-8 for a Windows file")  # fmt: skip


def file_magic(path: Path) -> str | None:
    """What the first bytes of a file say it is (``"parquet"``, ``"gzip"``, ``"zip"``), if anything."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head == b"PAR1":
        return "parquet"
    return {b"\x1f\x8b": "gzip", b"PK": "zip"}.get(head[:2])


@contextlib.contextmanager
def _readable_table(path: str | os.PathLike) -> Iterator[None]:
    """pandas' and pyarrow's parse errors (an unclosed quote, a cut file, not UTF-8, not Parquet) as a
    :class:`StreamError` naming the table."""
    try:
        yield
    except ValueError as exc:  # pandas' ParserError, UnicodeDecodeError and pyarrow's ArrowInvalid are ValueErrors
        if isinstance(exc, StreamError):
            raise
        if isinstance(exc, StructureReadError):  # a zip that is no archive or holds several files: said already
            raise StreamError(str(exc)) from None
        kind = "Parquet" if _lower_name(os.fspath(path)).endswith(PARQUET_SUFFIXES) else "CSV"
        if isinstance(exc, UnicodeDecodeError):
            raise StreamError(f"{path}: {undecodable_text(Path(path), exc, 'CSV')}") from None
        message = " ".join(str(exc).split())
        raise StreamError(f"{path}: not a readable {kind} table ({type(exc).__name__}: {message})") from None


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A whole CSV/TSV/Parquet table, read as :func:`iter_table` reads tables: by the name's suffix (``"-"``: CSV
    text on stdin). CSV and TSV cells are kept as text, as written (``"0001"`` stays ``"0001"``, ``"NaN"`` stays
    ``"NaN"``, an empty cell is ``""``), so that a table written back holds the user's columns unchanged; Parquet
    keeps its types."""
    import pandas as pd

    name = _lower_name(os.fspath(path))
    with _readable_table(path):
        if name.endswith(PARQUET_SUFFIXES):
            return pd.read_parquet(path)
        with contextlib.nullcontext(sys.stdin) if name == "-" else csv_source(path) as source:
            return pd.read_csv(source, sep=separator(name), dtype=str, keep_default_na=False, na_filter=False)


def _table_columns(path: str) -> list[str]:
    name = _lower_name(path)
    with _readable_table(path):
        if name.endswith(PARQUET_SUFFIXES):
            _, pq = pyarrow_modules()

            return list(pq.ParquetFile(path).schema_arrow.names)
        import pandas as pd

        with csv_source(path) as source:
            return [str(c) for c in pd.read_csv(source, sep=separator(name), nrows=0).columns]


def _table_chunks(path: str, columns: list[str], rows: int) -> Iterator[pd.DataFrame]:
    """The table's ``columns`` in chunks of ``rows`` rows (text kept as text)."""
    name = _lower_name(path)
    with _readable_table(path):  # the chunks are parsed as they are read: an error may come at any of them
        if name.endswith(PARQUET_SUFFIXES):
            _, pq = pyarrow_modules()

            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=columns):
                yield batch.to_pandas()
            return
        import pandas as pd

        with csv_source(path) as source, pd.read_csv(
            source, sep=separator(name), usecols=columns, chunksize=rows, dtype=str,
            keep_default_na=False, na_filter=False,
        ) as reader:  # fmt: skip
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
            layout = (f"; it looks like the original CGCNN layout's id_prop.csv (ids and targets, no header): give "
                      f"its folder, {os.path.dirname(path) or '.'}, whose ID.cif files are then predicted"
                      if os.path.basename(path) == "id_prop.csv" else "")  # fmt: skip
            raise StreamError(f"{path}: no {what} column {name!r}; columns: {', '.join(available)}{layout}")
    wanted = [column] + ([id_column] if id_column and id_column != column else [])
    start = 0
    for chunk in _table_chunks(path, wanted, table_chunk_rows):
        ids = [f"{path}@{start + k}" for k in range(len(chunk))]  # also where the id cell is empty
        if id_column:
            ids = [default if _empty(v) else str(v) for default, v in zip(ids, chunk[id_column].tolist())]
        for item_id, cell in zip(ids, chunk[column].tolist()):
            if _skip(finished, item_id):
                continue
            try:
                yield item_id, parse_cell(beside_table(cell, path), item_id, cif_reader=cif_reader)
            except InvalidStructureError as exc:
                yield item_id, exc
        start += len(chunk)


def _empty(value: Any) -> bool:
    """Whether a table cell holds nothing (``None``, NaN, blank text)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


# -- one cell ----------------------------------------------------------------------------------


def parse_cell(value: Any, label: str, *, cif_reader: CifReader = "gemmi") -> StructureRecord:
    """One table cell or object -> the validated record labelled ``label``, through
    :func:`cgcnn_ase.io.reader.read_record`: CIF text, a pymatgen structure dict (or its JSON
    text), the path of a file holding one structure, or an ``ase.Atoms`` / pymatgen
    ``Structure`` / record.

    Raises:
        InvalidStructureError: an empty, unreadable or invalid structure, or a file holding
            several (the message names ``label``).
    """
    return read_record(value, label, cif_reader=cif_reader)

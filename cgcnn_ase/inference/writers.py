"""Result writers of streaming prediction: CSV appended chunk by chunk, or a Parquet dataset
folder of one atomically written part file per chunk; and the ids already in an output (resume).

CSV: one header, rows appended per chunk; a partial last line left by a killed run is cut
off on resume. Parquet: ``part-NNNNNN.parquet`` files, each written to a temporary name and
renamed, so a killed run never leaves a broken part.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from cgcnn_ase.errors import StreamError
from cgcnn_ase.inference.results import FLAG_UNITS, TEXT_COLUMNS
from cgcnn_ase.io.inputs import PARQUET_SUFFIXES, FinishedIds, pyarrow_modules

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "PARQUET_RUN_RECORD",
    "CSVChunkWriter",
    "OutputFormat",
    "ParquetChunkWriter",
    "arrow_schema",
    "column_units",
    "infer_format",
    "open_writer",
    "output_lock",
    "read_finished_ids",
]

OutputFormat = Literal["csv", "parquet"]

#: The run record's name inside a Parquet output folder (readers skip names starting with ``_``).
PARQUET_RUN_RECORD = "_cgcnn_run.json"


@contextlib.contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``output`` (a CSV file or a Parquet folder) for one run: the hidden
    ``.<name>.lock`` beside it, locked with ``flock`` and removed at the end. A second run on the same output
    while the first is writing gets a :class:`StreamError` instead of mixing its rows into the first's.
    Where ``fcntl`` is missing (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(output)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock, "a+")  # noqa: SIM115 - held for the whole run
        except OSError as exc:  # a folder no file can be created in (/proc, read-only): name the output
            raise StreamError(f"cannot write {output}: {exc.strerror or exc} in {lock.parent}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise StreamError(f"{output} is being written by another run ({holder or 'a process'}, lock {lock}): wait "
                              "for it to end, or write to another output") from None  # fmt: skip
        try:  # the file locked may have been removed by a run that just ended: lock the one at the path
            held, there = os.fstat(handle.fileno()), os.stat(lock)
            if (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino):
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        handle.close()


def _lower_name(path: str | os.PathLike) -> str:
    return os.path.basename(os.fspath(path)).lower()


#: Output names whose suffix promises a format that is not written (a CSV would be written under it).
OTHER_FORMAT_SUFFIXES = (
    ".xlsx", ".xls", ".ods", ".tsv", ".tab", ".json", ".jsonl", ".h5", ".hdf5", ".hdf", ".feather", ".arrow",
    ".pkl", ".pickle", ".npy", ".npz", ".db", ".sqlite", ".zip", ".gz", ".bz2", ".xz",
)  # fmt: skip


def infer_format(path: str | os.PathLike | None, fmt: str | None = None) -> OutputFormat:
    """``fmt`` if given, else ``"parquet"`` for ``.parquet``/``.pq`` paths and ``"csv"`` otherwise.

    Raises:
        StreamError: without ``fmt``, a name whose suffix promises another format (``.xlsx``,
            ``.tsv``, ``.csv.gz``, ...: :data:`OTHER_FORMAT_SUFFIXES`), which would get CSV text.
    """
    if fmt is not None:
        if fmt not in ("csv", "parquet"):
            raise ValueError(f"output format must be 'csv' or 'parquet', got {fmt!r}")
        return fmt  # type: ignore[return-value]
    name = _lower_name(path) if path is not None else ""
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(OTHER_FORMAT_SUFFIXES):
        raise StreamError(
            f"{path}: its suffix {os.path.splitext(name)[1]!r} names a format that is not written here; results are "
            "written as csv (.csv) or parquet (.parquet, a folder of part files): rename it, or ask for csv by name"
        )
    return "csv"


def column_units(columns: Sequence[str]) -> dict[str, str]:
    """``{column: units}`` of result columns named ``"<name> (<units>)"``, as every value column is
    (``"band_gap (eV)"``, ``"log10_bulk_modulus (log10(GPa))"``, ``"..._domain_percentile (percent)"``);
    the geometry checks get :data:`~cgcnn_ase.inference.results.FLAG_UNITS`; columns without units (``id``,
    ``error``) are left out."""
    units = {c: FLAG_UNITS[c] for c in columns if c in FLAG_UNITS}
    for column in columns:
        found = _trailing_parenthesis(column)
        if found:
            units[column] = found
    return units


def _trailing_parenthesis(column: str) -> str | None:
    """The text of the balanced parenthesis that ends ``column`` after a space (units that hold parentheses
    themselves, ``log10(GPa)`` or ``eV/atom (RPBE)``, stay whole), or ``None``."""
    if not column.endswith(")"):
        return None
    depth = 0
    for k in range(len(column) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(column[k], 0)
        if depth == 0:
            return column[k + 1 : -1] or None if k > 1 and column[k - 1] == " " else None
    return None


def arrow_schema(columns: Sequence[str], units: Mapping[str, str] | None = None) -> Any:
    """The pyarrow schema of a result table: ``id`` string, model columns float64, the text columns
    ``unseen_elements`` and ``error`` (where present) strings; ``units`` ({column: units}; default: read
    from the column names, :func:`column_units`) go into the schema metadata under ``cgcnn_ase.units``."""
    pa, _ = pyarrow_modules()
    if units is None:
        units = column_units(columns)

    fields = [pa.field("id", pa.string(), nullable=False)]
    fields += [pa.field(c, pa.int64() if c == "n_sparse" else pa.float64())
               for c in columns if c != "id" and c not in TEXT_COLUMNS]  # fmt: skip
    fields += [pa.field(c, pa.string()) for c in TEXT_COLUMNS if c in columns or c == "error"]
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
                raise StreamError(_columns_differ(path, header, self.columns, "file"))
            existing = bool(header)
        # opened at the first rows (round 23a: Ctrl-C before them left a 0-byte file, or an earlier run's output
        # emptied): until then the file is as it was
        self._path, self._mode, self._stream = path, "a" if existing else "w", None
        self._header = not existing

    def _opened(self) -> TextIO:
        if self._stream is None:
            self._stream = open(self._path, self._mode, newline="")  # noqa: SIM115 - closed in close()
        return self._stream

    def write(self, frame: pd.DataFrame) -> None:
        """Write the rows of ``frame`` (columns in ``self.columns`` order) and flush."""
        self._opened()
        buffer = io.StringIO()
        _one_line_errors(frame[self.columns]).to_csv(buffer, index=False, header=self._header)
        self._stream.write(buffer.getvalue())
        self._stream.flush()
        self._header = False

    def close(self, complete: bool = True) -> None:
        """Finish: a ``complete`` run that wrote no rows still leaves the header (a table of no rows, not
        an empty file); a run stopped by an error (``complete=False``) adds nothing."""
        if self._header and complete:
            import pandas as pd

            buffer = io.StringIO()
            pd.DataFrame(columns=self.columns).to_csv(buffer, index=False)
            self._opened().write(buffer.getvalue())
            self._header = False
        if self._own and self._stream is not None:
            self._stream.close()


def _columns_differ(where: Path, theirs: Sequence[str], ours: Sequence[str], kind: str) -> str:
    """Why an output cannot be resumed: another run's columns (or an earlier version's, without the geometry
    columns :data:`~cgcnn_ase.inference.results.FLAG_COLUMNS`)."""
    if list(theirs) == [c for c in ours if c not in FLAG_UNITS]:
        return (f"{where}: written by an earlier version of cgcnn-ase, without the columns n_sparse, bond_ratio and "
                f"vacuum_gap that rows now carry; finish it with that version, or write the rest to a new {kind} "
                "(the ids already predicted can be left out of its inputs)")
    new = [c for c in ours if c not in theirs]
    if new and all("_uncertainty (" in c for c in new) and list(theirs) == [c for c in ours if c not in new]:
        return (f"{where}: written by an earlier version of cgcnn-ase, without the per-crystal uncertainty columns "
                f"({', '.join(new)}) that --model now writes for calibrated ensembles; finish it with that version, "
                f"or write the rest to a new {kind} (the ids already predicted can be left out of its inputs)")
    return (f"{where}: its columns {list(theirs)} differ from this run's {list(ours)}; resume with the same models "
            f"and column options (coverage; log10 and domain for the default properties), or write to a new {kind}")


def _one_line_errors(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each message of its ``error`` column on one line (a reader's message may hold line
    breaks, e.g. gemmi's CIF errors): a CSV row is then one line, for line tools and for the cut of a
    half-written last line on resume. The caller's frame is not changed."""
    if "error" not in frame.columns:
        return frame
    if not frame["error"].map(lambda e: isinstance(e, str) and ("\n" in e or "\r" in e)).any():
        return frame
    frame = frame.copy()
    frame["error"] = frame["error"].map(lambda e: " ".join(e.split()) if isinstance(e, str) else e)
    return frame


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
            others = [p for p in self.folder.iterdir()
                      if p not in parts and not p.name.startswith(".") and p.name != PARQUET_RUN_RECORD]  # fmt: skip
            if others:
                raise StreamError(
                    f"{self.folder}: holds files other than part files ({others[0].name}); choose a new folder"
                )
            self._stale, parts = parts, []  # an earlier run's parts, removed at this run's first rows (as csv)
        else:
            self._stale = []
        if parts:
            _, pq = pyarrow_modules()

            names = pq.read_schema(parts[0]).names
            if names != self.columns:
                raise StreamError(_columns_differ(self.folder, names, self.columns, "folder"))
        self._next = max((int(p.stem.split("-")[1]) for p in parts), default=-1) + 1

    def write(self, frame: pd.DataFrame) -> None:
        """Write ``frame`` as the next part file (the first removes an earlier run's parts)."""
        pa, pq = pyarrow_modules()

        for part in self._stale:
            part.unlink(missing_ok=True)
        self._stale = []
        table = pa.Table.from_pandas(_one_line_errors(frame[self.columns]), schema=self.schema, preserve_index=False)
        path = self.folder / f"part-{self._next:06d}.parquet"
        tmp = self.folder / f".{path.name}.{os.getpid()}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        self._next += 1

    def close(self, complete: bool = True) -> None:
        """Every part is complete when written; a ``complete`` run's folder that got none gets one empty
        part, so that it reads as a table of no rows with this run's columns (a run stopped by an error,
        ``complete=False``, adds nothing)."""
        if complete and (self._stale or not _part_files(self.folder)):
            import pandas as pd

            self.write(pd.DataFrame({c: pd.Series(dtype=object if c == "id" or c in TEXT_COLUMNS else
                                                  "Int64" if c == "n_sparse" else float)
                                    for c in self.columns}))  # fmt: skip


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
        _, pq = pyarrow_modules()
        errors = 0

        def parquet_batches() -> Iterator[list[str]]:
            nonlocal errors
            for part in _part_files(path):
                file = pq.ParquetFile(part)
                wanted = ["id", "error"] if "error" in file.schema_arrow.names else ["id"]
                for batch in file.iter_batches(batch_size=chunk_rows, columns=wanted):
                    if len(wanted) == 2:
                        errors += sum(1 for e in batch.column(1).to_pylist() if e)
                    yield batch.column(0).to_pylist()

        finished = FinishedIds.from_ids(parquet_batches())
        finished.n_errors = errors
        return finished
    if not path.is_file() or path.stat().st_size == 0:
        return FinishedIds()
    _cut_partial_line(path)
    import pandas as pd

    if "id" not in _csv_header(path):
        raise StreamError(f"{path}: has no 'id' column; it is not an output of cgcnn-ase predict")
    wanted = ["id", "error"] if "error" in _csv_header(path) else ["id"]
    reader = pd.read_csv(path, usecols=wanted, dtype=str, keep_default_na=False, na_filter=False, chunksize=chunk_rows)
    errors = 0

    def csv_batches() -> Iterator[list[str]]:
        nonlocal errors
        for chunk in reader:
            if "error" in chunk:
                errors += int((chunk["error"] != "").sum())
            yield chunk["id"].tolist()

    with reader:
        try:
            finished = FinishedIds.from_ids(csv_batches())
        except (pd.errors.ParserError, ValueError) as exc:  # a text field cut inside a quoted line break
            raise StreamError(
                f"{path}: cannot be resumed: it is not valid CSV ({' '.join(str(exc).split())}): a run was cut "
                "inside a quoted line break (of an id, or of an error message written by an earlier version). Remove "
                "its last, incomplete row with an editor, or write to a new output"
            ) from exc
    finished.n_errors = errors
    return finished

"""The file formats the one reader (:mod:`cgcnn_ase.io.reader`) dispatches to, CIF aside
(:mod:`cgcnn_ase.io.cif`): what a file is and whether it can be read, compressed and zipped text, ASE frame
files and databases, and pymatgen structure JSON.

* Files: :func:`check_file` (a missing, empty, broken-link or special file is a
  :class:`~cgcnn_ase.errors.StructureReadError` naming it), :func:`open_text` (UTF-8 text, decompressed by the
  name's suffix: gzip, bzip2, xz or a zip of one file), :func:`looks_like_cif` (CIF by content).
* ASE: :func:`read_frames` (every frame of a file), :func:`frame_items` (frame by frame, a bad frame its own
  error), :func:`connect_db` (an ASE database, checked read-only first), :func:`read_db_rows`; their messages
  come from :func:`ase_read_error` and :func:`db_read_error`.
* pymatgen JSON: :func:`json_entry_items` (a JSON list of structure dicts or Materials Project entries, entry
  by entry), :func:`json_file_records`, :func:`structure_dict_record`.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import json
import lzma
import os
import re
import stat
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cgcnn_ase.errors import InvalidStructureError, StructureReadError, user_stacklevel
from cgcnn_ase.io.cif import numbered_labels
from cgcnn_ase.io.records import StructureRecord, from_ase, from_pymatgen, validate_record
from cgcnn_ase.warning_blocks import catch_warnings

__all__ = [
    "FRAME_SUFFIXES",
    "ase_frames",
    "ase_read_error",
    "atoms_item",
    "check_file",
    "connect_db",
    "db_frames",
    "db_read_error",
    "frame_items",
    "frame_records",
    "is_ase_db",
    "is_cif_name",
    "is_cif_text",
    "is_json_name",
    "is_structure_dict",
    "json_dict",
    "json_entry_items",
    "json_file_records",
    "looks_like_cif",
    "open_text",
    "read_db_rows",
    "read_frames",
    "structure_dict_record",
    "text_frames",
    "zip_member",
]


# =============================================================================================
# Files
# =============================================================================================


def _link_problem(path: Path) -> str:
    """What is wrong with a symbolic link that leads to no file: a loop, or a missing target."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"a symbolic link loop (to {os.readlink(path)}, which leads back to itself)"
    return f"a broken symbolic link (to {os.readlink(path)}, which does not exist)"


def check_file(path: Path) -> None:
    """Check that ``path`` is a readable, non-empty regular file.

    Raises:
        StructureReadError: a missing file (a broken or looping link, a pattern matching nothing), a
            folder, a pipe or device, a path the OS cannot take, or an empty file; the message names it.
    """
    try:
        if not path.exists():
            if path.is_symlink():
                raise StructureReadError(f"{path}: {_link_problem(path)}")
            if glob.has_magic(str(path)) and glob.glob(str(path), recursive=True):
                raise StructureReadError(f"{path}: a glob pattern is expanded when it is the whole input (predict('"
                                         f"{path}')) or a command-line argument, not as an item of a list: expand it "
                                         "there with glob.glob")  # fmt: skip
            if glob.has_magic(str(path)):
                raise StructureReadError(f"{path}: no file matches this pattern (and no file has this name)")
            raise StructureReadError(f"{path}: no such file")
        if path.is_dir():
            raise StructureReadError(f"{path}: is a directory, not a structure file (a folder is read file by file when it "
                                     "is the whole input or a command-line argument; in a list, give its files)")
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):  # its size says nothing, and reading it twice fails
            raise StructureReadError(
                f"{path}: not a regular file (a pipe or a device); give a file, or '-' to read standard input"
            )
        empty = status.st_size == 0
    except OSError as exc:  # e.g. a long text passed as a path: "File name too long"
        raise StructureReadError(f"{str(path)[:80]}...: not a readable file path ({exc.strerror})") from None
    if empty:
        raise StructureReadError(f"{path}: the file is empty")


#: Files of frames (read frame by frame where memory matters: :func:`frame_items`).
FRAME_SUFFIXES = (".extxyz", ".xyz", ".traj")
#: Suffixes of compressed files and the module that opens each (ASE reads the same ones).
_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}


def is_cif_text(text: str) -> bool:
    """Whether ``text`` is CIF: a ``data_`` block header and cell or atom-site items (lines starting so, any
    case; a POSCAR whose comment line starts with ``data_`` is not)."""
    return _CIF_BLOCK.search(text) is not None and _CIF_ITEM.search(text) is not None


#: A line that starts (after blanks) with a CIF data block header, and one with a cell or atom-site item.
_CIF_BLOCK = re.compile(r"(?:\A|[\r\n])\s*data_", re.IGNORECASE)
_CIF_ITEM = re.compile(r"(?:\A|[\r\n])\s*_(?:cell[._]length_a|atom_site[._])", re.IGNORECASE)


def is_cif_name(path: Path) -> bool:
    """Whether the file's name says CIF (``.cif``, ``.mcif``; compressed ones are found by content)."""
    return path.name.lower().endswith((".cif", ".mcif"))


def open_text(path: str | os.PathLike, errors: str = "replace") -> Any:
    """``path`` opened as UTF-8 text, decompressed when its suffix says gzip, bzip2, xz or zip (a zip archive
    must hold one file, besides what macOS adds) (``errors``: as for :func:`open`; ``"strict"`` raises
    :class:`UnicodeDecodeError` on bytes that are not UTF-8).

    Raises:
        StructureReadError: a ``.zip`` that is no readable archive, or holds no file or several.
    """
    path = Path(path)
    if path.suffix.lower() == ".zip":
        return io.TextIOWrapper(zip_member(path), encoding="utf-8-sig", errors=errors)
    module = _COMPRESSION.get(path.suffix.lower())
    if module is None:
        return open(path, encoding="utf-8-sig", errors=errors)  # -sig: a byte-order mark (Windows editors) is dropped
    import importlib

    return importlib.import_module(module).open(path, "rt", encoding="utf-8-sig", errors=errors)


def zip_member(path: Path) -> Any:
    """The one data file of the zip archive ``path``, opened for reading in binary (macOS's ``__MACOSX/``
    resource forks and hidden files such as ``.DS_Store`` are no data)."""
    import zipfile

    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise StructureReadError(f"{path}: not a readable zip archive ({exc})") from None
    with archive:  # the member stays readable after the archive is closed (zipfile counts its users)
        names = [n for n in archive.namelist() if not n.endswith("/") and not n.startswith("__MACOSX/")
                 and not Path(n).name.startswith(".")]  # fmt: skip
        if len(names) != 1:
            raise StructureReadError(f"{path}: a zip archive of {len(names)} files; a zip must hold one file (or "
                                     "unzip it and give the files)")  # fmt: skip
        return archive.open(names[0])


def looks_like_cif(path: Path) -> bool:
    """Whether the file's first 64 kB (decompressed) are CIF: a ``data_`` block with cell or atom-site items.

    Decides by content, not name, so ``x.cif.gz``, ``x.cif.bz2`` or a CIF saved as ``x.txt`` all
    reach the CIF reader (its disorder checks included) instead of a reader that would not see them.
    """
    try:
        with open_text(path) as f:
            head = f.read(65536)
    except (OSError, ValueError, *DECOMPRESSION_ERRORS):  # not compressed after all, damaged, or unreadable:
        return False  # not for us to say
    return is_cif_text(head)


#: Errors of a damaged compressed file (gzip, bzip2, xz) besides ``OSError``: it gets its own error, the run goes
#: on (round 26c: a ``zlib.error`` and an ``lzma.LZMAError`` escaped and ended the whole run).
DECOMPRESSION_ERRORS = (EOFError, zlib.error, lzma.LZMAError)


# =============================================================================================
# ASE frame files and databases
# =============================================================================================


def frame_records(frames: list[Any], base: str) -> list[StructureRecord]:
    """Records of ASE frames, labelled ``base`` (one frame) or ``base@i``."""
    return [from_ase(atoms, label=name) for atoms, name in zip(frames, numbered_labels(base, len(frames)))]


def is_ase_db(path: str | os.PathLike) -> bool:
    """Whether the file is an ASE database: its name says so (``.db``), or it is ASE's JSON database (a ``.json``
    object that ends with ASE's ``"nextid"`` key; round 23: its rows were read as frames, ``path@0``, whatever
    ``--id-column`` said)."""
    name = Path(path).name.lower()
    return name.endswith(".db") or (name.endswith(".json") and _is_ase_json_db(Path(path)))


def _is_ase_json_db(path: Path) -> bool:
    """Whether a JSON file is ASE's JSON database: an object whose last key is ``"nextid"`` (read: its first and
    last bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
            f.seek(max(0, path.stat().st_size - 64))
            tail = f.read()
    except OSError:
        return False
    return head.startswith(b"{") and b'"nextid"' in tail


def db_frames(path: Path, base: str) -> tuple[list[Any], list[str]]:
    """The rows of an ASE database as ``Atoms``, labelled ``base@id=N`` by each row's own id (as the CLI
    and streaming label them; a row's position would shift after a deletion)."""
    rows = read_db_rows(path, base)
    return [row.toatoms() for row in rows], [f"{base}@id={row.id}" for row in rows]


def read_db_rows(path: str | os.PathLike, label: str) -> list[Any]:
    """Every row of the ASE database at ``path`` (``ase.db`` row objects, with their key-value pairs).

    Raises:
        StructureReadError: not a readable ASE database, or one without rows (messages start with ``label``).
    """
    try:
        with catch_warnings():
            warnings.simplefilter("ignore")
            rows = list(connect_db(path, label).select())
    except StructureReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - ase.db raises many types for foreign files
        raise db_read_error(label, exc) from None
    if not rows:
        raise StructureReadError(f"{label}: the database holds no structure")
    return rows


def connect_db(path: str | os.PathLike, label: str) -> Any:
    """An ``ase.db`` connection to the ASE database at ``path``: ASE's JSON database as it is, an SQLite file after
    checking, without writing, that it is one (``ase.db.connect`` would add its tables to any other SQLite file).

    Raises:
        StructureReadError: not an SQLite file, or one without ASE's ``systems`` table (the file is left as it was).
    """
    import sqlite3

    import ase.db

    if Path(path).name.lower().endswith(".json") and _is_ase_json_db(Path(path)):
        return ase.db.connect(str(path), type="json")  # read only by select()
    with open(path, "rb") as f:
        header = f.read(16)
    if header != b"SQLite format 3\x00":
        raise StructureReadError(f"{label}: not a readable ASE database (not an SQLite file)")
    # immutable: no locks, so SQLite adds no -wal/-shm files beside a database in WAL mode; only when no -wal
    # file exists already (one may hold changes not yet in the file, which immutable would not read)
    resolved = Path(path).resolve()
    query = "mode=ro" if resolved.with_name(resolved.name + "-wal").exists() else "mode=ro&immutable=1"
    try:
        with contextlib.closing(sqlite3.connect(f"{resolved.as_uri()}?{query}", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as exc:
        raise db_read_error(label, exc) from None
    if "systems" not in tables:
        raise StructureReadError(f"{label}: not a readable ASE database (an SQLite file without ASE's tables: "
                                 f"{', '.join(sorted(tables)[:5]) or 'none'}); it is not read, and not changed")  # fmt: skip
    return ase.db.connect(str(path))


def db_read_error(label: str, exc: BaseException) -> StructureReadError:
    """The error for a file that ``ase.db`` could not open or read (``exc``: what it raised)."""
    return StructureReadError(f"{label}: not a readable ASE database ({type(exc).__name__}: {exc})")


def read_frames(path: str | os.PathLike) -> list[Any]:
    """The ``ase.Atoms`` frames of a non-CIF file as ASE reads them, with their ``info`` and
    calculator results (for readers that need more than the crystal, e.g. training targets);
    :func:`read_structures` turns the same frames into records.

    Raises:
        StructureReadError: a missing, empty or unreadable file, or one without frames.
    """
    path = Path(path)
    check_file(path)
    return ase_frames(path, str(path))


def ase_frames(path: Path, label: str) -> list[Any]:
    """Every frame ASE reads from ``path`` (a file whose name ASE cannot place is read by content as POSCAR
    or extended XYZ).

    Raises:
        StructureReadError: ASE cannot read it (the message from :func:`ase_read_error`).
    """
    import ase.io
    from ase.io.formats import UnknownFileTypeError, filetype

    try:
        problem = header_problem(path, filetype(str(path), guess=False))
    except Exception:  # noqa: BLE001 - a check before ASE's reading: whatever fails here, ASE decides below
        problem = None
    if problem:
        raise StructureReadError(f"{label}: {problem}")
    try:
        with catch_warnings():
            warnings.simplefilter("ignore")
            frames = ase.io.read(path, index=":", do_not_split_by_at_sign=True)  # "Si@300K.xyz" is a name
    except UnknownFileTypeError:  # a name ASE cannot place ("Si", "relaxed.out"): POSCAR or extxyz by content
        with open_text(path) as f:
            text = f.read()
        try:
            return text_frames(text, label)
        except StructureReadError:
            raise StructureReadError(f"{label}: unknown format: ASE cannot tell it from the name, and the text is "
                                     "neither CIF, POSCAR nor extended XYZ (name the file .cif, .vasp, .extxyz, ...)") from None
    except Exception as exc:  # noqa: BLE001 - ASE raises many types for unreadable files
        raise ase_read_error(label, exc) from None
    if not frames:
        raise StructureReadError(f"{label}: the file holds no structure")
    return list(frames)


def ase_read_error(label: str, exc: BaseException) -> StructureReadError:
    """The error for a file ASE could not read (``exc``: what it raised), naming an unknown element symbol."""
    symbol = _unknown_symbol(exc)
    if symbol:
        return StructureReadError(f"{label}: could not be read by ASE: {symbol}")
    return StructureReadError(f"{label}: could not be read by ASE ({type(exc).__name__}: {exc})")


def _next_frame(frames: Iterator[Any]) -> Any:
    """The next ASE frame or ``None`` at the end (reader warnings silenced for this call only)."""
    with catch_warnings():
        warnings.simplefilter("ignore")
        return next(frames, None)


#: The fewest bytes an atom's line takes: ``H 0 0 0`` and its line break in an XYZ file, ``0 0 0`` in a POSCAR.
_MIN_ATOM_LINE = {"xyz": 8, "extxyz": 8, "vasp": 6}


def header_problem(path: str | os.PathLike, fmt: str | None) -> str | None:
    """Why the header of an XYZ or POSCAR file (``fmt``, as ASE names it) cannot be trusted, or ``None``: a VASP 4
    POSCAR's elements (:func:`vasp4_species_problem`), or more atoms declared than the file can hold
    (:func:`declared_atoms_problem`; not checked in a compressed file). The head is read once."""
    if fmt not in ("xyz", "extxyz", "vasp"):
        return None
    with open_text(path) as f:
        head = [f.readline() for _ in range(8)]
    compressed = Path(path).name.lower().endswith(tuple(_COMPRESSION))
    problem = None if compressed else declared_atoms_problem(head, os.path.getsize(path), fmt)
    return problem or (vasp4_species_problem("".join(head)) if fmt == "vasp" else None)


def declared_atoms_problem(head: list[str], size: int, fmt: str) -> str | None:
    """Why a file of ``size`` bytes cannot hold the atoms its first lines ``head`` declare, or ``None``: an XYZ
    frame's count (first line) or a POSCAR's counts needing more bytes than that. ASE would otherwise loop on the
    missing lines or allocate for them (round 26c: ``999999999999`` atoms in a 2-atom extxyz never returned; a
    96-byte POSCAR declaring 10^9 atoms took 23.6 GB)."""
    if fmt == "vasp":
        counts = next((_counts_tokens(line) for line in head[5:7]
                       if _counts_tokens(line) and all(t.isdigit() for t in _counts_tokens(line))), None)  # fmt: skip
        declared = sum(int(t) for t in counts) if counts else 0
    else:
        first = head[0].split()
        declared = int(first[0]) if first and first[0].isdigit() else 0
    if declared * _MIN_ATOM_LINE[fmt] > size:
        return (f"its header declares {declared} atoms, more than its {size} bytes can hold (at least "
                f"{_MIN_ATOM_LINE[fmt]} bytes a line): a damaged or mistyped file")
    return None


def _safe_frames(path: str) -> Iterator[Any]:
    """ASE frames of ``path`` one at a time; a read error is yielded (not raised) and ends the file."""
    import ase.io
    from ase.io.formats import filetype

    try:
        problem = header_problem(path, filetype(path, guess=False))
    except Exception:  # noqa: BLE001 - ASE raises many types for files it cannot place
        problem = None
    if problem:
        yield StructureReadError(problem)
        return
    try:
        frames = ase.io.iread(path, index=":", do_not_split_by_at_sign=True)  # "Si@300K.xyz" is a name
        while (frame := _next_frame(frames)) is not None:
            yield frame
    except Exception as exc:  # noqa: BLE001 - ASE raises many types for unreadable files
        yield exc


def frame_items(
    path: str | os.PathLike,
    skip: Callable[[str], bool] | None = None,
    base: str | None = None,
    id_key: str | None = None,
) -> Iterator[tuple[str, StructureRecord | InvalidStructureError]]:
    """``(label, record or error)`` per frame of an ASE frame file (extxyz, xyz, traj), read one frame at a
    time (memory: one frame), labelled ``base`` (default: the path) for a file of one frame, else ``base@i``,
    or by the frame's ``atoms.info[id_key]`` where it has one (a file where no frame has it is warned about).
    A frame that cannot be read ends the file with one error item; the frames before it stand.
    ``skip(label)``: leave that frame out (resume)."""
    path = str(path)
    label = base or str(Path(path))
    named = 0  # frames labelled by their id_key

    def own_label(atoms: Any, default: str) -> str:
        nonlocal named
        value = atoms.info.get(id_key) if id_key is not None else None
        if value is None or not str(value).strip():
            return default
        named += 1
        return str(value)

    yield from _frames_labelled(path, label, skip, own_label)
    if id_key is not None and not named:
        warnings.warn(f"{label}: no frame has the info key {id_key!r}; its frames keep the ids {label}@k",
                      UserWarning, stacklevel=user_stacklevel())  # fmt: skip


def _frames_labelled(
    path: str, label: str, skip: Callable[[str], bool] | None, own_label: Callable[[Any, str], str]
) -> Iterator[tuple[str, StructureRecord | InvalidStructureError]]:
    """:func:`frame_items`' frames, each labelled ``own_label(atoms, default label)``."""
    source = _safe_frames(path)
    current = next(source, None)
    if current is None:
        yield label, StructureReadError(f"{label}: the file holds no structure")
        return
    if isinstance(current, Exception):
        yield label, (StructureReadError(f"{label}: {current}") if isinstance(current, StructureReadError)
                      else ase_read_error(label, current))  # fmt: skip
        return
    ahead = next(source, None)
    if ahead is None:
        yield atoms_item(current, own_label(current, label))
        return
    k = 0
    while current is not None:
        frame_label = f"{label}@{k}"
        if isinstance(current, Exception):  # ASE cannot go on past it: say that the rest of the file is unread
            error = ase_read_error(frame_label, current)
            yield frame_label, StructureReadError(f"{error}; the frames after it in this file were not read")
            return
        frame_label = own_label(current, frame_label)
        if skip is None or not skip(frame_label):
            yield atoms_item(current, frame_label)
        current, ahead = ahead, (next(source, None) if ahead is not None else None)
        k += 1


def atoms_item(atoms: Any, label: str) -> tuple[str, StructureRecord | InvalidStructureError]:
    """``(label, record)`` of ``ase.Atoms``, or ``(label, error)`` when they are no usable crystal."""
    try:
        return label, from_ase(atoms, label=label)
    except InvalidStructureError as exc:
        return label, exc


def _unknown_symbol(exc: BaseException) -> str | None:
    """``"unknown element symbol 'na' (...)"`` when ASE failed on an element symbol (its lookup raises
    ``KeyError(symbol)``), else ``None``."""
    key = exc.args[0] if isinstance(exc, KeyError) and exc.args else None
    if not (isinstance(key, str) and key.isalpha() and len(key) <= 3):
        return None
    from ase.data import chemical_symbols

    hint = (" (write the hydrogen isotopes D and T as H)" if key in ("D", "T")
            else f" (element symbols are capitalised: {key.capitalize()})" if key.capitalize() in chemical_symbols
            else "")  # fmt: skip
    return f"unknown element symbol {key!r}{hint}"


def _counts_tokens(line: str) -> list[str]:
    """A POSCAR line's tokens before a ``!`` or ``#`` comment, which ASE drops too (round 27: ``2 ! atoms``
    escaped the VASP 4 check)."""
    return re.split(r"[!#]", line, maxsplit=1)[0].split()


def vasp4_species_problem(text: str) -> str | None:
    """Why a POSCAR of VASP 4 (no species line above the counts) cannot be trusted for its elements, or ``None``.
    ASE then takes them from the comment line by a heuristic that reads words as symbols, before any POTCAR beside
    the file (round 26c: the comment ``POSCAR`` made diamond Si into phosphorus, ``INCAR test`` into In and C,
    without a word). Accepted: a comment of exactly one element symbol per count."""
    from ase.data import atomic_numbers

    lines = text.splitlines()
    if len(lines) < 7:
        return None
    counts = _counts_tokens(lines[5])
    if not counts or not all(token.isdigit() for token in counts):
        return None
    names = lines[0].split()
    if len(names) == len(counts) and all(name in atomic_numbers and name != "X" for name in names):
        return None
    return (f"a VASP 4 POSCAR (no species line above the counts '{' '.join(counts)}') whose comment line "
            f"{lines[0].strip()[:60]!r} is not one element symbol per count, so its elements are unknown: add the "
            "species line (VASP 5), or write the symbols as the comment line (a POTCAR beside it is not enough: ASE "
            "reads the comment first)")


def text_frames(text: str, label: str) -> list[Any]:
    """The ``ase.Atoms`` frames of POSCAR or extended XYZ text (tried in that order: a POSCAR is never
    valid XYZ), for text without a CIF data block and files whose names do not say their format."""
    import io

    import ase.io

    for fmt in ("vasp", "extxyz"):
        problem = vasp4_species_problem(text) if fmt == "vasp" else None
        if problem:
            raise StructureReadError(f"{label}: {problem}")
        try:
            with catch_warnings():
                warnings.simplefilter("ignore")
                frames = ase.io.read(io.StringIO(text.rstrip() + "\n"), format=fmt, index=":")  # line 1 may be blank
        except Exception as exc:  # noqa: BLE001 - not this format, or a POSCAR naming no element
            symbol = _unknown_symbol(exc) if fmt == "vasp" else None
            if symbol:
                raise StructureReadError(f"{label}: POSCAR text with an {symbol}") from None
            continue
        if frames:
            return list(frames)
    raise StructureReadError(f"{label}: text that is neither CIF (a data_ block with cell and atom-site items), POSCAR "
                             f"nor extended XYZ{printed_object_hint(text)}")


def printed_object_hint(text: str) -> str:
    """`` (...)``: what to do with ``text`` that is a structure object's printed form (``str(structure)``,
    ``repr(atoms)``), which holds no readable structure; ``""`` for other text. Dask turns a column of objects into
    such text (round 23a: every row failed with a message that hid the cause)."""
    start = text.lstrip()[:20]
    if start.startswith(("Full Formula", "Structure Summary")):
        kind = "a pymatgen Structure"
    elif start.startswith("Atoms("):
        kind = "an ase.Atoms"
    elif start.startswith(("{'", "[{'")):  # a dict's repr: single quotes, which JSON does not take
        kind = "a Python dict"
    elif start.startswith(("ComputedStructureEntry", "ComputedEntry", "None ComputedStructureEntry")):
        kind = "a pymatgen entry"
    else:
        return ""
    return (f" (this is the printed form of {kind}, str(obj), which is not a file format: pass the object itself; "
            "Dask turns a column of objects into such text unless dask.config.set({'dataframe.convert-string': "
            "False}))")


# =============================================================================================
# pymatgen structure dicts
# =============================================================================================


def is_structure_dict(obj: Mapping) -> bool:
    """A mapping that claims to be a pymatgen ``Structure.as_dict()`` (``False`` for mappings whose keys cannot be
    strings, such as a pymatgen ``Composition``, whose ``in`` raises a ``TypeError`` for ``"@class"``)."""
    try:
        return "@class" in obj or ("lattice" in obj and "sites" in obj)
    except (TypeError, ValueError, KeyError):
        return False


def is_json_name(path: str | os.PathLike) -> bool:
    """Whether a file name says JSON (``.json``, compressed or not)."""
    return Path(path).name.lower().endswith(tuple(".json" + c for c in ("", *_COMPRESSION, ".zip")))


def json_entry_items(
    path: str | os.PathLike,
    id_key: str | None = None,
    skip: Callable[[str], bool] | None = None,
    *,
    label: str | None = None,
) -> Iterator[tuple[str, StructureRecord | InvalidStructureError]] | None:
    """``(label, record or error)`` per item of a JSON list of pymatgen structure dicts or of entries holding
    one under ``"structure"`` (as Materials Project downloads), each item on its own: a bad one is its own
    error. Labels: each entry's ``id_key`` where it has one, else ``label@k`` (``label`` for a list of one;
    ``label`` defaults to the path).
    ``None`` when the file is no such list (one structure dict, an ASE JSON database, other JSON).

    The file is parsed at once, each entry's structure only as the iterator reaches it (a list of 10^5
    entries gives its first record at once); the entries whose label ``skip`` says to skip are left out unparsed.

    Raises:
        StructureReadError: a missing, empty or unreadable file.
    """
    path = Path(path)
    check_file(path)
    return _json_items(path, label or str(path), id_key, skip)


#: What :func:`_load_json` returns for a file that is not JSON.
_NOT_JSON = object()


def _load_json(path: Path) -> Any:
    """The parsed JSON of ``path`` (decompressed by its suffix), or :data:`_NOT_JSON`."""
    try:
        with open_text(path) as f:
            return json.load(f)
    except (OSError, EOFError, ValueError):
        return _NOT_JSON


def _json_items(
    path: Path, base: str, id_key: str | None = None, skip: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, StructureRecord | InvalidStructureError]] | None:
    """:func:`json_entry_items` of an existing file, labelled from ``base``."""
    value = _load_json(path)
    return None if value is _NOT_JSON else _entry_items(value, base, id_key, skip)


def _entry_items(
    value: Any, base: str, id_key: str | None = None, skip: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, StructureRecord | InvalidStructureError]] | None:
    """``(label, record or error)`` per item of parsed JSON that is a list of structure dicts or entries (see
    :func:`json_entry_items`; also under ``"data"``, as a Materials Project API response holds them), each parsed as
    it is reached, those ``skip`` says to skip (by label) left out
    unparsed; ``None`` for other JSON.

    An ``id_key`` no entry has is warned about, and the entries keep their ``base@k`` labels (as database rows
    and frames do).
    """
    if isinstance(value, Mapping) and isinstance(value.get("data"), list):  # a Materials Project API response
        value = value["data"]  # (round 26c: {"data": [...], "meta": ...} was refused as holding no structure)
    if not isinstance(value, list) or not value:
        return None
    if not any(isinstance(_entry_structure(e), Mapping) and is_structure_dict(_entry_structure(e)) for e in value):
        return None
    if id_key is not None and not any(isinstance(e, Mapping) and id_key in e for e in value):
        first = next((sorted(e) for e in value if isinstance(e, Mapping)), [])
        warnings.warn(f"{base}: no entry has the id key {id_key!r} (keys of the first entry: {first}); its entries keep "
                      f"the ids {base}@k", UserWarning, stacklevel=user_stacklevel())  # as database rows and frames  # fmt: skip
        id_key = None
    labels = (_entry_label(entry, name, id_key) for entry, name in zip(value, numbered_labels(base, len(value))))
    return (_entry_item(entry, label) for entry, label in zip(value, labels) if skip is None or not skip(label))


def _entry_structure(entry: Any) -> Any:
    """The structure dict of a JSON list's item: under ``"structure"``, or the item itself."""
    return entry.get("structure", entry) if isinstance(entry, Mapping) else entry


def _entry_label(entry: Any, name: str, id_key: str | None) -> str:
    """The label of an item of a JSON list: its ``id_key`` value where it has one, else ``name`` (``path@k``)."""
    if id_key is not None and isinstance(entry, Mapping) and str(entry.get(id_key, "")).strip() not in ("", "None"):
        return str(entry[id_key])
    return name


def _entry_item(entry: Any, name: str) -> tuple[str, StructureRecord | InvalidStructureError]:
    """``(name, record or error)`` of one item of a JSON list."""
    structure = _entry_structure(entry)
    if isinstance(entry, Mapping) and "structure" not in entry and not is_structure_dict(entry):
        return name, StructureReadError(f"{name}: this entry has no 'structure' (its keys: {sorted(entry)})")
    if not isinstance(structure, Mapping):
        return name, StructureReadError(f"{name}: item of a JSON list of structures holds a "
                                        f"{type(structure).__name__}, not a pymatgen structure dict")  # fmt: skip
    try:
        return name, structure_dict_record(structure, name)
    except InvalidStructureError as exc:
        return name, exc


def json_file_records(path: Path, label: str) -> list[StructureRecord] | None:
    """The structures of a JSON file of pymatgen structure dicts: one ``Structure.as_dict()`` or one entry
    holding it under ``"structure"`` (a Materials Project entry saved on its own), or a list of them (as
    Materials Project downloads hold), labelled ``label@k``; ``None`` for other JSON (an ASE database: ASE
    reads it)."""
    value = _load_json(path)
    return None if value is _NOT_JSON else json_value_records(value, label)


def json_value_records(value: Any, label: str) -> list[StructureRecord] | None:
    """The structures of parsed JSON (:func:`json_file_records`; JSON text given in memory or on stdin is read by
    it too: round 24 found a list of Materials Project entries refused as text while read as a file)."""
    if isinstance(value, Mapping) and isinstance(value.get("structure"), Mapping) and is_structure_dict(value["structure"]):
        value = value["structure"]  # round 22: one saved entry was "JSON that holds no structure"
    if isinstance(value, Mapping) and is_structure_dict(value):
        return [structure_dict_record(value, label)]
    if isinstance(value, Mapping) and "ids" in value:  # an ASE JSON database
        return None
    entries = _entry_items(value, label)
    if entries is None:
        raise StructureReadError(f"{label}: JSON that holds no structure: neither a pymatgen structure dict (lattice "
                                 "and sites), a list of them, nor an ASE database")  # fmt: skip
    items = list(entries)
    for _, item in items:  # all or nothing here; read_items gives each item its own error
        if isinstance(item, InvalidStructureError):
            raise item
    return [item for _, item in items]


def json_dict(text: str, label: str) -> dict | list:
    """The JSON object, or list of them, in ``text`` (structure JSON given as text).

    Raises:
        StructureReadError: not valid JSON, or JSON that is neither an object nor a list.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StructureReadError(f"{label}: not valid structure JSON ({exc}){printed_object_hint(text)}") from None
    if not isinstance(value, (dict, list)):
        raise StructureReadError(f"{label}: structure JSON must be an object or a list, got {type(value).__name__}")
    return value


def structure_dict_record(data: Mapping, label: str) -> StructureRecord:
    """A pymatgen ``Structure.as_dict()`` mapping -> record: the record ``from_pymatgen(Structure.from_dict(data))``
    gives, bit for bit. A plain ordered structure (a lattice matrix; each site one element, occupancy 1, with
    fractional ``abc``) is read from the dict directly, 7.5x faster than through pymatgen (a Materials Project
    download of 10^5 entries); any other dict goes through pymatgen, whose checks and messages apply."""
    parts = _plain_dict_parts(data)
    if parts is not None:
        return validate_record(*parts, label)
    return _pymatgen_dict_record(data, label)


def _plain_dict_parts(data: Mapping) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[bool, ...]] | None:
    """``(numbers, frac, cell, pbc)`` of a plain ordered pymatgen structure dict as ``Structure.from_dict`` reads
    it (``abc`` and the matrix as float64; ``pbc`` as given, else periodic), or ``None`` for any other dict."""
    try:
        return _plain_parts_or_none(data)
    except (TypeError, ValueError, OverflowError, AttributeError):  # pymatgen's reading says what is wrong
        return None


#: The keys of a plain site species entry; any other (spin, properties) leaves the dict to pymatgen.
_PLAIN_SPECIES_KEYS = frozenset({"element", "occu", "oxidation_state"})


def _plain_parts_or_none(data: Mapping) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[bool, ...]] | None:
    """:func:`_plain_dict_parts`, which may raise on malformed values."""
    from ase.data import atomic_numbers

    lattice, sites = data.get("lattice"), data.get("sites")
    if data.get("@class", "Structure") not in ("Structure", "IStructure") or not isinstance(lattice, Mapping):
        return None
    if not isinstance(sites, list) or not sites or "matrix" not in lattice:
        return None
    numbers, frac = [], []
    for site in sites:
        species = site.get("species") if isinstance(site, Mapping) else None
        if not isinstance(species, list) or len(species) != 1 or not isinstance(species[0], Mapping):
            return None
        element, oxidation = species[0].get("element"), species[0].get("oxidation_state")
        z = atomic_numbers.get(element, 0) if isinstance(element, str) else 0
        if not set(species[0]) <= _PLAIN_SPECIES_KEYS or isinstance(oxidation, (bool, str)):
            return None  # pymatgen refuses an oxidation state "+1"; other keys are its to read
        if species[0].get("occu") != 1 or not 1 <= z <= 118 or "abc" not in site:
            return None  # disorder, dummy species, isotopes (D), Cartesian-only sites: pymatgen says what they are
        numbers.append(z)
        frac.append(site["abc"])
    frac_coords = np.array(frac, dtype=np.float64)
    cell = np.array(lattice["matrix"], dtype=np.float64)
    if frac_coords.shape != (len(numbers), 3) or cell.shape != (3, 3):
        return None
    pbc = lattice.get("pbc", (True, True, True))
    if not isinstance(pbc, (list, tuple)) or len(pbc) != 3 or not all(isinstance(p, bool) for p in pbc):
        return None  # pymatgen: "pbc must be a tuple of three True/False values"
    return np.asarray(numbers), frac_coords, cell, tuple(pbc)


def _pymatgen_dict_record(data: Mapping, label: str) -> StructureRecord:
    """:func:`structure_dict_record` through ``pymatgen.core.Structure.from_dict``."""
    from pymatgen.core import Structure

    try:
        with catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_dict(dict(data))
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types for bad dicts
        raise StructureReadError(f"{label}: not a pymatgen structure dict ({type(exc).__name__}: {exc})") from None
    return from_pymatgen(structure, label=label)

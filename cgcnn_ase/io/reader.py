"""The one structure reader: whatever a user holds -> validated :class:`StructureRecord` objects.

:func:`read_records` is the single place that decides how each kind of input becomes
records (:func:`input_kind` names the kinds); every entry point (``CGCNNPredictor.predict``,
the ASE calculator, the matminer featurizer, the CLI, streaming, Dask, training datasets)
reads through it:

========================  ==================================================================
input                     read as
========================  ==================================================================
file path (``Path``, or   CIF / mCIF: gemmi (default) or pymatgen, see ``cif_reader``;
a one-line ``str``)       anything else (POSCAR, extxyz, ...): ASE; several frames or CIF
                          data blocks give several records, labelled ``path@i``
CIF text (``str`` with    exactly as a CIF file holding that text (the same gemmi path,
line breaks, ``data_``    the same pymatgen fallback)
and cell or site items)
POSCAR or extended XYZ    ASE (``vasp``, then ``extxyz``); several frames give several
text (other ``str`` with  records, labelled ``label@i``
line breaks)
structure JSON (``str``   ``pymatgen.core.Structure.from_dict``
starting with ``{``)
pymatgen structure dict   ``pymatgen.core.Structure.from_dict`` (a mapping with ``lattice``
                          and ``sites``, or ``@class``)
``ase.Atoms``             :func:`~cgcnn_ase.io.records.from_ase`
pymatgen ``Structure`` /  :func:`~cgcnn_ase.io.records.from_pymatgen`
``IStructure``
``StructureRecord``       kept (relabelled when a label is given)
open file (``open(...)``, its path when it has one (so the name tells the format), else its
``io.StringIO``)          text; one input, not an iterable of lines
========================  ==================================================================

Relative file names in a table's cells are looked up beside the table first
(:func:`beside_table`). An ``(id, path)`` pair whose id is another existing structure file is
refused (``zip(initial, relaxed)`` is two inputs per item, not an id and a structure).

``cif_reader``: ``"gemmi"`` (compiled, ~50x faster than pymatgen's parser; falls back to
pymatgen for CIFs gemmi cannot make a crystal of) or ``"pymatgen"`` (the original CGCNN's
reader: its site order decides neighbour ties in the ``original`` neighbour policy). Every
entry point takes it from the model through :func:`cif_reader_for_policy`, so one model reads
a CIF the same way whichever way the CIF arrives.

Every problem that makes an input unusable raises
:class:`~cgcnn_ase.errors.InvalidStructureError` (or its subclass
:class:`~cgcnn_ase.errors.StructureReadError`) with a message naming the input.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import json
import math
import os
import re
import stat
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cgcnn_ase.errors import InvalidStructureError, StructureReadError
from cgcnn_ase.io.cif import CifReader, numbered_labels, read_cif, read_cif_blocks
from cgcnn_ase.io.records import StructureRecord, from_ase, from_pymatgen

__all__ = [
    "CifReader",
    "InputKind",
    "as_input_sequence",
    "ase_read_error",
    "atoms_item",
    "cif_reader_for_policy",
    "connect_db",
    "db_read_error",
    "frame_items",
    "input_kind",
    "is_json_name",
    "is_labelled_pair",
    "is_single_input",
    "iter_records",
    "json_entry_items",
    "labelled_pair",
    "open_text",
    "pair_of_two_files",
    "read_db_rows",
    "read_frames",
    "read_items",
    "read_record",
    "read_records",
    "read_structures",
    "to_record",
]

InputKind = Literal["record", "path", "cif_text", "structure_text", "json_text", "structure_dict", "empty", "object"]


def cif_reader_for_policy(neighbor_policy: str) -> CifReader:
    """The CIF reader a model with this graph ``neighbor_policy`` needs: ``"pymatgen"`` for
    ``"original"`` (its neighbour ties follow pymatgen's site order), ``"gemmi"`` otherwise."""
    return "pymatgen" if neighbor_policy == "original" else "gemmi"


def _check_reader(cif_reader: str) -> None:
    if cif_reader not in ("gemmi", "pymatgen"):
        raise ValueError(f"cif_reader must be 'gemmi' or 'pymatgen', got {cif_reader!r}")


# =============================================================================================
# Which kind of input
# =============================================================================================


def _is_missing(obj: Any) -> bool:
    """``None``, a float NaN or pandas' ``NA`` / ``NaT`` (an empty table cell), or blank text."""
    if obj is None:
        return True
    if isinstance(obj, (float, np.floating)) and not math.isfinite(obj):
        return True
    pandas = sys.modules.get("pandas")  # only a table can hold its missing values
    if pandas is not None and (obj is pandas.NA or obj is pandas.NaT):
        return True
    return isinstance(obj, str) and not obj.strip()


def _is_cif_text(text: str) -> bool:
    """Whether ``text`` is CIF: a ``data_`` block header and cell or atom-site items (lines starting so, any
    case; a POSCAR whose comment line starts with ``data_`` is not)."""
    return _CIF_BLOCK.search(text) is not None and _CIF_ITEM.search(text) is not None


#: A line that starts (after blanks) with a CIF data block header, and one with a cell or atom-site item.
_CIF_BLOCK = re.compile(r"(?:\A|[\r\n])\s*data_", re.IGNORECASE)
_CIF_ITEM = re.compile(r"(?:\A|[\r\n])\s*_(?:cell[._]length_a|atom_site[._])", re.IGNORECASE)


def _is_structure_dict(obj: Mapping) -> bool:
    """A mapping that claims to be a pymatgen ``Structure.as_dict()``."""
    return "@class" in obj or ("lattice" in obj and "sites" in obj)


def input_kind(obj: Any) -> InputKind:
    """What :func:`read_records` takes ``obj`` for (bytes are read as UTF-8 text).

    ``"path"``: a ``PathLike`` or a one-line string that is not JSON; ``"cif_text"``: a
    string with line breaks, a ``data_`` line and cell or atom-site items; ``"structure_text"``: another string
    with line breaks (POSCAR or extended XYZ); ``"json_text"``: a string starting with ``{``;
    ``"structure_dict"``: a pymatgen structure mapping; ``"empty"``: ``None``, NaN or blank
    text; ``"record"``: a :class:`StructureRecord`; ``"object"``: anything else (``Atoms``,
    ``Structure``, or an unsupported type that :func:`to_record` refuses).
    """
    if isinstance(obj, bytes):
        obj = obj.decode("utf-8", "replace")
    if isinstance(obj, StructureRecord):
        return "record"
    if isinstance(obj, os.PathLike):
        return "path"
    if _is_missing(obj):
        return "empty"
    if isinstance(obj, str):
        text = obj.strip()
        if text.startswith("{"):
            return "json_text"
        if "\n" not in text and "\r" not in text:
            return "path"
        return "cif_text" if _is_cif_text(text) else "structure_text"
    if isinstance(obj, Mapping) and _is_structure_dict(obj):
        return "structure_dict"
    return "object"


# =============================================================================================
# The one reader
# =============================================================================================


def read_records(source: Any, label: str | None = None, *, cif_reader: CifReader = "gemmi") -> list[StructureRecord]:
    """Read and validate every structure in ``source`` (any input in the module table).

    Args:
        source: a file path, CIF text, POSCAR or extended XYZ text, structure JSON text, pymatgen structure dict,
            ``ase.Atoms``, pymatgen ``Structure``/``IStructure`` or record (bytes: UTF-8 text).
        label: the name used in records and messages (``label@i`` for the i-th of several
            structures). ``None``: the path for files, the record's own label, ``"CIF text"``,
            ``"structure text"``, ``"structure JSON"``, ``"Atoms"`` or ``"Structure"`` otherwise.
        cif_reader: ``"gemmi"`` or ``"pymatgen"`` for CIF files and CIF text (module docstring).

    Returns:
        One record per structure (most inputs hold one), in the source's order.

    Raises:
        InvalidStructureError: the input is missing, unreadable, or not a usable crystal.
    """
    _check_reader(cif_reader)
    if isinstance(source, bytes):
        source = source.decode("utf-8", "replace")
    kind = input_kind(source)
    if kind == "record":
        return [source if label is None or label == source.label else replace(source, label=label)]
    if kind == "empty":
        raise StructureReadError(f"{label or 'input'}: no structure: the value is empty (None, NaN or blank text)")
    if kind == "path":  # text is stripped (table cells often end in a space or line break)
        return _read_path(source.strip() if isinstance(source, str) else source, label, cif_reader)
    if kind == "cif_text":
        return read_cif(source.strip(), label or "CIF text", cif_reader, text=True)
    if kind == "structure_text":
        base = label or "structure text"
        return _frame_records(_text_frames(source, base), base)
    if kind == "json_text":
        return [_structure_dict_record(_json_dict(source, label or "structure JSON"), label or "structure JSON")]
    if kind == "structure_dict":
        return [_structure_dict_record(source, label or "structure dict")]
    return [to_record(source, label)]


def read_record(source: Any, label: str | None = None, *, cif_reader: CifReader = "gemmi") -> StructureRecord:
    """The one structure of ``source`` (as :func:`read_records`), labelled ``label``.

    Raises:
        StructureReadError: ``source`` holds several structures (a multi-frame file, a CIF
            with several data blocks); give one.
        InvalidStructureError: as :func:`read_records`.
    """
    records = read_records(source, label, cif_reader=cif_reader)
    if len(records) != 1:
        name = label or str(source)[:80]
        what = "the CIF text" if input_kind(source) == "cif_text" else repr(str(source)[:80])
        raise StructureReadError(f"{name}: {what} holds {len(records)} structures; give one per item")
    return records[0]


def read_structures(path: str | os.PathLike, *, cif_reader: CifReader = "gemmi") -> list[StructureRecord]:
    """Read and validate every structure in a file.

    Args:
        path: a structure file (CIF, POSCAR/CONTCAR, extxyz, ... anything ASE reads).
        cif_reader: ``"gemmi"`` (fast; falls back to pymatgen for CIFs gemmi cannot
            read) or ``"pymatgen"`` (the original CGCNN's reader: its site order and cell
            orientation decide ties in the ``original`` neighbour policy).

    Returns one record per frame (most files hold one); labels are the path, with
    ``@i`` appended for multi-frame files.
    """
    _check_reader(cif_reader)
    return _read_file(Path(path), None, cif_reader)


def to_record(obj: Any, label: str | None = None) -> StructureRecord:
    """Validate one in-memory ``ase.Atoms`` / pymatgen ``Structure`` / record.

    Text, paths and dicts are not accepted here (a file may hold several structures):
    use :func:`read_records`, :func:`read_record` or :func:`iter_records`.

    Raises:
        InvalidStructureError: an invalid crystal, a pymatgen ``Molecule``, or another type.
    """
    if isinstance(obj, StructureRecord):
        return obj
    from ase import Atoms

    if isinstance(obj, Atoms):
        return from_ase(obj, label=label or "Atoms")
    from pymatgen.core import IStructure, Molecule

    if isinstance(obj, IStructure):
        return from_pymatgen(obj, label=label or "Structure")
    if isinstance(obj, Molecule):
        raise InvalidStructureError(
            f"{label or 'Molecule'}: a pymatgen Molecule is not periodic; CGCNN needs a crystal"
        )
    raise InvalidStructureError(
        f"{label or 'input'}: unsupported input type {type(obj).__name__}; expected ase.Atoms, pymatgen "
        "Structure, a pymatgen structure dict, a path to a structure file, or CIF text"
    )


def iter_records(
    inputs: Any, *, cif_reader: CifReader = "gemmi"
) -> Iterator[tuple[str, StructureRecord | InvalidStructureError]]:
    """Lazily read one input or an iterable of inputs with :func:`read_records`.

    Yields ``(label, record_or_error)``: errors are yielded, not raised, so that a caller
    can decide per item. Labels are file paths (``path@i`` for frame ``i`` of a
    multi-frame file), a record's own label, or ``input i`` for other items (``input i@k``
    for the k-th data block of CIF text). A path yields one item per frame in the file.
    """
    for index, obj in enumerate(as_input_sequence(inputs)):
        yield from read_input(index, obj, cif_reader=cif_reader)


def read_input(
    index: int, obj: Any, *, cif_reader: CifReader = "gemmi"
) -> list[tuple[str, StructureRecord | InvalidStructureError]]:
    """Input number ``index`` of a sequence, read and labelled as :func:`iter_records` labels it:
    ``(label, record)`` per structure, or one ``(label, error)`` when it cannot be read."""
    label, obj = labelled_pair(obj) if is_labelled_pair(obj) else (None, obj)
    if _is_file_object(obj):
        try:
            obj = _file_object_source(obj)
        except StructureReadError as exc:
            return [(label or f"input {index}", exc)]
    kind = input_kind(obj)
    refused = pair_of_two_files(label, obj) if label is not None and kind == "path" else None
    if refused is not None:
        return [(label, refused)]
    if label is None:
        label = None if kind in ("path", "record") else f"input {index}"
    try:
        return read_items(obj, label, cif_reader=cif_reader)
    except InvalidStructureError as exc:
        return [(label or (obj.label if kind == "record" else str(obj)), exc)]


def beside_table(value: Any, table: str | os.PathLike) -> Any:
    """A table cell naming a structure file by a relative path, resolved against the table's folder
    (where the file lies beside the table, as a user writes it); any other value as it is. A relative
    path found only from the working directory is kept, as before."""
    if not isinstance(value, str) or "\n" in value.strip() or value.lstrip().startswith("{"):
        return value
    name = value.strip()
    if not name or os.path.isabs(name):
        return value
    candidate = Path(table).parent / name
    try:
        return str(candidate) if candidate.is_file() and not Path(name).is_file() else value
    except (OSError, ValueError):  # a name too long for the OS: the reader says so
        return value


def pair_of_two_files(label: str, source: Any) -> InvalidStructureError | None:
    """The error of an ``(id, path)`` pair whose id names another existing structure file (:func:`_two_files`:
    ``zip(initial, relaxed)``), else ``None``."""
    if not _two_files(label, source):
        return None
    return InvalidStructureError(
        f"({label!r}, {str(source)!r}): an (id, structure) pair whose id is a structure file too. Both are predicted "
        "only as separate inputs (e.g. predict([*initial, *relaxed]), not zip(initial, relaxed)); an id that is "
        "a file name must not name an existing file other than its structure"
    )


def _two_files(label: str, source: Any) -> bool:
    """True when an ``(id, path)`` pair's id names an existing file other than the path: a pair of two
    structure files (``zip(initial, relaxed)``), not a labelled structure."""
    if label == os.fspath(source):  # a file labelled by its own path (the CLI's deferred files): no stat
        return False
    try:
        first, second = Path(label), Path(source)
        return first.is_file() and second.is_file() and not first.samefile(second)
    except (OSError, ValueError, TypeError):
        return False


def read_items(
    source: Any, label: str | None = None, *, cif_reader: CifReader = "gemmi"
) -> list[tuple[str, StructureRecord | InvalidStructureError]]:
    """``(label, record)`` per structure of ``source``, as :func:`read_records` reads it, except that
    in a file or CIF text of several structures (frames, data blocks) a structure that is not a usable
    crystal gets its own ``(label@k, error)`` item instead of failing the whole source: the others
    are still read.

    Raises:
        InvalidStructureError: ``source`` as a whole cannot be read (or holds one structure that
            cannot be used).
    """
    try:
        return [(record.label, record) for record in read_records(source, label, cif_reader=cif_reader)]
    except InvalidStructureError:
        items = _separately(source, label, cif_reader)
        if items is None:
            raise
        return items


def _separately(
    source: Any, label: str | None, cif_reader: CifReader
) -> list[tuple[str, StructureRecord | InvalidStructureError]] | None:
    """Each structure of a file or CIF text of several read on its own (see :func:`read_items`), or
    ``None`` when ``source`` holds fewer than two or cannot be split into them."""
    kind = input_kind(source)
    if kind not in ("path", "cif_text", "structure_text"):
        return None
    if kind == "structure_text":
        base = label or "structure text"
        try:
            return _frames_separately(_text_frames(source, base), base)
        except InvalidStructureError:
            return None
    if kind == "cif_text":
        text, base = str(source).strip(), label or "CIF text"
    else:
        path = Path(source.strip() if isinstance(source, str) else source)
        base = label or str(path)
        try:
            if not path.is_file():
                return None
            if not (_is_cif(path) or _looks_like_cif(path)):
                if is_json_name(path):
                    entries = _json_items(path, base)
                    items = None if entries is None else list(entries)
                    return items if items is not None and len(items) > 1 else None
                try:
                    if _is_ase_db(path):
                        return _frames_separately(*_db_frames(path, base))
                    return _frames_separately(_ase_frames(path, base), base)
                except InvalidStructureError:
                    if not path.name.lower().endswith(FRAME_SUFFIXES):
                        return None
                items = list(frame_items(path, base=base))  # a frame ASE cannot read: the frames before it stand
                return items if len(items) > 1 else None
            with open_text(path) as f:
                text = f.read()
        except (OSError, EOFError, ValueError):  # a name too long for the OS, unreadable: read_records said why
            return None
    return read_cif_blocks(text, base, cif_reader)


def _frames_separately(
    frames: list[Any], base: str | list[str]
) -> list[tuple[str, StructureRecord | InvalidStructureError]] | None:
    """Each of several ASE frames (of a file or text) turned into a record on its own, labelled ``base@i``
    (or by the given list of labels); ``None``: fewer than two."""
    if len(frames) < 2:
        return None
    labels = base if isinstance(base, list) else numbered_labels(base, len(frames))
    items: list[tuple[str, StructureRecord | InvalidStructureError]] = []
    for atoms, name in zip(frames, labels):
        try:
            items.append((name, from_ase(atoms, label=name)))
        except InvalidStructureError as exc:
            items.append((name, exc))
    return items


def is_labelled_pair(obj: Any) -> bool:
    """An ``(id, structure)`` pair: the id (a string, or a path object standing for its string)
    labels the structure's results and errors."""
    return isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], (str, os.PathLike))


def labelled_pair(obj: tuple[Any, Any]) -> tuple[str, Any]:
    """An ``(id, structure)`` pair (:func:`is_labelled_pair`) with its id as a string."""
    return os.fspath(obj[0]), obj[1]


def as_input_sequence(obj: Any) -> Any:
    """``obj`` as the inputs of a run: a pandas Series becomes ``(label, structure)`` pairs labelled by its
    index (unless that is the default 0..n-1, where the ``input k`` labels already name the rows); one
    input (:func:`is_single_input`) becomes a list of it; other iterables are kept (consumed lazily).

    Raises:
        InvalidStructureError: a pandas DataFrame (which of its columns holds the structures?).
    """
    module = type(obj).__module__
    if module.startswith("pandas.") and type(obj).__name__ == "DataFrame":
        raise InvalidStructureError(f"a pandas DataFrame is not a list of structures: give its structure column, e.g. "
                                    f"df[{str(obj.columns[0]) if len(obj.columns) else 'column'!r}]")  # fmt: skip
    if module.startswith("pandas.") and type(obj).__name__ == "Series":
        index = obj.index
        if type(index).__name__ == "RangeIndex" and index.start == 0 and index.step == 1:
            return list(obj)
        return [(str(label), value) for label, value in zip(index, obj)]
    return [obj] if is_single_input(obj) else obj


def _is_file_object(obj: Any) -> bool:
    """An open file (``open("x.cif")``, ``io.StringIO``): one input, not an iterable of lines."""
    return isinstance(obj, io.IOBase) or (hasattr(obj, "read") and hasattr(obj, "readline"))


def _file_object_source(obj: Any) -> Any:
    """What an open file stands for: the path it was opened from (its name tells the format), else
    its text (read from where it stands)."""
    name = getattr(obj, "name", None)
    if isinstance(name, (str, os.PathLike)) and Path(name).is_file():
        return Path(name)
    try:
        text = obj.read()
    except (OSError, ValueError) as exc:  # closed, or not readable
        raise StructureReadError(f"{name or type(obj).__name__}: the open file cannot be read ({exc})") from None
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def is_single_input(obj: Any) -> bool:
    """One input rather than an iterable of them: text, a path, a mapping, a record, an open file, or a
    structure that happens to be iterable (Atoms and Structure iterate over sites)."""
    if isinstance(obj, (str, bytes, os.PathLike, StructureRecord, Mapping)) or not isinstance(obj, Iterable):
        return True
    if _is_file_object(obj):
        return True
    return type(obj).__module__.startswith(("ase.", "pymatgen."))


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


def _check_file(path: Path) -> None:
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


def _is_cif(path: Path) -> bool:
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
        return io.TextIOWrapper(_zip_member(path), encoding="utf-8-sig", errors=errors)
    module = _COMPRESSION.get(path.suffix.lower())
    if module is None:
        return open(path, encoding="utf-8-sig", errors=errors)  # -sig: a byte-order mark (Windows editors) is dropped
    import importlib

    return importlib.import_module(module).open(path, "rt", encoding="utf-8-sig", errors=errors)


def _zip_member(path: Path) -> Any:
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


def _looks_like_cif(path: Path) -> bool:
    """Whether the file's first 64 kB (decompressed) are CIF: a ``data_`` block with cell or atom-site items.

    Decides by content, not name, so ``x.cif.gz``, ``x.cif.bz2`` or a CIF saved as ``x.txt`` all
    reach the CIF reader (its disorder checks included) instead of a reader that would not see them.
    """
    try:
        with open_text(path) as f:
            head = f.read(65536)
    except (OSError, EOFError, ValueError):  # not compressed after all, or unreadable: not for us to say
        return False
    return _is_cif_text(head)


def _read_path(source: str | os.PathLike, label: str | None, cif_reader: CifReader) -> list[StructureRecord]:
    """A path given as text or ``PathLike``; a labelled one-line text that is no file is
    reported as neither CIF text nor a file (it was meant as one of them)."""
    path = Path(source)
    if isinstance(source, str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", source) and not os.path.exists(source):
        named = f"{label}: {source} is a URL" if label and label != source else f"{source}: a URL"
        raise StructureReadError(f"{named}; only local files are read (nothing is downloaded): download it first")
    if label is not None and isinstance(source, str) and label != source and not os.path.exists(source):
        try:
            _check_file(path)
        except StructureReadError as exc:
            reason = str(exc).rsplit(": ", 1)[-1]
            raise StructureReadError(
                f"{label}: {source[:80]!r} is neither CIF text nor an existing structure file ({reason})"
            ) from None
    return _read_file(path, label, cif_reader)


def _read_file(path: Path, label: str | None, cif_reader: CifReader) -> list[StructureRecord]:
    """Every structure of one file: CIFs through :func:`~cgcnn_ase.io.cif.read_cif`, the rest through ASE."""
    _check_file(path)
    try:
        return _parse_file(path, label or str(path), cif_reader)
    except PermissionError as exc:  # its own error, not an abort of every input (gemmi raises it as such)
        raise StructureReadError(f"{path}: the file cannot be read ({os.strerror(exc.errno or 13)})") from None


def _parse_file(path: Path, base: str, cif_reader: CifReader) -> list[StructureRecord]:
    """The structures of an existing, non-empty file, labelled from ``base``."""
    if _is_cif(path):
        return read_cif(path, base, cif_reader, text=False)
    zipped = path.suffix.lower() == ".zip"
    if zipped:
        with _zip_member(path) as member:  # an unreadable archive, or one of several files, says so here
            inside = member.name
    if _looks_like_cif(path):  # compressed or oddly named CIF: read as CIF text
        with open_text(path) as f:
            return read_cif(f.read(), base, cif_reader, text=True)
    if is_json_name(path):  # pymatgen structure JSON
        records = _json_file_records(path, base)
        if records is not None:
            return records
    if zipped:
        raise StructureReadError(f"{base}: a zip archive of {inside!r}, which is neither CIF nor pymatgen structure "
                                 "JSON; ASE does not read zip archives: unzip it")  # fmt: skip
    if _is_ase_db(path):
        frames, labels = _db_frames(path, base)
        return [from_ase(atoms, label=name) for atoms, name in zip(frames, labels)]
    return _frame_records(_ase_frames(path, base), base)


def _frame_records(frames: list[Any], base: str) -> list[StructureRecord]:
    """Records of ASE frames, labelled ``base`` (one frame) or ``base@i``."""
    return [from_ase(atoms, label=name) for atoms, name in zip(frames, numbered_labels(base, len(frames)))]


def _is_ase_db(path: Path) -> bool:
    return path.name.lower().endswith(".db")


def _db_frames(path: Path, base: str) -> tuple[list[Any], list[str]]:
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
        with warnings.catch_warnings():
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
    """An ``ase.db`` connection to the ASE database (SQLite) at ``path``, after checking, without writing, that
    the file is one: ``ase.db.connect`` would add its tables to any other SQLite file it is given.

    Raises:
        StructureReadError: not an SQLite file, or one without ASE's ``systems`` table (the file is left as it was).
    """
    import sqlite3

    import ase.db

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
    _check_file(path)
    return _ase_frames(path, str(path))


def _ase_frames(path: Path, label: str) -> list[Any]:
    import ase.io
    from ase.io.formats import UnknownFileTypeError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames = ase.io.read(path, index=":", do_not_split_by_at_sign=True)  # "Si@300K.xyz" is a name
    except UnknownFileTypeError:  # a name ASE cannot place ("Si", "relaxed.out"): POSCAR or extxyz by content
        with open_text(path) as f:
            text = f.read()
        try:
            return _text_frames(text, label)
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return next(frames, None)


def _safe_frames(path: str) -> Iterator[Any]:
    """ASE frames of ``path`` one at a time; a read error is yielded (not raised) and ends the file."""
    import ase.io

    try:
        frames = ase.io.iread(path, index=":", do_not_split_by_at_sign=True)  # "Si@300K.xyz" is a name
        while (frame := _next_frame(frames)) is not None:
            yield frame
    except Exception as exc:  # noqa: BLE001 - ASE raises many types for unreadable files
        yield exc


def frame_items(path: str | os.PathLike, skip: Callable[[str], bool] | None = None, base: str | None = None) -> Iterator[
        tuple[str, StructureRecord | InvalidStructureError]]:  # fmt: skip
    """``(label, record or error)`` per frame of an ASE frame file (extxyz, xyz, traj), read one frame at a
    time (memory: one frame), labelled ``base`` (default: the path) for a file of one frame, else ``base@i``.
    A frame that cannot be read ends the file with one error item; the frames before it stand.
    ``skip(label)``: leave that frame out (resume)."""
    path = str(path)
    label = base or str(Path(path))
    source = _safe_frames(path)
    current = next(source, None)
    if current is None:
        yield label, StructureReadError(f"{label}: the file holds no structure")
        return
    if isinstance(current, Exception):
        yield label, ase_read_error(label, current)
        return
    ahead = next(source, None)
    if ahead is None:
        yield atoms_item(current, label)
        return
    k = 0
    while current is not None:
        frame_label = f"{label}@{k}"
        if isinstance(current, Exception):  # ASE cannot go on past it: say that the rest of the file is unread
            error = ase_read_error(frame_label, current)
            yield frame_label, StructureReadError(f"{error}; the frames after it in this file were not read")
            return
        if skip is None or not skip(frame_label):
            yield atoms_item(current, frame_label)
        current, ahead = ahead, (next(source, None) if ahead is not None else None)
        k += 1


def atoms_item(atoms: Any, label: str) -> tuple[str, StructureRecord | InvalidStructureError]:
    """``(label, record)`` of ``ase.Atoms``, or ``(label, error)`` when they are no usable crystal."""
    try:
        return label, to_record(atoms, label=label)
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


def _text_frames(text: str, label: str) -> list[Any]:
    """The ``ase.Atoms`` frames of POSCAR or extended XYZ text (tried in that order: a POSCAR is never
    valid XYZ), for text without a CIF data block and files whose names do not say their format."""
    import io

    import ase.io

    for fmt in ("vasp", "extxyz"):
        try:
            with warnings.catch_warnings():
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
                             "nor extended XYZ")


# =============================================================================================
# pymatgen structure dicts
# =============================================================================================


def is_json_name(path: str | os.PathLike) -> bool:
    """Whether a file name says JSON (``.json``, compressed or not)."""
    return Path(path).name.lower().endswith(tuple(".json" + c for c in ("", *_COMPRESSION, ".zip")))


def json_entry_items(
    path: str | os.PathLike, id_key: str | None = None, skip: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, StructureRecord | InvalidStructureError]] | None:
    """``(label, record or error)`` per item of a JSON list of pymatgen structure dicts or of entries holding
    one under ``"structure"`` (as Materials Project downloads), each item on its own: a bad one is its own
    error. Labels: each entry's ``id_key`` where it has one, else ``path@k`` (``path`` for a list of one).
    ``None`` when the file is no such list (one structure dict, an ASE JSON database, other JSON).

    The file is parsed at once, each entry's structure only as the iterator reaches it (a list of 10^5
    entries gives its first record at once); the entries whose label ``skip`` says to skip are left out unparsed.

    Raises:
        StructureReadError: a missing, empty or unreadable file.
    """
    path = Path(path)
    _check_file(path)
    return _json_items(path, str(path), id_key, skip)


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
    :func:`json_entry_items`), each parsed as it is reached, those ``skip`` says to skip (by label) left out
    unparsed; ``None`` for other JSON.

    Raises:
        StructureReadError: ``id_key`` names a key no entry has (before any item is given).
    """
    if not isinstance(value, list) or not value:
        return None
    if not any(isinstance(_entry_structure(e), Mapping) and _is_structure_dict(_entry_structure(e)) for e in value):
        return None
    if id_key is not None and not any(isinstance(e, Mapping) and id_key in e for e in value):
        first = next((sorted(e) for e in value if isinstance(e, Mapping)), [])
        raise StructureReadError(f"{base}: no entry has the id key {id_key!r} (keys of the first entry: {first})")
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
    if isinstance(entry, Mapping) and "structure" not in entry and not _is_structure_dict(entry):
        return name, StructureReadError(f"{name}: this entry has no 'structure' (its keys: {sorted(entry)})")
    if not isinstance(structure, Mapping):
        return name, StructureReadError(f"{name}: item of a JSON list of structures holds a "
                                        f"{type(structure).__name__}, not a pymatgen structure dict")  # fmt: skip
    try:
        return name, _structure_dict_record(structure, name)
    except InvalidStructureError as exc:
        return name, exc


def _json_file_records(path: Path, label: str) -> list[StructureRecord] | None:
    """The structures of a JSON file of pymatgen structure dicts: one ``Structure.as_dict()``, or a
    list of them (or of entries with such a dict under ``"structure"``, as Materials Project
    downloads hold), labelled ``label@k``; ``None`` for other JSON (an ASE database: ASE reads it)."""
    value = _load_json(path)
    if value is _NOT_JSON:
        return None
    if isinstance(value, Mapping) and _is_structure_dict(value):
        return [_structure_dict_record(value, label)]
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


def _json_dict(text: str, label: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StructureReadError(f"{label}: not valid structure JSON ({exc})") from None
    if not isinstance(value, dict):
        raise StructureReadError(f"{label}: structure JSON must be an object, got {type(value).__name__}")
    return value


def _structure_dict_record(data: Mapping, label: str) -> StructureRecord:
    """A pymatgen ``Structure.as_dict()`` mapping -> record."""
    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_dict(dict(data))
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types for bad dicts
        raise StructureReadError(f"{label}: not a pymatgen structure dict ({type(exc).__name__}: {exc})") from None
    return from_pymatgen(structure, label=label)

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

The formats other than CIF (file checks, compressed and zipped text, ASE frame files and databases, pymatgen
structure JSON) are read in :mod:`cgcnn_ase.io.formats`, which this module dispatches to.

Every problem that makes an input unusable raises
:class:`~cgcnn_ase.errors.InvalidStructureError` (or its subclass
:class:`~cgcnn_ase.errors.StructureReadError`) with a message naming the input.
"""

from __future__ import annotations

import io
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cgcnn_ase.errors import InvalidStructureError, StructureReadError
from cgcnn_ase.io.cif import CifReader, numbered_labels, read_cif, read_cif_blocks
from cgcnn_ase.io.formats import (
    DECOMPRESSION_ERRORS,
    FRAME_SUFFIXES,
    ase_frames,
    check_file,
    connect_db,
    db_frames,
    frame_items,
    frame_records,
    is_ase_db,
    is_cif_name,
    is_cif_text,
    is_json_name,
    is_structure_dict,
    json_dict,
    json_entry_items,
    json_file_records,
    json_value_records,
    looks_like_cif,
    open_text,
    printed_object_hint,
    structure_dict_record,
    text_frames,
    zip_member,
)
from cgcnn_ase.io.records import StructureRecord, from_ase, from_pymatgen
from cgcnn_ase.warning_blocks import catch_warnings

__all__ = [
    "CifReader",
    "InputKind",
    "as_input_sequence",
    "cif_reader_for_policy",
    "input_kind",
    "is_labelled_pair",
    "is_single_input",
    "iter_records",
    "labelled_pair",
    "pair_of_two_files",
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


def input_kind(obj: Any) -> InputKind:
    """What :func:`read_records` takes ``obj`` for (bytes are read as UTF-8 text).

    ``"path"``: a ``PathLike`` or a one-line string that is not JSON; ``"cif_text"``: a
    string with line breaks, a ``data_`` line and cell or atom-site items; ``"structure_text"``: another string
    with line breaks (POSCAR or extended XYZ); ``"json_text"``: a string starting with ``{``;
    ``"structure_dict"``: a pymatgen structure mapping; ``"empty"``: ``None``, NaN or blank
    text; ``"record"``: a :class:`StructureRecord`; ``"object"``: anything else (``Atoms``,
    ``Structure``, or an unsupported type that :func:`to_record` refuses).
    """
    obj = _decoded(obj)
    if isinstance(obj, StructureRecord):
        return "record"
    if isinstance(obj, os.PathLike):
        return "path"
    if _is_missing(obj):
        return "empty"
    if isinstance(obj, str):
        text = obj.strip()
        if text.startswith("{") or (text.startswith("[") and text.endswith("]") and "{" in text):
            return "json_text"
        if "\n" not in text and "\r" not in text:
            return "path"
        return "cif_text" if is_cif_text(text) else "structure_text"
    if _is_mapping(obj) and is_structure_dict(obj):
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
    source = _decoded(source)
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
        return frame_records(text_frames(source, base), base)
    if kind == "json_text":
        base = label or "structure JSON"
        value = json_dict(source, base)
        if isinstance(value, Mapping) and not isinstance(value.get("data"), list):  # one structure dict, or an entry
            # holding one (else pymatgen's message); a Materials Project API response's "data" is a list
            return [structure_dict_record(entry_structure(value) or value, base)]
        records = json_value_records(value, base)  # a list of them, as a JSON file holds
        if records is None:
            raise StructureReadError(f"{base}: JSON that holds no structure: neither a pymatgen structure dict (lattice "
                                     "and sites), an entry holding one under 'structure', nor a list of them")  # fmt: skip
        return records
    if kind == "structure_dict":  # a ComputedStructureEntry's dict claims a class too: its structure
        return [structure_dict_record(entry_structure(source) or source, label or "structure dict")]
    inner = entry_structure(source)
    if inner is not None:  # a Materials Project document or entry: its structure
        return read_records(inner, label, cif_reader=cif_reader)
    return [to_record(source, label)]


def entry_structure(obj: Any) -> Any:
    """The structure of a Materials Project style document or entry, as a JSON file of them gives it (round 23a:
    in memory they were 'unsupported input type dict'): a mapping's ``"structure"`` (a structure dict or pymatgen
    ``Structure``), or an object's ``structure`` attribute holding a pymatgen ``Structure``
    (``ComputedStructureEntry``, emmet documents); an ``ase.db`` row's Atoms; ``None`` for anything else."""
    from pymatgen.core import IStructure

    if _is_mapping(obj):
        inner = obj.get("structure")
        usable = isinstance(inner, IStructure) or (isinstance(inner, Mapping) and is_structure_dict(inner))
        return inner if usable else None
    if isinstance(obj, (str, bytes, os.PathLike)):
        return None
    if type(obj).__module__.startswith("ase.db") and callable(getattr(obj, "toatoms", None)):
        return obj.toatoms()  # an ase.db row (db.get(...), db.select(...)): its Atoms (round 25b)
    inner = getattr(obj, "structure", None)
    return inner if isinstance(inner, IStructure) else None


def entry_id(obj: Any) -> str | None:
    """The id an entry or document holding a structure carries itself, which names its results (round 26b: a list
    of ``ComputedStructureEntry`` came back as ``input 0``, ...): a ``ComputedStructureEntry``'s ``entry_id``, a
    Materials Project document's ``material_id`` (also under ``entry_id`` or ``task_id``); ``None`` otherwise."""
    if _is_mapping(obj):
        if "structure" not in obj:
            return None
        found = next((obj[key] for key in ("material_id", "entry_id", "task_id") if obj.get(key) is not None), None)
    elif entry_structure(obj) is not None and not type(obj).__module__.startswith("ase."):
        found = getattr(obj, "entry_id", None) or getattr(obj, "material_id", None)
    else:
        return None
    return str(found) if found is not None and str(found).strip() else None


def read_record(source: Any, label: str | None = None, *, cif_reader: CifReader = "gemmi") -> StructureRecord:
    """The one structure of ``source`` (as :func:`read_records`), labelled ``label``.

    Raises:
        StructureReadError: ``source`` holds several structures (a multi-frame file, a CIF
            with several data blocks); give one.
        InvalidStructureError: as :func:`read_records`.
    """
    records = read_records(source, label, cif_reader=cif_reader)
    if len(records) != 1:
        kind = input_kind(source)
        shown = str(source) if kind == "path" else str(source)[:80]  # a path whole, however long (text: its start)
        name = label or shown
        what = "the CIF text" if kind == "cif_text" else ("the file" if name == shown else repr(shown))
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
    if _is_composition(obj):
        raise InvalidStructureError(f"{label or 'Composition'}: a pymatgen Composition ({obj.formula}) holds no atomic "
                                    "positions; give the Structure it was made from")  # fmt: skip
    if type(obj).__name__ == "ComputedEntry" and type(obj).__module__.startswith("pymatgen."):
        raise InvalidStructureError(f"{label or 'ComputedEntry'}: a ComputedEntry holds a composition and an energy, no "
                                    "structure; give a ComputedStructureEntry, or its structure")  # fmt: skip
    raise InvalidStructureError(
        f"{label or 'input'}: unsupported input type {type(obj).__name__}; expected ase.Atoms, pymatgen "
        "Structure, a pymatgen structure dict (or a Materials Project document or entry holding one under "
        "'structure'), a path to a structure file, or CIF text"
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
        label = None if kind in ("path", "record") else (entry_id(obj) or f"input {index}")
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


def is_selection(source: Any) -> bool:
    """``file@selection`` as ``ase.io.read`` takes it: text naming no file, whose part before the last ``@`` is a
    file (see :func:`read_selection`)."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    text = os.fspath(source)
    if "@" not in text or "\n" in text or os.path.exists(text):
        return False
    path, selection = text.rsplit("@", 1)
    return bool(selection) and os.path.isfile(path)


def read_selection(
    source: str | os.PathLike, *, cif_reader: CifReader = "gemmi"
) -> list[tuple[str, StructureRecord | InvalidStructureError]]:
    """The structures ``file@selection`` names (:func:`is_selection`): a result's own id (``path@k``,
    ``path@id=N``, a CIF block's), an index or slice (``@1``, ``@-1``, ``@0:10:2``; 0-based over the file's
    structures), or for an ASE database a selection (``@formula=MgO``, ``@energy<0``). One ``(id, error)`` item
    when it names none (round 25b: results' own ids, and ASE's syntax, were "no such file")."""
    from ase.io.formats import string2index

    item = os.fspath(source)
    path, selection = item.rsplit("@", 1)
    try:
        every = read_items(path, path, cif_reader=cif_reader)
    except InvalidStructureError as exc:
        return [(item, exc)]
    chosen = [(label, record) for label, record in every if label == item]  # a result's own id
    is_index = re.fullmatch(r"-?\d*(?::-?\d*){0,2}", selection) is not None
    if not chosen and is_index:
        index = string2index(selection)
        if isinstance(index, slice):
            chosen = every[index]
        elif -len(every) <= index < len(every):
            chosen = [(item, relabelled(every[index][1], item))]
    elif not chosen and is_ase_db(path):
        try:
            wanted = {f"{path}@id={row.id}" for row in connect_db(path, path).select(selection)}
        except Exception as exc:  # noqa: BLE001 - ase.db raises many types for a bad selection
            return [(item, StructureReadError(f"{item}: {selection!r} is no selection of the database {path} ({exc})"))]
        chosen = [(label, record) for label, record in every if label in wanted]
    if not chosen:
        return [(item, StructureReadError(
            f"{item}: {path} holds no structure {selection!r} (it holds {len(every)}; give @k or @a:b, 0-based, a "
            "result's id such as path@k or path@id=N, or for a database an ase.db selection such as @formula=MgO)"))]
    return chosen  # fmt: skip


def relabelled(item: StructureRecord | InvalidStructureError, label: str) -> StructureRecord | InvalidStructureError:
    """``item`` under ``label``: a record relabelled, an error as it is."""
    return replace(item, label=label) if isinstance(item, StructureRecord) else item


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
    source = _decoded(source)  # UTF-8 text, as read_records takes it (round 23a: b"nofile.cif" escaped as TypeError)
    if is_selection(source):
        return read_selection(source, cif_reader=cif_reader)
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
            return _frames_separately(text_frames(source, base), base)
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
            if not (is_cif_name(path) or looks_like_cif(path)):
                if is_json_name(path):
                    entries = json_entry_items(path, label=base)
                    items = None if entries is None else list(entries)
                    return items if items is not None and len(items) > 1 else None
                try:
                    if is_ase_db(path):
                        return _frames_separately(*db_frames(path, base))
                    return _frames_separately(ase_frames(path, base), base)
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
    input (:func:`is_single_input`) becomes a list of it; a mapping ``{id: structure}`` (no structure dict, no
    entry) its ``(id, structure)`` pairs; an ``ase.db`` connection its rows and an ASE
    ``TrajectoryReader`` its frames, as ``(id, Atoms)`` pairs with the ids their files give (``name@id=N``,
    ``name@k``); other iterables are kept (consumed lazily).

    Raises:
        InvalidStructureError: a pandas DataFrame (which of its columns holds the structures?).
    """
    module = type(obj).__module__
    if module.startswith("pandas.") and type(obj).__name__ == "DataFrame":
        raise InvalidStructureError(f"a pandas DataFrame is not a list of structures: give its structure column, e.g. "
                                    f"df[{str(obj.columns[0]) if len(obj.columns) else 'column'!r}]")  # fmt: skip
    if module.startswith("ase.db") and callable(getattr(obj, "select", None)):  # a connection: its rows, ids as a path's
        return ((f"{obj.filename}@id={row.id}", row.toatoms()) for row in obj.select())
    if module.startswith("ase.io.trajectory") and hasattr(obj, "__len__"):  # a TrajectoryReader: its frames
        name = os.fspath(getattr(obj, "filename", None) or "trajectory")
        return ((f"{name}@{k}", obj[k]) for k in range(len(obj)))
    if _is_mapping(obj) and _labels_structures(obj):
        return [(str(label), value) for label, value in obj.items()]  # {id: structure}, as site_contributions takes
    if module.startswith("pandas.") and type(obj).__name__ == "Series":
        index = obj.index
        if type(index).__name__ == "RangeIndex" and index.start == 0 and index.step == 1:
            return list(obj)
        return [(str(label), value) for label, value in zip(index, obj)]
    return [obj] if is_single_input(obj) else obj


def _is_composition(obj: Any) -> bool:
    """A pymatgen ``Composition`` (round 29c: a mapping of elements to amounts, whose ``in`` raises a ``TypeError``
    for other keys, so that it ended whole batches, ``errors="collect"`` and ``ignore_errors`` too)."""
    return type(obj).__name__ == "Composition" and type(obj).__module__.startswith("pymatgen.")


def _is_mapping(obj: Any) -> bool:
    """A mapping of names (a dict, a pymatgen structure dict, a document), not a ``Composition``."""
    return isinstance(obj, Mapping) and not _is_composition(obj)


def _labels_structures(obj: Mapping[Any, Any]) -> bool:
    """A mapping ``{id: structure}`` (round 26b), not itself a structure dict or an entry: its values are
    structures, records, paths or text."""
    if not obj or is_structure_dict(obj) or "structure" in obj:
        return False
    return all(isinstance(v, (str, os.PathLike, StructureRecord)) or type(v).__module__.startswith(("ase.", "pymatgen."))
               or (isinstance(v, Mapping) and is_structure_dict(v)) for v in obj.values())  # fmt: skip


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


def _decoded(obj: Any) -> Any:
    """Bytes (``bytes``, ``bytearray``, ``memoryview``) as UTF-8 text; anything else as given."""
    return bytes(obj).decode("utf-8", "replace") if isinstance(obj, (bytes, bytearray, memoryview)) else obj


def is_single_input(obj: Any) -> bool:
    """One input rather than an iterable of them: text, a path, a mapping, a record, an open file, or a
    structure that happens to be iterable (Atoms and Structure iterate over sites)."""
    if isinstance(obj, (str, bytes, bytearray, memoryview, os.PathLike, StructureRecord, Mapping)) or not isinstance(obj, Iterable):
        return True
    if _is_file_object(obj):
        return True
    return type(obj).__module__.startswith(("ase.", "pymatgen."))


def _read_path(source: str | os.PathLike, label: str | None, cif_reader: CifReader) -> list[StructureRecord]:
    """A path given as text or ``PathLike``; a labelled one-line text that is no file is
    reported as neither CIF text nor a file (it was meant as one of them)."""
    path = Path(source)
    if isinstance(source, str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", source) and not os.path.exists(source):
        named = f"{label}: {source} is a URL" if label and label != source else f"{source}: a URL"
        raise StructureReadError(f"{named}; only local files are read (nothing is downloaded): download it first")
    hint = printed_object_hint(source) if isinstance(source, str) and not os.path.exists(source) else ""
    if hint:  # one line of text (an Atoms' repr) is taken for a path: say what it is instead of "no such file"
        raise StructureReadError(f"{label or 'input'}: {source[:60]!r} is not a file name{hint}")
    if label is not None and isinstance(source, str) and label != source and not os.path.exists(source):
        try:
            check_file(path)
        except StructureReadError as exc:
            reason = str(exc).rsplit(": ", 1)[-1]
            raise StructureReadError(
                f"{label}: {source[:80]!r} is neither CIF text nor an existing structure file ({reason})"
            ) from None
    return _read_file(path, label, cif_reader)


def _read_file(path: Path, label: str | None, cif_reader: CifReader) -> list[StructureRecord]:
    """Every structure of one file: CIFs through :func:`~cgcnn_ase.io.cif.read_cif`, the rest through ASE."""
    check_file(path)
    try:
        return _parse_file(path, label or str(path), cif_reader)
    except PermissionError as exc:  # its own error, not an abort of every input (gemmi raises it as such)
        raise StructureReadError(f"{path}: the file cannot be read ({os.strerror(exc.errno or 13)})") from None
    except DECOMPRESSION_ERRORS as exc:  # a damaged .gz/.bz2/.xz: its own error, not the end of the run
        raise StructureReadError(f"{label or path}: a damaged compressed file ({type(exc).__name__}: {exc})") from None


def _parse_file(path: Path, base: str, cif_reader: CifReader) -> list[StructureRecord]:
    """The structures of an existing, non-empty file, labelled from ``base``."""
    if is_cif_name(path):
        return read_cif(path, base, cif_reader, text=False)
    zipped = path.suffix.lower() == ".zip"
    if zipped:
        with zip_member(path) as member:  # an unreadable archive, or one of several files, says so here
            inside = member.name
    if looks_like_cif(path):  # compressed or oddly named CIF: read as CIF text
        with open_text(path) as f:
            return read_cif(f.read(), base, cif_reader, text=True)
    if is_json_name(path):  # pymatgen structure JSON
        records = json_file_records(path, base)
        if records is not None:
            return records
    if zipped:
        raise StructureReadError(f"{base}: a zip archive of {inside!r}, which is neither CIF nor pymatgen structure "
                                 "JSON; ASE does not read zip archives: unzip it")  # fmt: skip
    if is_ase_db(path):
        frames, labels = db_frames(path, base)
        return [from_ase(atoms, label=name) for atoms, name in zip(frames, labels)]
    try:
        frames = ase_frames(path, base)
    except StructureReadError as exc:  # a format pymatgen reads and ASE does not (cssr, yaml, PWmat .config, ...)
        structure = _pymatgen_file(path)
        if structure is None:
            raise exc from None
        return [from_pymatgen(structure, label=base)]
    return frame_records(frames, base)


#: Name patterns of the structure formats that pymatgen reads and ASE does not (tried when ASE fails).
PYMATGEN_ONLY = ("*.cssr*", "*.yaml*", "*.yml*", "*.config*", "*rndstr.in*", "*lat.in*", "*bestsqs*")


def _pymatgen_file(path: Path) -> Any:
    """The structure pymatgen's ``Structure.from_file`` reads from ``path``, for names of :data:`PYMATGEN_ONLY`;
    ``None`` for other names or files it cannot read (round 26b: pymatgen-written .cssr, .yaml and PWmat .config
    files were refused as unknown)."""
    import fnmatch
    import warnings

    from pymatgen.core import Structure

    if not any(fnmatch.fnmatch(path.name.lower(), pattern) for pattern in PYMATGEN_ONLY):
        return None

    try:
        with catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_file(str(path))
    except Exception:  # noqa: BLE001 - pymatgen raises many types for files it does not read
        return None



"""Turn what users hold into one internal crystal record.

Accepted inputs: :class:`ase.Atoms`, pymatgen :class:`~pymatgen.core.Structure` or
``IStructure``, or a path to any file ASE or pymatgen can read (CIF, POSCAR/CONTCAR,
extxyz, ...). Everything is normalised once, here, into a :class:`StructureRecord`
(atomic numbers, fractional coordinates, cell in Å), and every problem that makes a
crystal unusable raises :class:`~cgcnn_ase.errors.InvalidStructureError` (or a
subclass) with a message naming the input and the problem.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cgcnn_ase.errors import InvalidStructureError, StructureReadError

#: Smallest accepted cell volume, Å^3. Anything below is a degenerate cell.
MIN_CELL_VOLUME = 1e-3


@dataclass(frozen=True, eq=False)
class StructureRecord:
    """A validated, ordered, fully periodic crystal.

    Attributes:
        numbers: atomic numbers, shape (N,), int64.
        frac_coords: fractional coordinates, shape (N, 3), float64 (not wrapped).
        cell: lattice vectors as rows, shape (3, 3), float64, Å.
        label: a name for messages and result tables (file path, frame, or index).
    """

    numbers: np.ndarray
    frac_coords: np.ndarray
    cell: np.ndarray
    label: str

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def positions(self) -> np.ndarray:
        """Cartesian positions, shape (N, 3), Å."""
        return self.frac_coords @ self.cell

    @property
    def volume(self) -> float:
        """Cell volume, Å^3 (absolute value of the determinant)."""
        return float(abs(np.linalg.det(self.cell)))

    def to_ase(self) -> "ase.Atoms":  # noqa: F821
        """The record as a periodic :class:`ase.Atoms`."""
        from ase import Atoms

        return Atoms(numbers=self.numbers, scaled_positions=self.frac_coords, cell=self.cell, pbc=True)

    def to_pymatgen(self) -> "pymatgen.core.Structure":  # noqa: F821
        """The record as a pymatgen :class:`~pymatgen.core.Structure` (built from fractional coordinates)."""
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.cell), self.numbers.tolist(), self.frac_coords, coords_are_cartesian=False)


def _validate(numbers: np.ndarray, frac: np.ndarray, cell: np.ndarray, pbc: Iterable[bool], label: str) -> StructureRecord:
    """Check a raw crystal and wrap it in a record; raise InvalidStructureError naming the problem."""
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    frac = np.asarray(frac, dtype=np.float64).reshape(-1, 3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = tuple(bool(p) for p in pbc)
    if len(numbers) == 0:
        raise InvalidStructureError(f"{label}: the structure contains no atoms")
    if not all(pbc):
        raise InvalidStructureError(
            f"{label}: CGCNN needs a crystal periodic in all three directions, got pbc={pbc}; "
            "molecules and slabs are not supported (set pbc=True and a cell if you mean a crystal)"
        )
    if not np.all(np.isfinite(cell)):
        raise InvalidStructureError(f"{label}: the cell contains NaN or infinite values")
    volume = abs(float(np.linalg.det(cell)))
    if not np.isfinite(volume) or volume < MIN_CELL_VOLUME:
        raise InvalidStructureError(f"{label}: the cell is degenerate (volume {volume:.3g} Å^3)")
    if not np.all(np.isfinite(frac)):
        bad = np.flatnonzero(~np.all(np.isfinite(frac), axis=1))
        raise InvalidStructureError(f"{label}: atom(s) {bad[:5].tolist()} have NaN or infinite positions")
    if np.any(numbers <= 0):
        bad = np.flatnonzero(numbers <= 0)
        raise InvalidStructureError(
            f"{label}: site(s) {bad[:5].tolist()} are vacancies or dummy species (atomic number "
            f"{int(numbers[bad[0]])}); only real elements are supported"
        )
    return StructureRecord(numbers=numbers, frac_coords=frac, cell=cell, label=label)


def from_ase(atoms: "ase.Atoms", label: str = "Atoms") -> StructureRecord:  # noqa: F821
    """Validate an :class:`ase.Atoms` into a record (fractional coordinates are not wrapped)."""
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if len(atoms) == 0:
        return _validate(np.zeros(0), np.zeros((0, 3)), cell, atoms.pbc, label)
    with np.errstate(all="ignore"):
        try:
            frac = np.linalg.solve(cell.T, np.asarray(atoms.positions, dtype=np.float64).T).T
        except np.linalg.LinAlgError:
            frac = np.full((len(atoms), 3), np.nan)
    if not all(atoms.pbc):  # report pbc before a possibly singular cell
        return _validate(atoms.numbers, frac, np.eye(3), atoms.pbc, label)
    return _validate(atoms.numbers, frac, cell, atoms.pbc, label)


def from_pymatgen(structure: "pymatgen.core.IStructure", label: str = "Structure") -> StructureRecord:  # noqa: F821
    """Validate a pymatgen Structure/IStructure into a record.

    Disordered sites (partial occupancies, mixed species) and dummy species (vacancies,
    ``X``) are refused with a message naming the first such sites.
    """
    from pymatgen.core.periodic_table import DummySpecies

    numbers = []
    for i, site in enumerate(structure):
        comp = site.species
        if len(comp) != 1 or abs(sum(comp.values()) - 1.0) > 1e-8:
            raise InvalidStructureError(
                f"{label}: site {i} is disordered ({comp.formula if len(comp) else 'empty'}, "
                f"occupancy {sum(comp.values()):.3g}); CGCNN needs an ordered structure "
                "(order it first, e.g. with pymatgen's OrderDisorderedStructureTransformation)"
            )
        (specie,) = comp.keys()
        if isinstance(specie, DummySpecies):
            raise InvalidStructureError(f"{label}: site {i} holds the dummy species {specie} (a vacancy or placeholder)")
        numbers.append(specie.Z)
    return _validate(
        np.asarray(numbers), structure.frac_coords, structure.lattice.matrix, getattr(structure.lattice, "pbc", (True,) * 3), label
    )


CifReader = Literal["gemmi", "pymatgen"]


def _check_file(path: Path) -> None:
    try:
        if not path.exists():
            raise StructureReadError(f"{path}: no such file")
        if path.is_dir():
            raise StructureReadError(f"{path}: is a directory, not a structure file")
        empty = path.stat().st_size == 0
    except OSError as exc:  # e.g. a long text passed as a path: "File name too long"
        raise StructureReadError(f"{str(path)[:80]}...: not a readable file path ({exc.strerror})") from None
    if empty:
        raise StructureReadError(f"{path}: the file is empty")


def _is_cif(path: Path) -> bool:
    return path.name.lower().endswith((".cif", ".mcif"))


def gemmi_block_record(small: Any, label: str) -> StructureRecord | None:
    """The validated record of one gemmi ``SmallStructure`` (a CIF data block), or ``None``
    when it holds no crystal (no sites or no cell), so that the caller can fall back to pymatgen.

    Raises:
        InvalidStructureError: a partially occupied (disordered) site, or what
            :func:`to_record`'s validation refuses.
    """
    sites = small.get_all_unit_cell_sites()
    if not sites or small.cell.a <= 0:
        return None
    partial = [site for site in sites if site.occ < 1.0 - 1e-6]
    if partial:
        site = partial[0]
        raise InvalidStructureError(
            f"{label}: site {site.label} ({site.element.name}) is disordered (occupancy {site.occ:.3g}); "
            "CGCNN needs an ordered structure (order it first, e.g. with pymatgen's "
            "OrderDisorderedStructureTransformation)"
        )
    numbers = np.array([site.element.atomic_number for site in sites])
    frac = np.array([[site.fract.x, site.fract.y, site.fract.z] for site in sites])
    cell = np.array(small.cell.orth.mat, dtype=np.float64).T  # gemmi: columns are lattice vectors
    return _validate(numbers, frac, cell, (True, True, True), label)


def _read_cif_gemmi(path: Path) -> list[StructureRecord] | None:
    """Read a CIF with gemmi (compiled, ~50x faster than pymatgen's parser).

    Symmetry operations are applied and sites on special positions merged by gemmi.
    Returns ``None`` when gemmi cannot make a crystal of it, so that the caller falls
    back to pymatgen (which also gives the detailed error message).
    """
    import gemmi

    try:
        document = gemmi.cif.read(str(path))
        blocks = [gemmi.make_small_structure_from_block(block) for block in document]
    except (RuntimeError, ValueError, IndexError):
        return None
    records = []
    for k, small in enumerate(blocks):
        record = gemmi_block_record(small, str(path) if len(blocks) == 1 else f"{path}@{k}")
        if record is None:
            return None
        records.append(record)
    return records


def _read_file(path: Path) -> list[Any]:
    """Read every structure in a file with pymatgen (CIF) or ASE (everything else)."""
    _check_file(path)
    if _is_cif(path):
        # pymatgen reads CIFs as the original CGCNN did, and keeps partial occupancies visible.
        from pymatgen.io.cif import CifParser

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parser = CifParser(path, occupancy_tolerance=1.0)
                structures = parser.parse_structures(primitive=False, on_error="raise")
        except Exception as exc:  # pymatgen raises many types for bad CIFs
            raise StructureReadError(f"{path}: not a readable CIF ({type(exc).__name__}: {exc})") from None
        if not structures:
            raise StructureReadError(f"{path}: the CIF holds no structure")
        return list(structures)
    import ase.io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames = ase.io.read(path, index=":")
    except Exception as exc:  # ASE raises many types for unreadable files
        raise StructureReadError(f"{path}: could not be read by ASE ({type(exc).__name__}: {exc})") from None
    if not frames:
        raise StructureReadError(f"{path}: the file holds no structure")
    return list(frames)


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
    path = Path(path)
    if cif_reader == "gemmi" and _is_cif(path):
        _check_file(path)
        records = _read_cif_gemmi(path)
        if records is not None:
            return records
    objects = _read_file(path)
    if len(objects) == 1:
        return [to_record(objects[0], label=str(path))]
    return [to_record(obj, label=f"{path}@{i}") for i, obj in enumerate(objects)]


def to_record(obj: Any, label: str | None = None) -> StructureRecord:
    """Normalise one Atoms / Structure / record into a :class:`StructureRecord`.

    Paths are not accepted here because a file may hold several structures: use
    :func:`read_structures` or :func:`iter_records`.
    """
    if isinstance(obj, StructureRecord):
        return obj
    try:
        from ase import Atoms

        if isinstance(obj, Atoms):
            return from_ase(obj, label=label or "Atoms")
    except ImportError:  # pragma: no cover - ase is a dependency
        pass
    try:
        from pymatgen.core import IStructure, Molecule

        if isinstance(obj, IStructure):
            return from_pymatgen(obj, label=label or "Structure")
        if isinstance(obj, Molecule):
            raise InvalidStructureError(f"{label or 'Molecule'}: a pymatgen Molecule is not periodic; CGCNN needs a crystal")
    except ImportError:  # pragma: no cover - pymatgen is a dependency
        pass
    raise InvalidStructureError(
        f"{label or 'input'}: unsupported input type {type(obj).__name__}; "
        "expected ase.Atoms, pymatgen Structure, or a path to a structure file"
    )


def iter_records(
    inputs: Any, *, cif_reader: CifReader = "gemmi"
) -> Iterator[tuple[str, StructureRecord | InvalidStructureError]]:
    """Lazily normalise one input or an iterable of inputs.

    Yields ``(label, record_or_error)``: errors are yielded, not raised, so that a caller
    can decide per item. Labels are file paths (``path@i`` for frame ``i`` of a
    multi-frame file) or ``input i`` for in-memory objects. A path yields one item per
    frame in the file.
    """
    if isinstance(inputs, (str, os.PathLike, StructureRecord, Mapping)) or not isinstance(inputs, Iterable) or _is_single(inputs):
        inputs = [inputs]
    for index, obj in enumerate(inputs):
        if isinstance(obj, (str, os.PathLike)):
            try:
                for record in read_structures(obj, cif_reader=cif_reader):
                    yield record.label, record
            except InvalidStructureError as exc:
                yield str(obj), exc
            continue
        label = obj.label if isinstance(obj, StructureRecord) else f"input {index}"
        try:
            yield label, to_record(obj, label=label)
        except InvalidStructureError as exc:
            yield label, exc


def _is_single(obj: Any) -> bool:
    """True for single structures that happen to be iterable (Atoms and Structure iterate over sites)."""
    module = type(obj).__module__
    return module.startswith(("ase.", "pymatgen."))

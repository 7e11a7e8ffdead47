"""The internal crystal record and its validation.

A :class:`StructureRecord` is a validated, ordered, fully periodic crystal: atomic numbers,
fractional coordinates and a cell in Å. :func:`from_ase` and :func:`from_pymatgen` check an
``ase.Atoms`` or a pymatgen ``Structure`` and wrap it; every problem that makes a crystal
unusable raises :class:`~cgcnn_ase.errors.InvalidStructureError` with a message naming the
input (its label) and the problem. Reading files and text is :mod:`cgcnn_ase.io.reader`'s job.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cgcnn_ase.errors import InvalidStructureError, VacuumWarning

if TYPE_CHECKING:  # pragma: no cover
    import ase
    import pymatgen.core

__all__ = [
    "MIN_CELL_THICKNESS", "MIN_CELL_VOLUME", "VACUUM_GAP", "StructureRecord", "cell_thickness", "from_ase", "from_pymatgen",
    "vacuum_gap",
]  # fmt: skip

#: Smallest accepted cell volume, Å^3. Anything below is a degenerate cell.
MIN_CELL_VOLUME = 1e-3
#: Smallest accepted spacing of lattice planes, Å (of the Minkowski-reduced cell, so a skewed
#: choice of a good lattice passes). Thinner cells put an atom's periodic images closer than
#: the 0.3 Å at which atoms count as overlapping, and would need millions of images in an 8 Å search.
MIN_CELL_THICKNESS = 0.3


#: An empty slab wider than this, Å, between the atoms' planes of some lattice-plane family (:data:`PLANE_FAMILIES`)
#: triggers a VacuumWarning: wider than the training crystals leave. Of the 34,237 Materials Project crystals of
#: ``mp_cgcnn46k_kdmsit`` 99.9% leave no gap above 4.5 Å and 32 (0.09%) one above 5 Å, among them monolayers in a box
#: such as phosphorene (33 Å) and graphene (22 Å); the elastic set 2 of 2941, the Castelli perovskites none
#: (``benchmarks/vacuum_gaps.py``). The 12 nearest neighbours rarely reach across such a gap (in Cu they lie within
#: 3.6 Å), so a network sees a slab, a wire or a molecule in a box: a Cu(111) slab predicts the same value with 6,
#: 7.5 or 15 Å of vacuum (``tests/test_user_reports.py``). (It was the 8 Å graph radius until 2026-11-28, which let 5-8 Å gaps pass.)
#: Narrower gaps stay within the data: graphite's 3.35 Å interlayer gap is crossed by no edge either.
VACUUM_GAP = 5.0


#: The lattice-plane families :func:`vacuum_gap` measures, as Miller indices (13, 3): the three cell faces first
#: ((1 0 0): the planes of b and c), then every other family with indices in {-1, 0, 1}, so that a slab whose cell
#: has no two vectors in its plane (``a + c, b, c``) still shows its gap.
PLANE_FAMILIES = np.array(
    [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1), (0, 1, -1), (1, 0, 1), (1, 0, -1), (1, 1, 0), (1, -1, 0),
     (1, 1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1)], dtype=np.float64)  # fmt: skip


def vacuum_gap(frac_coords: np.ndarray, cell: np.ndarray) -> tuple[float, tuple[int, int, int]]:
    """The widest empty slab of a periodic structure: for each lattice-plane family of
    :data:`PLANE_FAMILIES` the largest gap, in Å along the planes' normal, between consecutive atoms'
    planes (the wrap-around gap included); returns the widest and its family's Miller indices in the
    given cell. A cell far from reduced (:func:`nearly_reduced`; ``a + 2c, b, c``) is measured in its
    Minkowski-reduced form, whose short vectors span a slab's plane (round 32a).

    Args:
        frac_coords: fractional coordinates, (N, 3), any range.
        cell: lattice vectors as rows, Å, (3, 3), non-degenerate.
    """
    frac = np.asarray(frac_coords, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    basis = None if nearly_reduced(cell) else _minkowski_basis(cell)  # None: measured as given
    to_given = None
    if basis is not None:
        cell, to_given = basis
        frac = frac @ to_given
    u = PLANE_FAMILIES @ frac.T  # (13, N): each atom's place in each family
    u -= np.floor(u)
    u.sort(axis=1)
    gaps = u[:, 0] + 1.0 - u[:, -1]  # the wrap-around gap, (13,): fractions of each family's plane spacing
    if u.shape[1] > 1:
        gaps = np.maximum(gaps, (u[:, 1:] - u[:, :-1]).max(axis=1))
    volume, normals = _volume_and_normals(cell)  # plain floats: a 3x3 inverse costs more in numpy
    reciprocal = PLANE_FAMILIES @ np.array(normals)  # (13, 3): each family's normal, times the volume
    widths = gaps * volume / np.sqrt((reciprocal * reciprocal).sum(axis=1))  # Å: fraction x plane spacing
    k = int(np.argmax(widths[:3]))
    if widths[3:].max() > widths[k] + 1e-6:  # a diagonal family only when wider than the cell faces' widest
        k = 3 + int(np.argmax(widths[3:]))
    family = PLANE_FAMILIES[k] if to_given is None else to_given @ PLANE_FAMILIES[k]
    if family[np.flatnonzero(family)[0]] < 0:  # (-1 0 -1) and (1 0 1) are one family: its first index positive
        family = -family
    return float(widths[k]), tuple(round(float(h)) for h in family)  # type: ignore[return-value]


#: Relative slack of :func:`nearly_reduced`'s bound, for cells that lie on it (fcc's primitive cell) up to rounding.
REDUCED_SLACK = 1e-6


def nearly_reduced(cell: np.ndarray) -> bool:
    """Whether no two lattice vectors of ``cell`` (rows, Å) project onto each other by more than half the shorter's
    length (``|a_i . a_j| <= min(|a_i|^2, |a_j|^2) / 2``, as in a reduced cell; fcc's primitive and hexagonal cells
    lie on the bound): the cheap test that spares most cells a Minkowski reduction."""
    a, b, c = cell.tolist()
    aa, bb, cc = (sum(x * x for x in v) for v in (a, b, c))
    ab, ac, bc = (sum(x * y for x, y in zip(u, v)) for u, v in ((a, b), (a, c), (b, c)))
    slack = 1.0 + REDUCED_SLACK
    return abs(ab) <= 0.5 * min(aa, bb) * slack and abs(ac) <= 0.5 * min(aa, cc) * slack and abs(bc) <= 0.5 * min(bb, cc) * slack


def _volume_and_normals(cell: np.ndarray) -> tuple[float, tuple[tuple[float, float, float], ...]]:
    """``|det(cell)|`` (Å^3) and the face normals ``b x c``, ``c x a``, ``a x b`` of a (3, 3) cell of row vectors."""
    a, b, c = np.asarray(cell, dtype=np.float64).tolist()
    normals = (_cross(b, c), _cross(c, a), _cross(a, b))
    return abs(sum(x * y for x, y in zip(a, normals[0]))), normals


def _cross(u: list[float], v: list[float]) -> tuple[float, float, float]:
    return u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]


def _warn_vacuum(record: StructureRecord) -> None:
    """Warn (:class:`~cgcnn_ase.errors.VacuumWarning`) when the atoms leave a gap wider than :data:`VACUUM_GAP`."""
    if max(math.hypot(*row) for row in record.cell.tolist()) <= VACUUM_GAP:  # no gap can be wider than the cell
        return
    if record.vacuum <= VACUUM_GAP:  # measured once: the graph reads it again
        return
    width, family = vacuum_gap(record.frac_coords, record.cell)  # again for the direction, in the rare warned case
    warnings.warn(
        f"{record.label}: the atoms leave an empty gap {width:.1f} Å wide across the lattice planes "
        f"({' '.join(str(h) for h in family)}) (warned "
        f"above {VACUUM_GAP:g} Å, wider than in 99.9% of the training crystals: the graph's nearest neighbours do not reach "
        "across it): a slab, wire or molecule in a periodic "
        "box, while the models were trained on bulk crystals; predictions are extrapolations",
        VacuumWarning,
        stacklevel=4,
    )


#: A cell whose edge lengths multiply to more than this many times its volume (1 for a cube, 1.15 for a
#: hexagonal cell, 1.41 for fcc's primitive cell) is replaced by its Minkowski-reduced cell before anything
#: else (:func:`_reduced_if_skewed`); the crystal, and so its graph, is the same.
SKEWED_CELL_DEFECT = 20.0


def cell_thickness(cell: np.ndarray) -> float:
    """Smallest distance between lattice planes, Å: ``1 / max_k |b_k|`` for the reciprocal vectors
    ``b_k`` (columns of ``inv(cell)``, without 2π) of the Minkowski-reduced cell.

    The given cell is reduced (``ase.geometry.minkowski_reduce``) only when its own thickness is
    small, so an ordinary cell costs one 3x3 inverse.
    """

    def thickness(c: np.ndarray) -> float:  # volume / largest face = 1 / max |b_k|, in plain floats
        volume, normals = _volume_and_normals(c)
        if volume == 0.0 or not math.isfinite(volume):
            return 0.0
        return volume / max(math.hypot(*n) for n in normals)

    own = thickness(cell)
    if own >= MIN_CELL_THICKNESS:
        return own
    from ase.geometry import minkowski_reduce

    try:
        reduced, _ = minkowski_reduce(cell)
    except Exception:  # noqa: BLE001 - ASE raises generic errors on singular or extreme cells
        return own
    return max(own, thickness(np.asarray(reduced, dtype=np.float64)))


def _reduced_if_skewed(cell: np.ndarray, frac: np.ndarray, volume: float) -> tuple[np.ndarray, np.ndarray]:
    """``(cell, frac)`` of the same crystal in its Minkowski-reduced cell when the given cell (of
    ``volume``, Å^3) is very skewed (:data:`SKEWED_CELL_DEFECT`), else as given.

    A neighbour search visits every periodic image the cell's plane spacings require, so a valid but
    skewed cell (``c + 10^4 a + 10^4 b``) asked pymatgen for 343 GB. The reduced cell spans the same
    lattice: Cartesian positions are unchanged and fractional ones are wrapped into it. The
    ``symmetric`` policy's graph is the same; the ``original`` policy's has the same distances, but
    which of several equidistant atoms fill its last slots follows the pair order of the new cell.
    """
    lengths = [math.hypot(*row) for row in cell.tolist()]
    if lengths[0] * lengths[1] * lengths[2] <= SKEWED_CELL_DEFECT * volume:
        return cell, frac
    basis = _minkowski_basis(cell)
    if basis is None:  # the checks below report such a cell
        return cell, frac
    reduced, inverse = basis
    moved = frac @ inverse
    return reduced, moved - np.floor(moved)


def _minkowski_basis(cell: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(reduced, inverse)``: the Minkowski-reduced cell of the same lattice (``ase.geometry.minkowski_reduce``, rows,
    Å) and the integer matrix that takes fractional coordinates into it (``frac @ inverse``); ``None`` for a cell ASE
    cannot reduce (it raises generic errors on extreme cells)."""
    from ase.geometry import minkowski_reduce

    try:
        reduced, op = minkowski_reduce(cell)
    except Exception:  # noqa: BLE001 - see above
        return None
    return np.asarray(reduced, dtype=np.float64), np.rint(np.linalg.inv(np.asarray(op, dtype=np.float64)))


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

    @functools.cached_property
    def vacuum(self) -> float:
        """The widest empty gap between atom planes, Å (:func:`vacuum_gap`): measured once per record
        (validation's check and the graph both read it; ``dataclasses.replace`` makes a new record)."""
        return vacuum_gap(self.frac_coords, self.cell)[0]

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

    def to_ase(self) -> ase.Atoms:
        """The record as a periodic :class:`ase.Atoms`."""
        from ase import Atoms

        return Atoms(numbers=self.numbers, scaled_positions=self.frac_coords, cell=self.cell, pbc=True)

    def to_pymatgen(self) -> pymatgen.core.Structure:
        """The record as a pymatgen :class:`~pymatgen.core.Structure` (built from fractional coordinates)."""
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.cell), self.numbers.tolist(), self.frac_coords, coords_are_cartesian=False)


def validate_record(
    numbers: np.ndarray, frac: np.ndarray, cell: np.ndarray, pbc: Iterable[bool], label: str
) -> StructureRecord:
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
    if not all(math.isfinite(v) for v in cell.ravel().tolist()):
        raise InvalidStructureError(f"{label}: the cell contains NaN or infinite values")
    volume, _ = _volume_and_normals(cell)
    if not math.isfinite(volume) or volume < MIN_CELL_VOLUME:
        raise InvalidStructureError(f"{label}: the cell is degenerate (volume {volume:.3g} Å^3)")
    cell, frac = _reduced_if_skewed(cell, frac, volume)
    thickness = cell_thickness(cell)
    if thickness < MIN_CELL_THICKNESS:
        lengths = np.linalg.norm(cell, axis=1)
        shape = ("nearly flat: " if thickness < 0.1 * lengths.max() else
                 f"too small (lattice vectors {', '.join(f'{v:.3g}' for v in lengths)} Å; a cell in nm or Bohr?): ")
        raise InvalidStructureError(
            f"{label}: the cell is degenerate: {shape}{thickness:.3g} Å thick between its closest lattice planes "
            f"(less than {MIN_CELL_THICKNESS} Å, so periodic images of every atom overlap)"
        )  # fmt: skip
    if not np.isfinite(frac).all():
        bad = np.flatnonzero(~np.all(np.isfinite(frac), axis=1))
        raise InvalidStructureError(f"{label}: atom(s) {bad[:5].tolist()} have NaN or infinite positions")
    if numbers.min() <= 0:
        bad = np.flatnonzero(numbers <= 0)
        raise InvalidStructureError(
            f"{label}: site(s) {bad[:5].tolist()} are vacancies or dummy species (atomic number "
            f"{int(numbers[bad[0]])}); only real elements are supported"
        )
    record = StructureRecord(numbers=numbers, frac_coords=frac, cell=cell, label=label)
    _warn_vacuum(record)
    return record


def from_ase(atoms: ase.Atoms, label: str = "Atoms") -> StructureRecord:
    """Validate an :class:`ase.Atoms` into a record (fractional coordinates are not wrapped)."""
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if len(atoms) == 0:
        return validate_record(np.zeros(0), np.zeros((0, 3)), cell, atoms.pbc, label)
    with np.errstate(all="ignore"):
        try:
            frac = np.linalg.solve(cell.T, np.asarray(atoms.positions, dtype=np.float64).T).T
        except np.linalg.LinAlgError:
            frac = np.full((len(atoms), 3), np.nan)
    if not all(atoms.pbc):  # report pbc before a possibly singular cell
        return validate_record(atoms.numbers, frac, np.eye(3), atoms.pbc, label)
    _check_ase_occupancy(atoms, label)
    return validate_record(atoms.numbers, frac, cell, atoms.pbc, label)


def _check_ase_occupancy(atoms: ase.Atoms, label: str) -> None:
    """Refuse an ``Atoms`` that ASE's CIF reader made of a disordered CIF: it keeps one species per site
    and records the occupancies in ``info["occupancy"]`` (by ``arrays["spacegroup_kinds"]``), so
    Fe 0.6 / Ni 0.4 on one site would be predicted as a plain Fe site."""
    occupancy, kinds = atoms.info.get("occupancy"), atoms.arrays.get("spacegroup_kinds")
    if not isinstance(occupancy, Mapping) or kinds is None:
        return
    for i, kind in enumerate(np.asarray(kinds).tolist()):
        shares = occupancy.get(str(kind), occupancy.get(kind))
        if not isinstance(shares, Mapping):
            continue
        present = {symbol: float(share) for symbol, share in shares.items() if float(share) > 0}
        total = sum(present.values())
        if len(present) > 1 or total < 1.0 - 1e-3:
            what = ", ".join(f"{symbol} {share:.4g}" for symbol, share in present.items())
            raise InvalidStructureError(
                f"{label}: site {i} is disordered ({'mixed species' if len(present) > 1 else 'partial occupancy'} "
                f"{what}, from the CIF's occupancies that ASE keeps in atoms.info['occupancy']); CGCNN needs an "
                "ordered structure (order it first, e.g. with pymatgen's OrderDisorderedStructureTransformation; "
                "if these atoms are ordered already, del atoms.info['occupancy'])"
            )


def from_pymatgen(structure: pymatgen.core.IStructure, label: str = "Structure") -> StructureRecord:
    """Validate a pymatgen Structure/IStructure into a record.

    Disordered sites (partial occupancies, mixed elements) and dummy species (vacancies,
    ``X``) are refused with a message naming the first such sites. Oxidation states are
    dropped: a site shared by Fe2+ and Fe3+ is an Fe site.
    """
    from pymatgen.core.periodic_table import DummySpecies

    numbers = []
    for i, site in enumerate(structure):
        # by element: oxidation states are not a CGCNN input, so Fe2+ 0.5 + Fe3+ 0.5 is a full Fe site
        # (num_atoms: summing a Composition's values counts Fe 0.5 + Fe2+ 0.5 as 1.5, a pymatgen quirk)
        comp = site.species.element_composition
        total = comp.num_atoms
        if total > 1.0 + 1e-3:
            raise InvalidStructureError(
                f"{label}: site {i} ({comp.formula}) has occupancy {total:.4g}, above 1; an occupancy is a fraction "
                "of a site"
            )
        if len(comp) != 1 or total < 1.0 - 1e-3:  # 0.9999 is full occupancy, rounded
            what = (
                f"mixed species {comp.formula}" if len(comp) > 1
                else f"partial occupancy {total:.4g} of {comp.formula}" if len(comp) else "an empty site"
            )  # fmt: skip
            raise InvalidStructureError(
                f"{label}: site {i} is disordered ({what}); CGCNN needs an ordered structure "
                "(order it first, e.g. with pymatgen's OrderDisorderedStructureTransformation)"
            )
        (specie,) = comp.keys()
        if isinstance(specie, DummySpecies):
            raise InvalidStructureError(
                f"{label}: site {i} holds the dummy species {specie} (a vacancy or placeholder)"
            )
        numbers.append(specie.Z)
    return validate_record(
        np.asarray(numbers),
        structure.frac_coords,
        structure.lattice.matrix,
        getattr(structure.lattice, "pbc", (True,) * 3),
        label,
    )

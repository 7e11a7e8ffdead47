"""Crystal graphs: neighbour selection (one :class:`CrystalGraph` per structure).

A crystal becomes a multigraph: atoms are nodes, and each atom ``i`` has directed
edges ``i <- j`` to its nearest neighbours ``j`` (periodic images included, so a pair
of atoms can share several edges) within ``GraphConfig.radius``. Edge features are
the interatomic distance, expanded in Gaussians at batching time (:mod:`cgcnn_ase.graph.batch`).

Two neighbour policies decide which neighbours become edges:

``"symmetric"`` (default for this project's models)
    Every neighbour within the radius whose distance is at most the
    ``max_neighbors``-th smallest distance (+ ``tie_tolerance``) is kept: when several
    neighbours tie for the last slot, the whole tied shell is kept. Atoms with fewer
    neighbours simply have fewer edges (no padding). The edge set depends only on
    geometry, so it is invariant under atom permutation and choice of supercell.

``"original"``
    Bit-compatible with the original CGCNN code, needed for the authors' checkpoints:
    exactly ``max_neighbors`` edges per atom, ties at the last slot broken in the order
    of pymatgen ``Structure.get_neighbor_list`` (a stable sort by distance, as the
    original sorted ``get_all_neighbors``), and atoms with too few neighbours padded
    with edges to atom 0 at ``radius + 1`` Å. Predictions can then depend on atom order.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np

from cgcnn_ase.errors import (
    CloseAtomsWarning,
    InvalidStructureError,
    SparseGraphError,
    SparseGraphWarning,
    StretchedStructureWarning,
)
from cgcnn_ase.graph.config import GraphConfig, SparsePolicy
from cgcnn_ase.io.records import StructureRecord

#: Two atoms closer than this (Å) are treated as overlapping, a broken structure.
MIN_INTERATOMIC_DISTANCE = 0.3


@dataclass(frozen=True, eq=False)
class CrystalGraph:
    """The graph of one crystal, independent of element features.

    Attributes:
        numbers: atomic numbers, shape (N,).
        centers: edge centre atom ``i`` per edge, shape (E,), sorted ascending.
        neighbors: edge neighbour atom ``j`` per edge, shape (E,).
        distances: edge length, Å, shape (E,), float64.
        n_sparse: atoms with fewer than ``max_neighbors`` neighbours within the radius.
        label: name of the source structure.
    """

    numbers: np.ndarray
    centers: np.ndarray
    neighbors: np.ndarray
    distances: np.ndarray
    n_sparse: int
    label: str
    closest: float | None = None  # bond_ratio, when the builder computed it
    vacuum_gap: float = math.nan  # Å (cgcnn_ase.io.records.vacuum_gap), when the builder computed it

    @property
    def bond_ratio(self) -> float:
        """The shortest edge relative to its atoms' covalent bond length (:func:`bond_ratio`)."""
        if self.closest is not None:
            return self.closest
        return bond_ratio(self.numbers, self.centers, self.neighbors, self.distances)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)


#: Atoms closer than this fraction of the sum of their covalent radii trigger a CloseAtomsWarning. In the
#: 54,606 crystals of ``mp_cgcnn46k_kdmsit``, ``mp_elastic3k_kdmsit`` and ``perovskites_castelli_cmr`` the
#: closest pair lies at least 0.642x (GaNOZn; 0.1%: 0.716-0.792x per dataset); a cell read in Bohr as if in Å
#: (x0.529) puts NaCl at 0.59x and Si at 0.54x (``benchmarks/bond_lengths.py``).
CLOSE_ATOMS_FACTOR = 0.6
#: A structure whose closest pair lies beyond this multiple of the sum of its covalent radii triggers a
#: StretchedStructureWarning. In the 34,237 Materials Project crystals of ``mp_cgcnn46k_kdmsit`` the closest
#: pair lies at most 1.37x (99.9%: below 1.23x), except solid He (2.69x); NaCl with its lattice doubled
#: lies at 2.1x (``benchmarks/bond_lengths.py``).
STRETCHED_FACTOR = 1.6


def rounded_gap(width: float) -> float:
    """A vacuum gap (Å) rounded to 1e-6 Å, as both graph paths report it: their computations differ in
    the last bits, and results must not depend on the path."""
    return float(np.round(width, 6))


def wrapped_frac_coords(frac: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """Fractional coordinates moved into the cell by whole lattice vectors where they lie outside it.

    Coordinates within ``[-tol, 1 + tol)`` are returned bit for bit (the ``original`` policy's
    tie order depends on them); the rest are shifted by ``floor``. The neighbor search spans the
    coordinates' range, so an atom 10^6 cells away would otherwise need terabytes.
    """
    frac = np.asarray(frac, dtype=np.float64)
    outside = (frac < -tol) | (frac >= 1.0 + tol)
    if not outside.any():
        return frac
    out = frac.copy()
    out[outside] -= np.floor(out[outside])
    return out


@functools.cache
def _covalent_radii() -> np.ndarray:
    """Pyykkö covalent radii, Å, indexed by atomic number (0 for Z = 0), built once per process."""
    from cgcnn_ase.graph.elements import PYYKKO_COVALENT_RADII_PM

    radii = np.zeros(len(PYYKKO_COVALENT_RADII_PM) + 1)
    radii[1:] = np.asarray(PYYKKO_COVALENT_RADII_PM) / 100.0
    radii.setflags(write=False)
    return radii


def bond_ratio(numbers: np.ndarray, centers: np.ndarray, neighbors: np.ndarray, distances: np.ndarray) -> float:
    """The smallest ``d / (r_i + r_j)`` over a graph's edges, with ``r`` the Pyykkö covalent radii
    (dimensionless): about 1 for bonded atoms; below :data:`CLOSE_ATOMS_FACTOR` or above
    :data:`STRETCHED_FACTOR` lies outside every training crystal (a mis-scaled cell). NaN without edges."""
    return _closest_edge(numbers, centers, neighbors, distances)[0]


def _closest_edge(
    numbers: np.ndarray, centers: np.ndarray, neighbors: np.ndarray, distances: np.ndarray
) -> tuple[float, int]:
    """:func:`bond_ratio` and the index of its edge (-1 without edges)."""
    if not len(distances):
        return math.nan, -1
    radii = _covalent_radii()
    z = np.minimum(np.asarray(numbers), len(radii) - 1)
    bond = radii[z[centers]] + radii[z[neighbors]]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bond > 0, distances / bond, np.inf)
    p = int(np.argmin(ratio))
    return (float(ratio[p]) if math.isfinite(ratio[p]) else math.nan), p


def _atoms_phrase(record: StructureRecord, i: int, j: int) -> str:
    from ase.data import chemical_symbols

    a, b = record.numbers[i], record.numbers[j]
    if i == j:
        return f"atom {i} ({chemical_symbols[a]}) and its own periodic image"
    return f"atoms {i} ({chemical_symbols[a]}) and {j} ({chemical_symbols[b]})"


def _warn_close_atoms(record: StructureRecord, i: np.ndarray, j: np.ndarray, d: np.ndarray) -> None:
    """Warn when some pair is closer than :data:`CLOSE_ATOMS_FACTOR` x the sum of its Pyykkö covalent radii."""
    radii = _covalent_radii()
    z = np.minimum(record.numbers, len(radii) - 1)
    near = d < CLOSE_ATOMS_FACTOR * 2 * radii[z].max()  # only these pairs can be too close: few or none
    if not near.any():
        return
    i, j, d = i[near], j[near], d[near]
    bond = radii[z[i]] + radii[z[j]]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bond > 0, d / bond, np.inf)
    p = int(np.argmin(ratio))
    if ratio[p] < CLOSE_ATOMS_FACTOR:
        warnings.warn(
            f"{record.label}: {_atoms_phrase(record, int(i[p]), int(j[p]))} are "
            f"{d[p]:.3f} Å apart, {ratio[p]:.2f} x the sum of their covalent radii ({bond[p]:.2f} Å; warned below "
            f"{CLOSE_ATOMS_FACTOR}); is the cell scaled right? The prediction is far outside the training data",
            CloseAtomsWarning,
            stacklevel=3,
        )


def _warn_stretched(record: StructureRecord, i: np.ndarray, j: np.ndarray, d: np.ndarray, ratio: float, p: int) -> None:
    """Warn when the closest edge (``p``, at ``ratio``) lies beyond :data:`STRETCHED_FACTOR` x its bond length."""
    if not ratio > STRETCHED_FACTOR:
        return
    bond = d[p] / ratio
    warnings.warn(
        f"{record.label}: no two atoms are near bonding distance: the pair nearest to it, {_atoms_phrase(record, int(i[p]), int(j[p]))}, "
        f"lie {d[p]:.3f} Å apart, {ratio:.2f} x the sum of their covalent radii ({bond:.2f} Å; warned above "
        f"{STRETCHED_FACTOR}, which no training crystal but solid He exceeds); is the cell scaled right (Å)? "
        "(Solids of noble-gas atoms lie there too.) The prediction is far outside the training data",
        StretchedStructureWarning,
        stacklevel=3,
    )


#: The ``symmetric`` policy first searches pairs within ``FIRST_SEARCH x (V / N x k / 12)^(1/3)`` (V/N: volume
#: per atom, k: ``max_neighbors``), capped at the radius. On 1000 Materials Project crystals the kept
#: shells reached 1.70 (V/N)^(1/3) in 99% of the crystals (2.02 at most), and graphs were built 1.75-1.8x
#: faster (``benchmarks/bench_cpu_pass.py``). Where some atom's kept shell could reach past the first
#: search, the full radius is searched instead: the edges are the same either way.
FIRST_SEARCH = 1.8


#: The most cubes pymatgen's cell list may lay over a structure (cubes of the search radius over the atoms' bounding
#: box widened by the radius on each side; about 270 bytes each): 2 million (about 0.5 GB) hold atoms spread over
#: 1000 Å in every direction at 8 Å. Past it the search would allocate gigabytes to terabytes (round 23c: NaCl
#: with its cell scaled by 10^5 asked for 350 TB and raised MemoryError, which no per-item error policy catches).
MAX_SEARCH_CUBES = 2_000_000


def search_cubes(record: StructureRecord, radius: float) -> float:
    """How many cubes of side ``radius`` (Å) pymatgen's cell list needs for ``record`` (as a float: no overflow)."""
    coords = wrapped_frac_coords(record.frac_coords) @ record.cell
    extent = coords.max(axis=0) - coords.min(axis=0)
    return float(np.prod(np.ceil((extent + 2 * radius) / radius)))


def _search_fits(record: StructureRecord, radius: float) -> bool:
    """Whether :func:`search_cubes` is at most :data:`MAX_SEARCH_CUBES`; first from the cell alone (wrapped atoms
    span at most the sum of the lattice vectors' absolute components along each axis), which settles every
    ordinary crystal in a few microseconds (the exact count cost 8-17% of a graph's time)."""
    rows = record.cell.tolist()
    bound = 1.0
    for axis in range(3):
        bound *= math.ceil((abs(rows[0][axis]) + abs(rows[1][axis]) + abs(rows[2][axis]) + 2 * radius) / radius)
    return bound <= MAX_SEARCH_CUBES or search_cubes(record, radius) <= MAX_SEARCH_CUBES


def check_search_size(record: StructureRecord, radius: float) -> None:
    """Refuse a structure whose atoms spread so far that a neighbour search within ``radius`` (Å) would need more
    than :data:`MAX_SEARCH_CUBES` cubes (a cell in the wrong units, or atoms scattered over a huge box).

    Raises:
        InvalidStructureError: naming the structure, the atoms' extent and the cubes it would need.
    """
    if _search_fits(record, radius):
        return
    cubes = search_cubes(record, radius)
    coords = wrapped_frac_coords(record.frac_coords) @ record.cell
    extent = " x ".join(f"{v:.3g}" for v in coords.max(axis=0) - coords.min(axis=0))
    raise InvalidStructureError(
        f"{record.label}: its atoms spread over {extent} Å: a neighbour search within {radius:g} Å would need "
        f"{cubes:,.0f} grid cubes (at most {MAX_SEARCH_CUBES:,}: atoms spread over about 1000 Å); a crystal's cell "
        "is a few to a few hundred Å: are its lengths in Å?"
    )


def _first_search_radius(record: StructureRecord, config: GraphConfig) -> float:
    """The radius (Å) of the ``symmetric`` policy's first pair search (:data:`FIRST_SEARCH`); at least the
    reach of the close-atoms check, at most ``config.radius``."""
    volume = record.volume  # positive: records are validated
    radii = _covalent_radii()
    reach = 2 * CLOSE_ATOMS_FACTOR * radii[np.minimum(record.numbers, len(radii) - 1)].max()
    first = float(min(config.radius, max(FIRST_SEARCH * (volume / len(record) * config.max_neighbors / 12) ** (1 / 3),
                                         reach + config.tie_tolerance)))  # fmt: skip
    # a smaller sphere needs more cubes: a huge dense structure searches the radius at once (or is refused there)
    return first if _search_fits(record, first) else float(config.radius)


def _raw_neighbors(
    record: StructureRecord, config: GraphConfig, radius: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (i, j, d) pairs within ``radius`` (Å; default ``config.radius``), periodic images included,
    self excluded.

    Uses pymatgen's compiled ``find_points_in_spheres`` with exactly the inputs and
    self-pair rule of ``Structure.get_neighbor_list``, so the pair order (which decides
    ties in the ``original`` policy) is the one the original code saw.
    """
    from pymatgen.optimization.neighbors import find_points_in_spheres

    check_search_size(record, float(config.radius if radius is None else radius))
    coords = np.ascontiguousarray(np.dot(wrapped_frac_coords(record.frac_coords), record.cell), dtype=float)
    i, j, _, d = find_points_in_spheres(
        coords,
        coords,
        r=float(config.radius if radius is None else radius),
        pbc=np.ones(3, dtype=np.int64),
        lattice=np.ascontiguousarray(record.cell, dtype=float),
        tol=1e-8,
    )
    keep = ~((i == j) & (d <= 1e-8))
    return i[keep].astype(np.int64), j[keep].astype(np.int64), d[keep].astype(np.float64)


def _kth_smallest(i: np.ndarray, d: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """Per centre, the ``k``-th smallest distance (Å), ``inf`` where a centre has fewer than ``k`` pairs.

    ``i`` must be sorted ascending (pairs grouped by centre). A partial sort (``np.partition``)
    of one row per centre, padded with ``inf``: linear time, where a full sort of the
    thousands of pairs within 8 Å is most of a structure's graph time.
    """
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    table = np.full((len(counts), int(counts.max(initial=0)) or 1), np.inf)
    table[i, np.arange(len(i)) - starts[i]] = d
    kth = np.full(len(counts), np.inf)
    full = counts >= k
    if full.any():
        kth[full] = np.partition(table[full], k - 1, axis=1)[:, k - 1]
    return kth


def _select_edges(
    i: np.ndarray, j: np.ndarray, d: np.ndarray, n_atoms: int, config: GraphConfig, searched: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Apply the neighbour policy to all pairs within the radius.

    ``searched``: the pairs are those within this radius (Å) only, less than ``config.radius``
    (``symmetric`` policy); ``None`` is returned when some atom's kept shell could reach past it.

    Returns the kept ``(i, j, d)`` sorted by centre, then distance, then (``symmetric``) neighbour
    or (``original``) input order, the stable order the original code saw; and the number of
    pairs per centre.
    """
    k = config.max_neighbors
    counts = np.bincount(i, minlength=n_atoms)
    if len(i) and not np.all(i[1:] >= i[:-1]):  # group by centre, keeping input order within a centre
        order = np.argsort(i, kind="stable")
        i, j, d = i[order], j[order], d[order]
    kth = _kth_smallest(i, d, counts, k)
    # only pairs up to the k-th distance (plus the tie tolerance) can be kept: sort just those
    symmetric = config.neighbor_policy == "symmetric"
    bound = kth + (config.tie_tolerance if symmetric else 0.0)
    if searched is not None and not np.all(bound < searched):  # inf where an atom has fewer than k pairs
        return None
    near = d <= bound[i]
    i, j, d = i[near], j[near], d[near]
    # by centre, then distance, then: the neighbour (symmetric; the same order whatever radius was
    # searched) or the input order (original: pymatgen's pair order breaks its ties)
    order = np.lexsort((j, d, i)) if symmetric else np.lexsort((d, i))
    i, j, d = i[order], j[order], d[order]
    if config.neighbor_policy != "original":
        return i, j, d, counts
    near_counts = np.bincount(i, minlength=n_atoms)
    starts = np.concatenate(([0], np.cumsum(near_counts)[:-1]))
    keep = np.arange(len(i)) - starts[i] < k
    i, j, d = i[keep], j[keep], d[keep]
    missing = np.maximum(k - counts, 0)
    if missing.any():
        pad_i = np.repeat(np.arange(n_atoms), missing)
        i = np.concatenate([i, pad_i])
        j = np.concatenate([j, np.zeros_like(pad_i)])
        d = np.concatenate([d, np.full(len(pad_i), config.radius + 1.0)])
        order = np.argsort(i, kind="stable")
        i, j, d = i[order], j[order], d[order]
    return i, j, d, counts


def sparse_check(
    record: StructureRecord, n_sparse: int, config: GraphConfig, on_sparse: SparsePolicy, *, stacklevel: int = 3
) -> None:
    """Apply the ``on_sparse`` policy to a graph with ``n_sparse`` atoms short of ``max_neighbors``
    neighbours: nothing, a :class:`SparseGraphWarning`, or :class:`SparseGraphError`."""
    if not n_sparse or on_sparse == "ignore":
        return
    message = (
        f"{record.label}: {n_sparse} of {len(record)} atoms have fewer than {config.max_neighbors} neighbours within "
        f"{config.radius:g} Å (isolated or low-density structure); predictions there are extrapolations"
    )
    if on_sparse == "error":
        raise SparseGraphError(message)
    if on_sparse != "warn":
        raise ValueError(f"on_sparse must be 'warn', 'error' or 'ignore', got {on_sparse!r}")
    warnings.warn(message, SparseGraphWarning, stacklevel=stacklevel)


def build_graph(record: StructureRecord, config: GraphConfig, *, on_sparse: SparsePolicy = "warn") -> CrystalGraph:
    """Build the crystal graph of one structure.

    Args:
        record: a validated structure.
        config: graph settings (radius in Å, neighbour count, policy).
        on_sparse: what to do when some atom has fewer than ``config.max_neighbors``
            neighbours within the radius: ``"warn"`` (a :class:`~cgcnn_ase.errors.SparseGraphWarning`),
            ``"error"`` (:class:`~cgcnn_ase.errors.SparseGraphError`) or ``"ignore"``.

    Raises:
        InvalidStructureError: two atoms overlap (closer than 0.3 Å), or they spread too far for a neighbour
            search (:func:`check_search_size`).
        SparseGraphError: the graph is sparse and ``on_sparse="error"``.
    """
    n_atoms = len(record)
    k = config.max_neighbors
    # symmetric policy: a first search in a smaller sphere usually holds every kept shell
    first = _first_search_radius(record, config) if config.neighbor_policy == "symmetric" else config.radius
    i, j, d = _raw_neighbors(record, config, first)
    if len(d) and d.min() < MIN_INTERATOMIC_DISTANCE:
        p = int(np.argmin(d))
        apart = f"{d[p]:.3f}" if d[p] >= 5e-4 or not d[p] else f"{d[p]:.2g}"  # 5.6e-05, not 0.000 (round 23c)
        raise InvalidStructureError(f"{record.label}: atoms {int(i[p])} and {int(j[p])} are {apart} Å apart (overlapping atoms)")
    if len(d):
        _warn_close_atoms(record, i, j, d)
    selected = _select_edges(i, j, d, n_atoms, config, first if first < config.radius else None)
    if selected is None:  # some kept shell may reach past the first search: search the full radius
        selected = _select_edges(*_raw_neighbors(record, config), n_atoms, config)
    i, j, d, counts = selected
    n_sparse = int(np.count_nonzero(counts < k))
    closest, p = _closest_edge(record.numbers, i, j, d)
    _warn_stretched(record, i, j, d, closest, p)

    sparse_check(record, n_sparse, config, on_sparse)
    return CrystalGraph(numbers=record.numbers, centers=i, neighbors=j, distances=d, n_sparse=n_sparse,
                        label=record.label, closest=closest,
                        vacuum_gap=rounded_gap(record.vacuum))  # fmt: skip



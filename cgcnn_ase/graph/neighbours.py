"""Crystal graphs: neighbour selection, Gaussian distance expansion and batching.

A crystal becomes a multigraph: atoms are nodes, and each atom ``i`` has directed
edges ``i <- j`` to its nearest neighbours ``j`` (periodic images included, so a pair
of atoms can share several edges) within ``GraphConfig.radius``. Edge features are
the interatomic distance expanded in Gaussians (Xie & Grossman 2018, Eq. 2 and SI).

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

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
import torch

from cgcnn_ase.graph.elements import ElementTable
from cgcnn_ase.errors import InvalidStructureError, SparseGraphError, SparseGraphWarning
from cgcnn_ase.io.reader import StructureRecord

NeighborPolicy = Literal["symmetric", "original"]
SparsePolicy = Literal["warn", "error", "ignore"]

#: Two atoms closer than this (Å) are treated as overlapping, a broken structure.
MIN_INTERATOMIC_DISTANCE = 0.3


@dataclass(frozen=True)
class GraphConfig:
    """How a crystal is turned into a graph.

    Attributes:
        radius: neighbour cutoff, Å (paper: 8).
        max_neighbors: neighbours kept per atom (paper: 12).
        gaussian_dmin: first Gaussian centre, Å.
        gaussian_step: spacing of Gaussian centres, Å; centres run from ``gaussian_dmin``
            to ``radius`` inclusive (41 centres with the defaults).
        gaussian_width: Gaussian width σ in ``exp(-(d - μ)² / σ²)``, Å; ``None`` means
            ``gaussian_step``, as in the original.
        neighbor_policy: ``"symmetric"`` or ``"original"`` (see module docstring).
        tie_tolerance: distances within this of the last kept one count as tied, Å; 1e-3
            absorbs the rounding of CIFs that give fractional coordinates to 4 decimals
            (``"symmetric"`` policy only).
    """

    radius: float = 8.0
    max_neighbors: int = 12
    gaussian_dmin: float = 0.0
    gaussian_step: float = 0.2
    gaussian_width: float | None = None
    neighbor_policy: NeighborPolicy = "symmetric"
    tie_tolerance: float = 1e-3

    def __post_init__(self) -> None:
        if self.neighbor_policy not in ("symmetric", "original"):
            raise ValueError(f"neighbor_policy must be 'symmetric' or 'original', got {self.neighbor_policy!r}")
        if not (self.radius > 0 and self.max_neighbors > 0 and self.gaussian_step > 0):
            raise ValueError(f"radius, max_neighbors and gaussian_step must be positive: {self}")

    @property
    def gaussian_centers(self) -> np.ndarray:
        """Gaussian centres μ_k, Å, shape (n_gaussians,), as the original ``np.arange`` gives them."""
        return np.arange(self.gaussian_dmin, self.radius + self.gaussian_step, self.gaussian_step)

    @property
    def n_gaussians(self) -> int:
        """Length of the edge feature vector (41 with the defaults)."""
        return len(self.gaussian_centers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, for ``model.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown graph settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


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

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)


def _raw_neighbors(record: StructureRecord, config: GraphConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (i, j, d) pairs within the radius, periodic images included, self excluded.

    Uses pymatgen's compiled ``find_points_in_spheres`` with exactly the inputs and
    self-pair rule of ``Structure.get_neighbor_list``, so the pair order (which decides
    ties in the ``original`` policy) is the one the original code saw.
    """
    from pymatgen.optimization.neighbors import find_points_in_spheres

    coords = np.ascontiguousarray(np.dot(record.frac_coords, record.cell), dtype=float)
    i, j, _, d = find_points_in_spheres(
        coords,
        coords,
        r=float(config.radius),
        pbc=np.ones(3, dtype=np.int64),
        lattice=np.ascontiguousarray(record.cell, dtype=float),
        tol=1e-8,
    )
    keep = ~((i == j) & (d <= 1e-8))
    return i[keep].astype(np.int64), j[keep].astype(np.int64), d[keep].astype(np.float64)


def build_graph(record: StructureRecord, config: GraphConfig, *, on_sparse: SparsePolicy = "warn") -> CrystalGraph:
    """Build the crystal graph of one structure.

    Args:
        record: a validated structure.
        config: graph settings (radius in Å, neighbour count, policy).
        on_sparse: what to do when some atom has fewer than ``config.max_neighbors``
            neighbours within the radius: ``"warn"`` (a :class:`~cgcnn_ase.errors.SparseGraphWarning`),
            ``"error"`` (:class:`~cgcnn_ase.errors.SparseGraphError`) or ``"ignore"``.

    Raises:
        InvalidStructureError: two atoms overlap (closer than 0.3 Å).
        SparseGraphError: the graph is sparse and ``on_sparse="error"``.
    """
    n_atoms = len(record)
    k = config.max_neighbors
    i, j, d = _raw_neighbors(record, config)
    if len(d) and d.min() < MIN_INTERATOMIC_DISTANCE:
        p = int(np.argmin(d))
        raise InvalidStructureError(
            f"{record.label}: atoms {int(i[p])} and {int(j[p])} are {d[p]:.3f} Å apart (overlapping atoms)"
        )
    order = np.lexsort((d, i))  # stable: by centre, then distance, then input order
    i, j, d = i[order], j[order], d[order]
    counts = np.bincount(i, minlength=n_atoms)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(len(i)) - starts[i]
    n_sparse = int(np.count_nonzero(counts < k))

    if config.neighbor_policy == "original":
        keep = rank < k
        i, j, d = i[keep], j[keep], d[keep]
        missing = np.maximum(k - counts, 0)
        if missing.any():
            pad_i = np.repeat(np.arange(n_atoms), missing)
            i = np.concatenate([i, pad_i])
            j = np.concatenate([j, np.zeros_like(pad_i)])
            d = np.concatenate([d, np.full(len(pad_i), config.radius + 1.0)])
            order = np.argsort(i, kind="stable")
            i, j, d = i[order], j[order], d[order]
    else:
        kth = np.full(n_atoms, np.inf)
        full = counts >= k
        kth[full] = d[starts[full] + k - 1]
        keep = d <= kth[i] + config.tie_tolerance
        i, j, d = i[keep], j[keep], d[keep]

    if n_sparse and on_sparse != "ignore":
        message = (
            f"{record.label}: {n_sparse} of {n_atoms} atoms have fewer than {k} neighbours within "
            f"{config.radius:g} Å (isolated or low-density structure); predictions there are extrapolations"
        )
        if on_sparse == "error":
            raise SparseGraphError(message)
        if on_sparse != "warn":
            raise ValueError(f"on_sparse must be 'warn', 'error' or 'ignore', got {on_sparse!r}")
        warnings.warn(message, SparseGraphWarning, stacklevel=2)
    return CrystalGraph(numbers=record.numbers, centers=i, neighbors=j, distances=d, n_sparse=n_sparse, label=record.label)


def gaussian_expand(distances: torch.Tensor, config: GraphConfig) -> torch.Tensor:
    """Expand distances (Å, shape (E,)) into ``exp(-(d - μ_k)² / σ²)``, shape (E, n_gaussians), float32.

    Computed in float64 and then rounded, as the original did in numpy.
    """
    centers = torch.from_numpy(config.gaussian_centers)
    width = config.gaussian_width if config.gaussian_width is not None else config.gaussian_step
    diff = distances.to(torch.float64).unsqueeze(1) - centers
    return torch.exp(-(diff**2) / width**2).to(torch.float32)


@dataclass
class GraphBatch:
    """Several crystal graphs stacked into one disconnected graph, as model input.

    Attributes:
        atom_fea: element feature vectors, (N_total, n_element_features), float32.
        edge_fea: Gaussian-expanded distances, (E_total, n_gaussians), float32.
        centers: global index of each edge's centre atom, (E_total,), int64.
        neighbors: global index of each edge's neighbour atom, (E_total,), int64.
        crystal_index: crystal of each atom, (N_total,), int64, values in [0, n_crystals).
        n_crystals: number of crystals in the batch.
        edge_weight: multiplicity of each edge, (E_total,), float32, or ``None`` (every
            edge counts once). An edge with weight ``m`` stands for ``m`` identical edges
            (same centre, neighbour and distance: periodic images of one atom at one
            distance); the network's sums and edge batch norm count it ``m`` times, so
            merged graphs give the same result as unmerged ones.
    """

    atom_fea: torch.Tensor
    edge_fea: torch.Tensor
    centers: torch.Tensor
    neighbors: torch.Tensor
    crystal_index: torch.Tensor
    n_crystals: int
    edge_weight: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> GraphBatch:
        """A copy of the batch on ``device``."""
        return GraphBatch(
            atom_fea=self.atom_fea.to(device),
            edge_fea=self.edge_fea.to(device),
            centers=self.centers.to(device),
            neighbors=self.neighbors.to(device),
            crystal_index=self.crystal_index.to(device),
            n_crystals=self.n_crystals,
            edge_weight=None if self.edge_weight is None else self.edge_weight.to(device),
        )


def merge_identical_edges(
    centers: np.ndarray, neighbors: np.ndarray, distances: np.ndarray, *, decimals: int = 9
) -> tuple[np.ndarray, np.ndarray]:
    """Group edges with the same centre, neighbour and distance (rounded to ``decimals`` Å).

    Such edges are periodic images of one atom at one distance from one centre and carry
    identical messages, so one edge counted ``m`` times (``GraphBatch.edge_weight``) can
    stand for them. ``centers`` must be global atom indices (distinct crystals never share one).

    Returns:
        ``(keep, weights)``: indices of one representative edge per group, in order of
        (centre, neighbour, distance), and each group's size as float32.
    """
    if not len(distances):
        return np.zeros(0, dtype=np.int64), np.ones(0, dtype=np.float32)
    rounded = np.round(distances, decimals)
    order = np.lexsort((rounded, neighbors, centers))
    c, nb, d = centers[order], neighbors[order], rounded[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (c[1:] != c[:-1]) | (nb[1:] != nb[:-1]) | (d[1:] != d[:-1])
    starts = np.flatnonzero(first)
    return order[starts], np.diff(np.append(starts, len(order))).astype(np.float32)


def collate(
    graphs: Sequence[CrystalGraph], elements: ElementTable, config: GraphConfig, *, merge_edges: bool = False
) -> GraphBatch:
    """Stack graphs into one :class:`GraphBatch`, looking up element features.

    With ``merge_edges``, identical edges are merged (:func:`merge_identical_edges`) and
    the batch carries ``edge_weight``: the network computes the same result on fewer edges.

    Raises:
        UnsupportedElementError: a graph holds an element missing from ``elements``.
    """
    if not graphs:
        raise ValueError("collate needs at least one graph")
    sizes = np.array([g.n_atoms for g in graphs])
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    edge_offsets = np.repeat(offsets, [len(g.centers) for g in graphs])
    numbers = np.concatenate([g.numbers for g in graphs])
    centers = np.concatenate([g.centers for g in graphs]) + edge_offsets
    neighbors = np.concatenate([g.neighbors for g in graphs]) + edge_offsets
    distances = np.concatenate([g.distances for g in graphs])
    weights = None
    if merge_edges:
        keep, weights = merge_identical_edges(centers, neighbors, distances)
        centers, neighbors, distances = centers[keep], neighbors[keep], distances[keep]
    return GraphBatch(
        atom_fea=torch.from_numpy(elements.featurize(numbers)),
        edge_fea=gaussian_expand(torch.from_numpy(distances), config),
        centers=torch.from_numpy(centers),
        neighbors=torch.from_numpy(neighbors),
        crystal_index=torch.from_numpy(np.repeat(np.arange(len(graphs)), sizes)),
        n_crystals=len(graphs),
        edge_weight=None if weights is None else torch.from_numpy(weights),
    )

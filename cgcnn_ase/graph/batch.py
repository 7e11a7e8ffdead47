"""Batching: many crystal graphs -> one :class:`GraphBatch`, the network's input.

Edge distances are expanded in Gaussians (:func:`gaussian_expand`, Eq. 2 of the paper), element
numbers looked up in an :class:`~cgcnn_ase.graph.element_table.ElementTable`, and identical periodic-image
edges optionally merged into weighted edges (:func:`merge_identical_edges`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.graph.element_table import ElementTable
from cgcnn_ase.graph.neighbours import CrystalGraph


def gaussian_expand(distances: torch.Tensor, config: GraphConfig) -> torch.Tensor:
    """Expand distances (Å, shape (E,)) into ``exp(-(d - μ_k)² / σ²)``, shape (E, n_gaussians), float32.

    Computed in float64 and then rounded, as the original did in numpy.
    """
    centers = torch.from_numpy(config.gaussian_centers).to(distances.device)
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
        edge_rows: ``None`` (``edge_fea`` has one row per edge), or the row of ``edge_fea`` of
            each edge, (E_total,), int64: then ``edge_fea`` holds one row per distinct edge length
            (:func:`collate` with ``distinct_distances``), typically a fifth of the edges of
            Materials Project crystals, whose symmetry repeats bond lengths.
            :meth:`edge_features` gives the per-edge rows either way.
    """

    atom_fea: torch.Tensor
    edge_fea: torch.Tensor
    centers: torch.Tensor
    neighbors: torch.Tensor
    crystal_index: torch.Tensor
    n_crystals: int
    edge_weight: torch.Tensor | None = None
    edge_rows: torch.Tensor | None = None

    def edge_features(self) -> torch.Tensor:
        """The Gaussian-expanded distance of every edge, (E_total, n_gaussians), float32."""
        return self.edge_fea if self.edge_rows is None else self.edge_fea.index_select(0, self.edge_rows)

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
            edge_rows=None if self.edge_rows is None else self.edge_rows.to(device),
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


#: Edge lengths that agree to this many decimals (Å) share one Gaussian expansion in a batch with
#: ``distinct_distances``. Rounding to 1e-9 Å moves a float32 feature by at most one rounding step
#: (6e-8; in 80% of the rows of 300 MP crystals by that much), within the fast networks' float32
#: tolerance; the training batches (``GraphBatcher(distinct_distances=True)``) group bit-identical
#: features instead.
DISTANCE_DECIMALS = 9


def collate(
    graphs: Sequence[CrystalGraph],
    elements: ElementTable,
    config: GraphConfig,
    *,
    merge_edges: bool = False,
    distinct_distances: bool = False,
) -> GraphBatch:
    """Stack graphs into one :class:`GraphBatch`, looking up element features.

    With ``merge_edges``, identical edges are merged (:func:`merge_identical_edges`) and
    the batch carries ``edge_weight``: the network computes the same result on fewer edges.
    With ``distinct_distances``, edge lengths equal to :data:`DISTANCE_DECIMALS` decimals are
    expanded once and the batch carries ``edge_rows``; networks whose edge products are linear
    in the edge features (the folded inference form) then compute them once per length.

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
    rows = None
    if distinct_distances:
        distances, rows = np.unique(np.round(distances, DISTANCE_DECIMALS), return_inverse=True)
    return GraphBatch(
        atom_fea=torch.from_numpy(elements.featurize(numbers)),
        edge_fea=gaussian_expand(torch.from_numpy(distances), config),
        centers=torch.from_numpy(centers),
        neighbors=torch.from_numpy(neighbors),
        crystal_index=torch.from_numpy(np.repeat(np.arange(len(graphs)), sizes)),
        n_crystals=len(graphs),
        edge_weight=None if weights is None else torch.from_numpy(weights),
        edge_rows=None if rows is None else torch.from_numpy(rows.astype(np.int64).reshape(-1)),
    )

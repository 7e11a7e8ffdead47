"""Batched graphs: the neighbour search and edge selection of many crystals at once, in torch.

:func:`batch_edges` builds the edges of a whole batch of crystals in a few vectorised torch calls, on
whatever device the inputs live on (a GPU's thousands of threads, or the CPU), with the edge sets of
:func:`~cgcnn_ase.graph.neighbours.build_graph`:

1. **Candidate pairs.** For every centre ``i`` and every atom ``j`` of the same crystal, only the
   periodic images ``s`` (integer cell shifts) whose fractional offset ``f_j - f_i + s`` can lie within
   the radius along each lattice direction are generated: ``|f + s|_k <= r / w_k`` with ``w_k`` the
   spacing of the lattice planes. Work is chunked (``max_pairs`` centre-atom pairs,
   ``max_candidates`` pair images), so memory stays bounded for any batch or supercell.
2. **Distances** ``|(f_j - f_i + s) · cell|`` in float64 (Å); pairs within the radius are kept, the atom
   itself (zero shift) excluded.
3. **Selection** per centre: the ``k``-th smallest distance by a linear-time selection, then the
   ``symmetric`` policy's tied shell (``d <= d_k + tie_tolerance``) or the ``original`` policy's first
   ``k`` (padded with edges to atom 0 at ``radius + 1`` Å).

Crystals this path cannot decide bit for bit are rebuilt with :func:`build_graph` (pymatgen's cell
list) and spliced in, so results never depend on the path: ``original``-policy crystals with a
distance tie at the ``k``-th slot (the original breaks it in pymatgen's pair order), and crystals
that raise or warn (overlapping or very close atoms: the same exception and message as
:func:`build_graph`). Sparse graphs are reported per crystal as by :func:`build_graph`.

:func:`collate_edges` then forms the network's :class:`~cgcnn_ase.graph.batch.GraphBatch` on the same
device: element features by table lookup, identical edges merged, Gaussian expansion.

Shapes: ``B`` crystals, ``N`` atoms in all, ``M`` pairs within the radius, ``E`` edges.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cgcnn_ase.errors import InvalidStructureError
from cgcnn_ase.graph.batch import GraphBatch, gaussian_expand
from cgcnn_ase.graph.config import GraphConfig, SparsePolicy
from cgcnn_ase.graph.neighbours import (
    CLOSE_ATOMS_FACTOR,
    MAX_SEARCH_CUBES,
    MIN_INTERATOMIC_DISTANCE,
    STRETCHED_FACTOR,
    CrystalGraph,
    _covalent_radii,
    build_graph,
    check_search_size,
    rounded_gap,
    sparse_check,
    wrapped_frac_coords,
)
from cgcnn_ase.io.records import PLANE_FAMILIES, REDUCED_SLACK, StructureRecord, vacuum_gap

#: Distances within this of the ``k``-th one (Å) count as a tie for the ``original`` policy, whose
#: tie order only pymatgen's pair order decides: such crystals are rebuilt by :func:`build_graph`.
ORIGINAL_TIE = 1e-9
#: Default chunk sizes per device type: (centre-atom pairs, pair images). A pair image costs about
#: 150 bytes of temporaries: 2^21 of them about 300 MB on a CPU, 2^24 about 2.5 GB on a GPU.
CHUNK_LIMITS = {"cpu": (1 << 21, 1 << 21), "cuda": (1 << 24, 1 << 24)}
#: Fractional slack on the per-direction image bound (no pair within the radius is ever missed).
_BOUND_SLACK = 1e-9


@dataclass(frozen=True)
class FlatCrystals:
    """A batch of crystals as flat arrays (the input of :func:`batch_edges`).

    Attributes:
        numbers: atomic numbers, (N,), int64.
        frac: fractional coordinates moved into the cell (:func:`wrapped_frac_coords`), (N, 3), float64.
        cells: lattice vectors as rows, Å, (B, 3, 3), float64.
        sizes: atoms per crystal, (B,), int64.
    """

    numbers: torch.Tensor
    frac: torch.Tensor
    cells: torch.Tensor
    sizes: torch.Tensor

    @classmethod
    def from_records(cls, records: Sequence[StructureRecord], *, pin: bool = False) -> FlatCrystals:
        """Stack records on the CPU (``pin``: in page-locked memory, for asynchronous copies to a GPU)."""
        arrays = (
            np.concatenate([r.numbers for r in records]).astype(np.int64),
            wrapped_frac_coords(np.concatenate([r.frac_coords for r in records])),  # elementwise: one call
            np.stack([np.asarray(r.cell, dtype=np.float64) for r in records]),
            np.array([len(r) for r in records], dtype=np.int64),
        )
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        if pin:
            tensors = [t.pin_memory() for t in tensors]
        return cls(*tensors)

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> FlatCrystals:
        """The same arrays on ``device``."""
        return FlatCrystals(*(t.to(device, non_blocking=non_blocking) for t in (self.numbers, self.frac, self.cells, self.sizes)))

    @functools.cached_property
    def offsets(self) -> torch.Tensor:
        """Global index of each crystal's first atom, (B,)."""
        return torch.cumsum(self.sizes, 0) - self.sizes

    @functools.cached_property
    def crystal_index(self) -> torch.Tensor:
        """Crystal of each atom, (N,) (computed once: on a GPU each computation waits for the device)."""
        return torch.repeat_interleave(
            torch.arange(len(self.sizes), device=self.sizes.device), self.sizes, output_size=len(self.numbers)
        )


@dataclass(frozen=True)
class BatchEdges:
    """The edges of a batch (global atom indices), sorted by centre, then distance.

    Attributes:
        centers, neighbors: (E,), int64. distances: (E,), float64, Å.
        n_sparse: atoms per crystal with fewer than ``max_neighbors`` neighbours in the radius, (B,), int64.
        bond_ratio: per crystal, its shortest edge over its atoms' covalent bond length (NaN: no edge),
            (B,), float64 (:func:`~cgcnn_ase.graph.neighbours.bond_ratio`).
    """

    centers: torch.Tensor
    neighbors: torch.Tensor
    distances: torch.Tensor
    n_sparse: torch.Tensor
    bond_ratio: torch.Tensor


@dataclass(frozen=True)
class GraphSummary:
    """What a prediction keeps of one crystal's graph built in a batch (a :class:`CrystalGraph` without edges).

    Attributes:
        numbers: atomic numbers, (N,). n_sparse: atoms short of ``max_neighbors`` neighbours. label: its name.
        bond_ratio: the shortest edge over its atoms' covalent bond length (:func:`~cgcnn_ase.graph.neighbours.bond_ratio`).
        vacuum_gap: the widest empty slab across the cell, Å (:func:`~cgcnn_ase.io.records.vacuum_gap`).
    """

    numbers: np.ndarray
    n_sparse: int
    label: str
    bond_ratio: float = math.nan
    vacuum_gap: float = math.nan

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)


def plane_spacings(cells: torch.Tensor) -> torch.Tensor:
    """Spacing of the lattice planes normal to each reciprocal direction, Å, (B, 3)."""
    return 1.0 / torch.linalg.inv(cells).norm(dim=1)


def _segments(counts: torch.Tensor, budget: int) -> list[tuple[int, int]]:
    """Split ``range(len(counts))`` into consecutive runs whose ``counts`` sum to at most ``budget``
    (a run holds at least one item, however large)."""
    if int(counts.sum()) <= budget:
        return [(0, len(counts))]
    cumulative = torch.cumsum(counts, 0).cpu().numpy()  # one loop step per run, not per item
    ends, start, base = [], 0, 0
    while start < len(counts):
        stop = max(int(np.searchsorted(cumulative, base + budget, side="right")), start + 1)
        ends.append((start, stop))
        start, base = stop, int(cumulative[stop - 1])
    return ends


def _expand(counts: torch.Tensor, first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For items ``first + q`` repeated ``counts[q]`` times: (item index, position within the item)."""
    total = int(counts.sum())
    device = counts.device
    item = torch.repeat_interleave(torch.arange(len(counts), device=device), counts, output_size=total)
    starts = torch.cumsum(counts, 0) - counts
    return item + first, torch.arange(total, device=device) - starts[item]


def _image_ranges(
    flat: FlatCrystals, centre: torch.Tensor, other: torch.Tensor, reach: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: fractional offset ``f_j - f_i`` (P, 3) and the smallest and number of integer shifts
    per direction that can bring atom ``j`` within the radius of atom ``i`` ((P, 3) each)."""
    f = flat.frac[other] - flat.frac[centre]
    r = reach[centre]  # (P, 3): radius / plane spacing, in cells
    lo = torch.ceil(-r - f)
    n = (torch.floor(r - f) - lo + 1).clamp_min(0).to(torch.int64)
    return f, lo, n


def _pairs_in_radius(
    flat: FlatCrystals, radius: float, max_pairs: int, max_candidates: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All ``(i, j, d)`` within ``radius`` (Å) of each other, periodic images included, self excluded,
    grouped by centre ``i`` (ascending)."""
    crystal = flat.crystal_index
    reach = (radius / plane_spacings(flat.cells) * (1 + _BOUND_SLACK) + _BOUND_SLACK)[crystal]  # (N, 3)
    per_centre = flat.sizes[crystal]
    offsets = flat.offsets[crystal]
    out_i, out_j, out_d = [], [], []
    for c0, c1 in _segments(per_centre, max_pairs):
        centre, local = _expand(per_centre[c0:c1], c0)
        other = offsets[centre] + local
        f, lo, n = _image_ranges(flat, centre, other, reach)
        images = n.prod(1)
        for p0, p1 in _segments(images, max_candidates):
            pair, m = _expand(images[p0:p1], p0)
            n1, n2 = n[pair, 1], n[pair, 2]
            shift = lo[pair] + torch.stack([m // (n1 * n2), (m // n2) % n1, m % n2], dim=1).to(lo.dtype)
            i, j = centre[pair], other[pair]
            x = f[pair] + shift  # fractional offset of the image, (Q, 3)
            cell = flat.cells[crystal[i]]  # (Q, 3, 3)
            vec = x[:, :1] * cell[:, 0] + x[:, 1:2] * cell[:, 1] + x[:, 2:] * cell[:, 2]
            d = torch.linalg.vector_norm(vec, dim=1)
            keep = (d <= radius) & ~((i == j) & (shift == 0).all(dim=1))
            out_i.append(i[keep])
            out_j.append(j[keep])
            out_d.append(d[keep])
    return torch.cat(out_i), torch.cat(out_j), torch.cat(out_d)


def _kth_smallest(i: torch.Tensor, d: torch.Tensor, counts: torch.Tensor, k: int) -> torch.Tensor:
    """Per centre, the ``k``-th smallest of its pair distances (``inf`` with fewer than ``k``), (N,)."""
    n_atoms = len(counts)
    kth = torch.full((n_atoms,), torch.inf, dtype=d.dtype, device=d.device)
    width = int(counts.max()) if n_atoms else 0
    if width < k:
        return kth
    starts = torch.cumsum(counts, 0) - counts
    table = torch.full((n_atoms, width), torch.inf, dtype=d.dtype, device=d.device)
    table[i, torch.arange(len(i), device=d.device) - starts[i]] = d
    return torch.where(counts >= k, table.kthvalue(k, dim=1).values, kth)


def _sort_by_centre_then_distance(*arrays: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(i, j, d)`` sorted by centre, then distance (stable: two stable sorts)."""
    i, j, d = arrays
    order = torch.sort(d, stable=True).indices
    order = order[torch.sort(i[order], stable=True).indices]
    return i[order], j[order], d[order]


def _flagged(flat: FlatCrystals, i: torch.Tensor, j: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Crystals (B,) bool that :func:`build_graph` would refuse or warn about: some pair closer than
    :data:`MIN_INTERATOMIC_DISTANCE` or than :data:`CLOSE_ATOMS_FACTOR` x its covalent bond length."""
    radii = torch.from_numpy(_covalent_radii().copy()).to(d.device)
    z = flat.numbers.clamp(max=len(radii) - 1)
    bond = radii[z[i]] + radii[z[j]]
    close = (d < MIN_INTERATOMIC_DISTANCE) | ((bond > 0) & (d < CLOSE_ATOMS_FACTOR * bond))
    crystal = flat.crystal_index
    flags = torch.zeros(len(flat.sizes), dtype=torch.bool, device=d.device)
    flags[crystal[i[close]]] = True
    return flags


def vacuum_gaps(flat: FlatCrystals) -> torch.Tensor:
    """Per crystal (B,), float64, Å: the widest empty slab across its cell, as
    :func:`~cgcnn_ase.io.records.vacuum_gap` computes it for one record, for the whole batch at once
    on its device (two stable sorts per plane family group the atoms by crystal, in order of
    their coordinate across the planes)."""
    families = torch.as_tensor(PLANE_FAMILIES, dtype=flat.frac.dtype, device=flat.frac.device)  # (13, 3)
    frac = torch.remainder(flat.frac @ families.T, 1.0)  # (N, 13): each atom's place in each plane family
    crystal = flat.crystal_index  # non-decreasing
    by_frac = torch.argsort(frac, dim=0, stable=True)
    order = torch.gather(by_frac, 0, torch.argsort(crystal[by_frac], dim=0, stable=True))
    s = torch.gather(frac, 0, order)  # each crystal's rows in place, each column ascending within it
    n_crystals = len(flat.sizes)
    gaps = torch.zeros((n_crystals, len(families)), dtype=frac.dtype, device=frac.device)
    if len(frac) > 1:
        same = (crystal[1:] == crystal[:-1]).unsqueeze(1)
        inner = torch.where(same, s[1:] - s[:-1], torch.zeros_like(s[1:]))
        gaps = gaps.scatter_reduce(0, crystal[1:].unsqueeze(1).expand(-1, len(families)), inner, reduce="amax")
    first, last = flat.offsets, flat.offsets + flat.sizes - 1
    gaps = torch.maximum(gaps, s[first] + 1.0 - s[last])  # the wrap-around gap
    spacing = 1.0 / (torch.linalg.inv(flat.cells) @ families.T).square().sum(dim=1).sqrt()  # (B, 13): plane distances, Å
    widest = (gaps * spacing).max(dim=1).values
    gram = flat.cells @ flat.cells.transpose(1, 2)  # (B, 3, 3): nearly_reduced's test for the whole batch
    far = torch.zeros(n_crystals, dtype=torch.bool, device=gram.device)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        bound = 0.5 * torch.minimum(gram[:, i, i], gram[:, j, j]) * (1.0 + REDUCED_SLACK)
        far |= gram[:, i, j].abs() > bound
    for b in far.nonzero().flatten().tolist():  # rare: measured in the reduced cell, as one record is
        rows = slice(int(flat.offsets[b]), int(flat.offsets[b] + flat.sizes[b]))
        widest[b] = vacuum_gap(flat.frac[rows].detach().cpu().numpy(), flat.cells[b].detach().cpu().numpy())[0]
    return widest


def _bond_ratios(flat: FlatCrystals, i: torch.Tensor, j: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Per crystal (B,), its shortest edge ``(i, j, d)`` over the atoms' covalent bond length, as
    :func:`~cgcnn_ase.graph.neighbours.bond_ratio` computes it from a graph's edges (NaN: no edge)."""
    radii = torch.from_numpy(_covalent_radii().copy()).to(d.device)
    z = flat.numbers.clamp(max=len(radii) - 1)
    bond = radii[z[i]] + radii[z[j]]
    ratio = torch.where(bond > 0, d / bond.clamp(min=1e-12), torch.full_like(d, math.inf))
    closest = torch.full((len(flat.sizes),), math.inf, dtype=d.dtype, device=d.device)
    closest = closest.scatter_reduce(0, flat.crystal_index[i], ratio, reduce="amin")
    return torch.where(torch.isfinite(closest), closest, torch.full_like(closest, math.nan))


def _select(
    flat: FlatCrystals, i: torch.Tensor, j: torch.Tensor, d: torch.Tensor, config: GraphConfig
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
    """The neighbour policy on all pairs in the radius: kept ``(i, j, d)`` sorted by centre and
    distance, pairs per centre (N,), and the crystals (B,) whose ``original`` selection hangs on a tie."""
    k = config.max_neighbors
    n_atoms = len(flat.numbers)
    counts = torch.bincount(i, minlength=n_atoms)
    kth = _kth_smallest(i, d, counts, k)
    tied = torch.zeros(len(flat.sizes), dtype=torch.bool, device=d.device)
    if config.neighbor_policy == "symmetric":
        keep = d <= kth[i] + config.tie_tolerance
        return _sort_by_centre_then_distance(i[keep], j[keep], d[keep]), counts, tied
    near = torch.bincount(i[d <= kth[i] + ORIGINAL_TIE], minlength=n_atoms)
    tied[flat.crystal_index[(counts > k) & (near > k)]] = True
    keep = d <= kth[i]
    i, j, d = i[keep], j[keep], d[keep]
    missing = (k - counts).clamp_min(0)
    pad_i = torch.repeat_interleave(torch.arange(n_atoms, device=d.device), missing)
    pad_j = flat.offsets[flat.crystal_index[pad_i]]  # atom 0 of the centre's crystal
    pad_d = torch.full(pad_i.shape, config.radius + 1.0, dtype=d.dtype, device=d.device)
    merged = (torch.cat([i, pad_i]), torch.cat([j, pad_j]), torch.cat([d, pad_d]))
    return _sort_by_centre_then_distance(*merged), counts, tied


def _splice(
    flat: FlatCrystals, edges: tuple[torch.Tensor, ...], graphs: dict[int, CrystalGraph | None]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace the edges of crystals ``graphs`` (index -> :class:`CrystalGraph`, or ``None``: no edges) by theirs."""
    i, j, d = edges
    crystal = flat.crystal_index
    redo = torch.zeros(len(flat.sizes), dtype=torch.bool, device=d.device)
    redo[list(graphs)] = True
    keep = ~redo[crystal[i]]
    parts_i, parts_j, parts_d = [i[keep]], [j[keep]], [d[keep]]
    offsets = flat.offsets.tolist()
    for b, g in graphs.items():
        if g is None:
            continue
        parts_i.append(torch.as_tensor(g.centers + offsets[b], device=d.device))
        parts_j.append(torch.as_tensor(g.neighbors + offsets[b], device=d.device))
        parts_d.append(torch.as_tensor(g.distances, dtype=d.dtype, device=d.device))
    i, j, d = torch.cat(parts_i), torch.cat(parts_j), torch.cat(parts_d)
    order = torch.sort(i, stable=True).indices  # spliced crystals' own order (centre, distance) kept
    return i[order], j[order], d[order]


def batch_edges(
    records: Sequence[StructureRecord],
    config: GraphConfig,
    *,
    device: torch.device | str = "cpu",
    flat: FlatCrystals | None = None,
    max_pairs: int | None = None,
    max_candidates: int | None = None,
) -> tuple[FlatCrystals, BatchEdges, dict[int, InvalidStructureError]]:
    """The edges of ``records`` built together on ``device``: those of :func:`build_graph` for each.

    Args:
        records: validated structures.
        config: graph settings (radius in Å, neighbour count, policy, tie tolerance).
        device: where to compute (the arrays of ``flat`` when it is given).
        flat: ``records`` already stacked (and moved) with :meth:`FlatCrystals.from_records`.
        max_pairs: memory bound: centre-atom pairs per chunk (``None``: :data:`CHUNK_LIMITS` of the device).
        max_candidates: memory bound: pair images per chunk, about 150 bytes each (``None``: as above).

    Returns:
        ``(flat, edges, errors)``: the stacked crystals on ``device``, the edges of every crystal
        that could be built, and ``{index: error}`` for the others (overlapping atoms, atoms spread too far
        for the per-structure search; their edges are absent). Warnings are those of :func:`build_graph` (close atoms; sparse graphs are left to
        the caller: ``edges.n_sparse``).
    """
    if not records:
        raise ValueError("batch_edges needs at least one structure")
    if flat is None:
        flat = FlatCrystals.from_records(records, pin=torch.device(device).type == "cuda").to(device, non_blocking=True)
    default_pairs, default_candidates = CHUNK_LIMITS.get(flat.frac.device.type, CHUNK_LIMITS["cpu"])
    i, j, d = _pairs_in_radius(flat, float(config.radius), max_pairs or default_pairs, max_candidates or default_candidates)
    edges, counts, tied = _select(flat, i, j, d, config)
    ratios = _bond_ratios(flat, *edges)
    redo_mask = tied | _flagged(flat, i, j, d) | (ratios > STRETCHED_FACTOR)  # build_graph warns for these
    graphs: dict[int, CrystalGraph | None] = {}
    errors: dict[int, InvalidStructureError] = {}
    radius = float(config.radius)
    bound = torch.ceil((flat.cells.abs().sum(dim=1) + 2 * radius) / radius).prod(dim=1)  # search_cubes' cell bound
    for b in torch.nonzero(bound > MAX_SEARCH_CUBES).flatten().tolist():  # refused as build_graph refuses them
        try:
            check_search_size(records[b], radius)
        except InvalidStructureError as exc:
            errors[b], graphs[b] = exc, None
    for b in torch.nonzero(redo_mask).flatten().tolist():
        if b in errors:
            continue
        try:
            graphs[b] = build_graph(records[b], config, on_sparse="ignore")
        except InvalidStructureError as exc:
            errors[b] = exc
            graphs[b] = None
    if graphs:
        edges = _splice(flat, edges, graphs)
    sparse_atoms = (counts < config.max_neighbors).to(torch.int64)
    n_sparse = torch.zeros(len(flat.sizes), dtype=torch.int64, device=d.device).index_add_(0, flat.crystal_index, sparse_atoms)
    return flat, BatchEdges(*edges, n_sparse=n_sparse, bond_ratio=ratios), errors


def report_sparse(
    records: Sequence[StructureRecord],
    n_sparse: torch.Tensor,
    config: GraphConfig,
    on_sparse: SparsePolicy,
    refused_already: Collection[int] = (),
) -> dict[int, InvalidStructureError]:
    """Apply ``on_sparse`` per crystal as :func:`build_graph` does: warnings issued here, and
    ``{index: SparseGraphError}`` for the crystals refused with ``on_sparse="error"``; nothing for the crystals
    of ``refused_already`` (their edges were left out: no sparse warning on top of their error)."""
    refused: dict[int, InvalidStructureError] = {}
    if on_sparse == "ignore":
        return refused
    counts = n_sparse.tolist()
    for b in (b for b, n in enumerate(counts) if n and b not in refused_already):
        try:
            sparse_check(records[b], counts[b], config, on_sparse, stacklevel=4)
        except InvalidStructureError as exc:  # SparseGraphError
            refused[b] = exc
    return refused


def graph_batch(
    records: Sequence[StructureRecord],
    config: GraphConfig,
    features: torch.Tensor,
    *,
    on_sparse: SparsePolicy = "warn",
    merge_edges: bool = True,
) -> tuple[GraphBatch | None, list[GraphSummary | InvalidStructureError]]:
    """The network input of ``records``, built on the device of ``features`` (the element table).

    Returns ``(batch, items)``: the batch of the usable crystals in order (``None`` when there is
    none), and per record its :class:`GraphSummary`, or the error that made it unusable
    (overlapping atoms, a sparse graph under ``on_sparse="error"``). Warnings as
    :func:`build_graph` gives them.
    """
    flat, edges, errors = batch_edges(records, config, device=features.device)
    errors.update(report_sparse(records, edges.n_sparse, config, on_sparse, errors))
    n_sparse = edges.n_sparse.tolist()
    ratios = edges.bond_ratio.tolist()
    gaps = [rounded_gap(g) for g in vacuum_gaps(flat).tolist()]
    items: list[GraphSummary | InvalidStructureError] = [
        errors.get(b)
        or GraphSummary(numbers=r.numbers, n_sparse=n_sparse[b], label=r.label, bond_ratio=ratios[b], vacuum_gap=gaps[b])
        for b, r in enumerate(records)
    ]
    used = [b for b in range(len(records)) if b not in errors]
    if not used:
        return None, items
    if errors:  # rare: build the others again without them (their edges are identical)
        flat, edges, _ = batch_edges([records[b] for b in used], config, device=features.device)
    return collate_edges(flat, edges, features, config, merge_edges=merge_edges), items


def collate_edges(
    flat: FlatCrystals, edges: BatchEdges, features: torch.Tensor, config: GraphConfig, *, merge_edges: bool = True
) -> GraphBatch:
    """The network input of a batch from its edges, on their device.

    Args:
        flat: the crystals (on the device).
        edges: their edges (:func:`batch_edges`).
        features: element feature table on the device, (max_Z + 1, n_features), float32
            (``torch.from_numpy(ElementTable.features)``); elements must have been checked.
        merge_edges: merge identical edges into weighted ones, as
            :func:`~cgcnn_ase.graph.batch.merge_identical_edges` does.
    """
    centers, neighbors, distances = edges.centers, edges.neighbors, edges.distances
    weights = None
    if merge_edges and len(distances):
        rounded = torch.round(distances, decimals=9)
        order = torch.sort(rounded, stable=True).indices
        order = order[torch.sort(neighbors[order], stable=True).indices]
        order = order[torch.sort(centers[order], stable=True).indices]
        c, nb, r = centers[order], neighbors[order], rounded[order]
        first = torch.ones(len(order), dtype=torch.bool, device=order.device)
        first[1:] = (c[1:] != c[:-1]) | (nb[1:] != nb[:-1]) | (r[1:] != r[:-1])
        starts = torch.nonzero(first).flatten()
        weights = torch.diff(starts, append=starts.new_tensor([len(order)])).to(torch.float32)
        keep = order[starts]
        centers, neighbors, distances = centers[keep], neighbors[keep], distances[keep]
    return GraphBatch(
        atom_fea=features[flat.numbers],
        edge_fea=gaussian_expand(distances, config),
        centers=centers,
        neighbors=neighbors,
        crystal_index=flat.crystal_index,
        n_crystals=len(flat.sizes),
        edge_weight=weights,
    )


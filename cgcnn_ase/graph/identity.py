"""Which crystals of a set have the same crystal graph, so that a network cannot tell them apart.

A training table may hold one crystal twice, written differently (a CIF from one database and a POSCAR from
another, another cell setting, a supercell, coordinates at another precision): text digests miss such copies,
and a test crystal that is a copy of a training one makes the test error optimistic. Two crystals are taken to
be the same here when their graphs are (:func:`same_graph_groups`):

* the same elements and neighbour lists up to relabelling the atoms, four neighbour shells deep (a
  Weisfeiler-Lehman refinement as deep as the shipped networks' four convolutions; a supercell counts as its
  cell);
* every edge length (sorted) within ``tolerance`` Å of its partner's.

The check works on the flat arrays of :class:`~cgcnn_ase.train.cache.GraphStore` in a few numpy passes (seconds
for the 34,233 MP crystals, ``benchmarks/dataset_copies.py``). Crystals whose tied neighbour shell splits
differently (a displacement near the 1e-3 Å tie tolerance, ``benchmarks/tie_sensitivity.py``: rounding to 4
decimals moves 1.2% of MP crystals by more than 5 meV/atom) have different edge counts and are not matched.

Such groups are crystals a network cannot tell apart, not always one crystal: polymorphs whose first shells
agree (zincblende and wurtzite, fcc and hcp, SiC polytypes) and strain series within 0.01 Å share graphs (round
27). :func:`same_crystal_groups` keeps the members that pymatgen's ``StructureMatcher`` also finds to be one
structure at tight tolerances (0.1% in lattice lengths, 0.1° in angles, sites within 0.002 of the cube root of the
volume per atom): copies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: Edge lengths of two crystals taken as one graph may differ by this much (Å): far below the 0.2 Å width of the
#: networks' Gaussian distance expansion, above what writing coordinates at 4-6 decimals changes.
SAME_GRAPH_TOLERANCE = 0.01
_ROUNDS = 4
#: Clusters a crystal is compared with at most, the nearest in mean edge length first (see :func:`_clusters`).
_MAX_COMPARED = 64


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic): a well-spread hash of each value."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def graph_hashes(
    numbers: np.ndarray, atom_offsets: np.ndarray, centers: np.ndarray, neighbors: np.ndarray, edge_offsets: np.ndarray
) -> np.ndarray:
    """A 64-bit hash per crystal of its elements and neighbour lists (edge lengths left out), equal for
    permuted atoms and for supercells.

    Args:
        numbers: atomic numbers of all crystals' atoms, shape (N,).
        atom_offsets: crystal ``k``'s atoms are ``[atom_offsets[k]:atom_offsets[k+1]]``, shape (n+1,).
        centers, neighbors: edge end points, local to their crystal, shape (E,).
        edge_offsets: crystal ``k``'s edges are ``[edge_offsets[k]:edge_offsets[k+1]]``, shape (n+1,).

    Returns:
        uint64 array, shape (n,).
    """
    n = len(atom_offsets) - 1
    atom_crystal = np.repeat(np.arange(n), np.diff(atom_offsets))
    edge_start = np.repeat(np.asarray(atom_offsets[:-1], dtype=np.int64), np.diff(edge_offsets))
    i = np.asarray(centers, dtype=np.int64) + edge_start
    j = np.asarray(neighbors, dtype=np.int64) + edge_start
    labels = _mix(np.asarray(numbers, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    for _ in range(_ROUNDS):  # each atom's label takes in the multiset of its neighbours' labels (a sum of hashes)
        gathered = np.zeros(len(labels), dtype=np.uint64)
        np.add.at(gathered, i, _mix(labels[j] ^ np.uint64(0x632BE59BD9B4E019)))
        with np.errstate(over="ignore"):
            labels = _mix(labels * np.uint64(0x100000001B3) + gathered)
    pairs, counts = np.unique(np.stack([atom_crystal.astype(np.uint64), labels], axis=1), axis=0, return_counts=True)
    owner = pairs[:, 0].astype(np.int64)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    divisor = np.repeat(np.gcd.reduceat(counts, starts), np.diff(np.r_[starts, len(owner)]))  # a supercell's counts
    hashes = np.zeros(n, dtype=np.uint64)
    np.add.at(hashes, owner, _mix(pairs[:, 1] ^ _mix((counts // divisor).astype(np.uint64))))
    return hashes


def _same_lengths(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    """Sorted edge lengths ``a`` and ``b`` (Å) agree within ``tolerance``, one a whole multiple of the other."""
    if len(a) == 0 or len(b) == 0:
        return len(a) == len(b)
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    if len(long) % len(short):
        return False
    return bool(np.all(np.abs(np.repeat(short, len(long) // len(short)) - long) <= tolerance))


def same_graph_groups(
    numbers: np.ndarray, atom_offsets: np.ndarray, centers: np.ndarray, neighbors: np.ndarray,
    distances: np.ndarray, edge_offsets: np.ndarray, *, tolerance: float = SAME_GRAPH_TOLERANCE,
) -> list[list[int]]:  # fmt: skip
    """Groups (two or more crystals each, indices ascending, groups by their first index) of crystals with the
    same graph: the same :func:`graph_hashes` and edge lengths within ``tolerance`` Å. Arguments as
    :func:`graph_hashes`; ``distances``: edge lengths, Å, shape (E,)."""
    hashes = graph_hashes(numbers, atom_offsets, centers, neighbors, edge_offsets)
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    candidates: dict[int, list[int]] = {}
    for k in np.flatnonzero(counts[inverse] > 1):
        candidates.setdefault(int(inverse[k]), []).append(int(k))
    groups: list[list[int]] = []
    for members in candidates.values():
        groups.extend(_clusters(members, distances, edge_offsets, tolerance))
    return sorted(sorted(group) for group in groups)


def _clusters(members: list[int], distances: np.ndarray, edge_offsets: np.ndarray, tolerance: float) -> list[list[int]]:
    """The crystals of one hash that share their edge lengths, in groups of two or more. Taken in order of their
    mean edge length, each is compared with the latest clusters whose mean lies within ``tolerance`` (lengths within
    it have means within it), at most :data:`_MAX_COMPARED` of them: a set of many snapshots of one crystal (one
    hash, every mean close) stays linear in time (round 25)."""
    lengths = [np.sort(distances[edge_offsets[k]:edge_offsets[k + 1]]) for k in members]
    means = [float(x.mean()) if len(x) else 0.0 for x in lengths]
    clusters: list[tuple[float, np.ndarray, list[int]]] = []  # (mean, lengths, members), means ascending
    for j in sorted(range(len(members)), key=means.__getitem__):
        home = None
        for mean, reference, ids in reversed(clusters[-_MAX_COMPARED:]):
            if mean < means[j] - tolerance:
                break
            if _same_lengths(reference, lengths[j], tolerance):
                home = ids
                break
        if home is None:
            clusters.append((means[j], lengths[j], [members[j]]))
        else:
            home.append(members[j])
    return [ids for _, _, ids in clusters if len(ids) > 1]


#: StructureMatcher tolerances of :func:`same_crystal_groups`: copies written at another precision match, a 0.3%
#: strain or another polymorph does not.
MATCH_TOLERANCES = {"ltol": 1e-3, "stol": 2e-3, "angle_tol": 0.1}


def same_crystal_groups(groups: list[list[int]], structure: Callable[[int], Any]) -> list[list[int]]:
    """The members of each graph group (:func:`same_graph_groups`) that are one crystal: pymatgen's
    ``StructureMatcher`` at :data:`MATCH_TOLERANCES`, any cell and setting, no scaling. ``structure(k)`` gives
    crystal ``k`` as a pymatgen ``Structure`` (``None``: left out). Groups of two or more, as given."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher(**MATCH_TOLERANCES, primitive_cell=True, scale=False, attempt_supercell=True)
    out: list[list[int]] = []
    for group in groups:
        members = [(k, structure(k)) for k in group]
        members = [(k, s) for k, s in members if s is not None]
        if len(members) < 2:
            continue
        position = {id(s): k for k, s in members}
        for matched in matcher.group_structures([s for _, s in members]):
            if len(matched) > 1:
                out.append(sorted(position[id(s)] for s in matched))
    return sorted(out)

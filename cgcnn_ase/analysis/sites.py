"""Site energies: per-site model contributions by element, Wyckoff position and perovskite role.

This is the analysis of Fig. 3 of Xie & Grossman, PRL 120, 145301 (2018) as a library. A CGCNN
with the atomwise readout predicts the mean of one scalar per atom, so each scalar is the
model's contribution of that atom's local environment (its "site energy" for an energy model).
Averaged per element over the A and B sites of ABX3 perovskites, these show which elements the
model finds favourable on which site; adding them up screens new compositions.

>>> from cgcnn_ase.analysis.sites import site_contributions, aggregate_by_element
>>> from cgcnn_ase.analysis.screening import screen_perovskites
>>> df = site_contributions(predictor, structures)                      # doctest: +SKIP
>>> table = aggregate_by_element(df)                                    # doctest: +SKIP
>>> screen_perovskites(table, x="O", cutoff=0.0).summary()              # doctest: +SKIP

Functions:
    site_contributions: one row per site (element, Wyckoff label, role, contribution).
    perovskite_roles / wyckoff_labels: the per-site labels on their own.
    aggregate_by_element: mean, std, count per (role, element).
    :mod:`.site_maps`: periodic-table heat maps and ``write_site_report`` (the ``cgcnn-ase sites`` command).
    :mod:`.screening`: the additive combinatorial screen of A x B x X compositions, scored against DFT.
    :mod:`.site_members`: every ensemble member's (seed's) site energies, their seed mean and spread,
        and the ``x_share`` / ``additive`` site-energy definitions.
    :mod:`.site_trends`: the paper's three trends as numbers, against the data's per-element means.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cgcnn_ase.errors import InvalidStructureError, SiteAnalysisError
from cgcnn_ase.inference.predictor import as_predictor
from cgcnn_ase.io.reader import iter_records
from cgcnn_ase.io.records import StructureRecord
from cgcnn_ase.warning_blocks import catch_warnings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cgcnn_ase.inference.predictor import CGCNNPredictor

logger = logging.getLogger(__name__)

RoleMode = Literal["auto", "perovskite", "wyckoff"]

#: Columns of :func:`site_contributions`, in order.
SITE_COLUMNS = ("structure", "formula", "site", "element", "Z", "wyckoff", "role", "contribution", "prediction", "kind",
                "unseen", "domain_percentile")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Per-site labels: Wyckoff positions and perovskite roles
# ---------------------------------------------------------------------------------------------


def wyckoff_labels(record: StructureRecord, *, symprec: float = 0.01) -> list[str] | None:
    """Wyckoff position of every site, with its multiplicity, e.g. ``["1a", "1b", "3c", "3c", "3c"]``.

    Uses spglib's symmetry dataset (the same one pymatgen's ``SpacegroupAnalyzer`` wraps). Letters
    refer to spglib's standardised setting of the space group; the multiplicity is that of the
    Wyckoff position in the conventional cell of the International Tables, whatever the input cell
    (a 2x2x2 supercell of cubic SrTiO3 still gives ``1a``/``1b``/``3c``, not ``8a``). Where the space group
    has equivalent origins, the letters follow the one spglib picks for the input: rocksalt NaCl shifted by
    half a cell puts Na on ``4b`` and Cl on ``4a`` instead of the reverse, so compare Wyckoff labels within a
    structure, or group by element (perovskite roles do not depend on the origin).

    Args:
        record: the crystal.
        symprec: distance tolerance of the symmetry search, Å (pymatgen's default 0.01;
            0.1 suits noisy relaxed structures).

    Returns:
        One label per site, or ``None`` when the symmetry analysis fails.
    """
    import spglib

    cell = (record.cell, np.mod(record.frac_coords, 1.0), record.numbers)
    # spglib's C code may print "spglib: ... failed." to stderr on routine fallbacks; only the
    # environment variable SPGLIB_WARNING=OFF silences it. A library must not change the process
    # environment, so that is left to the application (the cgcnn-ase command sets it).
    try:
        with catch_warnings():
            warnings.simplefilter("ignore")
            data = spglib.get_symmetry_dataset(cell, symprec=symprec)
    except Exception as exc:  # noqa: BLE001 - spglib raises its own error types on failure in newer versions
        logger.debug("%s: symmetry analysis failed (%s)", record.label, exc)
        return None
    if data is None:
        return None

    def field(name: str) -> Any:
        try:
            return getattr(data, name)  # spglib >= 2.5: a dataclass
        except AttributeError:
            return data[name]  # older spglib: a dict

    letters = list(field("wyckoffs"))
    try:  # orbits under the primitive cell's operations (equivalent_atoms misses some in rotated supercells)
        orbits = np.asarray(field("crystallographic_orbits"))
    except (AttributeError, KeyError):  # pragma: no cover - spglib < 1.15
        orbits = np.asarray(field("equivalent_atoms"))
    n_std = len(field("std_types"))
    n = len(record)
    labels = []
    for i in range(n):
        size = int(np.sum(orbits == orbits[i]))
        labels.append(f"{int(round(size * n_std / n))}{letters[i]}")
    return labels


def _anion_sites(numbers: np.ndarray, k: int) -> np.ndarray | None:
    """Boolean mask of the 3k X sites: the most electronegative elements, whole elements at a time.

    For ABX3 with one X element this is the element with three atoms per formula unit; for mixed
    anions (ABO2N, ABOFN, ...) the two or three most electronegative elements. ``None`` when the
    most electronegative elements do not add up to exactly 3k atoms.
    """
    from pymatgen.core import Element

    elements, counts = np.unique(numbers, return_counts=True)
    with catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for elements without a Pauling value (He, Ne, Ar)
        negativity = np.array([Element.from_Z(int(z)).X for z in elements], dtype=float)
    negativity = np.nan_to_num(negativity, nan=0.0)  # noble gases: no Pauling value, never an anion here
    total = 0
    anions = []
    for index in np.argsort(-negativity, kind="stable"):
        total += int(counts[index])
        anions.append(elements[index])
        if total >= 3 * k:
            break
    if total != 3 * k:
        return None
    return np.isin(numbers, anions)


def _neighbor_table(record: StructureRecord, targets: np.ndarray, n_nearest: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices (N, n_nearest) of each atom's nearest neighbours among ``targets`` (mask).

    Periodic images count as separate neighbours (in a 5-atom cubic cell, B's six X neighbours
    are three atoms, each seen twice).
    """
    from vesin import NeighborList

    n = len(record)
    radius = 2.0 * (record.volume / n) ** (1.0 / 3.0)
    for _ in range(10):
        i, j, d = NeighborList(cutoff=radius, full_list=True).compute(
            points=record.positions, box=record.cell, periodic=True, quantities="ijd"
        )
        i, j = i.astype(np.int64), j.astype(np.int64)
        keep = targets[j]
        i, j, d = i[keep], j[keep], d[keep]
        counts = np.bincount(i, minlength=n)
        if counts.min() >= n_nearest:
            break
        radius *= 1.5
    else:  # pragma: no cover - only for absurdly sparse cells
        raise InvalidStructureError(f"{record.label}: could not find {n_nearest} neighbours per atom")
    order = np.lexsort((d, i))  # by atom, then distance
    i, j, d = i[order], j[order], d[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = starts[:, None] + np.arange(n_nearest)[None, :]
    return d[take], j[take]


#: Fractional positions of the ideal cubic perovskite's A, B and three X sites.
_IDEAL_SITES = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], dtype=float)
_IDEAL_ROLES = np.array(["A", "B", "X", "X", "X"], dtype=object)
#: rule 1 of :func:`perovskite_roles`: a match with an RMS displacement up to this many lattice
#: constants is a distorted perovskite whatever the direction of the displacements ...
_NEAR_IDEAL_RMS = 0.1
#: ... a larger one (up to ``max_rms``) only when the atoms slid along one cube axis: along the other
#: two, every atom stays this close (lattice constants) to the half-cube grid of the ideal sites.
_GRID_TOL = 0.05


def _cube_bases(cell: np.ndarray, k: int, *, cell_tol: float) -> list[np.ndarray]:
    """Every near-cubic lattice that holds the cell's lattice with index ``k``, as a basis (3, 3), Å.

    The cube's reciprocal vectors are vectors of the cell's reciprocal lattice (the cell's lattice
    is a sublattice of the cube's), so they are found among the reciprocal lattice vectors of
    length about ``1/a``, with ``a = (V / k)^(1/3)`` (Å): the result does not depend on the basis,
    supercell shape, orientation or axis order of the cell. Accepted: rows within ``cell_tol`` of
    length ``a`` whose angles have ``|cos|`` up to ``cell_tol``. Usually one basis; coincidence
    lattices (e.g. a 5 x 5 x 1 supercell) can give a few. ``cell`` should be reduced (short rows):
    the search box grows with the lengths of its rows.
    """
    a = (abs(np.linalg.det(cell)) / k) ** (1.0 / 3.0)
    reciprocal = np.linalg.inv(cell).T  # rows: cell[i] @ reciprocal[j] == delta_ij
    loose = 3.0 * cell_tol  # the reciprocal of a cube within cell_tol is a cube within about 2 cell_tol
    bound = np.ceil((1.0 + loose) / a * np.linalg.norm(cell, axis=1)).astype(int)  # |n_i| <= |g| |cell_i|
    n = np.stack(np.meshgrid(*(np.arange(-b, b + 1) for b in bound), indexing="ij"), axis=-1).reshape(-1, 3)
    n = n[(n[:, 0] > 0) | ((n[:, 0] == 0) & ((n[:, 1] > 0) | ((n[:, 1] == 0) & (n[:, 2] > 0))))]  # one of +-g
    g = n @ reciprocal
    keep = np.abs(np.linalg.norm(g, axis=1) * a - 1.0) <= loose
    n, g = n[keep], g[keep]
    unit = g / np.linalg.norm(g, axis=1, keepdims=True)
    orthogonal = np.abs(unit @ unit.T) <= loose
    bases = []
    for i, j in zip(*np.nonzero(np.triu(orthogonal, 1))):
        for m in np.flatnonzero(orthogonal[i] & orthogonal[j]):
            if m <= j or round(abs(np.linalg.det(n[[i, j, m]]))) != k:
                continue
            cube = np.linalg.inv(g[[i, j, m]]).T
            lengths = np.linalg.norm(cube, axis=1)
            cosines = [cube[p] @ cube[q] / (lengths[p] * lengths[q]) for p, q in ((0, 1), (0, 2), (1, 2))]
            if max(abs(c) for c in cosines) <= cell_tol and np.all(np.abs(lengths / a - 1.0) <= cell_tol):
                bases.append(cube)
    return bases


def _cube_template(cell: np.ndarray, cube: np.ndarray) -> np.ndarray:
    """Fractional coordinates (in ``cell``) of the ideal sites of the k cubes in the cell (5k, 3).

    ``cell = M @ cube`` with integer ``M``; the k cubes are the cosets of the cell's lattice in the
    cube's, found by stepping along the cube axes until no new cube turns up.
    """
    m = np.rint(cell @ np.linalg.inv(cube)).astype(int)
    k = round(abs(float(np.linalg.det(m))))
    inverse = np.linalg.inv(m)  # cube coordinates -> cell fractions; entries are multiples of 1/k
    seen = {(0, 0, 0)}
    origins, todo = [np.zeros(3, dtype=int)], [np.zeros(3, dtype=int)]
    while todo:
        origin = todo.pop()
        for step in np.eye(3, dtype=int):
            nxt = origin + step
            key = tuple(np.mod(np.rint(nxt @ inverse * k).astype(int), k))
            if key not in seen:
                seen.add(key)
                origins.append(nxt)
                todo.append(nxt)
    return ((np.array(origins)[:, None, :] + _IDEAL_SITES[None, :, :]) @ inverse).reshape(-1, 3)


def _ideal_cubic_roles(
    record: StructureRecord, is_x: np.ndarray, *, cell_tol: float, max_rms: float
) -> list[str] | None:
    """A/B by the best match to an ideal cubic perovskite in the same cell (X fixed), or ``None``.

    Applies to cells whose lattice is a sublattice of a near-cubic one holding one ABX3 unit per
    cube (:func:`_cube_bases`), in any basis. Atoms are assigned one-to-one to the ideal sites
    (Hungarian algorithm; X atoms to X sites, cations to A/B sites) under the rigid translation
    that minimises the squared displacements.
    """
    from ase.geometry.minkowski_reduction import minkowski_reduce

    n = len(record)
    k = n // 5
    # the same lattice in its most compact basis, where rounding fractional differences finds the
    # nearest periodic image (in a sheared basis it does not)
    cell, _ = minkowski_reduce(record.cell)
    a = (record.volume / k) ** (1.0 / 3.0)
    template_roles = np.tile(_IDEAL_ROLES, k)
    forbidden = is_x[:, None] != (template_roles == "X")[None, :]
    frac = np.mod(record.positions @ np.linalg.inv(cell), 1.0)
    first = int(np.flatnonzero(~is_x)[0])
    best: tuple[float, Any, Any, Any] = (np.inf, None, None, None)
    for cube in _cube_bases(cell, k, cell_tol=cell_tol):
        template = _cube_template(cell, cube)
        total, cols = _match(frac, template, forbidden, cell @ cell.T, first)
        if total < best[0]:
            best = (total, cols, cube, template)
    total, cols, cube, template = best
    if cols is None:
        return None
    rms = np.sqrt(total / n)
    if rms > max_rms * a:
        return None
    if rms > _NEAR_IDEAL_RMS * a:  # only atoms that slid along one axis (see perovskite_roles)
        in_cubes = cell @ np.linalg.inv(cube)  # cell axes in cube axes (integers)
        on_grid = _grid_axes(frac @ in_cubes)
        if on_grid.sum() < 2:
            return None
        if on_grid.sum() == 2:  # match across the slide: the displacements along it say nothing
            axes = in_cubes @ (cube * on_grid[:, None])  # the cell axes without their part along the slide
            _, cols = _match(frac, template, forbidden, axes @ axes.T, first)
    return [str(r) for r in template_roles[cols]]


def _match(
    frac: np.ndarray, template: np.ndarray, forbidden: np.ndarray, metric: np.ndarray, first: int
) -> tuple[float, np.ndarray]:
    """Sum of squared displacements (Å², under ``metric``) and the ideal site of each atom.

    One-to-one assignment (Hungarian algorithm; ``forbidden`` pairs excluded) under the rigid
    translation that minimises it, tried with the cation ``first`` on the A and on the B site.
    """
    from scipy.optimize import linear_sum_assignment

    best: tuple[float, Any] = (np.inf, None)
    for site in (0, 1):  # a cation on the A or on the B site, then refine the translation
        shift = template[site] - frac[first]
        for _ in range(3):
            diff = frac[:, None, :] + shift - template[None, :, :]
            diff -= np.rint(diff)
            cost = np.einsum("ijk,kl,ijl->ij", diff, metric, diff)
            rows, cols = linear_sum_assignment(np.where(forbidden, 1e6 + cost, cost))
            shift = shift - diff[rows, cols].mean(axis=0)
        total = float(cost[rows, cols].sum())
        if total < best[0]:
            best = (total, cols)
    return best


def _grid_axes(coords: np.ndarray) -> np.ndarray:
    """The cube axes (boolean mask) along which all atoms share the half-cube grid of the ideal sites.

    ``coords`` are positions in lattice constants of the cube (n, 3). Along such an axis, every
    coordinate differs from every other by a multiple of 1/2 (within ``_GRID_TOL``); a
    translation does not change it.
    """
    phase = np.exp(4j * np.pi * coords)  # the grid of period 1/2 as a point on the unit circle
    spread = np.abs(np.angle(phase / phase[:1]))  # against the first atom, radians
    return np.all(spread <= 4 * np.pi * _GRID_TOL, axis=0)


def _coordination_roles(record: StructureRecord, is_x: np.ndarray, *, tol: float) -> list[str] | None:
    """A/B by coordination (any cell), with checks that the network is a perovskite's, or ``None``."""
    n = len(record)
    k = n // 5
    try:
        d_x, nbr_x = _neighbor_table(record, is_x, 12)
        d_all, nbr_all = _neighbor_table(record, np.ones(n, dtype=bool), 6)
    except InvalidStructureError:
        return None
    cations = np.flatnonzero(~is_x)
    # octahedral: six X close, the next six much farther (cubic B: ratio sqrt(5); cubic A: 1)
    score = d_x[cations, 6:12].mean(axis=1) / d_x[cations, :6].mean(axis=1)
    ranked = cations[np.argsort(-score, kind="stable")]
    b_sites, a_sites = ranked[:k], ranked[k:]
    score_of = dict(zip(cations.tolist(), score.tolist()))
    if min(score_of[b] for b in b_sites) < 1.0 + tol:
        return None
    if not np.all(is_x[nbr_all[b_sites]]):
        return None  # a B site whose six nearest neighbours are not all X
    bonds_per_x = np.bincount(nbr_x[b_sites, :6].reshape(-1), minlength=n)
    if not np.all(bonds_per_x[is_x] == 2):
        return None  # not corner-sharing octahedra, each X between two B
    for a in a_sites:  # A in a cavity: at least eight X in its first shell (12 in the cubic cell)
        if np.sum(d_x[a] <= (1.0 + 2.5 * tol) * d_x[a, 0]) < 8:
            return None
    roles = np.full(n, "X", dtype=object)
    roles[a_sites] = "A"
    roles[b_sites] = "B"
    return [str(r) for r in roles]


def perovskite_roles(
    record: StructureRecord, *, tol: float = 0.1, cell_tol: float = 0.03, max_rms: float = 0.4
) -> list[str] | None:
    """``"A"``, ``"B"`` or ``"X"`` for every site of an ABX3 perovskite, or ``None`` if it is not one.

    The atom order and the cell (5-atom cubic cells, supercells) do not matter:

    - **X** sites come from the composition: the most electronegative elements, which must make up
      exactly 3/5 of the atoms (for ABX3 the element with three atoms per formula unit; for the
      mixed-anion ABO2N, ABOFN, ABO2S ... of the Castelli set, the two or three anions).
    - **A and B** among the remaining cations come from the geometry:

      1. For cells whose lattice is a sublattice of a near-cubic one with one ABX3 unit per cube,
         in any basis (the 5-atom Castelli cells, sheared bases of them, cubic, sqrt2 x sqrt2 and
         other supercells: the cube comes from the lattice, not from the cell axes), the cations
         are matched one-to-one to the A sites (cube corners, 12-coordinated) and B sites (cube
         centres, octahedral) of the ideal cubic perovskite in that cell, under the rigid
         translation that minimises the displacements; accepted when the RMS displacement is below
         ``max_rms`` lattice constants (the Castelli cells need up to 0.35). An RMS above 0.1
         lattice constants is accepted only for cells whose atoms slid along one cube axis and stay
         on the ideal half-cube grid along the other two, as the relaxed Castelli cells do (a random
         arrangement is not a perovskite: 0 of 1000 get roles); such cells are matched across the
         slide, in the two grid axes only. Many relaxed Castelli cells have large displacements
         along one axis, which make the coordination of the relaxed cell misleading; this rule
         reproduces the database's A/B labels (its formulas list A first) for 17,423 of the 17,428
         cells of ``perovskites_castelli_cmr`` (``benchmarks/perovskite_roles.py``), in their own
         cells and in sheared or sqrt2 x sqrt2 cells of them alike. In the other 5 (nitrides of Be,
         Al, Fe) the labels are ambiguous from the structure alone (pass your own ``roles``
         callable to :func:`site_contributions` to impose a database's labels).
      2. For other cells (e.g. supercells with tilted octahedra): B sites are the N/5 cations with
         six nearest X clearly closer than the next six (mean distance ratio at least ``1 + tol``;
         sqrt(5) in the cubic cell); checked: a B site's six nearest neighbours are X, each X is
         shared by exactly two octahedra, and each A site has at least eight X in its first shell.

    Args:
        record: the crystal.
        tol: relative tolerance of the coordination checks (rule 2).
        cell_tol: relative tolerance on the cell being a multiple of a cube (rule 1).
        max_rms: largest RMS displacement from the ideal sites, in lattice constants (rule 1).

    Returns:
        One role per site, or ``None`` when the crystal is not recognised as an ABX3 perovskite.
    """
    n = len(record)
    if n == 0 or n % 5:
        return None
    is_x = _anion_sites(record.numbers, n // 5)
    if is_x is None:
        return None
    roles = _ideal_cubic_roles(record, is_x, cell_tol=cell_tol, max_rms=max_rms)
    return roles if roles is not None else _coordination_roles(record, is_x, tol=tol)


def _formula(record: StructureRecord) -> str:
    from ase.data import chemical_symbols
    from pymatgen.core import Composition

    symbols, counts = np.unique(record.numbers, return_counts=True)
    return Composition({chemical_symbols[z]: int(c) for z, c in zip(symbols, counts)}).reduced_formula


# ---------------------------------------------------------------------------------------------
# Contributions
# ---------------------------------------------------------------------------------------------


def labelled_site_records(
    structures: Any, labels: Sequence[str] | None
) -> list[tuple[str, StructureRecord | InvalidStructureError]]:
    """Normalise inputs (one, many, or a mapping label -> structure) into labelled records."""
    if isinstance(structures, Mapping):
        if labels is not None:
            raise ValueError("give either a mapping label -> structure or labels=, not both")
        labels = [str(key) for key in structures]
        structures = list(structures.values())
    items = list(iter_records(structures))
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != len(items):
            raise ValueError(f"{len(labels)} labels for {len(items)} structures")
        items = [
            (label, dataclasses.replace(item, label=label) if isinstance(item, StructureRecord) else item)
            for label, (_, item) in zip(labels, items)
        ]
    return items


def _contribution_kind(spec: Any, allow_mean_pooled: bool) -> str:
    """``"atomwise"`` (site energies) or ``"first-order"`` (a mean-pooled model, when allowed; warns)."""
    if spec.readout == "atomwise":
        return "atomwise"
    if allow_mean_pooled:
        warnings.warn(
            f"model {spec.name!r} pools before its dense layers: the contributions are a first-order "
            "attribution (exact in the mean), not site energies; see docs/per_atom.md",
            UserWarning,
            stacklevel=3,
        )
        return "first-order"
    raise SiteAnalysisError(
        f"model {spec.name!r} uses the {spec.readout!r} readout, which has no per-site decomposition; "
        "site energies need a model trained with readout='atomwise' (the paper's Fig. 3 model). "
        "Pass allow_mean_pooled=True (command line: --allow-mean-pooled) to use the first-order attribution "
        "instead (kind='first-order')"
    )


def _site_roles(record: StructureRecord, roles: Any, wyckoff: list[str] | None) -> list[Any]:
    """One role per site: from the ``roles`` callable, perovskite A/B/X, Wyckoff labels, or ``None``s."""
    n = len(record)
    if roles is None:
        return [None] * n
    if callable(roles):
        role = roles(record)
        role = [None] * n if role is None else [None if r is None else str(r) for r in role]
        if len(role) != n:
            raise ValueError(f"{record.label}: the roles callable gave {len(role)} roles for {n} sites")
        return role
    role = perovskite_roles(record) if roles in ("auto", "perovskite") else None
    if role is None:
        role = wyckoff if roles in ("auto", "wyckoff") and wyckoff is not None else [None] * n
    return role


def trained_on_perovskites(spec: Any) -> bool:
    """Whether a model's training dataset is one of perovskites (its recorded name says so)."""
    dataset = spec.metadata.get("dataset") or {}
    return "perovskite" in str(dataset.get("name", "") if isinstance(dataset, Mapping) else dataset).lower()


def _warn_no_perovskite(spec: Any, labels: list[str], n: int) -> None:
    """Warn when a perovskite model is asked about structures without A and B perovskite sites (round 25c: Si,
    rutile TiO2 and an A2BX4 cell got site energies on the Castelli scale without a word)."""
    if not labels or not trained_on_perovskites(spec):
        return
    from cgcnn_ase.errors import OutOfDomainWarning

    shown = ", ".join(labels[:3]) + (", ..." if len(labels) > 3 else "")
    warnings.warn(
        f"model {spec.name!r}: {len(labels)} of {n} structure(s) have no A and B perovskite sites ({shown}), and the "
        f"model was trained on perovskites only (dataset {spec.metadata['dataset'].get('name')}): its site values for "
        "them are extrapolations",
        OutOfDomainWarning, stacklevel=3,
    )  # fmt: skip


def labelled_error(label: str, message: str) -> str:
    """``message`` naming the structure ``label`` (as it is when the reader wrote it)."""
    return message if message.startswith(label) else f"{label}: {message}"


def skipped_message(failed: Mapping[str, str]) -> str:
    """One line for the structures a site table left out: how many, and the first one's error."""
    return f"{len(failed)} structure(s) skipped (first: {labelled_error(*next(iter(failed.items())))})"


def site_contributions(
    predictor: CGCNNPredictor | str | os.PathLike,
    structures: Any,
    *,
    batch_size: int = 64,
    roles: RoleMode | Callable[[StructureRecord], Sequence[str | None] | None] | None = "auto",
    labels: Sequence[str] | None = None,
    symprec: float = 0.01,
    allow_mean_pooled: bool = False,
    errors: Literal["raise", "skip"] = "raise",
    on_sparse: Literal["warn", "error", "ignore"] = "warn",
    progress: bool | None = None,
) -> pd.DataFrame:
    """Every site's contribution to the model's prediction, with its element, Wyckoff position and role.

    Args:
        predictor: a :class:`~cgcnn_ase.inference.predictor.CGCNNPredictor`, a model folder, or a shipped
            model's name. It must use the atomwise readout (see ``allow_mean_pooled``).
        structures: what :meth:`CGCNNPredictor.predict` accepts (Atoms, Structures, records, file
            paths, or an iterable of them), or a mapping ``{label: structure}``.
        batch_size: crystals per forward pass.
        roles: ``"auto"``: ``"A"``/``"B"``/``"X"`` for ABX3 perovskites (see
            :func:`perovskite_roles`), the Wyckoff label for other crystals; ``"perovskite"``:
            perovskite roles, ``None`` for other crystals; ``"wyckoff"``: always the Wyckoff label;
            ``None``: no roles (the column holds ``None``); or a callable ``record -> list | None``
            giving one role per site (e.g. a database's own A/B labels).
        labels: names for the structures (default: file paths, or ``input i``).
        symprec: tolerance of the symmetry analysis, Å (see :func:`wyckoff_labels`).
        allow_mean_pooled: accept a mean-pooled model and use its first-order attribution
            (:meth:`CrystalGraphConvNet.linear_attributions`): exact in the mean but not a site
            energy (see docs/per_atom.md). The ``kind`` column then says ``"first-order"``.
        errors: ``"raise"`` on the first unusable structure, or ``"skip"`` it with a warning (the
            messages are kept in ``df.attrs["failed"]``, a dict label -> message).
        on_sparse: the predictor's policy for atoms with fewer than 12 neighbours in the cutoff.
        progress: show a progress bar (see :meth:`CGCNNPredictor.predict`).

    Returns:
        A DataFrame with one row per site and columns ``structure`` (label), ``formula`` (reduced),
        ``site`` (0-based index in the structure), ``element``, ``Z``, ``wyckoff`` (e.g. ``"1a"``;
        ``None`` when symmetry analysis fails), ``role``, ``contribution`` (model units),
        ``prediction`` (the structure's value, the mean of its contributions), ``kind``
        (``"atomwise"``: the model's exact site terms; ``"first-order"``: the attribution of a
        mean-pooled model) and ``unseen`` (the element never occurred in the model's training
        data: its value is an extrapolation; ``False`` where the model records no such list) and
        ``domain_percentile`` (the structure's, percent, as ``predict`` gives it: near 100 outside the model's
        training domain; NaN for a model without a domain summary). ``df.attrs`` holds ``units``, ``property``,
        ``model``, ``kind`` and ``failed``.

    Warns:
        OutOfDomainWarning: structures at domain percentile 100 (from ``predict``), and, for a model trained
            on perovskites (its dataset's name says so), structures in which no A and B perovskite sites are
            found.

    Raises:
        SiteAnalysisError: the model is mean-pooled and ``allow_mean_pooled`` is false.
    """
    import pandas as pd
    from ase.data import chemical_symbols

    if not callable(roles) and roles not in ("auto", "perovskite", "wyckoff", None):
        raise ValueError(f"roles must be 'auto', 'perovskite', 'wyckoff', None or a callable, got {roles!r}")
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    predictor = as_predictor(predictor)
    spec = predictor.model.spec
    kind = _contribution_kind(spec, allow_mean_pooled)

    failed: dict[str, str] = {}
    records: list[StructureRecord] = []
    for label, item in labelled_site_records(structures, labels):
        if isinstance(item, StructureRecord):
            records.append(item)
        elif errors == "raise":
            raise item
        else:
            failed[label] = str(item)

    result = predictor.predict(
        records,
        batch_size=batch_size,
        per_atom=True,
        errors="raise" if errors == "raise" else "collect",
        on_sparse=on_sparse,
        progress=progress,
    )
    columns: dict[str, list[Any]] = {name: [] for name in SITE_COLUMNS}
    seen = set(spec.metadata["elements_seen"]) if spec.metadata.get("elements_seen") else None
    percentiles = result.domain_percentile if result.domain_percentile is not None else np.full(len(records), np.nan)
    no_perovskite: list[str] = []
    for record, value, per_atom, message, percentile in zip(records, result.values, result.per_atom, result.errors,
                                                           percentiles):  # fmt: skip
        if message is not None:
            failed[record.label] = message
            continue
        n = len(record)
        wyckoff = wyckoff_labels(record, symprec=symprec)
        role = _site_roles(record, roles, wyckoff)
        columns["structure"] += [record.label] * n
        columns["formula"] += [_formula(record)] * n
        columns["site"] += list(range(n))
        columns["element"] += [chemical_symbols[z] for z in record.numbers]
        columns["Z"] += record.numbers.tolist()
        columns["wyckoff"] += wyckoff if wyckoff is not None else [None] * n
        columns["role"] += role
        columns["contribution"] += per_atom.tolist()
        columns["prediction"] += [float(value)] * n
        columns["kind"] += [kind] * n
        columns["unseen"] += [seen is not None and z not in seen for z in record.numbers.tolist()]
        columns["domain_percentile"] += [float(percentile)] * n
        if not {"A", "B"} <= set(role) and roles in ("auto", "perovskite"):
            no_perovskite.append(record.label)
    _warn_no_perovskite(spec, no_perovskite, len(records) - len(failed))
    if failed:
        warnings.warn(skipped_message(failed), UserWarning, stacklevel=2)
    df = pd.DataFrame(columns)
    df["site"] = df["site"].astype("int64")
    df["Z"] = df["Z"].astype("int64")
    df["contribution"] = df["contribution"].astype("float64")
    df["prediction"] = df["prediction"].astype("float64")
    df["unseen"] = df["unseen"].astype(bool)
    df["domain_percentile"] = df["domain_percentile"].astype("float64")
    df.attrs.update(units=predictor.units, property=predictor.property_name, model=spec.name, kind=kind, failed=failed)
    return df


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


def aggregate_by_element(
    df: pd.DataFrame, *, by: Sequence[str] = ("role", "element"), value: str = "contribution"
) -> pd.DataFrame:
    """Mean, standard deviation and count of ``value`` per group (default: per role and element).

    Args:
        df: a table like :func:`site_contributions` returns.
        by: grouping columns. Sites whose role is ``None`` form their own group (role NaN).
        value: the column to aggregate.

    Returns:
        Columns ``*by, mean, std, count``; ``std`` is the sample standard deviation (ddof=1, NaN
        for a single site). Rows are sorted by the other keys, then by atomic number when
        ``element`` is a key. ``attrs`` are carried over.
    """

    by = list(by)
    missing = [c for c in [*by, value] if c not in df.columns]
    if missing:
        raise SiteAnalysisError(f"column(s) {missing} not in the table (columns: {list(df.columns)})")
    out = df.groupby(by, dropna=False, sort=False)[value].agg(["mean", "std", "count"]).reset_index()
    out["count"] = out["count"].astype("int64")
    return sorted_by_element(out, by, attrs=df.attrs)


def sorted_by_element(out: pd.DataFrame, by: Sequence[str], *, attrs: dict) -> pd.DataFrame:
    """An aggregate sorted by its ``by`` columns, elements in order of atomic number (unknown last),
    with a fresh index and the source table's ``attrs``."""
    from ase.data import atomic_numbers

    keys = [c for c in by if c != "element"]
    if "element" in by:
        out = out.assign(_z=out["element"].map(lambda s: atomic_numbers.get(str(s), 999)))
        keys.append("_z")
    if keys:
        out = out.sort_values(keys, kind="stable", na_position="last").drop(columns=["_z"], errors="ignore")
    out = out.reset_index(drop=True)
    out.attrs = dict(attrs)
    return out


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------

# pymatviz has periodic-table heat maps, but it renders with plotly and needs kaleido plus a
# Chrome binary to write PNG/SVG files, which offline installs (and this project's CI) lack;
# matplotlib writes both formats on its own.


# ---------------------------------------------------------------------------------------------
# Screening
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


__all__ = [
    "SITE_COLUMNS",
    "SiteAnalysisError",
    "aggregate_by_element",
    "perovskite_roles",
    "site_contributions",
    "sorted_by_element",
    "wyckoff_labels",
]

"""Checks of a CIF data block around its reading: symmetry items that cannot be applied, type symbols that name no
element, a space group of two origin choices named without one, operations that disagree with the symbol, site
coordinates that are no numbers, and atoms that disagree with the block's own formula (rounds 23c, 24, 26c). The
readings in :mod:`cgcnn_ase.io.cif` call them; each raises :class:`~cgcnn_ase.errors.StructureReadError` or warns
with the reason, so that no such file is read as another crystal without a word."""

from __future__ import annotations

import functools
import math
import re
import warnings
from typing import Any

import numpy as np

from cgcnn_ase.errors import CifContentWarning, CifSymmetryWarning, StructureReadError, user_stacklevel


def _formula_counts(formula: str) -> dict[int, float] | None:
    """``{Z: count}`` of a CIF formula such as ``'Na4 Cl4'`` or ``'Fe2 O3'``; ``None`` for one that is not a plain
    list of element symbols and counts (charges, brackets, unknown symbols)."""
    import gemmi  # the CIF reading's own element table (the batched path imports no ASE)

    counts: dict[int, float] = {}
    for token in formula.split():
        match = re.fullmatch(r"([A-Z][a-z]?)(\d*(?:\.\d+)?)", token)
        z = gemmi.Element(match[1]).atomic_number if match is not None else 0
        if z == 0:
            return None
        counts[z] = counts.get(z, 0.0) + float(match[2] or 1)
    return counts or None

def warn_formula_mismatch(block: Any, numbers: np.ndarray, label: str) -> None:
    """Warn (:class:`~cgcnn_ase.errors.CifContentWarning`) when the atoms read disagree with the block's own
    ``_chemical_formula_sum`` (other elements, or other proportions beyond 1%). Round 26c: a CIF cut at a line
    break, 6 of its 8 atoms left, was predicted as Na4Cl2 without a word, its formula saying 'Na4 Cl4'."""
    raw = block.find_value("_chemical_formula_sum")
    formula = _formula_counts(gemmi_unquote(raw)) if raw else None
    if formula is None:
        return
    zs, found = np.unique(numbers, return_counts=True)
    read = dict(zip(zs.tolist(), found.tolist()))
    same = set(read) == set(formula)
    if same:
        ratio = np.array([read[z] for z in formula]) / np.array([formula[z] for z in formula])
        same = bool(np.all(np.abs(ratio / ratio[0] - 1) <= 0.01))
    if not same:
        import gemmi

        atoms = " ".join(f"{gemmi.Element(z).name}{n}" for z, n in read.items())
        warnings.warn(f"{label}: the atoms read ({atoms}) disagree with its _chemical_formula_sum "
                      f"{gemmi_unquote(raw)!r}: a file cut short, or a site that could not be read; check the file",
                      CifContentWarning, stacklevel=user_stacklevel())  # fmt: skip

SYMOP_TAGS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz")

#: Symmetry that gemmi's small-structure reading leaves unapplied: operations in CIF2/DDLm dotted tags, magnetic
#: (mCIF) operations and centrings, and a space group given by its number alone.
DOTTED_SYMOP_TAG = "_space_group_symop.operation_xyz"

HALL_TAGS = ("_symmetry_space_group_name_Hall", "_space_group_name_Hall", "_space_group.name_Hall")

def resolve_origin_choice(small: Any, block: Any, label: str) -> None:
    """Read a group of two origin choices named without one (a Hermann-Mauguin symbol without ``:1``/``:2`` or a
    number alone, no operations, no Hall symbol) in origin choice 1, as pymatgen reads it, and warn
    (:class:`~cgcnn_ase.errors.CifSymmetryWarning`). Round 26c: ``F d -3 m`` with Si at (0,0,0) was read as 16 atoms
    in origin choice 2 (gemmi's reading of the symbol), while the number 227 alone and pymatgen gave diamond's 8."""
    import gemmi

    if any(block.find_values(tag) for tag in (*SYMOP_TAGS, DOTTED_SYMOP_TAG)):
        return
    symbol = next((gemmi_unquote(v) for tag in HM_TAGS for v in [block.find_value(tag)] if v), "").strip()
    icsd = re.fullmatch(r"(.+?)\s+([SZ])", symbol)  # ICSD's suffixes: S origin choice 1, Z origin choice 2 (round 27)
    named = gemmi.find_spacegroup_by_name(f"{icsd[1]}:{'1' if icsd[2] == 'S' else '2'}") if icsd else None
    if named is not None:
        small.symops = [op.triplet() for op in named.operations()]
        small.determine_and_set_spacegroup("S")
        return
    group = small.spacegroup
    if group is None or group.ext not in ("1", "2"):
        return
    if any(gemmi_unquote(block.find_value(tag) or "?") not in ("", "?", ".") for tag in HALL_TAGS):
        return
    if ":" in symbol:
        return  # the origin choice is named
    first = gemmi.find_spacegroup_by_name(f"{group.hm}:1")
    if first is None:
        return
    if group.ext == "2":
        small.symops = [op.triplet() for op in first.operations()]
        small.determine_and_set_spacegroup("S")
    named = repr(symbol) if symbol not in ("", "?", ".") else f"number {group.number}"
    warnings.warn(f"{label}: its space group ({named}) has two origin choices and the CIF names neither (no symmetry "
                  f"operations, no Hall symbol): read in origin choice 1, as pymatgen reads it; if its coordinates are "
                  f"for origin choice 2, give the operations or name it '{group.hm}:2'", CifSymmetryWarning,
                  stacklevel=user_stacklevel())  # fmt: skip

#: Tags naming a block's space group by its Hermann-Mauguin symbol (CIF1 and CIF2 spellings).
HM_TAGS = ("_symmetry_space_group_name_H-M", "_space_group_name_H-M_alt", "_space_group.name_H-M_alt")

def warn_symmetry_conflict(block: Any, label: str) -> None:
    """Warn (:class:`~cgcnn_ase.errors.CifSymmetryWarning`) when a block lists symmetry operations whose number
    differs from that of the space group its Hermann-Mauguin symbol names (round 23c: ``F m -3 m`` with only
    ``x,y,z`` was read as a 2-atom cell without a word). The operations are what is applied."""
    ops = {gemmi_unquote(op).replace(" ", "").lower() for tag in SYMOP_TAGS for op in block.find_values(tag)}
    symbol = next((gemmi_unquote(v) for tag in HM_TAGS for v in [block.find_value(tag)] if v), None)
    if not ops or not symbol or symbol in ("?", "."):
        return
    sizes = _group_sizes(symbol)
    if not sizes or len(ops) in sizes:
        return
    import gemmi

    try:  # '+x,+y,+z' and 'x,y,z' are one operation (round 24)
        ops = {gemmi.Op(op).triplet() for op in ops}
    except (RuntimeError, ValueError):
        return  # operations gemmi cannot read: the reading reports them
    if len(ops) not in sizes:
        expected = " or ".join(str(n) for n in sorted(sizes))  # (in its settings)
        warnings.warn(f"{label}: its space group {symbol!r} has {expected} symmetry operations but the CIF lists "
                      f"{len(ops)}; the listed operations were applied, so the crystal may not be the one "
                      f"{symbol!r} names: check the file", CifSymmetryWarning, stacklevel=user_stacklevel())  # fmt: skip

@functools.lru_cache(maxsize=512)
def _group_sizes(symbol: str) -> frozenset[int]:
    """The numbers of symmetry operations (centring included) that the space group named ``symbol`` has in any of
    its settings (R groups: 36 hexagonal, 12 rhombohedral; round 24 found a correct rhombohedral CIF warned);
    empty for a symbol gemmi does not know. Cached: most files of a run name the same few groups."""
    import gemmi

    group = gemmi.find_spacegroup_by_name(symbol)
    if group is None:
        return frozenset()
    return frozenset(len(g.operations().sym_ops) * len(g.operations().cen_ops) for g in gemmi.spacegroup_table()
                     if g.number == group.number)  # fmt: skip

def check_coordinates(small: Any, block: Any, label: str) -> None:
    """Refuse a block whose site coordinates gemmi read as NaN: text that is not a CIF number (``1/2``,
    ``?``, ``abc``), named as written, before symmetry multiplies the site.

    Raises:
        StructureReadError: naming the item, the site and its value.
    """
    import gemmi

    if all(math.isfinite(c) for site in small.sites for c in (site.fract.x, site.fract.y, site.fract.z)):
        return
    names = list(block.find_values("_atom_site_label")) or list(block.find_values("_atom_site_type_symbol"))
    for axis in "xyz":
        for k, value in enumerate(block.find_values("_atom_site_fract_" + axis)):
            if not math.isfinite(gemmi.cif.as_number(value)):
                site = gemmi_unquote(names[k]) if k < len(names) else f"#{k + 1}"
                raise StructureReadError(
                    f"{label}: _atom_site_fract_{axis} of site {site} is {value!r}, not a number "
                    "(a CIF coordinate is a decimal number, e.g. 0.5 or 0.33333, optionally with its uncertainty: 0.5(1))"
                )
    raise StructureReadError(f"{label}: some site coordinates are not numbers")

NUMBER_TAGS = ("_space_group_IT_number", "_symmetry_Int_Tables_number", "_space_group.IT_number")

def check_symmetry_items(block: Any, label: str) -> None:
    """Refuse symmetry items that cannot be applied as written, which the readings would otherwise skip and read
    the listed atoms as P1 (round 26c: an operation ``q,-y,z``, a number ``abc``, ``'P 1'`` with number 186).

    Raises:
        StructureReadError: naming the item and its value.
    """
    import gemmi

    for tag in (*SYMOP_TAGS, DOTTED_SYMOP_TAG):
        for raw in block.find_values(tag):
            try:
                gemmi.Op(op_triplet(raw))
            except (RuntimeError, ValueError):
                raise StructureReadError(f"{label}: its symmetry operation {gemmi_unquote(raw)!r} ({tag}) is not one: "
                                         "fix it, or write the structure in P1") from None  # fmt: skip
    numbers = set()
    for tag in NUMBER_TAGS:
        value = gemmi_unquote(block.find_value(tag) or "?").strip()
        if value in ("", "?", "."):
            continue
        if not value.isdigit() or not 1 <= int(value) <= 230:
            raise StructureReadError(f"{label}: {tag} is {value!r}, not a space-group number (1-230)")
        numbers.add(int(value))
    symbol = next((gemmi_unquote(v) for t in HM_TAGS for v in [block.find_value(t)] if v), "").strip()
    group = gemmi.find_spacegroup_by_name(symbol) if symbol not in ("", "?", ".") else None
    if group is not None:
        numbers.add(group.number)
    if len(numbers) > 1:
        raise StructureReadError(f"{label}: the CIF names more than one space group ({symbol!r} and number(s) "
                                 f"{', '.join(map(str, sorted(numbers)))}): fix the symmetry items")  # fmt: skip

def check_type_symbols(block: Any, label: str) -> None:
    """Refuse sites whose ``_atom_site_type_symbol`` names no element: ``?`` or ``.`` (pymatgen's reading dropped
    such a site, so NaCl lost a Cl without a word) and ``Va`` (a vacancy, read as vanadium; round 26c).

    Raises:
        StructureReadError: naming the site and its symbol.
    """
    symbols = list(block.find_values("_atom_site_type_symbol"))
    if not symbols:  # labels only (OW1, Fe2): their element comes from the label, but Va1 is a vacancy (round 27)
        for raw in block.find_values("_atom_site_label"):
            if re.fullmatch(r"(?i)vac?\d*[a-z]?", gemmi_unquote(raw).strip()):
                raise StructureReadError(f"{label}: site {gemmi_unquote(raw)} is a vacancy by its label; CGCNN needs an "
                                         "ordered crystal of real atoms (leave the vacancy out, or give type symbols)")  # fmt: skip
        return
    names = list(block.find_values("_atom_site_label")) or [f"#{k + 1}" for k in range(len(symbols))]
    for name, raw in zip(names, symbols):
        value = gemmi_unquote(raw).strip()
        if raw in ("?", ".") or value in ("", "?", "."):  # also quoted: '?' (round 27)
            raise StructureReadError(f"{label}: site {gemmi_unquote(name)} has no element (_atom_site_type_symbol is "
                                     f"{raw!r}): give its element symbol")  # fmt: skip
        if re.sub(r"[\d+-]+$", "", value).lower() in ("va", "vac"):
            raise StructureReadError(f"{label}: site {gemmi_unquote(name)} is a vacancy ({value!r}); CGCNN needs an "
                                     "ordered crystal of real atoms (leave the vacancy out, or order the structure)")  # fmt: skip

def op_triplet(value: str) -> str:
    """A symmetry operation of a CIF loop as gemmi reads it: unquoted, without a magnetic time-reversal part."""
    parts = gemmi_unquote(value).replace(" ", "").split(",")
    return ",".join(parts[:3])

def gemmi_unquote(value: str) -> str:
    """A CIF value without its quotes (gemmi returns raw tokens)."""
    import gemmi

    return gemmi.cif.as_string(value)


__all__ = ["DOTTED_SYMOP_TAG", "HALL_TAGS", "HM_TAGS", "NUMBER_TAGS", "SYMOP_TAGS", "check_coordinates",
           "check_symmetry_items", "check_type_symbols", "gemmi_unquote", "op_triplet", "resolve_origin_choice",
           "warn_formula_mismatch", "warn_symmetry_conflict"]

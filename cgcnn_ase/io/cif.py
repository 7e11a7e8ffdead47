"""CIF files and CIF text: the CIF part of the one reader (:mod:`cgcnn_ase.io.reader` calls :func:`read_cif`).

Two readings, chosen by the model's neighbour policy (:func:`cgcnn_ase.io.reader.cif_reader_for_policy`):

``"gemmi"``
    gemmi applies the symmetry and merges sites on special positions; pymatgen is the fallback
    (and gives the detailed message) when gemmi cannot make a crystal of a block. Symmetry that
    gemmi's small-structure reading skips (a space-group number alone, CIF2 dotted operations,
    mCIF magnetic operations and centrings) is applied here; symmetry declared in a form that
    still cannot be applied is refused, never read as P1. Data blocks of metadata alone are left out.
``"pymatgen"``
    exactly pymatgen's ``CifParser`` (the authors' checkpoints break neighbour ties in its site order).

Plain P1 blocks (the only symmetry operation ``x, y, z``, fully occupied sites of plain element
symbols: every Materials Project CIF) take a shortcut in both readings: their site loop is read
directly, giving gemmi's records, or pymatgen's (its rounding of coordinates near 1/3 and 2/3, its
wrapping, ``Lattice.from_parameters`` and its electronegativity order), bit for bit and several
times faster. ``tests/test_cif_p1.py`` checks both against the full parsers.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cgcnn_ase.errors import InvalidStructureError, StructureReadError
from cgcnn_ase.io.cif_checks import (
    DOTTED_SYMOP_TAG,
    SYMOP_TAGS,
    check_coordinates,
    check_symmetry_items,
    check_type_symbols,
    gemmi_unquote,
    op_triplet,
    resolve_origin_choice,
    warn_formula_mismatch,
    warn_symmetry_conflict,
)
from cgcnn_ase.io.records import StructureRecord, from_pymatgen, validate_record
from cgcnn_ase.warning_blocks import catch_warnings

CifReader = Literal["gemmi", "pymatgen"]

#: Occupancies within this of 1 are full (CIFs often round: 0.9999); above 1 + this is an error.
OCCUPANCY_TOLERANCE = 1e-3


def unique_block_names(text: str) -> str:
    """CIF text with repeated data-block names made unique (``data_image0`` again becomes ``data_image0__2``):
    ASE writes every block of a multi-frame CIF as ``data_image0``, gemmi refuses a repeated name and
    pymatgen keeps only the last block of that name, so without this all but one frame were lost."""
    seen: dict[str, int] = {}

    def rename(match: re.Match[str]) -> str:
        name = match.group(2).lower()
        seen[name] = seen.get(name, 0) + 1
        return match.group(0) if seen[name] == 1 else f"{match.group(1)}{match.group(2)}__{seen[name]}"

    return _BLOCK_HEADER.sub(rename, text)


#: A data-block header at the start of a line: ``data_`` and the block's name.
_BLOCK_HEADER = re.compile(r"(?im)^([ \t]*data_)(\S*)")


def _read_document(source: Path | str, *, text: bool) -> Any:
    """gemmi's CIF document of a file or of text; repeated block names made unique (:func:`unique_block_names`)."""
    import gemmi

    if not text and not _gemmi_reads_path(Path(source)):  # a name gemmi cannot take, or a byte-order mark
        source, text = _file_text(Path(source)), True
    try:
        return gemmi.cif.read_string(source) if text else gemmi.cif.read(str(source))
    except (RuntimeError, ValueError) as exc:
        if "duplicate block name" not in str(exc):
            raise
    if not text:
        import gzip

        opener = gzip.open if str(source).lower().endswith(".gz") else open  # gemmi reads .gz files too
        with opener(source, "rt", encoding="utf-8", errors="replace") as f:
            source = f.read()
    return gemmi.cif.read_string(unique_block_names(str(source)))


def _gemmi_reads_path(path: Path) -> bool:
    """Whether gemmi can read the file itself: a name that is valid UTF-8 (round 26c: ``bad_\\xff.cif`` raised a
    TypeError that ended the run) and no UTF-8 byte-order mark (which gemmi rejects: "no structures")."""
    try:
        str(path).encode("utf-8")
        with open(path, "rb") as f:
            return f.read(3) != b"\xef\xbb\xbf"
    except (UnicodeEncodeError, OSError):
        return False


def _file_text(path: Path) -> str:
    """A CIF file's text as Python reads it (decompressed, byte-order mark dropped, bytes that are not UTF-8
    replaced)."""
    from cgcnn_ase.io.formats import open_text

    with open_text(path) as f:
        return f.read()


def numbered_labels(base: str, count: int) -> list[str]:
    return [base] if count == 1 else [f"{base}@{k}" for k in range(count)]


def read_cif(source: Path | str, label: str, cif_reader: CifReader, *, text: bool) -> list[StructureRecord]:
    """Every data block of a CIF file (``text=False``: ``source`` is its path) or of CIF
    text: gemmi first when ``cif_reader == "gemmi"``, pymatgen when gemmi cannot make a
    crystal of it (pymatgen also gives the detailed error message)."""
    if cif_reader == "gemmi":
        records = _cif_gemmi(source, label, text=text)
        if records is not None:
            return records
    else:
        records = _cif_p1_as_pymatgen(source, label, text=text)
        if records is not None:
            return records
    structures = _cif_pymatgen(source, label, text=text)
    records = [from_pymatgen(s, label=name) for s, name in zip(structures, numbered_labels(label, len(structures)))]
    try:  # the formula check of the other readings (round 27), where gemmi can pair the blocks with the structures
        blocks = [block for block in _read_document(source, text=text) if _has_sites(block)]
    except (RuntimeError, ValueError, OSError):
        blocks = []
    if len(blocks) == len(records):
        for block, record in zip(blocks, records):
            warn_formula_mismatch(block, record.numbers, record.label)
    return records


def _cif_gemmi(source: Path | str, label: str, *, text: bool) -> list[StructureRecord] | None:
    """gemmi's reading (symmetry applied, sites on special positions merged), or ``None``
    when gemmi cannot make a crystal of every data block."""
    import gemmi

    try:
        document = _read_document(source, text=text)
        blocks = _structure_blocks(document, label)
        if not all(_cell_is_given(block) for block in blocks):
            return None  # gemmi would take a 1 Å cube; pymatgen says what is missing
        names = numbered_labels(label, len(blocks))
        for block, name in zip(blocks, names):  # before gemmi's reading, whose failure hands the file to pymatgen
            check_symmetry_items(block, name)
            check_type_symbols(block, name)
        # the common plain P1 block is read from its site loop, without building gemmi's structure
        parsed = [_p1_block_as_gemmi(block) or gemmi.make_small_structure_from_block(block) for block in blocks]
    except StructureReadError:
        raise
    except (RuntimeError, ValueError, IndexError):
        return None
    for parts, block, name in zip(parsed, blocks, names):
        warn_symmetry_conflict(block, name)
        if not isinstance(parts, tuple):
            check_coordinates(parts, block, name)
            _apply_declared_symmetry(parts, block, name)
            resolve_origin_choice(parts, block, name)
    records = []
    for parts, block, name in zip(parsed, blocks, names):
        # validation errors (occupancy, overlapping atoms, ...) are the answer, not a reason to try pymatgen
        record = validate_record(*parts, (True, True, True), name) if isinstance(parts, tuple) else gemmi_block_record(parts, name)
        if record is None:
            return None
        warn_formula_mismatch(block, record.numbers, name)
        records.append(record)
    return records or None


#: Data-block tags the P1 shortcut of the pymatgen reading understands; any other ``_atom_site``/
#: ``_atom_type``/symmetry tag (oxidation states, magnetic moments, ...) sends the block to pymatgen.
_P1_SITE_TAGS = frozenset(
    "_atom_site_" + t
    for t in ("type_symbol", "label", "symmetry_multiplicity", "fract_x", "fract_y", "fract_z", "occupancy",
              "wyckoff_symbol", "u_iso_or_equiv", "adp_type", "calc_flag", "refinement_flags")
)  # fmt: skip
#: Tags that make pymatgen read a block differently (oxidation states, magnetic moments, hydrogens).
_NOT_PLAIN_TAGS = ("_atom_type_oxidation_number", "_atom_site_moment_label", "_atom_site_moment.label",
                   "_space_group_magn.name_BNS", "_atom_site_attached_hydrogens")  # fmt: skip
_CELL_TAGS = tuple("_cell_" + t for t in ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma"))
#: pymatgen's defaults: coordinates within this (absolute, of x / (1/3) - 1) of 1/3 or 2/3 are set
#: to them; sites closer than this (fractional) are one site.
_PMG_FRAC_TOLERANCE = 1e-4
_PMG_SITE_TOLERANCE = 1e-4


def _cif_p1_as_pymatgen(source: Path | str, label: str, *, text: bool) -> list[StructureRecord] | None:
    """pymatgen's reading of a plain P1 CIF, bit for bit, without pymatgen's parser (about 10x faster).

    For a data block whose only symmetry operation is ``x, y, z``, with fully occupied sites of
    plain element symbols and no other site information, pymatgen's ``CifParser`` gives: the
    cell of ``Lattice.from_parameters``; each coordinate within 1e-4 (relative) of 1/3 or 2/3 set
    to it, then wrapped as ``x - floor(x)``; sites sorted stably by Pauling electronegativity,
    then symbol. This function builds exactly that, using gemmi to parse the file. Any other
    block (symmetry to apply, partial occupancy, oxidation states, elements without an
    electronegativity, sites closer than 1e-4) returns ``None``: the caller uses pymatgen itself.
    ``tests/test_structures.py`` checks the records against pymatgen's on 2000 MP and 297 reference CIFs.
    """
    try:
        document = _read_document(source, text=text)
    except (RuntimeError, ValueError):
        return None
    blocks = list(document)
    if not blocks:
        return None
    records = []
    for block, name in zip(blocks, numbered_labels(label, len(blocks))):
        check_symmetry_items(block, name)  # before pymatgen's reading, which skips what it cannot apply
        check_type_symbols(block, name)  # and drops or misreads such sites
        parts = _p1_block(block)
        if parts is None:
            return None
        warn_symmetry_conflict(block, name)
        records.append(validate_record(*parts, (True, True, True), name))
        warn_formula_mismatch(block, records[-1].numbers, name)  # as the gemmi reading does (round 27)
    return records


_MAGNETIC_SYMOP_TAGS = ("_space_group_symop_magn_operation.xyz", "_space_group_symop_magn_centering.xyz")
#: gemmi reads ``_space_group_IT_number`` and ``_symmetry_Int_Tables_number`` into ``spacegroup_number``, not this.
_DOTTED_NUMBER_TAG = "_space_group.IT_number"
#: Any of these in a block whose symmetry stays unknown means symmetry was declared in a form not understood.
_SYMMETRY_WORDS = ("symop", "space_group", "symmetry_equiv", "symmetry_space_group")
#: Values of symmetry items that say P1 (unquoted, lower case, without spaces), or nothing.
_P1_VALUES = frozenset({"x,y,z", "p1", "-p1", "p_1", "p1(no.1)", "1", "?", "."})


def _structure_blocks(document: Any, label: str) -> list[Any]:
    """The data blocks of a CIF that hold atoms: blocks of metadata alone (a journal's ``data_global``
    of ``_journal_*`` and ``_publ_*`` items) are left out when another block holds a structure.

    Raises:
        StructureReadError: a block gives its sites in Cartesian coordinates only (``_atom_site_Cartn_*``).
    """
    blocks = list(document)
    with_sites = [b for b in blocks if _has_sites(b)]
    for block in with_sites:
        if not block.find_values("_atom_site_fract_x"):
            raise StructureReadError(
                f"{label}: data block {block.name} gives its sites in Cartesian coordinates only (_atom_site_Cartn_x, "
                "...), which are not read; give fractional coordinates (_atom_site_fract_x, ...)"
            )
    return with_sites or blocks


def _has_sites(block: Any) -> bool:
    """Whether a data block lists atom sites (fractional or Cartesian)."""
    return bool(block.find_values("_atom_site_fract_x") or block.find_values("_atom_site_Cartn_x"))


def read_cif_blocks(
    text: str, label: str, cif_reader: CifReader
) -> list[tuple[str, StructureRecord | InvalidStructureError]] | None:
    """Each data block of CIF ``text`` that lists atoms, read on its own as :func:`read_cif` reads
    it and labelled as it labels them (``label@k``): ``(label@k, record)``, or ``(label@k, error)``
    for a block that is not a usable crystal; ``None`` for text of fewer than two such blocks."""
    try:
        blocks = [b for b in _read_document(text, text=True) if _has_sites(b)]
    except (RuntimeError, ValueError):
        return None
    if len(blocks) < 2:
        return None
    items: list[tuple[str, StructureRecord | InvalidStructureError]] = []
    for block, name in zip(blocks, numbered_labels(label, len(blocks))):
        try:
            items.extend((name, record) for record in read_cif(block.as_string(), name, cif_reader, text=True))
        except InvalidStructureError as exc:
            items.append((name, exc))
    return items


def _apply_declared_symmetry(small: Any, block: Any, label: str) -> None:
    """Give gemmi's ``small`` the symmetry its block declares in a form gemmi's reading skips
    (dotted CIF2 operations, magnetic operations times centrings with the time reversal dropped,
    a space-group number alone: its standard setting), so that no such CIF is read as P1.

    Raises:
        StructureReadError: the block declares symmetry (some symmetry tag other than P1) that
            none of these readings can apply; predicting its listed atoms would be another crystal.
    """
    import gemmi

    if small.spacegroup is not None or small.symops:
        return  # gemmi found its symmetry (H-M, Hall or operations)
    ops = [op_triplet(v) for v in block.find_values(DOTTED_SYMOP_TAG)]
    operations, centrings = ([op_triplet(v) for v in block.find_values(tag)] for tag in _MAGNETIC_SYMOP_TAGS)
    if operations:
        ops = sorted({(gemmi.Op(c) * gemmi.Op(o)).wrap().triplet() for o in operations for c in centrings or ["x,y,z"]})
    dotted_number = gemmi.cif.as_int(block.find_value(_DOTTED_NUMBER_TAG) or "?", 0)
    try:
        if ops:
            small.symops = ops
            small.determine_and_set_spacegroup("S")
        elif max(small.spacegroup_number, dotted_number) > 1:  # a number alone: its standard setting
            small.spacegroup_number = max(small.spacegroup_number, dotted_number)
            small.determine_and_set_spacegroup("N")
    except (RuntimeError, ValueError) as exc:
        raise StructureReadError(f"{label}: its symmetry operations could not be applied ({exc})") from None
    if small.spacegroup is None and not small.symops and _declares_symmetry(block):
        raise StructureReadError(
            f"{label}: the CIF declares its symmetry in a form that could not be read (no H-M or Hall symbol, "
            "operations or space-group number that gemmi recognises and can apply); reading only its listed atoms would give another "
            "crystal: add _symmetry_equiv_pos_as_xyz operations, or write it in P1"
        )


def _declares_symmetry(block: Any) -> bool:
    """Whether a block has symmetry items that do not all say P1 (``x,y,z``, ``P 1``, number 1)."""
    for item in block:
        tags = [item.pair[0]] if item.pair is not None else list(item.loop.tags) if item.loop is not None else []
        for tag in tags:
            low = tag.lower()
            if not any(word in low for word in _SYMMETRY_WORDS) or low.endswith(("_id", ".id", "_cell_setting", "crystal_system")):
                continue
            if any(gemmi_unquote(v).replace(" ", "").lower() not in _P1_VALUES for v in block.find_values(tag)):
                return True
    return False


def _cell_is_given(block: Any) -> bool:
    """Whether the block gives all six cell parameters as numbers (gemmi silently uses a 1 Å cube
    when one is missing or ``?``)."""
    import gemmi

    values = [block.find_value(tag) for tag in _CELL_TAGS]
    return all(v is not None and math.isfinite(gemmi.cif.as_number(v)) for v in values)


def _p1_columns(block: Any) -> tuple[list[str], np.ndarray, list[float]] | None:
    """``(symbols, frac, cell parameters)`` of a plain, ordered P1 CIF block, or ``None``.

    Plain: the only symmetry operation is ``x, y, z``; the site loop has only the tags of
    :data:`_P1_SITE_TAGS` with plain element symbols; no oxidation states, moments or implicit
    hydrogens; every occupancy is 1; at most 2000 sites. ``frac`` (n, 3) as written in the file;
    cell lengths in Å and angles in degrees.
    """
    ops = [op for tag in SYMOP_TAGS for op in block.find_values(tag)]
    if [gemmi_unquote(op).replace(" ", "").lower() for op in ops] != ["x,y,z"]:
        return None
    column = block.find_loop("_atom_site_fract_x")
    tags = set(column.get_loop().tags) if column.get_loop() is not None else set()
    if not tags <= _P1_SITE_TAGS or "_atom_site_type_symbol" not in tags:
        return None
    if any(len(block.find_values(tag)) for tag in _NOT_PLAIN_TAGS):
        return None
    try:
        cell = [_cif_float(gemmi_unquote(block.find_value(tag))) for tag in _CELL_TAGS]
        symbols = [gemmi_unquote(v) for v in block.find_loop("_atom_site_type_symbol")]
        frac = np.array([[_cif_float(v) for v in block.find_loop("_atom_site_fract_" + axis)] for axis in "xyz"]).T
        occupancy = [_cif_float(v) for v in block.find_loop("_atom_site_occupancy")]
    except (TypeError, ValueError, RuntimeError):
        return None
    if not symbols or len(symbols) > 2000 or any(o != 1 for o in occupancy) or not all(s.isalpha() for s in symbols):
        return None
    return symbols, frac, cell


def _p1_block_as_gemmi(block: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(numbers, frac, cell)`` of a plain P1 block (:func:`_p1_columns`) with coordinates in
    [0, 1), exactly as :func:`gemmi_block_record` reads it (gemmi's cell matrix, the file's site
    order), at about half its cost; ``None`` for any other block."""
    import gemmi

    columns = _p1_columns(block)
    if columns is None:
        return None
    symbols, frac, cell = columns
    if frac.min() < 0 or frac.max() >= 1:
        return None
    numbers = np.array([gemmi.Element(s).atomic_number for s in symbols], dtype=np.int64)
    if (numbers < 1).any():
        return None
    return numbers, frac, np.array(gemmi.UnitCell(*cell).orth.mat, dtype=np.float64).T


def _p1_block(block: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(numbers, frac, cell)`` of one gemmi CIF block read as pymatgen reads it, or ``None``
    when the block is not a plain, ordered P1 crystal (see :func:`_cif_p1_as_pymatgen`)."""
    from pymatgen.core import Lattice

    columns = _p1_columns(block)
    if columns is None:
        return None
    symbols, frac, cell = columns
    try:
        z, x = np.array([_element_z_x(s) for s in symbols]).T
    except ValueError:
        return None
    if np.isnan(x).any():
        return None
    for c in (1 / 3, 2 / 3):  # pymatgen's _sanitize_data: math.isclose(x / c, 1, abs_tol=1e-4)
        frac[np.abs(frac / c - 1) <= _PMG_FRAC_TOLERANCE] = c
    frac = frac - np.floor(frac)
    delta = frac[:, None, :] - frac[None, :, :]
    delta -= np.round(delta)
    close = np.all(np.abs(delta) < _PMG_SITE_TOLERANCE + 1e-8, axis=2)
    if np.count_nonzero(close) > len(frac):  # two sites pymatgen would merge into one
        return None
    order = sorted(range(len(symbols)), key=lambda k: (x[k], symbols[k]))  # stable: CIF order within an element
    lattice = np.array(Lattice.from_parameters(*cell).matrix, dtype=np.float64)
    return z[order].astype(np.int64), frac[order], lattice


def _cif_float(text: str) -> float:
    """A CIF number as pymatgen's ``str2float`` reads it (standard uncertainty in brackets dropped)."""
    try:
        return float(text)
    except ValueError:
        from pymatgen.io.cif import str2float

        return str2float(text)


@functools.cache
def _element_z_x(symbol: str) -> tuple[int, float]:
    """Atomic number and pymatgen's Pauling electronegativity (NaN where it has none) of a symbol."""
    from pymatgen.core import Element

    with catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for elements without an electronegativity
        element = Element(symbol)
        return element.Z, float(element.X)


def _cif_pymatgen(source: Path | str, label: str, *, text: bool) -> list[Any]:
    """pymatgen ``Structure`` objects of every data block (the original CGCNN's reading;
    partial occupancies kept visible so that validation can name them)."""
    from pymatgen.io.cif import CifParser

    what = "not readable CIF text" if text else "not a readable CIF"
    if not text:  # read here (CifParser(path) reads it alike) to rename tags pymatgen does not know
        with open(source, encoding="utf-8", errors="replace") as f:
            source = f.read()
    source = unique_block_names(source)  # pymatgen keeps only the last block of a repeated name
    # pymatgen reads symmetry operations only under their underscore names
    source = source.replace(DOTTED_SYMOP_TAG, "_space_group_symop_operation_xyz").replace(
        "_space_group_symop.id", "_space_group_symop_id"
    )
    try:
        with catch_warnings():
            warnings.simplefilter("ignore")
            parser = CifParser.from_str(source, occupancy_tolerance=1.0)
            structures = parser.parse_structures(primitive=False, on_error="raise")
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types for bad CIFs
        missing = _missing_cell_items(source)
        if missing:
            raise StructureReadError(f"{label}: {what}: no {', '.join(missing)} (a crystal's CIF gives all six cell "
                                     "parameters, _cell_length_a/b/c and _cell_angle_alpha/beta/gamma)") from None  # fmt: skip
        raise StructureReadError(f"{label}: {what} ({type(exc).__name__}: {exc})") from None
    if not structures:
        raise StructureReadError(f"{label}: the CIF holds no structure")
    return list(structures)


_CELL_ITEMS = ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")


def _missing_cell_items(text: str) -> list[str]:
    """The cell parameters (``_cell_angle_gamma``, ...) that CIF text gives nowhere, in either spelling
    (``_cell_angle_gamma``, ``_cell.angle_gamma``)."""
    lowered = text.lower()
    return [f"_cell_{item}" for item in _CELL_ITEMS if f"_cell_{item}" not in lowered and f"_cell.{item}" not in lowered]


def _merged_shares(sites: list[Any]) -> list[Any]:
    """``sites`` with the partial shares of one element at one position (Fe2+ 0.5 and Fe3+ 0.5 on one site,
    as pymatgen writes a mixed-valence site) taken as one fully occupied site, as pymatgen reads them; any
    other partial site is left for the caller to refuse."""
    partial = [k for k, site in enumerate(sites) if site.occ < 1.0 - OCCUPANCY_TOLERANCE]
    if len(partial) < 2:
        return sites
    groups: dict[tuple[Any, ...], list[int]] = {}
    for k in partial:
        fract = sites[k].fract.wrap_to_unit()
        key = (sites[k].element.atomic_number, *(round(v % 1.0, 4) % 1.0 for v in (fract.x, fract.y, fract.z)))
        groups.setdefault(key, []).append(k)
    drop: set[int] = set()
    for members in groups.values():
        if len(members) > 1 and abs(sum(sites[k].occ for k in members) - 1.0) <= OCCUPANCY_TOLERANCE:
            sites[members[0]].occ = 1.0
            drop.update(members[1:])
    return [site for k, site in enumerate(sites) if k not in drop]


def gemmi_block_record(small: Any, label: str) -> StructureRecord | None:
    """The validated record of one gemmi ``SmallStructure`` (a CIF data block), or ``None``
    when it holds no crystal (no sites or no cell) or a site whose element gemmi cannot tell (a
    label such as ``OW1`` without a type symbol), so that the caller can fall back to pymatgen.

    Raises:
        InvalidStructureError: a partially occupied (disordered) site, or what
            :func:`~cgcnn_ase.io.records.from_ase`'s validation refuses.
    """
    sites = small.get_all_unit_cell_sites()
    if not sites or small.cell.a <= 0:
        return None
    if any(site.element.atomic_number == 0 for site in sites):
        return None  # a label gemmi cannot place (OW1, Oa without _atom_site_type_symbol): pymatgen reads those
    over = [site for site in sites if site.occ > 1.0 + OCCUPANCY_TOLERANCE]
    if over:
        site = over[0]
        raise InvalidStructureError(
            f"{label}: site {site.label} ({site.element.name}) has occupancy {site.occ:.4g}, above 1; "
            "an occupancy is a fraction of a site (fix the CIF's _atom_site_occupancy)"
        )
    sites = _merged_shares(sites)
    partial = [site for site in sites if site.occ < 1.0 - OCCUPANCY_TOLERANCE]
    if partial:
        site = partial[0]
        raise InvalidStructureError(
            f"{label}: site {site.label} ({site.element.name}) is disordered (partial occupancy {site.occ:.4g}); "
            "CGCNN needs an ordered structure (order it first, e.g. with pymatgen's "
            "OrderDisorderedStructureTransformation)"
        )
    numbers = np.array([site.element.atomic_number for site in sites])
    frac = np.array([[site.fract.x, site.fract.y, site.fract.z] for site in sites])
    cell = np.array(small.cell.orth.mat, dtype=np.float64).T  # gemmi: columns are lattice vectors
    return validate_record(numbers, frac, cell, (True, True, True), label)


__all__ = ["OCCUPANCY_TOLERANCE", "CifReader", "gemmi_block_record", "gemmi_unquote", "read_cif", "read_cif_blocks"]

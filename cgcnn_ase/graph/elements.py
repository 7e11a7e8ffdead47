"""The 92-dimensional CGCNN element features, generated from documented element data.

CGCNN (Xie & Grossman, PRL 120, 145301, 2018) starts every atom from a fixed
binary vector describing its element.  The authors ship the vectors as
``atom_init.json`` (``{"1": [92 numbers], ..., "100": [...]}``, keys are atomic
numbers written as strings); :mod:`cgcnn_ase.graph.element_table` holds such
tables (:class:`~cgcnn_ase.graph.element_table.ElementTable`) and reads and writes
that file format.  This module

* generates the 92-dimensional vectors itself from documented element data
  (:func:`generate_cgcnn_table`), and measures how closely that agrees with the
  authors' file (:func:`compare_tables`, :func:`format_comparison`).

Layout of the 92 dimensions
---------------------------
Reverse-engineered from the authors' ``atom_init.json`` (Z = 1..100).  Nine
one-hot blocks, in this order; an all-zero block means "no data".

====  =====  ===================  ==========================================================
dims  bins   property             encoding used by :func:`generate_cgcnn_table`
====  =====  ===================  ==========================================================
0-18  19     group                index = IUPAC group 1..18 (``Element.group``); index 0 =
                                  f-block elements La-Yb, Ac-No (``Element.block == "f"``)
19-25 7      period               index = period - 1 (``Element.row``; La-Lu 6, Ac-Lr 7)
26-35 10     electronegativity    Pauling scale (``Element.X``), 0.5..4.0, step 0.35
36-45 10     covalent radius      pm, Pyykkoe & Atsumi 2009 single-bond radii, 25..250,
                                  step 22.5
46-57 12     valence electrons    index = n - 1, n = group (groups 1-12), group - 10
                                  (groups 13-18, He: 2), 2 for the f-block (ns2 pair)
58-67 10     1st ionization       ln(E / eV) (``Element.ionization_energy``), 1.3..3.3,
             energy               step 0.2
68-77 10     electron affinity    eV (``Element.electron_affinity``), -3.0..3.7, step 0.67;
                                  a negative value (unbound anion) counts as missing
78-81 4      block                s, p, d, f (``Element.block``; He is put in s, pymatgen
                                  files every group-18 element under p)
82-91 10     atomic volume        ln(V / (cm^3/mol)) (``Element.molar_volume``), 1.5..4.3,
                                  step 0.28
====  =====  ===================  ==========================================================

The paper's supplementary table lists 9 period bins and 18 group bins (93 dims);
the file actually has 7 period bins and 19 group bins (the extra group bin 0
marks lanthanides/actinides, which have no group number there).

Continuous properties are binned with right-closed intervals ``(e_i, e_i+1]``
whose edges are ``numpy.arange(lo, hi, step)`` in float64; values at or below
the first inner edge fall in bin 0 and values above the last inner edge fall in
the last bin.  The right-closed convention and the ``arange`` edges are what
reproduces the original file for values that sit exactly on an edge (Pauling
1.9 of Si, Cu -> bin (1.55, 1.9]; 2.6 of Xe -> bin (2.6, 2.95] because
``arange`` makes that edge 2.5999999999999996).

Data sources: pymatgen's periodic table (``pymatgen.core.periodic_table.Element``)
for everything except the covalent radius; pymatgen has no single-bond radius
set that covers Z = 1..100 (its ``CovalentRadius`` is Cordero 2008, which ends at
Cm and bins differently from the original in 58 of 100 elements), so the
Pyykkoe & Atsumi single-bond radii (Chem. Eur. J. 15, 186 (2009), in pm) are
stored in this module (:data:`PYYKKO_COVALENT_RADII_PM`).

All functions are pure: no global mutable state, no printing, no I/O at import.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cgcnn_ase.graph.element_table import MAX_KNOWN_Z, ElementTable
from cgcnn_ase.warning_blocks import catch_warnings

__all__ = [
    "CGCNN92_BLOCKS",
    "CGCNN92_MAX_Z",
    "FeatureBlock",
    "ElementProperties",
    "PYYKKO_COVALENT_RADII_PM",
    "compare_tables",
    "decode_bins",
    "element_properties",
    "encode_cgcnn92",
    "format_comparison",
    "generate_cgcnn_table",
]

#: Heaviest element with a generated CGCNN-92 vector (Fm), as in the original file.
CGCNN92_MAX_Z = 100


#: Single-bond covalent radii in pm for Z = 1..100 (index Z - 1), from
#: P. Pyykkoe and M. Atsumi, Chem. Eur. J. 15, 186-197 (2009), table of
#: "self-consistent additive covalent radii" (also tabulated by the
#: ``mendeleev`` package as ``covalent_radius_pyykko``).
PYYKKO_COVALENT_RADII_PM: tuple[int, ...] = (
    32, 46, 133, 102, 85, 75, 71, 63, 64, 67,  # H-Ne
    155, 139, 126, 116, 111, 103, 99, 96,  # Na-Ar
    196, 171, 148, 136, 134, 122, 119, 116, 111, 110, 112, 118, 124, 121, 121, 116, 114, 117,  # K-Kr
    210, 185, 163, 154, 147, 138, 128, 125, 125, 120, 128, 136, 142, 140, 140, 136, 133, 131,  # Rb-Xe
    232, 196, 180, 163, 176, 174, 173, 172, 168, 169, 168, 167, 166, 165, 164, 170, 162,  # Cs-Lu
    152, 146, 137, 131, 129, 122, 123, 124, 133, 144, 144, 151, 145, 147, 142,  # Hf-Rn
    223, 201, 186, 175, 169, 170, 171, 172, 166, 166, 168, 168, 165, 167,  # Fr-Fm
)


# --------------------------------------------------------------------------------------
# Layout of the 92 dimensions
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureBlock:
    """One one-hot block of the CGCNN-92 vector.

    ``kind`` is ``"category"`` (the bin index is computed by a rule, see the module
    docstring) or ``"binned"`` (a continuous value cut into ``n_bins`` equal bins
    between ``lo`` and ``hi``, on a natural-log scale when ``log`` is true).
    ``unit`` is the unit of the raw value before any logarithm.  Values below
    ``missing_below`` are treated as missing (no bit set).
    """

    name: str
    offset: int
    n_bins: int
    kind: str
    unit: str = ""
    lo: float = 0.0
    hi: float = 0.0
    log: bool = False
    missing_below: float | None = None

    @property
    def stop(self) -> int:
        """One past the last dimension of this block."""
        return self.offset + self.n_bins

    @property
    def step(self) -> float:
        """Bin width (on the log scale for ``log`` blocks); 0 for categories."""
        return (self.hi - self.lo) / self.n_bins if self.kind == "binned" else 0.0

    def edges(self) -> np.ndarray:
        """The ``n_bins + 1`` bin edges (float64, log scale for ``log`` blocks)."""
        if self.kind != "binned":
            raise ValueError(f"block {self.name!r} is categorical and has no bin edges")
        step = self.step
        edges = np.arange(self.lo, self.hi + 0.5 * step, step, dtype=np.float64)
        if len(edges) != self.n_bins + 1:  # pragma: no cover - guards the constants
            raise AssertionError(f"bad edges for block {self.name!r}")
        return edges

    def bin_index(self, value: float | None) -> int | None:
        """Bin of a raw value (in ``unit``); ``None`` when the value is missing.

        Bins are right-closed ``(e_i, e_i+1]``; values outside ``lo..hi`` are
        clipped into the first or last bin.
        """
        if self.kind != "binned":
            raise ValueError(f"block {self.name!r} is categorical; it has no value bins")
        if value is None or not math.isfinite(value):
            return None
        if self.missing_below is not None and value < self.missing_below:
            return None
        x = value
        if self.log:
            if value <= 0:
                return None
            x = math.log(value)
        i = int(np.searchsorted(self.edges(), x, side="left")) - 1
        return min(max(i, 0), self.n_bins - 1)

    def bin_label(self, index: int) -> str:
        """Human-readable description of bin ``index`` (in ``unit``, not log)."""
        if self.kind != "binned":
            return _CATEGORY_LABELS[self.name](index)
        e = self.edges()
        if self.log:
            e = np.exp(e)
        unit = f" {self.unit}" if self.unit else ""
        if index == 0:
            return f"<= {e[1]:.4g}{unit}"
        if index == self.n_bins - 1:
            return f"> {e[-2]:.4g}{unit}"
        return f"({e[index]:.4g}, {e[index + 1]:.4g}]{unit}"


_BLOCK_LETTERS = "spdf"

_CATEGORY_LABELS = {
    "group": lambda i: "f-block (no group)" if i == 0 else f"group {i}",
    "period": lambda i: f"period {i + 1}",
    "valence_electrons": lambda i: f"{i + 1} valence electrons",
    "block": lambda i: f"{_BLOCK_LETTERS[i]}-block",
}


def _make_blocks() -> tuple[FeatureBlock, ...]:
    specs: list[dict[str, Any]] = [
        dict(name="group", n_bins=19, kind="category"),
        dict(name="period", n_bins=7, kind="category"),
        dict(name="electronegativity", n_bins=10, kind="binned", unit="(Pauling)", lo=0.5, hi=4.0),
        dict(name="covalent_radius", n_bins=10, kind="binned", unit="pm", lo=25.0, hi=250.0),
        dict(name="valence_electrons", n_bins=12, kind="category"),
        dict(name="first_ionization_energy", n_bins=10, kind="binned", unit="eV", lo=1.3, hi=3.3, log=True),
        dict(name="electron_affinity", n_bins=10, kind="binned", unit="eV", lo=-3.0, hi=3.7,
             missing_below=0.0),
        dict(name="block", n_bins=4, kind="category"),
        dict(name="atomic_volume", n_bins=10, kind="binned", unit="cm^3/mol", lo=1.5, hi=4.3, log=True),
    ]
    blocks = []
    offset = 0
    for spec in specs:
        blocks.append(FeatureBlock(offset=offset, **spec))
        offset += spec["n_bins"]
    return tuple(blocks)


#: The nine blocks of the CGCNN-92 vector, in order (offsets 0, 19, 26, 36, 46, 58, 68, 78, 82).
CGCNN92_BLOCKS: tuple[FeatureBlock, ...] = _make_blocks()
_N92 = CGCNN92_BLOCKS[-1].stop  # 92


# --------------------------------------------------------------------------------------
# Element data and encoding
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElementProperties:
    """Raw element data feeding the CGCNN-92 vector (``None`` = not available).

    Units: ``electronegativity`` Pauling scale; ``covalent_radius`` pm;
    ``first_ionization_energy`` and ``electron_affinity`` eV;
    ``atomic_volume`` cm^3/mol.  ``group`` is 1..18 (pymatgen reports 3 for
    La-Lu and Ac-Lr); ``block`` is one of ``"s", "p", "d", "f"``.
    """

    Z: int
    symbol: str
    group: int
    period: int
    block: str
    valence_electrons: int
    electronegativity: float | None
    covalent_radius: float | None
    first_ionization_energy: float | None
    electron_affinity: float | None
    atomic_volume: float | None


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def element_properties(z: int) -> ElementProperties:
    """Raw data of element ``z`` (1..100) as used by :func:`generate_cgcnn_table`.

    Sources (``pymatgen.core.periodic_table.Element`` attributes unless noted):
    ``group`` <- ``Element.group``; ``period`` <- ``Element.row`` (6 for La-Lu, 7 for
    Ac-Lr); ``block`` <-
    ``Element.block`` (He -> ``"s"``: pymatgen files all group-18 elements under
    p, the original puts He in s); ``valence_electrons`` <- rule from group and
    block (see module docstring); ``electronegativity`` <- ``Element.X``;
    ``covalent_radius`` <- :data:`PYYKKO_COVALENT_RADII_PM`;
    ``first_ionization_energy`` <- ``Element.ionization_energy``;
    ``electron_affinity`` <- ``Element.electron_affinity``; ``atomic_volume`` <-
    ``Element.molar_volume``.
    """
    if not isinstance(z, (int, np.integer)) or isinstance(z, bool) or not 1 <= z <= CGCNN92_MAX_Z:
        raise ValueError(f"element data are available for Z = 1..{CGCNN92_MAX_Z}, got {z!r}")
    from pymatgen.core.periodic_table import Element

    el = Element.from_Z(int(z))
    with catch_warnings():  # pymatgen warns for every missing value
        warnings.simplefilter("ignore")
        group = int(el.group)
        # Older pymatgen releases used rows 8/9 for the f-block; the period is 6/7.
        period = 6 if 57 <= el.Z <= 71 else 7 if 89 <= el.Z <= 103 else int(el.row)
        block = "s" if el.Z == 2 else str(el.block)
        x = _finite_or_none(el.X)
        ie = _finite_or_none(el.ionization_energy)
        ea = _finite_or_none(el.electron_affinity)
        vol = _finite_or_none(el.molar_volume)
    if block == "f":
        valence = 2
    elif group <= 12:
        valence = group
    else:
        valence = 2 if el.Z == 2 else group - 10
    return ElementProperties(
        Z=int(z),
        symbol=el.symbol,
        group=group,
        period=period,
        block=block,
        valence_electrons=valence,
        electronegativity=x,
        covalent_radius=float(PYYKKO_COVALENT_RADII_PM[int(z) - 1]),
        first_ionization_energy=ie,
        electron_affinity=ea,
        atomic_volume=vol,
    )


def _bins_of(props: ElementProperties) -> dict[str, int | None]:
    """Bin index per block for one element (``None`` = no data)."""
    out: dict[str, int | None] = {
        "group": 0 if props.block == "f" else props.group,
        "period": props.period - 1,
        "valence_electrons": props.valence_electrons - 1,
        "block": _BLOCK_LETTERS.index(props.block),
    }
    for blk in CGCNN92_BLOCKS:
        if blk.kind == "binned":
            out[blk.name] = blk.bin_index(getattr(props, blk.name))
    return out


def encode_cgcnn92(props: ElementProperties) -> np.ndarray:
    """The 92-dim binary vector (float32) of one element's raw data."""
    vec = np.zeros(_N92, dtype=np.float32)
    bins = _bins_of(props)
    for blk in CGCNN92_BLOCKS:
        i = bins[blk.name]
        if i is not None:
            if not 0 <= i < blk.n_bins:
                raise ValueError(f"{props.symbol}: {blk.name} bin {i} outside 0..{blk.n_bins - 1}")
            vec[blk.offset + i] = 1.0
    return vec


def generate_cgcnn_table() -> ElementTable:
    """Generate this project's CGCNN-92 table for Z = 1..100 from pymatgen data.

    See the module docstring for the layout, sources, units and bin edges.
    Every element 1..100 is supported (group, period, valence and block always
    exist); blocks without data are all zero.  Name: ``"cgcnn92-generated"``.
    """
    features = np.zeros((CGCNN92_MAX_Z + 1, _N92), dtype=np.float32)
    for z in range(1, CGCNN92_MAX_Z + 1):
        features[z] = encode_cgcnn92(element_properties(z))
    return ElementTable(
        name="cgcnn92-generated",
        features=features,
        supported=frozenset(range(1, CGCNN92_MAX_Z + 1)),
    )


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Comparing tables
# --------------------------------------------------------------------------------------


def decode_bins(vector: np.ndarray, blocks: Sequence[FeatureBlock] = CGCNN92_BLOCKS) -> dict[str, int | None]:
    """Bin index per block of one vector: ``None`` if the block is all zero, ``-1`` if not one-hot."""
    vector = np.asarray(vector)
    out: dict[str, int | None] = {}
    for blk in blocks:
        part = vector[blk.offset : blk.stop]
        nz = np.flatnonzero(part)
        if nz.size == 0:
            out[blk.name] = None
        elif nz.size == 1 and part[nz[0]] == 1:
            out[blk.name] = int(nz[0])
        else:
            out[blk.name] = -1
    return out


def compare_tables(
    a: ElementTable,
    b: ElementTable,
    *,
    numbers: Sequence[int] | None = None,
    blocks: Sequence[FeatureBlock] = CGCNN92_BLOCKS,
) -> dict[str, Any]:
    """Agreement of two CGCNN-92-layout tables over ``numbers`` (default: Z supported by both).

    Returns a JSON-serialisable dict: ``n_elements``, ``exact_matches``,
    ``exact_match_fraction`` (whole vector identical), ``block_matches`` and
    ``block_agreement`` (per block: elements whose block slice is identical,
    count and fraction), ``only_in_a`` / ``only_in_b`` (supported by one table
    only) and ``mismatches``: one entry per differing element with its ``Z``,
    ``symbol``, differing ``blocks`` and the decoded bins of both tables
    (``a_bins`` / ``b_bins``, see :func:`decode_bins`).
    """
    width = blocks[-1].stop
    if a.n_features != width or b.n_features != width:
        raise ValueError(f"both tables need {width} features, got {a.n_features} and {b.n_features}")
    zs = sorted(a.supported & b.supported) if numbers is None else sorted(int(z) for z in numbers)
    if not zs:
        raise ValueError("no atomic numbers to compare")
    fa = a.featurize(np.asarray(zs, dtype=np.int64))
    fb = b.featurize(np.asarray(zs, dtype=np.int64))
    block_eq = {
        blk.name: np.all(fa[:, blk.offset : blk.stop] == fb[:, blk.offset : blk.stop], axis=1) for blk in blocks
    }
    from ase.data import chemical_symbols

    exact = np.all(fa == fb, axis=1)
    mismatches = []
    for i, z in enumerate(zs):
        if exact[i]:
            continue
        mismatches.append(
            {
                "Z": z,
                "symbol": chemical_symbols[z] if z <= MAX_KNOWN_Z else f"Z{z}",
                "blocks": [blk.name for blk in blocks if not block_eq[blk.name][i]],
                "a_bins": decode_bins(fa[i], blocks),
                "b_bins": decode_bins(fb[i], blocks),
            }
        )
    n = len(zs)
    return {
        "table_a": a.name,
        "table_b": b.name,
        "n_elements": n,
        "exact_matches": int(exact.sum()),
        "exact_match_fraction": float(exact.sum()) / n,
        "block_matches": {k: int(v.sum()) for k, v in block_eq.items()},
        "block_agreement": {k: float(v.sum()) / n for k, v in block_eq.items()},
        "only_in_a": sorted(a.supported - b.supported),
        "only_in_b": sorted(b.supported - a.supported),
        "mismatches": mismatches,
    }


def format_comparison(result: Mapping[str, Any], *, with_source_values: bool = False) -> str:
    """Markdown report of a :func:`compare_tables` result.

    With ``with_source_values`` the raw pymatgen/Pyykkoe value behind table
    ``a``'s bin is shown for binned properties (meaningful when ``a`` is the
    generated table; needs pymatgen).
    """
    by_name = {blk.name: blk for blk in CGCNN92_BLOCKS}
    a, b = result["table_a"], result["table_b"]
    lines = [
        f"Compared `{a}` (a) with `{b}` (b) over {result['n_elements']} elements.",
        "",
        f"Exact 92-vector match: {result['exact_matches']}/{result['n_elements']} "
        f"({100 * result['exact_match_fraction']:.0f}%)",
        "",
        "| block | elements agreeing | fraction |",
        "|---|---|---|",
    ]
    for name, count in result["block_matches"].items():
        lines.append(f"| {name} | {count}/{result['n_elements']} | {result['block_agreement'][name]:.2f} |")
    lines += ["", "| element | block | a | b |", "|---|---|---|---|"]

    def label(name: str, i: int | None) -> str:
        if i is None:
            return "no data"
        if i < 0 or name not in by_name:
            return "not one-hot" if i < 0 else f"bin {i}"
        return f"bin {i}: {by_name[name].bin_label(i)}"

    for mm in result["mismatches"]:
        props = element_properties(mm["Z"]) if with_source_values and mm["Z"] <= CGCNN92_MAX_Z else None
        for name in mm["blocks"]:
            a_txt = label(name, mm["a_bins"][name])
            if props is not None and by_name.get(name) is not None and by_name[name].kind == "binned":
                value = getattr(props, name)
                a_txt += f" (value {value:.4g})" if value is not None else " (value missing)"
            lines.append(f"| {mm['symbol']} ({mm['Z']}) | {name} | {a_txt} | {label(name, mm['b_bins'][name])} |")
    return "\n".join(lines) + "\n"

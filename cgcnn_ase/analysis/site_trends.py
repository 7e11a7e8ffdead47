"""The paper's site-energy trends, measured on model site energies and on the DFT data themselves.

Xie & Grossman (PRL 120, 145301, 2018, Fig. 3) read three trends off the averaged site energies of
an atomwise CGCNN trained on Castelli's cubic ABX3 perovskites:

1. elements with a large radius are the most stable on the A site;
2. groups 4-6 are the most stable on the B site;
3. large group 13-15 atoms are stable on the A site.

:func:`site_trends` measures each as a number, for any per-element A and B values (model site
energies, or the data's mean heat of formation per A and per B element, :func:`data_site_means`):

- ``radius_spearman_A``: Spearman rank correlation of the A-site values with a radius table
  (:func:`radius_table`); the paper's trend is a negative correlation (larger, lower);
- ``contrast_B_4_6``: mean of the B values of groups 4-6 minus the mean of the other B elements
  (negative: groups 4-6 more stable);
- ``contrast_A_13_15``: the same for groups 13-15 on the A site, and ``contrast_A_13_15_large``
  for the large ones only (periods 5 and 6: In, Sn, Sb, Tl, Pb, Bi) against all other A elements;
- ``spearman_data_A`` / ``spearman_data_B``: the rank correlation with the data's per-element means
  over the elements with at least ``min_count`` cells (how well the values track the data).

:func:`energy_flow` measures where a model puts the energy that depends on the A (or B) element.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from cgcnn_ase.warning_blocks import catch_warnings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: Radius tables :func:`radius_table` knows, all from pymatgen's element data, in Å.
RADIUS_KINDS = ("average_ionic_radius", "atomic_radius")

_FORMULA = re.compile(r"^([A-Z][a-z]?)([A-Z][a-z]?)((?:[A-Z][a-z]?\d*)+)$")
_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)")


def parse_abx3(formula: str) -> tuple[str, str, dict[str, int]]:
    """A, B and the X counts of a Castelli-style formula, which lists A first, then B, then X.

    >>> parse_abx3("SrTiO3")
    ('Sr', 'Ti', {'O': 3})
    >>> parse_abx3("TaKO2N")
    ('Ta', 'K', {'O': 2, 'N': 1})

    Raises:
        ValueError: the formula does not read as ``A B X...`` with three X atoms.
    """
    match = _FORMULA.match(formula.strip())
    if not match:
        raise ValueError(f"not an A B X3 formula: {formula!r}")
    a, b, rest = match.groups()
    xs: dict[str, int] = {}
    for element, count in _TOKEN.findall(rest):
        xs[element] = xs.get(element, 0) + (int(count) if count else 1)
    if sum(xs.values()) != 3:
        raise ValueError(f"not an A B X3 formula (X counts {xs}): {formula!r}")
    return a, b, xs


def data_cells(data: pd.DataFrame, *, value: str = "e_form", formula: str = "formula") -> pd.DataFrame:
    """The data's cells as :func:`~cgcnn_ase.analysis.site_members.cell_table` gives a model's:
    columns ``structure`` (the index), ``A``, ``B``, ``X`` (dict) and ``energy`` (``value``, unchanged units)."""
    import pandas as pd

    parsed = [parse_abx3(f) for f in data[formula]]
    return pd.DataFrame(
        {
            "structure": data.index.astype(str),
            "A": [p[0] for p in parsed],
            "B": [p[1] for p in parsed],
            "X": [p[2] for p in parsed],
            "energy": data[value].to_numpy(dtype=float),
        }
    )


def data_site_means(data: pd.DataFrame, *, value: str = "e_form", formula: str = "formula") -> pd.DataFrame:
    """Mean of ``value`` over the cells with each A element and with each B element.

    Args:
        data: one row per cell with a Castelli-style ``formula`` (A first, then B) and ``value``.
        value: the column averaged (for the Castelli data ``e_form``, eV per 5-atom cell).
        formula: the formula column.

    Returns:
        Columns ``role`` (``A``/``B``), ``element``, ``mean`` (``value``'s units), ``std`` and
        ``count`` (cells), ordered by role, then atomic number.
    """
    from cgcnn_ase.analysis.sites import aggregate_by_element

    cells = data_cells(data, value=value, formula=formula)
    long = cells.melt(id_vars=["energy"], value_vars=["A", "B"], var_name="role", value_name="element")
    return aggregate_by_element(long, value="energy")


def radius_table(elements: Iterable[str], kind: str = "average_ionic_radius") -> pd.Series:
    """A radius per element from pymatgen's element data, in Å (NaN where pymatgen has none).

    Args:
        elements: element symbols.
        kind: ``"average_ionic_radius"`` (pymatgen ``Element.average_ionic_radius``: the mean of
            the element's Shannon ionic radii over its oxidation states, as tabulated in
            pymatgen; 0 in pymatgen, NaN here, for elements without one) or ``"atomic_radius"``
            (``Element.atomic_radius``, the empirical atomic radius of Slater, 1964).

    Returns:
        A Series element -> radius (Å), named ``kind``.
    """
    import warnings

    import pandas as pd
    from pymatgen.core import Element

    if kind not in RADIUS_KINDS:
        raise ValueError(f"kind must be one of {RADIUS_KINDS}, got {kind!r}")
    values = {}
    with catch_warnings():
        warnings.simplefilter("ignore")
        for el in elements:
            radius = getattr(Element(el), kind)
            radius = float(radius) if radius is not None else float("nan")
            values[el] = radius if radius > 0 else float("nan")
    return pd.Series(values, name=kind, dtype=float)


def _spearman(x: pd.Series, y: pd.Series) -> tuple[float, int]:
    """Spearman's rho over the common, finite entries, and their number (NaN below 3)."""
    from scipy.stats import spearmanr

    both = x.to_frame("x").join(y.to_frame("y"), how="inner").replace([np.inf, -np.inf], np.nan).dropna()
    if len(both) < 3:
        return float("nan"), len(both)
    return float(spearmanr(both["x"], both["y"]).statistic), len(both)


def _group_contrast(values: pd.Series, groups: Iterable[int], min_row: int = 1) -> float:
    """Mean of the elements in ``groups`` (and periods >= ``min_row``) minus the mean of the others
    (NaN if either side is empty)."""
    from pymatgen.core import Element

    wanted = set(groups)
    inside = values.index.map(lambda el: Element(el).group in wanted and Element(el).row >= min_row)
    inside = inside.to_numpy(dtype=bool)
    if inside.all() or not inside.any():
        return float("nan")
    return float(values[inside].mean() - values[~inside].mean())


def _role_series(table: Any, role: str) -> pd.Series:
    import pandas as pd

    if isinstance(table, Mapping):
        return pd.Series(dict(table.get(role, {})), dtype=float)
    rows = table[table["role"] == role]
    return pd.Series(rows["mean"].to_numpy(dtype=float), index=rows["element"].astype(str).to_numpy())


def site_trends(
    table: Any,
    *,
    reference: pd.DataFrame | None = None,
    min_count: int = 50,
    radius: str = "average_ionic_radius",
) -> dict[str, float]:
    """The paper's three trends, and the rank agreement with the data, as numbers.

    Args:
        table: per-element values by role: a DataFrame with ``role``, ``element``, ``mean``
            (e.g. :func:`data_site_means`, one member of
            :func:`~cgcnn_ase.analysis.site_members.member_site_energies`, or
            :func:`~cgcnn_ase.analysis.site_members.aggregate_members`) or a mapping
            ``{"A": {el: value}, "B": {...}}``.
        reference: the data's per-element means (:func:`data_site_means`) for ``spearman_data_*``.
        min_count: elements with fewer cells than this in ``reference`` are left out of
            ``spearman_data_*``; also of the trends when ``reference`` is given.
        radius: the radius table (:func:`radius_table`).

    Returns:
        ``radius_spearman_A``, ``contrast_B_4_6``, ``contrast_A_13_15``, ``contrast_A_13_15_large``
        (in ``table``'s units),
        ``spearman_data_A``, ``spearman_data_B`` (NaN without ``reference``) and ``n_A``, ``n_B``
        (the elements used).
    """
    a_site, b_site = _role_series(table, "A"), _role_series(table, "B")
    out: dict[str, float] = {}
    if reference is not None:
        common = reference[reference["count"] >= min_count]
        ref_a, ref_b = _role_series(common, "A"), _role_series(common, "B")
        a_site, b_site = a_site[a_site.index.isin(ref_a.index)], b_site[b_site.index.isin(ref_b.index)]
        out["spearman_data_A"], _ = _spearman(a_site, ref_a)
        out["spearman_data_B"], _ = _spearman(b_site, ref_b)
    else:
        out["spearman_data_A"] = out["spearman_data_B"] = float("nan")
    out["radius_spearman_A"], _ = _spearman(a_site, radius_table(a_site.index, radius))
    out["contrast_B_4_6"] = _group_contrast(b_site, (4, 5, 6))
    out["contrast_A_13_15"] = _group_contrast(a_site, (13, 14, 15))
    out["contrast_A_13_15_large"] = _group_contrast(a_site, (13, 14, 15), min_row=5)
    out["n_A"], out["n_B"] = float(len(a_site)), float(len(b_site))
    return out


def member_trends(
    energies: pd.DataFrame, *, reference: pd.DataFrame | None = None, min_count: int = 50,
    radius: str = "average_ionic_radius",
) -> pd.DataFrame:  # fmt: skip
    """:func:`site_trends` of every member and definition of a per-member table.

    Args:
        energies: :func:`~cgcnn_ase.analysis.site_members.member_site_energies` (columns
            ``member``, ``role``, ``element``, ``mean``; ``definition`` optional).
        reference: see :func:`site_trends`.
        min_count: see :func:`site_trends`.
        radius: see :func:`site_trends`.

    Returns:
        One row per (``definition``, ``member``) with the columns of :func:`site_trends`.
    """
    import pandas as pd

    if "definition" not in energies.columns:
        energies = energies.assign(definition="raw")
    rows = []
    for (definition, member), block in energies.groupby(["definition", "member"], sort=False):
        trends = site_trends(block, reference=reference, min_count=min_count, radius=radius)
        rows.append({"definition": definition, "member": member, **trends})
    return pd.DataFrame(rows)


def summarize_trends(trends: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation across members (ddof=1) of each trend, per definition.

    Returns:
        One row per definition; for every trend column ``X`` the columns ``X`` (mean) and
        ``X_std``, plus ``n_members``.
    """
    metrics = [c for c in trends.columns if c not in ("definition", "member", "n_A", "n_B")]
    grouped = trends.groupby("definition", sort=False)
    out = grouped[metrics].mean()
    spread = grouped[metrics].std().add_suffix("_std")
    out = out.join(spread)
    out["n_members"] = grouped["member"].nunique()
    return out[[c for m in metrics for c in (m, f"{m}_std")] + ["n_members"]].reset_index()


def energy_flow(sites: pd.DataFrame, *, role: str = "A", min_count: int = 50) -> pd.DataFrame:
    """Where a model puts the energy that depends on the element on ``role``: its own site, the other cation, or X.

    For each element on ``role`` (with at least ``min_count`` cells), the mean over its cells of
    the A-site output, the B-site output and the sum of the X-site outputs; these add up to the
    mean cell energy. Across elements, the covariance of each part with the cell energy divided by
    the variance of the cell energy is that part's share of the element-to-element variation;
    the shares add up to 1.

    Args:
        sites: a sites table with roles A/B/X (:func:`~cgcnn_ase.analysis.sites.site_contributions`),
            or a stacked one (:func:`~cgcnn_ase.analysis.site_members.member_site_contributions`).
        role: ``"A"`` or ``"B"``.
        min_count: fewest cells per element.

    Returns:
        One row per (``member``, ``part`` in ``A``, ``B``, ``X``) with ``share`` (dimensionless)
        and ``spread`` (standard deviation across elements of the part's per-element mean, in the
        model's units per cell).
    """
    import pandas as pd

    from cgcnn_ase.analysis.site_members import perovskite_sites

    if role not in ("A", "B"):
        raise ValueError(f"role must be 'A' or 'B', got {role!r}")
    if "member" not in sites.columns:
        sites = sites.assign(member=0)
    perov = perovskite_sites(sites)
    keys = ["member", "structure"]
    parts = perov.pivot_table(index=keys, columns="role", values="contribution", aggfunc="sum")
    label = perov[perov["role"] == role].groupby(keys, sort=False)["element"].first()
    parts = parts.join(label.rename("element")).reset_index()
    rows = []
    for member, block in parts.groupby("member", sort=True):
        counts = block["element"].value_counts()
        block = block[block["element"].isin(counts[counts >= min_count].index)]
        means = block.groupby("element")[["A", "B", "X"]].mean()
        total = means.sum(axis=1)
        variance = float(np.var(total, ddof=1)) if len(total) > 1 else float("nan")
        for part in ("A", "B", "X"):
            covariance = float(np.cov(means[part], total, ddof=1)[0, 1]) if len(total) > 1 else float("nan")
            rows.append({"member": member, "part": part, "share": covariance / variance,
                         "spread": float(means[part].std(ddof=1))})  # fmt: skip
    return pd.DataFrame(rows)


def cell_coupling(sites: pd.DataFrame) -> pd.DataFrame:
    """How closely each site's output follows its cell's prediction, within an element and role.

    For every site, its output minus the mean output of its element on its role, regressed on its
    cell's prediction minus the same element-and-role mean of the predictions. A slope near 1 with
    an R² near 1 means that the site energy is an element constant plus the cell's energy per
    atom: the site carries its cell's energy, not a local one.

    Args:
        sites: a sites table with ``role``, ``element``, ``contribution`` and ``prediction``
            (:func:`~cgcnn_ase.analysis.sites.site_contributions`), optionally stacked with ``member``.

    Returns:
        One row per (``member``, ``role``) with ``slope`` (dimensionless), ``r2`` and ``n`` (sites).
    """
    import pandas as pd

    if "member" not in sites.columns:
        sites = sites.assign(member=0)
    sites = sites[sites["role"].notna()]
    rows = []
    for (member, role), block in sites.groupby(["member", "role"], sort=True):
        keys = block["element"]
        c = block["contribution"] - block.groupby(keys)["contribution"].transform("mean")
        p = block["prediction"] - block.groupby(keys)["prediction"].transform("mean")
        pp, cc = float(np.dot(p, p)), float(np.dot(c, c))
        slope = float(np.dot(c, p)) / pp if pp > 0 else float("nan")
        r2 = float(np.dot(c, p)) ** 2 / (pp * cc) if pp > 0 and cc > 0 else float("nan")
        rows.append({"member": member, "role": role, "slope": slope, "r2": r2, "n": len(block)})
    return pd.DataFrame(rows)


__all__ = [
    "RADIUS_KINDS",
    "cell_coupling",
    "data_cells",
    "data_site_means",
    "energy_flow",
    "member_trends",
    "parse_abx3",
    "radius_table",
    "site_trends",
    "summarize_trends",
]

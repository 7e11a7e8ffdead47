"""The paper's combinatorial search (its Fig. 3c): perovskite candidates estimated from averaged site energies.

Averages of per-site energies by element and role (:func:`~cgcnn_ase.analysis.sites.aggregate_by_element`)
give an additive estimate for every A-B-X combination; :func:`screen_perovskites` enumerates the
combinations the group rule allows and keeps those below a cutoff.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from cgcnn_ase.analysis.site_maps import role_means
from cgcnn_ase.analysis.sites import aggregate_by_element

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


@dataclasses.dataclass
class ScreenResult:
    """Outcome of :func:`screen_perovskites`.

    Attributes:
        candidates: one row per composition below the cutoff, lowest first: ``A``, ``B``,
            ``X`` (e.g. ``"O3"`` or ``"O2N"``), ``formula``, ``e_A``, ``e_B``, ``e_X`` (the mean X
            term), ``energy`` = (e_A + e_B + 3 e_X) / 5, and ``in_input`` (the composition was among
            the analysed structures; ``None`` when that is unknown).
        n_space: size of the full A x B space, |elements with an A-site energy| x |with a B-site energy|.
        n_considered: A x B combinations enumerated (A in ``a_groups``, B in ``b_groups``).
        n_candidates: combinations with an estimate below ``cutoff``.
        shrink_factor: ``n_space / n_considered`` (how much the group rule narrows the search).
        cutoff: the threshold used, in ``units``.
        units: units of the energies.
        a_elements: the A elements enumerated.
        b_elements: the B elements enumerated.
    """

    candidates: pd.DataFrame
    n_space: int
    n_considered: int
    n_candidates: int
    shrink_factor: float
    cutoff: float
    units: str
    a_elements: list[str]
    b_elements: list[str]

    def summary(self) -> str:
        """One line: counts and shrink factor."""
        return (
            f"{self.n_candidates} of {self.n_considered} A x B combinations below {self.cutoff:g} {self.units} "
            f"({len(self.a_elements)} A x {len(self.b_elements)} B elements; full space {self.n_space}, "
            f"shrunk {self.shrink_factor:.1f}x)"
        )


def screen_perovskites(
    df_or_elements: Any,
    *,
    cutoff: float,
    x: str | Mapping[str, int] = "O",
    a_groups: Iterable[int] = (13, 14, 15),
    b_groups: Iterable[int] = (4, 5, 6),
    min_count: int = 1,
    units: str | None = None,
) -> ScreenResult:
    """Enumerate ABX3 compositions from per-role site energies and keep those below a cutoff.

    **Assumption: site energies are additive.** A candidate's energy is estimated as the mean of its
    five site terms, ``(e_A + e_B + 3 e_X) / 5`` (eV/atom for an eV/atom model), where each term
    is the element's mean contribution on that role over the analysed structures. This ignores
    how a site's energy depends on its neighbours (which the model itself does not), so it is a
    cheap pre-screen whose survivors should be predicted directly (build the structures and run
    the model) and then checked with DFT.

    Following Xie & Grossman (2018), A runs over groups 13-15 and B over groups 4-6 by default.

    Args:
        df_or_elements: per-role element means: a sites table (:func:`site_contributions`), an
            aggregate (:func:`aggregate_by_element` with ``role`` and ``element`` keys), or a
            mapping ``{"A": {el: e}, "B": {el: e}, "X": {el: e}}``.
        cutoff: keep candidates with ``energy < cutoff``.
        x: the X element (three X sites), or a mapping of X elements to counts summing to 3
            (e.g. ``{"O": 2, "N": 1}``).
        a_groups: periodic-table groups (pymatgen ``Element.group``) enumerated on the A site.
        b_groups: groups enumerated on the B site.
        min_count: ignore element means from fewer sites than this (needs a table with counts).
        units: units of the energies (default: the table's ``attrs["units"]``, else empty).

    Returns:
        A :class:`ScreenResult` with the candidates and the counts.

    Raises:
        KeyError: an X element has no X-site energy.
    """
    import pandas as pd
    from pymatgen.core import Element

    if isinstance(df_or_elements, pd.DataFrame):
        table = df_or_elements if "mean" in df_or_elements.columns else aggregate_by_element(df_or_elements)
        if min_count > 1 and "count" in table.columns:
            table = table[table["count"] >= min_count]
        means = role_means(table)
        units = units if units is not None else df_or_elements.attrs.get("units", "")
    else:
        means = role_means(df_or_elements)
    units = units or ""
    x_counts = {x: 3} if isinstance(x, str) else {str(k): int(v) for k, v in x.items()}
    if sum(x_counts.values()) != 3 or any(v < 1 for v in x_counts.values()):
        raise ValueError(f"x must be one element or counts summing to 3, got {x_counts}")
    x_means = means.get("X", {})
    missing = [el for el in x_counts if el not in x_means]
    if missing:
        raise KeyError(f"no X-site energy for {missing} (X elements with one: {sorted(x_means)})")
    e_x = sum(x_means[el] * c for el, c in x_counts.items()) / 3.0
    x_label = "".join(f"{el}{c if c > 1 else ''}" for el, c in x_counts.items())

    def by_group(role: str, groups: Iterable[int]) -> list[str]:
        wanted = set(groups)
        elements = [el for el in means.get(role, {}) if Element(el).group in wanted]
        return sorted(elements, key=lambda el: Element(el).Z)

    a_all, b_all = means.get("A", {}), means.get("B", {})
    a_sel, b_sel = by_group("A", a_groups), by_group("B", b_groups)
    known = None
    if isinstance(df_or_elements, pd.DataFrame) and "structure" in df_or_elements.columns:
        known = _known_compositions(df_or_elements)
    rows = []
    for a in a_sel:
        for b in b_sel:
            energy = (a_all[a] + b_all[b] + 3.0 * e_x) / 5.0
            if energy < cutoff:
                rows.append(
                    dict(
                        A=a, B=b, X=x_label, formula=f"{a}{b}{x_label}", e_A=a_all[a], e_B=b_all[b], e_X=e_x,
                        energy=energy, in_input=None if known is None else (a, b, frozenset(x_counts.items())) in known,
                    )
                )  # fmt: skip
    columns = ["A", "B", "X", "formula", "e_A", "e_B", "e_X", "energy", "in_input"]
    candidates = pd.DataFrame(rows, columns=columns).sort_values("energy", kind="stable").reset_index(drop=True)
    candidates.attrs["units"] = units
    n_space = len(a_all) * len(b_all)
    n_considered = len(a_sel) * len(b_sel)
    return ScreenResult(
        candidates=candidates,
        n_space=n_space,
        n_considered=n_considered,
        n_candidates=len(candidates),
        shrink_factor=n_space / n_considered if n_considered else float("inf"),
        cutoff=float(cutoff),
        units=units,
        a_elements=a_sel,
        b_elements=b_sel,
    )


def _known_compositions(df: pd.DataFrame) -> set[tuple[str, str, frozenset]]:
    """(A, B, X counts per formula unit) of the perovskites in a sites table."""
    known = set()
    for _, sites in df[df["role"].isin(["A", "B", "X"])].groupby("structure", sort=False):
        a = sites.loc[sites["role"] == "A", "element"].unique()
        b = sites.loc[sites["role"] == "B", "element"].unique()
        k = int((sites["role"] == "A").sum())
        if len(a) != 1 or len(b) != 1 or k == 0:
            continue  # mixed A or B sites: not a simple ABX3
        xs = sites.loc[sites["role"] == "X", "element"].value_counts()
        if any(c % k for c in xs):
            continue
        known.add((str(a[0]), str(b[0]), frozenset((str(el), int(c) // k) for el, c in xs.items())))
    return known

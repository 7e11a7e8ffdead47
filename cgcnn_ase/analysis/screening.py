"""The paper's combinatorial search (its Fig. 3c): perovskite candidates estimated from averaged site energies.

Averages of per-site energies by element and role (:func:`~cgcnn_ase.analysis.sites.aggregate_by_element`)
give an additive estimate for every A-B-X combination; :func:`screen_perovskites` enumerates the
combinations the group rule allows and keeps those below a cutoff. :func:`score_screen` scores a
screen against reference (e.g. DFT) values: the hit rate of its candidates, of everything the group
rule let through, and of the whole space.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

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
        x_counts: the X elements and their counts per formula unit, e.g. ``{"O": 3}``.
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
    x_counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """One line: counts and shrink factor."""
        shrunk = f"shrunk {self.shrink_factor:.1f}x" if self.n_considered else "no A or B element in the chosen groups"
        return (
            f"{self.n_candidates} of {self.n_considered} A x B combinations below {self.cutoff:g} {self.units} "
            f"({len(self.a_elements)} A x {len(self.b_elements)} B elements; full space {self.n_space}, {shrunk})"
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
        ValueError: ``cutoff`` is not a finite number, or ``x`` does not sum to 3.
        KeyError: an X element has no X-site energy.
    """
    import pandas as pd
    from pymatgen.core import Element

    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real) or not math.isfinite(cutoff):
        raise ValueError(f"cutoff is a finite energy in the table's units (e.g. 0.1), got {cutoff!r}")
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
        x_counts=dict(x_counts),
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


@dataclasses.dataclass
class ScreenScore:
    """Outcome of :func:`score_screen`: how often the screen's compositions are below the cutoff in the reference.

    Attributes:
        cutoff: the threshold, in the reference's (scaled) units.
        n_candidates: candidates with a reference value; ``candidate_hits`` of them are below the cutoff.
        n_considered: compositions the group rule let through that have a reference value;
            ``considered_hits`` of them are below the cutoff.
        n_all: every reference composition with the screen's X; ``all_hits`` below the cutoff.
        candidate_rate, considered_rate, all_rate: the three hit rates (NaN when nothing to count).
        enrichment: ``candidate_rate / all_rate``: how many times more likely a candidate is a hit
            than a composition drawn from the whole space.
        group_enrichment: ``considered_rate / all_rate``: the same for the group rule alone.
        recall: the fraction of the reference hits among the considered compositions that are candidates.
    """

    cutoff: float
    n_candidates: int
    candidate_hits: int
    n_considered: int
    considered_hits: int
    n_all: int
    all_hits: int
    candidate_rate: float
    considered_rate: float
    all_rate: float
    enrichment: float
    group_enrichment: float
    recall: float

    def summary(self) -> str:
        """One line with the three hit rates and the enrichment."""
        return (
            f"below {self.cutoff:g} in the reference: candidates {self.candidate_hits}/{self.n_candidates} "
            f"({self.candidate_rate:.0%}), group rule {self.considered_hits}/{self.n_considered} "
            f"({self.considered_rate:.0%}), all {self.all_hits}/{self.n_all} ({self.all_rate:.0%}); "
            f"enrichment {self.enrichment:.1f}x (group rule alone {self.group_enrichment:.1f}x), recall {self.recall:.0%}"
        )


def _rate(hits: int, n: int) -> float:
    return hits / n if n else float("nan")


def score_screen(
    result: ScreenResult, reference: pd.DataFrame, *, cutoff: float | None = None, value: str = "energy",
    scale: float = 1.0,
) -> ScreenScore:  # fmt: skip
    """Score a screen against reference values (e.g. DFT) of the same compositions.

    Args:
        result: a :func:`screen_perovskites` result.
        reference: one row per composition with ``A``, ``B``, ``X`` (dict element -> count per
            formula unit, as :func:`~cgcnn_ase.analysis.site_trends.data_cells` gives) and ``value``.
            Duplicate compositions count once each (their mean).
        cutoff: the reference threshold, in the reference's units after ``scale`` (default: the
            screen's cutoff).
        value: the reference column.
        scale: factor applied to ``value`` first (e.g. 1/5 for eV per 5-atom cell -> eV/atom).

    Returns:
        A :class:`ScreenScore`.
    """
    cutoff = result.cutoff if cutoff is None else float(cutoff)
    x_key = frozenset(result.x_counts.items())
    values: dict[tuple[str, str], list[float]] = {}
    for a, b, xs, v in zip(reference["A"], reference["B"], reference["X"], reference[value]):
        if frozenset((str(el), int(round(n))) for el, n in xs.items()) == x_key and np.isfinite(v):
            values.setdefault((str(a), str(b)), []).append(float(v) * scale)
    by_pair = {pair: float(np.mean(v)) for pair, v in values.items()}
    considered = {(a, b) for a in result.a_elements for b in result.b_elements}
    candidates = set(zip(result.candidates["A"], result.candidates["B"]))
    hits = {pair for pair, v in by_pair.items() if v < cutoff}
    n_cand = len(candidates & by_pair.keys())
    n_cons = len(considered & by_pair.keys())
    cand_hits, cons_hits = len(candidates & hits), len(considered & hits)
    all_rate = _rate(len(hits), len(by_pair))
    return ScreenScore(
        cutoff=cutoff, n_candidates=n_cand, candidate_hits=cand_hits, n_considered=n_cons, considered_hits=cons_hits,
        n_all=len(by_pair), all_hits=len(hits), candidate_rate=_rate(cand_hits, n_cand),
        considered_rate=_rate(cons_hits, n_cons), all_rate=all_rate,
        enrichment=_rate(cand_hits, n_cand) / all_rate if all_rate else float("nan"),
        group_enrichment=_rate(cons_hits, n_cons) / all_rate if all_rate else float("nan"),
        recall=_rate(cand_hits, cons_hits),
    )  # fmt: skip

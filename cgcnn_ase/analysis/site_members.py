"""Site energies of every ensemble member, their seed mean and seed spread, and other site-energy definitions.

A single atomwise network's split of a crystal's energy among its sites is not unique: two seeds
that predict the same energies can put a different share of it on the A, B or X sites. This module
runs each member (seed) of an ensemble on its own and aggregates per element and role with the
seed mean and the seed standard deviation (:func:`aggregate_members`).

It also defines two alternative cation site energies, both exact in the sense that they add up to
the model's prediction, for when the raw atomwise split does not track the data (docs/site_energies.md):

- ``x_share`` (:func:`cation_site_energies`): each cation's own output plus an equal share of its
  cell's X-site outputs (in a 5-atom ABX3 cell, ``e_A + (e_X1 + e_X2 + e_X3) / 2``);
- ``additive`` (:func:`additive_site_energies`): per-element A, B and X terms fitted by least squares
  to the model's energy per formula unit over many cells, ``E(ABX3) ~ a[A] + b[B] + sum x[X]``.

>>> long = member_site_contributions("pretrained_models/perovskite_site_energy-castelli_cmr-v1", structures)  # doctest: +SKIP
>>> aggregate_members(long)  # role, element, mean (seed mean), seed_std, count, n_members   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cgcnn_ase.analysis.sites import aggregate_by_element, site_contributions, skipped_message, sorted_by_element
from cgcnn_ase.errors import SiteAnalysisError, SparseGraphWarning, UnseenElementWarning
from cgcnn_ase.inference.predictor import CGCNNPredictor, as_predictor
from cgcnn_ase.warning_blocks import catch_warnings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: The site-energy definitions of :func:`member_site_energies`; ``cell`` is the null baseline (no split at all).
DEFINITIONS = ("raw", "x_share", "additive", "cell")


def member_predictors(models: Any) -> list[CGCNNPredictor]:
    """One single-network predictor per member (seed).

    Args:
        models: a predictor, model folder or shipped name (an ensemble gives one predictor per
            member, a single model one predictor), or a sequence of them (each contributes its
            members, in order).

    Returns:
        The predictors, each running exactly one network with that member's own target normaliser.
    """
    if isinstance(models, (list, tuple)):
        out = [p for item in models for p in member_predictors(item)]
        _check_alike(out)
        return out
    predictor = as_predictor(models)
    loaded = predictor.model
    if not loaded.members:
        return [predictor]
    out = []
    for k, member in enumerate(loaded.members):
        spec = dataclasses.replace(
            loaded.spec, normalizer_mean=member.normalizer_mean, normalizer_std=member.normalizer_std
        )
        # member 0 keeps the domain summary (its crystal features are the ensemble's domain space): its domain
        # percentiles and out-of-domain warnings are the ensemble's (round 25c: `sites` had dropped them)
        single = dataclasses.replace(loaded, spec=spec, network=member.network, members=[], calibration=None,
                                     domain=loaded.domain if k == 0 else None)  # fmt: skip
        out.append(CGCNNPredictor(single, device=predictor.device))
    return out


def _check_alike(predictors: list[CGCNNPredictor]) -> None:
    """Refuse members whose site contributions cannot be compared or averaged: another property, units,
    task, readout, convolution or architecture than the first member's (``cgcnn-ase ensemble`` refuses such
    members alike): a spread over different networks is not a spread over seeds.

    Raises:
        SiteAnalysisError: naming the first member that differs and how.
    """
    def traits(p: CGCNNPredictor) -> dict[str, Any]:
        spec = p.model.spec
        return {"property": spec.property, "units": spec.units, "task": spec.task, "readout": spec.readout,
                "convolution": spec.architecture.get("conv", "gated"),
                "architecture": {k: v for k, v in spec.architecture.items() if k != "dropout"},  # no effect here
                "graph settings": spec.graph}  # fmt: skip

    first = traits(predictors[0])
    for k, predictor in enumerate(predictors[1:], start=1):
        for what, theirs in traits(predictor).items():
            if theirs != first[what]:
                raise SiteAnalysisError(
                    f"member {k} ({predictor.model.spec.name}) differs from member 0 ({predictors[0].model.spec.name}) "
                    f"in its {what}: {theirs!r} vs {first[what]!r}; members of one site analysis must be seeds of one model"
                )


def member_site_contributions(
    models: Any,
    structures: Any,
    *,
    batch_size: int = 256,
    on_sparse: str = "warn",
    progress: bool | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """:func:`~cgcnn_ase.analysis.sites.site_contributions` of every member, stacked, with a ``member`` column.

    Roles and Wyckoff labels are worked out once (with member 0); the other members only run
    their network. Each member's contributions average to that member's own prediction.

    Args:
        models: see :func:`member_predictors` (an ensemble folder, or a list of model folders).
        structures: what :func:`site_contributions` accepts; a mapping ``{label: structure}``
            labels the rows. Read once, so an iterator is fine.
        batch_size: crystals per forward pass.
        on_sparse: the predictors' policy for atoms with fewer than 12 neighbours.
        progress: show progress bars.
        **kwargs: passed to :func:`site_contributions` (``roles``, ``symprec``, ``errors``, ...).

    Returns:
        The sites table of :data:`~cgcnn_ase.analysis.sites.SITE_COLUMNS` plus ``member`` (0-based),
        one block of rows per member; ``contribution`` and ``prediction`` in the model's units.
        ``attrs`` as :func:`site_contributions` gives, plus ``n_members``.
    """
    import pandas as pd

    from cgcnn_ase.analysis.sites import labelled_site_records
    from cgcnn_ase.io.records import StructureRecord

    predictors = member_predictors(models)
    good: dict[str, StructureRecord] = {}
    failed: dict[str, str] = {}
    for label, item in labelled_site_records(structures, kwargs.pop("labels", None)):
        if isinstance(item, StructureRecord):
            good[label] = item
        elif kwargs.get("errors", "raise") == "raise":
            raise item
        else:
            failed[label] = str(item)
    with catch_warnings():
        warnings.filterwarnings("ignore", message=r"\d+ structure\(s\) skipped")
        first = site_contributions(predictors[0], good, batch_size=batch_size, on_sparse=on_sparse,
                                   progress=progress, **kwargs)  # fmt: skip
    failed.update(first.attrs.get("failed", {}))
    if failed:
        warnings.warn(skipped_message(failed), UserWarning, stacklevel=2)
    blocks = [first.assign(member=0)]
    kept = list(dict.fromkeys(first["structure"]))
    for k, predictor in enumerate(predictors[1:], start=1):
        block = first.assign(member=k)
        if kept:
            with catch_warnings():  # member 0 has told of unseen elements and sparse graphs
                warnings.simplefilter("ignore", UnseenElementWarning)
                warnings.simplefilter("ignore", SparseGraphWarning)
                result = predictor.predict([good[label] for label in kept], batch_size=batch_size, per_atom=True,
                                           on_sparse=on_sparse, progress=progress)  # fmt: skip
            block["contribution"] = np.concatenate(result.per_atom)
            block["prediction"] = np.repeat(result.values, [len(p) for p in result.per_atom])
        blocks.append(block)
    out = pd.concat(blocks, ignore_index=True)
    out.attrs = dict(first.attrs, failed=failed, n_members=len(predictors))
    return out


def aggregate_members(
    df: pd.DataFrame, *, by: Sequence[str] = ("role", "element"), value: str = "contribution"
) -> pd.DataFrame:
    """Per-element means with their spread across members (seeds).

    Each member's mean per group (:func:`aggregate_by_element`) is taken first; the result is the
    mean of those member means and their standard deviation across members.

    Args:
        df: a table with a ``member`` column (:func:`member_site_contributions` or
            :func:`member_site_energies`); without one it counts as a single member.
        by: grouping columns.
        value: the column to aggregate.

    Returns:
        Columns ``*by, mean, seed_std, seed_min, seed_max, count, n_members``: ``mean`` is the seed
        mean, ``seed_std`` the sample standard deviation of the member means (ddof=1, NaN for one
        member), ``count`` the sites per member. Rows ordered as :func:`aggregate_by_element` orders them.
    """
    if "member" not in df.columns:
        df = df.assign(member=0)
    per_member = aggregate_by_element(df, by=["member", *by], value=value)
    by = list(by)
    grouped = per_member.groupby(by, dropna=False, sort=False)
    out = grouped["mean"].agg(["mean", "std", "min", "max"]).rename(
        columns={"std": "seed_std", "min": "seed_min", "max": "seed_max"}
    )
    out["count"] = grouped["count"].max().astype("int64")
    out["n_members"] = grouped["member"].nunique().astype("int64")
    return sorted_by_element(out.reset_index(), by, attrs=df.attrs)


# ---------------------------------------------------------------------------------------------
# Site-energy definitions
# ---------------------------------------------------------------------------------------------


def perovskite_sites(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``df`` (with a ``member`` column) whose structure has exactly the roles A, B and X,
    in the ratio 1:1:3, with one A and one B element."""
    keys = ["member", "structure"]
    sites = df[df["role"].isin(["A", "B", "X"])]
    counts = sites.groupby([*keys, "role"], sort=False).size().unstack("role", fill_value=0)
    elements = sites[sites["role"] != "X"].groupby([*keys, "role"], sort=False)["element"].nunique()
    elements = elements.unstack("role", fill_value=0)
    counts = counts.reindex(columns=["A", "B", "X"], fill_value=0)
    elements = elements.reindex(index=counts.index, columns=["A", "B"], fill_value=0)
    ok = (counts["A"] > 0) & (counts["B"] == counts["A"]) & (counts["X"] == 3 * counts["A"])
    ok &= (elements["A"] == 1) & (elements["B"] == 1)
    full = counts.sum(axis=1) == df.groupby(keys, sort=False).size().reindex(counts.index)
    good = counts.index[ok & full]
    return sites.set_index(keys).loc[good].reset_index()


def cation_site_energies(df: pd.DataFrame) -> pd.DataFrame:
    """A- and B-site energies of perovskite cells, raw and with an equal share of the X-site outputs.

    Args:
        df: a sites table with roles ``A``/``B``/``X`` (:func:`site_contributions` or
            :func:`member_site_contributions`); structures that are not ABX3 with one A and one B
            element (other roles, mixed A or B sites) are left out.

    Returns:
        One row per A or B site: ``structure``, ``member`` (0 when the input has none), ``role``,
        ``element``, ``raw`` (the site's own output) and ``x_share`` (``raw`` plus the cell's X
        outputs divided by its number of cations, so the cations' ``x_share`` values sum to the
        cell's total), in the model's units (eV per site for an eV/atom model).
    """
    if "member" not in df.columns:
        df = df.assign(member=0)
    keys = ["member", "structure"]
    perov = perovskite_sites(df)
    is_x = perov["role"] == "X"
    x_total = perov[is_x].groupby(keys, sort=False)["contribution"].sum()
    n_cations = perov[~is_x].groupby(keys, sort=False)["contribution"].size()
    cations = perov[~is_x][[*keys, "role", "element", "contribution"]].rename(columns={"contribution": "raw"})
    cations = cations.join((x_total / n_cations).rename("share"), on=keys)
    cations["x_share"] = cations["raw"] + cations.pop("share")
    cations = cations[["structure", "member", "role", "element", "raw", "x_share"]].reset_index(drop=True)
    cations.attrs = dict(df.attrs)
    return cations


def cell_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (member, perovskite cell): its A, B, X elements and its energy per formula unit.

    Args:
        df: a sites table with roles (see :func:`cation_site_energies`; the same cells are kept).

    Returns:
        Columns ``member``, ``structure``, ``A``, ``B``, ``X`` (a dict element -> count per formula
        unit) and ``energy``: the sum of the cell's contributions divided by its number of formula
        units (eV per formula unit for an eV/atom model).
    """
    import pandas as pd

    if "member" not in df.columns:
        df = df.assign(member=0)
    keys = ["member", "structure"]
    perov = perovskite_sites(df)
    energy = perov.groupby(keys, sort=False)["contribution"].sum()
    k = perov[perov["role"] == "A"].groupby(keys, sort=False).size()
    cations = perov[perov["role"] != "X"].groupby([*keys, "role"], sort=False)["element"].first().unstack("role")
    x_counts = perov[perov["role"] == "X"].groupby([*keys, "element"], sort=False).size()
    xs: dict[tuple[Any, Any], dict[str, float]] = {}
    for (member, structure, element), count in x_counts.items():
        xs.setdefault((member, structure), {})[str(element)] = count / k[(member, structure)]
    index = energy.index
    return pd.DataFrame(
        {
            "member": index.get_level_values(0),
            "structure": index.get_level_values(1),
            "A": cations["A"].reindex(index).to_numpy(),
            "B": cations["B"].reindex(index).to_numpy(),
            "X": [xs[key] for key in index],
            "energy": (energy / k.reindex(index)).to_numpy(dtype=float),
        }
    )


def additive_site_energies(cells: pd.DataFrame, *, value: str = "energy") -> pd.DataFrame:
    """Per-element A, B and X site terms fitted by least squares: ``E ~ a[A] + b[B] + sum_X n_X x[X]``.

    The terms are defined up to constants that move energy between roles (adding ``c`` to every
    ``a`` and ``-c`` to every ``b`` changes nothing); the minimum-norm solution is returned. Ranks
    and differences within a role, and every composition's estimate, do not depend on that choice.

    Args:
        cells: one row per cell with ``A``, ``B``, ``X`` (dict element -> count per formula unit)
            and ``value`` (:func:`cell_table`, or a data table with those columns).
        value: the column fitted (energy per formula unit, e.g. eV per 5-atom cell).

    Returns:
        Columns ``role``, ``element``, ``mean`` (the fitted term, per site, in ``value``'s units)
        and ``count`` (cells with that element on that role; for X, sites).
    """
    import pandas as pd

    columns: dict[tuple[str, str], int] = {}
    for a, b, xs in zip(cells["A"], cells["B"], cells["X"]):
        for key in (("A", a), ("B", b), *(("X", el) for el in xs)):
            columns.setdefault(key, len(columns))
    design = np.zeros((len(cells), len(columns)))
    counts = np.zeros(len(columns))
    for i, (a, b, xs) in enumerate(zip(cells["A"], cells["B"], cells["X"])):
        for key, weight in ((("A", a), 1.0), (("B", b), 1.0), *((("X", el), n) for el, n in xs.items())):
            design[i, columns[key]] += weight
            counts[columns[key]] += weight
    coef, _, rank, _ = np.linalg.lstsq(design, cells[value].to_numpy(dtype=float), rcond=None)
    # the constants the docstring names: a[A] + c, b[B] - c always; x[X] - c' with a[A] + 3c' where every cell has 3 X
    gauge = 1 + (len({sum(xs.values()) for xs in cells["X"]}) == 1)
    if len(columns) - rank > gauge:
        warnings.warn(
            f"the {len(cells)} cells do not separate every element's term ({len(columns)} terms, {rank} independent "
            f"equations, {gauge} of the missing ones the roles' constants): elements that always occur together in "
            "these cells get an arbitrary split of their sum; add cells that combine them with others",
            UserWarning,
            stacklevel=2,
        )
    out = pd.DataFrame(
        [(role, el, float(coef[j]), int(round(counts[j]))) for (role, el), j in columns.items()],
        columns=["role", "element", "mean", "count"],
    )
    return out.sort_values(["role", "element"], kind="stable").reset_index(drop=True)


def member_site_energies(df: pd.DataFrame) -> pd.DataFrame:
    """Per-member, per-element site energies under every definition of :data:`DEFINITIONS`.

    Args:
        df: a stacked sites table (:func:`member_site_contributions`) or one member's.

    Returns:
        Columns ``definition``, ``member``, ``role``, ``element``, ``mean`` and ``count``, in the
        model's units per site: ``raw`` (A, B and X: the member's mean output over the element's
        sites), ``x_share`` (A and B, :func:`cation_site_energies`), ``additive`` (A, B and X:
        the fitted terms of :func:`additive_site_energies`; ``count`` in cells, X in sites) and ``cell``
        (A, B and X: the member's mean *prediction* over the cells holding the element, each site given its
        cell's value: the null baseline of a decomposition, which per-element trends of a site energy must
        beat to say anything about the site; round 25c found the raw ones do not).
        Only ABX3 cells with one A and one B element count.
    """
    import pandas as pd

    if "member" not in df.columns:
        df = df.assign(member=0)
    raw = aggregate_by_element(perovskite_sites(df), by=["member", "role", "element"])
    parts = [raw.drop(columns="std").assign(definition="raw")]
    sites = perovskite_sites(df)
    baseline = aggregate_by_element(sites.assign(contribution=sites["prediction"]), by=["member", "role", "element"])
    parts.append(baseline.drop(columns="std").assign(definition="cell"))
    cations = cation_site_energies(df)
    table = aggregate_by_element(cations, by=["member", "role", "element"], value="x_share")
    parts.append(table.drop(columns="std").assign(definition="x_share"))
    for member, block in cell_table(df).groupby("member", sort=True):
        parts.append(additive_site_energies(block).assign(member=member, definition="additive"))
    out = pd.concat(parts, ignore_index=True)[["definition", "member", "role", "element", "mean", "count"]]
    out.attrs = dict(df.attrs)
    return out


__all__ = [
    "DEFINITIONS",
    "additive_site_energies",
    "aggregate_members",
    "cation_site_energies",
    "cell_table",
    "member_predictors",
    "member_site_contributions",
    "member_site_energies",
]

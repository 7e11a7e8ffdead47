"""Periodic-table maps of averaged site energies (the paper's Fig. 3a-b) and the site-energy report.

Matplotlib's object API only (no pyplot state). :func:`write_site_report` is what
``cgcnn-ase sites`` runs: contributions, per-element averages, maps and a CSV in one folder.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cgcnn_ase.analysis.site_members import aggregate_members, member_site_contributions
from cgcnn_ase.analysis.sites import aggregate_by_element, site_contributions
from cgcnn_ase.inference.predictor import as_predictor

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cgcnn_ase.inference.predictor import CGCNNPredictor


def role_means(table: Any) -> dict[str, dict[str, float]]:
    """``{role: {element: mean}}`` from a sites table, an aggregate table, or a nested mapping."""
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        if "mean" not in table.columns:
            table = aggregate_by_element(table)
        out: dict[str, dict[str, float]] = {}
        for role, element, mean in zip(table["role"], table["element"], table["mean"]):
            if role is None or (isinstance(role, float) and np.isnan(role)):
                continue
            out.setdefault(str(role), {})[str(element)] = float(mean)
        return out
    if isinstance(table, Mapping):
        return {str(role): {str(el): float(v) for el, v in values.items()} for role, values in table.items()}
    raise TypeError(f"expected a DataFrame or a mapping role -> element -> value, got {type(table).__name__}")


def _role_spreads(table: Any) -> dict[str, dict[str, float]]:
    """``{role: {element: seed_std}}`` of an aggregate with a ``seed_std`` column, else ``{}``."""
    import pandas as pd

    if not isinstance(table, pd.DataFrame) or "seed_std" not in table.columns:
        return {}
    out: dict[str, dict[str, float]] = {}
    for role, element, std in zip(table["role"], table["element"], table["seed_std"]):
        if isinstance(role, str):
            out.setdefault(role, {})[str(element)] = float(std)
    return out


def _table_position(z: int) -> tuple[int, int]:
    """(row, column) of element ``z`` in the drawn table, 0-based; lanthanides/actinides in rows 7 and 8."""
    from pymatgen.core import Element

    if 57 <= z <= 71:
        return 7, z - 57 + 2
    if 89 <= z <= 103:
        return 8, z - 89 + 2
    element = Element.from_Z(z)
    return element.row - 1, element.group - 1


def colour_range(data: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> tuple[float, float]:
    """The ends of a map's linear colour range: ``vmin``/``vmax``, by default the smallest and largest of ``data``;
    a range that spans 0 is widened to be symmetric about it (0 at the colour map's centre, white in coolwarm, so
    the sign reads at a glance; round 29d: a two-slope scale stretched -0.01..0 over half the colours, so a value
    zero within its spread was the map's deepest blue)."""
    lo = vmin if vmin is not None else (float(data.min()) if len(data) else 0.0)
    hi = vmax if vmax is not None else (float(data.max()) if len(data) else 1.0)
    if lo < 0.0 < hi:
        return -max(-lo, hi), max(-lo, hi)
    return (lo - 0.5, hi + 0.5) if hi <= lo else (lo, hi)


def periodic_table_heatmap(
    values: Mapping[str, float],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    units: str = "",
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    fmt: str = "{:.2f}",
    max_z: int = 103,
    spread: Mapping[str, float] | None = None,
) -> Path:
    """A periodic table coloured by one value per element, written as PNG or SVG (by ``path``'s suffix).

    Rows and groups come from pymatgen's ``Element.row`` / ``Element.group``; the lanthanides and
    actinides sit in two rows of their own below the table. Elements without a value (absent, or
    NaN) are blank outlined cells. Each cell shows the symbol and the value; a colour bar gives the
    units. A colour range that spans 0 is widened to be symmetric about it, so that 0 sits at the colour map's
    centre on a linear scale.

    Args:
        values: element symbol -> value.
        path: output file; ``.png`` or ``.svg`` (anything matplotlib writes). Folders are created.
        title: figure title.
        units: colour-bar label.
        cmap: matplotlib colour map name (``None``: the diverging ``coolwarm`` for values of both signs, white at
            0, and the sequential ``viridis`` for values of one sign, whose middle means nothing; round 30a: low
            values of an all-positive map read as negative in coolwarm's blue).
        vmin: lower end of the colour range (default: the smallest value).
        vmax: upper end of the colour range (default: the largest value).
        fmt: format of the value printed in each cell.
        max_z: last element drawn (103, Lr, by default).
        spread: element symbol -> an uncertainty of its value (e.g. the standard deviation across
            ensemble members), printed as ``±spread`` under the value; elements whose spread is
            at least half the colour range get a hatched cell (their colour is not reliable).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import matplotlib
    from ase.data import atomic_numbers, chemical_symbols
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    unknown = [s for s in values if s not in atomic_numbers or atomic_numbers[s] == 0]
    if unknown:
        raise ValueError(f"not element symbols: {unknown[:5]}")
    finite = {s: float(v) for s, v in values.items() if v is not None and np.isfinite(float(v))}
    data = np.array(list(finite.values()), dtype=float)
    lo, hi = colour_range(data, vmin, vmax)
    norm = Normalize(vmin=lo, vmax=hi)
    colormap = matplotlib.colormaps[cmap or ("coolwarm" if lo < 0.0 < hi else "viridis")]

    fig = Figure(figsize=(13.0, 7.6), dpi=120, layout="constrained")
    ax = fig.subplots()
    for z in range(1, max_z + 1):
        row, col = _table_position(z)
        y = row + (0.4 if row >= 7 else 0.0)  # a gap above the f-block rows
        symbol = chemical_symbols[z]
        if symbol in finite:
            face = colormap(norm(finite[symbol]))
            r, g, b = face[:3]
            ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
        else:  # no value: an outlined blank cell, never a colour of the map (coolwarm's centre is grey)
            face, ink = "white", "#a6a6a6"
        edge = "white" if symbol in finite else "#bfbfbf"
        ax.add_patch(Rectangle((col, y), 0.94, 0.94, facecolor=face, edgecolor=edge, linewidth=0.5))
        ax.text(col + 0.47, y + 0.36, symbol, ha="center", va="center", fontsize=9, color=ink, weight="bold")
        if symbol in finite:
            ax.text(col + 0.47, y + 0.64, fmt.format(finite[symbol]), ha="center", va="center", fontsize=7, color=ink)
            error = (spread or {}).get(symbol)
            if error is not None and np.isfinite(float(error)):
                label = "±" + fmt.format(float(error))
                ax.text(col + 0.47, y + 0.84, label, ha="center", va="center", fontsize=6, color=ink)
                if float(error) >= 0.5 * (hi - lo):
                    ax.add_patch(Rectangle((col, y), 0.94, 0.94, fill=False, hatch="///", edgecolor=ink, linewidth=0))
    for row, text in ((5, "La–Lu"), (6, "Ac–Lr")):  # placeholders in group 3 for the f-block rows
        if (row == 5 and max_z >= 57) or (row == 6 and max_z >= 89):
            ax.text(2 + 0.47, row + 0.47, text, ha="center", va="center", fontsize=6, color="#7f7f7f")
    ax.set_xlim(-0.1, 18.0)
    ax.set_ylim(9.5, -0.1)
    ax.set_aspect("equal")
    ax.axis("off")
    mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=colormap)
    fig.colorbar(mappable, ax=ax, orientation="horizontal", shrink=0.5, pad=0.01, aspect=40, label=units or None)
    if title:
        ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def site_energy_maps(
    df: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    roles: Sequence[str] = ("A", "B"),
    formats: Sequence[str] = ("png", "svg"),
    units: str | None = None,
    cmap: str | None = None,
    shared_scale: bool = False,
) -> list[Path]:
    """One periodic-table heat map per role of the mean contribution per element: ``{role}_sites.{fmt}``.

    Args:
        df: a sites table (:func:`site_contributions`) or its aggregate (:func:`aggregate_by_element`,
            or :func:`~cgcnn_ase.analysis.site_members.aggregate_members`, whose ``seed_std`` is
            printed in each cell as ``±``, so the spread across seeds stays visible).
        out_dir: folder to write to (created).
        roles: roles to draw, e.g. ``("A", "B")``; a role without any site is skipped with a warning.
        formats: file suffixes to write for each role.
        units: colour-bar units (default: ``df.attrs["units"]``).
        cmap: matplotlib colour map (``None``: as :func:`periodic_table_heatmap` chooses).
        shared_scale: one colour range for all roles (compare A with B) instead of one per role
            (contrast within a role).

    Returns:
        The written files, role by role, format by format.
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame) or "element" not in df.columns or "role" not in df.columns:
        raise TypeError("site_energy_maps takes a sites table (site_contributions) or its per-element aggregate "
                        f"(aggregate_by_element, aggregate_members), with 'role' and 'element' columns; got {type(df).__name__}")  # fmt: skip
    means = role_means(df)
    spreads = _role_spreads(df)
    units = units if units is not None else df.attrs.get("units", "")
    drawn = {role: means.get(role, {}) for role in roles}
    for role, values in drawn.items():
        if not values:
            warnings.warn(f"no sites with role {role!r}: its map is not written", UserWarning, stacklevel=2)
    vmin = vmax = None
    if shared_scale:
        everything = [v for values in drawn.values() for v in values.values()]
        if everything:
            vmin, vmax = min(everything), max(everything)
    label = ", ".join(str(df.attrs[k]) for k in ("model", "property") if df.attrs.get(k))
    kind = df.attrs.get("kind") or (df["kind"].iloc[0] if "kind" in df.columns and len(df) else "atomwise")
    what = "site contribution" if kind == "atomwise" else "first-order attribution"
    out_dir = Path(out_dir)
    paths = []
    for role, values in drawn.items():
        if not values:
            continue
        title = f"Mean {what} on {role} sites" + (f" ({label})" if label else "")
        if spreads:
            n_members = int(df["n_members"].max()) if "n_members" in df.columns else 0
            title += f"\nseed mean ± seed std over {n_members} members" if n_members else "\nmean ± seed std"
        for fmt in formats:
            path = out_dir / f"{role}_sites.{fmt}"
            paths.append(
                periodic_table_heatmap(
                    values, path, title=title, units=units, cmap=cmap, vmin=vmin, vmax=vmax, spread=spreads.get(role)
                )
            )
    return paths


def write_site_report(
    predictor: CGCNNPredictor | str | os.PathLike,
    structures: Any,
    out_dir: str | os.PathLike,
    *,
    roles: Sequence[str] = ("A", "B"),
    batch_size: int = 64,
    labels: Sequence[str] | None = None,
    symprec: float = 0.01,
    allow_mean_pooled: bool = False,
    errors: Literal["raise", "skip"] = "raise",
    cmap: str | None = None,
    formats: Sequence[str] = ("png", "svg"),
    on_sparse: Literal["warn", "error", "ignore"] = "warn",
    progress: bool | None = None,
) -> list[Path]:
    """Site contributions, per-element table and maps for a set of structures, written to a folder.

    Writes ``sites.csv`` (:func:`site_contributions`), ``by_element.csv``
    (:func:`aggregate_by_element`) and ``{role}_sites.png`` / ``.svg`` for each of ``roles``
    (:func:`site_energy_maps`; a role with no sites, e.g. for non-perovskites, is skipped with a
    warning). Contributions are in the model's units (``predictor.units``), named in each table's ``units``
    column. Both tables have an ``unseen`` column: the element never occurred in the model's training data.

    For an ensemble, every member runs on its own (a network's split among sites depends on its
    seed): ``sites.csv`` holds the members' mean contribution and its standard deviation across
    members (``seed_std``), ``by_element.csv`` is :func:`~cgcnn_ase.analysis.site_members.aggregate_members`
    (seed mean, ``seed_std``, ...), and the maps print each element's ``± seed_std``.

    Args:
        predictor: a predictor, a model folder, or a shipped model's name (atomwise readout).
        structures: the crystals (see :func:`site_contributions`).
        out_dir: output folder (created).
        roles: roles to map.
        batch_size: crystals per forward pass.
        labels: names for the structures (see :func:`site_contributions`).
        symprec: tolerance of the symmetry analysis, Å.
        allow_mean_pooled: accept a mean-pooled model (first-order attributions; see
            :func:`site_contributions`).
        errors: ``"raise"`` or ``"skip"`` unusable structures.
        cmap: colour map of the heat maps.
        formats: file suffixes of the heat maps.
        on_sparse: policy for atoms with fewer than 12 neighbours in the cutoff.
        progress: show a progress bar.

    Returns:
        The written files: ``sites.csv``, ``by_element.csv``, then the maps, then (with
        ``errors="skip"`` and structures that failed) ``skipped.csv``: columns ``structure, error``.
    """
    predictor = as_predictor(predictor)
    options = dict(batch_size=batch_size, labels=labels, symprec=symprec, allow_mean_pooled=allow_mean_pooled,
                   errors=errors, on_sparse=on_sparse, progress=progress)  # fmt: skip
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if predictor.is_ensemble:  # each member on its own: the seed mean and the seed spread
        stacked = member_site_contributions(predictor, structures, **options)
        table = aggregate_members(stacked)
        keys = ["structure", "site"]
        df = stacked[stacked["member"] == 0].drop(columns="member").reset_index(drop=True)
        grouped = stacked.groupby(keys, sort=False)
        seeds = grouped[["contribution", "prediction"]].mean().join(grouped["contribution"].std().rename("seed_std"))
        df = df.drop(columns=["contribution", "prediction"]).join(seeds, on=keys)[[*df.columns, "seed_std"]]
        df.attrs = dict(stacked.attrs)
    else:
        df = site_contributions(predictor, structures, **options)
        table = aggregate_by_element(df)
    unseen = set(df.loc[df["unseen"], "element"])
    table = table.assign(unseen=table["element"].isin(unseen))  # the element never occurred in training
    sites_csv = out_dir / "sites.csv"
    df.assign(units=predictor.units).to_csv(sites_csv, index=False)  # the files carry their units, as predict's do
    by_element_csv = out_dir / "by_element.csv"
    table.assign(units=predictor.units).to_csv(by_element_csv, index=False)
    maps = site_energy_maps(table, out_dir, roles=roles, formats=formats, cmap=cmap)
    written = [sites_csv, by_element_csv, *maps]
    skipped_csv = out_dir / "skipped.csv"
    failed = df.attrs.get("failed", {})
    if failed:  # with errors="skip": which structures are missing from the tables, and why
        import pandas as pd

        pd.DataFrame({"structure": list(failed), "error": list(failed.values())}).to_csv(skipped_csv, index=False)
        written.append(skipped_csv)
    elif skipped_csv.exists():  # left by an earlier report into this folder
        skipped_csv.unlink()
    return written

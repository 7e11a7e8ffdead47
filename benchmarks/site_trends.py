"""The paper's site-energy trends: Eq. 4 and Eq. 5 atomwise models, seed by seed, against the DFT data.

Runs every member of each model on all 17,428 Castelli perovskites (the site energies interpret the
model; no model or setting is chosen here, so the test split is not singled out), then measures
(cgcnn_ase.analysis.site_trends, docs/site_energies.md):

* per definition of a site energy (raw atomwise output, with an equal X share, least-squares
  additive terms, and the null baseline ``cell``: every site given its cell's predicted energy per atom, no split
  at all) and per member: Spearman against the data's mean heat of formation per A / per B
  element (elements with >= 50 cells), Spearman of the A-site values with the ionic radius, the
  B-site group 4-6 and A-site group 13-15 contrasts; mean ± std across members;
* the same trends of the data themselves (per-element means and the additive fit of e_form);
* where each model puts the A- and B-dependent energy (energy_flow);
* how far one crystal's site energies agree across seeds (the order of its A and B site energies, the seed std
  of each site against that of the cell's prediction);
* the paper's screen (A in groups 13-15, B in groups 4-6, X = O3) per member and definition, scored
  against DFT at the cutoff, and the same screen on the DFT data's own additive terms (no model).

Writes markdown tables to stdout and CSVs plus maps (seed mean ± seed std) to --out.

    python benchmarks/site_trends.py --eq4 pretrained_models/perovskite_site_energy-castelli_cmr-v1 \\
        --eq5 pretrained_models/perovskite_formation_energy-castelli_cmr-v1 runs/eq5/seed-1 ... --out /tmp/site_trends
    # about 4 minutes at one thread for two 5-member models; needs ../shared
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

TREND_COLUMNS = ("spearman_data_A", "spearman_data_B", "radius_spearman_A", "contrast_B_4_6", "contrast_A_13_15",
                 "contrast_A_13_15_large")


def _parse(data) -> dict:
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen rounds coordinates such as 0.4999999
        return {i: Structure.from_str(cif, fmt="cif") for i, cif in zip(data.index, data["cif"])}


def _cell(mean: float, std: float | None) -> str:
    if std is None or math.isnan(std):
        return "–" if math.isnan(mean) else f"{mean:+.3f}"
    return f"{mean:+.3f} ± {std:.3f}"


def _trend_rows(name: str, summary) -> list[str]:
    rows = []
    for _, row in summary.iterrows():
        cells = [_cell(row[c], row.get(f"{c}_std")) for c in TREND_COLUMNS]
        rows.append(f"| {name} | {row['definition']} | {int(row.get('n_members', 1))} | " + " | ".join(cells) + " |")
    return rows


def _estimate_rank(estimates, cells) -> float:
    """Spearman of the screen's additive estimates with DFT (e_form) over the enumerated ABO3 in the data."""
    from scipy.stats import spearmanr

    oxides = cells[[xs == {"O": 3} for xs in cells["X"]]].groupby(["A", "B"])["energy"].mean()
    both = estimates.set_index(["A", "B"])["energy"].to_frame("estimate").join(oxides, how="inner")
    return float(spearmanr(both["estimate"], both["energy"]).statistic)


def _screens(name: str, energies, cells, cutoff: float) -> tuple[list[str], list[dict]]:
    from cgcnn_ase.analysis.screening import score_screen, screen_perovskites

    rows, records = [], []
    for definition in ("raw", "additive"):
        block = energies[energies["definition"] == definition]
        for member, table in block.groupby("member", sort=True):
            screen = screen_perovskites(table, cutoff=cutoff, x="O", units="eV/atom")
            score = score_screen(screen, cells, scale=0.2)
            everything = screen_perovskites(table, cutoff=1e9, x="O").candidates  # no real cutoff: all estimates
            rank = _estimate_rank(everything, cells)
            records.append(dict(model=name, definition=definition, member=member, n_space=screen.n_space,
                                cutoff=cutoff, lowest=everything["energy"].min(), highest=everything["energy"].max(),
                                n_considered=screen.n_considered, n_candidates=screen.n_candidates,
                                n_scored=score.n_candidates, spearman_estimate_dft=rank,
                                **{k: getattr(score, k) for k in ("candidate_hits", "candidate_rate", "considered_rate",
                                                                  "all_rate", "enrichment", "group_enrichment",
                                                                  "recall")}))  # fmt: skip
    import pandas as pd

    frame = pd.DataFrame(records)

    def cell(column: str, fmt: str) -> str:  # mean ± std across members; the mean alone for one
        values = block[column]
        return format(values.mean(), fmt) + ("" if len(values) < 2 else f" ± {format(values.std(), fmt.lstrip('+'))}")

    for definition, block in frame.groupby("definition", sort=False):
        rows.append(
            f"| {name} | {definition} | {cutoff:g} | {cell('n_candidates', '.1f')} "
            f"of {int(block['n_considered'].iloc[0])} ({block['n_scored'].mean():.1f} in the data) | "
            f"{cell('candidate_rate', '.0%')} | {cell('enrichment', '.1f')} | {cell('recall', '.0%')} | "
            f"{cell('spearman_estimate_dft', '+.3f')} | {block['lowest'].mean():.3f} to {block['highest'].mean():.3f} |"
        )
    return rows, records


def _model(name, models, structures, reference, cells, args, out: Path) -> dict:
    import pandas as pd

    from cgcnn_ase.analysis.site_maps import site_energy_maps
    from cgcnn_ase.analysis.site_members import aggregate_members, member_site_contributions, member_site_energies
    from cgcnn_ase.analysis.site_trends import cell_coupling, energy_flow, member_trends, summarize_trends

    cache = out / f"{name}_sites.parquet"
    start = time.perf_counter()
    if cache.is_file() and not args.recompute:
        stacked = pd.read_parquet(cache)
    else:
        stacked = member_site_contributions(models, structures, batch_size=512, errors="skip", on_sparse="ignore")
        stacked.to_parquet(cache)
    energies = member_site_energies(stacked)
    energies.to_csv(out / f"{name}_site_energies.csv", index=False)
    trends = member_trends(energies, reference=reference, min_count=args.min_count)
    trends.to_csv(out / f"{name}_trends.csv", index=False)
    atomic = member_trends(energies, reference=reference, min_count=args.min_count, radius="atomic_radius")
    flows = pd.concat([energy_flow(stacked, role=r, min_count=args.min_count).assign(role=r) for r in ("A", "B")])
    coupling = cell_coupling(stacked[stacked["role"].isin(["A", "B", "X"])])
    for definition in ("raw", "additive"):
        table = aggregate_members(energies[energies["definition"] == definition].rename(columns={"mean": "value"}),
                                  value="value")  # fmt: skip
        label = {"eq4": "Eq. 4 + atomwise", "eq5": "Eq. 5 + atomwise"}.get(name, name)
        table.attrs.update(units="eV per site", property=f"{label}, {definition}")
        site_energy_maps(table, out / f"{name}_{definition}", roles=("A", "B"), formats=("png",))
        table.to_csv(out / f"{name}_{definition}_by_element.csv", index=False)
    predictions = stacked.groupby(["member", "structure"])["prediction"].first().unstack("member")
    print(f"{name}: {stacked['member'].nunique()} members, {len(predictions)} cells, {time.perf_counter() - start:.0f} s",
          file=sys.stderr)  # fmt: skip
    return dict(trends=summarize_trends(trends), flows=flows, energies=energies, atomic=summarize_trends(atomic),
                coupling=coupling, robustness=_seed_robustness(name, stacked) if stacked["member"].nunique() > 1 else None)


def _seed_robustness(name: str, stacked) -> str:
    """How far one crystal's site energies can be trusted across seeds (round 25c): the share of cells whose
    members all agree on whether the A site lies below the B site, the median seed std of a site's output per
    role, and that of the cell's prediction."""
    cells = stacked[stacked["role"].isin(["A", "B"])]
    per_site = cells.groupby(["structure", "member", "role"])["contribution"].mean().unstack("role").dropna()
    signs = (per_site["A"] < per_site["B"]).groupby("structure").agg(["min", "max"])
    agree = float((signs["min"] == signs["max"]).mean())
    spreads = stacked.groupby(["structure", "site", "role"])["contribution"].std().groupby("role").median()
    cell_spread = stacked.groupby(["structure", "member"])["prediction"].first().groupby("structure").std().median()
    return (f"| {name} | {stacked['member'].nunique()} | {agree:.1%} of {len(signs)} | "
            + " | ".join(f"{spreads.get(role, float('nan')):.3f}" for role in ("A", "B", "X")) + f" | {cell_spread:.3f} |")


def _print_energy_tables(results: dict) -> None:
    """Where each model puts the energy (energy_flow) and how its sites follow the cell (cell_coupling)."""
    print("\n| model | grouped by | part | share of the variation | spread across elements, eV |\n|---|---|---|---|---|")
    for name, result in results.items():
        flows = result["flows"].groupby(["role", "part"])[["share", "spread"]].agg(["mean", "std"])
        for (role, part), row in flows.iterrows():
            print(f"| {name} | {role} element | {part} sites | {_cell(row[('share', 'mean')], row[('share', 'std')])} | "
                  f"{row[('spread', 'mean')]:.3f} |")  # fmt: skip

    print("\nHow a site's output follows its cell's prediction, within element and role (cell_coupling):")
    print("| model | role | slope | R² |\n|---|---|---|---|")
    for name, result in results.items():
        table = result["coupling"].groupby("role")[["slope", "r2"]].agg(["mean", "std"])
        for role, row in table.iterrows():
            print(f"| {name} | {role} | {_cell(row[('slope', 'mean')], row[('slope', 'std')])} | "
                  f"{_cell(row[('r2', 'mean')], row[('r2', 'std')])} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default=None)
    parser.add_argument("--eq4", nargs="+", required=True, help="Eq. 4 model: an ensemble folder or member folders")
    parser.add_argument("--eq5", nargs="*", default=[], help="Eq. 5 (gated) model folders")
    parser.add_argument("--out", type=Path, default=Path("/tmp/site_trends"))
    parser.add_argument("--min-count", type=int, default=50, help="fewest cells per element (default 50)")
    parser.add_argument("--cutoff", type=float, nargs="+", default=[0.1, 0.2, 0.0],
                        help="screen cutoffs, eV/atom (default 0.1, 0.2 (the paper's value, on its energy-above-hull "
                             "scale) and 0.0)")
    parser.add_argument("--n", type=int, default=None, help="a random subset of cells (quick look)")
    parser.add_argument("--recompute", action="store_true", help="ignore cached contributions in --out")
    args = parser.parse_args()

    import pandas as pd
    import torch

    from cgcnn_ase.analysis.site_members import additive_site_energies
    from cgcnn_ase.analysis.site_trends import data_cells, data_site_means, site_trends

    os.environ.setdefault("SPGLIB_WARNING", "OFF")  # an application may silence spglib's C messages
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    data = pd.read_csv(_common.shared_path(args.shared, _common.PEROVSKITE_CSV)).set_index("id")
    if args.n:
        data = data.sample(args.n, random_state=0)
    reference = data_site_means(data)  # e_form, eV per 5-atom cell
    reference.to_csv(args.out / "dft_by_element.csv", index=False)
    cells = data_cells(data)
    structures = _parse(data)

    header = ("| model | definition | seeds | Spearman vs DFT, A | Spearman vs DFT, B | Spearman A vs radius | "
              "B: groups 4-6 − others | A: groups 13-15 − others | A: In Sn Sb Tl Pb Bi − others |")  # fmt: skip
    rows = [header, "|---|---|---|---|---|---|---|---|---|"]
    dft = {"mean per element": reference}
    fitted = additive_site_energies(cells)
    dft["additive fit"] = fitted[fitted["role"].isin(["A", "B"])]
    for label, table in dft.items():
        t = site_trends(table, reference=reference, min_count=args.min_count)
        rows.append(f"| DFT data | {label} | – | " + " | ".join(_cell(t[c], None) for c in TREND_COLUMNS) + " |")
    results = {}
    for name, models in (("eq4", args.eq4), ("eq5", args.eq5)):
        if models:
            results[name] = _model(name, models, structures, reference, cells, args, args.out)
            rows += _trend_rows(name, results[name]["trends"])
    print("\n".join(rows))

    print("\nSpearman of the A-site values with pymatgen's atomic radius (instead of the average ionic radius):")
    print("| model | definition | Spearman A vs atomic radius |\n|---|---|---|")
    for label, table in dft.items():
        t = site_trends(table, reference=reference, min_count=args.min_count, radius="atomic_radius")
        print(f"| DFT data | {label} | {_cell(t['radius_spearman_A'], None)} |")
    for name, result in results.items():
        for _, row in result["atomic"].iterrows():
            print(f"| {name} | {row['definition']} | {_cell(row['radius_spearman_A'], row['radius_spearman_A_std'])} |")

    _print_energy_tables(results)

    print("\nOne crystal's site energies across seeds: cells whose seeds all agree on the order of the A and B site "
          "energies; median seed std of a site's output per role (model units per site) and of the cell's prediction")
    print("| model | seeds | cells, seeds agree on A < B or A > B | A site std | B site std | X site std | cell std |\n"
          "|---|---|---|---|---|---|---|")
    for result in results.values():
        if result["robustness"]:
            print(result["robustness"])

    print("\nScreen: A in groups 13-15, B in groups 4-6, X = O3; cutoffs in eV/atom (DFT: e_form / 5)")
    print("| model | definition | cutoff | candidates | hit rate (DFT) | enrichment vs all ABO3 | recall | "
          "Spearman estimate vs DFT, all considered | estimates (eV/atom) |\n|---|---|---|---|---|---|---|---|---|")
    records = []
    for cutoff in args.cutoff:  # the DFT data's own additive terms first: what a model's additive screen can reach
        lines, recs = _screens("DFT data (no model)", fitted.assign(member=0, definition="additive"), cells, cutoff)
        print("\n".join(lines))
        records += recs
        for name, result in results.items():
            lines, recs = _screens(name, result["energies"], cells, cutoff)
            print("\n".join(lines))
            records += recs
    pd.DataFrame(records).to_csv(args.out / "screens.csv", index=False)
    print(f"\n(CSV files and maps in {args.out})", file=sys.stderr)


if __name__ == "__main__":
    main()

"""The uncertainty audit of round 21c, re-runnable: the figures docs/uncertainty.md quotes from it.

On the shipped regression ensembles' own splits (nothing here is fitted: the models are used as shipped):

1. **One scale for every crystal** (test split): the root mean square of z = (y - mean) / std, the
   calibrated std, in each fifth of the crystals sorted by std, and the share of errors within ±2 std in
   the lowest fifth (a Gaussian: 95.4%).
2. **The calibration factor's largest single contribution** (validation split, where it was fitted): the
   share of the sum of squared raw z-scores from one crystal, that crystal, and the factor without it.
3. **Where the ensemble disagrees most** (test split): the coverage of the 90% intervals among the 10% of
   crystals with the largest std (the three elastic models' crystals pooled, as quoted).
4. **Crystals the model trained on**: the coverage of the 50/68/90/95% intervals on ``--n-train`` random
   training crystals of ``formation_energy`` and ``bulk_modulus``.
5. **The gated band gap**: on the crystals of ``is_metal``'s test split that are in neither model's training
   or validation split, how often the gated 90% interval holds the true gap (0 for a metal), for the metals
   the classifier calls non-metals, the non-metals it calls metals, and all of them.

    python benchmarks/uncertainty_audit.py [--shared ../shared] [--n-train 1500]   # one torch thread, ~10 min

Needs ``../shared`` (the models' datasets).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

REGRESSION = ("formation_energy", "band_gap", "fermi_energy", "bulk_modulus", "shear_modulus", "poisson_ratio")
ELASTIC = ("bulk_modulus", "shear_modulus", "poisson_ratio")
LEVELS = (0.5, 0.68, 0.9, 0.95)


def _split(name: str, splits: tuple[str, ...]):
    from cgcnn_ase.analysis.evaluation import load_split_records

    return load_split_records(name, None, splits, workers=1)[1]


def _predict(name: str, records, coverage: float | None = None):
    from cgcnn_ase import CGCNNPredictor

    return CGCNNPredictor.from_pretrained(name, device="cpu").predict(records, batch_size=256, coverage=coverage,
                                                                     errors="collect", on_sparse="ignore")  # fmt: skip


def _covered(y: np.ndarray, result) -> np.ndarray:
    return (result.lower <= y) & (y <= result.upper)


def scale_and_spread(n_bins: int = 5) -> tuple[list[list[object]], list[list[object]], dict[str, tuple[int, int]]]:
    """Rows of parts 1 and 2, and part 3's (covered, crystals) per model."""
    quintiles, factors, top = [], [], {}
    for name in REGRESSION:
        parts = _split(name, ("val", "test"))
        val = _predict(name, parts["val"].records)
        test = _predict(name, parts["test"].records, coverage=0.9)
        y = parts["test"].targets
        ok = np.isfinite(test.values) & (test.std > 0)
        z = (y - test.values)[ok] / test.std[ok]
        order = np.argsort(test.std[ok], kind="stable")
        bins = np.array_split(order, n_bins)
        rms = [float(np.sqrt(np.mean(z[b] ** 2))) for b in bins]
        within = float(np.mean(np.abs(z[bins[0]]) <= 2))
        quintiles.append([f"`{name}`", int(ok.sum()), *(f"{r:.2f}" for r in rms), f"{within:.1%}"])

        yv = parts["val"].targets
        keep = np.isfinite(val.values) & (val.std_raw > 0)
        zraw2 = ((yv - val.values)[keep] / val.std_raw[keep]) ** 2
        k = int(np.argmax(zraw2))
        without = float(np.sqrt(np.delete(zraw2, k).mean()))
        crystal = np.asarray(parts["val"].ids)[keep][k]
        factors.append([f"`{name}`", f"{np.sqrt(zraw2.mean()):.3g}", f"{zraw2[k] / zraw2.sum():.1%}", crystal,
                        f"{without:.3g}"])  # fmt: skip

        good = np.isfinite(test.values) & np.isfinite(test.lower)
        cut = np.quantile(test.std[good], 0.9)
        largest = good & (test.std >= cut)
        top[name] = (int(_covered(y, test)[largest].sum()), int(largest.sum()))
        print(f"{name}: done", file=sys.stderr, flush=True)
    return quintiles, factors, top


def training_coverage(n_train: int, seed: int = 0) -> list[list[object]]:
    """Part 4's rows: coverage at :data:`LEVELS` on ``n_train`` random training crystals."""
    rows = []
    for name in ("formation_energy", "bulk_modulus"):
        train = _split(name, ("train",))["train"]
        pick = np.random.default_rng(seed).permutation(len(train.records))[:n_train]
        records, y = [train.records[i] for i in pick], train.targets[pick]
        shares = []
        for level in LEVELS:
            result = _predict(name, records, coverage=level)
            ok = np.isfinite(result.lower)
            shares.append(f"{np.mean(_covered(y, result)[ok]):.1%}")
        rows.append([f"`{name}`", len(records), *shares])
    return rows


def gated_band_gap(shared: str | None, coverage: float = 0.9) -> list[list[object]]:
    """Part 5's rows: the gated interval's coverage of the true gap, by what the classifier called the crystal."""
    import json

    import pandas as pd

    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.inference.predictor import predict_many
    from cgcnn_ase.inference.properties import gated_band_gap_result
    from cgcnn_ase.models.registry import resolve_model

    def fitted(name: str) -> set[str]:
        split = json.loads((Path(resolve_model(name).path) / "split.json").read_text())
        return {str(i) for part in ("train", "val") for i in split[part]}

    candidates = _split("is_metal", ("test",))["test"]
    used = fitted("band_gap") | fitted("is_metal")
    keep = [k for k, i in enumerate(candidates.ids) if str(i) not in used]
    table = pd.read_csv(_common.shared_path(shared, "data/mp_cgcnn46k_kdmsit/data.csv.gz"), usecols=["material_id", "band_gap"])
    gap = dict(zip(table["material_id"].astype(str), table["band_gap"]))
    truth = np.array([gap[str(candidates.ids[k])] for k in keep], dtype=np.float64)
    predictors = [CGCNNPredictor.from_pretrained(name, device="cpu") for name in ("band_gap", "is_metal")]
    gaps, metal = predict_many(predictors, [candidates.records[k] for k in keep], batch_size=256, errors="collect",
                               on_sparse="ignore", coverage=coverage)  # fmt: skip
    _, _, lower, upper = gated_band_gap_result(gaps.values, gaps.std, gaps.lower, gaps.upper, metal.values)
    ok = np.isfinite(lower) & np.isfinite(truth)
    inside = (lower <= truth) & (truth <= upper)
    is_metal, called_metal = truth == 0, metal.values > 0.5
    rows = []
    for label, group in (("metals called non-metals", is_metal & ~called_metal),
                         ("non-metals called metals", ~is_metal & called_metal),
                         ("metals called metals", is_metal & called_metal),
                         ("non-metals called non-metals", ~is_metal & ~called_metal),
                         ("all", np.ones_like(ok))):  # fmt: skip
        group = group & ok
        rows.append([label, int(group.sum()), f"{inside[group].mean():.1%}" if group.any() else "-"])
    note = (f"(of is_metal's test split: {len(candidates.ids)}; in neither model's train/val: {len(keep)}; "
            f"metals: {int(is_metal.sum())})")
    rows.append([note, "", ""])
    return rows


@click.command(help=__doc__)
@click.option("--shared", default=None, help="The shared folder (default: ../shared beside the repository).")
@click.option("--n-train", default=1500, show_default=True, help="Training crystals per model for part 4.")
@click.option("--parts", default="1,2,3,4,5", show_default=True, help="Which parts to run (1-3 share one pass).")
def main(shared: str | None, n_train: int, parts: str) -> None:
    import torch

    torch.set_num_threads(1)
    _common.quiet()
    warnings.simplefilter("ignore")
    chosen = {int(p) for p in parts.split(",")}
    if chosen & {1, 2, 3}:
        _spread_parts()
    if 4 in chosen:
        print(f"\n### 4. Interval coverage on {n_train} random training crystals\n")
        print(_common.markdown_table(["model", "crystals", *(f"{level:.0%}" for level in LEVELS)],
                                     training_coverage(n_train)))  # fmt: skip
    if 5 in chosen:
        print("\n### 5. The gated band gap's 90% interval holding the true gap (0 for a metal)\n")
        print(_common.markdown_table(["crystals", "n", "coverage"], gated_band_gap(shared)))
    print("\n" + _common.machine_line())


def _spread_parts() -> None:
    """Parts 1-3, printed."""
    quintiles, factors, top = scale_and_spread()
    print("### 1. RMS of z = error / calibrated std by std quintile (test split)\n")
    print(_common.markdown_table(["model", "crystals", "fifth 1 (smallest std)", "2", "3", "4", "5 (largest)",
                                  "within ±2 std, fifth 1"], quintiles))  # fmt: skip
    print("\n### 2. The std calibration factor and its largest single contribution (validation split)\n")
    print(_common.markdown_table(["model", "factor", "largest share of Σz²", "crystal", "factor without it"], factors))
    pooled = tuple(sum(top[name][j] for name in ELASTIC) for j in (0, 1))
    rows = [[f"`{name}`", top[name][1], f"{top[name][0] / top[name][1]:.1%}"] for name in REGRESSION]
    rows.append(["the three elastic models pooled", pooled[1], f"{pooled[0] / pooled[1]:.1%}"])
    print("\n### 3. 90% intervals among the 10% of test crystals with the largest std\n")
    print(_common.markdown_table(["model", "crystals", "coverage"], rows))


if __name__ == "__main__":
    main()

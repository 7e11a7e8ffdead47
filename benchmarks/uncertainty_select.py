"""Choose the per-crystal uncertainty on the validation split; report it on the test split.

For every shipped regression ensemble (arrays from ``benchmarks/uncertainty_cache.py``):

1. candidate feature sets of :mod:`cgcnn_ase.models.local_error` are scored by the 5-fold
   cross-fitted Spearman(|error|, uncertainty) on the VALIDATION split (features of validation
   crystals leave the crystal itself out);
2. the package's choice (:data:`~cgcnn_ase.models.local_error.FEATURES`, fitted on all of the
   validation split) is reported on the TEST split: Spearman against the ensemble std, and the
   coverage of split-conformal intervals normalised by the std and by the uncertainty.

    python benchmarks/uncertainty_select.py            # a few minutes at one thread; needs ../shared
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common  # noqa: E402
import uncertainty_cache as cache  # noqa: E402

CANDIDATES = {
    "std": ("std",),
    "std+dist": ("std", "dist"),
    "std+knn": ("std", "knn"),
    "std+dist+knn": ("std", "dist", "knn"),
    "std+dist+dev1+dev5": ("std", "dist", "dev1", "dev5"),
    "std+dist+dev5+knn": ("std", "dist", "dev5", "knn"),
    "all six": ("std", "dist", "dev1", "dev5", "knn", "element"),
}


def _elements(comp: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(row) for row in comp]


def _sizes(comp: np.ndarray, natoms: np.ndarray) -> np.ndarray:
    out = []
    for row, n in zip(comp, natoms):
        counts = np.rint(row[row > 0] * n).astype(int)
        out.append(int(counts.sum() // math.gcd(*counts.tolist())) if len(counts) > 1 else 1)
    return np.array(out)


def _prepare(name: str):
    from cgcnn_ase.models.domain import DomainSummary
    from cgcnn_ase.models.local_error import fit_error_model

    c = cache.load(name)
    domain = DomainSummary.build(c["train_emb"], c["val_emb"], max_centers=None, max_bytes=None,
                                 reference_sizes=_sizes(c["val_comp"], c["val_natoms"]),
                                 train_targets=c["train_y"])  # fmt: skip
    split = {}
    for s in ("val", "test"):
        m = c[f"{s}_members"]
        split[s] = dict(emb=c[f"{s}_emb"], mean=m.mean(1), std=m.std(1), y=c[f"{s}_y"], el=_elements(c[f"{s}_comp"]))
    v = split["val"]
    model = fit_error_model(domain, v["emb"], v["mean"], v["std"], v["y"], v["el"])
    for s, part in split.items():
        part["x"] = model.features(domain, part["emb"], part["mean"], part["std"], part["el"], leave_out=s == "val")
        part["u"] = model.uncertainty(part["x"])
    return domain, model, split


def _cv_spearman(x: np.ndarray, r: np.ndarray, columns: list[int], folds: int = 5) -> float:
    from cgcnn_ase.analysis.metrics import spearman
    from cgcnn_ase.models.local_error import fit_laplace

    fold = np.random.default_rng(0).integers(0, folds, len(r))
    out = np.empty(len(r))
    for f in range(folds):
        w = fit_laplace(x[fold != f][:, columns], r[fold != f])
        out[fold == f] = w[0] + x[fold == f][:, columns] @ w[1:]
    return spearman(np.abs(r), out)


def _coverage(val: dict, test: dict, norm: str) -> list[float]:
    from cgcnn_ase.analysis.metrics import conformal_quantiles, interval_coverage

    q = conformal_quantiles(val["y"], val["mean"], val[norm], (0.68, 0.9, 0.95))
    return [interval_coverage(test["y"], test["mean"] - k * test[norm], test["mean"] + k * test[norm]) for k in q]


def main() -> None:
    from cgcnn_ase.analysis.metrics import spearman
    from cgcnn_ase.models.local_error import FEATURES

    rows = []
    for name in _common.positional_cli(__doc__, cache.REGRESSION_ENSEMBLES, "MODEL") or cache.REGRESSION_ENSEMBLES:
        _, model, split = _prepare(name)
        val, test = split["val"], split["test"]
        r = val["y"] - val["mean"]
        scores = {label: _cv_spearman(val["x"], r, [FEATURES.index(f) for f in feats])
                  for label, feats in CANDIDATES.items()}  # fmt: skip
        print(f"{name}: validation (5-fold cross-fitted) Spearman: "
              + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))  # fmt: skip
        err = np.abs(test["y"] - test["mean"])
        rows.append((name, len(val["y"]), len(test["y"]), spearman(err, test["std"]), spearman(err, test["u"]),
                     _coverage(val, test, "std"), _coverage(val, test, "u"), model.weights))  # fmt: skip
    print("\n| model | val | test | Spearman std | Spearman uncertainty | coverage 68/90/95, std-normalised "
          "| coverage 68/90/95, uncertainty-normalised |")
    print("|---|---|---|---|---|---|---|")
    for name, nv, nt, s0, s1, c0, c1, _ in rows:
        fmt = lambda c: " / ".join(f"{100 * v:.1f}%" for v in c)  # noqa: E731
        print(f"| `{name}` | {nv} | {nt} | {s0:.2f} | {s1:.2f} | {fmt(c0)} | {fmt(c1)} |")
    for name, *_, w in rows:
        print(name, "weights [1, " + ", ".join(FEATURES) + "]:", np.round(w, 3).tolist())


if __name__ == "__main__":
    main()

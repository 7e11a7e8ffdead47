"""Per-crystal uncertainty of an ensemble: a log-linear model of the expected error, fitted on validation.

The ensemble's spread alone ranks errors weakly (Spearman 0.22-0.28 on the Materials Project
validation splits). :class:`ErrorModel` combines it with what the model's embedding space says
about a crystal (docs/uncertainty.md, "Per-crystal uncertainty"):

=============  ================================================================================
feature        meaning (all enter as logarithms)
=============  ================================================================================
``std``        the members' raw standard deviation
``dist``       distance to the nearest training embedding (the domain distance)
``dev1``       |target of the nearest training crystal - prediction|
``dev5``       RMS of (target - prediction) over the 5 nearest training crystals
``knn``        mean |validation residual| of the 20 nearest validation crystals
``element``    the largest per-element mean |validation residual| over the crystal's elements
=============  ================================================================================

The scale of a Laplace distribution of the error is ``b = exp(w . [1, log features])``, with ``w``
maximising the Laplace likelihood of the validation residuals (for the validation crystals
themselves ``knn`` and ``element`` leave the crystal out). ``uncertainty = sqrt(2) b`` is that
distribution's standard deviation, in the property's units. Stored in ``domain.safetensors``
(arrays ``error.*``) with the domain summary whose training embeddings and targets it uses.
Only numpy here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The features, in the order of ``weights[1:]``.
FEATURES = ("std", "dist", "dev1", "dev5", "knn", "element")
#: Validation neighbours averaged by the ``knn`` feature.
K_VALIDATION = 20
#: Training neighbours of the ``dev5`` feature.
K_TRAIN = 5
#: Pseudo-count shrinking each element's mean |residual| towards the global mean.
ELEMENT_PRIOR = 5.0
#: Number of element columns (atomic numbers 0-118).
N_ELEMENTS = 119


@dataclass(frozen=True)
class ErrorModel:
    """The fitted uncertainty model of one ensemble.

    Attributes:
        val_embeddings: standardised validation embeddings (the domain summary's units), (n, d), float16.
        val_residuals: validation residuals y - mean, (n,), float32, property (model) units.
        element_error: shrunk mean |validation residual| of the crystals holding each element
            (index: atomic number), (119,), float32, property units.
        weights: log-linear weights, (1 + len(FEATURES),), float64.
        info: provenance (split, n, objective).
    """

    val_embeddings: np.ndarray
    val_residuals: np.ndarray
    element_error: np.ndarray
    weights: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    _search: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    # -- features ----------------------------------------------------------------------------
    def features(
        self,
        domain: Any,
        embeddings: np.ndarray,
        predictions: np.ndarray,
        std_raw: np.ndarray,
        elements: Sequence[Sequence[int]],
        *,
        leave_out: bool = False,
        device: Any = None,
        train_neighbours: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """The log-feature matrix, shape (n, len(FEATURES)); NaN rows for failed items.

        Args:
            domain: the :class:`~cgcnn_ase.models.domain.DomainSummary` holding the training
                embeddings and ``targets``.
            embeddings: raw crystal embeddings (member 0), (n, d).
            predictions: the ensemble mean, (n,), model units.
            std_raw: the members' raw standard deviation, (n,), model units.
            elements: each crystal's atomic numbers (any order, repeats allowed).
            leave_out: the inputs are the validation crystals the model was fitted on, in order:
                each leaves itself out of ``knn`` and ``element``.
            device: where the neighbour searches run (:func:`~cgcnn_ase.models.domain.nearest_rows`).
            train_neighbours: ``domain.neighbours(embeddings, K_TRAIN)`` when the caller has it already
                (a prediction also needs its first column, the domain distance): not searched again.
        """
        from cgcnn_ase.models.domain import SearchPoints, nearest_rows

        if domain.targets is None:
            raise ValueError("the domain summary stores no training targets; the error model needs them")
        if leave_out and len(embeddings) != len(self.val_residuals):
            raise ValueError("leave_out needs exactly the validation crystals the model was fitted on, in order")
        z = domain.standardise(embeddings)
        mean = np.asarray(predictions, dtype=np.float64)
        if train_neighbours is not None:
            idx, dist = train_neighbours
        else:
            idx, dist = nearest_rows(z, domain.search_points(device), K_TRAIN, device=device)
        bad = idx[:, 0] < 0
        dev = domain.targets.astype(np.float64)[np.maximum(idx, 0)] - mean[:, None]
        validation = SearchPoints.cached(self._search, self.val_embeddings, device)
        vidx, _ = nearest_rows(z, validation, K_VALIDATION, exclude_self=leave_out, device=device)
        knn = np.abs(self.val_residuals.astype(np.float64))[np.maximum(vidx, 0)].mean(axis=1)
        columns = [np.asarray(std_raw, dtype=np.float64), dist[:, 0], np.abs(dev[:, 0]),
                   np.sqrt((dev**2).mean(axis=1)), knn, self._element_feature(elements, leave_out)]  # fmt: skip
        out = np.log(np.maximum(np.column_stack(columns), self.floor))
        out[bad] = np.nan
        return out

    @property
    def floor(self) -> float:
        """Smallest value a feature takes before its logarithm (1e-4 of the median |residual|)."""
        return float(self.info.get("floor", 1e-12))

    def _element_feature(self, elements: Sequence[Sequence[int]], leave_out: bool) -> np.ndarray:
        if not leave_out:
            table = self.element_error.astype(np.float64)
            return np.array([table[np.unique(z)].max() if len(z) else np.nan for z in elements])
        r = np.abs(self.val_residuals.astype(np.float64))
        total, count = _element_sums(r, elements)
        out = np.empty(len(r))
        for i, z in enumerate(elements):  # each crystal's own residual taken out of the sums
            u = np.unique(np.asarray(z, dtype=np.int64))
            glob = (r.sum() - r[i]) / max(len(r) - 1, 1)
            out[i] = ((total[u] - r[i] + ELEMENT_PRIOR * glob) / (count[u] - 1 + ELEMENT_PRIOR)).max()
        return out

    # -- prediction --------------------------------------------------------------------------
    def uncertainty(self, features: np.ndarray) -> np.ndarray:
        """``sqrt(2) exp(w . [1, features])``: the error's standard deviation, property units, (n,)."""
        x = np.asarray(features, dtype=np.float64)
        return np.sqrt(2.0) * np.exp(self.weights[0] + x @ self.weights[1:])

    # -- files -------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays stored (under ``error.``) in ``domain.safetensors``."""
        return {
            "val_embeddings": np.ascontiguousarray(self.val_embeddings, dtype=np.float16),
            "val_residuals": np.ascontiguousarray(self.val_residuals, dtype=np.float32),
            "element_error": np.ascontiguousarray(self.element_error, dtype=np.float32),
            "weights": np.ascontiguousarray(self.weights, dtype=np.float64),
        }

    def metadata(self) -> dict[str, Any]:
        """JSON-able description stored in the file's metadata."""
        return {**self.info, "features": list(FEATURES)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> ErrorModel:
        """The inverse of :meth:`arrays` / :meth:`metadata` (checked)."""
        if list(metadata.get("features", [])) != list(FEATURES):
            raise ValueError(f"error model features {metadata.get('features')} are not {list(FEATURES)}")
        model = cls(
            val_embeddings=arrays["val_embeddings"],
            val_residuals=arrays["val_residuals"],
            element_error=arrays["element_error"],
            weights=arrays["weights"].astype(np.float64),
            info={k: v for k, v in metadata.items() if k != "features"},
        )
        if model.weights.shape != (1 + len(FEATURES),) or len(model.val_embeddings) != len(model.val_residuals):
            raise ValueError("inconsistent error model arrays")
        return model


def _element_sums(r: np.ndarray, elements: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per element (index Z): the sum of ``r`` over the crystals holding it, and their number."""
    total, count = np.zeros(N_ELEMENTS), np.zeros(N_ELEMENTS)
    for i, z in enumerate(elements):
        u = np.unique(np.asarray(z, dtype=np.int64))
        total[u] += r[i]
        count[u] += 1
    return total, count


def _element_errors(residuals: np.ndarray, elements: Sequence[Sequence[int]]) -> np.ndarray:
    """Per element (index Z), the mean |residual| of the crystals holding it, shrunk towards the global mean:
    ``(sum + ELEMENT_PRIOR * global) / (count + ELEMENT_PRIOR)``, property units."""
    r = np.abs(np.asarray(residuals, dtype=np.float64))
    total, count = _element_sums(r, elements)
    return (total + ELEMENT_PRIOR * float(r.mean())) / (count + ELEMENT_PRIOR)


def fit_laplace(x: np.ndarray, residuals: np.ndarray, *, iterations: int = 100) -> np.ndarray:
    """Weights ``w`` maximising the Laplace likelihood of ``residuals`` with scale ``exp(w . [1, x])``.

    Minimises ``mean(s + |r| exp(-s))``, ``s = w . [1, x]`` (convex) by damped Newton steps.

    Args:
        x: features, (n, p), finite.
        residuals: (n,), any units (the scale has the same units).
    """
    a = np.column_stack([np.ones(len(x)), np.asarray(x, dtype=np.float64)])
    r = np.abs(np.asarray(residuals, dtype=np.float64))
    w = np.zeros(a.shape[1])
    w[0] = np.log(max(r.mean(), 1e-300))
    loss = lambda v: float(np.mean(a @ v + r * np.exp(-(a @ v))))  # noqa: E731
    current = loss(w)
    for _ in range(iterations):
        e = r * np.exp(-(a @ w))
        grad = a.T @ (1.0 - e) / len(r)
        hess = (a * e[:, None]).T @ a / len(r) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6 and loss(w - t * step) > current:
            t /= 2
        if t <= 1e-6:
            break
        w, previous, current = w - t * step, current, loss(w - t * step)
        if previous - current < 1e-12:
            break
    return w


def fit_error_model(
    domain: Any,
    embeddings: np.ndarray,
    predictions: np.ndarray,
    std_raw: np.ndarray,
    targets: np.ndarray,
    elements: Sequence[Sequence[int]],
    *,
    info: dict[str, Any] | None = None,
) -> ErrorModel:
    """Fit an :class:`ErrorModel` on the validation split of an ensemble.

    Args:
        domain: the domain summary with every training embedding and its ``targets``.
        embeddings: raw member-0 embeddings of the validation crystals, (n, d).
        predictions: the ensemble mean, (n,), model units.
        std_raw: the members' raw standard deviation, (n,), model units.
        targets: the true values, (n,), model units.
        elements: each validation crystal's atomic numbers.
    """
    pred, y = np.asarray(predictions, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    ok = np.isfinite(pred) & np.isfinite(y) & np.isfinite(np.asarray(embeddings, dtype=np.float64)).all(axis=1)
    residuals = (y - pred)[ok]
    kept = [z for z, good in zip(elements, ok) if good]
    floor = 1e-4 * float(np.median(np.abs(residuals))) or 1e-12
    draft = ErrorModel(
        val_embeddings=domain.standardise(np.asarray(embeddings)[ok]).astype(np.float16),
        val_residuals=residuals.astype(np.float32),
        element_error=_element_errors(residuals, kept).astype(np.float32),
        weights=np.zeros(1 + len(FEATURES)),
        info={"split": "val", "n": int(ok.sum()), "objective": "Laplace likelihood", "floor": floor, **(info or {})},
    )
    x = draft.features(domain, np.asarray(embeddings)[ok], pred[ok], np.asarray(std_raw)[ok], kept, leave_out=True)
    return ErrorModel(draft.val_embeddings, draft.val_residuals, draft.element_error, fit_laplace(x, residuals),
                      draft.info)  # fmt: skip

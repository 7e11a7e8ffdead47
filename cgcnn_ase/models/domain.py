"""Applicability domain: how far a crystal's embedding lies from the model's training data.

A :class:`DomainSummary` is a compact picture of the training set in the model's crystal
embedding space (the mean-pooled atom features after the convolutions, as
:meth:`CrystalGraphConvNet.crystal_features` gives them; for an ensemble, those of member
0). It holds:

- ``centers``: at most a few thousand training embeddings (a greedy k-centre subset, so
  rare corners of the training set are kept), standardised per dimension with the
  training mean and standard deviation, stored as float16;
- ``reference``: the sorted nearest-neighbour distances from held-out validation crystals
  to ``centers``: what "in distribution" looks like.

For a new crystal, :meth:`DomainSummary.distances` gives its nearest-neighbour distance
to ``centers`` (Euclidean, in standardised embedding units: dimensionless), and
:meth:`DomainSummary.percentiles` the percentage of validation crystals that lay at most
that far: about uniform on [0, 100] for crystals like the validation set, 100 for a
crystal farther than every validation crystal (outside the training domain).

When the summary records the reference crystals' sizes (``reference_sizes``: atoms per
formula unit, :func:`formula_size`), the percentile compares a crystal only with the
validation crystals of its size class (:data:`SIZE_EDGES`): mean-pooled embeddings of small
formula units lie farther from everything than those of large ones (measured on the Materials
Project validation split: median nearest distance 3.3 for 1-2 atoms against 1.1 for 33 or more;
docs/uncertainty.md), so one pooled reference would flag every simple binary. A class with fewer
than :data:`MIN_CLASS` reference crystals falls back to the pooled reference.

An ensemble's summary may also carry ``targets`` (the training targets of the centres) and
an :class:`~cgcnn_ase.models.local_error.ErrorModel` (the per-crystal ``uncertainty``).

The summary is saved as ``domain.safetensors`` (plain arrays, no pickled code) next to
``model.json``. This module needs numpy, torch (nearest-neighbour products) and safetensors for the file.
"""

from __future__ import annotations

import json
from collections import Counter
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DOMAIN_FILE = "domain.safetensors"

#: Default cap on the number of stored training embeddings.
MAX_CENTERS = 2000
#: Default cap on the bytes of the stored centres (float16), to keep model folders small.
MAX_CENTER_BYTES = 400_000
#: At most this many validation distances are kept as the reference distribution.
MAX_REFERENCE = 4096
#: Upper edges of the formula-unit size classes (atoms per formula unit) of the percentile:
#: 1-2, 3-8 and more than 8 (chosen by benchmarks/domain_probe.py; docs/uncertainty.md).
SIZE_EDGES = (2, 8)
#: A size class with fewer reference crystals than this uses the pooled reference.
MIN_CLASS = 50


def formula_size(numbers: Sequence[int] | np.ndarray) -> int:
    """Atoms per formula unit of a crystal with these atomic numbers (the same for any supercell).

    The sum of the element counts divided by their greatest common divisor, e.g. 2 for NaCl in
    any cell, 5 for SrTiO3, 1 for an element.
    """
    counts = Counter(np.asarray(numbers).tolist()).values()  # a few µs; np.unique costs ten times that
    if not counts:
        return 0
    return sum(counts) // math.gcd(*counts)


@dataclass(frozen=True)
class DomainSummary:
    """A compact summary of the training set in embedding space.

    Attributes:
        centers: standardised training embeddings, shape (m, d), float16.
        mean: per-dimension mean of the training embeddings, shape (d,), float32.
        scale: per-dimension standard deviation of the training embeddings (floored at 1%
            of their median, so near-constant dimensions do not dominate), shape (d,), float32.
        reference: sorted nearest-neighbour distances of held-out (validation) crystals to
            ``centers``, shape (k,), float32, dimensionless.
        info: provenance (sizes, selection method, which splits were used).
        reference_sizes: atoms per formula unit of each reference crystal (aligned with
            ``reference``), int32; ``None``: one pooled reference.
        targets: the training targets of the centres (model units), float32; ``None`` if not stored.
        error_model: the per-crystal uncertainty model of an ensemble, or ``None``.
    """

    centers: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    reference: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    reference_sizes: np.ndarray | None = None
    targets: np.ndarray | None = None
    error_model: Any = None
    _search: dict[str, SearchPoints] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def dim(self) -> int:
        """Embedding width d."""
        return int(self.centers.shape[1])

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        train: np.ndarray,
        reference: np.ndarray,
        *,
        max_centers: int | None = MAX_CENTERS,
        max_bytes: int | None = MAX_CENTER_BYTES,
        seed: int = 0,
        info: dict[str, Any] | None = None,
        reference_sizes: Sequence[int] | None = None,
        train_targets: Sequence[float] | None = None,
    ) -> DomainSummary:
        """Summarise training embeddings and calibrate distances on held-out embeddings.

        Args:
            train: embeddings of the training crystals, shape (n_train, d).
            reference: embeddings of held-out crystals (the validation split), shape
                (n_ref, d); their distances to the stored centres become the reference
                distribution of :meth:`percentiles`.
            max_centers: at most this many training embeddings are stored (``None``: no cap).
            max_bytes: and at most this many bytes of them (float16: 2 bytes per value;
                ``None``: no cap). With neither cap every training embedding is stored.
            seed: seeds the first k-centre pick and the reference subsample.
            info: extra provenance stored with the summary.
            reference_sizes: atoms per formula unit of each reference crystal
                (:func:`formula_size`): percentiles then compare within size classes.
            train_targets: the training targets (model units), stored for the centres.
        """
        train = np.asarray(train, dtype=np.float64)
        reference = np.asarray(reference, dtype=np.float64)
        keep_train, keep_ref = _finite_mask(train, "train"), _finite_mask(reference, "reference")
        train, reference = train[keep_train], reference[keep_ref]
        if train.shape[1] != reference.shape[1]:
            raise ValueError(
                f"train and reference embeddings differ in width ({train.shape[1]} vs {reference.shape[1]})"
            )
        mean = train.mean(axis=0)
        std = train.std(axis=0)
        floor = max(float(np.median(std)) * 0.01, 1e-6)
        scale = np.maximum(std, floor)
        standardised = ((train - mean) / scale).astype(np.float32)
        m = len(train) if max_centers is None else min(int(max_centers), len(train))
        if max_bytes is not None:
            m = min(m, int(max_bytes) // (2 * train.shape[1]))
        m = max(1, m)
        picked = np.arange(len(train)) if m == len(train) else kcenter_subset(standardised, m, seed=seed)
        centers = standardised[picked].astype(np.float16)
        targets = None
        if train_targets is not None:
            targets = np.asarray(train_targets, dtype=np.float32)[keep_train][picked]
        summary = cls(centers=centers, mean=mean.astype(np.float32), scale=scale.astype(np.float32),
                      reference=np.zeros(0, dtype=np.float32))  # fmt: skip
        sizes = None if reference_sizes is None else np.asarray(reference_sizes, dtype=np.int32)[keep_ref]
        if len(reference) > MAX_REFERENCE:
            chosen = np.sort(np.random.default_rng(seed).choice(len(reference), MAX_REFERENCE, replace=False))
            reference, sizes = reference[chosen], (None if sizes is None else sizes[chosen])
        distances = summary.distances(reference)
        order = np.argsort(distances, kind="stable")
        details = {
            "n_train": len(train),
            "n_centers": int(m),
            "selection": "all training embeddings" if m == len(train)
            else "greedy k-centre (farthest point) in standardised embedding space",
            "n_reference": len(distances),
            "metric": "Euclidean distance between per-dimension standardised crystal embeddings",
            "percentile": "share of validation crystals at most as far"
            + (f", within formula-unit size classes (upper edges {list(SIZE_EDGES)} atoms)" if sizes is not None else ""),
            **(info or {}),
        }  # fmt: skip
        return cls(centers=centers, mean=summary.mean, scale=summary.scale,
                   reference=distances[order].astype(np.float32), info=details,
                   reference_sizes=None if sizes is None else sizes[order], targets=targets)  # fmt: skip

    # -- queries ------------------------------------------------------------------------------
    def standardise(self, embeddings: np.ndarray) -> np.ndarray:
        """Embeddings in the summary's standardised units, float64, shape (n, d) (checked)."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"embeddings must have shape (n, {self.dim}), got {x.shape}")
        return (x - self.mean) / self.scale

    def neighbours(self, embeddings: np.ndarray, k: int = 1, *, device: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Indices (int64) and distances (float64, dimensionless) of the ``k`` nearest centres, shape (n, k);
        the first column's distances are :meth:`distances`.

        Rows with NaN embeddings (failed inputs) give index -1 and distance NaN. ``device``: where the
        search runs (:func:`nearest_rows`).
        """
        z = self.standardise(embeddings)
        return nearest_rows(z, self.search_points(device), k, device=device)

    def search_points(self, device: Any = None) -> SearchPoints:
        """``centers`` prepared for :func:`nearest_rows` on ``device``, once per device (every batch
        of a prediction searches them)."""
        return SearchPoints.cached(self._search, self.centers, device)

    def distances(self, embeddings: np.ndarray, *, chunk: int | None = None, device: Any = None) -> np.ndarray:
        """Nearest-neighbour distance of each embedding to the stored training centres.

        Args:
            embeddings: crystal embeddings, shape (n, d), in the model's raw units; rows
                with NaN (failed inputs) give NaN.
            device: where the search runs (:func:`nearest_rows`).

        Returns:
            float64 array (n,), dimensionless (standardised embedding units).
        """
        return nearest_rows(self.standardise(embeddings), self.search_points(device), 1, chunk=chunk, device=device)[1][:, 0]

    def percentiles(self, distances: np.ndarray, sizes: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Percentage (0-100) of reference (validation) crystals at most as far as each distance.

        The empirical distribution function of the reference distances, interpolated
        linearly between them (and from 0 at distance 0), so it is continuous: at the
        ``i``-th smallest reference distance it is ``100 i / k``. About uniform on [0, 100]
        for crystals drawn like the validation set; 100 beyond all of them. NaN distances
        give NaN. With ``sizes`` (atoms per formula unit, :func:`formula_size`) and a summary
        that records ``reference_sizes``, each crystal is compared with the reference crystals
        of its size class (:data:`SIZE_EDGES`; the pooled reference where a class holds fewer
        than :data:`MIN_CLASS`).
        """
        d = np.asarray(distances, dtype=np.float64)
        out = np.full(d.shape, np.nan)
        if len(self.reference) == 0:
            return out
        if sizes is None or self.reference_sizes is None:
            classes, wanted = np.zeros(len(self.reference), dtype=np.int64), np.zeros(d.shape, dtype=np.int64)
        else:
            classes = np.digitize(self.reference_sizes, SIZE_EDGES, right=True)
            wanted = np.digitize(np.asarray(sizes), SIZE_EDGES, right=True)
        pooled = self.reference.astype(np.float64)
        for c in np.unique(wanted):
            sel = (wanted == c) & np.isfinite(d)
            ref = pooled[classes == c]
            ref = ref if len(ref) >= MIN_CLASS else pooled
            xp = np.concatenate(([0.0], ref))
            out[sel] = np.interp(d[sel], xp, 100.0 * np.arange(len(ref) + 1) / len(ref), left=0.0, right=100.0)
        return out

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``domain.safetensors`` (arrays, with ``info`` as JSON metadata)."""
        from safetensors.numpy import save

        path = Path(path)
        arrays = {
            "centers": np.ascontiguousarray(self.centers, dtype=np.float16),
            "mean": np.ascontiguousarray(self.mean, dtype=np.float32),
            "scale": np.ascontiguousarray(self.scale, dtype=np.float32),
            "reference": np.ascontiguousarray(self.reference, dtype=np.float32),
        }
        if self.reference_sizes is not None:
            arrays["reference_sizes"] = np.ascontiguousarray(self.reference_sizes, dtype=np.int32)
        if self.targets is not None:
            arrays["targets"] = np.ascontiguousarray(self.targets, dtype=np.float32)
        metadata = {"format": "cgcnn_ase.domain/1", "info": json.dumps(self.info)}
        if self.error_model is not None:
            arrays.update({f"error.{k}": v for k, v in self.error_model.arrays().items()})
            metadata["error_model"] = json.dumps(self.error_model.metadata())
        # bytes written with open(): the file gets the user's umask (safetensors' save_file makes it 0600)
        Path(path).write_bytes(save(arrays, metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> DomainSummary:
        """Read a file written by :meth:`save`.

        Raises:
            ValueError: the file is missing, unreadable or inconsistent.
        """
        from safetensors import safe_open

        from cgcnn_ase.models.local_error import ErrorModel

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such domain summary file")
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                arrays = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - not a dict
            reference, sizes = arrays["reference"], arrays.get("reference_sizes")
            order = np.argsort(reference, kind="stable")
            error = {k[len("error."):]: v for k, v in arrays.items() if k.startswith("error.")}
            summary = cls(
                centers=arrays["centers"],
                mean=arrays["mean"],
                scale=arrays["scale"],
                reference=reference[order],
                info=json.loads(meta.get("info", "{}")),
                reference_sizes=None if sizes is None else sizes[order],
                targets=arrays.get("targets"),
                error_model=ErrorModel.from_arrays(error, json.loads(meta["error_model"])) if error else None,
            )
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
            raise ValueError(f"{path}: unreadable domain summary ({type(exc).__name__}: {exc})") from None
        d = summary.centers.shape[1] if summary.centers.ndim == 2 else -1
        if d < 1 or summary.mean.shape != (d,) or summary.scale.shape != (d,):
            raise ValueError(f"{path}: inconsistent domain summary shapes")
        if summary.reference_sizes is not None and summary.reference_sizes.shape != summary.reference.shape:
            raise ValueError(f"{path}: reference_sizes and reference differ in length")
        if summary.targets is not None and summary.targets.shape != (len(summary.centers),):
            raise ValueError(f"{path}: targets and centers differ in length")
        return summary


class SearchPoints:
    """Points ready for :func:`nearest_rows` on one device: their float32 copy and squared norms,
    made once (converting 27,387 stored float16 embeddings costs more than searching them for a
    batch of 32 queries).

    Attributes:
        points: the points as given, (m, d). device: the torch device of ``p32`` and ``norms``.
        p32: float32 tensor (m, d). norms: squared norms of ``p32`` rows, (m,).
    """

    def __init__(self, points: np.ndarray, device: Any = None) -> None:
        import torch

        self.points = np.asarray(points)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.p32 = torch.from_numpy(np.ascontiguousarray(self.points, dtype=np.float32)).to(self.device)
        self.norms = (self.p32 * self.p32).sum(1)

    @classmethod
    def cached(cls, cache: dict[str, SearchPoints], points: np.ndarray, device: Any = None) -> SearchPoints:
        """``points`` prepared on ``device``, from ``cache`` (an owner's dict, keyed by device) or made and kept there."""
        import torch

        key = str(torch.device("cpu") if device is None else torch.device(device))
        if key not in cache:
            cache[key] = cls(points, device)
        return cache[key]


def nearest_rows(
    queries: np.ndarray, points: np.ndarray | SearchPoints, k: int, *, chunk: int | None = None,
    exclude_self: bool = False, device: Any = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The ``k`` nearest rows of ``points`` to each row of ``queries`` (Euclidean), nearest first.

    Candidates come from one float32 product per chunk of queries (``|q|² - 2 q·p + |p|²``, torch's
    matrix product, the ``k + 8`` smallest kept); their distances are then computed exactly, in
    float64, as ``|q - p|``. Tens of thousands of stored points cost tens of ms per thousand queries.

    Args:
        queries: shape (n, d); rows with NaN give index -1 and distance NaN.
        points: shape (m, d) (any float dtype), or the same already prepared (:class:`SearchPoints`:
            its device is used).
        chunk: queries per float32 product; ``None``: 64 on a CPU (a (64, m) block stays in
            memory already mapped: 1.3-1.6x faster than 1024 queries at a time against 27,387
            points, where fresh pages cost more than the product; ``benchmarks/bench_cpu_pass.py``)
            and 1024 elsewhere.
        exclude_self: ``queries`` are ``points`` themselves (same order): each row's own
            index is skipped (leave-one-out).
        device: where the float32 products and the candidate search run (a torch device;
            ``None``: the CPU). A predictor on a GPU passes its own: the search is then a small
            part of a prediction instead of most of it.

    Returns:
        indices (n, k) int64 and distances (n, k) float64, in the units of the inputs.
    """
    import torch

    z = np.asarray(queries, dtype=np.float64)
    p = points.points if isinstance(points, SearchPoints) else np.asarray(points)
    k = max(1, min(int(k), len(p) - int(exclude_self)))
    index, dist = np.full((len(z), k), -1, dtype=np.int64), np.full((len(z), k), np.nan)
    ok = np.flatnonzero(np.isfinite(z).all(axis=1))
    if not len(ok) or not len(p):
        return index, dist
    prepared = points if isinstance(points, SearchPoints) else SearchPoints(p, device)
    where, p32, p_norm = prepared.device, prepared.p32, prepared.norms
    chunk = chunk or (64 if where.type == "cpu" else 1024)
    n_candidates = min(k + 8, len(p) - int(exclude_self))
    for start in range(0, len(ok), chunk):
        rows = ok[start : start + chunk]
        q = torch.from_numpy(z[rows].astype(np.float32)).to(where)
        d2 = torch.addmm(p_norm.unsqueeze(0), q, p32.T, alpha=-2.0).add_((q * q).sum(1, keepdim=True))
        if exclude_self:
            d2[torch.arange(len(rows), device=where), torch.from_numpy(rows).to(where)] = torch.inf
        candidates = torch.topk(d2, n_candidates, dim=1, largest=False).indices.cpu().numpy()
        exact = np.sqrt(((z[rows][:, None, :] - p[candidates].astype(np.float64)) ** 2).sum(axis=2))
        order = np.argsort(exact, axis=1, kind="stable")[:, :k]
        index[rows] = np.take_along_axis(candidates, order, axis=1)
        dist[rows] = np.take_along_axis(exact, order, axis=1)
    return index, dist


def kcenter_subset(points: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """Indices of ``k`` points chosen by greedy farthest-point (k-centre) selection.

    Starts from a seeded random point, then repeatedly adds the point farthest from those
    chosen, so the subset covers the whole cloud (a 2-approximation of the optimal covering
    radius). ``points``: shape (n, d); returns int64 indices, shape (min(k, n),).
    """
    x = np.asarray(points, dtype=np.float32)
    n = len(x)
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k == n:
        return np.arange(n, dtype=np.int64)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = np.random.default_rng(seed).integers(n)
    norms = np.einsum("ij,ij->i", x, x)
    nearest = np.full(n, np.inf, dtype=np.float64)
    for j in range(k):
        c = x[chosen[j]]
        d2 = norms - 2.0 * (x @ c) + float(c @ c)
        nearest = np.minimum(nearest, np.maximum(d2, 0.0))
        if j + 1 < k:
            chosen[j + 1] = int(np.argmax(nearest))
    return chosen


def _finite_mask(x: np.ndarray, name: str) -> np.ndarray:
    """Boolean mask of the finite rows of an (n, d) embedding array (checked non-empty)."""
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} embeddings must be a non-empty (n, d) array, got shape {x.shape}")
    keep = np.isfinite(x).all(axis=1)
    if not keep.any():
        raise ValueError(f"{name} embeddings hold no finite rows")
    return keep

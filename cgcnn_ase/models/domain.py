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

The summary is saved as ``domain.safetensors`` (plain arrays, no pickled code) next to
``model.json``. This module only needs numpy (and safetensors for the file).
"""

from __future__ import annotations

import json
import os
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
    """

    centers: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    reference: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

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
        max_centers: int = MAX_CENTERS,
        max_bytes: int = MAX_CENTER_BYTES,
        seed: int = 0,
        info: dict[str, Any] | None = None,
    ) -> DomainSummary:
        """Summarise training embeddings and calibrate distances on held-out embeddings.

        Args:
            train: embeddings of the training crystals, shape (n_train, d).
            reference: embeddings of held-out crystals (the validation split), shape
                (n_ref, d); their distances to the stored centres become the reference
                distribution of :meth:`percentiles`.
            max_centers: at most this many training embeddings are stored.
            max_bytes: and at most this many bytes of them (float16: 2 bytes per value).
            seed: seeds the first k-centre pick and the reference subsample.
            info: extra provenance stored with the summary.
        """
        train = _finite_rows(np.asarray(train, dtype=np.float64), "train")
        reference = _finite_rows(np.asarray(reference, dtype=np.float64), "reference")
        if train.shape[1] != reference.shape[1]:
            raise ValueError(
                f"train and reference embeddings differ in width ({train.shape[1]} vs {reference.shape[1]})"
            )
        mean = train.mean(axis=0)
        std = train.std(axis=0)
        floor = max(float(np.median(std)) * 0.01, 1e-6)
        scale = np.maximum(std, floor)
        standardised = ((train - mean) / scale).astype(np.float32)
        m = max(1, min(int(max_centers), len(train), int(max_bytes) // (2 * train.shape[1])))
        picked = kcenter_subset(standardised, m, seed=seed)
        centers = standardised[picked].astype(np.float16)
        summary = cls(
            centers=centers,
            mean=mean.astype(np.float32),
            scale=scale.astype(np.float32),
            reference=np.zeros(0, dtype=np.float32),
        )
        rng = np.random.default_rng(seed)
        if len(reference) > MAX_REFERENCE:
            reference = reference[np.sort(rng.choice(len(reference), MAX_REFERENCE, replace=False))]
        distances = np.sort(summary.distances(reference)).astype(np.float32)
        details = {
            "n_train": len(train),
            "n_centers": int(m),
            "selection": "greedy k-centre (farthest point) in standardised embedding space",
            "n_reference": len(distances),
            "metric": "Euclidean distance between per-dimension standardised crystal embeddings",
            **(info or {}),
        }
        return cls(centers=centers, mean=summary.mean, scale=summary.scale, reference=distances, info=details)

    # -- queries ------------------------------------------------------------------------------
    def distances(self, embeddings: np.ndarray, *, chunk: int = 1024) -> np.ndarray:
        """Nearest-neighbour distance of each embedding to the stored training centres.

        Args:
            embeddings: crystal embeddings, shape (n, d), in the model's raw units; rows
                with NaN (failed inputs) give NaN.

        Returns:
            float64 array (n,), dimensionless (standardised embedding units).
        """
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"embeddings must have shape (n, {self.dim}), got {x.shape}")
        out = np.full(len(x), np.nan)
        ok = np.isfinite(x).all(axis=1)
        if not ok.any():
            return out
        z = (x[ok] - self.mean) / self.scale  # float64 throughout: no cancellation near the centres
        centers = self.centers.astype(np.float64)
        c2 = np.einsum("ij,ij->i", centers, centers)
        best = np.empty(len(z), dtype=np.float64)
        for start in range(0, len(z), chunk):
            part = z[start : start + chunk]
            d2 = np.einsum("ij,ij->i", part, part)[:, None] - 2.0 * part @ centers.T + c2[None, :]
            best[start : start + chunk] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
        out[ok] = best
        return out

    def percentiles(self, distances: np.ndarray) -> np.ndarray:
        """Percentage (0-100) of reference (validation) crystals at most as far as each distance.

        The empirical distribution function of the reference distances, interpolated
        linearly between them (and from 0 at distance 0), so it is continuous: at the
        ``i``-th smallest reference distance it is ``100 i / k``. About uniform on [0, 100]
        for crystals drawn like the validation set; 100 beyond all of them. NaN distances
        give NaN.
        """
        d = np.asarray(distances, dtype=np.float64)
        out = np.full(d.shape, np.nan)
        ok = np.isfinite(d)
        k = len(self.reference)
        if k == 0:
            return out
        xp = np.concatenate(([0.0], self.reference.astype(np.float64)))
        fp = 100.0 * np.arange(k + 1) / k
        out[ok] = np.interp(d[ok], xp, fp, left=0.0, right=100.0)
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
        # bytes written with open(): the file gets the user's umask (safetensors' save_file makes it 0600)
        Path(path).write_bytes(save(arrays, metadata={"format": "cgcnn_ase.domain/1", "info": json.dumps(self.info)}))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> DomainSummary:
        """Read a file written by :meth:`save`.

        Raises:
            ValueError: the file is missing, unreadable or inconsistent.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such domain summary file")
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                arrays = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - not a dict
            summary = cls(
                centers=arrays["centers"],
                mean=arrays["mean"],
                scale=arrays["scale"],
                reference=np.sort(arrays["reference"]),
                info=json.loads(meta.get("info", "{}")),
            )
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
            raise ValueError(f"{path}: unreadable domain summary ({type(exc).__name__}: {exc})") from None
        d = summary.centers.shape[1] if summary.centers.ndim == 2 else -1
        if d < 1 or summary.mean.shape != (d,) or summary.scale.shape != (d,):
            raise ValueError(f"{path}: inconsistent domain summary shapes")
        return summary


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


def _finite_rows(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} embeddings must be a non-empty (n, d) array, got shape {x.shape}")
    x = x[np.isfinite(x).all(axis=1)]
    if len(x) == 0:
        raise ValueError(f"{name} embeddings hold no finite rows")
    return x

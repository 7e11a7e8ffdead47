"""Graph settings: :class:`GraphConfig` (cutoff, neighbor count, Gaussians, neighbor policy).

Stored in every ``model.json``; a model predicts correctly only with the settings it was trained
with. The neighbor policies are described in :mod:`cgcnn_ase.graph.neighbours`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np

NeighborPolicy = Literal["symmetric", "original"]
SparsePolicy = Literal["warn", "error", "ignore"]


@dataclass(frozen=True)
class GraphConfig:
    """How a crystal is turned into a graph.

    Attributes:
        radius: neighbour cutoff, Å (paper: 8).
        max_neighbors: neighbours kept per atom (paper: 12).
        gaussian_dmin: first Gaussian centre, Å.
        gaussian_step: spacing of Gaussian centres, Å; centres run from ``gaussian_dmin``
            to ``radius`` inclusive (41 centres with the defaults).
        gaussian_width: Gaussian width σ in ``exp(-(d - μ)² / σ²)``, Å; ``None`` means
            ``gaussian_step``, as in the original.
        neighbor_policy: ``"symmetric"`` or ``"original"`` (see module docstring).
        tie_tolerance: distances within this of the last kept one count as tied, Å; 1e-3
            absorbs the rounding of CIFs that give fractional coordinates to 4 decimals
            (``"symmetric"`` policy only).
    """

    radius: float = 8.0
    max_neighbors: int = 12
    gaussian_dmin: float = 0.0
    gaussian_step: float = 0.2
    gaussian_width: float | None = None
    neighbor_policy: NeighborPolicy = "symmetric"
    tie_tolerance: float = 1e-3

    def __post_init__(self) -> None:
        if self.neighbor_policy not in ("symmetric", "original"):
            raise ValueError(f"neighbor_policy must be 'symmetric' or 'original', got {self.neighbor_policy!r}")
        for name in ("radius", "gaussian_dmin", "gaussian_step", "tie_tolerance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number of Å, got {value!r}")
        if self.gaussian_width is not None and not (
            isinstance(self.gaussian_width, (int, float)) and math.isfinite(self.gaussian_width) and self.gaussian_width > 0
        ):
            raise ValueError(f"gaussian_width must be a positive number of Å or null, got {self.gaussian_width!r}")
        if isinstance(self.max_neighbors, bool) or not isinstance(self.max_neighbors, int):
            raise ValueError(f"max_neighbors must be an integer, got {self.max_neighbors!r}")
        if not (self.radius > 0 and self.max_neighbors > 0 and self.gaussian_step > 0):
            raise ValueError(f"radius, max_neighbors and gaussian_step must be positive: {self}")
        if self.gaussian_dmin >= self.radius:
            raise ValueError(f"gaussian_dmin ({self.gaussian_dmin}) must be below radius ({self.radius})")

    @property
    def gaussian_centers(self) -> np.ndarray:
        """Gaussian centres μ_k, Å, shape (n_gaussians,), as the original ``np.arange`` gives them."""
        return np.arange(self.gaussian_dmin, self.radius + self.gaussian_step, self.gaussian_step)

    @property
    def n_gaussians(self) -> int:
        """Length of the edge feature vector (41 with the defaults)."""
        return len(self.gaussian_centers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, for ``model.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown graph settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

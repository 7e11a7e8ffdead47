"""Element feature tables: :class:`ElementTable` (atomic number -> feature vector) and the
original ``atom_init.json`` file format (:func:`load_atom_init`). The 92-dimensional vectors
this project generates itself are built in :mod:`cgcnn_ase.graph.elements`."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cgcnn_ase.errors import CheckpointError, UnsupportedElementError

_FLOAT32_MAX = float(np.finfo(np.float32).max)

#: Largest atomic number accepted as a key of an atom_init mapping (Og). The module imports ASE only
#: for messages, so that graphs and networks run where ASE is not installed (e.g. a bare GPU machine).
MAX_KNOWN_Z = 118


def _symbol(z: int) -> str:
    if 1 <= z <= MAX_KNOWN_Z:
        from ase.data import chemical_symbols

        return f"{chemical_symbols[z]} (Z={z})"
    return f"Z={z} (no such element)"


def _ranges(numbers: frozenset[int] | set[int]) -> str:
    """``{1, 2, 3, 8}`` -> ``"1-3, 8"``."""
    zs = sorted(numbers)
    if not zs:
        return "none"
    parts = []
    start = prev = zs[0]
    for z in zs[1:]:
        if z != prev + 1:
            parts.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = z
        prev = z
    parts.append(f"{start}-{prev}" if prev > start else f"{start}")
    return ", ".join(parts)


@dataclass(frozen=True, eq=False)
class ElementTable:
    """Feature vector per element.

    ``features`` is float32 of shape ``(max_Z + 1, n_features)``; row ``Z`` is the
    vector of atomic number ``Z`` (row 0 and rows of unsupported elements are all
    zero).  The constructor copies it into a read-only array.  ``supported`` is
    the set of atomic numbers that have a vector.  Features are dimensionless
    (binary one-hot blocks for CGCNN-92 tables).
    """

    name: str
    features: np.ndarray = field(repr=False)
    supported: frozenset[int]

    def __post_init__(self) -> None:
        feats = np.array(self.features, dtype=np.float32, copy=True, order="C")
        if feats.ndim != 2 or feats.shape[0] < 2 or feats.shape[1] < 1:
            raise ValueError(f"features must have shape (max_Z + 1, n_features), got {feats.shape}")
        if not np.all(np.isfinite(feats)):
            raise ValueError("features contain non-finite values")
        supported = frozenset(int(z) for z in self.supported)
        bad = [z for z in supported if not 1 <= z < feats.shape[0]]
        if bad:
            raise ValueError(f"supported atomic numbers {sorted(bad)} are outside 1..{feats.shape[0] - 1}")
        mask = np.zeros(feats.shape[0], dtype=bool)
        mask[sorted(supported)] = True
        if np.any(feats[~mask] != 0):
            raise ValueError("rows of unsupported elements (and row 0) must be all zero")
        feats.setflags(write=False)
        mask.setflags(write=False)
        object.__setattr__(self, "features", feats)
        object.__setattr__(self, "supported", supported)
        object.__setattr__(self, "_mask", mask)

    # -- basic properties -------------------------------------------------------------

    @property
    def n_features(self) -> int:
        """Length of one element's feature vector."""
        return int(self.features.shape[1])

    @property
    def max_z(self) -> int:
        """Largest atomic number the table has a row for."""
        return int(self.features.shape[0] - 1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ElementTable):
            return NotImplemented
        return (
            self.name == other.name
            and self.supported == other.supported
            and self.features.shape == other.features.shape
            and bool(np.array_equal(self.features, other.features))
        )

    def __hash__(self) -> int:
        return hash((self.name, self.fingerprint()))

    def __repr__(self) -> str:
        return (
            f"ElementTable(name={self.name!r}, n_features={self.n_features}, "
            f"supported=Z {_ranges(self.supported)}, fingerprint={self.fingerprint()!r})"
        )

    # -- use ----------------------------------------------------------------------------

    def featurize(self, numbers: np.ndarray | Sequence[int]) -> np.ndarray:
        """Feature rows of atomic numbers: int array ``(N,)`` -> float32 ``(N, n_features)``.

        Raises :class:`UnsupportedElementError` naming every offending element
        (symbol and Z) and the supported range when a number is <= 0, above
        ``max_z`` or not in ``supported``; ``TypeError`` for non-integer input
        and ``ValueError`` for input that is not one-dimensional.
        """
        z = np.asarray(numbers)
        if z.ndim != 1:
            raise ValueError(f"atomic numbers must be a 1-D array, got shape {z.shape}")
        if z.size == 0:
            return np.zeros((0, self.n_features), dtype=np.float32)
        if z.dtype.kind not in "iu":
            raise TypeError(f"atomic numbers must be integers, got dtype {z.dtype}")
        z = z.astype(np.int64, copy=False)
        mask: np.ndarray = self._mask  # type: ignore[attr-defined]
        ok = (z >= 1) & (z <= self.max_z)
        ok[ok] = mask[z[ok]]
        if not ok.all():
            bad = np.unique(z[~ok]).tolist()
            listed = ", ".join(_symbol(b) for b in bad[:10])
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            raise UnsupportedElementError(
                f"element table {self.name!r} has no features for {listed}{more}; "
                f"it supports Z = {_ranges(self.supported)}"
            )
        return self.features[z]

    def fingerprint(self) -> str:
        """First 16 hex digits of a SHA-256 over the features (float32 bytes, shape) and supported set.

        Independent of ``name``: two tables with the same numbers share a fingerprint.
        """
        h = hashlib.sha256()
        h.update(b"cgcnn_ase.ElementTable/v1\n")
        h.update(f"{self.features.shape[0]}x{self.features.shape[1]}\n".encode())
        h.update(np.ascontiguousarray(self.features, dtype="<f4").tobytes())
        h.update((",".join(str(z) for z in sorted(self.supported)) + "\n").encode())
        return h.hexdigest()[:16]

    # -- original file format -------------------------------------------------------------

    def to_atom_init(self) -> dict[str, list[float]]:
        """The table in the authors' ``atom_init.json`` layout: ``{"Z": [floats], ...}``."""
        return {str(z): [float(v) for v in self.features[z]] for z in sorted(self.supported)}

    @classmethod
    def from_atom_init(
        cls, data: Mapping[str, Sequence[float]], *, name: str = "atom_init"
    ) -> ElementTable:
        """Build a table from an ``atom_init.json``-style mapping.

        Keys must be decimal strings of atomic numbers 1..118 (no sign, no leading
        zero); values equal-length, non-empty sequences of finite numbers.
        Raises :class:`CheckpointError` naming the problem otherwise.
        """
        if not isinstance(data, Mapping):
            raise CheckpointError(
                f"element table must be a JSON object mapping atomic numbers to vectors, "
                f"got {type(data).__name__}"
            )
        if not data:
            raise CheckpointError("element table is empty")
        rows: dict[int, np.ndarray] = {}
        length: int | None = None
        first_key = None
        for key, vec in data.items():
            if not isinstance(key, str) or not key.isascii() or not key.isdigit() or key.startswith("0"):
                raise CheckpointError(
                    f"element table key {key!r} is not an atomic number written as '1'..'{MAX_KNOWN_Z}'"
                )
            z = int(key)
            if z > MAX_KNOWN_Z:
                raise CheckpointError(f"element table key {key!r} is not an element (Z must be 1..{MAX_KNOWN_Z})")
            if isinstance(vec, (str, bytes)) or not isinstance(vec, (Sequence, np.ndarray)):
                raise CheckpointError(f"element table entry {key!r} is not a list of numbers ({type(vec).__name__})")
            try:
                arr = np.asarray(vec)
            except (TypeError, ValueError):
                arr = np.asarray([], dtype=object)
            if arr.size == 0 and arr.dtype != object:
                raise CheckpointError(f"element table entry {key!r} is empty")
            if arr.ndim != 1 or arr.dtype.kind not in "iuf":
                raise CheckpointError(f"element table entry {key!r} is not a flat list of numbers")
            arr64 = arr.astype(np.float64)
            if not np.all(np.isfinite(arr64)) or np.any(np.abs(arr64) > _FLOAT32_MAX):
                raise CheckpointError(
                    f"element table entry {key!r} has non-finite values (NaN, inf or beyond float32 range)"
                )
            if length is None:
                length, first_key = arr.size, key
            elif arr.size != length:
                raise CheckpointError(
                    f"element table vectors have different lengths: {key!r} has {arr.size}, "
                    f"{first_key!r} has {length}"
                )
            rows[z] = arr64
        assert length is not None
        features = np.zeros((max(rows) + 1, length), dtype=np.float32)
        for z, arr64 in rows.items():
            features[z] = arr64
        return cls(name=name, features=features, supported=frozenset(rows))


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise CheckpointError(f"duplicate key {k!r}")
        out[k] = v
    return out


def load_atom_init(path: str | os.PathLike[str], *, name: str = "atom_init") -> ElementTable:
    """Read an original-format ``atom_init.json`` file into an :class:`ElementTable`.

    A missing or unreadable file, invalid JSON, duplicate keys or a bad layout
    raise :class:`CheckpointError` naming the path and the problem.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"element table file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read element table file {str(p)!r}: {exc}") from exc
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"element table file {str(p)!r} is not valid JSON: {exc}") from exc
    except CheckpointError as exc:
        raise CheckpointError(f"element table file {str(p)!r}: {exc}") from exc
    try:
        return ElementTable.from_atom_init(data, name=name)
    except CheckpointError as exc:
        raise CheckpointError(f"element table file {str(p)!r}: {exc}") from exc

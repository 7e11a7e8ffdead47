"""Small formatting helpers shared by the writers of ``model.json`` and model cards
(:mod:`cgcnn_ase.train.trainer` for single models, :mod:`cgcnn_ase.train.ensembles` for ensembles)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """Plain JSON data: NaN/inf -> None, numpy scalars -> Python, tuples and arrays -> lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a card: ``digits`` significant digits; ``"n/a"`` for None, NaN and inf."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else "n/a"
    return str(value)

"""Deprecated module path, kept for one release: use ``from cgcnn_ase import CGCNNPredictor``
(or ``cgcnn_ase.inference.predictor``). Importing it warns with a :class:`DeprecationWarning`."""

import warnings

from cgcnn_ase.inference.predictor import CGCNNPredictor, PredictionResult

__all__ = ["CGCNNPredictor", "PredictionResult"]

warnings.warn(
    "cgcnn_ase.predictor moved to cgcnn_ase.inference.predictor; import from cgcnn_ase instead (the old path goes in 0.3)",
    DeprecationWarning,
    stacklevel=2,
)

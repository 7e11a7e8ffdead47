"""Deprecated module path, kept for one release: use ``from cgcnn_ase import CGCNNCalculator``
(or ``cgcnn_ase.integrations.ase``). Importing it warns with a :class:`DeprecationWarning`."""

import warnings

from cgcnn_ase.integrations.ase import CGCNNCalculator

__all__ = ["CGCNNCalculator"]

warnings.warn(
    "cgcnn_ase.calculator moved to cgcnn_ase.integrations.ase; import from cgcnn_ase instead (the old path goes in 0.3)",
    DeprecationWarning,
    stacklevel=2,
)

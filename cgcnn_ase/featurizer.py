"""Deprecated module path, kept for one release: use ``from cgcnn_ase import CGCNNFeaturizer``
(or ``cgcnn_ase.integrations.matminer``). Importing it warns with a :class:`DeprecationWarning`."""

import warnings

from cgcnn_ase.integrations.matminer import CGCNNFeaturizer

__all__ = ["CGCNNFeaturizer"]

warnings.warn(
    "cgcnn_ase.featurizer moved to cgcnn_ase.integrations.matminer; import from cgcnn_ase instead (the old path goes in 0.3)",
    DeprecationWarning,
    stacklevel=2,
)

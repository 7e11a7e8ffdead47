"""cgcnn-ase: crystal graph convolutional neural networks for ASE and pymatgen users.

Public names only; importing the package has no side effects and does not import torch,
ASE or matminer: the names below load their layer on first use (PEP 562).

>>> from cgcnn_ase import CGCNNPredictor, CGCNNCalculator, CGCNNFeaturizer, load_model  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from cgcnn_ase.errors import (
    CGCNNError,
    CheckpointError,
    InvalidStructureError,
    OutOfDomainWarning,
    SparseGraphError,
    SparseGraphWarning,
    StructureReadError,
    UnknownModelError,
    UnseenElementWarning,
    UnsupportedElementError,
    UntrustedCheckpointError,
)

try:
    __version__ = version("cgcnn-ase")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

#: Public name -> the module that defines it (imported on first access).
_LAZY = {
    "CGCNNPredictor": "cgcnn_ase.inference.predictor",
    "PredictionResult": "cgcnn_ase.inference.results",
    "CGCNNCalculator": "cgcnn_ase.integrations.ase",
    "CGCNNFeaturizer": "cgcnn_ase.integrations.matminer",
    "GraphConfig": "cgcnn_ase.graph.config",
    "build_graph": "cgcnn_ase.graph.neighbours",
    "list_models": "cgcnn_ase.models.registry",
    "load_model": "cgcnn_ase.models.registry",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from cgcnn_ase.graph.config import GraphConfig
    from cgcnn_ase.graph.neighbours import build_graph
    from cgcnn_ase.inference.predictor import CGCNNPredictor
    from cgcnn_ase.inference.results import PredictionResult
    from cgcnn_ase.integrations.ase import CGCNNCalculator
    from cgcnn_ase.integrations.matminer import CGCNNFeaturizer
    from cgcnn_ase.models.registry import list_models, load_model


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cgcnn_ase' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CGCNNCalculator",
    "CGCNNError",
    "CGCNNFeaturizer",
    "CGCNNPredictor",
    "CheckpointError",
    "GraphConfig",
    "InvalidStructureError",
    "OutOfDomainWarning",
    "PredictionResult",
    "SparseGraphError",
    "SparseGraphWarning",
    "StructureReadError",
    "UnknownModelError",
    "UnseenElementWarning",
    "UnsupportedElementError",
    "UntrustedCheckpointError",
    "__version__",
    "build_graph",
    "list_models",
    "load_model",
]

"""cgcnn-ase: crystal graph convolutional neural networks for ASE and pymatgen users.

Public names only; importing the package has no side effects.
"""

from importlib.metadata import PackageNotFoundError, version

from cgcnn_ase.errors import (
    CGCNNError,
    CheckpointError,
    InvalidStructureError,
    SparseGraphError,
    SparseGraphWarning,
    StructureReadError,
    UnknownModelError,
    UnseenElementWarning,
    UnsupportedElementError,
    UntrustedCheckpointError,
)
from cgcnn_ase.graph.neighbours import build_graph
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.inference.predictor import CGCNNPredictor, PredictionResult
from cgcnn_ase.models.registry import list_models

try:
    __version__ = version("cgcnn-ase")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "CGCNNError",
    "CGCNNPredictor",
    "CheckpointError",
    "GraphConfig",
    "InvalidStructureError",
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
]

"""Exceptions raised by cgcnn-ase.

Every error the package raises on purpose derives from :class:`CGCNNError`, so a
caller can catch all of them at once; the subclasses name the kind of problem.
This module imports nothing from the package.
"""

from __future__ import annotations


class CGCNNError(Exception):
    """Base class of every error raised on purpose by cgcnn-ase."""


class InvalidStructureError(CGCNNError, ValueError):
    """The input is not a usable periodic crystal (empty, disordered, non-periodic, ...)."""


class StructureReadError(InvalidStructureError):
    """A file could not be read as a crystal structure (missing, empty, corrupt, unknown format)."""


class UnsupportedElementError(InvalidStructureError):
    """The structure holds an element that the model's element table does not cover."""


class SparseGraphError(InvalidStructureError):
    """An atom has no neighbour within the cutoff radius and the policy says to refuse it."""


class CheckpointError(CGCNNError):
    """A model file or folder is missing, corrupt, inconsistent or untrusted."""


class UntrustedCheckpointError(CheckpointError):
    """Loading the file would need unpickling arbitrary code and the user did not trust it."""


class UnknownModelError(CGCNNError, KeyError):
    """A pretrained model name is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class UnseenElementWarning(UserWarning):
    """A structure holds elements that the model never saw in training (an extrapolation)."""


class SparseGraphWarning(UserWarning):
    """Some atom has fewer than the model's neighbour count within the cutoff radius."""

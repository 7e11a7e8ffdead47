"""Exceptions raised by cgcnn-ase.

Every error the package raises on purpose derives from :class:`CGCNNError`, so a
caller can catch all of them at once; the subclasses name the kind of problem.
This module imports nothing from the package. It also says where a warning points
(:func:`user_stacklevel`).
"""

from __future__ import annotations

import sys

#: Modules whose frames a warning skips, so that it names the user's line: this package and the libraries whose
#: calls reach it (ASE's get_property -> calculate, matminer's featurize_dataframe, pandas' apply).
LIBRARY_MODULES = ("cgcnn_ase", "ase", "matminer", "pandas", "pymatgen", "tqdm")


def user_stacklevel() -> int:
    """The ``stacklevel`` with which a ``warnings.warn`` in the calling function names the first frame
    outside :data:`LIBRARY_MODULES`: the user's line, however deep ASE or matminer called in."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and str(frame.f_globals.get("__name__", "")).split(".")[0] in LIBRARY_MODULES:
        frame, level = frame.f_back, level + 1
    return level


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


class DeviceError(CGCNNError, ValueError):
    """A torch device that is not a device name, or that this machine or torch build does not have."""


class DatasetError(CGCNNError, ValueError):
    """A dataset file or its specification is unusable (missing column, bad filter, ...)."""


class ConfigError(CGCNNError, ValueError):
    """A training configuration is invalid or inconsistent (e.g. with the run being resumed), or an
    output folder of ``train``/``ensemble`` cannot be used (it holds another model)."""


class TrainingError(CGCNNError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN)."""


class UnfinishedRunError(TrainingError):
    """A session of a run of several trainings (``finetune.member: all``) was stopped by its ``time_limit``
    before every member had finished; running it again continues (the CLI exits 75). ``folder`` is the
    work folder that holds the members' runs."""

    def __init__(self, message: str, folder: str | None = None) -> None:
        super().__init__(message)
        self.folder = folder


class EnsembleError(CheckpointError):
    """Member folders cannot form one ensemble (different settings, split or data)."""


class SiteAnalysisError(CGCNNError, ValueError):
    """The site analysis cannot be done as asked (e.g. a mean-pooled model without ``allow_mean_pooled``)."""


class StreamError(CGCNNError, ValueError):
    """An input table or an output cannot be used as asked (missing column, output of another run, ...)."""


class MissingDependencyError(CGCNNError, ImportError):
    """A feature needs an optional package that is not installed; the message names the extra that brings it."""


class DistributedSetupError(CGCNNError, RuntimeError):
    """The distributed environment is unusable (torch.distributed missing, inconsistent variables)."""


class WorkerError(CGCNNError, RuntimeError):
    """A worker process of a pool died (killed by a signal: the out-of-memory killer, ``kill -9``) and its task
    with it; the run stops rather than wait for it."""


class TerminatedError(KeyboardInterrupt):
    """SIGTERM received by the command line (a batch system's time limit, ``kill``): it stops the command as Ctrl-C
    does (every ``except KeyboardInterrupt`` cleans up as for Ctrl-C), and the command exits 143."""


class UnseenElementWarning(UserWarning):
    """A structure holds elements that the model never saw in training (an extrapolation)."""


#: Where an :class:`UnseenElementWarning` of ``CGCNNPredictor.predict`` says the symbols are listed; front
#: ends that list them elsewhere (the CLI's column, the featurizer's) put their own place in its text.
UNSEEN_HINT = "result.unseen_elements lists them per structure"


class OutOfDomainWarning(UserWarning):
    """Structures lie farther from a model's training data than every one of its validation crystals (domain
    percentile 100): their predictions extrapolate, e.g. a perovskite model asked about a metal
    (docs/uncertainty.md)."""


class SparseGraphWarning(UserWarning):
    """Some atom has fewer than the model's neighbour count within the cutoff radius."""


class GeometryWarning(UserWarning):
    """A structure's interatomic distances lie far outside those of the training crystals."""


class CloseAtomsWarning(GeometryWarning):
    """Two atoms are far closer than their covalent radii allow (an unphysical or mis-scaled structure)."""


class StretchedStructureWarning(GeometryWarning):
    """No two atoms come near bonding distance: every pair lies far beyond the sum of its covalent
    radii (a cell scaled up by mistake, or a solid of noble-gas atoms)."""


class VacuumWarning(GeometryWarning):
    """The atoms leave an empty slab across the cell wider than the graph radius: a slab, wire or
    molecule in a periodic box, which the models (trained on bulk crystals) see as such."""


class ShadowedModelWarning(UserWarning):
    """A file or folder in the working directory has a shipped model's name; the bare name selects the
    shipped model, and ``./NAME`` the file or folder."""


class CifSymmetryWarning(UserWarning):
    """A CIF's space-group symbol and its list of symmetry operations disagree (``F m -3 m`` with only ``x,y,z``):
    the listed operations are applied, as the CIF standard and every reader do, so the crystal may not be the one
    the symbol names."""


class CifContentWarning(UserWarning):
    """The atoms read from a CIF disagree with its own ``_chemical_formula_sum`` (a file cut short at a line
    break, a site the reading could not take): the crystal predicted may not be the one the file describes."""


class SkippedFilesWarning(UserWarning):
    """Files of a folder input that are not structure files (documents, images, the original CGCNN
    layout's ``id_prop.csv`` and ``atom_init.json``) were left out; named on their own they are read."""


class DuplicateIdsWarning(UserWarning):
    """Rows of one output share an id (two tables with the same ids, a repeated input): they cannot be told
    apart, and ``--resume`` counts the id as done once any of them is written."""


class CompileWarning(UserWarning):
    """``torch.compile`` failed on this machine; the code runs eagerly instead (slower, same results)."""

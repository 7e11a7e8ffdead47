"""The one way to load a model: the registry of shipped models, :func:`load_model` and :func:`resolve_device`.

Every entry point (predictor, calculator, featurizer, CLI, streaming, dask, evaluation, site
energies) turns a user's model argument into a :class:`~cgcnn_ase.models.folder.LoadedModel`
through :func:`load_model`, and a device argument into a ``torch.device`` through
:func:`resolve_device`, so the same argument means the same thing everywhere. Nothing is
downloaded, ever.

Each sub-folder of ``pretrained_models/`` is a model folder (see
:mod:`cgcnn_ase.models.folder`) whose ``model.json`` may list short ``aliases`` in its
metadata (e.g. ``formation_energy``). In an installed wheel the folder sits inside the
package (``cgcnn_ase/pretrained_models``); in a source checkout, at the repository's top.
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cgcnn_ase.errors import CheckpointError, ConfigError, ShadowedModelWarning, UnknownModelError, user_stacklevel
from cgcnn_ase.graph.element_table import ElementTable
from cgcnn_ase.models.folder import (
    MODEL_JSON,
    TRAINING_STATE_FILES,
    LoadedModel,
    load_model_folder,
    read_model_json,
)
from cgcnn_ase.models.legacy import load_original_checkpoint

#: File endings that mark a model argument as a path even when no such file exists.
_PATH_SUFFIXES = (".tar", ".pth", ".pt", ".json", ".safetensors")


@dataclass(frozen=True)
class ModelInfo:
    """One shipped model, as listed by :func:`list_models`.

    Attributes:
        name: folder name (unique, versioned).
        aliases: short names that also select it.
        property: predicted property; units: its units; task: regression/classification.
        path: the model folder.
        metadata: the ``metadata`` block of ``model.json`` (dataset, split, metrics, ...).
    """

    name: str
    aliases: tuple[str, ...]
    property: str
    units: str
    task: str
    path: Path
    metadata: dict[str, Any]


def models_dir() -> Path | None:
    """The folder holding shipped models, or ``None`` if there is none."""
    here = Path(__file__).resolve().parents[1]  # the cgcnn_ase package
    for candidate in (here / "pretrained_models", here.parent / "pretrained_models"):
        if candidate.is_dir():
            return candidate
    return None


def list_models() -> list[ModelInfo]:
    """All shipped models, sorted by name (an empty list if none are shipped)."""
    root = models_dir()
    if root is None:
        return []
    infos = []
    for meta_path in sorted(root.glob("*/model.json")):
        meta = json.loads(meta_path.read_text())
        metadata = meta.get("metadata", {})
        infos.append(
            ModelInfo(
                name=meta_path.parent.name,
                aliases=tuple(metadata.get("aliases", ())),
                property=meta["property"],
                units=meta["units"],
                task=meta["task"],
                path=meta_path.parent,
                metadata=metadata,
            )
        )
    return infos


def resolve_model(name: str) -> ModelInfo:
    """Find a shipped model by folder name or alias.

    Raises:
        UnknownModelError: no such model; the message suggests close names and lists all.
    """
    models = list_models()
    info = _named(name, models)
    if info is not None:
        return info
    known = sorted({n for info in models for n in (info.name, *info.aliases)})
    close = _close_names(name, known)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(known) if known else "none are shipped yet; load a file with from_checkpoint(path)"
    raise UnknownModelError(f"unknown model {name!r}.{hint} Available: {listing}")


def _named(name: str, models: Sequence[ModelInfo]) -> ModelInfo | None:
    """The model among ``models`` whose folder name or alias is ``name``, or ``None``."""
    return next((info for info in models if name == info.name or name in info.aliases), None)


def _close_names(name: str, known: Sequence[str], n: int = 3) -> list[str]:
    """Names to suggest for a mistyped ``name``: those containing it or contained in it (ignoring
    case, ``-`` and ``_``; shortest first, aliases before folder names), then difflib's closest."""
    def norm(text: str) -> str:
        return text.lower().replace("-", "_").replace(" ", "_")

    query = norm(name)
    if not query:
        return []
    parts = [k for k in known if query in norm(k) or (len(query) >= 4 and norm(k) in query)]
    parts.sort(key=len)
    fuzzy = difflib.get_close_matches(query, [norm(k) for k in known], n=n, cutoff=0.6)
    by_norm = {norm(k): k for k in known}
    return list(dict.fromkeys([*parts, *(by_norm[f] for f in fuzzy)]))[:n]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else the CPU; anything else: ``torch.device(device)``.

    Raises:
        DeviceError: not a device name, or a CUDA/MPS device this machine or torch build lacks.
    """
    from cgcnn_ase.errors import DeviceError

    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"device {device!r} is not a torch device: give cpu, cuda, cuda:N, mps or auto") from exc
    if out.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {device!r} cannot run the models: give cpu, cuda, cuda:N, mps or auto")
    if out.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r}: this torch build or machine has no CUDA GPU; use cpu (or auto)")
        if out.index is not None and out.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA device(s)")
    if out.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError(f"device {device!r}: MPS is not available here; use cpu (or auto)")
    return out


def _looks_like_path(model: str) -> bool:
    return any(sep in model for sep in ("/", "\\")) or model.endswith(_PATH_SUFFIXES)


def shipped_by_name(model: str | os.PathLike) -> ModelInfo | None:
    """The shipped model a bare name or alias selects, or ``None`` (paths, ``os.PathLike`` and other names).

    A shipped name wins over a file or folder of the same name in the working directory (a training
    run written to ``./formation_energy`` must not silently become everyone's formation energy); that
    file or folder is then named in a :class:`~cgcnn_ase.errors.ShadowedModelWarning`, and ``./NAME``
    loads it.
    """
    if not isinstance(model, str) or _looks_like_path(model):
        return None
    info = _named(model, list_models())
    if info is not None and Path(model).exists() and Path(model).resolve() != info.path.resolve():  # not the
        # shipped folder itself
        warnings.warn(
            f"{model!r} is the shipped model {info.name}; the {'folder' if Path(model).is_dir() else 'file'} "
            f"{model!r} in the working directory ({Path(model).resolve()}) is not used: give ./{model} to load it",
            ShadowedModelWarning,
            stacklevel=user_stacklevel(),
        )
    return info


def load_model(
    model: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    members: int | None = None,
    atom_init: str | os.PathLike | ElementTable | None = None,
    trusted: bool = False,
) -> LoadedModel:
    """Load a model from whatever names it: a shipped model's name or alias, a model folder
    (single or ensemble), or one of the original authors' ``.pth.tar`` files.

    A shipped model's bare name or alias selects it, even where the working directory holds a
    file or folder of that name (warned; give ``./NAME`` for that one). Any other existing path
    is loaded as a folder or file; a string that is not an existing path is looked up in the
    registry (:func:`resolve_model`), unless it looks like a path (holds ``/`` or ends in
    ``.pth.tar``, ``.pt``, ...), which is then reported missing.

    Args:
        model: the name, alias, folder or file.
        device: where the networks go (see :func:`resolve_device`; ``None``: CUDA when
            available).
        members: for an ensemble folder, how many members to load (``None``: all; ``1``:
            member 0 alone, the fast single-model path without a std).
        atom_init: the element table of an original ``.pth.tar`` file (its
            ``atom_init.json``, an :class:`~cgcnn_ase.graph.element_table.ElementTable`, or
            ``"generated"``); refused for folders and shipped models, which carry their own.
        trusted: allow full unpickling of a legacy file the safe loader refuses (can run code).

    Raises:
        UnknownModelError: no shipped model of that name (the message suggests close names).
        CheckpointError: a missing, corrupt, inconsistent or untrusted folder or file.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"a model is named by a string or a path, not {type(model).__name__}")
    path = Path(model)
    shipped = shipped_by_name(model)
    if shipped is None and not path.exists():
        if isinstance(model, os.PathLike) or _looks_like_path(model):
            raise CheckpointError(f"{model}: no such model folder or checkpoint file")
        shipped = resolve_model(model)
    if shipped is None:
        loaded = _load_path(path, members=members, atom_init=atom_init, trusted=trusted)
        loaded.source = str(path.resolve())
    elif atom_init is not None:
        raise CheckpointError(
            f"{model}: a shipped model carries its own element table; atom_init applies to .pth.tar files only"
        )
    else:
        loaded = load_model_folder(shipped.path, members=members)
        loaded.source = shipped.name
    return loaded.to(resolve_device(device))


def model_folder(model: str | os.PathLike, *, purpose: str = "a model folder is needed") -> Path:
    """The model folder a name, alias or path stands for (shipped models: their folder in the package).

    Raises:
        CheckpointError: the path exists but is not a folder, or looks like a path and is missing.
        UnknownModelError: no shipped model of that name.
    """
    shipped = shipped_by_name(model)
    if shipped is not None:
        return shipped.path
    path = Path(model)
    if path.is_dir():
        return path
    if path.exists() or isinstance(model, os.PathLike) or _looks_like_path(str(model)):
        raise CheckpointError(f"{model}: {'not a model folder' if path.exists() else 'no such folder'} ({purpose})")
    return resolve_model(str(model)).path


def _load_path(
    path: Path, *, members: int | None, atom_init: str | os.PathLike | ElementTable | None, trusted: bool
) -> LoadedModel:
    """A model folder, or an original ``.pth.tar`` / ``.pth`` / ``.pt`` file."""
    if path.is_dir():
        if atom_init is not None:
            read_model_json(path)  # not a model folder at all: that error (naming checkpoint files it holds) first
            raise CheckpointError(f"{path}: a model folder carries its own element table; do not pass atom_init")
        return load_model_folder(path, members=members)
    training_state = path.name in TRAINING_STATE_FILES  # a cgcnn-ase run's work_dir
    own = not path.name.endswith((".pth.tar", ".pth")) and (path.parent / MODEL_JSON).is_file()
    folder = path.parent if own else None
    if training_state and (path.parent.parent / MODEL_JSON).is_file():  # <model folder>/run/checkpoint_last.pt
        folder = path.parent.parent
    if folder is not None:  # weights.safetensors, model.json, run/checkpoint_last.pt: parts of a model folder
        raise CheckpointError(f"{path} is a file of the model folder {folder}: load the folder itself "
                              f"(CGCNNPredictor.from_checkpoint({str(folder)!r}), --model {folder})")  # fmt: skip
    if training_state:
        raise CheckpointError(f"{path} is the training state of a cgcnn-ase run (its work_dir), not a model: load "
                              "the model folder the run writes when it ends (its output), or run the same `cgcnn-ase "
                              "train` command again to resume an unfinished run")  # fmt: skip
    if members not in (None, 1):
        raise ConfigError(f"{path}: members={members} needs an ensemble model folder; this is a single checkpoint")
    return load_original_checkpoint(path, atom_init=atom_init, trusted=trusted)

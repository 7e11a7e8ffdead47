"""Registry of the models shipped in ``pretrained_models/`` (no network access, ever).

Each sub-folder of ``pretrained_models/`` is a model folder (see
:mod:`cgcnn_ase.models.folder`) whose ``model.json`` may list short ``aliases`` in its
metadata (e.g. ``formation_energy``). In an installed wheel the folder sits inside the
package (``cgcnn_ase/pretrained_models``); in a source checkout, at the repository's top.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgcnn_ase.errors import UnknownModelError


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
    for info in models:
        if name == info.name or name in info.aliases:
            return info
    known = sorted({n for info in models for n in (info.name, *info.aliases)})
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(known) if known else "none are shipped yet; load a file with from_checkpoint(path)"
    raise UnknownModelError(f"unknown model {name!r}.{hint} Available: {listing}")

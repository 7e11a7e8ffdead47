"""The authors' published checkpoints (``*.pth.tar`` of the original CGCNN code) as a :class:`LoadedModel`.

:func:`load_original_checkpoint` reads the file without running pickled code (unless trusted), takes the
architecture from the weight shapes, the property and units from the file name (:data:`ORIGINAL_PROPERTIES`)
and the element table from the ``atom_init.json`` the checkpoint was trained with, and sets the original
graph settings (8 Å, 12 neighbours, 41 Gaussians, the ``original`` neighbour policy). docs/compatibility.md
describes what is and is not stored in those files.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cgcnn_ase.errors import CheckpointError, UntrustedCheckpointError
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.graph.element_table import ElementTable, load_atom_init
from cgcnn_ase.graph.elements import generate_cgcnn_table
from cgcnn_ase.models.folder import LoadedModel, ModelSpec, build_network

#: Property name and units of the authors' checkpoints, keyed by file stem.
ORIGINAL_PROPERTIES: dict[str, tuple[str, str]] = {
    "formation-energy-per-atom": ("formation_energy", "eV/atom"),
    "final-energy-per-atom": ("energy_per_atom", "eV/atom"),
    "band-gap": ("band_gap", "eV"),
    "efermi": ("fermi_energy", "eV"),
    "bulk-moduli": ("log10_bulk_modulus", "log10(GPa)"),
    "shear-moduli": ("log10_shear_modulus", "log10(GPa)"),
    "poisson-ratio": ("poisson_ratio", "dimensionless"),
    "semi-metal-classification": ("is_metal", "probability"),
}


def _numpy_safe_globals() -> list[Any]:
    """The numpy globals legacy checkpoints pickle for scalars: plain data, no code."""
    from numpy._core.multiarray import scalar

    return [(scalar, "numpy.core.multiarray.scalar"), scalar, np.dtype, type(np.dtype(np.float64))]


def _torch_load(path: Path, trusted: bool) -> dict[str, Any]:
    """Load a legacy torch file on the CPU without running pickled code (unless trusted)."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in lines if "global" in line.lower()), lines[-2] if len(lines) > 1 else str(exc))
        if "global" not in reason.lower():  # not a refused import: the file itself is broken
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({reason[:200]})") from None
        if not trusted:
            named = re.search(r"GLOBAL ([\w.]+)", reason)  # torch's text is long: name the refused object alone
            what = f"a pickled {named.group(1)}" if named else f"arbitrary pickled objects ({reason[:200]})"
            raise UntrustedCheckpointError(
                f"{path}: the file needs {what} to load; it was not loaded, since unpickling can run code. Pass "
                "trusted=True (CLI: --trust) only if you trust its source."
            ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure of a trusted legacy pickle
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def _architecture_from_state(state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Infer the original network's hyper-parameters from its weight shapes."""
    try:
        atom_fea_len, orig_atom_fea_len = state["embedding.weight"].shape
        n_conv = len({k.split(".")[1] for k in state if k.startswith("convs.")})
        nbr_fea_len = state["convs.0.fc_full.weight"].shape[1] - 2 * atom_fea_len
        h_fea_len = state["conv_to_fc.weight"].shape[0]
        n_h = 1 + len({k.split(".")[1] for k in state if k.startswith("fcs.")})
        n_out = state["fc_out.weight"].shape[0]
    except (KeyError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{source}: not a CGCNN state dict (missing {exc})") from None
    return dict(
        orig_atom_fea_len=int(orig_atom_fea_len), nbr_fea_len=int(nbr_fea_len), atom_fea_len=int(atom_fea_len),
        n_conv=n_conv, h_fea_len=int(h_fea_len), n_h=n_h,
        task="classification" if n_out == 2 else "regression", readout="mean", conv="gated",
    )  # fmt: skip


def _resolve_elements(atom_init: str | os.PathLike | ElementTable | None, source: str) -> ElementTable:
    """The element table for an original checkpoint: a path, a table, or ``"generated"``."""
    if isinstance(atom_init, ElementTable):
        return atom_init
    if atom_init is None:
        raise CheckpointError(
            f"{source}: an original CGCNN checkpoint needs the atom_init.json it was trained with (the file does not "
            "store it): load it with CGCNNPredictor.from_checkpoint(path, atom_init=PATH) (CLI: --atom-init PATH; the "
            "calculator and the featurizer take that predictor). atom_init='generated' uses this project's table, "
            "which differs from the authors' for 47 of 100 elements (docs/elements.md) and changes predictions."
        )
    if str(atom_init) == "generated":
        return generate_cgcnn_table()
    return load_atom_init(atom_init)


def _table_source(atom_init: Any) -> dict[str, str]:
    """``{"atom_init": ...}``: the element table given by path (absolute) or as ``"generated"``, for provenance and for
    ``CGCNNCalculator(**calc.todict())``; nothing for a table given as an object."""
    if not isinstance(atom_init, (str, os.PathLike)):
        return {}
    return {"atom_init": "generated" if str(atom_init) == "generated" else os.path.abspath(os.fspath(atom_init))}


def load_original_checkpoint(
    path: str | os.PathLike,
    *,
    atom_init: str | os.PathLike | ElementTable | None = None,
    trusted: bool = False,
    property: str | None = None,
    units: str | None = None,
    graph: GraphConfig | None = None,
) -> LoadedModel:
    """Load one of the original CGCNN authors' ``.pth.tar`` checkpoints on the CPU.

    The architecture is read from the weight shapes; graph settings are the original's
    (8 Å, 12 neighbours, 41 Gaussians, ``neighbor_policy="original"``), which the file
    does not store, unless ``graph`` gives those the model was trained with. Property and units
    come from the file name for the 8 published models, else from ``property``/``units``.

    Args:
        path: the ``.pth.tar`` file.
        atom_init: the element table the model was trained with (path to an original
            ``atom_init.json`` or an :class:`ElementTable`), or ``"generated"`` for this
            project's table (which changes predictions); required.
        trusted: allow full unpickling (can run code) if the safe loader refuses the file.
        property: the property's name, for a file not named as a published model (else its file name).
        units: the property's units, likewise (else ``"unknown"``).
        graph: the graph settings of a model trained with the original code's ``CIFData`` changed
            (``max_num_nbr``, ``radius``, ``dmin``, ``step``: ``GraphConfig(max_neighbors=..., radius=...,
            gaussian_dmin=..., gaussian_step=..., neighbor_policy="original")``); ``None``: the original's.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    checkpoint = _torch_load(path, trusted)
    if isinstance(checkpoint, dict) and "embedding.weight" in checkpoint:
        raise CheckpointError(
            f"{path}: a bare CGCNN state dict, without the wrapper the original code saves (its weights under "
            "'state_dict' and the target normaliser under 'normalizer'): save it as {'state_dict': weights, "
            "'normalizer': {'mean': ..., 'std': ...}} (mean 0, std 1 for a classifier)"
        )
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a CGCNN checkpoint (no 'state_dict')")
    state = {k: v for k, v in checkpoint["state_dict"].items() if isinstance(v, torch.Tensor)}
    architecture = _architecture_from_state(state, str(path))
    stem = path.name.split(".")[0]
    default_property, default_units = ORIGINAL_PROPERTIES.get(stem, (stem, "unknown"))
    classification = architecture["task"] == "classification"
    normalizer = checkpoint.get("normalizer")
    if classification:
        normalizer = {"mean": 0.0, "std": 1.0}  # the network's outputs are class log-probabilities
    elif not (isinstance(normalizer, dict) and {"mean", "std"} <= set(normalizer)):
        raise CheckpointError(
            f"{path}: a regression checkpoint without its target normaliser ('normalizer' with 'mean' and 'std', "
            "which the original code saves beside 'state_dict'): its outputs cannot be turned into values"
        )
    given = graph is not None
    graph = graph if given else GraphConfig(neighbor_policy="original")
    if not isinstance(graph, GraphConfig):
        raise TypeError(f"graph must be a GraphConfig, got {type(graph).__name__}")
    if architecture["nbr_fea_len"] != graph.n_gaussians:
        whose = "the graph settings given" if given else "the original code's graph"
        raise CheckpointError(
            f"{path}: its convolutions take {architecture['nbr_fea_len']} bond features per edge, but {whose} "
            f"({graph.radius:g} Å, Gaussians from {graph.gaussian_dmin:g} Å every {graph.gaussian_step:g} Å) gives "
            f"{graph.n_gaussians}: it was trained with other graph settings, which the file does not store. Give them: "
            "load_original_checkpoint(path, atom_init=..., graph=GraphConfig(radius=..., max_neighbors=..., "
            "gaussian_step=..., neighbor_policy='original')), then CGCNNPredictor(model) or save_model_folder(folder, "
            "model) for the command line (docs/compatibility.md)"
        )
    spec = ModelSpec(
        name=stem,
        property=property or default_property,
        units="probability" if classification else (units or default_units),
        task=architecture["task"],
        architecture=architecture,
        graph=graph,
        normalizer_mean=float(normalizer["mean"]),
        normalizer_std=float(normalizer["std"]),
        positive_class=("metal" if stem == "semi-metal-classification" else "class 1") if classification else None,
        metadata={"source": str(path), "origin": "original CGCNN checkpoint (Xie & Grossman 2018)", **_table_source(atom_init)},
    )
    elements = _resolve_elements(atom_init, str(path))
    if elements.n_features != architecture["orig_atom_fea_len"]:
        raise CheckpointError(
            f"{path}: the model expects {architecture['orig_atom_fea_len']} element features, the table has {elements.n_features}"
        )
    return LoadedModel(spec=spec, network=build_network(architecture, state, str(path)), elements=elements)

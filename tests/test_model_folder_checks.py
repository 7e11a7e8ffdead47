"""``model.json`` is checked field by field at load time, and a model folder cannot name files outside itself.

Each case edits one field of a valid folder; loading must fail with a CheckpointError whose message
names the field, instead of giving plausible or NaN predictions or a raw torch error later.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from cgcnn_ase import CGCNNPredictor
from cgcnn_ase.errors import CheckpointError
from cgcnn_ase.models.folder import load_model_folder, save_model_folder

from .conftest import random_model


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return save_model_folder(tmp_path / "model", random_model(seed=1))


def _edit(folder: Path, change) -> Path:
    path = folder / "model.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))  # json writes NaN and Infinity, and Python's json reads them back
    return folder


def _set(*keys, value):
    def change(meta):
        node = meta
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return change


def test_the_unedited_folder_loads(folder):
    assert load_model_folder(folder).spec.normalizer_std > 0


@pytest.mark.parametrize(
    "keys,value,named",
    [
        (("normalizer", "std"), -0.5, "normalizer.std must be positive"),
        (("normalizer", "std"), 0.0, "normalizer.std must be positive"),
        (("normalizer", "std"), math.nan, "normalizer.std must be finite"),
        (("normalizer", "mean"), math.inf, "normalizer.mean must be finite"),
        (("normalizer", "mean"), "1.0eV", "normalizer.mean must be a number"),
        (("graph", "radius"), math.nan, "graph: radius must be a finite number"),
        (("graph", "gaussian_step"), 0.1, "architecture.nbr_fea_len"),  # 81 Gaussians vs a 41-wide input
        (("graph", "radius"), 6.0, "the graph settings give 31 Gaussians"),
        (("architecture", "n_conv"), 0, "architecture.n_conv must be a positive integer"),
        (("task",), "regresion", "task must be 'regression' or 'classification'"),
    ],
)
def test_bad_fields_are_refused_naming_the_field(folder, keys, value, named):
    _edit(folder, _set(*keys, value=value))
    with pytest.raises(CheckpointError, match=named.replace("(", r"\(").replace(")", r"\)")):
        load_model_folder(folder)
    with pytest.raises(CheckpointError):
        CGCNNPredictor.from_checkpoint(folder)


@pytest.mark.parametrize(
    "keys,outside",
    [
        (("weights",), "ABSOLUTE"),
        (("weights",), "../elsewhere/weights.safetensors"),
        (("elements", "file"), "../atom_init.json"),
        (("elements", "file"), "ABSOLUTE"),
        (("domain",), {"file": "../domain.safetensors"}),
    ],
)
def test_file_names_that_leave_the_folder_are_refused(folder, tmp_path, keys, outside):
    # a perfectly valid file outside the folder: reading it must still be refused
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(folder / "weights.safetensors", elsewhere / "weights.safetensors")
    shutil.copy(folder / "atom_init.json", tmp_path / "atom_init.json")
    if outside == "ABSOLUTE":
        outside = str(elsewhere / "weights.safetensors") if keys == ("weights",) else str(tmp_path / "atom_init.json")
    _edit(folder, _set(*keys, value=outside))
    field = ".".join(keys) if keys != ("domain",) else "domain.file"
    with pytest.raises(CheckpointError, match=f"{field} = .* points outside the model folder"):
        load_model_folder(folder)


def test_an_ensemble_members_normaliser_is_checked_too(tmp_path):
    from cgcnn_ase.models.folder import EnsembleMember, LoadedModel

    members = [random_model(seed=s) for s in (1, 2)]
    ensemble = LoadedModel(
        spec=members[0].spec,
        network=members[0].network,
        elements=members[0].elements,
        members=[EnsembleMember(m.network, 0.0, 1.0, {"seed": k}) for k, m in enumerate(members)],
        calibration={"scale": 1.3},
    )
    folder = save_model_folder(tmp_path / "ens", ensemble)
    assert load_model_folder(folder).is_ensemble
    _edit(folder, lambda meta: meta["ensemble"]["members"][1]["normalizer"].update(std=-1.0))
    with pytest.raises(CheckpointError, match=r"ensemble.members\[1\].normalizer.std must be positive"):
        load_model_folder(folder)
    _edit(folder, lambda meta: meta["ensemble"]["members"][1]["normalizer"].update(std=1.0))
    _edit(folder, lambda meta: meta["ensemble"]["calibration"].update(scale=math.nan))
    with pytest.raises(CheckpointError, match="ensemble.calibration.scale must be finite"):
        load_model_folder(folder)

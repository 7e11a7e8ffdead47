"""Round 29 of outside testing: an HPC and web-service integrator (29a), a reproducibility auditor re-deriving the
model cards (29b), a data scientist using the matminer featurizer in scikit-learn pipelines (29c)."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from ase.build import bulk
from pymatgen.core import Composition
from pymatgen.io.ase import AseAtomsAdaptor

from cgcnn_ase import CGCNNFeaturizer, CGCNNPredictor, InvalidStructureError

from .conftest import REPO


@pytest.fixture(scope="module")
def salt():
    return AseAtomsAdaptor.get_structure(bulk("NaCl", "rocksalt", a=5.64))


@pytest.fixture(scope="module")
def featurizer():
    return CGCNNFeaturizer("formation_energy")


# -- 29c: the matminer featurizer in pandas and scikit-learn ------------------------------------------------------


def test_a_composition_is_one_rows_error_not_the_batchs(salt, featurizer):
    """A pymatgen Composition (a mapping of elements) ended the whole batch with pymatgen's TypeError, with
    errors="collect" and ignore_errors too; it is now that row's error, naming what to give instead."""
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1)
    result = predictor.predict([salt, Composition("NaCl"), salt], errors="collect")
    assert np.isfinite(result.values[[0, 2]]).all() and np.isnan(result.values[1])
    assert result.errors[1].startswith("input 1: a pymatgen Composition (Na1 Cl1) holds no atomic positions")
    with pytest.raises(InvalidStructureError, match="Composition"):
        predictor.predict(Composition("Fe2O3"))
    with pytest.raises(InvalidStructureError, match="unsupported input type dict"):  # a Composition inside a dict
        predictor.predict([{"structure": Composition("NaCl")}])
    frame = pd.DataFrame({"structure": [salt, Composition("NaCl")]}, index=["a", "b"])
    out = featurizer.featurize_dataframe(frame, "structure", ignore_errors=True, return_errors=True, pbar=False)
    assert np.isfinite(out.iloc[0, 1]) and np.isnan(out.iloc[1, 1])
    assert out.iloc[1, -1].startswith("a pymatgen Composition")  # the row names itself: no "b: " prefix


def test_featurize_many_takes_a_one_column_dataframe_as_matminer_does(salt, featurizer):
    """featurize_many(df[["structure"]]) iterated over the column names: one row of NaN for the whole frame, and a
    fitted scikit-learn pipeline gave one prediction for 100 rows."""
    frame = pd.DataFrame({"structure": [salt, salt.copy(), salt]})
    rows = featurizer.featurize_many(frame[["structure"]], pbar={"disable": True})
    assert len(rows) == 3 and rows == featurizer.featurize_many(frame["structure"], pbar=False)
    assert featurizer.transform(frame[["structure"]]) == rows  # BaseFeaturizer.transform ignores errors
    with pytest.raises(ValueError, match="the DataFrame has 2 columns"):
        featurizer.featurize_many(pd.DataFrame({"a": [salt], "b": [salt]}))


def test_several_structure_rows_name_themselves_like_the_other_rows(tmp_path, featurizer):
    """A row holding several structures kept its label as a prefix ("11: ..."), unlike every other row's message."""
    from ase.io import write

    two = tmp_path / "two.extxyz"
    write(two, [bulk("Cu", cubic=True), bulk("Al", cubic=True)])
    frame = pd.DataFrame({"structure": [str(two), two.read_text()]}, index=[11, 12])
    out = featurizer.featurize_dataframe(frame, "structure", ignore_errors=True, return_errors=True, pbar=False)
    messages = list(out.iloc[:, -1])
    assert str(two) in messages[0]  # a file keeps its path
    assert not messages[1].startswith("12") and "2 structures" in messages[1], messages


def test_an_unpickled_featurizer_belongs_to_the_process_that_loads_it(featurizer):
    """The pickling process's id survived into later processes, so a featurizer loaded from a pickle or joblib
    file ran torch on one thread (the pool-worker rule) everywhere. A worker forked from the owner keeps it."""
    state = featurizer.__getstate__()
    elsewhere = pickle.loads(pickle.dumps(featurizer))  # as in a new process: the owner is not our parent
    assert elsewhere._owner_pid == os.getpid()
    forked = CGCNNFeaturizer.__new__(CGCNNFeaturizer)
    forked.__setstate__({**state, "_owner_pid": os.getppid()})  # as in a pool worker forked from the owner
    assert forked._owner_pid == os.getppid()


# -- 29b: model cards and training records --------------------------------------------------------------------


def test_shipped_configs_name_their_base_by_version():
    """`init_from: formation_energy` in config.yaml now names another model than the run's base (v2 then, v3 now):
    a rerun fine-tuned silently from the newer one. The versioned name is recorded, and it is the card's base."""
    from cgcnn_ase.models.folder import read_model_json

    checked = 0
    for folder in sorted(p for p in (REPO / "pretrained_models").iterdir() if p.is_dir()):
        base = (read_model_json(folder)["metadata"].get("finetune") or {}).get("base")
        config = yaml.safe_load((folder / "config.yaml").read_text())
        if base:
            assert config["init_from"] == base["name"], folder.name
            checked += 1
    assert checked == 5


def test_a_fine_tuned_folder_records_the_resolved_base(tmp_path):
    """New runs write the versioned base name too (header line saying what the run named it)."""
    from types import SimpleNamespace

    from cgcnn_ase.train.export import config_text

    config = SimpleNamespace(output=tmp_path / "m", to_dict=lambda: {"init_from": "formation_energy", "seed": 1})
    result = SimpleNamespace(finetune={"base": {"kind": "shipped model", "name": "formation_energy-mp_cgcnn46k-v3"}})
    text = config_text(config, result)
    assert yaml.safe_load(text) == {"init_from": "formation_energy-mp_cgcnn46k-v3", "seed": 1}
    assert "the run named it 'formation_energy'" in text
    result.finetune = None
    assert yaml.safe_load(config_text(config, result)) == {"init_from": "formation_energy", "seed": 1}


def test_models_doc_training_column_is_an_upper_bound():
    """'<= 4 min each' for members of up to 4.37 min: the column rounded to the nearest minute."""
    from cgcnn_ase.models.folder import read_model_json

    text = (REPO / "docs" / "models.md").read_text()
    for folder in sorted(p for p in (REPO / "pretrained_models").iterdir() if p.is_dir()):
        members = (read_model_json(folder).get("ensemble") or {}).get("members")
        if not members:
            continue
        alias = read_model_json(folder)["metadata"]["aliases"][0]
        row = next(line for line in text.splitlines() if line.startswith(f"| `{alias}` |"))
        bound = int(re.search(r"<= (\d+) min each", row).group(1))
        assert max(m["wall_time_s"] for m in members) / 60 <= bound, row

"""Every shipped model loads by name, its card's test metric is reproduced by evaluation on the
saved split, and docs/models.md quotes the numbers in model.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk

from cgcnn_ase import CGCNNPredictor, list_models

from .conftest import REPO, SHARED, perovskite, require_shared

MODELS = list_models()


def test_registry_names_are_unique():
    names = [n for info in MODELS for n in (info.name, *info.aliases)]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("info", MODELS, ids=lambda i: i.name)
def test_shipped_model_loads_by_alias_and_predicts(info):
    predictor = CGCNNPredictor.from_pretrained(info.aliases[0] if info.aliases else info.name, device="cpu")
    assert predictor.units == info.units
    crystal = perovskite() if "perovskite" in info.name else bulk("NaCl", "rocksalt", a=5.64)
    value = predictor.predict(crystal).values[0]
    assert np.isfinite(value)
    for file in ("README.md", "model.json", "weights.safetensors", "split.json"):
        assert (info.path / file).is_file()
    card = (info.path / "README.md").read_text()
    for needle in ("Test metrics", "cgcnn-ase train", "Wall time", "Licence"):
        assert needle in card


@pytest.mark.parametrize("info", MODELS, ids=lambda i: i.name)
def test_card_metric_is_reproduced_by_evaluate(info, monkeypatch):
    """`cgcnn-ase evaluate` on the saved test split gives the model card's metric (within rounding)."""
    from cgcnn_ase.analysis.evaluation import evaluate_model

    require_shared(SHARED / "data")
    monkeypatch.chdir(REPO)  # configs hold data paths relative to the repo root
    report = evaluate_model(info.path, split="test", workers=2)  # CI has 2 cores; equal to workers=1 (test_parallel)
    stored = info.metadata["test_metrics"]
    key = "mae" if "mae" in stored else "roc_auc"
    assert report["metrics"][key] == pytest.approx(stored[key], abs=5e-4)
    assert report["n"] == stored["n"]


@pytest.mark.parametrize("page", ["docs/models.md", "README.md"])
@pytest.mark.parametrize("info", MODELS, ids=lambda i: i.name)
def test_models_doc_quotes_model_json(info, page):
    text = (REPO / page).read_text()
    stored = info.metadata["test_metrics"]
    key = "mae" if "mae" in stored else "roc_auc"
    row = next((line for line in text.splitlines() if line.startswith(f"| `{info.aliases[0]}` |")), None)
    assert row is not None, f"{page} has no row for {info.aliases[0]}"
    assert f"{stored[key]:.4f}" in row, (row, stored[key])


def test_metadata_is_json_serialisable():
    for info in MODELS:
        json.dumps(info.metadata)

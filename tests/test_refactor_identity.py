"""Every shipped model predicts bit for bit what it predicted before the package was reorganised.

The fixture ``tests/fixtures/shipped_predictions.json`` was recorded from main before the layered
layout (its ``recorded_at`` names the commit) by ``tests/fixtures/record_shipped_predictions.py``,
with one torch thread and all crystals in one batch; this test repeats exactly that.

When a model's domain summary is rebuilt by design (``cgcnn-ase calibrate MODEL --domain``), only its
``domain_distance`` entries change: re-record those, and nothing else, with
``python tests/fixtures/record_domain_fields.py [MODEL_NAME ...]`` (it refuses when the values changed).
The domain fields were re-recorded so on 2026-11-27 (issue 18: every training embedding stored).
Every field was re-recorded on 2026-11-29, when mean pooling began to sum in float64 (a change meant to
alter predictions: large supercells drifted in float32); values moved by at most 7e-8.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cgcnn_ase import CGCNNPredictor, list_models
from tests.fixtures.identity_structures import identity_structures

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "shipped_predictions.json").read_text())


def _hex(values) -> list[str]:
    return [float(v).hex() for v in values]


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_fixture_covers_every_shipped_model():
    assert sorted(FIXTURE["models"]) == sorted(info.name for info in list_models())


@pytest.mark.parametrize("name", sorted(FIXTURE["models"]))
def test_shipped_model_predictions_are_bit_identical(name, one_thread):
    expected = FIXTURE["models"][name]
    labels, structures = identity_structures()
    assert labels == FIXTURE["ids"]
    predictor = CGCNNPredictor.from_pretrained(name, device="cpu")
    predictor.fast_network = False  # the reference arithmetic the fixture was recorded with
    per_atom = expected["per_atom"] is not None
    result = predictor.predict(structures, batch_size=64, per_atom=per_atom, errors="collect")
    assert result.errors == expected["errors"]
    assert _hex(result.values) == expected["values"]
    if expected["member_values"] is not None:
        assert [_hex(row) for row in result.member_values] == expected["member_values"]
        assert _hex(result.std) == expected["std"]
    if expected["domain_distance"] is not None:
        assert _hex(result.domain_distance) == expected["domain_distance"]
    if per_atom:
        assert [_hex(a) for a in result.per_atom] == expected["per_atom"]


@pytest.mark.parametrize("name", sorted(FIXTURE["models"]))
def test_fast_networks_agree_with_the_reference_arithmetic(name, one_thread):
    """The default fast networks (batch norms folded, split product) differ by float32 rounding only."""
    expected = FIXTURE["models"][name]
    _, structures = identity_structures()
    predictor = CGCNNPredictor.from_pretrained(name, device="cpu")
    per_atom = expected["per_atom"] is not None
    result = predictor.predict(structures, batch_size=64, per_atom=per_atom, errors="collect")
    assert result.errors == expected["errors"]
    reference = np.array([float.fromhex(v) for v in expected["values"]])
    scale = max(1.0, float(np.nanmax(np.abs(reference))))
    np.testing.assert_allclose(result.values, reference, rtol=0, atol=2e-5 * scale)
    if per_atom:
        for got, want in zip(result.per_atom, expected["per_atom"]):
            np.testing.assert_allclose(got, [float.fromhex(v) for v in want], rtol=0, atol=2e-5 * scale)

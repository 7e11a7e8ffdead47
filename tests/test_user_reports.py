"""Regression tests for what new users and a hostile tester reported (issue: hangs, silent numbers, CLI).

Each test failed on the release before the fix; the issue item it covers is named in its docstring.
"""

from __future__ import annotations

import warnings

from ase.build import bulk

from cgcnn_ase import CGCNNPredictor
from cgcnn_ase.errors import UnseenElementWarning


def test_unseen_elements_give_one_summary_warning_per_call_naming_the_model():
    """'200 MP rows gave 58 separate unseen-element warnings that do not name the model'."""
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    crystals = [bulk("Ar", "fcc", a=5.26 + 0.01 * k) for k in range(5)] + [bulk("NaCl", "rocksalt", a=5.64)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = predictor.predict(crystals)
    unseen = [w for w in caught if issubclass(w.category, UnseenElementWarning)]
    assert len(unseen) == 1
    message = str(unseen[0].message)
    assert predictor.model.spec.name in message and "Ar" in message and "5 of 6 structure(s)" in message
    assert result.unseen_elements == [["Ar"]] * 5 + [[]]

"""CGCNNFeaturizer follows matminer's BaseFeaturizer contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matminer")
from pymatgen.io.ase import AseAtomsAdaptor  # noqa: E402
from sklearn.base import clone  # noqa: E402

from cgcnn_ase.errors import InvalidStructureError  # noqa: E402
from cgcnn_ase.integrations.matminer import CGCNNFeaturizer  # noqa: E402
from cgcnn_ase.inference.predictor import CGCNNPredictor  # noqa: E402


@pytest.fixture
def frame(crystals):
    return pd.DataFrame({"structure": [AseAtomsAdaptor.get_structure(a) for a in crystals], "atoms": crystals})


def test_labels_citations_and_clone(model_folder):
    featurizer = CGCNNFeaturizer([str(model_folder)], embeddings=True)
    labels = featurizer.feature_labels()
    assert labels[0] == "formation_energy (eV/atom)" and len(labels) == 1 + 16
    assert any("Xie" in c for c in featurizer.citations()) and featurizer.implementors()
    copy = clone(featurizer)
    assert copy.get_params() == featurizer.get_params() and copy.n_jobs == 1
    assert featurizer.fit([1, 2]) is featurizer


def test_dataframe_matches_predictor_for_structure_and_atoms_columns(model_folder, frame):
    featurizer = CGCNNFeaturizer([str(model_folder)])
    expected = CGCNNPredictor.from_checkpoint(model_folder).predict(list(frame["atoms"])).values
    for column in ("structure", "atoms"):
        out = featurizer.featurize_dataframe(frame, column, pbar=False)
        np.testing.assert_allclose(out["formation_energy (eV/atom)"], expected, atol=1e-6)
    single = featurizer.featurize(frame["structure"][2])
    assert single[0] == pytest.approx(expected[2], abs=1e-6)


def test_embeddings_columns(model_folder, frame):
    featurizer = CGCNNFeaturizer([str(model_folder)], embeddings=True)
    out = featurizer.featurize_dataframe(frame, "structure", pbar=False)
    embedding = out[[f"formation_energy embedding {k}" for k in range(16)]].to_numpy()
    np.testing.assert_allclose(embedding, CGCNNPredictor.from_checkpoint(model_folder).embed(list(frame["atoms"])), atol=1e-6)


def test_per_row_errors(model_folder, frame):
    from ase import Atoms

    bad = frame.copy()
    bad.loc[1, "atoms"] = Atoms("H2O")  # not periodic
    featurizer = CGCNNFeaturizer([str(model_folder)], embeddings=True)
    with pytest.raises(InvalidStructureError, match="periodic"):
        featurizer.featurize_dataframe(bad, "atoms", pbar=False)
    out = featurizer.featurize_dataframe(bad, "atoms", ignore_errors=True, pbar=False)
    values = out["formation_energy (eV/atom)"].to_numpy()
    assert np.isnan(values[1]) and np.isfinite(np.delete(values, 1)).all()
    assert np.isnan(out["formation_energy embedding 0"][1])
    with_errors = featurizer.featurize_dataframe(bad, "atoms", ignore_errors=True, return_errors=True, pbar=False)
    messages = with_errors["CGCNNFeaturizer Exceptions"].tolist()
    assert "periodic" in messages[1] and all(isinstance(m, float) and np.isnan(m) for k, m in enumerate(messages) if k != 1)
    with pytest.raises(ValueError, match="ignore_errors"):
        featurizer.featurize_many(list(bad["atoms"]), return_errors=True)


def test_unseen_elements_column_and_warning_point_to_each_other():
    """Ar occurs in no training set of the shipped models: its row says so in ``unseen_elements`` (as
    ``cgcnn-ase predict`` writes it), and the warning names where the symbols are listed, never
    ``result.unseen_elements``, which a featurizer user does not have."""
    import warnings

    from ase.build import bulk

    from cgcnn_ase.errors import UnseenElementWarning

    frame = pd.DataFrame({"structure": [AseAtomsAdaptor.get_structure(bulk("Ar", "fcc", a=5.26)),
                                        AseAtomsAdaptor.get_structure(bulk("NaCl", "rocksalt", a=5.64))]})  # fmt: skip
    for unseen, hint in ((False, "unseen_elements=True) adds a column"), (True, "the unseen_elements column lists")):
        featurizer = CGCNNFeaturizer(["formation_energy", "bulk_modulus"], unseen_elements=unseen)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = featurizer.featurize_dataframe(frame, "structure", pbar=False)
        messages = [str(w.message) for w in caught if issubclass(w.category, UnseenElementWarning)]
        assert len(messages) == 2 and all(hint in m and "result." not in m for m in messages), messages
        assert ("unseen_elements" in out.columns) == unseen
        assert (featurizer.feature_labels()[-1] == "unseen_elements") == unseen
    assert out["unseen_elements"].tolist() == ["Ar (formation_energy, log10_bulk_modulus)", None]
    np.testing.assert_allclose(out["formation_energy (eV/atom)"],
                               CGCNNFeaturizer("formation_energy").featurize_dataframe(frame, "structure", pbar=False)
                               ["formation_energy (eV/atom)"])  # fmt: skip

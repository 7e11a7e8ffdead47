"""Training: config loading, graph cache, batching, the loop, resuming, model folders, evaluation."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from cgcnn_ase import CGCNNPredictor
from cgcnn_ase.data import datasets
from cgcnn_ase.graph import neighbours as graph_module
from cgcnn_ase.data.datasets import DatasetSpec, load_dataset
from cgcnn_ase.data.splits import Split
from cgcnn_ase.graph.elements import generate_cgcnn_table
from cgcnn_ase.analysis.evaluation import evaluate_model
from cgcnn_ase.analysis.metrics import regression_metrics
from cgcnn_ase.graph.neighbours import build_graph
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.graph.batch import collate
from cgcnn_ase.errors import CloseAtomsWarning, ConfigError
from cgcnn_ase.train.cache import GraphBatcher, GraphStore, build_graph_store
from cgcnn_ase.train.config import TrainConfig, load_config
from cgcnn_ase.train.config_sections import ModelConfig, OptimConfig, ScheduleConfig, SplitConfig
from cgcnn_ase.train.trainer import Trainer, train_from_config

from .conftest import REPO, SHARED, rattled, require_shared

PROTOTYPES = [
    ("Cu", "fcc", 3.61), ("Al", "fcc", 4.05), ("Ni", "fcc", 3.52), ("Na", "bcc", 4.23), ("K", "bcc", 5.23),
    ("Fe", "bcc", 2.87), ("Si", "diamond", 5.43), ("Ge", "diamond", 5.66), ("C", "diamond", 3.57),
    ("NaCl", "rocksalt", 5.64), ("MgO", "rocksalt", 4.21), ("LiF", "rocksalt", 4.03),
]  # fmt: skip


def _crystals() -> list[Atoms]:
    out = []
    for k, (formula, kind, a) in enumerate(PROTOTYPES):
        atoms = bulk(formula, kind, a=a, cubic=kind in ("bcc",))
        out.append(rattled(atoms, stdev=0.03, seed=k))
    return out


@pytest.fixture(scope="module")
def dataset_csv(tmp_path_factory) -> Path:
    """12 crystals; target ``vpa`` = volume per atom (Å^3), label ``big`` = vpa > 15."""
    crystals = _crystals()
    vpa = np.array([a.get_volume() / len(a) for a in crystals])
    df = pd.DataFrame(
        {
            "material_id": [f"c{k:02d}" for k in range(len(crystals))],
            "vpa": vpa,
            "big": (vpa > 15).astype(int),
            "cif": [str(CifWriter(AseAtomsAdaptor.get_structure(a))) for a in crystals],
        }
    )
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    df.to_csv(path, index=False)
    return path


def tiny_config(data_path: Path, root: Path, **kwargs) -> TrainConfig:
    """A small, fast configuration (16-wide model, one thread, batches of 4)."""
    settings = dict(
        data=DatasetSpec(path=str(data_path), target="vpa"),
        output=str(root / "model"),
        units="Å^3/atom",
        split=SplitConfig(train=8 / 12, val=2 / 12, test=2 / 12, seed=1),
        model=ModelConfig(atom_fea_len=16, n_conv=2, h_fea_len=16, n_h=1),
        optim=OptimConfig(name="adam", lr=0.01),
        schedule=ScheduleConfig(name="none"),
        epochs=3,
        batch_size=4,
        threads=1,
        cache_dir=str(root.parent / "cache"),
        aliases=["tiny"],
        metadata={"source": "made up in a test", "licence": "CC0"},
    )
    settings.update(kwargs)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def trained(dataset_csv, tmp_path_factory) -> tuple[TrainConfig, Path]:
    """One regression model trained long enough to overfit its 8 training crystals."""
    root = tmp_path_factory.mktemp("overfit")
    config = tiny_config(dataset_csv, root, epochs=150, batch_size=8)
    return config, train_from_config(config, progress=False)


def _history(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "metrics.csv")


# -- the loop -------------------------------------------------------------------------------------


def test_training_overfits_a_tiny_set(trained):
    config, folder = trained
    history = _history(folder)
    assert len(history) == 150 and history["epoch"].tolist() == list(range(1, 151))
    first, last = history["train_mae"].iloc[0], history["train_mae"].iloc[-5:].min()
    assert last < 0.2 * first, (first, last)
    # and in eval mode, with the selected weights, on the training crystals themselves
    predictor = CGCNNPredictor.from_checkpoint(folder, device="cpu")
    records, targets, ids = load_dataset(config.data)
    train_ids = set(Split.load(folder / "split.json").train)
    pick = [k for k, i in enumerate(ids) if i in train_ids]
    pred = predictor.predict([records[k] for k in pick], on_sparse="ignore").values
    assert regression_metrics(targets[pick], pred)["mae"] < 0.5 * np.mean(np.abs(targets[pick] - targets[pick].mean()))


def test_model_folder_contents_and_card(trained):
    config, folder = trained
    names = {p.name for p in folder.iterdir()}
    expected = {"model.json", "weights.safetensors", "atom_init.json", "README.md", "config.yaml", "split.json",
                "metrics.csv", "learning_curve.png", "parity.png", "run"}  # fmt: skip
    assert expected <= names
    assert not any(name.endswith(".pt") for name in names)  # checkpoints stay in run/
    assert (folder / "run" / "checkpoint_last.pt").is_file()
    meta = json.loads((folder / "model.json").read_text())
    md = meta["metadata"]
    assert md["aliases"] == ["tiny"]
    train_ids = set(Split.load(folder / "split.json").train)
    records, _, ids = load_dataset(config.data)
    seen = sorted({int(z) for r, i in zip(records, ids) if i in train_ids for z in r.numbers})
    assert md["elements_seen"] == seen
    assert md["split"]["sizes"] == {"train": 8, "val": 2, "test": 2} and md["split"]["seed"] == 1
    assert set(md["test_metrics"]) >= {"mae", "rmse", "r2", "n", "units"} and md["test_metrics"]["units"] == "Å^3/atom"
    training = md["training"]
    for key in ("command", "config", "wall_time_s", "hardware", "date", "torch_version"):
        assert key in training
    assert training["hardware"]["cpu"] and training["torch_version"] == torch.__version__
    assert md["dataset"]["licence"] == "CC0" and md["dataset"]["rows_used"] == 12
    card = (folder / "README.md").read_text()
    for text in ("made up in a test", "CC0", "| test | 2 |", "Å^3/atom", "MAE", "Wall time", training["command"]):
        assert text in card
    assert meta["normalizer"]["std"] > 0


@pytest.mark.filterwarnings("ignore::cgcnn_ase.errors.UnseenElementWarning")
def test_saved_model_reproduces_the_stored_test_metrics(trained):
    config, folder = trained
    meta = json.loads((folder / "model.json").read_text())
    stored = meta["metadata"]["test_metrics"]
    records, targets, ids = load_dataset(config.data)
    test_ids = Split.load(folder / "split.json").test
    pick = [ids.index(i) for i in test_ids]
    predictor = CGCNNPredictor.from_checkpoint(folder, device="cpu")
    pred = predictor.predict([records[k] for k in pick], on_sparse="ignore").values
    again = regression_metrics(targets[pick], pred)
    assert again["mae"] == pytest.approx(stored["mae"], rel=1e-5, abs=1e-7)
    assert again["rmse"] == pytest.approx(stored["rmse"], rel=1e-5, abs=1e-7)


@pytest.mark.filterwarnings("ignore::cgcnn_ase.errors.UnseenElementWarning")
def test_evaluate_model_reproduces_the_model_card(trained, tmp_path):
    config, folder = trained
    stored = json.loads((folder / "model.json").read_text())["metadata"]["test_metrics"]
    result = evaluate_model(folder, split="test", out_dir=tmp_path / "eval")
    assert result["n"] == 2 and result["units"] == "Å^3/atom"
    assert result["metrics"]["mae"] == pytest.approx(stored["mae"], rel=1e-5, abs=1e-7)
    assert {p.name for p in (tmp_path / "eval").iterdir()} == {"metrics.json", "predictions.csv", "parity.png"}
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["n"] == 2
    table = pd.read_csv(tmp_path / "eval" / "predictions.csv")  # full precision (31a: 6 significant digits)
    column = f"{config.property_name} (Å^3/atom)"
    recomputed = (table[f"true {column}"] - table[f"predicted {column}"]).abs().mean()
    assert recomputed == pytest.approx(result["metrics"]["mae"], rel=1e-12)
    train = evaluate_model(folder, str(config.data.path), split="train")  # a path reuses the trained data settings
    assert train["n"] == 8


@pytest.mark.filterwarnings("ignore::cgcnn_ase.errors.UnseenElementWarning")
def test_evaluate_model_by_registry_alias(trained, tmp_path, monkeypatch):
    import shutil

    from cgcnn_ase.models import registry as pretrained

    config, folder = trained
    shipped = tmp_path / "pretrained_models"
    shutil.copytree(folder, shipped / "tiny-model-v1", ignore=shutil.ignore_patterns("run"))
    monkeypatch.setattr(pretrained, "models_dir", lambda: shipped)
    stored = json.loads((folder / "model.json").read_text())["metadata"]["test_metrics"]
    result = evaluate_model("tiny", split="test")  # the alias from the config
    assert result["metrics"]["mae"] == pytest.approx(stored["mae"], rel=1e-5, abs=1e-7)


def test_split_is_saved_and_can_be_reused(trained, tmp_path):
    config, folder = trained
    saved = Split.load(folder / "split.json")
    assert saved == Split.load(folder / "run" / "split.json")
    assert saved.sizes == {"train": 8, "val": 2, "test": 2}
    from cgcnn_ase.data.splits import make_split

    ids = load_dataset(config.data).ids
    assert make_split(ids, (8 / 12, 2 / 12, 2 / 12), seed=1) == saved  # seeded, reproducible
    reuse = tiny_config(
        Path(config.data.path), tmp_path, epochs=1, split=SplitConfig(seed=99, file=str(folder / "split.json"))
    )
    out = train_from_config(reuse, progress=False)
    assert Split.load(out / "split.json") == saved


def test_graph_cache_is_used_on_the_second_run(trained, tmp_path, monkeypatch):
    config, _ = trained
    calls = {"graph": 0, "parse": 0}

    def counting_graph(*args, **kwargs):
        calls["graph"] += 1
        return build_graph(*args, **kwargs)

    original_parse = datasets.parse_one

    def counting_parse(*args, **kwargs):
        calls["parse"] += 1
        return original_parse(*args, **kwargs)

    monkeypatch.setattr(graph_module, "build_graph", counting_graph)
    monkeypatch.setattr(datasets, "parse_one", counting_parse)
    train_from_config(tiny_config(Path(config.data.path), tmp_path, epochs=1), progress=False)
    assert calls == {"graph": 0, "parse": 0}
    # a fresh cache folder builds every graph once
    train_from_config(
        tiny_config(Path(config.data.path), tmp_path, epochs=1, cache_dir=str(tmp_path / "new")), progress=False
    )
    assert calls == {"graph": 12, "parse": 12}


def test_resume_continues_and_matches_an_uninterrupted_run(dataset_csv, tmp_path, caplog):
    common = dict(
        optim=OptimConfig(name="sgd", lr=0.02, momentum=0.9),
        schedule=ScheduleConfig(name="multistep", milestones=[3], gamma=0.5),
        batch_size=3,
    )
    straight = train_from_config(tiny_config(dataset_csv, tmp_path / "a", epochs=4, **common), progress=False)
    interrupted = tiny_config(dataset_csv, tmp_path / "b", epochs=2, **common)
    folder = train_from_config(interrupted, progress=False)
    first_two = _history(folder)
    checkpoint = torch.load(folder / "run" / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    with caplog.at_level(logging.INFO, logger="cgcnn_ase.train.trainer"):
        folder = train_from_config(tiny_config(dataset_csv, tmp_path / "b", epochs=4, **common), progress=False)
    assert "from epoch 2" in caplog.text
    resumed, reference = _history(folder), _history(straight)
    assert resumed["epoch"].tolist() == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(resumed.iloc[:2], first_two)  # epochs 1-2 were not redone
    for column in ("train_loss", "val_mae", "lr"):
        np.testing.assert_allclose(resumed[column], reference[column], rtol=1e-5)
    from safetensors.torch import load_file

    a, b = load_file(straight / "weights.safetensors"), load_file(folder / "weights.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # a finished run only rewrites the model folder
    again = train_from_config(tiny_config(dataset_csv, tmp_path / "b", epochs=4, **common), progress=False)
    pd.testing.assert_frame_equal(_history(again), resumed)


def test_resume_refuses_different_settings(dataset_csv, tmp_path):
    train_from_config(tiny_config(dataset_csv, tmp_path, epochs=1), progress=False)
    changed = tiny_config(dataset_csv, tmp_path, epochs=2, model=ModelConfig(atom_fea_len=8, n_conv=1, h_fea_len=8))
    with pytest.raises(ConfigError, match=r"different settings \(changed: model.atom_fea_len, model.h_fea_len, "
                                          r"model.n_conv\)"):
        train_from_config(changed, progress=False)
    cosine = {"schedule": ScheduleConfig(name="cosine")}
    train_from_config(tiny_config(dataset_csv, tmp_path / "cos", epochs=1, **cosine), progress=False)
    with pytest.raises(ConfigError, match="changed: epochs; epochs is part of a cosine"):
        train_from_config(tiny_config(dataset_csv, tmp_path / "cos", epochs=2, **cosine), progress=False)
    changed.resume = False  # starting over is allowed
    assert train_from_config(changed, progress=False).is_dir()


def test_resume_refuses_changed_data_under_the_same_file_name(dataset_csv, tmp_path):
    """Relabelled (or re-structured) rows in a file of the same name must not resume, or re-export, the
    model trained on the old ones (the settings' fingerprint alone did not see the change)."""
    data = tmp_path / "data.csv"
    table = pd.read_csv(dataset_csv)
    table.to_csv(data, index=False)
    train_from_config(tiny_config(data, tmp_path, epochs=1), progress=False)
    table.assign(vpa=table["vpa"] * 1000).to_csv(data, index=False)
    for epochs in (1, 2):  # a finished run (re-export only) and a longer one (resume)
        with pytest.raises(ConfigError, match="trained on other data"):
            train_from_config(tiny_config(data, tmp_path, epochs=epochs), progress=False)
    table.assign(cif=table["cif"].iloc[::-1].tolist()).to_csv(data, index=False)  # same labels, other crystals
    with pytest.raises(ConfigError, match="trained on other data"):
        train_from_config(tiny_config(data, tmp_path, epochs=2), progress=False)
    table.to_csv(data, index=False)  # the original rows resume again
    assert train_from_config(tiny_config(data, tmp_path, epochs=2), progress=False).is_dir()


def test_structure_paths_in_a_table_are_cached_by_their_contents(dataset_csv, tmp_path, monkeypatch):
    """A table cell naming a structure file: the graph cache follows the file's contents (an edited file
    is read again) and a missing file is not remembered as missing once it exists."""
    table = pd.read_csv(dataset_csv)
    folder = tmp_path / "cifs"
    folder.mkdir()
    paths = table.assign(cif=[f"cifs/{name}.cif" for name in table["material_id"]])
    paths.to_csv(tmp_path / "paths.csv", index=False)
    monkeypatch.chdir(folder)  # relative to the table's folder, not to the working directory (round 14a)
    config = tiny_config(tmp_path / "paths.csv", tmp_path / "a", epochs=1, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="no usable crystals"):  # the files are not there yet
        train_from_config(config, progress=False)
    for name, cif in zip(table["material_id"], table["cif"]):
        (folder / f"{name}.cif").write_text(cif)
    first = train_from_config(config, progress=False)
    for name in table["material_id"][:4]:
        (folder / f"{name}.cif").write_text("garbage\n")
    with pytest.warns(UserWarning, match="left out"):
        second = train_from_config(tiny_config(tmp_path / "paths.csv", tmp_path / "b", epochs=1,
                                               cache_dir=str(tmp_path / "cache")), progress=False)  # fmt: skip
    assert sum(Split.load(first / "split.json").sizes.values()) == 12
    assert sum(Split.load(second / "split.json").sizes.values()) == 8


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "reduce_on_plateau"])
def test_schedules_checkpoint_and_resume(dataset_csv, tmp_path, schedule):
    config = tiny_config(
        dataset_csv, tmp_path, epochs=2, schedule=ScheduleConfig(name=schedule, patience=1), patience=5
    )
    train_from_config(config, progress=False)
    state = torch.load(tmp_path / "model" / "run" / "checkpoint_last.pt", weights_only=True)
    assert state["scheduler"] is not None and len(state["history"]) == 2
    if schedule == "reduce_on_plateau":  # epochs may grow; cosine/onecycle depend on them
        config.epochs = 3
        train_from_config(config, progress=False)
        assert len(_history(tmp_path / "model")) == 3
    else:
        config.epochs = 3
        with pytest.raises(ConfigError, match="different settings"):
            train_from_config(config, progress=False)


def test_early_stopping(dataset_csv, tmp_path):
    config = tiny_config(dataset_csv, tmp_path, epochs=40, patience=2, optim=OptimConfig(name="sgd", lr=1e-9))
    folder = train_from_config(config, progress=False)
    history = _history(folder)
    assert len(history) < 40
    meta = json.loads((folder / "model.json").read_text())["metadata"]["training"]
    assert meta["stopped_early"] and meta["epochs_run"] == len(history)
    assert len(history) - meta["best_epoch"] == 2


def test_select_last_keeps_the_final_epoch_and_says_so(dataset_csv, tmp_path):
    """``select: last``: the folder holds the last epoch's weights whatever the validation curve did,
    its card says no epoch was selected, and a resumed best-epoch run keeps its fingerprint."""
    from cgcnn_ase.train.config import config_fingerprint

    # a learning rate large enough that the validation MAE goes up and down between epochs
    config = tiny_config(dataset_csv, tmp_path, epochs=11, select="last", optim=OptimConfig(name="sgd", lr=0.05))
    folder = train_from_config(config, progress=False)
    history = _history(folder)
    assert history["best"].tolist() == [1] * 11  # every epoch replaced the kept weights
    meta = json.loads((folder / "model.json").read_text())["metadata"]
    assert meta["training"]["select"] == "last" and meta["training"]["best_epoch"] == 11
    checkpoint = torch.load(folder / "run" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    predictor = CGCNNPredictor.from_checkpoint(folder, device="cpu")
    for key, value in checkpoint["model"].items():
        if key.endswith("num_batches_tracked"):
            continue  # a counter the model folder does not store
        assert torch.equal(predictor.model.network.state_dict()[key], value), key
    val_mae = history["val_mae"].iloc[-1]
    assert meta["val_metrics"]["mae"] == pytest.approx(val_mae, rel=1e-5)
    card = (folder / "README.md").read_text()
    assert "the validation split chose nothing" in card and "the last epoch kept" in card
    assert history["val_mae"].idxmin() != len(history) - 1  # so the best epoch was another one
    best = tiny_config(dataset_csv, tmp_path / "b", epochs=12)
    assert config_fingerprint(best) == config_fingerprint(best.model_copy(update={"select": "last"}))


@pytest.mark.filterwarnings("ignore::cgcnn_ase.errors.UnseenElementWarning")
def test_classification_gives_probabilities_and_roc_auc(dataset_csv, tmp_path):
    labels = pd.read_csv(dataset_csv).set_index("material_id")["big"]
    pos, neg = list(labels[labels == 1].index), list(labels[labels == 0].index)
    split = Split(train=pos[2:] + neg[2:], val=[pos[0], neg[0]], test=[pos[1], neg[1]])
    split.save(tmp_path / "split.json")
    config = tiny_config(
        dataset_csv, tmp_path, data=DatasetSpec(path=str(dataset_csv), target="vpa > 15"), task="classification",
        positive_class="big", epochs=4, split=SplitConfig(file=str(tmp_path / "split.json")),
    )  # fmt: skip
    folder = train_from_config(config, progress=False)
    assert (folder / "roc.png").is_file() and not (folder / "parity.png").exists()
    meta = json.loads((folder / "model.json").read_text())
    assert meta["task"] == "classification" and meta["units"] == "probability" and meta["positive_class"] == "big"
    test = meta["metadata"]["test_metrics"]
    assert 0.0 <= test["roc_auc"] <= 1.0 and test["n"] == 2
    assert {"val_roc_auc", "val_accuracy"} <= set(_history(folder).columns)
    result = evaluate_model(folder, split="test")
    assert result["metrics"]["roc_auc"] == pytest.approx(test["roc_auc"])
    predictor = CGCNNPredictor.from_checkpoint(folder, device="cpu")
    p = predictor.predict(_crystals(), on_sparse="ignore").values
    assert np.all((p >= 0) & (p <= 1))


def test_classification_needs_binary_labels(dataset_csv, tmp_path):
    with pytest.raises(ConfigError, match="0 or 1"):
        train_from_config(tiny_config(dataset_csv, tmp_path, task="classification"), progress=False)


def test_training_leaves_global_state_alone(dataset_csv, tmp_path):
    threads = torch.get_num_threads()
    state = torch.get_rng_state()
    train_from_config(tiny_config(dataset_csv, tmp_path, epochs=1, threads=threads + 1), progress=False)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), state)


# -- graphs and batching ---------------------------------------------------------------------------


def _assert_same_store(ref: GraphStore, got: GraphStore) -> None:
    """Same crystals, atoms, edge counts and sparsity; per crystal and centre the same
    (neighbour, distance) pairs (their order within a distance tie may differ)."""
    assert ref.keys.tolist() == got.keys.tolist()
    for name in ("numbers", "atom_offsets", "edge_offsets", "n_sparse", "centers"):
        np.testing.assert_array_equal(getattr(ref, name), getattr(got, name), err_msg=name)
    crystal = np.repeat(np.arange(len(ref)), ref.n_edges)
    a = np.lexsort((np.round(ref.distances, 6), ref.neighbors, ref.centers, crystal))
    b = np.lexsort((np.round(got.distances, 6), got.neighbors, got.centers, crystal))
    np.testing.assert_array_equal(ref.neighbors[a], got.neighbors[b])
    np.testing.assert_allclose(ref.distances[a], got.distances[b], rtol=0, atol=1e-9)


def test_store_built_in_batches_equals_the_per_structure_one(dataset_csv, tmp_path):
    """``build_graph_store(device=...)`` (what a GPU run uses) gives the graphs, failures and
    rows of the per-structure path, also for close atoms (rebuilt per structure) and bad rows."""
    def pair(x: float) -> str:  # two Cu atoms x * 3.6 Å apart
        atoms = Atoms("Cu2", scaled_positions=[[0, 0, 0], [x, 0, 0]], cell=[3.6, 3.6, 3.6], pbc=True)
        return str(CifWriter(AseAtomsAdaptor.get_structure(atoms)))

    df = pd.read_csv(dataset_csv)
    extra = pd.DataFrame({
        "material_id": ["close", "overlap", "broken"], "vpa": [1.0] * 3, "big": [0] * 3,
        "cif": [pair(0.3), pair(0.05), "data_x\n_cell_length_a 3\n"],
    })  # fmt: skip
    path = tmp_path / "with_bad_rows.csv"
    pd.concat([df, extra]).to_csv(path, index=False)
    table = datasets.load_table(DatasetSpec(path=str(path), target="vpa"))
    config = GraphConfig()
    with pytest.warns(CloseAtomsWarning):
        ref, rows, errors = build_graph_store(table, config, workers=1, use_cache=False)
    got, got_rows, got_errors = build_graph_store(table, config, workers=1, use_cache=False, device="cpu")
    assert sorted(errors) == ["broken", "overlap"] and rows.tolist() == list(range(13))
    assert got_rows.tolist() == rows.tolist() and got_errors == errors
    _assert_same_store(ref, got)
    # a store built in batches is cached like any other
    cached, _, _ = build_graph_store(table, config, cache_dir=tmp_path / "cache", device="cpu")
    again, _, _ = build_graph_store(table, config, cache_dir=tmp_path / "cache")
    _assert_same_store(ref, again)
    np.testing.assert_array_equal(cached.distances, again.distances)


def test_store_built_in_batches_on_materials_project_crystals(tmp_path):
    path = require_shared(SHARED / "data" / "mp_cgcnn46k_kdmsit" / "data.csv.gz")
    table = datasets.load_table(DatasetSpec(path=str(path), target="formation_energy_per_atom", limit=1500))
    ref, rows, errors = build_graph_store(table, GraphConfig(), workers=2, use_cache=False)
    got, got_rows, got_errors = build_graph_store(table, GraphConfig(), workers=2, use_cache=False, device="cpu")
    assert len(ref) == 1500 and got_rows.tolist() == rows.tolist() and got_errors == errors
    _assert_same_store(ref, got)


def test_batcher_matches_collate_exactly(dataset_csv, tmp_path):
    config = GraphConfig()
    records, _, ids = load_dataset(DatasetSpec(path=str(dataset_csv), target="vpa"))
    table = datasets.load_table(DatasetSpec(path=str(dataset_csv), target="vpa"))
    store, rows, errors = build_graph_store(table, config, cache_dir=tmp_path)
    assert not errors and rows.tolist() == list(range(12))
    elements = generate_cgcnn_table()
    order = [5, 0, 11, 3]
    graphs = [build_graph(records[k], config, on_sparse="ignore") for k in order]
    expected = collate(graphs, elements, config)
    for budget in (1 << 30, 0):  # precomputed and per-batch edge features
        got = GraphBatcher(store, elements, config, edge_feature_bytes=budget).batch(order)
        for name in ("atom_fea", "edge_fea", "centers", "neighbors", "crystal_index"):
            assert torch.equal(getattr(got, name), getattr(expected, name)), name
        assert got.n_crystals == 4
    # the store round-trips through its file format and gives back the same graphs
    loaded, failures = GraphStore.load(store.save(tmp_path / "s.npz", {"k" * 32: "broken"}))
    assert failures == {"k" * 32: "broken"}
    g = loaded.graph(5)
    np.testing.assert_array_equal(g.neighbors, graphs[0].neighbors)
    np.testing.assert_array_equal(g.distances, graphs[0].distances)


# -- configuration ---------------------------------------------------------------------------------


def test_yaml_and_toml_configs_with_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "data:\n  path: data.csv.gz\n  target: band_gap\n  filter: band_gap > 0\n  drop_ids: [mp-1]\n"
        "output: runs/x\nunits: eV\noptim:\n  name: adamw\n  lr: 1e-3\ngraph:\n  radius: 6\n"
        "model:\n  readout: atomwise\nschedule:\n  name: cosine\nepochs: 10\n"
    )
    config = load_config(tmp_path / "c.yaml", ["optim.lr=0.005", "epochs=3", "data.drop_ids=[a, b]", "model.n_conv=4"])
    assert config.optim.lr == 0.005 and config.optim.name == "adamw" and config.epochs == 3
    assert config.data.drop_ids == ["a", "b"] and config.data.filter == "band_gap > 0"
    assert config.graph == GraphConfig(radius=6.0) and config.graph.neighbor_policy == "symmetric"
    assert config.model.n_conv == 4 and config.model.readout == "atomwise"
    assert config.source == str(tmp_path / "c.yaml") and "--set epochs=3" in config_command(config)
    assert load_config(tmp_path / "c.yaml").optim.lr == pytest.approx(1e-3)  # YAML reads 1e-3 as text

    (tmp_path / "c.toml").write_text(
        '[data]\npath = "d.json.gz"\ntarget = "bulk_modulus_vrh"\ntransform = "log10"\n'
        "[optim]\nlr = 0.02\n[split]\nseed = 5\n"
    )
    toml = load_config(tmp_path / "c.toml", ["split.train=0.6", "split.val=0.2", "split.test=0.2"])
    assert toml.data.transform == "log10" and toml.optim.lr == 0.02 and toml.split.seed == 5
    assert (toml.split.train, toml.split.val) == (0.6, 0.2)
    # the resolved config round-trips
    assert TrainConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def config_command(config: TrainConfig) -> str:
    from cgcnn_ase.train.config import command_line

    return command_line(config)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["optim.lrate=0.1"], "unknown optim setting"),
        (["epochs"], "key=value"),
        (["task=regresion"], "task must be one of"),
        (["optim.lr=fast"], "must be a number"),
        (["data.targte=x"], "unknown data setting"),
        (["graph.radius=-1"], "graph"),
        (["model.readout=atomwise", "task=classification"], "readout"),
        (["split.train=0.9", "split.val=0.2"], "split fractions"),
        (["compile=maybe"], "compile must be true or false"),
        (["select=first"], "select must be one of"),
        (["select=last", "patience=10"], "patience stops the run on it"),
        (["select=last", "schedule.name=reduce_on_plateau"], "reduce_on_plateau steps on it"),
        (["model.n_conv=0"], "model.n_conv must be at least 1"),  # the model folder would refuse to load
        (["model.n_h=0"], "model.n_h must be at least 1"),
        (["model.atom_fea_len=0"], "model.atom_fea_len must be at least 1"),
        (["model.dropout=2"], "model.dropout must be"),
        (["optim.weight_decay=-1"], "optim.weight_decay must be at least 0"),
        (["optim.momentum=5"], "optim.momentum must be"),
    ],
)
def test_bad_configs_are_refused_with_a_clear_message(tmp_path, overrides, match):
    (tmp_path / "c.yaml").write_text("data:\n  path: x.csv\n  target: y\n")
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path / "c.yaml", overrides)


def test_shipped_configs_load():
    paths = sorted((REPO / "configs").glob("*.yaml"))
    assert len(paths) >= 8
    for path in paths:
        config = load_config(path)
        assert config.units and config.aliases and config.metadata.get("licence")
        if SHARED.exists():
            assert (REPO.parent / config.data.path.removeprefix("../")).exists(), config.data.path


def test_time_limit_stops_the_session_and_the_run_resumes(dataset_csv, tmp_path, caplog):
    config = tiny_config(dataset_csv, tmp_path, epochs=5, time_limit=1e-9)  # any epoch exceeds it
    with caplog.at_level(logging.INFO, logger="cgcnn_ase.train.trainer"):
        folder = train_from_config(config, progress=False)
    assert "time limit" in caplog.text
    assert len(_history(folder)) == 1  # one epoch always runs
    assert "**Unfinished**: the time limit (1e-09 min) stopped training after 1 of 5 epochs" in (folder / "README.md").read_text()
    config.time_limit = None  # the limit is not part of the run's identity: resuming finishes it
    assert len(_history(train_from_config(config, progress=False))) == 5
    assert "Unfinished" not in (folder / "README.md").read_text()  # round 9: the card said nothing of it
    with pytest.raises(ConfigError, match="time_limit"):
        tiny_config(dataset_csv, tmp_path, time_limit=0)


def test_the_command_says_when_the_time_limit_left_a_run_unfinished(dataset_csv, tmp_path):
    """cgcnn-ase train exits 75 (EX_TEMPFAIL) with a message when time_limit stopped the session, so a job
    script can resubmit it; the finished run exits 0. model.json records what stopped it."""
    import yaml
    from click.testing import CliRunner

    from cgcnn_ase.cli import EXIT_UNFINISHED, main

    config = tiny_config(dataset_csv, tmp_path, epochs=2, time_limit=1e-9).to_dict()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    first = CliRunner().invoke(main, ["train", str(tmp_path / "c.yaml")])
    assert first.exit_code == EXIT_UNFINISHED, first.output
    assert "unfinished" in first.stderr and "1 of 2 epochs" in first.stderr
    stopped = json.loads((Path(config["output"]) / "model.json").read_text())["metadata"]["training"]["stopped_by"]
    second = CliRunner().invoke(main, ["train", str(tmp_path / "c.yaml")])
    assert second.exit_code == 0 and "unfinished" not in second.stderr, second.output
    assert stopped == "time_limit"
    assert json.loads((Path(config["output"]) / "model.json").read_text())["metadata"]["training"]["stopped_by"] == "epochs"


def test_merged_edges_train_the_same_model(dataset_csv, tmp_path):
    """model.merge_edges (the default) is a speed option: same losses and weights as without it.

    SGD, because Adam turns the rounding noise in the gradient of the bias before a batch
    norm (exactly zero in exact arithmetic) into full-size steps of random sign: with Adam
    any change of float rounding, e.g. the order of the edges, moves the eval-mode output."""
    runs = {}
    for merge in (True, False):
        config = tiny_config(
            dataset_csv, tmp_path / str(merge), epochs=3, optim=OptimConfig(name="sgd", lr=0.02, momentum=0.9),
            model=ModelConfig(atom_fea_len=16, n_conv=2, h_fea_len=16, merge_edges=merge),
        )  # fmt: skip
        runs[merge] = train_from_config(config, progress=False)
    merged, plain = _history(runs[True]), _history(runs[False])
    for column in ("train_loss", "val_mae"):
        np.testing.assert_allclose(merged[column], plain[column], rtol=1e-4)
    from safetensors.torch import load_file

    a, b = load_file(runs[True] / "weights.safetensors"), load_file(runs[False] / "weights.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("merge", [True, False])
def test_bf16_training_runs_and_learns(dataset_csv, tmp_path, merge):
    """precision: bf16 (autocast) trains with and without merged edges; weights stay float32."""
    config = tiny_config(
        dataset_csv, tmp_path, epochs=4, precision="bf16",
        model=ModelConfig(atom_fea_len=16, n_conv=2, h_fea_len=16, merge_edges=merge),
    )  # fmt: skip
    folder = train_from_config(config, progress=False)
    history = _history(folder)
    assert np.isfinite(history["train_loss"]).all()
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    from safetensors.torch import load_file

    assert all(t.dtype in (torch.float32, torch.int64) for t in load_file(folder / "weights.safetensors").values())


def test_bf16_on_a_cpu_without_native_bfloat16_warns(dataset_csv, tmp_path, monkeypatch):
    """On an AVX2-only CPU bf16 epochs were 3.8x slower than fp32 (emulated): a user asking for speed gets a word."""
    import warnings

    from cgcnn_ase.train import trainer as trainer_module

    config = tiny_config(dataset_csv, tmp_path, precision="bf16", device="cpu")
    monkeypatch.setattr(trainer_module, "_cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="without native bfloat16 .* fp32 is faster here"):
        Trainer(config, progress=False)
    monkeypatch.setattr(trainer_module, "_cpu_has_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(config, progress=False)
        Trainer(tiny_config(dataset_csv, tmp_path, device="cpu"), progress=False)  # fp32: nothing to say


@pytest.mark.parametrize("threads", [1, 2])  # with 2 CPU threads the compiled graph uses the opaque gather/scatter
def test_compiled_training_matches_eager(dataset_csv, tmp_path, caplog, threads):
    """compile: true trains the same model as eager steps (float rounding apart), merged edges included."""
    import shutil

    if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        if os.environ.get("CGCNN_REQUIRE_SHARED"):  # CI: every test must run
            pytest.fail("no C++ compiler on PATH: torch.compile cannot build CPU kernels")
        pytest.skip("no C++ compiler on PATH: torch.compile cannot build CPU kernels here")
    common = dict(
        epochs=3, threads=threads, optim=OptimConfig(name="sgd", lr=0.02, momentum=0.9),
        schedule=ScheduleConfig(name="none"),
    )  # fmt: skip
    eager = train_from_config(tiny_config(dataset_csv, tmp_path / "eager", **common), progress=False)
    with caplog.at_level(logging.WARNING, logger="cgcnn_ase.train.trainer"):
        compiled = train_from_config(
            tiny_config(dataset_csv, tmp_path / "compiled", compile=True, **common), progress=False
        )
    assert "torch.compile failed" not in caplog.text  # it really ran compiled
    a, b = _history(eager), _history(compiled)
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-3)
    np.testing.assert_allclose(a["val_mae"], b["val_mae"], rtol=1e-3)
    from safetensors.torch import load_file

    wa, wb = load_file(eager / "weights.safetensors"), load_file(compiled / "weights.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:  # running statistics included: the weighted batch norm runs inside the compiled graph
        torch.testing.assert_close(wa[key].float(), wb[key].float(), rtol=1e-3, atol=1e-4, msg=key)


def test_failed_compilation_falls_back_to_eager(dataset_csv, tmp_path, monkeypatch, caplog):
    """A compiler failure on the first step is a warning, not a failed run; the run equals an eager one."""

    def broken_compile(model, **kwargs):
        def run(batch):
            raise RuntimeError("C++ compile error: no compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    common = dict(epochs=2, schedule=ScheduleConfig(name="none"))
    with caplog.at_level(logging.WARNING, logger="cgcnn_ase.train.trainer"):
        folder = train_from_config(tiny_config(dataset_csv, tmp_path / "c", compile=True, **common), progress=False)
    assert "torch.compile failed (RuntimeError: C++ compile error: no compiler found)" in caplog.text
    eager = train_from_config(tiny_config(dataset_csv, tmp_path / "e", **common), progress=False)
    pd.testing.assert_series_equal(_history(folder)["train_loss"], _history(eager)["train_loss"])


def test_train_command_compile_flag(tmp_path, monkeypatch):
    """`cgcnn-ase train CONFIG --compile --threads 2` sets compile and threads on the configuration."""
    from click.testing import CliRunner

    from cgcnn_ase.cli import main

    (tmp_path / "c.yaml").write_text("data:\n  path: data.csv\n  target: y\noutput: out\n")
    seen = []

    def fake_train(config, progress):
        seen.append(config)
        return tmp_path / "out"

    monkeypatch.setattr("cgcnn_ase.train.trainer.train_from_config", fake_train)
    result = CliRunner().invoke(main, ["train", str(tmp_path / "c.yaml"), "--compile", "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert seen[0].compile is True and seen[0].threads == 2
    result = CliRunner().invoke(main, ["train", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0 and seen[1].compile is False


def test_cosine_with_linear_warm_up(dataset_csv, tmp_path):
    """schedule.warmup_epochs: lr rises linearly from 1% of optim.lr, then follows the cosine; resumable."""
    config = tiny_config(dataset_csv, tmp_path, epochs=6, patience=10, optim=OptimConfig(name="adam", lr=0.01),
                         schedule=ScheduleConfig(name="cosine", warmup_epochs=2, min_lr=0.0))  # fmt: skip
    history = _history(train_from_config(config, progress=False))
    lrs = history["lr"].to_numpy()  # the learning rate each epoch trained with
    np.testing.assert_allclose(lrs[:3], [1e-4, 0.01 * (0.01 + 0.99 / 2), 0.01], rtol=1e-5)  # metrics.csv rounds
    cosine = 0.01 * (1 + np.cos(np.pi * np.arange(1, 4) / 4)) / 2  # the remaining 4 epochs
    np.testing.assert_allclose(lrs[3:], cosine, rtol=1e-5)
    state = torch.load(tmp_path / "model" / "run" / "checkpoint_last.pt", weights_only=True)
    assert state["scheduler"] is not None


@pytest.mark.parametrize(("name", "warmup", "epochs"), [("multistep", 2, 6), ("cosine", 6, 6)])
def test_warm_up_is_refused_where_it_is_not_defined(dataset_csv, tmp_path, name, warmup, epochs):
    with pytest.raises(ConfigError, match="schedule.warmup_epochs"):
        tiny_config(dataset_csv, tmp_path, epochs=epochs, schedule=ScheduleConfig(name=name, warmup_epochs=warmup))


def test_runs_without_warm_up_keep_their_fingerprint():
    """Adding schedule.warmup_epochs must not stop runs started before it from resuming: these
    fingerprints were computed by the code before warm-up existed (commit e663e54)."""
    from cgcnn_ase.train.config import TrainConfig, config_fingerprint

    plain = TrainConfig(data={"path": "x.csv", "target": "y"}, output="out")
    cosine = TrainConfig(data={"path": "x.csv", "target": "y"}, output="out", schedule={"name": "cosine"}, epochs=5)
    assert config_fingerprint(plain) == "b33238ba0c9a7ae4"
    assert config_fingerprint(cosine) == "c976699285023378"
    warm = TrainConfig(data={"path": "x.csv", "target": "y"}, output="out",
                       schedule={"name": "cosine", "warmup_epochs": 1}, epochs=5)  # fmt: skip
    assert config_fingerprint(warm) != config_fingerprint(cosine)


# -- a training epoch: sums on the device, read once ------------------------------------------------


def test_epoch_metrics_are_the_means_of_its_steps(dataset_csv, tmp_path):
    """train_epoch's loss and MAE are the crystal-weighted means of its steps' (kept on the device)."""
    from cgcnn_ase.train.trainer import Trainer

    trainer = Trainer(tiny_config(dataset_csv, tmp_path), progress=False)
    trainer.setup()
    seen = []
    step = trainer.train_step

    def spy(chunk):
        out = step(chunk)
        seen.append((float(out[0]), float(out[1]), out[2]))
        return out

    trainer.train_step = spy
    metrics = trainer.train_epoch()
    n = sum(s[2] for s in seen)
    assert n == len(trainer.parts["train"]) and len(seen) == 2  # 8 crystals in batches of 4
    assert metrics["train_loss"] == pytest.approx(sum(s[0] for s in seen) / n, rel=1e-12)
    assert metrics["train_mae"] == pytest.approx(sum(s[1] for s in seen) / n, rel=1e-12)


def test_a_non_finite_loss_stops_training_with_advice(dataset_csv, tmp_path):
    from cgcnn_ase.errors import TrainingError
    from cgcnn_ase.train.trainer import Trainer

    trainer = Trainer(tiny_config(dataset_csv, tmp_path), progress=False)
    trainer.setup()
    trainer.targets[:] = float("nan")
    with pytest.raises(TrainingError, match="training loss became nan; lower optim.lr"):
        trainer.train_epoch()


def test_a_non_finite_validation_loss_stops_training(dataset_csv, tmp_path, monkeypatch):
    """A finite training loss with NaN on validation (outlying validation crystals, a diverging optimiser)
    must not end as a model folder whose predictions are NaN."""
    from cgcnn_ase.errors import TrainingError
    from cgcnn_ase.train.trainer import Trainer

    trainer = Trainer(tiny_config(dataset_csv, tmp_path), progress=False)
    trainer.setup()
    monkeypatch.setattr(trainer, "validate", lambda: {"loss": float("nan"), "mae": float("nan"), "rmse": float("nan")})
    with pytest.raises(TrainingError, match="validation loss became nan"):
        trainer.run_epoch()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the host-sync check needs one")
def test_a_cuda_training_step_never_waits_for_the_device(dataset_csv, tmp_path):
    """Batch assembly, targets, forward, backward and the fused optimiser step queue their kernels
    without a host sync (torch's sync debug mode raises on any), so the host runs ahead of the GPU."""
    from cgcnn_ase.train.trainer import Trainer

    trainer = Trainer(tiny_config(dataset_csv, tmp_path, device="cuda"), progress=False)
    trainer.setup()
    chunk = trainer.parts["train"][:4]
    trainer.train_step(chunk)  # first call: lazy initialisation may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_sum, err_sum, n = trainer.train_step(chunk)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert loss_sum.device.type == "cuda" and n == 4 and torch.isfinite(err_sum)


def test_degenerate_training_data_is_named(dataset_csv, tmp_path):
    """Cases that trained silently: no edges at all (graph.radius too small), every target equal, an unset
    data.target (the message named the default 'target' as if the user had)."""
    from cgcnn_ase.graph.config import GraphConfig

    with pytest.raises(ConfigError, match="no atom of any crystal has a neighbour within graph.radius"):
        train_from_config(tiny_config(dataset_csv, tmp_path / "a", epochs=1, graph=GraphConfig(radius=1.0)),
                          progress=False)  # fmt: skip
    flat = tmp_path / "flat.csv"
    pd.read_csv(dataset_csv).assign(vpa=1.0).to_csv(flat, index=False)
    with pytest.warns(UserWarning, match="every target is 1: there is nothing to learn"):
        train_from_config(tiny_config(flat, tmp_path / "b", epochs=1), progress=False)
    unset = tiny_config(dataset_csv, tmp_path / "c", epochs=1, data=DatasetSpec(path=str(dataset_csv)))
    with pytest.raises(ConfigError, match="data.target is not set"):
        train_from_config(unset, progress=False)


def test_the_original_layouts_atom_init_is_named_when_not_used(tmp_path):
    from ase.build import bulk
    from ase.io import write

    folder = tmp_path / "layout"
    folder.mkdir()
    rows = []
    for k, a in enumerate(np.linspace(5.4, 5.9, 12)):
        write(folder / f"c{k}.cif", bulk("NaCl", "rocksalt", a=a))
        rows.append(f"c{k},{a}")
    (folder / "id_prop.csv").write_text("\n".join(rows) + "\n")
    (folder / "atom_init.json").write_text(json.dumps({str(z): [float(z % 2), 1.0] for z in range(1, 101)}))
    config = tiny_config(folder, tmp_path, epochs=1, data=DatasetSpec(path=str(folder)))
    with pytest.warns(UserWarning, match="atom_init.json is not used"):
        train_from_config(config, progress=False)

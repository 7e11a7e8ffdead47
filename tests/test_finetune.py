"""Fine-tuning (``init_from``): what is frozen stays bit for bit, what is trained changes; fine-tuned
folders load and predict; settings that contradict the base model are refused by name; resuming
mid fine-tune equals an uninterrupted run; every member of an ensemble; the CLI's --init-from.

The base models are tiny random model folders (and the shipped ``formation_energy``, member 0), the
data the 12-crystal set of ``tests/test_training.py``: nothing here needs ../shared but the authors'
checkpoint test.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from cgcnn_ase import CGCNNPredictor
from cgcnn_ase.cli import main
from cgcnn_ase.data.datasets import DatasetSpec
from cgcnn_ase.errors import ConfigError, UnknownModelError
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.models.cards import model_card
from cgcnn_ase.models.folder import (
    EnsembleMember,
    LoadedModel,
    load_model_folder,
    read_model_json,
    save_model_folder,
    write_model_json,
)
from cgcnn_ase.train.config import TrainConfig
from cgcnn_ase.train.config_sections import FineTuneConfig, ModelConfig, OptimConfig, ScheduleConfig, SplitConfig
from cgcnn_ase.train.trainer import CHECKPOINT_LAST, Trainer, train_from_config

from .conftest import ATOM_INIT, REFERENCE, random_model, require_shared
from .test_training import dataset_csv, tiny_config, trained  # noqa: F401 - the tiny 12-crystal dataset fixture


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    """A random regression model (16 features, 2 convolutions, 2 hidden layers) predicting ``vpa``."""
    loaded = random_model(seed=3)
    return save_model_folder(tmp_path_factory.mktemp("base") / "base", loaded)


def ft_config(data_path: Path, root: Path, base: Path | str, **kwargs) -> TrainConfig:
    """The tiny configuration of test_training, fine-tuning ``base``: no model section (it is the base's)."""
    settings = dict(model=ModelConfig(), init_from=str(base), epochs=1, schedule=ScheduleConfig(name="none"))
    settings.update(kwargs)
    return tiny_config(data_path, root, **settings)


def _state(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "weights.safetensors"))


# -- what is frozen stays, what is trained changes -------------------------------------------------

FREEZING = {
    "nothing": (FineTuneConfig(), []),
    "embedding and conv 0": (FineTuneConfig(freeze_embedding=True, freeze_convs=1), ["embedding.", "convs.0."]),
    "first two convs": (FineTuneConfig(freeze_convs=2), ["convs.0.", "convs.1."]),
    "head only": (FineTuneConfig(head_only=True), ["embedding.", "convs."]),
}


@pytest.mark.parametrize("case", list(FREEZING))
def test_one_epoch_changes_only_what_is_not_frozen(dataset_csv, base_folder, tmp_path, case):
    finetune, frozen_prefixes = FREEZING[case]
    config = ft_config(dataset_csv, tmp_path, base_folder, finetune=finetune, optim=OptimConfig(name="adam", lr=0.01))
    folder = train_from_config(config, progress=False)
    before = _state(base_folder)
    checkpoint = torch.load(folder / "run" / CHECKPOINT_LAST, weights_only=True)
    assert checkpoint["epoch"] == 1
    for after in (_state(folder), checkpoint["model"]):  # the exported best epoch (= 1) and the checkpoint
        assert set(after) - {k for k in after if k.endswith("num_batches_tracked")} <= set(before)
        for name, value in before.items():
            frozen = name.startswith(tuple(frozen_prefixes))
            if frozen:  # weights and batch-norm statistics, bit for bit
                assert torch.equal(after[name], value), f"{case}: frozen {name} changed"
            elif name.startswith("fc_out."):
                continue  # reset (another target): a fresh layer, checked below
            else:
                assert not torch.equal(after[name], value), f"{case}: trained {name} did not change"
    if case == "nothing":  # running statistics of trained convolutions are updated
        assert not torch.equal(checkpoint["model"]["convs.0.bn1.running_mean"], before["convs.0.bn1.running_mean"])
    ft = read_model_json(folder)["metadata"]["finetune"]
    expected = {"nothing": [], "embedding and conv 0": ["embedding", "convs.0"],
                "first two convs": ["convs.0", "convs.1"], "head only": ["embedding", "convs.0", "convs.1"]}[case]  # fmt: skip
    assert ft["frozen"] == expected and ft["output_layer"] == "reset"
    assert ft["parameters"]["trained"] + ft["parameters"]["frozen"] == sum(v.numel() for k, v in before.items()
                                                                              if "running" not in k and "num_batches" not in k)  # fmt: skip
    # the optimiser holds the trained parameters only
    optimizer_params = sum(len(group["params"]) for group in checkpoint["optimizer"]["param_groups"])
    n_trained = sum(1 for k in before if "running" not in k and "num_batches" not in k
                    and not k.startswith(tuple(frozen_prefixes)))  # fmt: skip
    assert optimizer_params == n_trained


def test_output_layer_kept_starts_from_the_base_predictions(dataset_csv, base_folder, tmp_path):
    """Same property and units as the base: ``auto`` keeps ``fc_out``, rescaled to the new normaliser,
    so the network before any step predicts what the base model predicts (in target units)."""
    config = ft_config(dataset_csv, tmp_path, base_folder, property="formation_energy", units="eV/atom")
    trainer = Trainer(config, progress=False)
    trainer.setup()
    assert trainer.finetune_state.output_layer == "keep"
    assert (trainer.mean, trainer.std) != (-1.0, 0.5)  # the run's own normaliser, not the base's
    positions = np.arange(len(trainer.data.ids))
    values, _ = trainer.predict(positions)
    base = CGCNNPredictor.from_checkpoint(base_folder, device="cpu")
    crystals = {row.material_id: row.cif for row in pd.read_csv(dataset_csv).itertuples()}
    expected = base.predict([crystals[i] for i in trainer.data.ids]).values
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-5)
    # another property: reset, a fresh (seeded) layer
    reset = Trainer(ft_config(dataset_csv, tmp_path / "b", base_folder), progress=False)
    reset.setup()
    assert reset.finetune_state.output_layer == "reset"
    assert not torch.equal(reset.network.fc_out.weight.cpu(), load_model_folder(base_folder).network.fc_out.weight)


def test_body_and_head_learning_rates(dataset_csv, base_folder, tmp_path):
    finetune = FineTuneConfig(body_lr=1e-4, head_lr=3e-3, freeze_embedding=True)
    trainer = Trainer(ft_config(dataset_csv, tmp_path, base_folder, finetune=finetune), progress=False)
    trainer.setup()
    groups = {group["name"]: group for group in trainer.optimizer.param_groups}
    assert groups["head"]["lr"] == 3e-3 and groups["body"]["lr"] == 1e-4
    head = {id(p) for m in (trainer.network.conv_to_fc, trainer.network.fcs, trainer.network.fc_out) for p in m.parameters()}
    assert {id(p) for p in groups["head"]["params"]} == head
    assert {id(p) for p in groups["body"]["params"]} == {id(p) for p in trainer.network.convs.parameters()}
    head_only = Trainer(ft_config(dataset_csv, tmp_path / "b", base_folder, finetune=FineTuneConfig(head_only=True)),
                        progress=False)  # fmt: skip
    head_only.setup()
    assert [group["name"] for group in head_only.optimizer.param_groups] == ["head"]


# -- the fine-tuned folder ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::cgcnn_ase.errors.UnseenElementWarning")
def test_finetuned_folder_loads_predicts_and_records_its_base(dataset_csv, base_folder, tmp_path):
    config = ft_config(dataset_csv, tmp_path, base_folder, epochs=2, finetune=FineTuneConfig(freeze_convs=1))
    folder = train_from_config(config, progress=False)
    predictor = CGCNNPredictor.from_pretrained(folder, device="cpu")
    values = predictor.predict(pd.read_csv(dataset_csv)["cif"].tolist()[:3]).values
    assert values.shape == (3,) and np.isfinite(values).all() and predictor.units == "Å^3/atom"
    document = read_model_json(folder)
    base_doc = read_model_json(base_folder)
    mine = {k: v for k, v in document["architecture"].items() if k != "dropout"}  # the base has no dropout key
    assert mine == base_doc["architecture"] and document["graph"] == base_doc["graph"]
    assert document["elements"]["fingerprint"] == base_doc["elements"]["fingerprint"]
    base = document["metadata"]["finetune"]["base"]
    assert base["kind"] == "model folder" and base["name"] == "random-regression-mean" and base["member"] == 0
    assert base["property"] == "formation_energy" and base["normalizer"] == {"mean": -1.0, "std": 0.5}
    card = (folder / "README.md").read_text()
    assert "## Base model (fine-tuning)" in card and "random-regression-mean" in card and "`convs.0`" in card
    assert card == model_card(document, loss_name="mse", folder=folder)
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert saved["init_from"] == str(base_folder) and saved["finetune"]["freeze_convs"] == 1
    assert saved["model"]["n_h"] == 2 and saved["elements"] == "generated"  # the base model's, filled in
    # a run from scratch writes neither key, and its card has no such section
    scratch = train_from_config(tiny_config(dataset_csv, tmp_path / "scratch", epochs=1), progress=False)
    assert "init_from" not in yaml.safe_load((scratch / "config.yaml").read_text())
    assert "finetune" not in read_model_json(scratch)["metadata"]
    assert "Base model" not in (scratch / "README.md").read_text()


def test_finetune_the_shipped_formation_energy_model(dataset_csv, tmp_path):
    """Member 0 of the shipped ensemble, on 12 crystals; the card names its data."""
    folder = train_from_config(ft_config(dataset_csv, tmp_path, "formation_energy"), progress=False)
    document = read_model_json(folder)
    assert document["architecture"]["n_conv"] == 4 and document["architecture"]["atom_fea_len"] == 64
    base = document["metadata"]["finetune"]["base"]
    assert base["kind"] == "shipped model" and (base["member"], base["n_members"]) == (0, 5)
    assert "mp_cgcnn46k_kdmsit" in base["dataset"]["name"]
    card = (folder / "README.md").read_text()
    assert "member 0 of 5" in card and "mp_cgcnn46k_kdmsit" in card
    assert np.isfinite(CGCNNPredictor.from_pretrained(folder, device="cpu").predict(
        pd.read_csv(dataset_csv)["cif"].tolist()[:2]).values).all()  # fmt: skip


# -- refused -----------------------------------------------------------------------------------------

REFUSED = {
    "model.n_h": dict(model=ModelConfig(n_h=1)),
    "model.atom_fea_len": dict(model=ModelConfig(atom_fea_len=64)),
    "graph.radius": dict(graph=GraphConfig(radius=6.0)),
    "graph.neighbor_policy": {"graph": {"neighbor_policy": "original"}},
    "elements": dict(elements=str(ATOM_INIT)),
    "finetune.freeze_convs": dict(finetune=FineTuneConfig(freeze_convs=3)),
    "finetune.output_layer": dict(finetune=FineTuneConfig(output_layer="keep"), task="classification",
                                  data={"target": "big"}),
    "finetune.member": dict(finetune=FineTuneConfig(member=1)),
}


@pytest.mark.parametrize("setting", list(REFUSED))
def test_a_config_contradicting_the_base_model_is_refused_by_name(dataset_csv, base_folder, tmp_path, setting):
    settings = dict(REFUSED[setting])
    if setting == "elements" and not ATOM_INIT.is_file():
        require_shared(ATOM_INIT)
    if "data" in settings:
        settings["data"] = DatasetSpec(path=str(dataset_csv), **settings["data"])
    if isinstance(settings.get("graph"), dict):  # given as a mapping (as from a file): only that key is "given"
        data = ft_config(dataset_csv, tmp_path, base_folder).to_dict()
        del data["model"]
        data.update(settings)
        with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
            train_from_config(TrainConfig.from_dict(data), progress=False)
    else:
        with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
            train_from_config(ft_config(dataset_csv, tmp_path, base_folder, **settings), progress=False)
    assert not (tmp_path / "model").exists()  # refused before anything was written


def test_settings_that_agree_with_the_base_model_are_accepted(dataset_csv, base_folder, tmp_path):
    config = ft_config(dataset_csv, tmp_path, base_folder, model=ModelConfig(n_h=2, n_conv=2, dropout=0.1),
                       graph=GraphConfig(), elements="generated")  # fmt: skip
    trainer = Trainer(config, progress=False)
    assert trainer.config.model.atom_fea_len == 16 and trainer.config.model.dropout == 0.1


def test_unknown_base_model_and_finetune_settings_without_init_from(dataset_csv, tmp_path):
    with pytest.raises(UnknownModelError, match="formation_energy"):
        train_from_config(ft_config(dataset_csv, tmp_path, "formation_enrgy"), progress=False)
    config = tiny_config(dataset_csv, tmp_path, finetune=FineTuneConfig(head_only=True))
    with pytest.raises(ConfigError, match="need init_from"):
        train_from_config(config, progress=False)
    assert not (tmp_path / "model").exists()


def test_an_authors_checkpoint_needs_its_element_table(dataset_csv, tmp_path):
    checkpoint = require_shared(REFERENCE / "pre-trained" / "formation-energy-per-atom.pth.tar")
    require_shared(ATOM_INIT)
    with pytest.raises(ConfigError, match="elements"):
        train_from_config(ft_config(dataset_csv, tmp_path, checkpoint), progress=False)
    folder = train_from_config(ft_config(dataset_csv, tmp_path, checkpoint, elements=str(ATOM_INIT)), progress=False)
    document = read_model_json(folder)
    assert document["graph"]["neighbor_policy"] == "original"  # the authors' graph settings
    assert document["metadata"]["finetune"]["base"]["kind"] == "original checkpoint"


# -- resuming ----------------------------------------------------------------------------------------


def test_resume_mid_finetune_matches_an_uninterrupted_run(dataset_csv, base_folder, tmp_path, caplog):
    common = dict(finetune=FineTuneConfig(freeze_embedding=True, body_lr=0.005, head_lr=0.02),
                  optim=OptimConfig(name="sgd", lr=0.01, momentum=0.9), batch_size=3)  # fmt: skip
    straight = train_from_config(ft_config(dataset_csv, tmp_path / "a", base_folder, epochs=3, **common),
                                 progress=False)  # fmt: skip
    train_from_config(ft_config(dataset_csv, tmp_path / "b", base_folder, epochs=1, **common), progress=False)
    with caplog.at_level(logging.INFO, logger="cgcnn_ase.train.trainer"):
        folder = train_from_config(ft_config(dataset_csv, tmp_path / "b", base_folder, epochs=3, **common),
                                   progress=False)  # fmt: skip
    assert "from epoch 1" in caplog.text
    resumed, reference = pd.read_csv(folder / "metrics.csv"), pd.read_csv(straight / "metrics.csv")
    assert resumed["epoch"].tolist() == [1, 2, 3]
    for column in ("train_loss", "val_mae", "lr"):
        np.testing.assert_allclose(resumed[column], reference[column], rtol=1e-5)
    a, b = _state(straight), _state(folder)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert torch.equal(b["embedding.weight"], _state(base_folder)["embedding.weight"])  # still frozen after resuming
    # another base model or other fine-tuning settings do not resume this checkpoint
    other = dict(common, finetune=FineTuneConfig(freeze_embedding=False))
    with pytest.raises(ConfigError, match="different settings"):
        train_from_config(ft_config(dataset_csv, tmp_path / "b", base_folder, epochs=4, **other), progress=False)


# -- every member of an ensemble; the command line -------------------------------------------------


def test_every_member_of_an_ensemble_is_finetuned(dataset_csv, tmp_path):
    members = [random_model(seed=s) for s in (5, 6)]
    ensemble = LoadedModel(
        spec=members[0].spec, network=members[0].network, elements=members[0].elements,
        members=[EnsembleMember(m.network, -1.0 + k, 0.5, {"name": f"m{k}", "seed": k}) for k, m in enumerate(members)],
    )  # fmt: skip
    base = save_model_folder(tmp_path / "ens-base", ensemble)
    config = ft_config(dataset_csv, tmp_path, base, finetune=FineTuneConfig(member="all", freeze_convs=1), seed=7)
    folder = train_from_config(config, progress=False)
    loaded = load_model_folder(folder)
    assert loaded.n_members == 2
    for k, member in enumerate(loaded.members):  # member k started from base member k, seed 7 + k
        assert torch.equal(member.network.convs[0].fc_full.weight, members[k].network.convs[0].fc_full.weight)
        assert member.info["seed"] == 7 + k
    document = read_model_json(folder)
    assert document["metadata"]["finetune"]["base"]["member"] == "all"
    assert yaml.safe_load((folder / "config.yaml").read_text())["finetune"]["member"] == "all"
    assert "Each member was fine-tuned from" in (folder / "README.md").read_text()  # the ensemble card says so
    values = CGCNNPredictor.from_pretrained(folder, device="cpu").predict(pd.read_csv(dataset_csv)["cif"][:2].tolist())
    assert np.isfinite(values.values).all() and values.std is not None


def _two_member_base(tmp_path: Path) -> Path:
    members = [random_model(seed=s) for s in (5, 6)]
    ensemble = LoadedModel(
        spec=members[0].spec, network=members[0].network, elements=members[0].elements,
        members=[EnsembleMember(m.network, -1.0 + k, 0.5, {"name": f"m{k}", "seed": k}) for k, m in enumerate(members)],
        calibration={"scale": 1.0, "split": "val", "n": 2},
    )  # fmt: skip
    return save_model_folder(tmp_path / "ens-base", ensemble)


def test_member_all_runs_again_continues_and_shares_one_time_limit(dataset_csv, tmp_path, recwarn):
    """Round 16a: 'finetune.member: all cannot be resumed or re-run: the second command trains every member on,
    then exits 2: "already holds a model ... (CLI --overwrite)", an option train does not have; with a time
    limit, exit 75 once and 2 ever after, the folder keeping the 1-epoch ensemble'. Also: 'members=K of 5: the
    std is uncalibrated' was warned while loading base member K, and the base's test metrics were member 0's."""
    from cgcnn_ase.errors import UnfinishedRunError

    base = _two_member_base(tmp_path)
    config = ft_config(dataset_csv, tmp_path, base, finetune=FineTuneConfig(member="all"), seed=7)
    folder = train_from_config(config, progress=False)
    assert not [w for w in recwarn if "uncalibrated" in str(w.message)]
    def epochs() -> list[int]:
        return [m["epochs_run"] for m in read_model_json(folder)["ensemble"]["members"]]

    assert epochs() == [1, 1]
    document = read_model_json(folder)
    document["ensemble"]["calibration"]["conformal"] = {"as": "cgcnn-ase calibrate writes it"}
    write_model_json(folder, document)
    with pytest.warns(UserWarning, match="calibrated for prediction intervals; this one is not yet"):  # round 29e
        assert train_from_config(config, progress=False) == folder  # the same command again: rewritten, not refused
    config.epochs = 3
    config.time_limit = 1e-6  # minutes: every session stops after its first epoch
    with pytest.raises(UnfinishedRunError, match=r"stopped this session in member 0 of 0-1 \(epoch 2 of 3\); no member"):
        train_from_config(config, progress=False)
    assert epochs() == [1, 1]  # the output keeps the last complete ensemble until every member has finished
    path = tmp_path / "config.yaml"
    written = config.to_dict()
    del written["model"]  # the base's
    path.write_text(yaml.safe_dump(written))
    runner = CliRunner()
    outcomes = [runner.invoke(main, ["train", str(path)]) for _ in range(3)]
    assert [r.exit_code for r in outcomes] == [75, 75, 0], [r.output for r in outcomes]
    assert "before member 1 of 0-1 began; member 0 is done" in outcomes[0].output  # member 0 ended its epochs
    assert "in member 1 of 0-1 (epoch 2 of 3); member 0 is done" in outcomes[1].output
    assert epochs() == [3, 3]
    document = read_model_json(folder)
    assert document["metadata"]["finetune"]["base"]["test_metrics"] == (read_model_json(base)["metadata"].get(
        "test_metrics") or {})  # fmt: skip
    other = ft_config(dataset_csv, tmp_path, base, finetune=FineTuneConfig(member="all"), seed=7, name="another")
    with pytest.raises(ConfigError, match="holds another model"):  # before any member trains
        train_from_config(other, progress=False)


def test_test_crystals_the_base_model_trained_on_are_found_by_id_and_by_structure(dataset_csv, trained, tmp_path):
    """Round 16a: 'A fine-tuned model's test split is only checked against its own training split: 28 of the 30
    test crystals were in the base model's train or val split; the card reports a test MAE with no warning'. Now
    the run warns, model.json and the card record it, and evaluate notes it; ids renamed and CIF text re-indented
    still match by structure when the base model's data are found."""
    import shutil

    from cgcnn_ase.analysis.evaluation import evaluate_model
    from cgcnn_ase.data.splits import Split

    _, base = trained
    frame = pd.read_csv(dataset_csv)
    renamed = frame.assign(material_id=[f"x{k:02d}" for k in range(len(frame))],
                           cif=["\n".join("  " + line for line in c.splitlines()) for c in frame["cif"]])  # fmt: skip
    renamed.to_csv(tmp_path / "renamed.csv", index=False)
    hidden = tmp_path / "hidden-base"  # the same model, its data not found from here
    shutil.copytree(base, hidden)
    (hidden / "config.yaml").write_text((hidden / "config.yaml").read_text().replace(str(dataset_csv), "gone/x.csv"))
    base_split = Split.load(base / "split.json")
    for name, data, model, checked in (("same", dataset_csv, base, "ids and structures"),
                                       ("renamed", tmp_path / "renamed.csv", base, "ids and structures"),
                                       ("hidden", tmp_path / "renamed.csv", hidden, "ids")):  # fmt: skip
        config = ft_config(Path(data), tmp_path / name, model, split=SplitConfig(train=8 / 12, val=2 / 12, test=2 / 12,
                                                                                 seed=5))  # fmt: skip
        warned = pytest.warns(UserWarning, match="test crystals of this run are crystals the base model")
        with warned if checked != "ids" else _no_overlap_warning():  # seed 5: both splits' test crystals were seen
            folder = train_from_config(config, progress=False)
        overlap = read_model_json(folder)["metadata"]["finetune"]["base_overlap"]
        assert overlap["checked"] == checked
        test_ids = Split.load(folder / "split.json").ids("test")  # row k is crystal k in both tables
        rows = [int(i[1:]) for i in test_ids]
        expected = {"n": 2, "base_train": sum(f"c{r:02d}" in base_split.ids("train") for r in rows),
                    "base_val": sum(f"c{r:02d}" in base_split.ids("val") for r in rows)}  # fmt: skip
        if checked == "ids":
            expected.update(base_train=0, base_val=0)  # renamed ids, structures not compared
        assert overlap["test"] == expected, (name, overlap)
        card = (folder / "README.md").read_text()
        seen = expected["base_train"] + expected["base_val"]
        assert (f"**{seen} of 2**" in card) if seen else ("none of 2" in card and "by id only" in card)
    assert seen == 0 and overlap["test"]["n"] == 2
    with pytest.warns(UserWarning, match="crystals its base model was trained on"):
        report = evaluate_model(tmp_path / "same" / "model", workers=1)
    assert "understates the error on new crystals" in report["note"]


def test_row_numbers_are_no_ids_of_crystals_the_base_model_saw(dataset_csv, tmp_path):
    """Round 17: 'a base trained on a CSV without an id column, fine-tuned on 200 different rows: 26 of the 30 test
    crystals ... was trained on, by id or identical structure': row numbers matched row numbers."""
    import io

    from ase.io import read

    frame = pd.read_csv(dataset_csv).drop(columns=["material_id"])
    frame.to_csv(tmp_path / "rows.csv", index=False)
    base = train_from_config(tiny_config(tmp_path / "rows.csv", tmp_path / "base", epochs=1), progress=False)
    other = frame.copy()  # other crystals (each cell 3% larger), again without ids
    texts = []
    for text in frame["cif"]:
        crystal = read(io.StringIO(text), format="cif")
        crystal.set_cell(crystal.cell * 1.03, scale_atoms=True)
        buffer = io.BytesIO()
        crystal.write(buffer, format="cif")
        texts.append(buffer.getvalue().decode())
    other["cif"] = texts
    other.to_csv(tmp_path / "other.csv", index=False)
    with _no_overlap_warning():
        folder = train_from_config(ft_config(tmp_path / "other.csv", tmp_path / "ft", base), progress=False)
    overlap = read_model_json(folder)["metadata"]["finetune"]["base_overlap"]
    assert overlap["checked"] == "structures" and overlap["test"]["base_train"] + overlap["test"]["base_val"] == 0
    same = train_from_config(ft_config(tmp_path / "rows.csv", tmp_path / "same", base), progress=False)
    seen = read_model_json(same)["metadata"]["finetune"]["base_overlap"]["val"]  # the same rows, same split seed
    assert seen["base_val"] == seen["n"] == 2


class _no_overlap_warning:
    """A context that fails on a warning about test crystals the base model had seen."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self.caught = self._catch.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        assert not [w for w in self.caught if "base model" in str(w.message) and "test crystals" in str(w.message)]


def test_cli_init_from(dataset_csv, base_folder, tmp_path):
    config = ft_config(dataset_csv, tmp_path, base_folder).to_dict()
    del config["init_from"], config["finetune"], config["model"]  # a configuration without a model section
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(path), "--init-from", str(base_folder),
                                  "--set", "finetune.head_only=true"])  # fmt: skip
    assert result.exit_code == 0, result.output
    folder = tmp_path / "model"
    assert result.output.rstrip().endswith(str(folder))
    document = read_model_json(folder)
    assert document["metadata"]["finetune"]["head_only"] is True
    assert "--set init_from=" in document["metadata"]["training"]["command"]
    refused = runner.invoke(main, ["train", str(path), "--init-from", str(base_folder), "--set", "graph.radius=6",
                                   "--set", f"output={tmp_path / 'other'}"])  # fmt: skip
    assert refused.exit_code == 2 and "graph.radius" in refused.output, refused.output
    unknown = runner.invoke(main, ["train", str(path), "--init-from", "formation_enrgy"])
    assert unknown.exit_code == 3 and "formation_energy" in unknown.output
    assert json.loads(json.dumps(document))  # plain JSON

"""Deep ensembles: folder format, mean/std, the fast path, domain signal, calibration, adapters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from ase.build import bulk
from click.testing import CliRunner
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from cgcnn_ase.integrations.ase import CGCNNCalculator
from cgcnn_ase.models.folder import EnsembleMember, LoadedModel, load_model_folder, save_model_folder
from cgcnn_ase.models.domain import DomainSummary, kcenter_subset
from cgcnn_ase.train.ensembles import EnsembleError, assemble_ensemble
from cgcnn_ase.errors import CheckpointError, ConfigError
from cgcnn_ase.analysis.evaluation import evaluate_model, load_split_records
from cgcnn_ase.inference.predictor import CGCNNPredictor
from cgcnn_ase.train.config import TrainConfig
from cgcnn_ase.train.config_sections import SplitConfig
from cgcnn_ase.train.trainer import train_from_config

from .conftest import random_model, rattled
from .test_training import tiny_config

pytestmark = pytest.mark.filterwarnings(
    "ignore::cgcnn_ase.errors.UnseenElementWarning", "ignore::cgcnn_ase.errors.SparseGraphWarning"
)

PROTOTYPES = [
    ("Cu", "fcc", 3.61),
    ("Al", "fcc", 4.05),
    ("Ni", "fcc", 3.52),
    ("Na", "bcc", 4.23),
    ("K", "bcc", 5.23),
    ("Fe", "bcc", 2.87),
    ("Si", "diamond", 5.43),
    ("Ge", "diamond", 5.66),
    ("C", "diamond", 3.57),
    ("NaCl", "rocksalt", 5.64),
    ("MgO", "rocksalt", 4.21),
    ("LiF", "rocksalt", 4.03),
    ("Au", "fcc", 4.08),
    ("Ag", "fcc", 4.09),
    ("W", "bcc", 3.16),
    ("KCl", "rocksalt", 6.29),
]
SEEDS = (0, 1, 2)


def _crystals() -> list[Atoms]:
    return [
        rattled(bulk(formula, kind, a=a, cubic=kind == "bcc"), stdev=0.03, seed=k)
        for k, (formula, kind, a) in enumerate(PROTOTYPES)
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """16 crystals; target ``vpa`` = volume per atom (Å^3)."""
    crystals = _crystals()
    df = pd.DataFrame(
        {
            "material_id": [f"c{k:02d}" for k in range(len(crystals))],
            "vpa": [a.get_volume() / len(a) for a in crystals],
            "cif": [str(CifWriter(AseAtomsAdaptor.get_structure(a))) for a in crystals],
        }
    )
    path = tmp_path_factory.mktemp("ens-data") / "tiny.csv"
    df.to_csv(path, index=False)
    return path


def _config(data_path: Path, root: Path, seed: int) -> TrainConfig:
    """test_training's tiny configuration: one member per seed, all on one split (seed 7)."""
    return tiny_config(
        data_path, root, output=str(root / f"member-seed{seed}"), split=SplitConfig(train=10 / 16, val=3 / 16, test=3 / 16, seed=7),
        seed=seed, cache_dir=str(root / "cache"), aliases=["tiny_vpa"],
    )  # fmt: skip


@pytest.fixture(scope="module")
def members(data, tmp_path_factory) -> list[Path]:
    """Three tiny members: same split (split.seed 7), seeds 0, 1, 2."""
    root = tmp_path_factory.mktemp("ens-members")
    return [train_from_config(_config(data, root, seed), progress=False) for seed in SEEDS]


@pytest.fixture(scope="module")
def ensemble(members, data, tmp_path_factory) -> Path:
    """The assembled, calibrated and evaluated ensemble folder."""
    out = tmp_path_factory.mktemp("ens") / "tiny_vpa-ensemble-v1"
    return assemble_ensemble(members, out, dataset=str(data))


@pytest.fixture(scope="module")
def test_records(ensemble, data):
    _, parts = load_split_records(ensemble, str(data), ("train", "val", "test"))
    return parts


# -- folder format ----------------------------------------------------------------------------


def test_folder_format(ensemble, members):
    names = {p.name for p in ensemble.iterdir()}
    assert {
        "model.json",
        "weights.safetensors",
        "atom_init.json",
        "domain.safetensors",
        "split.json",
        "config.yaml",
        "README.md",
        "parity.png",
        "error_vs_std.png",
        "calibration.png",
    } <= names
    assert (ensemble / "domain.safetensors").stat().st_size < 500_000
    meta = json.loads((ensemble / "model.json").read_text())
    assert meta["format_version"] == 2 and meta["name"] == "tiny_vpa-ensemble-v1"
    ens = meta["ensemble"]
    assert ens["n_members"] == 3 and [m["seed"] for m in ens["members"]] == list(SEEDS)
    for m, folder in zip(ens["members"], members):
        own = json.loads((folder / "model.json").read_text())
        assert m["test_metrics"] == own["metadata"]["test_metrics"]
        assert m["normalizer"] == own["normalizer"]
    assert ens["calibration"]["split"] == "val" and ens["calibration"]["scale"] > 0
    md = meta["metadata"]
    assert md["aliases"] == ["tiny_vpa"] and md["test_metrics"]["n"] == 3
    assert md["uncertainty"]["test"]["ensemble_vs_members"]["metric"] == "mae"
    from safetensors import safe_open

    with safe_open(str(ensemble / "weights.safetensors"), framework="pt") as fh:
        prefixes = {key.split(".")[0] for key in fh.keys()}  # noqa: SIM118 - not a dict
    assert prefixes == {"member0", "member1", "member2"}
    card = (ensemble / "README.md").read_text()
    assert "deep ensemble of 3" in card and "within 1 std" in card and "domain percentile" in card


def test_round_trip_through_save_model_folder(ensemble, tmp_path):
    loaded = load_model_folder(ensemble)
    assert loaded.is_ensemble and loaded.n_members == 3 and loaded.domain is not None
    assert loaded.network is loaded.members[0].network
    again = load_model_folder(save_model_folder(tmp_path / "copy", loaded))
    assert again.calibration == loaded.calibration and [m.info for m in again.members] == [
        m.info for m in loaded.members
    ]
    crystals = _crystals()[:4]
    a = CGCNNPredictor(loaded, device="cpu").predict(crystals)
    b = CGCNNPredictor(again, device="cpu").predict(crystals)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.std, b.std)
    np.testing.assert_allclose(a.domain_percentile, b.domain_percentile)


# -- predictions ------------------------------------------------------------------------------


def test_mean_and_std_are_those_of_the_members(ensemble, members):
    crystals = _crystals()
    result = CGCNNPredictor.from_checkpoint(ensemble, device="cpu").predict(crystals, batch_size=5)
    singles = np.stack(
        [CGCNNPredictor.from_checkpoint(m, device="cpu").predict(crystals, batch_size=5).values for m in members], 1
    )
    # the members run stacked in one pass (nn.stacked): float32 rounding (1e-6 normalised; the target std is ~10)
    np.testing.assert_allclose(result.member_values, singles, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(result.values, singles.mean(axis=1), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(result.std_raw, singles.std(axis=1), atol=1e-5)
    np.testing.assert_allclose(result.std, result.std_scale * result.std_raw, rtol=1e-12)
    df = result.to_dataframe()
    assert list(df.columns) == [
        "id",
        "vpa",
        "vpa_std",
        "vpa_std_raw",
        "n_sparse",
        "bond_ratio",
        "vacuum_gap",
        "unseen_elements",
        "domain_distance",
        "domain_percentile",
        "error",
    ]
    assert df.attrs["units"]["vpa_std"] == "Å^3/atom" and df.attrs["units"]["domain_percentile"] == "percent"


def test_members_1_is_member_0_and_subsets(ensemble, members):
    crystals = _crystals()[:5]
    fast = CGCNNPredictor.from_checkpoint(ensemble, members=1, device="cpu")
    assert not fast.is_ensemble and fast.has_domain
    result = fast.predict(crystals)
    np.testing.assert_allclose(
        result.values, CGCNNPredictor.from_checkpoint(members[0], device="cpu").predict(crystals).values, atol=1e-6
    )
    assert result.std is None and result.domain_percentile is not None
    two = CGCNNPredictor.from_checkpoint(ensemble, members=2, device="cpu").predict(crystals)
    assert two.member_values.shape == (5, 2) and two.std_scale is None  # calibration is for all members only
    np.testing.assert_allclose(two.std, two.std_raw)
    with pytest.raises(ConfigError, match="members=4 is out of range"):  # a ValueError: an argument (round 29a)
        load_model_folder(ensemble, members=4)
    with pytest.raises(ConfigError, match="single model"):
        load_model_folder(members[0], members=2)


def test_per_atom_and_embeddings_of_an_ensemble(ensemble, members):
    crystals = _crystals()[9:13]
    predictor = CGCNNPredictor.from_checkpoint(ensemble, device="cpu")
    result = predictor.predict(crystals, per_atom=True, embeddings=True)
    for contributions, value in zip(result.per_atom, result.values):
        assert contributions.mean() == pytest.approx(value, abs=1e-6)  # mean over members, still exact
    member0 = CGCNNPredictor.from_checkpoint(members[0], device="cpu")
    np.testing.assert_allclose(result.embeddings, member0.embed(crystals), atol=1e-6)


def test_classifier_ensemble_std_is_std_of_member_probabilities(crystals, tmp_path):
    nets = [random_model(task="classification", seed=s) for s in (21, 22, 23)]
    first = nets[0]
    loaded = LoadedModel(
        first.spec,
        first.network,
        first.elements,
        members=[EnsembleMember(m.network, info={"seed": k}) for k, m in enumerate(nets)],
    )
    folder = save_model_folder(tmp_path / "clf", loaded)
    result = CGCNNPredictor.from_checkpoint(folder, device="cpu").predict(crystals)
    probabilities = np.stack([CGCNNPredictor(m, device="cpu").predict(crystals).values for m in nets], 1)
    np.testing.assert_allclose(result.values, probabilities.mean(1), atol=1e-6)
    np.testing.assert_allclose(result.std, probabilities.std(1), atol=1e-6)
    assert result.std_scale is None and result.domain_percentile is None
    assert list(result.to_dataframe().columns) == [
        "id",
        "is_metal",
        "is_metal_std",
        "n_sparse",
        "bond_ratio",
        "vacuum_gap",
        "unseen_elements",
        "error",
    ]


# -- refusing bad members ---------------------------------------------------------------------


def test_mismatched_members_are_refused(members, tmp_path):
    other = save_model_folder(tmp_path / "other", random_model(seed=3))  # another architecture and property
    for shared in ("split.json", "config.yaml"):
        shutil.copy(members[0] / shared, other / shared)
    with pytest.raises(EnsembleError, match="differs from member 0 .* property"):
        assemble_ensemble([members[0], other], tmp_path / "out")
    moved = shutil.copytree(members[1], tmp_path / "moved-split", ignore=shutil.ignore_patterns("run"))
    split = json.loads((moved / "split.json").read_text())
    split["train"][0], split["test"][0] = split["test"][0], split["train"][0]
    (moved / "split.json").write_text(json.dumps(split))
    with pytest.raises(EnsembleError, match="another split"):
        assemble_ensemble([members[0], moved], tmp_path / "out")
    spec = json.loads((moved / "model.json").read_text())  # another split usually sees other elements too:
    spec["metadata"]["elements_seen"] = spec["metadata"]["elements_seen"][1:]  # the split is named, not them
    (moved / "model.json").write_text(json.dumps(spec))
    with pytest.raises(EnsembleError, match="another split"):
        assemble_ensemble([members[0], moved], tmp_path / "out")
    twin = shutil.copytree(members[0], tmp_path / "twin", ignore=shutil.ignore_patterns("run"))
    with pytest.raises(EnsembleError, match="same seed 0"):
        assemble_ensemble([members[0], twin], tmp_path / "out")
    regraphed = shutil.copytree(members[1], tmp_path / "regraphed", ignore=shutil.ignore_patterns("run"))
    meta = json.loads((regraphed / "model.json").read_text())
    meta["graph"]["max_neighbors"] = 8  # (a radius change alone would also change the Gaussian count: refused at load)
    (regraphed / "model.json").write_text(json.dumps(meta))
    with pytest.raises(EnsembleError, match="graph settings: max_neighbors 8 vs 12$"):  # the key that differs alone
        assemble_ensemble([members[0], regraphed], tmp_path / "out")
    with pytest.raises(EnsembleError, match="at least 2"):
        assemble_ensemble([members[0]], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # round 14a: an ensemble folder given as a member was reported as 'the same seed 0'; other splits exited 3
    pair = assemble_ensemble(members[:2], tmp_path / "pair", evaluate=False)
    with pytest.raises(EnsembleError, match="is itself an ensemble of 2 members"):
        assemble_ensemble([members[2], pair], tmp_path / "out")
    from click.testing import CliRunner

    from cgcnn_ase.cli import main

    cli = CliRunner().invoke(main, ["ensemble", str(members[0]), str(moved), "-o", str(tmp_path / "out"), "--no-evaluate"])
    assert cli.exit_code == 2 and "another split" in cli.stderr


def test_members_trained_on_other_labels_are_refused(members, tmp_path):
    """Round 23b: a member trained on the same ids, split and settings but doubled labels was averaged with the
    others without a word (each member's model.json records its labels' digests per split part)."""
    relabelled = shutil.copytree(members[1], tmp_path / "relabelled", ignore=shutil.ignore_patterns("run"))
    meta = json.loads((relabelled / "model.json").read_text())
    digests = meta["metadata"]["dataset"]["label_digests"]
    assert set(digests) == {"train", "val", "test"}
    digests["train"] = "0" * len(digests["train"])
    (relabelled / "model.json").write_text(json.dumps(meta))
    with pytest.raises(EnsembleError, match="trained on other labels than member 0 .*: its train targets differ"):
        assemble_ensemble([members[0], relabelled], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_ensemble_folder_is_refused(ensemble, tmp_path):
    copy = shutil.copytree(ensemble, tmp_path / "copy")
    meta = json.loads((copy / "model.json").read_text())
    meta["ensemble"]["n_members"] = 5
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="n_members is 5"):
        load_model_folder(copy)
    meta["ensemble"]["n_members"] = 3
    meta["format_version"] = 1
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format_version 2"):
        load_model_folder(copy)


# -- adapters agree ---------------------------------------------------------------------------


def test_predictor_calculator_featurizer_agree(ensemble):
    pytest.importorskip("matminer")
    from cgcnn_ase.integrations.matminer import CGCNNFeaturizer

    crystals = _crystals()[:6]
    # batches of one, as the calculator runs: vpa is ~30 Å^3, so float32 batch-composition noise alone is ~1e-6
    result = CGCNNPredictor.from_checkpoint(ensemble, device="cpu").predict(crystals, batch_size=1)
    calc = CGCNNCalculator(str(ensemble))
    assert {"vpa", "vpa_std", "vpa_domain_percentile"} <= set(calc.result_names)
    assert calc.units["vpa_std"] == "Å^3/atom"
    for k, atoms in enumerate(crystals):
        atoms = atoms.copy()
        atoms.calc = calc
        assert calc.get_property("vpa", atoms) == pytest.approx(result.values[k], abs=1e-6)
        assert calc.get_property("vpa_std", atoms) == pytest.approx(result.std[k], abs=1e-6)
        assert calc.get_property("vpa_domain_percentile", atoms) == pytest.approx(result.domain_percentile[k], abs=1e-6)
    featurizer = CGCNNFeaturizer([str(ensemble)], domain=True, batch_size=1)
    assert featurizer.feature_labels() == ["vpa (Å^3/atom)", "vpa_std (Å^3/atom)", "vpa_domain_percentile (percent)"]
    rows = np.array(featurizer.featurize_many(crystals, pbar=False))
    np.testing.assert_allclose(rows[:, 0], result.values, atol=1e-6)
    np.testing.assert_allclose(rows[:, 1], result.std, atol=1e-6)
    np.testing.assert_allclose(rows[:, 2], result.domain_percentile, atol=1e-6)


# -- domain signal and calibration ------------------------------------------------------------


def test_domain_percentile_low_in_training_set_high_far_outside(ensemble, test_records):
    predictor = CGCNNPredictor.from_checkpoint(ensemble, device="cpu")
    train = predictor.predict(test_records["train"].records)
    assert np.all(train.domain_distance < 0.05)  # every training crystal is a stored centre here (float16)
    assert np.all(train.domain_percentile < 5.0)
    val = predictor.predict(test_records["val"].records)
    assert val.domain_percentile.max() == pytest.approx(100.0, abs=1e-4)  # the farthest validation crystal (float rounding)
    assert val.domain_percentile.min() > 0.0
    # uranium and plutonium at 2 Å in a 2-atom cell, and xenon gas at 9 Å: never seen, nothing like training
    weird = [
        Atoms("UPu", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=np.eye(3) * 2.3, pbc=True),
        Atoms("Xe", cell=np.eye(3) * 9.0, pbc=True),
    ]
    far = predictor.predict(weird, on_sparse="ignore")
    assert np.all(far.domain_percentile == 100.0)
    assert np.all(far.domain_distance > val.domain_distance.max())
    assert not far.in_domain().any() and far.unseen_elements == [["U", "Pu"], ["Xe"]]
    assert train.in_domain(max_percentile=50).all()


def test_calibration_makes_validation_z_scores_unit_rms(ensemble, test_records):
    val = test_records["val"]
    result = CGCNNPredictor.from_checkpoint(ensemble, device="cpu").predict(val.records)
    z = (result.values - val.targets) / result.std
    assert np.sqrt(np.mean(z**2)) == pytest.approx(1.0, rel=1e-6)
    raw = (result.values - val.targets) / result.std_raw
    assert result.std_scale == pytest.approx(np.sqrt(np.mean(raw**2)), rel=1e-9)


def test_evaluate_model_reports_uncertainty(ensemble, data, tmp_path):
    report = evaluate_model(ensemble, str(data), split="test", out_dir=tmp_path / "eval")
    unc = report["uncertainty"]
    meta = json.loads((ensemble / "model.json").read_text())
    assert report["metrics"]["mae"] == pytest.approx(meta["metadata"]["test_metrics"]["mae"], rel=1e-6)
    assert unc["ensemble_vs_members"]["ensemble"] == pytest.approx(report["metrics"]["mae"], rel=1e-9)
    stored = [m["test_metrics"]["mae"] for m in meta["ensemble"]["members"]]
    np.testing.assert_allclose(unc["ensemble_vs_members"]["members"], stored, rtol=1e-5)
    assert unc["calibrated"]["within_2std"] == pytest.approx(
        meta["metadata"]["uncertainty"]["test"]["calibrated"]["within_2std"]
    )
    assert {"error_vs_std.png", "calibration.png", "parity.png", "predictions.csv"} <= {
        p.name for p in (tmp_path / "eval").iterdir()
    }
    df = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert "std vpa (Å^3/atom)" in df.columns and "domain_percentile" in df.columns


def test_cli_ensemble_and_evaluate(members, data, tmp_path):
    from cgcnn_ase.cli import main

    out = tmp_path / "cli-ens"
    result = CliRunner().invoke(
        main,
        [
            "ensemble",
            *map(str, members[:2]),
            "-o",
            str(out),
            "--dataset",
            str(data),
            "--no-evaluate",
            "--alias",
            "vpa2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    meta = json.loads((out / "model.json").read_text())
    assert meta["ensemble"]["n_members"] == 2 and meta["ensemble"]["calibration"] is None
    assert meta["metadata"]["aliases"] == ["vpa2"] and "domain" in meta
    assert "Not measured yet" in (out / "README.md").read_text()
    result = CliRunner().invoke(main, ["evaluate", str(out), str(data), "-o", str(tmp_path / "evaluation")])
    assert result.exit_code == 0, result.output
    assert "ensemble_vs_members" in json.loads(result.stdout)["uncertainty"]  # piped: the report as JSON
    report = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    table = CliRunner().invoke(main, ["evaluate", str(out), str(data), "-o", str(tmp_path / "ev2"), "--format", "table"])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()  # a summary a person reads, not ~300 lines of JSON
    assert len(lines) < 12 and lines[0].startswith(f"cli-ens, test split: {report['n']} crystals (0 failed)")
    assert f"{report['metrics']['mae']:.4g}" in lines[1] and lines[1].split()[0] == "mae"
    vs = report["uncertainty"]["ensemble_vs_members"]
    assert any(line.startswith("ensemble of 2: mae") and f"{vs['member_mean']:.4g}" in line for line in lines)
    assert lines[-1].endswith(str(tmp_path / "ev2" / "metrics.json"))
    bad = CliRunner().invoke(main, ["ensemble", str(members[0]), "-o", str(tmp_path / "x"), "--no-evaluate"])
    assert bad.exit_code == 2 and "at least 2 MEMBERS" in bad.stderr  # a usage error (was 3: model not loadable)
    onto = CliRunner().invoke(main, ["ensemble", *map(str, members[:2]), "-o", str(members[1]), "--no-evaluate"])
    assert onto.exit_code == 2 and "must not be one of its members" in onto.stderr
    # round 11: an existing ensemble was replaced in silence (exit 0), its calibration lost
    before = (out / "model.json").read_text()
    again = CliRunner().invoke(main, ["ensemble", *map(str, members[:2]), "-o", str(out), "--dataset", str(data),
                                      "--no-evaluate"])  # fmt: skip
    assert again.exit_code == 2 and "already holds a model" in again.stderr and "--overwrite" in again.stderr
    assert (out / "model.json").read_text() == before
    replaced = CliRunner().invoke(main, ["ensemble", *map(str, members[:2]), "-o", str(out), "--dataset", str(data),
                                         "--no-evaluate", "--overwrite"])  # fmt: skip
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "model.json").read_text())["metadata"]["aliases"] != ["vpa2"]  # member 0's, as asked
    # the alias names no installed model, so the card loads the ensemble by its folder, and says why
    card = (out / "README.md").read_text()
    assert 'from_pretrained("path/to/this/folder")' in card


# -- the domain summary on its own ------------------------------------------------------------


def test_domain_summary_build_query_and_file(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(3000, 8)) * np.arange(1, 9)
    val = rng.normal(size=(500, 8)) * np.arange(1, 9)
    summary = DomainSummary.build(train, val, max_centers=400)
    assert summary.centers.shape == (400, 8) and summary.centers.dtype == np.float16
    assert len(summary.reference) == 500 and np.all(np.diff(summary.reference) >= 0)
    pct = summary.percentiles(summary.distances(val))
    assert abs(np.median(pct) - 50) < 5  # the reference crystals are uniform against themselves
    far = summary.distances(np.full((1, 8), 50.0) * np.arange(1, 9))
    assert summary.percentiles(far)[0] == 100.0
    assert np.isnan(summary.distances(np.full((1, 8), np.nan))[0])
    path = summary.save(tmp_path / "domain.safetensors")
    back = DomainSummary.load(path)
    np.testing.assert_array_equal(back.centers, summary.centers)
    assert back.info == summary.info
    big = DomainSummary.build(rng.normal(size=(5000, 128)), val[:, :1].repeat(128, 1))
    assert big.centers.nbytes <= 400_000  # capped by bytes for wide embeddings
    with pytest.raises(ValueError, match="width"):
        DomainSummary.build(train, val[:, :3])


def test_kcenter_covers_outliers():
    points = np.vstack([np.zeros((100, 2)), [[10.0, 10.0]]])
    picked = kcenter_subset(points, 2, seed=0)
    assert 100 in picked.tolist()

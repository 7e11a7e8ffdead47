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
from .test_training import dataset_csv  # noqa: F401 - the tiny 12-crystal dataset fixture


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

    two = tmp_path / ("a_folder_name_long_enough_that_the_path_passes_eighty_characters" * 2) / "two.extxyz"
    two.parent.mkdir()  # a path of over 80 characters was cut to 80 in the message (found under pytest-xdist)
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


# -- 29a: an HPC and web-service integrator ---------------------------------------------------------------------


def test_library_code_enters_warning_blocks_through_the_thread_safe_one():
    """``warnings.catch_warnings`` saves and restores the process-wide filters: used directly, overlapping blocks of
    two threads leave one's temporary filter behind (see the next test)."""
    offenders = [str(path.relative_to(REPO)) for path in (REPO / "cgcnn_ase").rglob("*.py")
                 if path.name != "warning_blocks.py" and "warnings.catch_warnings(" in path.read_text()]  # fmt: skip
    assert not offenders


def test_threads_sharing_a_predictor_leave_the_warning_filters_alone():
    """One predictor shared by a thread pool (POSCAR files, read through ASE in an "ignore" block) left an "ignore"
    filter for every warning in the process; calculators in threads lost a GeometryWarning that the user's filter
    turns into an error (another thread's block recorded it)."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from cgcnn_ase import CGCNNCalculator
    from cgcnn_ase.errors import GeometryWarning

    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1)
    poscar = str(REPO / "examples" / "NaCl.POSCAR")
    reference = predictor.predict(poscar).values[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)
        before = list(warnings.filters)
        with ThreadPoolExecutor(6) as pool:
            values = list(pool.map(lambda _: predictor.predict(poscar).values[0], range(150)))
        assert values == [reference] * 150
        assert warnings.filters == before

        def energy(k: int) -> str:
            atoms = bulk("NaCl", "rocksalt", a=11.28 if k % 3 == 0 else 5.64)  # every third: stretched bonds
            atoms.calc = CGCNNCalculator(predictor)
            try:
                atoms.get_potential_energy()
            except GeometryWarning:
                return "raised"
            return "ok" if k % 3 else "not raised"

        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(energy, range(60)))
        assert outcomes == ["raised" if k % 3 == 0 else "ok" for k in range(60)]
        assert warnings.filters == before


def test_closed_standard_streams_are_no_internal_error(monkeypatch, tmp_path):
    """A process started with stdout, stderr or stdin closed (a daemon, cron, pythonw) has ``sys.stdout = None``:
    ``isatty`` ended predict(...) of 100 structures, and the CLI exited 4 ("internal error") even with -o."""
    import sys

    import click

    from cgcnn_ase.cli import main
    from cgcnn_ase.progress import is_terminal, progress_bar, shown_by_default

    class Closed:
        def isatty(self):
            raise ValueError("I/O operation on closed file")

    assert not is_terminal(None) and not is_terminal(Closed())
    monkeypatch.setattr(sys, "stderr", None)
    assert not shown_by_default() and type(progress_bar([1], show=None)).__name__ == "_NoBar"
    assert type(progress_bar([1], show=True)).__name__ == "_NoBar"  # round 30a: asked for, with nowhere to draw it
    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1)
    assert len(predictor.predict([bulk("Cu")] * 100).values) == 100
    notebook = type("OutStream", (), {"__module__": "ipykernel.iostream", "isatty": lambda self: False})
    monkeypatch.setattr(sys, "stderr", notebook())  # a Jupyter kernel's stream: shown there (round 29d)
    assert shown_by_default()
    monkeypatch.undo()
    poscar = str(REPO / "examples" / "NaCl.POSCAR")
    for stream, words, message in (("stdout", [poscar], "standard output is closed: give -o FILE"),
                                   ("stdin", ["-"], "stdin is closed")):  # fmt: skip
        with monkeypatch.context() as patched:
            patched.setattr(sys, stream, None)
            with pytest.raises(click.UsageError, match=message):  # exit 2, as click's usage errors
                main.main(["predict", *words, "-m", "formation_energy", "--members", "1"], standalone_mode=False)


def test_sigterm_stops_a_command_as_ctrl_c_does_and_pool_workers_stay_quiet():
    """SIGTERM to `cgcnn-ase predict --workers 2` (a batch job's time limit) left its workers running, printing
    BrokenPipeError tracebacks; Ctrl-C printed each worker's KeyboardInterrupt traceback. The CLI now stops as for
    Ctrl-C (exit 143, the resume hint), and pool workers ignore SIGINT and end quietly on SIGTERM."""
    import multiprocessing
    import signal

    from cgcnn_ase.cli import _guarded
    from cgcnn_ase.data.datasets import quiet_worker, worker_start_method

    def predict(**_):  # a command that receives SIGTERM while it runs
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    with pytest.raises(SystemExit) as stopped:
        _guarded(predict)()
    assert stopped.value.code == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored
    with multiprocessing.get_context(worker_start_method()).Pool(1, initializer=quiet_worker) as pool:
        assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN
        assert pool.apply(signal.getsignal, (signal.SIGTERM,)) == signal.SIG_DFL


# -- 29d: figures -----------------------------------------------------------------------------------------------


def test_site_maps_use_a_linear_colour_scale_symmetric_about_zero():
    """Values -0.01..0.43 eV: a two-slope scale gave -0.01 (zero within its seed spread) the deepest blue and
    crowded every colour-bar tick into the red half. The scale is now linear and symmetric about 0."""
    import matplotlib

    from cgcnn_ase.analysis.site_maps import colour_range

    assert colour_range(np.array([-0.0091, 0.04, 0.43])) == (-0.43, 0.43)
    assert colour_range(np.array([-2.0, 0.5])) == (-2.0, 2.0)
    assert colour_range(np.array([0.1, 0.5])) == (0.1, 0.5)  # one sign: the data's own range
    assert colour_range(np.array([0.3]), vmin=None, vmax=None) == (-0.2, 0.8)  # one value: widened to a range
    lo, hi = colour_range(np.array([-0.0091, 0.43]))
    r, g, b, _ = matplotlib.colormaps["coolwarm"]((-0.0091 - lo) / (hi - lo))
    assert min(r, g, b) > 0.8  # near the map's pale centre, not its deepest blue


def test_results_name_their_interval_and_summaries_promise_only_what_metrics_json_holds():
    """The repr listed "lower" without "upper" or the coverage, and the frame lost the coverage; the evaluate summary
    promised calibration curves and error by domain percentile in metrics.json for a single network, whose report
    has neither; an MAE of 0.10005 read "0.1"."""
    from cgcnn_ase.cli import _evaluation_summary
    from cgcnn_ase.models.cards import fmt

    predictor = CGCNNPredictor.from_pretrained("bulk_modulus")
    result = predictor.predict(bulk("Cu"), coverage=0.9)
    assert "lower/upper (90% interval)" in repr(result)
    assert result.to_dataframe().attrs["coverage"] == 0.9
    assert "coverage" not in predictor.predict(bulk("Cu")).to_dataframe().attrs
    report = {"model": "tiny", "split": "test", "n": 3, "n_failed": 0, "property": "formation_energy",
              "units": "eV/atom", "task": "regression", "metrics": {"mae": 0.10005, "rmse": 0.1289, "r2": 0.5, "n": 3},
              "files": {"metrics": "out/metrics.json"}}  # fmt: skip
    lines = _evaluation_summary(report)
    assert lines[-1] == "the whole report: out/metrics.json" and any("0.1001" in line for line in lines), lines
    report["uncertainty"] = {"calibration_curve": [0.5], "domain": {"percentile_bins": []}}
    assert _evaluation_summary(report)[-1].startswith("the whole report (calibration curves, error by domain")
    assert fmt(0.10005) == "0.1001" and fmt(0.04) == "0.04000" and fmt(float("nan")) == "n/a"


# -- 29e: a small, messy dataset fine-tuned -------------------------------------------------------------------------


def test_messy_label_tables_get_the_right_advice(tmp_path):
    """'101.0 GPa' labels got the advice to build a 0/1 target from an expression; a semicolon-separated table's merged
    header was offered as the structure column; a header-less table's first row was listed as column names."""
    from cgcnn_ase.data.datasets import DatasetSpec, _text_label_hint, load_table
    from cgcnn_ase.errors import DatasetError

    frame = pd.DataFrame({"id": ["a", "b", "c"], "K_VRH": ["101.0 GPa", "61 GPa", "1e2 GPa"]})
    hint = _text_label_hint(frame, "K_VRH", np.array([True, True, True]))
    assert "'101.0 GPa' carries a unit: write plain numbers (101.0)" in hint and "expression" not in hint
    labels = pd.DataFrame({"id": ["a", "b"], "kind": ["metal", "insulator"]})
    assert "give an expression as the target" in _text_label_hint(labels, "kind", np.array([True, True]))
    cases = {"material_id;K_VRH;file\nmp-1;61,0;x.cif\n": "looks semicolon-separated",
             "material_id, K_VRH, file\nmp-1, 61.0, x.cif\n": "remove the spaces after the commas",
             "mp-1,61.0,x.cif\nmp-2,70.0,y.cif\n": "first row looks like data, not a header"}  # fmt: skip
    for k, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"t{k}.csv"
        path.write_text(text)
        with pytest.raises(DatasetError, match=message):
            load_table(DatasetSpec(path=str(path), target="K_VRH", structure_column="file"))


def test_undefined_classification_metrics_are_not_zero():
    """A test split without a metal gave 'precision / recall (class 1) | 0 / 0' on the card: undefined, so NaN
    ("n/a"), and training warns that the split holds one class only."""
    from types import SimpleNamespace

    from cgcnn_ase.analysis.metrics import classification_metrics
    from cgcnn_ase.train.data import one_class_warning

    metrics = classification_metrics(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3]))
    assert np.isnan(metrics["precision"]["1"]) and np.isnan(metrics["recall"]["1"]) and metrics["recall"]["0"] == 1.0
    targets = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    parts = {"train": np.array([0, 1]), "val": np.array([2, 3]), "test": np.array([4, 5])}
    config = SimpleNamespace(task="classification")
    assert "the test split's 2 crystals are all of class 0" in one_class_warning(config, targets, parts)
    assert one_class_warning(config, targets, {**parts, "test": np.array([0, 5])}) is None
    assert one_class_warning(SimpleNamespace(task="regression"), targets, parts) is None


def test_a_kept_output_layer_of_another_property_is_named_as_such(dataset_csv, tmp_path):  # noqa: F811
    """finetune.output_layer=keep from a formation-energy base for bulk moduli warned "(same property and units)",
    with the base's eV/atom statistics labelled GPa."""
    from cgcnn_ase.models.folder import save_model_folder
    from cgcnn_ase.train.config import FineTuneConfig
    from cgcnn_ase.train.trainer import Trainer

    from .conftest import random_model
    from .test_finetune import ft_config

    base = save_model_folder(tmp_path / "base", random_model(seed=3))  # formation_energy, -1.0 ± 0.5 eV/atom
    config = ft_config(dataset_csv, tmp_path / "kept", base, property="bulk_modulus", units="GPa",
                       finetune=FineTuneConfig(output_layer="keep"))  # fmt: skip
    with pytest.warns(UserWarning, match=r"a model of formation_energy \(eV/atom\), is kept for bulk_modulus \(GPa\) as "
                                         r"finetune.output_layer=keep asks: .*\(mean -1, std 0.5 eV/atom\) to this run's "
                                         r"labels \(mean [\d.]+, std [\d.]+ GPa\)") as caught:
        Trainer(config, progress=False).setup()
    assert not [w for w in caught if "same property and units" in str(w.message)]


def test_small_messy_dataset_details(dataset_csv, tmp_path):  # noqa: F811
    """head_only silently ignored body_lr and freeze_convs; a spreadsheet's trailing empty rows ended the run ("rows have
    no id"); ids written with their .cif, or in another case, got only "CIF file ... is missing"."""
    from cgcnn_ase.data.datasets import DatasetSpec, load_dataset
    from cgcnn_ase.train.config import FineTuneConfig

    from .test_finetune import ft_config

    with pytest.warns(UserWarning, match=r"finetune.body_lr \(0.0001: head_only freezes the embedding and every "
                                         r"convolution\); finetune.freeze_convs \(2: head_only"):
        ft_config(dataset_csv, tmp_path, "formation_energy",
                  finetune=FineTuneConfig(head_only=True, body_lr=1e-4, freeze_convs=2))  # fmt: skip
    folder = tmp_path / "cifs"
    folder.mkdir()
    from pymatgen.io.cif import CifWriter

    for name in ("mp-1", "MP-2"):
        (folder / f"{name}.cif").write_text(str(CifWriter(AseAtomsAdaptor.get_structure(bulk("NaCl", "rocksalt", a=5.64)))))
    (folder / "id_prop.csv").write_text("mp-1,1.0\nmp-2,2.0\n,\n,\n")  # trailing empty rows, as a spreadsheet saves
    with pytest.warns(UserWarning, match="MP-2.cif is there: ids and file names must match in case"):
        _, targets, ids = load_dataset(DatasetSpec(path=str(folder), target="target"))
    assert ids == ["mp-1"] and list(targets) == [1.0]
    (folder / "id_prop.csv").write_text("mp-1.cif,1.0\nMP-2,2.0\n")
    with pytest.warns(UserWarning, match=r"the id already ends in .cif: id_prop.csv names each CIF without it, e.g. mp-1"):
        load_dataset(DatasetSpec(path=str(folder), target="target"))


def test_a_label_far_from_all_others_is_named():
    """One 10^6 GPa typo among 200 moduli trained silently (normaliser mean 2.4e4, test MAE 2.2e4 GPa)."""
    from cgcnn_ase.train.data import outlier_labels_problem

    moduli = np.random.default_rng(0).lognormal(np.log(100.0), 0.6, 200)  # GPa, heavy-tailed as real moduli
    ids = [f"mp-{k}" for k in range(200)]
    assert outlier_labels_problem(moduli, ids, "GPa") is None
    moduli[17] = 1e6
    message = outlier_labels_problem(moduli, ids, "GPa")
    assert message.startswith("1 label(s) lie more than 50 deviations") and "mp-17: 1e+06" in message
    assert outlier_labels_problem(np.zeros(20), ids[:20], "eV") is None  # no spread: another warning's case
    magnetisation = np.zeros(200)  # round 30a: mostly 0 with a real tail (74% of MP crystals are not magnetic)
    magnetisation[::4] = np.random.default_rng(1).uniform(0.5, 40.0, 50)
    assert outlier_labels_problem(magnetisation + 1e-4 * np.arange(200), ids, "mu_B") is None


def test_figures_name_their_classes_axes_and_bins(tmp_path, monkeypatch):
    """ROC and reliability axes did not say which class is positive; the hexbin parity plot's log colour bar had one
    labelled tick (10); the learning curve left out the validation loss and did not say which axis a curve uses."""
    from cgcnn_ase.analysis import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    y = np.array([0, 1, 0, 1, 1, 0] * 5)
    p = np.clip(y * 0.7 + np.linspace(0, 0.3, 30), 0, 1)
    plots.roc_plot(y, p, tmp_path / "roc.png", positive="metal")
    plots.reliability_plot(y, p, tmp_path / "rel.png", positive="metal")
    assert figures[0].axes[0].get_xlabel() == "false positive rate (positive: metal)"
    assert figures[1].axes[0].get_ylabel() == "observed frequency of metal"
    rng = np.random.default_rng(0)
    true = rng.normal(0, 1, 3000)
    plots.parity_plot(true, true + rng.normal(0, 0.05, 3000), tmp_path / "parity.png", units="eV")
    bar = figures[2].axes[1]  # the colour bar's axes
    assert {"1", "2", "5", "10"} <= {t.get_text() for t in bar.get_yticklabels()}
    metrics = tmp_path / "metrics.csv"
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.3], "val_loss": [1.2, 0.7, 0.6],
                  "val_mae": [0.3, 0.2, 0.15], "lr": [1e-3] * 3, "best": [1, 1, 1]}).to_csv(metrics, index=False)  # fmt: skip
    plots.learning_curve_plot(metrics, tmp_path / "lc.png", units="eV")
    labels = [t.get_text() for t in figures[3].axes[0].get_legend().get_texts()]
    assert "validation loss (left axis)" in labels and "validation MAE (right axis)" in labels


def test_evaluate_scopes_the_base_models_overlap_to_what_it_scores():
    """Scoring 7 of a fine-tuned model's 30 test crystals repeated '22 of the 30 test crystals ...' as if it held
    for these 7."""
    from cgcnn_ase.analysis.evaluation import _base_had_seen

    metadata = {"finetune": {"base_overlap": {"test": {"n": 30, "base_train": 20, "base_val": 2}}}}
    assert "(recorded at fine-tuning)" in _base_had_seen(metadata, "test", 30)
    note = _base_had_seen(metadata, "test", 7)
    assert note.startswith("22 of the 30 test crystals") and "this evaluation scores 7 of them, so it may hold fewer" in note
    assert _base_had_seen(metadata, "val", 7) is None


# -- 30b: units and physical consistency -------------------------------------------------------------------------


def test_two_energy_models_say_whose_energy_the_calculator_gives():
    """energy was -17.97 eV (Materials Project scale) or -0.25 eV (Castelli's) for SrTiO3 by the order of the list,
    without a word."""
    from ase.io import read

    from cgcnn_ase import CGCNNCalculator

    atoms = read(REPO / "examples" / "SrTiO3.cif")
    with pytest.warns(UserWarning, match=r"energy, free_energy and energies come from 'perovskite_formation_energy-"
                                         r"castelli_cmr-v1', the first eV/atom model given; 'formation_energy-"):
        atoms.calc = CGCNNCalculator(["perovskite_formation_energy", "formation_energy"], members=1)
    per_atom = atoms.calc.get_property("perovskite_formation_energy", atoms)
    assert atoms.get_potential_energy() == pytest.approx(per_atom * len(atoms), rel=1e-6)


def test_the_dask_partition_function_warns_that_its_band_gap_is_ungated():
    """predict_partition, called on its own, gave 0.26 eV for metals under 'band_gap (eV)' without the warning
    predict_dataframe gives."""
    pytest.importorskip("dask")
    from cgcnn_ase.integrations.dask import predict_partition

    frame = pd.DataFrame({"cif": [(REPO / "examples" / "SrTiO3.cif").read_text()]})
    with pytest.warns(UserWarning, match="band_gap is the model's own value"):
        out = predict_partition(frame, ["band_gap"], column="cif")
    assert np.isfinite(out["band_gap (eV)"]).all()


def test_sigterm_in_train_and_warnings_made_errors_get_their_own_exits(monkeypatch):
    """train exited 130 "interrupted" on SIGTERM (predict gave 143); PYTHONWARNINGS=error turned a VacuumWarning into
    "internal error", exit 4."""
    import sys
    import warnings
    from types import SimpleNamespace

    from cgcnn_ase.cli import _guarded, _interrupted_training
    from cgcnn_ase.errors import TerminatedError, VacuumWarning

    run = SimpleNamespace(resume=False, work_path=REPO / "no-such-work", epochs=3)
    with pytest.raises(SystemExit) as stopped:
        try:
            raise TerminatedError
        except KeyboardInterrupt:
            _interrupted_training(run)
    assert stopped.value.code == 143
    monkeypatch.setattr(sys, "warnoptions", ["error"])

    def predict(**_):
        warnings.warn("slab.cif: the atoms leave an empty gap 25.0 Å wide", VacuumWarning, stacklevel=1)

    with pytest.raises(SystemExit) as stopped:
        _guarded(predict)()
    assert stopped.value.code == 1


def test_one_signed_site_maps_use_a_sequential_colour_map(tmp_path, monkeypatch):
    """All-positive A-site energies (0.13-0.45) in coolwarm centred on their middle read as negative in blue."""
    from matplotlib.figure import Figure

    from cgcnn_ase.analysis.site_maps import periodic_table_heatmap

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: drawn.append(fig))
    periodic_table_heatmap({"Sr": 0.13, "Ba": 0.45}, tmp_path / "a.png")
    periodic_table_heatmap({"Ti": -0.01, "Zr": 0.43}, tmp_path / "b.png")
    periodic_table_heatmap({"Sr": 0.13, "Ba": 0.45}, tmp_path / "c.png", cmap="magma")
    names = [fig.axes[-1].collections[-1].cmap.name for fig in drawn]  # the colour bar's mesh
    assert names == ["viridis", "coolwarm", "magma"]


def test_the_shipped_models_own_labels_are_not_called_far_from_the_others():
    """The outlier check (50 scaled MADs, at most 1% of the labels) flags none of the shipped models' targets: their
    farthest labels lie within 19 (the band gaps of non-metals)."""
    from cgcnn_ase.train.data import OUTLIER_MADS, outlier_labels_problem

    from .conftest import SHARED, require_shared

    require_shared(SHARED / "data")
    columns = {"mp_cgcnn46k_kdmsit": ["formation_energy_per_atom", "band_gap", "efermi"],
               "mp_elastic3k_kdmsit": ["K_VRH", "G_VRH", "poisson_ratio"]}  # fmt: skip
    for name, targets in columns.items():
        table = pd.read_csv(SHARED / "data" / name / "data.csv.gz", usecols=targets)
        for target in targets:
            values = table[target].to_numpy(float)
            values = values[np.isfinite(values)]
            values = values[values > 0] if target == "band_gap" else values  # the model trains on non-metals
            values = np.log10(values[values > 0]) if target.endswith("_VRH") else values  # log10(GPa)
            ids = [str(k) for k in range(len(values))]
            assert outlier_labels_problem(values, ids, "") is None, target
            median = np.median(values)
            assert np.max(np.abs(values - median)) / (1.4826 * np.median(np.abs(values - median))) < min(20, OUTLIER_MADS)

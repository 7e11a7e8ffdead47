"""Training CGCNN models: the :class:`Trainer` of one run, and :func:`train_from_config`.

>>> from cgcnn_ase.train.config import load_config
>>> from cgcnn_ase.train.trainer import train_from_config
>>> config = load_config("configs/formation_energy.yaml", ["epochs=5", "optim.lr=0.005"])  # doctest: +SKIP
>>> folder = train_from_config(config)                                                      # doctest: +SKIP

What one run does:

1. Reads the dataset table (:mod:`cgcnn_ase.data.datasets`) and fetches the crystal graphs
   from the on-disk graph cache (:mod:`cgcnn_ase.train.cache`); only structures missing from
   the cache are parsed and turned into graphs (in a process pool), and then added to it.
   Re-running never re-parses CIFs.
2. Splits the usable crystals (seeded; ``split.json``) and normalises the target with the
   training split's mean and standard deviation (:mod:`cgcnn_ase.train.data`).
3. Trains with per-epoch validation, best-model selection on the validation metric, early
   stopping and an atomic ``checkpoint_last.pt`` after every epoch in the work folder
   (``<output>/run`` unless ``work_dir`` is set). Calling :func:`train_from_config` again
   with the same settings resumes from it (``epochs`` may be raised).
4. Scores the best model on the test split (never used for selection) and writes the
   model folder (:mod:`cgcnn_ase.train.export`): ``model.json``, ``weights.safetensors``,
   ``atom_init.json``, ``README.md`` (model card), ``config.yaml``, ``split.json``,
   ``metrics.csv``, ``learning_curve.png`` and ``parity.png`` (regression) or ``roc.png``
   (classification).

The settings are :class:`~cgcnn_ase.train.config.TrainConfig`; the pieces of a training step
(batches, optimiser, schedule, loss, compiled forward pass) are in :mod:`cgcnn_ase.train.steps`;
data-parallel runs use :mod:`cgcnn_ase.train.ddp`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cgcnn_ase.data.splits import twins_across_split, twins_warning
from cgcnn_ase.errors import ConfigError, TrainingError
from cgcnn_ase.graph.element_table import ElementTable
from cgcnn_ase.models.folder import CHECKPOINT_LAST
from cgcnn_ase.models.registry import resolve_device
from cgcnn_ase.nn.network import CrystalGraphConvNet
from cgcnn_ase.nn.threads import torch_threads
from cgcnn_ase.train import ddp as parallel_training
from cgcnn_ase.train.cache import GraphBatcher, to_device
from cgcnn_ase.train.config import TrainConfig, changed_settings, config_fingerprint, fingerprinted_settings
from cgcnn_ase.train.config_sections import FineTuneConfig
from cgcnn_ase.train.data import (
    copies_of_crystals,
    data_fingerprint,
    one_class_warning,
    prepare_data,
    resolve_split,
    split_positions,
    target_normalizer,
)
from cgcnn_ase.train.export import TrainingResult, check_output_folder, write_metrics_csv, write_model_folder
from cgcnn_ase.train.finetune import (
    FineTuneBase,
    FineTuneState,
    base_overlap,
    finetune_all_members,
    finetune_metadata,
    initialise_from_base,
    load_base,
    overlap_warning,
    parameter_groups,
    resolve_config,
    training_mode,
)
from cgcnn_ase.train.steps import (
    TrainingForward,
    batch_chunks,
    loss_function,
    make_optimizer,
    make_scheduler,
    predict_store,
    restore_scheduler_state,
    scheduler_state,
    split_metrics,
    steps_per_epoch,
)

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_LAST", "Trainer", "network_architecture", "train_from_config"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cgcnn_ase.training/1"


def network_architecture(config: TrainConfig, elements: ElementTable) -> dict[str, Any]:
    """Keyword arguments of :class:`~cgcnn_ase.nn.network.CrystalGraphConvNet` for ``config``
    (``model.json``'s ``architecture``)."""
    return dict(
        orig_atom_fea_len=elements.n_features,
        nbr_fea_len=config.graph.n_gaussians,
        atom_fea_len=config.model.atom_fea_len,
        n_conv=config.model.n_conv,
        h_fea_len=config.model.h_fea_len,
        n_h=config.model.n_h,
        task=config.task,
        readout=config.model.readout,
        conv=config.model.conv,
        dropout=config.model.dropout,
    )


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    """One training run of ``config``, in one process or as one rank of a data-parallel run.

    :meth:`fit` runs it: :meth:`setup` (data, split, normaliser, network, optimiser and
    schedule, then :meth:`resume` from the work folder's checkpoint when there is one), one
    :meth:`run_epoch` after another (:meth:`train_epoch`, :meth:`validate`, model selection,
    :meth:`save_checkpoint`) until ``epochs``, early stopping or the time limit, then
    :meth:`export` (the model folder). The state of the run (network, optimiser, history,
    best epoch, ...) lives on the instance.

    With ``config.init_from``, the run is a fine-tuning run (:mod:`cgcnn_ase.train.finetune`):
    the base model is loaded here and ``self.config`` is the configuration resolved with its
    architecture, graph settings and element table.

    Args:
        config: the run's settings (validated here).
        progress: show a progress bar (on rank 0 only).
        ddp: this process's place in a data-parallel run (from
            :func:`cgcnn_ase.train.ddp.start`), or ``None`` for a single process.
    """

    def __init__(
        self, config: TrainConfig, *, progress: bool = True, ddp: parallel_training.DistributedRun | None = None
    ) -> None:
        config.validate()
        self.base: FineTuneBase | None = None
        self.finetune_state: FineTuneState | None = None
        self.base_overlap: dict[str, Any] | None = None
        self.twins: dict[str, Any] | None = None  # one crystal under several ids (copies_of_crystals, twins_across_split)
        changed = sorted(k for k, v in config.finetune if v != getattr(FineTuneConfig(), k))
        if config.init_from is None and changed:
            raise ConfigError(f"finetune settings {changed} need init_from (the model to start from)")
        if config.init_from is not None:
            self.base = load_base(config)
            config = resolve_config(config, self.base)
        self.config = config
        self.ddp = ddp
        self.is_main = ddp is None or ddp.is_main  # the process that writes files
        self.progress = progress and self.is_main
        self.device = ddp.device if ddp is not None else resolve_device(config.device)
        if config.precision == "bf16" and self.device.type == "cpu" and not _cpu_has_bf16() and self.is_main:
            warnings.warn(
                "precision bf16 on a CPU without native bfloat16 (AVX512-BF16 or AMX): its arithmetic is emulated, "
                "and epochs were 3.8x slower than fp32 on such a CPU (docs/performance.md, section 4); fp32 is "
                "faster here", UserWarning, stacklevel=3,
            )  # fmt: skip
        self.min_last = 2 * ddp.world_size if ddp is not None else 2  # every process gets >= 2 crystals a batch
        self.work = config.work_path
        self.checkpoint_path = self.work / CHECKPOINT_LAST
        self.settings = fingerprinted_settings(config)  # stored in checkpoints: a refusal names what changed
        self.fingerprint = config_fingerprint(config)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "value": None, "state": None}
        self.epoch = 0  # epochs done, this session and earlier ones
        self.first_epoch = 0  # epochs done when this session started
        self.stopped_by = "epochs"  # or "patience", "time_limit": set by finished()
        self.wall_before = 0.0  # training seconds of earlier sessions
        self.session_start = time.perf_counter()
        self.threads = torch.get_num_threads()

    # -- the run ---------------------------------------------------------------------------
    def fit(self) -> Path:
        """Train (or resume, or only rewrite a finished run's model folder); returns the folder.

        Runs with ``config.threads`` torch threads and a forked random state: the caller's
        thread count and global random state are left as they were.
        """
        self.session_start = time.perf_counter()
        rng_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch_threads(self.config.threads) as threads, torch.random.fork_rng(devices=rng_devices):
            self.threads = threads
            self.setup()
            self.run_epochs()
            return self.export()

    def setup(self) -> None:
        """Prepare data, split, normaliser, network, optimiser and schedule; resume from the
        checkpoint when there is one; set up data-parallel training and the forward pass."""
        config = self.config
        if self.is_main:  # before any work: training would overwrite another model found there
            check_output_folder(config)
        with parallel_training.main_first(self.ddp):  # rank 0 builds the graph cache; the others then read it
            graph_device = self.device if self.device.type == "cuda" else None  # a GPU builds its own graphs
            self.data = prepare_data(config, progress=self.progress, graph_device=graph_device)
        self.work.mkdir(parents=True, exist_ok=True)
        self.data_fingerprint = data_fingerprint(self.data)
        checkpoint = self.load_checkpoint()
        self.split = resolve_split(config, self.work, self.data.ids, resuming=checkpoint is not None)
        self.parts = split_positions(self.split, self.data,
                                     config.split.file if config.split.file and checkpoint is None else None)  # fmt: skip
        self.twins = twins_across_split(copies_of_crystals(self.data), self.split)
        message = twins_warning(self.twins, self.split)  # a test crystal also in training: an optimistic test error
        if message and self.is_main:
            warnings.warn(message, UserWarning, stacklevel=3)
        if self.base is not None:  # a test crystal the base model trained on makes this model's test error optimistic
            self.base_overlap = base_overlap(self.base, self.data.table, self.split)
            message = overlap_warning(self.base, self.base_overlap)
            if message and self.is_main:
                warnings.warn(message, UserWarning, stacklevel=3)
        message = one_class_warning(config, self.data.targets, self.parts)
        if message and self.is_main:
            warnings.warn(message, UserWarning, stacklevel=3)
        if checkpoint is None:
            self.mean, self.std = target_normalizer(config.task, self.data.targets[self.parts["train"]])
        else:
            self.mean, self.std = checkpoint["normalizer"]["mean"], checkpoint["normalizer"]["std"]
        on_gpu = self.device.type == "cuda"
        self.batcher = GraphBatcher(
            self.data.store, self.data.elements, config.graph, merge_edges=config.model.merge_edges,
            device=self.device if on_gpu else None,  # a GPU is fed from its own memory
            # on a CPU, split-form convolutions multiply each distinct edge length of a crystal once
            distinct_distances=not on_gpu and config.model.split_matmul,
        )
        self.build_model()
        if checkpoint is not None:
            self.resume(checkpoint)
        elif self.is_main and self.ddp is None:
            self._check_kept_classes()
        self._join_processes()
        self.forward = TrainingForward(self.model, self.network, compile=config.compile)
        if self.is_main:
            self.split.save(self.work / "split.json")
        self.monitor = self._monitor()
        self.loss_fn = loss_function(config.loss_name)
        self.targets = self._training_targets()
        if checkpoint is None and self.is_main and self.ddp is None:
            self._check_batch_norm()

    def _check_kept_classes(self) -> None:
        """Warn when a classifier's kept output layer ranks this run's training labels backwards (ROC-AUC of the
        base model's probabilities below 0.3 on up to 2000 training crystals): class 1 here is likely the
        base model's class 0 (``band_gap > 0`` labels non-metals where the base's class 1 is ``metal``)."""
        if self.base is None or self.config.task != "classification" or self.finetune_state.output_layer != "keep":
            return
        from cgcnn_ase.analysis.metrics import classification_metrics

        train = np.asarray(self.parts["train"])
        sample = np.sort(np.random.default_rng(0).choice(train, size=min(len(train), 2000), replace=False))
        probabilities, _ = self.predict(sample)
        auc = classification_metrics(self.data.targets[sample], probabilities)["roc_auc"]
        if auc < 0.3:
            positive = self.base.loaded.spec.positive_class or "class 1"
            warnings.warn(f"the output layer of {self.base.init_from} is kept, but it ranks this run's training labels "
                          f"backwards (ROC-AUC {auc:.2f} on {len(sample)} training crystals): is label 1 here the base "
                          f"model's class 1 ({positive!r})? Invert data.target, or set finetune.output_layer: reset",
                          UserWarning, stacklevel=3)  # fmt: skip

    def _check_batch_norm(self) -> None:
        """Warn when a kept output layer would not start from the base model (round 31a): batch norm in training
        mode normalises by each batch's own statistics, and batches of crystals unlike the base model's training
        data (fewer atoms, other chemistry) move its predictions by far more than its error, in the first steps,
        whatever the learning rate. Measured on up to 4 batches of at least 64 training crystals; nothing is changed."""
        if (self.base is None or self.config.task != "regression" or self.finetune_state.output_layer != "keep"
                or self.finetune_state.batch_norm_frozen):  # fmt: skip
            return
        from cgcnn_ase.train.finetune import batch_norm_shift

        # batches of at least 64: the statistics of small ones are noisy, and their running average, which training
        # stores, is not (round 32a: batches of 8 of the base's own data warned)
        size = max(64, self.config.batch_size)
        order = np.random.default_rng(0).permutation(np.asarray(self.parts["train"]))[: 4 * size]
        chunks = [np.sort(order[k : k + size]) for k in range(0, len(order), size) if len(order[k : k + size]) >= 2]
        if not chunks:
            return
        batches = [self.batcher.batch(chunk).to(self.device) for chunk in chunks]
        targets = [to_device(self.targets[chunk], self.device) for chunk in chunks]
        moved, error = batch_norm_shift(self.network, batches, targets, self.finetune_state.eval_modules(self.network))
        moved, error = moved * self.std, error * self.std  # target units
        if moved > max(2 * error, 0.05 * self.std):
            units = self.config.target_units
            n = sum(len(chunk) for chunk in chunks)
            warnings.warn(f"{self.config.data.path}: the base model's batch-norm statistics do not fit this run's "
                          f"batches: normalised by each batch's own statistics, as training does, its predictions of "
                          f"{n} training crystals move by {moved:.3g} {units} on average, against its error of "
                          f"{error:.3g} {units} with its own statistics, so training starts that far from the base "
                          f"model and moves its statistics there. finetune.freeze_batch_norm: true keeps them (the "
                          f"layers' scale and shift are still trained)", UserWarning, stacklevel=3)  # fmt: skip

    def build_model(self) -> None:
        """The seeded network (fine-tuning: with the base model's weights, parts frozen), its
        optimiser and schedule, and the shuffling stream."""
        config = self.config
        torch.manual_seed(config.seed)
        self.architecture = network_architecture(config, self.data.elements)
        try:
            self.network = CrystalGraphConvNet(**self.architecture)
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from None
        if self.base is not None:
            self.finetune_state = initialise_from_base(self.network, self.base, config, mean=self.mean, std=self.std)
        self.network.to(self.device)
        self.network.set_execution(split_matmul=config.model.split_matmul)
        parameters = parameter_groups(self.network, config) if self.base is not None else self.network.parameters()
        self.optimizer = make_optimizer(config, parameters, fused=self.device.type == "cuda")
        n_train = len(self.parts["train"])
        if n_train < 2:
            raise ConfigError(f"training needs at least 2 crystals in the training split (batch normalisation); "
                              f"{config.data.path} leaves {n_train} after the split and filters")  # fmt: skip
        if self.ddp is not None and n_train < self.min_last:
            raise ConfigError(f"{self.ddp.world_size} processes need at least {self.min_last} training crystals")
        steps = steps_per_epoch(n_train, config.batch_size, self.min_last)
        self.scheduler = make_scheduler(config, self.optimizer, steps)
        self.shuffle = torch.Generator().manual_seed(config.seed)

    def run_epochs(self) -> None:
        """Train until :meth:`finished` (rank 0 decides for every process)."""
        from cgcnn_ase.progress import progress_bar

        self.first_epoch = self.epoch
        bar = progress_bar(show=bool(self.progress), total=self.config.epochs, initial=self.epoch, unit="epoch",
                           desc=self.config.model_name)  # fmt: skip
        try:
            while not parallel_training.agree(self.finished(), self.ddp):
                row = self.run_epoch()
                if self.is_main:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k in ("train_loss", self.monitor)})
                bar.update(1)
        finally:
            bar.close()
        if self.best["state"] is None:
            raise TrainingError("no epoch was trained; raise epochs")

    def run_epoch(self) -> dict[str, Any]:
        """One epoch: train, validate, select the model, step the schedule; rank 0 then saves
        the checkpoint and ``metrics.csv``. Returns the epoch's row of ``metrics.csv``."""
        self.epoch += 1
        t0 = time.perf_counter()
        row: dict[str, Any] = {"epoch": self.epoch, **self.train_epoch()}
        lr = self.optimizer.param_groups[0]["lr"]
        validation = self.validate()
        if len(self.parts["val"]) and not math.isfinite(float(validation.get("loss", 0.0))):
            raise TrainingError(  # its weights would be kept (select: last) and predict NaN
                f"epoch {self.epoch}: the validation loss became {validation['loss']} (the network gives non-finite "
                f"values); lower optim.lr (now {lr:g}) or check optim.momentum and the targets"
            )
        row.update({f"val_{k}": v for k, v in validation.items()})
        row.update({"lr": lr, "epoch_time_s": time.perf_counter() - t0})
        value = float(row.get(self.monitor, float("nan")))
        row["best"] = int(self.config.select == "last" or self.improved(value))
        if row["best"]:
            state = {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}
            self.best = {"epoch": self.epoch, "value": value, "state": state}
        self._step_schedule(value, row["train_loss"])
        self.history.append(row)
        if self.is_main:  # only rank 0 writes files
            self.save_checkpoint()
            write_metrics_csv(self.work / "metrics.csv", self.history, self.config.task)
            logger.info("epoch %d: %s", self.epoch, {k: row[k] for k in row if k != "epoch"})
        return row

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training split in shuffled batches.

        Returns:
            ``{"train_loss", "train_mae"}`` (regression; MAE in target units) or
            ``{"train_loss", "train_accuracy"}``: means over the epoch's crystals.
        """
        # frozen modules (and frozen batch norms) keep their statistics
        training_mode(self.network, self.finetune_state.eval_modules(self.network) if self.finetune_state else [])
        train = self.parts["train"]
        order = train[torch.randperm(len(train), generator=self.shuffle).numpy()]
        sum_loss, sum_err, count = 0.0, 0.0, 0
        # sums stay on the device until the epoch ends: reading them per step would make the host wait
        # for every step's kernels before queueing the next step's
        for chunk in batch_chunks(order, self.config.batch_size, self.min_last):
            loss_sum, step_err, n = self.train_step(chunk)
            sum_loss = sum_loss + loss_sum
            sum_err = sum_err + step_err
            count += n
        train_loss = float(sum_loss) / count
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"epoch {self.epoch}: the training loss became {train_loss}; lower optim.lr "
                f"(now {self.optimizer.param_groups[0]['lr']:g}) or check the targets"
            )
        key = "train_accuracy" if self.config.task == "classification" else "train_mae"
        return {"train_loss": train_loss, key: float(sum_err) / count}

    def train_step(self, chunk: np.ndarray) -> tuple[torch.Tensor | float, torch.Tensor | float, int]:
        """One optimiser step on the crystals at store positions ``chunk`` (a data-parallel
        run takes this process's rank-strided share of the global batch).

        Returns:
            ``(loss_sum, error_sum, n)`` of the (global) batch: its mean loss times ``n``, its sum of
            absolute errors in target units (regression) or of correct labels (classification), and
            its number of crystals. The sums are float64 tensors on the training device (nothing waits
            for the device), floats in a data-parallel run (summed over its processes).
        """
        scale = 1.0
        if self.ddp is not None:
            chunk, scale = parallel_training.shard(chunk, self.ddp)
        batch = self.batcher.batch(chunk).to(self.device)
        target = to_device(self.targets[chunk], self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16"):
            out = self.forward(batch)
        out = out.float()
        loss = self.loss_fn(out, target)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * scale if self.ddp is not None else loss).backward()
        self.optimizer.step()
        if isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR):
            self.scheduler.step()
        with torch.no_grad():
            n = len(chunk)
            if self.config.task == "classification":
                step_err = (out.argmax(1) == target).sum().double()
            else:
                step_err = (out - target).abs().sum().double() * self.std
            loss_sum = loss.detach().double() * n
            if self.ddp is not None:  # the global batch's mean loss, error sum and size
                loss_value, err, n = parallel_training.step_totals(self.ddp, float(loss_sum) / n, float(step_err), n)
                return loss_value * n, err, n
        return loss_sum, step_err, n

    def validate(self) -> dict[str, float]:
        """Metrics of the current weights on the validation split (eval mode): ``loss`` and
        ``mae``/``rmse`` or ``roc_auc``/``accuracy`` (:func:`~cgcnn_ase.train.steps.split_metrics`)."""
        values, raw = self.predict(self.parts["val"])
        y = self.data.targets[self.parts["val"]]
        return split_metrics(self.config.task, y, values, raw, self.config.loss_name, self.mean, self.std)

    def predict(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eval-mode predictions for store positions ``indices`` (see
        :func:`~cgcnn_ase.train.steps.predict_store`). The processes of a data-parallel run
        hold identical models: each predicts 1/W of ``indices`` and the rows are gathered."""
        predict = functools.partial(
            predict_store, self.network, self.batcher, mean=self.mean, std=self.std,
            batch_size=self.config.eval_batch_size, device=self.device,
        )  # fmt: skip
        if self.ddp is None:
            return predict(indices)
        parallel_training.sync_buffers(self.network, self.ddp)
        return parallel_training.gather_rows(predict, indices, self.ddp)

    def improved(self, value: float) -> bool:
        """Whether ``value`` of the monitored metric beats the best epoch's (a finite value
        beats a non-finite one; the first epoch always counts)."""
        best = self.best["value"]
        if best is None or not math.isfinite(best):
            return math.isfinite(value) or best is None
        maximize = self.monitor in ("val_roc_auc", "val_accuracy")
        return value > best if maximize else value < best

    def finished(self) -> bool:
        """Whether training stops: ``epochs`` reached, the time limit passed (after at least
        one epoch of this session) or ``patience`` epochs without improvement."""
        config = self.config
        if self.epoch >= config.epochs:
            return True
        over_time = config.time_limit is not None and time.perf_counter() - self.session_start > 60 * config.time_limit
        if over_time and self.epoch > self.first_epoch:  # each session trains at least one epoch
            logger.info("stopping after epoch %d: the time limit of %g min is reached", self.epoch, config.time_limit)
            self.stopped_by = "time_limit"
            return True
        best_epoch = self.best["epoch"]
        if config.patience is not None and best_epoch > 0 and self.epoch - best_epoch >= config.patience:
            self.stopped_by = "patience"
            return True
        return False

    # -- checkpoints -----------------------------------------------------------------------
    def load_checkpoint(self) -> dict[str, Any] | None:
        """The work folder's ``checkpoint_last.pt`` when ``config.resume`` is set and it exists.

        Raises:
            ConfigError: not a training checkpoint, one that trained more than ``epochs``, or
                written with settings that shape the
                run differently (:func:`~cgcnn_ase.train.config.config_fingerprint`).
        """
        if not (self.config.resume and self.checkpoint_path.is_file()):
            return None
        checkpoint = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{self.checkpoint_path}: not a cgcnn-ase training checkpoint")
        if checkpoint["fingerprint"] != self.fingerprint:
            changed = changed_settings(checkpoint["settings"], self.settings) if "settings" in checkpoint else []
            what = f"changed: {', '.join(changed)}" if changed else "data, split, model, graph, optimiser or schedule"
            hint = "; epochs is part of a cosine or onecycle schedule" if "epochs" in changed else ""
            raise ConfigError(
                f"{self.checkpoint_path} was written with different settings ({what}{hint}); use another "
                "output/work_dir, or set resume=false to start over"
            )
        if int(checkpoint["epoch"]) > self.config.epochs:  # its history and best epoch lie beyond this run's end
            raise ConfigError(
                f"{self.checkpoint_path} has already trained {checkpoint['epoch']} epochs, more than epochs="
                f"{self.config.epochs}: set epochs to at least {checkpoint['epoch']} to continue or rewrite that run, "
                "or use another output/work_dir (or resume=false) for a shorter run"
            )
        if checkpoint.get("data_fingerprint", self.data_fingerprint) != self.data_fingerprint:  # older ones lack it
            raise ConfigError(
                f"{self.checkpoint_path} was trained on other data: the ids, targets or structures of "
                f"{self.config.data.path} changed since; use another output/work_dir, or set resume=false to "
                "train on the new data from scratch"
            )
        return checkpoint

    def resume(self, checkpoint: dict[str, Any]) -> None:
        """Continue from ``checkpoint``: weights, optimiser, schedule, random streams, history,
        best epoch and the wall time of earlier sessions."""
        self.network.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        restore_scheduler_state(self.scheduler, checkpoint["scheduler"])
        rng = checkpoint["rng"]
        torch.set_rng_state(rng["torch"])
        self.shuffle.set_state(rng["shuffle"])
        if self.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.history, self.best = checkpoint["history"], checkpoint["best"]
        self.epoch, self.wall_before = int(checkpoint["epoch"]), float(checkpoint["wall_time_s"])
        logger.info("resuming %s from epoch %d", self.checkpoint_path, self.epoch)

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint_last.pt`` atomically (everything :meth:`resume` needs)."""
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        state = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "data_fingerprint": self.data_fingerprint,
            "settings": self.settings,
            "epoch": self.epoch,
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler_state(self.scheduler),
            "best": self.best,
            "history": self.history,
            "normalizer": {"mean": self.mean, "std": self.std},
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state(), "cuda": cuda_rng},
            "wall_time_s": self.wall_before + time.perf_counter() - self.session_start,
        }
        _save_atomic(state, self.checkpoint_path)
        return self.checkpoint_path

    # -- the model folder ------------------------------------------------------------------
    def export(self) -> Path:
        """Write the model folder of the best epoch (rank 0; the other processes wait for it)
        and return its path."""
        if not self.is_main:
            parallel_training.barrier(self.ddp)  # returns once rank 0 has written the model folder
            return Path(self.config.output)
        # a finished run that is only rewritten keeps the wall time of the sessions that trained
        session = time.perf_counter() - self.session_start if self.epoch > self.first_epoch else 0.0
        result = TrainingResult(
            data=self.data, split=self.split, parts=self.parts, history=self.history, best=self.best,
            architecture=self.architecture, mean=self.mean, std=self.std, batcher=self.batcher, device=self.device,
            threads=self.threads, wall_time_s=self.wall_before + session, fingerprint=self.fingerprint,
            finetune=self._finetune_metadata(), stopped_by=self.stopped_by, monitor=self.monitor, twins=self.twins,
        )  # fmt: skip
        folder = write_model_folder(self.config, result)
        parallel_training.barrier(self.ddp)  # the other processes return once the folder is complete
        return folder

    def _finetune_metadata(self) -> dict[str, Any] | None:
        """``metadata.finetune`` of a fine-tuning run (``None`` for a run from scratch)."""
        if self.base is None or self.finetune_state is None:
            return None
        return finetune_metadata(self.base, self.config, self.network, self.finetune_state, self.base_overlap)

    # -- small pieces of setup -------------------------------------------------------------
    def _join_processes(self) -> None:
        """Data-parallel runs: check that every process read the same data and checkpoint, give
        ranks > 0 their own dropout stream and wrap the network in DistributedDataParallel.
        In a single process ``self.model`` is the network itself."""
        parallel_training.check_same(
            self.ddp, epoch=self.epoch, crystals=len(self.data.ids), train=len(self.parts["train"])
        )
        parallel_training.seed_rank(self.ddp, self.config.seed, self.epoch)
        self.model = parallel_training.wrap(self.network, self.ddp)

    def _monitor(self) -> str:
        """The selection metric: ``config.monitor_name``, ``val_loss`` when the validation split
        holds one class only (no ROC-AUC), ``train_loss`` without a validation split."""
        monitor = self.config.monitor_name
        train_classes = np.unique(self.data.targets[self.parts["train"]])
        if self.config.task == "classification" and len(train_classes) < 2:
            warnings.warn(f"the training split holds one class only ({train_classes[0]:g}): the classifier cannot "
                          "learn to tell the classes apart; check data.target and the split", UserWarning, stacklevel=2)
        if monitor == "val_roc_auc" and len(np.unique(self.data.targets[self.parts["val"]])) < 2:
            logger.warning("the validation split holds one class only; selecting the model on val_loss instead")
            monitor = "val_loss"
        if len(self.parts["val"]) == 0:
            logger.warning("no validation split; selecting the model on the training loss")
            monitor = "train_loss"
        return monitor

    def _training_targets(self) -> torch.Tensor:
        """Every crystal's training target: normalised float32 values, or int64 labels."""
        if self.config.task == "classification":
            return torch.as_tensor(self.data.targets, dtype=torch.long)
        return torch.as_tensor((self.data.targets - self.mean) / self.std, dtype=torch.float32)

    def _step_schedule(self, value: float, train_loss: float) -> None:
        """The per-epoch schedule step (``reduce_on_plateau`` on the monitored value, or the
        training loss when that is not finite; ``onecycle`` steps per batch instead)."""
        scheduler = self.scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(value if math.isfinite(value) else train_loss)
        elif scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
            scheduler.step()


def _cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check: AVX512-BF16 or AMX); ``True`` when torch
    cannot tell."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def train_from_config(
    config: TrainConfig, *, progress: bool = True, init_from: str | os.PathLike | None = None
) -> Path:
    """Train a model as ``config`` says and write its model folder; returns the folder.

    With ``init_from`` (or ``config.init_from``: a shipped model's name, a model folder or an
    authors' ``.pth.tar``), fine-tune that model instead of starting from random weights,
    as ``config.finetune`` says (:mod:`cgcnn_ase.train.finetune`; ``docs/finetuning.md``).
    ``finetune.member: all`` fine-tunes every member of an ensemble and writes an ensemble
    folder.

    Resumes from ``<work_dir>/checkpoint_last.pt`` when it exists and ``config.resume``
    is true (the settings that shape the run must match; ``epochs`` and ``patience`` may
    change). A run that already reached ``epochs`` or stopped early only rewrites the
    model folder.

    Launched by ``torchrun`` with more than one process (``WORLD_SIZE`` > 1), it trains
    data-parallel with DistributedDataParallel (see :mod:`cgcnn_ase.train.ddp`):
    ``batch_size`` is the global batch, split across the processes; only rank 0 writes
    files; every process returns the model folder's path.

    Raises:
        ConfigError: bad settings, or settings that differ from the checkpoint's.
        TrainingError: the loss became NaN or infinite.
        UnfinishedRunError: ``finetune.member: all`` whose ``time_limit`` (one for all members) stopped the
            session before every member finished (a single run instead returns its folder with
            ``stopped_by: time_limit`` recorded in ``model.json``).
    """
    if init_from is not None:
        config = config.model_copy(deep=True)
        config.init_from = os.fspath(init_from)
    config.validate()
    if config.init_from is not None and config.finetune.member == "all":
        return finetune_all_members(config, progress=progress)
    ddp = parallel_training.start(config.device)
    try:
        return Trainer(config, progress=progress, ddp=ddp).fit()
    finally:
        if ddp is not None:
            ddp.close()

"""The pieces of training steps: batches, optimiser, schedule, loss, the (compiled) forward
pass, predictions and metrics of a split. :class:`~cgcnn_ase.train.trainer.Trainer` puts
them together."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cgcnn_ase.graph.batch import GraphBatch
from cgcnn_ase.nn.inference import CompiledFunction
from cgcnn_ase.nn.network import CrystalGraphConvNet
from cgcnn_ase.train.cache import GraphBatcher
from cgcnn_ase.train.config import TrainConfig

__all__ = [
    "TrainingForward",
    "batch_chunks",
    "loss_function",
    "make_optimizer",
    "make_scheduler",
    "predict_store",
    "restore_scheduler_state",
    "scheduler_state",
    "split_metrics",
    "steps_per_epoch",
]

logger = logging.getLogger(__name__)


def batch_chunks(order: np.ndarray, batch_size: int, min_last: int = 2) -> list[np.ndarray]:
    """Consecutive chunks of ``order``; a last chunk of fewer than ``min_last`` crystals joins
    the previous one (batch norm needs more than one value per channel; data-parallel runs
    use ``2 * world_size`` so that every process gets at least two crystals)."""
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) < min_last:
        last = chunks.pop()  # pop first: `chunks[-2] = concat(chunks[-2], chunks.pop())` overwrote the wrong chunk
        chunks[-1] = np.concatenate([chunks[-1], last])
    return chunks


def steps_per_epoch(n_train: int, batch_size: int, min_last: int = 2) -> int:
    """Optimiser steps of one epoch over ``n_train`` crystals (see :func:`batch_chunks`)."""
    return len(batch_chunks(np.arange(n_train), batch_size, min_last))


def make_optimizer(config: TrainConfig, params: Any, *, fused: bool = False) -> torch.optim.Optimizer:
    """The optimiser of ``config.optim`` over ``params``: parameters, or parameter groups
    (dicts with ``params`` and their own ``lr``, as fine-tuning gives the body and the head).
    ``fused``: one kernel for the whole update (parameters on a GPU; the trainer asks for it on CUDA),
    instead of a few per parameter tensor."""
    o = config.optim
    extra = {"fused": True} if fused else {}
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, **extra)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, **extra)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, **extra)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> Any:
    """The learning-rate scheduler of ``config.schedule`` (``None`` for ``none``); ``steps``:
    optimiser steps per epoch (``onecycle`` steps every batch, the others every epoch; its
    peak is each parameter group's learning rate)."""
    s = config.schedule
    if s.name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(s.milestones), gamma=s.gamma)
    if s.name == "cosine" and s.warmup_epochs:
        warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=s.warmup_epochs)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs - s.warmup_epochs, eta_min=s.min_lr
        )
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, cosine], milestones=[s.warmup_epochs])
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=s.min_lr)
    if s.name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=config.epochs * steps,
            pct_start=s.pct_start,
        )
    if s.name == "reduce_on_plateau":
        mode = "max" if config.monitor_name in ("val_roc_auc", "val_accuracy") else "min"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=s.factor, patience=s.patience, min_lr=s.min_lr
        )
    return None


def scheduler_state(scheduler: Any) -> dict[str, Any] | None:
    """A scheduler's state dict with Counters turned into dicts (loadable with ``weights_only=True``)."""
    if scheduler is None:
        return None
    return {k: ({"__counter__": dict(v)} if isinstance(v, Counter) else v) for k, v in scheduler.state_dict().items()}


def restore_scheduler_state(scheduler: Any, state: dict[str, Any] | None) -> None:
    """Load a state saved by :func:`scheduler_state` (nothing to do without a scheduler or state)."""
    if scheduler is None or state is None:
        return
    scheduler.load_state_dict(
        {k: (Counter(v["__counter__"]) if isinstance(v, dict) and "__counter__" in v else v) for k, v in state.items()}
    )


def loss_function(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``mse``, ``mae`` or ``cross_entropy`` (on the network's log-probabilities)."""
    if name == "mae":
        return torch.nn.functional.l1_loss
    if name == "cross_entropy":
        return torch.nn.functional.nll_loss  # the network returns log-probabilities
    return torch.nn.functional.mse_loss


class TrainingForward:
    """The forward pass of training steps: ``model`` itself, or ``torch.compile(model)``.

    Compilation happens on the first call. If it fails there (no C++ compiler, an
    unsupported backend, ...), a warning says why and every call, that one included, runs
    ``model`` eagerly; later errors propagate. Compiled for a CPU with more than one
    thread, the convolutions use opaque gather/scatter operators
    (:meth:`~cgcnn_ase.nn.network.CrystalGraphConvNet.set_execution`), measured faster there.
    Otherwise, on a CPU, the gated convolutions run their batch norm, gates and sums through
    :class:`~cgcnn_ase.nn.fused.GatedMessages` (their default ``fused`` execution), eager or
    compiled.

    Args:
        model: the network (or its DistributedDataParallel wrapper) in training mode.
        network: the network itself (``model`` or the module it wraps).
        compile: use ``torch.compile(model, dynamic=True)``; batches differ in size, so the
            compiled code takes the numbers of atoms, edges and crystals as variables.
    """

    def __init__(self, model: torch.nn.Module, network: CrystalGraphConvNet, *, compile: bool) -> None:
        self.model = model
        self.network = network
        self.compiled = CompiledFunction(model, name="the training step", on_failure=self._eager) if compile else None
        on_cpu = next(network.parameters()).device.type == "cpu"
        self.network.set_execution(opaque_indexing=compile and on_cpu and torch.get_num_threads() > 1)

    def _eager(self, exc: Exception, first_line: str) -> None:
        logger.warning("torch.compile failed (%s: %s); training goes on without it", type(exc).__name__, first_line)
        self.network.set_execution(opaque_indexing=False)

    def __call__(self, batch: GraphBatch) -> torch.Tensor:
        return self.model(batch) if self.compiled is None else self.compiled(batch)


@torch.inference_mode()
def predict_store(
    network: CrystalGraphConvNet,
    batcher: GraphBatcher,
    indices: np.ndarray,
    *,
    mean: float,
    std: float,
    batch_size: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode predictions for store positions ``indices``.

    Returns:
        ``(values, raw)``: values in target units (regression) or the probability of
        class 1 (classification), float64 (n,); and the raw network outputs (normalised
        values (n,) or log-probabilities (n, 2)).
    """
    was_training = network.training
    network.eval()
    raw = []
    try:
        for chunk in batch_chunks(np.asarray(indices), batch_size):
            raw.append(network(batcher.batch(chunk).to(device)).double())  # read back once, at the end
    finally:
        network.train(was_training)
    if not raw:
        return np.zeros(0), np.zeros(0)
    out = torch.cat(raw).cpu().numpy()
    if out.ndim == 2:
        return np.exp(out[:, 1]), out
    return out * std + mean, out


def split_metrics(
    task: str, y: np.ndarray, values: np.ndarray, raw: np.ndarray, loss_name: str, mean: float, std: float
) -> dict[str, float]:
    """Validation/test metrics of one split, plus the loss in normalised units.

    Args:
        task: ``"regression"`` or ``"classification"``.
        y: targets, shape (n,); values, raw: :func:`predict_store`'s outputs for them.
        loss_name: ``mse``, ``mae`` or ``cross_entropy``; mean, std: the target normaliser.

    Returns:
        ``{"loss", "mae", "rmse"}`` (regression, in target units but the loss) or
        ``{"loss", "roc_auc", "accuracy"}``; ``{}`` for an empty split.
    """
    from cgcnn_ase.analysis.metrics import classification_metrics, regression_metrics

    if len(y) == 0:
        return {}
    if task == "classification":
        m = classification_metrics(y, values)
        nll = float(-np.mean(raw[np.arange(len(y)), y.astype(int)]))
        return {"loss": nll, "roc_auc": m["roc_auc"], "accuracy": m["accuracy"]}
    m = regression_metrics(y, values)
    z = (y - mean) / std
    loss = float(np.mean(np.abs(raw - z))) if loss_name == "mae" else float(np.mean((raw - z) ** 2))
    return {"loss": loss, "mae": m["mae"], "rmse": m["rmse"]}

"""Data-parallel training: a 2-process CPU (gloo) run launched by torchrun on the tiny dataset.

The strong check: after two epochs, the 2-process run's weights and batch-norm statistics
equal those of a single process that runs the same global batches, each as the same two
rank-strided sub-batches with summed, share-weighted gradients (and a negative control:
plain full-batch training differs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cgcnn_ase.data.splits import Split
from cgcnn_ase.models.folder import load_model_folder
from cgcnn_ase.nn.network import CrystalGraphConvNet
from cgcnn_ase.nn.threads import torch_threads
from cgcnn_ase.train import ddp as parallel_training
from cgcnn_ase.train.cache import GraphBatcher
from cgcnn_ase.train.data import prepare_data
from cgcnn_ase.train.steps import batch_chunks as _batches
from cgcnn_ase.train.steps import make_optimizer

from .conftest import REPO
from .test_training import dataset_csv, tiny_config  # noqa: F401 - the tiny 12-crystal dataset fixture

WORLD = 2

SCRIPT = """
import json, logging, os, sys
import torch
torch.set_num_threads(1)
from cgcnn_ase.train.config import TrainConfig
from cgcnn_ase.train.trainer import train_from_config
config_path, out = sys.argv[1], sys.argv[2]
rank = int(os.environ["RANK"])
log = logging.getLogger("cgcnn_ase")
log.setLevel(logging.INFO)
log.addHandler(logging.FileHandler(os.path.join(out, f"rank{rank}.log")))
config = TrainConfig.from_dict(json.loads(open(config_path).read()))
folder = train_from_config(config, progress=False)
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"folder": str(folder), "group_left": torch.distributed.is_initialized()}, f)
"""


def _torchrun(config, root: Path) -> None:
    """Run ``train_from_config(config)`` in 2 processes with torchrun; reports go to ``root``."""
    config_path = root / "config.json"
    config_path.write_text(json.dumps(config.to_dict()))
    script = root / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               str(script), str(config_path), str(root)]  # fmt: skip
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


@pytest.fixture(scope="module")
def ddp_run(dataset_csv, tmp_path_factory):  # noqa: F811 - pytest fixture injection
    """Two epochs of a 2-process torchrun run (fresh graph cache), with its config."""
    root = tmp_path_factory.mktemp("ddp")
    config = tiny_config(dataset_csv, root, epochs=2, cache_dir=str(root / "cache"))
    _torchrun(config, root)
    return config, root


@pytest.fixture(scope="module")
def ddp_resumed(ddp_run, dataset_csv, tmp_path_factory):  # noqa: F811 - pytest fixture injection
    """A copy of the 2-epoch run, resumed by 2 processes to 3 epochs."""
    config, _ = ddp_run
    resumed_root = tmp_path_factory.mktemp("ddp_resumed")
    shutil.copytree(Path(config.output), resumed_root / "model")
    resumed = tiny_config(dataset_csv, resumed_root, epochs=3, cache_dir=config.cache_dir)
    _torchrun(resumed, resumed_root)
    return resumed, resumed_root


def _reference_state(config, folder: Path, world: int, epochs: int) -> dict[str, torch.Tensor]:
    """Single-process training on the same global batches, each run as ``world`` rank-strided
    sub-batches with share-weighted summed gradients; batch-norm running statistics from
    sub-batch 0 only (rank 0's, which DDP broadcasts).

    Runs with 1 torch thread, as the torchrun processes do (their float reductions then
    add up in the same order), and restores the caller's thread count afterwards."""
    with torch_threads(1):
        return _reference_training(config, folder, world, epochs)


def _reference_training(config, folder: Path, world: int, epochs: int) -> dict[str, torch.Tensor]:
    data = prepare_data(config)
    split = Split.load(folder / "split.json")
    position = {i: k for k, i in enumerate(data.ids)}
    train = np.array([position[i] for i in split.train], dtype=np.int64)
    y = data.targets
    mean, std = float(np.mean(y[train])), float(np.std(y[train]))
    targets = torch.as_tensor((y - mean) / std, dtype=torch.float32)
    batcher = GraphBatcher(
        data.store, data.elements, config.graph, merge_edges=config.model.merge_edges,
        distinct_distances=config.model.split_matmul,  # as the trainer batches on a CPU
    )  # fmt: skip
    architecture = load_model_folder(folder).spec.architecture
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        network = CrystalGraphConvNet(**architecture)
    network.set_execution(split_matmul=config.model.split_matmul)
    optimizer = make_optimizer(config, network.parameters())
    shuffle = torch.Generator().manual_seed(config.seed)
    for _ in range(epochs):
        network.train()
        order = train[torch.randperm(len(train), generator=shuffle).numpy()]
        for chunk in _batches(order, config.batch_size, 2 * world):
            optimizer.zero_grad(set_to_none=True)
            for rank in range(world):
                local = chunk[rank::world]
                saved = [b.clone() for b in network.buffers()] if rank else None
                out = network(batcher.batch(local))
                loss = torch.nn.functional.mse_loss(out, targets[local]) * (len(local) / len(chunk))
                loss.backward()
                if saved is not None:
                    with torch.no_grad():
                        for buffer, value in zip(network.buffers(), saved):
                            buffer.copy_(value)
            optimizer.step()
    return network.state_dict()


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys=None) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in (keys or a))


def test_two_process_run_trains_and_only_rank0_writes(ddp_run):
    config, root = ddp_run
    reports = [json.loads((root / f"rank{r}.json").read_text()) for r in range(WORLD)]
    output = Path(config.output)
    assert all(Path(r["folder"]) == output for r in reports)  # every process returns the folder
    assert not any(r["group_left"] for r in reports)  # the process group it created is destroyed
    for name in ("model.json", "weights.safetensors", "README.md", "metrics.csv", "split.json", "parity.png"):
        assert (output / name).is_file(), name
    metrics = (output / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + config.epochs
    assert f"in each of {WORLD} data-parallel processes" in (output / "README.md").read_text()
    # one writer: no temporary files left by a second process, one checkpoint
    assert sorted(p.name for p in (output / "run").iterdir()) == ["checkpoint_last.pt", "metrics.csv", "split.json"]
    # rank 0 built the graph cache first; rank 1 only read it
    logs = [(root / f"rank{r}.log").read_text() for r in range(WORLD)]
    assert "building 12 crystal graphs" in logs[0]
    assert "all 12 crystal graphs found in the cache" in logs[1] and "building" not in logs[1]
    # the model folder loads and predicts
    model = load_model_folder(output)
    assert model.spec.metadata["training"]["hardware"]["processes"] == WORLD


def test_two_processes_equal_one_process_on_the_same_global_batches(ddp_run):
    config, _ = ddp_run
    folder = Path(config.output)
    checkpoint = torch.load(folder / "run" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == config.epochs
    ddp_state = checkpoint["model"]
    reference = _reference_state(config, folder, WORLD, config.epochs)
    assert _max_difference(ddp_state, reference) < 1e-6  # weights and batch-norm statistics (bitwise equal here)
    # negative control: the same global batches as one batch each (batch norm over the whole batch) give
    # different weights, so the comparison above can fail
    plain = _reference_state(config, folder, 1, config.epochs)
    weights = [k for k in ddp_state if "running" not in k and "num_batches" not in k]
    assert _max_difference(ddp_state, plain, weights) > 1e-3


def test_resumed_two_process_run_equals_an_uninterrupted_one(ddp_resumed):
    config, root = ddp_resumed
    folder = Path(config.output)
    logs = [(root / f"rank{r}.log").read_text() for r in range(WORLD)]
    assert all("resuming" in log and "from epoch 2" in log for log in logs)  # every process loaded the checkpoint
    checkpoint = torch.load(folder / "run" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 3 and len((folder / "metrics.csv").read_text().splitlines()) == 4
    reference = _reference_state(config, folder, WORLD, 3)
    assert _max_difference(checkpoint["model"], reference) < 1e-6


def test_shard_weights_make_the_mean_over_the_global_batch():
    chunk = np.arange(7)
    shares = [parallel_training.shard(chunk, _fake_run(r, 3)) for r in range(3)]
    assert sorted(np.concatenate([s for s, _ in shares]).tolist()) == list(range(7))
    assert [s.tolist() for s, _ in shares] == [[0, 3, 6], [1, 4], [2, 5]]
    # DDP averages over 3 ranks: sum_r weight_r / 3 * mean_r == mean over all 7 crystals
    values = np.random.default_rng(0).normal(size=7)
    averaged = sum(w * values[s].mean() for s, w in shares) / 3
    assert averaged == pytest.approx(values.mean())


def test_last_batch_merge_keeps_every_crystal_once_and_two_per_process():
    for n, min_last, sizes in (
        (13, 2, [4, 4, 5]),
        (13, 2 * WORLD, [4, 4, 5]),
        (11, 2 * WORLD, [4, 7]),
        (10, 2, [4, 4, 2]),
    ):
        chunks = _batches(np.arange(n), 4, min_last)
        assert [len(c) for c in chunks] == sizes
        assert np.concatenate(chunks).tolist() == list(range(n))  # each crystal once, in order


def test_single_process_without_launcher_does_not_start_a_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert parallel_training.start("cpu") is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert parallel_training.start("cpu") is None
    assert parallel_training.agree(True, None) is True
    with parallel_training.main_first(None):
        pass


def _fake_run(rank: int, world: int) -> parallel_training.DistributedRun:
    return parallel_training.DistributedRun(
        rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"), owns_group=False
    )

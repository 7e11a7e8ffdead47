"""Training on one GPU: epoch time of one member and of several members trained together, then
members trained toward convergence in what is left of a fixed time budget.

Written for one device session (the GPU machine has torch but not ASE or pymatgen; carry the
wheels of gemmi and pydantic and a copy of the dataset, see ``docs/performance.md``)::

    python benchmarks/gpu_training.py session --end-at $(( $(date +%s) + 400 )) --out $OUT

``session`` runs, each as ``cgcnn-ase train`` processes on ``--device``:

1. ``single``: one member of ``--config`` from scratch for ``--timing-epochs`` epochs (its graphs
   are built on the GPU into a fresh cache, timed);
2. ``together``: ``--members`` such processes at once on the same GPU (the cache now read);
3. ``continue``: ``--members`` processes that each continue one member of the shipped model
   ``--base`` (``init_from``, all layers trained, AdamW with ``--lr`` and a cosine schedule
   with ``--warmup`` epochs), with as many epochs as the measured epoch time of step 2 fits
   before ``--end-at`` (a time limit stops them there too). Checkpoints and model folders go
   to ``--runs`` and a ``members.tar.gz`` in ``--out``; assemble them with ``cgcnn-ase ensemble``.

Writes ``gpu_training.json`` (epoch times: median over epochs after the first, in seconds,
from each run's ``metrics.csv``; wall times of each step) into ``--out``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import click
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def _train(name: str, sets: list[str], runs: Path, config: str, log_dir: Path) -> subprocess.Popen:
    """Start ``cgcnn-ase train config --set ...`` writing to ``runs/name`` (its log in ``log_dir``)."""
    args = [sys.executable, "-m", "cgcnn_ase", "train", config, "--traceback", "--set", f"output={runs / name}",
            "--set", f"work_dir={runs / name}-work", *[x for s in sets for x in ("--set", s)]]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log = open(log_dir / f"{name}.log", "w")
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(processes: dict[str, subprocess.Popen], timeout: float) -> dict[str, int | None]:
    """Wait for all until ``timeout`` seconds; kill the rest. Returns exit codes (None: killed)."""
    end = time.time() + timeout
    codes: dict[str, int | None] = {}
    for name, p in processes.items():
        try:
            codes[name] = p.wait(timeout=max(1.0, end - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            codes[name] = None
    return codes


def _epoch_times(runs: Path, name: str) -> dict[str, float | int | None]:
    """Epochs done, median epoch time after the first (s), last validation MAE of a run."""
    path = runs / f"{name}-work" / "metrics.csv"
    if not path.is_file():
        return {"epochs": 0, "epoch_s": None, "first_epoch_s": None}
    m = pd.read_csv(path)
    later = m["epoch_time_s"].iloc[1:] if len(m) > 1 else m["epoch_time_s"]
    best = m.loc[m["best"] == 1].iloc[-1] if (m["best"] == 1).any() else None
    return {
        "epochs": int(m["epoch"].iloc[-1]), "epoch_s": float(statistics.median(later)),
        "first_epoch_s": float(m["epoch_time_s"].iloc[0]),
        "best_epoch": int(best["epoch"]) if best is not None else None,
        "best_val_mae": float(best["val_mae"]) if best is not None and "val_mae" in m else None,
    }  # fmt: skip


@click.group()
def main() -> None:
    """Epoch times on one GPU and members trained in a time budget."""


@main.command()
@click.option("--end-at", type=float, required=True, help="Unix time by which everything must have ended.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--runs", type=click.Path(path_type=Path), default=Path("/tmp/gpu_runs"), show_default=True)
@click.option("--config", default="configs/formation_energy.yaml", show_default=True)
@click.option("--base", default="formation_energy", show_default=True, help="Shipped model whose members are continued.")
@click.option("--members", default=5, show_default=True)
@click.option("--timing-epochs", default=4, show_default=True)
@click.option("--lr", default=5e-4, show_default=True)
@click.option("--warmup", default=2, show_default=True)
@click.option("--device", default="cuda", show_default=True)
@click.option("--extra", multiple=True, help="More --set overrides for every run (e.g. data.limit=500 for a check).")
@click.option("--steps", default="single,together,continue", show_default=True,
              help="Which steps to run (comma-separated); the cache must exist (from `profile` with the same "
                   "--runs) when `single` is left out.")  # fmt: skip
def session(end_at: float, out: Path, runs: Path, config: str, base: str, members: int, timing_epochs: int,
            lr: float, warmup: int, device: str, extra: tuple[str, ...], steps: str) -> None:  # fmt: skip
    """Steps 1-3 (see the module docstring)."""
    chosen = set(steps.split(","))
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise click.ClickException("no CUDA GPU here: give --device cpu for a check of this script")

    def start(name: str, sets: list[str]) -> subprocess.Popen:
        return _train(name, [*sets, *extra], runs, config, logs)  # --extra comes last and overrides

    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    logs = runs / "logs"
    logs.mkdir(exist_ok=True)
    cache = runs / "cache"
    common = [f"device={device}", "workers=16", f"cache_dir={cache}"]
    result: dict = {"device": device, "members": members}

    def save() -> None:
        (out / "gpu_training.json").write_text(json.dumps(result, indent=2))

    base_folder = REPO / "pretrained_models" / _folder(base)
    common.append(f"elements={base_folder / 'atom_init.json'}")  # the base model's table (as generated)
    scratch = [*common, f"epochs={timing_epochs}", "patience=null", "time_limit=null", "schedule.name=none"]
    result["single"] = result["together"] = {"wall_s": 0.0, "epoch_s": None, "epoch_s_median": None}
    if "single" in chosen:
        t = time.time()
        codes = _wait({"single": start("single", [*scratch, "seed=1"])}, end_at - time.time() - 200)
        result["single"] = {"wall_s": time.time() - t, "exit": codes["single"], **_epoch_times(runs, "single")}
        save()
        print("single:", result["single"], flush=True)

    if "together" in chosen:
        t = time.time()
        names = [f"together-{k}" for k in range(members)]
        codes = _wait({n: start(n, [*scratch, f"seed={k + 1}"]) for k, n in enumerate(names)},
                      end_at - time.time() - 150)  # fmt: skip
        per = {n: {"exit": codes[n], **_epoch_times(runs, n)} for n in names}
        times = [p["epoch_s"] for p in per.values() if p["epoch_s"]]
        result["together"] = {"wall_s": time.time() - t, "runs": per,
                              "epoch_s_median": statistics.median(times) if times else None}  # fmt: skip
        save()
        print("together:", result["together"], flush=True)
    if "continue" not in chosen:
        return

    epoch_s = result["together"]["epoch_s_median"] or result["single"]["epoch_s"] or 10.0
    startup = min(60.0, max(10.0, result["together"]["wall_s"] - timing_epochs * epoch_s))  # start and data
    left = end_at - time.time() - 30.0  # packing up
    epochs = max(warmup + 2, int((left - startup) / (epoch_s * 1.15)))
    cont = [*common, f"init_from={base}", f"optim.lr={lr}", "schedule.name=cosine", f"schedule.warmup_epochs={warmup}",
            f"epochs={epochs}", "patience=null", f"time_limit={max(0.5, (left - 5) / 60):.2f}",
            f"split.file={base_folder / 'split.json'}"]  # fmt: skip
    t = time.time()
    names = [f"continue-{k}" for k in range(members)]
    procs = {n: start(n, [*cont, f"finetune.member={k}", f"seed={k + 1}"]) for k, n in enumerate(names)}
    codes = _wait(procs, end_at - time.time() - 20)
    result["continue"] = {"planned_epochs": epochs, "wall_s": time.time() - t, "lr": lr, "warmup": warmup,
                          "runs": {n: {"exit": codes[n], **_epoch_times(runs, n)} for n in names}}  # fmt: skip
    save()
    print("continue:", result["continue"], flush=True)
    with tarfile.open(out / "members.tar.gz", "w:gz") as tar:
        for n in names:
            for suffix in ("", "-work"):
                if (runs / f"{n}{suffix}").exists():
                    tar.add(runs / f"{n}{suffix}", arcname=f"{n}{suffix}")
        tar.add(logs, arcname="logs")
        for n in ("single", *[f"together-{k}" for k in range(members)]):
            if (runs / f"{n}-work" / "metrics.csv").exists():
                tar.add(runs / f"{n}-work" / "metrics.csv", arcname=f"metrics/{n}.csv")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--config", default="configs/formation_energy.yaml", show_default=True)
@click.option("--steps", default=40, show_default=True)
@click.option("--epochs", "epochs_timed", default=3, show_default=True, help="Whole epochs timed (median), each with its validation.")
@click.option("--set", "sets", multiple=True, help="--set overrides of the configuration.")
def profile(out: Path, config: str, steps: int, epochs_timed: int, sets: tuple[str, ...]) -> None:
    """Where a training step's time goes on the device: batch assembly, forward, backward and
    optimiser step timed apart (synchronised; medians over ``--steps`` steps); on CUDA, whether one
    whole step runs without a host sync (torch's sync debug mode); ``--epochs`` whole epochs with their
    validation (median); then the profiler's table of one unsynchronised run of 20 steps (kernel
    launches, host syncs)."""
    sys.path.insert(0, str(REPO))
    import torch

    from cgcnn_ase.train.config import load_config
    from cgcnn_ase.train.steps import batch_chunks
    from cgcnn_ase.train.trainer import Trainer

    run_config = load_config(config, list(sets))
    if str(run_config.device) in ("auto", "cuda") or str(run_config.device).startswith("cuda:"):
        if not torch.cuda.is_available():  # auto would quietly profile the CPU
            raise click.ClickException("no CUDA GPU here: give --set device=cpu for a check of this script")
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(run_config, progress=False)
    t = time.time()
    trainer.setup()
    setup_s = time.time() - t
    device = trainer.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    chunks = batch_chunks(trainer.parts["train"], trainer.config.batch_size)
    warmup = min(5, len(chunks) - 1)  # steps left out of the medians (compiling, caches); at least one is timed
    phases: dict[str, list[float]] = {"batch": [], "forward": [], "backward": [], "step": []}
    trainer.network.train()
    for k, chunk in enumerate(chunks[: steps + warmup]):
        sync(); t0 = time.perf_counter()  # noqa: E702
        batch = trainer.batcher.batch(chunk).to(device)
        target = trainer.targets[chunk].to(device)
        sync(); t1 = time.perf_counter()  # noqa: E702
        loss = trainer.loss_fn(trainer.forward(batch).float(), target)
        sync(); t2 = time.perf_counter()  # noqa: E702
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync(); t3 = time.perf_counter()  # noqa: E702
        trainer.optimizer.step()
        sync(); t4 = time.perf_counter()  # noqa: E702
        if k >= warmup:
            for name, a, b in (("batch", t0, t1), ("forward", t1, t2), ("backward", t2, t3), ("step", t3, t4)):
                phases[name].append(b - a)
    result = {"setup_s": setup_s, "steps_per_epoch": len(chunks), "compile": trainer.config.compile,
              "phase_ms": {k: 1000 * statistics.median(v) for k, v in phases.items()}}  # fmt: skip
    if device.type == "cuda":  # does a whole step queue its work without waiting for the device?
        result["host_syncs"] = _host_syncs(lambda: trainer.train_step(chunks[0]))
        result["step_without_host_sync"] = not result["host_syncs"]
    epochs = []
    for _ in range(epochs_timed):
        sync(); t = time.perf_counter()  # noqa: E702
        trainer.train_epoch()
        sync(); middle = time.perf_counter()  # noqa: E702
        trainer.validate()
        epochs.append({"train_s": middle - t, "validate_s": time.perf_counter() - middle})
    result["epochs"] = epochs
    result["train_epoch_s"] = statistics.median(e["train_s"] for e in epochs)
    result["validate_s"] = statistics.median(e["validate_s"] for e in epochs)
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for chunk in chunks[:20]:
            trainer.train_step(chunk)
        sync()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
    (out / "profile.txt").write_text(table)
    events = prof.key_averages()
    result["launches_per_step"] = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")) / 20
    result["syncs_per_step"] = sum(e.count for e in events if "Synchronize" in e.key or e.key == "cudaMemcpyAsync") / 20
    (out / "profile.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def _host_syncs(step) -> list[str]:
    """The distinct Python stacks (innermost 12 frames) at which ``step()`` made the host wait for the
    device, as torch's sync debug mode reports them (a prototype: it may miss some)."""
    import traceback
    import warnings

    import torch

    stacks: list[str] = []

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        stack = "".join(traceback.format_stack(limit=13)[:-1])
        if stack not in stacks:
            stacks.append(f"{message}\n{stack}")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return stacks


def _folder(name: str) -> str:
    """The shipped folder of a model name or alias."""
    sys.path.insert(0, str(REPO))
    from cgcnn_ase.models.registry import model_folder

    return Path(model_folder(name)).name


if __name__ == "__main__":
    main()

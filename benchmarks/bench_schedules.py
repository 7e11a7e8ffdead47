"""Which optimiser and learning-rate schedule reach a low validation error in fewer epochs?

Trains the perovskite configuration (``configs/perovskite_formation_energy.yaml``: 17,428 Castelli cells,
its 80/10/10 split) for ``--epochs`` epochs with each variant below, one CPU thread per run, ``--jobs``
runs at a time, and reports the best **validation** MAE reached within 25%, 50% and 100% of the epochs
(the test split is not read). Early stopping is off (``patience`` = epochs), so every run uses the whole
budget.

Variants: the shipped AdamW + reduce-on-plateau; AdamW + cosine with and without a linear warm-up;
AdamW + one-cycle; AdamW at 3x the learning rate + cosine with warm-up; SGD with momentum at the
authors' learning rate and step schedule.

    python benchmarks/bench_schedules.py [--epochs 60] [--jobs 2] [--config configs/perovskite_formation_energy.yaml]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import pandas as pd

REPO = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, list[str]] = {
    "adamw 1e-3, reduce_on_plateau (shipped)": [],
    "adamw 1e-3, cosine": ["schedule={name: cosine, min_lr: 1.0e-5}"],
    "adamw 1e-3, cosine, warm-up 3": ["schedule={name: cosine, min_lr: 1.0e-5, warmup_epochs: 3}"],
    "adamw 1e-3, onecycle": ["schedule={name: onecycle}"],
    "adamw 3e-3, cosine, warm-up 3": ["optim.lr=3.0e-3", "schedule={name: cosine, min_lr: 1.0e-5, warmup_epochs: 3}"],
    "sgd 1e-2 momentum 0.9, multistep (the authors')": ["optim={name: sgd, lr: 0.01, momentum: 0.9, weight_decay: 0.0}",
                                                        "schedule={name: multistep, milestones: [100], gamma: 0.1}"],
}  # fmt: skip


def _command(config: str, out: Path, epochs: int, extra: list[str]) -> list[str]:
    settings = [f"epochs={epochs}", f"patience={epochs}", f"output={out}", f"work_dir={out}/run", *extra]
    return [sys.executable, "-m", "cgcnn_ase", "train", config, "--threads", "1",
            *[item for s in settings for item in ("--set", s)]]  # fmt: skip


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--epochs", default=60, show_default=True)
@click.option("--jobs", default=2, show_default=True, help="Runs at a time (one CPU thread each).")
@click.option("--config", default=str(REPO / "configs" / "perovskite_formation_energy.yaml"), show_default=True)
def main(epochs: int, jobs: int, config: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench_schedules_"))
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    import os

    env = {**os.environ, **env}
    # the graph cache first, once, so that the parallel runs share it
    subprocess.run(_command(config, root / "warm", 1, []), check=True, cwd=REPO, env=env, capture_output=True)
    pending = list(VARIANTS.items())
    running: list[tuple[str, Path, subprocess.Popen, float]] = []
    results = {}
    while pending or running:
        while pending and len(running) < jobs:
            name, extra = pending.pop(0)
            out = root / f"v{len(results) + len(running)}"
            process = subprocess.Popen(_command(config, out, epochs, extra), cwd=REPO, env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
            running.append((name, out, process, time.perf_counter()))
        time.sleep(2)
        for item in [r for r in running if r[2].poll() is not None]:
            name, out, process, start = item
            running.remove(item)
            if process.returncode:
                print(f"{name}: failed\n{process.stderr.read().decode()[-2000:]}", file=sys.stderr)
                continue
            history = pd.read_csv(out / "metrics.csv")
            results[name] = (history, time.perf_counter() - start)
            print(f"done: {name} ({results[name][1]:.0f} s)", flush=True)
    quarters = [max(1, epochs // 4), max(1, epochs // 2), epochs]
    print(f"\nbest validation MAE (eV/atom) within the first N epochs; {epochs} epochs per run, 1 thread each\n")
    print("| variant | " + " | ".join(f"N = {q}" for q in quarters) + " | minutes |")
    print("|---|" + "---|" * (len(quarters) + 1))
    for name, (history, seconds) in results.items():
        best = [history["val_mae"].iloc[:q].min() for q in quarters]
        print(f"| {name} | " + " | ".join(f"{b:.4f}" for b in best) + f" | {seconds / 60:.1f} |")


if __name__ == "__main__":
    main()

"""Worker processes for reading and graph building: ``--workers N`` vs ``--workers 1``, side by side.

``--n`` Materials Project CIFs (sampled reproducibly from the shared CSV) are written to a
temporary folder. Then, interleaved for ``--repeats`` rounds:

* CLI: ``cgcnn-ase predict FOLDER --model formation_energy --workers W -o out.csv`` in a
  subprocess (wall time; start-up and model loading included), for W = 1 and ``--workers``;
* API: ``CGCNNPredictor.from_pretrained("formation_energy", members=1).predict(files, workers=W)``
  in this process (model loaded once, outside the timing), structures per second; and the same with
  the 5-member ensemble (``--ensemble``);
* ``--default-models``: also the CLI's default command (no ``--model``: the seven general-purpose
  ensembles), in a subprocess, wall time; and the seven models in this process, together
  (``predict_many``: each file read once, one graph per structure, one pool), as the command runs them.

Every process uses one torch thread. Reported: per-round times, medians and the median of the
per-round ratios (rounds are side by side, so host load affects both alike).

    python benchmarks/bench_workers.py [--n 1000] [--repeats 3] [--workers 2] [--ensemble] [--default-models]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

CLI_CODE = "import sys; from cgcnn_ase.cli import main; sys.exit(main())"


def _cli(folder: Path, workers: int, out: Path, models: tuple[str, ...] = ("--model", "formation_energy")) -> float:
    command = [sys.executable, "-c", CLI_CODE, "predict", str(folder), *models,
               "--workers", str(workers), "--threads", "1", "-o", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(_common.REPO_ROOT), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


@click.command()
@click.option("--n", default=1000, show_default=True, help="CIFs to predict.")
@click.option("--repeats", default=3, show_default=True, help="Interleaved rounds.")
@click.option("--workers", default=2, show_default=True, help="Workers compared with 1.")
@click.option("--shared", default=None, help="The shared data folder (default: ../shared).")
@click.option("--ensemble", is_flag=True, help="Also time the API with the 5-member ensemble.")
@click.option("--default-models", is_flag=True, help="Also time the CLI's default command (seven models).")
def main(n: int, repeats: int, workers: int, shared: str | None, ensemble: bool, default_models: bool) -> None:
    import torch

    from cgcnn_ase import CGCNNPredictor
    from cgcnn_ase.inference.predictor import predict_many

    _common.quiet()
    torch.set_num_threads(1)
    folder, files = _common.write_cifs(_common.load_cif_strings(shared, "mp", n), Path(tempfile.mkdtemp()) / "cifs")
    # name -> (the predictors run one after another, their inputs)
    predictors = {"API (members=1), structures/s": ([CGCNNPredictor.from_pretrained("formation_energy", members=1,
                                                                                    device="cpu")], files)}  # fmt: skip
    if ensemble:
        predictors["API (5-member ensemble), structures/s"] = ([CGCNNPredictor.from_pretrained("formation_energy",
                                                                                               device="cpu")], files)  # fmt: skip
    if default_models:  # as the default command runs them: together (predict_many), the files read once
        from cgcnn_ase.inference.properties import GENERAL_MODELS

        predictors["API, the 7 default models together, structures/s"] = (
            [CGCNNPredictor.from_pretrained(name, device="cpu") for name in GENERAL_MODELS], files)
    for models, inputs in predictors.values():
        predict_many(models, inputs[:16])  # lazy imports
    out = Path(tempfile.mkdtemp())
    rows = []
    for round_ in range(repeats):
        cli = {w: _cli(folder, w, out / f"w{w}.csv") for w in (1, workers)}
        if default_models:
            cli.update({("default", w): _cli(folder, w, out / f"d{w}.csv", ()) for w in (1, workers)})
        api: dict[str, dict[int, float]] = {}
        for name, (models, inputs) in predictors.items():
            for w in (1, workers):
                start = time.perf_counter()
                predict_many(models, inputs, workers=w)
                api.setdefault(name, {})[w] = time.perf_counter() - start
        rows.append((round_, cli, api))
        rates = "; ".join(f"{name.split(',')[0]} {n / t[1]:.0f} vs {n / t[workers]:.0f}/s" for name, t in api.items())
        print(f"round {round_}: CLI {cli[1]:.2f} s vs {cli[workers]:.2f} s; {rates}", file=sys.stderr)
    table = [["CLI (5-member ensemble), wall s", f"{_common.median([r[1][1] for r in rows]):.2f}",
              f"{_common.median([r[1][workers] for r in rows]):.2f}",
              f"{_common.median([r[1][1] / r[1][workers] for r in rows]):.2f}x"]]  # fmt: skip
    if default_models:
        table.append(["CLI, default command (7 ensembles), wall s",
                      f"{_common.median([r[1]['default', 1] for r in rows]):.2f}",
                      f"{_common.median([r[1]['default', workers] for r in rows]):.2f}",
                      f"{_common.median([r[1]['default', 1] / r[1]['default', workers] for r in rows]):.2f}x"])  # fmt: skip
    for name in predictors:
        times = [r[2][name] for r in rows]
        table.append([name, f"{n / _common.median([t[1] for t in times]):.0f}",
                      f"{n / _common.median([t[workers] for t in times]):.0f}",
                      f"{_common.median([t[1] / t[workers] for t in times]):.2f}x"])  # fmt: skip
    print(_common.machine_line())
    print(f"{n} MP CIFs, formation_energy, 1 torch thread per process, {repeats} interleaved rounds\n")
    print(_common.markdown_table(["pipeline", "--workers 1", f"--workers {workers}", "ratio (median of rounds)"], table))


if __name__ == "__main__":
    main()

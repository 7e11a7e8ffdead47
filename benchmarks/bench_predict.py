"""End-to-end prediction over N CIF files: cgcnn-ase CLI and Python API vs the original approach.

For one data set (``--dataset mp``: Materials Project crystals, or ``perovskites``:
5-atom Castelli perovskites), ``--n`` CIFs are sampled reproducibly from the shared CSV
and written to a temporary folder as ``.cif`` files. Then, interleaved, ``--repeats``
times each:

* CLI: ``cgcnn-ase predict <files> --model formation-energy-per-atom.pth.tar --atom-init
  atom_init.json -o out.csv`` in a subprocess (wall time, Python start-up and model
  loading included). It runs this checkout's ``cgcnn_ase.cli:main`` (what the
  ``cgcnn-ase`` console script calls) with ``PYTHONPATH`` set to the repository root.
* API: ``CGCNNPredictor.predict(files)`` (model loaded once, outside the timing;
  default batch size 64).
* baseline: ``original_baseline.predict_files`` (``Structure.from_file``,
  ``get_all_neighbors`` + sort, per-atom features, padded batches of 256, dense forward
  of the same weights), in process (``--baseline-repeats`` times, it is slow), plus the
  start-up of ``original_baseline.py`` as a script on one file, so that the CLI can be
  compared with "the original as a script" = start-up + in-process time.

Both in-process pipelines get a warm-up call on 8 files first (lazy imports).
All pipelines run with ``--threads`` torch threads (default 1: on a shared 2-core
machine a second OpenMP thread that gets descheduled stalls every parallel op).

Then one instrumented pass of our pipeline, stage by stage, with the same functions the
predictor calls (CIF parsing, validation, element check, graph, collate, model), and the
neighbour-list share of the graph stage; ``--profile`` adds a cProfile listing.

    python benchmarks/bench_predict.py --dataset mp [--n 1000] [--repeats 3] [--profile]
    python benchmarks/bench_predict.py --dataset perovskites
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

CLI_CODE = "import sys; from cgcnn_ase.cli import main; sys.exit(main())"


def cli_command(model: Path, atom_init: Path | None, files: list[str], output: Path) -> list[str]:
    table = ["--atom-init", str(atom_init)] if atom_init is not None else []
    return [sys.executable, "-c", CLI_CODE, "predict", *files, "--model", str(model), *table, "-o", str(output)]


TUNED_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def run_cli(cmd: list[str], threads: int, extra_env: dict[str, str] | None = None) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_common.REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    env.update(extra_env or {})
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch reads it at start-up
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # 1: some structures could not be predicted, still timed
        raise RuntimeError(f"cgcnn-ase predict failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def our_stages(predictor, paths: list[str], batch_size: int = 64) -> tuple[dict[str, float], np.ndarray]:
    """One pass of the predictor's pipeline with each stage timed (same functions, same order)."""
    import torch

    from cgcnn_ase.graph.neighbours import _raw_neighbors, build_graph
    from cgcnn_ase.graph.batch import collate
    from cgcnn_ase.io.cif import _cif_pymatgen, read_cif
    from cgcnn_ase.io.reader import to_record

    fast = predictor.model.spec.graph.neighbor_policy != "original"  # what predict() does for such models

    spec, network, elements = predictor.model.spec, predictor.model.network, predictor.model.elements
    reader = "CIF parsing + validation (gemmi)" if fast else "CIF parsing (pymatgen CifParser)"
    t = dict.fromkeys([reader, "validation (to_record)", "element check (featurize)",
                       "graph (build_graph)", "collate (incl. Gaussian expansion)", "model forward"], 0.0)  # fmt: skip
    keys = list(t)
    values, records = [], []
    clock = time.perf_counter
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            graphs = []
            for path in paths[start : start + batch_size]:
                t0 = clock()
                if fast:
                    record = read_cif(Path(path), path, "gemmi", text=False)[0]  # gemmi, pymatgen where it cannot
                    t1 = t2 = clock()
                else:
                    objs = _cif_pymatgen(Path(path), path, text=False)
                    t1 = clock()
                    record = to_record(objs[0], label=path)
                    t2 = clock()
                elements.featurize(record.numbers)
                t3 = clock()
                graphs.append(build_graph(record, spec.graph))
                t4 = clock()
                records.append(record)
                for k, dt in zip(keys, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    t[k] += dt
            t0 = clock()
            batch = collate(graphs, elements, spec.graph)
            t1 = clock()
            out = network(batch).double().numpy() * spec.normalizer_std + spec.normalizer_mean
            t2 = clock()
            t[keys[4]] += t1 - t0
            t[keys[5]] += t2 - t1
            values.append(out)
    t0 = clock()
    for record in records:
        _raw_neighbors(record, spec.graph)
    nl = clock() - t0
    order = [*keys[:4], "  of which neighbour list (_raw_neighbors)", *keys[4:]]
    t["  of which neighbour list (_raw_neighbors)"] = nl
    return {k: t[k] for k in order}, np.concatenate(values)


def profile_listing(predictor, paths: list[str], top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    predictor.predict(paths, errors="collect", on_sparse="ignore")
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def run(
    shared: str | None,
    dataset: str,
    n: int,
    repeats: int,
    baseline_repeats: int,
    profile: bool,
    top: int,
    keep: str | None,
    threads: int,
    tuned_malloc: bool = False,
    ours: str | None = None,
) -> str:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from original_baseline import AtomInit, load_dense_model, predict_files

    from cgcnn_ase.inference.predictor import CGCNNPredictor

    _common.quiet()
    model_path = _common.shared_path(shared, _common.ORIGINAL_MODEL)
    atom_init_path = _common.shared_path(shared, _common.ATOM_INIT)
    items = _common.load_cif_strings(shared, dataset, n, seed=0)
    folder, paths = _common.write_cifs(items, keep)
    try:
        if ours is not None:  # this project's model folder (symmetric policy: the fast CIF reader applies)
            predictor = CGCNNPredictor.from_checkpoint(ours, device="cpu")
        else:
            predictor = CGCNNPredictor.from_checkpoint(model_path, atom_init=atom_init_path, device="cpu")
        dense, mean, std = load_dense_model(model_path, atom_init_path)
        atom_init = AtomInit(atom_init_path)
        out_csv = folder / "out.csv"
        cli_model, cli_table = (Path(ours), None) if ours is not None else (model_path, atom_init_path)
        cli_all = cli_command(cli_model, cli_table, paths, out_csv)
        cli_one = cli_command(cli_model, cli_table, paths[:1], folder / "one.csv")

        base_cli = [sys.executable, str(Path(__file__).resolve().parent / "original_baseline.py"), paths[0]]
        if shared:
            base_cli += ["--shared", shared]
        times: dict[str, list[float]] = {
            "cli1": [],
            "cli": [],
            "api": [],
            "base": [],
            "base_cli1": [],
            "cli_malloc": [],
        }
        base_stages = []
        predictor.predict(paths[:8], errors="collect", on_sparse="ignore")  # warm-up: lazy imports, allocator
        predict_files(paths[:8], dense, atom_init, mean, std, 256)
        for r in range(max(repeats, baseline_repeats)):
            if r < baseline_repeats:
                times["base_cli1"].append(run_cli(base_cli, threads))
                dt, (base_values, stages) = _common.timed(
                    lambda: predict_files(paths, dense, atom_init, mean, std, 256)
                )
                times["base"].append(dt)
                base_stages.append(stages)
            if r >= repeats:
                continue
            times["cli1"].append(run_cli(cli_one, threads))
            times["cli"].append(run_cli(cli_all, threads))
            if tuned_malloc:
                times["cli_malloc"].append(run_cli(cli_all, threads, TUNED_MALLOC_ENV))
            dt, result = _common.timed(lambda: predictor.predict(paths, errors="collect", on_sparse="ignore"))
            times["api"].append(dt)
        ok = result.ok
        max_diff = float(np.max(np.abs(result.values[ok] - base_values[ok]))) if ok.any() else float("nan")
        stages, stage_values = our_stages(predictor, [p for p, good in zip(paths, ok) if good])
        listing = profile_listing(predictor, paths, top) if profile else ""
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)

    # atoms in the sample (from the CIF text: one site line per atom in these P1 files)
    atoms = [len(re.findall(r"\n  [A-Z][a-z]?\s+\S+\s+1\s", text)) for _, text in items]
    med = {k: _common.median(v) for k, v in times.items() if v}
    n_ok = int(ok.sum())
    rows = [
        ["cgcnn-ase predict (CLI, 1 file: start-up + model load)", med["cli1"], _common.spread(times["cli1"]), "", ""],
        ["cgcnn-ase predict (CLI, all files)", med["cli"], _common.spread(times["cli"]), n / med["cli"],
         f"{med['base'] / med['cli']:.2f}x"],
        *([["cgcnn-ase predict (CLI, all files, MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=1 GiB)", med["cli_malloc"],
             _common.spread(times["cli_malloc"]), n / med["cli_malloc"], f"{med['base'] / med['cli_malloc']:.2f}x"]]
          if tuned_malloc else []),
        ["CGCNNPredictor.predict (API, batch 64)", med["api"], _common.spread(times["api"]), n / med["api"],
         f"{med['base'] / med['api']:.2f}x"],
        ["original approach (baseline, batch 256)", med["base"], _common.spread(times["base"]), n / med["base"], "1.00x"],
        ["original approach as a script, 1 file (start-up + model load)", med["base_cli1"],
         _common.spread(times["base_cli1"]), "", ""],
        ["original approach as a script, all files (= the two rows above, added)", med["base_cli1"] + med["base"], "",
         n / (med["base_cli1"] + med["base"]), f"CLI vs this: {(med['base_cli1'] + med['base']) / med['cli']:.2f}x"],
    ]  # fmt: skip
    table1 = _common.markdown_table(
        ["pipeline", "wall s (median)", "min–max s", "structures/s", "speedup vs baseline"], rows
    )

    total = sum(v for k, v in stages.items() if not k.startswith(" "))
    rows2 = [[k, 1e3 * v / n_ok, f"{100 * v / total:.1f}%"] for k, v in stages.items()]
    rows2.append(["total (instrumented pass)", 1e3 * total / n_ok, "100%"])
    table2 = _common.markdown_table(["our stage", "ms/structure", "share"], rows2)

    base_total = {k: _common.median([s[k] for s in base_stages]) for k in base_stages[0]}
    bsum = sum(base_total.values())
    rows3 = [[k, 1e3 * v / n, f"{100 * v / bsum:.1f}%"] for k, v in base_total.items()]
    table3 = _common.markdown_table(["baseline stage", "ms/structure", "share"], rows3)

    text = (
        f"### {n} {dataset} CIFs ({n_ok} predicted; atoms per structure: median {int(np.median(atoms))}, "
        f"mean {np.mean(atoms):.1f}, max {max(atoms)})\n\n{table1}\n\n"
        f"Medians over {repeats} interleaved repeats ({baseline_repeats} for the baseline). "
        + (f"Ours: {ours} (neighbor_policy='{predictor.model.spec.graph.neighbor_policy}', fast CIF reader); baseline: "
           "the authors' formation-energy-per-atom weights, so the two predictions differ. " if ours else
           "Model: authors' formation-energy-per-atom.pth.tar (neighbor_policy='original'). ")
        + f"Max |ours - baseline| = {max_diff:.2g} eV/atom; "
        f"instrumented pass agrees with the API to {np.max(np.abs(stage_values - result.values[ok])):.2g}.\n\n"
        f"{table2}\n\n{table3}\n\nMachine: {_common.machine_line()}"
    )
    if profile:
        text += f"\n\ncProfile of CGCNNPredictor.predict (tottime, top {top}):\n\n```\n{listing}```"
    return text


@click.command(help=__doc__.splitlines()[0])
@click.option("--shared", default=None, help="shared/ folder (default: ../shared from the repo root).")
@click.option("--dataset", type=click.Choice(sorted(_common.DATASETS)), default="mp", show_default=True)
@click.option("--n", default=1000, show_default=True, help="number of CIF files.")
@click.option("--repeats", default=3, show_default=True, help="repeats of our CLI and API runs.")
@click.option("--baseline-repeats", default=2, show_default=True, help="repeats of the (slow) baseline.")
@click.option("--profile", is_flag=True, help="also print a cProfile listing of CGCNNPredictor.predict.")
@click.option("--top", default=30, show_default=True, help="rows of the cProfile listing.")
@click.option(
    "--keep", default=None, help="write the CIFs to this folder and keep them (default: a temp folder, removed)."
)
@click.option(
    "--threads",
    default=1,
    show_default=True,
    help="torch threads for all pipelines (CLI via OMP_NUM_THREADS); 0 = torch's default (one per core).",
)
@click.option("--tuned-malloc", is_flag=True, help="also time the CLI with glibc's mmap/trim thresholds at 1 GiB.")
@click.option("--model", "ours", default=None, help="time this model folder or shipped name for our pipelines (default: the authors' checkpoint).")
def main(shared: str | None, dataset: str, n: int, repeats: int, baseline_repeats: int, profile: bool, top: int,
         keep: str | None, threads: int, tuned_malloc: bool, ours: str | None) -> None:  # fmt: skip
    print(run(shared, dataset, n, repeats, baseline_repeats, profile, top, keep, threads, tuned_malloc, ours))


if __name__ == "__main__":
    main()

"""Scale: memory while streaming many structures, and Dask throughput with 1 vs 2 workers.

    python benchmarks/bench_scale.py                       # 100k streamed, Dask on 4000
    python benchmarks/bench_scale.py --n 30000 --skip-dask
    python benchmarks/bench_scale.py --skip-stream --dask-n 2000 --repeats 5

(a) Streaming: a Parquet table of ``--n`` rows (CIF text column; the 46k Materials Project
CIFs of ``shared/data/mp_cgcnn46k_kdmsit`` repeated with unique ids, written in row groups
without holding them) is predicted with the shipped ``formation_energy`` model by
:func:`cgcnn_ase.inference.streaming.predict_stream` into a Parquet folder, in a separate process
whose resident memory (RSS) is sampled after each chunk; the table reports it at the
checkpoints and the peak (``ru_maxrss``).

(b) Dask: ``--dask-n`` MP CIFs in Parquet files of ``--partition`` rows are predicted by
:func:`cgcnn_ase.integrations.dask.predict_dataframe` on a ``LocalCluster`` of 1 and of 2 worker
processes (1 thread each), alternating, ``--repeats`` times after a warm-up that loads the
model on every worker; medians are reported, with the single-process streaming path on the
same table for reference.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import MP_CSV, REPO_ROOT, machine_line, markdown_table, median, quiet, shared_path, spread

MODEL = "formation_energy"


# -- input generation ---------------------------------------------------------------------------


def write_table(shared: str | None, n: int, path: Path, rows_per_group: int = 8192) -> Path:
    """A Parquet file of ``n`` rows (``id``, ``cif``): the MP CIFs repeated, ids ``mp-<row>-<copy>``."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pd.read_csv(shared_path(shared, MP_CSV), usecols=["material_id", "cif"])
    schema = pa.schema([("id", pa.string()), ("cif", pa.string())])
    written = 0
    with pq.ParquetWriter(path, schema) as writer:
        copy = 0
        while written < n:
            for start in range(0, len(source), rows_per_group):
                part = source.iloc[start : start + rows_per_group].iloc[: n - written]
                ids = [f"{m}-{copy}" for m in part["material_id"]]
                writer.write_table(pa.table({"id": ids, "cif": part["cif"].tolist()}, schema=schema))
                written += len(part)
                if written >= n:
                    break
            copy += 1
    return path


# -- (a) streaming memory, in a child process ---------------------------------------------------


def stream_child(table: str, output: str, checkpoints: list[int], chunk_size: int, threads: int) -> None:
    """Run in a fresh process: stream ``table`` to ``output``; print RSS samples as JSON."""
    import psutil
    import torch

    torch.set_num_threads(threads)
    quiet()
    from cgcnn_ase.inference.streaming import load_predictors, predict_stream

    process = psutil.Process()
    predictors = load_predictors([MODEL], device="cpu")
    rss_start = process.memory_info().rss
    done = [0]
    samples: dict[int, float] = {}
    marks = sorted(checkpoints)
    t0 = time.perf_counter()

    steady: list[float] = []  # RSS after every chunk once the first 10k are done, MiB

    def on_chunk(result) -> None:
        done[0] += len(result.frame)
        rss = process.memory_info().rss / 2**20
        if done[0] >= 10_000:
            steady.append(rss)
        while marks and done[0] >= marks[0]:
            samples[marks.pop(0)] = rss
        if done[0] % (10 * chunk_size) < chunk_size:
            print(f"  {done[0]} structures, {time.perf_counter() - t0:.0f} s, RSS {process.memory_info().rss / 2**20:.0f} MiB",
                  file=sys.stderr, flush=True)  # fmt: skip

    summary = predict_stream(table, predictors, output, id_column="id", chunk_size=chunk_size, on_sparse="ignore",
                             on_chunk=on_chunk)  # fmt: skip
    wall = time.perf_counter() - t0
    print(json.dumps({
        "rss_start_mib": rss_start / 2**20,
        "samples_mib": samples,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "steady_mib": [min(steady), max(steady)] if steady else None,
        "n": summary.n_written, "failed": summary.n_failed, "wall_s": wall,
        "members": predictors[0].model.n_members,
    }))  # fmt: skip


def run_stream(args: argparse.Namespace, folder: Path) -> str:
    table = write_table(args.shared, args.n, folder / "structures.parquet")
    checkpoints = sorted({c for c in (10_000, 30_000, 100_000, args.n) if c <= args.n})
    command = [sys.executable, __file__, "--child-stream", str(table), str(folder / "out.parquet"),
               "--checkpoints", ",".join(map(str, checkpoints)), "--chunk-size", str(args.chunk_size),
               "--threads", str(args.threads)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, check=False)  # progress on stderr
    if result.returncode != 0:
        sys.exit("the streaming child process failed (see above)")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    rows = [["after loading the model (before streaming)", "0", f"{data['rss_start_mib']:.0f}"]]
    rows += [[f"after {int(k):,} structures", f"{int(k):,}", f"{v:.0f}"] for k, v in data["samples_mib"].items()]
    if data["steady_mib"]:
        low, high = data["steady_mib"]
        rows.append(["range over every chunk after the first 10,000", f"10,000–{data['n']:,}", f"{low:.0f}–{high:.0f}"])
    rows.append(["peak (ru_maxrss, whole run)", f"{data['n']:,}", f"{data['peak_mib']:.0f}"])
    table_md = markdown_table(["point", "structures written", "RSS MiB"], rows)
    rate = data["n"] / data["wall_s"]
    note = (f"{data['n']:,} MP CIFs (Parquet, CIF text column) streamed to a Parquet folder with `{MODEL}` "
            f"({data['members']} member(s)), "
            f"chunks of {args.chunk_size}, {args.threads} torch thread(s): {data['wall_s']:.0f} s "
            f"({rate:.0f} structures/s), {data['failed']} failed.")  # fmt: skip
    return f"{table_md}\n\n{note}"


# -- (b) Dask throughput ------------------------------------------------------------------------


def run_dask(args: argparse.Namespace, folder: Path) -> str:
    import dask.dataframe as dd
    import pyarrow.parquet as pq
    import torch
    from distributed import Client, LocalCluster

    from cgcnn_ase.integrations.dask import predict_dataframe
    from cgcnn_ase.inference.streaming import load_predictors, predict_stream

    torch.set_num_threads(args.threads)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    whole = write_table(args.shared, args.dask_n, folder / "dask_input.parquet")
    parts = folder / "dask_parts"
    parts.mkdir()
    frame = pq.read_table(whole).to_pandas()
    for k, start in enumerate(range(0, len(frame), args.partition)):
        frame.iloc[start : start + args.partition].to_parquet(parts / f"part-{k:04d}.parquet", index=False)
    del frame
    import dask

    from cgcnn_ase.integrations.dask import worker_config

    clusters = {}
    for key, workers, config in ((1, 1, worker_config()), (2, 2, worker_config()), ("default", 1, {})):
        saved = dict(os.environ)  # Dask's nanny copies pre-spawn-environ into os.environ, where it beats the config
        with dask.config.set(config):  # worker_config(): glibc malloc thresholds for torch (see its docstring)
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                   env={"OMP_NUM_THREADS": str(args.threads)})  # fmt: skip
        os.environ.clear()
        os.environ.update(saved)
        clusters[key] = (cluster, Client(cluster, set_as_default=False))
    for key, (_, client) in clusters.items():
        environ = next(iter(client.run(lambda: os.environ.get("MALLOC_MMAP_THRESHOLD_")).values()))
        assert (environ is None) == (key == "default"), (key, environ)

    def compute(workers: int | str) -> float:
        client = clusters[workers][1]
        table = dd.read_parquet(str(parts))
        t0 = time.perf_counter()
        result = client.compute(predict_dataframe(table, [MODEL], id_column="id", on_sparse="ignore")).result()
        elapsed = time.perf_counter() - t0
        assert len(result) == args.dask_n
        return elapsed

    def single() -> float:
        t0 = time.perf_counter()
        predict_stream(str(whole), [MODEL], folder / f"single-{time.time_ns()}.csv", id_column="id",
                       chunk_size=args.partition, on_sparse="ignore")  # fmt: skip
        return time.perf_counter() - t0

    quiet()
    for workers in clusters:  # warm-up: every worker imports torch and loads the model
        compute(workers)
    single()
    times: dict[str, list[float]] = {"1 worker": [], "2 workers": [], "single process": [], "default": []}
    for _ in range(args.repeats):
        times["1 worker"].append(compute(1))
        times["2 workers"].append(compute(2))
        times["single process"].append(single())
        times["default"].append(compute("default"))
    for cluster, client in clusters.values():
        client.close()
        cluster.close()
    base = median(times["1 worker"])
    rows = []
    for name, values in (("single-process streaming (no Dask)", times["single process"]),
                         ("Dask, 1 worker process", times["1 worker"]),
                         ("Dask, 2 worker processes", times["2 workers"]),
                         ("Dask, 1 worker process, Dask's default MALLOC_TRIM_THRESHOLD_ only", times["default"])):  # fmt: skip
        m = median(values)
        rows.append([name, f"{m:.1f}", spread(values), f"{args.dask_n / m:.0f}", f"{base / m:.2f}x"])
    table_md = markdown_table(["run", "wall s (median)", "min–max s", "structures/s", "vs 1 worker"], rows)
    note = (f"{args.dask_n} MP CIFs in {len(list(parts.iterdir()))} Parquet files of {args.partition} rows, "
            f"`{MODEL}` ({load_predictors([MODEL])[0].model.n_members} member(s)), 1 thread per worker, workers started with `cgcnn_ase.integrations.dask.worker_config()` "
            f"(except the last row), {args.repeats} repeats after a warm-up, runs alternated.")  # fmt: skip
    return f"{table_md}\n\n{note}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=None, help="the shared data folder (default: ../shared)")
    parser.add_argument("--n", type=int, default=100_000, help="structures to stream (a)")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--dask-n", type=int, default=4000, help="structures for the Dask runs (b)")
    parser.add_argument("--partition", type=int, default=250, help="rows per Dask partition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--skip-dask", action="store_true")
    parser.add_argument("--child-stream", nargs=2, metavar=("TABLE", "OUTPUT"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoints", default="10000", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_stream:
        stream_child(*args.child_stream, [int(c) for c in args.checkpoints.split(",")], args.chunk_size, args.threads)
        return
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        folder = Path(tmp)
        if not args.skip_stream:
            print("## Memory while streaming\n")
            print(run_stream(args, folder), "\n", flush=True)
        if not args.skip_dask:
            print("## Dask throughput\n")
            print(run_dask(args, folder), "\n")
    print(machine_line())


if __name__ == "__main__":
    main()

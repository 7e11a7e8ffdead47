"""GPU throughput of the batched pipeline: neighbour search, collate and networks on the device.

Two steps, because the GPU machine has torch but not ASE, pymatgen or gemmi:

1. Here (any machine with ../shared): ``python benchmarks/bench_gpu.py prepare --n 4000 -o .bench/gpu_inputs.npz``
   reads ``--n`` Materials Project CIFs and stores them as flat arrays (atomic numbers, wrapped
   fractional coordinates, cells, sizes) with the edge count and distance sum of each crystal's
   ``build_graph`` graph (symmetric policy), the reference for the correctness check.
2. On the GPU machine (carry ``.bench``, and for the files stage a gemmi wheel: ``python3 -m pip download
   --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl gemmi==0.7.5``,
   installed there with ``pip install --no-deps --target /tmp/site .whl/*.whl`` and ``PYTHONPATH=/tmp/site``;
   ASE, pymatgen and scipy are not needed there, ``tests/test_batched_graphs.py`` checks that):
   ``python benchmarks/bench_gpu.py run .bench/gpu_inputs.npz``
   times, per batch size, median of ``--repeats`` passes over all crystals (CUDA-synchronised):

   * ``edges``: :func:`~cgcnn_ase.graph.batched.batch_edges` from flat arrays already on the device;
   * ``edges + collate``: and :func:`~cgcnn_ase.graph.batched.collate_edges` (merging, Gaussians, elements);
   * ``end to end, 1 network`` / ``5 networks``: from pinned host arrays (copy included) to
     predictions of ``formation_energy`` (member 0 / all members, fast networks);
   * ``network only``: the networks on batches collated beforehand;
   * ``from CIF files``: ``predict(paths, workers=16)`` on the stored CIF texts written as files, parsed
     in worker processes (needs gemmi on that machine: carry its wheel, see the device notes).

   and checks every crystal's edge count and distance sum against the reference, and the GPU
   predictions against the CPU's (1 network and the 5-member ensemble, stored by ``prepare``).

Results are printed as a markdown table (and written to ``--json`` if given).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@click.group()
def main() -> None:
    """Prepare inputs here, run on the GPU machine."""


@main.command()
@click.option("--n", default=4000, show_default=True)
@click.option("--shared", default=None)
@click.option("-o", "--output", default=".bench/gpu_inputs.npz", show_default=True)
def prepare(n: int, shared: str | None, output: str) -> None:
    """Flat arrays and reference edge statistics of N MP crystals."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common

    from cgcnn_ase.graph.config import GraphConfig
    from cgcnn_ase.graph.neighbours import build_graph, wrapped_frac_coords
    from cgcnn_ase.io.reader import read_records

    import warnings

    from cgcnn_ase.errors import CloseAtomsWarning
    from cgcnn_ase.inference.predictor import CGCNNPredictor

    _common.quiet()
    items = _common.load_cif_strings(shared, "mp", n)
    records, cifs, graphs = [], [], []
    for _, cif in items:  # leave out crystals build_graph warns about (the GPU machine lacks pymatgen)
        record = read_records(cif)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("error", CloseAtomsWarning)
            try:
                graphs.append(build_graph(record, GraphConfig(), on_sparse="ignore"))
            except CloseAtomsWarning:
                continue
        records.append(record)
        cifs.append(cif)
    torch.set_num_threads(1)
    one, five = CGCNNPredictor.load("formation_energy", members=1, device="cpu"), CGCNNPredictor.load("formation_energy", device="cpu")
    single, full = one.predict(records, batch_size=256), five.predict(records, batch_size=256)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        output,
        numbers=np.concatenate([r.numbers for r in records]),
        frac=np.concatenate([wrapped_frac_coords(r.frac_coords) for r in records]),
        cells=np.stack([r.cell for r in records]),
        sizes=np.array([len(r) for r in records]),
        edge_counts=np.array([len(g.distances) for g in graphs]),
        distance_sums=np.array([g.distances.sum() for g in graphs]),
        cpu_values_1=single.values,
        cpu_values_5=full.member_values,
        cifs=np.array(cifs),
        model=np.array(_model_id(five)),  # the reference values belong to this model
    )
    print(f"{len(records)} crystals, {sum(len(g.distances) for g in graphs)} edges -> {output}")


def _model_id(predictor) -> str:
    """The shipped model's name and a digest of its weights: stored reference values are only comparable with it."""
    import hashlib

    digest = hashlib.sha256()
    for net, _, _ in predictor.model.heads():
        for tensor in net.state_dict().values():
            digest.update(tensor.detach().cpu().numpy().tobytes())
    return f"{predictor.model.spec.name} {digest.hexdigest()[:16]}"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _from_files(data, full, single, workers: int, copies: int) -> dict[str, float | str]:
    """Structures/s from a folder of CIF files (the stored CIFs written ``copies`` times, so that the
    pool's start is a small part): parsed in ``workers`` processes, graphs and networks on the
    predictor's device (needs gemmi there: carry its wheel)."""
    try:
        import gemmi  # noqa: F401
    except ImportError:
        return {"from CIF files": "skipped: gemmi is not installed on this machine"}
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="bench_gpu_cifs_"))
    paths = []
    for k, text in enumerate(list(data["cifs"]) * copies):
        path = folder / f"{k:07d}.cif"
        path.write_text(str(text))
        paths.append(str(path))
    out: dict[str, float | str] = {}
    try:
        for name, predictor in (("from CIF files, 1 network", single), ("from CIF files, 5 networks", full)):
            predictor.predict(paths[:512], workers=workers, batch_size=256)  # pool start and warm-up
            start = time.perf_counter()
            predictor.predict(paths, workers=workers, batch_size=256)
            _sync()
            out[name] = len(paths) / (time.perf_counter() - start)
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)  # up to 40,000 files at the defaults
    return out


def _from_memory(data, full, single, batch: int, on_result=lambda out: None) -> dict[str, float | str]:
    """Structures/s of the public API, ``predict(structures)``, from structures in memory
    (:class:`StructureRecord` objects and ``ase.Atoms`` when ASE is there), and the largest
    difference from the CPU predictions stored by ``prepare``."""
    from cgcnn_ase.io.records import StructureRecord

    sizes = data["sizes"]
    starts = np.concatenate(([0], np.cumsum(sizes)))
    records = [
        StructureRecord(numbers=data["numbers"][a:b].astype(np.int64), frac_coords=data["frac"][a:b],
                        cell=data["cells"][k], label=str(k))
        for k, (a, b) in enumerate(zip(starts[:-1], starts[1:]))
    ]  # fmt: skip
    inputs = {"records": records}
    try:
        inputs["ase.Atoms"] = [r.to_ase() for r in records]
    except ImportError:
        pass
    out: dict[str, float | str] = {}
    for kind, structures in inputs.items():
        for name, predictor, reference in (("1 network", single, data["cpu_values_1"]),
                                           ("5 networks", full, data["cpu_values_5"])):  # fmt: skip
            predictor.predict(structures[:batch], batch_size=batch)  # warm-up
            seconds = []
            for _ in range(3):
                _sync()
                start = time.perf_counter()
                result = predictor.predict(structures, batch_size=batch)
                _sync()
                seconds.append(time.perf_counter() - start)
            out[f"predict({kind}), {name}"] = len(structures) / statistics.median(seconds)
            got = result.values if name == "1 network" else result.member_values
            out[f"predict({kind}), {name}: max |GPU - CPU|"] = float(np.max(np.abs(np.asarray(got) - reference)))
            on_result(out)  # kept if a later measurement runs out of time
    return out


def _save(json_path: str | None, results: dict) -> None:
    """Write what was measured so far (a later stage may not finish)."""
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))


def _pinned(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    return tensor.pin_memory() if pin else tensor


@main.command()
@click.argument("inputs")
@click.option("--batch-sizes", default="256,1024", show_default=True)
@click.option("--repeats", default=5, show_default=True)
@click.option("--json", "json_path", default=None)
@click.option("--device", default="cuda", show_default=True, help="cpu: a quick check of this script where there is no GPU.")
@click.option("--workers", default=16, show_default=True, help="Processes parsing the CIF files (the files stage).")
@click.option("--file-copies", default=10, show_default=True, help="The files stage reads the CIFs written this many times.")
@click.option("--stages", default="edges,api,files", show_default=True, help="Which stages to run (comma-separated).")
def run(inputs: str, batch_sizes: str, repeats: int, json_path: str | None, device: str, workers: int,
        file_copies: int, stages: str) -> None:  # fmt: skip
    """Time the batched pipeline on CUDA and check its edges."""
    from cgcnn_ase.graph.batched import FlatCrystals, batch_edges, collate_edges
    from cgcnn_ase.graph.config import GraphConfig
    from cgcnn_ase.inference.predictor import CGCNNPredictor

    try:
        device = torch.device(device)
    except RuntimeError:
        raise click.ClickException(f"--device {device!r}: give cuda, cuda:N or cpu") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("no CUDA GPU here: give --device cpu for a check of this script")
    data = np.load(inputs)
    sizes = data["sizes"]
    starts = np.concatenate(([0], np.cumsum(sizes)))
    pin = device.type == "cuda"
    config = GraphConfig()
    full = CGCNNPredictor.load("formation_energy", device=device)
    single = CGCNNPredictor.load("formation_energy", members=1, device=device)
    stored, current = str(data["model"]) if "model" in data else "unknown", _model_id(full)
    if stored != current:
        raise click.ClickException(f"{inputs} holds reference values of {stored}, not of the shipped "
                                   f"formation_energy ({current}): run `bench_gpu.py prepare` again")  # fmt: skip
    full.graph_backend = single.graph_backend = "batched"  # what "auto" picks on CUDA (also on a CPU check here)
    features = full.element_features()
    rows, results = [], {}
    stages = set(stages.split(","))
    for batch in (int(b) for b in batch_sizes.split(",") if "edges" in stages):
        chunks = []
        for k in range(0, len(sizes), batch):
            a, b = starts[k], starts[min(k + batch, len(sizes))]
            host = FlatCrystals(*(_pinned(torch.from_numpy(np.ascontiguousarray(x)), pin) for x in (
                data["numbers"][a:b].astype(np.int64), data["frac"][a:b], data["cells"][k:k + batch],
                sizes[k:k + batch].astype(np.int64))))  # fmt: skip
            chunks.append(host)
        on_device = [c.to(device) for c in chunks]

        def edges():
            return [batch_edges([None] * len(f.sizes), config, flat=f)[1] for f in on_device]

        # correctness: edge count and distance sum per crystal
        counts, sums = [], []
        for f, e in zip(on_device, edges()):
            crystal = f.crystal_index[e.centers]
            counts.append(torch.bincount(crystal, minlength=len(f.sizes)).cpu().numpy())
            sums.append(torch.zeros(len(f.sizes), dtype=torch.float64, device=device).index_add_(0, crystal, e.distances).cpu().numpy())
        counts, sums = np.concatenate(counts), np.concatenate(sums)
        exact = int(np.sum(counts == data["edge_counts"]))
        max_sum = float(np.max(np.abs(sums - data["distance_sums"])))
        collated = [collate_edges(f, e, features, config) for f, e in zip(on_device, edges())]

        def end_to_end(predictor, out=None):
            def go():
                for host in chunks:
                    f = host.to(device, non_blocking=True)
                    e = batch_edges([None] * len(f.sizes), config, flat=f)[1]
                    g = collate_edges(f, e, features, config)
                    values = predictor._forward(g, [0] * len(f.sizes), per_atom=False)[0]
                    if out is not None:
                        out.append(values)
            return go

        got_1, got_5 = [], []
        end_to_end(single, got_1)()
        end_to_end(full, got_5)()
        diff_1 = float(np.max(np.abs(np.concatenate(got_1, axis=1)[0] - data["cpu_values_1"])))
        diff_5 = float(np.max(np.abs(np.concatenate(got_5, axis=1).T - data["cpu_values_5"])))
        print(f"batch {batch}: max |GPU - CPU| = {diff_1:.1e} (1 network), {diff_5:.1e} (5 members), model units")

        def network(predictor):
            def go():
                for g in collated:
                    with torch.no_grad():
                        for net, _, _ in predictor.heads():
                            net(g)
            return go

        timings = {
            "edges": _timed(edges, repeats),
            "edges + collate": _timed(lambda: [collate_edges(f, e, features, config) for f, e in zip(on_device, edges())], repeats),
            "network only, 1 network": _timed(network(single), repeats),
            "network only, 5 networks": _timed(network(full), repeats),
            "end to end, 1 network": _timed(end_to_end(single), repeats),
            "end to end, 5 networks": _timed(end_to_end(full), repeats),
        }
        for name, seconds in timings.items():
            rows.append([batch, name, f"{len(sizes) / seconds:,.0f}"])
        results[batch] = {"timings_s": timings, "crystals": len(sizes), "edge_counts_equal": exact,
                          "max_distance_sum_diff": max_sum, "max_diff_vs_cpu": [diff_1, diff_5]}  # fmt: skip
        print(f"batch {batch}: edge counts equal for {exact} of {len(sizes)} crystals; max |distance sum diff| {max_sum:.2e} Å")
        _save(json_path, results)
    if "api" in stages:
        results["api"] = _from_memory(data, full, single, max(int(b) for b in batch_sizes.split(",")),
                                      on_result=lambda out: _save(json_path, {**results, "api": out}))  # fmt: skip
        for name, value in results["api"].items():
            rows.append(["api", name, f"{value:.1e}" if "max" in name else f"{value:,.0f}"])
        print(results["api"], flush=True)
        _save(json_path, results)
    if "files" in stages:
        results["cif files"] = _from_files(data, full, single, workers, file_copies)
        for name, rate in results["cif files"].items():
            rows.append(["files", name, f"{rate:,.0f}" if isinstance(rate, float) else rate])
    print("| batch | stage | structures/s |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")
    print(torch.cuda.get_device_name() if pin else "CPU", "torch", torch.__version__)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

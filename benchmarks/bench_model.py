"""Model forward time: ConvLayer.split_matmul off vs on, glibc malloc default vs tuned.

One batch of ``--batch`` crystals (MP crystals and 5-atom perovskites) is built with the
authors' formation-energy checkpoint's graph settings (12 neighbours per atom); then
forwards are timed under ``torch.inference_mode`` with every conv layer's
``split_matmul`` set to False and True, interleaved, ``--repeats`` samples each, for
each torch thread count in ``--threads``. The dense forward of
``original_baseline.DenseCGCNN`` on the padded (N, 12) arrays of the same crystals is
timed alongside as a reference. Minor page faults per forward are counted too: they do
not depend on the machine's load, and explain most of the allocator effect.

Each allocator setting runs in its own subprocess (a malloc setting cannot be undone):

* ``default``: glibc as it comes. Tensors above its mmap threshold (at most 32 MiB) are
  mmap-ed fresh on every allocation and returned on free, so every large intermediate
  is page-faulted in again on every forward.
* ``tuned``: ``mallopt(M_MMAP_THRESHOLD, 1 GiB)`` and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``
  via ctypes before anything is allocated (the same as the environment variables
  ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``), so freed memory is reused.

    python benchmarks/bench_model.py [--batch 256] [--repeats 11] [--threads 1] [--malloc both]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

GIB = 1 << 30


def tune_malloc() -> bool:
    """Keep large blocks on the heap and do not trim it (glibc only); True if glibc accepted."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, GIB)) and bool(libc.mallopt(m_trim_threshold, GIB))


def _batches(shared: str | None, dataset: str, size: int, loaded):
    import torch
    from original_baseline import AtomInit, collate_pool, original_graph
    from pymatgen.core import Structure

    from cgcnn_ase.graph.neighbours import build_graph
    from cgcnn_ase.graph.batch import collate
    from cgcnn_ase.io.records import from_pymatgen

    structures = [
        Structure.from_str(cif, fmt="cif") for _, cif in _common.load_cif_strings(shared, dataset, size, seed=0)
    ]
    records = [from_pymatgen(s) for s in structures]
    batch = collate(
        [build_graph(r, loaded.spec.graph, on_sparse="ignore") for r in records], loaded.elements, loaded.spec.graph
    )
    atom_init = AtomInit(_common.shared_path(shared, _common.ATOM_INIT))
    items = []
    for s in structures:
        idx, fea = original_graph(s)
        atom_fea = np.vstack([atom_init.get(site.specie.number) for site in s])
        items.append((torch.Tensor(atom_fea), torch.Tensor(fea), torch.LongTensor(idx)))
    return batch, collate_pool(items)


def _sample(func) -> tuple[float, int]:
    import resource

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    func()
    elapsed = time.perf_counter() - start
    return elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def measure(shared: str | None, batch_size: int, repeats: int, threads: list[int], malloc: str) -> list[list]:
    """Rows of the table for one allocator setting (run in a fresh process)."""
    tuned = tune_malloc() if malloc == "tuned" else False
    if malloc == "tuned" and not tuned:
        return []
    import torch
    from original_baseline import DenseCGCNN

    from cgcnn_ase.models.registry import load_model as load_checkpoint

    _common.quiet()
    loaded = load_checkpoint(
        _common.shared_path(shared, _common.ORIGINAL_MODEL), atom_init=_common.shared_path(shared, _common.ATOM_INIT)
    )
    net = loaded.network.eval()
    dense = DenseCGCNN(net.state_dict()).eval()

    def set_split(flag: bool) -> None:
        for conv in net.convs:
            conv.split_matmul = flag

    rows = []
    for dataset in ("mp", "perovskites"):
        batch, padded = _batches(shared, dataset, batch_size, loaded)
        with torch.inference_mode():
            set_split(False)
            ref = net(batch)
            set_split(True)
            diff = float((net(batch) - ref).abs().max()) * loaded.spec.normalizer_std
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                samples: dict[str, list[float]] = {"off": [], "on": [], "dense": []}
                faults: dict[str, list[int]] = {"off": [], "on": [], "dense": []}
                for flag in (False, True):  # warm-up
                    set_split(flag)
                    net(batch)
                dense(*padded)
                for _ in range(repeats):
                    for key, flag in (("off", False), ("on", True)):
                        set_split(flag)
                        dt, nf = _sample(lambda batch=batch: net(batch))
                        samples[key].append(dt)
                        faults[key].append(nf)
                    dt, nf = _sample(lambda padded=padded: dense(*padded))
                    samples["dense"].append(dt)
                    faults["dense"].append(nf)
                ratios = [a / b for a, b in zip(samples["off"], samples["on"])]
                med = {k: 1e3 * statistics.median(v) for k, v in samples.items()}
                rows.append([
                    f"{batch_size} {dataset}", batch.atom_fea.shape[0], batch.centers.shape[0], malloc, n_threads,
                    med["off"], med["on"], f"{statistics.median(ratios):.2f}x", med["dense"],
                    int(statistics.median(faults["off"])), int(statistics.median(faults["on"])),
                    int(statistics.median(faults["dense"])), f"{diff:.1g}",
                ])  # fmt: skip
        set_split(False)
    return rows


def run(shared: str | None, batch_size: int, repeats: int, threads: str, malloc: str) -> str:
    settings = ["default", "tuned"] if malloc == "both" else [malloc]
    rows = []
    for setting in settings:
        cmd = [sys.executable, __file__, "--batch", str(batch_size), "--repeats", str(repeats), "--threads", threads,
               "--malloc", setting, "--rows-json"] + (["--shared", shared] if shared else [])  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:  # the child's own message (a missing ../shared file), not a CalledProcessError traceback
            sys.exit(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"{cmd} failed ({done.returncode})")
        rows += json.loads(done.stdout.strip().splitlines()[-1])
    rows.sort(key=lambda r: (r[0], r[4], r[3]))  # batch, threads, allocator
    header = ["batch", "atoms", "edges", "malloc", "threads", "split_matmul=False ms", "split_matmul=True ms",
              "speedup (off/on)", "dense original-style ms", "page faults/forward (off)", "page faults/forward (on)",
              "page faults/forward (dense)", "max |Δ| split (eV/atom)"]  # fmt: skip
    return (
        f"{_common.markdown_table(header, rows)}\n\nForward only, torch.inference_mode, authors' formation-energy "
        f"model (4 convs, A=64); medians over {repeats} interleaved samples; speedup = median of per-sample "
        f"ratios. Each malloc setting ran in its own process, with the thread count of its row.\n"
        f"Machine: {_common.machine_line()}"
    )


@click.command(help=__doc__.splitlines()[0])
@click.option("--shared", default=None, help="shared/ folder (default: ../shared from the repo root).")
@click.option("--batch", "batch_size", default=256, show_default=True, help="crystals per batch.")
@click.option("--repeats", default=11, show_default=True)
@click.option("--threads", default="1", show_default=True, help="comma-separated torch thread counts, e.g. 1,2.")
@click.option("--malloc", type=click.Choice(["both", "default", "tuned"]), default="both", show_default=True)
@click.option("--rows-json", is_flag=True, hidden=True, help="internal: print the rows of one setting as JSON.")
def main(shared: str | None, batch_size: int, repeats: int, threads: str, malloc: str, rows_json: bool) -> None:
    if rows_json:
        print(json.dumps(measure(shared, batch_size, repeats, [int(t) for t in threads.split(",")], malloc)))
    else:
        print(run(shared, batch_size, repeats, threads, malloc))


if __name__ == "__main__":
    main()

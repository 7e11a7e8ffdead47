"""Training speed: cgcnn_ase.train.trainer vs the original CGCNN training approach, per cached epoch.

Workload (the issue's): the first ``--n`` (2000) Castelli perovskites, target ``e_form``,
an 80/10/10 split (1600 training crystals), the original architecture (atom_fea_len 64,
n_conv 3, h_fea_len 128, n_h 1), batches of 256, SGD (lr 0.01, momentum 0.9).

Measured, all in this process and on this machine (so background load hits every row alike):

* **ours, end to end**: :func:`cgcnn_ase.train.trainer.train_from_config` for ``--epochs``
  epochs, with ``compile: false`` (the default) and ``compile: true``; per-epoch wall time
  from its ``metrics.csv`` (training steps + validation on 200 crystals; the checkpoint
  written after each epoch is not included). Epoch 1 includes warm-up (and compilation);
  the median and minimum of the later, cached epochs are reported.
* **ours, training steps only**: the same model and batches in a bare loop, split into
  batch assembly (``GraphBatcher.batch``), forward, backward and optimiser step, with 1 and
  2 torch threads: eager with and without merged edges, with bfloat16 autocast
  (``precision: bf16``), and compiled (``compile: true``, through the training code's
  ``TrainingForward``) in float32 and bf16; eager and compiled also with the plain gated
  convolution (``fused`` off, :mod:`cgcnn_ase.nn.fused` is the default on CPUs); and eager,
  compiled and compiled bf16 with batches of one edge-feature row per distinct length of each
  crystal ("distinct lengths": ``GraphBatcher(..., distinct_distances=True)``, whose split-form
  convolutions multiply each length once; the other rows have one row per edge).
* **original approach**: per-crystal tensors cached in memory as the original's
  ``lru_cache``-d dataset does (atom features (n, 92), Gaussian-expanded padded neighbour
  features (n, 12, 41), neighbour indices (n, 12)), batches built with a ``collate_pool``
  equivalent (``torch.cat`` + per-crystal index lists), and a dense CGCNN on the padded
  (N, 12, 2A + B) tensor written from the paper's equations (as in
  ``original_baseline.py``), trained the same way. Graphs use the ``original`` neighbour
  policy (exactly 12 neighbours per atom).

Rows are timed in interleaved rounds (the original, then every variant, ``--rounds`` times), and
each speed-up is the median over rounds of the ratio within one round: the machines here are
shared and their speed drifts by tens of percent over minutes.

    python benchmarks/bench_training.py [--shared ../shared] [--n 2000] [--rounds 4] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ARCH = dict(atom_fea_len=64, n_conv=3, h_fea_len=128, n_h=1)
BATCH = 256


# -- the original approach, trainable ----------------------------------------------------------
class DenseConv(nn.Module):
    """Gated convolution on padded (N, M) neighbour arrays (paper Eq. 5, original layout)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.a = a
        self.fc_full = nn.Linear(2 * a + b, 2 * a)
        self.bn1 = nn.BatchNorm1d(2 * a)
        self.bn2 = nn.BatchNorm1d(a)

    def forward(self, x: torch.Tensor, nbr_fea: torch.Tensor, nbr_idx: torch.Tensor) -> torch.Tensor:
        n, m = nbr_idx.shape
        z = torch.cat([x.unsqueeze(1).expand(n, m, self.a), x[nbr_idx, :], nbr_fea], dim=2)
        gated = self.bn1(self.fc_full(z).view(-1, 2 * self.a)).view(n, m, 2 * self.a)
        filt, core = gated.chunk(2, dim=2)
        summed = torch.sum(torch.sigmoid(filt) * nn.functional.softplus(core), dim=1)
        return nn.functional.softplus(x + self.bn2(summed))


class DenseCGCNN(nn.Module):
    def __init__(
        self, orig: int = 92, b: int = 41, atom_fea_len: int = 64, n_conv: int = 3, h_fea_len: int = 128, n_h: int = 1
    ):
        super().__init__()
        self.embedding = nn.Linear(orig, atom_fea_len)
        self.convs = nn.ModuleList([DenseConv(atom_fea_len, b) for _ in range(n_conv)])
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
        self.fcs = nn.ModuleList([nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1)])
        self.fc_out = nn.Linear(h_fea_len, 1)

    def forward(self, atom_fea, nbr_fea, nbr_idx, crystal_atom_idx):
        x = self.embedding(atom_fea)
        for conv in self.convs:
            x = conv(x, nbr_fea, nbr_idx)
        crys = torch.cat([torch.mean(x[idx], dim=0, keepdim=True) for idx in crystal_atom_idx], dim=0)
        h = nn.functional.softplus(self.conv_to_fc(nn.functional.softplus(crys)))
        for fc in self.fcs:
            h = nn.functional.softplus(fc(h))
        return self.fc_out(h).squeeze(1)


def collate_pool(items):
    atom, nbr, idx, crys, base = [], [], [], [], 0
    for a, f, i in items:
        n = a.shape[0]
        atom.append(a)
        nbr.append(f)
        idx.append(i + base)
        crys.append(torch.arange(n) + base)
        base += n
    return torch.cat(atom), torch.cat(nbr), torch.cat(idx), crys


class OriginalLoop:
    """Cached epochs of the original approach on ``records`` (the training crystals) and their targets."""

    def __init__(self, records, targets, elements) -> None:
        from cgcnn_ase.graph.batch import gaussian_expand
        from cgcnn_ase.graph.config import GraphConfig
        from cgcnn_ase.graph.neighbours import build_graph

        config = GraphConfig(neighbor_policy="original")
        self.cache = []
        for record in records:  # the original's lru_cache: one tensor triple per crystal
            g = build_graph(record, config, on_sparse="ignore")
            n = g.n_atoms
            self.cache.append(
                (
                    torch.from_numpy(elements.featurize(g.numbers)),
                    gaussian_expand(torch.from_numpy(g.distances), config).view(n, 12, -1),
                    torch.from_numpy(g.neighbors).view(n, 12),
                )
            )
        y = torch.tensor(targets, dtype=torch.float32)
        self.y = (y - y.mean()) / y.std()
        torch.manual_seed(0)
        self.model = DenseCGCNN(**ARCH)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.gen = torch.Generator().manual_seed(0)

    def epochs(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            order = torch.randperm(len(self.cache), generator=self.gen).tolist()
            for s in range(0, len(order), BATCH):
                chunk = order[s : s + BATCH]
                batch = collate_pool([self.cache[k] for k in chunk])
                loss = nn.functional.mse_loss(self.model(*batch), self.y[chunk])
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
            times.append(time.perf_counter() - t0)
        return times


def train_positions(n_rows: int) -> np.ndarray:
    """Store positions of the training crystals: a seeded 80% (the 80/10/10 split of the workload), sorted."""
    n_train = n_rows - 2 * round(0.1 * n_rows)
    return np.sort(np.random.default_rng(0).permutation(n_rows)[:n_train])


# -- ours ------------------------------------------------------------------------------------------
class OursLoop:
    """Our training steps in a bare loop (one model, optimiser and shuffle stream per variant).

    ``epochs(n)`` returns, per epoch, seconds of batch assembly / forward / backward /
    optimiser step. Compiled variants go through :class:`cgcnn_ase.train.steps.TrainingForward`
    (the code ``compile: true`` runs); call it under the thread count it is timed with.
    """

    def __init__(
        self, store, targets, train_idx, elements, *, bf16: bool, merge_edges: bool, compile: bool, fused: bool = True,
        distinct: bool = False,
    ) -> None:  # fmt: skip
        from cgcnn_ase.graph.config import GraphConfig
        from cgcnn_ase.nn.network import CrystalGraphConvNet
        from cgcnn_ase.train.cache import GraphBatcher
        from cgcnn_ase.train.steps import TrainingForward

        self.batcher = GraphBatcher(
            store, elements, GraphConfig(), merge_edges=merge_edges, distinct_distances=distinct
        )
        self.y = torch.tensor((targets - targets[train_idx].mean()) / targets[train_idx].std(), dtype=torch.float32)
        self.train_idx = train_idx
        self.bf16 = bf16
        torch.manual_seed(0)
        self.model = CrystalGraphConvNet(**ARCH)
        self.model.set_execution(split_matmul=True)
        self.forward = TrainingForward(self.model, self.model, compile=compile)
        if not fused:
            self.model.set_execution(fused=False)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.gen = torch.Generator().manual_seed(0)

    def epochs(self, n: int) -> list[dict[str, float]]:
        from cgcnn_ase.train.steps import batch_chunks

        rows = []
        for _ in range(n):
            t = dict(batch=0.0, forward=0.0, backward=0.0, step=0.0)
            order = self.train_idx[torch.randperm(len(self.train_idx), generator=self.gen).numpy()]
            for chunk in batch_chunks(order, BATCH):
                t0 = time.perf_counter()
                b = self.batcher.batch(chunk)
                t1 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                    out = self.forward(b)
                loss = nn.functional.mse_loss(out.float(), self.y[chunk])
                t2 = time.perf_counter()
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                t3 = time.perf_counter()
                self.opt.step()
                t4 = time.perf_counter()
                t["batch"] += t1 - t0
                t["forward"] += t2 - t1
                t["backward"] += t3 - t2
                t["step"] += t4 - t3
            t["total"] = sum(t.values())
            rows.append(t)
        return rows


def ours_end_to_end(spec, cache_dir: Path, epochs: int, threads: int | None, compile: bool) -> tuple[list[float], float]:
    """Per-epoch seconds from metrics.csv of a real train_from_config run, and its wall time."""
    import pandas as pd

    from cgcnn_ase.train.config import TrainConfig
    from cgcnn_ase.train.config_sections import ModelConfig, OptimConfig, ScheduleConfig, SplitConfig
    from cgcnn_ase.train.trainer import train_from_config

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            data=spec, output=str(Path(out) / "model"), units="eV", split=SplitConfig(train=0.8, val=0.1, test=0.1, seed=0),
            model=ModelConfig(**ARCH), optim=OptimConfig(name="sgd", lr=0.01, momentum=0.9),
            schedule=ScheduleConfig(name="multistep", milestones=[100]), epochs=epochs, batch_size=BATCH,
            cache_dir=str(cache_dir), threads=threads, device="cpu", compile=compile,
        )  # fmt: skip
        t0 = time.perf_counter()
        folder = train_from_config(config, progress=False)
        wall = time.perf_counter() - t0
        return pd.read_csv(folder / "metrics.csv")["epoch_time_s"].tolist(), wall


# (label, bf16, merged edges, compile, fused, distinct lengths); every variant uses split_matmul, as training
# does; fused (cgcnn_ase.nn.fused, the default on CPUs) off gives the plain layer, and distinct lengths
# (GraphBatcher's distinct_distances) one edge-feature row per distinct length of each crystal
VARIANTS = (
    ("ours, eager, unmerged edges", False, False, False, True, False),
    ("ours, eager, plain layer (fused off)", False, True, False, False, False),
    ("ours, eager, one row per edge", False, True, False, True, False),
    ("ours, eager (the default: distinct lengths)", False, True, False, True, True),
    ("ours, eager + bf16", True, True, False, True, True),
    ("ours, compile: true, plain layer (fused off)", False, True, True, False, True),
    ("ours, compile: true, one row per edge", False, True, True, True, False),
    ("ours, compile: true", False, True, True, True, True),
    ("ours, compile: true + bf16, one row per edge", True, True, True, True, False),
    ("ours, compile: true + bf16", True, True, True, True, True),
)


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--shared", default=None, help="shared/ folder (default: ../shared next to the repo).")
@click.option("--n", "n_crystals", default=2000, show_default=True, help="perovskites to use (first rows of the file).")
@click.option("--epochs", type=click.IntRange(min=2), default=6, show_default=True, help="epochs of each end-to-end run (the first compiles; the later ones are timed).")
@click.option("--rounds", default=4, show_default=True, help="interleaved rounds (original, then each variant).")
@click.option("--repeats", default=3, show_default=True, help="timed epochs per variant and round.")
@click.option("--threads", default=2, show_default=True, help="torch threads of the end-to-end runs.")
@click.option("--thread-counts", default="1,2", show_default=True, help="torch threads of the bare-loop rows.")
def main(shared: str | None, n_crystals: int, epochs: int, rounds: int, repeats: int, threads: int,
         thread_counts: str) -> None:  # fmt: skip
    import os

    from cgcnn_ase.data.datasets import DatasetSpec, load_table, parse_structures
    from cgcnn_ase.graph.config import GraphConfig
    from cgcnn_ase.graph.elements import generate_cgcnn_table
    from cgcnn_ase.nn.threads import torch_threads
    from cgcnn_ase.train.cache import build_graph_store

    _common.quiet()
    path = _common.shared_path(shared, _common.PEROVSKITE_CSV)
    spec = DatasetSpec(path=str(path), target="e_form", limit=n_crystals)
    elements = generate_cgcnn_table()
    lines = [f"# Training speed, {n_crystals} perovskites (1600-crystal training split), batch {BATCH}", ""]
    with tempfile.TemporaryDirectory() as cache:
        table = load_table(spec)
        t0 = time.perf_counter()
        store, rows, _ = build_graph_store(table, GraphConfig(), cache_dir=cache, workers=2)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_graph_store(table, GraphConfig(), cache_dir=cache, workers=2)
        warm = time.perf_counter() - t0
        targets = table.raw_targets[rows]
        train_idx = train_positions(len(rows))
        records = parse_structures(table, [rows[k] for k in train_idx], workers=2)
        edges_per_atom = store.n_edges.sum() / store.n_atoms.sum()
        lines += [
            f"Graphs: {cold:.1f} s to parse and build {len(rows)} (cold cache), "
            f"{warm:.2f} s to load them from the cache; "
            f"{edges_per_atom:.2f} edges per atom (symmetric policy; the original policy has exactly 12).",
            "",
        ]
        end_to_end = {}
        for flag in (False, True):
            torch._dynamo.reset()
            end_to_end[flag] = ours_end_to_end(spec, Path(cache), epochs, threads, flag)

        original = OriginalLoop(records, targets[train_idx], elements)
        table_rows = []
        for n_threads in (int(t) for t in thread_counts.split(",")):
            # forget earlier compilations: one function's compiled variants are capped (torch._dynamo's
            # recompile_limit), past which it silently runs eagerly; the compiled rows here need about 10
            # (each compiles for batches of up to 4096 edges and for larger ones), so the cap is raised too
            torch._dynamo.reset()
            limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
            setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 32))
            with torch_threads(n_threads):
                loops = {}
                for label, bf16, merge, compile, fused, distinct in VARIANTS:  # the first epoch warms up (and compiles)
                    loops[label] = OursLoop(store, targets, train_idx, elements, bf16=bf16, merge_edges=merge,
                                            compile=compile, fused=fused, distinct=distinct)  # fmt: skip
                    loops[label].epochs(1)
                original.epochs(1)
                base_rounds, ours = [], {label: [] for label in loops}
                for _ in range(rounds):  # interleaved, so slow spells of a shared machine hit every row alike
                    base_rounds.append(original.epochs(repeats))
                    for label, loop in loops.items():
                        ours[label].append(loop.epochs(repeats))
            base_median = [statistics.median(r) for r in base_rounds]
            for label, per_round in ours.items():
                epochs_ = [e for r in per_round for e in r]
                ratios = [b / statistics.median(e["total"] for e in r) for b, r in zip(base_median, per_round)]
                parts = [statistics.median(e[k] for e in epochs_) for k in ("batch", "forward", "backward", "step")]
                totals = [e["total"] for e in epochs_]
                table_rows.append([label, n_threads, *parts, statistics.median(totals), min(totals),
                                   f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"])  # fmt: skip
            times = [t for r in base_rounds for t in r]
            table_rows.append(["original approach (dense, padded)", n_threads, "", "", "", "",
                               statistics.median(times), min(times), "1.00x"])  # fmt: skip
    for flag, (times, wall) in end_to_end.items():
        lines += [
            f"End to end (`train_from_config`, compile: {str(flag).lower()}, {epochs} epochs, {threads} torch "
            f"thread(s)): epoch 1 {times[0]:.3f} s; later epochs median {statistics.median(times[1:]):.3f} s, "
            f"min {min(times[1:]):.3f} s (training on 1600 + validation on 200, checkpoint write not included); "
            f"whole run {wall:.1f} s.",
            "",
        ]
    header = ["pipeline", "threads", "batch assembly", "forward", "backward", "optimiser", "epoch (median)",
              "epoch (min)", "speed-up vs original: median of rounds (range)"]  # fmt: skip
    lines += [
        _common.markdown_table(header, table_rows),
        "",
        f"Seconds per epoch of 1600 training crystals (no validation); {rounds} interleaved rounds of {repeats} "
        "epochs per row; each round's speed-up divides the original's median epoch by the row's, in that round.",
        "",
    ]
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",)
    lines += [
        _common.machine_line(),
        f"Load average at the end: {load[0]:.2f} (other processes share the CPU when > 0)",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()

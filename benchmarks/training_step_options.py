"""Two untried options for the CPU training epoch (the 8x target): a fused SGD step and inductor's max-autotune.

The workload of ``bench_training.py`` (2000 perovskites, 1600 training crystals, batch 256, SGD, one thread),
compiled bf16 steps with one edge-feature row per edge, against the original approach's cached epoch in
interleaved rounds (4 rounds of 3 epochs; the ratio's median). VARIANT: ``base`` (as training runs),
``fusedsgd`` (``torch.optim.SGD(..., fused=True)``) or ``autotune`` (``torch.compile(mode=
"max-autotune-no-cudagraphs")``: inductor's C++ GEMM templates). About a minute per variant; needs ../shared.

    for v in base fusedsgd autotune; do python benchmarks/training_step_options.py $v; done
"""
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common

[variant] = _common.positional_cli(__doc__, ("base", "fusedsgd", "autotune"), "VARIANT")[:1] or ["base"]
import torch

torch.set_num_threads(1)
import bench_training as bt

from cgcnn_ase.data.datasets import DatasetSpec, load_table, parse_structures
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.graph.elements import generate_cgcnn_table
from cgcnn_ase.train.cache import build_graph_store

_common.quiet()
spec = DatasetSpec(path=str(_common.shared_path(None, _common.PEROVSKITE_CSV)), target="e_form", limit=2000)
elements = generate_cgcnn_table()
cache = tempfile.mkdtemp()  # removed at the end
table = load_table(spec)
store, rows, _ = build_graph_store(table, GraphConfig(), cache_dir=cache, workers=1)
targets = table.raw_targets[rows]
train_idx = bt.train_positions(len(rows))  # the split of bench_training.py
limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
setattr(torch._dynamo.config, limit, 32)
orig_compile = torch.compile
if "autotune" in variant:
    torch.compile = lambda fn, **kw: orig_compile(fn, mode="max-autotune-no-cudagraphs", **kw)
records = parse_structures(table, [rows[k] for k in train_idx], workers=1)
original = bt.OriginalLoop(records, targets[train_idx], elements)
distinct = "distinct" in variant
loop = bt.OursLoop(store, targets, train_idx, elements, bf16=True, merge_edges=True, compile=True, fused=True, distinct=distinct)
if "fusedsgd" in variant:
    loop.opt = torch.optim.SGD(loop.model.parameters(), lr=0.01, momentum=0.9, fused=True)
t = time.perf_counter(); loop.epochs(1); print(variant, "first epoch (compile)", time.perf_counter() - t, flush=True)
original.epochs(1)
ratios, ours_t = [], []
for r in range(4):
    b = statistics.median(original.epochs(3))
    o = statistics.median(e["total"] for e in loop.epochs(3))
    ratios.append(b / o); ours_t.append(o)
    print(variant, f"round {r}: original {b:.3f} ours {o:.3f} ratio {b/o:.2f}", flush=True)
print(variant, "MEDIAN ratio", statistics.median(ratios), "ours", statistics.median(ours_t))
import shutil

shutil.rmtree(cache, ignore_errors=True)

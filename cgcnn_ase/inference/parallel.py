"""Reading structures and building their graphs in worker processes, in input order.

:meth:`CGCNNPredictor.predict` with ``workers > 1`` hands each input (a path, CIF text, an
``ase.Atoms`` ...) to a pool of processes that read it with the one reader, check its elements
and build its graph (:func:`graphs_of`, the same function the serial path runs), while the calling
process runs the network. Results come back in input order; at most ``workers * 4`` chunks are in
flight, so memory stays bounded however long the input. Warnings raised in a worker (sparse
graphs, atoms too close) are re-raised in the calling process. Workers never run torch, so
forking a process in which torch has run is safe.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sized
from itertools import islice
from typing import Any

from cgcnn_ase.errors import InvalidStructureError, UnsupportedElementError
from cgcnn_ase.graph.config import GraphConfig, SparsePolicy
from cgcnn_ase.graph.element_table import ElementTable
from cgcnn_ase.graph.batched import GraphSummary, graph_batch
from cgcnn_ase.graph.neighbours import CrystalGraph, build_graph
from cgcnn_ase.io.reader import CifReader, cif_reader_for_policy, is_single_input, read_input
from cgcnn_ase.io.records import StructureRecord

#: Inputs per task sent to a worker (amortises inter-process messages).
CHUNK = 16
#: A list shorter than this is read in the calling process even when workers are asked for
#: (starting a pool costs more than it saves).
MIN_PARALLEL = 64

Graphed = tuple[str, "CrystalGraph | GraphSummary | InvalidStructureError"]
Read = tuple[str, "StructureRecord | InvalidStructureError"]


def records_of(index: int, obj: Any, *, elements: ElementTable, cif_reader: CifReader, **_: Any) -> list[Read]:
    """Read input number ``index``: ``(label, record)`` per structure it holds, or ``(label, error)``
    for an input or structure that cannot be used (unreadable, invalid, unsupported element).
    Labels are those of :func:`cgcnn_ase.io.reader.read_input`."""
    out: list[Read] = []
    for label, record in read_input(index, obj, cif_reader=cif_reader):
        if isinstance(record, StructureRecord):
            try:
                elements.featurize(record.numbers)  # fails early on unsupported elements
            except UnsupportedElementError as exc:
                record = UnsupportedElementError(f"{record.label}: {exc}")
        out.append((label, record))
    return out


def graphs_of(
    index: int, obj: Any, *, config: GraphConfig, elements: ElementTable, cif_reader: CifReader,
    on_sparse: SparsePolicy,
) -> list[Graphed]:  # fmt: skip
    """Read input number ``index`` and build the graph of each structure it holds.

    Returns ``(label, graph)`` per structure, or ``(label, error)`` for an input or structure
    that cannot be used (:func:`records_of`'s errors, overlapping atoms, sparse with
    ``on_sparse="error"``).
    """
    out: list[Graphed] = []
    for label, record in records_of(index, obj, elements=elements, cif_reader=cif_reader):
        if isinstance(record, StructureRecord):
            try:
                out.append((record.label, build_graph(record, config, on_sparse=on_sparse)))
            except InvalidStructureError as exc:
                out.append((record.label, exc))
        else:
            out.append((label, record))
    return out


def iter_graphs(
    structures: Any, *, config: GraphConfig, elements: ElementTable, cif_reader: CifReader, on_sparse: SparsePolicy,
    workers: int = 1, read_only: bool = False,
) -> Iterator[Graphed | Read]:  # fmt: skip
    """``(label, graph or error)`` for every structure of ``structures``, in input order,
    built in this process (``workers=1``, or a list of fewer than :data:`MIN_PARALLEL` inputs)
    or in ``workers`` processes. ``read_only``: records instead of graphs (:func:`records_of`)."""
    inputs = [structures] if is_single_input(structures) else structures
    options = dict(config=config, elements=elements, cif_reader=cif_reader, on_sparse=on_sparse, read_only=read_only)
    if workers <= 1 or (isinstance(inputs, Sized) and len(inputs) < MIN_PARALLEL):
        for index, obj in enumerate(inputs):
            yield from _items_of(index, obj, **options)
        return
    yield from _in_pool(enumerate(inputs), options, workers)


def _items_of(index: int, obj: Any, *, read_only: bool, **options: Any) -> list[Graphed | Read]:
    return records_of(index, obj, **options) if read_only else graphs_of(index, obj, **options)


def _work(task: tuple[list[tuple[int, Any]], dict[str, Any]]) -> tuple[list[Graphed | Read], list[tuple[str, type]]]:
    """Worker: the graphs (or records) of one chunk of inputs, and the warnings raised meanwhile."""
    chunk, options = task
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphs = [item for index, obj in chunk for item in _items_of(index, obj, **options)]
    return graphs, [(str(w.message), w.category) for w in caught]


def _in_pool(inputs: Iterable[tuple[int, Any]], options: dict[str, Any], workers: int) -> Iterator[Graphed]:
    """Ordered, bounded map of :func:`_work` over chunks of ``inputs`` in a process pool."""
    import multiprocessing

    from cgcnn_ase.data.datasets import worker_start_method

    chunks = iter(lambda: list(islice(inputs, CHUNK)), [])
    context = multiprocessing.get_context(worker_start_method())
    with context.Pool(workers) as pool:
        pending: deque[Any] = deque(pool.apply_async(_work, ((c, options),)) for c in islice(chunks, workers * 4))
        while pending:
            yield from _next_graphs(pool, pending, chunks, options)


def _next_graphs(pool: Any, pending: deque[Any], chunks: Iterator[list[Any]], options: dict[str, Any]) -> list[Graphed]:
    """The oldest graph task's result (its warnings re-raised here); the next chunk is submitted in its place."""
    graphs, caught = pending.popleft().get()
    chunk = next(chunks, None)
    if chunk is not None:
        pending.append(pool.apply_async(_work, ((chunk, options),)))
    for message, category in caught:
        warnings.warn(message, category, stacklevel=5)
    return graphs


# -- the whole pipeline in workers (CPU) ----------------------------------------------------------

#: The worker's predictor (set by :func:`_init_network_worker` in each pool process; never in the caller).
_WORKER_PREDICTOR: Any = None


def _init_network_worker(model: Any, options: dict[str, Any]) -> None:
    """Pool initializer: one torch thread (torch's thread pool does not survive ``fork``; several
    workers share the cores anyway) and this process's own predictor on the CPU, with the
    caller's network ``options`` (``fast_network``, ``compile``)."""
    import torch

    from cgcnn_ase.inference.predictor import CGCNNPredictor

    global _WORKER_PREDICTOR
    torch.set_num_threads(1)  # this is the worker's own process, started for this pool
    _WORKER_PREDICTOR = CGCNNPredictor(model, device="cpu")
    for name, value in options.items():
        setattr(_WORKER_PREDICTOR, name, value)


def _network(task: tuple[list[CrystalGraph], bool, bool]) -> Any:
    graphs, per_atom, features = task
    return _WORKER_PREDICTOR._run(graphs, per_atom, features)


def predict_batches(
    predictor: Any, structures: Any, *, batch_size: int, per_atom: bool, features: bool, errors: str,
    on_sparse: SparsePolicy, workers: int = 1,
) -> Iterator[tuple[list[Graphed], Any]]:  # fmt: skip
    """``(batch, outputs)`` in input order: ``batch_size`` graph items (graphs or errors) and the
    predictor's ``_run`` outputs for their graphs (``(None, None, None)`` when none is usable).

    ``workers <= 1`` (or a list of fewer than :data:`MIN_PARALLEL` inputs): everything in this
    process. On a GPU: graphs built in ``workers`` processes, networks run here. On the CPU:
    graphs *and* networks in ``workers`` processes (one torch thread each), with batches formed
    here exactly as in this process, so the results are the same bit for bit as with one worker
    at one torch thread.
    """
    inputs = [structures] if is_single_input(structures) else structures
    serial = workers <= 1 or (isinstance(inputs, Sized) and len(inputs) < MIN_PARALLEL)
    if predictor.batched_graphs():
        yield from _batched(predictor, inputs, batch_size=batch_size, per_atom=per_atom, features=features,
                            errors=errors, on_sparse=on_sparse, workers=1 if serial else workers)  # fmt: skip
        return
    if serial or predictor.device.type != "cpu":
        stream = predictor._graphs(inputs, errors, on_sparse, 1 if serial else workers)
        while batch := list(islice(stream, batch_size)):
            good = [g for _, g in batch if isinstance(g, CrystalGraph)]
            yield batch, predictor._run(good, per_atom, features) if good else (None, None, None)
        return
    yield from _pipeline(predictor, enumerate(inputs), batch_size=batch_size, per_atom=per_atom, features=features,
                         errors=errors, on_sparse=on_sparse, workers=workers)  # fmt: skip


def _pipeline(
    predictor: Any, inputs: Iterator[tuple[int, Any]], *, batch_size: int, per_atom: bool, features: bool,
    errors: str, on_sparse: SparsePolicy, workers: int,
) -> Iterator[tuple[list[Graphed], Any]]:  # fmt: skip
    """Reading, graphs and networks in one pool: graph tasks feed batches formed here, in input
    order; at most ``workers * 4`` graph tasks and ``workers * 2`` network tasks are in flight."""
    import multiprocessing

    from cgcnn_ase.data.datasets import worker_start_method

    config = predictor.model.spec.graph
    options = dict(config=config, elements=predictor.model.elements, on_sparse=on_sparse, read_only=False,
                   cif_reader=cif_reader_for_policy(config.neighbor_policy))  # fmt: skip
    chunks = iter(lambda: list(islice(inputs, CHUNK)), [])
    context = multiprocessing.get_context(worker_start_method())
    with context.Pool(workers, initializer=_init_network_worker,
                      initargs=(predictor.model, {"fast_network": predictor.fast_network, "compile": predictor.compile,
                                                  "stack_members": predictor.stack_members})) as pool:
        reads: deque[Any] = deque(pool.apply_async(_work, ((c, options),)) for c in islice(chunks, workers * 4))
        nets: deque[tuple[list[Graphed], Any]] = deque()
        buffer: list[Graphed] = []
        while reads or buffer or nets:
            while reads and len(buffer) < batch_size:
                for label, item in _next_graphs(pool, reads, chunks, options):
                    if errors == "raise" and isinstance(item, InvalidStructureError):
                        raise item
                    buffer.append((label, item))
            if buffer:
                batch, buffer = buffer[:batch_size], buffer[batch_size:]
                good = [g for _, g in batch if isinstance(g, CrystalGraph)]
                nets.append((batch, pool.apply_async(_network, ((good, per_atom, features),)) if good else None))
            while nets and (len(nets) > workers * 2 or not (reads or buffer)):
                batch, pending = nets.popleft()
                yield batch, pending.get() if pending is not None else (None, None, None)


def _batched(
    predictor: Any, inputs: Any, *, batch_size: int, per_atom: bool, features: bool, errors: str,
    on_sparse: SparsePolicy, workers: int,
) -> Iterator[tuple[list[Graphed], Any]]:  # fmt: skip
    """Records read here or in ``workers`` processes, then each batch's graphs built together on the
    inference device (:func:`~cgcnn_ase.graph.batched.graph_batch`) and the networks run there."""
    config = predictor.model.spec.graph
    stream = predictor._graphs(inputs, errors, on_sparse, workers, read_only=True)
    while chunk := list(islice(stream, batch_size)):
        records = [r for _, r in chunk if isinstance(r, StructureRecord)]
        if not records:
            yield chunk, (None, None, None)
            continue
        batch, built = graph_batch(records, config, predictor.element_features(), on_sparse=on_sparse)
        built_items = iter(built)
        chunk = [(label, next(built_items) if isinstance(r, StructureRecord) else r) for label, r in chunk]
        if errors == "raise":
            for _, item in chunk:
                if isinstance(item, InvalidStructureError):
                    raise item
        good = [item.n_atoms for _, item in chunk if isinstance(item, GraphSummary)]
        yield chunk, predictor._forward(batch, good, per_atom, features) if batch is not None else (None, None, None)

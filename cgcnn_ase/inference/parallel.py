"""Reading structures, building their graphs and running the networks in worker processes, in input order.

:meth:`CGCNNPredictor.predict` with ``workers > 1`` hands the inputs (paths, CIF text, ``ase.Atoms`` ...)
to a pool of processes, which read them with the one reader, check their elements and build their
graphs (:func:`graphs_of`, the same function the serial path runs).

* On the CPU (:func:`_pipeline`) each task is one batch of inputs: the worker also runs the networks
  (one torch thread) and the per-crystal domain signal on it, and only results and light
  :class:`GraphSummary` items come back. The batches are those one process forms, so the numbers are
  the same bit for bit as ``workers=1`` at one torch thread; after an input holding several
  structures (a multi-frame file) the batches are formed in the calling process instead
  (:func:`_regrouped`), which keeps that guarantee.
* On a GPU the workers read (and, per structure, build graphs) while the calling process runs the
  networks.

Results come back in input order with at most a few tasks per worker in flight, so memory stays
bounded however long the input. Warnings raised in a worker (sparse graphs, atoms too close) are
re-raised in the calling process; errors stay per item.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sized
from contextlib import nullcontext
from itertools import chain, islice
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
    _rewarn(caught)
    return graphs


def _rewarn(caught: list[tuple[str, type]]) -> None:
    """Re-raise here the warnings a worker recorded."""
    for message, category in caught:
        warnings.warn(message, category, stacklevel=6)


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


def _network_options(predictor: Any) -> dict[str, Any]:
    """The predictor settings its workers' own predictors copy."""
    return {"fast_network": predictor.fast_network, "compile": predictor.compile,
            "stack_members": predictor.stack_members}  # fmt: skip


class NetworkPool:
    """Worker processes that read, build graphs and run one CPU predictor's networks, kept open
    across :meth:`~cgcnn_ase.inference.predictor.CGCNNPredictor.predict` calls
    (``predict(..., workers=pool)``): a stream of chunks then starts its processes once instead of
    once per chunk (forking, then cold caches and fresh memory in every new process; on 10,000 CIFs
    the CLI's two-worker speed-up went from 1.48x to 1.62x, docs/performance.md). Results are those of ``workers=pool.processes``, bit for bit.

    >>> with NetworkPool(predictor, 4) as pool:                        # doctest: +SKIP
    ...     for chunk in chunks:
    ...         result = predictor.predict(chunk, workers=pool)

    The processes start with the first call that uses them: like ``workers=N``, a call with fewer
    than :data:`MIN_PARALLEL` inputs runs in the calling process while none are running (a stream
    of one file starts none).

    Args:
        predictor: the predictor (on the CPU) whose networks the workers copy; its options
            (``fast_network``, ``compile``, ``stack_members``) must stay as they were.
        processes: worker processes (at least 2).
    """

    def __init__(self, predictor: Any, processes: int) -> None:
        if processes < 2:
            raise ValueError(f"a NetworkPool needs at least 2 processes, got {processes}")
        if predictor.device.type != "cpu":
            raise ValueError(f"a NetworkPool runs networks on the CPU; this predictor is on {predictor.device}")
        self.predictor, self.processes, self.options = predictor, processes, _network_options(predictor)
        self._pool: Any = None

    @property
    def started(self) -> bool:
        """Whether the worker processes are running."""
        return self._pool is not None

    @property
    def pool(self) -> Any:
        """The ``multiprocessing`` pool, started on first use."""
        if self._pool is None:
            import multiprocessing

            from cgcnn_ase.data.datasets import worker_start_method

            context = multiprocessing.get_context(worker_start_method())
            self._pool = context.Pool(self.processes, initializer=_init_network_worker,
                                      initargs=(self.predictor.model, self.options))  # fmt: skip
        return self._pool

    def check(self, predictor: Any) -> None:
        """Raise ``ValueError`` unless this pool serves ``predictor`` as it is now."""
        if predictor is not self.predictor or _network_options(predictor) != self.options:
            raise ValueError("this NetworkPool was made for another predictor or other predictor options")

    def close(self) -> None:
        """Stop the worker processes (if they were started)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> NetworkPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def predict_batches(
    predictor: Any, structures: Any, *, batch_size: int, per_atom: bool, features: bool, errors: str,
    on_sparse: SparsePolicy, workers: int | NetworkPool = 1,
) -> Iterator[tuple[list[Graphed], Any]]:  # fmt: skip
    """``(batch, outputs)`` in input order: ``batch_size`` graph items (graphs or errors) and the
    predictor's ``_run`` outputs for their graphs (``(None, None, None, None)`` when none is usable).

    ``workers <= 1`` (or a list of fewer than :data:`MIN_PARALLEL` inputs): everything in this
    process. On a GPU: graphs built in ``workers`` processes, networks run here. On the CPU:
    graphs *and* networks in ``workers`` processes (one torch thread each; a :class:`NetworkPool`'s
    processes, whatever the length once they run), with batches formed here exactly as in this
    process, so the results are the same bit for bit as with one worker at one torch thread.
    """
    inputs = [structures] if is_single_input(structures) else structures
    pool = workers if isinstance(workers, NetworkPool) else None
    if pool is not None:
        pool.check(predictor)
        workers = pool.processes
    few = isinstance(inputs, Sized) and len(inputs) < MIN_PARALLEL  # not worth starting processes for
    serial = workers <= 1 or (few and not (pool is not None and pool.started))
    if predictor.batched_graphs():
        yield from _batched(predictor, inputs, batch_size=batch_size, per_atom=per_atom, features=features,
                            errors=errors, on_sparse=on_sparse, workers=1 if serial else workers)  # fmt: skip
        return
    if serial or predictor.device.type != "cpu":
        stream = predictor._graphs(inputs, errors, on_sparse, 1 if serial else workers)
        while batch := list(islice(stream, batch_size)):
            good = [g for _, g in batch if isinstance(g, CrystalGraph)]
            yield batch, predictor._run(good, per_atom, features) if good else (None, None, None, None)
        return
    # a pool of this call's own (stopped at its end), or the caller's (kept running)
    with NetworkPool(predictor, workers) if pool is None else nullcontext(pool) as active:
        yield from _pipeline(predictor, enumerate(inputs), active, batch_size=batch_size, per_atom=per_atom,
                             features=features, errors=errors, on_sparse=on_sparse)  # fmt: skip


def _pipeline(
    predictor: Any, inputs: Iterator[tuple[int, Any]], pool: NetworkPool, *, batch_size: int, per_atom: bool,
    features: bool, errors: str, on_sparse: SparsePolicy,
) -> Iterator[tuple[list[Graphed], Any]]:  # fmt: skip
    """Reading, graphs and networks in ``pool``, one task per batch: a worker reads ``batch_size``
    inputs, builds their graphs and, where each input held one structure (so the items are exactly
    the batch one process forms), runs the networks too; only the outputs and :class:`GraphSummary`
    items come back. At most two tasks per worker are in flight.

    An input holding several structures (a multi-frame file) shifts every later batch: from that
    task on, graphs come back and batches are formed here (:func:`_regrouped`), as one process does.
    """
    config = predictor.model.spec.graph
    options = dict(config=config, elements=predictor.model.elements, on_sparse=on_sparse, read_only=False,
                   cif_reader=cif_reader_for_policy(config.neighbor_policy))  # fmt: skip
    tasks = iter(lambda: list(islice(inputs, batch_size)), [])
    workers = pool.processes

    def submit(task: list[tuple[int, Any]]) -> tuple[list[tuple[int, Any]], Any]:
        return task, pool.pool.apply_async(_batch, ((task, options, per_atom, features),))

    pending = deque(submit(task) for task in islice(tasks, workers * 2))
    while pending:
        task, result = pending.popleft()
        items, outputs, caught = result.get()
        _rewarn(caught)
        if outputs is None:  # the batches shift here: the rest as one process forms them (pending results unused)
            rest = chain([item for task, _ in pending for item in task], inputs)
            yield from _regrouped(pool.pool, items, rest, options, batch_size=batch_size, per_atom=per_atom,
                                  features=features, errors=errors, workers=workers)  # fmt: skip
            return
        _raise_first_error(items, errors)
        yield items, outputs
        task = next(tasks, None)
        if task is not None:
            pending.append(submit(task))


def _batch(
    task: tuple[list[tuple[int, Any]], dict[str, Any], bool, bool],
) -> tuple[list[Graphed], Any, list[tuple[str, type]]]:
    """Worker: one batch of inputs read, graphed and (one structure per input) run through the
    networks: ``(items, outputs, warnings)`` with graphs as :class:`GraphSummary` items, or
    ``(items, None, warnings)`` with the graphs themselves when some input held another number of
    structures than one."""
    chunk, options, per_atom, features = task
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [item for index, obj in chunk for item in _items_of(index, obj, **options)]
        outputs = None
        if len(items) == len(chunk):
            good = [g for _, g in items if isinstance(g, CrystalGraph)]
            outputs = _WORKER_PREDICTOR._run(good, per_atom, features) if good else (None, None, None, None)
            items = [(label, _summary(g) if isinstance(g, CrystalGraph) else g) for label, g in items]
    return items, outputs, [(str(w.message), w.category) for w in caught]


def _summary(graph: CrystalGraph) -> GraphSummary:
    """What the results keep of a graph (its edges need not travel back from a worker)."""
    return GraphSummary(numbers=graph.numbers, n_sparse=graph.n_sparse, label=graph.label)


def _regrouped(
    pool: Any, buffer: list[Graphed], inputs: Iterator[tuple[int, Any]], options: dict[str, Any], *,
    batch_size: int, per_atom: bool, features: bool, errors: str, workers: int,
) -> Iterator[tuple[list[Graphed], Any]]:  # fmt: skip
    """Batches formed here from the graph ``buffer`` and then from graphs of ``inputs`` built by the
    workers, the networks run by them: at most ``workers * 4`` graph tasks and ``workers * 2``
    network tasks in flight."""
    chunks = iter(lambda: list(islice(inputs, CHUNK)), [])
    reads: deque[Any] = deque(pool.apply_async(_work, ((c, options),)) for c in islice(chunks, workers * 4))
    nets: deque[tuple[list[Graphed], Any]] = deque()
    while reads or buffer or nets:
        while reads and len(buffer) < batch_size:
            buffer.extend(_next_graphs(pool, reads, chunks, options))
        if buffer:
            batch, buffer = buffer[:batch_size], buffer[batch_size:]
            _raise_first_error(batch, errors)
            good = [g for _, g in batch if isinstance(g, CrystalGraph)]
            nets.append((batch, pool.apply_async(_network, ((good, per_atom, features),)) if good else None))
        while nets and (len(nets) > workers * 2 or not (reads or buffer)):
            batch, pending = nets.popleft()
            yield batch, pending.get() if pending is not None else (None, None, None, None)


def _raise_first_error(items: list[Graphed], errors: str) -> None:
    """With ``errors="raise"``, raise the first unusable structure of ``items``."""
    if errors == "raise":
        for _, item in items:
            if isinstance(item, InvalidStructureError):
                raise item


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
            yield chunk, (None, None, None, None)
            continue
        batch, built = graph_batch(records, config, predictor.element_features(), on_sparse=on_sparse)
        built_items = iter(built)
        chunk = [(label, next(built_items) if isinstance(r, StructureRecord) else r) for label, r in chunk]
        _raise_first_error(chunk, errors)
        good = [item for _, item in chunk if isinstance(item, GraphSummary)]
        if batch is None:
            yield chunk, (None, None, None, None)
            continue
        outputs = predictor._forward(batch, [g.n_atoms for g in good], per_atom, features)
        yield chunk, (*outputs, predictor._domain_rows(outputs[0], outputs[2], [g.numbers for g in good]))

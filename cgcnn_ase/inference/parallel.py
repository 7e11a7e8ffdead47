"""Reading structures, building their graphs and running the networks in worker processes, in input order.

:meth:`CGCNNPredictor.predict` with ``workers > 1`` hands the inputs (paths, CIF text, ``ase.Atoms`` ...)
to a pool of processes, which read them with the one reader, check their elements and build their
graphs (:func:`graphs_for`, the same function the serial path runs).

Several models (:func:`~cgcnn_ase.inference.predictor.predict_many`) go through the same code: each
input is read once, each structure's graph built once per distinct graph config, and a worker runs
every model on its batch (:class:`NetworkPool` of several predictors), so their batches, and so their
numbers, are those of each model alone.

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
from collections.abc import Iterable, Iterator, Sequence, Sized
from contextlib import nullcontext
from itertools import chain, islice
from typing import Any

from cgcnn_ase.errors import InvalidStructureError, UnsupportedElementError
from cgcnn_ase.graph.batched import GraphSummary, graph_batch
from cgcnn_ase.graph.config import GraphConfig, SparsePolicy
from cgcnn_ase.graph.element_table import ElementTable
from cgcnn_ase.graph.neighbours import CrystalGraph, build_graph
from cgcnn_ase.io.reader import CifReader, as_input_sequence, cif_reader_for_policy, read_input
from cgcnn_ase.io.records import StructureRecord
from cgcnn_ase.warning_blocks import catch_warnings

#: Inputs per task sent to a worker (amortises inter-process messages).
CHUNK = 16
#: A list shorter than this is read in the calling process even when workers are asked for
#: (starting a pool costs more than it saves).
MIN_PARALLEL = 64

Graphed = tuple[str, "CrystalGraph | GraphSummary | InvalidStructureError"]
Read = tuple[str, "StructureRecord | InvalidStructureError"]
#: One structure's item for each of several models (:func:`graphs_for`), in the models' order.
Row = tuple[Graphed, ...]


def records_of(index: int, obj: Any, *, elements: ElementTable, cif_reader: CifReader, **_: Any) -> list[Read]:
    """Read input number ``index``: ``(label, record)`` per structure it holds, or ``(label, error)``
    for an input or structure that cannot be used (unreadable, invalid, unsupported element).
    Labels are those of :func:`cgcnn_ase.io.reader.read_input`."""
    out: list[Read] = []
    for label, record in read_input(index, obj, cif_reader=cif_reader):
        if isinstance(record, StructureRecord):
            record = _supported(record, elements)
        out.append((label, record))
    return out


def _supported(record: StructureRecord, elements: ElementTable) -> StructureRecord | UnsupportedElementError:
    """``record``, or the error naming its elements that ``elements`` has no row for."""
    try:
        elements.featurize(record.numbers)
    except UnsupportedElementError as exc:
        return UnsupportedElementError(f"{record.label}: {exc}")
    return record


def graphs_for(
    index: int, obj: Any, *, models: Sequence[tuple[GraphConfig, ElementTable]], cif_reader: CifReader,
    on_sparse: SparsePolicy,
) -> list[Row]:  # fmt: skip
    """Read input number ``index`` once and build each structure's graph once per distinct graph config.

    Returns one :data:`Row` per structure it holds: for each of ``models`` (its graph settings and
    element table) ``(label, graph)``, or ``(label, error)`` where the input or structure cannot be
    used by that model (:func:`records_of`'s errors, overlapping atoms, sparse with
    ``on_sparse="error"``). Models with equal configs share one graph object (and its warnings are
    raised once).
    """
    rows: list[Row] = []
    for label, record in read_input(index, obj, cif_reader=cif_reader):
        if not isinstance(record, StructureRecord):
            rows.append(tuple((label, record) for _ in models))
            continue
        built: dict[GraphConfig, Graphed] = {}
        row: list[Graphed] = []
        for config, elements in models:
            usable = _supported(record, elements)
            if not isinstance(usable, StructureRecord):
                row.append((label, usable))
                continue
            if config not in built:
                try:
                    built[config] = (record.label, build_graph(record, config, on_sparse=on_sparse))
                except InvalidStructureError as exc:
                    built[config] = (record.label, exc)
            row.append(built[config])
        rows.append(tuple(row))
    return rows


def iter_graphs(
    structures: Any, *, config: GraphConfig, elements: ElementTable, cif_reader: CifReader, on_sparse: SparsePolicy,
    workers: int = 1, read_only: bool = False,
) -> Iterator[Graphed | Read]:  # fmt: skip
    """``(label, graph or error)`` for every structure of ``structures``, in input order,
    built in this process (``workers=1``, or a list of fewer than :data:`MIN_PARALLEL` inputs)
    or in ``workers`` processes. ``read_only``: records instead of graphs (:func:`records_of`)."""
    inputs = as_input_sequence(structures)
    options = dict(models=((config, elements),), cif_reader=cif_reader, on_sparse=on_sparse, read_only=read_only)
    if workers <= 1 or (isinstance(inputs, Sized) and len(inputs) < MIN_PARALLEL):
        for index, obj in enumerate(inputs):
            yield from (row[0] for row in _rows_of(index, obj, **options))
        return
    yield from (row[0] for row in _in_pool(enumerate(inputs), options, workers))


def _rows_of(index: int, obj: Any, *, read_only: bool = False, **options: Any) -> list[Row]:
    """:func:`graphs_for`'s rows, or (``read_only``) one-item rows of records read for the first model."""
    if read_only:
        (_, elements), *_ = options["models"]
        return [(item,) for item in records_of(index, obj, elements=elements, cif_reader=options["cif_reader"])]
    return graphs_for(index, obj, **options)


def _work(task: tuple[list[tuple[int, Any]], dict[str, Any]]) -> tuple[list[Row], list[tuple[str, type]]]:
    """Worker: the rows of one chunk of inputs (:func:`_rows_of`; in a :class:`NetworkPool`, with the
    worker's own models unless the options name them), and the warnings raised meanwhile."""
    chunk, options = task
    with catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = [row for index, obj in chunk for row in _worker_rows(index, obj, options)]
    return rows, [(str(w.message), w.category) for w in caught]


def _in_pool(inputs: Iterable[tuple[int, Any]], options: dict[str, Any], workers: int) -> Iterator[Row]:
    """Ordered, bounded map of :func:`_work` over chunks of ``inputs`` in a process pool."""
    from cgcnn_ase.data.datasets import WorkerPool

    chunks = iter(lambda: list(islice(inputs, CHUNK)), [])
    with WorkerPool(workers) as pool:
        pending: deque[Any] = deque(pool.apply_async(_work, ((c, options),)) for c in islice(chunks, workers * 4))
        while pending:
            yield from _next_rows(pool, pending, chunks, options)


def _next_rows(pool: Any, pending: deque[Any], chunks: Iterator[list[Any]], options: dict[str, Any]) -> list[Row]:
    """The oldest graph task's rows (its warnings re-raised here); the next chunk is submitted in its place."""
    rows, caught = _result(pending.popleft(), pool)
    chunk = next(chunks, None)
    if chunk is not None:
        pending.append(pool.apply_async(_work, ((chunk, options),)))
    _rewarn(caught)
    return rows


def _result(pending: Any, pool: Any) -> Any:
    """A task's result, or :class:`~cgcnn_ase.errors.WorkerError` if a worker died meanwhile."""
    from cgcnn_ase.data.datasets import result_of

    return result_of(pending, pool)


def _rewarn(caught: list[tuple[str, type]]) -> None:
    """Re-raise here the warnings a worker recorded."""
    for message, category in caught:
        warnings.warn(message, category, stacklevel=6)


# -- the whole pipeline in workers (CPU) ----------------------------------------------------------

#: What :meth:`CGCNNPredictor._run` gives for a batch without a usable graph.
NO_OUTPUTS: tuple[None, None, None, None] = (None, None, None, None)

#: The workers' predictors, one per model (set by :func:`_init_network_worker` in each pool process;
#: never in the caller).
_WORKER_PREDICTORS: list[Any] = []


def _init_network_worker(models: Sequence[Any], options: Sequence[dict[str, Any]]) -> None:
    """Pool initializer: one torch thread (torch's thread pool does not survive ``fork``; several
    workers share the cores anyway) and this process's own predictor on the CPU for each model,
    with the caller's network ``options`` (``fast_network``, ``compile``, ``stack_members``); Ctrl-C is left to the
    parent (:class:`~cgcnn_ase.data.datasets.WorkerPool`)."""
    import torch

    from cgcnn_ase.inference.predictor import CGCNNPredictor

    torch.set_num_threads(1)  # this is the worker's own process, started for this pool
    _WORKER_PREDICTORS.clear()
    for model, settings in zip(models, options):
        predictor = CGCNNPredictor(model, device="cpu")
        for name, value in settings.items():
            setattr(predictor, name, value)
        _WORKER_PREDICTORS.append(predictor)


def _network_options(predictor: Any) -> dict[str, Any]:
    """The predictor settings its workers' own predictors copy."""
    return {"fast_network": predictor.fast_network, "compile": predictor.compile,
            "stack_members": predictor.stack_members}  # fmt: skip


def shares_graphs(predictors: Sequence[Any]) -> bool:
    """Whether :func:`predict_batches` can run ``predictors`` together, reading each input once and
    building each graph once per distinct graph config: all on the CPU, with per-structure graphs
    (not ``graph_backend="batched"``) and the same CIF reader (the neighbour policies agree on it)."""
    readers = {cif_reader_for_policy(p.model.spec.graph.neighbor_policy) for p in predictors}
    return len(readers) == 1 and all(p.device.type == "cpu" and not p.batched_graphs() for p in predictors)


def _as_tuple(predictors: Any) -> tuple[Any, ...]:
    return tuple(predictors) if isinstance(predictors, Sequence) else (predictors,)


class NetworkPool:
    """Worker processes that read, build graphs and run CPU predictors' networks, kept open
    across :meth:`~cgcnn_ase.inference.predictor.CGCNNPredictor.predict` calls
    (``predict(..., workers=pool)``) or :func:`~cgcnn_ase.inference.predictor.predict_many` calls: a
    stream of chunks then starts its processes once instead of once per chunk (forking, then cold
    caches and fresh memory in every new process; on 10,000 CIFs the CLI's two-worker speed-up went
    from 1.48x to 1.62x, docs/performance.md). Results are those of ``workers=pool.processes``, bit for bit.

    >>> with NetworkPool(predictor, 4) as pool:                        # doctest: +SKIP
    ...     for chunk in chunks:
    ...         result = predictor.predict(chunk, workers=pool)
    >>> with NetworkPool([gap, metal], 4) as pool:                     # doctest: +SKIP
    ...     for chunk in chunks:
    ...         gaps, metals = predict_many([gap, metal], chunk, workers=pool)

    The processes start with the first call that uses them: like ``workers=N``, a call with fewer
    than :data:`MIN_PARALLEL` inputs runs in the calling process while none are running (a stream
    of one file starts none).

    Args:
        predictors: the predictor (on the CPU), or several that :func:`shares_graphs`, whose networks
            the workers copy; their options (``fast_network``, ``compile``, ``stack_members``) must
            stay as they were.
        processes: worker processes (at least 2).
    """

    def __init__(self, predictors: Any, processes: int) -> None:
        if processes < 2:
            raise ValueError(f"a NetworkPool needs at least 2 processes, got {processes}")
        self.predictors = _as_tuple(predictors)
        for predictor in self.predictors:
            if predictor.device.type != "cpu":
                raise ValueError(f"a NetworkPool runs networks on the CPU; a predictor is on {predictor.device}")
        if not shares_graphs(self.predictors):
            raise ValueError("these predictors cannot share a NetworkPool (see shares_graphs)")
        self.processes, self.options = processes, [_network_options(p) for p in self.predictors]
        self._pool: Any = None

    @property
    def predictor(self) -> Any:
        """The first (or only) predictor."""
        return self.predictors[0]

    @property
    def started(self) -> bool:
        """Whether the worker processes are running."""
        return self._pool is not None

    @property
    def pool(self) -> Any:
        """The ``multiprocessing`` pool, started on first use."""
        if self._pool is None:
            from cgcnn_ase.data.datasets import WorkerPool

            self._pool = WorkerPool(self.processes, initializer=_init_network_worker,
                                    initargs=([p.model for p in self.predictors], self.options))  # fmt: skip
        return self._pool.pool

    def check(self, predictors: Any) -> None:
        """Raise ``ValueError`` unless this pool serves ``predictors`` (in this order) as they are now."""
        predictors = _as_tuple(predictors)
        same = len(predictors) == len(self.predictors) and all(a is b for a, b in zip(predictors, self.predictors))
        if not same or [_network_options(p) for p in predictors] != self.options:
            raise ValueError("this NetworkPool was made for another predictor (or predictors) or other predictor options")

    def close(self, interrupted: bool = False) -> None:
        """Stop the worker processes (if they were started); ``interrupted``: kill them (see ``WorkerPool.kill``)."""
        if self._pool is not None:
            self._pool.kill() if interrupted else self._pool.close()
            self._pool = None

    def __enter__(self) -> NetworkPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        from cgcnn_ase.data.datasets import interrupted

        self.close(interrupted=interrupted(exc_type))


#: Per batch, each model's items (``(label, graph | summary | error)``, in input order) and its outputs.
Batch = tuple[list[list[Graphed]], list[Any]]


def predict_batches(
    predictors: Sequence[Any], structures: Any, *, batch_size: int, per_atom: bool, features: Sequence[bool],
    errors: str, on_sparse: SparsePolicy, workers: int | NetworkPool = 1,
) -> Iterator[Batch]:  # fmt: skip
    """Per batch of ``batch_size`` structures, in input order: each predictor's items (graphs or
    errors) and its ``_run`` outputs for their graphs (:data:`NO_OUTPUTS` when none is usable);
    ``features[m]``: whether predictor ``m`` returns crystal features.

    Several predictors must :func:`shares_graphs`: each input is then read once and each graph built
    once per distinct graph config, and every model runs on the same batches as it does alone.

    ``workers <= 1`` (or a list of fewer than :data:`MIN_PARALLEL` inputs): everything in this
    process. On a GPU (one predictor): graphs built in ``workers`` processes, networks run here. On
    the CPU: reading, graphs *and* networks in ``workers`` processes (one torch thread each; a
    :class:`NetworkPool`'s processes, whatever the length once they run), with batches formed
    exactly as in this process, so the results are the same bit for bit as with one worker at one
    torch thread.
    """
    predictors = tuple(predictors)
    inputs = as_input_sequence(structures)
    pool = workers if isinstance(workers, NetworkPool) else None
    if pool is not None:
        pool.check(predictors)
        workers = pool.processes
    few = isinstance(inputs, Sized) and len(inputs) < MIN_PARALLEL  # not worth starting processes for
    serial = workers <= 1 or (few and not (pool is not None and pool.started))
    if len(predictors) == 1 and not shares_graphs(predictors):  # a GPU, or graphs built in batches
        yield from _on_device(predictors[0], inputs, batch_size=batch_size, per_atom=per_atom, features=features[0],
                              errors=errors, on_sparse=on_sparse, workers=1 if serial else workers)  # fmt: skip
        return
    if not shares_graphs(predictors):
        raise ValueError("these predictors cannot run together (see shares_graphs): predict with each one")
    if serial:
        options = _graph_options(predictors, on_sparse)
        rows = (row for index, obj in enumerate(inputs) for row in graphs_for(index, obj, **options))
        while batch := list(islice(rows, batch_size)):
            _raise_first_error(batch, errors)
            columns = _columns(batch, len(predictors))
            yield columns, _run_models(predictors, columns, per_atom, features)
        return
    # a pool of this call's own (stopped at its end), or the caller's (kept running)
    with NetworkPool(predictors, workers) if pool is None else nullcontext(pool) as active:
        yield from _pipeline(active, enumerate(inputs), batch_size=batch_size, per_atom=per_atom,
                             features=features, errors=errors, on_sparse=on_sparse)  # fmt: skip


def _graph_options(predictors: Sequence[Any], on_sparse: SparsePolicy) -> dict[str, Any]:
    """:func:`graphs_for`'s options for ``predictors`` (which :func:`shares_graphs`)."""
    models = tuple((p.model.spec.graph, p.model.elements) for p in predictors)
    reader = cif_reader_for_policy(predictors[0].model.spec.graph.neighbor_policy)
    return dict(models=models, cif_reader=reader, on_sparse=on_sparse)


def _columns(rows: Sequence[Row], n_models: int) -> list[list[Graphed]]:
    """Per-structure rows as one list of items per model."""
    return [[row[m] for row in rows] for m in range(n_models)]


def _run_models(predictors: Sequence[Any], columns: Sequence[Sequence[Graphed]], per_atom: bool,
                features: Sequence[bool]) -> list[Any]:  # fmt: skip
    """Each predictor's ``_run`` outputs for the usable graphs of its column of one batch."""
    out = []
    for predictor, items, wanted in zip(predictors, columns, features):
        good = [g for _, g in items if isinstance(g, CrystalGraph)]
        out.append(predictor._run(good, per_atom, wanted) if good else NO_OUTPUTS)
    return out


def _pipeline(
    pool: NetworkPool, inputs: Iterator[tuple[int, Any]], *, batch_size: int, per_atom: bool,
    features: Sequence[bool], errors: str, on_sparse: SparsePolicy,
) -> Iterator[Batch]:  # fmt: skip
    """Reading, graphs and networks in ``pool``, one task per batch: a worker reads ``batch_size``
    inputs, builds their graphs and, where each input held one structure (so the items are exactly
    the batch one process forms), runs every model's networks too; only the outputs and
    :class:`GraphSummary` items come back. At most two tasks per worker are in flight.

    An input holding several structures (a multi-frame file) shifts every later batch: from that
    task on, graphs come back and batches are formed here (:func:`_regrouped`), as one process does.
    """
    options = _graph_options(pool.predictors, on_sparse)
    options.pop("models")  # the workers' own predictors give them (element tables need not travel with every task)
    tasks = iter(lambda: list(islice(inputs, batch_size)), [])
    n_models, workers = len(pool.predictors), pool.processes

    def submit(task: list[tuple[int, Any]]) -> tuple[list[tuple[int, Any]], Any]:
        return task, pool.pool.apply_async(_batch, ((task, options, per_atom, features),))

    pending = deque(submit(task) for task in islice(tasks, workers * 2))
    while pending:
        task, result = pending.popleft()
        rows, outputs, caught = _result(result, pool.pool)
        _rewarn(caught)
        if outputs is None:  # the batches shift here: the rest as one process forms them (pending results unused)
            rest = chain([item for task, _ in pending for item in task], inputs)
            yield from _regrouped(pool.pool, rows, rest, options, n_models=n_models, batch_size=batch_size,
                                  per_atom=per_atom, features=features, errors=errors, workers=workers)  # fmt: skip
            return
        _raise_first_error(rows, errors)
        yield _columns(rows, n_models), outputs
        task = next(tasks, None)
        if task is not None:
            pending.append(submit(task))


def _worker_rows(index: int, obj: Any, options: dict[str, Any]) -> list[Row]:
    """In a :class:`NetworkPool` worker: :func:`_rows_of` with the worker's own models unless ``options`` names them."""
    if "models" in options:
        return _rows_of(index, obj, **options)
    models = tuple((p.model.spec.graph, p.model.elements) for p in _WORKER_PREDICTORS)
    return _rows_of(index, obj, models=models, **options)


def _batch(
    task: tuple[list[tuple[int, Any]], dict[str, Any], bool, Sequence[bool]],
) -> tuple[list[Row], list[Any] | None, list[tuple[str, type]]]:
    """Worker: one batch of inputs read, graphed and (one structure per input) run through every
    model's networks: ``(rows, outputs, warnings)`` with graphs as :class:`GraphSummary` items, or
    ``(rows, None, warnings)`` with the graphs themselves when some input held another number of
    structures than one."""
    chunk, options, per_atom, features = task
    with catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = [row for index, obj in chunk for row in _worker_rows(index, obj, options)]
        outputs = None
        if len(rows) == len(chunk):
            outputs = _run_models(_WORKER_PREDICTORS, _columns(rows, len(_WORKER_PREDICTORS)), per_atom, features)
            summaries: dict[int, GraphSummary] = {}  # one per graph object (models with one config share it)
            rows = [tuple((label, _summary(g, summaries) if isinstance(g, CrystalGraph) else g) for label, g in row)
                    for row in rows]  # fmt: skip
    return rows, outputs, [(str(w.message), w.category) for w in caught]


def _network(task: tuple[list[list[CrystalGraph]], bool, Sequence[bool]]) -> list[Any]:
    """In a :class:`NetworkPool` worker: each model's outputs for its graphs of one batch."""
    graphs, per_atom, features = task
    return [p._run(g, per_atom, f) if g else NO_OUTPUTS for p, g, f in zip(_WORKER_PREDICTORS, graphs, features)]


def _summary(graph: CrystalGraph, done: dict[int, GraphSummary]) -> GraphSummary:
    """What the results keep of a graph (its edges need not travel back from a worker); one summary per graph object."""
    if id(graph) not in done:
        done[id(graph)] = GraphSummary(numbers=graph.numbers, n_sparse=graph.n_sparse, label=graph.label,
                                       bond_ratio=graph.bond_ratio, vacuum_gap=graph.vacuum_gap)  # fmt: skip
    return done[id(graph)]


def _regrouped(
    pool: Any, buffer: list[Row], inputs: Iterator[tuple[int, Any]], options: dict[str, Any], *, n_models: int,
    batch_size: int, per_atom: bool, features: Sequence[bool], errors: str, workers: int,
) -> Iterator[Batch]:  # fmt: skip
    """Batches formed here from the rows in ``buffer`` and then from rows of ``inputs`` built by the
    workers, the networks run by them: at most ``workers * 4`` graph tasks and ``workers * 2``
    network tasks in flight."""
    chunks = iter(lambda: list(islice(inputs, CHUNK)), [])
    reads: deque[Any] = deque(pool.apply_async(_work, ((c, options),)) for c in islice(chunks, workers * 4))
    nets: deque[tuple[list[list[Graphed]], Any]] = deque()
    while reads or buffer or nets:
        while reads and len(buffer) < batch_size:
            buffer.extend(_next_rows(pool, reads, chunks, options))
        if buffer:
            batch, buffer = buffer[:batch_size], buffer[batch_size:]
            _raise_first_error(batch, errors)
            columns = _columns(batch, n_models)
            graphs = [[g for _, g in items if isinstance(g, CrystalGraph)] for items in columns]
            task = (graphs, per_atom, features)
            nets.append((columns, pool.apply_async(_network, (task,)) if any(graphs) else None))
        while nets and (len(nets) > workers * 2 or not (reads or buffer)):
            columns, pending = nets.popleft()
            yield columns, _result(pending, pool) if pending is not None else [NO_OUTPUTS] * n_models


def _raise_first_error(rows: Sequence[Row], errors: str) -> None:
    """With ``errors="raise"``, raise the first unusable structure of ``rows`` (any model's)."""
    if errors == "raise":
        for row in rows:
            for _, item in row:
                if isinstance(item, InvalidStructureError):
                    raise item


def _on_device(
    predictor: Any, inputs: Any, *, batch_size: int, per_atom: bool, features: bool, errors: str,
    on_sparse: SparsePolicy, workers: int,
) -> Iterator[Batch]:  # fmt: skip
    """One predictor whose networks run here on its device (a GPU) or whose graphs are built in
    batches: records or graphs from this process or ``workers`` processes."""
    if predictor.batched_graphs():
        for chunk, outputs in _batched(predictor, inputs, batch_size=batch_size, per_atom=per_atom, features=features,
                                       errors=errors, on_sparse=on_sparse, workers=workers):  # fmt: skip
            yield [chunk], [outputs]
        return
    stream = predictor._graphs(inputs, errors, on_sparse, workers)
    while batch := list(islice(stream, batch_size)):
        good = [g for _, g in batch if isinstance(g, CrystalGraph)]
        yield [batch], [predictor._run(good, per_atom, features) if good else NO_OUTPUTS]


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
        _raise_first_error([(item,) for item in chunk], errors)
        good = [item for _, item in chunk if isinstance(item, GraphSummary)]
        if batch is None:
            yield chunk, (None, None, None, None)
            continue
        outputs = predictor._forward(batch, [g.n_atoms for g in good], per_atom, features)
        yield chunk, (*outputs, predictor._domain_rows(outputs[0], outputs[2], [g.numbers for g in good]))

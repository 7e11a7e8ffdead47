"""Streaming prediction: lazy inputs, bounded memory, incremental output, exact resume.

>>> from cgcnn_ase.inference.streaming import predict_stream
>>> summary = predict_stream(["generated/"], ["formation_energy"], "results.parquet")   # doctest: +SKIP
>>> summary = predict_stream(["generated/"], ["formation_energy"], "results.parquet", resume=True)  # doctest: +SKIP

Data flow, one chunk at a time (memory holds one chunk of structure records and its
result rows, whatever the input size)::

    inputs --iter_inputs--> (id, record | error | unread path) --chunks of chunk_size--> predict_items
           --> one result frame per chunk --> ChunkWriter (CSV append / one Parquet part file)

Structure files travel unread (``iter_inputs(defer_files=True)``) and are read where the graphs
are built, once for all models (:func:`~cgcnn_ase.inference.predictor.predict_many`), in worker
processes when there are workers: reading then overlaps with the networks instead of running
before them in this process. Models that cannot share graphs (a GPU among several models) each
predict in turn, so for them each file is read once here and the records go to every model.

Inputs and their ids are :func:`cgcnn_ase.io.inputs.iter_inputs`'s (files, directories,
globs, extxyz/traj frame by frame, ASE databases row by row, CSV/TSV/Parquet tables of CIF
text, structure JSON or paths, in-memory objects and ``(id, structure)`` pairs); every
structure is read by :mod:`cgcnn_ase.io.reader`, with the CIF reader the models need
(:func:`cif_reader_for`).

Resume: with ``resume=True`` the ids already in the output (successes and recorded
errors alike) are skipped before their structure is parsed or predicted, and new rows are
appended. The ids are held as 16-byte BLAKE2b digests in one sorted array (16 bytes per
finished item; a false match has probability below 1e-20 for 10^9 items). The final table
holds the same rows as an uninterrupted run when the inputs are the same and ids are
unique (give tables a unique ``id_column``, or none).

Outputs (:mod:`cgcnn_ase.inference.writers`): CSV (one header, rows appended per chunk; a
partial last line left by a killed run is cut off on resume) or Parquet (a directory of
``part-NNNNNN.parquet`` files, one per chunk, each written to a temporary name and renamed,
so a killed run never leaves a broken part). Columns: ``id``, one ``"<property> (<units>)"``
column per model (float64, NaN where the item failed; an ensemble adds
``"<property>_std (<units>)"`` and a model with a domain summary
``"<property>_domain_percentile (percent)"``), ``unseen_elements`` (``None``, or the elements
absent from a model's training data, :func:`~cgcnn_ase.inference.results.unseen_label`), ``error`` (``None`` or the messages,
joined by ``"; "``).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from cgcnn_ase.errors import CGCNNError, DuplicateIdsWarning, OutOfDomainWarning, StreamError
from cgcnn_ase.inference.parallel import NetworkPool, shares_graphs
from cgcnn_ase.inference.properties import warn_ungated_band_gaps
from cgcnn_ase.inference.results import (
    FLAG_COLUMNS,
    TEXT_COLUMNS,
    UNSEEN,
    add_flag_columns,
    flag_cells,
    unseen_cell,
    unseen_labels,
)
from cgcnn_ase.inference.writers import (
    PARQUET_RUN_RECORD,
    CSVChunkWriter,
    OutputFormat,
    ParquetChunkWriter,
    arrow_schema,
    column_units,
    infer_format,
    open_writer,
    output_lock,
    read_finished_ids,
)
from cgcnn_ase.io.inputs import DeferredItem, FinishedIds, Item, SeenIds, count_inputs, iter_inputs
from cgcnn_ase.io.reader import CifReader, cif_reader_for_policy
from cgcnn_ase.warning_blocks import catch_warnings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cgcnn_ase.inference.predictor import CGCNNPredictor
    from cgcnn_ase.inference.results import PredictionResult

# this module's prediction of chunks and runs, and the writers of cgcnn_ase.inference.writers
__all__ = [
    "CSVChunkWriter",
    "ChunkResult",
    "OutputFormat",
    "ParquetChunkWriter",
    "StreamError",
    "StreamSummary",
    "arrow_schema",
    "cif_reader_for",
    "infer_format",
    "iter_prediction_chunks",
    "load_predictors",
    "model_columns",
    "open_writer",
    "predict_items",
    "predict_stream",
    "read_finished_ids",
    "write_chunks",
]


# =============================================================================================
# Prediction of one chunk
# =============================================================================================


def load_predictors(
    models: str | os.PathLike | CGCNNPredictor | Sequence[str | os.PathLike | CGCNNPredictor],
    *,
    device: str | None = None,
) -> list[CGCNNPredictor]:
    """Predictors for shipped model names, model folders / ``.pth.tar`` paths, or predictors (kept),
    each through :func:`~cgcnn_ase.inference.predictor.as_predictor`."""
    from cgcnn_ase.inference.predictor import CGCNNPredictor, as_predictor

    if isinstance(models, (str, os.PathLike, CGCNNPredictor)):
        models = [models]
    out = [as_predictor(model, device=device) for model in models]
    if not out:
        raise ValueError("give at least one model")
    return out


def _column_blocks(
    predictors: Sequence[CGCNNPredictor], names: Sequence[str] | None = None, coverage: float | None = None
) -> list[list[str]]:
    """Per model: ``["<property> (<units>)"]``, plus ``"<property>_std (<units>)"`` for an ensemble,
    ``"<property>_uncertainty (<units>)"`` for one with an error model, the interval bounds with
    ``coverage`` and ``"<property>_domain_percentile (percent)"`` for a model with a domain summary."""
    headers = [f"{p.property_name} ({p.units})" for p in predictors]
    prefixes = [""] * len(predictors)
    if len(set(headers)) < len(headers):
        names = list(names) if names is not None else [p.model.spec.name for p in predictors]
        prefixes = [f"{name}: " for name in names]
        if len(set(prefixes)) < len(prefixes):
            raise StreamError(f"two models are named alike ({', '.join(names)}): their columns could not be told "
                              "apart; give each model once (a name and its alias are the same model) or distinct "
                              "names")  # fmt: skip
    blocks = []
    for prefix, p in zip(prefixes, predictors):
        block = [f"{prefix}{p.property_name} ({p.units})"]
        if getattr(p, "is_ensemble", False):
            block.append(f"{prefix}{p.property_name}_std ({p.units})")
        if getattr(p, "has_uncertainty", False):
            block.append(f"{prefix}{p.property_name}_uncertainty ({p.units})")
        if coverage is not None and getattr(p, "has_intervals", False):
            block += [f"{prefix}{p.property_name}_{bound} ({p.units})" for bound in ("lower", "upper")]
        if getattr(p, "has_domain", False):
            block.append(f"{prefix}{p.property_name}_domain_percentile (percent)")
        blocks.append(block)
    return blocks


def model_columns(
    predictors: Sequence[CGCNNPredictor], names: Sequence[str] | None = None, coverage: float | None = None
) -> list[str]:
    """The result columns of ``predictors``: ``"<property> (<units>)"`` per model, followed for
    an ensemble by ``"<property>_std (<units>)"`` (the members' calibrated standard deviation,
    as :class:`~cgcnn_ase.integrations.matminer.CGCNNFeaturizer` names it), for one with an error model
    by ``"<property>_uncertainty (<units>)"`` (the per-crystal error estimate, a standard deviation;
    docs/uncertainty.md), with ``coverage`` by ``_lower``/``_upper`` bounds and, for a model with a domain
    summary, by ``"<property>_domain_percentile (percent)"`` (0-100; near 100: outside the
    training data, see docs/uncertainty.md); prefixed by the model name
    (``"<name>: ..."``) when several models predict the same property."""
    return [column for block in _column_blocks(predictors, names, coverage) for column in block]


def cif_reader_for(predictors: Sequence[CGCNNPredictor]) -> CifReader:
    """The CIF reader of a run: :func:`~cgcnn_ase.io.reader.cif_reader_for_policy` of the
    models' neighbour policy, as :meth:`CGCNNPredictor.predict` decides it for one model.

    Each structure is read once for all models, so when the models' policies disagree
    ``"pymatgen"`` wins (the ``original`` policy's ties follow pymatgen's site order; the
    ``symmetric`` policy's graphs do not depend on the site order, its predictions then
    agree with ``predict``'s to float rounding)."""
    readers = {cif_reader_for_policy(p.model.spec.graph.neighbor_policy) for p in predictors}
    return "pymatgen" if "pymatgen" in readers else "gemmi"


@dataclass
class ChunkResult:
    """Predictions of one chunk.

    Attributes:
        frame: ``id``, one float64 column per model (in its units, NaN where the item
            failed; ensembles add their ``_std`` column), ``unseen_elements``
            (:func:`~cgcnn_ase.inference.results.unseen_label`), ``error`` (``None`` or the messages joined by ``"; "``).
        messages: per row, the list of error messages (empty for predicted items).
    """

    frame: pd.DataFrame
    messages: list[list[str]]

    @property
    def n_failed(self) -> int:
        return sum(bool(m) for m in self.messages)


def predict_items(
    items: Sequence[Item | DeferredItem],
    predictors: Sequence[CGCNNPredictor],
    *,
    columns: Sequence[str] | None = None,
    batch_size: int | None = None,
    on_sparse: str = "warn",
    workers: int | NetworkPool = 1,
    coverage: float | None = None,
    finished: FinishedIds | None = None,
    progress: bool | None = False,
) -> ChunkResult:
    """Predict a list of ``(id, record | error)`` items with every model (:func:`predicted_rows`).

    Items may also be ``(path, path)``, files left unread (``iter_inputs(defer_files=True)``):
    they are read where the graphs are built (in the worker processes, if any), once for all
    models that share graphs, and a file of several structures gives a row per structure (ids
    ``path@i``; those in ``finished`` are left out).

    An item fails when it could not be read or when any model refuses it; its values are
    then NaN for all models (as ``cgcnn-ase predict`` reports it). ``progress``: a bar over the items (``None``:
    on a terminal, for 100 or more; a stream's chunks leave it to the stream's own bar).
    """
    import pandas as pd

    columns = list(columns) if columns is not None else model_columns(predictors, coverage=coverage)
    # the widths do not depend on the names (round 31a: two model_best.pth.tar files, named apart by the caller's
    # columns, were refused here by their own names)
    widths = [len(block) for block in _column_blocks(predictors, [str(k) for k in range(len(predictors))], coverage)]
    if sum(widths) != len(columns):
        raise ValueError(f"{len(columns)} column names for {sum(widths)} model columns")
    results, rows = predicted_rows(items, predictors, batch_size=batch_size, on_sparse=on_sparse, workers=workers,
                                   coverage=coverage, finished=finished, progress=progress)  # fmt: skip
    ids: list[str] = []
    values: list[np.ndarray] = []
    messages: list[list[str]] = []
    unseen: list[str | None] = []
    labels = unseen_labels(predictors)
    from cgcnn_ase.inference.properties import physical_values

    shown = [physical_values(p.property_name, r.values) for r, p in zip(results, predictors)]  # as the bounds are
    flags: list[tuple[int, float, float] | None] = []
    for row_id, row in rows:
        ids.append(row_id)
        if isinstance(row, CGCNNError):
            values.append(np.full(len(columns), np.nan))
            messages.append([str(row)])
            unseen.append(None)
            flags.append(None)
            continue
        found = sorted({r.errors[row] for r in results if r.errors[row]})
        messages.append(found)
        values.append(np.full(len(columns), np.nan) if found else _cells(results, predictors, shown, row))
        unseen.append(None if found else unseen_cell(labels, results, row))
        flags.append(None if found else flag_cells(results, row))
    data: dict[str, Any] = {"id": ids}
    table = np.array(values, dtype=np.float64).reshape(len(ids), len(columns))
    for j, name in enumerate(columns):
        data[name] = table[:, j]
    data[UNSEEN] = unseen
    data["error"] = [" ".join("; ".join(m).split()) if m else None for m in messages]  # one line, in every output
    frame = pd.DataFrame(data)
    for name in TEXT_COLUMNS:
        frame[name] = frame[name].astype(object)
    add_flag_columns(frame, flags)
    return ChunkResult(frame=frame, messages=messages)


def predicted_rows(
    items: Sequence[Item | DeferredItem],
    predictors: Sequence[CGCNNPredictor],
    *,
    batch_size: int | None = None,
    on_sparse: str = "warn",
    workers: int | NetworkPool = 1,
    coverage: float | None = None,
    finished: FinishedIds | None = None,
    progress: bool | None = False,
) -> tuple[list[PredictionResult], list[tuple[str, int | CGCNNError]]]:
    """Every model's predictions for the readable ``items`` (:func:`~cgcnn_ase.inference.predictor.predict_many`),
    and the output rows in input order: ``(id, k)`` for row ``k`` of every result, or ``(id, error)``
    for an item that could not be read.

    A deferred file (``(path, path)``) gives a row per structure it holds (ids ``path@i``; those
    in ``finished`` are left out).
    """
    from cgcnn_ase.inference.predictor import predict_many

    inputs = [item for _, item in items if not isinstance(item, CGCNNError)]
    with catch_warnings():  # a run warns of repeated ids once, across its chunks (SeenIds)
        warnings.filterwarnings("ignore", category=DuplicateIdsWarning)
        results = (
            predict_many(predictors, inputs, batch_size=batch_size, errors="collect", on_sparse=on_sparse,
                         progress=progress, workers=workers, coverage=coverage)
            if inputs
            else []
        )  # fmt: skip
    try:
        counts = iter(_rows_per_input(inputs, results[0].ids) if results else [])
    except _OutOfStep:  # a file named like another's structure (x.cif, then x.cif@2): read the files here
        read = [row for item_id, item in items for row in (_read_here(item, predictors, finished)
                                                           if isinstance(item, str) else [(item_id, item)])]  # fmt: skip
        return predicted_rows(read, predictors, batch_size=batch_size, on_sparse=on_sparse, workers=workers,
                              coverage=coverage)  # fmt: skip
    rows: list[tuple[str, int | CGCNNError]] = []
    k = 0  # the next result row
    for item_id, item in items:
        if isinstance(item, CGCNNError):
            rows.append((item_id, item))
            continue
        first, k = k, k + next(counts)
        for row in range(first, k):
            row_id = results[0].ids[row]
            if row_id != item_id and finished is not None and finished.take(row_id):
                continue  # one of several structures of a deferred file, done in an earlier run
            rows.append((row_id, row))
    return results, rows


def _cells(
    results: Sequence[Any], predictors: Sequence[CGCNNPredictor], shown: Sequence[np.ndarray], k: int
) -> np.ndarray:
    """Row ``k`` of every model's result, in :func:`model_columns` order; the value from ``shown``: each
    model's values clipped to their property's physical range, as their interval bounds are (a band gap
    is not below 0)."""
    cells = []
    for r, p, values in zip(results, predictors, shown):
        cells.append(values[k])
        if getattr(p, "is_ensemble", False):
            cells.append(r.std[k])
        if getattr(p, "has_uncertainty", False):
            cells.append(r.uncertainty[k])
        if r.lower is not None:
            cells += [r.lower[k], r.upper[k]]
        if getattr(p, "has_domain", False):
            cells.append(r.domain_percentile[k])
    return np.array(cells, dtype=np.float64)


class _OutOfStep(Exception):
    """Result ids that cannot be matched to the inputs by :func:`_rows_per_input`."""


def _read_here(path: str, predictors: Sequence[CGCNNPredictor], finished: FinishedIds | None) -> list[Item]:
    """A deferred file's items, read in this process (as ``iter_inputs`` without ``defer_files``)."""
    from cgcnn_ase.io.inputs import iter_file

    return list(iter_file(path, cif_reader=cif_reader_for(predictors), finished=finished))


def _rows_per_input(inputs: Sequence[Any], ids: Sequence[str]) -> list[int]:
    """How many result rows (with ``ids``, in order) each input gave: one per record; for a file
    left unread, one (id: its path, a structure or an error) or one per structure (``path@0``,
    ``path@1``, ...: the ids :func:`cgcnn_ase.io.reader.read_input` gives). Raises
    :class:`_OutOfStep` where the ids do not match the inputs one to one."""
    counts, k = [], 0
    for item in inputs:
        n = 1
        if isinstance(item, str) and k < len(ids) and ids[k] != item:
            n = 0
            while k + n < len(ids) and ids[k + n] == f"{item}@{n}":
                n += 1
        if n == 0 or k + n > len(ids):
            raise _OutOfStep(f"result ids out of step with the inputs at {item!r} (row {k})")
        counts.append(n)
        k += n
    if k != len(ids):
        raise _OutOfStep(f"{len(ids) - k} result rows left over after the inputs")
    return counts


def iter_prediction_chunks(
    items: Iterable[Item | DeferredItem],
    predictors: Sequence[CGCNNPredictor],
    *,
    chunk_size: int = 1024,
    batch_size: int | None = None,
    columns: Sequence[str] | None = None,
    on_sparse: str = "warn",
    workers: int | NetworkPool = 1,
    coverage: float | None = None,
    finished: FinishedIds | None = None,
) -> Iterator[ChunkResult]:
    """Predict ``items`` ``chunk_size`` at a time (:func:`predict_items`); only one chunk is held at any moment.

    Items are pulled from ``items`` lazily: chunk ``k`` is read only after chunk ``k - 1``
    has been yielded (and, in :func:`predict_stream`, written).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    columns = list(columns) if columns is not None else model_columns(predictors, coverage=coverage)
    stream = iter(items)
    while chunk := list(islice(stream, chunk_size)):
        yield predict_items(chunk, predictors, columns=columns, batch_size=batch_size, on_sparse=on_sparse,
                            workers=workers, coverage=coverage, finished=finished)  # fmt: skip


# =============================================================================================
# The whole run
# =============================================================================================


@dataclass
class StreamSummary:
    """What one :func:`predict_stream` call did.

    Attributes:
        output: where the rows went (``None`` for a stream).
        format: ``"csv"`` or ``"parquet"``.
        columns: the output columns.
        n_predicted: items written by this call that were predicted.
        n_failed: items written by this call with an error.
        n_skipped: items skipped because the output already held them (resume).
        n_failed_before: rows with an error that the output already held (resume: earlier sessions' failures).
        n_chunks: chunks written by this call.
    """

    output: Path | None
    format: str
    columns: list[str]
    n_predicted: int = 0
    n_failed: int = 0
    n_skipped: int = 0
    n_failed_before: int = 0
    n_chunks: int = 0

    @property
    def n_written(self) -> int:
        return self.n_predicted + self.n_failed


def predict_stream(
    inputs: Any,
    models: str | os.PathLike | CGCNNPredictor | Sequence[str | os.PathLike | CGCNNPredictor],
    output: str | os.PathLike | TextIO,
    *,
    fmt: OutputFormat | None = None,
    resume: bool = False,
    chunk_size: int = 1024,
    batch_size: int | None = None,
    column: str = "cif",
    id_column: str | None = None,
    sort: bool = True,
    device: str | None = None,
    on_sparse: str = "warn",
    names: Sequence[str] | None = None,
    progress: bool | None = False,
    on_chunk: Callable[[ChunkResult], None] | None = None,
    workers: int = 1,
    coverage: float | None = None,
) -> StreamSummary:
    """Predict every structure in ``inputs`` with ``models``, writing rows chunk by chunk.

    Memory holds one chunk (``chunk_size`` records and their rows) plus, when resuming,
    16 bytes per finished id; nothing accumulates with the input size.

    Args:
        inputs: see :func:`iter_inputs` (files, directories, globs, tables, ``.db``,
            extxyz, objects, ``(id, structure)`` pairs).
        models: shipped model names, model folders / checkpoints, or predictors.
        output: a CSV path, a Parquet folder path (``.parquet``/``.pq`` or ``fmt="parquet"``),
            or a text stream for CSV.
        fmt: ``"csv"`` or ``"parquet"`` (default: from the output's suffix).
        resume: skip the ids already in ``output`` and append; otherwise ``output`` is
            replaced.
        chunk_size: structures per chunk (read, predicted and written together).
        batch_size: crystals per forward pass (results depend on it, and on ``chunk_size``, only through
            float32 rounding: about 1e-7 relative).
        column, id_column: for table inputs (see :func:`iter_inputs`).
        sort: sort directory listings and glob matches.
        device: torch device for models loaded by name or path.
        on_sparse: sparse-graph policy of :meth:`CGCNNPredictor.predict`.
        names: model names for column headers (default: the model folders' names).
        progress: show a progress bar (structures) on stderr; ``None``: only when stderr is a terminal.
        on_chunk: called with each :class:`ChunkResult` after it is written.
        workers: worker processes (see :meth:`CGCNNPredictor.predict`: on a CPU they read, build graphs
            and run the networks); results are the same bit for bit.
        coverage: add ``<property>_lower``/``_upper`` prediction intervals of this coverage for
            models calibrated for them.

    Returns:
        A :class:`StreamSummary` (counts; the rows are in ``output``).

    Raises:
        StreamError: a table lacks the column, or ``output`` holds another run's columns.
    """
    predictors = load_predictors(models, device=device)
    columns = model_columns(predictors, names, coverage)
    warn_ungated_band_gaps(predictors, names)
    # models on the CPU: one set of worker processes serves every chunk (started on first use, once per run)
    pool = NetworkPool(predictors, workers) if workers > 1 and shares_graphs(predictors) else None

    def rows(chunk: list[Item | DeferredItem], finished: FinishedIds | None) -> ChunkResult:
        return predict_items(chunk, predictors, columns=columns, batch_size=batch_size, on_sparse=on_sparse,
                             workers=pool or workers, coverage=coverage, finished=finished)  # fmt: skip

    try:
        # Structure files are read where the models run (in their workers, overlapping the networks), once
        # for all of them; models that cannot share graphs (a GPU among several) share one reading here.
        defer = len(predictors) == 1 or shares_graphs(predictors)
        return write_chunks(
            inputs, output, columns, rows, fmt=fmt, resume=resume, chunk_size=chunk_size, column=column,
            id_column=id_column, sort=sort, cif_reader=cif_reader_for(predictors), defer_files=defer,
            progress=progress, on_chunk=on_chunk,
            settings={"models": [p.model.spec.name for p in predictors], "coverage": coverage,
                      "members": [p.model.n_members for p in predictors]},
        )  # fmt: skip
    finally:
        if pool is not None:
            pool.close()


def write_chunks(
    inputs: Any,
    output: str | os.PathLike | TextIO,
    columns: Sequence[str],
    rows: Callable[[list[Item | DeferredItem], FinishedIds | None], ChunkResult],
    *,
    fmt: OutputFormat | None = None,
    resume: bool = False,
    chunk_size: int = 1024,
    column: str = "cif",
    id_column: str | None = None,
    sort: bool = True,
    cif_reader: CifReader = "gemmi",
    defer_files: bool = False,
    units: dict[str, str] | None = None,
    progress: bool | None = False,
    on_chunk: Callable[[ChunkResult], None] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> StreamSummary:
    """The streaming loop of :func:`predict_stream`, for any per-chunk computation: read ``inputs``
    ``chunk_size`` items at a time, turn each chunk into rows with ``rows(chunk, finished)`` and
    append them to ``output`` before reading on. ``columns`` are the value columns (``id`` and
    :data:`TEXT_COLUMNS` aside) of every :class:`ChunkResult` frame; with ``resume`` the ids already in ``output`` are
    skipped unread (``finished``). Arguments as in :func:`predict_stream`; ``cif_reader`` and
    ``defer_files`` as in :func:`iter_inputs`; ``units`` ({column: units}) only where a column's name does not
    end in its units (:func:`~cgcnn_ase.inference.writers.column_units` reads the others).

    ``settings`` (JSON data) are what the rows depend on beyond their columns, e.g. the models' names
    and a threshold: they are recorded next to the output (:func:`run_record_path`), and a resume
    whose settings differ from the recorded ones is refused (rows made two ways would be mixed).
    """
    from cgcnn_ase.progress import progress_bar, shown_by_default

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    stream_output = hasattr(output, "write") or _is_device_or_pipe(output)  # no lock or record beside /dev/null
    out_format = infer_format(None if hasattr(output, "write") else output, fmt)
    if resume and stream_output:
        raise StreamError("resume needs an output file or folder, not a stream, pipe or device")
    with nullcontext() if stream_output else output_lock(output):  # one run writes an output at a time
        all_columns = ["id", *columns, *FLAG_COLUMNS, *TEXT_COLUMNS]
        record = None if stream_output or settings is None else run_record_path(output, out_format)
        if settings is not None:  # ids made another way would not match those already written: every row again
            settings = {**settings, "column": column, "id_column": id_column}
        if resume and record is not None:
            _check_run_record(record, settings)
        if not resume and record is not None:
            _refuse_interrupted_output(output, record, out_format)
        finished = read_finished_ids(output, fmt=out_format) if resume else None
        units = {**column_units(all_columns), **(units or {})}
        writer = open_writer(output, all_columns, fmt=out_format, append=resume, units=units)
        summary = StreamSummary(output=None if stream_output else Path(output), format=out_format, columns=all_columns)
        items = iter_inputs(
            inputs, column=column, id_column=id_column, cif_reader=cif_reader, sort=sort, finished=finished,
            exclude=() if stream_output else [output, *([record] if record else [])],  # never this run's own files
            defer_files=defer_files,
        )  # fmt: skip
        shown = progress if progress is not None else shown_by_default()
        total = count_inputs(inputs, exclude=() if stream_output else [output]) if shown else None
        try:
            with progress_bar(show=shown, total=total, unit=" structures", leave=False, dynamic_ncols=True) as bar:
                seen, repeats_warned, done, far = SeenIds(), False, 0, _FarTally()
                while chunk := list(islice(items, chunk_size)):
                    with catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        result = rows(chunk, finished)
                    far.pass_on(caught)
                    if record is not None and not summary.n_chunks:  # finished: false from the first rows to the last
                        record.write_text(json.dumps({**dict(settings), RUN_FINISHED: False}, indent=2, default=str) + "\n")
                    writer.write(result.frame)
                    repeated = seen.repeated(result.frame["id"])
                    if repeated and not repeats_warned:
                        repeats_warned = _warn_repeated_ids(repeated)
                    failed = result.n_failed
                    summary.n_failed += failed
                    summary.n_predicted += len(result.frame) - failed
                    summary.n_chunks += 1
                    done = _advance(bar, done, summary.n_predicted + summary.n_failed + (finished.skipped if finished
                                                                                          else 0), total)  # fmt: skip
                    if on_chunk is not None:
                        on_chunk(result)
        except BaseException:
            writer.close(complete=False)  # no header or empty part after an error (a bad --column, Ctrl-C)
            raise
        else:
            writer.close()
            far.summarise()
            if record is not None:
                record.write_text(json.dumps({**dict(settings), RUN_FINISHED: True}, indent=2, default=str) + "\n")
        finally:
            summary.n_skipped = finished.skipped if finished is not None else 0
            summary.n_failed_before = finished.n_errors if finished is not None else 0
        return summary


class _FarTally:
    """A run's :class:`~cgcnn_ase.errors.OutOfDomainWarning` s: each model's first is passed on, those of later chunks
    are summed into one warning per model at the end (round 24: one per model and chunk, thousands over a screen of
    millions). Every other warning caught in a chunk is passed on as it came."""

    def __init__(self) -> None:
        self.warned: set[str] = set()
        self.later: dict[str, int] = {}  # model -> structures beyond every validation crystal in later chunks

    def pass_on(self, caught: Sequence[warnings.WarningMessage]) -> None:
        for w in caught:
            text = str(w.message)
            model = text.split(":", 1)[0]
            if not issubclass(w.category, OutOfDomainWarning):
                warnings.warn(w.message, stacklevel=4)
                continue
            if model not in self.warned:
                self.warned.add(model)
                warnings.warn(w.message, stacklevel=4)
                continue
            counted = re.search(r"(\d+) of \d+ predicted structure", text)
            self.later[model] = self.later.get(model, 0) + (int(counted[1]) if counted else 0)

    def summarise(self) -> None:
        for model, hit in self.later.items():
            warnings.warn(f"{model}: {hit} more predicted structure(s), in later chunks, also lie farther from its "
                          "training data than every validation crystal (domain percentile 100; not warned chunk by "
                          "chunk)", OutOfDomainWarning, stacklevel=4)  # fmt: skip


def _advance(bar: Any, shown: int, done: int, total: int | None) -> int:
    """Move ``bar`` from ``shown`` to ``done`` items (rows written and finished ids skipped), raising its
    ``total`` (an estimate, :func:`~cgcnn_ase.io.inputs.count_inputs`) when files held more structures than
    counted; returns ``done``."""
    if total is not None and done > total:
        bar.total = done
    bar.update(done - shown)
    return done


def _is_device_or_pipe(output: Any) -> bool:
    """Whether ``output`` names an existing path that is neither a regular file nor a folder (``/dev/null``,
    ``/dev/stdout``, a named pipe): written like a stream, with no lock or settings record beside it (a user
    cannot create files in ``/dev``)."""
    import stat

    try:
        mode = os.stat(output).st_mode
    except (OSError, TypeError, ValueError):  # missing (a new output), or not a path
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def run_record_path(output: str | os.PathLike, fmt: OutputFormat) -> Path:
    """Where a stream's settings are recorded: ``_cgcnn_run.json`` inside a Parquet folder (readers skip
    files starting with ``_``), the hidden ``.<name>.run.json`` beside a CSV file (folder inputs skip
    hidden files)."""
    path = Path(output)
    return path / PARQUET_RUN_RECORD if fmt == "parquet" else path.with_name(f".{path.name}.run.json")


#: The run record's key saying whether the run wrote its last chunk (records older than it: finished).
RUN_FINISHED = "finished"


def _refuse_interrupted_output(output: Any, record: Path, fmt: OutputFormat) -> None:
    """Refuse to start a run over the rows of an interrupted one (round 21a: a rerun without ``--resume`` after
    Ctrl-C replaced hours of results without a word); a finished run's output is replaced as any file is."""
    try:
        finished = json.loads(record.read_text()).get(RUN_FINISHED, True)
    except (OSError, ValueError, AttributeError):
        return
    if finished is not False:
        return
    try:
        n_rows = read_finished_ids(output, fmt=fmt).n_rows
    except CGCNNError:
        return  # unreadable: nothing a rerun could lose
    if n_rows:
        raise StreamError(f"{output} holds {n_rows} rows of an interrupted run: resume it (--resume, predict_stream(..., "
                          "resume=True)), or delete it to start again")  # fmt: skip


def _check_run_record(record: Path, settings: Mapping[str, Any]) -> None:
    """Refuse to resume an output whose recorded settings differ from ``settings`` (none recorded: allowed)."""
    if not record.is_file():
        return
    try:
        before = json.loads(record.read_text())
    except (OSError, ValueError):
        return  # unreadable: nothing to compare
    now = json.loads(json.dumps(dict(settings), default=str))
    changed = [f"{key}: {before.get(key)!r} then, {now.get(key)!r} now" for key in sorted(set(before) | set(now))
               if before.get(key) != now.get(key) and key in before and key != RUN_FINISHED]  # fmt: skip (a record older than a key: not compared)
    if changed:
        raise StreamError(f"cannot resume: the output was written with other settings ({'; '.join(changed)}; recorded in "
                          f"{record}); rerun with the same settings, or write to a new output")  # fmt: skip


def _warn_repeated_ids(repeated: Sequence[str]) -> bool:
    """Warn (:class:`~cgcnn_ase.errors.DuplicateIdsWarning`) about ids met again in a run (:class:`SeenIds`, across
    chunks); whether it did."""
    repeated = list(dict.fromkeys(repeated))
    if len(repeated):
        shown = ", ".join(map(str, repeated[:3])) + (", ..." if len(repeated) > 3 else "")
        warnings.warn(f"ids repeat in the output ({shown}): those rows cannot be told apart by id; give unique ids "
                      "(a file named once; for a table, --id-column)", DuplicateIdsWarning, stacklevel=3)  # fmt: skip
    return bool(len(repeated))

"""Prediction and featurisation over a ``dask.distributed`` cluster.

>>> from dask.distributed import Client, LocalCluster                          # doctest: +SKIP
>>> import dask.dataframe as dd                                                # doctest: +SKIP
>>> from cgcnn_ase.integrations.dask import predict_dataframe, write_parquet         # doctest: +SKIP
>>> client = Client(LocalCluster(n_workers=4, threads_per_worker=1))           # doctest: +SKIP
>>> table = dd.read_parquet("generated.parquet")   # a column "cif" of CIF text # doctest: +SKIP
>>> results = predict_dataframe(table, ["formation_energy"], id_column="id")   # doctest: +SKIP
>>> write_parquet(results, "results.parquet")      # or results.compute()      # doctest: +SKIP

Partitions of structures go in; a dask dataframe (one row per structure: ``id``, one
``"<property> (<units>)"`` column per model, ``unseen_elements``, ``error``) comes out, written as a Parquet
dataset or computed into pandas. Bad items get NaN and a message in ``error``; they never
fail a task. Each partition runs :func:`cgcnn_ase.inference.streaming.predict_items`, the code of the
single-process streaming path, so the results are the same.

Models are loaded once per worker process: the partition functions take model *names or
paths* (small to ship) and load them through :func:`cached_predictors`, a per-process
cache (the only module-level state here: a lock-protected ``functools.lru_cache`` of at
most 8 model sets; :func:`clear_model_cache` empties it). The matminer
:class:`~cgcnn_ase.integrations.matminer.CGCNNFeaturizer` works on a dask dataframe through
``ddf.map_partitions(featurize_partition, featurizer, "structure", meta=...)``, or
:func:`featurize_dask`, which builds ``meta``; its models are cached per worker the same way.

Partition functions set the worker's torch thread count (``threads``, default 1: run one
worker process per core, ``LocalCluster(n_workers=cores, threads_per_worker=1)``).
"""

from __future__ import annotations

import functools
import os
import pickle
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cgcnn_ase.errors import InvalidStructureError, MissingDependencyError, StreamError
from cgcnn_ase.inference.properties import warn_ungated_band_gaps
from cgcnn_ase.inference.results import FLAG_COLUMNS, TEXT_COLUMNS
from cgcnn_ase.inference.streaming import (
    arrow_schema,
    cif_reader_for,
    load_predictors,
    model_columns,
    predict_items,
)
from cgcnn_ase.io.inputs import iter_file, iter_files, parse_cell
from cgcnn_ase.nn.threads import torch_threads

try:
    import dask  # noqa: F401 - the functions below import its parts where they use them
except ImportError:  # round 26a: a raw ModuleNotFoundError named no extra
    raise MissingDependencyError("cgcnn_ase.integrations.dask needs dask: pip install 'cgcnn-ase[scale]' (or "
                                 "'dask[distributed,dataframe]')") from None  # fmt: skip

if TYPE_CHECKING:  # pragma: no cover
    import dask.dataframe as dd
    import pandas as pd

    from cgcnn_ase.inference.predictor import CGCNNPredictor
    from cgcnn_ase.integrations.matminer import CGCNNFeaturizer

__all__ = [
    "WORKER_MALLOC_THRESHOLD",
    "cached_predictors",
    "clear_model_cache",
    "featurize_dask",
    "featurize_partition",
    "model_cache_info",
    "predict_dataframe",
    "predict_files",
    "predict_partition",
    "predict_paths_partition",
    "worker_config",
    "write_parquet",
]

ModelRefs = tuple[str, ...]

#: glibc malloc thresholds for worker processes, bytes. Dask's nanny sets
#: ``MALLOC_TRIM_THRESHOLD_=65536`` for every worker, and setting any threshold switches off
#: glibc's dynamic mmap threshold: then every tensor above 128 KiB is mmap'ed and unmapped
#: again, which halves CGCNN throughput (measured: 2.0 s vs 1.0 s for 1000 MP crystals).
#: 64 MiB for both keeps memory returned to the system in large pieces only.
WORKER_MALLOC_THRESHOLD = 64 * 2**20


def worker_config() -> dict[str, Any]:
    """Dask settings for CGCNN workers: pass to ``dask.config.set`` before the cluster starts.

    Keeps Dask's other pre-spawn variables and raises glibc's ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` to :data:`WORKER_MALLOC_THRESHOLD` (see there why)::

        with dask.config.set(worker_config()):
            cluster = LocalCluster(n_workers=4, threads_per_worker=1)

    Dask's rule: environment variables of the same names in the process that starts the
    workers win over this setting, and its nanny copies the values into that process's
    ``os.environ`` (so a later cluster started from the same process inherits them).
    """
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ.update(
        {"MALLOC_MMAP_THRESHOLD_": WORKER_MALLOC_THRESHOLD, "MALLOC_TRIM_THRESHOLD_": WORKER_MALLOC_THRESHOLD}
    )
    return {"distributed.nanny.pre-spawn-environ": environ}


# -- the per-process model cache ---------------------------------------------------------------

_CACHE_LOCK = threading.Lock()  # one load per process even when a worker runs several threads


@functools.lru_cache(maxsize=8)
def _load(models: ModelRefs, device: str | None) -> tuple[CGCNNPredictor, ...]:
    return tuple(load_predictors(list(models), device=device))


def cached_predictors(models: Sequence[str | os.PathLike], device: str | None = "cpu") -> tuple[CGCNNPredictor, ...]:
    """The predictors of ``models`` (names or paths), loaded once per process and reused.

    Args:
        models: shipped model names or model folder / checkpoint paths.
        device: torch device for the models (``None``: CUDA when available).
    """
    key = tuple(os.fspath(m) for m in models)
    with _CACHE_LOCK:
        return _load(key, device)


@functools.lru_cache(maxsize=8)
def _load_featurizer(blob: bytes) -> CGCNNFeaturizer:
    featurizer = pickle.loads(blob)
    featurizer.feature_labels()  # loads its models now, once
    return featurizer


def _cached_featurizer(featurizer: CGCNNFeaturizer) -> CGCNNFeaturizer:
    """A copy of ``featurizer`` with its models loaded, shared by every partition this process runs."""
    blob = pickle.dumps(featurizer)  # the featurizer pickles without its loaded models
    with _CACHE_LOCK:
        return _load_featurizer(blob)


def model_cache_info() -> dict[str, int]:
    """Loads done by this process: ``{"model_sets": ..., "featurizers": ...}`` (cache misses);
    run it on every worker with ``client.run(model_cache_info)``."""
    return {"model_sets": _load.cache_info().misses, "featurizers": _load_featurizer.cache_info().misses}


def clear_model_cache() -> None:
    """Forget the models loaded in this process."""
    with _CACHE_LOCK:
        _load.cache_clear()
        _load_featurizer.cache_clear()


# -- prediction --------------------------------------------------------------------------------


def _empty_result(columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    data: dict[str, Any] = {"id": pd.Series([], dtype=object)}
    for name in columns:
        data[name] = pd.Series([], dtype=np.float64)
    data["n_sparse"] = pd.Series([], dtype="Int64")
    for name in FLAG_COLUMNS[1:]:
        data[name] = pd.Series([], dtype=np.float64)
    for name in TEXT_COLUMNS:
        data[name] = pd.Series([], dtype=object)
    return pd.DataFrame(data)


def predict_partition(
    frame: pd.DataFrame,
    models: Sequence[str],
    *,
    column: str = "cif",
    id_column: str | None = None,
    batch_size: int | None = None,
    device: str | None = "cpu",
    threads: int | None = 1,
    on_sparse: str = "warn",
) -> pd.DataFrame:
    """Predict the structures of one dataframe partition (one row each).

    Args:
        frame: a partition with ``column`` holding CIF text, pymatgen structure dicts
            (or their JSON), structure file paths, or ``Atoms``/``Structure`` objects.
        models: model names or paths (loaded once per process, see :func:`cached_predictors`).
        id_column: column of ids (``None``: the partition's index, as text).
        batch_size: crystals per forward pass.
        device, threads: torch device, and CPU threads while this partition runs (the count is restored after).
        on_sparse: sparse-graph policy (warnings go to the worker's log).

    Returns:
        ``id``, one column per model (float64, in the model's units), ``error``; same index
        as ``frame``.
    """
    with torch_threads(threads):
        predictors = cached_predictors(models, device)
        warn_ungated_band_gaps(predictors, list(models))  # called on its own (round 30b: not only through _meta)
        reader = cif_reader_for(predictors)
        ids = frame[id_column].astype(str).tolist() if id_column else [str(i) for i in frame.index]
        items = []
        for item_id, cell in zip(ids, frame[column].tolist()):
            try:
                items.append((item_id, parse_cell(cell, item_id, cif_reader=reader)))
            except InvalidStructureError as exc:
                items.append((item_id, exc))
        if not items:
            return _empty_result(model_columns(predictors, list(models)))
        out = predict_items(items, predictors, columns=model_columns(predictors, list(models)), batch_size=batch_size,
                            on_sparse=on_sparse).frame  # fmt: skip
        out.index = frame.index
        return out


def predict_paths_partition(
    frame: pd.DataFrame,
    models: Sequence[str],
    *,
    column: str = "path",
    batch_size: int | None = None,
    device: str | None = "cpu",
    threads: int | None = 1,
    on_sparse: str = "warn",
) -> pd.DataFrame:
    """Predict the structures in the files listed in ``frame[column]`` (a multi-frame file
    gives one row per frame, ids as in :mod:`cgcnn_ase.inference.streaming`); the rows are
    indexed by their ids (unique across partitions)."""
    import pandas as pd

    with torch_threads(threads):
        predictors = cached_predictors(models, device)
        warn_ungated_band_gaps(predictors, list(models))
        columns = model_columns(predictors, list(models))
        reader = cif_reader_for(predictors)
        items = [item for path in frame[column].tolist() for item in iter_file(str(path), cif_reader=reader)]
        if not items:
            return _empty_result(columns).set_axis(pd.Index([], dtype=object))
        out = predict_items(items, predictors, columns=columns, batch_size=batch_size, on_sparse=on_sparse).frame
        out.index = pd.Index(out["id"].tolist(), dtype=object)
        return out


def _model_refs(models: Any) -> list[str]:
    """``models`` as the names or paths each worker loads (:func:`cached_predictors`).

    Raises:
        StreamError: a model given as a loaded predictor (workers cannot load an object) or another type.
    """
    items = list(models) if isinstance(models, (list, tuple)) else [models]  # one name, path or (refused) object
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            source = getattr(getattr(item, "model", None), "source", None)
            hint = f" (this one loads from {source!r}; members and settings changed on it are not carried)" if source else ""
            raise StreamError(f"models are shipped names or model folders, which each worker loads, not "
                              f"{type(item).__name__} objects{hint}; CGCNNFeaturizer with featurize_dask takes loaded "
                              "predictors")  # fmt: skip
    return [os.fspath(m) for m in items]


def _check_dask_frame(ddf: Any, function: str, instead: str) -> None:
    """Refuse anything but a dask DataFrame (a pandas frame, a dask Series, which answers ``.columns`` too).

    Raises:
        StreamError: naming what was given and how to wrap it, or ``instead``, the in-process way.
    """
    import dask.dataframe as dd

    if not isinstance(ddf, dd.DataFrame):
        raise StreamError(f"{function} takes a dask DataFrame, got {type(ddf).__module__}.{type(ddf).__name__}: wrap a "
                          "pandas table with dask.dataframe.from_pandas(df, npartitions=...) (a dask Series: "
                          f"series.to_frame()), or run it in this process ({instead})")  # fmt: skip


def _meta(models: Sequence[str], device: str | None) -> pd.DataFrame:
    """The empty result frame (dask ``meta``); loads the models here, so bad names fail early, and warns here
    about a band gap that is the model's own value (:func:`~cgcnn_ase.inference.properties.warn_ungated_band_gaps`)."""
    predictors = cached_predictors(models, device)
    warn_ungated_band_gaps(predictors, list(models))
    return _empty_result(model_columns(predictors, list(models)))


def predict_dataframe(
    ddf: dd.DataFrame,
    models: Sequence[str],
    *,
    column: str = "cif",
    id_column: str | None = None,
    batch_size: int | None = None,
    device: str | None = "cpu",
    threads: int | None = 1,
    on_sparse: str = "warn",
) -> dd.DataFrame:
    """Lazily predict every row of a dask dataframe of structures (see :func:`predict_partition`).

    The models are loaded in this process once, to check them and build the result's
    ``meta``, and once per worker process.

    Returns:
        A dask dataframe with the index of ``ddf``: ``id``, one column per model, ``error``.
    """
    models = _model_refs(models)
    _check_dask_frame(ddf, "predict_dataframe", "CGCNNPredictor.predict(df[column]), predict_stream")
    for name, option in ((column, "column"), (id_column, "id_column")):
        if name is not None and name not in ddf.columns:
            raise StreamError(f"{option}: no column {name!r}; columns: {list(ddf.columns)}")
    meta = _meta(models, device)
    return ddf.map_partitions(
        predict_partition, models, column=column, id_column=id_column, batch_size=batch_size, device=device,
        threads=threads, on_sparse=on_sparse, meta=meta,
    )  # fmt: skip


def predict_files(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    models: Sequence[str],
    *,
    files_per_partition: int = 256,
    sort: bool = True,
    batch_size: int | None = None,
    device: str | None = "cpu",
    threads: int | None = 1,
    on_sparse: str = "warn",
) -> dd.DataFrame:
    """Lazily predict the structure files in ``inputs`` (files, directories, globs), read on
    the workers, ``files_per_partition`` files per task; a multi-frame file gives one row per
    frame. Ids and order are those of the single-process streaming path, and the result is
    indexed by the ids (``.loc["folder/x.cif"]``).

    The file names (not the files) are listed here, about 100 bytes each; every worker must
    be able to read the files. For tables of structures use :func:`predict_dataframe`.
    """
    import dask.dataframe as dd
    import pandas as pd

    models = _model_refs(models)
    paths = pd.DataFrame({"path": list(iter_files(inputs, sort=sort))})
    if paths.empty:
        raise StreamError(f"no files in {inputs}")
    meta = _meta(models, device)
    meta.index = pd.Index([], dtype=object)
    table = dd.from_pandas(paths, chunksize=files_per_partition, sort=False)
    return table.map_partitions(
        predict_paths_partition, models, column="path", batch_size=batch_size, device=device, threads=threads,
        on_sparse=on_sparse, meta=meta,
    )  # fmt: skip


def write_parquet(results: dd.DataFrame, path: str | os.PathLike, **kwargs: Any) -> None:
    """Write a result dataframe as a Parquet dataset (one part per partition) with a fixed
    schema, so that partitions without any error still store ``error`` as text."""
    kwargs.setdefault("write_index", False)
    results.to_parquet(os.fspath(path), schema=arrow_schema(list(results.columns)), **kwargs)


# -- matminer featurizer ---------------------------------------------------------------------


def featurize_partition(
    frame: pd.DataFrame,
    featurizer: CGCNNFeaturizer,
    col_id: str = "structure",
    *,
    ignore_errors: bool = True,
    return_errors: bool = True,
    threads: int | None = 1,
) -> pd.DataFrame:
    """``featurizer.featurize_dataframe`` on one partition, with the featurizer's models loaded
    once per worker process (use with ``ddf.map_partitions``; :func:`featurize_dask` adds ``meta``).

    ``col_id`` holds ``Structure``/``Atoms`` objects, or text: CIF, pymatgen structure JSON or
    a file path (dask turns object columns into text unless ``dataframe.convert-string`` is
    off). Text is parsed here, row by row; a row that cannot be parsed gets NaN features and
    its message in the errors column (or raises, without ``ignore_errors``).
    """
    with torch_threads(threads):
        local = _cached_featurizer(featurizer)
        values = frame[col_id].tolist()
        if not any(isinstance(v, (str, bytes)) for v in values):
            return local.featurize_dataframe(
                frame, col_id, ignore_errors=ignore_errors, return_errors=return_errors, pbar=False
            )
        reader = cif_reader_for(local.predictors)
        parsed: list[Any] = []
        failures: dict[int, str] = {}
        for k, (index, value) in enumerate(zip(frame.index, values)):
            if not isinstance(value, (str, bytes)):
                parsed.append(value)
                continue
            try:
                parsed.append(parse_cell(value, f"row {index}", cif_reader=reader))
            except InvalidStructureError as exc:
                if not ignore_errors:
                    raise
                parsed.append(None)  # the featurizer reports it as unusable; the message is set below
                failures[k] = str(exc)
        work = frame.copy()
        work[col_id] = _object_series(parsed, frame.index)
        out = local.featurize_dataframe(work, col_id, ignore_errors=ignore_errors, return_errors=return_errors, pbar=False)
        out[col_id] = frame[col_id]
        if return_errors and failures:
            column = out.columns.get_loc(f"{type(local).__name__} Exceptions")
            for k, message in failures.items():
                out.iat[k, column] = message
        return out


def _object_series(values: list[Any], index: Any) -> pd.Series:
    """``values`` as an object Series (pandas would otherwise try to unpack array-like items)."""
    import pandas as pd

    series = pd.Series([None] * len(values), index=index, dtype=object)
    for k, value in enumerate(values):
        series.iat[k] = value
    return series


def featurize_dask(
    ddf: dd.DataFrame,
    featurizer: CGCNNFeaturizer,
    col_id: str = "structure",
    *,
    ignore_errors: bool = True,
    return_errors: bool = True,
    threads: int | None = 1,
) -> dd.DataFrame:
    """The featurizer's columns added to every partition of ``ddf`` (lazily), as
    ``featurize_dataframe`` adds them to a pandas dataframe.

    Feature columns are float64; with ``return_errors`` a ``"<Featurizer> Exceptions"``
    column holds each row's error (NaN when none).
    """
    import pandas as pd

    _check_dask_frame(ddf, "featurize_dask", "featurizer.featurize_dataframe(df, col_id)")
    if col_id not in ddf.columns:
        raise StreamError(f"featurize_dask: no column {col_id!r}; columns: {list(ddf.columns)}")
    labels = featurizer.feature_labels()  # loads the models here: bad names fail before any task
    meta = ddf._meta.copy()
    for label in labels:
        meta[label] = pd.Series([], dtype=np.float64)
    if return_errors:
        meta[f"{type(featurizer).__name__} Exceptions"] = pd.Series([], dtype=object)
    return ddf.map_partitions(
        featurize_partition, featurizer, col_id, ignore_errors=ignore_errors, return_errors=return_errors,
        threads=threads, meta=meta,
    )  # fmt: skip

"""The ``cgcnn-ase`` command line: a thin click layer over the library.

Exit codes:
    0  every input was predicted
    1  some inputs could not be predicted (one ``error:`` line each on stderr); the
       others were still written
    2  usage error (bad option, missing argument)
    3  the model could not be loaded
    4  unexpected internal error (run again with ``--traceback`` and report it)
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any

import click

from cgcnn_ase.errors import CGCNNError, CheckpointError, UnknownModelError

EXIT_OK, EXIT_BAD_INPUT, EXIT_USAGE, EXIT_MODEL, EXIT_INTERNAL = 0, 1, 2, 3, 4


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _echo_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Print a warning as one line on stderr (no source line, no traceback)."""
    click.echo(f"warning: {message}", err=True)


def _guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one-line messages and exit codes (``--traceback`` shows more)."""

    @wraps(func)
    def wrapper(*args: Any, traceback_: bool = False, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.showwarning = _echo_warning
                return func(*args, **kwargs)
        except (CheckpointError, UnknownModelError) as exc:
            if traceback_:
                traceback.print_exc()
            _fail(str(exc), EXIT_MODEL)
        except CGCNNError as exc:
            if traceback_:
                traceback.print_exc()
            _fail(str(exc), EXIT_BAD_INPUT)
        except (click.ClickException, click.exceptions.Exit, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - last resort: never a bare traceback
            if traceback_:
                traceback.print_exc()
            _fail(f"internal error ({type(exc).__name__}: {exc}); rerun with --traceback and report it", EXIT_INTERNAL)

    return click.option("--traceback", "traceback_", is_flag=True, help="Show the full traceback on errors.")(wrapper)


def load_predictor(model: str, *, atom_init: str | None = None, trusted: bool = False, device: str | None = None):
    """A predictor for a model name (shipped models) or a path (model folder or .pth.tar)."""
    from cgcnn_ase.predictor import CGCNNPredictor

    if Path(model).exists():
        return CGCNNPredictor.from_checkpoint(model, atom_init=atom_init, trusted=trusted, device=device)
    if any(sep in model for sep in ("/", "\\")) or model.endswith((".tar", ".pth", ".pt", ".json")):
        raise CheckpointError(f"{model}: no such model folder or checkpoint file")
    if atom_init is not None:
        raise click.UsageError("--atom-init applies to original .pth.tar checkpoints only")
    return CGCNNPredictor.from_pretrained(model, device=device)


def _write_table(rows: list[dict[str, Any]], columns: Sequence[str], fmt: str, output: str | None, meta: dict) -> None:
    """Write result rows as csv, json or an aligned text table, to a file or stdout."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(columns))
    if fmt == "table":
        df = df.drop(columns="error") if df["error"].isna().all() else df.fillna({"error": ""})
    if fmt == "csv":
        text = df.to_csv(index=False, float_format="%.6g")
    elif fmt == "json":
        text = json.dumps({**meta, "results": json.loads(df.to_json(orient="records", double_precision=10))}, indent=2) + "\n"
    else:
        text = df.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}") + "\n"
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cgcnn-ase")
def main() -> None:
    """Predict crystal properties with CGCNN models (Xie & Grossman, PRL 2018)."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--model", "-m", "models", multiple=True, required=True, help="Shipped model name or path to a model folder / .pth.tar file. Repeat for several.")
@click.option("--atom-init", type=click.Path(exists=True, dir_okay=False), help="Element table (atom_init.json) for an original .pth.tar checkpoint.")
@click.option("--trust", is_flag=True, help="Allow unpickling a legacy checkpoint that the safe loader refuses (can run code).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "table"]), default="csv", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="Write here instead of stdout.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@_guarded
def predict(files: tuple[str, ...], models: tuple[str, ...], atom_init: str | None, trust: bool, fmt: str,
            output: str | None, batch_size: int, device: str | None) -> None:  # fmt: skip
    """Predict properties of the crystals in FILES (CIF, POSCAR, extxyz, ...).

    Writes one row per structure, in input order; the header names each property with
    its units. Bad files get one 'error:' line each on stderr and an empty value; the
    others are still predicted, and the exit code is then 1.
    """
    results = []
    for name in models:
        predictor = load_predictor(name, atom_init=atom_init, trusted=trust, device=device)
        results.append(predictor.predict(list(files), batch_size=batch_size, errors="collect", progress=None))
    ids = results[0].ids
    headers = [f"{r.property} ({r.units})" for r in results]
    if len(set(headers)) < len(headers):  # the same property from several models: name the model
        headers = [f"{name}: {header}" for name, header in zip(models, headers)]
    columns = ["id", *headers, "error"]
    rows = []
    failed = 0
    for k, label in enumerate(ids):
        messages = sorted({r.errors[k] for r in results if r.errors[k]})
        failed += bool(messages)
        row = {"id": label, "error": "; ".join(messages) or None}
        row.update({h: (None if r.errors[k] else r.values[k]) for h, r in zip(headers, results)})
        rows.append(row)
        for message in messages:
            click.echo(f"error: {message}", err=True)
    meta = {"models": list(models), "units": {r.property: r.units for r in results}}
    _write_table(rows, columns, fmt, output, meta)
    if failed:
        click.echo(f"{failed} of {len(ids)} structures could not be predicted", err=True)
        sys.exit(EXIT_BAD_INPUT)

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

import contextlib
import errno
import json
import math
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import wraps
from pathlib import Path
from typing import Any

import click
import numpy as np

from cgcnn_ase.errors import (
    UNSEEN_HINT,
    CGCNNError,
    CheckpointError,
    ConfigError,
    DeviceError,
    MissingDependencyError,
    OutOfDomainWarning,
    SiteAnalysisError,
    StreamError,
    TerminatedError,
    UnfinishedRunError,
    UnknownModelError,
    UnseenElementWarning,
)
from cgcnn_ase.progress import is_terminal
from cgcnn_ase.warning_blocks import catch_warnings

EXIT_OK, EXIT_BAD_INPUT, EXIT_USAGE, EXIT_MODEL, EXIT_INTERNAL = 0, 1, 2, 3, 4
#: train: the session stopped at its time_limit, the run is unfinished (sysexits' EX_TEMPFAIL: run it again).
EXIT_UNFINISHED = 75
#: Ctrl-C (SIGINT): 128 + 2, as shells report a process ended by it.
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM
#: The reader of stdout went away (``| head``): 128 + SIGPIPE, as shells report a process ended by it; no message.
EXIT_BROKEN_PIPE = 141
#: Writing failed for want of space or a device error (sysexits' EX_IOERR): not a usage error.
EXIT_IO = 74
_IO_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG}
#: ``predict --chunk-size`` defaults: structures per chunk with one ``--model`` or on a CPU, and with several models
#: or none (the default command) on a GPU, where each model starts its graph workers once per chunk (on a CPU one
#: pool serves every chunk and the size matters little, measured in docs/scale.md, while an interrupted run loses
#: the chunk in progress: 8192 structures were minutes of the default command's work, round 21a).
MODEL_CHUNK, MODELS_CHUNK = 1024, 8192


def _default_chunk(n_models: int, device: str | None) -> int:
    """The ``--chunk-size`` default for ``n_models`` models (0: the default command's) on ``device``."""
    from cgcnn_ase.models.registry import resolve_device

    return MODELS_CHUNK if n_models != 1 and resolve_device(device).type != "cpu" else MODEL_CHUNK
NO_STRUCTURES = "warning: the inputs held no structures (an empty folder, table or database?)"
#: Where ``sites`` names the elements a model never saw (its tables have no unseen_elements column).
SITES_UNSEEN_PLACE = "the unseen column of sites.csv and by_element.csv marks their sites"


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Probability(click.FloatRange):
    """A float range that also refuses NaN (click's range lets it through: every comparison with NaN is false)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number in the range {self._describe_range()}.", param, ctx)
        return number


#: Output names pandas would compress by: featurize writes them compressed, predict (chunk by chunk) refuses them.
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zip")


class _ElementTable(click.Path):
    """``--atom-init``: an existing atom_init.json, or ``generated`` (this project's table), as the Python API's
    ``atom_init=`` takes them (round 31a: the message naming 'generated' got "File 'generated' does not exist")."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value == "generated":
            return value
        return super().convert(value, param, ctx)


class _WarningPrinter:
    """Warnings as one line each on stderr (no source line, no traceback), each text once: several
    models warn alike about one structure (a sparse graph, close atoms). Unseen-element summaries are
    held until :meth:`close` and merged: the models that say the same (the default properties' seven
    about one argon crystal) share one line, and a streaming run's repeats for later chunks are
    counted, not shown."""

    #: Texts remembered for the check against repeats (beyond it, repeats are printed again).
    MAX_REMEMBERED = 100_000

    def __init__(self, unseen_place: str = "the unseen_elements column lists them per structure") -> None:
        self.unseen_place = unseen_place  # where the command's output names the unseen elements
        self.unseen: dict[str, int] = {}  # "model 'NAME'" -> unseen-element warnings so far
        self.totals: dict[str, list[int]] = {}  # "model 'NAME'" -> [structures holding them, predicted], summed
        self.first_unseen: dict[str, list[str]] = {}  # the first summary's text after the model -> models
        self.far: dict[str, list[int]] = {}  # "model 'NAME'" -> [out-of-domain warnings, structures they count]
        self.shown: set[str] = set()

    def __call__(self, message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        text = str(message)
        if issubclass(category, UnseenElementWarning):
            model, rest = text.split(":", 1) if ":" in text else ("", text)
            self.unseen[model] = self.unseen.get(model, 0) + 1
            counted = re.search(r"(\d+) of (\d+) predicted structure", rest)
            if counted:  # each chunk of a stream warns about its own structures: the run's totals are their sums
                total = self.totals.setdefault(model, [0, 0])
                total[0], total[1] = total[0] + int(counted[1]), total[1] + int(counted[2])
            if self.unseen[model] == 1:
                rest = rest.replace(UNSEEN_HINT, self.unseen_place)
                self.first_unseen.setdefault(rest, []).append(model.removeprefix("model ").strip("'"))
            return
        counted = re.search(r"(\d+) (?:of \d+|more) predicted structure", text)  # a chunk's, or a run's sum
        if issubclass(category, OutOfDomainWarning) and counted:  # one per model and chunk (round 24): the first,
            model = text.split(":", 1)[0].removeprefix("model ").strip("'")  # then one sum
            far = self.far.setdefault(model, [0, 0])
            far[0], far[1] = far[0] + 1, far[1] + int(counted[1])
            if len(self.far) == 1 and far[0] == 1:
                click.echo(f"warning: {text}", err=True)
            return
        if text in self.shown:
            return
        if len(self.shown) < self.MAX_REMEMBERED:
            self.shown.add(text)
        click.echo(f"warning: {text}", err=True)

    def close(self) -> None:
        for rest, models in self.first_unseen.items():
            if len(models) > 1:
                rest = rest.replace("in its training data", "in their training data")
            click.echo(f"warning: {'models' if len(models) > 1 else 'model'} {', '.join(models)}:{rest}", err=True)
        alike: dict[tuple[int, int], list[str]] = {}  # models with the same counts share one line
        for model, count in self.unseen.items():
            if count > 1:
                alike.setdefault((self.totals.get(model, (0, 0))[0], count), []).append(model)
        for (hit, count), names in alike.items():
            who = names[0] if len(names) == 1 else "models " + ", ".join(n.removeprefix("model ").strip("'") for n in names)
            # no "of N predicted": chunks without such elements do not warn, so N would count only those that did
            # (round 28: "18 of 32" for 50 predicted)
            overall = f"in all, {hit} predicted structure(s) hold elements {'it' if len(names) == 1 else 'they'} never saw; " if hit else ""
            click.echo(f"warning: {who}: {overall}{count - 1} later warning(s) {'each ' if len(names) > 1 else ''}about "
                       "them (from later chunks, or from ensemble members run one by one) are not shown; those "
                       "predictions are extrapolations too", err=True)  # fmt: skip
        later = sum(count for count, _ in self.far.values()) - 1
        if later > 0:
            hits = ", ".join(f"{model} {hit}" for model, (_, hit) in self.far.items())
            click.echo(f"warning: in all, structures farther from a model's training data than every validation crystal "
                       f"(domain percentile 100), per model: {hits} (the warning above was the first of "
                       f"{later + 1}, one per model and chunk)", err=True)  # fmt: skip
        self.first_unseen, self.unseen, self.totals, self.far = {}, {}, {}, {}


def _resume_hint(command: str, options: dict[str, Any]) -> str:
    """For a stopped ``predict`` writing csv or parquet to ``-o``: that the rows so far are kept and how to go on."""
    output = str(options.get("output") or "")
    resumable = (command == "predict" and output and not options.get("per_atom")
                 and options.get("fmt") not in ("json", "table") and not output.lower().endswith(".json"))  # fmt: skip
    if not resumable:
        return ""
    # nothing is imported here: Ctrl-C may come while torch or pandas is half imported (round 24: importing the
    # streaming module then crashed, even with a segfault); a run that has not imported it wrote nothing yet
    streaming = sys.modules.get("cgcnn_ase.inference.streaming")
    writers = sys.modules.get("cgcnn_ase.inference.writers")
    started = False
    if all(hasattr(m, n) for m, n in ((streaming, "RUN_FINISHED"), (streaming, "run_record_path"), (writers, "infer_format"))):
        try:
            path = streaming.run_record_path(output, writers.infer_format(output, options.get("fmt")))
            started = json.loads(path.read_text()).get(streaming.RUN_FINISHED) is False  # this run (or an unfinished earlier one) wrote it
        except (OSError, ValueError, AttributeError, CGCNNError):
            started = False
    folder = Path(output)
    no_parts = folder.is_dir() and not any(folder.glob("*.parquet"))  # a Parquet folder made, no part written yet
    if started:
        return ("; no row was written yet: run the same command with --resume to continue" if no_parts
                else "; the rows written so far are kept: run the same command with --resume to continue")  # fmt: skip
    if folder.is_file() or (folder.is_dir() and not no_parts):  # stopped before writing: an earlier run's output stands
        # (a device such as /dev/full or a FIFO holds no earlier rows: round 31b)
        return (f"; {output} was not changed: it holds an earlier run's rows, none of this run's (run the command again, "
                "without --resume, to replace them)")  # fmt: skip
    return "; no row was written"


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a batch system's time limit, ``kill``) stops the command as Ctrl-C does, so that worker pools are
    stopped, the rows written are kept and the resume hint is printed (round 29a: the workers were left running and
    printed tracebacks): it raises :class:`~cgcnn_ase.errors.TerminatedError`, a ``KeyboardInterrupt``. Only in the
    main thread, over the default handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise TerminatedError

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one-line messages and exit codes (``--traceback`` shows more)."""

    @wraps(func)
    def wrapper(*args: Any, traceback_: bool = False, **kwargs: Any) -> Any:
        printer = _WarningPrinter(*([SITES_UNSEEN_PLACE] if func.__name__ == "sites" else []))
        try:
            with _terminate_as_interrupt(), catch_warnings():
                warnings.simplefilter("always")  # every file's warning, not the first of each kind
                for option in sys.warnoptions:  # PYTHONWARNINGS or -W on top (round 29a: they were overridden)
                    with contextlib.suppress(Exception):  # as Python treats a malformed option: not applied
                        warnings._setoption(option)  # the standard library's own parser of -W options
                warnings.showwarning = printer
                try:
                    return func(*args, **kwargs)
                finally:
                    printer.close()
        except (CheckpointError, UnknownModelError) as exc:
            if traceback_:
                traceback.print_exc()
            _fail(str(exc), EXIT_MODEL)
        except (DeviceError, ConfigError, SiteAnalysisError, MissingDependencyError) as exc:  # usage errors: --device
            # naming no device here, an optional package not installed, a bad --set or config, an output folder
            # holding another model, a model that cannot do what was asked
            if traceback_:
                traceback.print_exc()
            _fail(str(exc), EXIT_USAGE)
        except CGCNNError as exc:
            if traceback_:
                traceback.print_exc()
            _fail(str(exc), EXIT_BAD_INPUT)
        except KeyboardInterrupt as exc:  # Ctrl-C: 130 (128 + SIGINT), as shells report it, not 1 (bad inputs)
            terminated = isinstance(exc, TerminatedError)  # SIGTERM: 143
            what = "terminated (SIGTERM)" if terminated else "interrupted"
            click.echo(f"\n{what}{_resume_hint(func.__name__, kwargs)}", err=True)
            sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
        except Warning as exc:  # a warning made an error by PYTHONWARNINGS or -W (round 30a: "internal error", exit 4)
            if traceback_:
                traceback.print_exc()
            _fail(f"{exc} ({type(exc).__name__}, a warning turned into an error by PYTHONWARNINGS or -W)", EXIT_BAD_INPUT)
        except (click.ClickException, click.exceptions.Exit, SystemExit):
            raise
        except BrokenPipeError:  # the reader of stdout left (| head): stop quietly, as a process ended by SIGPIPE
            try:  # nothing more to flush into the closed pipe at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):  # stdout without a file descriptor (io.UnsupportedOperation is a ValueError)
                pass
            sys.exit(EXIT_BROKEN_PIPE)
        except OSError as exc:
            if traceback_:
                traceback.print_exc()
            where = f"{exc.filename}: " if exc.filename else ""
            if exc.errno in _IO_ERRNOS or any(text in str(exc) for text in ("No space left", "Disk quota")):
                output = kwargs.get("output") or kwargs.get("out_dir")
                where = where or (f"writing {output}: " if output else "")
                _fail(f"{where}{exc.strerror or exc}{_resume_hint(func.__name__, kwargs)}", EXIT_IO)
            output = kwargs.get("output")
            if output and exc.filename and os.path.abspath(str(exc.filename)) == os.path.abspath(str(output)):
                where = f"cannot write {exc.filename}: "  # as the streamed formats say it
            _fail(f"{where}{exc.strerror or exc}", EXIT_USAGE)  # a path of the command line that cannot be used
        except Exception as exc:  # noqa: BLE001 - last resort: never a bare traceback
            if traceback_:
                traceback.print_exc()
            _fail(f"internal error ({type(exc).__name__}: {exc}); rerun with --traceback and report it", EXIT_INTERNAL)

    return click.option("--traceback", "traceback_", is_flag=True, help="Show the full traceback on errors.")(wrapper)


def load_predictor(model: str, *, atom_init: str | None = None, trusted: bool = False, device: str | None = None,
                   members: int | None = None):  # fmt: skip
    """A predictor for a model name (shipped models) or a path (model folder or .pth.tar); ``atom_init``
    is used for a checkpoint file only (shipped models and model folders carry their element tables);
    ``members``: the first so many networks of an ensemble (``None``: all; a single network runs whole)."""
    from cgcnn_ase.inference.predictor import CGCNNPredictor

    predictor = CGCNNPredictor.load(model, atom_init=atom_init if Path(model).is_file() else None, trusted=trusted,
                                    device=device)  # fmt: skip
    if members is not None and predictor.is_ensemble and members > predictor.model.n_members:
        raise click.UsageError(f"--members {members}: {predictor.model.spec.name} is an ensemble of "
                               f"{predictor.model.n_members} members")  # fmt: skip
    if members is None or not predictor.is_ensemble or members == predictor.model.n_members:
        return predictor
    return CGCNNPredictor.load(model, atom_init=atom_init if Path(model).is_file() else None, trusted=trusted,
                               device=device, members=members)  # fmt: skip


def _check_coverage(predictors: Sequence[Any], coverage: float | None) -> None:
    """A usage error when a regression model cannot give ``--coverage`` intervals (a single network,
    or beyond the levels a small validation split calibrated)."""
    from cgcnn_ase.inference.predictor import check_interval_models

    try:
        check_interval_models(predictors, coverage)
    except ValueError as exc:
        raise click.UsageError(f"--coverage {coverage}: {exc}") from None


def _check_atom_init(models: Sequence[str], atom_init: str | None) -> None:
    """A usage error when ``--atom-init`` is given but no model is a checkpoint file it could apply to."""
    if atom_init is not None and not any(Path(m).is_file() for m in models):
        from cgcnn_ase.models.folder import checkpoint_hint

        hints = "".join(checkpoint_hint(m, subject=m) for m in models if Path(m).is_dir())
        raise click.UsageError(f"--atom-init applies to original .pth.tar checkpoints only (none among the models){hints}")


def _write_table(rows: list[dict[str, Any]], columns: Sequence[str], fmt: str, output: str | None, meta: dict) -> None:
    """Write result rows as csv, json or an aligned text table, to a file or stdout."""
    import pandas as pd

    from cgcnn_ase.inference.results import TEXT_COLUMNS

    df = pd.DataFrame(rows, columns=list(columns))
    for name in ("atom", "n_sparse"):  # counts stay integers beside the empty cells of failed structures
        if name in df.columns:
            df[name] = df[name].astype("Int64")
    for name in TEXT_COLUMNS if fmt == "table" else ():
        if name in df.columns:
            df = df.drop(columns=name) if df[name].isna().all() else df.fillna({name: ""})
    if fmt == "csv":
        text = df.to_csv(index=False)  # full float precision
    elif fmt == "json":
        from cgcnn_ase.inference.writers import column_units
        from cgcnn_ase.models.cards import json_safe

        # Python floats keep every significant digit (pandas' to_json rounds to 15 decimal places: 1e-16 -> 0)
        records = [{k: None if v is pd.NA else v for k, v in row.items()} for row in df.to_dict(orient="records")]
        meta = {**meta, "units": column_units(list(df.columns))}  # by column, as the Parquet metadata gives them
        text = json.dumps({**meta, "results": json_safe(records)}, indent=2) + "\n"
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
    # The command, unlike the library, owns its process: silence spglib's C-level stderr notes on
    # routine symmetry fallbacks (site labels), unless the user set the variable themselves.
    os.environ.setdefault("SPGLIB_WARNING", "OFF")


def _on_terminal() -> bool:
    """Progress bars for a person watching: only when stderr is a terminal (not in a log or a pipe, nor closed)."""
    return is_terminal(sys.stderr)


def _require_stdout(instead: str = "give -o FILE for the results") -> None:
    """A usage error when the process started with stdout closed (a daemon, cron, ``>&-``): ``sys.stdout`` is then
    ``None`` and click.echo drops the text without a word (round 29a: an internal error; 31: ``models`` exited 0)."""
    if sys.stdout is None:
        raise click.UsageError(f"standard output is closed: {instead}")


def _with_stdin(inputs: Sequence[str]) -> tuple[Any, ...]:
    """INPUTS with ``-`` replaced by the text piped to stdin (CIF, pymatgen JSON, POSCAR or extxyz), as the item
    ``stdin`` (``stdin@k`` for each of several structures, as in a file)."""
    if "-" not in inputs:
        return tuple(inputs)
    if sys.stdin is None:  # started with stdin closed (round 29a: an internal error)
        raise click.UsageError("'-' reads a structure piped to stdin, and stdin is closed")
    stdin = click.get_text_stream("stdin")
    if is_terminal(stdin):
        raise click.UsageError("'-' reads a structure (CIF, POSCAR, extxyz or pymatgen JSON text) piped to stdin, e.g. "
                               "`cat x.cif | cgcnn-ase predict -`; nothing is piped in")  # fmt: skip
    if inputs.count("-") > 1:
        raise click.UsageError("'-' (stdin) can be given once")
    raw = click.get_binary_stream("stdin").read()
    if raw[:2] == b"\x1f\x8b":  # gzip-compressed (zcat's work, done here as for .gz files)
        import gzip

        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise click.UsageError(f"stdin ('-') holds broken gzip data ({exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        if b"\x00" in raw:
            raise click.UsageError("stdin ('-') holds binary data, not structure text (CIF, POSCAR, extxyz or "
                                   "pymatgen JSON; gzip-compressed is fine)") from None  # fmt: skip
        text = raw.decode("latin-1")  # an old CIF's degree signs or accented names
    if not text.strip():
        raise click.UsageError("stdin ('-') holds no structure (it is empty): give CIF, POSCAR, extxyz or pymatgen "
                               "JSON text")  # fmt: skip
    if len(text.strip().splitlines()) < 2 and not text.lstrip().startswith(("{", "[")):  # one line: no structure text
        raise click.UsageError(f"stdin ('-') holds one line ({text.strip()[:60]!r}), not structure text: give CIF, "
                               "POSCAR, extxyz or pymatgen JSON text, or name a file as an argument")  # fmt: skip
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) <= 100_000 and all(os.path.isfile(line) for line in lines):  # `ls *.cif | cgcnn-ase predict -`
        raise click.UsageError(f"stdin ('-') holds {len(lines)} file names ({lines[0]}, ...), not structure text: name "
                               "the files as arguments, e.g. `cgcnn-ase predict $(cat list.txt)`, `xargs cgcnn-ase "
                               "predict < list.txt`, or a folder or glob pattern ('*.cif')")  # fmt: skip
    header = lines[0].lower()
    if ("," in header or "\t" in header) and not header.startswith(("data_", "#", "_")) and re.search(
            r"(^|[,\t])\s*\"?(cif|structure|id|material_id)\"?\s*([,\t]|$)", header):  # round 32c
        raise click.UsageError(f"stdin ('-') holds a table (its first line: {lines[0][:60]!r}), not structure text: "
                               "give the table as a file, `cgcnn-ase predict TABLE.csv --column cif`")  # fmt: skip
    # the reader tells CIF, POSCAR, extxyz and JSON text apart; several structures are stdin@0, stdin@1, ...
    return tuple(("stdin", text) if item == "-" else item for item in inputs)


def check_output(output: str, inputs: Sequence[str], fmt: str) -> None:
    """A usage error, before anything is read or written, when ``-o`` names one of the inputs (a file
    given or matched by a pattern, or one inside a parquet output folder: writing would destroy it)
    or lies below a file; also when it names an existing structure file (a CIF, a POSCAR, ...) of a folder
    input. Other members of a folder input (a table or json file, e.g. an earlier run's results) are left
    out of the run's inputs and replaced."""
    import glob

    from cgcnn_ase.io.inputs import is_structure_name

    target = os.path.realpath(output)
    name = os.path.basename(target)
    member = os.path.isfile(target) and is_structure_name(name) and not name.lower().endswith(".json")
    for item in inputs:
        if member and os.path.isdir(item) and os.path.realpath(item) == os.path.dirname(target):
            raise click.BadParameter(f"{output} is a structure file of the input folder {item}: the results would "
                                     "replace it; write them to another file", param_hint="-o/--output")  # fmt: skip
        matches = glob.glob(item, recursive=True) if not os.path.exists(item) and glob.has_magic(item) else [item]
        for path in matches:
            real = os.path.realpath(path)
            inside = fmt == "parquet" and (real == target or real.startswith(target + os.sep))  # in the part folder
            if (os.path.isfile(path) and real == target) or (os.path.exists(path) and inside):
                raise click.BadParameter(f"{output} is also an input ({path}); write the results to another "
                                         "file", param_hint="-o/--output")  # fmt: skip
    parent = Path(target).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise click.BadParameter(f"cannot write {output}: {parent} is a file, not a folder", param_hint="-o/--output")
    if not os.access(parent, os.W_OK):
        raise click.BadParameter(f"cannot write {output}: {parent} is not writable", param_hint="-o/--output")


def _model_names(models: Sequence[str], use_all: bool) -> list[str]:
    """The models asked for, each once: a name, an alias and a folder path that stand for the same model
    count as one (the first spelling is kept; a note names the others)."""
    from cgcnn_ase.errors import CGCNNError
    from cgcnn_ase.models.registry import list_models, model_folder

    names = list(models)
    if use_all:
        names += [info.aliases[0] if info.aliases else info.name for info in list_models()]
        if not names:
            raise click.UsageError("--all: no models are shipped with this installation; give --model PATH")
    first: dict[str, str] = {}  # what a name stands for -> the first name given for it
    for name in names:
        try:
            key = str(model_folder(name).resolve())
        except CGCNNError:  # a checkpoint file, or a name the loader will report on
            key = str(Path(name).resolve()) if Path(name).exists() else name
        if key in first and first[key] != name:
            click.echo(f"note: {name} is the model {first[key]} already names; it is predicted once", err=True)
        first.setdefault(key, name)
    return list(first.values())


@main.command(short_help="Predict properties of crystal files, folders or tables.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--model", "-m", "models", multiple=True, help="Shipped model name or path to a model folder / .pth.tar file. Repeat for several.")
@click.option("--all", "use_all", is_flag=True, help="Every shipped model.")
@click.option("--atom-init", type=_ElementTable(exists=True, dir_okay=False), help="Element table (atom_init.json) for an original .pth.tar checkpoint, or 'generated' for this project's table (which changes the authors' predictions: docs/elements.md).")
@click.option("--trust", is_flag=True, help="Allow unpickling a legacy checkpoint that the safe loader refuses (can run code).")
@click.option("--per-atom", is_flag=True, help="Long format: one row per atom with its contribution (mean over atoms = prediction; contributions are not clipped: an atom's share of a band gap may be negative).")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "json", "table"]), default=None, help="Output format [default: a table on a terminal, else csv; json when -o ends in .json, parquet when it ends in .parquet or .pq]. csv and parquet are written chunk by chunk.")
@click.option("--log10", "log10", is_flag=True, help="Without --model: also give the moduli's log10(GPa) columns.")
@click.option("--domain", "domain", is_flag=True, help="Without --model: also give each property's domain percentile (100: farther from the training data than every validation crystal; --model always gives it, and the table always shows their median as dom%).")
@click.option("--uncertainty", "uncertainty", is_flag=True, help="Without --model: also give each property's <property>_uncertainty, a per-crystal estimate of its error (a standard deviation, in its units; it ranks errors better than the std, docs/uncertainty.md); --model always gives it for the calibrated ensembles.")
@click.option("--metal-threshold", type=_Probability(0, 1), default=0.5, show_default=True, help="Without --model: P(metal) above which the band gap is 0.")
@click.option("--coverage", type=_Probability(0.5, 0.99), default=None, help="Add <property>_lower/_upper: a prediction interval holding the true value with this probability (e.g. 0.9) for crystals like the test split's, for the calibrated ensembles. The gated band gap's interval is [0, 0] for a crystal called a metal and the non-metals' interval otherwise: it holds for crystals the classifier gets right (docs/uncertainty.md).")
@click.option("--output", "-o", type=click.Path(path_type=str), help="Write here instead of stdout ('-': stdout; for parquet: a folder of part files); missing folders on the way are created.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run: skip the ids already in -o and append (csv or parquet).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None, help="Structures read, predicted and written together (memory holds one chunk; an interrupted run loses the chunk in progress) [default: 1024; 8192 with several models or none on a GPU].")
@click.option("--column", default="cif", show_default=True, help="Table inputs (.csv, .tsv, .parquet): column holding CIF, POSCAR or extxyz text, pymatgen structure JSON or file paths.")
@click.option("--id-column", default=None, help="Table inputs: column of unique ids; a JSON list of entries (a structure dict under 'structure', as Materials Project downloads): the key of each entry's id, e.g. material_id; an ASE database: the key of each row's id; frame files (extxyz, traj): the atoms.info key [default: FILE@ROW, FILE@id=N, FILE@FRAME].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Crystals per forward pass [default: 64 on a CPU, 1024 on a GPU].")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="CPU threads for torch (1 is fastest for small crystals; run several processes to use more cores).")
@click.option("--workers", default="auto", show_default=True, help="Worker processes: on a CPU they read structures, build graphs and run the networks; on a GPU they read and build graphs while the main process runs the networks. A number, or auto (the CPU count, at most 8).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the networks: some seconds once, then about 1.3-1.5x faster on a CPU (pays off from a few tens of thousands of structures).")
@click.option("--members", type=click.IntRange(min=1), default=None, help="Run only the first N networks of each ensemble (1: about 3x faster on a CPU; fewer members give a rougher std, and no _uncertainty or intervals) [default: all].")
@_guarded
def predict(inputs: tuple[str, ...], models: tuple[str, ...], use_all: bool, atom_init: str | None, trust: bool,
            per_atom: bool, fmt: str | None, log10: bool, domain: bool, uncertainty: bool, metal_threshold: float,
            coverage: float | None,
            output: str | None, resume: bool,
            chunk_size: int | None, column: str, id_column: str | None, batch_size: int, device: str | None,
            threads: int, workers: str, compile_: bool, members: int | None) -> None:  # fmt: skip
    """Predict properties of the crystals in INPUTS: files (CIF, POSCAR, extxyz, ASE .db, ...),
    directories of them (documents, images and the original CGCNN layout's id_prop.csv and
    atom_init.json are left out, as from a pattern whose last part is '*'), glob patterns, or tables (.csv,
    .tsv, .parquet) with a --column of structures; '-' reads the text piped to stdin (CIF, POSCAR,
    extxyz or pymatgen JSON; id 'stdin', or 'stdin@0', 'stdin@1', ... for several structures).
    -o must not name an input.

    Without --model: formation energy (eV/atom), band gap (eV; 0 for predicted metals),
    metal probability, Fermi energy (eV), bulk and shear moduli (GPa) and Poisson ratio,
    each with its ensemble standard deviation. With --model NAME (repeatable) or --all:
    those models' own outputs and units (band gaps clipped at 0 and Poisson ratios to [-1, 0.5],
    as their intervals are; the band gap is not gated).

    Writes one row per structure (per atom with --per-atom), in input order; the header
    names each property with its units. An unseen_elements column names any element a
    model never saw in training (those predictions extrapolate). Bad files get one 'error:'
    line each on stderr and an empty value; the others are still predicted, and the exit
    code is then 1 (also when the inputs held no structure at all).
    csv and parquet output is written chunk by chunk (memory stays bounded), and --resume
    continues an interrupted run without predicting its finished ids again.
    """
    import torch

    from cgcnn_ase.inference.streaming import cif_reader_for, infer_format
    from cgcnn_ase.io.inputs import iter_inputs

    n_workers = _workers(workers)
    if output == "-":  # the Unix convention: standard output
        output = None
    if output is None:
        _require_stdout()
    if fmt is None and output is None:
        fmt = "table" if is_terminal(sys.stdout) else "csv"  # a person reads a table; a pipe gets csv
    if output is not None and output.lower().endswith(COMPRESSED_SUFFIXES):  # round 32c: plain text in a .gz
        raise click.BadParameter(f"{output}: output is written uncompressed, chunk by chunk; name it .csv (or .json) "
                                 "and compress it afterwards, or write .parquet (compressed itself)",
                                 param_hint="-o/--output")  # fmt: skip
    if fmt is None and output is not None and output.lower().endswith(".json"):
        fmt = "json"
    if fmt is None:
        try:
            fmt = infer_format(output)
        except StreamError:
            raise click.BadParameter(f"{output}: its suffix names a format that is not written; name it .csv, .json "
                                     "or .parquet, or give --format csv", param_hint="-o/--output") from None  # fmt: skip
    if output:
        check_output(output, inputs, fmt)
    inputs = _with_stdin(inputs)
    if fmt == "parquet" and not output:
        raise click.UsageError("parquet output needs -o FOLDER")
    if resume and (not output or per_atom or fmt not in ("csv", "parquet")):
        raise click.UsageError("--resume needs -o with csv or parquet output (and no --per-atom)")
    if per_atom and fmt == "parquet":
        raise click.UsageError("--per-atom writes csv, json or table output")
    if output and fmt != "parquet" and Path(output).is_dir():
        raise click.UsageError(f"{output} is a directory; give a file name for {fmt} output")
    _check_atom_init(models, atom_init)
    torch.set_num_threads(threads)  # this process is ours: the CLI may set torch's global thread count
    if not models and not use_all:  # the headline use: the general-purpose properties in user units
        _predict_properties(inputs, fmt=fmt, output=output, per_atom=per_atom, resume=resume, log10=log10, domain=domain,
                            uncertainty=uncertainty, metal_threshold=metal_threshold, column=column, id_column=id_column,
                            batch_size=batch_size, device=device, workers=n_workers, coverage=coverage,
                            compile_=compile_, chunk_size=chunk_size or _default_chunk(0, device),
                            members=members)  # fmt: skip
        return
    ignored = [flag for flag, given in (("--log10", log10), ("--domain", domain), ("--uncertainty", uncertainty),
                                        ("--metal-threshold", metal_threshold != 0.5)) if given]  # fmt: skip
    if ignored:  # options of the general-purpose table: say so rather than let them look applied
        click.echo(f"note: {', '.join(ignored)} {'applies' if len(ignored) == 1 else 'apply'} only without --model/--all "
                   f"(the general-purpose properties) and {'is' if len(ignored) == 1 else 'are'} ignored here", err=True)  # fmt: skip
    names = _model_names(models, use_all)
    predictors = [load_predictor(name, atom_init=atom_init, trusted=trust, device=device, members=members)
                  for name in names]  # fmt: skip
    # a model named with --model must give the intervals asked for; --all gives them where it can
    named = [p for name, p in zip(names, predictors) if name in models or p.has_intervals]
    _check_coverage(named, coverage)
    without = [name for name, p in zip(names, predictors) if p not in named and p.model.spec.task != "classification"]
    if coverage is not None and without:
        click.echo(f"note: --coverage {coverage}: no intervals from {', '.join(without)} (not calibrated ensembles)", err=True)
    for predictor in predictors:
        predictor.compile = compile_
    if fmt in ("csv", "parquet") and not per_atom:
        chunk_size = chunk_size or _default_chunk(len(predictors), device)
        _predict_streaming(inputs, predictors, names, output, fmt, resume=resume, chunk_size=chunk_size,
                           batch_size=batch_size, column=column, id_column=id_column, workers=n_workers,
                           coverage=coverage)  # fmt: skip
        return
    # json, table and --per-atom need the whole table: every file read once, for all models (where the
    # graphs are built, in the workers if any, except for --per-atom); CIFs as the original code did if
    # any model needs its tie order
    from cgcnn_ase.inference.parallel import shares_graphs

    defer = not per_atom and (len(predictors) == 1 or shares_graphs(predictors))
    items = list(iter_inputs(inputs, column=column, id_column=id_column, cif_reader=cif_reader_for(predictors),
                             exclude=[output] if output else (), defer_files=defer))  # fmt: skip
    meta = {"models": names}
    from cgcnn_ase.inference.properties import warn_ungated_band_gaps

    warn_ungated_band_gaps(predictors, names)  # predict_stream warns so for csv and parquet
    if not per_atom:  # the streaming path's code, on one chunk holding everything
        from cgcnn_ase.inference.streaming import model_columns, predict_items

        result = predict_items(items, predictors, columns=model_columns(predictors, names, coverage),
                               batch_size=batch_size, workers=n_workers, coverage=coverage,
                               progress=None if _on_terminal() else False)  # fmt: skip
        for messages in result.messages:
            for message in messages:
                click.echo(f"error: {message}", err=True)
        _write_table(result.frame.to_dict("records"), list(result.frame.columns), fmt, output, meta)
        if not len(result.frame):
            click.echo(NO_STRUCTURES, err=True)
            sys.exit(EXIT_BAD_INPUT)
        if result.n_failed:
            click.echo(f"{result.n_failed} of {len(result.frame)} structures could not be predicted", err=True)
            sys.exit(EXIT_BAD_INPUT)
        return
    _predict_per_atom(items, predictors, names, fmt=fmt, output=output, meta=meta, batch_size=batch_size,
                      workers=n_workers)  # fmt: skip


def _predict_per_atom(items: list[tuple[str, Any]], predictors: list[Any], names: list[str], *, fmt: str,
                      output: str | None, meta: dict, batch_size: int, workers: int) -> None:  # fmt: skip
    """``predict --per-atom``: one row per atom with each model's contribution (mean over atoms = prediction) and,
    for a model with a domain summary, its crystal's domain percentile on every row (round 23c: a non-perovskite's
    site energies came with nothing to flag them)."""
    from cgcnn_ase.inference.predictor import predict_many
    from cgcnn_ase.inference.results import TEXT_COLUMNS, unseen_cell, unseen_labels

    ids = [label for label, _ in items]
    pooled = [name for name, p in zip(names, predictors) if p.model.spec.readout != "atomwise"]
    if pooled:
        click.echo(f"note: {', '.join(pooled)} {'pools' if len(pooled) == 1 else 'pool'} the mean of the atoms' features: "
                   "the per-atom values are first-order attributions (their mean is the prediction), not energies or "
                   "properties of the atoms; an atomwise model (perovskite_site_energy) gives site energies "
                   "(docs/per_atom.md)", err=True)  # fmt: skip
    records = [item for _, item in items if not isinstance(item, CGCNNError)]
    results = predict_many(predictors, records, batch_size=batch_size, errors="collect", per_atom=True, workers=workers)
    headers = [f"{r.property} ({r.units})" for r in results]
    prefixes = [""] * len(results)
    if len(set(headers)) < len(headers):  # the same property from several models: name the model
        prefixes = [f"{name}: " for name in names]
        headers = [f"{prefix}{header}" for prefix, header in zip(prefixes, headers)]
    domains = {f"{prefix}{r.property}_domain_percentile (percent)": r for prefix, r in zip(prefixes, results)
               if r.domain_percentile is not None}  # fmt: skip
    labels = unseen_labels(predictors)
    rows: list[dict[str, Any]] = []
    failed, k = 0, 0
    for label, item in items:
        if isinstance(item, CGCNNError):
            messages = [str(item)]
        else:
            messages = sorted({r.errors[k] for r in results if r.errors[k]})
        failed += bool(messages)
        for message in messages:
            click.echo(f"error: {message}", err=True)
        error = "; ".join(messages) or None
        if isinstance(item, CGCNNError) or messages:
            rows.append({"id": label, **{h: None for h in [*headers, *domains]}, "unseen_elements": None, "error": error})
        else:
            from ase.data import chemical_symbols

            unseen = unseen_cell(labels, results, k)
            for i, z in enumerate(item.numbers):
                rows.append({"id": label, "atom": i, "element": chemical_symbols[z],
                             **{h: r.per_atom[k][i] for h, r in zip(headers, results)},
                             **{h: r.domain_percentile[k] for h, r in domains.items()}, "unseen_elements": unseen,
                             "error": None})  # fmt: skip
        if not isinstance(item, CGCNNError):
            k += 1
    columns = ["id", "atom", "element", *headers, *domains, *TEXT_COLUMNS]
    _write_table(rows, columns, fmt, output, meta)
    if failed:
        click.echo(f"{failed} of {len(ids)} structures could not be predicted", err=True)
        sys.exit(EXIT_BAD_INPUT)


def _workers(value: str) -> int:
    """``--workers``: a positive number, or ``auto`` (the CPUs this process may run on, at most 8)."""
    if value == "auto":
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, min(8, usable or 1))
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise click.BadParameter(f"must be a positive number or 'auto', got {value!r}", param_hint="--workers")
    return number


def _predict_properties(inputs: Sequence[str], *, fmt: str, output: str | None, per_atom: bool, resume: bool,
                        log10: bool, domain: bool, metal_threshold: float, column: str, id_column: str | None,
                        batch_size: int, device: str | None, workers: int, coverage: float | None = None,
                        uncertainty: bool = False, compile_: bool = False,
                        chunk_size: int = MODELS_CHUNK, members: int | None = None) -> None:  # fmt: skip
    """``predict`` without ``--model``: the shipped general-purpose models, in user units. csv and parquet
    are written chunk by chunk (memory holds one chunk, and ``--resume`` continues a killed run); a table
    or json needs every row first."""
    from contextlib import nullcontext

    from cgcnn_ase.inference.parallel import NetworkPool, shares_graphs
    from cgcnn_ase.inference.properties import GENERAL_MODELS, compact_table, property_columns, std_coverage
    from cgcnn_ase.inference.streaming import cif_reader_for

    if per_atom:
        raise click.UsageError("--per-atom needs --model NAME (the default properties come from several models)")
    domain = domain or fmt == "table"  # a person reading the table sees a crystal far from the training data
    predictors = [load_predictor(name, device=device, members=members) for name in GENERAL_MODELS]
    _check_coverage(predictors, coverage)
    if uncertainty and not any(p.has_uncertainty for p in predictors):  # asked for, and none would come (31c)
        raise click.UsageError(f"--uncertainty with --members {members}: the per-crystal uncertainty is fitted for each "
                               "whole ensemble (leave out --members)")  # fmt: skip
    for predictor in predictors:
        predictor.compile = compile_
    columns = property_columns(predictors, log10=log10, domain=domain, coverage=coverage, uncertainty=uncertainty)
    # one set of worker processes runs all seven models, for every chunk; files are read in it, once
    shared = shares_graphs(predictors)
    with NetworkPool(predictors, workers) if workers > 1 and shared else nullcontext(workers) as pool:
        options = {"batch_size": batch_size, "metal_threshold": metal_threshold, "log10": log10, "domain": domain,
                   "workers": pool, "coverage": coverage, "uncertainty": uncertainty}  # fmt: skip
        reading = {"column": column, "id_column": id_column, "cif_reader": cif_reader_for(predictors),
                   "defer_files": shared}  # fmt: skip
        if fmt in ("csv", "parquet"):
            from cgcnn_ase.inference.streaming import write_chunks

            def rows(chunk: list[tuple[str, Any]], finished: Any) -> Any:
                return _property_rows(chunk, predictors, columns, options, finished)

            settings = {"models": [p.model.spec.name for p in predictors], "metal_threshold": metal_threshold,
                        "coverage": coverage, "log10": log10, "domain": domain, "uncertainty": uncertainty,
                        "members": [p.model.n_members for p in predictors]}  # fmt: skip
            _run_stream(write_chunks, inputs, output or sys.stdout, [c.header for c in columns], rows, fmt=fmt,
                        resume=resume, chunk_size=chunk_size, settings=settings, **reading)  # fmt: skip
            return
        from cgcnn_ase.io.inputs import iter_inputs

        items = iter_inputs(inputs, exclude=[output] if output else (), **reading)
        result = _property_rows(list(items), predictors, columns, {**options, "progress": None if _on_terminal() else False})
    _report_errors(result)
    frame = result.frame
    if fmt == "table":
        import shutil

        width = shutil.get_terminal_size((100, 24)).columns if is_terminal(sys.stdout) else 100
        text = compact_table(frame, columns, width=width, shorten_ids=not output, metal_threshold=metal_threshold,
                             coverage_of_std=std_coverage(predictors))  # fmt: skip
        Path(output).write_text(text) if output else click.echo(text, nl=False)
    else:
        meta = {"models": list(GENERAL_MODELS), "metal_threshold": metal_threshold}
        _write_table(frame.to_dict("records"), list(frame.columns), fmt, output, meta)
    if not len(frame):
        click.echo(NO_STRUCTURES, err=True)
        sys.exit(EXIT_BAD_INPUT)  # nothing predicted: not the 0 of "all predicted"
    if result.n_failed:
        click.echo(f"{result.n_failed} of {len(frame)} structures could not be predicted", err=True)
        sys.exit(EXIT_BAD_INPUT)


def _property_rows(items: Sequence[tuple[str, Any]], predictors: list[Any], columns: Sequence[Any],
                   options: dict[str, Any], finished: Any = None) -> Any:  # fmt: skip
    """The default properties of ``items`` (id, record, reading error or unread file), in input order, as a
    :class:`~cgcnn_ase.inference.streaming.ChunkResult`: a row per structure (ids ``path@i`` for a file of
    several; those in ``finished`` left out), NaN and the message for an unreadable item."""
    from cgcnn_ase.inference.properties import property_frame
    from cgcnn_ase.inference.results import TEXT_COLUMNS
    from cgcnn_ase.inference.streaming import ChunkResult, predicted_rows

    run = {k: options[k] for k in ("batch_size", "workers", "coverage")}
    results, rows = predicted_rows(items, predictors, finished=finished, progress=options.get("progress", False), **run)
    frame, _ = property_frame(predictors, results, **{k: options[k] for k in ("metal_threshold", "log10", "domain",
                                                                             "coverage", "uncertainty")})  # fmt: skip
    readable = [k for k, (_, row) in enumerate(rows) if not isinstance(row, CGCNNError)]
    out = frame.iloc[[row for _, row in rows if not isinstance(row, CGCNNError)]].set_axis(readable)
    out = out.reindex(range(len(rows)))  # NaN rows where the unreadable items go
    out["id"] = [row_id for row_id, _ in rows]
    out["error"] = [str(row) if isinstance(row, CGCNNError) else message for (_, row), message in zip(rows, out["error"])]
    for name in TEXT_COLUMNS:
        out[name] = out[name].astype(object).where(out[name].notna(), None)
    out.attrs = frame.attrs
    return ChunkResult(frame=out, messages=[[message] if message else [] for message in out["error"]])


def _predict_streaming(inputs: Sequence[str], predictors: list[Any], names: list[str], output: str | None, fmt: str,
                       *, resume: bool, chunk_size: int, batch_size: int, column: str, id_column: str | None,
                       workers: int, coverage: float | None = None) -> None:  # fmt: skip
    """``predict --model`` for csv/parquet: rows written chunk by chunk, one 'error:' line per bad item."""
    from cgcnn_ase.inference.streaming import predict_stream

    _run_stream(predict_stream, list(inputs), predictors, output or sys.stdout, fmt=fmt, resume=resume,
                chunk_size=chunk_size, batch_size=batch_size, column=column, id_column=id_column, names=names,
                workers=workers, coverage=coverage)  # fmt: skip


def _report_errors(result: Any) -> None:
    """One 'error:' line on stderr per message of a :class:`ChunkResult`."""
    for messages in result.messages:
        for message in messages:
            click.echo(f"error: {' '.join(message.split())}", err=True)  # one line each, for grep and wc -l


def _run_stream(stream: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run ``predict_stream`` or ``write_chunks`` with the command's reporting: error lines per chunk (a
    progress bar on a terminal), then what was resumed or found empty, and exit code 1 if items failed."""
    try:
        summary = stream(*args, progress=None, on_chunk=_report_errors, **kwargs)
    except StreamError as exc:
        raise click.UsageError(str(exc)) from None
    if summary.n_skipped:
        click.echo(f"resumed: {summary.n_skipped} structures already in {summary.output} were skipped", err=True)
    elif not summary.n_written:
        click.echo(NO_STRUCTURES, err=True)
        sys.exit(EXIT_BAD_INPUT)  # nothing predicted: not the 0 of "all predicted"
    if summary.n_failed:
        click.echo(f"{summary.n_failed} of {summary.n_written} structures could not be predicted", err=True)
    if summary.n_failed_before:  # a resumed run: the failures of earlier sessions are still in the output
        click.echo(f"{summary.n_failed_before} rows already in {summary.output} hold errors (written by earlier "
                   "sessions of this run; their messages are in its 'error' column)", err=True)  # fmt: skip
    if summary.n_failed or summary.n_failed_before:
        sys.exit(EXIT_BAD_INPUT)


@main.command(short_help="List the shipped models, or show one's model card.")
@click.argument("name", required=False)
@_guarded
def models(name: str | None) -> None:
    """List the shipped models, or show the model card of NAME (a shipped model or a model folder)."""
    from cgcnn_ase.models.folder import read_model_json
    from cgcnn_ase.models.registry import list_models, resolve_model, shipped_by_name

    _require_stdout("nothing can be listed")

    if name and shipped_by_name(name) is None and (Path(name) / "model.json").is_file():  # a folder of one's own
        card = Path(name) / "README.md"
        click.echo(card.read_text() if card.exists() else json.dumps(read_model_json(name), indent=2, default=str))
        return
    if name and shipped_by_name(name) is None and Path(name).exists():
        from cgcnn_ase.errors import UnknownModelError

        raise UnknownModelError(f"{name}: not a model folder (it has no model.json); `cgcnn-ase models` lists the shipped models")
    if name:
        info = resolve_model(name)
        card = info.path / "README.md"
        click.echo(card.read_text() if card.exists() else json.dumps(info.metadata, indent=2))
        return
    infos = list_models()
    if not infos:
        click.echo("No models are shipped in this installation (see README: load a checkpoint with --model PATH).")
        return
    click.echo(_models_table(infos))


def _models_table(infos: Sequence[Any]) -> str:
    """One line per shipped model within 100 columns: the name to use, what it predicts, its test error."""
    rows = []
    for info in infos:
        metrics = info.metadata.get("test_metrics", {})
        members = len(info.metadata.get("ensemble_of") or []) or 1
        if "mae" in metrics:
            test = f"MAE {metrics['mae']:.3g}" + (f" {info.units}" if info.units != "dimensionless" else "")
        elif "roc_auc" in metrics:
            test = f"ROC-AUC {metrics['roc_auc']:.3f}"
        else:
            test = "-"
        rows.append((info.aliases[0] if info.aliases else info.name, f"{info.property} ({info.units})",
                     str(members), test))  # fmt: skip
    header = ("name", "predicts", "nets", "test error")
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines) + "\n\n`cgcnn-ase models NAME` shows a model's card: data, split, all metrics, command.\n"


@main.command(short_help="Add CGCNN columns to a CSV of structures.")
@click.argument("table", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True, allow_dash=True), required=True, help="CSV to write ('-': stdout; a name ending in .gz, .bz2, .xz or .zip is compressed).")
@click.option("--column", default="cif", show_default=True, help="Column holding CIF text or structure file paths.")
@click.option("--id-column", default=None, help="Column of ids naming the rows in error messages [default: TABLE@ROW, the 0-based data row, as predict names them].")
@click.option("--model", "-m", "models", multiple=True, help="Model name or path (repeatable) [default: the general-purpose models of predict, in the featurizer's columns: each model's own property and units, e.g. is_metal (probability), log10_bulk_modulus (log10(GPa)), band_gap gated with band_gap_raw].")
@click.option("--all", "use_all", is_flag=True, help="Every shipped model.")
@click.option("--embeddings", is_flag=True, help="Also write the crystal embedding columns.")
@click.option("--overwrite", is_flag=True, help="Replace result columns the table already has (e.g. from an earlier featurize) instead of refusing.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Crystals per forward pass.")
@_guarded
def featurize(table: str, output: str, column: str, id_column: str | None, models: tuple[str, ...], use_all: bool,
              embeddings: bool, overwrite: bool, batch_size: int) -> None:  # fmt: skip
    """Add CGCNN columns to a table of structures (.csv, .tsv or .parquet; CIF text or file paths in
    --column; '-': a CSV piped to stdin), written as CSV.

    Each model adds its value column (and its _std for an ensemble); an unseen_elements column
    names the elements of a row that a model never saw in training (that value extrapolates).
    Rows whose structure cannot be used get empty values and a message in the 'error'
    column (and one 'error:' line on stderr); the exit code is then 1.
    """
    import pandas as pd

    from cgcnn_ase.inference.properties import GENERAL_MODELS
    from cgcnn_ase.integrations.matminer import CGCNNFeaturizer
    from cgcnn_ase.io.inputs import read_table

    plain = output.lower()  # the name without its compression suffix
    for suffix in COMPRESSED_SUFFIXES:
        plain = plain.removesuffix(suffix)
    if output != "-" and not plain.endswith((".csv", ".txt")) and Path(plain).suffix:  # round 32c: CSV in a .parquet
        raise click.BadParameter(f"{output}: featurize writes CSV; name the output .csv (or .csv.gz), or use "
                                 "`cgcnn-ase predict TABLE --column ... -o OUT.parquet` for Parquet", param_hint="-o/--output")  # fmt: skip
    if output == "-":
        _require_stdout()
    if output != "-" and table != "-" and os.path.realpath(output) == os.path.realpath(table):
        raise click.BadParameter(f"{output} is also the input table; write the result to another file",
                                 param_hint="-o/--output")  # fmt: skip
    if table == "-" and sys.stdin is None:
        raise click.UsageError("'-' reads a table piped to stdin, and stdin is closed")
    df = read_table(table)  # '-': a CSV piped in (round 32c: it was refused as a missing file)
    table = "stdin" if table == "-" else table  # its relative paths are read from here
    for name in (column, id_column):
        if name is not None and name not in df.columns:
            raise click.UsageError(f"{table} has no column {name!r}; columns: {', '.join(map(str, df.columns))}")
    names = [f"{table}@{k}" if id_column is None or not str(v).strip() else str(v)
             for k, v in enumerate(df[id_column] if id_column is not None else range(len(df)))]  # an empty id: the row
    featurizer = CGCNNFeaturizer(_model_names(models, use_all) or list(GENERAL_MODELS), embeddings=embeddings,
                                 batch_size=batch_size, unseen_elements=True)  # fmt: skip
    labels = featurizer.feature_labels()[:-1]  # loads the models: model errors exit with code 3 before any work
    present = [c for c in [*labels, "unseen_elements", "error"] if c in df.columns]
    if present and not overwrite:
        raise click.UsageError(f"{table} already has the result column(s) {', '.join(map(repr, present))} (a featurized "
                               "table?): give --overwrite to replace them, or featurize the original table")  # fmt: skip
    if column in present or id_column in present:
        raise click.UsageError(f"--column/--id-column name a result column of this run ({column!r}, {id_column!r})")
    df = df.drop(columns=present)
    from cgcnn_ase.io.reader import beside_table

    parsed = [_parse_structure_cell(beside_table(value, table), name) for name, value in zip(names, df[column])]
    good = [k for k, item in enumerate(parsed) if not isinstance(item, Exception)]
    rows = featurizer.featurize_many([parsed[k] for k in good], ignore_errors=True, return_errors=True, pbar=_on_terminal(),
                                     labels=[names[k] for k in good])  # warnings name the rows as the errors do
    features = np.full((len(df), len(labels)), np.nan)
    unseen: list[str | None] = [None] * len(df)
    errors: list[str | None] = [str(item) if isinstance(item, Exception) else None for item in parsed]
    for k, row in zip(good, rows):
        features[k], unseen[k] = row[:-2], row[-2]
        if isinstance(row[-1], str):
            errors[k] = f"{names[k]}: " + re.sub(r"^input \d+: ", "", row[-1].strip().splitlines()[-1])
    out = pd.concat([df, pd.DataFrame(features, columns=labels, index=df.index)], axis=1)
    out["unseen_elements"] = unseen
    out["error"] = errors
    out.to_csv(sys.stdout if output == "-" else output, index=False)
    bad = [e for e in errors if e]
    for message in bad:
        click.echo(f"error: {message}", err=True)
    if bad:
        click.echo(f"{len(bad)} of {len(df)} rows could not be featurized", err=True)
        sys.exit(EXIT_BAD_INPUT)


def _parse_structure_cell(value: Any, row: str) -> Any:
    """A table cell -> what the featurizer reads, or the error (returned, not raised).

    The cell's text (CIF text, pymatgen structure JSON, or the path of a file) is returned
    as it is: each model reads it through :mod:`cgcnn_ase.io.reader` with its own CIF reader,
    as ``predict`` reads it. Empty cells and one-line texts that name no file are errors.
    """
    from cgcnn_ase.errors import StructureReadError
    from cgcnn_ase.io.reader import input_kind

    if input_kind(value) == "empty":
        return StructureReadError(f"{row}: no structure: the value is empty (None, NaN or blank text)")
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if input_kind(text) == "path" and not Path(text).is_file():
        return StructureReadError(f"{row}: {text[:80]!r} is neither CIF text nor an existing structure file")
    return text


@main.command(short_help="Train a model from a YAML/TOML config.")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config entry, e.g. --set optim.lr=0.01 (repeatable).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch (default: the config's, else torch's).")
@click.option("--compile", "compile_", is_flag=True, help="Compile the training steps with torch.compile (same as --set compile=true; about 1.4-1.7x faster epochs on a CPU after 10-60 s of compiling).")
@click.option("--init-from", "init_from", metavar="MODEL", default=None, help="Fine-tune: start from MODEL (shipped model name, model folder or authors' .pth.tar) instead of random weights; same as --set init_from=MODEL. Its architecture, graph settings and element table are used; choose what to train with --set finetune.KEY=VALUE (docs/finetuning.md).")
@_guarded
def train(config: str, overrides: tuple[str, ...], threads: int | None, compile_: bool, init_from: str | None) -> None:
    """Train a model from a YAML/TOML CONFIG (see docs/training.md; the shipped models' own configs
    are in configs/ of the source tree and the sdist); resumes an interrupted run. With --init-from MODEL, fine-tune MODEL on the CONFIG's data
    (docs/finetuning.md).

    Writes the model folder (model.json, weights, model card, split, metrics, plots) to
    the config's 'output' and prints its path. A session stopped by the config's time_limit
    says so on stderr and exits with code 75: the folder holds the best epoch so far, and
    the same command continues the run.
    """
    from cgcnn_ase.train.config import load_config
    from cgcnn_ase.train.trainer import train_from_config

    settings = list(overrides) + ([f"threads={threads}"] if threads else []) + (["compile=true"] if compile_ else [])
    if init_from is not None:  # quoted, so that a name YAML would read as a number or a boolean stays a string
        settings.append(f"init_from={json.dumps(init_from)}")
    run = load_config(config, settings)
    try:
        folder = train_from_config(run, progress=_on_terminal())
    except KeyboardInterrupt:
        _interrupted_training(run)
    except UnfinishedRunError as exc:  # finetune.member: all, stopped between or inside its members' runs
        click.echo(str(exc), err=True)
        sys.exit(EXIT_UNFINISHED)
    click.echo(str(folder))
    spec = Path(folder) / "model.json"
    training = json.loads(spec.read_text()).get("metadata", {}).get("training", {}) if spec.is_file() else {}
    if training.get("stopped_by") == "time_limit":
        run = training.get("config", {})
        click.echo(f"unfinished: the time limit ({run.get('time_limit')} min) stopped this session after "
                   f"{training.get('epochs_run')} of {run.get('epochs')} epochs; the model folder holds the best "
                   "epoch so far. Run the same command again to continue.", err=True)  # fmt: skip
        sys.exit(EXIT_UNFINISHED)


def _interrupted_training(run: Any) -> None:
    """Ctrl-C during ``train``: say what was kept and how to continue; exit 130 (128 + SIGINT)."""
    from cgcnn_ase.train.trainer import CHECKPOINT_LAST

    checkpoint, metrics = run.work_path / CHECKPOINT_LAST, run.work_path / "metrics.csv"
    if not run.resume:
        hint = "resume is false, so the same command starts over"
    elif checkpoint.is_file() and metrics.is_file():
        epochs = max(len(metrics.read_text().splitlines()) - 1, 0)
        hint = (f"{epochs} finished epoch(s) of {run.epochs} are saved in {checkpoint}; run the same command again to "
                "continue from there")  # fmt: skip
    elif run.init_from is not None and run.finetune.member == "all":  # one work folder per member
        hint = f"the members' finished epochs are saved under {run.work_path}; run the same command again to continue"
    else:
        hint = "no epoch had finished, so nothing was saved to continue from"
    terminated = isinstance(sys.exc_info()[1], TerminatedError)  # SIGTERM (round 30a: 130 and "interrupted")
    click.echo(f"\n{'terminated (SIGTERM)' if terminated else 'interrupted'}: {hint}", err=True)
    sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


def _evaluation_summary(report: dict[str, Any]) -> list[str]:
    """The lines of an evaluation a person reads: counts, the metrics and, for an ensemble, how its members
    compare and whether its std is calibrated (the whole report is in metrics.json)."""

    from cgcnn_ase.models.cards import significant

    def g(x: Any) -> str:
        if x is None or (isinstance(x, (float, np.floating)) and not np.isfinite(x)):
            return "n/a"
        return significant(float(x)) if isinstance(x, (float, np.floating)) else f"{x:.4g}"  # trailing zeros kept

    units = report.get("units") or ""
    lines = [f"{Path(report['model']).name}, {report['split']} split: {report['n']} crystals"
             f" ({report.get('n_failed', 0)} failed), {report['property']}" + (f" ({units})" if units else "")]  # fmt: skip
    for name, value in report["metrics"].items():
        if isinstance(value, dict):  # per-class precision/recall/f1 of a classifier
            value = ", ".join(f"class {k}: {g(v)}" for k, v in value.items())
        elif name == "n":  # the count heads the summary
            continue
        else:
            value = g(value) + (f" {units}" if name in ("mae", "rmse") and units not in ("", "dimensionless") else "")
        lines.append(f"  {name:<12} {value}")
    uncertainty = report.get("uncertainty") or {}
    members = uncertainty.get("ensemble_vs_members")
    if members:
        lines.append(f"ensemble of {uncertainty.get('n_members', len(members['members']))}: {members['metric']} "
                     f"{g(members['ensemble'])}, its members' {g(members['member_mean'])} on average "
                     f"(best {g(members['member_best'])}, worst {g(members['member_worst'])})")  # fmt: skip
    for key, label in (("calibrated", "calibrated std"), ("uncertainty", "uncertainty")):
        block = uncertainty.get(key)
        if block and "within_1std" in block:
            lines.append(f"  {label}: {block['within_1std']:.1%} of errors within 1 {label} "
                         f"({block['expected_within_1std']:.1%} expected), {block['within_2std']:.1%} within 2 "
                         f"({block['expected_within_2std']:.1%}); Spearman(|error|, {label}) {g(block['spearman_abs_error_std'])}")  # fmt: skip
    metrics_file = (report.get("files") or {}).get("metrics")
    if metrics_file:  # what it holds beyond these lines (round 29d: a single network's has no calibration curves)
        more = [what for key, what in (("calibration_curve", "calibration curves"), ("domain", "error by domain percentile"))
                if uncertainty.get(key)]  # fmt: skip
        lines.append(f"the whole report{' (' + ', '.join(more) + ')' if more else ''}: {metrics_file}")
    return lines


@main.command(short_help="Score a model on its dataset's test split (metrics, plots).")
@click.argument("model")
@click.argument("dataset", required=False)
@click.option("--split", type=click.Choice(["train", "val", "test", "all"]), default="test", show_default=True, help="Which part of the model's recorded split to score (all: every row of the data).")
@click.option("--output", "-o", "out_dir", type=click.Path(file_okay=False), default=None, help="Folder for metrics.json, predictions.csv and the parity/ROC plot [default: evaluation/MODEL-SPLIT].")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Crystals per forward pass.")
@click.option("--target", default=None, help="With DATASET: its column of true values, in the units the model was trained on before its transform (e.g. GPa for the log10 moduli) [default: the training config's].")
@click.option("--id-column", default=None, help="With DATASET: its column of unique ids [default: the training config's].")
@click.option("--column", "structure_column", default=None, help="With DATASET: its column of structures (CIF text, ...) [default: the training config's].")
@click.option("--filter", "row_filter", default=None, help="With DATASET: a pandas query selecting rows, replacing the training config's ('' for none).")
@click.option("--per-atom/--no-per-atom", "per_atom", default=None, help="With DATASET: divide its true values by each crystal's number of atoms (--no-per-atom: the column is per atom already) [default: the training config's per_atom].")
@click.option("--transform", type=click.Choice(["none", "log10"]), default=None, help="With DATASET: the transform of its true values (none: the column is in the model's units already, e.g. log10(GPa)) [default: the training config's].")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default=None, help="What to print [default: a short summary on a terminal, else the report as JSON]; metrics.json always holds the whole report.")
@_guarded
def evaluate(model: str, dataset: str | None, split: str, out_dir: str | None, batch_size: int, target: str | None,
             id_column: str | None, structure_column: str | None, row_filter: str | None, per_atom: bool | None,
             transform: str | None, fmt: str | None) -> None:  # fmt: skip
    """Score MODEL (a trained model folder or shipped name) on a split of its dataset
    (default: the saved test split of the dataset it was trained on) or on DATASET.
    Prints the metrics; writes them with the predictions and a parity (or ROC) plot to a folder.

    For another dataset, score every row with --split all and name its columns where they differ,
    e.g. cgcnn-ase evaluate bulk_modulus data.json.gz --split all --target bulk_modulus_vrh --id-column mp_id."""
    from cgcnn_ase.analysis.evaluation import evaluate_model
    from cgcnn_ase.errors import DatasetError
    from cgcnn_ase.models.registry import model_folder

    given = {"--target": ("target", target), "--id-column": ("id_column", id_column),
             "--column": ("structure_column", structure_column), "--filter": ("filter", row_filter),
             "--per-atom/--no-per-atom": ("per_atom", per_atom), "--transform": ("transform", transform)}  # fmt: skip
    layout = {field: (value or None) if field == "filter" else value for field, value in given.values() if value is not None}
    if layout and dataset is None:
        options = "/".join(option for option, (_, value) in given.items() if value is not None)
        raise click.UsageError(f"{options} need(s) a DATASET argument")
    if out_dir is None:  # never inside a model folder (a shipped one lives in the package)
        out_dir = str(Path("evaluation") / f"{model_folder(model).name}-{split}")
    try:
        report = evaluate_model(model, dataset, split=split, out_dir=out_dir, batch_size=batch_size,
                                progress=_on_terminal(), layout=layout)  # fmt: skip
    except DatasetError as exc:
        if dataset is None or not re.search(r"\bno (id |target |structure )?column\b|neither a column", str(exc)):
            raise
        raise DatasetError(f"{exc} (another file's columns: --target, --id-column, --column)") from None
    if (fmt or ("table" if is_terminal(sys.stdout) else "json")) == "table":
        click.echo("\n".join(_evaluation_summary(report)))
    else:
        keys = ("model", "split", "n", "n_failed", "property", "units", "metrics", "uncertainty", "note")  # some: not always
        from cgcnn_ase.models.cards import json_safe

        click.echo(json.dumps(json_safe({k: report[k] for k in keys if k in report}), indent=2, default=str))
    written = sorted(p.name for p in Path(out_dir).iterdir() if p.is_file())
    click.echo(f"wrote {', '.join(written)} to {out_dir}", err=True)
    if report["n"] == 0 and report.get("n_failed"):  # nothing scored: no metric means anything
        click.echo(f"error: none of the {report['n_failed']} crystals could be predicted (their messages are in "
                   f"{Path(out_dir) / 'predictions.csv'}): no metrics", err=True)  # fmt: skip
        sys.exit(EXIT_BAD_INPUT)


@main.command(short_help="Fit uncertainty, intervals and domain summary.")
@click.argument("model")
@click.argument("dataset", required=False)
@click.option("--domain", is_flag=True, help="First rebuild the domain summary from the training split (every training embedding and target); the only step for a single model or a classifier.")
@click.option("--normaliser", type=click.Choice(["auto", "uncertainty", "std_raw"]), default="auto", show_default=True, help="What scales the intervals: auto chooses between the per-crystal uncertainty and the raw std by cross-fitting on the validation split.")
@click.option("--confidence", type=_Probability(0, 1, min_open=True, max_open=True), default=0.9, show_default=True, help="Fit each interval so that its coverage is at least the nominal one with this probability over the draw of the validation split (training-conditional conformal).")
@click.option("--marginal", is_flag=True, help="Fit the intervals with the plain split-conformal rank instead: nominal coverage only on average over validation draws (ignores --confidence).")
@click.option("--report", is_flag=True, help="Also re-measure the parts of an ensemble's uncertainty report that depend on the domain summary and the error model (error by domain percentile, test metrics of the uncertainty), e.g. after --domain; the std calibration is kept.")
@click.option("--max-centers", type=click.IntRange(min=1), default=None, help="With --domain: store a k-centre subset of this many training embeddings instead of all of them.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Crystals per forward pass.")
@_guarded
def calibrate(model: str, dataset: str | None, domain: bool, normaliser: str, confidence: float, marginal: bool,
              report: bool, max_centers: int | None, batch_size: int) -> None:  # fmt: skip
    """Fit the per-crystal uncertainty and split-conformal prediction intervals of the ensemble
    MODEL (a folder, rewritten in place; a shipped model's name is refused) on its validation split, measure them on the test split, and store both in its
    model.json, domain.safetensors and card. Predictions then carry <property>_uncertainty (given at least
    100 validation crystals; with fewer a warning says so and the std scales the intervals) and accept
    --coverage (Python: predict(..., coverage=0.9)). With --domain the applicability-domain summary is
    rebuilt first; for a model that is not a regression ensemble that is all it does."""
    import torch

    from cgcnn_ase.models.registry import model_folder, resolve_model, shipped_by_name
    from cgcnn_ase.train.ensembles import calibrate_folder, calibration_problem

    if shipped_by_name(model) is None and not Path(model).exists():  # a path that is missing, or an unknown name
        model_folder(model, purpose="calibrate rewrites the model folder it is given")  # raises: says which
    if shipped_by_name(model) is not None:  # a shipped model: part of the installation
        folder = resolve_model(model).path
        raise click.UsageError(f"calibrate rewrites the model folder it is given, and {model!r} names the shipped model in "
                               f"{folder}: copy that folder (cp -r) and calibrate the copy, or give the folder's path to "
                               "recalibrate it in place (./NAME for a folder in the working directory)")  # fmt: skip
    problem = calibration_problem(model, domain=domain, report=report)
    if problem is not None:  # asked of a model that cannot have it: a usage error
        raise click.UsageError(f"{model}: {problem}")
    torch.set_num_threads(1)  # this process is ours; one thread is fastest for small crystals
    result = calibrate_folder(model, dataset, domain=domain, normaliser=normaliser, report=report,
                              confidence=None if marginal else confidence,
                              max_centers=max_centers, batch_size=batch_size, progress=_on_terminal())  # fmt: skip
    if result is not None:
        click.echo(json.dumps(result, indent=2))


@main.command(short_help="Per-site energies of an atomwise model, with periodic-table maps.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--model", "-m", "model", required=True, help="An atomwise-readout model (name or folder), e.g. perovskite_site_energy.")
@click.option("--output", "-o", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder for sites.csv, by_element.csv and the maps.")
@click.option("--allow-mean-pooled", is_flag=True, help="Accept a mean-pooled model (first-order attributions, not site energies).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Crystals per forward pass [default: 64 on a CPU, 1024 on a GPU].")
@_guarded
def sites(inputs: tuple[str, ...], model: str, out_dir: str, allow_mean_pooled: bool, batch_size: int) -> None:
    """Per-site contributions of an atomwise model for the crystals in INPUTS, with site
    roles (A/B/X for ABX3 perovskites, else Wyckoff labels), per-element averages and
    periodic-table maps of the A- and B-site energies (PNG and SVG). For an ensemble
    (e.g. perovskite_site_energy) every member runs on its own: the tables and maps give
    the seed mean and its spread across seeds (seed_std); see docs/site_energies.md."""
    import pandas as pd

    from cgcnn_ase.analysis.site_maps import write_site_report
    from cgcnn_ase.analysis.sites import labelled_error
    from cgcnn_ase.io.inputs import TABLE_SUFFIXES, iter_files

    predictor = load_predictor(model)
    files = list(iter_files(inputs))
    tables = [f for f in files if f.lower().endswith(TABLE_SUFFIXES)]
    if tables:
        raise click.UsageError(f"{tables[0]}: a table; sites reads structure files (CIF, POSCAR, extxyz, ...). For the "
                               "structures of a table use the Python API (site_contributions or write_site_report on "
                               "its column of structures; docs/site_energies.md)")  # fmt: skip
    with catch_warnings():  # each failure gets its own error line below
        warnings.filterwarnings("ignore", message=r"\d+ structure\(s\) skipped")
        paths = write_site_report(predictor, files, out_dir, batch_size=batch_size,
                                  allow_mean_pooled=allow_mean_pooled, errors="skip")  # fmt: skip
    for path in paths:
        click.echo(str(path))
    if not files:
        click.echo(NO_STRUCTURES, err=True)
        sys.exit(EXIT_BAD_INPUT)
    if paths[-1].name == "skipped.csv":
        skipped = pd.read_csv(paths[-1], dtype=str, keep_default_na=False)
        for label, message in zip(skipped["structure"], skipped["error"]):
            click.echo(f"error: {labelled_error(label, message)}", err=True)
        click.echo(f"{len(skipped)} structure(s) could not be analysed (listed in {paths[-1]})", err=True)
        sys.exit(EXIT_BAD_INPUT)


@main.command(short_help="Assemble trained member folders into an ensemble.")
@click.argument("members", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="The ensemble model folder to write.")
@click.option("--dataset", default=None, help="The members' dataset on this machine (default: the path in member 0's config.yaml).")
@click.option("--name", default=None, help="Model name (default: the output folder's name).")
@click.option("--alias", "aliases", multiple=True, help="Registry alias (repeatable; default: member 0's aliases): the name from_pretrained and --model find the ensemble by once it is installed in pretrained_models/ (a folder elsewhere is loaded by its path).")
@click.option("--no-evaluate", is_flag=True, help="Skip calibration and the uncertainty report (domain summary only).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Crystals per forward pass.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Processes for parsing structures.")
@click.option("--overwrite", is_flag=True, help="Replace the model OUTPUT already holds (refused without it).")
@_guarded
def ensemble(members: tuple[str, ...], output: str, dataset: str | None, name: str | None, aliases: tuple[str, ...],
             no_evaluate: bool, batch_size: int, device: str | None, workers: int, overwrite: bool) -> None:  # fmt: skip
    """Assemble trained MEMBERS (model folders from `cgcnn-ase train --set seed=K`, same split)
    into one deep-ensemble folder: all weights in one file, an applicability-domain summary,
    the std calibration fitted on the validation split, and uncertainty metrics on the test
    split in model.json and the card. Prints the folder."""
    from cgcnn_ase.train.ensembles import assemble_ensemble

    if len(members) < 2:
        raise click.UsageError(f"an ensemble needs at least 2 MEMBERS, got {len(members)}")
    from cgcnn_ase.errors import EnsembleError

    try:
        folder = assemble_ensemble(list(members), output, dataset=dataset, name=name, aliases=list(aliases) or None,
                                   evaluate=not no_evaluate, batch_size=batch_size, device=device, workers=workers,
                                   progress=_on_terminal(), overwrite=overwrite)  # fmt: skip
    except EnsembleError as exc:  # members that cannot be averaged (other split, property, seed): the command's use
        raise click.UsageError(str(exc)) from None
    click.echo(str(folder))

"""Progress bars that exist only when shown.

tqdm builds a ``multiprocessing`` lock and may start a monitor thread for every bar, even a disabled one; the
lock fixes the process's start method (a later ``multiprocessing.set_start_method`` then fails). Library calls
that show no bar therefore get a stand-in that does nothing and touches no process-wide state.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["is_terminal", "progress_bar", "shown_by_default"]


class _NoBar:
    """What the code of a bar calls, doing nothing; iterates over its iterable."""

    def __init__(self, iterable: Iterable[Any] | None = None) -> None:
        self._iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self._iterable if self._iterable is not None else ())

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float = 1) -> None:
        return None

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an open terminal: ``False`` for ``None`` (round 29a: a process started with the stream
    closed, a daemon or ``pythonw``, has ``sys.stderr = None``, and ``isatty`` ended whole runs) and closed files."""
    try:
        return stream is not None and bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def shown_by_default() -> bool:
    """Whether a bar left to the default is shown: stderr is a terminal, or a Jupyter kernel's output stream (round
    29d: ipykernel's stream says it is no terminal, yet a notebook shows what is written to it)."""
    return is_terminal(sys.stderr) or type(sys.stderr).__module__.split(".")[0] == "ipykernel"


def progress_bar(iterable: Iterable[Any] | None = None, *, show: bool | None, **options: Any) -> Any:
    """A ``tqdm.auto`` bar over ``iterable`` (or to ``update`` by hand) when ``show`` is true, or is ``None`` and
    :func:`shown_by_default` (a terminal or a notebook); otherwise a stand-in with the same methods."""
    if not (show if show is not None else shown_by_default()) or ("file" not in options and sys.stderr is None):
        return _NoBar(iterable)  # nowhere to draw it (round 30a: a bar asked for with stderr closed ended the run)
    from tqdm.auto import tqdm

    return tqdm(iterable, **options)
